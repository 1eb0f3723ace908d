//! The metadata store: one [`Store`] trait and one SQL implementation that runs on SQLite (the
//! embedded default, a file in WAL mode) and PostgreSQL (`--db postgres://...`), with
//! migrations for both and one test suite run against both (`tests/store_suite.rs`).
//!
//! Metrics are narrow rows `(trial, group, name, step, value)` keyed so that a repeated report
//! is ignored, inserted in multi-row batches, with per-metric summaries (count, last, min, max)
//! maintained in the same transaction from exactly the rows that were new. Nothing is stored
//! as a JSON blob that would have to be re-parsed per point.
//!
//! Architecture invariant: the store knows rows, not policy. It does not decide state
//! transitions, searcher behaviour or scheduling; it persists what the master decided.

mod sql;
pub mod types;

pub use sql::{Dialect, SqlStore};
pub use types::*;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Experiments.
    async fn create_experiment(&self, new: NewExperiment) -> StoreResult<i64>;
    async fn get_experiment(&self, id: i64) -> StoreResult<ExperimentRow>;
    async fn list_experiments(&self) -> StoreResult<Vec<ExperimentRow>>;
    async fn set_experiment_state(&self, id: i64, state: &str, ended_at: Option<i64>) -> StoreResult<()>;
    /// Deletes the experiment and everything under it. Its id and its trials' ids are never
    /// handed out again (SQLite: AUTOINCREMENT since migration 5; PostgreSQL: identity sequences).
    async fn delete_experiment(&self, id: i64) -> StoreResult<()>;
    async fn get_context(&self, experiment_id: i64) -> StoreResult<Option<Vec<u8>>>;
    /// Whether the experiment has a context, without reading it.
    async fn has_context(&self, experiment_id: i64) -> StoreResult<bool>;
    async fn save_searcher_snapshot(&self, experiment_id: i64, snapshot: &str) -> StoreResult<()>;
    async fn load_searcher_snapshot(&self, experiment_id: i64) -> StoreResult<Option<String>>;
    /// Trials per state for every experiment, as (experiment_id, state, count).
    async fn trial_counts(&self) -> StoreResult<Vec<(i64, String, i64)>>;

    // Trials.
    async fn create_trial(&self, new: NewTrial) -> StoreResult<i64>;
    async fn get_trial(&self, id: i64) -> StoreResult<TrialRow>;
    async fn list_trials(&self, experiment_id: i64) -> StoreResult<Vec<TrialRow>>;
    async fn update_trial(&self, id: i64, update: TrialUpdate) -> StoreResult<()>;

    // Allocations: one attempt at running a trial; the token authenticates its reports.
    async fn create_allocation(&self, new: NewAllocation) -> StoreResult<()>;
    async fn get_allocation(&self, id: &str) -> StoreResult<AllocationRow>;
    async fn update_allocation(&self, id: &str, update: AllocationUpdate) -> StoreResult<()>;
    /// Allocations not yet terminated, e.g. to fail or reattach them after a restart.
    async fn live_allocations(&self) -> StoreResult<Vec<AllocationRow>>;

    // Metrics.
    /// Stores the points that are new and returns how many were; updates summaries from them.
    async fn add_metrics(&self, trial_id: i64, points: &[MetricRow]) -> StoreResult<usize>;
    async fn metric_summaries(&self, trial_id: i64) -> StoreResult<Vec<MetricSummaryRow>>;
    /// Every summary of every trial of an experiment, ordered by trial: one query for a trial
    /// table, however many trials.
    async fn experiment_summaries(&self, experiment_id: i64) -> StoreResult<Vec<MetricSummaryRow>>;
    /// Summaries of one metric for every trial of an experiment.
    async fn experiment_metric_summaries(&self, experiment_id: i64, group: &str, name: &str) -> StoreResult<Vec<MetricSummaryRow>>;
    /// The series of one metric: all of it when short, else the minimum and maximum of each
    /// bucket of the finest write-time rollup with at most about `4 * max_points` buckets.
    /// The caller refines it to `max_points` (LTTB).
    async fn metric_series(&self, trial_id: i64, group: &str, name: &str, max_points: usize) -> StoreResult<SeriesRows>;

    // Logs.
    async fn append_logs(&self, trial_id: i64, allocation_id: &str, lines: &[LogRow]) -> StoreResult<()>;
    /// Lines of a trial with id greater than `after`, oldest first.
    async fn read_logs(&self, trial_id: i64, after: i64, limit: i64) -> StoreResult<Vec<LogRow>>;

    // Checkpoints.
    async fn add_checkpoint(&self, checkpoint: CheckpointRow) -> StoreResult<()>;
    async fn get_checkpoint(&self, uuid: &str) -> StoreResult<CheckpointRow>;
    async fn list_checkpoints(&self, trial_id: i64) -> StoreResult<Vec<CheckpointRow>>;
    async fn list_experiment_checkpoints(&self, experiment_id: i64) -> StoreResult<Vec<CheckpointRow>>;
    /// Each checkpoint of the experiment with the validation value of `metric` at its step
    /// (or the latest before), if any.
    async fn checkpoint_scores(&self, experiment_id: i64, metric: &str) -> StoreResult<Vec<(String, Option<f64>)>>;
    /// Removes a checkpoint's row; its files must already be gone.
    async fn delete_checkpoint(&self, uuid: &str) -> StoreResult<()>;
    async fn set_checkpoint_pinned(&self, uuid: &str, pinned: bool) -> StoreResult<()>;
    /// Replaces an experiment's stored configuration (e.g. a new checkpoint policy).
    async fn update_experiment_config(&self, id: i64, config_json: &str) -> StoreResult<()>;

    // Parameter database: versions are immutable once added; tags move.
    /// Adds a version and points `tags` at it, in one transaction; `Conflict` when the version
    /// (or its storage key) exists.
    async fn add_param_version(&self, row: ParamVersionRow, tags: &[String]) -> StoreResult<()>;
    async fn get_param_version(&self, name: &str, version: i64) -> StoreResult<ParamVersionRow>;
    /// The highest version of `name`.
    async fn latest_param_version(&self, name: &str) -> StoreResult<ParamVersionRow>;
    async fn param_version_by_tag(&self, name: &str, tag: &str) -> StoreResult<ParamVersionRow>;
    /// Every version of `name`, lowest first.
    async fn list_param_versions(&self, name: &str) -> StoreResult<Vec<ParamVersionRow>>;
    /// Every tag of `name`, by tag.
    async fn list_param_tags(&self, name: &str) -> StoreResult<Vec<ParamTagRow>>;
    /// Points `tag` at `version` (moving it if it exists); `NotFound` when the version does not.
    async fn set_param_tag(&self, name: &str, tag: &str, version: i64, updated_at: i64) -> StoreResult<()>;
    /// Removes a tag; `NotFound` when there is none.
    async fn delete_param_tag(&self, name: &str, tag: &str) -> StoreResult<()>;
    /// Replaces a version's metadata (a JSON object).
    async fn update_param_metadata(&self, name: &str, version: i64, metadata_json: &str) -> StoreResult<()>;
    /// Deletes these versions of `name` and any tags on them; returns how many versions went.
    /// Versions already gone are skipped.
    async fn delete_param_versions(&self, name: &str, versions: &[i64]) -> StoreResult<usize>;
    /// Every parameter name with at least one version, by name.
    async fn list_param_names(&self) -> StoreResult<Vec<ParamNameRow>>;
}
