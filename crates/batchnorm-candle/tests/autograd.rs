//! Forward and backward through candle's autograd against the plain `f64` reference: every rank,
//! both memory layouts (channels-last as a strided view), training and frozen evaluation, every
//! dtype, large offsets, odd strides.
//!
//! Tolerances, relative to the largest element of the truth (at least 1):
//! - `f64`: 1e-12. The kernels and the reference each make a few roundings per value and sum
//!   at most a few thousand terms per channel (1e-13 in the worst case seen).
//! - `f32`: 1e-6, about eight `f32` roundings. The kernels keep statistics in `f64` and the mean
//!   exact, so y and dx are a few roundings of the output itself (`docs/design.md` measures
//!   1.6e-7); dweight and dbias are `f64` sums rounded once.
//! - `bf16`, `f16`: y and dx correctly rounded (the nearest representable value to the truth);
//!   dweight and dbias are `f32`, as for `f32`.
//!
//! `SHOW_ERRORS=1 cargo test --release -p batchnorm-candle --test autograd -- --nocapture`
//! prints every measured error.

mod common;

use batchnorm::Layout;
use batchnorm_candle::{batch_norm, BatchNorm, BatchNormConfig, Par};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use common::{assert_close, assert_nearest, input, logical, reference, Rng, Stats, Truth};

const LAYOUTS: [Layout; 2] = [Layout::ChannelsFirst, Layout::ChannelsLast];

/// Shapes of every rank, channels-last views only exist from rank 3.
const SHAPES: [&[usize]; 5] = [
    &[16, 3],
    &[4, 3, 7],
    &[3, 4, 5, 6],
    &[2, 3, 3, 4, 5],
    &[2, 64, 3, 3],
];

/// The outputs of one call through autograd, in logical order and `f64`.
#[derive(Debug)]
struct Got {
    y: Vec<f64>,
    dx: Vec<f64>,
    dweight: Vec<f64>,
    dbias: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
}

/// The test's inputs: x, dy, weight, bias, running statistics (all exactly representable in the
/// tensors' dtype).
#[derive(Debug)]
struct Case {
    dims: Vec<usize>,
    x: Vec<f64>,
    dy: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
}

impl Case {
    fn new(dims: &[usize], offset: f64, dtype: DType, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let n: usize = dims.iter().product();
        let c = dims[1];
        let x = rng.values(n, offset, 1.0);
        let dy = rng.values(n, 0.0, 1.0);
        let param_dtype = param_dtype(dtype);
        Ok(Self {
            dims: dims.to_vec(),
            x: common::representable(&x, dtype)?,
            dy: common::representable(&dy, dtype)?,
            weight: common::representable(&rng.values(c, 1.0, 0.5), param_dtype)?,
            bias: common::representable(&rng.values(c, 0.0, 0.5), param_dtype)?,
            running_mean: common::representable(&rng.values(c, offset, 0.3), param_dtype)?,
            running_var: (0..c).map(|_| 0.5 + rng.uniform()).collect(),
        })
    }

    fn truth(&self, eps: f64, stats: Stats) -> Truth {
        reference(
            &self.x,
            &self.dy,
            &self.dims,
            &self.weight,
            &self.bias,
            eps,
            stats,
        )
    }
}

/// Parameters and statistics: `f32` for 16-bit tensors, as the kernels keep them.
fn param_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

/// A module over a fresh `VarMap` holding the case's parameters and running statistics.
fn module(case: &Case, dtype: DType, config: BatchNormConfig) -> Result<(BatchNorm, VarMap)> {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, param_dtype(dtype), &Device::Cpu);
    let bn = batch_norm(case.dims[1], config, vb.pp("bn"))?;
    let per_channel = |v: &[f64]| -> Result<Tensor> {
        Tensor::new(v, &Device::Cpu)?.to_dtype(param_dtype(dtype))
    };
    if config.affine {
        varmap.set_one("bn.weight", per_channel(&case.weight)?)?;
        varmap.set_one("bn.bias", per_channel(&case.bias)?)?;
    }
    if config.track_running_stats {
        varmap.set_one("bn.running_mean", per_channel(&case.running_mean)?)?;
        // The running variance is rounded to the parameters' dtype here: the truth reads it back.
        varmap.set_one("bn.running_var", per_channel(&case.running_var)?)?;
    }
    Ok((bn, varmap))
}

