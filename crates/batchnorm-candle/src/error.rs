//! What can go wrong, with the numbers; every variant reaches candle users as a
//! [`candle_core::Error`] carrying this message.

use batchnorm::BatchNormError;
use candle_core::DType;

/// Everything the adapter rejects. Functions of this crate return [`candle_core::Result`]; these
/// errors travel inside it (`candle_core::Error::Wrapped`) and print the message below.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Rejected by the kernels: a shape of the wrong rank, a channel count that differs from the
    /// module's, one value per channel with batch statistics, an invalid `eps` or `momentum`, ...
    #[error("batch norm: {0}")]
    Kernel(#[from] BatchNormError),
    /// The kernels run on the CPU only.
    #[error(
        "batch norm: the input is on {device}, but batchnorm-candle runs on the CPU only \
         (on CUDA or Metal use candle_nn::BatchNorm, or move the tensor with `to_device`)"
    )]
    NotCpu {
        /// Where the input lives.
        device: String,
    },
    /// Tensors must be `f32`, `f64`, `bf16` or `f16`.
    #[error("batch norm: {what} has dtype {dtype:?}; supported: f32, f64, bf16, f16")]
    UnsupportedDType {
        /// Which tensor (`x`, `weight`, `bias`, `running_mean`, ...).
        what: &'static str,
        /// Its dtype.
        dtype: DType,
    },
    /// A per-channel tensor (`weight`, `bias`, `running_mean`, `running_var`) must have shape (C,).
    #[error("batch norm: {what} has shape {got:?}, expected [{channels}]")]
    ParameterShape {
        /// Which tensor.
        what: &'static str,
        /// The module's channel count.
        channels: usize,
        /// The tensor's dims.
        got: Vec<usize>,
    },
    /// The backward pass was reached without the forward pass having run (an internal error).
    #[error("batch norm: backward called before forward")]
    NoForward,
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// A kernel error as a candle error.
pub(crate) fn kernel(e: BatchNormError) -> candle_core::Error {
    Error::Kernel(e).into()
}
