//! Rows as the store reads and writes them. Times are milliseconds since the Unix epoch; JSON
//! columns hold small documents (a config, hyperparameters), never per-point data.

#[derive(Debug, Clone, PartialEq)]
pub struct NewExperiment {
    pub name: String,
    pub description: Option<String>,
    pub state: String,
    /// The validated configuration as JSON.
    pub config_json: String,
    /// The file as the user wrote it.
    pub config_yaml: String,
    pub context: Option<Vec<u8>>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentRow {
    pub id: i64,
    pub name: String,
    pub description: Option<String>,
    pub state: String,
    pub config_json: String,
    pub config_yaml: String,
    pub created_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    pub experiment_id: i64,
    /// The searcher's id for this trial, unique within the experiment.
    pub request_id: i64,
    pub state: String,
    pub hparams_json: String,
    pub seed: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrialRow {
    pub id: i64,
    pub experiment_id: i64,
    pub request_id: i64,
    pub state: String,
    pub hparams_json: String,
    pub seed: i64,
    pub restarts: i64,
    pub stop_requested: bool,
    pub latest_checkpoint: Option<String>,
    pub created_at: i64,
    pub ended_at: Option<i64>,
}

/// Fields to change on a trial; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialUpdate {
    pub state: Option<String>,
    pub restarts: Option<i64>,
    pub stop_requested: Option<bool>,
    pub latest_checkpoint: Option<String>,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAllocation {
    pub id: String,
    pub trial_id: i64,
    pub token: String,
    pub state: String,
    pub agent_id: Option<String>,
    pub slot_ids: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AllocationRow {
    pub id: String,
    pub trial_id: i64,
    pub token: String,
    pub state: String,
    pub agent_id: Option<String>,
    pub slot_ids: Vec<String>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocationUpdate {
    pub state: Option<String>,
    pub agent_id: Option<String>,
    pub slot_ids: Option<Vec<String>>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub ended_at: Option<i64>,
}

/// Metric group: what a point was reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricGroup {
    Training,
    Validation,
}

impl MetricGroup {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricGroup::Training => "training",
            MetricGroup::Validation => "validation",
        }
    }

    pub fn parse(s: &str) -> Option<MetricGroup> {
        match s {
            "training" => Some(MetricGroup::Training),
            "validation" => Some(MetricGroup::Validation),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub group: MetricGroup,
    pub name: String,
    pub step: i64,
    pub value: f64,
    pub ts_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricSummaryRow {
    pub trial_id: i64,
    pub group: String,
    pub name: String,
    pub count: i64,
    pub last: f64,
    pub last_step: i64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRows {
    pub total_points: i64,
    /// (step, value) in step order.
    pub points: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    /// Assigned by the store; ignored on append.
    pub id: i64,
    pub ts_ms: i64,
    pub stream: String,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRow {
    pub uuid: String,
    pub trial_id: i64,
    pub experiment_id: i64,
    pub step: i64,
    pub size: i64,
    /// JSON map of relative path to size.
    pub resources_json: String,
    pub metadata_json: String,
    pub created_at: i64,
    /// Kept by every garbage collection.
    pub pinned: bool,
}

/// One immutable version of a named parameter blob; the bytes live in parameter storage.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamVersionRow {
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    pub size: i64,
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    /// A JSON object.
    pub metadata_json: String,
    /// Where the bytes are, relative to the parameter storage.
    pub storage_key: String,
}

/// A tag names one version of a parameter; setting it again moves it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTagRow {
    pub name: String,
    pub tag: String,
    pub version: i64,
    pub updated_at: i64,
}

/// A parameter name with a summary of its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamNameRow {
    pub name: String,
    pub versions: i64,
    pub latest_version: i64,
    /// When its newest version was pushed.
    pub updated_at: i64,
}
