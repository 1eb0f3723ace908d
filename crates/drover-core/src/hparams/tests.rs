use super::*;
use crate::limits::{MAX_CATEGORICAL_VALUES, MAX_HYPERPARAMETER_NAME_BYTES, MAX_HYPERPARAMETERS};

fn space(yaml: &str) -> Result<HyperparameterSpace, SpaceError> {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    parse_space(&v, "hyperparameters")
}

#[test]
fn parses_every_kind_and_nesting() {
    let s = space(
        "batch: 32\nlr: {type: log, minval: -4, maxval: -1}\nh: {type: int, minval: 16, maxval: 64}\n\
         drop: {type: double, minval: 0.1, maxval: 0.5}\nopt: {type: categorical, vals: [adam, sgd]}\n\
         model: {depth: {type: int, minval: 1, maxval: 3}, act: relu}\nc: {type: const, val: 3}\n",
    )
    .unwrap();
    assert_eq!(s["batch"], Hyperparameter::Const { val: Value::from(32) });
    assert_eq!(s["lr"], Hyperparameter::Log { minval: -4.0, maxval: -1.0, base: 10.0, count: None });
    assert!(matches!(s["model"], Hyperparameter::Nested { .. }));
    let mut rng = SplitMix64::new(3);
    for _ in 0..200 {
        let v = sample_space(&s, &mut rng);
        let lr = v["lr"].as_f64().unwrap();
        assert!((1e-4..=1e-1).contains(&lr), "{lr}");
        let h = v["h"].as_i64().unwrap();
        assert!((16..=64).contains(&h));
        assert!(["adam", "sgd"].contains(&v["opt"].as_str().unwrap()));
        let depth = v["model"]["depth"].as_i64().unwrap();
        assert!((1..=3).contains(&depth));
        assert_eq!(v["model"]["act"], "relu");
        assert_eq!(v["c"], 3);
    }
}

#[test]
fn refuses_bad_definitions_naming_the_field() {
    let e = space("lr: {type: double, minval: 2, maxval: 1}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.lr.minval");
    let e = space("lr: {type: dubble, minval: 0, maxval: 1}").unwrap_err();
    assert!(e.message.contains("did you mean `double`"), "{e}");
    let e = space("lr: {type: double, minval: 0, maxvall: 1}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.lr.maxvall");
    assert!(e.message.contains("did you mean `maxval`"), "{e}");
    let e = space("lr: {type: int, minval: a, maxval: 1}").unwrap_err();
    assert!(e.message.contains("expected an integer"), "{e}");
    let e = space("o: {type: categorical, vals: []}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.o.vals");
}

#[test]
fn grid_is_the_cartesian_product_and_needs_counts() {
    let s = space(
        "a: {type: int, minval: 1, maxval: 3}\nb: {type: categorical, vals: [x, y]}\nc: {type: log, minval: -3, maxval: -1, count: 3}",
    )
    .unwrap();
    let g = grid(&s, "hyperparameters").unwrap();
    assert_eq!(g.len(), 3 * 2 * 3);
    assert_eq!(grid_size(&s, "hyperparameters").unwrap(), 18);
    let cs: Vec<f64> = g.iter().take(3).map(|p| p["c"].as_f64().unwrap()).collect();
    assert!((cs[0] - 1e-3).abs() < 1e-12 && (cs[2] - 1e-1).abs() < 1e-12);
    let s = space("d: {type: double, minval: 0, maxval: 1}").unwrap();
    let e = grid(&s, "hyperparameters").unwrap_err();
    assert_eq!(e.path, "hyperparameters.d");
}

