//! The three networks compared: the same ReLU MLP without BN, with BN, and with noisy BN, built
//! from one set of initial weights.

use batchnorm_nn::layers::{Layer, Linear};
use batchnorm_nn::{NnError, Sequential};

use super::noisy::{Noise, NoisyAffine};
use crate::experiments::mlp::{self, Activation};

/// Layer widths: MNIST pixels, three hidden layers of 100 ReLUs, ten classes (fig1's MLP).
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];

/// The hidden units' nonlinearity.
pub const ACTIVATION: Activation = Activation::Relu;

/// Which network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    /// Batch normalization before every hidden ReLU.
    Bn,
    /// No normalization.
    Plain,
    /// Batch normalization followed by a [`NoisyAffine`] before every hidden ReLU.
    NoisyBn,
}

impl Net {
    /// The three, in the order of files and figures.
    pub const ALL: [Net; 3] = [Net::Bn, Net::Plain, Net::NoisyBn];

    /// The key in files (`"bn"`, `"plain"`, `"noisy_bn"`).
    pub fn key(self) -> &'static str {
        match self {
            Net::Bn => "bn",
            Net::Plain => "plain",
            Net::NoisyBn => "noisy_bn",
        }
    }

    /// The label in figures and reports.
    pub fn label(self) -> &'static str {
        match self {
            Net::Bn => "with BN",
            Net::Plain => "without BN",
            Net::NoisyBn => "noisy BN",
        }
    }
}

/// The seed of the noise layer after the `k`-th BN of the run seeded by `seed`: a stream apart
/// from the weights' and the batch order's.
fn noise_seed(seed: u64, k: usize) -> u64 {
    (seed ^ 0x6e6f_6973_795f_626e) // "noisy_bn"
        .wrapping_add(k as u64)
}

/// `net` from the initial `linears`, with workspaces for batches of up to `capacity`: fig1's
/// MLP (`Linear, [BatchNorm, [NoisyAffine,]] ReLU` per hidden layer, then `Linear`).
///
/// # Errors
/// Only if the layers do not fit together, or `noise` is out of range.
pub fn build(
    linears: &[Linear<f32>],
    net: Net,
    noise: Noise,
    seed: u64,
    capacity: usize,
) -> Result<Sequential<f32>, NnError> {
    let model = mlp::build(linears, ACTIVATION, net != Net::Plain, capacity)?;
    if net != Net::NoisyBn {
        return Ok(model);
    }
    let mut layers: Vec<Box<dyn Layer<f32>>> = Vec::new();
    let mut k = 0;
    for l in model.layers() {
        let copy = l.boxed_clone().ok_or(NnError::Empty {
            what: "copy of a layer",
        })?;
        layers.push(copy);
        if l.as_batch_norm().is_some() {
            let width = l.out_len();
            layers.push(Box::new(NoisyAffine::new(
                width,
                noise,
                noise_seed(seed, k),
            )?));
            k += 1;
        }
    }
    Sequential::new(layers, capacity)
}

/// Indices of the layers whose input is a hidden pre-activation (the ReLUs).
pub fn activation_layers(model: &Sequential<f32>) -> Vec<usize> {
    indices(model, ACTIVATION.key())
}

/// Indices of the batch normalizations (none in the plain network).
pub fn batch_norm_layers(model: &Sequential<f32>) -> Vec<usize> {
    indices(model, "batch_norm")
}

/// Indices of the linear layers after the first: those with layers below them to shift their
/// input (the first layer's input, the images, never moves).
pub fn shifted_linears(model: &Sequential<f32>) -> Vec<usize> {
    indices(model, "linear").into_iter().skip(1).collect()
}

fn indices(model: &Sequential<f32>, name: &str) -> Vec<usize> {
    model
        .layers()
        .iter()
        .enumerate()
        .filter(|(_, l)| l.name() == name)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_networks_share_their_linears_and_noise_follows_each_bn() {
        let linears = mlp::initial_linears(&WIDTHS, 1, |_| 0.05).unwrap();
        let noise = Noise {
            shift: 1.0,
            scale: 2.0,
        };
        let names = |net| {
            let m = build(&linears, net, noise, 1, 8).unwrap();
            let n: Vec<&str> = m.layers().iter().map(|l| l.name()).collect();
            (n, activation_layers(&m), shifted_linears(&m))
        };
        let (bn, bn_acts, bn_lin) = names(Net::Bn);
        let m = build(&linears, Net::NoisyBn, noise, 1, 8).unwrap();
        assert_eq!(batch_norm_layers(&m), [1, 5, 9]);
        let (plain, plain_acts, _) = names(Net::Plain);
        let (noisy, noisy_acts, noisy_lin) = names(Net::NoisyBn);
        assert_eq!(plain.len(), 7);
        assert_eq!(bn.len(), 10);
        assert_eq!(
            &noisy[..4],
            ["linear", "batch_norm", "noisy_affine", "relu"]
        );
        assert_eq!(noisy.len(), 13);
        assert_eq!(plain_acts, [1, 3, 5]);
        assert_eq!(bn_acts, [2, 5, 8]);
        assert_eq!(noisy_acts, [3, 7, 11]);
        assert_eq!(bn_lin, [3, 6, 9]);
        assert_eq!(noisy_lin, [4, 8, 12]);
    }
}
