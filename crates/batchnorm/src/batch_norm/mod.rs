//! The BatchNorm module: parameters, running statistics, forward and backward.

use std::marker::PhantomData;

use crate::backward::{
    grad_sums_kernel, input_grad, input_grad_channels, relu_grad, relu_grad_masked, DxMap,
    GatedGradMap, GradMap, GradSums,
};
use crate::config::{BatchNormConfig, Mode, Statistics};
use crate::element::{Element, Float};
use crate::error::{BatchNormError, Result};
use crate::forward::{normalize, normalize_channels, Epilogue, NormMap};
use crate::gate::Gates;
use crate::layout::Shape;
use crate::mask::{mask_words, SharedMask};
use crate::par::Par;
use crate::plan::{two_passes, widen, Exec, WideMaps};
use crate::renorm::{RenormCorrection, RenormLimits};
use crate::running_stats;
use crate::simd::Isa;
use crate::stages::{self, check_len, InputGrad, Kernels, Normalization};
use crate::stats::{moments_kernel, Moments};
use crate::team::Board;

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
/// Statistics are accumulated in `f64` (sums shifted by a value of each piece, Chan merging
/// across pieces) and the mean is subtracted as a high and a low part, so `f32` outputs stay within
/// `1e-5 * (1 + |y|)` of the `f64` truth even for inputs like `1e6 + randn`; a constant channel
/// gives exactly `bias`. The backward map is evaluated in `f64`.
///
/// NaN or infinity in `x` propagates as in PyTorch: the channel's statistics become NaN, so do its
/// outputs and, in training, its running statistics.
///
/// Execution is explicit: [`set_par`](Self::set_par) (default [`Par::Seq`]) and
/// [`set_isa`](Self::set_isa) (default: the best the CPU has). Results are bitwise identical for
/// every choice of both. [`forward_into`](Self::forward_into) and
/// [`backward_into`](Self::backward_into) reuse the caller's buffers and allocate nothing once
/// warm; [`forward`](Self::forward) and [`backward`](Self::backward) return fresh `Saved`/`Grads`
/// (a few per-channel vectors).
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
#[derive(Debug, Clone)]
pub struct BatchNorm<T: Element> {
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
    /// Overrides the L2 budget detected for the machine (tests force both blockings with it).
    l2_budget: Option<usize>,
    workspace: Workspace<T>,
}

/// Equal parameters, buffers, configuration and execution settings (scratch space is ignored).
impl<T: Element> PartialEq for BatchNorm<T> {
    fn eq(&self, other: &Self) -> bool {
        self.weight == other.weight
            && self.bias == other.bias
            && self.running_mean == other.running_mean
            && self.running_var == other.running_var
            && self.num_batches_tracked == other.num_batches_tracked
            && self.channels == other.channels
            && self.config == other.config
            && self.kernels == other.kernels
    }
}

/// Per-channel scratch, kept between calls so that warm calls allocate nothing.
#[derive(Debug, Clone)]
struct Workspace<T: Element> {
    moments: Vec<Moments>,
    moment_parts: Vec<Moments>,
    maps: Vec<NormMap<T>>,
    /// `maps` repeated over one widened row (channels-last input).
    wide_maps: WideMaps<T::Compute, NormMap<T>, 4>,
    sums: Vec<GradSums>,
    sum_parts: Vec<GradSums>,
    grad_maps: DxMaps<GradMap>,
    /// The dx maps through a ReLU (`backward_relu`), and its gates.
    gated_maps: DxMaps<GatedGradMap>,
    gates: Gates,
    /// The per-channel mean repeated over one widened row, for the gradient sums
    /// (channels-last input).
    wide_mean: Vec<f64>,
    /// Where the threads of a team sharing each channel meet.
    board: Board,
    /// The upstream gradient masked by a ReLU's output (`backward_relu` where a channel has
    /// no gate).
    masked: Vec<T>,
}

/// Every channel's dx map, and the same laid out over a widened row.
#[derive(Debug, Clone, Default)]
struct DxMaps<M: DxMap> {
    maps: Vec<M>,
    wide: M::Wide,
}

