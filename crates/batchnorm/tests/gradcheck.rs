//! Finite-difference checks of the backward pass in f64, train and eval mode, every layout.
//!
//! loss = sum(y * w) for a fixed random w, so dy = w. Central differences with step h have
//! truncation error O(h^2 |f'''|) and rounding error O(eps_f64 |loss| / h); h = 1e-5 balances
//! them near 1e-10, so 1e-7 relative to the largest gradient leaves a wide margin without
//! hiding a wrong term (a missing mean or variance path changes dx by O(1)).

mod common;

use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Shape};
use common::{max_err_vs_largest, Rng};

const H: f64 = 1e-5;
const TOL: f64 = 1e-7;

fn loss(bn: &BatchNorm<f64>, x: &[f64], shape: &Shape, mode: Mode, w: &[f64]) -> f64 {
    let mut y = vec![0.0; x.len()];
    bn.forward_without_update(x, shape, mode, &mut y).unwrap();
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

fn check(dims: &[usize], layout: Layout, mode: Mode, cfg: BatchNormConfig, seed: u64) {
    let c = dims[1];
    let n: usize = dims.iter().product();
    let mut rng = Rng::new(seed);
    let x = rng.normals(n, 0.5, 2.0);
    let w = rng.normals(n, 0.0, 1.0);
    let mut bn = BatchNorm::<f64>::new(c, cfg).unwrap();
    if cfg.affine {
        bn.weight = rng.normals(c, 1.0, 0.5);
        bn.bias = rng.normals(c, 0.0, 0.5);
    }
    if cfg.track_running_stats {
        bn.running_mean = rng.normals(c, 0.3, 0.5);
        bn.running_var = (0..c).map(|_| 0.5 + rng.uniform()).collect();
    }
    let shape = Shape::new(dims, layout).unwrap();
    let mut y = vec![0.0; n];
    let saved = bn.forward_without_update(&x, &shape, mode, &mut y).unwrap();
    let mut dx = vec![0.0; n];
    let grads = bn.backward(&x, &w, &shape, &saved, &mut dx).unwrap();

    let numeric_dx = central_diff(&x, |x| loss(&bn, x, &shape, mode, &w));
    let label = format!("{dims:?} {layout:?} {mode:?} {cfg:?}");
    let err = max_err_vs_largest(&dx, &numeric_dx);
    assert!(err <= TOL, "{label}: dx error {err:e}");

    if cfg.affine {
        let param_grad = |which: usize| -> Vec<f64> {
            let p = if which == 0 { &bn.weight } else { &bn.bias };
            central_diff(p, |p| {
                let mut b = bn.clone();
                if which == 0 {
                    b.weight = p.to_vec();
                } else {
                    b.bias = p.to_vec();
                }
                loss(&b, &x, &shape, mode, &w)
            })
        };
        let err = max_err_vs_largest(&grads.weight, &param_grad(0));
        assert!(err <= TOL, "{label}: dweight error {err:e}");
        let err = max_err_vs_largest(&grads.bias, &param_grad(1));
        assert!(err <= TOL, "{label}: dbias error {err:e}");
    }
}

/// Central differences of `f` at `v`, one coordinate at a time, step `H`.
fn central_diff(v: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    (0..v.len())
        .map(|i| {
            let (mut plus, mut minus) = (v.to_vec(), v.to_vec());
            plus[i] += H;
            minus[i] -= H;
            (f(&plus) - f(&minus)) / (2.0 * H)
        })
        .collect()
}

const SHAPES: [&[usize]; 4] = [&[6, 3], &[3, 2, 5], &[2, 3, 3, 2], &[2, 2, 2, 3, 2]];

#[test]
fn train_mode_every_layout() {
    for (s, dims) in SHAPES.iter().enumerate() {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            check(
                dims,
                layout,
                Mode::Train,
                BatchNormConfig::default(),
                s as u64,
            );
        }
    }
}

#[test]
fn eval_mode_with_running_statistics_every_layout() {
    for (s, dims) in SHAPES.iter().enumerate() {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            check(
                dims,
                layout,
                Mode::Eval,
                BatchNormConfig::default(),
                10 + s as u64,
            );
        }
    }
}

#[test]
fn without_affine_and_without_tracking() {
    let no_affine = BatchNormConfig {
        affine: false,
        ..BatchNormConfig::default()
    };
    let untracked = BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    };
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        check(&[3, 2, 4], layout, Mode::Train, no_affine, 20);
        check(&[3, 2, 4], layout, Mode::Eval, no_affine, 21);
        // Untracked eval uses batch statistics: the full batch-statistics gradient.
        check(&[3, 2, 4], layout, Mode::Eval, untracked, 22);
    }
}

/// Batch Renormalization: r and d are constants for backward (the paper's stop-gradient).
mod renorm {
    use super::*;
    use batchnorm::Renorm;

