//! Multi-layer perceptrons for MNIST: `Linear, [BatchNorm,] activation` per hidden layer, then a
//! linear output layer.

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{BatchNorm, Layer, Linear, Relu, Sigmoid};
use batchnorm_nn::{NnError, Rng, Sequential};

/// The hidden units' nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `max(0, x)`.
    Relu,
}

impl Activation {
    /// The key used in files and figures (`"sigmoid"`, `"relu"`).
    pub fn key(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Relu => "relu",
        }
    }

    /// The label used in figures and reports.
    pub fn label(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Relu => "ReLU",
        }
    }
}

/// Linear layers `widths[0] -> widths[1] -> ...`: weights from N(0, `std(fan_in)`^2), biases
/// 0, drawn in order from `Rng::new(seed)`.
///
/// # Errors
/// [`NnError::InvalidConfig`] for a negative or non-finite standard deviation.
pub(crate) fn initial_linears(
    widths: &[usize],
    seed: u64,
    std: impl Fn(usize) -> f64,
) -> Result<Vec<Linear<f32>>, NnError> {
    let mut rng = Rng::new(seed);
    widths
        .windows(2)
        .map(|w| Linear::gaussian(w[0], w[1], std(w[0]), &mut rng))
        .collect()
}

/// Makes the normalization layer of a hidden layer of the given width.
pub(crate) type NormLayer<'a> = &'a dyn Fn(usize) -> Result<Box<dyn Layer<f32>>, NnError>;

/// The network: `Linear, [BatchNorm,] activation` for every linear layer but the last, then the
/// last `Linear`, with workspaces for batches of up to `capacity`. Batch normalization uses
/// PyTorch's defaults (eps 1e-5, momentum 0.1, learnable gamma and beta).
///
/// # Errors
/// Only if the layers do not fit together.
pub(crate) fn build(
    linears: &[Linear<f32>],
    activation: Activation,
    batch_norm: bool,
    capacity: usize,
) -> Result<Sequential<f32>, NnError> {
    let bn = |width: usize| -> Result<Box<dyn Layer<f32>>, NnError> {
        Ok(Box::new(BatchNorm::new(
            &[width],
            BatchNormConfig::default(),
        )?))
    };
    build_with(linears, activation, batch_norm.then_some(&bn), capacity)
}

/// As [`build`], with the layer `norm` makes (if any) between each hidden linear layer and its
/// activation.
///
/// # Errors
/// Those of `norm`, or layers that do not fit together.
pub(crate) fn build_with(
    linears: &[Linear<f32>],
    activation: Activation,
    norm: Option<NormLayer<'_>>,
    capacity: usize,
) -> Result<Sequential<f32>, NnError> {
    let mut layers: Vec<Box<dyn Layer<f32>>> = Vec::new();
    let last = linears.len().saturating_sub(1);
    for (i, l) in linears.iter().enumerate() {
        let width = l.out_len();
        layers.push(Box::new(l.clone()));
        if i < last {
            if let Some(norm) = norm {
                layers.push(norm(width)?);
            }
            match activation {
                Activation::Sigmoid => layers.push(Box::new(Sigmoid::new(width)?)),
                Activation::Relu => layers.push(Box::new(Relu::new(width)?)),
            }
        }
    }
    Sequential::new(layers, capacity)
}
