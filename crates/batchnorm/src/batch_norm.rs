//! The BatchNorm module: parameters, running statistics, forward and backward.

use crate::backward::{grad_sums, input_grad, GradMaps};
use crate::config::{BatchNormConfig, Mode, Statistics};
use crate::element::Element;
use crate::error::{BatchNormError, Result};
use crate::forward::{normalize, ChannelMaps};
use crate::layout::Shape;
use crate::running_stats;
use crate::stats::{channel_moments, Moments};

/// Batch Normalization over the channel axis, with PyTorch's semantics
/// (`torch.nn.BatchNorm{1,2,3}d`, `F.batch_norm`).
///
/// For each channel c, over the m = N * prod(spatial) values of that channel:
///
/// ```text
/// y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]
/// ```
///
/// where, with batch statistics, `mean` is the batch mean and `var` the BIASED batch variance
/// (divided by m), and with running statistics they are `running_mean[c]`, `running_var[c]`.
/// Statistics are accumulated in `f64` (two-pass within cache-sized chunks, Chan merging across
/// them), and the mean is applied as a high and a low part, so `f32` outputs stay within
/// `1e-5 * (1 + |y|)` of the `f64` truth even for inputs like `1e6 + randn`; a constant channel
/// gives exactly `bias`.
///
/// NaN or infinity in `x` propagates as in PyTorch: the channel's statistics become NaN, so do its
/// outputs and, in training, its running statistics.
///
/// ```
/// use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Shape};
/// let mut bn: BatchNorm<f32> = BatchNorm::new(2, BatchNormConfig::default())?;
/// let shape = Shape::new(&[3, 2], Layout::ChannelsFirst)?;
/// let x = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
/// let mut y = [0.0; 6];
/// let saved = bn.forward(&x, &shape, Mode::Train, &mut y)?;
/// assert_eq!(saved.mean, [2.0, 20.0]);
/// assert!((y[0] + 1.2247).abs() < 1e-4); // (1 - 2) / sqrt(2/3 + 1e-5)
/// // running_mean = 0.9 * 0 + 0.1 * mean; running_var = 0.9 * 1 + 0.1 * unbiased var
/// assert!((bn.running_mean[1] - 2.0).abs() < 1e-6);
/// assert!((bn.running_var[0] - 1.0).abs() < 1e-6);
///
/// let dy = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
/// let mut dx = [0.0; 6];
/// let grads = bn.backward(&x, &dy, &shape, &saved, &mut dx)?;
/// assert_eq!(grads.bias, [1.0, 0.0]);
/// # Ok::<(), batchnorm::BatchNormError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm<T> {
    /// gamma, one per channel (init 1); empty when not affine.
    pub weight: Vec<T>,
    /// beta, one per channel (init 0); empty when not affine.
    pub bias: Vec<T>,
    /// Running mean (init 0); empty when not tracking.
    pub running_mean: Vec<T>,
    /// Running UNBIASED variance (init 1); empty when not tracking.
    pub running_var: Vec<T>,
    /// Training batches seen while tracking.
    pub num_batches_tracked: u64,
    channels: usize,
    config: BatchNormConfig,
}

/// What `forward` used, kept for `backward`.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved<T> {
    /// The per-channel mean used, rounded to `T`.
    pub mean: Vec<T>,
    /// The per-channel `1 / sqrt(var + eps)` used, rounded to `T`.
    pub invstd: Vec<T>,
    /// The same two in `f64`, as normalisation used them: backward needs their exact values.
    mean64: Vec<f64>,
    invstd64: Vec<f64>,
    shape: Shape,
    statistics: Statistics,
}

impl<T> Saved<T> {
    /// The shape of the input these statistics were computed for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Whether the batch's own statistics or the running ones normalised it.
    pub fn statistics(&self) -> Statistics {
        self.statistics
    }
}

/// Parameter gradients: `weight = sum(dy * xhat)`, `bias = sum(dy)` per channel; both empty when
/// the module is not affine.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads<T> {
    /// d loss / d weight.
    pub weight: Vec<T>,
    /// d loss / d bias.
    pub bias: Vec<T>,
}