/// Runs `loss = sum(y * dy)` and its backward through `bn`.
fn run(bn: &BatchNorm, case: &Case, dtype: DType, layout: Layout, train: bool) -> Result<Got> {
    let (x_var, x) = input(&case.x, &case.dims, dtype, layout)?;
    let y = bn.forward_t(&x, train)?;
    assert_eq!(y.dims(), case.dims.as_slice());
    assert_eq!(y.dtype(), dtype);
    if layout == Layout::ChannelsLast {
        assert!(
            !y.is_contiguous(),
            "a channels-last input gives a channels-last output"
        );
    }
    let dy = Tensor::from_vec(case.dy.clone(), case.dims.as_slice(), &Device::Cpu)?;
    let grads = (y.mul(&dy.to_dtype(dtype)?))?.sum_all()?.backward()?;
    let dx = grads.get(x_var.as_tensor()).expect("dx");
    let param_grad = |t: Option<&Tensor>| -> Result<Vec<f64>> {
        match t {
            Some(t) => logical(grads.get(t).expect("a parameter gradient")),
            None => Ok(Vec::new()),
        }
    };
    let running = |t: Option<&Tensor>| -> Result<Vec<f64>> { t.map_or(Ok(Vec::new()), logical) };
    Ok(Got {
        y: logical(&y)?,
        dx: common::grad_logical(dx, layout)?,
        dweight: param_grad(bn.weight())?,
        dbias: param_grad(bn.bias())?,
        running_mean: running(bn.running_mean())?,
        running_var: running(bn.running_var())?,
    })
}

/// The tolerance of `dtype` relative to the largest element (see the top of the file). In `f64`
/// an offset costs what it costs any `f64` code: x and the mean are each within half an ulp of
/// the offset (1.1e-16 * offset), and x - mean inherits those.
fn tolerance(dtype: DType, offset: f64) -> f64 {
    match dtype {
        DType::F64 => 1e-12 + 4.0 * f64::EPSILON * offset.abs(),
        _ => 1e-6,
    }
}

/// Checks a call's outputs against the truth with the dtype's tolerance.
fn check(what: &str, got: &Got, truth: &Truth, dtype: DType, offset: f64) -> Result<()> {
    let tol = tolerance(dtype, offset);
    match dtype {
        DType::BF16 | DType::F16 => {
            assert_nearest(&format!("{what} y"), &got.y, &truth.y, dtype)?;
            assert_nearest(&format!("{what} dx"), &got.dx, &truth.dx, dtype)?;
        }
        _ => {
            assert_close(&format!("{what} y"), &got.y, &truth.y, tol);
            assert_close(&format!("{what} dx"), &got.dx, &truth.dx, tol);
        }
    }
    assert_close(
        &format!("{what} dweight"),
        &got.dweight,
        &truth.dweight,
        tol,
    );
    assert_close(&format!("{what} dbias"), &got.dbias, &truth.dbias, tol);
    Ok(())
}

/// The running statistics after one training step from `case`'s, momentum 0.1, rounded to the
/// parameters' dtype.
fn running_after(case: &Case, truth: &Truth, dtype: DType) -> Result<(Vec<f64>, Vec<f64>)> {
    let m = (case.x.len() / case.dims[1]) as f64;
    let rv = common::representable(&case.running_var, param_dtype(dtype))?;
    let mean = (case.running_mean.iter().zip(&truth.mean))
        .map(|(r, b)| 0.9 * r + 0.1 * b)
        .collect();
    let var = (rv.iter().zip(&truth.var))
        .map(|(r, b)| 0.9 * r + 0.1 * b * m / (m - 1.0))
        .collect();
    Ok((mean, var))
}

fn train_matches_reference(dtype: DType, offset: f64) -> Result<()> {
    let config = BatchNormConfig::default();
    for (seed, dims) in SHAPES.iter().enumerate() {
        for layout in LAYOUTS {
            if dims.len() == 2 && layout == Layout::ChannelsLast {
                continue;
            }
            let case = Case::new(dims, offset, dtype, seed as u64)?;
            let (bn, _varmap) = module(&case, dtype, config)?;
            let got = run(&bn, &case, dtype, layout, true)?;
            let truth = case.truth(config.eps, Stats::Batch);
            let what = format!("{dtype:?} {dims:?} {layout:?} offset {offset}");
            check(&what, &got, &truth, dtype, offset)?;
            let (mean, var) = running_after(&case, &truth, dtype)?;
            let tol = tolerance(dtype, offset);
            assert_close(
                &format!("{what} running_mean"),
                &got.running_mean,
                &mean,
                tol,
            );
            assert_close(&format!("{what} running_var"), &got.running_var, &var, tol);
            assert_eq!(bn.num_batches_tracked()?, 1);
        }
    }
    Ok(())
}

