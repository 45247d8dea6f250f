//! Layers with explicit forward and backward passes.
//!
//! Every layer maps a batch of `n` samples, each a flat run of [`Layer::in_len`] values in memory
//! order (for images: C x H x W, channels first), to `n` samples of [`Layer::out_len`] values. The
//! caller owns all activation buffers (see [`crate::Sequential`]), so a layer only keeps what its
//! backward pass needs and its parameters; a new kind of layer is one new file here implementing
//! [`Layer`] (as [`Conv2d`], [`MaxPool2d`] and [`Flatten`] are). Parameters are public, in
//! PyTorch's memory order (linear weight `[out, in]`, conv weight `[out, in, kh, kw]`).

mod activation;
mod batch_norm;
mod conv2d;
mod flatten;
mod linear;
mod max_pool;

pub use activation::{Relu, Sigmoid};
pub use batch_norm::BatchNorm;
pub use conv2d::{Conv2d, Conv2dConfig};
pub use flatten::Flatten;
pub use linear::Linear;
pub use max_pool::{MaxPool2d, MaxPool2dConfig};

use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// Checks that a buffer holds `n` samples of `len` values: `got == n * len`, where a product that
/// overflows is a mismatch too (a huge `n` is an `Err`, never an overflow panic).
pub(crate) fn check_batch(buffer: &'static str, got: usize, n: usize, len: usize) -> Result<()> {
    match n.checked_mul(len) {
        Some(expected) if expected == got => Ok(()),
        expected => Err(NnError::LengthMismatch {
            buffer,
            expected: expected.unwrap_or(usize::MAX),
            got,
        }),
    }
}

/// How a forward pass treats layers whose behaviour differs between training and evaluation
/// (batch normalization). Always an explicit argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training: batch statistics, running statistics updated.
    Train,
    /// Evaluation: running statistics.
    Eval,
    /// Batch statistics as in training, but every running statistic left untouched: for looking
    /// at what the network computes during training without changing it.
    BatchStats,
}

/// A parameter tensor and its gradient, as handed to optimisers and gradient checks.
#[derive(Debug)]
pub struct Param<'a, T> {
    /// Name within its layer (`"weight"`, `"bias"`).
    pub name: &'static str,
    /// The values.
    pub value: &'a mut [T],
    /// The gradient of the loss with respect to `value`, written by the last `backward`.
    pub grad: &'a mut [T],
}

/// One differentiable stage of a network.
///
/// Layers are `'static` ([`std::any::Any`]), so a `dyn Layer` can be inspected as its concrete
/// type with [`downcast_ref`](trait.Layer.html#method.downcast_ref) (to fold or load weights).
pub trait Layer<T: Scalar>: std::fmt::Debug + Send + std::any::Any {
    /// Short name for messages (`"linear"`, `"batch_norm"`, `"sigmoid"`).
    fn name(&self) -> &'static str;

    /// Values per input sample.
    fn in_len(&self) -> usize;

    /// Values per output sample.
    fn out_len(&self) -> usize;

    /// Computes `y` (`n * out_len` values) from `x` (`n * in_len` values).
    ///
    /// # Errors
    /// Length mismatches, and whatever the layer's kernel rejects (e.g. batch normalization of a
    /// single sample in training).
    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<()>;

    /// Given the `x` and `y` of the last `forward` and `dy = dL/dy`, writes the parameter
    /// gradients (overwriting them) and, when `dx` is given, `dL/dx`.
    ///
    /// # Errors
    /// Length mismatches, or no preceding `forward` for a layer that keeps state.
    fn backward(
        &mut self,
        x: &[T],
        y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()>;

    /// Calls `f` on each parameter with its gradient, always in the same order.
    fn visit_params(&mut self, _f: &mut dyn FnMut(Param<'_, T>)) {}
}

impl<T: Scalar> dyn Layer<T> {
    /// The layer as its concrete type `L`, if it is one.
    ///
    /// ```
    /// use batchnorm_nn::layers::{Layer, Linear, Relu};
    /// let l: Box<dyn Layer<f32>> = Box::new(Relu::new(3)?);
    /// assert!(l.downcast_ref::<Relu>().is_some());
    /// assert!(l.downcast_ref::<Linear<f32>>().is_none());
    /// # Ok::<(), batchnorm_nn::NnError>(())
    /// ```
    pub fn downcast_ref<L: Layer<T>>(&self) -> Option<&L> {
        (self as &dyn std::any::Any).downcast_ref()
    }

    /// The layer as its concrete type `L`, mutably, if it is one.
    pub fn downcast_mut<L: Layer<T>>(&mut self) -> Option<&mut L> {
        (self as &mut dyn std::any::Any).downcast_mut()
    }
}
