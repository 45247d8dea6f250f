//! The small residual net of `bnlab cnn --arch resnet`: a stem conv3x3(1->8)-BN-ReLU, three
//! stages of one basic block each (8, 16 and 32 channels, the last two with stride 2 and a
//! projection shortcut), global average pooling, linear(32, 10), on 1 x 28 x 28 images.

use batchnorm::BatchNormConfig;
use batchnorm_nn::layers::{
    BasicBlock, BasicBlockConfig, BatchNorm, BatchNormRelu, BlockNorm, Conv2d, Conv2dConfig,
    GlobalAvgPool, Layer, Linear, Relu,
};
use batchnorm_nn::{NnError, Rng, Sequential};

/// How the residual net normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    /// BatchNorm2d with the ReLU and the residual addition in its passes.
    Fused,
    /// The same BatchNorm2d, then the ReLU and the addition as passes of their own.
    Separate,
    /// No BN: convolutions with biases.
    None,
}

/// `(input channels, output channels, stride)` of the three stages' blocks.
const STAGES: [(usize, usize, usize); 3] = [(8, 8, 1), (8, 16, 2), (16, 32, 2)];

/// The network for batches of up to `capacity` images. Weights are drawn from
/// `Rng::new(seed)` in layer order, the same for every `norm`: convolutions from
/// N(0, 2 / fan_out) (torchvision's `kaiming_normal_(mode="fan_out")`), the linear layer from
/// N(0, 1/32); biases 0, BN weights 1.
///
/// # Errors
/// Only if the layers did not fit together.
pub(crate) fn build(seed: u64, norm: Norm, capacity: usize) -> Result<Sequential<f32>, NnError> {
    let mut rng = Rng::new(seed);
    let bn_cfg = BatchNormConfig::default();
    let stem_cfg = Conv2dConfig {
        padding: [1, 1],
        bias: norm == Norm::None,
        ..Conv2dConfig::new(1, 8, 3, [28, 28])
    };
    let stem = Conv2d::gaussian(stem_cfg, (2.0f64 / 72.0).sqrt(), &mut rng)?;
    let mut layers: Vec<Box<dyn Layer<f32>>> = vec![Box::new(stem)];
    let stem_dims = [8, 28, 28];
    match norm {
        Norm::Fused => layers.push(Box::new(BatchNormRelu::new(&stem_dims, bn_cfg)?)),
        Norm::Separate => {
            layers.push(Box::new(BatchNorm::new(&stem_dims, bn_cfg)?));
            layers.push(Box::new(Relu::new(8 * 28 * 28)?));
        }
        Norm::None => layers.push(Box::new(Relu::new(8 * 28 * 28)?)),
    }
    let block_norm = match norm {
        Norm::Fused => BlockNorm::Fused(bn_cfg),
        Norm::Separate => BlockNorm::Separate(bn_cfg),
        Norm::None => BlockNorm::None,
    };
    let mut hw = [28, 28];
    for (in_channels, out_channels, stride) in STAGES {
        let cfg = BasicBlockConfig {
            in_channels,
            out_channels,
            input_hw: hw,
            stride,
            norm: block_norm,
        };
        let block = BasicBlock::new(cfg, &mut rng)?;
        hw = block.output_hw();
        layers.push(Box::new(block));
    }
    layers.push(Box::new(GlobalAvgPool::new(32, hw[0] * hw[1])?));
    let std = (1.0f64 / 32.0).sqrt();
    layers.push(Box::new(Linear::gaussian(32, 10, std, &mut rng)?));
    Sequential::new(layers, capacity)
}

/// One line per layer, as in the reports.
pub const DESCRIPTION: &str = "conv3x3(1->8)-[BN2d]-ReLU, three residual basic blocks \
(conv3x3-[BN2d]-ReLU-conv3x3-[BN2d]-add-ReLU) at 8, 16 and 32 channels, the last two with \
stride 2 and a conv1x1-[BN2d] projection shortcut, global average pool, linear(32, 10)";

/// The initialisation, as in the reports.
pub const INIT: &str = "conv weights N(0, 2/fan_out), linear N(0, 1/32), biases 0, BN weights \
1; the same with and without BN";
