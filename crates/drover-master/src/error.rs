//! The one place where failures become HTTP statuses and JSON bodies.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_api::rest::{ApiError, ErrorLocation};
use drover_core::ConfigError;
use drover_search::SearchError;
use drover_store::StoreError;

#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub body: ApiError,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Error {
        Error { status, body: ApiError { error: kind.into(), message: message.into(), location: None } }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A bad request about one named field or parameter.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Error {
        let mut e = Error::bad_request(message);
        e.body.location = Some(ErrorLocation { field: Some(field.into()), line: None, column: None });
        e
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn too_large(message: impl Into<String>) -> Error {
        Error::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
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

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
