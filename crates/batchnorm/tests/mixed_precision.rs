//! bf16 and f16 tensors with f32 parameters (PyTorch's mixed-type convention): y and dx are
//! correctly rounded, within 0.5 units in the last place of the float64 truth computed from the
//! same stored inputs, on every kernel path; parameters, statistics and their gradients in f32
//! within 1e-6 of the truth.
//!
//! Checked on the PyTorch cases in `tests/fixtures/mixed/` (`make_mixed_fixtures.py`, PyTorch
//! 2.15, with float64 truths) and on random shapes against the f64 reference
//! (`common::reference`).

mod common;

use batchnorm::{bf16, f16, BatchNorm, BatchNormConfig, Element, Isa, Layout, Mode, Par, Shape};
use common::fixture::Fixture;
use common::reference::RefBn;
use common::{max_rel_err, max_ulp_err, narrow, Rng};

/// y and dx: correctly rounded. The truths are themselves float64 computations (a few units of
/// 2^-53 off the exact value, 2^-44 of a 16-bit unit): only an exact value within that of a
/// midpoint could make a correct rounding look 0.5 + 2^-44 off.
const ULP: f64 = 0.5;
/// f32 statistics and parameter gradients: one f32 rounding (6e-8) of values of order 1,
/// relative to `1 + |truth|`, with margin for the truth's own rounding of sums over the batch.
const F32_TOL: f64 = 1e-6;

/// Worst errors of one case: ours and PyTorch's, y and dx, in units in the last place.
struct Worst {
    y: (f64, f64),
    dx: (f64, f64),
}

fn fixture_case(name: &str) -> Worst {
    let fx = Fixture::load(&format!("mixed/{name}"));
    let mut worst = Worst {
        y: (0.0, 0.0),
        dx: (0.0, 0.0),
    };
    for isa in Isa::available() {
        let w = match fx.meta("dtype") {
            "bf16" => fixture_typed::<bf16>(&fx, isa),
            "f16" => fixture_typed::<f16>(&fx, isa),
            other => panic!("{name}: dtype {other}"),
        };
        worst.y.0 = worst.y.0.max(w.y.0);
        worst.dx.0 = worst.dx.0.max(w.dx.0);
        worst.y.1 = w.y.1;
        worst.dx.1 = w.dx.1;
    }
    println!(
        "{name}: worst |y - y_f64| {:.3} ulp (PyTorch {:.3}), |dx - dx_f64| {:.3} ulp (PyTorch {:.3})",
        worst.y.0, worst.y.1, worst.dx.0, worst.dx.1
    );
    worst
}

fn fixture_typed<T: Element<Param = f32>>(fx: &Fixture, isa: Isa) -> Worst {
    let name = &fx.name;
    assert_eq!(fx.dtype("x0"), T::NAME, "{name}");
    assert_eq!(fx.dtype("weight"), "f32", "{name}");
    let dims = fx.dims();
    let shape = Shape::new(&dims, fx.layout()).unwrap();
    let momentum: f64 = fx.meta("momentum").parse().unwrap();
    let cfg = BatchNormConfig {
        eps: fx.meta("eps").parse().unwrap(),
        momentum: Some(momentum),
        ..BatchNormConfig::default()
    };
    let mode = if fx.meta("mode") == "train" {
        Mode::Train
    } else {
        Mode::Eval
    };
    let mut bn = BatchNorm::<T>::new(dims[1], cfg).unwrap();
    bn.set_isa(isa).unwrap();
    bn.weight = narrow(&fx.get("weight"));
    bn.bias = narrow(&fx.get("bias"));
    bn.running_mean = narrow(&fx.get("running_mean_in"));
    bn.running_var = narrow(&fx.get("running_var_in"));

    let x: Vec<T> = narrow(&fx.get("x0"));
    let mut y = vec![T::default(); x.len()];
    let saved = bn.forward(&x, &shape, mode, &mut y).unwrap();
    let y_truth = fx.get("y_f64");
    let ours_y = max_ulp_err(&y, &y_truth);
    let pytorch_y = max_ulp_err::<T>(&narrow(&fx.get("y")), &y_truth);
    assert!(ours_y <= ULP, "{name} {isa:?}: y {ours_y} ulp");

    for (ours, key) in [
        (&bn.running_mean, "running_mean_f64"),
        (&bn.running_var, "running_var_f64"),
    ] {
        let err = max_rel_err(&common::widen(ours), &fx.get(key));
        assert!(err <= F32_TOL, "{name} {isa:?}: {key}: {err:e}");
    }

    let dy: Vec<T> = narrow(&fx.get("dy"));
    let mut dx = vec![T::default(); x.len()];
    let grads = bn.backward(&x, &dy, &shape, &saved, &mut dx).unwrap();
    let dx_truth = fx.get("dx_f64");
    let ours_dx = max_ulp_err(&dx, &dx_truth);
    let pytorch_dx = max_ulp_err::<T>(&narrow(&fx.get("dx")), &dx_truth);
    assert!(ours_dx <= ULP, "{name} {isa:?}: dx {ours_dx} ulp");
    for (ours, key) in [(&grads.weight, "dweight_f64"), (&grads.bias, "dbias_f64")] {
        let err = max_rel_err(&common::widen(ours), &fx.get(key));
        assert!(err <= F32_TOL, "{name} {isa:?}: {key}: {err:e}");
    }
    Worst {
        y: (ours_y, pytorch_y),
        dx: (ours_dx, pytorch_dx),
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { fixture_case(stringify!($name)); })*

        /// Every mixed fixture has a test above.
        #[test]
        fn every_mixed_fixture_has_a_test() {
            let tested = [$(stringify!($name)),*];
            let dir = common::fixture::dir().join("mixed");
            for entry in std::fs::read_dir(dir).unwrap() {
                let file = entry.unwrap().file_name().into_string().unwrap();
                if let Some(name) = file.strip_suffix(".safetensors") {
                    assert!(tested.contains(&name), "mixed fixture {name} has no test");
                }
            }
        }
    };
}

