//! Group normalization (Wu & He, 2018): statistics per sample over groups of channels, so
//! independent of the batch size.

use batchnorm::stages::Kernels;
use batchnorm::{Layout, Moments, Shape};

use super::batch_norm::visit_gamma_beta;
use super::{check_batch, widen, Layer, Mode, Param, StateEntry, StateValue};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// Group normalization of samples shaped `(C)`, `(C, L)` or `(C, H, W)`, channels first
/// (PyTorch's `nn.GroupNorm(groups, C)`).
///
/// The C channels are cut into `groups` groups of `C / groups` consecutive channels. For each
/// sample and group, over its `m = C / groups * prod(spatial)` values, with their mean `mu` and
/// BIASED variance `sigma^2`, and per-channel `gamma` (`weight`, init 1) and `beta` (`bias`,
/// init 0):
///
/// ```text
/// xhat = (x - mu) / sqrt(sigma^2 + eps)          y = gamma[c] * xhat + beta[c]
/// dx   = 1 / (m sqrt(sigma^2 + eps)) * (m g - sum g - xhat * sum(g xhat)),   g = gamma[c] * dy
/// ```
///
/// The same in training and evaluation (no running statistics). The statistics are the core's
/// [`Moments`] (accumulated in `f64`, exact to the last bits as batch normalization's), each
/// sample's groups viewed as the channels of a `(1, N * groups, m)` tensor; the maps are
/// evaluated in `f64` and rounded once. With `groups = 1` it is LayerNorm over (C, spatial);
/// with `groups = C`, InstanceNorm.
///
/// ```
/// use batchnorm_nn::layers::{GroupNorm, Layer, Mode};
/// let mut gn = GroupNorm::<f64>::new(&[4], 2, 1e-5)?;
/// let x = [1.0, 3.0, 10.0, 30.0]; // one sample: groups (1, 3) and (10, 30)
/// let mut y = [0.0; 4];
/// gn.forward(&x, 1, Mode::Train, &mut y)?;
/// assert!((y[0] + 1.0).abs() < 1e-4 && (y[3] - 1.0).abs() < 1e-4);
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GroupNorm<T: Scalar> {
    /// gamma, one per channel.
    pub weight: Vec<T>,
    /// beta, one per channel.
    pub bias: Vec<T>,
    /// Gradient of the loss with respect to `weight`.
    pub weight_grad: Vec<T>,
    /// Gradient of the loss with respect to `bias`.
    pub bias_grad: Vec<T>,
    sample_dims: Vec<usize>,
    groups: usize,
    eps: f64,
    /// Values per channel in a sample (prod(spatial)).
    spatial: usize,
    /// Per (sample, group) of the last forward: its moments.
    moments: Vec<Moments>,
    /// Per channel, `(sum dy xhat, sum dy)` of a backward, reused between calls.
    param_sums: Vec<(f64, f64)>,
    saved_n: Option<usize>,
}

impl<T: Scalar> GroupNorm<T> {
    /// Group normalization with `groups` groups for samples of `sample_dims` (`[C,
    /// spatial...]`, at most three spatial dims), `eps` added to the variance.
    ///
    /// # Errors
    /// [`NnError::Empty`] for empty or zero dims, [`NnError::TooManyDims`],
    /// [`NnError::TooLarge`], [`NnError::InvalidConfig`] when `groups` does not divide C or
    /// `eps` is not finite and positive.
    pub fn new(sample_dims: &[usize], groups: usize, eps: f64) -> Result<Self> {
        let sample_len = super::batch_norm::sample_len(sample_dims, "group-norm sample")?;
        let c = sample_dims[0];
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(NnError::InvalidConfig {
                what: "group-norm groups",
                value: groups as f64,
                why: "must divide the number of channels",
            });
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(NnError::InvalidConfig {
                what: "group-norm eps",
                value: eps,
                why: "must be finite and > 0",
            });
        }
        Ok(Self {
            weight: vec![T::ONE; c],
            bias: vec![T::ZERO; c],
            weight_grad: vec![T::ZERO; c],
            bias_grad: vec![T::ZERO; c],
            sample_dims: sample_dims.to_vec(),
            groups,
            eps,
            spatial: sample_len / c,
            moments: Vec::new(),
            param_sums: Vec::new(),
            saved_n: None,
        })
    }

    /// The number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Values of one (sample, group): `C / groups * prod(spatial)`.
    fn group_len(&self) -> usize {
        self.weight.len() / self.groups * self.spatial
    }

    /// The mean and `1 / sqrt(var + eps)` of (sample, group) `run` of the last forward.
    fn stats(&self, run: usize) -> (f64, f64) {
        let m = &self.moments[run];
        (m.mean, 1.0 / (m.variance() + self.eps).sqrt())
    }

    /// The channels of (sample, group) `run`, each with its `spatial` positions of `v`.
    fn channels_of<'a, V>(&self, run: usize, v: &'a [V]) -> impl Iterator<Item = (usize, &'a [V])> {
        let c0 = run % self.groups * (self.weight.len() / self.groups);
        (c0..).zip(v.chunks_exact(self.spatial))
    }
}

