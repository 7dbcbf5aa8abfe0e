//! The crate's error type: every failure a user can act on, as a value.

use std::fmt;

/// Everything wgtune can fail with. Messages name the object, file or option involved and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter (hardware or software) could be found.
    #[error("{0}")]
    NoAdapter(String),
    /// The adapter was found but a device could not be created on it.
    #[error("could not open a device on adapter '{adapter}': {reason}")]
    RequestDevice { adapter: String, reason: String },
    /// A wgpu validation / out-of-memory error, captured by an error scope around a labelled object.
    #[error("GPU error in '{label}': {message}")]
    Gpu { label: String, message: String },
    /// The device was lost (driver reset, out of memory, or the device was destroyed).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// A tensor does not fit the adapter's limits.
    #[error("tensor '{label}' needs {bytes} bytes, but this adapter allows at most {limit} bytes per {what}")]
    TooLarge { label: String, bytes: u64, limit: u64, what: &'static str },
    /// Shapes that do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: String, detail: String },
    /// A buffer could not be mapped for reading back.
    #[error("reading back '{label}' failed: {reason}")]
    Readback { label: String, reason: String },
    /// The user stopped the run (Ctrl-C); the message says where the checkpoint is.
    #[error("{0}")]
    Interrupted(String),
    /// Bad user input (an option, a file).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(op: impl fmt::Display, detail: impl fmt::Display) -> Self {
        Error::Shape { op: op.to_string(), detail: detail.to_string() }
    }
}
