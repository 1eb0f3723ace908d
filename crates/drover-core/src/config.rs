//! The experiment configuration, read from YAML in a shape close to Determined's so that its
//! users feel at home. Every error names the file, line, column and dotted field path, and an
//! unknown key gets a "did you mean".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hparams::{self, HyperparameterSpace, did_you_mean};

/// Searchers this build knows; an unknown name is refused with a suggestion.
pub const SEARCHERS: [&str; 8] = ["single", "random", "grid", "async_halving", "adaptive_asha", "tpe", "pbt", "custom"];

/// How `pbt` picks the members that copy another: AutoLFADS' binary tournament, or truncation
/// selection (the bottom `quantile_fraction` copy the top, as Ray Tune does).
pub const PBT_EXPLOITS: [&str; 2] = ["binary_tournament", "truncation"];

/// Modes of `adaptive_asha`, from fewest to most brackets.
pub const ASHA_MODES: [&str; 3] = ["aggressive", "standard", "conservative"];

/// Grids larger than this are refused: nobody means to queue a million trials by accident.
pub const MAX_GRID_POINTS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub entrypoint: Entrypoint,
    pub hyperparameters: HyperparameterSpace,
    pub searcher: SearcherConfig,
    pub resources: ResourcesConfig,
    pub max_restarts: u32,
    pub checkpoint_storage: CheckpointStorageConfig,
    /// Extra environment variables for every trial process.
    pub environment: BTreeMap<String, String>,
}

/// What to run: a shell command line, or an argument vector run without a shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entrypoint {
    Shell(String),
    Argv(Vec<String>),
}

