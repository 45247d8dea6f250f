//! The error type of the training stack.

use std::path::PathBuf;

/// Everything that can go wrong when building, feeding or training a network.
///
/// Each variant carries the numbers needed to find the mistake; bad input is an `Err`, never a
/// panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// A buffer has the wrong number of elements.
    #[error("`{buffer}` has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        buffer: &'static str,
        /// Its required length.
        expected: usize,
        /// Its actual length.
        got: usize,
    },
    /// Two consecutive layers do not fit: the first's output is not the second's input.
    #[error(
        "layer {index} ({name}) takes {expected} values per sample, the previous layer gives {got}"
    )]
    LayerMismatch {
        /// Index of the layer in the model.
        index: usize,
        /// Its name.
        name: &'static str,
        /// What it takes per sample.
        expected: usize,
        /// What the previous layer (or the model's input) gives per sample.
        got: usize,
    },
    /// A batch larger than the workspaces were allocated for, or empty.
    #[error("batch of {got} samples, the model's workspaces hold 1..={capacity}")]
    BatchSize {
        /// The largest batch the workspaces hold.
        capacity: usize,
        /// The batch size given.
        got: usize,
    },
    /// A class label outside `0..classes`.
    #[error("label {label} at sample {index} is outside 0..{classes}")]
    LabelOutOfRange {
        /// The sample.
        index: usize,
        /// Its label.
        label: usize,
        /// The number of classes.
        classes: usize,
    },
    /// `backward` was called without a preceding `forward` for the same batch.
    #[error("{layer}: backward called before forward (or for another batch size)")]
    BackwardBeforeForward {
        /// The layer's name.
        layer: &'static str,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid {what}: {value} ({why})")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// The value given.
        value: f64,
        /// The valid range.
        why: &'static str,
    },
    /// A model with no layers, or a dimension of zero.
    #[error("empty {what}")]
    Empty {
        /// What is empty.
        what: &'static str,
    },
    /// Sizes whose product (an element count, or its bytes) does not fit in memory.
    #[error("{what}: sizes {sizes:?} describe more elements than fit in memory")]
    TooLarge {
        /// What was being sized.
        what: &'static str,
        /// The sizes multiplied.
        sizes: Vec<usize>,
    },
    /// More dimensions than supported.
    #[error("{what}: {got} dims, at most {max} supported")]
    TooManyDims {
        /// What has the dims.
        what: &'static str,
        /// The number of dims given.
        got: usize,
        /// The most supported.
        max: usize,
    },
    /// An optimiser used on a model with another number of parameter tensors than the one it
    /// was built for.
    #[error(
        "the optimiser was built for a model with {expected} parameter tensors, this one has {got}"
    )]
    ParamCount {
        /// Tensors of the model the optimiser was built for.
        expected: usize,
        /// Tensors of the model given.
        got: usize,
    },
    /// An optimiser used on a model whose parameter tensor has another length than in the model
    /// it was built for.
    #[error("parameter tensor {index} has {got} values, the optimiser was built for {expected}")]
    ParamLength {
        /// The tensor, in visiting order.
        index: usize,
        /// Its length in the model the optimiser was built for.
        expected: usize,
        /// Its length now.
        got: usize,
    },
    /// An index past the end.
    #[error("{what} {index} is past the end (there are {len})")]
    IndexOutOfRange {
        /// What is indexed.
        what: &'static str,
        /// The index given.
        index: usize,
        /// The number of items.
        len: usize,
    },
    /// The core batch-normalization kernels rejected a call.
    #[error(transparent)]
    BatchNorm(#[from] batchnorm::BatchNormError),
    /// A synchronised batch normalization or a data-parallel exchange failed (on this rank or
    /// another).
    #[error(transparent)]
    Dist(#[from] batchnorm_dist::DistError),
    /// An IDX file is malformed.
    #[error("{path}: {source}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::data::IdxError,
    },
    /// A safetensors file is malformed.
    #[error("{path}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: crate::safetensors::SafetensorsError,
    },
    /// A state dict does not fit the model it is loaded into.
    #[error(transparent)]
    StateDict(#[from] crate::state_dict::StateDictError),
    /// A data file is in neither of its accepted forms (`NAME.gz`, `NAME`).
    #[error("{}: neither {name}.gz nor {name} is there", dir.display())]
    MissingData {
        /// The folder searched.
        dir: PathBuf,
        /// The file's uncompressed name.
        name: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
}

impl From<batchnorm_dist::CommError> for NnError {
    fn from(e: batchnorm_dist::CommError) -> Self {
        NnError::Dist(e.into())
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;

/// Checks that `buf` has exactly `expected` elements.
pub(crate) fn check_len(buffer: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(NnError::LengthMismatch {
            buffer,
            expected,
            got,
        })
    }
}
