//! The stages a BatchNorm call is made of, each usable on its own.
//!
//! ```text
//! forward   x ──moments──▶ Moments per channel (count, mean, M2)      [one per piece, rank, ...]
//!                          ──Moments::merge──▶ merged Moments           [Chan et al., in order]
//!                          ──Normalization::from_moments──▶ coefficients (+ weight, bias, eps)
//!           x ──normalize(coefficients)──▶ y
//!                          update_running_stats(merged Moments)         [global count, unbiased]
//! backward  x, dy ──grad_sums(mean)──▶ GradSums per channel (sum dy, sum dy (x - mean))
//!                          ──  +  ──▶ summed GradSums                   [across pieces, ranks]
//!                          ──InputGrad::batch(coefficients, sums, count)──▶ dx coefficients
//!           x, dy ──input_grad(dx coefficients)──▶ dx
//! ```
//!
//! [`BatchNorm`](crate::BatchNorm) is this pipeline in one process: its training forward is
//! `moments`, `from_moments`, `normalize` and `update_running_stats`, its backward `grad_sums`,
//! `InputGrad::batch` and `input_grad`, and the stages give its bits (`tests/stages.rs`). Where a
//! channel fits a core's L2 it runs both passes of a channel before the next (its statistics
//! pass leaves the channel in cache for the second); same kernels, same merge order, same bits.
//!
//! Split across processes (data-parallel training, SyncBatchNorm), each rank runs `moments` on
//! its slice of the batch, the ranks exchange their [`Moments`] (three numbers per channel) and
//! every rank merges them in rank order, so every rank gets identical statistics, equal to one
//! process's on the whole batch up to rounding, for any split. Backward sums the [`GradSums`]
//! the same way and passes the global count to [`InputGrad::batch`].
//!
//! ```
//! use batchnorm::stages::{update_running_stats, Kernels, Normalization};
//! use batchnorm::{Layout, Moments, Par, Shape};
//!
//! // Two "ranks" holding 3 and 5 samples of a (N, 2) batch.
//! let k = Kernels::new(Par::Seq);
//! let a: Vec<f32> = vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0];
//! let b: Vec<f32> = vec![4.0, 40.0, 5.0, 50.0, 6.0, 60.0, 7.0, 70.0, 8.0, 80.0];
//! let (sa, sb) = (Shape::new(&[3, 2], Layout::ChannelsFirst)?, Shape::new(&[5, 2], Layout::ChannelsFirst)?);
//! let (mut ma, mut mb) = ([Moments::EMPTY; 2], [Moments::EMPTY; 2]);
//! k.moments(&a, &sa, &mut ma)?;
//! k.moments(&b, &sb, &mut mb)?;
//! let merged: Vec<Moments> = ma.iter().zip(&mb).map(|(x, y)| x.merge(*y)).collect();
//! assert_eq!(merged[0].count, 8);
//! assert_eq!(merged[0].mean, 4.5);
//!
//! // Both ranks normalise with the global statistics.
//! let coefs: Vec<Normalization> =
//!     merged.iter().map(|m| Normalization::from_moments(m, 1e-5, 1.0, 0.0)).collect();
//! let mut ya = vec![0.0f32; a.len()];
//! k.normalize(&a, &sa, &coefs, &mut ya)?;
//!
//! // Running statistics move by the global batch (unbiased variance over 8 values).
//! let (mut rm, mut rv) = (vec![0.0f32; 2], vec![1.0f32; 2]);
//! update_running_stats(&mut rm, &mut rv, &merged, 0.1)?;
//! assert!((rm[0] - 0.45).abs() < 1e-6);
//! # Ok::<(), batchnorm::BatchNormError>(())
//! ```

use std::marker::PhantomData;

use crate::backward::{grad_sums, input_grad, relu_grad, GradMap};
use crate::config::BatchNormConfig;
use crate::element::Element;
use crate::error::{BatchNormError, Result};
use crate::forward::{normalize, Epilogue, NormMap};
use crate::layout::Shape;
use crate::par::Par;
use crate::plan::{parts_len, Exec, WideMaps};
use crate::simd::{multiversion, Isa};
use crate::stats::{channel_moments, Moments};

