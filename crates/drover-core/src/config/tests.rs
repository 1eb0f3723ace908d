use super::*;
use crate::limits::*;

const GOOD: &str = "\
name: digits
entrypoint: ./digits --epochs 3
hyperparameters:
  lr: {type: log, minval: -4, maxval: -1}
  hidden: {type: categorical, vals: [32, 64]}
searcher:
  name: random
  metric: validation_accuracy
  smaller_is_better: false
  max_trials: 4
environment:
  environment_variables: [RAYON_NUM_THREADS=1]
";

#[test]
fn parses_a_good_file_with_defaults() {
    let c = ExperimentConfig::parse(GOOD, Some("x.yaml")).unwrap();
    assert_eq!(c.name, "digits");
    assert_eq!(c.searcher.max_concurrent_trials, 16);
    assert_eq!(c.max_restarts, 5);
    assert_eq!(c.resources.slots_per_trial, 1);
    assert_eq!(c.environment["RAYON_NUM_THREADS"], "1");
    assert_eq!(c.entrypoint.argv(), vec!["/bin/sh", "-c", "./digits --epochs 3"]);
    assert_eq!(c.planned_trials(), Some(4));
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<ExperimentConfig>(&json).unwrap(), c);
}

#[test]
fn broken_yaml_names_line_and_column() {
    let text = "name: x\nsearcher: {name: random\nentrypoint: a\n";
    let e = ExperimentConfig::parse(text, Some("bad.yaml")).unwrap_err();
    assert_eq!(e.file.as_deref(), Some("bad.yaml"));
    assert!(e.line.is_some(), "{e}");
    assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
}

#[test]
fn unknown_key_gets_did_you_mean_and_its_line() {
    let text = GOOD.replace("  max_trials: 4", "  max_trails: 4");
    let e = ExperimentConfig::parse(&text, Some("x.yaml")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.max_trails"), "{e}");
    assert!(e.message.contains("did you mean `max_trials`"), "{e}");
    assert_eq!(e.line, Some(10), "{e}");
    let text = GOOD.replace("searcher:", "sercher:");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert!(e.message.contains("did you mean `searcher`"), "{e}");
}

#[test]
fn wrong_type_names_the_field_and_line() {
    let text = GOOD.replace("max_trials: 4", "max_trials: four");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.max_trials"), "{e}");
    assert_eq!(e.line, Some(10), "{e}");
}

#[test]
fn semantic_errors_are_located() {
    let text = GOOD.replace("name: random", "name: randum");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.name"));
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.message.contains("did you mean `random`"), "{e}");

    let text = GOOD.replace("minval: -4, maxval: -1", "minval: -1, maxval: -4");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("hyperparameters.lr.minval"));
    assert_eq!((e.line, e.column), (Some(4), Some(19)), "{e}");

    let text = GOOD.replace("  max_trials: 4\n", "");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert!(e.message.contains("needs `max_trials`"), "{e}");

    let text =
        GOOD.replace("name: random", "name: grid").replace("{type: log, minval: -4, maxval: -1}", "{type: double, minval: 0, maxval: 1}");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("hyperparameters.lr"));
    assert!(e.message.contains("count"), "{e}");
}