#[test]
fn points_are_validated_naming_the_field() {
    let s = space(
        "lr: {type: log, minval: -4, maxval: -1}\nh: {type: int, minval: 16, maxval: 64}\nx: {type: double, minval: 0, maxval: 1}\n\
         opt: {type: categorical, vals: [adam, sgd]}\nbatch: 32\nmodel: {depth: {type: int, minval: 1, maxval: 3}}\n",
    )
    .unwrap();
    let good = serde_json::json!({"lr": 0.01, "h": 16, "x": 1, "opt": "sgd", "batch": 32.0, "model": {"depth": 3}});
    let check = |v: Value| validate_point(&s, v.as_object().unwrap(), "actions[2].hparams");
    check(good.clone()).unwrap();
    let mut rng = SplitMix64::new(5);
    for _ in 0..200 {
        validate_point(&s, &sample_space(&s, &mut rng), "p").unwrap();
    }
    let bad = |patch: Value| {
        let mut v = good.clone();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        check(v).unwrap_err()
    };
    let e = bad(serde_json::json!({"x": 3.5}));
    assert_eq!(e.to_string(), "actions[2].hparams.x: 3.5 is above maxval 1.0");
    assert_eq!(bad(serde_json::json!({"x": -0.5})).message, "-0.5 is below minval 0.0");
    assert_eq!(bad(serde_json::json!({"x": "0.5"})).message, "expected a number, found the string \"0.5\"");
    assert_eq!(bad(serde_json::json!({"h": 65})).message, "65 is above maxval 64");
    assert_eq!(bad(serde_json::json!({"h": 20.0})).message, "expected an integer, found the number 20.0");
    assert_eq!(bad(serde_json::json!({"h": u64::MAX})).message, format!("{} is above maxval 64", u64::MAX));
    assert_eq!(bad(serde_json::json!({"lr": 0.5})).message, "0.5 is above 10^-1 = 0.1");
    assert_eq!(bad(serde_json::json!({"lr": 1e-5})).message, "1e-5 is below 10^-4 = 0.0001");
    assert_eq!(bad(serde_json::json!({"opt": "rmsprop"})).message, "\"rmsprop\" is not one of \"adam\", \"sgd\"");
    assert_eq!(bad(serde_json::json!({"batch": 64})).message, "must be the constant 32, not 64");
    let e = bad(serde_json::json!({"model": {"depth": 0}}));
    assert_eq!(e.path, "actions[2].hparams.model.depth");
    assert_eq!(bad(serde_json::json!({"model": 1})).path, "actions[2].hparams.model");
    let e = bad(serde_json::json!({"h": null}));
    assert_eq!((e.path.as_str(), e.message.contains("missing")), ("actions[2].hparams.h", true));
    let e = bad(serde_json::json!({"optt": "adam"}));
    assert_eq!(e.path, "actions[2].hparams.optt");
    assert!(e.message.contains("did you mean `opt`"), "{e}");
    // The ends of a log range, computed the way sampling computes them, are inside.
    check(serde_json::json!({"lr": 10f64.powf(-4.0), "h": 64, "x": 0, "opt": "adam", "batch": 32, "model": {"depth": 1}})).unwrap();
    check(serde_json::json!({"lr": 10f64.powf(-1.0), "h": 64, "x": 0, "opt": "adam", "batch": 32, "model": {"depth": 1}})).unwrap();
}

/// The grid as it was built before it was walked point by point: the cartesian product of
/// each hyperparameter's points (integers spread in f64 and deduplicated; continuous points
/// now clamped to the range, which the last one could leave by an ulp).
fn reference_grid(space: &HyperparameterSpace) -> Vec<serde_json::Map<String, Value>> {
    fn points(hp: &Hyperparameter) -> Vec<Value> {
        let linspace = |lo: f64, hi: f64, n: usize| -> Vec<f64> {
            if n == 1 { vec![lo] } else { (0..n).map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64).clamp(lo, hi)).collect() }
        };
        match hp {
            Hyperparameter::Const { val } => vec![val.clone()],
            Hyperparameter::Categorical { vals } => vals.clone(),
            Hyperparameter::Int { minval, maxval, count } => {
                let span = (maxval - minval) as u64 + 1;
                let n = count.map_or(span, |c| (c as u64).min(span));
                if n == 1 {
                    return vec![Value::from(*minval)];
                }
                let mut points: Vec<i64> =
                    (0..n).map(|i| minval + ((maxval - minval) as f64 * i as f64 / (n - 1) as f64).round() as i64).collect();
                points.dedup();
                points.into_iter().map(Value::from).collect()
            }
            Hyperparameter::Double { minval, maxval, count } => {
                linspace(*minval, *maxval, count.unwrap()).into_iter().map(float_value).collect()
            }
            Hyperparameter::Log { minval, maxval, base, count } => {
                linspace(*minval, *maxval, count.unwrap()).into_iter().map(|e| float_value(base.powf(e))).collect()
            }
            Hyperparameter::Nested { fields } => reference_grid(fields).into_iter().map(Value::Object).collect(),
        }
    }
    let mut combos = vec![serde_json::Map::new()];
    for (name, hp) in space {
        let points = points(hp);
        combos = combos
            .iter()
            .flat_map(|c| {
                points.iter().map(move |p| {
                    let mut c = c.clone();
                    c.insert(name.clone(), p.clone());
                    c
                })
            })
            .collect();
    }
    combos
}

