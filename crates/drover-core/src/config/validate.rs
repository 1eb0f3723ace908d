//! The checks of a configuration once it is read: what each searcher needs, what the storage
//! needs, and the bounds of [`crate::limits`]. Every error names its field.

use std::collections::BTreeMap;

use super::{
    ASHA_MODES, CheckpointStorageConfig, ConfigError, Entrypoint, Locator, PBT_EXPLOITS, ResourcesConfig, SEARCHERS, SearcherConfig,
};
use crate::hparams::{self, HyperparameterSpace, did_you_mean};
use crate::limits::*;

/// A string field: at most `max` bytes, and no NUL byte.
pub(super) fn text(loc: &Locator, field: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    if value.len() > max {
        return Err(loc.at(field, format!("is {} bytes long, more than the limit of {max} bytes", value.len())));
    }
    if value.contains('\0') {
        return Err(loc.at(field, "must not contain NUL bytes"));
    }
    Ok(())
}

fn optional_text(loc: &Locator, field: &str, value: &Option<String>, max: usize) -> Result<(), ConfigError> {
    value.as_deref().map_or(Ok(()), |v| text(loc, field, v, max))
}

/// A count that must not exceed `max`.
fn at_most<T: PartialOrd + std::fmt::Display>(loc: &Locator, field: &str, value: T, max: T) -> Result<(), ConfigError> {
    if value > max {
        return Err(loc.at(field, format!("{value} is more than the limit of {max}")));
    }
    Ok(())
}

/// The number of arguments of a list entrypoint, checked before they are copied.
pub(super) fn entrypoint_length(loc: &Locator, args: usize) -> Result<(), ConfigError> {
    if args > MAX_ENTRYPOINT_ARGS {
        return Err(loc.at("entrypoint", format!("has {args} arguments, more than the limit of {MAX_ENTRYPOINT_ARGS}")));
    }
    Ok(())
}

pub(super) fn entrypoint(loc: &Locator, entrypoint: &Entrypoint) -> Result<(), ConfigError> {
    match entrypoint {
        Entrypoint::Shell(line) => text(loc, "entrypoint", line, MAX_ENTRYPOINT_BYTES),
        Entrypoint::Argv(argv) => {
            entrypoint_length(loc, argv.len())?;
            let total: usize = argv.iter().map(String::len).sum();
            if total > MAX_ENTRYPOINT_BYTES {
                return Err(loc.at("entrypoint", format!("its arguments are {total} bytes, more than the limit of {MAX_ENTRYPOINT_BYTES}")));
            }
            if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
                return Err(loc.named("entrypoint", format!("entrypoint[{i}]"), "must not contain NUL bytes"));
            }
            Ok(())
        }
    }
}

pub(super) fn environment(loc: &Locator, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    const FIELD: &str = "environment.environment_variables";
    if env.len() > MAX_ENVIRONMENT_VARIABLES {
        return Err(loc.at(FIELD, format!("{} variables, more than the limit of {MAX_ENVIRONMENT_VARIABLES}", env.len())));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + 1 + v.len()).sum();
    if total > MAX_ENVIRONMENT_BYTES {
        return Err(loc.at(FIELD, format!("the variables are {total} bytes, more than the limit of {MAX_ENVIRONMENT_BYTES}")));
    }
    if let Some((k, _)) = env.iter().find(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(loc.at(FIELD, format!("the variable {k:?} must not contain NUL bytes")));
    }
    Ok(())
}

pub(super) fn resources(loc: &Locator, resources: &ResourcesConfig, max_restarts: u32) -> Result<(), ConfigError> {
    if resources.slots_per_trial == 0 {
        return Err(loc.at("resources.slots_per_trial", "must be at least 1: every trial runs on at least one slot"));
    }
    at_most(loc, "resources.slots_per_trial", resources.slots_per_trial, MAX_SLOTS_PER_TRIAL)?;
    text(loc, "resources.resource_pool", &resources.resource_pool, MAX_NAME_BYTES)?;
    if resources.resource_pool.is_empty() {
        return Err(loc.at("resources.resource_pool", "must name a pool (the default one is `default`)"));
    }
    if !(0..=i64::from(MAX_PRIORITY)).contains(&resources.priority) {
        return Err(loc.at("resources.priority", format!("{} is out of range 0..={MAX_PRIORITY} (lower runs first)", resources.priority)));
    }
    // NaN fails the range test.
    if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&resources.weight) {
        return Err(loc.at("resources.weight", format!("{} is not in [{MIN_WEIGHT}, {MAX_WEIGHT}]", resources.weight)));
    }
    if let Some(gpu) = resources.gpu {
        let whole = gpu >= 1.0 && gpu.fract() == 0.0 && gpu <= f64::from(MAX_SLOTS_PER_TRIAL);
        if !(whole || (MIN_GPU_FRACTION..1.0).contains(&gpu)) {
            return Err(loc.at(
                "resources.gpu",
                format!("{gpu} is neither a fraction in [{MIN_GPU_FRACTION}, 1) nor a whole number of GPUs up to {MAX_SLOTS_PER_TRIAL}"),
            ));
        }
        if resources.slots_per_trial != 1 {
            return Err(loc.at("resources.gpu", "give either `gpu` or `slots_per_trial`, not both"));
        }
    }
    at_most(loc, "max_restarts", max_restarts, MAX_RESTARTS)
}

