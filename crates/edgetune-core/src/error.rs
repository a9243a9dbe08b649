//! The crate's one error type: every message names the file, the place and the numbers involved.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in edgetune, as a value (library code never panics on input).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A malformed GGUF file: `offset` is the byte position where the problem was found.
    #[error("{}: at byte {offset}: {what}", path.display())]
    Gguf {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// A metadata key that is missing or holds a value of another type.
    #[error("{}: metadata key `{key}`: {what}", path.display())]
    Metadata {
        path: PathBuf,
        key: String,
        what: String,
    },
    /// A tensor that is missing or has the wrong name, shape or type.
    #[error("{}: tensor `{name}`: {what}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        what: String,
    },
    /// A ggml type this build cannot decode or encode.
    #[error("unsupported ggml type {id} ({name}): {what}")]
    UnsupportedType {
        id: u32,
        name: &'static str,
        what: String,
    },
    /// A file whose bytes are not what was written (a checkpoint file whose size or SHA-256
    /// differs from its manifest, or that is missing).
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// The memory plan does not fit the budget: `needed` and `budget` in bytes; `report` is the
    /// whole message (the numbers, the breakdown table and the configurations that would fit).
    #[error("{report}")]
    OverBudget {
        needed: u64,
        budget: u64,
        report: String,
    },
    /// A bad record or value in an input file (a dataset, an eval suite): `line` is 1-based when
    /// known; `what` is the whole message, which names the file and the line itself.
    #[error("{what}")]
    BadInput {
        path: PathBuf,
        line: Option<usize>,
        what: String,
    },
    /// Something valid that this build or this engine does not do (an architecture, a method on
    /// a device backend, a format), with what would work instead.
    #[error("{0}")]
    Unsupported(String),
    /// A computation produced NaN or Inf (a loss, a gradient, logits, a weight): the message
    /// names the step or position and where it first appeared, with advice.
    #[error("{0}")]
    NonFinite(String),
    /// Arguments that do not fit together (shapes, lengths), with the numbers.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A bad input record: `what` is the whole message (it names the file and line).
    pub fn bad_input(path: impl Into<PathBuf>, line: Option<usize>, what: String) -> Self {
        Error::BadInput {
            path: path.into(),
            line,
            what,
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
