//! Layers with explicit forward and backward passes.
//!
//! Every layer maps a batch of `n` samples, each a flat run of [`Layer::in_len`] values in memory
//! order (for images: C x H x W, channels first), to `n` samples of [`Layer::out_len`] values. The
//! caller owns all activation buffers (see [`crate::Sequential`]), so a layer only keeps what its
//! backward pass needs and its parameters. A layer describes itself: its state-dict tensors
//! ([`Layer::visit_state`]), how to copy it ([`Layer::boxed_clone`]) and widen it to `f64`
//! ([`Layer::to_f64`]), and, for an affine layer, how a following batch normalization folds into
//! it ([`Layer::fold_batch_norm`]); so a new kind of layer is one new file implementing
//! [`Layer`], whether here or in another crate, and state dicts and folding take it as it is.
//! Parameters are public, in PyTorch's memory order (linear weight `[out, in]`, conv weight
//! `[out, in, kh, kw]`).

mod activation;
mod basic_block;
mod batch_norm;
mod batch_norm_relu;
mod conv2d;
mod flatten;
mod ghost_batch_norm;
mod global_avg_pool;
mod group_norm;
mod linear;
mod max_pool;
mod sync_batch_norm;

pub use activation::{Relu, Sigmoid};
pub use basic_block::{BasicBlock, BasicBlockConfig, BlockNorm};
pub use batch_norm::BatchNorm;
pub use batch_norm_relu::BatchNormRelu;
pub use conv2d::{Conv2d, Conv2dConfig};
pub use flatten::Flatten;
pub use ghost_batch_norm::GhostBatchNorm;
pub use global_avg_pool::GlobalAvgPool;
pub use group_norm::GroupNorm;
pub use linear::Linear;
pub use max_pool::{MaxPool2d, MaxPool2dConfig};
pub use sync_batch_norm::SyncBatchNorm;

use crate::error::{NnError, Result};
use crate::fold::FoldError;
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

/// The values of one tensor of a layer's state dict.
#[derive(Debug)]
pub enum StateValue<'a, T> {
    /// Floats in the layer's element type (weights, biases, running statistics).
    Float(&'a mut [T]),
    /// A counter, saved as PyTorch's 0-dim int64 (`num_batches_tracked`).
    Count(&'a mut u64),
}

/// One tensor of a layer's state dict: PyTorch's name within the layer, its shape, its values.
#[derive(Debug)]
pub struct StateEntry<'a, T> {
    /// `weight`, `bias`, `running_mean`, ...
    pub name: &'static str,
    /// PyTorch's shape (`[out, in]` for a linear weight, `[]` for a counter).
    pub shape: Vec<usize>,
    /// The values, `shape.iter().product()` of them.
    pub value: StateValue<'a, T>,
}

/// `v` widened to `f64`, exactly.
pub(crate) fn widen<T: Scalar>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// The output height and width of a sliding window (convolution, pooling):
/// `(input + 2 padding - kernel) / stride + 1` along each, strides not zero. `names` are what
/// the errors call the padded input and the kernel size: [`NnError::TooLarge`] when the padded
/// input overflows, [`NnError::InvalidConfig`] for a kernel larger than it.
pub(crate) fn window_output_hw(
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    (padded_name, kernel_name): (&'static str, &'static str),
) -> Result<[usize; 2]> {
    let mut out = [0; 2];
    for (d, out_d) in out.iter_mut().enumerate() {
        let padded = padding[d]
            .checked_mul(2)
            .and_then(|p| p.checked_add(input[d]))
            .ok_or(NnError::TooLarge {
                what: padded_name,
                sizes: vec![input[d], padding[d]],
            })?;
        if kernel[d] > padded {
            return Err(NnError::InvalidConfig {
                what: kernel_name,
                value: kernel[d] as f64,
                why: "larger than the padded input",
            });
        }
        *out_d = (padded - kernel[d]) / stride[d] + 1;
    }
    Ok(out)
}

/// One differentiable stage of a network.
///
/// Layers are `'static` ([`std::any::Any`]), so a `dyn Layer` can be inspected as its concrete
/// type with [`downcast_ref`](trait.Layer.html#method.downcast_ref) (to read a concrete layer's
/// settings); state dicts and folding need no such inspection, only the methods below.
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

    /// Calls `f` on each tensor of the layer's state dict, with PyTorch's names, shapes and
    /// order (`weight`, `bias`, `running_mean`, ...). None for a layer without state (the
    /// default); a layer with parameters must list them, or it cannot be saved
    /// ([`crate::state_dict`] refuses it rather than drop them).
    fn visit_state(&mut self, _f: &mut dyn FnMut(StateEntry<'_, T>)) {}

    /// A copy of the layer, or `None` (the default) for one that cannot be copied, which
    /// [`crate::fold::fold_batch_norm`] then refuses.
    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        None
    }

    /// The same layer in `f64`, its parameters and state widened exactly (an `f64` oracle of an
    /// `f32` network); `None` (the default) for one that cannot be.
    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        None
    }

    /// The layer as a batch normalization, if it is one: what folding folds away.
    fn as_batch_norm(&self) -> Option<&BatchNorm<T>> {
        None
    }

    /// This layer followed by the evaluation-mode batch normalization `bn`, as one layer, for a
    /// layer that is an affine map with one row per output channel (Linear, Conv2d); `None`
    /// (the default) for any other, which a batch normalization then cannot be folded into.
    fn fold_batch_norm(
        &self,
        _bn: &BatchNorm<T>,
    ) -> Option<std::result::Result<Box<dyn Layer<T>>, FoldError>> {
        None
    }

    /// For a layer made of layers (a residual [`BasicBlock`]), the same layer with the batch
    /// normalizations inside it folded for evaluation; `None` (the default) for any other,
    /// which [`crate::fold::fold_batch_norm`] then copies as it is.
    fn fold_own_batch_norms(&self) -> Option<std::result::Result<Box<dyn Layer<T>>, FoldError>> {
        None
    }
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