#[test]
fn adaptive_searchers_need_their_fields() {
    let asha = GOOD.replace("  name: random\n", "  name: async_halving\n  time_metric: epochs\n  max_time: 30\n  num_rungs: 3\n");
    let c = ExperimentConfig::parse(&asha, None).unwrap();
    assert_eq!((c.searcher.divisor, c.planned_trials()), (4.0, Some(4)));
    let e = ExperimentConfig::parse(&asha.replace("  num_rungs: 3\n", ""), None).unwrap_err();
    assert!(e.message.contains("num_rungs"), "{e}");
    let e = ExperimentConfig::parse(&asha.replace("  time_metric: epochs\n", ""), None).unwrap_err();
    assert!(e.message.contains("time_metric"), "{e}");
    let e = ExperimentConfig::parse(&asha.replace("num_rungs: 3", "num_rungs: 3\n  divisor: 1"), None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.divisor"));
    let adaptive = asha.replace("async_halving", "adaptive_asha").replace("  num_rungs: 3\n", "  mode: agressive\n");
    let e = ExperimentConfig::parse(&adaptive, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.mode"));
    assert!(e.message.contains("did you mean `aggressive`"), "{e}");
}

#[test]
fn custom_searcher_takes_an_optional_cap() {
    let custom = GOOD.replace("name: random", "name: custom");
    let c = ExperimentConfig::parse(&custom, None).unwrap();
    assert_eq!((c.searcher.name.as_str(), c.planned_trials()), ("custom", Some(4)));
    let c = ExperimentConfig::parse(&custom.replace("  max_trials: 4\n", ""), None).unwrap();
    assert_eq!(c.planned_trials(), None);
    let e = ExperimentConfig::parse(&custom.replace("max_trials: 4", "max_trials: 0"), Some("c.yaml")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.max_trials"));
    assert_eq!((e.line, e.column), (Some(10), Some(3)), "{e}");
    assert!(e.to_string().starts_with("c.yaml:10:3: searcher.max_trials: "), "{e}");
    let e = ExperimentConfig::parse(&GOOD.replace("name: random", "name: custon"), None).unwrap_err();
    assert!(e.message.contains("did you mean `custom`"), "{e}");
}

#[test]
fn missing_required_fields_are_named() {
    let e = ExperimentConfig::parse("name: x\nentrypoint: a\n", None).unwrap_err();
    assert!(e.message.contains("missing field `searcher`"), "{e}");
    let e = ExperimentConfig::parse("", None).unwrap_err();
    assert!(!e.message.is_empty());
}

#[test]
fn alias_bombs_are_refused_not_expanded() {
    let mut text = String::from(
        "name: x\nentrypoint: a\nsearcher: {name: single, metric: m}\nhyperparameters:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    let started = std::time::Instant::now();
    let result = ExperimentConfig::parse(&text, Some("bomb.yaml"));
    assert!(result.is_err(), "10^10 elements must not be built");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn hostile_values_are_refused() {
    let text = format!("{GOOD}checkpoint_storage:\n  storage_path: ../../etc\n");
    let e = ExperimentConfig::parse(&text, None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("checkpoint_storage.storage_path"));
    let text = GOOD.replace("[RAYON_NUM_THREADS=1]", "[NOEQUALS]");
    assert!(ExperimentConfig::parse(&text, None).is_err());
}

/// `GOOD` with `searcher:` replaced by `searcher` (a flow map) and `extra` appended.
fn with_searcher(searcher: &str, extra: &str) -> String {
    let head = GOOD.split("searcher:").next().unwrap();
    format!("{head}searcher: {searcher}\n{extra}")
}

fn refused(text: &str) -> ConfigError {
    ExperimentConfig::parse(text, Some("x.yaml")).expect_err("must be refused")
}

#[test]
fn every_limit_is_refused_naming_its_field() {
    let random = "{name: random, metric: m, max_trials: 4}";
    let long = |n: usize| "x".repeat(n);
    let env_vars: String = (0..=MAX_ENVIRONMENT_VARIABLES).map(|i| format!("V{i}=1, ")).collect();
    let argv: String = (0..=MAX_ENTRYPOINT_ARGS).map(|_| "a, ").collect();
    let cases: Vec<(String, &str)> = vec![
        (GOOD.replace("name: digits", &format!("name: {}", long(MAX_NAME_BYTES + 1))), "name"),
        (format!("{GOOD}description: {}\n", long(MAX_DESCRIPTION_BYTES + 1)), "description"),
        (GOOD.replace("./digits --epochs 3", &long(MAX_ENTRYPOINT_BYTES + 1)), "entrypoint"),
        (GOOD.replace("./digits --epochs 3", &format!("[{argv}]")), "entrypoint"),
        (
            GOOD.replace("./digits --epochs 3", &format!("[{}, {}]", long(MAX_ENTRYPOINT_BYTES / 2), long(MAX_ENTRYPOINT_BYTES / 2 + 1))),
            "entrypoint",
        ),
        (GOOD.replace("[RAYON_NUM_THREADS=1]", &format!("[{env_vars}]")), "environment.environment_variables"),
        (GOOD.replace("[RAYON_NUM_THREADS=1]", &format!("[A={}]", long(MAX_ENVIRONMENT_BYTES))), "environment.environment_variables"),
        (with_searcher("{name: random, metric: m, max_trials: 1000000000000}", ""), "searcher.max_trials"),
        (with_searcher("{name: custom, metric: m, max_trials: 100001}", ""), "searcher.max_trials"),
        (with_searcher("{name: random, metric: m, max_trials: 4, max_concurrent_trials: 10001}", ""), "searcher.max_concurrent_trials"),
        (with_searcher(&format!("{{name: random, metric: {}, max_trials: 4}}", long(MAX_NAME_BYTES + 1)), ""), "searcher.metric"),
        (with_searcher(&format!("{{name: random, metric: m, time_metric: {}, max_trials: 4}}", long(300)), ""), "searcher.time_metric"),
        (
            with_searcher("{name: async_halving, metric: m, time_metric: t, max_time: 9, max_trials: 4, num_rungs: 33}", ""),
            "searcher.num_rungs",
        ),
        (
            with_searcher("{name: adaptive_asha, metric: m, time_metric: t, max_time: 9, max_trials: 4, max_rungs: 33}", ""),
            "searcher.max_rungs",
        ),
        (with_searcher("{name: tpe, metric: m, max_trials: 4, n_ei_candidates: 10001}", ""), "searcher.n_ei_candidates"),
        (with_searcher("{name: tpe, metric: m, max_trials: 4, n_startup_trials: 100001}", ""), "searcher.n_startup_trials"),
        (
            with_searcher(
                "{name: pbt, metric: m, time_metric: t, population_size: 1000000000, max_generations: 2, generation_length: 1}",
                "",
            ),
            "searcher.population_size",
        ),
        (
            with_searcher("{name: pbt, metric: m, time_metric: t, population_size: 10000, max_generations: 11, generation_length: 1}", ""),
            "searcher.population_size",
        ),
        (
            with_searcher(
                "{name: pbt, metric: m, time_metric: t, population_size: 4, max_generations: 18446744073709551615, generation_length: 1}",
                "",
            ),
            "searcher.max_generations",
        ),
        (with_searcher(random, "max_restarts: 1001\n"), "max_restarts"),
        (with_searcher(random, "resources: {slots_per_trial: 0}\n"), "resources.slots_per_trial"),
        (with_searcher(random, "resources: {slots_per_trial: 1025}\n"), "resources.slots_per_trial"),
        (with_searcher(random, "checkpoint_storage: {save_trial_best: 10001}\n"), "checkpoint_storage.save_trial_best"),
        (with_searcher(random, "checkpoint_storage: {save_experiment_best: 4000000000}\n"), "checkpoint_storage.save_experiment_best"),
        (with_searcher(random, &format!("checkpoint_storage: {{path: /{}}}\n", long(MAX_STORAGE_FIELD_BYTES))), "checkpoint_storage.path"),
        (with_searcher(random, &format!("checkpoint_storage: {{type: {}}}\n", long(MAX_NAME_BYTES + 1))), "checkpoint_storage.type"),
        (
            with_searcher(random, &format!("checkpoint_storage: {{type: s3, bucket: b, region: {}}}\n", long(MAX_STORAGE_FIELD_BYTES + 1))),
            "checkpoint_storage.region",
        ),
    ];
    for (text, field) in cases {
        let e = refused(&text);
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert!(e.message.contains("limit") || e.message.contains("at least 1"), "{e}");
    }
}

#[test]
fn hyperparameter_limits_are_refused_naming_the_field() {
    let space = |body: String| {
        with_searcher("{name: random, metric: m, max_trials: 4}", "").replace(
            "hyperparameters:\n  lr: {type: log, minval: -4, maxval: -1}\n  hidden: {type: categorical, vals: [32, 64]}\n",
            &format!("hyperparameters:\n{body}"),
        )
    };
    let many: String = (0..MAX_HYPERPARAMETERS).map(|i| format!("  h{i}: 1\n")).collect();
    ExperimentConfig::parse(&space(many.clone()), None).unwrap();
    let e = refused(&space(format!("{many}  one_more: 1\n")));
    assert_eq!(e.field.as_deref(), Some("hyperparameters"), "{e}");
    // Nested entries count too, groups included.
    let nested: String = (0..MAX_HYPERPARAMETERS / 2).map(|i| format!("  g{i}: {{a: 1}}\n")).collect();
    assert_eq!(refused(&space(format!("{nested}  x: 1\n"))).field.as_deref(), Some("hyperparameters"));
    let vals = vec!["1"; MAX_CATEGORICAL_VALUES + 1].join(", ");
    let e = refused(&space(format!("  c: {{type: categorical, vals: [{vals}]}}\n")));
    assert_eq!(e.field.as_deref(), Some("hyperparameters.c.vals"), "{e}");
    let e = refused(&space(format!("  {}: 1\n", "n".repeat(MAX_HYPERPARAMETER_NAME_BYTES + 1))));
    assert_eq!(e.field.as_deref(), Some("hyperparameters"), "{e}");
    let e = refused(&space("  \"a\\0b\": 1\n".into()));
    assert_eq!(e.field.as_deref(), Some("hyperparameters"), "{e}");
    assert!(e.message.contains("NUL"), "{e}");
}

#[test]
fn nul_bytes_are_refused_in_every_string() {
    let random = "{name: random, metric: m, max_trials: 4}";
    let cases: Vec<(String, &str)> = vec![
        (GOOD.replace("name: digits", "name: \"dig\\0its\""), "name"),
        (format!("{GOOD}description: \"a\\x00b\"\n"), "description"),
        (GOOD.replace("./digits --epochs 3", "\"./digits\\0 --epochs 3\""), "entrypoint"),
        (GOOD.replace("./digits --epochs 3", "[./digits, \"--ep\\0ochs\"]"), "entrypoint[1]"),
        (GOOD.replace("[RAYON_NUM_THREADS=1]", "[\"A=\\0\"]"), "environment.environment_variables"),
        (GOOD.replace("[RAYON_NUM_THREADS=1]", "{\"A\\0\": 1}"), "environment.environment_variables"),
        (with_searcher("{name: random, metric: \"m\\0\", max_trials: 4}", ""), "searcher.metric"),
        (with_searcher("{name: \"random\\0\", metric: m, max_trials: 4}", ""), "searcher.name"),
        (with_searcher("{name: random, metric: m, time_metric: \"t\\0\", max_trials: 4}", ""), "searcher.time_metric"),
        (with_searcher("{name: random, metric: m, mode: \"x\\0\", max_trials: 4}", ""), "searcher.mode"),
        (with_searcher(random, "checkpoint_storage: {path: \"/tmp/\\0x\"}\n"), "checkpoint_storage.path"),
        (with_searcher(random, "checkpoint_storage: {storage_path: \"a\\0\"}\n"), "checkpoint_storage.storage_path"),
        (with_searcher(random, "checkpoint_storage: {type: s3, bucket: \"b\\0\"}\n"), "checkpoint_storage.bucket"),
        (
            with_searcher(random, "checkpoint_storage: {type: s3, bucket: b, secret_access_key: \"k\\0\"}\n"),
            "checkpoint_storage.secret_access_key",
        ),
    ];
    for (text, field) in cases {
        let e = refused(&text);
        assert_eq!(e.field.as_deref(), Some(field), "{text}: {e}");
        assert!(e.message.contains("NUL"), "{e}");
    }
    // A raw NUL byte is refused by the YAML reader itself.
    assert!(ExperimentConfig::parse(&GOOD.replace("digits\n", "dig\0its\n"), None).is_err());
}

#[test]
fn slots_per_trial_zero_is_refused() {
    let e = refused(&format!("{GOOD}resources: {{slots_per_trial: 0}}\n"));
    assert_eq!(e.field.as_deref(), Some("resources.slots_per_trial"));
    assert_eq!(e.line, Some(13), "{e}");
    assert!(e.message.contains("at least 1"), "{e}");
    let c = ExperimentConfig::parse(&format!("{GOOD}resources: {{slots_per_trial: {MAX_SLOTS_PER_TRIAL}}}\n"), None).unwrap();
    assert_eq!(c.resources.slots_per_trial, MAX_SLOTS_PER_TRIAL);
}

#[test]
fn huge_grids_are_refused_without_being_built() {
    let grid = |hp: &str| {
        let text = with_searcher("{name: grid, metric: m}", "").replace(
            "hyperparameters:\n  lr: {type: log, minval: -4, maxval: -1}\n  hidden: {type: categorical, vals: [32, 64]}\n",
            &format!("hyperparameters:\n  x: {hp}\n  y: {{type: categorical, vals: [a, b]}}\n"),
        );
        ExperimentConfig::parse(&text, None)
    };
    for hp in [
        "{type: int, minval: 0, maxval: 1000000000000}",
        "{type: double, minval: 0, maxval: 1, count: 1000000000000}",
        "{type: log, minval: -3, maxval: 0, count: 1000000000000}",
        "{type: int, minval: -9223372036854775808, maxval: 9223372036854775807}",
        "{type: int, minval: -9223372036854775808, maxval: 9223372036854775807, count: 18446744073709551615}",
        "{a: {type: int, minval: 0, maxval: 400}, b: {type: int, minval: 0, maxval: 400}}",
    ] {
        let e = grid(hp).expect_err(hp);
        assert_eq!(e.field.as_deref(), Some("hyperparameters"), "{e}");
        assert!(e.message.contains("the grid has") && e.message.contains("100000"), "{e}");
    }
    let c = grid("{type: int, minval: -9223372036854775808, maxval: 9223372036854775807, count: 50000}").unwrap();
    assert_eq!(c.planned_trials(), Some(100_000));
}

#[test]
fn deep_and_large_yaml_is_refused_before_parsing() {
    let head = "name: deep\nentrypoint: x\nsearcher: {name: single, metric: m}\n";
    for (body, line) in [
        (format!("hyperparameters: {{a: {}{}}}\n", "[".repeat(100_000), "]".repeat(100_000)), 4),
        (format!("hyperparameters: {}{}\n", "{a: ".repeat(100_000), "}".repeat(100_000)), 4),
        (format!("hyperparameters:\n  a:\n{}x\n", "    - ".repeat(100_000)), 6),
    ] {
        let e = refused(&format!("{head}{body}"));
        assert_eq!(e.field.as_deref(), Some("hyperparameters"), "{e}");
        assert!(e.message.contains(&format!("deeper than {MAX_YAML_DEPTH}")), "{e}");
        assert_eq!(e.line, Some(line), "{e}");
    }
    // Exactly at the limit is fine.
    let ok = format!("{head}hyperparameters: {{a: {}1{}}}\n", "[".repeat(MAX_YAML_DEPTH - 2), "]".repeat(MAX_YAML_DEPTH - 2));
    ExperimentConfig::parse(&ok, None).unwrap();

    let huge = format!("{head}description: {}\n", "x".repeat(MAX_CONFIG_BYTES));
    let e = refused(&huge);
    assert_eq!((e.field.as_deref(), e.line), (None, None), "{e}");
    assert!(e.message.contains("more than the limit of 1048576 bytes"), "{e}");
    let one_mib_deep = format!("{head}hyperparameters: {}", "[".repeat(MAX_CONFIG_BYTES - head.len() - 20));
    assert!(refused(&one_mib_deep).message.contains("deeper than"));
    // 1 MiB of shallow tokens parses (the size is what bounds it) and is then refused for
    // its content.
    let wide = format!("{head}hyperparameters: {{a: {{type: categorical, vals: [{}1]}}}}\n", "1, ".repeat((MAX_CONFIG_BYTES - 200) / 3));
    assert!(wide.len() <= MAX_CONFIG_BYTES);
    assert_eq!(refused(&wide).field.as_deref(), Some("hyperparameters.a.vals"));
}

#[test]
fn wide_alias_bombs_are_refused() {
    let head = "name: x\nentrypoint: a\nsearcher: {name: single, metric: m}\n";
    let wide = format!(
        "{head}description: &d \"{}\"\nhyperparameters:\n  a: &a [{}]\n  b: [{}]\n",
        "y".repeat(1000),
        "*d, ".repeat(1000),
        "*a, ".repeat(1000)
    );
    let e = refused(&wide);
    assert!(e.message.contains("aliases"), "{e}");
    assert!(e.line.is_some(), "{e}");
    // A few aliases of small anchors are fine.
    let c =
        ExperimentConfig::parse(&format!("{head}hyperparameters:\n  a: &a {{type: int, minval: 1, maxval: 3}}\n  b: *a\n"), None).unwrap();
    assert_eq!(c.hyperparameters["a"], c.hyperparameters["b"]);
}

#[test]
fn overflowing_bounds_are_refused() {
    let hp = |def: &str| {
        let text = GOOD.replace("{type: log, minval: -4, maxval: -1}", def);
        ExperimentConfig::parse(&text, None)
    };
    assert_eq!(hp("{type: log, minval: 0, maxval: 400}").unwrap_err().field.as_deref(), Some("hyperparameters.lr.maxval"));
    assert_eq!(hp("{type: log, minval: -400, maxval: 0}").unwrap_err().field.as_deref(), Some("hyperparameters.lr.minval"));
    assert_eq!(hp("{type: log, minval: 0, maxval: 2000, base: 2}").unwrap_err().field.as_deref(), Some("hyperparameters.lr.maxval"));
    assert_eq!(hp("{type: double, minval: -1e308, maxval: 1e308}").unwrap_err().field.as_deref(), Some("hyperparameters.lr.maxval"));
    hp("{type: log, minval: -300, maxval: 300}").unwrap();
    hp("{type: double, minval: -8e307, maxval: 8e307}").unwrap();
    hp("{type: int, minval: -9223372036854775808, maxval: 9223372036854775807}").unwrap();
}

#[test]
fn planned_trials_never_overflow() {
    let mut c = ExperimentConfig::parse(
        &with_searcher("{name: pbt, metric: m, time_metric: t, population_size: 4, max_generations: 3, generation_length: 1}", ""),
        None,
    )
    .unwrap();
    assert_eq!(c.planned_trials(), Some(12));
    c.searcher.max_generations = Some(usize::MAX);
    assert_eq!(c.planned_trials(), None);
}

#[test]
fn tpe_work_per_proposal_is_bounded() {
    let tpe = |candidates: usize, trials: usize, dims: usize| {
        let hps: String = (0..dims).map(|i| format!("  h{i}: {{type: double, minval: 0, maxval: 1}}\n")).collect();
        format!(
            "name: t\nentrypoint: x\nhyperparameters:\n{hps}searcher: {{name: tpe, metric: m, max_trials: {trials}, n_ei_candidates: {candidates}}}\n"
        )
    };
    assert!(ExperimentConfig::parse(&tpe(24, 10_000, 100), None).is_ok());
    let e = ExperimentConfig::parse(&tpe(10_000, 100_000, 10), None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.n_ei_candidates"), "{e}");
    assert!(e.message.contains(&MAX_TPE_WORK.to_string()), "{e}");
}

#[test]
fn resources_default_to_the_default_pool_and_take_pool_priority_weight_and_gpu() {
    let c = ExperimentConfig::parse(GOOD, None).unwrap();
    assert_eq!(c.resources, crate::config::ResourcesConfig::default());
    assert_eq!((c.resources.resource_pool.as_str(), c.resources.priority, c.resources.weight), ("default", 42, 1.0));
    let c =
        ExperimentConfig::parse(&format!("{GOOD}resources: {{resource_pool: gpus, priority: 0, weight: 2.5, gpu: 0.25}}\n"), None).unwrap();
    assert_eq!(
        (c.resources.resource_pool.as_str(), c.resources.priority, c.resources.weight, c.resources.gpu),
        ("gpus", 0, 2.5, Some(0.25))
    );
    let c = ExperimentConfig::parse(&format!("{GOOD}resources: {{gpu: 2}}\n"), None).unwrap();
    assert_eq!(c.resources.gpu, Some(2.0));
}

#[test]
fn resource_fields_out_of_range_are_refused_naming_the_field() {
    let random = "{name: random, metric: m, max_trials: 4}";
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(String, &str)> = vec![
        (with_searcher(random, "resources: {priority: 100}\n"), "resources.priority"),
        (with_searcher(random, "resources: {priority: -1}\n"), "resources.priority"),
        (with_searcher(random, "resources: {weight: .nan}\n"), "resources.weight"),
        (with_searcher(random, "resources: {weight: 0}\n"), "resources.weight"),
        (with_searcher(random, "resources: {weight: 1e300}\n"), "resources.weight"),
        (with_searcher(random, "resources: {gpu: -0.25}\n"), "resources.gpu"),
        (with_searcher(random, "resources: {gpu: .nan}\n"), "resources.gpu"),
        (with_searcher(random, "resources: {gpu: 1.5}\n"), "resources.gpu"),
        (with_searcher(random, "resources: {gpu: 0.0001}\n"), "resources.gpu"),
        (with_searcher(random, "resources: {gpu: 1e9}\n"), "resources.gpu"),
        (with_searcher(random, "resources: {gpu: 0.5, slots_per_trial: 2}\n"), "resources.gpu"),
        (with_searcher(random, "resources: {resource_pool: ''}\n"), "resources.resource_pool"),
        (with_searcher(random, &format!("resources: {{resource_pool: {}}}\n", long(MAX_NAME_BYTES + 1))), "resources.resource_pool"),
    ];
    for (text, field) in cases {
        let e = refused(&text);
        assert_eq!(e.field.as_deref(), Some(field), "{text}: {e}");
    }
}