pub use crate::backward::GradSums;
pub use crate::running_stats::{update_factor, update_running_stats};

/// How the stages run: on which threads ([`Par`]) and with which instruction set ([`Isa`]).
/// Results are bitwise the same for every choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    par: Par,
    isa: Isa,
}

impl Default for Kernels {
    /// On the calling thread, with the best instruction set of this CPU.
    fn default() -> Self {
        Self::new(Par::Seq)
    }
}

/// The per-channel affine map `y = (x - mean) * invstd * weight + bias` of a normalising pass,
/// in `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// The mean subtracted.
    pub mean: f64,
    /// `1 / sqrt(var + eps)`.
    pub invstd: f64,
    /// gamma (1 without affine parameters).
    pub weight: f64,
    /// beta (0 without affine parameters).
    pub bias: f64,
}

impl Normalization {
    /// With batch statistics: the mean and the BIASED variance `M2 / count` of `moments`.
    pub fn from_moments(moments: &Moments, eps: f64, weight: f64, bias: f64) -> Self {
        Self::from_mean_var(moments.mean, moments.variance(), eps, weight, bias)
    }

    /// With a given mean and variance (the running statistics, in evaluation).
    pub fn from_mean_var(mean: f64, var: f64, eps: f64, weight: f64, bias: f64) -> Self {
        Self {
            mean,
            invstd: invstd(var, eps),
            weight,
            bias,
        }
    }

    /// The map the kernels apply to `T` tensors (mean split in a high and a low part for `f32`).
    pub(crate) fn map<T: Element>(&self) -> NormMap<T> {
        NormMap::<T>::new(self.mean, self.invstd, self.weight, self.bias)
    }
}

/// `1 / sqrt(var + eps)`.
#[inline]
pub(crate) fn invstd(var: f64, eps: f64) -> f64 {
    1.0 / (var + eps).sqrt()
}

multiversion! {
    /// [`invstd`] of every variance in `v`, in place, on the kernel path: correctly rounded
    /// square roots and divisions, so the same bits on every path, eight at a time on AVX-512
    /// against two on the baseline. (`T` only picks the instantiation.)
    fn invstd_in_place<T>(v: &mut [f64], eps: f64, _of: PhantomData<T>) {
        for v in v.iter_mut() {
            *v = invstd(*v, eps);
        }
    }
}

/// The per-channel map of the input gradient, `dx = k * ((dy - a) - (x - mean) * b)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputGrad(pub(crate) GradMap);

impl InputGrad {
    /// After batch statistics over `count` values (all ranks' when the batch is split), given
    /// the channel's gradient sums over those values: `k = weight * invstd`,
    /// `a = sum(dy) / count`, `b = sum(dy (x - mean)) * invstd^2 / count`.
    #[inline]
    pub fn batch(norm: &Normalization, sums: GradSums, count: u64) -> Self {
        // Multiplied by `1 / count`, which a loop over channels computes once: the divisions
        // per channel, with the call of the normalisation around them, were over a quarter of
        // a 2x1024 backward (10.4 -> 7.5 us, one thread, AMD EPYC Zen 4).
        let (per, invstd) = (1.0 / count as f64, norm.invstd);
        let a = sums.dy * per;
        let b = sums.dy_xmu * invstd * invstd * per;
        Self(GradMap::new(norm.mean, norm.weight * invstd, a, b))
    }

    /// After running statistics (frozen BN): `dx = dy * weight * invstd`.
    pub fn frozen(norm: &Normalization) -> Self {
        Self(GradMap::new(norm.mean, norm.weight * norm.invstd, 0.0, 0.0))
    }
}

impl Kernels {
    /// The best instruction set of this CPU, threads as `par` says.
    pub fn new(par: Par) -> Self {
        Self {
            par,
            isa: Isa::detect(),
        }
    }

    /// The same, with the kernel path `isa`.
    ///
    /// # Errors
    /// [`BatchNormError::UnsupportedIsa`] if this CPU cannot run it.
    pub fn with_isa(self, isa: Isa) -> Result<Self> {
        if !isa.is_supported() {
            return Err(BatchNormError::UnsupportedIsa { isa });
        }
        Ok(Self { isa, ..self })
    }