impl<T: Element> BatchNorm<T> {
    /// A module for `channels` channels with PyTorch's initial values.
    ///
    /// # Errors
    /// [`BatchNormError::ZeroChannels`], [`BatchNormError::InvalidEps`],
    /// [`BatchNormError::InvalidMomentum`].
    pub fn new(channels: usize, config: BatchNormConfig) -> Result<Self> {
        config.validate()?;
        if channels == 0 {
            return Err(BatchNormError::ZeroChannels);
        }
        let filled = |on: bool, v: T| if on { vec![v; channels] } else { Vec::new() };
        Ok(Self {
            weight: filled(config.affine, T::ONE),
            bias: filled(config.affine, T::ZERO),
            running_mean: filled(config.track_running_stats, T::ZERO),
            running_var: filled(config.track_running_stats, T::ONE),
            num_batches_tracked: 0,
            channels,
            config,
        })
    }

    /// The number of channels C.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The configuration.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// Sets the running statistics back to mean 0, variance 1, no batches tracked.
    pub fn reset_running_stats(&mut self) {
        self.running_mean.fill(T::ZERO);
        self.running_var.fill(T::ONE);
        self.num_batches_tracked = 0;
    }

    /// Which statistics `mode` normalises with.
    pub fn statistics_for(&self, mode: Mode) -> Statistics {
        match mode {
            Mode::Eval if self.config.track_running_stats => Statistics::Running,
            _ => Statistics::Batch,
        }
    }

    /// Normalises `x` into `y` (both in the memory order of `shape`) and returns the statistics
    /// used. In [`Mode::Train`] with tracking, updates the running statistics and increments
    /// `num_batches_tracked`.
    ///
    /// # Errors
    /// Shape, channel and length mismatches, fewer than 2 values per channel with batch
    /// statistics ([`BatchNormError::TooFewValues`]), a negative running variance in evaluation.
    /// On error nothing is modified.
    pub fn forward(&mut self, x: &[T], shape: &Shape, mode: Mode, y: &mut [T]) -> Result<Saved<T>> {
        let (saved, moments) = self.statistics(x, shape, mode, y.len())?;
        if mode == Mode::Train && self.config.track_running_stats {
            self.num_batches_tracked += 1;
            let factor =
                running_stats::update_factor(self.config.momentum, self.num_batches_tracked);
            running_stats::update(
                &mut self.running_mean,
                &mut self.running_var,
                &moments,
                factor,
            );
        }
        self.apply(x, y, &saved);
        Ok(saved)
    }

