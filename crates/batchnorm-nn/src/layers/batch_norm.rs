//! Batch normalization, wrapping the core kernels of the `batchnorm` crate.

use batchnorm::{BatchNormConfig, Grads, Layout, Saved, Shape};

use super::{check_batch, widen, Layer, Mode, Param, StateEntry};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// Batch normalization of samples shaped `(C)` (after a linear layer, PyTorch's `BatchNorm1d`),
/// `(C, L)` or `(C, H, W)` (after a convolution, `BatchNorm2d`), channels first.
///
/// Forward, per channel over the `m = N * prod(spatial)` values of the batch (paper, Alg. 1):
/// `xhat = (x - mu) / sqrt(sigma^2 + eps)`, `y = gamma xhat + beta`, with `mu`, `sigma^2` the batch
/// mean and biased variance in [`Mode::Train`] and [`Mode::BatchStats`], the running ones in
/// [`Mode::Eval`]. Only `Train` updates the running statistics.
///
/// Backward (paper, section 3), with `g = dL/dy`:
/// `dL/dgamma = sum g xhat`, `dL/dbeta = sum g`, and after batch statistics
/// `dL/dx = gamma / (m sqrt(sigma^2 + eps)) (m g - sum g - xhat sum g xhat)`; after running
/// statistics `dL/dx = gamma g / sqrt(sigma^2 + eps)`. The sums are computed by
/// [`batchnorm::BatchNorm::backward_into`]; training steps reuse every buffer and allocate
/// nothing.
#[derive(Debug, Clone)]
pub struct BatchNorm<T: Scalar> {
    /// The core module: `weight` (gamma), `bias` (beta), running statistics.
    pub inner: batchnorm::BatchNorm<T>,
    /// Gradient of the loss with respect to `inner.weight`.
    pub weight_grad: Vec<T>,
    /// Gradient of the loss with respect to `inner.bias`.
    pub bias_grad: Vec<T>,
    /// Per-sample dims, channels first: `[C]`, `[C, L]` or `[C, H, W]`.
    sample_dims: Vec<usize>,
    sample_len: usize,
    /// Statistics of the last forward and its batch size, for backward.
    saved: Saved<T>,
    saved_n: Option<usize>,
    /// The core's parameter gradients, reused between steps.
    grads: Grads<T>,
    /// Scratch for `dx` when the caller does not want it (the core always writes it).
    scratch: Vec<T>,
}

impl<T: Scalar> BatchNorm<T> {
    /// Batch normalization for samples of shape `sample_dims` (`[C, spatial...]`, at most three
    /// spatial dims) with the core configuration `cfg` (PyTorch's defaults via
    /// `BatchNormConfig::default()`).
    ///
    /// # Errors
    /// [`NnError::Empty`] for empty or zero dims, [`NnError::TooManyDims`] for more than 3
    /// spatial dims, [`NnError::TooLarge`] when their product overflows, the core's errors for
    /// a bad `cfg`.
    pub fn new(sample_dims: &[usize], cfg: BatchNormConfig) -> Result<Self> {
        let sample_len = sample_len(sample_dims, "batch-norm sample")?;
        let c = sample_dims[0];
        let inner = batchnorm::BatchNorm::new(c, cfg)?;
        Ok(BatchNorm {
            weight_grad: vec![T::ZERO; inner.weight.len()],
            bias_grad: vec![T::ZERO; inner.bias.len()],
            inner,
            sample_dims: sample_dims.to_vec(),
            sample_len,
            saved: Saved::default(),
            saved_n: None,
            grads: Grads::default(),
            scratch: Vec::new(),
        })
    }

    /// The per-sample dims `[C, spatial...]`.
    pub fn sample_dims(&self) -> &[usize] {
        &self.sample_dims
    }

    /// The logical shape `(n, C, spatial...)` of a batch of `n`.
    fn shape(&self, n: usize) -> Result<Shape> {
        batch_shape(&self.sample_dims, n)
    }

