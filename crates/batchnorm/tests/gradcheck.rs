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

    let numeric_dx: Vec<f64> = (0..n)
        .map(|i| {
            let mut xp = x.clone();
            xp[i] += H;
            let mut xm = x.clone();
            xm[i] -= H;
            (loss(&bn, &xp, &shape, mode, &w) - loss(&bn, &xm, &shape, mode, &w)) / (2.0 * H)
        })
        .collect();
    let label = format!("{dims:?} {layout:?} {mode:?} {cfg:?}");
    let err = max_err_vs_largest(&dx, &numeric_dx);
    assert!(err <= TOL, "{label}: dx error {err:e}");

    if cfg.affine {
        let param_grad = |which: usize| -> Vec<f64> {
            (0..c)
                .map(|ch| {
                    let mut p = bn.clone();
                    let mut m = bn.clone();
                    let (pp, mm) = if which == 0 {
                        (&mut p.weight, &mut m.weight)
                    } else {
                        (&mut p.bias, &mut m.bias)
                    };
                    pp[ch] += H;
                    mm[ch] -= H;
                    (loss(&p, &x, &shape, mode, &w) - loss(&m, &x, &shape, mode, &w)) / (2.0 * H)
                })
                .collect()
        };
        let err = max_err_vs_largest(&grads.weight, &param_grad(0));
        assert!(err <= TOL, "{label}: dweight error {err:e}");
        let err = max_err_vs_largest(&grads.bias, &param_grad(1));
        assert!(err <= TOL, "{label}: dbias error {err:e}");
    }
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
