//! Finite-difference gradient checks, in f64, for Conv2d, MaxPool2d, Flatten and a whole small
//! conv net (Conv-BN2d-ReLU-MaxPool-Flatten-Linear with softmax cross-entropy).
//!
//! Each layer is checked on `f = sum_j r_j y_j` for fixed random `r` (so `dL/dy = r`): every
//! analytic derivative with respect to inputs and parameters is compared with the central
//! difference `(f(v + h) - f(v - h)) / 2h`.
//!
//! The harness and its tolerance are in `common/mod.rs`: a wrong term (an off-by-one in a
//! window, a missed padding row, a gradient sent to the wrong argmax) fails it.

// Index loops read best here: `i` addresses the same element in the value and gradient tensors.
#![allow(clippy::needless_range_loop)]

use crate::common;

use batchnorm_nn::layers::{
    Conv2d, Conv2dConfig, Flatten, Layer, Linear, MaxPool2d, MaxPool2dConfig, Mode, Relu,
};
use batchnorm_nn::{Rng, Sequential, SoftmaxCrossEntropy};
use common::{bn_with_params, check_layer, check_network_gradients, network_gradients, randn};

fn conv_with_params(cfg: Conv2dConfig, rng: &mut Rng) -> Conv2d<f64> {
    let mut conv = Conv2d::gaussian(cfg, 0.5, rng).unwrap();
    for b in &mut conv.bias {
        *b = rng.normal();
    }
    conv
}

#[test]
fn conv2d_3x3_padding_1() {
    let mut rng = Rng::new(1);
    let cfg = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(2, 3, 3, [5, 4])
    };
    let mut conv = conv_with_params(cfg, &mut rng);
    let x = randn(2 * 2 * 5 * 4, 1.0, &mut rng);
    assert_eq!(
        check_layer(&mut conv, &x, 2, Mode::Train, 2),
        2,
        "weight and bias"
    );
}

#[test]
fn conv2d_stride_2_padding_1_rectangular_kernel_no_bias() {
    let mut rng = Rng::new(3);
    let cfg = Conv2dConfig {
        kernel: [3, 2],
        stride: [2, 2],
        padding: [1, 1],
        bias: false,
        ..Conv2dConfig::new(2, 3, 3, [6, 5])
    };
    let mut conv = conv_with_params(cfg, &mut rng);
    assert_eq!(conv.output_hw(), [3, 3]);
    let x = randn(3 * 2 * 6 * 5, 1.0, &mut rng);
    assert_eq!(
        check_layer(&mut conv, &x, 3, Mode::Train, 4),
        1,
        "weight only"
    );
}

#[test]
fn conv2d_unequal_strides_wide_padding_and_skipped_inputs() {
    // Stride 3 along the width with a width-2 kernel skips every third column: their dx must
    // be exactly 0, which the finite difference confirms. Padding 2 > kernel / 2 gives outputs
    // that read only padding.
    let mut rng = Rng::new(5);
    let cfg = Conv2dConfig {
        kernel: [2, 2],
        stride: [1, 3],
        padding: [2, 0],
        ..Conv2dConfig::new(1, 2, 2, [3, 8])
    };
    let mut conv = conv_with_params(cfg, &mut rng);
    assert_eq!(conv.output_hw(), [6, 3]);
    let x = randn(2 * 3 * 8, 1.0, &mut rng);
    check_layer(&mut conv, &x, 2, Mode::Train, 6);
}

/// Values whose pairwise gaps all exceed `gap`, in random order: no pooling window has a near
/// tie, so `x +- h` never changes an argmax.
fn spread(n: usize, gap: f64, rng: &mut Rng) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * gap).collect();
    rng.shuffle(&mut v);
    v
}

