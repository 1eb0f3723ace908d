//! Upper bounds on everything an experiment configuration can ask for.
//!
//! Experiments are created by one unauthenticated request, so a configuration must not be able
//! to make the master allocate, loop or store without end. [`ExperimentConfig::parse`] enforces
//! every bound below and names the field at fault; the searchers rely on them (and re-check the
//! ones that size their state, since they may be built from a configuration that did not go
//! through `parse`). The values are far above what a real search needs.
//!
//! | Constant | Value | Field |
//! |---|---|---|
//! | [`MAX_CONFIG_BYTES`] | 1 MiB | the configuration text, checked before it is parsed |
//! | [`MAX_YAML_DEPTH`] | 64 | nesting of YAML collections (flow `[`/`{` and block), checked before parsing |
//! | [`MAX_YAML_NODES`] | 1,048,576 | YAML nodes with aliases (`*name`) expanded |
//! | [`MAX_YAML_SCALAR_BYTES`] | 2 MiB | scalar text with aliases expanded |
//! | [`MAX_NAME_BYTES`] | 256 | `name`, `searcher.name`, `searcher.metric`, `searcher.time_metric`, `searcher.mode`, `searcher.exploit`, `checkpoint_storage.type` |
//! | [`MAX_DESCRIPTION_BYTES`] | 64 KiB | `description` |
//! | [`MAX_ENTRYPOINT_BYTES`] | 64 KiB | `entrypoint`: the command line, or all arguments together |
//! | [`MAX_ENTRYPOINT_ARGS`] | 4096 | `entrypoint` given as a list |
//! | [`MAX_ENVIRONMENT_VARIABLES`] | 1024 | `environment.environment_variables` |
//! | [`MAX_ENVIRONMENT_BYTES`] | 256 KiB | `environment.environment_variables`: every `NAME=value` together |
//! | [`MAX_HYPERPARAMETERS`] | 1000 | `hyperparameters`: every entry, nested groups and their members included |
//! | [`MAX_HYPERPARAMETER_NAME_BYTES`] | 256 | the name of each hyperparameter |
//! | [`MAX_CATEGORICAL_VALUES`] | 10,000 | `vals` of a `categorical` hyperparameter |
//! | [`MAX_GRID_POINTS`] | 100,000 | the points of a `grid` search (computed, never built) |
//! | [`MAX_TRIALS`] | 100,000 | `searcher.max_trials` (every searcher, `custom` included), `searcher.n_startup_trials`, `searcher.max_generations`, and `population_size` x `max_generations` of `pbt` |
//! | [`MAX_CONCURRENT_TRIALS`] | 10,000 | `searcher.max_concurrent_trials` |
//! | [`MAX_POPULATION`] | 10,000 | `searcher.population_size` |
//! | [`MAX_RUNGS`] | 32 | `searcher.num_rungs`, `searcher.max_rungs` |
//! | [`MAX_EI_CANDIDATES`] | 10,000 | `searcher.n_ei_candidates` |
//! | [`MAX_TPE_WORK`] | 2^30 | `tpe`: `n_ei_candidates` x `max_trials` x hyperparameters |
//! | [`MAX_RESTARTS`] | 1000 | `max_restarts` |
//! | [`MAX_SLOTS_PER_TRIAL`] | 1024 | `resources.slots_per_trial` (and at least 1), `resources.gpu` |
//! | [`MAX_PRIORITY`] | 99 | `resources.priority` (from 0) |
//! | [`MIN_WEIGHT`], [`MAX_WEIGHT`] | 0.001, 1000 | `resources.weight` |
//! | [`MIN_GPU_FRACTION`] | 0.001 | `resources.gpu` below 1 |
//! | [`MAX_CHECKPOINTS_KEPT`] | 10,000 | `checkpoint_storage.save_experiment_best`, `save_trial_best`, `save_trial_latest` |
//! | [`MAX_STORAGE_FIELD_BYTES`] | 4096 | `checkpoint_storage.path`, `storage_path`, `bucket`, `prefix`, `endpoint_url`, `region`, `access_key_id`, `secret_access_key` |
//!
//! No string of a configuration may contain a NUL byte (it cannot cross `exec`, a path or most
//! databases intact): names, description, entrypoint, environment names and values, metric
//! names, storage fields and hyperparameter names are all checked.
//!
//! [`ExperimentConfig::parse`]: crate::config::ExperimentConfig::parse

/// Bytes of configuration text; larger texts are refused before the YAML parser sees them.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Nesting of YAML collections, flow (`[`, `{`) and block together. Checked by a linear scan
/// before parsing: the YAML parser takes time quadratic in the flow nesting depth (a
/// 100,000-deep `[[[...]]]` took over half a minute). A real configuration nests a handful of
/// levels.
pub const MAX_YAML_DEPTH: usize = 64;

