//! Typed access to the trial's hyperparameters by name or dotted path.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::SdkError;

/// Finds `name` in `hparams`. A key that literally contains dots wins over the nested path, so
/// a flat `{"model.depth": 3}` and a nested `{"model": {"depth": 3}}` both work. On failure,
/// returns the keys that exist at the level where the path broke off.
pub(crate) fn lookup<'a>(hparams: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Vec<String>> {
    if let Some(value) = hparams.get(name) {
        return Ok(value);
    }
    let mut level = hparams;
    let mut parts = name.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(value) = level.get(part) else {
            return Err(level.keys().cloned().collect());
        };
        if parts.peek().is_none() {
            return Ok(value);
        }
        match value {
            Value::Object(inner) => level = inner,
            // The path goes on below a value that has no fields: nothing to suggest.
            _ => return Err(Vec::new()),
        }
    }
    Err(level.keys().cloned().collect())
}

pub(crate) fn get<T: DeserializeOwned>(hparams: &Map<String, Value>, name: &str) -> Result<T, SdkError> {
    match get_opt(hparams, name)? {
        Some(value) => Ok(value),
        None => Err(SdkError::MissingHparam { name: name.to_string(), known: lookup(hparams, name).err().unwrap_or_default() }),
    }
}

/// Like [`get`], but an absent hyperparameter (or an explicit `null`) is `None` rather than an
/// error. A present value of the wrong type is still an error.
pub(crate) fn get_opt<T: DeserializeOwned>(hparams: &Map<String, Value>, name: &str) -> Result<Option<T>, SdkError> {
    let value = match lookup(hparams, name) {
        Ok(Value::Null) | Err(_) => return Ok(None),
        Ok(value) => value,
    };
    T::deserialize(value).map(Some).map_err(|err| SdkError::HparamType {
        name: name.to_string(),
        value: shorten(&value.to_string(), 80),
        expected: short_type_name(std::any::type_name::<T>()),
        // serde quotes the whole value again here.
        reason: shorten(&err.to_string(), 160),
    })
}

/// Cuts `text` short so that a large hparam value does not flood the error.
fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max_chars).collect();
        format!("{cut}...")
    }
}

/// `alloc::vec::Vec<alloc::string::String>` -> `Vec<String>`: the module paths only get in the way
/// of a person reading the error.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for ch in full.chars() {
        if ch.is_alphanumeric() || ch == '_' || ch == ':' {
            segment.push(ch);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(""));
            segment.clear();
            out.push(ch);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hparams(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("test hparams must be an object, got {other}"),
        }
    }

    #[test]
    fn reads_top_level_and_nested_paths() {
        let hp = hparams(json!({"lr": 0.01, "model": {"depth": 3, "act": {"name": "relu"}}}));
        assert_eq!(get::<f64>(&hp, "lr").unwrap(), 0.01);
        assert_eq!(get::<i64>(&hp, "model.depth").unwrap(), 3);
        assert_eq!(get::<String>(&hp, "model.act.name").unwrap(), "relu");
        assert_eq!(get::<Value>(&hp, "model.act").unwrap(), json!({"name": "relu"}));
    }

    #[test]
    fn a_flat_key_with_dots_wins_over_the_nested_path() {
        let hp = hparams(json!({"model.depth": 5, "model": {"depth": 3}}));
        assert_eq!(get::<i64>(&hp, "model.depth").unwrap(), 5);
    }

    #[test]
    fn missing_names_list_the_names_at_the_level_that_failed() {
        let hp = hparams(json!({"lr": 0.01, "model": {"depth": 3, "width": 8}}));
        let err = get::<i64>(&hp, "model.dpth").unwrap_err();
        let SdkError::MissingHparam { name, known } = &err else { panic!("wrong error {err:?}") };
        assert_eq!(name, "model.dpth");
        assert_eq!(known, &vec!["depth".to_string(), "width".to_string()]);
        assert!(err.to_string().contains("\"model.dpth\" is not set"), "{err}");

        let err = get::<i64>(&hp, "lr.x").unwrap_err();
        assert!(matches!(err, SdkError::MissingHparam { ref known, .. } if known.is_empty()), "{err:?}");
        assert!(matches!(get::<i64>(&hp, "nope").unwrap_err(), SdkError::MissingHparam { .. }));
    }

    #[test]
    fn wrong_types_name_the_hparam_and_the_expected_type() {
        let hp = hparams(json!({"hidden": 0.5, "layers": ["a", 1]}));
        let err = get::<i64>(&hp, "hidden").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"hidden\" is 0.5, expected i64"), "{text}");

        let text = get::<Vec<String>>(&hp, "layers").unwrap_err().to_string();
        assert!(text.contains("expected Vec<String>"), "{text}");
    }

    #[test]
    fn optional_access_treats_absent_and_null_as_none_but_keeps_type_errors() {
        let hp = hparams(json!({"x": 0.25, "nothing": null, "flag": "yes"}));
        assert_eq!(get_opt::<f64>(&hp, "x").unwrap(), Some(0.25));
        assert_eq!(get_opt::<f64>(&hp, "absent").unwrap(), None);
        assert_eq!(get_opt::<f64>(&hp, "nothing").unwrap(), None);
        assert!(matches!(get_opt::<bool>(&hp, "flag"), Err(SdkError::HparamType { .. })));
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let long = "z".repeat(500);
        let hp = hparams(json!({"s": long}));
        let text = get::<i64>(&hp, "s").unwrap_err().to_string();
        assert!(text.contains("zzz..."), "{text}");
        assert!(text.len() < 400, "{text}");
    }

    #[test]
    fn type_names_lose_their_module_paths() {
        assert_eq!(short_type_name("alloc::vec::Vec<alloc::string::String>"), "Vec<String>");
        assert_eq!(short_type_name("core::option::Option<(i64, f64)>"), "Option<(i64, f64)>");
        assert_eq!(short_type_name("f64"), "f64");
    }
}
