//! The two networks of the experiment: the same 784-100-100-100-10 sigmoid MLP with and without
//! batch normalization, built from one set of initial weights.

use batchnorm_nn::layers::Linear;
use batchnorm_nn::{NnError, Sequential};

use crate::experiments::mlp::{self, Activation};

/// Layer widths: MNIST pixels, three hidden layers of 100 sigmoids, ten classes.
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];

/// Which of the two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No batch normalization.
    Plain,
    /// Batch normalization before every hidden sigmoid.
    BatchNorm,
}

impl Variant {
    /// The key used in files (`"plain"`, `"bn"`).
    pub fn key(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::BatchNorm => "bn",
        }
    }

    /// The label used in figures and reports.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Plain => "without BN",
            Variant::BatchNorm => "with BN",
        }
    }
}

/// The four linear layers' initial weights: N(0, `std`^2), biases 0, drawn in order from
/// `Rng::new(seed)`.
///
/// # Errors
/// [`NnError::InvalidConfig`] for a negative or non-finite `std`.
pub fn initial_linears(seed: u64, std: f64) -> Result<Vec<Linear<f32>>, NnError> {
    mlp::initial_linears(&WIDTHS, seed, |_| std)
}

/// The network: `Linear, [BatchNorm,] Sigmoid` three times, then `Linear`, with workspaces for
/// batches of up to `capacity`. Batch normalization uses PyTorch's defaults (eps 1e-5,
/// momentum 0.1, learnable gamma and beta).
///
/// # Errors
/// Only if the layers do not fit together, which they do by construction.
pub fn build(
    linears: &[Linear<f32>],
    variant: Variant,
    capacity: usize,
) -> Result<Sequential<f32>, NnError> {
    mlp::build(
        linears,
        Activation::Sigmoid,
        variant == Variant::BatchNorm,
        capacity,
    )
}

/// The index of the layer whose input is probed: the last hidden layer's sigmoid.
pub fn probe_layer(model: &Sequential<f32>) -> Option<usize> {
    model.layers().iter().rposition(|l| l.name() == "sigmoid")
}
