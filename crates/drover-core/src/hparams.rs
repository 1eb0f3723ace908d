//! Hyperparameter spaces in Determined's shape: `const`, `int`, `double`, `log`, `categorical`,
//! and nested maps, plus random sampling and grid enumeration over them.
//!
//! A space is parsed from a YAML value rather than derived with serde because a map is either a
//! hyperparameter (it has a `type` key), a bare constant, or a nested group, and the errors must
//! name the field path that was wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::{MAX_CATEGORICAL_VALUES, MAX_GRID_POINTS, MAX_HYPERPARAMETER_NAME_BYTES, MAX_HYPERPARAMETERS};
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
///
/// Refuses more than [`MAX_HYPERPARAMETERS`] entries in all (nested groups and their members
/// each count one), names longer than [`MAX_HYPERPARAMETER_NAME_BYTES`] or holding a NUL byte,
/// more than [`MAX_CATEGORICAL_VALUES`] values of a `categorical`, and bounds whose values a
/// double cannot hold (so that every sample is a finite number).
pub fn parse_space(value: &serde_yaml::Value, prefix: &str) -> Result<HyperparameterSpace, SpaceError> {
    parse_group(value, prefix, &mut Counter { root: prefix, seen: 0 })
}

/// Hyperparameters parsed so far, against [`MAX_HYPERPARAMETERS`].
struct Counter<'a> {
    root: &'a str,
    seen: usize,
}

fn parse_group(value: &serde_yaml::Value, prefix: &str, counter: &mut Counter) -> Result<HyperparameterSpace, SpaceError> {
    let serde_yaml::Value::Mapping(map) = value else {
        return Err(space_err(prefix, "expected a map of hyperparameter names to definitions"));
    };
    let mut space = BTreeMap::new();
    for (key, val) in map {
        let Some(name) = key.as_str() else {
            return Err(space_err(prefix, "hyperparameter names must be strings"));
        };
        counter.seen += 1;
        if counter.seen > MAX_HYPERPARAMETERS {
            return Err(space_err(counter.root, format!("more than {MAX_HYPERPARAMETERS} hyperparameters, nested ones included")));
        }
        if name.len() > MAX_HYPERPARAMETER_NAME_BYTES {
            return Err(space_err(
                prefix,
                format!("a hyperparameter name is {} bytes long, more than the limit of {MAX_HYPERPARAMETER_NAME_BYTES}", name.len()),
            ));
        }
        if name.contains('\0') {
            return Err(space_err(prefix, format!("the hyperparameter name {name:?} must not contain NUL bytes")));
        }
        let path = format!("{prefix}.{name}");
        space.insert(name.to_string(), parse_one(val, &path, counter)?);
    }
    Ok(space)
}

