//! The error type shared by every experiment.

use std::path::PathBuf;

use batchnorm_nn::NnError;

/// What can go wrong in an experiment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A setting is out of range.
    #[error("{what} = {value}: {why}")]
    Config {
        /// The option.
        what: &'static str,
        /// Its value.
        value: f64,
        /// The valid range.
        why: &'static str,
    },
    /// The training stack failed (data files, shapes, kernels).
    #[error(transparent)]
    Nn(#[from] NnError),
    /// Folding batch normalization into the preceding layer failed.
    #[error(transparent)]
    Fold(#[from] batchnorm_nn::fold::FoldError),
    /// A figure could not be drawn or written.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// An output file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// An internal inconsistency in setting up the experiment.
    #[error("setup: {0}")]
    Setup(&'static str),
    /// A checkpoint could not be saved or resumed (boxed: it is the largest error).
    #[error(transparent)]
    Checkpoint(Box<super::fig1::checkpoint::CheckpointError>),
    /// A training thread panicked.
    #[error("the training thread of the {0} network panicked")]
    Panicked(String),
}

/// `Err(LabError::Config)` for a setting out of range.
pub(crate) fn bad<T>(what: &'static str, value: f64, why: &'static str) -> Result<T, LabError> {
    Err(LabError::Config { what, value, why })
}