    /// The same layer in `f64`, parameters and running statistics widened exactly.
    pub(super) fn widened(&self) -> Option<BatchNorm<f64>> {
        let mut wide = BatchNorm::<f64>::new(&self.sample_dims, *self.inner.config()).ok()?;
        let (from, to) = (&self.inner, &mut wide.inner);
        to.weight = widen(&from.weight);
        to.bias = widen(&from.bias);
        to.running_mean = widen(&from.running_mean);
        to.running_var = widen(&from.running_var);
        to.num_batches_tracked = from.num_batches_tracked;
        Some(wide)
    }

    /// The forward pass followed by `tail`, fused into the normalising pass of the core
    /// ([`batchnorm::BatchNorm::forward_relu_into`], `forward_add_relu_into`). In
    /// [`Mode::BatchStats`] (no fused core call leaves the running statistics alone) the tail
    /// is applied after the plain forward: the same bits, since the fused map rounds `bn(x)`
    /// to `T` before adding for `f32` and computes in `f64` for `f64`.
    pub(super) fn forward_with(
        &mut self,
        x: &[T],
        tail: Tail<'_, T>,
        n: usize,
        mode: Mode,
        y: &mut [T],
    ) -> Result<()> {
        check_batch("batch_norm x", x.len(), n, self.sample_len)?;
        check_batch("batch_norm y", y.len(), n, self.sample_len)?;
        if let Tail::AddRelu(r) = tail {
            check_batch("batch_norm residual", r.len(), n, self.sample_len)?;
        }
        let shape = self.shape(n)?;
        self.saved_n = None;
        let (inner, saved) = (&mut self.inner, &mut self.saved);
        let core_mode = match mode {
            Mode::Train => batchnorm::Mode::Train,
            Mode::Eval => batchnorm::Mode::Eval,
            Mode::BatchStats => {
                *saved = inner.forward_without_update(x, &shape, batchnorm::Mode::Train, y)?;
                tail.apply(y);
                self.saved_n = Some(n);
                return Ok(());
            }
        };
        match tail {
            Tail::None => inner.forward_into(x, &shape, core_mode, y, saved)?,
            Tail::Relu => inner.forward_relu_into(x, &shape, core_mode, y, saved)?,
            Tail::AddRelu(r) => inner.forward_add_relu_into(x, r, &shape, core_mode, y, saved)?,
        }
        self.saved_n = Some(n);
        Ok(())
    }

    /// The backward pass of [`forward_with`](Self::forward_with): plain when `y` is `None`,
    /// through the ReLU (masked where `y <= 0`) when it is given, and for the residual form
    /// writing the residual's gradient into `dresidual`. `dx` may be omitted (scratch).
    pub(super) fn backward_with(
        &mut self,
        x: &[T],
        y: Option<&[T]>,
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
        dresidual: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("batch_norm x", x.len(), n, self.sample_len)?;
        check_batch("batch_norm dy", dy.len(), n, self.sample_len)?;
        let shape = self.shape(n)?;
        if self.saved_n != Some(n) {
            return Err(NnError::BackwardBeforeForward {
                layer: "batch_norm",
            });
        }
        let dx = match dx {
            Some(dx) => dx,
            None => {
                if self.scratch.len() < n * self.sample_len {
                    self.scratch.resize(n * self.sample_len, T::ZERO);
                }
                &mut self.scratch[..n * self.sample_len]
            }
        };
        let (inner, saved, grads) = (&mut self.inner, &self.saved, &mut self.grads);
        match (y, dresidual) {
            (None, _) => inner.backward_into(x, dy, &shape, saved, dx, grads)?,
            (Some(y), None) => inner.backward_relu_into(x, y, dy, &shape, saved, dx, grads)?,
            (Some(y), Some(dr)) => {
                inner.backward_add_relu_into(x, y, dy, &shape, saved, dx, dr, grads)?
            }
        }
        self.weight_grad.copy_from_slice(&grads.weight);
        self.bias_grad.copy_from_slice(&grads.bias);
        Ok(())
    }
}

