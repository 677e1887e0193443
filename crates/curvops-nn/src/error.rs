//! Errors of model construction and loading. Each renders as one line that names the file,
//! key, layer or field at fault.

/// An error while reading or validating a model, weights or data.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// Reading a file failed.
    #[error("{path}: {msg}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// The model specification is invalid.
    #[error("{path}: {msg}")]
    Spec {
        /// The model file (or `<model>` for in-memory specs).
        path: String,
        /// What is wrong, naming the layer and field.
        msg: String,
    },
    /// A tensor in a safetensors / npy file is missing, extra, of wrong shape/dtype or not finite.
    #[error("{path}: {msg}")]
    Tensor {
        /// The file.
        path: String,
        /// What is wrong, naming the key.
        msg: String,
    },
    /// A parameter selection names an unknown parameter or a node without parameters, or
    /// selects nothing.
    #[error("{0}")]
    Selection(String),
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

impl NnError {
    /// A specification error for `path`.
    pub fn spec(path: &str, msg: impl Into<String>) -> Self {
        Self::Spec { path: path.to_string(), msg: msg.into() }
    }
    /// A tensor error for `path`.
    pub fn tensor(path: &str, msg: impl Into<String>) -> Self {
        Self::Tensor { path: path.to_string(), msg: msg.into() }
    }
    /// An I/O error for `path`.
    pub fn io(path: &str, msg: impl Into<String>) -> Self {
        Self::Io { path: path.to_string(), msg: msg.into() }
    }
}
