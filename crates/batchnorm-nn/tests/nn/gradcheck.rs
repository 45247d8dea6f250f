//! Finite-difference gradient checks, in f64, for every layer and for a whole network.
//!
//! Each layer is checked on the scalar `f = sum_j r_j y_j` for fixed random `r` (so
//! `dL/dy = r`): every analytic derivative with respect to inputs and parameters is compared
//! with the central difference `(f(v + h) - f(v - h)) / 2h`.
//!
//! The harness and its tolerance are in `common/mod.rs`.

// Index loops read best here: `i` addresses the same element in the value and gradient tensors.
#![allow(clippy::needless_range_loop)]

use crate::common;

use batchnorm_nn::layers::{Layer, Linear, Mode, Relu, Sigmoid};
use batchnorm_nn::{Rng, Sequential, SoftmaxCrossEntropy};
use common::{
    bn_with_params, check_layer, check_network_gradients, close, network_gradients, randn, H,
};

#[test]
fn linear() {
    let mut rng = Rng::new(1);
    let mut l = Linear::<f64>::gaussian(7, 5, 0.5, &mut rng).unwrap();
    for b in &mut l.bias {
        *b = rng.normal();
    }
    let x = randn(4 * 7, 1.0, &mut rng);
    check_layer(&mut l, &x, 4, Mode::Train, 2);
}

#[test]
fn sigmoid() {
    let mut rng = Rng::new(3);
    let x = randn(6 * 5, 2.0, &mut rng);
    check_layer(&mut Sigmoid::new(5).unwrap(), &x, 6, Mode::Train, 4);
}

#[test]
fn relu_away_from_the_kink() {
    let mut rng = Rng::new(5);
    // Keep |x| >= 0.1 so x +- h never crosses 0, where the derivative jumps.
    let x: Vec<f64> = randn(6 * 5, 1.0, &mut rng)
        .into_iter()
        .map(|v| if v >= 0.0 { v + 0.1 } else { v - 0.1 })
        .collect();
    check_layer(&mut Relu::new(5).unwrap(), &x, 6, Mode::Train, 6);
}

#[test]
fn batch_norm_1d_batch_statistics() {
    let mut rng = Rng::new(7);
    let mut bn = bn_with_params(&[4], &mut rng);
    let x: Vec<f64> = randn(5 * 4, 2.0, &mut rng)
        .into_iter()
        .map(|v| v + 3.0)
        .collect();
    check_layer(&mut bn, &x, 5, Mode::Train, 8);
    check_layer(&mut bn, &x, 5, Mode::BatchStats, 9);
}

#[test]
fn batch_norm_1d_running_statistics() {
    let mut rng = Rng::new(10);
    let mut bn = bn_with_params(&[3], &mut rng);
    bn.inner.running_mean = vec![0.5, -1.0, 2.0];
    bn.inner.running_var = vec![0.3, 2.0, 1.5];
    let x = randn(4 * 3, 1.0, &mut rng);
    check_layer(&mut bn, &x, 4, Mode::Eval, 11);
}

#[test]
fn batch_norm_2d() {
    let mut rng = Rng::new(12);
    let mut bn = bn_with_params(&[3, 2, 2], &mut rng);
    let x = randn(2 * 3 * 2 * 2, 1.5, &mut rng);
    check_layer(&mut bn, &x, 2, Mode::Train, 13);
}

#[test]
fn batch_stats_mode_leaves_running_statistics_alone() {
    let mut rng = Rng::new(14);
    let mut bn = bn_with_params(&[3], &mut rng);
    let x = randn(8 * 3, 1.0, &mut rng);
    let mut y = vec![0.0; x.len()];
    let (rm, rv) = (bn.inner.running_mean.clone(), bn.inner.running_var.clone());
    bn.forward(&x, 8, Mode::BatchStats, &mut y).unwrap();
    assert_eq!(
        (
            &bn.inner.running_mean,
            &bn.inner.running_var,
            bn.inner.num_batches_tracked
        ),
        (&rm, &rv, 0)
    );
    let mut y_train = vec![0.0; x.len()];
    bn.forward(&x, 8, Mode::Train, &mut y_train).unwrap();
    assert_eq!(
        y, y_train,
        "BatchStats must normalise exactly as Train does"
    );
    assert_ne!(
        bn.inner.running_mean, rm,
        "Train must update the running mean"
    );
    assert_eq!(bn.inner.num_batches_tracked, 1);
}