    /// As [`forward`](Self::forward), but never touches the running statistics: useful to look
    /// at what training-mode normalisation does to a probe batch without disturbing the model.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_without_update(
        &self,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
    ) -> Result<Saved<T>> {
        let (saved, _) = self.statistics(x, shape, mode, y.len())?;
        self.apply(x, y, &saved);
        Ok(saved)
    }

    /// Gradients of the loss with respect to `x` (written to `dx`), weight and bias, given the
    /// upstream gradient `dy` and the statistics `forward` returned for this `x`.
    ///
    /// After batch statistics (the mean and variance depend on x):
    /// `dx = weight * invstd / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))`.
    /// After running statistics (frozen BN): `dx = dy * weight * invstd`.
    /// In both cases `dweight = sum(dy * xhat)` and `dbias = sum(dy)`, accumulated in `f64`.
    ///
    /// # Errors
    /// Length mismatches, and [`BatchNormError::SavedMismatch`] when `saved` was computed for
    /// another shape.
    pub fn backward(
        &self,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
    ) -> Result<Grads<T>> {
        self.check_input(x, shape)?;
        if saved.shape.dims() != shape.dims() || saved.shape.geometry() != shape.geometry() {
            return Err(BatchNormError::SavedMismatch {
                saved: saved.shape.dims().to_vec(),
                got: shape.dims().to_vec(),
            });
        }
        check_len("dy", dy.len(), shape.len())?;
        check_len("dx", dx.len(), shape.len())?;
        let geo = shape.geometry();
        let c = self.channels;
        let mut sum_dy = vec![0.0; c];
        let mut sum_dy_xmu = vec![0.0; c];
        grad_sums(x, dy, geo, &saved.mean64, &mut sum_dy, &mut sum_dy_xmu);

        let m = shape.per_channel() as f64;
        let batch = saved.statistics == Statistics::Batch;
        let mut maps = GradMaps {
            mean: saved.mean64.clone(),
            k: vec![0.0; c],
            a: vec![0.0; c],
            b: vec![0.0; c],
        };
        let mut dweight = Vec::with_capacity(c);
        for ch in 0..c {
            let invstd = saved.invstd64[ch];
            let sum_dy_xhat = sum_dy_xmu[ch] * invstd;
            dweight.push(T::from_f64(sum_dy_xhat));
            maps.k[ch] = self.gamma(ch).to_f64() * invstd;
            if batch {
                maps.a[ch] = sum_dy[ch] / m;
                maps.b[ch] = sum_dy_xhat * invstd / m;
            }
        }
        input_grad(x, dy, dx, geo, &maps);
        Ok(if self.config.affine {
            Grads {
                weight: dweight,
                bias: sum_dy.into_iter().map(T::from_f64).collect(),
            }
        } else {
            Grads {
                weight: Vec::new(),
                bias: Vec::new(),
            }
        })
    }

    fn gamma(&self, c: usize) -> T {
        if self.config.affine {
            self.weight[c]
        } else {
            T::ONE
        }
    }

    fn beta(&self, c: usize) -> T {
        if self.config.affine {
            self.bias[c]
        } else {
            T::ZERO
        }
    }

    /// Checks the shape against the module and `x`, and the public buffers' lengths.
    fn check_input(&self, x: &[T], shape: &Shape) -> Result<()> {
        if shape.channels() != self.channels {
            return Err(BatchNormError::ChannelMismatch {
                expected: self.channels,
                got: shape.channels(),
            });
        }
        check_len("x", x.len(), shape.len())?;
        let (c, affine, track) = (
            self.channels,
            self.config.affine,
            self.config.track_running_stats,
        );
        check_len("weight", self.weight.len(), if affine { c } else { 0 })?;
        check_len("bias", self.bias.len(), if affine { c } else { 0 })?;
        check_len(
            "running_mean",
            self.running_mean.len(),
            if track { c } else { 0 },
        )?;
        check_len(
            "running_var",
            self.running_var.len(),
            if track { c } else { 0 },
        )
    }

    /// Validates the call and computes the statistics `mode` normalises with; also returns the
    /// batch moments when they were computed.
    fn statistics(
        &self,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y_len: usize,
    ) -> Result<(Saved<T>, Vec<Moments>)> {
        self.check_input(x, shape)?;
        check_len("y", y_len, shape.len())?;
        let c = self.channels;
        let eps = self.config.eps;
        let statistics = self.statistics_for(mode);
        let mut moments = Vec::new();
        let mut mean64 = Vec::with_capacity(c);
        let mut var64 = Vec::with_capacity(c);
        match statistics {
            Statistics::Batch => {
                if shape.per_channel() < 2 {
                    return Err(BatchNormError::TooFewValues {
                        dims: shape.dims().to_vec(),
                    });
                }
                moments = vec![Moments::EMPTY; c];
                channel_moments(x, shape.geometry(), &mut moments);
                mean64.extend(moments.iter().map(|m| m.mean));
                var64.extend(moments.iter().map(Moments::variance));
            }
            Statistics::Running => {
                let running = self.running_mean.iter().zip(&self.running_var);
                for (ch, (&mean, &var)) in running.enumerate() {
                    let var = var.to_f64();
                    if var < 0.0 {
                        return Err(BatchNormError::NegativeRunningVar {
                            channel: ch,
                            value: var,
                        });
                    }
                    mean64.push(mean.to_f64());
                    var64.push(var);
                }
            }
        }
        let invstd64: Vec<f64> = var64.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let saved = Saved {
            mean: mean64.iter().map(|&v| T::from_f64(v)).collect(),
            invstd: invstd64.iter().map(|&v| T::from_f64(v)).collect(),
            mean64,
            invstd64,
            shape: *shape,
            statistics,
        };
        Ok((saved, moments))
    }

    /// Writes `y` from `x` with the saved statistics and the affine parameters.
    fn apply(&self, x: &[T], y: &mut [T], saved: &Saved<T>) {
        let c = self.channels;
        let maps = ChannelMaps {
            mean: saved.mean64.clone(),
            scale: (0..c)
                .map(|ch| saved.invstd64[ch] * self.gamma(ch).to_f64())
                .collect(),
            shift: (0..c).map(|ch| self.beta(ch).to_f64()).collect(),
        };
        normalize(x, y, saved.shape.geometry(), &maps);
    }
}

fn check_len(buffer: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(BatchNormError::LengthMismatch {
            buffer,
            expected,
            got,
        })
    }
}
