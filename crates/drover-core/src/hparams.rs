//! Hyperparameter spaces in Determined's shape: `const`, `int`, `double`, `log`, `categorical`,
//! and nested maps, plus random sampling and grid enumeration over them.
//!
//! A space is parsed from a YAML value rather than derived with serde because a map is either a
//! hyperparameter (it has a `type` key), a bare constant, or a nested group, and the errors must
//! name the field path that was wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rng::SplitMix64;

/// One hyperparameter, or a nested group of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Hyperparameter {
    Const { val: Value },
    Int { minval: i64, maxval: i64, count: Option<usize> },
    Double { minval: f64, maxval: f64, count: Option<usize> },
    Log { minval: f64, maxval: f64, base: f64, count: Option<usize> },
    Categorical { vals: Vec<Value> },
    Nested { fields: HyperparameterSpace },
}

/// The named hyperparameters of an experiment; ordered so that sampling is deterministic.
pub type HyperparameterSpace = BTreeMap<String, Hyperparameter>;

/// A problem in a hyperparameter definition, with the dotted path to the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpaceError {
    pub path: String,
    pub message: String,
}

fn space_err(path: &str, message: impl Into<String>) -> SpaceError {
    SpaceError { path: path.to_string(), message: message.into() }
}

const KNOWN_TYPES: [&str; 5] = ["const", "int", "double", "log", "categorical"];

/// Parses the `hyperparameters` section. `prefix` is the path of the section itself.
pub fn parse_space(value: &serde_yaml::Value, prefix: &str) -> Result<HyperparameterSpace, SpaceError> {
    let serde_yaml::Value::Mapping(map) = value else {
        return Err(space_err(prefix, "expected a map of hyperparameter names to definitions"));
    };
    let mut space = BTreeMap::new();
    for (key, val) in map {
        let Some(name) = key.as_str() else {
            return Err(space_err(prefix, "hyperparameter names must be strings"));
        };
        let path = format!("{prefix}.{name}");
        space.insert(name.to_string(), parse_one(val, &path)?);
    }
    Ok(space)
}

