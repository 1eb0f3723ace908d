//! REST bodies of `/api/v1`. Times are milliseconds since the Unix epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use crate::agent::LogLine;

/// Every error the API returns: an HTTP 4xx/5xx status with this body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Short machine-readable kind: `bad_request`, `not_found`, `conflict`, `unauthorized`,
    /// `payload_too_large`, `internal`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Where: a field path, a line/column in a config, or a parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<ErrorLocation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateExperimentRequest {
    /// The experiment configuration as YAML text.
    pub config: String,
    /// The context directory as a base64-encoded gzip tarball.
    #[serde(default)]
    pub context: Option<String>,
    /// Start at once (default) or create paused.
    #[serde(default = "yes")]
    pub activate: bool,
    /// File name of the config, used in error messages.
    #[serde(default)]
    pub config_file: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub state: String,
    pub searcher: String,
    pub metric: String,
    pub smaller_is_better: bool,
    /// The validated configuration as JSON.
    #[schema(value_type = Object)]
    pub config: Value,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    /// Trials by state, e.g. {"COMPLETED": 3, "RUNNING": 1}.
    pub trial_counts: BTreeMap<String, i64>,
    /// Trials the searcher plans in total, if known up front.
    pub planned_trials: Option<i64>,
    pub best_trial_id: Option<i64>,
    /// Best value of the searcher metric over all validations of all trials.
    pub best_metric: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Trial {
    pub id: i64,
    pub experiment_id: i64,
    pub state: String,
    #[schema(value_type = Object)]
    pub hparams: Value,
    pub restarts: i64,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    /// Best value of the searcher metric among this trial's validations.
    pub best_metric: Option<f64>,
    pub latest_checkpoint: Option<String>,
    pub summaries: Vec<MetricSummary>,
    /// The current allocation and the agent it runs on, if any.
    pub allocation_id: Option<String>,
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSummary {
    /// `training` or `validation`.
    pub group: String,
    pub name: String,
    pub count: i64,
    pub last: f64,
    pub last_step: i64,
    pub min: f64,
    pub max: f64,
}

/// A batch of metric points from a trial. Reports are idempotent by (trial, group, metric,
/// step): sending the same batch twice stores it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportMetricsRequest {
    pub points: Vec<MetricPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    /// `training` or `validation`.
    pub group: String,
    pub step: i64,
    /// Metric name to value. Values must be finite numbers; the SDK sends a non-finite value as
    /// the string "NaN", "inf" or "-inf" so that the master can say which one it refused.
    #[schema(value_type = Object)]
    pub metrics: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportMetricsResponse {
    /// Points newly stored (duplicates of earlier reports are not counted).
    pub stored: usize,
    /// The trial has been asked to stop (by the searcher or a user).
    pub stop_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrialSignals {
    pub stop_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSeries {
    pub group: String,
    pub name: String,
    /// Points stored in total; `points` holds at most the requested number.
    pub total_points: i64,
    /// [step, value] pairs in step order.
    #[schema(schema_with = step_value_pairs)]
    pub points: Vec<(i64, f64)>,
}

/// `[[step, value], ...]`: pairs of numbers, the step an integer. (A Rust tuple would become a list
/// of item schemas, which is not a schema; JSON Schema's `prefixItems` says it exactly, but
/// schemathesis 4 rewrites it into that same invalid form when it checks responses.)
fn step_value_pairs() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
    let number = ObjectBuilder::new().schema_type(Type::Number).build();
    let pair = ArrayBuilder::new().items(number).min_items(Some(2)).max_items(Some(2)).description(Some("[step, value]"));
    ArrayBuilder::new().items(RefOr::T(Schema::from(pair.build()))).build()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrialLogs {
    pub lines: Vec<LogEntry>,
    /// Pass as `after` to get the next page.
    pub next_after: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    pub id: i64,
    pub ts_ms: i64,
    pub stream: String,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterCheckpointRequest {
    /// Hyphenated, as `3f1c2a8e-5b7d-4e2a-9c1f-0a1b2c3d4e5f`: the checkpoint's folder in storage.
    #[schema(format = "uuid")]
    pub uuid: String,
    #[schema(minimum = 0)]
    pub step: i64,
    /// Relative file paths and their sizes in bytes.
    pub resources: BTreeMap<String, u64>,
    /// A JSON object; `null` or none is an empty one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    pub uuid: String,
    pub trial_id: i64,
    pub experiment_id: i64,
    pub step: i64,
    pub size: i64,
    pub resources: BTreeMap<String, u64>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: i64,
    /// Kept by every garbage collection and refused by delete.
    #[serde(default)]
    pub pinned: bool,
}

/// A checkpoint policy, applied at once and again when the experiment ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPolicy {
    // 32-bit unsigned: utoipa would say `int32`, whose range stops at 2^31 - 1.
    #[schema(format = "uint32", maximum = 4294967295_u64)]
    pub save_experiment_best: u32,
    #[schema(format = "uint32", maximum = 4294967295_u64)]
    pub save_trial_best: u32,
    #[schema(format = "uint32", maximum = 4294967295_u64)]
    pub save_trial_latest: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GcResult {
    /// Checkpoints deleted (files, then records).
    pub deleted: Vec<String>,
    pub kept: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCheckpoint {
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: String,
    /// The resource pool its slots belong to.
    #[serde(default)]
    pub pool: String,
    pub hostname: String,
    pub version: String,
    pub connected: bool,
    pub connected_at: i64,
    pub last_heartbeat: i64,
    pub slots: Vec<Slot>,
}

/// A job as `drover job list` shows it: an experiment today.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    /// `experiment`.
    pub kind: String,
    pub name: String,
    pub state: String,
    pub resource_pool: String,
    /// 0 (first) to 99.
    pub priority: i64,
    /// Its weight in fair share against the other jobs of its pool and priority.
    pub weight: f64,
    /// Trials holding slots.
    pub running: usize,
    /// Trials waiting for slots, by their place in the pool's queue.
    pub queued: Vec<JobWaiting>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobWaiting {
    pub trial_id: i64,
    /// 0-based place in the pool's queue at the last scheduling pass; `null` when it came
    /// after it.
    pub position: Option<u32>,
    /// Why it waits, in words.
    pub reason: String,
}

/// `POST /api/v1/allocations/rendezvous`, with the member's task token: the address (e.g.
/// `host:port`) it listens on for its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RendezvousRequest {
    pub address: String,
}

/// The gang's addresses by rank; `complete` once every member has announced its own (until
/// then the missing ones are `null`, and the member calls again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rendezvous {
    pub rank: usize,
    pub world_size: usize,
    pub addresses: Vec<Option<String>>,
    pub complete: bool,
}

/// Longest address a gang member may announce at the rendezvous (bytes).
pub const MAX_RENDEZVOUS_ADDRESS: usize = 512;

/// `PATCH /api/v1/jobs/{id}`: either or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJobRequest {
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub weight: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Slot {
    pub id: String,
    /// `cpu` or `cuda`.
    pub kind: String,
    pub device: String,
    /// The task using this slot, if any (the first, when fractions share it).
    pub allocation_id: Option<String>,
    /// Every task using this slot: several when fractional GPU tasks share it.
    #[serde(default)]
    pub allocation_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub version: String,
    pub master_id: String,
}

/// The family tree of a `pbt` experiment: every member of every generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lineage {
    pub experiment_id: i64,
    pub metric: String,
    pub smaller_is_better: bool,
    pub population_size: usize,
    pub max_generations: usize,
    /// Best score of the population after each completed generation (over all generations so
    /// far), in the metric's own orientation.
    pub best_by_generation: Vec<Option<f64>>,
    /// Why the search stopped starting generations, once it has.
    pub ended_because: Option<String>,
    /// Members by generation, then slot.
    pub members: Vec<LineageMember>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineageMember {
    pub trial_id: i64,
    pub generation: usize,
    /// The line of the population it continues (0-based).
    pub slot: usize,
    /// The trial whose checkpoint it started from.
    pub parent_trial_id: Option<i64>,
    /// It copied a better member (and explored its hyperparameters) rather than continuing its
    /// own line.
    pub exploited: bool,
    pub state: String,
    #[schema(value_type = Object)]
    pub hparams: Value,
    /// The searcher metric at the end of its generation; none if it failed or reported none.
    pub score: Option<f64>,
    pub checkpoint: Option<String>,
}

/// One event of a `custom` search, for its advisor: `{"seq": 4, "type": "validation_completed",
/// "request_id": 2, "metric": 0.91, "time": 10}`. Sequence numbers start at 1 and have no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearcherEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub kind: SearcherEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SearcherEventKind {
    /// The search exists; always event 1. `hyperparameters` is the experiment's space, in the
    /// shape of the `config` of [`Experiment`].
    Initialized {
        metric: String,
        smaller_is_better: bool,
        max_trials: Option<u64>,
        max_concurrent_trials: u64,
        #[schema(value_type = Object)]
        hyperparameters: Value,
    },
    /// A trial the advisor asked for now exists.
    TrialCreated {
        request_id: u64,
        #[schema(value_type = Object)]
        hparams: serde_json::Map<String, Value>,
        checkpoint_from: Option<u64>,
    },
    /// A trial reported the searcher metric (as reported, whatever `smaller_is_better`) when its
    /// time metric, or else its step, stood at `time`.
    ValidationCompleted { request_id: u64, metric: f64, time: f64 },
    /// A trial ended: completed, stopped when asked, or canceled.
    TrialExited { request_id: u64 },
    /// A trial failed beyond its restarts.
    TrialFailed { request_id: u64 },
}

/// A page of a custom search's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearcherEvents {
    pub events: Vec<SearcherEvent>,
    /// Pass as `after` next time (which acknowledges these events): the last event's `seq`, or
    /// the `after` of the request when there was none.
    pub next_after: u64,
    /// The search has shut down and takes no more actions.
    pub shut_down: bool,
    /// The experiment's state, e.g. `ACTIVE`, `STOPPING_COMPLETED` or `COMPLETED`.
    pub experiment_state: String,
}

/// What an advisor asks of a custom search: `{"type": "create", "hparams": {...}}`,
/// `{"type": "stop", "request_id": 3}` or `{"type": "shutdown", "failure": false}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdvisorAction {
    /// Run a trial with these hyperparameters (a point of the experiment's space), from the
    /// latest checkpoint of trial `checkpoint_from` (a request id) if given and it has one.
    Create {
        #[schema(value_type = Object)]
        hparams: serde_json::Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint_from: Option<u64>,
    },
    /// Ask a live trial to stop; it ends with `trial_exited`. Stopping it again is a no-op.
    Stop { request_id: u64 },
    /// End the search. Trials still running finish; then the experiment completes, or errors
    /// with `failure`.
    Shutdown {
        #[serde(default)]
        failure: bool,
    },
}