    fn renorm_bn(c: usize, rmax: f64, dmax: f64, rng: &mut Rng) -> BatchNorm<f64> {
        let cfg = BatchNormConfig {
            renorm: Some(Renorm::fixed(rmax, dmax)),
            ..BatchNormConfig::default()
        };
        let mut bn = BatchNorm::<f64>::new(c, cfg).unwrap();
        bn.weight = rng.normals(c, 1.0, 0.5);
        bn.bias = rng.normals(c, 0.0, 0.5);
        bn
    }

    /// With the running statistics far from the batch's (sigma 10 against about 2, mean 20
    /// against about 0.5), r and d sit on their clipping bounds, where they do not move with x
    /// or the parameters: the true gradient is the stop-gradient one, so plain finite
    /// differences of the forward check the whole backward.
    #[test]
    fn clipped_corrections_match_finite_differences() {
        for (s, dims) in SHAPES.iter().enumerate() {
            for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
                let c = dims[1];
                let mut rng = Rng::new(40 + s as u64);
                let mut bn = renorm_bn(c, 1.5, 0.5, &mut rng);
                bn.running_mean = vec![20.0; c];
                bn.running_var = vec![100.0; c];
                let n: usize = dims.iter().product();
                let x = rng.normals(n, 0.5, 2.0);
                let w = rng.normals(n, 0.0, 1.0);
                let shape = Shape::new(dims, layout).unwrap();
                let mut y = vec![0.0; n];
                let saved = bn
                    .forward_without_update(&x, &shape, Mode::Train, &mut y)
                    .unwrap();
                for corr in saved.renorm() {
                    assert_eq!((corr.r, corr.d), (1.0 / 1.5, -0.5), "{dims:?}: not clipped");
                }
                let mut dx = vec![0.0; n];
                let grads = bn.backward(&x, &w, &shape, &saved, &mut dx).unwrap();
                let label = format!("{dims:?} {layout:?}");
                let numeric = central_diff(&x, |x| loss(&bn, x, &shape, Mode::Train, &w));
                let err = max_err_vs_largest(&dx, &numeric);
                assert!(err <= TOL, "{label}: dx error {err:e}");
                let numeric = central_diff(&bn.weight, |p| {
                    let mut b = bn.clone();
                    b.weight = p.to_vec();
                    loss(&b, &x, &shape, Mode::Train, &w)
                });
                let err = max_err_vs_largest(&grads.weight, &numeric);
                assert!(err <= TOL, "{label}: dweight error {err:e}");
            }
        }
    }

    /// Unclipped, r and d depend on x; backward must treat them as the constants of this
    /// step. The oracle: plain BN with r and d frozen into its parameters, weight * r and
    /// bias + weight * d, differentiated by finite differences (for d weight, the frozen map
    /// `(xhat * r + d) * weight + bias` with weight varied).
    #[test]
    fn unclipped_gradient_holds_r_and_d_constant() {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let dims = [4, 3, 5];
            let mut rng = Rng::new(50);
            let mut bn = renorm_bn(3, 1e6, 1e6, &mut rng);
            bn.running_mean = rng.normals(3, 0.3, 0.5);
            bn.running_var = (0..3).map(|_| 0.5 + rng.uniform()).collect();
            let n = 60;
            let x = rng.normals(n, 0.5, 2.0);
            let w = rng.normals(n, 0.0, 1.0);
            let shape = Shape::new(&dims, layout).unwrap();
            let mut y = vec![0.0; n];
            let saved = bn
                .forward_without_update(&x, &shape, Mode::Train, &mut y)
                .unwrap();
            let corr = saved.renorm().to_vec();
            assert!(corr.iter().all(|c| c.r != 1.0 && c.d != 0.0));
            let mut dx = vec![0.0; n];
            let grads = bn.backward(&x, &w, &shape, &saved, &mut dx).unwrap();

            let frozen = |weight: &[f64]| {
                let mut plain = BatchNorm::<f64>::new(3, BatchNormConfig::default()).unwrap();
                for ch in 0..3 {
                    (plain.weight[ch], plain.bias[ch]) = corr[ch].affine(weight[ch], bn.bias[ch]);
                }
                plain
            };
            let plain = frozen(&bn.weight);
            let numeric = central_diff(&x, |x| loss(&plain, x, &shape, Mode::Train, &w));
            let err = max_err_vs_largest(&dx, &numeric);
            assert!(err <= TOL, "{layout:?}: dx error {err:e}");
            let numeric = central_diff(&bn.weight, |p| {
                loss(&frozen(p), &x, &shape, Mode::Train, &w)
            });
            let err = max_err_vs_largest(&grads.weight, &numeric);
            assert!(err <= TOL, "{layout:?}: dweight error {err:e}");
            let numeric = central_diff(&bn.bias, |p| {
                let mut b = plain.clone();
                b.bias = (0..3)
                    .map(|ch| corr[ch].affine(bn.weight[ch], p[ch]).1)
                    .collect();
                loss(&b, &x, &shape, Mode::Train, &w)
            });
            let err = max_err_vs_largest(&grads.bias, &numeric);
            assert!(err <= TOL, "{layout:?}: dbias error {err:e}");
        }
    }
}