fn parse_one(value: &serde_yaml::Value, path: &str) -> Result<Hyperparameter, SpaceError> {
    let serde_yaml::Value::Mapping(map) = value else {
        return Ok(Hyperparameter::Const { val: yaml_to_json(value, path)? });
    };
    let Some(kind) = map.get("type") else {
        return Ok(Hyperparameter::Nested { fields: parse_space(value, path)? });
    };
    let kind = kind.as_str().ok_or_else(|| space_err(&format!("{path}.type"), "must be a string"))?;
    let allowed: &[&str] = match kind {
        "const" => &["type", "val"],
        "int" | "double" => &["type", "minval", "maxval", "count"],
        "log" => &["type", "minval", "maxval", "base", "count"],
        "categorical" => &["type", "vals"],
        other => {
            return Err(space_err(
                &format!("{path}.type"),
                format!(
                    "unknown hyperparameter type `{other}`{}; expected one of {}",
                    did_you_mean(other, &KNOWN_TYPES),
                    KNOWN_TYPES.join(", ")
                ),
            ));
        }
    };
    for key in map.keys() {
        let key = key.as_str().unwrap_or("?");
        if !allowed.contains(&key) {
            return Err(space_err(
                &format!("{path}.{key}"),
                format!(
                    "unknown field `{key}` for a `{kind}` hyperparameter{}; expected one of {}",
                    did_you_mean(key, allowed),
                    allowed.join(", ")
                ),
            ));
        }
    }
    let field = |name: &str| -> Result<&serde_yaml::Value, SpaceError> {
        map.get(name).ok_or_else(|| space_err(path, format!("a `{kind}` hyperparameter needs `{name}`")))
    };
    let float = |name: &str| -> Result<f64, SpaceError> {
        let v = field(name)?;
        let f = v.as_f64().ok_or_else(|| space_err(&format!("{path}.{name}"), format!("expected a number, found {}", describe(v))))?;
        if !f.is_finite() {
            return Err(space_err(&format!("{path}.{name}"), "must be a finite number"));
        }
        Ok(f)
    };
    let int = |name: &str| -> Result<i64, SpaceError> {
        let v = field(name)?;
        v.as_i64().ok_or_else(|| space_err(&format!("{path}.{name}"), format!("expected an integer, found {}", describe(v))))
    };
    let count = || -> Result<Option<usize>, SpaceError> {
        match map.get("count") {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Ok(Some(n as usize)),
                _ => Err(space_err(&format!("{path}.count"), format!("expected a positive integer, found {}", describe(v)))),
            },
        }
    };
    let hp = match kind {
        "const" => Hyperparameter::Const { val: yaml_to_json(field("val")?, &format!("{path}.val"))? },
        "int" => {
            let (minval, maxval) = (int("minval")?, int("maxval")?);
            if minval > maxval {
                return Err(space_err(&format!("{path}.minval"), format!("minval ({minval}) is greater than maxval ({maxval})")));
            }
            Hyperparameter::Int { minval, maxval, count: count()? }
        }
        "double" => {
            let (minval, maxval) = (float("minval")?, float("maxval")?);
            if minval > maxval {
                return Err(space_err(&format!("{path}.minval"), format!("minval ({minval}) is greater than maxval ({maxval})")));
            }
            Hyperparameter::Double { minval, maxval, count: count()? }
        }
        "log" => {
            let (minval, maxval) = (float("minval")?, float("maxval")?);
            let base = if map.contains_key("base") { float("base")? } else { 10.0 };
            if minval > maxval {
                return Err(space_err(&format!("{path}.minval"), format!("minval ({minval}) is greater than maxval ({maxval})")));
            }
            if base <= 0.0 || base == 1.0 {
                return Err(space_err(&format!("{path}.base"), "must be positive and not 1"));
            }
            Hyperparameter::Log { minval, maxval, base, count: count()? }
        }
        "categorical" => {
            let vals = field("vals")?;
            let serde_yaml::Value::Sequence(items) = vals else {
                return Err(space_err(&format!("{path}.vals"), format!("expected a list, found {}", describe(vals))));
            };
            if items.is_empty() {
                return Err(space_err(&format!("{path}.vals"), "needs at least one value"));
            }
            let vals = items.iter().map(|v| yaml_to_json(v, &format!("{path}.vals"))).collect::<Result<_, _>>()?;
            Hyperparameter::Categorical { vals }
        }
        _ => unreachable!("kind was checked above"),
    };
    Ok(hp)
}

fn describe(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Null => "nothing".into(),
        serde_yaml::Value::Bool(b) => format!("the boolean {b}"),
        serde_yaml::Value::Number(n) => format!("the number {n}"),
        serde_yaml::Value::String(s) => format!("the string {s:?}"),
        serde_yaml::Value::Sequence(_) => "a list".into(),
        serde_yaml::Value::Mapping(_) => "a map".into(),
        serde_yaml::Value::Tagged(_) => "a tagged value".into(),
    }
}

fn yaml_to_json(v: &serde_yaml::Value, path: &str) -> Result<Value, SpaceError> {
    serde_json::to_value(v).map_err(|e| space_err(path, format!("cannot be represented as JSON: {e}")))
}