#[test]
fn train_f64() -> Result<()> {
    train_matches_reference(DType::F64, 0.0)?;
    train_matches_reference(DType::F64, 1e6)
}

#[test]
fn train_f32() -> Result<()> {
    train_matches_reference(DType::F32, 0.0)?;
    train_matches_reference(DType::F32, 3.0)
}

#[test]
fn train_f32_large_offsets() -> Result<()> {
    // PyTorch's f32 kernel is off by 4.9e-4 at offset 1e4 and 0.06 at 1e6.
    train_matches_reference(DType::F32, 1e4)?;
    train_matches_reference(DType::F32, 1e6)
}

#[test]
fn train_bf16_and_f16() -> Result<()> {
    train_matches_reference(DType::BF16, 0.0)?;
    train_matches_reference(DType::BF16, 100.0)?;
    train_matches_reference(DType::F16, 0.0)?;
    train_matches_reference(DType::F16, 10.0)
}

/// Evaluation normalises with the running statistics, leaves them alone, and still gives
/// gradients (frozen BN): `dx = dy * weight / sqrt(running_var + eps)`.
fn frozen_matches_reference(dtype: DType, offset: f64) -> Result<()> {
    let config = BatchNormConfig::default();
    for (seed, dims) in SHAPES.iter().enumerate() {
        for layout in LAYOUTS {
            if dims.len() == 2 && layout == Layout::ChannelsLast {
                continue;
            }
            let case = Case::new(dims, offset, dtype, 100 + seed as u64)?;
            let (bn, _varmap) = module(&case, dtype, config)?;
            let got = run(&bn, &case, dtype, layout, false)?;
            let rv = common::representable(&case.running_var, param_dtype(dtype))?;
            let truth = case.truth(config.eps, Stats::Running(&case.running_mean, &rv));
            let what = format!("eval {dtype:?} {dims:?} {layout:?} offset {offset}");
            check(&what, &got, &truth, dtype, offset)?;
            assert_eq!(got.running_mean, case.running_mean, "{what}: untouched");
            assert_eq!(got.running_var, rv, "{what}: untouched");
            assert_eq!(bn.num_batches_tracked()?, 0);
        }
    }
    Ok(())
}

#[test]
fn frozen_f64_and_f32() -> Result<()> {
    frozen_matches_reference(DType::F64, 0.0)?;
    frozen_matches_reference(DType::F32, 0.0)?;
    frozen_matches_reference(DType::F32, 1e4)
}

#[test]
fn frozen_bf16_and_f16() -> Result<()> {
    frozen_matches_reference(DType::BF16, 0.0)?;
    frozen_matches_reference(DType::F16, 0.0)
}

/// Without affine parameters the op is a `CustomOp1`: gradients for x only, gamma 1, beta 0.
#[test]
fn without_affine_parameters() -> Result<()> {
    let config = BatchNormConfig {
        affine: false,
        ..BatchNormConfig::default()
    };
    for layout in LAYOUTS {
        let mut case = Case::new(&[3, 4, 5, 6], 2.0, DType::F32, 7)?;
        case.weight = vec![1.0; 4];
        case.bias = vec![0.0; 4];
        let (bn, varmap) = module(&case, DType::F32, config)?;
        assert!(bn.weight().is_none() && bn.bias().is_none());
        assert!(!varmap.data().lock().unwrap().contains_key("bn.weight"));
        let got = run(&bn, &case, DType::F32, layout, true)?;
        let truth = case.truth(config.eps, Stats::Batch);
        assert_close("no affine y", &got.y, &truth.y, 1e-6);
        assert_close("no affine dx", &got.dx, &truth.dx, 1e-6);
    }
    Ok(())
}

/// Without tracking there are no running statistics, and evaluation uses the batch's.
#[test]
fn without_tracking_evaluation_uses_the_batch() -> Result<()> {
    let config = BatchNormConfig {
        track_running_stats: false,
        ..BatchNormConfig::default()
    };
    let case = Case::new(&[4, 3, 5, 5], 1.0, DType::F64, 8)?;
    let (bn, varmap) = module(&case, DType::F64, config)?;
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    assert!(
        names.iter().all(|n| n == "bn.weight" || n == "bn.bias"),
        "{names:?}"
    );
    let got = run(&bn, &case, DType::F64, Layout::ChannelsFirst, false)?;
    check(
        "untracked eval",
        &got,
        &case.truth(config.eps, Stats::Batch),
        DType::F64,
        1.0,
    )?;
    assert_eq!(bn.num_batches_tracked()?, 0);
    Ok(())
}

