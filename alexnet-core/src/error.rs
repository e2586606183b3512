//! The one error type of the core crate.

use std::path::PathBuf;

/// Everything that can go wrong in alexnet-core. Messages name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data folder {path}: {msg}")]
    Dataset { path: PathBuf, msg: String },
    #[error("cannot decode image {path}: {msg} (remove or replace the file; it is skipped only with --skip-bad-images)")]
    Image { path: PathBuf, msg: String },
    /// Every unusable image of a data folder at once, each with its reason.
    #[error(
        "{} image file(s) cannot be used:\n{}\nremove or replace them, or pass --skip-bad-images to leave them out (they are then listed in the report)",
        .0.len(),
        .0.iter().map(|(p, r)| format!("  {}: {r}", p.display())).collect::<Vec<_>>().join("\n")
    )]
    BadImages(Vec<(PathBuf, String)>),
    #[error("weights file {path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("weights: {0}")]
    WeightSet(String),
    #[error("unknown layer {name:?}: expected one of {expected}")]
    UnknownLayer { name: String, expected: String },
    #[error("freeze policy: {0}")]
    Freeze(String),
    #[error("feature cache {path}: {msg}")]
    Cache { path: PathBuf, msg: String },
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("backend {backend}: {msg}")]
    Backend { backend: String, msg: String },
}

/// Result alias for alexnet-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error that remembers the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A backend failure, with the backend's name.
    pub fn backend(backend: &str, msg: impl std::fmt::Display) -> Self {
        Error::Backend { backend: backend.to_string(), msg: msg.to_string() }
    }
}
