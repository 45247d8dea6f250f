//! The small conv net of `bnlab cnn` and `bnlab fold`: conv3x3(8)-[BN2d]-ReLU-maxpool2,
//! conv3x3(16)-[BN2d]-ReLU-maxpool2, flatten, linear(784, 10), on 1 x 28 x 28 images.

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{
    BatchNorm, Conv2d, Conv2dConfig, Flatten, Layer, Linear, MaxPool2d, MaxPool2dConfig, Relu,
};
use batchnorm_nn::{NnError, Rng, Sequential};

/// Test images per evaluation forward pass of the conv net: its activations take 31 KB per
/// image and layer pair, so batches of 1,000 would need about 300 MB per network.
pub const EVAL_BATCH: usize = 250;

/// `(input channels, output channels, input height = width)` of the two conv blocks.
pub const BLOCKS: [(usize, usize, usize); 2] = [(1, 8, 28), (8, 16, 14)];

/// The initial parameters, shared by the networks with and without BN.
#[derive(Debug, Clone)]
pub(crate) struct Init {
    convs: Vec<Conv2d<f32>>,
    linear: Linear<f32>,
}

/// Convolutions 3 x 3, padding 1, with bias (PyTorch's default), weights from
/// N(0, 2 / fan_in) (He), biases 0; the linear layer's weights from N(0, 1 / 784), bias 0.
/// Drawn in layer order from `Rng::new(seed)`.
///
/// # Errors
/// Only if the shapes were inconsistent, which they are not.
pub(crate) fn init(seed: u64) -> Result<Init, NnError> {
    let mut rng = Rng::new(seed);
    let mut convs = Vec::new();
    for (c_in, c_out, hw) in BLOCKS {
        let cfg = Conv2dConfig {
            padding: [1, 1],
            ..Conv2dConfig::new(c_in, c_out, 3, [hw, hw])
        };
        let std = (2.0 / (9 * c_in) as f64).sqrt();
        convs.push(Conv2d::gaussian(cfg, std, &mut rng)?);
    }
    let linear = Linear::gaussian(784, 10, (1.0f64 / 784.0).sqrt(), &mut rng)?;
    Ok(Init { convs, linear })
}

/// The network from `init`, with or without a BatchNorm2d (PyTorch defaults: eps 1e-5,
/// momentum 0.1, learnable gamma and beta) after each convolution, for batches of up to
/// `capacity` images.
///
/// # Errors
/// Only if the layers did not fit together.
pub(crate) fn build(
    init: &Init,
    batch_norm: bool,
    capacity: usize,
) -> Result<Sequential<f32>, NnError> {
    let mut layers: Vec<Box<dyn Layer<f32>>> = Vec::new();
    for (conv, (_, c_out, hw)) in init.convs.iter().zip(BLOCKS) {
        layers.push(Box::new(conv.clone()));
        if batch_norm {
            layers.push(Box::new(BatchNorm::new(
                &[c_out, hw, hw],
                BatchNormConfig::default(),
            )?));
        }
        layers.push(Box::new(Relu::new(c_out * hw * hw)?));
        layers.push(Box::new(MaxPool2d::new(MaxPool2dConfig::new(
            c_out,
            2,
            [hw, hw],
        ))?));
    }
    layers.push(Box::new(Flatten::new(784)?));
    layers.push(Box::new(init.linear.clone()));
    Sequential::new(layers, capacity)
}

/// One line per layer, as in the reports.
pub const DESCRIPTION: &str = "conv3x3(1->8, padding 1)-[BN2d]-ReLU-maxpool2, \
conv3x3(8->16, padding 1)-[BN2d]-ReLU-maxpool2, flatten, linear(784, 10)";
