//! The running statistics in the `VarBuilder` after several training steps (momentum and
//! cumulative average), against the same recursion in `f64`; loading PyTorch-named tensors.
//!
//! Tolerance 1e-6 relative for `f32` statistics: each step rounds the new value once to `f32`
//! (6e-8), and the rounding errors of earlier steps shrink by (1 - momentum) per step.

mod common;

use std::collections::HashMap;

use batchnorm_candle::{batch_norm, BatchNormConfig};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use common::{assert_close, logical, reference, Rng, Stats};

const DIMS: [usize; 4] = [4, 3, 5, 5];

/// The running mean and unbiased variance after `batches`, by the `f64` recursion, with factor
/// `factor(step)` (steps counted from 1).
fn expected(batches: &[Vec<f64>], factor: impl Fn(u64) -> f64) -> (Vec<f64>, Vec<f64>) {
    let c = DIMS[1];
    let m = (batches[0].len() / c) as f64;
    let (mut mean, mut var) = (vec![0.0; c], vec![1.0; c]);
    for (step, x) in batches.iter().enumerate() {
        let f = factor(step as u64 + 1);
        let ones = vec![1.0; x.len()];
        let truth = reference(x, &ones, &DIMS, &[1.0; 3], &[0.0; 3], 1e-5, Stats::Batch);
        for ch in 0..c {
            mean[ch] = (1.0 - f) * mean[ch] + f * truth.mean[ch];
            var[ch] = (1.0 - f) * var[ch] + f * truth.var[ch] * m / (m - 1.0);
        }
    }
    (mean, var)
}

/// Five batches with different means and spreads.
fn batches() -> Result<Vec<Vec<f64>>> {
    let mut rng = Rng::new(42);
    let n: usize = DIMS.iter().product();
    (0..5)
        .map(|k| common::representable(&rng.values(n, k as f64, 1.0 + k as f64), DType::F32))
        .collect()
}

fn var(varmap: &VarMap, name: &str) -> Result<Tensor> {
    Ok(varmap.data().lock().unwrap()[name].as_tensor().clone())
}

fn train(config: BatchNormConfig) -> Result<(VarMap, u64)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = batch_norm(DIMS[1], config, vb.pp("layer.bn"))?;
    for x in batches()? {
        let x = Tensor::from_vec(x, &DIMS[..], &Device::Cpu)?.to_dtype(DType::F32)?;
        bn.forward_t(&x, true)?;
        // Evaluation calls in between change nothing.
        bn.forward_t(&x, false)?;
    }
    Ok((varmap, bn.num_batches_tracked()?))
}

#[test]
fn momentum_moves_the_running_statistics_in_the_varmap() -> Result<()> {
    let (varmap, count) = train(BatchNormConfig::default())?;
    let (mean, var_) = expected(&batches()?, |_| 0.1);
    assert_close(
        "running_mean",
        &logical(&var(&varmap, "layer.bn.running_mean")?)?,
        &mean,
        1e-6,
    );
    assert_close(
        "running_var",
        &logical(&var(&varmap, "layer.bn.running_var")?)?,
        &var_,
        1e-6,
    );
    assert_eq!(count, 5);
    // With a momentum the count does not enter the arithmetic: no variable is made for it.
    assert!(!varmap
        .data()
        .lock()
        .unwrap()
        .contains_key("layer.bn.num_batches_tracked"));
    Ok(())
}

#[test]
fn cumulative_average_counts_in_the_varmap() -> Result<()> {
    let config = BatchNormConfig {
        momentum: None,
        ..BatchNormConfig::default()
    };
    let (varmap, count) = train(config)?;
    let (mean, var_) = expected(&batches()?, |step| 1.0 / step as f64);
    assert_close(
        "running_mean",
        &logical(&var(&varmap, "layer.bn.running_mean")?)?,
        &mean,
        1e-6,
    );
    assert_close(
        "running_var",
        &logical(&var(&varmap, "layer.bn.running_var")?)?,
        &var_,
        1e-6,
    );
    let tracked = var(&varmap, "layer.bn.num_batches_tracked")?;
    assert_eq!(tracked.dtype(), DType::I64);
    assert_eq!(tracked.dims(), [0usize; 0]);
    assert_eq!(tracked.to_scalar::<i64>()?, 5);
    assert_eq!(count, 5);
    // The cumulative average of five batches is their plain average.
    let truths = batches()?;
    let plain: Vec<f64> = (0..3)
        .map(|ch| {
            let ones = vec![1.0; truths[0].len()];
            truths
                .iter()
                .map(|x| {
                    reference(x, &ones, &DIMS, &[1.0; 3], &[0.0; 3], 1e-5, Stats::Batch).mean[ch]
                })
                .sum::<f64>()
                / 5.0
        })
        .collect();
    assert_close(
        "plain average",
        &logical(&var(&varmap, "layer.bn.running_mean")?)?,
        &plain,
        1e-6,
    );
    Ok(())
}

/// A second module over the same `VarMap` (a model built twice, or a checkpoint reloaded) goes
/// on from the stored count.
#[test]
fn the_count_lives_in_the_varmap() -> Result<()> {
    let config = BatchNormConfig {
        momentum: None,
        ..BatchNormConfig::default()
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let x =
        Tensor::from_vec(batches()?.remove(0), &DIMS[..], &Device::Cpu)?.to_dtype(DType::F32)?;
    batch_norm(3, config, vb.pp("bn"))?.forward_t(&x, true)?;
    let again = batch_norm(3, config, vb.pp("bn"))?;
    assert_eq!(again.num_batches_tracked()?, 1);
    again.forward_t(&x, true)?;
    assert_eq!(
        var(&varmap, "bn.num_batches_tracked")?.to_scalar::<i64>()?,
        2
    );
    Ok(())
}

/// Tensors named as PyTorch names them (a `state_dict` of `nn.BatchNorm2d`) load through
/// `VarBuilder::from_tensors`, and evaluation uses them.
#[test]
fn pytorch_names_load() -> Result<()> {
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = [
        ("bn.weight", Tensor::new(&[2f32, 0.5, 1.0], &dev)?),
        ("bn.bias", Tensor::new(&[1f32, 0.0, -1.0], &dev)?),
        ("bn.running_mean", Tensor::new(&[1f32, 2.0, 3.0], &dev)?),
        ("bn.running_var", Tensor::new(&[4f32, 1.0, 0.25], &dev)?),
        ("bn.num_batches_tracked", Tensor::new(7i64, &dev)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let bn = batch_norm(3, BatchNormConfig::default(), vb.pp("bn"))?;
    assert_eq!(
        bn.num_batches_tracked()?,
        7,
        "kept because the checkpoint has it"
    );
    let x = Tensor::new(&[[5f32, 3.0, 3.5]], &dev)?;
    let y = bn.forward_t(&x, false)?.to_vec2::<f32>()?;
    let want =
        |x: f64, mean: f64, var: f64, w: f64, b: f64| (x - mean) / (var + 1e-5f64).sqrt() * w + b;
    let want = [
        want(5.0, 1.0, 4.0, 2.0, 1.0),
        want(3.0, 2.0, 1.0, 0.5, 0.0),
        want(3.5, 3.0, 0.25, 1.0, -1.0),
    ];
    for (g, w) in y[0].iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "{g} vs {w}"
        );
    }
    Ok(())
}
