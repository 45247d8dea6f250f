//! Batch normalization over a batch split across ranks.

use batchnorm::renorm::RenormCorrection;
use batchnorm::stages::{
    self, update_factor, update_running_stats, GradSums, InputGrad, Kernels, Normalization,
};
use batchnorm::{
    BatchNorm, BatchNormConfig, BatchNormError, Element, Grads, Isa, Mode, Moments, Par, Shape,
    Statistics,
};

use crate::collective::Collective;
use crate::error::{DistError, Result};

/// Batch normalization whose batch statistics are those of the global batch: the
/// concatenation, in rank order, of every rank's local batch.
///
/// Training forward: each rank computes its per-channel moments `(count, mean, M2)` in `f64`,
/// the ranks all-gather them (`2C + 1` values each), and every rank merges them in rank order
/// (Chan et al.), so every rank normalises with the same statistics, equal to one process's
/// on the global batch up to rounding, for any split. The running statistics move by the
/// global batch (unbiased variance over the global count, momentum or cumulative average)
/// identically on every rank. Backward all-reduces the per-channel sums `(sum dy, sum dy (x -
/// mean))` (`2C` values and a status word) and computes `dx` as for the global batch; the
/// returned `weight`/`bias` gradients are this rank's contributions (their sum over the ranks
/// is the global gradient: a data-parallel trainer all-reduces them with the other
/// parameters). Evaluation uses the running statistics and does not communicate.
///
/// Local batches may be uneven, a single sample or empty (N = 0); only fewer than 2 values per
/// channel over all ranks is an error ([`DistError::TooFewValues`], on every rank).
///
/// ```
/// use batchnorm::{BatchNormConfig, Layout, Mode, Shape};
/// use batchnorm_dist::{local_group, SyncBatchNorm};
///
/// // A (5, 2) batch over two threads: 3 samples on rank 0, 2 on rank 1.
/// let x = [1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0, 5.0, 50.0];
/// let (lo, hi) = x.split_at(6);
/// let means: Vec<Vec<f32>> = std::thread::scope(|s| {
///     let handles: Vec<_> = local_group(2)
///         .into_iter()
///         .zip([lo, hi])
///         .map(|(comm, xs)| s.spawn(move || {
///             let mut bn = SyncBatchNorm::<f32>::new(2, BatchNormConfig::default())?;
///             let shape = Shape::new(&[xs.len() / 2, 2], Layout::ChannelsFirst)?;
///             let mut y = vec![0.0; xs.len()];
///             let saved = bn.forward(&comm, xs, &shape, Mode::Train, &mut y)?;
///             Ok::<_, batchnorm_dist::DistError>(saved.mean)
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// assert_eq!(means, [[3.0, 30.0], [3.0, 30.0]]); // the global batch's mean on both ranks
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SyncBatchNorm<T: Element> {
    /// gamma, one per channel (init 1); empty when not affine. `f32` for 16-bit tensors.
    pub weight: Vec<T::Param>,
    /// beta, one per channel (init 0); empty when not affine.
    pub bias: Vec<T::Param>,
    /// Running mean (init 0); empty when not tracking.
    pub running_mean: Vec<T::Param>,
    /// Running UNBIASED variance (init 1); empty when not tracking.
    pub running_var: Vec<T::Param>,
    /// Training batches seen while tracking.
    pub num_batches_tracked: u64,
    channels: usize,
    config: BatchNormConfig,
    kernels: Kernels,
}

/// What [`SyncBatchNorm::forward`] used, kept for [`SyncBatchNorm::backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyncSaved<T: Element> {
    /// The per-channel mean used, rounded to `T::Param`.
    pub mean: Vec<T::Param>,
    /// The per-channel `1 / sqrt(var + eps)` used, rounded to `T::Param`.
    pub invstd: Vec<T::Param>,
    /// The maps as normalisation applied them, in `f64`.
    norms: Vec<Normalization>,
    /// Batch Renormalization's corrections; empty without renormalisation.
    renorm: Vec<RenormCorrection>,
    count: u64,
    shape: Shape,
    statistics: Statistics,
}

impl<T: Element> SyncSaved<T> {
    /// This rank's input shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Whether the global batch's statistics or the running ones normalised it.
    pub fn statistics(&self) -> Statistics {
        self.statistics
    }

    /// Values per channel over all ranks (with batch statistics; 0 with running ones).
    pub fn global_count(&self) -> u64 {
        self.count
    }