fn small_hp() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        (-40i64..40, 0i64..60, proptest::option::of(1usize..70)).prop_map(|(lo, w, c)| match c {
            Some(c) => format!("{{type: int, minval: {lo}, maxval: {}, count: {c}}}", lo + w),
            None => format!("{{type: int, minval: {lo}, maxval: {}}}", lo + w),
        }),
        (-5.0f64..5.0, 0.0f64..5.0, 1usize..6)
            .prop_map(|(lo, w, c)| format!("{{type: double, minval: {lo}, maxval: {}, count: {c}}}", lo + w)),
        (-4.0f64..0.0, 0.0f64..3.0, 1usize..5)
            .prop_map(|(lo, w, c)| format!("{{type: log, minval: {lo}, maxval: {}, count: {c}, base: 2}}", lo + w)),
        (1usize..4)
            .prop_map(|n| format!("{{type: categorical, vals: [{}]}}", (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", "))),
        Just("7".to_string()),
    ]
}

proptest::proptest! {
    /// Walking the grid point by point gives exactly the cartesian product, in its order.
    #[test]
    fn grid_points_are_the_cartesian_product_in_order(
        top in proptest::collection::vec(small_hp(), 0..3),
        nested in proptest::collection::vec(small_hp(), 0..3),
    ) {
        let mut yaml = String::from("{");
        for (i, hp) in top.iter().enumerate() {
            yaml.push_str(&format!("t{i}: {hp}, "));
        }
        yaml.push_str("g: {");
        for (i, hp) in nested.iter().enumerate() {
            yaml.push_str(&format!("n{i}: {hp}, "));
        }
        yaml.push_str("}}");
        let s = space(&yaml).unwrap();
        proptest::prop_assume!(grid_size(&s, "hyperparameters").unwrap() <= 5000);
        let expected = reference_grid(&s);
        proptest::prop_assert_eq!(grid_size(&s, "hyperparameters").unwrap(), expected.len());
        let g = grid(&s, "hyperparameters").unwrap();
        proptest::prop_assert_eq!(&g, &expected);
        for (i, p) in expected.iter().enumerate() {
            proptest::prop_assert_eq!(&grid_point(&s, i), p);
        }
    }

    /// Bounds the parser accepts, however extreme, only ever give finite numbers: sampled
    /// or on a grid, never a JSON null.
    #[test]
    fn accepted_extreme_bounds_never_give_null(
        lo in proptest::sample::select(EXTREMES.to_vec()),
        hi in proptest::sample::select(EXTREMES.to_vec()),
        base in proptest::sample::select(vec![1e-300, 0.001, 0.5, 1.0000001, 2.0, 10.0, 1e10, 1e300]),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let mut rng = SplitMix64::new(seed);
        for def in [
            format!("{{type: double, minval: {lo:e}, maxval: {hi:e}, count: 5}}"),
            format!("{{type: log, minval: {lo:e}, maxval: {hi:e}, base: {base:e}, count: 5}}"),
        ] {
            let Ok(s) = space(&format!("x: {def}")) else { continue };
            let hp = &s["x"];
            for _ in 0..20 {
                let v = hp.sample(&mut rng);
                proptest::prop_assert!(v.as_f64().is_some_and(f64::is_finite), "{def}: {v}");
                if let Hyperparameter::Log { .. } = hp {
                    proptest::prop_assert!(v.as_f64().unwrap() != 0.0, "{def}: {v}");
                }
                validate_point(&s, &serde_json::Map::from_iter([("x".to_string(), v)]), "p").unwrap();
            }
            for p in grid(&s, "hyperparameters").unwrap() {
                proptest::prop_assert!(p["x"].as_f64().is_some_and(f64::is_finite), "{def}: {p:?}");
            }
        }
    }
}

