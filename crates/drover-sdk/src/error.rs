use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("environment variable {var} is not set; is this process running as a drover trial?")]
    MissingEnv { var: &'static str },

    #[error("environment variable {var} has a bad value {value:?}: {reason}")]
    BadEnv { var: &'static str, value: String, reason: String },

    #[error("hyperparameter {name:?} is not set{}", known_names(.known))]
    MissingHparam {
        name: String,
        /// The names that do exist at the level where the lookup failed, to catch typos.
        known: Vec<String>,
    },

    #[error("hyperparameter {name:?} is {value}, expected {expected}: {reason}")]
    HparamType { name: String, value: String, expected: String, reason: String },

    #[error("cannot reach the master for {what} at {url}: {source}")]
    Transport {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("the master refused {what} with HTTP {status}: {message}")]
    Api { what: &'static str, status: u16, message: String },

    #[error("the master's answer to {what} could not be read: {message}")]
    BadResponse { what: &'static str, message: String },

    #[error("metric points were not stored: {0}")]
    MetricsDropped(String),

    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("checkpoint: {0}")]
    Checkpoint(String),

    #[error("invalid {field}: {message}")]
    InvalidArgument { field: &'static str, message: String },

    #[error("the metrics reporter thread stopped unexpectedly")]
    ReporterDied,

    #[error("experiment {experiment_id} uses the `{searcher}` searcher; an advisor needs a `custom` one")]
    NotCustom { experiment_id: i64, searcher: String },
}

impl SdkError {
    /// Whether retrying the same request later may succeed: the master could not be reached, or
    /// it answered with a server-side error or "too many requests".
    pub fn is_transient(&self) -> bool {
        match self {
            SdkError::Transport { .. } => true,
            SdkError::Api { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status the master answered with, for errors that carry one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SdkError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> SdkError {
        let path = path.into();
        move |source| SdkError::Io { action, path, source }
    }
}

fn known_names(known: &[String]) -> String {
    if known.is_empty() { String::new() } else { format!(" (the hyperparameters there are: {})", known.join(", ")) }
}
