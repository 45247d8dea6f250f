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

/// Batch Renormalization's forward against its definition.
mod renorm {
    use super::*;
    use batchnorm::{Renorm, Saved};

    fn config(renorm: Renorm) -> BatchNormConfig {
        BatchNormConfig {
            renorm: Some(renorm),
            ..BatchNormConfig::default()
        }
    }

    fn setup<T: batchnorm::Element<Param = f32>>(
        cfg: BatchNormConfig,
        rng: &mut Rng,
    ) -> BatchNorm<T> {
        let mut bn = BatchNorm::<T>::new(3, cfg).unwrap();
        bn.weight = common::narrow(&rng.normals(3, 1.0, 0.5));
        bn.bias = common::narrow(&rng.normals(3, 0.0, 0.5));
        bn.running_mean = common::narrow(&rng.normals(3, 1e3, 1.0));
        bn.running_var = vec![4.0, 9.0, 0.25];
        bn
    }

    /// Unclipped, `(x - mean_B) / sigma_B * r + d` with `r = sigma_B / sigma` and
    /// `d = (mean_B - mu) / sigma` is `(x - mu) / sigma`: the running statistics' normalisation.
    /// f32 stays within the module's exactness target, `1e-5 * (1 + |y|)` of the f64 truth, on
    /// data offset by 1e3 (where a naive f32 map would lose about 3 digits).
    #[test]
    fn unclipped_it_normalises_by_the_running_statistics() {
        let mut rng = Rng::new(7);
        let dims = [8, 3, 5];
        let x32: Vec<f32> = common::narrow(&rng.normals(120, 1e3, 2.0));
        let x32_wide = common::widen(&x32);
        let bn = setup::<f32>(config(Renorm::fixed(1e3, 1e3)), &mut rng);
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let shape = Shape::new(&dims, layout).unwrap();
            let mut y = vec![0.0f32; 120];
            let saved = bn
                .forward_without_update(&x32, &shape, Mode::Train, &mut y)
                .unwrap();
            assert_eq!(saved.renorm().len(), 3);
            let truth: Vec<f64> = x32_wide
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = common::reference::channel_of(&dims, layout, i);
                    let (mu, var) = (
                        f64::from(bn.running_mean[ch]),
                        f64::from(bn.running_var[ch]),
                    );
                    let (w, b) = (f64::from(bn.weight[ch]), f64::from(bn.bias[ch]));
                    (v - mu) / (var + 1e-5).sqrt() * w + b
                })
                .collect();
            let err = max_rel_err(&common::widen(&y), &truth);
            assert!(err <= 1e-5, "{layout:?}: error {err:e}");
        }
    }

    /// During the warm-up (rmax 1, dmax 0) renormalisation is plain BN, bit for bit: output,
    /// saved statistics, running statistics, gradients.
    #[test]
    fn warm_up_is_plain_bn_bit_for_bit() {
        let mut rng = Rng::new(8);
        let shape = Shape::new(&[6, 3, 4, 4], Layout::ChannelsLast).unwrap();
        let x: Vec<f32> = common::narrow(&rng.normals(288, 5.0, 3.0));
        let dy: Vec<f32> = common::narrow(&rng.normals(288, 0.0, 1.0));
        let mut plain = setup::<f32>(BatchNormConfig::default(), &mut Rng::new(9));
        let mut warm = setup::<f32>(config(Renorm::paper()), &mut Rng::new(9));
        let run = |bn: &mut BatchNorm<f32>| {
            let mut y = vec![0.0f32; 288];
            let saved: Saved<f32> = bn.forward(&x, &shape, Mode::Train, &mut y).unwrap();
            let mut dx = vec![0.0f32; 288];
            let grads = bn.backward(&x, &dy, &shape, &saved, &mut dx).unwrap();
            (y, saved, dx, grads)
        };
        let (y0, s0, dx0, g0) = run(&mut plain);
        let (y1, s1, dx1, g1) = run(&mut warm);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y0), bits(&y1));
        assert_eq!(bits(&dx0), bits(&dx1));
        assert_eq!((s0.mean, s0.invstd), (s1.mean.clone(), s1.invstd.clone()));
        assert_eq!(g0, g1);
        assert_eq!(bits(&plain.running_mean), bits(&warm.running_mean));
        assert_eq!(bits(&plain.running_var), bits(&warm.running_var));
        assert!(s1.renorm().iter().all(|c| c.r == 1.0 && c.d == 0.0));
    }

    /// Clipped corrections: r and d on their bounds, and the output is plain BN's xhat
    /// scaled by r and shifted by d (checked against the f64 formula); the running statistics
    /// move exactly as plain BN's (renormalisation changes only the output).
    #[test]
    fn clipped_corrections_and_running_statistics() {
        let mut rng = Rng::new(10);
        let shape = Shape::new(&[10, 3], Layout::ChannelsFirst).unwrap();
        let x: Vec<f64> = rng.normals(30, 0.0, 1.0);
        let cfg = BatchNormConfig {
            renorm: Some(Renorm::fixed(1.25, 0.5)),
            ..BatchNormConfig::default()
        };
        let mut bn = BatchNorm::<f64>::new(3, cfg).unwrap();
        // Running std 0.1 (r -> 1.25) and mean 5 (d -> -0.5) everywhere.
        bn.running_mean = vec![5.0; 3];
        bn.running_var = vec![0.01; 3];
        let mut plain = BatchNorm::<f64>::new(3, BatchNormConfig::default()).unwrap();
        plain.running_mean.clone_from(&bn.running_mean);
        plain.running_var.clone_from(&bn.running_var);
        let (mut y, mut y_plain) = (vec![0.0; 30], vec![0.0; 30]);
        let saved = bn.forward(&x, &shape, Mode::Train, &mut y).unwrap();
        plain
            .forward(&x, &shape, Mode::Train, &mut y_plain)
            .unwrap();
        for c in saved.renorm() {
            assert_eq!((c.r, c.d), (1.25, -0.5));
        }
        for (a, b) in y.iter().zip(&y_plain) {
            assert!(
                (a - (b * 1.25 - 0.5)).abs() <= 1e-14 * (1.0 + a.abs()),
                "{a} vs {b}"
            );
        }
        assert_eq!(bn.running_mean, plain.running_mean);
        assert_eq!(bn.running_var, plain.running_var);
    }

    /// Limits given per call: a fixed schedule set before each call, validated.
    #[test]
    fn limits_can_change_per_call() {
        let shape = Shape::new(&[4, 1], Layout::ChannelsFirst).unwrap();
        let x = [0.0, 1.0, 2.0, 3.0];
        let mut bn = BatchNorm::<f64>::new(1, BatchNormConfig::default()).unwrap();
        bn.running_mean = vec![10.0];
        let mut y = [0.0; 4];
        for (dmax, want) in [(0.5, -0.5), (2.0, -2.0)] {
            bn.set_renorm(Some(Renorm::fixed(1.5, dmax))).unwrap();
            let saved = bn
                .forward_without_update(&x, &shape, Mode::Train, &mut y)
                .unwrap();
            assert_eq!(saved.renorm()[0].d, want);
        }
        let before = bn.config().renorm;
        assert!(bn.set_renorm(Some(Renorm::fixed(0.5, 1.0))).is_err());
        assert_eq!(bn.config().renorm, before);
        bn.set_renorm(None).unwrap();
        let saved = bn
            .forward_without_update(&x, &shape, Mode::Train, &mut y)
            .unwrap();
        assert!(saved.renorm().is_empty());
    }
}