/// The bounds of every searcher field, whichever searcher uses it.
fn searcher_bounds(loc: &Locator, s: &SearcherConfig) -> Result<(), ConfigError> {
    text(loc, "searcher.name", &s.name, MAX_NAME_BYTES)?;
    text(loc, "searcher.metric", &s.metric, MAX_NAME_BYTES)?;
    optional_text(loc, "searcher.time_metric", &s.time_metric, MAX_NAME_BYTES)?;
    text(loc, "searcher.mode", &s.mode, MAX_NAME_BYTES)?;
    text(loc, "searcher.exploit", &s.exploit, MAX_NAME_BYTES)?;
    if let Some(n) = s.max_trials {
        at_most(loc, "searcher.max_trials", n, MAX_TRIALS)?;
    }
    at_most(loc, "searcher.max_concurrent_trials", s.max_concurrent_trials, MAX_CONCURRENT_TRIALS)?;
    if let Some(n) = s.num_rungs {
        at_most(loc, "searcher.num_rungs", n, MAX_RUNGS)?;
    }
    at_most(loc, "searcher.max_rungs", s.max_rungs, MAX_RUNGS)?;
    at_most(loc, "searcher.n_startup_trials", s.n_startup_trials, MAX_TRIALS)?;
    at_most(loc, "searcher.n_ei_candidates", s.n_ei_candidates, MAX_EI_CANDIDATES)?;
    if let Some(n) = s.population_size {
        at_most(loc, "searcher.population_size", n, MAX_POPULATION)?;
    }
    if let Some(n) = s.max_generations {
        at_most(loc, "searcher.max_generations", n, MAX_TRIALS)?;
    }
    if let (Some(p), Some(g)) = (s.population_size, s.max_generations)
        && p.checked_mul(g).is_none_or(|n| n > MAX_TRIALS)
    {
        return Err(loc.at(
            "searcher.population_size",
            format!("population_size x max_generations = {p} x {g} trials, more than the limit of {MAX_TRIALS}"),
        ));
    }
    Ok(())
}

/// What the named searcher needs, and the bounds of every searcher field.
pub(super) fn searcher(
    loc: &Locator,
    searcher: &SearcherConfig,
    hyperparameters: &HyperparameterSpace,
    storage: &CheckpointStorageConfig,
) -> Result<(), ConfigError> {
    searcher_bounds(loc, searcher)?;
    if !SEARCHERS.contains(&searcher.name.as_str()) {
        return Err(loc.at(
            "searcher.name",
            format!(
                "unknown searcher `{}`{}; expected one of {}",
                searcher.name,
                did_you_mean(&searcher.name, &SEARCHERS),
                SEARCHERS.join(", ")
            ),
        ));
    }
    if searcher.metric.trim().is_empty() {
        return Err(loc.at("searcher.metric", "must name the metric the searcher optimises"));
    }
    if searcher.max_concurrent_trials == 0 {
        return Err(loc.at("searcher.max_concurrent_trials", "must be at least 1"));
    }
    match searcher.name.as_str() {
        "single" if searcher.max_trials.is_some_and(|n| n != 1) => {
            return Err(loc.at("searcher.max_trials", "the `single` searcher runs exactly one trial"));
        }
        "random" => required_positive(loc, "random", "max_trials", searcher.max_trials.map(|n| n as u64))?,
        "async_halving" | "adaptive_asha" => asha(loc, searcher)?,
        "tpe" => {
            required_positive(loc, "tpe", "max_trials", searcher.max_trials.map(|n| n as u64))?;
            if searcher.n_ei_candidates == 0 {
                return Err(loc.at("searcher.n_ei_candidates", "must be at least 1"));
            }
            // A proposal scores every candidate against every finished trial in every
            // dimension, under the master's control-plane lock: bound the product.
            let dims = leaf_count(hyperparameters).max(1) as u128;
            let work = searcher.n_ei_candidates as u128 * searcher.max_trials.unwrap_or(1) as u128 * dims;
            if work > MAX_TPE_WORK as u128 {
                return Err(loc.at(
                    "searcher.n_ei_candidates",
                    format!(
                        "n_ei_candidates x max_trials x hyperparameters = {} x {} x {dims} = {work}, more than the limit of {MAX_TPE_WORK}; \
                         a proposal would take minutes",
                        searcher.n_ei_candidates,
                        searcher.max_trials.unwrap_or(1)
                    ),
                ));
            }
        }
        "pbt" => pbt(loc, searcher, storage)?,
        // An external advisor proposes the trials; `max_trials` is an optional cap on it.
        "custom" if searcher.max_trials == Some(0) => {
            return Err(loc.at("searcher.max_trials", "must be at least 1"));
        }
        "grid" => {
            // Counted from each hyperparameter's number of points: the grid is never built here.
            let n = hparams::grid_size(hyperparameters, "hyperparameters").map_err(|e| loc.at(&e.path, e.message))?;
            if n > MAX_GRID_POINTS {
                let n = if n == usize::MAX { format!("more than {}", usize::MAX) } else { n.to_string() };
                return Err(loc.at("hyperparameters", format!("the grid has {n} points, more than the limit of {MAX_GRID_POINTS}")));
            }
        }
        _ => {}
    }
    Ok(())
}