/// A batch of actions, checked whole: if one is refused, none is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdvisorActionsRequest {
    pub actions: Vec<AdvisorAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdvisorActionsResponse {
    /// The trials the batch's `create` actions made, in order.
    pub created: Vec<CreatedTrial>,
    /// The search has shut down.
    pub shut_down: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedTrial {
    /// The search's id for the trial, used in events and in `stop`.
    pub request_id: u64,
    pub trial_id: i64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn advisor_wire_shapes_are_flat() {
        let event = SearcherEvent { seq: 4, kind: SearcherEventKind::ValidationCompleted { request_id: 2, metric: 0.5, time: 10.0 } };
        let text = serde_json::to_value(&event).unwrap();
        assert_eq!(text, json!({"seq": 4, "type": "validation_completed", "request_id": 2, "metric": 0.5, "time": 10.0}));
        assert_eq!(serde_json::from_value::<SearcherEvent>(text).unwrap(), event);

        let actions: AdvisorActionsRequest = serde_json::from_value(json!({"actions": [
            {"type": "create", "hparams": {"lr": 0.1}},
            {"type": "stop", "request_id": 3},
            {"type": "shutdown"},
        ]}))
        .unwrap();
        assert_eq!(actions.actions[2], AdvisorAction::Shutdown { failure: false });
        assert!(matches!(&actions.actions[0], AdvisorAction::Create { checkpoint_from: None, .. }));
        // A misspelt field is an error, not a silently ignored option.
        let typo = serde_json::from_value::<AdvisorAction>(json!({"type": "create", "hparams": {}, "checkpoint_form": 1}));
        assert!(typo.unwrap_err().to_string().contains("checkpoint_form"));
    }
}

/// Headers of a parameter download (`GET /api/v1/params/{name}/versions/{selector}`): which
/// version the bytes are, since `latest` and `tag:NAME` resolve on the server.
pub mod param_headers {
    pub const VERSION: &str = "x-drover-param-version";
    /// Lower-case hex SHA-256 of the body.
    pub const SHA256: &str = "x-drover-param-sha256";
    pub const CREATED_AT: &str = "x-drover-param-created-at";
}

/// One immutable version of a named parameter (policy weights, say). Its bytes are fetched
/// separately; the metadata can be changed afterwards, the bytes never.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamVersion {
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    /// Bytes.
    pub size: i64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// A JSON object, what queries filter and sort on.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Tags pointing at this version, sorted.
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamTag {
    pub name: String,
    pub tag: String,
    pub version: i64,
    pub updated_at: i64,
}

/// A parameter name and a summary of its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamName {
    pub name: String,
    pub versions: i64,
    pub latest_version: i64,
    /// When the newest version was pushed.
    pub updated_at: i64,
}

/// The raw bytes of a parameter version, as a push sends them and a download answers them.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ParamBytes(pub Vec<u8>);

/// Body of `PUT /api/v1/params/{name}/tags/{tag}`: where the tag points from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetParamTagRequest {
    #[schema(minimum = 0)]
    pub version: i64,
}

/// Body of `PATCH /api/v1/params/{name}/versions/{version}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateParamMetadataRequest {
    /// Merged into the version's metadata key by key (a `null` value removes that key), or
    /// replacing it whole with `replace`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    pub replace: bool,
}

/// Body of `POST /api/v1/params/{name}/gc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamGcRequest {
    /// How many of the newest untagged versions to keep; tagged versions are always kept.
    // Any 64-bit unsigned value: utoipa would say `int64`, whose range stops at 2^63 - 1.
    #[schema(format = "uint64")]
    pub keep_untagged: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ParamGcResponse {
    /// Versions deleted, lowest first.
    pub deleted: Vec<i64>,
    /// Versions left, lowest first.
    pub kept: Vec<i64>,
}