const EXTREMES: [f64; 13] = [-f64::MAX, -1e308, -8e307, -1e300, -700.0, -1.0, 0.0, 1.0, 700.0, 1e300, 8e307, 1e308, f64::MAX];

#[test]
fn overflowing_bounds_are_refused_naming_the_end() {
    let e = space("x: {type: log, minval: 0, maxval: 400}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.x.maxval");
    assert!(e.message.contains("10^400"), "{e}");
    let e = space("x: {type: log, minval: -400, maxval: 0}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.x.minval");
    assert!(e.message.contains("0"), "{e}");
    let e = space("x: {type: log, minval: 1, maxval: 2, base: 1e300}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.x.maxval");
    let e = space("x: {type: double, minval: -1e308, maxval: 1e308}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.x.maxval");
    space("x: {type: double, minval: -8e307, maxval: 8e307}").unwrap();
}

#[test]
fn grid_size_is_counted_not_built() {
    let s = space("x: {type: int, minval: -9223372036854775808, maxval: 9223372036854775807}").unwrap();
    assert_eq!(grid_size(&s, "hyperparameters").unwrap(), usize::MAX, "2^64 points saturate");
    let e = grid(&s, "hyperparameters").unwrap_err();
    assert_eq!(e.path, "hyperparameters");
    let s =
        space("x: {type: int, minval: 0, maxval: 1000000000000}\ny: {type: double, minval: 0, maxval: 1, count: 1000000000000}").unwrap();
    assert_eq!(grid_size(&s, "hyperparameters").unwrap(), usize::MAX);
    assert!(grid(&s, "hyperparameters").is_err());
    let s = space("x: {type: int, minval: 0, maxval: 1000000000000}").unwrap();
    assert_eq!(grid_size(&s, "hyperparameters").unwrap(), 1_000_000_000_001);
    // The full i64 range spread over a few points: the ends, exactly, and no overflow.
    let s = space("x: {type: int, minval: -9223372036854775808, maxval: 9223372036854775807, count: 3}").unwrap();
    let xs: Vec<i64> = grid(&s, "hyperparameters").unwrap().iter().map(|p| p["x"].as_i64().unwrap()).collect();
    assert_eq!(xs, vec![i64::MIN, 0, i64::MAX]);
    let s = space("x: {type: int, minval: 0, maxval: 9, count: 7}").unwrap();
    let xs: Vec<i64> = grid(&s, "hyperparameters").unwrap().iter().map(|p| p["x"].as_i64().unwrap()).collect();
    assert_eq!(xs, vec![0, 2, 3, 5, 6, 8, 9], "rounded half up, all distinct");
}

#[test]
fn space_limits_are_refused_naming_the_field() {
    let many: String = (0..=MAX_HYPERPARAMETERS).map(|i| format!("h{i}: 1\n")).collect();
    assert_eq!(space(&many).unwrap_err().path, "hyperparameters");
    let vals = vec!["0"; MAX_CATEGORICAL_VALUES + 1].join(", ");
    assert_eq!(space(&format!("g: {{c: {{type: categorical, vals: [{vals}]}}}}")).unwrap_err().path, "hyperparameters.g.c.vals");
    let e = space(&format!("g: {{{}: 1}}", "n".repeat(MAX_HYPERPARAMETER_NAME_BYTES + 1))).unwrap_err();
    assert_eq!(e.path, "hyperparameters.g");
    let e = space("g: {\"a\\0\": 1}").unwrap_err();
    assert_eq!(e.path, "hyperparameters.g");
    assert!(e.message.contains("NUL") && e.message.contains("\\0"), "{e}");
}

#[test]
fn suggestions_cost_nothing_for_long_words() {
    let names: Vec<String> = (0..1000).map(|i| format!("{}{i}", "n".repeat(250))).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(did_you_mean(&"n".repeat(1 << 20), &names), "");
    assert_eq!(did_you_mean(&"n".repeat(65), &names), "");
    assert_eq!(did_you_mean("learning_rat", &["learning_rate", "momentum"]), " (did you mean `learning_rate`?)");
}

#[test]
fn suggestions_only_for_near_misses() {
    assert_eq!(did_you_mean("serchr", &["searcher", "name"]), " (did you mean `searcher`?)");
    assert_eq!(did_you_mean("zzzzzzzz", &["searcher", "name"]), "");
}