/// A searcher field the named searcher needs, at least 1: missing is named on `searcher`, zero
/// on the field itself.
fn required_positive(loc: &Locator, searcher: &str, field: &str, value: Option<u64>) -> Result<(), ConfigError> {
    match value {
        None => Err(loc.at("searcher", format!("the `{searcher}` searcher needs `{field}`"))),
        Some(0) => Err(loc.at(&format!("searcher.{field}"), "must be at least 1")),
        Some(_) => Ok(()),
    }
}

fn asha(loc: &Locator, searcher: &SearcherConfig) -> Result<(), ConfigError> {
    let name = &searcher.name;
    required_positive(loc, name, "max_trials", searcher.max_trials.map(|n| n as u64))?;
    if searcher.time_metric.as_deref().is_none_or(|m| m.trim().is_empty()) {
        return Err(loc.at("searcher", format!("the `{name}` searcher needs `time_metric` (e.g. epochs)")));
    }
    required_positive(loc, name, "max_time", searcher.max_time)?;
    if !(searcher.divisor.is_finite() && searcher.divisor > 1.0) {
        return Err(loc.at("searcher.divisor", format!("must be greater than 1, not {}", searcher.divisor)));
    }
    if name == "async_halving" {
        required_positive(loc, name, "num_rungs", searcher.num_rungs.map(|n| n as u64))?;
    } else {
        if !ASHA_MODES.contains(&searcher.mode.as_str()) {
            return Err(loc.at(
                "searcher.mode",
                format!(
                    "unknown mode `{}`{}; expected one of {}",
                    searcher.mode,
                    did_you_mean(&searcher.mode, &ASHA_MODES),
                    ASHA_MODES.join(", ")
                ),
            ));
        }
        if searcher.max_rungs == 0 {
            return Err(loc.at("searcher.max_rungs", "must be at least 1"));
        }
    }
    Ok(())
}

