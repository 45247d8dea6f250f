//! The error type of SyncBatchNorm.

use batchnorm::BatchNormError;

use crate::collective::CommError;

/// Everything that can go wrong in a [`SyncBatchNorm`](crate::SyncBatchNorm) call.
///
/// A call that communicates fails on every rank or on none: a rank whose own input is bad
/// still takes part in the exchange (flagging its failure) and returns its error, and the
/// others return [`DistError::PeerFailed`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// This rank's input or module is invalid (shape, lengths, configuration).
    #[error(transparent)]
    BatchNorm(#[from] BatchNormError),
    /// The collective operation failed.
    #[error(transparent)]
    Comm(#[from] CommError),
    /// Another rank's input was invalid in this call; it reports the cause.
    #[error("{}", match rank { Some(r) => format!("rank {r} failed in this call (its own error says why)"), None => "another rank failed in this call (its own error says why)".to_string() })]
    PeerFailed {
        /// The first rank that failed, when known (forward; backward only counts them).
        rank: Option<usize>,
    },
    /// Fewer than 2 values per channel over all ranks together: batch statistics (and the
    /// unbiased running variance) are undefined. PyTorch: "Expected more than 1 value per
    /// channel when training".
    #[error("expected more than 1 value per channel over all ranks when using batch statistics, got {count}")]
    TooFewValues {
        /// Values per channel over all ranks.
        count: u64,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = DistError> = std::result::Result<T, E>;