impl<T: Element> Default for Workspace<T> {
    fn default() -> Self {
        Self {
            moments: Vec::new(),
            moment_parts: Vec::new(),
            maps: Vec::new(),
            wide_maps: WideMaps::default(),
            sums: Vec::new(),
            sum_parts: Vec::new(),
            grad_maps: DxMaps::default(),
            gated_maps: DxMaps::default(),
            gates: Gates::default(),
            wide_mean: Vec::new(),
            board: Board::default(),
            masked: Vec::new(),
        }
    }
}

/// What `forward` used, kept for `backward`.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved<T: Element> {
    /// The per-channel mean used, rounded to `T::Param`.
    pub mean: Vec<T::Param>,
    /// The per-channel `1 / sqrt(var + eps)` used, rounded to `T::Param`.
    pub invstd: Vec<T::Param>,
    /// The same two in `f64`, as normalisation used them: backward needs their exact values.
    mean64: Vec<f64>,
    invstd64: Vec<f64>,
    /// Batch Renormalization's per-channel corrections; empty without renormalisation.
    renorm: Vec<RenormCorrection>,
    /// Where `forward_add_relu`'s output is not zero, a bit per value ([`crate::mask`]); empty
    /// after the other forwards.
    relu_mask: Vec<u64>,
    shape: Option<Shape>,
    statistics: Option<Statistics>,
}

impl<T: Element> Default for Saved<T> {
    fn default() -> Self {
        Self {
            mean: Vec::new(),
            invstd: Vec::new(),
            mean64: Vec::new(),
            invstd64: Vec::new(),
            renorm: Vec::new(),
            relu_mask: Vec::new(),
            shape: None,
            statistics: None,
        }
    }
}

impl<T: Element> Saved<T> {
    /// The shape of the input these statistics were computed for (`None` before any forward).
    pub fn shape(&self) -> Option<&Shape> {
        self.shape.as_ref()
    }

    /// Whether the batch's own statistics or the running ones normalised it.
    pub fn statistics(&self) -> Option<Statistics> {
        self.statistics
    }

    /// Batch Renormalization's correction of each channel (see [`crate::renorm`]); empty when
    /// the batch was not renormalised (plain BN, evaluation).
    pub fn renorm(&self) -> &[RenormCorrection] {
        &self.renorm
    }
}

/// Parameter gradients: `weight = sum(dy * xhat)`, `bias = sum(dy)` per channel; both empty when
/// the module is not affine.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads<T: Element> {
    /// d loss / d weight.
    pub weight: Vec<T::Param>,
    /// d loss / d bias.
    pub bias: Vec<T::Param>,
}

