//! Bad input is a candle error carrying our message, and changes nothing.

use batchnorm::BatchNormError;
use batchnorm_candle::{batch_norm, BatchNorm, BatchNormConfig, Error};
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};

fn module(channels: usize, config: BatchNormConfig) -> (BatchNorm, VarMap) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = batch_norm(channels, config, vb.pp("bn")).expect("a valid module");
    (bn, varmap)
}

/// The message of `result`'s error, which must be one.
#[track_caller]
fn message<T: std::fmt::Debug>(result: candle_core::Result<T>) -> String {
    result.expect_err("an error").to_string()
}

fn running(varmap: &VarMap) -> (Vec<f32>, Vec<f32>) {
    let data = varmap.data().lock().unwrap();
    let get = |n: &str| data[n].as_tensor().to_vec1::<f32>().unwrap();
    (get("bn.running_mean"), get("bn.running_var"))
}

#[test]
fn one_value_per_channel_in_training() {
    let (bn, varmap) = module(3, BatchNormConfig::default());
    let x = Tensor::new(&[[1f32, 2.0, 3.0]], &Device::Cpu).unwrap(); // (1, 3)
    let before = running(&varmap);
    let msg = message(bn.forward_t(&x, true));
    let want = Error::Kernel(BatchNormError::TooFewValues { dims: vec![1, 3] }).to_string();
    assert!(msg.contains(&want), "{msg}");
    assert!(
        msg.contains("expected more than 1 value per channel"),
        "{msg}"
    );
    assert_eq!(running(&varmap), before, "nothing is modified");
    assert_eq!(bn.num_batches_tracked().unwrap(), 0);
    // Evaluation normalises a single sample with the running statistics.
    let y = bn.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
    assert!((y[0][2] - 3.0 / (1.0f32 + 1e-5).sqrt()).abs() < 1e-6);
    // (1, 3, 1, 1) is one value per channel too.
    assert!(bn
        .forward_t(&x.reshape((1, 3, 1, 1)).unwrap(), true)
        .is_err());
}

#[test]
fn wrong_channel_count() {
    let (bn, _) = module(4, BatchNormConfig::default());
    let x = Tensor::zeros((2, 3, 5), DType::F32, &Device::Cpu).unwrap();
    let msg = message(bn.forward_t(&x, true));
    let want = Error::Kernel(BatchNormError::ChannelMismatch {
        expected: 4,
        got: 3,
    });
    assert!(msg.contains(&want.to_string()), "{msg}");
}

#[test]
fn wrong_rank() {
    let (bn, _) = module(3, BatchNormConfig::default());
    let x = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(message(bn.forward_t(&x, true)).contains("2 to 5 dimensions"));
    let x = Tensor::zeros((2, 3, 2, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(message(bn.forward_t(&x, false)).contains("2 to 5 dimensions"));
}

#[test]
fn unsupported_dtypes() {
    let (bn, _) = module(3, BatchNormConfig::default());
    let x = Tensor::zeros((2, 3), DType::U8, &Device::Cpu).unwrap();
    let want = Error::UnsupportedDType {
        what: "x",
        dtype: DType::U8,
    };
    assert!(message(bn.forward_t(&x, true)).contains(&want.to_string()));

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::I64, &Device::Cpu);
    let msg = message(batch_norm(3, BatchNormConfig::default(), vb));
    assert!(msg.contains("supported: f32, f64, bf16, f16"), "{msg}");
}

#[test]
fn invalid_configurations() {
    let vb = || {
        let varmap = VarMap::new();
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)
    };
    let eps = BatchNormConfig {
        eps: 0.0,
        ..BatchNormConfig::default()
    };
    assert!(message(batch_norm(3, eps, vb())).contains("eps must be finite and > 0"));
    let momentum = BatchNormConfig {
        momentum: Some(1.5),
        ..BatchNormConfig::default()
    };
    assert!(message(batch_norm(3, momentum, vb())).contains("momentum must be in [0, 1]"));
    let msg = message(batch_norm(0, BatchNormConfig::default(), vb()));
    assert!(msg.contains("number of channels must be positive"), "{msg}");
}

/// Parameters of the wrong shape in the `VarBuilder` (a checkpoint for another layer).
#[test]
fn parameters_of_the_wrong_shape() {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    batch_norm(3, BatchNormConfig::default(), vb.pp("bn")).unwrap();
    varmap
        .set_one(
            "bn.weight",
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    assert!(batch_norm(4, BatchNormConfig::default(), vb.pp("bn")).is_err());
}

/// A negative running variance (set by hand) cannot normalise.
#[test]
fn negative_running_variance_in_evaluation() {
    let (bn, mut varmap) = module(2, BatchNormConfig::default());
    let bad = Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap();
    varmap.set_one("bn.running_var", bad).unwrap();
    let x = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(message(bn.forward_t(&x, false)).contains("running_var[1] = -1 is negative"));
}
