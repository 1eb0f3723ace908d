//! The experiment configuration, read from YAML in a shape close to Determined's so that its
//! users feel at home. Every error names the file, line, column and dotted field path, and an
//! unknown key gets a "did you mean".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hparams::{self, HyperparameterSpace, did_you_mean};
pub use crate::limits::MAX_GRID_POINTS;
use crate::limits::{MAX_CONFIG_BYTES, MAX_DESCRIPTION_BYTES, MAX_NAME_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, MAX_YAML_SCALAR_BYTES};

mod validate;
mod yaml_guard;

/// Searchers this build knows; an unknown name is refused with a suggestion.
pub const SEARCHERS: [&str; 8] = ["single", "random", "grid", "async_halving", "adaptive_asha", "tpe", "pbt", "custom"];

/// How `pbt` picks the members that copy another: AutoLFADS' binary tournament, or truncation
/// selection (the bottom `quantile_fraction` copy the top, as Ray Tune does).
pub const PBT_EXPLOITS: [&str; 2] = ["binary_tournament", "truncation"];

/// Modes of `adaptive_asha`, from fewest to most brackets.
pub const ASHA_MODES: [&str; 3] = ["aggressive", "standard", "conservative"];

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
    /// Whole slots per trial, of the pool's kind (GPUs where the pool has them, else CPUs).
    /// More than one agent holds becomes a gang across agents, each member on a whole agent.
    #[serde(default = "default_one")]
    pub slots_per_trial: u32,
    /// The resource pool the trials run in (`drover agent --pool NAME`).
    #[serde(default = "default_pool")]
    pub resource_pool: String,
    /// 0 ..= `limits::MAX_PRIORITY`, lower first (Determined's convention and default, 42).
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// The experiment's weight in fair share against the others of its pool and priority.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// GPUs per trial instead of `slots_per_trial`: a fraction in (0, 1) shares one GPU
    /// (`0.25` puts four trials on it), a whole number takes that many GPUs.
    #[serde(default)]
    pub gpu: Option<f64>,
}

/// The pool agents join when they name none, and experiments run in when they name none.
pub const DEFAULT_POOL: &str = "default";
/// Determined's default priority.
pub const DEFAULT_PRIORITY: i64 = 42;

fn default_pool() -> String {
    DEFAULT_POOL.into()
}

fn default_priority() -> i64 {
    DEFAULT_PRIORITY
}

fn default_weight() -> f64 {
    1.0
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            slots_per_trial: 1,
            resource_pool: default_pool(),
            priority: DEFAULT_PRIORITY,
            weight: default_weight(),
            gpu: None,
        }
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

/// Builds located errors for one configuration text.
pub(crate) struct Locator<'a> {
    text: &'a str,
    file: Option<&'a str>,
}

impl Locator<'_> {
    /// An error about `field` (a dotted path), at the place the text spells it out.
    pub(crate) fn at(&self, field: &str, message: impl Into<String>) -> ConfigError {
        self.named(field, field.to_string(), message)
    }

    /// An error about `field`, located where `locate_as` is spelt out (for a field the text
    /// does not spell as such, e.g. `entrypoint[3]`).
    pub(crate) fn named(&self, locate_as: &str, field: String, message: impl Into<String>) -> ConfigError {
        let (line, column) = locate(self.text, locate_as).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigError { file: self.file.map(str::to_string), line, column, field: Some(field), message: message.into() }
    }

    /// An error at a known 1-based line and column.
    fn at_position(&self, (line, column): (usize, usize), field: Option<String>, message: String) -> ConfigError {
        ConfigError { file: self.file.map(str::to_string), line: Some(line), column: Some(column), field, message }
    }

    /// An error about the text as a whole.
    fn whole(&self, message: String) -> ConfigError {
        ConfigError { file: self.file.map(str::to_string), line: None, column: None, field: None, message }
    }
}

/// The top-level key whose value holds 1-based `line`: the last line up to it that starts at
/// column 0 with `key:`. Best effort, for naming the field of an error found by position.
fn top_level_key(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter(|l| l.starts_with(|c: char| !c.is_whitespace() && !matches!(c, '#' | '-' | '[' | '{' | '\'' | '"')))
        .filter_map(|l| l.split_once(':').map(|(key, _)| key.trim().to_string()))
        .filter(|key| !key.is_empty() && key.len() <= MAX_NAME_BYTES)
        .last()
}