fn parse_one(value: &serde_yaml::Value, path: &str, counter: &mut Counter) -> Result<Hyperparameter, SpaceError> {
    let serde_yaml::Value::Mapping(map) = value else {
        return Ok(Hyperparameter::Const { val: yaml_to_json(value, path)? });
    };
    let Some(kind) = map.get("type") else {
        return Ok(Hyperparameter::Nested { fields: parse_group(value, path, counter)? });
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
            if !(maxval - minval).is_finite() {
                return Err(space_err(
                    &format!("{path}.maxval"),
                    format!("the range from {minval:e} to {maxval:e} is wider than a double can hold"),
                ));
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
            // Every value is base^x for x in [minval, maxval]: both ends must be a finite,
            // non-zero double, or samples would be infinite (JSON null) or 0.
            for (end, exponent) in [("minval", minval), ("maxval", maxval)] {
                let value = base.powf(exponent);
                if !value.is_finite() || value == 0.0 {
                    let what = if value == 0.0 { "rounds to 0" } else { "is too large" };
                    return Err(space_err(&format!("{path}.{end}"), format!("{base}^{exponent} {what} for a double")));
                }
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
            if items.len() > MAX_CATEGORICAL_VALUES {
                return Err(space_err(
                    &format!("{path}.vals"),
                    format!("{} values, more than the limit of {MAX_CATEGORICAL_VALUES}", items.len()),
                ));
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
///
/// Words longer than 64 characters get no suggestion, and candidates whose length alone puts
/// them out of reach are not compared: `word` may come from a request (an advisor's point), so
/// its cost must not grow with its length.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let len = word.chars().count();
    if len > 64 {
        return String::new();
    }
    let reach = (word.len().max(3) / 3).max(2);
    let best = candidates
        .iter()
        .filter(|c| c.chars().count().abs_diff(len) <= reach)
        .map(|c| (edit_distance(word, c), *c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d <= reach => format!(" (did you mean `{c}`?)"),
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

    /// How many points this hyperparameter has on a grid, saturating; a continuous one without
    /// `count` has one here (see [`space_count`], which refuses it).
    fn grid_count(&self) -> u128 {
        match self {
            Hyperparameter::Const { .. } => 1,
            Hyperparameter::Categorical { vals } => vals.len() as u128,
            Hyperparameter::Int { minval, maxval, count } => int_points(*minval, *maxval, *count).1,
            Hyperparameter::Double { count, .. } | Hyperparameter::Log { count, .. } => count.map_or(1, |c| c as u128),
            Hyperparameter::Nested { fields } => fields.values().fold(1u128, |n, hp| n.saturating_mul(hp.grid_count())),
        }
    }

    /// Point `index` (below [`Self::grid_count`]) of this hyperparameter's grid.
    fn grid_point(&self, index: u128) -> Value {
        match self {
            Hyperparameter::Const { val } => val.clone(),
            Hyperparameter::Categorical { vals } => vals[(index % vals.len() as u128) as usize].clone(),
            Hyperparameter::Int { minval, maxval, count } => {
                let (span, n) = int_points(*minval, *maxval, *count);
                if n <= 1 {
                    return Value::from(*minval);
                }
                // Evenly spread and rounded half up, as Determined does; the ends are always
                // included. Exact in u128 (span < 2^64), and with n <= span no two points
                // coincide, so the grid has exactly n points.
                let i = index.min(n - 1);
                let (q, d) = ((span - 1) * i, n - 1);
                let offset = q / d + u128::from(2 * (q % d) >= d);
                Value::from((i128::from(*minval) + offset as i128) as i64)
            }
            Hyperparameter::Double { minval, maxval, count } => float_value(linspace_at(*minval, *maxval, count.unwrap_or(1), index)),
            Hyperparameter::Log { minval, maxval, base, count } => {
                float_value(base.powf(linspace_at(*minval, *maxval, count.unwrap_or(1), index)))
            }
            Hyperparameter::Nested { fields } => Value::Object(space_point(fields, index)),
        }
    }
}

/// The integers of `[minval, maxval]` and how many of them a grid takes (`count`, at most all).
/// Computed in u128: the full i64 range has 2^64 of them.
fn int_points(minval: i64, maxval: i64, count: Option<usize>) -> (u128, u128) {
    let span = (i128::from(maxval) - i128::from(minval) + 1).max(1) as u128;
    (span, count.map_or(span, |c| (c as u128).min(span)))
}

/// Point `i` of `n` evenly spaced from `lo` to `hi`, both included.
fn linspace_at(lo: f64, hi: f64, n: usize, i: u128) -> f64 {
    if n <= 1 {
        return lo;
    }
    let (i, last) = (i as f64, (n - 1) as f64);
    let v = lo + (hi - lo) * i / last;
    // (hi - lo) * i overflows for a range near the largest double; the fraction first cannot.
    let v = if v.is_finite() { v } else { lo + (hi - lo) * (i / last) };
    v.clamp(lo, hi)
}

fn float_value(f: f64) -> Value {
    serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// Samples every hyperparameter of a space into a JSON object.
pub fn sample_space(space: &HyperparameterSpace, rng: &mut SplitMix64) -> serde_json::Map<String, Value> {
    space.iter().map(|(name, hp)| (name.clone(), hp.sample(rng))).collect()
}

/// The number of grid points of `space` (saturating), or the first hyperparameter without a
/// grid (a continuous one without `count`), named by its path under `prefix`.
fn space_count(space: &HyperparameterSpace, prefix: &str) -> Result<u128, SpaceError> {
    let mut total: u128 = 1;
    for (name, hp) in space {
        let n = match hp {
            Hyperparameter::Nested { fields } => space_count(fields, &format!("{prefix}.{name}"))?,
            Hyperparameter::Double { count: None, .. } | Hyperparameter::Log { count: None, .. } => {
                return Err(space_err(&format!("{prefix}.{name}"), "a grid search needs `count` on a continuous hyperparameter"));
            }
            other => other.grid_count(),
        };
        total = total.saturating_mul(n);
    }
    Ok(total)
}

/// Point `index` of the grid of `space`: the last hyperparameter (in name order) varies
/// fastest, nested groups walk their own grid the same way.
fn space_point(space: &HyperparameterSpace, index: u128) -> serde_json::Map<String, Value> {
    let counts: Vec<u128> = space.values().map(|hp| hp.grid_count().max(1)).collect();
    let mut picks = vec![0u128; counts.len()];
    let mut rest = index;
    for (pick, count) in picks.iter_mut().zip(&counts).rev() {
        *pick = rest % count;
        rest /= count;
    }
    space.iter().zip(picks).map(|((name, hp), pick)| (name.clone(), hp.grid_point(pick))).collect()
}

/// How many points a grid search over `space` has, counted from each hyperparameter's number of
/// points (an `int`: `count`, at most every integer of its range; `double` and `log`: `count`;
/// `categorical`: its values; a nested group: the product of its members) without building
/// any; saturates at `usize::MAX`.
pub fn grid_size(space: &HyperparameterSpace, prefix: &str) -> Result<usize, SpaceError> {
    Ok(usize::try_from(space_count(space, prefix)?).unwrap_or(usize::MAX))
}

/// Point `index` (below [`grid_size`]) of the grid over `space`, in the order of [`grid`],
/// built alone: a grid search walks its points one at a time.
pub fn grid_point(space: &HyperparameterSpace, index: usize) -> serde_json::Map<String, Value> {
    space_point(space, index as u128)
}

/// The cartesian product of every hyperparameter's grid points, in a stable order. A grid of
/// more than [`MAX_GRID_POINTS`] points is refused before anything is built.
pub fn grid(space: &HyperparameterSpace, prefix: &str) -> Result<Vec<serde_json::Map<String, Value>>, SpaceError> {
    let n = grid_size(space, prefix)?;
    if n > MAX_GRID_POINTS {
        return Err(space_err(prefix, format!("the grid has {n} points, more than the limit of {MAX_GRID_POINTS}")));
    }
    Ok((0..n).map(|i| grid_point(space, i)).collect())
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
mod tests;