fn small_net(rng: &mut Rng) -> Sequential<f64> {
    let mut l1 = Linear::gaussian(6, 5, 0.7, rng).unwrap();
    let mut l2 = Linear::gaussian(5, 4, 0.7, rng).unwrap();
    let mut l3 = Linear::gaussian(4, 3, 0.7, rng).unwrap();
    for b in l1.bias.iter_mut().chain(&mut l2.bias).chain(&mut l3.bias) {
        *b = 0.3 * rng.normal();
    }
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(l1),
        Box::new(bn_with_params(&[5], rng)),
        Box::new(Sigmoid::new(5).unwrap()),
        Box::new(l2),
        Box::new(Relu::new(4).unwrap()),
        Box::new(l3),
    ];
    Sequential::new(layers, 8).unwrap()
}

#[test]
fn whole_network_with_softmax_cross_entropy() {
    let mut rng = Rng::new(20);
    let mut net = small_net(&mut rng);
    let ce = SoftmaxCrossEntropy::new(3).unwrap();
    let n = 7;
    let x = randn(n * 6, 1.0, &mut rng);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();

    let (dx, grads) = network_gradients(&mut net, &x, &labels, &ce);
    assert_eq!(
        grads.len(),
        8,
        "3 linear layers and 1 batch norm, 2 tensors each"
    );

    // A ReLU input within h of 0 would make the finite difference meaningless.
    let relu_in = net.activation(4, n).unwrap();
    assert!(
        relu_in.iter().all(|v| v.abs() > 1e-3),
        "pick another seed: a ReLU input sits on the kink"
    );
    check_network_gradients(&mut net, &x, &labels, &ce, &dx, &grads);
}

#[test]
fn softmax_cross_entropy_gradient() {
    let mut rng = Rng::new(30);
    let ce = SoftmaxCrossEntropy::new(4).unwrap();
    let z = randn(5 * 4, 3.0, &mut rng);
    let labels = [0u8, 3, 1, 2, 3];
    let mut g = vec![0.0; z.len()];
    ce.forward_backward(&z, &labels, &mut g).unwrap();
    let mut zp = z.clone();
    for i in 0..z.len() {
        zp[i] = z[i] + H;
        let fp = ce.forward(&zp, &labels).unwrap().loss;
        zp[i] = z[i] - H;
        let fm = ce.forward(&zp, &labels).unwrap().loss;
        zp[i] = z[i];
        close(
            &format!("cross-entropy dz[{i}]"),
            g[i],
            (fp - fm) / (2.0 * H),
        );
    }
}

#[test]
fn model_rejects_misfits_and_oversized_batches() {
    let mut rng = Rng::new(40);
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::gaussian(4, 3, 1.0, &mut rng).unwrap()),
        Box::new(Sigmoid::new(2).unwrap()),
    ];
    assert!(Sequential::new(layers, 4).is_err());
    let mut net = small_net(&mut rng);
    assert!(net.input_mut(9).is_err());
    assert!(net.input_mut(0).is_err());
    assert!(
        net.backward(3, false).is_err(),
        "backward before any forward"
    );
    // Batch normalization of one sample has no batch variance: an error, not a panic.
    assert!(net.forward_from(&[0.5; 6], 1, Mode::Train).is_err());
}

#[test]
fn layers_reject_batch_sizes_whose_length_overflows() {
    // n * len overflows usize: every layer reports a length mismatch instead of panicking.
    let mut rng = Rng::new(50);
    let n = usize::MAX / 2;
    let mut layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::gaussian(4, 3, 1.0, &mut rng).unwrap()),
        Box::new(Sigmoid::new(4).unwrap()),
        Box::new(Relu::new(4).unwrap()),
        Box::new(bn_with_params(&[4], &mut rng)),
    ];
    for layer in &mut layers {
        let mut y = [0.0; 12];
        assert!(
            layer.forward(&[0.0; 8], n, Mode::Train, &mut y).is_err(),
            "{}",
            layer.name()
        );
    }
}
