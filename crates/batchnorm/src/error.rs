//! The error type of the crate.

/// Everything that can go wrong when configuring or calling a [`BatchNorm`](crate::BatchNorm).
///
/// Each variant carries the numbers needed to find the mistake. Bad input is always reported
/// through this type, never by a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchNormError {
    /// The logical shape must be (N, C) or (N, C, spatial...) with at most three spatial dims.
    #[error("input must have 2 to 5 dimensions (N, C, spatial...), got {got} ({dims:?})")]
    Rank {
        /// The number of dimensions given.
        got: usize,
        /// The dimensions given.
        dims: Vec<usize>,
    },
    /// C = 0, in a shape or in a module.
    #[error("the number of channels must be positive, got 0")]
    ZeroChannels,
    /// A spatial dimension of size 0 (N = 0, an empty batch, is valid).
    #[error("spatial dimension {axis} of {dims:?} is 0")]
    ZeroDim {
        /// The axis (2.. = spatial) that is empty.
        axis: usize,
        /// The dimensions given.
        dims: Vec<usize>,
    },
    /// The number of elements does not fit in `usize`.
    #[error("the shape {dims:?} has more elements than fit in memory")]
    TooLarge {
        /// The dimensions given.
        dims: Vec<usize>,
    },
    /// The shape's C differs from the module's.
    #[error("the module has {expected} channels but the input has {got}")]
    ChannelMismatch {
        /// The module's channel count.
        expected: usize,
        /// The channel count of the shape.
        got: usize,
    },
    /// A buffer (`x`, `y`, `dy`, `dx`, `weight`, `bias`, `running_mean`, `running_var`) has the
    /// wrong number of elements.
    #[error("`{buffer}` has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        buffer: &'static str,
        /// Its required length.
        expected: usize,
        /// Its actual length.
        got: usize,
    },
    /// Batch statistics of a single value per channel are undefined (variance 0/0 for the
    /// running estimate). PyTorch: "Expected more than 1 value per channel when training".
    #[error(
        "expected more than 1 value per channel when using batch statistics, got input of shape {dims:?}"
    )]
    TooFewValues {
        /// The dimensions given.
        dims: Vec<usize>,
    },
    /// `eps` must be finite and strictly positive.
    #[error("eps must be finite and > 0, got {eps}")]
    InvalidEps {
        /// The value given.
        eps: f64,
    },
    /// `momentum` must be in [0, 1].
    #[error("momentum must be in [0, 1], got {momentum}")]
    InvalidMomentum {
        /// The value given.
        momentum: f64,
    },
    /// A Batch Renormalization limit out of range.
    #[error("renorm {limit} must be finite and at least {}, got {value}", if *limit == "rmax" { 1 } else { 0 })]
    InvalidRenorm {
        /// `rmax` or `dmax`.
        limit: &'static str,
        /// The value given.
        value: f64,
    },
    /// Batch Renormalization corrects towards the running statistics, so it needs them.
    #[error("renorm needs track_running_stats")]
    RenormWithoutRunningStats,
    /// A running variance below zero (set by hand) cannot be normalised by.
    #[error("running_var[{channel}] = {value} is negative")]
    NegativeRunningVar {
        /// The channel.
        channel: usize,
        /// Its running variance.
        value: f64,
    },
    /// The kernel path asked for cannot run on this CPU.
    #[error("this CPU cannot run the {isa} kernels")]
    UnsupportedIsa {
        /// The path asked for.
        isa: crate::Isa,
    },
    /// A kernel path named by a string that names none.
    #[error("unknown kernel path {name:?}: use baseline, avx2 or avx512")]
    UnknownIsa {
        /// The name given.
        name: String,
    },
    /// Moments given to update running statistics hold fewer than 2 values in a channel: the
    /// unbiased variance `M2 / (count - 1)` is undefined.
    #[error("channel {channel} has {count} values: updating running statistics needs at least 2")]
    TooFewMoments {
        /// The first such channel.
        channel: usize,
        /// Its count.
        count: u64,
    },
    /// `backward` was given statistics saved for another shape (or none at all).
    #[error("the saved statistics belong to an input of shape {saved:?}, not {got:?}")]
    SavedMismatch {
        /// The shape the statistics were computed for.
        saved: Vec<usize>,
        /// The shape passed to `backward`.
        got: Vec<usize>,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = BatchNormError> = std::result::Result<T, E>;
