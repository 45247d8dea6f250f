//! The f64 oracle: a copy of an f32 network with every parameter and running statistic widened
//! to f64 (exactly), evaluated in f64.

use batchnorm_nn::Sequential;

use crate::experiments::LabError;

/// `model` in f64 ([`batchnorm_nn::layers::Layer::to_f64`] of each layer), for batches of up to `capacity` images.
///
/// # Errors
/// [`LabError::Setup`] for a layer that cannot be widened.
pub(super) fn to_f64(
    model: &Sequential<f32>,
    capacity: usize,
) -> Result<Sequential<f64>, LabError> {
    let layers = model
        .layers()
        .iter()
        .map(|l| l.to_f64())
        .collect::<Option<Vec<_>>>()
        .ok_or(LabError::Setup(
            "f64 oracle: a layer cannot be widened to f64",
        ))?;
    Ok(Sequential::new(layers, capacity)?)
}