    /// Batch Renormalization's correction of each channel, the same on every rank (see
    /// [`batchnorm::renorm`]); empty when the batch was not renormalised.
    pub fn renorm(&self) -> &[RenormCorrection] {
        &self.renorm
    }
}

/// The same parameters, running statistics, configuration and kernels.
impl<T: Element> From<BatchNorm<T>> for SyncBatchNorm<T> {
    fn from(bn: BatchNorm<T>) -> Self {
        let kernels = Kernels::new(bn.par())
            .with_isa(bn.isa())
            .unwrap_or_else(|_| Kernels::new(bn.par()));
        Self {
            channels: bn.channels(),
            config: *bn.config(),
            kernels,
            weight: bn.weight,
            bias: bn.bias,
            running_mean: bn.running_mean,
            running_var: bn.running_var,
            num_batches_tracked: bn.num_batches_tracked,
        }
    }
}

impl<T: Element> SyncBatchNorm<T> {
    /// A module for `channels` channels with PyTorch's initial values (as [`BatchNorm::new`]).
    ///
    /// # Errors
    /// [`BatchNormError::ZeroChannels`], [`BatchNormError::InvalidEps`],
    /// [`BatchNormError::InvalidMomentum`].
    pub fn new(channels: usize, config: BatchNormConfig) -> Result<Self> {
        Ok(BatchNorm::<T>::new(channels, config)?.into())
    }

    /// The same parameters and running statistics as a single-process [`BatchNorm`] (for
    /// evaluation, folding or saving).
    ///
    /// # Errors
    /// The checks of [`BatchNorm::new`] (they passed when this module was made).
    pub fn to_batch_norm(&self) -> Result<BatchNorm<T>> {
        let mut bn = BatchNorm::new(self.channels, self.config)?;
        bn.weight.clone_from(&self.weight);
        bn.bias.clone_from(&self.bias);
        bn.running_mean.clone_from(&self.running_mean);
        bn.running_var.clone_from(&self.running_var);
        bn.num_batches_tracked = self.num_batches_tracked;
        bn.set_par(self.kernels.par());
        bn.set_isa(self.kernels.isa())?;
        Ok(bn)
    }

    /// The number of channels C.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The configuration.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// Whether the kernels may use rayon's threads (results do not depend on it).
    pub fn set_par(&mut self, par: Par) {
        self.kernels = self.kernels.with_par(par);
    }