    /// The same, on the threads `par` says.
    pub fn with_par(self, par: Par) -> Self {
        Self { par, ..self }
    }

    /// The threading choice.
    pub fn par(&self) -> Par {
        self.par
    }

    /// The kernel path.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The execution choices of a call over `shape`, for `T` tensors.
    pub(crate) fn exec<T>(&self, shape: &Shape) -> Exec {
        Exec::new(self.isa, self.par, shape.len(), std::mem::size_of::<T>())
    }

    /// The per-channel moments `(count, mean, M2)` of `x` (memory order of `shape`) into
    /// `out`, one per channel, accumulated in `f64` (see [`Moments`]).
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `x` or `out`.
    pub fn moments<T: Element>(&self, x: &[T], shape: &Shape, out: &mut [Moments]) -> Result<()> {
        check_lens(shape, &[("x", x.len())], &[("moments", out.len())])?;
        let geo = shape.geometry();
        let mut parts = vec![Moments::EMPTY; parts_len(geo, geo.channels)];
        channel_moments(
            x,
            geo,
            0..geo.channels,
            self.exec::<T>(shape),
            &mut parts,
            out,
        );
        Ok(())
    }

    /// `y = (x - mean) * invstd * weight + bias` with each channel's [`Normalization`], rounded
    /// once to `T` (see `docs/design.md` for how `f32` stays exact).
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `x`, `y` or `coefficients`.
    pub fn normalize<T: Element>(
        &self,
        x: &[T],
        shape: &Shape,
        coefficients: &[Normalization],
        y: &mut [T],
    ) -> Result<()> {
        self.normalize_with(x, Epilogue::None, shape, coefficients, y)
    }

    /// `y = relu(bn(x))`: [`normalize`](Self::normalize) followed by a ReLU in the same pass
    /// (`max(v, 0)` before the one rounding to `T`; NaN stays NaN). Equal, bit for bit, to a
    /// ReLU applied to `normalize`'s output.
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `x`, `y` or `coefficients`.
    pub fn normalize_relu<T: Element>(
        &self,
        x: &[T],
        shape: &Shape,
        coefficients: &[Normalization],
        y: &mut [T],
    ) -> Result<()> {
        self.normalize_with(x, Epilogue::Relu, shape, coefficients, y)
    }

    /// `y = relu(bn(x) + residual)` (the tail of a residual block) in one pass, `residual` in
    /// the memory order of `x`. For `f32` tensors `bn(x)` is rounded to `f32` before the
    /// addition (as separate operations would); for the other types the sum is formed in `f64`
    /// and rounded once, so 16-bit outputs are correctly rounded.
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `x`, `residual`, `y` or `coefficients`.
    pub fn normalize_add_relu<T: Element>(
        &self,
        x: &[T],
        residual: &[T],
        shape: &Shape,
        coefficients: &[Normalization],
        y: &mut [T],
    ) -> Result<()> {
        check_len("residual", residual.len(), shape.len())?;
        self.normalize_with(x, Epilogue::AddRelu(residual, None), shape, coefficients, y)
    }

    fn normalize_with<T: Element>(
        &self,
        x: &[T],
        epi: Epilogue<'_, T>,
        shape: &Shape,
        coefficients: &[Normalization],
        y: &mut [T],
    ) -> Result<()> {
        let tensors = [("x", x.len()), ("y", y.len())];
        check_lens(shape, &tensors, &[("coefficients", coefficients.len())])?;
        let maps: Vec<NormMap<T>> = coefficients.iter().map(Normalization::map::<T>).collect();
        let geo = shape.geometry();
        let exec = self.exec::<T>(shape);
        normalize(
            x,
            epi,
            y,
            geo,
            0..geo.channels,
            exec,
            &maps,
            &mut WideMaps::default(),
        );
        Ok(())
    }

