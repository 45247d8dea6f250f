//! Internal covariate shift measured through gradients (Santurkar et al. 2018, definition 2.1).
//!
//! For a layer `i` with weights `W_i`, on one batch at the current parameters `theta`:
//! `G = dL/dW_i (theta)`, and `G' = dL/dW_i (theta')` where `theta'` is `theta` with every layer
//! below `i` (earlier in the network) moved by its SGD step on the same batch,
//! `theta'_j = theta_j - lr * dL/dtheta_j (theta)` for `j < i`, and layer `i` and above unchanged.
//! `G'` is the gradient layer `i` would see if the layers feeding it had already taken their
//! step: `||G - G'||_2` measures how much the shift of its input, caused by their update, changes
//! what layer `i` should do; `cos(G, G')` whether it still points the same way.

use batchnorm_nn::{NnError, Scalar, Sequential};

use super::params::{loss_and_grad, weight, Params};

/// The measurement for one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerIcs {
    /// `||G - G'||_2`.
    pub l2: f64,
    /// `<G, G'> / (||G|| ||G'||)`, in [-1, 1]; NaN when either gradient is zero.
    pub cosine: f64,
    /// `||G||_2`, the scale `l2` compares with.
    pub grad_norm: f64,
}

/// [`LayerIcs`] for each of `layers` (indices into `model.layers()` of layers with a `weight`),
/// on the `n` samples in `model`'s input buffer with labels `labels` and learning rate `lr`.
/// Batch normalization uses batch statistics and its running statistics are untouched; on
/// return the model's parameters and gradients are those at `theta` (as after one backward).
///
/// ```
/// use batchnorm_lab::experiments::why::ics;
/// use batchnorm_nn::layers::{Layer, Linear, Relu};
/// use batchnorm_nn::{Rng, Sequential};
///
/// let mut rng = Rng::new(1);
/// let layers: Vec<Box<dyn Layer<f64>>> = vec![
///     Box::new(Linear::gaussian(4, 8, 0.5, &mut rng)?),
///     Box::new(Relu::new(8)?),
///     Box::new(Linear::gaussian(8, 3, 0.5, &mut rng)?),
/// ];
/// let mut model = Sequential::new(layers, 5)?;
/// for x in model.input_mut(5)? {
///     *x = rng.normal();
/// }
/// // The last linear layer's gradient before and after the first one steps (lr 0.5).
/// let shift = ics::measure(&mut model, 5, &[0, 1, 2, 0, 1], 0.5, &[2])?;
/// assert!(shift[0].l2 > 0.0 && (-1.0..=1.0).contains(&shift[0].cosine));
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
///
/// # Errors
/// Any error of the training stack; [`NnError::IndexOutOfRange`] for a layer without weights.
pub fn measure<T: Scalar>(
    model: &mut Sequential<T>,
    n: usize,
    labels: &[u8],
    lr: f64,
    layers: &[usize],
) -> Result<Vec<LayerIcs>, NnError> {
    let count = model.layers().len();
    let theta = Params::values(model);
    loss_and_grad(model, n, labels)?;
    let grads = Params::grads(model);
    let before: Vec<Vec<T>> = layers
        .iter()
        .map(|&i| {
            weight(model, i, true).ok_or(NnError::IndexOutOfRange {
                what: "layer with weights",
                index: i,
                len: count,
            })
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(layers.len());
    for (&i, g) in layers.iter().zip(&before) {
        theta.set_moved(model, &grads, lr, i);
        loss_and_grad(model, n, labels)?;
        let g2 = weight(model, i, true).unwrap_or_default();
        out.push(compare(g, &g2));
    }
    theta.restore_values(model);
    grads.restore_grads(model);
    Ok(out)
}

/// `||a - b||`, the cosine between `a` and `b`, and `||a||`, accumulated in f64.
fn compare<T: Scalar>(a: &[T], b: &[T]) -> LayerIcs {
    let (mut diff, mut dot, mut aa, mut bb) = (0.0, 0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x.to_f64(), y.to_f64());
        diff += (x - y) * (x - y);
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    let cosine = if aa > 0.0 && bb > 0.0 {
        // Rounding can push |dot| a hair past sqrt(aa bb): keep the cosine in [-1, 1].
        (dot / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0)
    } else {
        f64::NAN
    };
    LayerIcs {
        l2: diff.sqrt(),
        cosine,
        grad_norm: aa.sqrt(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use batchnorm::BatchNormConfig;
    use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Mode, Sigmoid};
    use batchnorm_nn::{Rng, Sequential, SoftmaxCrossEntropy};

    use super::*;

    pub(in super::super) const N: usize = 6;

    /// Linear(3, 4), BatchNorm(4), Sigmoid, Linear(4, 3) in f64 with random weights, a batch of
    /// `N` random inputs in its input buffer; the labels.
    pub(in super::super) fn tiny_net() -> (Sequential<f64>, Vec<u8>) {
        let mut rng = Rng::new(11);
        let mut bn = BatchNorm::new(&[4], BatchNormConfig::default()).unwrap();
        // Non-trivial gamma and beta, so their steps matter.
        bn.visit_params(&mut |p| {
            for v in p.value.iter_mut() {
                *v += 0.3 * rng.normal();
            }
        });
        let layers: Vec<Box<dyn Layer<f64>>> = vec![
            Box::new(Linear::gaussian(3, 4, 0.8, &mut rng).unwrap()),
            Box::new(bn),
            Box::new(Sigmoid::new(4).unwrap()),
            Box::new(Linear::gaussian(4, 3, 0.8, &mut rng).unwrap()),
        ];
        let mut model = Sequential::new(layers, N).unwrap();
        for x in model.input_mut(N).unwrap() {
            *x = rng.normal();
        }
        let labels = (0..N).map(|i| (i % 3) as u8).collect();
        (model, labels)
    }

    /// The loss at the model's current parameters, by a forward pass only.
    pub(in super::super) fn loss_only(model: &mut Sequential<f64>, labels: &[u8]) -> f64 {
        let out = model.forward(N, Mode::BatchStats).unwrap();
        SoftmaxCrossEntropy::new(3)
            .unwrap()
            .forward(out, labels)
            .unwrap()
            .loss
    }

    /// Every parameter as one flat vector.
    pub(in super::super) fn flat(model: &mut Sequential<f64>) -> Vec<f64> {
        let mut v = Vec::new();
        model.visit_params(&mut |p| v.extend_from_slice(p.value));
        v
    }

    /// Sets every parameter from one flat vector.
    pub(in super::super) fn set_flat(model: &mut Sequential<f64>, v: &[f64]) {
        let mut it = v.iter();
        model.visit_params(&mut |p| {
            for x in p.value.iter_mut() {
                *x = *it.next().unwrap();
            }
        });
    }

    /// The gradient of the loss with respect to every parameter by central differences, with no
    /// back-propagation at all: the independent route.
    pub(in super::super) fn fd_grad(model: &mut Sequential<f64>, labels: &[u8]) -> Vec<f64> {
        let theta = flat(model);
        // h = 1e-5: truncation error ~h^2 * |f'''| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11.
        let h = 1e-5;
        let g = (0..theta.len())
            .map(|k| {
                let mut t = theta.clone();
                t[k] += h;
                set_flat(model, &t);
                let up = loss_only(model, labels);
                t[k] -= 2.0 * h;
                set_flat(model, &t);
                let down = loss_only(model, labels);
                (up - down) / (2.0 * h)
            })
            .collect();
        set_flat(model, &theta);
        g
    }

    #[test]
    fn g_prime_is_the_gradient_after_the_lower_layers_step_by_finite_differences() {
        let (mut model, labels) = tiny_net();
        let lr = 0.5;
        let theta = flat(&mut model);
        // Layer 0 has 12 + 4 parameters, BN 4 + 4, the last linear 12 + 3: its weight is flat
        // [24, 36).
        let g = fd_grad(&mut model, &labels);
        let mut moved = theta.clone();
        for k in 0..24 {
            moved[k] -= lr * g[k];
        }
        set_flat(&mut model, &moved);
        let g2 = fd_grad(&mut model, &labels);
        set_flat(&mut model, &theta);
        let (a, b) = (&g[24..36], &g2[24..36]);
        let l2 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cosine = dot / (norm(a) * norm(b));

        let ics = measure(&mut model, N, &labels, lr, &[3, 0]).unwrap();
        // Central differences of a smooth loss of size ~1 are good to ~1e-9 (see fd_grad); l2
        // here is ~0.1, so 1e-7 relative leaves two orders of margin.
        assert!(l2 > 1e-3, "the lower layers' step must change G ({l2})");
        assert!(
            (ics[0].l2 - l2).abs() < 1e-7 * l2.max(1.0),
            "{} vs {l2}",
            ics[0].l2
        );
        assert!(
            (ics[0].cosine - cosine).abs() < 1e-8,
            "{} vs {cosine}",
            ics[0].cosine
        );
        assert!((ics[0].grad_norm - norm(a)).abs() < 1e-8);
        // The first layer has nothing below it: G' = G exactly.
        assert_eq!(ics[1].l2, 0.0);
        assert!((ics[1].cosine - 1.0).abs() < 1e-15, "{}", ics[1].cosine);
        // The parameters are back at theta, bit for bit, and so are their gradients.
        assert_eq!(flat(&mut model), theta);
        let after = Params::grads(&mut model);
        loss_and_grad(&mut model, N, &labels).unwrap();
        assert_eq!(after, Params::grads(&mut model));
        // A layer without weights is an error, not a silent zero.
        assert!(measure(&mut model, N, &labels, lr, &[2]).is_err());
    }
}