impl Entrypoint {
    /// The program and arguments to exec.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Entrypoint::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            Entrypoint::Argv(argv) => argv.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearcherConfig {
    pub name: String,
    pub metric: String,
    #[serde(default = "default_true")]
    pub smaller_is_better: bool,
    #[serde(default)]
    pub max_trials: Option<usize>,
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_trials: usize,
    /// Seed of the searcher's generator; chosen at creation and recorded when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The validation metric that measures training time (e.g. `epochs`), for adaptive
    /// searchers; when a report lacks it, its step is used.
    #[serde(default)]
    pub time_metric: Option<String>,
    /// Training time (in `time_metric` units) a trial runs to when not stopped.
    #[serde(default)]
    pub max_time: Option<u64>,
    /// `async_halving`: number of rungs.
    #[serde(default)]
    pub num_rungs: Option<usize>,
    /// ASHA: only the top 1/divisor of a rung go on.
    #[serde(default = "default_divisor")]
    pub divisor: f64,
    /// `adaptive_asha`: aggressive, standard or conservative.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// `adaptive_asha`: most rungs of a bracket.
    #[serde(default = "default_max_rungs")]
    pub max_rungs: usize,
    /// `tpe`: trials with a result before the model takes over; random search until then.
    #[serde(default = "default_n_startup_trials")]
    pub n_startup_trials: usize,
    /// `tpe`: candidates drawn from the good-trial density per proposal.
    #[serde(default = "default_n_ei_candidates")]
    pub n_ei_candidates: usize,
    /// `pbt`: members of the population.
    #[serde(default)]
    pub population_size: Option<usize>,
    /// `pbt`: generations at most (AutoLFADS' `max_generations`).
    #[serde(default)]
    pub max_generations: Option<usize>,
    /// `pbt`: training time (in `time_metric` units) of one generation.
    #[serde(default)]
    pub generation_length: Option<u64>,
    /// `pbt`: a generation ends for the whole population before the next starts (AutoLFADS);
    /// `false` lets each member move on alone, judged against the others' latest (Ray Tune).
    #[serde(default = "default_true")]
    pub synchronous: bool,
    /// `pbt`: binary_tournament or truncation.
    #[serde(default = "default_exploit")]
    pub exploit: String,
    /// `pbt` with truncation: the bottom fraction copies the top fraction.
    #[serde(default = "default_quantile_fraction")]
    pub quantile_fraction: f64,
    /// `pbt`: a copied member's numbers are multiplied by a factor drawn from this range.
    #[serde(default = "default_perturb_range")]
    pub perturb_range: [f64; 2],
    /// `pbt`: chance that a copied member's hyperparameter is drawn afresh instead.
    #[serde(default)]
    pub resample_probability: f64,
    /// `pbt`: stop when the best score improved by less than `min_improvement` (a fraction)
    /// over this many generations.
    #[serde(default = "default_patience")]
    pub patience: usize,
    #[serde(default = "default_min_improvement")]
    pub min_improvement: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    #[serde(default = "default_one")]
    pub slots_per_trial: u32,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig { slots_per_trial: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointStorageConfig {
    /// `directory` or `shared_fs`; both are a path on the agent's file system for now.
    #[serde(rename = "type", default = "default_storage_type")]
    pub kind: String,
    /// The directory (for `directory`) or the shared mount (for `shared_fs`). Defaults to the
    /// cluster's data directory.
    #[serde(default, alias = "host_path")]
    pub path: Option<String>,
    #[serde(default)]
    pub storage_path: Option<String>,
    /// `s3`: the bucket (it must exist; checked when the experiment is created).
    #[serde(default)]
    pub bucket: Option<String>,
    /// `s3`: a key prefix inside the bucket.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `s3`: an S3-compatible server instead of AWS, e.g. `http://127.0.0.1:5055`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// `s3`: credentials; better left out and taken from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) of the master and the agents.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// File-system storages: fsync every checkpoint before registering it, so that it survives
    /// a power loss too (a crash of the trial never leaves a half checkpoint either way). Off
    /// by default, as `cp`, PyTorch and Ray Tune do: on a busy disk it costs several times the
    /// copy itself.
    #[serde(default)]
    pub fsync: bool,
    #[serde(default)]
    pub save_experiment_best: u32,
    #[serde(default = "default_one")]
    pub save_trial_best: u32,
    #[serde(default = "default_one")]
    pub save_trial_latest: u32,
}

impl Default for CheckpointStorageConfig {
    fn default() -> Self {
        CheckpointStorageConfig {
            kind: default_storage_type(),
            path: None,
            storage_path: None,
            bucket: None,
            prefix: None,
            endpoint_url: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            fsync: false,
            save_experiment_best: 0,
            save_trial_best: 1,
            save_trial_latest: 1,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}
fn default_max_concurrent() -> usize {
    16
}
fn default_storage_type() -> String {
    "directory".into()
}
fn default_divisor() -> f64 {
    4.0
}
fn default_mode() -> String {
    "standard".into()
}
fn default_max_rungs() -> usize {
    5
}
fn default_n_startup_trials() -> usize {
    10
}
fn default_n_ei_candidates() -> usize {
    24
}
fn default_exploit() -> String {
    "binary_tournament".into()
}
fn default_quantile_fraction() -> f64 {
    0.25
}
fn default_perturb_range() -> [f64; 2] {
    [0.8, 1.2]
}
fn default_patience() -> usize {
    5
}
fn default_min_improvement() -> f64 {
    0.0005
}
fn default_max_restarts() -> u32 {
    5
}

/// The file as written, before hyperparameters and entrypoint get their typed form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    #[serde(default)]
    description: Option<String>,
    entrypoint: serde_yaml::Value,
    #[serde(default)]
    hyperparameters: serde_yaml::Value,
    searcher: SearcherConfig,
    #[serde(default)]
    resources: ResourcesConfig,
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default)]
    checkpoint_storage: CheckpointStorageConfig,
    #[serde(default)]
    environment: RawEnvironment,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(default)]
    environment_variables: serde_yaml::Value,
}

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field at fault, e.g. `searcher.max_trials`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<config>");
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{file}:{l}:{c}: ")?,
            (Some(l), None) => write!(f, "{file}:{l}: ")?,
            _ => write!(f, "{file}: ")?,
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ExperimentConfig {
    /// Parses and validates a configuration. `file` is only used to name it in errors.
    pub fn parse(text: &str, file: Option<&str>) -> Result<ExperimentConfig, ConfigError> {
        let at_path = |field: &str, message: String| {
            let (line, column) = locate(text, field).map_or((None, None), |(l, c)| (Some(l), Some(c)));
            ConfigError { file: file.map(str::to_string), line, column, field: Some(field.to_string()), message }
        };
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| from_yaml_error(&e, text, file))?;

        if raw.name.trim().is_empty() {
            return Err(at_path("name", "must not be empty".into()));
        }
        let entrypoint = match &raw.entrypoint {
            serde_yaml::Value::String(s) if !s.trim().is_empty() => Entrypoint::Shell(s.clone()),
            serde_yaml::Value::Sequence(items) if !items.is_empty() => {
                let argv: Option<Vec<String>> = items.iter().map(|i| scalar_string(i)).collect();
                Entrypoint::Argv(argv.ok_or_else(|| at_path("entrypoint", "every item of the list must be a string".into()))?)
            }
            _ => return Err(at_path("entrypoint", "expected a command line or a non-empty list of arguments".into())),
        };
        let hyperparameters = match &raw.hyperparameters {
            serde_yaml::Value::Null => HyperparameterSpace::new(),
            v => hparams::parse_space(v, "hyperparameters").map_err(|e| at_path(&e.path, e.message))?,
        };
        let environment =
            parse_environment(&raw.environment.environment_variables).map_err(|m| at_path("environment.environment_variables", m))?;

        let searcher = raw.searcher;
        if !SEARCHERS.contains(&searcher.name.as_str()) {
            return Err(at_path(
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
            return Err(at_path("searcher.metric", "must name the metric the searcher optimises".into()));
        }
        if searcher.max_concurrent_trials == 0 {
            return Err(at_path("searcher.max_concurrent_trials", "must be at least 1".into()));
        }
        match searcher.name.as_str() {
            "single" => {
                if searcher.max_trials.is_some_and(|n| n != 1) {
                    return Err(at_path("searcher.max_trials", "the `single` searcher runs exactly one trial".into()));
                }
            }
            "random" => match searcher.max_trials {
                None => return Err(at_path("searcher", "the `random` searcher needs `max_trials`".into())),
                Some(0) => return Err(at_path("searcher.max_trials", "must be at least 1".into())),
                Some(_) => {}
            },
            "async_halving" | "adaptive_asha" => {
                match searcher.max_trials {
                    None => return Err(at_path("searcher", format!("the `{}` searcher needs `max_trials`", searcher.name))),
                    Some(0) => return Err(at_path("searcher.max_trials", "must be at least 1".into())),
                    Some(_) => {}
                }
                if searcher.time_metric.as_deref().is_none_or(|m| m.trim().is_empty()) {
                    return Err(at_path("searcher", format!("the `{}` searcher needs `time_metric` (e.g. epochs)", searcher.name)));
                }
                match searcher.max_time {
                    None => return Err(at_path("searcher", format!("the `{}` searcher needs `max_time`", searcher.name))),
                    Some(0) => return Err(at_path("searcher.max_time", "must be at least 1".into())),
                    Some(_) => {}
                }
                if !(searcher.divisor.is_finite() && searcher.divisor > 1.0) {
                    return Err(at_path("searcher.divisor", format!("must be greater than 1, not {}", searcher.divisor)));
                }
                if searcher.name == "async_halving" {
                    match searcher.num_rungs {
                        None => return Err(at_path("searcher", "the `async_halving` searcher needs `num_rungs`".into())),
                        Some(0) => return Err(at_path("searcher.num_rungs", "must be at least 1".into())),
                        Some(_) => {}
                    }
                } else {
                    if !ASHA_MODES.contains(&searcher.mode.as_str()) {
                        return Err(at_path(
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
                        return Err(at_path("searcher.max_rungs", "must be at least 1".into()));
                    }
                }
            }
            "tpe" => {
                match searcher.max_trials {
                    None => return Err(at_path("searcher", "the `tpe` searcher needs `max_trials`".into())),
                    Some(0) => return Err(at_path("searcher.max_trials", "must be at least 1".into())),
                    Some(_) => {}
                }
                if searcher.n_ei_candidates == 0 {
                    return Err(at_path("searcher.n_ei_candidates", "must be at least 1".into()));
                }
            }
            "pbt" => {
                let positive = |field: &str, value: Option<u64>| match value {
                    None => Err(at_path("searcher", format!("the `pbt` searcher needs `{field}`"))),
                    Some(0) => Err(at_path(&format!("searcher.{field}"), "must be at least 1".into())),
                    Some(_) => Ok(()),
                };
                positive("population_size", searcher.population_size.map(|n| n as u64))?;
                positive("max_generations", searcher.max_generations.map(|n| n as u64))?;
                positive("generation_length", searcher.generation_length)?;
                if searcher.population_size == Some(1) {
                    return Err(at_path("searcher.population_size", "a population needs at least 2 members to exploit one another".into()));
                }
                if searcher.max_trials.is_some() {
                    return Err(at_path(
                        "searcher.max_trials",
                        "`pbt` runs population_size x max_generations trials; drop max_trials".into(),
                    ));
                }
                if searcher.time_metric.as_deref().is_none_or(|m| m.trim().is_empty()) {
                    return Err(at_path("searcher", "the `pbt` searcher needs `time_metric` (e.g. epochs)".into()));
                }
                if !PBT_EXPLOITS.contains(&searcher.exploit.as_str()) {
                    return Err(at_path(
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
                    return Err(at_path("searcher.quantile_fraction", format!("must be in (0, 0.5], not {}", searcher.quantile_fraction)));
                }
                let [lo, hi] = searcher.perturb_range;
                if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
                    return Err(at_path(
                        "searcher.perturb_range",
                        format!("must be two positive factors [low, high] with low <= high, not [{lo}, {hi}]"),
                    ));
                }
                if !(0.0..=1.0).contains(&searcher.resample_probability) {
                    return Err(at_path(
                        "searcher.resample_probability",
                        format!("must be in [0, 1], not {}", searcher.resample_probability),
                    ));
                }
                if !(searcher.min_improvement.is_finite() && searcher.min_improvement >= 0.0) {
                    return Err(at_path("searcher.min_improvement", format!("must be a fraction >= 0, not {}", searcher.min_improvement)));
                }
                // Members continue from checkpoints; a policy that keeps none makes that impossible.
                if raw.checkpoint_storage.save_trial_latest == 0 {
                    return Err(at_path(
                        "checkpoint_storage.save_trial_latest",
                        "`pbt` starts every member from a checkpoint of the previous generation; keep at least 1".into(),
                    ));
                }
            }
            // An external advisor proposes the trials; `max_trials` is an optional cap on it.
            "custom" if searcher.max_trials == Some(0) => {
                return Err(at_path("searcher.max_trials", "must be at least 1".into()));
            }
            "grid" => {
                let n = hparams::grid_size(&hyperparameters, "hyperparameters").map_err(|e| at_path(&e.path, e.message))?;
                if n > MAX_GRID_POINTS {
                    return Err(at_path("hyperparameters", format!("the grid has {n} points, more than the limit of {MAX_GRID_POINTS}")));
                }
            }
            _ => {}
        }
        if !["directory", "shared_fs", "s3"].contains(&raw.checkpoint_storage.kind.as_str()) {
            let kind = &raw.checkpoint_storage.kind;
            return Err(at_path(
                "checkpoint_storage.type",
                format!(
                    "unknown storage type `{kind}`{}; expected directory, shared_fs or s3",
                    did_you_mean(kind, &["directory", "shared_fs", "s3"])
                ),
            ));
        }
        let storage = &raw.checkpoint_storage;
        if storage.kind == "s3" {
            if storage.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
                return Err(at_path("checkpoint_storage", "the `s3` storage needs `bucket`".into()));
            }
            if storage.path.is_some() {
                return Err(at_path(
                    "checkpoint_storage.path",
                    "is for `directory` and `shared_fs`; `s3` takes `bucket` and `prefix`".into(),
                ));
            }
            if let Some(e) = &storage.endpoint_url
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(at_path("checkpoint_storage.endpoint_url", format!("`{e}` is not an http:// or https:// URL")));
            }
            if storage.prefix.as_deref().is_some_and(|p| p.split('/').any(|c| c == "..")) {
                return Err(at_path("checkpoint_storage.prefix", "must not contain `..`".into()));
            }
        } else if let Some(field) = [("bucket", &storage.bucket), ("prefix", &storage.prefix), ("endpoint_url", &storage.endpoint_url)]
            .iter()
            .find(|(_, v)| v.is_some())
            .map(|(f, _)| *f)
        {
            return Err(at_path(&format!("checkpoint_storage.{field}"), format!("is for `type: s3`, not `{}`", storage.kind)));
        }
        if let Some(p) = &raw.checkpoint_storage.storage_path {
            if p.split('/').any(|c| c == "..") {
                return Err(at_path("checkpoint_storage.storage_path", "must not contain `..`".into()));
            }
        }
        Ok(ExperimentConfig {
            name: raw.name,
            description: raw.description,
            entrypoint,
            hyperparameters,
            searcher,
            resources: raw.resources,
            max_restarts: raw.max_restarts,
            checkpoint_storage: raw.checkpoint_storage,
            environment,
        })
    }

    /// How many trials the search will create at most, when that is known up front.
    pub fn planned_trials(&self) -> Option<usize> {
        match self.searcher.name.as_str() {
            "single" => Some(1),
            "random" | "async_halving" | "adaptive_asha" | "tpe" | "custom" => self.searcher.max_trials,
            "pbt" => Some(self.searcher.population_size? * self.searcher.max_generations?),
            "grid" => hparams::grid_size(&self.hyperparameters, "hyperparameters").ok(),
            _ => None,
        }
    }
}

fn scalar_string(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_environment(v: &serde_yaml::Value) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    match v {
        serde_yaml::Value::Null => {}
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                let s = item.as_str().ok_or("expected strings of the form NAME=value")?;
                let (k, val) = s.split_once('=').ok_or_else(|| format!("`{s}` is not of the form NAME=value"))?;
                env.insert(k.to_string(), val.to_string());
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, val) in map {
                let k = k.as_str().ok_or("variable names must be strings")?;
                let val = scalar_string(val).ok_or_else(|| format!("the value of {k} must be a string, number or boolean"))?;
                env.insert(k.to_string(), val);
            }
        }
        _ => return Err("expected a list of NAME=value strings or a map".into()),
    }
    if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(format!("`{bad}` is not a valid variable name"));
    }
    Ok(env)
}