    /// The gradient through a ReLU whose output was `y`: `out = dy` where `y > 0`, and 0 where
    /// `y <= 0` (at a pre-activation of exactly 0 too, PyTorch's convention); NaN `y` passes
    /// `dy`. After [`normalize_relu`](Self::normalize_relu) the backward of the normalisation
    /// takes `out` as its `dy`; after [`normalize_add_relu`](Self::normalize_add_relu) `out` is
    /// also the gradient of the residual.
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `y`, `dy` or `out`.
    pub fn relu_grad<T: Element>(
        &self,
        y: &[T],
        dy: &[T],
        shape: &Shape,
        out: &mut [T],
    ) -> Result<()> {
        let tensors = [("y", y.len()), ("dy", dy.len()), ("out", out.len())];
        check_lens(shape, &tensors, &[])?;
        relu_grad(y, dy, out, self.exec::<T>(shape));
        Ok(())
    }

    /// The per-channel gradient sums `(sum dy, sum dy (x - mean))` of `x` and `dy` around
    /// `mean` (one per channel: the mean that normalised `x`), into `out`, in `f64`.
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `x`, `dy`, `mean` or `out`.
    pub fn grad_sums<T: Element>(
        &self,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        mean: &[f64],
        out: &mut [GradSums],
    ) -> Result<()> {
        let per_channel = [("mean", mean.len()), ("sums", out.len())];
        check_lens(shape, &[("x", x.len()), ("dy", dy.len())], &per_channel)?;
        let geo = shape.geometry();
        let c = geo.channels;
        let mut parts = vec![GradSums::default(); parts_len(geo, c)];
        let exec = self.exec::<T>(shape);
        let mut wide = Vec::new();
        grad_sums(x, dy, geo, 0..c, exec, mean, &mut parts, &mut wide, out);
        Ok(())
    }

    /// `dx` with each channel's [`InputGrad`], evaluated in `f64` and rounded once to `T`.
    ///
    /// # Errors
    /// [`BatchNormError::LengthMismatch`] for `x`, `dy`, `dx` or `coefficients`.
    pub fn input_grad<T: Element>(
        &self,
        x: &[T],
        dy: &[T],
        shape: &Shape,
        coefficients: &[InputGrad],
        dx: &mut [T],
    ) -> Result<()> {
        let tensors = [("x", x.len()), ("dy", dy.len()), ("dx", dx.len())];
        check_lens(shape, &tensors, &[("coefficients", coefficients.len())])?;
        let maps: Vec<GradMap> = coefficients.iter().map(|g| g.0).collect();
        let geo = shape.geometry();
        let exec = self.exec::<T>(shape);
        input_grad(
            x,
            dy,
            dx,
            geo,
            0..geo.channels,
            exec,
            &maps,
            &mut WideMaps::default(),
        );
        Ok(())
    }
}

/// The checks every batch normalization module makes before a call: `shape` has the module's
/// `channels`, `x` holds the tensor of `shape`, and the module's `[weight, bias, running_mean,
/// running_var]` hold one value per channel when `config` has them (affine, tracking), none
/// otherwise (their fields are public, so they may have been resized).
///
/// # Errors
/// [`BatchNormError::ChannelMismatch`], [`BatchNormError::LengthMismatch`] naming the buffer.
pub fn check_input<T, P>(
    channels: usize,
    config: &BatchNormConfig,
    [weight, bias, running_mean, running_var]: [&[P]; 4],
    x: &[T],
    shape: &Shape,
) -> Result<()> {
    if shape.channels() != channels {
        return Err(BatchNormError::ChannelMismatch {
            expected: channels,
            got: shape.channels(),
        });
    }
    check_len("x", x.len(), shape.len())?;
    let affine = if config.affine { channels } else { 0 };
    let tracked = if config.track_running_stats {
        channels
    } else {
        0
    };
    check_len("weight", weight.len(), affine)?;
    check_len("bias", bias.len(), affine)?;
    check_len("running_mean", running_mean.len(), tracked)?;
    check_len("running_var", running_var.len(), tracked)
}

/// Checks that each named buffer of `tensors` holds the tensor of `shape`, and each of
/// `per_channel` one value per channel.
fn check_lens(
    shape: &Shape,
    tensors: &[(&'static str, usize)],
    per_channel: &[(&'static str, usize)],
) -> Result<()> {
    for &(buffer, got) in tensors {
        check_len(buffer, got, shape.len())?;
    }
    for &(buffer, got) in per_channel {
        check_len(buffer, got, shape.channels())?;
    }
    Ok(())
}

pub(crate) fn check_len(buffer: &'static str, got: usize, expected: usize) -> Result<()> {
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
