//! The three networks compared: the same ReLU network (fig1's MLP, or the small conv net of
//! `bnlab cnn`) without BN, with BN, and with noisy BN, built from one set of initial weights.

use batchnorm_nn::layers::{Layer, Linear};
use batchnorm_nn::{NnError, Sequential};

use super::noisy::{Noise, NoisyAffine};
use crate::experiments::convnet;
use crate::experiments::mlp::{self, Activation};
use crate::experiments::EVAL_CHUNK;

/// Layer widths: MNIST pixels, three hidden layers of 100 ReLUs, ten classes (fig1's MLP).
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];

/// The hidden units' nonlinearity.
pub const ACTIVATION: Activation = Activation::Relu;

/// Which family of networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// fig1's 784-100-100-100-10 MLP with ReLUs; weights N(0, `init_std`^2).
    Mlp,
    /// The conv net of `bnlab cnn` (two conv3x3-ReLU-maxpool blocks, then a linear layer);
    /// He-initialised convolutions.
    Cnn,
}

impl Arch {
    /// The key on the command line and in files (`"mlp"`, `"cnn"`).
    pub fn key(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
        }
    }

    /// The layers, as in the reports.
    pub fn description(self) -> String {
        match self {
            Arch::Mlp => format!(
                "784-100-100-100-10 MLP with {} hidden units",
                ACTIVATION.label()
            ),
            Arch::Cnn => convnet::DESCRIPTION.to_owned(),
        }
    }

    /// The most images one evaluation or probe forward pass takes (the conv net's activations
    /// are large).
    pub fn eval_batch(self) -> usize {
        match self {
            Arch::Mlp => EVAL_CHUNK,
            Arch::Cnn => convnet::EVAL_BATCH,
        }
    }

    /// Per hidden layer, the unit whose percentiles the figure follows: unit 0 of the MLP's
    /// layers; for the conv net channel 0 at the centre of the image (a border pixel sees
    /// mostly the zero padding and background).
    pub fn probe_units(self) -> Vec<usize> {
        match self {
            Arch::Mlp => vec![0; WIDTHS.len() - 2],
            Arch::Cnn => convnet::BLOCKS
                .iter()
                .map(|&(_, _, hw)| (hw / 2) * hw + hw / 2)
                .collect(),
        }
    }
}

impl Arch {
    /// The unit of hidden layer `layer` the percentile panels follow, in words.
    pub fn probe_label(self) -> &'static str {
        match self {
            Arch::Mlp => "unit 0",
            Arch::Cnn => "channel 0, centre",
        }
    }
}

/// The initial weights the three networks share.
#[derive(Debug, Clone)]
pub(super) enum Init {
    Mlp(Vec<Linear<f32>>),
    Cnn(convnet::Init),
}

impl Init {
    /// The weights of `arch` drawn from `seed` (`init_std` applies to the MLP).
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for a negative or non-finite `init_std`.
    pub(super) fn new(arch: Arch, seed: u64, init_std: f64) -> Result<Self, NnError> {
        Ok(match arch {
            Arch::Mlp => Init::Mlp(mlp::initial_linears(&WIDTHS, seed, |_| init_std)?),
            Arch::Cnn => Init::Cnn(convnet::init(seed)?),
        })
    }
}

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

/// `net` from `init`, with workspaces for batches of up to `capacity`: a [`NoisyAffine`] per
/// channel after each batch normalization of the noisy-BN network.
///
/// # Errors
/// Only if the layers do not fit together, or `noise` is out of range.
pub(super) fn build(
    init: &Init,
    net: Net,
    noise: Noise,
    seed: u64,
    capacity: usize,
) -> Result<Sequential<f32>, NnError> {
    let bn = net != Net::Plain;
    let model = match init {
        Init::Mlp(linears) => mlp::build(linears, ACTIVATION, bn, capacity)?,
        Init::Cnn(init) => convnet::build(init, bn, capacity)?,
    };
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
        if let Some(bn) = l.as_batch_norm() {
            let dims = bn.sample_dims();
            let inner = dims[1..].iter().product();
            let noisy = NoisyAffine::new(dims[0], inner, noise, noise_seed(seed, k))?;
            layers.push(Box::new(noisy));
            k += 1;
        }
    }
    Sequential::new(layers, capacity)
}

/// Indices of the layers whose input is a hidden pre-activation (the ReLUs).
pub fn activation_layers(model: &Sequential<f32>) -> Vec<usize> {
    indices(model, &[ACTIVATION.key()])
}

/// Indices of the batch normalizations (none in the plain network).
pub fn batch_norm_layers(model: &Sequential<f32>) -> Vec<usize> {
    indices(model, &["batch_norm"])
}

/// Indices of the layers with weights (linear, conv2d) after the first: those with layers
/// below them to shift their input (the first layer's input, the images, never moves).
pub fn shifted_layers(model: &Sequential<f32>) -> Vec<usize> {
    indices(model, &["linear", "conv2d"])
        .into_iter()
        .skip(1)
        .collect()
}

fn indices(model: &Sequential<f32>, names: &[&str]) -> Vec<usize> {
    model
        .layers()
        .iter()
        .enumerate()
        .filter(|(_, l)| names.contains(&l.name()))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_networks_share_their_weights_and_noise_follows_each_bn() {
        let noise = Noise {
            shift: 1.0,
            scale: 2.0,
        };
        let init = Init::new(Arch::Mlp, 1, 0.05).unwrap();
        let names = |init: &Init, net| {
            let m = build(init, net, noise, 1, 8).unwrap();
            let n: Vec<&str> = m.layers().iter().map(|l| l.name()).collect();
            (
                n,
                activation_layers(&m),
                shifted_layers(&m),
                batch_norm_layers(&m),
            )
        };
        let (bn, bn_acts, bn_lin, _) = names(&init, Net::Bn);
        let (plain, plain_acts, _, plain_bns) = names(&init, Net::Plain);
        let (noisy, noisy_acts, noisy_lin, noisy_bns) = names(&init, Net::NoisyBn);
        assert_eq!(plain.len(), 7);
        assert!(plain_bns.is_empty());
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
        assert_eq!(noisy_bns, [1, 5, 9]);
        // The conv net: noise per channel over 28 x 28 and 14 x 14 positions.
        let init = Init::new(Arch::Cnn, 1, 0.05).unwrap();
        let (noisy, acts, shifted, _) = names(&init, Net::NoisyBn);
        assert_eq!(
            &noisy[..4],
            ["conv2d", "batch_norm", "noisy_affine", "relu"]
        );
        assert_eq!(acts, [3, 8]);
        assert_eq!(shifted, [5, 11], "the second conv and the linear layer");
        let m = build(&init, Net::NoisyBn, noise, 1, 2).unwrap();
        assert_eq!(m.layers()[2].in_len(), 8 * 28 * 28);
        assert_eq!(Arch::Cnn.probe_units(), [14 * 28 + 14, 7 * 14 + 7]);
    }
}