impl<T: Element> Default for Grads<T> {
    fn default() -> Self {
        Self {
            weight: Vec::new(),
            bias: Vec::new(),
        }
    }
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
        let filled = |on: bool, v: T::Param| if on { vec![v; channels] } else { Vec::new() };
        Ok(Self {
            weight: filled(config.affine, Float::ONE),
            bias: filled(config.affine, Float::ZERO),
            running_mean: filled(config.track_running_stats, Float::ZERO),
            running_var: filled(config.track_running_stats, Float::ONE),
            num_batches_tracked: 0,
            channels,
            config,
            kernels: Kernels::default(),
            l2_budget: None,
            workspace: Workspace::default(),
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

    /// Sets (or, with `None`, removes) Batch Renormalization's schedule for the following
    /// training calls: with [`Renorm::fixed`](crate::Renorm::fixed) before each call, the
    /// limits are given per call.
    ///
    /// # Errors
    /// As [`BatchNormConfig::validate`] for the new configuration; on error nothing changes.
    pub fn set_renorm(&mut self, renorm: Option<crate::Renorm>) -> Result<()> {
        let config = BatchNormConfig {
            renorm,
            ..self.config
        };
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Whether calls may use rayon's threads (results do not depend on it).
    pub fn set_par(&mut self, par: Par) {
        self.kernels = self.kernels.with_par(par);
    }

    /// The threading choice.
    pub fn par(&self) -> Par {
        self.kernels.par()
    }

    /// Chooses the kernel path (results do not depend on it).
    ///
    /// # Errors
    /// [`BatchNormError::UnsupportedIsa`] if this CPU cannot run it.
    pub fn set_isa(&mut self, isa: Isa) -> Result<()> {
        self.kernels = self.kernels.with_isa(isa)?;
        Ok(())
    }

    /// The kernel path.
    pub fn isa(&self) -> Isa {
        self.kernels.isa()
    }

    /// Sets the running statistics back to mean 0, variance 1, no batches tracked.
    pub fn reset_running_stats(&mut self) {
        self.running_mean.fill(Float::ZERO);
        self.running_var.fill(Float::ONE);
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
        let mut saved = Saved::default();
        self.forward_into(x, shape, mode, y, &mut saved)?;
        Ok(saved)
    }

    /// As [`forward`](Self::forward), writing the statistics into `saved` and reusing its
    /// buffers: no allocation once `saved` and the module have seen this channel count.
    ///
    /// # Errors
    /// As [`forward`](Self::forward); on error `saved` is left empty.
    pub fn forward_into(
        &mut self,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
        saved: &mut Saved<T>,
    ) -> Result<()> {
        self.forward_with(x, Epilogue::None, shape, mode, y, saved)
    }

    /// `y = relu(bn(x))` in one pass: [`forward`](Self::forward) with a ReLU applied before
    /// the output is rounded to `T` (`max(v, 0)`, NaN kept). The output is bit for bit a ReLU
    /// of `forward`'s; statistics, running statistics and the returned [`Saved`] are the same.
    /// Its gradient is [`backward_relu`](Self::backward_relu).
    ///
    /// ```
    /// use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Shape};
    /// let mut bn: BatchNorm<f32> = BatchNorm::new(1, BatchNormConfig::default())?;
    /// let shape = Shape::new(&[4, 1], Layout::ChannelsFirst)?;
    /// let x = [1.0, 2.0, 3.0, 4.0];
    /// let mut y = [0.0; 4];
    /// let saved = bn.forward_relu(&x, &shape, Mode::Train, &mut y)?;
    /// assert_eq!(&y[..2], &[0.0, 0.0]); // below the mean
    /// assert!((y[3] - 1.3416).abs() < 1e-4); // (4 - 2.5) / sqrt(1.25 + 1e-5)
    ///
    /// // Backward: dy passes where y > 0, then through BN.
    /// let (dy, mut dx) = ([1.0; 4], [0.0; 4]);
    /// let grads = bn.backward_relu(&x, &y, &dy, &shape, &saved, &mut dx)?;
    /// assert_eq!(grads.bias, [2.0]); // sum of dy where y > 0
    /// # Ok::<(), batchnorm::BatchNormError>(())
    /// ```
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_relu(
        &mut self,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
    ) -> Result<Saved<T>> {
        let mut saved = Saved::default();
        self.forward_with(x, Epilogue::Relu, shape, mode, y, &mut saved)?;
        Ok(saved)
    }

    /// As [`forward_relu`](Self::forward_relu), reusing `saved` as
    /// [`forward_into`](Self::forward_into) does.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_relu_into(
        &mut self,
        x: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
        saved: &mut Saved<T>,
    ) -> Result<()> {
        self.forward_with(x, Epilogue::Relu, shape, mode, y, saved)
    }

    /// `y = relu(bn(x) + residual)` in one pass (the tail of a residual block), `residual` in
    /// the memory order of `x`. For `f32` tensors `bn(x)` is rounded to `f32` before the
    /// addition, as separate operations would; for the others the sum is formed in `f64` and
    /// rounded once (16-bit outputs are correctly rounded). Statistics, running statistics
    /// and [`Saved`] are those of [`forward`](Self::forward); `Saved` also keeps where `y` is
    /// not zero, a bit per value, for the gradient,
    /// [`backward_add_relu`](Self::backward_add_relu).
    ///
    /// ```
    /// use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Shape};
    /// let mut bn: BatchNorm<f32> = BatchNorm::new(1, BatchNormConfig::default())?;
    /// let shape = Shape::new(&[4, 1], Layout::ChannelsFirst)?;
    /// let (x, residual) = ([1.0, 2.0, 3.0, 4.0], [2.0, 0.0, 0.0, -2.0]);
    /// let mut y = [0.0; 4];
    /// let saved = bn.forward_add_relu(&x, &residual, &shape, Mode::Train, &mut y)?;
    /// assert!(y[0] > 0.0 && y[1] == 0.0 && y[3] == 0.0);
    ///
    /// let (dy, mut dx, mut dresidual) = ([1.0; 4], [0.0; 4], [0.0; 4]);
    /// bn.backward_add_relu(&x, &y, &dy, &shape, &saved, &mut dx, &mut dresidual)?;
    /// assert_eq!(dresidual, [1.0, 0.0, 1.0, 0.0]); // dy where y > 0
    /// # Ok::<(), batchnorm::BatchNormError>(())
    /// ```
    ///
    /// # Errors
    /// As [`forward`](Self::forward), and [`BatchNormError::LengthMismatch`] for `residual`.
    pub fn forward_add_relu(
        &mut self,
        x: &[T],
        residual: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
    ) -> Result<Saved<T>> {
        let mut saved = Saved::default();
        let epi = Epilogue::AddRelu(residual, None);
        self.forward_with(x, epi, shape, mode, y, &mut saved)?;
        Ok(saved)
    }

    /// As [`forward_add_relu`](Self::forward_add_relu), reusing `saved` as
    /// [`forward_into`](Self::forward_into) does.
    ///
    /// # Errors
    /// As [`forward_add_relu`](Self::forward_add_relu).
    pub fn forward_add_relu_into(
        &mut self,
        x: &[T],
        residual: &[T],
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
        saved: &mut Saved<T>,
    ) -> Result<()> {
        self.forward_with(x, Epilogue::AddRelu(residual, None), shape, mode, y, saved)
    }

    /// The forward passes with `epi` after the map; updates the running statistics in
    /// training.
    fn forward_with(
        &mut self,
        x: &[T],
        epi: Epilogue<'_, T>,
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
        saved: &mut Saved<T>,
    ) -> Result<()> {
        let mut ws = std::mem::take(&mut self.workspace);
        let result = self.forward_impl(x, epi, shape, mode, y, saved, &mut ws);
        if result.is_ok() && mode == Mode::Train && self.config.track_running_stats {
            self.num_batches_tracked += 1;
            let factor = stages::update_factor(self.config.momentum, self.num_batches_tracked);
            running_stats::update(
                &mut self.running_mean,
                &mut self.running_var,
                &ws.moments,
                factor,
            );
        }
        self.workspace = ws;
        result
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
        let mut saved = Saved::default();
        let mut ws = Workspace::default();
        self.forward_impl(x, Epilogue::None, shape, mode, y, &mut saved, &mut ws)?;
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
        let mut grads = Grads::default();
        self.backward_impl(
            x,
            dy,
            shape,
            saved,
            dx,
            &mut grads,
            &mut Workspace::default(),
        )?;
        Ok(grads)
    }

    /// As [`backward`](Self::backward), writing the parameter gradients into `grads` and reusing
    /// its buffers and the module's scratch: no allocation once warm.
    ///
    /// # Errors
    /// As [`backward`](Self::backward).
    pub fn backward_into(
        &mut self,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
        grads: &mut Grads<T>,
    ) -> Result<()> {
        let mut ws = std::mem::take(&mut self.workspace);
        let result = self.backward_impl(x, dy, shape, saved, dx, grads, &mut ws);
        self.workspace = ws;
        result
    }

    /// The gradients of [`forward_relu`](Self::forward_relu), given its output `y` and the
    /// upstream gradient `dy`: [`backward`](Self::backward) of `dy` where `y > 0`, 0 where
    /// `y <= 0` (PyTorch's convention at exactly 0; NaN passes), bit for bit. It runs the
    /// plain backward's two passes over x and dy, finding where the ReLU zeroed from x itself
    /// (a threshold per channel, exact: see `docs/design.md`, "Fused ReLU and residual add");
    /// `y` is read only when a channel's map has no such threshold (a zero weight, or
    /// non-finite statistics). Example at [`forward_relu`](Self::forward_relu).
    ///
    /// # Errors
    /// As [`backward`](Self::backward), and [`BatchNormError::LengthMismatch`] for `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_relu(
        &self,
        x: &[T],
        y: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
    ) -> Result<Grads<T>> {
        let mut grads = Grads::default();
        let mut ws = Workspace::default();
        self.backward_relu_impl(x, y, dy, shape, saved, dx, None, &mut grads, &mut ws)?;
        Ok(grads)
    }

    /// As [`backward_relu`](Self::backward_relu), reusing `grads` and the module's scratch
    /// (the masked gradient's buffer among it): no allocation once warm.
    ///
    /// # Errors
    /// As [`backward_relu`](Self::backward_relu).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_relu_into(
        &mut self,
        x: &[T],
        y: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
        grads: &mut Grads<T>,
    ) -> Result<()> {
        let mut ws = std::mem::take(&mut self.workspace);
        let result = self.backward_relu_impl(x, y, dy, shape, saved, dx, None, grads, &mut ws);
        self.workspace = ws;
        result
    }

