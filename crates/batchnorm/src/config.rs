//! Configuration and mode.

use crate::error::{BatchNormError, Result};
use crate::renorm::Renorm;

/// How a [`BatchNorm`](crate::BatchNorm) is set up; the defaults are PyTorch's.
///
/// ```
/// use batchnorm::BatchNormConfig;
/// let cfg = BatchNormConfig { momentum: None, ..BatchNormConfig::default() };
/// assert_eq!(cfg.eps, 1e-5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root. Default `1e-5`. Must be finite and > 0.
    pub eps: f64,
    /// Weight of the new batch in the running averages: `new = (1 - m) * old + m * batch`.
    /// `None` gives the cumulative average, with factor `1 / num_batches_tracked` (counted after
    /// this batch). Default `Some(0.1)`. Must lie in [0, 1].
    pub momentum: Option<f64>,
    /// Learn a per-channel scale `weight` (gamma, init 1) and shift `bias` (beta, init 0).
    /// Default `true`; when `false` gamma = 1, beta = 0 and no parameter gradients exist.
    pub affine: bool,
    /// Keep `running_mean` (init 0), `running_var` (init 1) and `num_batches_tracked`.
    /// Default `true`; when `false` evaluation also uses batch statistics.
    pub track_running_stats: bool,
    /// Batch Renormalization in training ([`crate::renorm`]): the batch statistics corrected
    /// towards the running ones, within limits that follow this schedule. Default `None`
    /// (plain BN). Needs `track_running_stats`.
    pub renorm: Option<Renorm>,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
            renorm: None,
        }
    }
}

impl BatchNormConfig {
    /// Checks `eps`, `momentum` and `renorm`.
    ///
    /// # Errors
    /// [`BatchNormError::InvalidEps`], [`BatchNormError::InvalidMomentum`],
    /// [`BatchNormError::InvalidRenorm`], or [`BatchNormError::RenormWithoutRunningStats`].
    pub fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(BatchNormError::InvalidEps { eps: self.eps });
        }
        if let Some(m) = self.momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(BatchNormError::InvalidMomentum { momentum: m });
            }
        }
        if let Some(renorm) = &self.renorm {
            renorm.validate()?;
            if !self.track_running_stats {
                return Err(BatchNormError::RenormWithoutRunningStats);
            }
        }
        Ok(())
    }
}

/// Training or evaluation: always an explicit argument, never inferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Normalise with the batch statistics and, when tracking, update the running statistics.
    Train,
    /// Normalise with the running statistics (batch statistics when not tracking).
    Eval,
}

/// Which statistics normalised a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Statistics {
    /// The mean and biased variance of the batch itself.
    Batch,
    /// The stored running mean and variance.
    Running,
}
