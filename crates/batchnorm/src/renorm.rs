//! Batch Renormalization (Ioffe, 2017): training-time normalisation corrected towards the
//! running statistics, so that a small or unrepresentative batch trains on (nearly) what the
//! network computes at inference.
//!
//! For each channel, with the batch's mean `mean_B` and biased variance `var_B`, and the running
//! statistics `mu`, `var` as they were before this step's update:
//!
//! ```text
//! sigma_B = sqrt(var_B + eps)        sigma = sqrt(var + eps)
//! r = clip(sigma_B / sigma, 1 / rmax, rmax)
//! d = clip((mean_B - mu) / sigma, -dmax, dmax)
//! y = ((x - mean_B) / sigma_B * r + d) * weight + bias
//! ```
//!
//! `r` and `d` are constants for backward (the paper's `stop_gradient`): the gradient is plain
//! BN's with weight `weight * r`, and `d weight = r * sum(dy * xhat) + d * sum(dy)`. With `r = 1`
//! and `d = 0` (rmax 1, dmax 0: the warm-up) it is plain BN, bit for bit; unclipped, `y` is the
//! normalisation by the running statistics. Evaluation is plain BN's.
//!
//! Enable it with [`BatchNormConfig::renorm`](crate::BatchNormConfig::renorm):
//!
//! ```
//! use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Renorm, Shape};
//! let cfg = BatchNormConfig { renorm: Some(Renorm::fixed(3.0, 5.0)), ..BatchNormConfig::default() };
//! let mut bn: BatchNorm<f32> = BatchNorm::new(1, cfg)?;
//! let shape = Shape::new(&[2, 1], Layout::ChannelsFirst)?;
//! let (x, mut y) = ([1.0, 3.0], [0.0; 2]);
//! let saved = bn.forward(&x, &shape, Mode::Train, &mut y)?;
//! // sigma_B = sqrt(1 + eps), sigma = sqrt(1 + eps): r = 1; d = (2 - 0) / sigma, clipped to 5.
//! let c = saved.renorm()[0];
//! assert!((c.r - 1.0).abs() < 1e-12 && (c.d - 2.0).abs() < 1e-4);
//! assert!((y[0] - 1.0).abs() < 1e-4 && (y[1] - 3.0).abs() < 1e-4); // x - mu, as running stats would give
//! # Ok::<(), batchnorm::BatchNormError>(())
//! ```
//!
//! Differences from tf-keras `BatchNormalization(renorm=True)`: `mu` and `sigma` come from this
//! module's running statistics (PyTorch's: one momentum, unbiased variance, `sigma` from the
//! averaged variance), where tf-keras keeps separate moving averages of the mean and of the
//! standard deviation with their own `renorm_momentum`; and rmax/dmax follow a [`Renorm`]
//! schedule in steps (`num_batches_tracked`), where tf-keras takes `renorm_clipping` values.

use crate::error::{BatchNormError, Result};

/// Batch Renormalization's clipping limits and how they grow with the training step.
///
/// For the first `warmup_steps` steps the limits are rmax 1 and dmax 0 (plain BN); then they
/// grow linearly, reaching `rmax` at step `rmax_steps` and `dmax` at step `dmax_steps`, and stay
/// there. The step is the module's `num_batches_tracked` before the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Renorm {
    /// Final bound on `r` (and `1/rmax` below). Finite, at least 1.
    pub rmax: f64,
    /// Final bound on `|d|`. Finite, at least 0.
    pub dmax: f64,
    /// Steps of plain BN before the limits start to grow.
    pub warmup_steps: u64,
    /// The step at which `rmax` is reached (at or before `warmup_steps`: at once).
    pub rmax_steps: u64,
    /// The step at which `dmax` is reached (at or before `warmup_steps`: at once).
    pub dmax_steps: u64,
}

impl Renorm {
    /// The paper's schedule (Ioffe 2017, section 4): plain BN for 5,000 steps, then rmax grows
    /// to 3 by step 40,000 and dmax to 5 by step 25,000.
    pub fn paper() -> Self {
        Self {
            rmax: 3.0,
            dmax: 5.0,
            warmup_steps: 5_000,
            rmax_steps: 40_000,
            dmax_steps: 25_000,
        }
    }

    /// The same limits at every step; set with
    /// [`BatchNorm::set_renorm`](crate::BatchNorm::set_renorm) before a call, it gives the
    /// limits per call.
    pub fn fixed(rmax: f64, dmax: f64) -> Self {
        Self {
            rmax,
            dmax,
            warmup_steps: 0,
            rmax_steps: 0,
            dmax_steps: 0,
        }
    }

    /// Checks the limits.
    ///
    /// # Errors
    /// [`BatchNormError::InvalidRenorm`] when `rmax` is not a finite number >= 1 or `dmax` not a
    /// finite number >= 0.
    pub fn validate(&self) -> Result<()> {
        if !(self.rmax.is_finite() && self.rmax >= 1.0) {
            return Err(BatchNormError::InvalidRenorm {
                limit: "rmax",
                value: self.rmax,
            });
        }
        if !(self.dmax.is_finite() && self.dmax >= 0.0) {
            return Err(BatchNormError::InvalidRenorm {
                limit: "dmax",
                value: self.dmax,
            });
        }
        Ok(())
    }

    /// The limits at training step `step` (batches seen before this one).
    pub fn limits(&self, step: u64) -> RenormLimits {
        let grown = |end: u64| {
            if step < self.warmup_steps {
                0.0
            } else if end <= self.warmup_steps {
                1.0
            } else {
                let span = (end - self.warmup_steps) as f64;
                ((step - self.warmup_steps) as f64 / span).min(1.0)
            }
        };
        RenormLimits {
            rmax: 1.0 + (self.rmax - 1.0) * grown(self.rmax_steps),
            dmax: self.dmax * grown(self.dmax_steps),
        }
    }
}

