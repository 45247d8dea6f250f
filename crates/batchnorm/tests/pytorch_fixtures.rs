//! Every PyTorch reference case in `tests/fixtures/` (made by `make_fixtures.py`, PyTorch 2.15):
//! forward outputs, running statistics after one and several steps, saved statistics, and the
//! backward pass, in every layout and mode.
//!
//! Two checks per quantity:
//! - ours against the f64 reference (`common::reference`) run on the same inputs, to the
//!   exactness target: f32 outputs within 1e-5 * (1 + |y|), f64 within 1e-12;
//! - PyTorch's own output against the same reference, which proves the reference (and so our
//!   semantics) is PyTorch's. PyTorch accumulates in f32, and its documented error on
//!   `nchw_offset_1e4` is 4.9e-4, so that check allows 1e-3 relative to the largest element.

mod common;

use batchnorm::{BatchNorm, BatchNormConfig, Isa, Mode, Shape};
use common::fixture::Fixture;
use common::reference::RefBn;
use common::{max_err_vs_largest, max_rel_err, narrow, widen};

/// PyTorch computes in f32 with f32 accumulators: see the module doc.
const PYTORCH_F32_TOL: f64 = 1e-3;

struct Tol {
    /// Outputs, relative to 1 + |y| (the exactness target for f32).
    y: f64,
    /// Running and saved statistics: rounding the f64 result once to T, plus the rounding of the
    /// input buffers, is a few units in the last place.
    stats: f64,
    /// Gradients relative to the largest element (the target for f32).
    grad: f64,
}

fn run_case(name: &str) {
    let fx = Fixture::load(name);
    // Every kernel path this CPU has must pass every case.
    for isa in Isa::available() {
        match fx.meta("dtype") {
            "f32" => run_typed::<f32>(&fx, isa, F32_TOL),
            "f64" => run_typed::<f64>(&fx, isa, F64_TOL),
            other => panic!("{name}: unknown dtype {other}"),
        }
    }
}

const F32_TOL: Tol = Tol {
    y: 1e-5,
    stats: 1e-6,
    grad: 1e-5,
};
const F64_TOL: Tol = Tol {
    y: 1e-12,
    stats: 1e-13,
    grad: 1e-12,
};

