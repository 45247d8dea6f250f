//! The f64 oracle: a copy of an f32 network with every parameter and running statistic widened
//! to f64 (exactly), evaluated in f64.

use batchnorm_nn::layers::{BatchNorm, Conv2d, Flatten, Layer, Linear, MaxPool2d, Relu, Sigmoid};
use batchnorm_nn::Sequential;

use crate::experiments::LabError;

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `model` in f64, for batches of up to `capacity` images.
///
/// # Errors
/// [`LabError::Setup`] for a layer type it does not know or a BN whose sample shape is not
/// `[C]` or a square `[C, H, H]`.
pub(super) fn to_f64(
    model: &Sequential<f32>,
    capacity: usize,
) -> Result<Sequential<f64>, LabError> {
    let mut out: Vec<Box<dyn Layer<f64>>> = Vec::new();
    for layer in model.layers() {
        let l = layer.as_ref();
        if let Some(lin) = l.downcast_ref::<Linear<f32>>() {
            let mut w = Linear::<f64>::new(Layer::<f32>::in_len(lin), Layer::<f32>::out_len(lin))?;
            w.weight = widen(&lin.weight);
            w.bias = widen(&lin.bias);
            out.push(Box::new(w));
        } else if let Some(conv) = l.downcast_ref::<Conv2d<f32>>() {
            let mut c = Conv2d::<f64>::new(*conv.config())?;
            c.weight = widen(&conv.weight);
            c.bias = widen(&conv.bias);
            out.push(Box::new(c));
        } else if let Some(bn) = l.downcast_ref::<BatchNorm<f32>>() {
            let channels = bn.inner.channels();
            let len = Layer::<f32>::in_len(bn);
            let per = len / channels;
            let side = (per as f64).sqrt().round() as usize;
            let dims: Vec<usize> = if per == 1 {
                vec![channels]
            } else if side * side == per {
                vec![channels, side, side]
            } else {
                return Err(LabError::Setup(
                    "f64 oracle: BN sample is not [C] or [C, H, H]",
                ));
            };
            let mut b = BatchNorm::<f64>::new(&dims, *bn.inner.config())?;
            b.inner.weight = widen(&bn.inner.weight);
            b.inner.bias = widen(&bn.inner.bias);
            b.inner.running_mean = widen(&bn.inner.running_mean);
            b.inner.running_var = widen(&bn.inner.running_var);
            out.push(Box::new(b));
        } else if let Some(s) = l.downcast_ref::<Sigmoid>() {
            out.push(Box::new(s.clone()));
        } else if let Some(r) = l.downcast_ref::<Relu>() {
            out.push(Box::new(r.clone()));
        } else if let Some(p) = l.downcast_ref::<MaxPool2d>() {
            out.push(Box::new(p.clone()));
        } else if let Some(f) = l.downcast_ref::<Flatten>() {
            out.push(Box::new(f.clone()));
        } else {
            return Err(LabError::Setup("f64 oracle: unknown layer type"));
        }
    }
    Ok(Sequential::new(out, capacity)?)
}