/// Suggests the closest of `candidates` to a misspelt `word`, as " (did you mean `x`?)".
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let best = candidates.iter().map(|c| (edit_distance(word, c), *c)).min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= (word.len().max(3) / 3).max(2) => format!(" (did you mean `{c}`?)"),
        _ => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Hyperparameter {
    /// Draws one value uniformly (log-uniformly for `log`).
    pub fn sample(&self, rng: &mut SplitMix64) -> Value {
        match self {
            Hyperparameter::Const { val } => val.clone(),
            Hyperparameter::Int { minval, maxval, .. } => Value::from(rng.range_i64(*minval, *maxval)),
            Hyperparameter::Double { minval, maxval, .. } => float_value(minval + rng.next_f64() * (maxval - minval)),
            Hyperparameter::Log { minval, maxval, base, .. } => {
                let exp = minval + rng.next_f64() * (maxval - minval);
                float_value(base.powf(exp))
            }
            Hyperparameter::Categorical { vals } => vals[rng.index(vals.len())].clone(),
            Hyperparameter::Nested { fields } => Value::Object(sample_space(fields, rng)),
        }
    }

    /// The grid points of this hyperparameter, or the reason it has none.
    fn grid_points(&self, path: &str) -> Result<Vec<Value>, SpaceError> {
        let need_count = || space_err(path, "a grid search needs `count` on a continuous hyperparameter");
        Ok(match self {
            Hyperparameter::Const { val } => vec![val.clone()],
            Hyperparameter::Categorical { vals } => vals.clone(),
            Hyperparameter::Int { minval, maxval, count } => {
                let span = (maxval - minval) as u64 + 1;
                let n = count.map_or(span, |c| (c as u64).min(span));
                if n == 1 {
                    vec![Value::from(*minval)]
                } else {
                    // Evenly spread and rounded, as Determined does; the ends are always included.
                    let mut points: Vec<i64> =
                        (0..n).map(|i| minval + ((maxval - minval) as f64 * i as f64 / (n - 1) as f64).round() as i64).collect();
                    points.dedup();
                    points.into_iter().map(Value::from).collect()
                }
            }
            Hyperparameter::Double { minval, maxval, count } => {
                let n = count.ok_or_else(need_count)?;
                linspace(*minval, *maxval, n).into_iter().map(float_value).collect()
            }
            Hyperparameter::Log { minval, maxval, base, count } => {
                let n = count.ok_or_else(need_count)?;
                linspace(*minval, *maxval, n).into_iter().map(|e| float_value(base.powf(e))).collect()
            }
            Hyperparameter::Nested { fields } => grid(fields, path)?.into_iter().map(Value::Object).collect(),
        })
    }
}

fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect()
}

