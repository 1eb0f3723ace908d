//! What goes wrong in storage: [`StorageError`], and the crate's [`Result`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{0} not found")]
    NotFound(String),
    #[error("cannot open {what}: {message}")]
    Config { what: String, message: String },
    #[error("{action} {key} on {storage}: {source}")]
    Store {
        action: &'static str,
        key: String,
        storage: String,
        #[source]
        // Boxed: object_store's error is large, and every Result here would carry its size.
        source: Box<object_store::Error>,
    },
    #[error("the data for {key} stopped: {source}")]
    Aborted {
        key: String,
        /// The error of the stream that was being stored; callers downcast it to their own.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// On a file-system storage, `key` (the requested key, or the part of it up to the link)
    /// is a symbolic link: drover does not read, list or write through one.
    #[error("`{key}` is a symbolic link; drover never follows links in storage")]
    Link { key: String },
    /// A local file that drover will not save or write to: a link out of the saved directory
    /// or one that leads nowhere, a fifo, socket or device, or a link in a destination.
    #[error("refusing `{path}`: {reason}")]
    Refused { path: String, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
