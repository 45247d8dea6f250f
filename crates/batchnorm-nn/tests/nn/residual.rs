//! The fused BN+ReLU layer and the residual basic block: finite-difference gradient checks in
//! f64 (harness and tolerance in `common/mod.rs`), bit-for-bit agreement of the fused and the
//! separate passes, torchvision's state-dict names, and folding for evaluation.

use crate::common;

use batchnorm::BatchNormConfig;
use batchnorm_nn::fold::fold_batch_norm;
use batchnorm_nn::layers::{
    BasicBlock, BasicBlockConfig, BatchNorm, BatchNormRelu, BlockNorm, GlobalAvgPool, Layer, Mode,
    Relu,
};
use batchnorm_nn::{Rng, Sequential};
use common::{bn_with_params, check_layer, randn};

/// A block of `c_in -> c_out` channels on `hw` inputs, every batch normalization with random
/// weights and biases (so that no gradient term is hidden by gamma = 1, beta = 0), and random
/// biases when the block has no normalization.
fn block<T: batchnorm_nn::Scalar>(
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    stride: usize,
    norm: BlockNorm,
    rng: &mut Rng,
) -> BasicBlock<T> {
    let cfg = BasicBlockConfig {
        in_channels: c_in,
        out_channels: c_out,
        input_hw: hw,
        stride,
        norm,
    };
    let mut b = BasicBlock::<T>::new(cfg, rng).unwrap();
    b.visit_params(&mut |p| {
        if p.name.ends_with("bias") {
            p.value
                .iter_mut()
                .for_each(|v| *v = T::from_f64(0.5 * rng.normal()));
        } else if p.name.starts_with("bn") || p.name == "downsample.1.weight" {
            p.value
                .iter_mut()
                .for_each(|v| *v = T::from_f64(1.0 + 0.3 * rng.normal()));
        }
    });
    b
}

fn fused() -> BlockNorm {
    BlockNorm::Fused(BatchNormConfig::default())
}

#[test]
fn batch_norm_relu_gradients() {
    let mut rng = Rng::new(31);
    let mut layer = BatchNormRelu {
        bn: bn_with_params(&[3, 4, 5], &mut rng),
    };
    let x = randn(3 * 60, 1.0, &mut rng);
    assert_eq!(check_layer(&mut layer, &x, 3, Mode::Train, 32), 2);
}

#[test]
fn global_avg_pool_gradients() {
    let mut rng = Rng::new(33);
    let x = randn(2 * 3 * 20, 1.0, &mut rng);
    let mut pool = GlobalAvgPool::new(3, 20).unwrap();
    assert_eq!(check_layer(&mut pool, &x, 2, Mode::Train, 34), 0);
}

#[test]
fn basic_block_gradients_with_projection_identity_and_without_norm() {
    // Stride 2 with a projection (2 -> 3 channels), the identity shortcut (3 -> 3), and a
    // block without normalization (biases everywhere).
    let cases = [
        (2, 3, [6, 5], 2, fused(), 9),
        (3, 3, [4, 4], 1, fused(), 6),
        (2, 3, [5, 5], 2, BlockNorm::None, 6),
    ];
    for (c_in, c_out, hw, stride, norm, expected) in cases {
        let mut rng = Rng::new(41 + c_in as u64 + stride as u64);
        let mut b = block::<f64>(c_in, c_out, hw, stride, norm, &mut rng);
        let n = 3;
        let x = randn(n * c_in * hw[0] * hw[1], 1.0, &mut rng);
        // A kink (a ReLU input within reach of 0 under x +- h) would fail the check, not pass
        // it: the seeds are ones whose pre-activations stay clear of 0.
        let checked = check_layer(&mut b, &x, n, Mode::Train, 43);
        assert_eq!(checked, expected, "{c_in}->{c_out} stride {stride}");
    }
}

/// Forward in `mode`, then backward with a fixed upstream gradient: the output, dx and every
/// parameter gradient.
fn run_f32(layer: &mut dyn Layer<f32>, x: &[f32], n: usize, mode: Mode) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(99);
    let mut y = vec![0.0; n * layer.out_len()];
    layer.forward(x, n, mode, &mut y).unwrap();
    let dy: Vec<f32> = (0..y.len()).map(|_| rng.normal() as f32).collect();
    let mut dx = vec![f32::NAN; x.len()];
    layer.backward(x, &y, &dy, n, Some(&mut dx)).unwrap();
    let mut out = vec![y, dx];
    layer.visit_params(&mut |p| out.push(p.grad.to_vec()));
    out
}