fn run_typed<T: batchnorm::Float>(fx: &Fixture, isa: Isa, tol: Tol) {
    let name = &fx.name;
    let dims = fx.dims();
    let layout = fx.layout();
    let c = dims[1];
    let momentum = match fx.meta("momentum") {
        "none" => None,
        m => Some(m.parse().unwrap()),
    };
    let cfg = BatchNormConfig {
        eps: fx.meta("eps").parse().unwrap(),
        momentum,
        affine: fx.flag("affine"),
        track_running_stats: fx.flag("track_running_stats"),
        ..BatchNormConfig::default()
    };
    let mode = if fx.meta("mode") == "train" {
        Mode::Train
    } else {
        Mode::Eval
    };
    let steps: usize = fx.meta("steps").parse().unwrap();
    let nbt_in: u64 = fx.meta("num_batches_tracked_in").parse().unwrap();

    let mut bn = BatchNorm::<T>::new(c, cfg).unwrap();
    bn.set_isa(isa).unwrap();
    let mut reference = RefBn::new(c, cfg.eps, cfg.momentum, cfg.track_running_stats);
    if cfg.affine {
        bn.weight = narrow(&fx.get("weight"));
        bn.bias = narrow(&fx.get("bias"));
        reference.weight = fx.get("weight");
        reference.bias = fx.get("bias");
    }
    if cfg.track_running_stats {
        bn.running_mean = narrow(&fx.get("running_mean_in"));
        bn.running_var = narrow(&fx.get("running_var_in"));
        bn.num_batches_tracked = nbt_in;
        reference.running_mean = fx.get("running_mean_in");
        reference.running_var = fx.get("running_var_in");
        reference.num_batches_tracked = nbt_in;
    }

    let shape = Shape::new(&dims, layout).unwrap();
    let mut y = vec![T::ZERO; shape.len()];
    let mut last = None;
    for s in 0..steps {
        let x64 = fx.get(&format!("x{s}"));
        let x: Vec<T> = narrow(&x64);
        let saved = bn.forward(&x, &shape, mode, &mut y).unwrap();
        let out = reference.forward(&x64, &dims, layout, mode == Mode::Train);
        last = Some((x, x64, saved, out));
    }
    let (x, x64, saved, out) = last.unwrap();

    // Forward output.
    let err = max_rel_err(&widen(&y), &out.y);
    assert!(err <= tol.y, "{name}: y vs f64 reference: {err:e}");
    assert!(
        max_rel_err(&fx.get("y"), &out.y) <= PYTORCH_F32_TOL,
        "{name}: PyTorch y disagrees"
    );
    if fx.has("y_f64") {
        // PyTorch's own f64 reference, computed from the same inputs.
        let err = max_rel_err(&widen(&y), &fx.get("y_f64"));
        let pt = max_rel_err(&fx.get("y"), &fx.get("y_f64"));
        println!("{name}: max |y - y_f64| / (1 + |y_f64|): ours {err:.2e}, PyTorch {pt:.2e}");
        assert!(err <= tol.y, "{name}: y vs y_f64: {err:e}");
    }

    // Running statistics after all steps.
    if cfg.track_running_stats {
        assert_eq!(
            bn.num_batches_tracked,
            fx.meta("num_batches_tracked_out").parse::<u64>().unwrap()
        );
        for (ours, key, truth) in [
            (
                &bn.running_mean,
                "running_mean_out",
                &reference.running_mean,
            ),
            (&bn.running_var, "running_var_out", &reference.running_var),
        ] {
            let err = max_rel_err(&widen(ours), truth);
            assert!(err <= tol.stats, "{name}: {key} vs reference: {err:e}");
            let err = max_rel_err(&fx.get(key), truth);
            assert!(
                err <= PYTORCH_F32_TOL,
                "{name}: PyTorch {key} disagrees: {err:e}"
            );
        }
    }

    // Saved statistics (only where batch statistics were used, as PyTorch saves them).
    if fx.has("saved_mean") {
        assert!(out.batch_stats);
        let err = max_rel_err(&widen(&saved.mean), &out.mean);
        assert!(err <= tol.stats, "{name}: saved mean: {err:e}");
        let err = max_rel_err(&widen(&saved.invstd), &out.invstd);
        assert!(err <= tol.stats, "{name}: saved invstd: {err:e}");
        assert!(max_rel_err(&fx.get("saved_mean"), &out.mean) <= PYTORCH_F32_TOL);
        let err = max_rel_err(&fx.get("saved_invstd"), &out.invstd);
        assert!(
            err <= PYTORCH_F32_TOL,
            "{name}: PyTorch saved invstd disagrees: {err:e}"
        );
    }
    if fx.has("saved_var_f64") {
        let err = max_rel_err(&out.var, &fx.get("saved_var_f64"));
        assert!(
            err <= 1e-12,
            "{name}: reference variance vs PyTorch's f64 variance: {err:e}"
        );
    }

    // Backward of the last step.
    let dy64 = fx.get("dy");
    let dy: Vec<T> = narrow(&dy64);
    let mut dx = vec![T::ZERO; shape.len()];
    let grads = bn.backward(&x, &dy, &shape, &saved, &mut dx).unwrap();
    let (rdx, rdw, rdb) = reference.backward(&x64, &dy64, &dims, layout, &out);
    let err = max_err_vs_largest(&widen(&dx), &rdx);
    assert!(err <= tol.grad, "{name}: dx: {err:e}");
    // PyTorch forms dx from terms of size |dy * weight * invstd| in f32; when they cancel (m = 2:
    // dx is about dy * eps / var) its error is relative to those terms, not to dx.
    let k_max = (0..c)
        .map(|ch| (reference.weight[ch] * out.invstd[ch]).abs())
        .fold(0.0, f64::max);
    let term_scale = dy64.iter().fold(0.0f64, |m, v| m.max(v.abs())) * k_max;
    let pt_err = fx
        .get("dx")
        .iter()
        .zip(&rdx)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        pt_err <= PYTORCH_F32_TOL * term_scale,
        "{name}: PyTorch dx disagrees: {pt_err:e}"
    );
    if cfg.affine {
        for (ours, key, truth) in [
            (&grads.weight, "dweight", &rdw),
            (&grads.bias, "dbias", &rdb),
        ] {
            let err = max_rel_err(&widen(ours), truth);
            assert!(err <= tol.grad, "{name}: {key}: {err:e}");
            let err = max_rel_err(&fx.get(key), truth);
            assert!(
                err <= PYTORCH_F32_TOL,
                "{name}: PyTorch {key} disagrees: {err:e}"
            );
        }
    } else {
        assert!(grads.weight.is_empty() && grads.bias.is_empty());
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run_case(stringify!($name)); })*

        /// Every fixture file has a test above: a new case cannot be skipped by accident.
        #[test]
        fn every_fixture_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for name in Fixture::all_names() {
                assert!(tested.contains(&name.as_str()), "fixture {name} has no test");
            }
        }
    };
}

