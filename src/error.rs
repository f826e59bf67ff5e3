//! The library's error type: every failure names the file or model it concerns and why.

use std::path::PathBuf;

/// Result alias used throughout facekit.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in facekit. Messages say what is wrong in the library's terms
/// (never a command-line flag); front ends add their own hints by matching the kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    // The I/O error is part of the message, not a `source()`, so `{:#}` does not repeat it.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// A file was read but is not a usable image.
    #[error("{}: {reason}", path.display())]
    Image {
        /// The file concerned.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An image declares more pixels than the configured limit
    /// ([`LoadOptions::max_pixels`](crate::io::LoadOptions)); refused before decoding.
    #[error("{}: image is {width}x{height} ({:.1} MP), over the {:.1} MP limit", path.display(), *width as f64 * *height as f64 / 1e6, *limit as f64 / 1e6)]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit, in pixels.
        limit: u64,
    },
    /// An output file exists and replacing it was not asked for.
    #[error("{}: already exists", path.display())]
    Exists {
        /// The file that would have been replaced.
        path: PathBuf,
    },
    /// The input cannot give what was asked for (no scorable pair, too few identities).
    #[error("{0}")]
    Data(String),
    /// Model weights are missing or malformed.
    #[error("model {name}: {reason}")]
    Model {
        /// The weights file name (e.g. `mtcnn.safetensors`).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An option has a value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The face library (SQLite database) could not be read or written.
    #[error("library {}: {reason}", path.display())]
    Library {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A name given by the user does not exist or is not unique (a person, a face).
    #[error("{0}")]
    NotFound(String),
}

impl Clone for Error {
    /// A copy with the same message (an I/O error keeps its kind and text; a tensor error
    /// becomes its text).
    fn clone(&self) -> Self {
        match self {
            Error::Io { path, error } => Error::Io {
                path: path.clone(),
                error: std::io::Error::new(error.kind(), error.to_string()),
            },
            Error::Image { path, reason } => Error::Image {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Model { name, reason } => Error::Model {
                name: name.clone(),
                reason: reason.clone(),
            },
            Error::Config(s) => Error::Config(s.clone()),
            Error::Library { path, reason } => Error::Library {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::NotFound(s) => Error::NotFound(s.clone()),
            Error::TooLarge {
                path,
                width,
                height,
                limit,
            } => Error::TooLarge {
                path: path.clone(),
                width: *width,
                height: *height,
                limit: *limit,
            },
            Error::Exists { path } => Error::Exists { path: path.clone() },
            Error::Data(s) => Error::Data(s.clone()),
            Error::Candle(e) => Error::Config(format!("tensor error: {e}")),
        }
    }
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// The file the error concerns, if it concerns one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Image { path, .. }
            | Error::TooLarge { path, .. }
            | Error::Exists { path } => Some(path),
            _ => None,
        }
    }

    /// The reason alone, without the file name (for records that carry the path separately).
    pub fn reason(&self) -> String {
        match self {
            Error::Io { error, .. } => error.to_string(),
            Error::Image { reason, .. } => reason.clone(),
            Error::TooLarge { path, .. } | Error::Exists { path } => {
                let full = self.to_string();
                let prefix = format!("{}: ", path.display());
                full.strip_prefix(&prefix).unwrap_or(&full).to_string()
            }
            other => other.to_string(),
        }
    }

    /// An unusable image, with the reason.
    pub fn image(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Image {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
