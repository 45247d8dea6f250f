//! Real-client check: state dicts written by PyTorch (`tests/fixtures/`, made by
//! `make_model_fixtures.py`) load into the equivalent `batchnorm-nn` models, which then reproduce
//! PyTorch's eval-mode logits.

use std::path::{Path, PathBuf};

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{
    BatchNorm, Conv2d, Conv2dConfig, Flatten, Layer, Linear, MaxPool2d, MaxPool2dConfig, Mode,
    Relu, Sigmoid,
};
use batchnorm_nn::safetensors::Dtype;
use batchnorm_nn::state_dict::StateDict;
use batchnorm_nn::Sequential;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// PyTorch's `mlp_bn` (see the script's doc), layer for layer.
fn mlp_bn() -> Sequential<f32> {
    let bn = || -> Box<dyn Layer<f32>> {
        Box::new(BatchNorm::new(&[100], BatchNormConfig::default()).unwrap())
    };
    let layers: Vec<Box<dyn Layer<f32>>> = vec![
        Box::new(Linear::new(784, 100).unwrap()),
        bn(),
        Box::new(Sigmoid::new(100).unwrap()),
        Box::new(Linear::new(100, 100).unwrap()),
        bn(),
        Box::new(Sigmoid::new(100).unwrap()),
        Box::new(Linear::new(100, 100).unwrap()),
        bn(),
        Box::new(Sigmoid::new(100).unwrap()),
        Box::new(Linear::new(100, 10).unwrap()),
    ];
    Sequential::new(layers, 64).unwrap()
}

/// PyTorch's `cnn_bn`, layer for layer.
fn cnn_bn() -> Sequential<f32> {
    let conv = |c, o, hw| -> Box<dyn Layer<f32>> {
        let cfg = Conv2dConfig {
            padding: [1, 1],
            ..Conv2dConfig::new(c, o, 3, [hw, hw])
        };
        Box::new(Conv2d::new(cfg).unwrap())
    };
    let bn = |c, hw| -> Box<dyn Layer<f32>> {
        Box::new(BatchNorm::new(&[c, hw, hw], BatchNormConfig::default()).unwrap())
    };
    let pool = |c, hw| -> Box<dyn Layer<f32>> {
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(c, 2, [hw, hw])).unwrap())
    };
    let layers: Vec<Box<dyn Layer<f32>>> = vec![
        conv(1, 8, 28),
        bn(8, 28),
        Box::new(Relu::new(8 * 28 * 28).unwrap()),
        pool(8, 28),
        conv(8, 16, 14),
        bn(16, 14),
        Box::new(Relu::new(16 * 14 * 14).unwrap()),
        pool(16, 14),
        Box::new(Flatten::new(784).unwrap()),
        Box::new(Linear::new(784, 10).unwrap()),
    ];
    Sequential::new(layers, 64).unwrap()
}