cases!(
    nc_batch_two,
    nc_train,
    ncdhw_train,
    nchw_const_channel,
    nchw_cumulative,
    nchw_eval,
    nchw_eval_untracked,
    nchw_f64,
    nchw_no_affine,
    nchw_offset_1e4,
    nchw_seed_example,
    nchw_three_steps,
    nchw_train,
    ncl_train,
    nhwc_train,
);

/// The fused cases in `tests/fixtures/fused/` (made by `fused/make_fused_fixtures.py`):
/// `y = relu(bn(x))` and `y = relu(bn(x) + residual)` in f32, forward and backward, against
/// the float64 truths PyTorch computed from the same f32 inputs, and against the f64 reference
/// with the ReLU applied (which proves the reference is PyTorch's semantics, the convention at
/// exactly 0 included).
mod fused {
    use super::*;
    use batchnorm::Par;

    /// y relative to `1 + |y|`, gradients relative to their largest element: the exactness
    /// target. Ours is about one f32 rounding of the terms (bn(x) rounded, then the residual
    /// added and rounded again: two roundings of values of order 1, 1.2e-7).
    const TOL: f64 = 1e-5;

    fn relu(v: f64) -> f64 {
        if v <= 0.0 {
            0.0
        } else {
            v
        }
    }

    fn run(name: &str) {
        let fx = Fixture::load(&format!("fused/{name}"));
        assert_eq!(fx.meta("dtype"), "f32");
        let add = match fx.meta("fusion") {
            "relu" => false,
            "add_relu" => true,
            other => panic!("{name}: unknown fusion {other}"),
        };
        let (dims, layout) = (fx.dims(), fx.layout());
        let c = dims[1];
        let mode = if fx.meta("mode") == "train" {
            Mode::Train
        } else {
            Mode::Eval
        };
        let shape = Shape::new(&dims, layout).unwrap();
        let (x64, dy64) = (fx.get("x0"), fx.get("dy"));
        let r64 = if add {
            fx.get("residual")
        } else {
            vec![0.0; x64.len()]
        };
        let (x, dy, r): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (narrow(&x64), narrow(&dy64), narrow(&r64));

        // The f64 reference, with the ReLU and its gradient (0 where the pre-activation is
        // <= 0) around it.
        let mut reference = RefBn::new(c, 1e-5, Some(0.1), true);
        reference.weight = fx.get("weight");
        reference.bias = fx.get("bias");
        reference.running_mean = fx.get("running_mean_in");
        reference.running_var = fx.get("running_var_in");
        let out = reference.forward(&x64, &dims, layout, mode == Mode::Train);
        let pre: Vec<f64> = out.y.iter().zip(&r64).map(|(a, b)| a + b).collect();
        let y_ref: Vec<f64> = pre.iter().map(|&v| relu(v)).collect();
        let masked: Vec<f64> = pre
            .iter()
            .zip(&dy64)
            .map(|(&p, &d)| if p > 0.0 { d } else { 0.0 })
            .collect();
        let (dx_ref, dw_ref, db_ref) = reference.backward(&x64, &masked, &dims, layout, &out);
        assert!(
            max_rel_err(&y_ref, &fx.get("y_f64")) <= 1e-12,
            "{name}: reference y"
        );
        assert!(
            max_err_vs_largest(&dx_ref, &fx.get("dx_f64")) <= 1e-12,
            "{name}: reference dx"
        );
        if add {
            assert_eq!(
                masked,
                fx.get("dresidual_f64"),
                "{name}: reference dresidual"
            );
        }
        // PyTorch's own f32 results agree with the truths to its f32 accuracy.
        assert!(
            max_rel_err(&fx.get("y"), &y_ref) <= PYTORCH_F32_TOL,
            "{name}: PyTorch y"
        );
        assert!(
            max_err_vs_largest(&fx.get("dx"), &dx_ref) <= PYTORCH_F32_TOL,
            "{name}: PyTorch dx"
        );

        for isa in Isa::available() {
            for par in [Par::Seq, Par::Rayon] {
                let what = format!("{name} {isa:?} {par:?}");
                let mut bn = BatchNorm::<f32>::new(c, BatchNormConfig::default()).unwrap();
                bn.set_isa(isa).unwrap();
                bn.set_par(par);
                bn.weight = narrow(&fx.get("weight"));
                bn.bias = narrow(&fx.get("bias"));
                bn.running_mean = narrow(&fx.get("running_mean_in"));
                bn.running_var = narrow(&fx.get("running_var_in"));
                let (mut y, mut dx, mut dr) = (
                    vec![0.0f32; x.len()],
                    vec![0.0; x.len()],
                    vec![0.0; x.len()],
                );
                let (saved, grads) = if add {
                    let saved = bn.forward_add_relu(&x, &r, &shape, mode, &mut y).unwrap();
                    let grads = bn
                        .backward_add_relu(&x, &y, &dy, &shape, &saved, &mut dx, &mut dr)
                        .unwrap();
                    (saved, grads)
                } else {
                    let saved = bn.forward_relu(&x, &shape, mode, &mut y).unwrap();
                    let grads = bn
                        .backward_relu(&x, &y, &dy, &shape, &saved, &mut dx)
                        .unwrap();
                    (saved, grads)
                };
                let err = max_rel_err(&widen(&y), &fx.get("y_f64"));
                assert!(err <= TOL, "{what}: y {err:e}");
                let err = max_err_vs_largest(&widen(&dx), &fx.get("dx_f64"));
                assert!(err <= TOL, "{what}: dx {err:e}");
                if add {
                    // dy itself where the pre-activation is positive: no rounding at all.
                    assert_eq!(widen(&dr), fx.get("dresidual_f64"), "{what}: dresidual");
                }
                for (ours, key, truth) in [
                    (&grads.weight, "dweight_f64", &dw_ref),
                    (&grads.bias, "dbias_f64", &db_ref),
                ] {
                    let err = max_rel_err(&widen(ours), &fx.get(key));
                    assert!(err <= TOL, "{what}: {key} {err:e}");
                    assert!(
                        max_rel_err(truth, &fx.get(key)) <= 1e-12,
                        "{what}: reference {key}"
                    );
                }
                let running = [
                    (
                        &bn.running_mean,
                        "running_mean_out",
                        &reference.running_mean,
                    ),
                    (&bn.running_var, "running_var_out", &reference.running_var),
                ];
                for (ours, key, truth) in running {
                    // Statistics: one f32 rounding of values of order 1 (see `F32_TOL`).
                    let err = max_rel_err(&widen(ours), truth);
                    assert!(err <= F32_TOL.stats, "{what}: {key} {err:e}");
                    let err = max_rel_err(&fx.get(key), truth);
                    assert!(err <= PYTORCH_F32_TOL, "{what}: PyTorch {key} {err:e}");
                }
                // The statistics the forward used (the batch's, or the running ones in eval).
                let err = max_rel_err(&widen(&saved.mean), &out.mean);
                assert!(err <= F32_TOL.stats, "{what}: saved mean {err:e}");
            }
        }
    }

    macro_rules! fused_cases {
        ($($name:ident),* $(,)?) => {
            $(#[test] fn $name() { run(stringify!($name)); })*

            /// Every fused fixture has a test above.
            #[test]
            fn every_fused_fixture_has_a_test() {
                let tested = [$(stringify!($name)),*];
                let dir = common::fixture::dir().join("fused");
                let mut count = 0;
                for e in std::fs::read_dir(dir).unwrap() {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    if let Some(name) = name.strip_suffix(".safetensors") {
                        assert!(tested.contains(&name), "fused fixture {name} has no test");
                        count += 1;
                    }
                }
                assert_eq!(count, tested.len());
            }
        };
    }

    fused_cases!(
        relu_nchw_train,
        relu_nhwc_train,
        relu_nc_eval,
        add_relu_nchw_train,
        add_relu_nhwc_train,
        add_relu_nchw_eval,
    );
}
