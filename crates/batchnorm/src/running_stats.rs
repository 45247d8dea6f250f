//! The moving averages of the batch statistics.

use crate::element::Float;
use crate::stats::Moments;

/// The weight of the new batch: `momentum`, or `1 / num_batches_tracked` (the cumulative
/// average) when `momentum` is `None`. `num_batches_tracked` already counts this batch.
pub(crate) fn update_factor(momentum: Option<f64>, num_batches_tracked: u64) -> f64 {
    momentum.unwrap_or(1.0 / num_batches_tracked as f64)
}

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
