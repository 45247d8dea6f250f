//! The finite-difference harness shared by the gradient-check tests.
//!
//! Tolerance: with `h = 1e-5`, the central difference has truncation error `h^2 f''' / 6`
//! (about 1e-10 for these O(1) functions, exactly 0 for piecewise-linear layers away from their
//! kinks) and rounding error about `eps |f| / h` (about 1e-11 for |f| ~ 10), so agreement to
//! `1e-7 * (1 + |g|)` leaves two orders of margin while any wrong term of a backward pass
//! (errors of order |g|, 1e-2 and up) fails it.
#![allow(dead_code)]
// each test binary uses a different part of this module
// Index loops read best here: `i` addresses the same element in the value and gradient tensors.
#![allow(clippy::needless_range_loop)]

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{BatchNorm, Layer, Mode, Param};
use batchnorm_nn::{Rng, Sequential, SoftmaxCrossEntropy};

pub const H: f64 = 1e-5;
pub const TOL: f64 = 1e-7;

pub fn randn(n: usize, std: f64, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| std * rng.normal()).collect()
}

pub fn close(what: &str, analytic: f64, numeric: f64) {
    assert!(
        (analytic - numeric).abs() <= TOL * (1.0 + numeric.abs()),
        "{what}: analytic {analytic:.12e} vs finite difference {numeric:.12e}"
    );
}

/// `sum r y` for the layer's forward on `x`.
fn objective(layer: &mut dyn Layer<f64>, x: &[f64], n: usize, mode: Mode, r: &[f64]) -> f64 {
    let mut y = vec![0.0; n * layer.out_len()];
    layer.forward(x, n, mode, &mut y).unwrap();
    y.iter().zip(r).map(|(a, b)| a * b).sum()
}

/// A `visit_params` of a layer or a network.
type Visit<'a> = dyn FnMut(&mut dyn FnMut(Param<'_, f64>)) + 'a;

/// Adds `v` to element `i` of parameter tensor `t` (in `visit_params` order).
fn bump(visit: &mut Visit<'_>, t: usize, i: usize, v: f64) {
    let mut k = 0;
    visit(&mut |p| {
        if k == t {
            p.value[i] += v;
        }
        k += 1;
    });
}

/// Checks dx and every parameter gradient of `layer` at `x` in `mode` on `f = sum r y` for a
/// random `r`; returns how many parameter tensors it checked.
pub fn check_layer(
    layer: &mut dyn Layer<f64>,
    x: &[f64],
    n: usize,
    mode: Mode,
    seed: u64,
) -> usize {
    let mut rng = Rng::new(seed);
    let r = randn(n * layer.out_len(), 1.0, &mut rng);
    let mut y = vec![0.0; n * layer.out_len()];
    layer.forward(x, n, mode, &mut y).unwrap();
    // NaN-filled so that an element backward forgets to write fails the comparison.
    let mut dx = vec![f64::NAN; x.len()];
    layer.backward(x, &y, &r, n, Some(&mut dx)).unwrap();
    let mut grads: Vec<Vec<f64>> = Vec::new();
    layer.visit_params(&mut |p| grads.push(p.grad.to_vec()));

    let name = layer.name();
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let fp = objective(layer, &xp, n, mode, &r);
        xp[i] = x[i] - H;
        let fm = objective(layer, &xp, n, mode, &r);
        xp[i] = x[i];
        close(&format!("{name} dx[{i}]"), dx[i], (fp - fm) / (2.0 * H));
    }
    for (t, g) in grads.iter().enumerate() {
        for i in 0..g.len() {
            let mut f_at = |v: f64| {
                bump(&mut |f| layer.visit_params(f), t, i, v);
                let f = objective(layer, x, n, mode, &r);
                bump(&mut |f| layer.visit_params(f), t, i, -v);
                f
            };
            let num = (f_at(H) - f_at(-H)) / (2.0 * H);
            close(&format!("{name} param {t}[{i}]"), g[i], num);
        }
    }
    grads.len()
}

/// A batch norm layer with non-trivial gamma and beta.
pub fn bn_with_params(dims: &[usize], rng: &mut Rng) -> BatchNorm<f64> {
    let mut bn = BatchNorm::<f64>::new(dims, BatchNormConfig::default()).unwrap();
    for w in &mut bn.inner.weight {
        *w = 1.0 + 0.5 * rng.normal();
    }
    for b in &mut bn.inner.bias {
        *b = rng.normal();
    }
    bn
}

fn net_loss(net: &mut Sequential<f64>, x: &[f64], labels: &[u8], ce: &SoftmaxCrossEntropy) -> f64 {
    let out = net.forward_from(x, labels.len(), Mode::Train).unwrap();
    ce.forward(out, labels).unwrap().loss
}

/// The analytic gradients of the cross-entropy of `net` on `(x, labels)`: the input gradient and
/// every parameter gradient (in `visit_params` order). Leaves this forward's activations in the
/// network, for checks on them.
pub fn network_gradients(
    net: &mut Sequential<f64>,
    x: &[f64],
    labels: &[u8],
    ce: &SoftmaxCrossEntropy,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = labels.len();
    net.forward_from(x, n, Mode::Train).unwrap();
    let (out, grad) = net.output_and_grad(n).unwrap();
    ce.forward_backward(out, labels, grad).unwrap();
    net.backward(n, true).unwrap();
    let dx = net.input_grad(n).to_vec();
    let mut grads: Vec<Vec<f64>> = Vec::new();
    net.visit_params(&mut |p| grads.push(p.grad.to_vec()));
    (dx, grads)
}

/// Compares the results of [`network_gradients`] with central differences of the loss.
pub fn check_network_gradients(
    net: &mut Sequential<f64>,
    x: &[f64],
    labels: &[u8],
    ce: &SoftmaxCrossEntropy,
    dx: &[f64],
    grads: &[Vec<f64>],
) {
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let fp = net_loss(net, &xp, labels, ce);
        xp[i] = x[i] - H;
        let fm = net_loss(net, &xp, labels, ce);
        xp[i] = x[i];
        close(&format!("network dx[{i}]"), dx[i], (fp - fm) / (2.0 * H));
    }
    for (t, g) in grads.iter().enumerate() {
        for i in 0..g.len() {
            let mut f_at = |v: f64| {
                bump(&mut |f| net.visit_params(f), t, i, v);
                let f = net_loss(net, x, labels, ce);
                bump(&mut |f| net.visit_params(f), t, i, -v);
                f
            };
            let num = (f_at(H) - f_at(-H)) / (2.0 * H);
            close(&format!("network param {t}[{i}]"), g[i], num);
        }
    }
}