fn float_value(f: f64) -> Value {
    serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// Samples every hyperparameter of a space into a JSON object.
pub fn sample_space(space: &HyperparameterSpace, rng: &mut SplitMix64) -> serde_json::Map<String, Value> {
    space.iter().map(|(name, hp)| (name.clone(), hp.sample(rng))).collect()
}

/// The cartesian product of every hyperparameter's grid points, in a stable order.
pub fn grid(space: &HyperparameterSpace, prefix: &str) -> Result<Vec<serde_json::Map<String, Value>>, SpaceError> {
    let mut combos = vec![serde_json::Map::new()];
    for (name, hp) in space {
        let points = hp.grid_points(&format!("{prefix}.{name}"))?;
        let mut next = Vec::with_capacity(combos.len() * points.len());
        for combo in &combos {
            for p in &points {
                let mut c = combo.clone();
                c.insert(name.clone(), p.clone());
                next.push(c);
            }
        }
        combos = next;
    }
    Ok(combos)
}

/// How many points a grid search over `space` has, without building them.
pub fn grid_size(space: &HyperparameterSpace, prefix: &str) -> Result<usize, SpaceError> {
    let mut total: usize = 1;
    for (name, hp) in space {
        let n = match hp {
            Hyperparameter::Nested { fields } => grid_size(fields, &format!("{prefix}.{name}"))?,
            other => other.grid_points(&format!("{prefix}.{name}"))?.len(),
        };
        total = total.saturating_mul(n);
    }
    Ok(total)
}

/// Checks that `point` lies in `space`: every hyperparameter has a value and nothing else does,
/// each value has its hyperparameter's type and lies in its range, constants are equal.
/// Sampled points pass by construction; this is for points proposed from outside (a custom
/// searcher's advisor), which the master must not pass to trials unchecked. `prefix` is the
/// path of the point itself (e.g. `actions[0].hparams`), so the error names the exact field.
pub fn validate_point(space: &HyperparameterSpace, point: &serde_json::Map<String, Value>, prefix: &str) -> Result<(), SpaceError> {
    if let Some(unknown) = point.keys().find(|k| !space.contains_key(*k)) {
        let names: Vec<&str> = space.keys().map(String::as_str).collect();
        return Err(space_err(
            &format!("{prefix}.{unknown}"),
            format!("not a hyperparameter of this experiment{}; expected {}", did_you_mean(unknown, &names), expected_names(&names)),
        ));
    }
    for (name, hp) in space {
        let path = format!("{prefix}.{name}");
        let value = point.get(name).ok_or_else(|| space_err(&path, "missing; every hyperparameter of the experiment needs a value"))?;
        hp.validate(value, &path)?;
    }
    Ok(())
}

fn expected_names(names: &[&str]) -> String {
    if names.is_empty() { "no hyperparameters at all".into() } else { format!("one of {}", names.join(", ")) }
}

impl Hyperparameter {
    fn validate(&self, value: &Value, path: &str) -> Result<(), SpaceError> {
        let number = || value.as_f64().ok_or_else(|| space_err(path, format!("expected a number, found {}", describe_json(value))));
        match self {
            Hyperparameter::Const { val } => {
                if !json_eq(val, value) {
                    return Err(space_err(path, format!("must be the constant {val}, not {value}")));
                }
            }
            Hyperparameter::Int { minval, maxval, .. } => {
                let Some(v) = value.as_i64() else {
                    // A u64 beyond i64 is an integer, just far too large.
                    if value.is_u64() {
                        return Err(space_err(path, format!("{value} is above maxval {maxval}")));
                    }
                    return Err(space_err(path, format!("expected an integer, found {}", describe_json(value))));
                };
                if v < *minval {
                    return Err(space_err(path, format!("{v} is below minval {minval}")));
                }
                if v > *maxval {
                    return Err(space_err(path, format!("{v} is above maxval {maxval}")));
                }
            }
            Hyperparameter::Double { minval, maxval, .. } => {
                let v = number()?;
                if v < *minval {
                    return Err(space_err(path, format!("{v:?} is below minval {minval:?}")));
                }
                if v > *maxval {
                    return Err(space_err(path, format!("{v:?} is above maxval {maxval:?}")));
                }
            }
            Hyperparameter::Log { minval, maxval, base, .. } => {
                let v = number()?;
                let (lo, hi) = (base.powf(*minval), base.powf(*maxval));
                let (lo, hi, low_exp, high_exp) = if lo <= hi { (lo, hi, minval, maxval) } else { (hi, lo, maxval, minval) };
                // base^x is rounded, so a value computed from an in-range exponent may land an
                // ulp or so outside [lo, hi]; it is still that exponent's value.
                let slack = 1e-12;
                if v < lo * (1.0 - slack) {
                    return Err(space_err(path, format!("{v:?} is below {base}^{low_exp} = {lo:?}")));
                }
                if v > hi * (1.0 + slack) {
                    return Err(space_err(path, format!("{v:?} is above {base}^{high_exp} = {hi:?}")));
                }
            }
            Hyperparameter::Categorical { vals } => {
                if !vals.iter().any(|c| json_eq(c, value)) {
                    let list: Vec<String> = vals.iter().map(Value::to_string).collect();
                    return Err(space_err(path, format!("{value} is not one of {}", list.join(", "))));
                }
            }
            Hyperparameter::Nested { fields } => {
                let Value::Object(map) = value else {
                    return Err(space_err(path, format!("expected a map of nested hyperparameters, found {}", describe_json(value))));
                };
                validate_point(fields, map, path)?;
            }
        }
        Ok(())
    }
}

/// JSON equality where numbers compare by value, so that a constant 32 accepts 32.0: clients
/// in other languages do not always keep the integer/float distinction.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w))),
        _ => a == b,
    }
}

fn describe_json(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a map".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(did_you_mean("serchr", &["searcher", "name"]), " (did you mean `searcher`?)");
        assert_eq!(did_you_mean("zzzzzzzz", &["searcher", "name"]), "");
    }
}