#[test]
fn fused_block_equals_separate_passes_bit_for_bit() {
    // The core's fused forward rounds bn(x) to f32 before adding the residual and masks the
    // gradient exactly as the ReLU does: the same bits, in training and in evaluation.
    let separate = BlockNorm::Separate(BatchNormConfig::default());
    for (c_in, stride) in [(4, 2), (6, 1)] {
        let mut a = block::<f32>(c_in, 6, [8, 8], stride, fused(), &mut Rng::new(3));
        let mut b = block::<f32>(c_in, 6, [8, 8], stride, separate, &mut Rng::new(3));
        let mut rng = Rng::new(5);
        for (step, mode) in [Mode::Train, Mode::Train, Mode::Eval, Mode::BatchStats]
            .into_iter()
            .enumerate()
        {
            let x: Vec<f32> = (0..4 * c_in * 64).map(|_| rng.normal() as f32).collect();
            let (ra, rb) = (run_f32(&mut a, &x, 4, mode), run_f32(&mut b, &x, 4, mode));
            // y, dx, and 9 parameter tensors with the projection, 6 without.
            assert_eq!(ra.len(), if stride == 2 { 11 } else { 8 });
            for (i, (u, v)) in ra.iter().zip(&rb).enumerate() {
                let same = u.iter().zip(v).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same, "step {step} ({mode:?}), tensor {i}");
            }
            assert!(ra[0].contains(&0.0) && ra[0].iter().any(|&v| v > 0.0));
        }
        let sa = Sequential::new(vec![Box::new(a) as Box<dyn Layer<f32>>], 4).unwrap();
        let sb = Sequential::new(vec![Box::new(b) as Box<dyn Layer<f32>>], 4).unwrap();
        let (mut sa, mut sb) = (sa, sb);
        assert_eq!(sa.state_dict().unwrap(), sb.state_dict().unwrap());
    }
}

#[test]
fn batch_norm_relu_equals_batch_norm_then_relu_bit_for_bit() {
    let mut rng = Rng::new(8);
    let cfg = BatchNormConfig::default();
    let mut fusedl = BatchNormRelu::<f32>::new(&[5, 3, 3], cfg).unwrap();
    let mut bn = BatchNorm::<f32>::new(&[5, 3, 3], cfg).unwrap();
    let mut relu = Relu::new(45).unwrap();
    for mode in [Mode::Train, Mode::Eval, Mode::BatchStats] {
        let x: Vec<f32> = (0..6 * 45).map(|_| rng.normal() as f32).collect();
        let dy: Vec<f32> = (0..6 * 45).map(|_| rng.normal() as f32).collect();
        let (mut y, mut z, mut h) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; x.len()]);
        fusedl.forward(&x, 6, mode, &mut y).unwrap();
        bn.forward(&x, 6, mode, &mut h).unwrap();
        Layer::<f32>::forward(&mut relu, &h, 6, mode, &mut z).unwrap();
        assert!(y.iter().zip(&z).all(|(a, b)| a.to_bits() == b.to_bits()));
        let (mut dx, mut dh, mut dz) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; x.len()]);
        fusedl.backward(&x, &y, &dy, 6, Some(&mut dx)).unwrap();
        Layer::<f32>::backward(&mut relu, &h, &z, &dy, 6, Some(&mut dh)).unwrap();
        bn.backward(&x, &h, &dh, 6, Some(&mut dz)).unwrap();
        assert!(dx.iter().zip(&dz).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(fusedl.bn.weight_grad, bn.weight_grad);
        assert_eq!(fusedl.bn.bias_grad, bn.bias_grad);
        assert_eq!(fusedl.bn.inner.running_var, bn.inner.running_var);
    }
}

