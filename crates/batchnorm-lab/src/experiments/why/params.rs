//! What the measurements at one step share: the loss and gradient on the batch held in the
//! model's input buffer, and the model's parameters (or gradients) saved, moved and restored.

use batchnorm_nn::layers::Mode;
use batchnorm_nn::{NnError, Scalar, Sequential, SoftmaxCrossEntropy};

/// The mean loss over the `n` samples in `model`'s input buffer with labels `labels`, batch
/// normalization with batch statistics and running statistics untouched
/// ([`Mode::BatchStats`]); leaves the loss's gradient in every parameter.
///
/// # Errors
/// Any error of the training stack.
pub(super) fn loss_and_grad<T: Scalar>(
    model: &mut Sequential<T>,
    n: usize,
    labels: &[u8],
) -> Result<f64, NnError> {
    model.forward(n, Mode::BatchStats)?;
    let (out, grad) = model.output_and_grad(n)?;
    let ce = SoftmaxCrossEntropy::new(out.len() / n)?;
    let s = ce.forward_backward(out, labels, grad)?;
    model.backward(n, false)?;
    Ok(s.loss)
}

/// A copy of a model's parameter values or gradients: per layer, per tensor, in
/// [`Sequential::visit_params`] order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Params<T> {
    layers: Vec<Vec<Vec<T>>>,
}

impl<T: Scalar> Params<T> {
    /// The model's parameter values.
    pub(super) fn values(model: &mut Sequential<T>) -> Self {
        Self::copy(model, |p| p.value.to_vec())
    }

    /// The model's parameter gradients (of the last backward).
    pub(super) fn grads(model: &mut Sequential<T>) -> Self {
        Self::copy(model, |p| p.grad.to_vec())
    }

    fn copy(
        model: &mut Sequential<T>,
        take: impl Fn(&batchnorm_nn::layers::Param<'_, T>) -> Vec<T>,
    ) -> Self {
        let layers = model
            .layers_mut()
            .iter_mut()
            .map(|l| {
                let mut tensors = Vec::new();
                l.visit_params(&mut |p| tensors.push(take(&p)));
                tensors
            })
            .collect();
        Params { layers }
    }

    /// The tensors of layer `index` (none for a layer without parameters or out of range).
    pub(super) fn layer(&self, index: usize) -> &[Vec<T>] {
        self.layers.get(index).map_or(&[], Vec::as_slice)
    }

    /// Sets the model's parameters of every layer to `self - eta * step` for the layers with
    /// index below `below` and to `self` for the others: `below = layers` moves all of them.
    pub(super) fn set_moved(
        &self,
        model: &mut Sequential<T>,
        step: &Params<T>,
        eta: f64,
        below: usize,
    ) {
        let eta = T::from_f64(eta);
        for (i, l) in model.layers_mut().iter_mut().enumerate() {
            let (own, dir) = (self.layer(i), step.layer(i));
            let mut t = 0;
            l.visit_params(&mut |p| {
                if let Some(v) = own.get(t) {
                    p.value.copy_from_slice(v);
                    if i < below {
                        for (x, &g) in p.value.iter_mut().zip(&dir[t]) {
                            *x = *x - eta * g;
                        }
                    }
                }
                t += 1;
            });
        }
    }

    /// Sets the model's parameter values to `self`.
    pub(super) fn restore_values(&self, model: &mut Sequential<T>) {
        self.write(model, |p, v| p.value.copy_from_slice(v));
    }

    /// Sets the model's parameter gradients to `self`.
    pub(super) fn restore_grads(&self, model: &mut Sequential<T>) {
        self.write(model, |p, v| p.grad.copy_from_slice(v));
    }

    fn write(
        &self,
        model: &mut Sequential<T>,
        put: impl Fn(&mut batchnorm_nn::layers::Param<'_, T>, &[T]),
    ) {
        for (l, own) in model.layers_mut().iter_mut().zip(&self.layers) {
            let mut t = 0;
            l.visit_params(&mut |mut p| {
                if let Some(v) = own.get(t) {
                    put(&mut p, v);
                }
                t += 1;
            });
        }
    }

    /// The Euclidean norm of every tensor together, accumulated in f64.
    pub(super) fn norm(&self) -> f64 {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|v| v.to_f64().powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// `||self - other||_2` over every tensor, accumulated in f64.
    pub(super) fn distance(&self, other: &Params<T>) -> f64 {
        let a = self.layers.iter().flatten().flatten();
        let b = other.layers.iter().flatten().flatten();
        a.zip(b)
            .map(|(x, y)| (x.to_f64() - y.to_f64()).powi(2))
            .sum::<f64>()
            .sqrt()
    }
}

/// The `weight` tensor of layer `index`: its gradient when `grad`, else its values; `None` if
/// the layer has no such tensor.
pub(super) fn weight<T: Scalar>(
    model: &mut Sequential<T>,
    index: usize,
    grad: bool,
) -> Option<Vec<T>> {
    let mut found = None;
    model.layers_mut().get_mut(index)?.visit_params(&mut |p| {
        if p.name == "weight" && found.is_none() {
            found = Some(if grad {
                p.grad.to_vec()
            } else {
                p.value.to_vec()
            });
        }
    });
    found
}