/// Nodes (scalars, sequences, mappings) of the document once YAML aliases are expanded. An
/// alias-free document within [`MAX_CONFIG_BYTES`] never reaches it; a few aliases of a large
/// anchor would otherwise multiply a 1 MiB text into gigabytes.
pub const MAX_YAML_NODES: usize = 1 << 20;

/// Bytes of scalar text of the document once YAML aliases are expanded (see
/// [`MAX_YAML_NODES`]).
pub const MAX_YAML_SCALAR_BYTES: usize = 2 << 20;

/// Bytes of the experiment's `name`, and of the short names a configuration holds: searcher
/// name, metric names, `mode`, `exploit`, storage type.
pub const MAX_NAME_BYTES: usize = 256;

/// Bytes of `description`: it is part of every experiment listing.
pub const MAX_DESCRIPTION_BYTES: usize = 64 << 10;

/// Bytes of the entrypoint: the command line, or the arguments of the list added up.
pub const MAX_ENTRYPOINT_BYTES: usize = 64 << 10;

/// Arguments of an entrypoint given as a list.
pub const MAX_ENTRYPOINT_ARGS: usize = 4096;

/// Extra environment variables of a trial.
pub const MAX_ENVIRONMENT_VARIABLES: usize = 1024;

/// Bytes of the extra environment, counted as `NAME=value` for every variable.
pub const MAX_ENVIRONMENT_BYTES: usize = 256 << 10;

/// Hyperparameters of an experiment, counting every named entry: a nested group and each of its
/// members count one each.
pub const MAX_HYPERPARAMETERS: usize = 1000;

/// Bytes of one hyperparameter's name.
pub const MAX_HYPERPARAMETER_NAME_BYTES: usize = 256;

/// Values of one `categorical` hyperparameter.
pub const MAX_CATEGORICAL_VALUES: usize = 10_000;

/// Points of a grid search; larger grids are refused: nobody means to queue a million trials
/// by accident. The size is computed from the counts, never by building the grid.
pub const MAX_GRID_POINTS: usize = 100_000;

/// Trials one search may create: `max_trials` of every searcher, and `population_size` x
/// `max_generations` of `pbt`.
pub const MAX_TRIALS: usize = 100_000;

/// `max_concurrent_trials`: trials created at once.
pub const MAX_CONCURRENT_TRIALS: usize = 10_000;

/// Members of a `pbt` population.
pub const MAX_POPULATION: usize = 10_000;

/// Rungs of an ASHA bracket (`num_rungs`, `max_rungs`); with a divisor of 2, 32 rungs already
/// span a factor of 2^31 of training time.
pub const MAX_RUNGS: usize = 32;

/// Candidates TPE draws per proposal (`n_ei_candidates`; Optuna's default is 24).
pub const MAX_EI_CANDIDATES: usize = 10_000;

/// `tpe`: `n_ei_candidates` x `max_trials` x hyperparameters (values, not groups). A proposal
/// scores every candidate against every finished trial in every dimension, under the master's
/// control-plane lock; past this, one proposal would take minutes. Defaults (24 candidates) allow
/// 10,000 trials of 4,000 dimensions' worth, far beyond real searches.
pub const MAX_TPE_WORK: usize = 1 << 30;

/// Restarts of a failed trial.
pub const MAX_RESTARTS: u32 = 1000;

/// Slots one trial may ask for; at least 1, since a trial of no slots would escape the
/// scheduler's accounting.
pub const MAX_SLOTS_PER_TRIAL: u32 = 1024;

/// Priorities run from 0 (first) to this.
pub const MAX_PRIORITY: u8 = 99;

/// Fair-share weights lie in `[MIN_WEIGHT, MAX_WEIGHT]`: a weight of 1e300 or 1e-300 is a typo,
/// and would make every other experiment's share round to nothing.
pub const MIN_WEIGHT: f64 = 0.001;
pub const MAX_WEIGHT: f64 = 1000.0;

/// The smallest GPU fraction a task may ask for: a slot is shared in thousandths.
pub const MIN_GPU_FRACTION: f64 = 0.001;

/// Each of `save_experiment_best`, `save_trial_best` and `save_trial_latest`.
pub const MAX_CHECKPOINTS_KEPT: u32 = 10_000;

/// Bytes of each checkpoint storage field (paths, bucket, prefix, URL, region, credentials).
pub const MAX_STORAGE_FIELD_BYTES: usize = 4096;
