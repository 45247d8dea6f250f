//! Ghost batch normalization (Hoffer et al., 2017): batch statistics per virtual batch, for
//! large batches whose statistics would otherwise be too smooth.

use batchnorm::stages::{
    update_factor, update_running_stats, GradSums, InputGrad, Kernels, Normalization,
};
use batchnorm::Moments;

use super::batch_norm::{batch_shape, BatchNorm};
use super::{check_batch, Layer, Mode, Param, StateEntry};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// Batch normalization whose training statistics come from virtual batches of
/// `virtual_batch` consecutive samples (tf-keras `BatchNormalization(virtual_batch_size=...)`).
///
/// In [`Mode::Train`] a batch of `n = k * virtual_batch` samples is normalised virtual batch by
/// virtual batch, each with its own mean and biased variance (and, backward, its own closed-form
/// gradient); the running statistics move once per call, by the mean over the virtual batches
/// of their means and of their UNBIASED variances (PyTorch's estimator; tf-keras averages the
/// biased ones). A batch of at most `virtual_batch` samples is plain batch normalization.
/// [`Mode::Eval`] uses the running statistics, so evaluation, state dicts and folding are those
/// of the wrapped [`BatchNorm`].
///
/// Built on the core's stages: per virtual batch, [`Kernels::moments`],
/// [`Normalization::from_moments`] and [`Kernels::normalize`]; backward,
/// [`Kernels::grad_sums`], [`InputGrad::batch`] and [`Kernels::input_grad`].
#[derive(Debug, Clone)]
pub struct GhostBatchNorm<T: Scalar> {
    /// The batch normalization whose parameters and running statistics this layer trains.
    pub bn: BatchNorm<T>,
    virtual_batch: usize,
    kernels: Kernels,
    /// Per virtual batch and channel, the maps of the last ghost forward.
    norms: Vec<Normalization>,
    /// Per virtual batch and channel, the moments of the last ghost forward.
    moments: Vec<Moments>,
    /// A virtual batch's means, its gradient sums and dx coefficients (backward).
    mean: Vec<f64>,
    sums: Vec<GradSums>,
    grads: Vec<InputGrad>,
    /// Per channel, `(d weight, d bias)` summed over the virtual batches.
    param_grads: Vec<(f64, f64)>,
    /// Batch size of the last forward, when it ran by virtual batches.
    ghost_n: Option<usize>,
    scratch: Vec<T>,
}

impl<T: Scalar> GhostBatchNorm<T> {
    /// Ghost batch normalization of `bn`'s samples with virtual batches of `virtual_batch`.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] when `virtual_batch` is below 1, or when `bn` renormalises
    /// (Batch Renormalization corrects whole batches).
    pub fn new(bn: BatchNorm<T>, virtual_batch: usize) -> Result<Self> {
        if virtual_batch < 1 {
            return Err(NnError::InvalidConfig {
                what: "virtual batch size",
                value: virtual_batch as f64,
                why: "must be at least 1",
            });
        }
        if bn.inner.config().renorm.is_some() {
            return Err(NnError::InvalidConfig {
                what: "ghost batch norm with renorm",
                value: virtual_batch as f64,
                why: "Batch Renormalization is not combined with virtual batches",
            });
        }
        Ok(Self {
            bn,
            virtual_batch,
            kernels: Kernels::default(),
            norms: Vec::new(),
            moments: Vec::new(),
            mean: Vec::new(),
            sums: Vec::new(),
            grads: Vec::new(),
            param_grads: Vec::new(),
            ghost_n: None,
            scratch: Vec::new(),
        })
    }

    /// Samples per virtual batch.
    pub fn virtual_batch(&self) -> usize {
        self.virtual_batch
    }

    fn len(&self) -> usize {
        self.bn.in_len()
    }

    /// Normalises each virtual batch of `x` by its own statistics, leaving their moments in
    /// `self.moments` (virtual batch major).
    fn ghost_forward(&mut self, x: &[T], n: usize, y: &mut [T]) -> Result<()> {
        if !n.is_multiple_of(self.virtual_batch) {
            return Err(NnError::InvalidConfig {
                what: "batch size",
                value: n as f64,
                why: "must be a multiple of the virtual batch size",
            });
        }
        let shape = batch_shape(self.bn.sample_dims(), self.virtual_batch)?;
        if shape.per_channel() < 2 {
            return Err(batchnorm::BatchNormError::TooFewValues {
                dims: shape.dims().to_vec(),
            }
            .into());
        }
        let (c, chunk) = (shape.channels(), self.virtual_batch * self.len());
        let inner = &self.bn.inner;
        let eps = inner.config().eps;
        let gamma_beta = |ch: usize| match inner.config().affine {
            true => (inner.weight[ch].to_f64(), inner.bias[ch].to_f64()),
            false => (1.0, 0.0),
        };
        self.norms.clear();
        self.moments.clear();
        self.moments
            .resize(n / self.virtual_batch * c, Moments::EMPTY);
        let parts = x.chunks_exact(chunk).zip(y.chunks_exact_mut(chunk));
        for ((xs, ys), moments) in parts.zip(self.moments.chunks_exact_mut(c)) {
            self.kernels.moments(xs, &shape, moments)?;
            let start = self.norms.len();
            self.norms.extend(moments.iter().enumerate().map(|(ch, m)| {
                let (w, b) = gamma_beta(ch);
                Normalization::from_moments(m, eps, w, b)
            }));
            self.kernels
                .normalize(xs, &shape, &self.norms[start..], ys)?;
        }
        Ok(())
    }