cases!(
    bf16_nc_eval,
    bf16_nchw_train,
    bf16_nhwc_train,
    bf16_offset_100,
    f16_nchw_train,
    f16_nhwc_eval,
    f16_small_var,
);

/// Random shapes, both layouts, train and eval, offsets that make the mean large next to the
/// spread, and tiny batches where dx cancels: y and dx correctly rounded against the f64
/// reference on every path and thread setting.
fn random_cases<T: Element<Param = f32>>() {
    let mut rng = Rng::new(0x5eed ^ T::NAME.len() as u64);
    let shapes: [(&[usize], Layout); 7] = [
        (&[2, 3], Layout::ChannelsFirst),
        (&[64, 17], Layout::ChannelsFirst),
        (&[5, 4, 9, 11], Layout::ChannelsFirst),
        (&[3, 7, 6, 5], Layout::ChannelsLast),
        (&[16, 3, 40, 41], Layout::ChannelsFirst),
        (&[8, 70, 12, 12], Layout::ChannelsLast),
        // Rows whose coefficients outgrow half of L1: mapped one column strip at a time.
        (&[6, 600], Layout::ChannelsLast),
    ];
    for (dims, layout) in shapes {
        for (offset, spread) in [(0.0, 1.0), (30.0, 0.5), (-2.0, 1e-2)] {
            let shape = Shape::new(dims, layout).unwrap();
            let c = dims[1];
            let x: Vec<T> = narrow(&rng.normals(shape.len(), offset, spread));
            let dy: Vec<T> = narrow(&rng.normals(shape.len(), 0.0, 1.0));
            let (x64, dy64) = (common::widen(&x), common::widen(&dy));
            let weight: Vec<f32> = narrow(&rng.normals(c, 1.0, 0.5));
            let bias: Vec<f32> = narrow(&rng.normals(c, 0.0, 0.5));
            let running_var: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform() as f32).collect();
            for mode in [Mode::Train, Mode::Eval] {
                let mut reference = RefBn::new(c, 1e-5, Some(0.1), true);
                reference.weight = common::widen(&weight);
                reference.bias = common::widen(&bias);
                reference.running_var = common::widen(&running_var);
                let out = reference.forward(&x64, dims, layout, mode == Mode::Train);
                let (dx_truth, dw, db) = reference.backward(&x64, &dy64, dims, layout, &out);
                for isa in Isa::available() {
                    for par in [Par::Seq, Par::Rayon] {
                        let what = format!(
                            "{} {dims:?} {layout:?} {mode:?} {offset} {isa:?} {par:?}",
                            T::NAME
                        );
                        let mut bn = BatchNorm::<T>::new(c, BatchNormConfig::default()).unwrap();
                        bn.set_isa(isa).unwrap();
                        bn.set_par(par);
                        bn.weight.clone_from(&weight);
                        bn.bias.clone_from(&bias);
                        bn.running_var.clone_from(&running_var);
                        let mut y = vec![T::default(); x.len()];
                        let saved = bn.forward(&x, &shape, mode, &mut y).unwrap();
                        let err = max_ulp_err(&y, &out.y);
                        assert!(err <= ULP, "{what}: y {err} ulp");
                        let mut dx = vec![T::default(); x.len()];
                        let grads = bn.backward(&x, &dy, &shape, &saved, &mut dx).unwrap();
                        let err = max_ulp_err(&dx, &dx_truth);
                        assert!(err <= ULP, "{what}: dx {err} ulp");
                        let err = max_rel_err(&common::widen(&grads.weight), &dw);
                        assert!(err <= F32_TOL, "{what}: dweight {err:e}");
                        let err = max_rel_err(&common::widen(&grads.bias), &db);
                        assert!(err <= F32_TOL, "{what}: dbias {err:e}");
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_random_shapes_are_correctly_rounded() {
    random_cases::<bf16>();
}

#[test]
fn f16_random_shapes_are_correctly_rounded() {
    random_cases::<f16>();
}