#[test]
fn max_pool_2x2_stride_2() {
    let mut rng = Rng::new(7);
    let mut pool = MaxPool2d::new(MaxPool2dConfig::new(3, 2, [4, 5])).unwrap();
    assert_eq!(pool.output_hw(), [2, 2], "floor mode drops the last column");
    let x = spread(2 * 3 * 4 * 5, 0.01, &mut rng);
    check_layer(&mut pool, &x, 2, Mode::Train, 8);
}

#[test]
fn max_pool_overlapping_windows_with_padding() {
    // Kernel 3, stride 2, padding 1: neighbouring windows share a row and a column, so one
    // input can be the argmax of several outputs and must receive the sum of their gradients.
    let mut rng = Rng::new(9);
    let cfg = MaxPool2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        ..MaxPool2dConfig::new(2, 3, [5, 6])
    };
    let mut pool = MaxPool2d::new(cfg).unwrap();
    assert_eq!(pool.output_hw(), [3, 3]);
    let x = spread(2 * 2 * 5 * 6, 0.01, &mut rng);
    check_layer(&mut pool, &x, 2, Mode::Train, 10);
}

#[test]
fn flatten() {
    let mut rng = Rng::new(11);
    let x = randn(3 * 12, 1.0, &mut rng);
    check_layer(&mut Flatten::new(12).unwrap(), &x, 3, Mode::Train, 12);
}

/// Conv(1 -> 3, 3x3, pad 1) - BN2d - ReLU - MaxPool(2) - Flatten - Linear(27, 4) on 6 x 6.
fn small_conv_net(rng: &mut Rng) -> Sequential<f64> {
    let cfg = Conv2dConfig {
        padding: [1, 1],
        ..Conv2dConfig::new(1, 3, 3, [6, 6])
    };
    let conv = conv_with_params(cfg, rng);
    let mut lin = Linear::gaussian(27, 4, 0.5, rng).unwrap();
    for b in &mut lin.bias {
        *b = 0.3 * rng.normal();
    }
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(conv),
        Box::new(bn_with_params(&[3, 6, 6], rng)),
        Box::new(Relu::new(108).unwrap()),
        Box::new(MaxPool2d::new(MaxPool2dConfig::new(3, 2, [6, 6])).unwrap()),
        Box::new(Flatten::new(27).unwrap()),
        Box::new(lin),
    ];
    Sequential::new(layers, 4).unwrap()
}

#[test]
fn whole_conv_net_with_batch_norm_2d() {
    let mut rng = Rng::new(21);
    let mut net = small_conv_net(&mut rng);
    let ce = SoftmaxCrossEntropy::new(4).unwrap();
    let n = 3;
    let x = randn(n * 36, 1.0, &mut rng);
    let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();

    let (dx, grads) = network_gradients(&mut net, &x, &labels, &ce);
    assert_eq!(
        grads.len(),
        6,
        "conv, batch norm and linear: 2 tensors each"
    );

    // The finite difference is meaningless where x +- h crosses a kink: a ReLU input within
    // reach of 0, or a pooling window whose two largest inputs nearly tie. Perturbations move
    // activations by about h |grad| ~ 1e-5, so a 1e-3 margin is ample.
    let relu_in = net.activation(2, n).unwrap();
    assert!(
        relu_in.iter().all(|v| v.abs() > 1e-3),
        "pick another seed: a ReLU input sits on the kink"
    );
    let pool_in = net.activation(3, n).unwrap();
    for plane in pool_in.chunks_exact(36) {
        for (p, q) in (0..3).flat_map(|p| (0..3).map(move |q| (p, q))) {
            let mut w: Vec<f64> = (0..4)
                .map(|k| plane[(2 * p + k / 2) * 6 + 2 * q + k % 2])
                .collect();
            w.sort_by(|a, b| b.total_cmp(a));
            assert!(
                w[0] == 0.0 || w[0] - w[1] > 1e-3,
                "pick another seed: a pooling window nearly ties"
            );
        }
    }

    check_network_gradients(&mut net, &x, &labels, &ce, &dx, &grads);
}