impl<T: Scalar> Layer<T> for GroupNorm<T> {
    fn name(&self) -> &'static str {
        "group_norm"
    }

    fn in_len(&self) -> usize {
        self.weight.len() * self.spatial
    }

    fn out_len(&self) -> usize {
        self.in_len()
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("group_norm x", x.len(), n, self.in_len())?;
        check_batch("group_norm y", y.len(), n, self.in_len())?;
        self.saved_n = None;
        if n == 0 {
            return Ok(());
        }
        let (len, runs) = (self.group_len(), n * self.groups);
        // Each (sample, group) is a contiguous run: a channel of a (1, runs, len) tensor.
        let shape = Shape::new(&[1, runs, len], Layout::ChannelsFirst)?;
        self.moments.resize(runs, Moments::EMPTY);
        Kernels::default().moments(x, &shape, &mut self.moments)?;
        for (run, (xs, ys)) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)).enumerate() {
            let (mean, invstd) = self.stats(run);
            for ((c, xc), yc) in self
                .channels_of(run, xs)
                .zip(ys.chunks_exact_mut(self.spatial))
            {
                let (w, b) = (self.weight[c].to_f64(), self.bias[c].to_f64());
                for (&xv, yv) in xc.iter().zip(yc) {
                    *yv = T::from_f64((xv.to_f64() - mean) * invstd * w + b);
                }
            }
        }
        self.saved_n = Some(n);
        Ok(())
    }

    fn backward(
        &mut self,
        x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        mut dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("group_norm x", x.len(), n, self.in_len())?;
        check_batch("group_norm dy", dy.len(), n, self.in_len())?;
        if let Some(dx) = dx.as_deref() {
            check_batch("group_norm dx", dx.len(), n, self.in_len())?;
        }
        if self.saved_n != Some(n) {
            return Err(NnError::BackwardBeforeForward {
                layer: "group_norm",
            });
        }
        let len = self.group_len();
        let m = len as f64;
        let mut sums = std::mem::take(&mut self.param_sums);
        sums.clear();
        sums.resize(self.weight.len(), (0.0, 0.0));
        for (run, (xs, dys)) in x.chunks_exact(len).zip(dy.chunks_exact(len)).enumerate() {
            let (mean, invstd) = self.stats(run);
            // sum g and sum g xhat over the group, g = gamma * dy.
            let (mut sum_g, mut sum_gx) = (0.0, 0.0);
            let dys_by_channel = dys.chunks_exact(self.spatial);
            for ((c, xc), dyc) in self.channels_of(run, xs).zip(dys_by_channel) {
                let w = self.weight[c].to_f64();
                for (&xv, &g) in xc.iter().zip(dyc) {
                    let (h, g) = ((xv.to_f64() - mean) * invstd, g.to_f64());
                    sums[c].0 += g * h;
                    sums[c].1 += g;
                    sum_g += g * w;
                    sum_gx += g * w * h;
                }
            }
            if let Some(dx) = dx.as_deref_mut() {
                let dxs = &mut dx[run * len..(run + 1) * len];
                let dys_by_channel = dys.chunks_exact(self.spatial);
                let outs = dxs.chunks_exact_mut(self.spatial);
                for (((c, xc), dyc), oc) in self.channels_of(run, xs).zip(dys_by_channel).zip(outs)
                {
                    let w = self.weight[c].to_f64();
                    for ((&xv, &g), o) in xc.iter().zip(dyc).zip(oc) {
                        let (h, g) = ((xv.to_f64() - mean) * invstd, g.to_f64() * w);
                        *o = T::from_f64(invstd / m * (m * g - sum_g - h * sum_gx));
                    }
                }
            }
        }
        for ((gw, gb), &(dw, db)) in self
            .weight_grad
            .iter_mut()
            .zip(&mut self.bias_grad)
            .zip(&sums)
        {
            (*gw, *gb) = (T::from_f64(dw), T::from_f64(db));
        }
        self.param_sums = sums;
        Ok(())
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        let weight = (&mut self.weight[..], &mut self.weight_grad[..]);
        visit_gamma_beta(weight, (&mut self.bias[..], &mut self.bias_grad[..]), f);
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        let shape = vec![self.weight.len()];
        for (name, value) in [("weight", &mut self.weight), ("bias", &mut self.bias)] {
            let value = StateValue::Float(&mut value[..]);
            let shape = shape.clone();
            f(StateEntry { name, shape, value });
        }
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        let mut wide = GroupNorm::<f64>::new(&self.sample_dims, self.groups, self.eps).ok()?;
        wide.weight = widen(&self.weight);
        wide.bias = widen(&self.bias);
        Some(Box::new(wide))
    }
}