#[test]
fn block_state_dict_has_torchvision_names_and_round_trips() {
    let mut rng = Rng::new(12);
    let mut b = block::<f32>(2, 4, [6, 6], 2, fused(), &mut rng);
    let x: Vec<f32> = (0..3 * 72).map(|_| rng.normal() as f32).collect();
    run_f32(&mut b, &x, 3, Mode::Train);
    let mut model = Sequential::new(vec![Box::new(b) as Box<dyn Layer<f32>>], 3).unwrap();
    let sd = model.state_dict().unwrap();
    // torchvision.models.resnet.BasicBlock(2, 4, stride=2, downsample=Sequential(conv1x1, BN)).
    let bn = |p: &str| {
        [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ]
        .map(|f| {
            (
                format!("0.{p}.{f}"),
                if f == "num_batches_tracked" {
                    vec![]
                } else {
                    vec![4]
                },
            )
        })
    };
    let mut want: Vec<(String, Vec<usize>)> = vec![("0.conv1.weight".into(), vec![4, 2, 3, 3])];
    want.extend(bn("bn1"));
    want.push(("0.conv2.weight".into(), vec![4, 4, 3, 3]));
    want.extend(bn("bn2"));
    want.push(("0.downsample.0.weight".into(), vec![4, 2, 1, 1]));
    want.extend(bn("downsample.1"));
    let mut got: Vec<(String, Vec<usize>)> = sd
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    let mut fresh = Sequential::new(
        vec![
            Box::new(block::<f32>(2, 4, [6, 6], 2, fused(), &mut Rng::new(77)))
                as Box<dyn Layer<f32>>,
        ],
        3,
    )
    .unwrap();
    assert_ne!(fresh.state_dict().unwrap(), sd);
    let report = fresh.load_state_dict(&sd, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    assert_eq!(fresh.state_dict().unwrap(), sd);
}

/// A trained-looking block: random parameters, and running statistics moved by five training
/// batches of inputs with mean 0.5.
fn trained_block(stride: usize, rng: &mut Rng) -> BasicBlock<f32> {
    let mut b = block::<f32>(3, 5, [7, 7], stride, fused(), rng);
    for _ in 0..5 {
        let x: Vec<f32> = (0..6 * 147).map(|_| 0.5 + rng.normal() as f32).collect();
        run_f32(&mut b, &x, 6, Mode::Train);
    }
    b
}

#[test]
fn folded_block_equals_the_block_in_evaluation() {
    for stride in [1, 2] {
        let mut rng = Rng::new(20 + stride as u64);
        let b = trained_block(stride, &mut rng);
        let x: Vec<f32> = (0..4 * 147).map(|_| 0.5 + rng.normal() as f32).collect();
        let eval = |l: &mut dyn Layer<f32>| {
            let mut y = vec![0.0; 4 * l.out_len()];
            l.forward(&x, 4, Mode::Eval, &mut y).unwrap();
            y.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>()
        };
        let x64: Vec<f64> = x.iter().map(|&v| v.into()).collect();
        let mut wide = b.to_f64().unwrap();
        let mut truth = vec![0.0; 4 * wide.out_len()];
        wide.forward(&x64, 4, Mode::Eval, &mut truth).unwrap();

        // Folding in f64 is exact up to f64 rounding: two conv layers of at most 45 products
        // each and a per-channel scale, on O(1) activations, leave errors near 1e-14.
        let mut wide_folded = wide.fold_own_batch_norms().unwrap().unwrap();
        let mut folded64 = vec![0.0; truth.len()];
        wide_folded
            .forward(&x64, 4, Mode::Eval, &mut folded64)
            .unwrap();
        for (a, b) in folded64.iter().zip(&truth) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }

        // In f32, through a Sequential as a user folds a model.
        let mut model =
            Sequential::new(vec![Box::new(b.clone()) as Box<dyn Layer<f32>>], 4).unwrap();
        let mut folded = fold_batch_norm(&model).unwrap();
        let folded_block = folded.layers()[0]
            .downcast_ref::<BasicBlock<f32>>()
            .unwrap();
        assert!(folded_block.bn1.is_none() && folded_block.bn2.is_none());
        let err = |v: &[f64]| {
            v.iter()
                .zip(&truth)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        let unfolded_err = err(&eval(model.layers_mut()[0].as_mut()));
        let folded_err = err(&eval(folded.layers_mut()[0].as_mut()));
        eprintln!(
            "stride {stride}: max |error| vs f64: unfolded {unfolded_err:e}, folded {folded_err:e}"
        );
        // Folding adds one rounding (relative u = 2^-24) per weight and bias, the order of one
        // product of the convolutions both run: the folded block is as accurate as the
        // unfolded one within 4x, plus a floor of 64 u times the outputs' scale (O(10) here)
        // for an unfolded error that happens to be tiny; and both are f32-accurate: two
        // layers of at most 45 products, BN scales below 10, outputs below 100: under 1e-3.
        let u = f64::from(f32::EPSILON) / 2.0;
        let scale = truth.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(
            folded_err <= 4.0 * unfolded_err + 64.0 * u * scale,
            "folded {folded_err:e}, unfolded {unfolded_err:e}"
        );
        assert!(unfolded_err < 1e-3 && folded_err < 1e-3);
        assert!(truth.iter().any(|&v| v > 0.0) && truth.contains(&0.0));
    }
}