/// Turns a YAML/serde error into a located one, adding a suggestion for unknown fields.
fn from_yaml_error(e: &serde_yaml::Error, text: &str, file: Option<&str>) -> ConfigError {
    let full = e.to_string();
    // yaml_serde renders "path: message at line L column C"; keep the message part.
    let mut message = full.split(" at line ").next().unwrap_or(&full).to_string();
    let mut field = None;
    if let Some((path, rest)) = message.split_once(": ") {
        if !path.contains(' ') && !path.is_empty() {
            field = Some(path.to_string());
            message = rest.to_string();
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((unknown, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let hint = did_you_mean(unknown, &candidates);
            let unknown = unknown.to_string();
            field = Some(match field {
                Some(parent) => format!("{parent}.{unknown}"),
                None => unknown.clone(),
            });
            message = format!("unknown field `{unknown}`{hint}; expected one of {}", candidates.join(", "));
        }
    }
    let (mut line, mut column) = e.location().map_or((None, None), |l| (Some(l.line()), Some(l.column())));
    if line.is_none() {
        if let Some((l, c)) = field.as_deref().and_then(|f| locate(text, f)) {
            (line, column) = (Some(l), Some(c));
        }
    }
    ConfigError { file: file.map(str::to_string), line, column, field, message }
}

/// Finds the 1-based line and column of a dotted key path in YAML text, following block and
/// flow mappings by searching for each key after the previous one. Best effort: `None` when
/// the path is not spelt out in the text (a defaulted field).
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let mut from = 0usize;
    let mut found = None;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        let mut search = from;
        let pos = loop {
            let rel = text[search..].find(key)?;
            let start = search + rel;
            let end = start + key.len();
            let before_ok =
                start == 0 || text[..start].ends_with(|c: char| c.is_whitespace() || c == '{' || c == ',' || c == '"' || c == '\'');
            let after = text[end..].trim_start_matches(['"', '\'']).trim_start_matches([' ', '\t']);
            if before_ok && after.starts_with(':') {
                break start;
            }
            search = end;
        };
        from = pos + key.len();
        found = Some(pos);
    }
    let pos = found?;
    let line = text[..pos].matches('\n').count() + 1;
    let column = pos - text[..pos].rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let text = GOOD
            .replace("name: random", "name: grid")
            .replace("{type: log, minval: -4, maxval: -1}", "{type: double, minval: 0, maxval: 1}");
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
}
