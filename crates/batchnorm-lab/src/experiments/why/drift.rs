//! The distribution view of internal covariate shift: how the hidden pre-activations (the ReLU
//! inputs) move over training, on a fixed probe batch.

use batchnorm_nn::layers::Mode;
use batchnorm_nn::{NnError, Sequential};

use crate::experiments::fig1::QUANTILES;
use crate::percentile::percentiles;

/// One hidden layer's pre-activations over the probe batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    /// The 15th, 50th and 85th percentiles of the unit chosen by [`measure`]'s `units`.
    pub percentiles: [f64; 3],
    /// Per unit, the mean over the probe batch.
    pub means: Vec<f64>,
    /// Per unit, the standard deviation over the probe batch (divisor n).
    pub stds: Vec<f64>,
}

/// [`LayerStats`] of the inputs of `layers` (indices into `model.layers()`) over `probe`
/// (`n` samples), with the percentiles of unit `units[k]` of layer `layers[k]` (unit 0 past the
/// end of `units`); batch normalization with the probe's own statistics and running
/// statistics untouched; a noise layer applies its current draw.
///
/// # Errors
/// Any error of the training stack.
pub fn measure(
    model: &mut Sequential<f32>,
    probe: &[f32],
    n: usize,
    layers: &[usize],
    units: &[usize],
) -> Result<Vec<LayerStats>, NnError> {
    model.forward_from(probe, n, Mode::BatchStats)?;
    let mut out = Vec::with_capacity(layers.len());
    let mut column = Vec::with_capacity(n);
    for (k, &l) in layers.iter().enumerate() {
        let act = model.activation(l, n)?;
        let width = act.len() / n;
        let (mut means, mut stds) = (Vec::with_capacity(width), Vec::with_capacity(width));
        for u in 0..width {
            column.clear();
            column.extend(act.iter().skip(u).step_by(width).map(|&v| f64::from(v)));
            let mean = column.iter().sum::<f64>() / n as f64;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            means.push(mean);
            stds.push(var.sqrt());
        }
        column.clear();
        column.extend(
            act.iter()
                .skip(units.get(k).copied().unwrap_or(0))
                .step_by(width)
                .map(|&v| f64::from(v)),
        );
        let p = percentiles(&mut column, &QUANTILES);
        out.push(LayerStats {
            percentiles: [p[0], p[1], p[2]],
            means,
            stds,
        });
    }
    Ok(out)
}

/// Per channel, the standard deviation (divisor: the count) of `act`, `n` samples of
/// `channels` runs of equal length each (channels first): over the samples and the positions.
pub fn channel_stds(act: &[f32], n: usize, channels: usize) -> Vec<f64> {
    let inner = (act.len() / (n * channels).max(1)).max(1);
    let count = (n * inner) as f64;
    // Two passes (mean, then squared deviations): no cancellation when the mean is large.
    let runs = || {
        act.chunks_exact(inner)
            .enumerate()
            .map(|(k, r)| (k % channels, r))
    };
    let mut means = vec![0.0f64; channels];
    for (c, run) in runs() {
        means[c] += run.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
    }
    let mut vars = vec![0.0f64; channels];
    for (c, run) in runs() {
        vars[c] += run
            .iter()
            .map(|&v| (f64::from(v) - means[c]).powi(2))
            .sum::<f64>()
            / count;
    }
    vars.into_iter().map(f64::sqrt).collect()
}

/// The change between two measurements of the same layers: the mean over layers and units of
/// `|mean_b - mean_a| + |std_b - std_a|` (NaN for no units).
pub fn change(a: &[LayerStats], b: &[LayerStats]) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for (la, lb) in a.iter().zip(b) {
        for (((ma, sa), mb), sb) in la.means.iter().zip(&la.stds).zip(&lb.means).zip(&lb.stds) {
            sum += (mb - ma).abs() + (sb - sa).abs();
            count += 1;
        }
    }
    sum / count as f64
}

/// The drift of a run: the mean of [`change`] over consecutive measurements (NaN for fewer
/// than two).
pub fn drift(measurements: &[&[LayerStats]]) -> f64 {
    let changes: Vec<f64> = measurements
        .windows(2)
        .map(|w| change(w[0], w[1]))
        .collect();
    changes.iter().sum::<f64>() / changes.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(means: Vec<f64>, stds: Vec<f64>) -> LayerStats {
        LayerStats {
            percentiles: [0.0; 3],
            means,
            stds,
        }
    }

    #[test]
    fn drift_is_the_mean_absolute_change_of_unit_means_and_stds() {
        let a = [stats(vec![0.0, 1.0], vec![1.0, 1.0])];
        let b = [stats(vec![0.5, 1.0], vec![1.0, 2.0])];
        let c = [stats(vec![0.5, 1.0], vec![1.0, 2.0])];
        // (|0.5| + 0 + 0 + |1|) / 2 units = 0.75; then no change.
        assert_eq!(change(&a, &b), 0.75);
        assert_eq!(drift(&[&a, &b, &c]), 0.375);
        assert!(drift(&[&a]).is_nan());
    }

    #[test]
    fn channel_stds_pool_the_samples_and_positions_of_each_channel() {
        // 2 samples of 2 channels of 2 positions: channel 0 holds 1, 3, 5, 7; channel 1 all 4.
        let act = [1.0, 3.0, 4.0, 4.0, 5.0, 7.0, 4.0, 4.0];
        let s = channel_stds(&act, 2, 2);
        assert!((s[0] - 5.0f64.sqrt()).abs() < 1e-12, "{}", s[0]);
        assert_eq!(s[1], 0.0);
    }

    #[test]
    fn stats_are_those_of_the_probe_batch() {
        use batchnorm_nn::layers::{Layer, Relu};
        // A ReLU alone: its input is the probe itself.
        let layers: Vec<Box<dyn Layer<f32>>> = vec![Box::new(Relu::new(2).unwrap())];
        let mut model = Sequential::new(layers, 4).unwrap();
        let probe = [1.0, 10.0, 2.0, 10.0, 3.0, 10.0, 4.0, 10.0];
        let s = measure(&mut model, &probe, 4, &[0], &[]).unwrap();
        assert_eq!(s[0].means, [2.5, 10.0]);
        assert_eq!(s[0].stds, [1.25f64.sqrt(), 0.0]);
        // numpy.percentile([1, 2, 3, 4], [15, 50, 85]) = [1.45, 2.5, 3.55]
        for (g, w) in s[0].percentiles.iter().zip([1.45, 2.5, 3.55]) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        // The percentiles of unit 1 instead: all 10.
        let s = measure(&mut model, &probe, 4, &[0], &[1]).unwrap();
        assert_eq!(s[0].percentiles, [10.0; 3]);
    }
}