/// What a batch normalization's forward applies to its output before writing it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Tail<'a, T> {
    /// Nothing: plain batch normalization.
    None,
    /// `relu(bn(x))`.
    Relu,
    /// `relu(bn(x) + r)`, the tail of a residual block.
    AddRelu(&'a [T]),
}

impl<T: Scalar> Tail<'_, T> {
    /// Applies the tail to `y = bn(x)` in place, element by element in `T`.
    pub(super) fn apply(self, y: &mut [T]) {
        match self {
            Tail::None => {}
            Tail::Relu => y.iter_mut().for_each(|v| *v = relu(*v)),
            Tail::AddRelu(r) => {
                for (v, &r) in y.iter_mut().zip(r) {
                    *v = relu(*v + r);
                }
            }
        }
    }
}

/// `max(v, 0)` with NaN kept and -0 made +0, as the core's fused ReLU.
pub(super) fn relu<T: Scalar>(v: T) -> T {
    if v <= T::ZERO {
        T::ZERO
    } else {
        v
    }
}

/// Checks the per-sample dims `[C, spatial...]` of a normalization layer (`what`): not empty,
/// no zero, at most three spatial dims, a product that fits; returns that product.
///
/// # Errors
/// [`NnError::Empty`], [`NnError::TooManyDims`], [`NnError::TooLarge`].
pub(super) fn sample_len(sample_dims: &[usize], what: &'static str) -> Result<usize> {
    if sample_dims.is_empty() || sample_dims.contains(&0) {
        return Err(NnError::Empty { what });
    }
    if sample_dims.len() > 4 {
        return Err(NnError::TooManyDims {
            what,
            got: sample_dims.len(),
            max: 4,
        });
    }
    sample_dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| NnError::TooLarge {
            what,
            sizes: sample_dims.to_vec(),
        })
}

/// Calls `f` on gamma (`weight`) and beta (`bias`) with their gradients, when the batch
/// normalization is affine (its vectors are not empty).
pub(super) fn visit_gamma_beta<T: Scalar>(
    (weight, weight_grad): (&mut [T], &mut [T]),
    (bias, bias_grad): (&mut [T], &mut [T]),
    f: &mut dyn FnMut(Param<'_, T>),
) {
    if !weight.is_empty() {
        f(Param {
            name: "weight",
            value: weight,
            grad: weight_grad,
        });
        f(Param {
            name: "bias",
            value: bias,
            grad: bias_grad,
        });
    }
}

/// The logical shape `(n, C, spatial...)` of a batch of `n` samples of `sample_dims`, channels
/// first.
pub(super) fn batch_shape(sample_dims: &[usize], n: usize) -> Result<Shape> {
    let mut dims = [0usize; 5];
    dims[0] = n;
    dims[1..=sample_dims.len()].copy_from_slice(sample_dims);
    Ok(Shape::new(
        &dims[..=sample_dims.len()],
        Layout::ChannelsFirst,
    )?)
}

impl<T: Scalar> Layer<T> for BatchNorm<T> {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn in_len(&self) -> usize {
        self.sample_len
    }

    fn out_len(&self) -> usize {
        self.sample_len
    }

    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<()> {
        self.forward_with(x, Tail::None, n, mode, y)
    }

    fn backward(
        &mut self,
        x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        self.backward_with(x, None, dy, n, dx, None)
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        crate::state_dict::visit_batch_norm_state(&mut self.inner, f);
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(self.widened()?))
    }

    fn as_batch_norm(&self) -> Option<&BatchNorm<T>> {
        Some(self)
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        let inner = &mut self.inner;
        let weight = (&mut inner.weight[..], &mut self.weight_grad[..]);
        visit_gamma_beta(weight, (&mut inner.bias[..], &mut self.bias_grad[..]), f);
    }
}
