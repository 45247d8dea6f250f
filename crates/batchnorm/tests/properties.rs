//! Invariants, checked by proptest on random shapes and data.

mod common;

use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Moments, Shape};
use common::{max_rel_err, Rng};
use proptest::prelude::*;

/// Random logical dims (N, C, spatial...) of rank 2..=5 with at least 2 values per channel.
fn dims() -> impl Strategy<Value = Vec<usize>> {
    (2usize..=5)
        .prop_flat_map(|rank| proptest::collection::vec(1usize..=5, rank))
        .prop_map(|mut d| {
            d[0] = d[0].max(2);
            d
        })
}

/// Channels-first data permuted to channels-last memory order.
fn to_channels_last(x: &[f64], dims: &[usize]) -> Vec<f64> {
    let (n, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..s {
                out[(b * s + p) * c + ch] = x[(b * c + ch) * s + p];
            }
        }
    }
    out
}

fn train(x: &[f64], dims: &[usize], layout: Layout, bn: &mut BatchNorm<f64>) -> Vec<f64> {
    let shape = Shape::new(dims, layout).unwrap();
    let mut y = vec![0.0; x.len()];
    bn.forward(x, &shape, Mode::Train, &mut y).unwrap();
    y
}

fn random_bn(c: usize, rng: &mut Rng, cfg: BatchNormConfig) -> BatchNorm<f64> {
    let mut bn = BatchNorm::new(c, cfg).unwrap();
    bn.weight = rng.normals(c, 1.0, 0.5);
    bn.bias = rng.normals(c, 0.0, 0.5);
    bn
}

proptest! {
    // A fixed seed: every run (and CI) checks the same 256 cases.
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The same logical tensor in either layout gives the same output and running statistics.
    /// Only the summation order differs: f64 rounding, well under 1e-12 at these sizes.
    #[test]
    fn layouts_agree(dims in dims(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.normals(dims.iter().product(), 3.0, 2.0);
        let mut a = random_bn(dims[1], &mut rng, BatchNormConfig::default());
        let mut b = a.clone();
        let ya = to_channels_last(&train(&x, &dims, Layout::ChannelsFirst, &mut a), &dims);
        let yb = train(&to_channels_last(&x, &dims), &dims, Layout::ChannelsLast, &mut b);
        prop_assert!(max_rel_err(&ya, &yb) < 1e-12);
        prop_assert!(max_rel_err(&a.running_mean, &b.running_mean) < 1e-12);
        prop_assert!(max_rel_err(&a.running_var, &b.running_var) < 1e-12);
    }

    /// x -> s * x + t per channel (s > 0) leaves the output unchanged, up to eps's share of the
    /// variance: eps = 1e-20 against variances >= 1e-5 moves y by < 1e-14.
    #[test]
    fn shift_and_scale_invariance(dims in dims(), seed in any::<u64>(), layout_cl in any::<bool>()) {
        let layout = if layout_cl { Layout::ChannelsLast } else { Layout::ChannelsFirst };
        let mut rng = Rng::new(seed);
        let c = dims[1];
        let n: usize = dims.iter().product();
        // Values per channel well spread: at least two distinct values 1 apart.
        let mut x = rng.normals(n, 0.0, 1.0);
        let shape = Shape::new(&dims, layout).unwrap();
        let g = shape.geometry();
        for ch in 0..c {
            x[ch * g.inner] = 5.0;
            x[((g.outer - 1) * c + ch) * g.inner] = -5.0;
        }
        let scale: Vec<f64> = (0..c).map(|_| 10f64.powf(4.0 * rng.uniform() - 2.0)).collect();
        let shift: Vec<f64> = rng.normals(c, 0.0, 1e3);
        let moved: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ch = common::reference::channel_of(&dims, layout, i);
                v * scale[ch] + shift[ch]
            })
            .collect();
        let cfg = BatchNormConfig { eps: 1e-20, ..BatchNormConfig::default() };
        let mut a = random_bn(c, &mut rng, cfg);
        let mut b = a.clone();
        let ya = train(&x, &dims, layout, &mut a);
        let yb = train(&moved, &dims, layout, &mut b);
        // The moved data is rounded to f64 at |t| up to ~5e3 (ulp 1e-12) against a spread down
        // to s = 1e-2: xhat moves by ~1e-10, times |gamma| < 3; hence 1e-9.
        prop_assert!(max_rel_err(&ya, &yb) < 1e-9, "{}", max_rel_err(&ya, &yb));
    }

    /// In training the output of each channel has mean beta and (biased) variance
    /// gamma^2 * var / (var + eps).
    #[test]
    fn output_moments(dims in dims(), seed in any::<u64>(), layout_cl in any::<bool>()) {
        let layout = if layout_cl { Layout::ChannelsLast } else { Layout::ChannelsFirst };
        let mut rng = Rng::new(seed);
        let c = dims[1];
        let x = rng.normals(dims.iter().product(), -2.0, 0.1);
        let mut bn = random_bn(c, &mut rng, BatchNormConfig::default());
        let y = train(&x, &dims, layout, &mut bn);
        let (_, var_x) = common::reference::RefBn::batch_stats(&x, &dims, layout);
        let (mean_y, var_y) = common::reference::RefBn::batch_stats(&y, &dims, layout);
        for ch in 0..c {
            let (g, b) = (bn.weight[ch], bn.bias[ch]);
            prop_assert!((mean_y[ch] - b).abs() < 1e-12 * (1.0 + b.abs() + g.abs()));
            let want = g * g * var_x[ch] / (var_x[ch] + 1e-5);
            prop_assert!((var_y[ch] - want).abs() < 1e-12 * (1.0 + want));
        }
    }

    /// Merging the moments of the pieces of a sequence, in any order, gives the moments of the
    /// whole: the same count exactly, mean and M2 to f64 rounding.
    #[test]
    fn merging_in_any_order(
        values in proptest::collection::vec(-1e3f64..1e3, 2..200),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        order in any::<u64>(),
    ) {
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(values.len() + 1)).collect();
        bounds.extend([0, values.len()]);
        bounds.sort_unstable();
        let mut parts: Vec<Moments> =
            bounds.windows(2).map(|w| Moments::of_slice(&values[w[0]..w[1]])).collect();
        // A deterministic shuffle from `order`.
        let mut rng = Rng::new(order);
        for i in (1..parts.len()).rev() {
            parts.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let merged = parts.into_iter().fold(Moments::EMPTY, Moments::merge);
        let whole = Moments::of_slice(&values);
        prop_assert_eq!(merged.count, whole.count);
        prop_assert!((merged.mean - whole.mean).abs() <= 1e-12 * 1e3);
        prop_assert!((merged.m2 - whole.m2).abs() <= 1e-12 * (1.0 + whole.m2));
    }
}
