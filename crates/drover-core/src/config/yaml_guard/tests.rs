use super::*;

/// Parses `text` with the real parser and reports whether it nested deeper than the
/// recursion limit of yaml_serde (128), i.e. whether libyaml built that deep a document.
fn parser_went_deep(text: &str) -> bool {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Err(e) => e.to_string().contains("recursion limit exceeded"),
        Ok(_) => false,
    }
}

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

#[test]
fn counts_flow_and_block_nesting() {
    assert_eq!(scan("a: [1, {b: [2]}]\nc:\n  d:\n    - e\n").too_deep_at, None);
    assert_eq!(scan(&format!("a: {}", deep(MAX_YAML_DEPTH - 1))).too_deep_at, None);
    // The block mapping is one level: the 64th bracket is the 65th level.
    assert_eq!(scan(&format!("a: {}", deep(MAX_YAML_DEPTH))).too_deep_at, Some((1, 3 + MAX_YAML_DEPTH)));
    assert_eq!(scan(&format!("x: 1\na: {{b: {}}}", deep(100_000))).too_deep_at, Some((2, 6 + MAX_YAML_DEPTH)));
    assert!(scan(&format!("a:\n{}x\n", "- ".repeat(100))).too_deep_at.is_some());
    let mut nested = String::new();
    for d in 0..100 {
        nested.push_str(&format!("{}k:\n", " ".repeat(d)));
    }
    assert!(scan(&nested).too_deep_at.is_some());
}

#[test]
fn brackets_in_scalars_and_comments_do_not_count() {
    let many = "[".repeat(200);
    for text in [
        format!("a: \"{many}\"\n"),
        format!("a: '{many}'\n"),
        format!("a: x{many}\n"),
        format!("a: x {many} y\n"),
        format!("# {many}\na: 1\n"),
        format!("a: 1 # {many}\n"),
        format!("a: |\n  {many}\n  more\nb: 2\n"),
        format!("a: >-\n   {many}\nb: 2\n"),
        format!("a: plain\n  continued {many}\n"),
        format!("a: [\"{many}\", '{many}', \"\\\"{many}\"]\n"),
        format!("a: !<tag:x,{many}> 1\n"),
    ] {
        assert_eq!(scan(&text).too_deep_at, None, "{text}");
        serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap();
    }
}

#[test]
fn nesting_after_a_tricky_scalar_still_counts() {
    let d = deep(200);
    // Each of these is a scalar that might fool a naive scan into skipping what follows.
    for text in [
        format!("a: don't\nb: {d}\nc: 'x'\n"),
        format!("a: x 'y\nb: {d}\nc: 'z'\n"),
        format!("a: x\n  'y\nb: {d}\nc: 'z'\n"),
        format!("a: \"it's\"\nb: {d}\nc: 'z'\n"),
        format!("a: 'say \"hi'\nb: {d}\nc: \"z\"\n"),
        format!("a: |\n  'open\nb: {d}\nc: 'z'\n"),
        format!("a: [x'y, \"]\"]\nb: {d}\nc: '['\n"),
        format!("a: x#y 'z\nb: {d}\nc: 'z'\n"),
        format!("a: !foo'bar x\nb: {d}\n"),
    ] {
        assert!(parser_went_deep(&text), "the parser does nest here: {text}");
        assert!(scan(&text).too_deep_at.is_some(), "{text}");
    }
    // yaml_serde parses a second document (to refuse it) only after the first one.
    assert!(scan(&format!("a: 1\n---\nb: {d}\n")).too_deep_at.is_some());
    assert!(scan(&format!("a: 1\n...\n%YAML 1.1\n---\nb: {d}\n")).too_deep_at.is_some());
}

#[test]
fn closing_brackets_in_strings_do_not_hide_depth() {
    let mut text = String::from("a: ");
    for _ in 0..200 {
        text.push_str("[ \"]]\", '}}', ");
    }
    text.push_str(&"]".repeat(200));
    assert!(parser_went_deep(&text));
    assert!(scan(&text).too_deep_at.is_some());
}

#[test]
fn counts_aliases_only_outside_scalars() {
    assert_eq!(scan("a: &x [1]\nb: *x\nc: '*x'\nd: x*y # *z\n").aliases, 1);
}

#[test]
fn wide_and_deep_alias_expansions_are_stopped() {
    expanded_size("a: &a [1, 2]\nb: [*a, *a]\n").unwrap();
    let wide = format!("a: &a [{}]\nb: [{}]\n", "x, ".repeat(3000), "*a, ".repeat(3000));
    assert!(matches!(expanded_size(&wide), Err(Expansion::TooLarge(_))));
    let big = "y".repeat(500_000);
    let long = format!("a: &a \"{big}\"\nb: [*a, *a, *a, *a, *a]\n");
    assert!(matches!(expanded_size(&long), Err(Expansion::TooLarge(_))));
    assert!(matches!(expanded_size("a: [1"), Err(Expansion::Yaml(_))));
    expanded_size("a: !tag &t {b: 1}\nc: *t\n").unwrap();
}

proptest::proptest! {
    /// Noise made of YAML's indicators, then 150 flow levels, then more noise: whenever the
    /// real parser nests past its recursion limit, the scan must have found the depth.
    #[test]
    fn never_misses_depth_the_parser_builds(
        before in proptest::collection::vec(proptest::sample::select(NOISE.to_vec()), 0..24),
        inside in proptest::collection::vec(proptest::sample::select(NOISE.to_vec()), 0..6),
        after in proptest::collection::vec(proptest::sample::select(NOISE.to_vec()), 0..12),
    ) {
        let inside: String = inside.concat();
        let text = format!("{}{}{}{}", before.concat(), format!("[{inside}").repeat(150), "]".repeat(150), after.concat());
        if parser_went_deep(&text) {
            proptest::prop_assert!(scan(&text).too_deep_at.is_some(), "{:?}", text);
        }
    }
}

const NOISE: [&str; 32] = [
    "a", " ", "\n", "  ", "\t", "'", "\"", "#", "-", "- ", ":", ": ", "?", "? ", ",", "|", ">", "&x", "*x", "!", "!t", "%", "\\", "[", "]",
    "{", "}", "---\n", "x'", "\"a\"", "'b'", "\n  ",
];
