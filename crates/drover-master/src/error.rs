//! The master's errors as the control plane sees them: a kind (what went wrong, in the
//! domain's terms) and the message and location a client is shown. Nothing here knows HTTP:
//! `api/http_error.rs` is the one place a kind becomes a status code.

use drover_api::rest::{ApiError, ErrorLocation};
use drover_core::ConfigError;
use drover_search::SearchError;
use drover_store::StoreError;

/// What went wrong, as the domain says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (a field, a parameter).
    BadRequest,
    /// The body's media type is not one the endpoint takes.
    UnsupportedMediaType,
    /// No credentials, or ones nobody issued.
    Unauthorized,
    /// Credentials, but not for this (another trial's token, a foreign page's request).
    Forbidden,
    NotFound,
    /// The state does not allow it now (still running, pinned, already exists).
    Conflict,
    /// Over a size limit.
    TooLarge,
    /// A fault of the master or what it depends on, not of the request.
    Internal,
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    /// What the client is shown: `{error, message, location}`.
    pub body: ApiError,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, name: &str, message: impl Into<String>) -> Error {
        Error { kind, body: ApiError { error: name.into(), message: message.into(), location: None } }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest, "bad_request", message)
    }

    /// A bad request about one named field or parameter.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Error {
        let mut e = Error::bad_request(message);
        e.body.location = Some(ErrorLocation { field: Some(field.into()), line: None, column: None });
        e
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::UnsupportedMediaType, "unsupported_media_type", message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, "conflict", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unauthorized, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Forbidden, "forbidden", message)
    }

    pub fn too_large(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::TooLarge, "payload_too_large", message)
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, "internal", message)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound(what) => Error::not_found(format!("{what} not found")),
            StoreError::Conflict(msg) => Error::conflict(msg),
            other => {
                tracing::error!("store: {other}");
                Error::internal(other.to_string())
            }
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        let mut err = Error::bad_request(e.to_string());
        err.body.error = "invalid_config".into();
        err.body.location = Some(ErrorLocation { field: e.field.clone(), line: e.line, column: e.column });
        err
    }
}

impl From<SearchError> for Error {
    fn from(e: SearchError) -> Error {
        match e {
            SearchError::Refused { ref field, .. } => Error::bad_field(field.clone(), e.to_string()),
            SearchError::Config(message) => Error::bad_field("searcher", message),
            // A search that has shut down is a state, not a malformed request.
            SearchError::Closed(message) => Error::conflict(message),
            SearchError::Snapshot(message) => Error::internal(message),
        }
    }
}
