//! Agreement with `candle_nn::BatchNorm` where candle is right: moderate data (no large offset,
//! more than one value per channel), the same `VarMap` names and initial values.
//!
//! In `f64` both are within a few roundings of the truth: 1e-12. In `f32` candle sums each
//! channel's values in `f32` (its error grows with m, 1e-6 relative here), so 1e-5.

mod common;

use batchnorm::Layout;
use batchnorm_candle::{batch_norm, BatchNormConfig};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use common::{assert_close, grad_logical, input, logical, Rng};

/// y, dx, dweight, dbias, running mean and variance after a training step and an evaluation.
fn step(
    module: &dyn ModuleT,
    varmap: &VarMap,
    x: &[f64],
    dims: &[usize],
    dtype: DType,
    layout: Layout,
    train: bool,
) -> Result<Vec<Vec<f64>>> {
    let (x_var, x) = input(x, dims, dtype, layout)?;
    let y = module.forward_t(&x, train)?;
    let dy = Tensor::arange(0.0, y.elem_count() as f64, &Device::Cpu)?
        .affine(0.01, -1.0)?
        .sin()?
        .reshape(dims)?
        .to_dtype(dtype)?;
    let grads = y.mul(&dy)?.sum_all()?.backward()?;
    let data = varmap.data().lock().unwrap();
    let get = |name: &str| -> Result<Tensor> { Ok(data[name].as_tensor().clone()) };
    Ok(vec![
        logical(&y)?,
        grad_logical(grads.get(x_var.as_tensor()).unwrap(), layout)?,
        logical(grads.get(&get("bn.weight")?).unwrap())?,
        logical(grads.get(&get("bn.bias")?).unwrap())?,
        logical(&get("bn.running_mean")?)?,
        logical(&get("bn.running_var")?)?,
    ])
}

#[test]
fn agrees_with_candle_nn() -> Result<()> {
    let names = ["y", "dx", "dweight", "dbias", "running_mean", "running_var"];
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (dims, layout) in [
            (&[32, 5][..], Layout::ChannelsFirst),
            (&[8, 4, 6, 6][..], Layout::ChannelsFirst),
            (&[8, 4, 6, 6][..], Layout::ChannelsLast),
            (&[2, 3, 4, 5, 6][..], Layout::ChannelsFirst),
        ] {
            let n: usize = dims.iter().product();
            let x = common::representable(&Rng::new(5).values(n, 0.5, 2.0), dtype)?;
            for train in [true, false] {
                let theirs_map = VarMap::new();
                let vb = VarBuilder::from_varmap(&theirs_map, dtype, &Device::Cpu);
                let theirs = candle_nn::batch_norm(dims[1], 1e-5, vb.pp("bn"))?;
                let ours_map = VarMap::new();
                let vb = VarBuilder::from_varmap(&ours_map, dtype, &Device::Cpu);
                let ours = batch_norm(dims[1], BatchNormConfig::default(), vb.pp("bn"))?;
                // One training step first, so that evaluation sees running statistics that moved.
                if !train {
                    let warm = Tensor::from_vec(x.clone(), dims, &Device::Cpu)?.to_dtype(dtype)?;
                    theirs.forward_t(&warm, true)?;
                    ours.forward_t(&warm, true)?;
                }
                let a = step(&theirs, &theirs_map, &x, dims, dtype, layout, train)?;
                let b = step(&ours, &ours_map, &x, dims, dtype, layout, train)?;
                for ((name, a), b) in names.iter().zip(&a).zip(&b) {
                    let what = format!("{dtype:?} {dims:?} {layout:?} train {train}: {name}");
                    assert_close(&what, b, a, tol);
                }
            }
        }
    }
    Ok(())
}

/// Where candle is wrong: one value per channel in training gives candle zeros and a NaN
/// running variance; ours is an error and leaves the statistics alone.
#[test]
fn one_value_per_channel_candle_nn_returns_nan() -> Result<()> {
    let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu)?;
    let map = VarMap::new();
    let theirs = candle_nn::batch_norm(
        2,
        1e-5,
        VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
    )?;
    let y = theirs.forward_t(&x, true)?.to_vec2::<f32>()?;
    assert_eq!(y, [[0.0, 0.0]]);
    assert!(theirs.running_var().to_vec1::<f32>()?[0].is_nan());

    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let ours = batch_norm(2, BatchNormConfig::default(), vb)?;
    assert!(ours.forward_t(&x, true).is_err());
    assert_eq!(ours.running_var().unwrap().to_vec1::<f32>()?, [1.0, 1.0]);
    Ok(())
}