fn pbt(loc: &Locator, searcher: &SearcherConfig, storage: &CheckpointStorageConfig) -> Result<(), ConfigError> {
    required_positive(loc, "pbt", "population_size", searcher.population_size.map(|n| n as u64))?;
    required_positive(loc, "pbt", "max_generations", searcher.max_generations.map(|n| n as u64))?;
    required_positive(loc, "pbt", "generation_length", searcher.generation_length)?;
    if searcher.population_size == Some(1) {
        return Err(loc.at("searcher.population_size", "a population needs at least 2 members to exploit one another"));
    }
    if searcher.max_trials.is_some() {
        return Err(loc.at("searcher.max_trials", "`pbt` runs population_size x max_generations trials; drop max_trials"));
    }
    if searcher.time_metric.as_deref().is_none_or(|m| m.trim().is_empty()) {
        return Err(loc.at("searcher", "the `pbt` searcher needs `time_metric` (e.g. epochs)"));
    }
    if !PBT_EXPLOITS.contains(&searcher.exploit.as_str()) {
        return Err(loc.at(
            "searcher.exploit",
            format!(
                "unknown exploit `{}`{}; expected one of {}",
                searcher.exploit,
                did_you_mean(&searcher.exploit, &PBT_EXPLOITS),
                PBT_EXPLOITS.join(", ")
            ),
        ));
    }
    if !(searcher.quantile_fraction > 0.0 && searcher.quantile_fraction <= 0.5) {
        return Err(loc.at("searcher.quantile_fraction", format!("must be in (0, 0.5], not {}", searcher.quantile_fraction)));
    }
    let [lo, hi] = searcher.perturb_range;
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
        return Err(
            loc.at("searcher.perturb_range", format!("must be two positive factors [low, high] with low <= high, not [{lo}, {hi}]"))
        );
    }
    if !(0.0..=1.0).contains(&searcher.resample_probability) {
        return Err(loc.at("searcher.resample_probability", format!("must be in [0, 1], not {}", searcher.resample_probability)));
    }
    if !(searcher.min_improvement.is_finite() && searcher.min_improvement >= 0.0) {
        return Err(loc.at("searcher.min_improvement", format!("must be a fraction >= 0, not {}", searcher.min_improvement)));
    }
    // Members continue from checkpoints; a policy that keeps none makes that impossible.
    if storage.save_trial_latest == 0 {
        return Err(loc.at(
            "checkpoint_storage.save_trial_latest",
            "`pbt` starts every member from a checkpoint of the previous generation; keep at least 1",
        ));
    }
    Ok(())
}

pub(super) fn storage(loc: &Locator, storage: &CheckpointStorageConfig) -> Result<(), ConfigError> {
    text(loc, "checkpoint_storage.type", &storage.kind, MAX_NAME_BYTES)?;
    for (field, value) in [
        ("path", &storage.path),
        ("storage_path", &storage.storage_path),
        ("bucket", &storage.bucket),
        ("prefix", &storage.prefix),
        ("endpoint_url", &storage.endpoint_url),
        ("region", &storage.region),
        ("access_key_id", &storage.access_key_id),
        ("secret_access_key", &storage.secret_access_key),
    ] {
        optional_text(loc, &format!("checkpoint_storage.{field}"), value, MAX_STORAGE_FIELD_BYTES)?;
    }
    for (field, value) in [
        ("save_experiment_best", storage.save_experiment_best),
        ("save_trial_best", storage.save_trial_best),
        ("save_trial_latest", storage.save_trial_latest),
    ] {
        at_most(loc, &format!("checkpoint_storage.{field}"), value, MAX_CHECKPOINTS_KEPT)?;
    }
    if !["directory", "shared_fs", "s3"].contains(&storage.kind.as_str()) {
        let kind = &storage.kind;
        return Err(loc.at(
            "checkpoint_storage.type",
            format!(
                "unknown storage type `{kind}`{}; expected directory, shared_fs or s3",
                did_you_mean(kind, &["directory", "shared_fs", "s3"])
            ),
        ));
    }
    if storage.kind == "s3" {
        if storage.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
            return Err(loc.at("checkpoint_storage", "the `s3` storage needs `bucket`"));
        }
        if storage.path.is_some() {
            return Err(loc.at("checkpoint_storage.path", "is for `directory` and `shared_fs`; `s3` takes `bucket` and `prefix`"));
        }
        if let Some(e) = &storage.endpoint_url
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(loc.at("checkpoint_storage.endpoint_url", format!("`{e}` is not an http:// or https:// URL")));
        }
        if storage.prefix.as_deref().is_some_and(|p| p.split('/').any(|c| c == "..")) {
            return Err(loc.at("checkpoint_storage.prefix", "must not contain `..`"));
        }
    } else if let Some(field) = [("bucket", &storage.bucket), ("prefix", &storage.prefix), ("endpoint_url", &storage.endpoint_url)]
        .iter()
        .find(|(_, v)| v.is_some())
        .map(|(f, _)| *f)
    {
        return Err(loc.at(&format!("checkpoint_storage.{field}"), format!("is for `type: s3`, not `{}`", storage.kind)));
    }
    if storage.storage_path.as_deref().is_some_and(|p| p.split('/').any(|c| c == "..")) {
        return Err(loc.at("checkpoint_storage.storage_path", "must not contain `..`"));
    }
    Ok(())
}

/// Hyperparameters that take values (nested groups count their members, not themselves).
fn leaf_count(space: &HyperparameterSpace) -> usize {
    space
        .values()
        .map(|hp| match hp {
            crate::hparams::Hyperparameter::Nested { fields } => leaf_count(fields),
            _ => 1,
        })
        .sum()
}
