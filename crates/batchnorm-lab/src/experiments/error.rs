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
        /// The value given, as the user wrote it (for a list, the offending element).
        value: String,
        /// The valid range.
        why: &'static str,
    },
    /// A list option was given no values.
    #[error("{what}: give at least one value")]
    EmptyList {
        /// The option.
        what: &'static str,
    },
    /// The output folder cannot be created or written; checked before any training.
    #[error("--out {path}: cannot write there: {source}")]
    Unwritable {
        /// The folder.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
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
    /// `bnlab` runs under `mpirun` but was built without MPI.
    #[error("bnlab runs under mpirun but was built without MPI: build it with `cargo build --release -p batchnorm-lab --features mpi` (Open MPI and libclang needed)")]
    NoMpi,
    /// A training thread panicked.
    #[error("the training thread of the {0} network panicked")]
    Panicked(String),
}

/// `Err(LabError::Config)` for a setting out of range.
pub(crate) fn bad<T>(
    what: &'static str,
    value: impl std::fmt::Display,
    why: &'static str,
) -> Result<T, LabError> {
    Err(LabError::Config {
        what,
        value: value.to_string(),
        why,
    })
}

/// A count that must be at least 1 (steps, threads, evaluation periods).
///
/// # Errors
/// [`LabError::Config`] "must be at least 1" when `value` is 0.
pub(crate) fn at_least_one(what: &'static str, value: usize) -> Result<(), LabError> {
    if value == 0 {
        return bad(what, value, "must be at least 1");
    }
    Ok(())
}

/// A rate that must be finite and positive (learning rates).
///
/// # Errors
/// [`LabError::Config`] "must be finite and > 0" naming `value`.
pub(crate) fn positive(what: &'static str, value: f64) -> Result<(), LabError> {
    if !(value.is_finite() && value > 0.0) {
        return bad(what, value, "must be finite and > 0");
    }
    Ok(())
}

/// A scale that must be finite and not negative (initial weights' spread).
///
/// # Errors
/// [`LabError::Config`] "must be finite and >= 0" naming `value`.
pub(crate) fn non_negative(what: &'static str, value: f64) -> Result<(), LabError> {
    if !(value.is_finite() && value >= 0.0) {
        return bad(what, value, "must be finite and >= 0");
    }
    Ok(())
}

/// A size that must lie in `range`; `why` states the range to the user.
///
/// # Errors
/// [`LabError::Config`] with `why`, naming `value`.
pub(crate) fn in_range(
    what: &'static str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
    why: &'static str,
) -> Result<(), LabError> {
    if !range.contains(&value) {
        return bad(what, value, why);
    }
    Ok(())
}

/// `--batch-size` of a training run on MNIST: 2 (batch statistics need two values) to 60,000
/// (the training set).
///
/// # Errors
/// [`LabError::Config`] "must be between 2 and 60000" naming `value`.
pub(crate) fn train_batch_size(value: usize) -> Result<(), LabError> {
    in_range(
        "--batch-size",
        value,
        2..=60_000,
        "must be between 2 and 60000",
    )
}

/// A non-empty list of sizes, each in `range`; `why` states the range to the user.
///
/// # Errors
/// [`LabError::EmptyList`] for no values; [`LabError::Config`] with `why`, naming the first value
/// out of range.
pub(crate) fn each_in_range(
    what: &'static str,
    values: &[usize],
    range: std::ops::RangeInclusive<usize>,
    why: &'static str,
) -> Result<(), LabError> {
    if values.is_empty() {
        return Err(LabError::EmptyList { what });
    }
    match values.iter().find(|v| !range.contains(v)) {
        Some(v) => bad(what, v, why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_errors_quote_the_offending_value() {
        let e = each_in_range("--depths", &[3, 1000], 1..=100, "each must be in 1..=100")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--depths = 1000: each must be in 1..=100");
        let e = each_in_range("--depths", &[], 1..=100, "each must be in 1..=100").unwrap_err();
        assert_eq!(e.to_string(), "--depths: give at least one value");
        assert_eq!(
            positive("--lr", -1.0).unwrap_err().to_string(),
            "--lr = -1: must be finite and > 0"
        );
        assert_eq!(
            at_least_one("--steps", 0).unwrap_err().to_string(),
            "--steps = 0: must be at least 1"
        );
    }
}