    /// The running statistics' update from the virtual batches' moments of the last forward:
    /// the means of their means and of their M2 (so of their unbiased variances, all virtual
    /// batches having the same count). The averages replace the first virtual batch's moments
    /// (backward needs only the maps).
    fn update_running(&mut self) -> Result<()> {
        let inner = &mut self.bn.inner;
        if !inner.config().track_running_stats {
            return Ok(());
        }
        let (c, moments) = (inner.channels(), &mut self.moments);
        let k = (moments.len() / c) as f64;
        for ch in 0..c {
            let per_ghost = moments.iter().skip(ch).step_by(c);
            let (mean, m2) = per_ghost.fold((0.0, 0.0), |(a, b), m| (a + m.mean, b + m.m2));
            moments[ch] = Moments {
                count: moments[ch].count,
                mean: mean / k,
                m2: m2 / k,
            };
        }
        let averaged = &moments[..c];
        let tracked = inner.num_batches_tracked + 1;
        let factor = update_factor(inner.config().momentum, tracked);
        update_running_stats(
            &mut inner.running_mean,
            &mut inner.running_var,
            averaged,
            factor,
        )?;
        inner.num_batches_tracked = tracked;
        Ok(())
    }
}

impl<T: Scalar> Layer<T> for GhostBatchNorm<T> {
    fn name(&self) -> &'static str {
        "ghost_batch_norm"
    }

    fn in_len(&self) -> usize {
        self.len()
    }

    fn out_len(&self) -> usize {
        self.len()
    }

    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<()> {
        self.ghost_n = None;
        if mode == Mode::Eval || n <= self.virtual_batch {
            return self.bn.forward(x, n, mode, y);
        }
        check_batch("ghost_batch_norm x", x.len(), n, self.len())?;
        check_batch("ghost_batch_norm y", y.len(), n, self.len())?;
        self.ghost_forward(x, n, y)?;
        if mode == Mode::Train {
            self.update_running()?;
        }
        self.ghost_n = Some(n);
        Ok(())
    }

    fn backward(
        &mut self,
        x: &[T],
        y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        if self.ghost_n != Some(n) {
            return self.bn.backward(x, y, dy, n, dx);
        }
        let len = self.len();
        check_batch("ghost_batch_norm x", x.len(), n, len)?;
        check_batch("ghost_batch_norm dy", dy.len(), n, len)?;
        let dx = match dx {
            Some(dx) => {
                check_batch("ghost_batch_norm dx", dx.len(), n, len)?;
                dx
            }
            None => {
                self.scratch.resize(n * len, T::ZERO);
                &mut self.scratch[..]
            }
        };
        let shape = batch_shape(self.bn.sample_dims(), self.virtual_batch)?;
        let (c, chunk) = (shape.channels(), self.virtual_batch * len);
        let count = shape.per_channel() as u64;
        self.param_grads.clear();
        self.param_grads.resize(c, (0.0, 0.0));
        self.mean.resize(c, 0.0);
        self.sums.resize(c, GradSums::default());
        let chunks = x.chunks_exact(chunk).zip(dy.chunks_exact(chunk));
        let outputs = dx.chunks_exact_mut(chunk).zip(self.norms.chunks_exact(c));
        for ((xs, dys), (dxs, norms)) in chunks.zip(outputs) {
            for (m, norm) in self.mean.iter_mut().zip(norms) {
                *m = norm.mean;
            }
            self.kernels
                .grad_sums(xs, dys, &shape, &self.mean, &mut self.sums)?;
            self.grads.clear();
            let grads = norms.iter().zip(&self.sums);
            self.grads
                .extend(grads.map(|(norm, &s)| InputGrad::batch(norm, s, count)));
            self.kernels.input_grad(xs, dys, &shape, &self.grads, dxs)?;
            for ((dw, db), (s, norm)) in
                self.param_grads.iter_mut().zip(self.sums.iter().zip(norms))
            {
                *dw += s.weight_grad(norm.invstd);
                *db += s.bias_grad();
            }
        }
        // Empty when not affine: the zips write nothing.
        let grads = self.bn.weight_grad.iter_mut().zip(&mut self.bn.bias_grad);
        for ((gw, gb), &(dw, db)) in grads.zip(&self.param_grads) {
            (*gw, *gb) = (T::from_f64(dw), T::from_f64(db));
        }
        Ok(())
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        self.bn.visit_params(f);
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        self.bn.visit_state(f);
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        let bn = self.bn.widened()?;
        Some(Box::new(GhostBatchNorm::new(bn, self.virtual_batch).ok()?))
    }

    /// Evaluation is the wrapped batch normalization's: it folds like one.
    fn as_batch_norm(&self) -> Option<&BatchNorm<T>> {
        Some(&self.bn)
    }
}
