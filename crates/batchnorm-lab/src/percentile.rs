//! Percentiles of a sample.

/// The `q`-th percentiles (`q` in [0, 100]) of `values`, by linear interpolation between order
/// statistics (NumPy's default, "linear"; Hyndman and Fan's type 7): with the sorted sample
/// `v_0 <= ... <= v_{n-1}` and `h = (n - 1) q / 100`, the result is
/// `v_floor(h) + (h - floor(h)) (v_ceil(h) - v_floor(h))`.
///
/// Sorts `values` in place (NaNs last, by `total_cmp`). Returns NaN for each `q` when `values` is
/// empty or `q` is outside [0, 100].
///
/// ```
/// use batchnorm_lab::percentile::percentiles;
/// let mut v = [4.0, 1.0, 3.0, 2.0, 5.0];
/// assert_eq!(percentiles(&mut v, &[0.0, 50.0, 85.0, 100.0]), vec![1.0, 3.0, 4.4, 5.0]);
/// ```
pub fn percentiles(values: &mut [f64], qs: &[f64]) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    qs.iter()
        .map(|&q| {
            if values.is_empty() || !(0.0..=100.0).contains(&q) {
                return f64::NAN;
            }
            let h = (values.len() - 1) as f64 * q / 100.0;
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(values.len() - 1);
            values[lo] + (h - lo as f64) * (values[hi] - values[lo])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn matches_numpy_linear() {
        // numpy.percentile(np.arange(1000), [15, 50, 85]) = [149.85, 499.5, 849.15]
        let mut v: Vec<f64> = (0..1000).rev().map(f64::from).collect();
        let p = percentiles(&mut v, &[15.0, 50.0, 85.0]);
        for (g, w) in p.iter().zip([149.85, 499.5, 849.15]) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        assert_eq!(percentiles(&mut [7.0], &[15.0, 85.0]), vec![7.0, 7.0]);
        assert!(percentiles(&mut [], &[50.0])[0].is_nan());
        assert!(percentiles(&mut [1.0, 2.0], &[101.0])[0].is_nan());
    }
}