    /// The gradients of [`forward_add_relu`](Self::forward_add_relu), given its output `y` and
    /// the upstream gradient `dy`: the residual's gradient `dresidual = dy` where `y > 0`, 0
    /// where `y <= 0` (PyTorch's convention at exactly 0), and [`backward`](Self::backward) of
    /// `dresidual` into `dx` and the parameter gradients, bit for bit. Where `y > 0` is read
    /// from the mask the forward kept in `saved` (a bit per value), not from `y`, which is read
    /// only when `saved` came from another forward. Example at
    /// [`forward_add_relu`](Self::forward_add_relu).
    ///
    /// # Errors
    /// As [`backward`](Self::backward), and [`BatchNormError::LengthMismatch`] for `y` and
    /// `dresidual`. On error nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_add_relu(
        &self,
        x: &[T],
        y: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
        dresidual: &mut [T],
    ) -> Result<Grads<T>> {
        let mut grads = Grads::default();
        let mut ws = Workspace::default();
        let dr = Some(dresidual);
        self.backward_relu_impl(x, y, dy, shape, saved, dx, dr, &mut grads, &mut ws)?;
        Ok(grads)
    }

    /// As [`backward_add_relu`](Self::backward_add_relu), reusing `grads` and the module's
    /// scratch: no allocation once warm.
    ///
    /// # Errors
    /// As [`backward_add_relu`](Self::backward_add_relu).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_add_relu_into(
        &mut self,
        x: &[T],
        y: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
        dresidual: &mut [T],
        grads: &mut Grads<T>,
    ) -> Result<()> {
        let mut ws = std::mem::take(&mut self.workspace);
        let dr = Some(dresidual);
        let result = self.backward_relu_impl(x, y, dy, shape, saved, dx, dr, grads, &mut ws);
        self.workspace = ws;
        result
    }

    /// Validates, then runs the backward through the ReLU. With a ReLU alone, and a gate for
    /// every channel (see `crate::gate`), the two passes of [`backward`](Self::backward) read
    /// x and dy and stop dy where the forward's ReLU gave 0; otherwise (a residual, or a
    /// channel whose map has no gate) `dy` is masked by `y > 0` into `dresidual` (or the
    /// workspace's buffer) and the backward of the normalisation runs on that.
    #[allow(clippy::too_many_arguments)]
    fn backward_relu_impl(
        &self,
        x: &[T],
        y: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
        dresidual: Option<&mut [T]>,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
    ) -> Result<()> {
        let statistics = self.check_backward(x, dy, shape, saved, dx)?;
        check_len("y", y.len(), shape.len())?;
        let exec = self.exec(shape);
        match dresidual {
            Some(dr) => {
                check_len("dresidual", dr.len(), shape.len())?;
                let mask = &saved.relu_mask;
                if !mask.is_empty() && mask.len() == mask_words(shape.len()) {
                    relu_grad_masked(mask, dy, dr, exec);
                } else {
                    relu_grad(y, dy, dr, exec);
                }
                self.backward_impl(x, dr, shape, saved, dx, grads, ws)
            }
            None => {
                let mut gates = std::mem::take(&mut ws.gates);
                let norms = (0..self.channels).map(|ch| self.saved_normalization(saved, ch));
                let result = if gates.set::<T>(norms, shape.geometry().is_rows()) {
                    let mut maps = std::mem::take(&mut ws.gated_maps);
                    let gated = |ch: usize, grad| GatedGradMap::new(grad, gates.per_channel[ch]);
                    let (data, g) = ((x, dy, dx), Some(&gates));
                    self.backward_passes(
                        data, shape, saved, statistics, grads, ws, &mut maps, g, gated,
                    );
                    ws.gated_maps = maps;
                    Ok(())
                } else {
                    let mut masked = std::mem::take(&mut ws.masked);
                    masked.resize(shape.len(), T::default());
                    relu_grad(y, dy, &mut masked, exec);
                    let result = self.backward_impl(x, &masked, shape, saved, dx, grads, ws);
                    ws.masked = masked;
                    result
                };
                ws.gates = gates;
                result
            }
        }
    }

    /// The execution choices for a call over `shape`.
    fn exec(&self, shape: &Shape) -> Exec {
        let mut exec = self.kernels.exec::<T>(shape);
        if let Some(budget) = self.l2_budget {
            exec.l2_budget = budget;
        }
        exec
    }

    /// The normalisation of channel `ch` by `mean` and biased variance `var`, with this
    /// module's weight and bias, corrected by Batch Renormalization when `renorm` has limits.
    fn normalization(
        &self,
        ch: usize,
        mean: f64,
        var: f64,
        renorm: Option<RenormLimits>,
    ) -> Normalization {
        let corr = self.renorm_correction(ch, mean, var, renorm);
        let (weight, bias) = corr.affine(self.gamma(ch), self.beta(ch));
        Normalization::from_mean_var(mean, var, self.config.eps, weight, bias)
    }

    /// Fills `saved`'s `f64` means and invstds from each channel's mean and biased variance, the
    /// invstds in one loop on the kernel path (the square roots and divisions vectorise). The
    /// same invstd as [`normalization`](Self::normalization)'s.
    fn saved_statistics(&self, saved: &mut Saved<T>, stats: impl Iterator<Item = (f64, f64)>) {
        let out = saved.mean64.iter_mut().zip(saved.invstd64.iter_mut());
        for ((mean, var), (m, v)) in out.zip(stats) {
            *mean = m;
            *var = v;
        }
        let (isa, eps) = (self.isa(), self.config.eps);
        stages::invstd_in_place::<T>(isa, &mut saved.invstd64, eps, PhantomData);
    }

    /// Its map for `T` tensors.
    fn channel_map(
        &self,
        ch: usize,
        mean: f64,
        var: f64,
        renorm: Option<RenormLimits>,
    ) -> NormMap<T> {
        self.normalization(ch, mean, var, renorm).map::<T>()
    }

    /// Batch Renormalization's correction of channel `ch` with batch `mean` and `var`, from
    /// the running statistics as they are (before this step's update); none without limits.
    fn renorm_correction(
        &self,
        ch: usize,
        mean: f64,
        var: f64,
        renorm: Option<RenormLimits>,
    ) -> RenormCorrection {
        match renorm {
            Some(limits) => {
                let (rm, rv) = self.running(ch);
                limits.correction(mean, var, rm, rv, self.config.eps)
            }
            None => RenormCorrection::NONE,
        }
    }

    /// The running mean and variance of channel `ch`, in `f64`.
    fn running(&self, ch: usize) -> (f64, f64) {
        (
            self.running_mean[ch].to_f64(),
            self.running_var[ch].to_f64(),
        )
    }

    fn gamma(&self, c: usize) -> f64 {
        if self.config.affine {
            self.weight[c].to_f64()
        } else {
            1.0
        }
    }

    fn beta(&self, c: usize) -> f64 {
        if self.config.affine {
            self.bias[c].to_f64()
        } else {
            0.0
        }
    }

    /// Checks the shape against the module and `x`, and the public buffers' lengths.
    fn check_input(&self, x: &[T], shape: &Shape) -> Result<()> {
        let buffers = [
            &self.weight[..],
            &self.bias,
            &self.running_mean,
            &self.running_var,
        ];
        stages::check_input(self.channels, &self.config, buffers, x, shape)
    }

    /// Validates, then normalises. With batch statistics the channels go group by group: a
    /// group's statistics pass leaves its data in cache for its normalising pass. Leaves the
    /// batch moments in `ws.moments`.
    #[allow(clippy::too_many_arguments)]
    fn forward_impl(
        &self,
        x: &[T],
        epi: Epilogue<'_, T>,
        shape: &Shape,
        mode: Mode,
        y: &mut [T],
        saved: &mut Saved<T>,
        ws: &mut Workspace<T>,
    ) -> Result<()> {
        saved.clear();
        self.check_input(x, shape)?;
        if let Epilogue::AddRelu(residual, _) = epi {
            check_len("residual", residual.len(), shape.len())?;
        }
        check_len("y", y.len(), shape.len())?;
        let statistics = self.statistics_for(mode);
        if statistics == Statistics::Batch && shape.per_channel() < 2 {
            return Err(BatchNormError::TooFewValues {
                dims: shape.dims().to_vec(),
            });
        }
        if statistics == Statistics::Running {
            if let Some(ch) = self.running_var.iter().position(|v| v.to_f64() < 0.0) {
                let value = self.running_var[ch].to_f64();
                return Err(BatchNormError::NegativeRunningVar { channel: ch, value });
            }
        }

        // Batch Renormalization corrects batch statistics in training (it needs the running
        // statistics, so batch statistics mean training here).
        let renorm = match statistics {
            Statistics::Batch => self
                .config
                .renorm
                .map(|s| s.limits(self.num_batches_tracked)),
            Statistics::Running => None,
        };
        // The residual form writes its mask into `saved`, taken out for the passes; the
        // others leave none. (Every word is written: a mask of the same length is not cleared.)
        let mut mask = std::mem::take(&mut saved.relu_mask);
        let epi = match epi {
            Epilogue::AddRelu(residual, _) => {
                mask.resize(mask_words(shape.len()), 0);
                Epilogue::AddRelu(residual, Some(SharedMask::new(&mut mask)))
            }
            other => {
                mask.clear();
                other
            }
        };
        let c = self.channels;
        let geo = shape.geometry();
        let exec = self.exec(shape);
        saved.mean64.resize(c, 0.0);
        saved.invstd64.resize(c, 0.0);
        ws.maps.resize(c, NormMap::<T>::default());
        ws.moments.resize(c, Moments::EMPTY);
        match statistics {
            Statistics::Batch => {
                let seq = exec.sequential();
                two_passes(
                    exec,
                    geo,
                    1,
                    &mut ws.moment_parts,
                    &mut ws.board,
                    &mut ws.moments,
                    &mut ws.maps,
                    y,
                    moments_kernel(x, geo, exec),
                    Moments::merge,
                    |ch, m| self.channel_map(ch, m.mean, m.variance(), renorm),
                    |y, range, blocks, maps| {
                        normalize_channels(x, epi, y, geo, range, blocks, seq, maps)
                    },
                    |y, range, maps| {
                        normalize(x, epi, y, geo, range, exec, maps, &mut ws.wide_maps)
                    },
                );
            }
            Statistics::Running => {
                let running = self.running_mean.iter().zip(&self.running_var);
                let running = running.map(|(m, v)| (m.to_f64(), v.to_f64()));
                self.saved_statistics(saved, running);
                for (ch, map) in ws.maps.iter_mut().enumerate() {
                    let (mean, invstd) = (saved.mean64[ch], saved.invstd64[ch]);
                    let (weight, bias) = (self.gamma(ch), self.beta(ch));
                    *map = Normalization {
                        mean,
                        invstd,
                        weight,
                        bias,
                    }
                    .map::<T>();
                }
                normalize(x, epi, y, geo, 0..c, exec, &ws.maps, &mut ws.wide_maps);
            }
        }
        if statistics == Statistics::Batch {
            let moments = ws.moments.iter().map(|m| (m.mean, m.variance()));
            self.saved_statistics(saved, moments);
            if renorm.is_some() {
                let corrections = ws.moments.iter().enumerate();
                let corrections = corrections
                    .map(|(ch, m)| self.renorm_correction(ch, m.mean, m.variance(), renorm));
                saved.renorm.extend(corrections);
            }
        }
        saved
            .mean
            .extend(saved.mean64.iter().map(|&v| T::Param::from_f64(v)));
        saved
            .invstd
            .extend(saved.invstd64.iter().map(|&v| T::Param::from_f64(v)));
        // The bits past the last value, left from an earlier use, cleared: equal masks are
        // equal words.
        if let Some(last) = mask.last_mut() {
            let used = shape.len() % 64;
            if used != 0 {
                *last &= (1 << used) - 1;
            }
        }
        saved.relu_mask = mask;
        saved.shape = Some(*shape);
        saved.statistics = Some(statistics);
        Ok(())
    }

    /// Checks a backward call's shape and buffers against the module and `saved`; returns the
    /// statistics the forward used.
    fn check_backward(
        &self,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &[T],
    ) -> Result<Statistics> {
        self.check_input(x, shape)?;
        let (Some(saved_shape), Some(statistics)) = (saved.shape, saved.statistics) else {
            return Err(BatchNormError::SavedMismatch {
                saved: Vec::new(),
                got: shape.dims().to_vec(),
            });
        };
        if saved_shape.dims() != shape.dims() || saved_shape.geometry() != shape.geometry() {
            return Err(BatchNormError::SavedMismatch {
                saved: saved_shape.dims().to_vec(),
                got: shape.dims().to_vec(),
            });
        }
        check_len("dy", dy.len(), shape.len())?;
        check_len("dx", dx.len(), shape.len())?;
        Ok(statistics)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_impl(
        &self,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        saved: &Saved<T>,
        dx: &mut [T],
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
    ) -> Result<()> {
        let statistics = self.check_backward(x, dy, shape, saved, dx)?;
        let mut maps = std::mem::take(&mut ws.grad_maps);
        let plain = |_, grad| grad;
        let data = (x, dy, dx);
        self.backward_passes(
            data, shape, saved, statistics, grads, ws, &mut maps, None, plain,
        );
        ws.grad_maps = maps;
        Ok(())
    }

    /// The channel's normalisation as the forward that gave `saved` applied it.
    #[inline]
    fn saved_normalization(&self, saved: &Saved<T>, ch: usize) -> Normalization {
        let (weight, bias) = saved.correction(ch).affine(self.gamma(ch), self.beta(ch));
        Normalization {
            mean: saved.mean64[ch],
            invstd: saved.invstd64[ch],
            weight,
            bias,
        }
    }

    /// The two passes of a validated backward over `(x, dy, dx)`: the gradient sums (of `dy`
    /// through `gates`, if any), then dx with the maps `to_map` makes of each channel's
    /// [`GradMap`]; then the parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn backward_passes<M: DxMap>(
        &self,
        (x, dy, dx): (&[T], &[T], &mut [T]),
        shape: &Shape,
        saved: &Saved<T>,
        statistics: Statistics,
        grads: &mut Grads<T>,
        ws: &mut Workspace<T>,
        maps: &mut DxMaps<M>,
        gates: Option<&Gates>,
        to_map: impl Fn(usize, GradMap) -> M + Sync,
    ) {
        let c = self.channels;
        let geo = shape.geometry();
        let exec = self.exec(shape);
        let count = shape.per_channel() as u64;
        let grad_map = |ch: usize, sums: GradSums| {
            let norm = self.saved_normalization(saved, ch);
            let grad = match statistics {
                Statistics::Batch => InputGrad::batch(&norm, sums, count),
                Statistics::Running => InputGrad::frozen(&norm),
            };
            to_map(ch, grad.0)
        };
        ws.sums.resize(c, GradSums::default());
        maps.maps.resize(c, M::default());
        if geo.is_rows() {
            widen(&saved.mean64, &mut ws.wide_mean);
        }
        let seq = exec.sequential();
        let wide = &mut maps.wide;
        two_passes(
            exec,
            geo,
            2,
            &mut ws.sum_parts,
            &mut ws.board,
            &mut ws.sums,
            &mut maps.maps,
            dx,
            grad_sums_kernel(x, dy, geo, exec, &saved.mean64, &ws.wide_mean, gates),
            std::ops::Add::add,
            grad_map,
            |dx, range, blocks, maps| input_grad_channels(x, dy, dx, geo, range, blocks, seq, maps),
            |dx, range, maps| input_grad(x, dy, dx, geo, range, exec, maps, wide),
        );
        grads.weight.clear();
        grads.bias.clear();
        if self.config.affine {
            let sums = ws.sums.iter().zip(&saved.invstd64).enumerate();
            let weight = sums.map(|(ch, (s, &invstd))| {
                let grad = saved
                    .correction(ch)
                    .weight_grad(s.weight_grad(invstd), s.bias_grad());
                T::Param::from_f64(grad)
            });
            grads.weight.extend(weight);
            let bias = ws.sums.iter().map(|s| T::Param::from_f64(s.bias_grad()));
            grads.bias.extend(bias);
        }
    }
}

impl<T: Element> Saved<T> {
    /// Batch Renormalization's correction of channel `ch` (none without renormalisation).
    fn correction(&self, ch: usize) -> RenormCorrection {
        let corr = self.renorm.get(ch).copied();
        corr.unwrap_or(RenormCorrection::NONE)
    }

    /// Empties every buffer, keeping their allocations.
    fn clear(&mut self) {
        self.mean.clear();
        self.invstd.clear();
        self.mean64.clear();
        self.invstd64.clear();
        self.renorm.clear();
        self.shape = None;
        self.statistics = None;
    }
}

#[cfg(test)]
mod tests;
