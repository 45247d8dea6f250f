//! The moving averages of the batch statistics (PyTorch's running mean and unbiased variance).

use crate::element::Float;
use crate::error::{BatchNormError, Result};
use crate::stages::check_len;
use crate::stats::Moments;

/// `running = (1 - f) * running + f * batch` for the mean and for the UNBIASED variance
/// `M2 / (m - 1)`, computed in `f64` and rounded once.
pub(crate) fn update<P: Float>(
    running_mean: &mut [P],
    running_var: &mut [P],
    batch: &[Moments],
    factor: f64,
) {
    for ((rm, rv), m) in running_mean
        .iter_mut()
        .zip(running_var.iter_mut())
        .zip(batch)
    {
        *rm = P::from_f64((1.0 - factor) * rm.to_f64() + factor * m.mean);
        *rv = P::from_f64((1.0 - factor) * rv.to_f64() + factor * m.unbiased_variance());
    }
}

/// The weight of the new batch in the running averages: `momentum`, or `1 /
/// num_batches_tracked` (the cumulative average) when it is `None`; `num_batches_tracked`
/// already counts this batch.
pub fn update_factor(momentum: Option<f64>, num_batches_tracked: u64) -> f64 {
    momentum.unwrap_or(1.0 / num_batches_tracked as f64)
}

/// `running = (1 - factor) * running + factor * batch` for the mean and for the UNBIASED
/// variance `M2 / (count - 1)` of each channel's `batch` moments (merged over every piece of
/// the batch: the count is the global one), computed in `f64` and rounded once.
///
/// # Errors
/// [`BatchNormError::LengthMismatch`] when the three slices differ in length;
/// [`BatchNormError::TooFewMoments`] when a channel has fewer than 2 values.
pub fn update_running_stats<P: Float>(
    running_mean: &mut [P],
    running_var: &mut [P],
    batch: &[Moments],
    factor: f64,
) -> Result<()> {
    check_len("running_mean", running_mean.len(), batch.len())?;
    check_len("running_var", running_var.len(), batch.len())?;
    if let Some((channel, m)) = batch.iter().enumerate().find(|(_, m)| m.count < 2) {
        return Err(BatchNormError::TooFewMoments {
            channel,
            count: m.count,
        });
    }
    crate::running_stats::update(running_mean, running_var, batch, factor);
    Ok(())
}