impl ExperimentConfig {
    /// Parses and validates a configuration. `file` is only used to name it in errors.
    ///
    /// Every bound of [`crate::limits`] is enforced here; the size and the nesting of the text
    /// before the YAML parser sees it.
    pub fn parse(text: &str, file: Option<&str>) -> Result<ExperimentConfig, ConfigError> {
        let loc = Locator { text, file };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(
                loc.whole(format!("the configuration is {} bytes, more than the limit of {MAX_CONFIG_BYTES} bytes (1 MiB)", text.len()))
            );
        }
        let scan = yaml_guard::scan(text);
        if let Some((line, column)) = scan.too_deep_at {
            let field = top_level_key(text, line);
            return Err(loc.at_position((line, column), field, format!("YAML collections nest deeper than {MAX_YAML_DEPTH} levels")));
        }
        if scan.aliases > 0 {
            match yaml_guard::expanded_size(text) {
                Ok(()) => {}
                Err(yaml_guard::Expansion::Yaml(e)) => return Err(from_yaml_error(&e, text, file)),
                Err(yaml_guard::Expansion::TooLarge(at)) => {
                    let message = format!(
                        "YAML aliases (*name) expand the configuration beyond {MAX_YAML_NODES} nodes or {MAX_YAML_SCALAR_BYTES} bytes of text"
                    );
                    return Err(match at {
                        Some(at) => loc.at_position(at, top_level_key(text, at.0), message),
                        None => loc.whole(message),
                    });
                }
            }
        }
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| from_yaml_error(&e, text, file))?;

        if raw.name.trim().is_empty() {
            return Err(loc.at("name", "must not be empty"));
        }
        validate::text(&loc, "name", &raw.name, MAX_NAME_BYTES)?;
        if let Some(description) = &raw.description {
            validate::text(&loc, "description", description, MAX_DESCRIPTION_BYTES)?;
        }
        let entrypoint = match &raw.entrypoint {
            serde_yaml::Value::String(s) if !s.trim().is_empty() => Entrypoint::Shell(s.clone()),
            serde_yaml::Value::Sequence(items) if !items.is_empty() => {
                validate::entrypoint_length(&loc, items.len())?;
                let argv: Option<Vec<String>> = items.iter().map(scalar_string).collect();
                Entrypoint::Argv(argv.ok_or_else(|| loc.at("entrypoint", "every item of the list must be a string"))?)
            }
            _ => return Err(loc.at("entrypoint", "expected a command line or a non-empty list of arguments")),
        };
        validate::entrypoint(&loc, &entrypoint)?;
        let hyperparameters = match &raw.hyperparameters {
            serde_yaml::Value::Null => HyperparameterSpace::new(),
            v => hparams::parse_space(v, "hyperparameters").map_err(|e| loc.at(&e.path, e.message))?,
        };
        let environment =
            parse_environment(&raw.environment.environment_variables).map_err(|m| loc.at("environment.environment_variables", m))?;
        validate::environment(&loc, &environment)?;
        validate::searcher(&loc, &raw.searcher, &hyperparameters, &raw.checkpoint_storage)?;
        validate::resources(&loc, &raw.resources, raw.max_restarts)?;
        validate::storage(&loc, &raw.checkpoint_storage)?;
        Ok(ExperimentConfig {
            name: raw.name,
            description: raw.description,
            entrypoint,
            hyperparameters,
            searcher: raw.searcher,
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
            "pbt" => self.searcher.population_size?.checked_mul(self.searcher.max_generations?),
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
    if let Some(bad) = env.keys().find(|k| k.contains('\0')) {
        return Err(format!("the variable name {bad:?} must not contain NUL bytes"));
    }
    if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains('=')) {
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
    if let Some((path, rest)) = message.split_once(": ")
        && !path.contains(' ')
        && !path.is_empty()
    {
        field = Some(path.to_string());
        message = rest.to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((unknown, expected)) = rest.split_once('`')
    {
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let hint = did_you_mean(unknown, &candidates);
        let unknown = unknown.to_string();
        field = Some(match field {
            Some(parent) => format!("{parent}.{unknown}"),
            None => unknown.clone(),
        });
        message = format!("unknown field `{unknown}`{hint}; expected one of {}", candidates.join(", "));
    }
    let (mut line, mut column) = e.location().map_or((None, None), |l| (Some(l.line()), Some(l.column())));
    if line.is_none()
        && let Some((l, c)) = field.as_deref().and_then(|f| locate(text, f))
    {
        (line, column) = (Some(l), Some(c));
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
mod tests;