/// The clipping limits of one step: `r` in `[1/rmax, rmax]`, `d` in `[-dmax, dmax]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenormLimits {
    /// Bound on `r`, at least 1.
    pub rmax: f64,
    /// Bound on `|d|`, at least 0.
    pub dmax: f64,
}

impl RenormLimits {
    /// A channel's correction from its batch mean and biased variance and the running mean and
    /// unbiased variance (before this step's update), in `f64`. NaN in any input gives NaN `r`
    /// or `d`, so the channel's output is NaN, as plain BN's would be.
    pub fn correction(
        &self,
        batch_mean: f64,
        batch_var: f64,
        running_mean: f64,
        running_var: f64,
        eps: f64,
    ) -> RenormCorrection {
        let sigma = (running_var + eps).sqrt();
        let r = ((batch_var + eps).sqrt() / sigma).clamp(1.0 / self.rmax, self.rmax);
        let d = ((batch_mean - running_mean) / sigma).clamp(-self.dmax, self.dmax);
        RenormCorrection { r, d }
    }
}

/// One channel's Batch Renormalization correction: `xhat_renorm = xhat * r + d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenormCorrection {
    /// The scale, `sigma_B / sigma` clipped.
    pub r: f64,
    /// The shift, `(mean_B - mu) / sigma` clipped.
    pub d: f64,
}

impl RenormCorrection {
    /// No correction (`r = 1`, `d = 0`): plain BN.
    pub const NONE: Self = Self { r: 1.0, d: 0.0 };

    /// The weight and bias that apply the correction through plain BN's map:
    /// `(weight * r, bias + weight * d)` (exactly `(weight, bias)` for [`Self::NONE`]).
    pub fn affine(&self, weight: f64, bias: f64) -> (f64, f64) {
        let bias = if self.d == 0.0 {
            bias
        } else {
            bias + weight * self.d
        };
        (weight * self.r, bias)
    }

    /// `d loss / d weight = r * sum(dy * xhat) + d * sum(dy)`, from plain BN's
    /// `sum(dy * xhat)` and `sum(dy)`.
    pub fn weight_grad(&self, dy_xhat: f64, dy: f64) -> f64 {
        if self.d == 0.0 {
            self.r * dy_xhat
        } else {
            self.r * dy_xhat + self.d * dy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_schedule_warms_up_then_ramps_linearly() {
        let s = Renorm::paper();
        assert_eq!(
            s.limits(0),
            RenormLimits {
                rmax: 1.0,
                dmax: 0.0
            }
        );
        assert_eq!(
            s.limits(4_999),
            RenormLimits {
                rmax: 1.0,
                dmax: 0.0
            }
        );
        assert_eq!(
            s.limits(5_000),
            RenormLimits {
                rmax: 1.0,
                dmax: 0.0
            }
        );
        // Halfway through each ramp.
        assert_eq!(s.limits(15_000).dmax, 2.5);
        assert_eq!(s.limits(22_500).rmax, 2.0);
        assert_eq!(s.limits(25_000).dmax, 5.0);
        assert_eq!(
            s.limits(40_000),
            RenormLimits {
                rmax: 3.0,
                dmax: 5.0
            }
        );
        assert_eq!(
            s.limits(1_000_000),
            RenormLimits {
                rmax: 3.0,
                dmax: 5.0
            }
        );
        let fixed = Renorm::fixed(2.0, 1.0);
        assert_eq!(
            fixed.limits(0),
            RenormLimits {
                rmax: 2.0,
                dmax: 1.0
            }
        );
    }

    #[test]
    fn corrections_clip_and_propagate_nan() {
        let lim = RenormLimits {
            rmax: 2.0,
            dmax: 1.0,
        };
        // sigma_B = 4 (var 16 - eps), sigma = 1: r clipped to 2; mean off by 0.5 sigma.
        let eps = 1e-5;
        let c = lim.correction(0.5, 16.0 - eps, 0.0, 1.0 - eps, eps);
        assert_eq!(c, RenormCorrection { r: 2.0, d: 0.5 });
        let c = lim.correction(-9.0, 0.01 - eps, 0.0, 1.0 - eps, eps);
        assert_eq!((c.r, c.d), (0.5, -1.0));
        let c = lim.correction(f64::NAN, 1.0, 0.0, 1.0, eps);
        assert!(c.d.is_nan());
        let c = lim.correction(0.0, 1.0, 0.0, f64::NAN, eps);
        assert!(c.r.is_nan() && c.d.is_nan());
    }

    #[test]
    fn no_correction_leaves_the_affine_map_bit_for_bit() {
        let (w, b) = (0.3_f64, -0.0_f64);
        let (w2, b2) = RenormCorrection::NONE.affine(w, b);
        assert_eq!(w2.to_bits(), w.to_bits());
        assert_eq!(b2.to_bits(), b.to_bits());
        assert_eq!(RenormCorrection::NONE.weight_grad(1.5, 7.0), 1.5);
        let c = RenormCorrection { r: 2.0, d: 0.5 };
        assert_eq!(c.affine(3.0, 1.0), (6.0, 2.5));
        assert_eq!(c.weight_grad(1.5, 7.0), 6.5);
    }

    #[test]
    fn bad_limits_are_refused() {
        for (rmax, dmax) in [
            (0.5, 1.0),
            (f64::NAN, 1.0),
            (2.0, -1.0),
            (2.0, f64::INFINITY),
        ] {
            assert!(matches!(
                Renorm::fixed(rmax, dmax).validate(),
                Err(BatchNormError::InvalidRenorm { .. })
            ));
        }
        assert!(Renorm::paper().validate().is_ok());
    }
}