/// A start offset (a batch narrowed along N) is read in place, also under a channels-last view;
/// other strides (every other sample) are copied once; the results are the same as for contiguous input.
#[test]
fn offsets_and_odd_strides() -> Result<()> {
    let case = Case::new(&[6, 3, 4, 5], 1.0, DType::F64, 9)?;
    let (bn, _varmap) = module(&case, DType::F64, BatchNormConfig::default())?;
    let full = Tensor::from_vec(case.x.clone(), case.dims.as_slice(), &Device::Cpu)?;
    let check_view = |what: &str, x: &Tensor| -> Result<()> {
        let values = logical(x)?;
        let y = bn.forward_t(x, true)?;
        let ones = vec![1.0; values.len()];
        let (w, b) = (&case.weight, &case.bias);
        let truth = reference(&values, &ones, x.dims(), w, b, 1e-5, Stats::Batch);
        assert_close(what, &logical(&y)?, &truth.y, 1e-12);
        Ok(())
    };
    check_view("offset", &full.narrow(0, 2, 3)?)?;
    let nhwc = full.permute((0, 2, 3, 1))?.contiguous()?;
    let view = nhwc.narrow(0, 1, 4)?.permute((0, 3, 1, 2))?;
    check_view("channels-last with offset", &view)?;
    // Every other sample: strided along N, neither layout.
    let every_other = full.reshape((3, 2, 3, 4, 5))?.narrow(1, 0, 1)?.squeeze(1)?;
    assert!(!every_other.is_contiguous());
    check_view("every other sample", &every_other)?;
    Ok(())
}

/// Gradients through autograd agree with central differences of the loss (f64), for x, weight
/// and bias, in both layouts: the op, the views and candle's graph are wired right.
#[test]
fn finite_differences() -> Result<()> {
    let dims = [3, 2, 3, 4];
    for layout in LAYOUTS {
        let case = Case::new(&dims, 0.5, DType::F64, 10)?;
        let config = BatchNormConfig {
            track_running_stats: false,
            ..BatchNormConfig::default()
        };
        let (bn, _varmap) = module(&case, DType::F64, config)?;
        let got = run(&bn, &case, DType::F64, layout, true)?;
        let dy = Tensor::from_vec(case.dy.clone(), &dims[..], &Device::Cpu)?;
        let loss = |x: &[f64]| -> Result<f64> {
            let (_, x) = input(x, &dims, DType::F64, layout)?;
            bn.forward_t(&x, true)?
                .mul(&dy)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let h = 1e-5;
        for i in (0..case.x.len()).step_by(7) {
            let (mut plus, mut minus) = (case.x.clone(), case.x.clone());
            plus[i] += h;
            minus[i] -= h;
            let fd = (loss(&plus)? - loss(&minus)?) / (2.0 * h);
            // Central differences: error O(h^2 * f''') plus rounding 1e-16 / h.
            assert!(
                (fd - got.dx[i]).abs() < 1e-8,
                "dx[{i}]: {fd} vs {}",
                got.dx[i]
            );
        }
        let weight = bn.weight().unwrap();
        for c in 0..2 {
            let nudged = |d: f64| -> Result<f64> {
                let mut w = case.weight.clone();
                w[c] += d;
                let var = Var::from_tensor(weight)?;
                var.set(&Tensor::new(w.as_slice(), &Device::Cpu)?)?;
                let l = loss(&case.x)?;
                var.set(&Tensor::new(case.weight.as_slice(), &Device::Cpu)?)?;
                Ok(l)
            };
            let fd = (nudged(h)? - nudged(-h)?) / (2.0 * h);
            assert!(
                (fd - got.dweight[c]).abs() < 1e-8,
                "dweight[{c}]: {fd} vs {}",
                got.dweight[c]
            );
        }
    }
    Ok(())
}

/// The threading choice changes nothing: rayon's pool and the calling thread give the same bits.
#[test]
fn par_gives_the_same_bits() -> Result<()> {
    let case = Case::new(&[8, 16, 24, 24], 1.0, DType::F32, 11)?;
    let mut results = Vec::new();
    for par in [Par::Seq, Par::Rayon] {
        let (mut bn, _varmap) = module(&case, DType::F32, BatchNormConfig::default())?;
        bn.set_par(par);
        assert_eq!(bn.par(), par);
        let got = run(&bn, &case, DType::F32, Layout::ChannelsLast, true)?;
        results.push((got.y, got.dx, got.dweight));
    }
    assert!(results[0] == results[1]);
    Ok(())
}