/// Loads `name.safetensors` strictly into `model`, runs the 64 images of `name_io` in eval mode
/// and returns the largest difference from PyTorch's `logits_eval`.
fn max_logit_error(name: &str, mut model: Sequential<f32>) -> f64 {
    let sd = StateDict::read(&fixture(&format!("{name}.safetensors"))).unwrap();
    let report = model.load_state_dict(&sd, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());

    let io = StateDict::read(&fixture(&format!("{name}_io.safetensors"))).unwrap();
    let input = &io.tensors["input"];
    let logits = &io.tensors["logits_eval"];
    assert_eq!((input.dtype(), logits.dtype()), (Dtype::F32, Dtype::F32));
    assert_eq!(input.shape()[0], 64);
    assert_eq!(logits.shape(), [64, 10]);
    let x: Vec<f32> = input
        .to_f64_vec()
        .unwrap()
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let want = logits.to_f64_vec().unwrap();
    let got = model.forward_from(&x, 64, Mode::Eval).unwrap();

    // A working network, not one that outputs constants: PyTorch's logits classify most of the
    // 64 images right (chance is 6), and ours pick the same class for every image.
    let labels = io.tensors["labels"].to_i64_vec().unwrap();
    let argmax = |row: &[f64]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0) as i64
    };
    let ours: Vec<i64> = got
        .chunks_exact(10)
        .map(|r| argmax(&r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
        .collect();
    let theirs: Vec<i64> = want.chunks_exact(10).map(argmax).collect();
    let correct = theirs.iter().zip(&labels).filter(|(a, b)| a == b).count();
    eprintln!("{name}: PyTorch classifies {correct}/64 right");
    assert!(
        correct >= 48,
        "{name}: PyTorch's model gets only {correct}/64"
    );
    assert_eq!(ours, theirs);

    got.iter()
        .zip(&want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

// Tolerance 1e-4 on logits of magnitude up to ~20: both sides compute in f32, with different
// summation orders in the matrix products (ours: matrixmultiply's blocked kernels; PyTorch:
// MKL/oneDNN) and in the normalisation (ours in f64, rounded once). Each of the few hundred
// terms of a dot product carries a relative rounding of 6e-8, so the two differ by ~1e-6 per
// layer; 1e-4 leaves room for ten layers of that while still catching any wrong weight,
// transposed matrix, or eps/variance mistake (those move logits by 1e-2 or more).
const LOGIT_TOL: f64 = 1e-4;

#[test]
fn mlp_bn_reproduces_pytorch_logits() {
    let err = max_logit_error("mlp_bn", mlp_bn());
    eprintln!("mlp_bn: max |logit - PyTorch| = {err:e}");
    assert!(err < LOGIT_TOL, "max |logit - PyTorch| = {err:e}");
}

#[test]
fn cnn_bn_reproduces_pytorch_logits() {
    let err = max_logit_error("cnn_bn", cnn_bn());
    eprintln!("cnn_bn: max |logit - PyTorch| = {err:e}");
    assert!(err < LOGIT_TOL, "max |logit - PyTorch| = {err:e}");
}

#[test]
fn pytorch_files_hold_what_the_script_says() {
    let sd = StateDict::read(&fixture("mlp_bn.safetensors")).unwrap();
    // Four Linear (weight, bias) and three BatchNorm1d (five entries each).
    assert_eq!(sd.tensors.len(), 4 * 2 + 3 * 5);
    let nbt = &sd.tensors["1.num_batches_tracked"];
    assert_eq!((nbt.dtype(), nbt.shape()), (Dtype::I64, &[][..]));
    // 300 training steps, one batch each.
    assert_eq!(nbt.to_i64_vec().unwrap(), [300]);
    assert_eq!(sd.tensors["0.weight"].shape(), [100, 784]);
    assert_eq!(sd.metadata.get("steps").map(String::as_str), Some("300"));

    let mut model = mlp_bn();
    model.load_state_dict(&sd, true).unwrap();
    let bn = model.layers()[4].downcast_ref::<BatchNorm<f32>>().unwrap();
    assert_eq!(bn.inner.num_batches_tracked, 300);
    let want: Vec<f32> = sd.tensors["4.running_var"]
        .to_f64_vec()
        .unwrap()
        .into_iter()
        .map(|v| v as f32)
        .collect();
    assert_eq!(bn.inner.running_var, want);

    // Saving what was loaded gives back PyTorch's tensors exactly.
    let again = model.state_dict().unwrap();
    assert_eq!(again.tensors, sd.tensors);

    // Likewise for the CNN: `[O, C, KH, KW]` convolution weights, 2-d batch normalizations,
    // and indices that skip the ReLU, pooling and flatten layers.
    let sd = StateDict::read(&fixture("cnn_bn.safetensors")).unwrap();
    assert_eq!(sd.tensors["4.weight"].shape(), [16, 8, 3, 3]);
    assert_eq!(sd.tensors["9.weight"].shape(), [10, 784]);
    let mut model = cnn_bn();
    model.load_state_dict(&sd, true).unwrap();
    assert_eq!(model.state_dict().unwrap().tensors, sd.tensors);
}