    /// Chooses the kernel path (results do not depend on it).
    ///
    /// # Errors
    /// [`BatchNormError::UnsupportedIsa`] if this CPU cannot run it.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        self.kernels = self.kernels.with_isa(isa)?;
        Ok(())
    }

    /// Which statistics `mode` normalises with.
    pub fn statistics_for(&self, mode: Mode) -> Statistics {
        match mode {
            Mode::Eval if self.config.track_running_stats => Statistics::Running,
            _ => Statistics::Batch,
        }
    }

    /// Normalises this rank's `x` into `y` (both in the memory order of `shape`, this rank's
    /// local batch) with the global batch's statistics in [`Mode::Train`] (then updating the
    /// running statistics when tracking) and the running ones in [`Mode::Eval`]. Collective in
    /// training (and when not tracking): every rank of `comm` must call it.
    ///
    /// # Errors
    /// This rank's shape, channel and length mismatches and a negative running variance in
    /// evaluation ([`DistError::BatchNorm`]); another rank's ([`DistError::PeerFailed`]);
    /// fewer than 2 values per channel over all ranks ([`DistError::TooFewValues`]); a failed
    /// exchange ([`DistError::Comm`]). On error the module is unchanged.
    pub fn forward<C: Collective + ?Sized>(
        &mut self,
        comm: &C,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
    ) -> Result<SyncSaved<T>> {
        let (saved, merged) = self.normalize(comm, x, shape, mode, y)?;
        if let (Mode::Train, true) = (mode, self.config.track_running_stats) {
            self.num_batches_tracked += 1;
            let factor = update_factor(self.config.momentum, self.num_batches_tracked);
            update_running_stats(
                &mut self.running_mean,
                &mut self.running_var,
                &merged,
                factor,
            )?;
        }
        Ok(saved)
    }

    /// As [`forward`](Self::forward) but leaves the running statistics untouched.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_without_update<C: Collective + ?Sized>(
        &self,
        comm: &C,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
    ) -> Result<SyncSaved<T>> {
        Ok(self.normalize(comm, x, shape, mode, y)?.0)
    }

    /// Given this rank's `x`, `dy` and the [`SyncSaved`] of its forward, writes this rank's
    /// `dx` (the global batch's gradient, restricted to this rank's samples) and returns this
    /// rank's contributions to the parameter gradients, `weight = sum(dy * xhat)` and `bias =
    /// sum(dy)` over its samples (empty when not affine). Collective after batch statistics.
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and [`BatchNormError::SavedMismatch`] for statistics
    /// saved for another shape.
    pub fn backward<C: Collective + ?Sized>(
        &self,
        comm: &C,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &SyncSaved<T>,
        dx: &mut [T],
    ) -> Result<Grads<T>> {
        let c = self.channels;
        let mean: Vec<f64> = saved.norms.iter().map(|n| n.mean).collect();
        let mut sums = vec![GradSums::default(); c];
        let local = self
            .check(x, shape, &[("dy", dy.len()), ("dx", dx.len())])
            .and_then(|()| check_saved(saved, shape))
            .and_then(|()| self.kernels.grad_sums(x, dy, shape, &mean, &mut sums));
        let grads: Vec<InputGrad> = match saved.statistics {
            Statistics::Running => {
                local?;
                saved.norms.iter().map(InputGrad::frozen).collect()
            }
            Statistics::Batch => {
                // [failed ranks, then (sum dy, sum dy (x - mean)) per channel], summed.
                let mut all = vec![0.0; 2 * c + 1];
                all[0] = if local.is_ok() { 0.0 } else { 1.0 };
                for (pair, s) in all[1..].chunks_exact_mut(2).zip(&sums) {
                    pair.copy_from_slice(&[s.dy, s.dy_xmu]);
                }
                comm.all_reduce_sum_f64(&mut all)?;
                local?;
                if all[0] > 0.0 {
                    return Err(DistError::PeerFailed { rank: None });
                }
                let global = all[1..].chunks_exact(2).map(|p| GradSums {
                    dy: p[0],
                    dy_xmu: p[1],
                });
                saved
                    .norms
                    .iter()
                    .zip(global)
                    .map(|(norm, sums)| InputGrad::batch(norm, sums, saved.count))
                    .collect()
            }
        };
        self.kernels.input_grad(x, dy, shape, &grads, dx)?;
        let (weight, bias) = if self.config.affine {
            let weight = sums
                .iter()
                .zip(&saved.norms)
                .enumerate()
                .map(|(ch, (s, n))| {
                    let corr = saved.renorm.get(ch).unwrap_or(&RenormCorrection::NONE);
                    T::Param::from_f64(corr.weight_grad(s.weight_grad(n.invstd), s.bias_grad()))
                });
            let bias = sums.iter().map(|s| T::Param::from_f64(s.bias_grad()));
            (weight.collect(), bias.collect())
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Grads { weight, bias })
    }

    /// Normalises with the statistics `mode` selects; returns what backward needs and the
    /// merged moments of the global batch (empty with running statistics).
    fn normalize<C: Collective + ?Sized>(
        &self,
        comm: &C,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
    ) -> Result<(SyncSaved<T>, Vec<Moments>)> {
        let c = self.channels;
        let statistics = self.statistics_for(mode);
        let local = self.check(x, shape, &[("y", y.len())]);
        let (norms, merged, count, renorm) = match statistics {
            Statistics::Running => {
                local?;
                (self.running_maps()?, Vec::new(), 0, Vec::new())
            }
            Statistics::Batch => {
                let mut moments = vec![Moments::EMPTY; c];
                let local = local.and_then(|()| self.kernels.moments(x, shape, &mut moments));
                let merged = self.all_merged(comm, &moments, local)?;
                let count = merged[0].count;
                if count < 2 {
                    return Err(DistError::TooFewValues { count });
                }
                // Batch Renormalization: the running statistics it corrects towards are the
                // same on every rank, so are the corrections.
                let limits = self
                    .config
                    .renorm
                    .map(|s| s.limits(self.num_batches_tracked));
                let renorm: Vec<RenormCorrection> = match limits {
                    Some(limits) => (0..c)
                        .map(|ch| {
                            let m = &merged[ch];
                            let (rm, rv) = (self.running_mean[ch], self.running_var[ch]);
                            let (rm, rv) = (rm.to_f64(), rv.to_f64());
                            limits.correction(m.mean, m.variance(), rm, rv, self.config.eps)
                        })
                        .collect(),
                    None => Vec::new(),
                };
                let norms = merged.iter().enumerate().map(|(ch, m)| {
                    let corr = renorm.get(ch).unwrap_or(&RenormCorrection::NONE);
                    let (weight, bias) = corr.affine(self.gamma(ch), self.beta(ch));
                    Normalization::from_moments(m, self.config.eps, weight, bias)
                });
                (norms.collect(), merged, count, renorm)
            }
        };
        self.kernels.normalize(x, shape, &norms, y)?;
        let saved = SyncSaved {
            mean: norms.iter().map(|n| T::Param::from_f64(n.mean)).collect(),
            invstd: norms.iter().map(|n| T::Param::from_f64(n.invstd)).collect(),
            norms,
            renorm,
            count,
            shape: *shape,
            statistics,
        };
        Ok((saved, merged))
    }

    /// All-gathers every rank's `(count, mean, M2)` per channel (a negative count flags a
    /// rank whose `local` check failed) and merges them in rank order.
    fn all_merged<C: Collective + ?Sized>(
        &self,
        comm: &C,
        moments: &[Moments],
        local: std::result::Result<(), BatchNormError>,
    ) -> Result<Vec<Moments>> {
        let c = self.channels;
        let width = 2 * c + 1;
        let mut mine = vec![0.0; width];
        // Every channel of a rank holds the same number of values.
        mine[0] = if local.is_ok() {
            moments[0].count as f64
        } else {
            -1.0
        };
        for (pair, m) in mine[1..].chunks_exact_mut(2).zip(moments) {
            pair.copy_from_slice(&[m.mean, m.m2]);
        }
        let mut all = vec![0.0; width * comm.size()];
        comm.all_gather_f64(&mine, &mut all)?;
        local?;
        if let Some(rank) = all.chunks_exact(width).position(|r| r[0] < 0.0) {
            return Err(DistError::PeerFailed { rank: Some(rank) });
        }
        let merged = (0..c).map(|ch| {
            all.chunks_exact(width).fold(Moments::EMPTY, |acc, r| {
                acc.merge(Moments {
                    count: r[0] as u64,
                    mean: r[1 + 2 * ch],
                    m2: r[2 + 2 * ch],
                })
            })
        });
        Ok(merged.collect())
    }

    /// The evaluation maps from the running statistics.
    fn running_maps(&self) -> Result<Vec<Normalization>> {
        let stats = self.running_mean.iter().zip(&self.running_var).enumerate();
        stats
            .map(|(ch, (&mean, &var))| {
                let (mean, var) = (mean.to_f64(), var.to_f64());
                if var < 0.0 {
                    return Err(BatchNormError::NegativeRunningVar {
                        channel: ch,
                        value: var,
                    }
                    .into());
                }
                let (gamma, beta) = (self.gamma(ch), self.beta(ch));
                Ok(Normalization::from_mean_var(
                    mean,
                    var,
                    self.config.eps,
                    gamma,
                    beta,
                ))
            })
            .collect()
    }

    fn gamma(&self, ch: usize) -> f64 {
        self.weight.get(ch).map_or(1.0, |w| w.to_f64())
    }

    fn beta(&self, ch: usize) -> f64 {
        self.bias.get(ch).map_or(0.0, |b| b.to_f64())
    }

    /// The module's checks ([`stages::check_input`]), then `tensors` against `shape`.
    fn check(
        &self,
        x: &[T],
        shape: &Shape,
        tensors: &[(&'static str, usize)],
    ) -> std::result::Result<(), BatchNormError> {
        let buffers = [
            &self.weight[..],
            &self.bias,
            &self.running_mean,
            &self.running_var,
        ];
        stages::check_input(self.channels, &self.config, buffers, x, shape)?;
        for &(buffer, got) in tensors {
            if got != shape.len() {
                return Err(BatchNormError::LengthMismatch {
                    buffer,
                    expected: shape.len(),
                    got,
                });
            }
        }
        Ok(())
    }
}

/// Checks that `saved` belongs to an input of `shape`.
fn check_saved<T: Element>(
    saved: &SyncSaved<T>,
    shape: &Shape,
) -> std::result::Result<(), BatchNormError> {
    if saved.shape == *shape {
        Ok(())
    } else {
        Err(BatchNormError::SavedMismatch {
            saved: saved.shape.dims().to_vec(),
            got: shape.dims().to_vec(),
        })
    }
}
