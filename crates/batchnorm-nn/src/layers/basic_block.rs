//! The residual basic block of ResNet-18/34 (torchvision's `BasicBlock`), its batch
//! normalizations fused with the ReLU and with the residual addition.

use batchnorm::BatchNormConfig;

use super::batch_norm::{relu, Tail};
use super::{check_batch, BatchNorm, Conv2d, Conv2dConfig, Layer, Mode, Param, StateEntry};
use crate::error::{NnError, Result};
use crate::fold::{fold_into_conv2d, FoldError};
use crate::rng::Rng;
use crate::scalar::Scalar;

/// How a [`BasicBlock`] normalises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockNorm {
    /// Batch normalization after each convolution, the ReLU and the residual addition applied
    /// in its normalising pass (and their gradients in its backward).
    Fused(BatchNormConfig),
    /// The same batch normalizations, followed by the ReLU and the addition as separate passes:
    /// bit for bit the results of [`BlockNorm::Fused`], more passes over the activations.
    Separate(BatchNormConfig),
    /// No normalization: every convolution has a bias.
    None,
}

/// The shape of a [`BasicBlock`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BasicBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (of both convolutions).
    pub out_channels: usize,
    /// Input height and width.
    pub input_hw: [usize; 2],
    /// Stride of the first convolution (and of the projection).
    pub stride: usize,
    /// The normalization.
    pub norm: BlockNorm,
}

impl BasicBlockConfig {
    /// Whether the shortcut is a projection (1x1 convolution, then batch normalization unless
    /// [`BlockNorm::None`]): when the stride is not 1 or the channels change, as in torchvision.
    pub fn projects(&self) -> bool {
        self.stride != 1 || self.in_channels != self.out_channels
    }
}

/// `y = relu(BN2(conv2(relu(BN1(conv1(x))))) + shortcut(x))`, with 3x3 convolutions (padding 1,
/// the first with the block's stride, no biases under batch normalization) and the shortcut
/// `x` itself, or `BN(conv1x1(x))` with the block's stride when it
/// [projects](BasicBlockConfig::projects).
///
/// With [`BlockNorm::Fused`] the first batch normalization runs with its ReLU
/// ([`batchnorm::BatchNorm::forward_relu_into`]) and the second with the addition and ReLU
/// ([`batchnorm::BatchNorm::forward_add_relu_into`]); their backward passes give the gradients
/// through the ReLU and, for the second, the shortcut's gradient. The block keeps its
/// intermediate activations (for backward) and allocates them at the first batch of each size.
///
/// State-dict names are torchvision's: `conv1.weight`, `bn1.{weight, bias, running_mean,
/// running_var, num_batches_tracked}`, `conv2.weight`, `bn2.*`, `downsample.0.weight`,
/// `downsample.1.*` (and `conv1.bias`, ... without normalization). [`BasicBlock::fold`] folds
/// the batch normalizations into the convolutions for evaluation.
///
/// ```
/// use batchnorm::BatchNormConfig;
/// use batchnorm_nn::layers::{BasicBlock, BasicBlockConfig, BlockNorm, Layer, Mode};
/// use batchnorm_nn::Rng;
/// let cfg = BasicBlockConfig {
///     in_channels: 2,
///     out_channels: 4,
///     input_hw: [6, 6],
///     stride: 2,
///     norm: BlockNorm::Fused(BatchNormConfig::default()),
/// };
/// let mut block = BasicBlock::<f32>::new(cfg, &mut Rng::new(0))?;
/// assert_eq!((Layer::<f32>::out_len(&block), block.output_hw()), (4 * 3 * 3, [3, 3]));
/// let x = vec![0.5f32; 3 * 2 * 6 * 6];
/// let mut y = vec![0.0; 3 * 4 * 3 * 3];
/// block.forward(&x, 3, Mode::Train, &mut y)?;
/// assert!(y.iter().all(|&v| v >= 0.0));
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BasicBlock<T: Scalar> {
    /// The first 3x3 convolution.
    pub conv1: Conv2d<T>,
    /// Its batch normalization (`None` without normalization).
    pub bn1: Option<BatchNorm<T>>,
    /// The second 3x3 convolution.
    pub conv2: Conv2d<T>,
    /// Its batch normalization.
    pub bn2: Option<BatchNorm<T>>,
    /// The projection shortcut: 1x1 convolution and its batch normalization.
    pub downsample: Option<(Conv2d<T>, Option<BatchNorm<T>>)>,
    cfg: BasicBlockConfig,
    in_len: usize,
    out_len: usize,
    acts: Activations<T>,
    /// The batch size of the last forward, whose activations `acts` holds.
    batch: Option<usize>,
}

/// What the forward keeps for backward, and the backward's scratch; per batch.
#[derive(Debug, Clone, Default)]
struct Activations<T> {
    /// conv1's output, relu(BN1) of it, conv2's output.
    a1: Vec<T>,
    h1: Vec<T>,
    a2: Vec<T>,
    /// The projection's convolution output and its normalised form (the residual).
    s1: Vec<T>,
    s2: Vec<T>,
    /// Gradients: of a2, of the residual, of h1, of a1, of s1, and the shortcut's dx.
    g_a2: Vec<T>,
    g_r: Vec<T>,
    g_h1: Vec<T>,
    g_a1: Vec<T>,
    g_s1: Vec<T>,
    g_x: Vec<T>,
}

/// torchvision's names for the state of each part, in the order of [`FIELDS`].
macro_rules! part_names {
    ($($part:literal),*) => {
        [$([
            concat!($part, ".weight"),
            concat!($part, ".bias"),
            concat!($part, ".running_mean"),
            concat!($part, ".running_var"),
            concat!($part, ".num_batches_tracked"),
        ]),*]
    };
}
const FIELDS: [&str; 5] = [
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
];
const PARTS: [[&str; 5]; 6] = part_names!(
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "downsample.0",
    "downsample.1"
);

/// `name` (a layer's own state or parameter name) within part `part` of the block.
fn part_name(part: usize, name: &'static str) -> &'static str {
    FIELDS
        .iter()
        .position(|f| *f == name)
        .map_or(name, |i| PARTS[part][i])
}

/// `v` resized to `len` values (growing only).
fn sized<T: Scalar>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}

/// `g = dy` where `y > 0`, else 0 (NaN passes), the ReLU's gradient as the core computes it.
fn relu_grad<T: Scalar>(y: &[T], dy: &[T], g: &mut [T]) {
    for ((g, &y), &d) in g.iter_mut().zip(y).zip(dy) {
        *g = if y <= T::ZERO { T::ZERO } else { d };
    }
}

/// The layer inside `wide`, if it is an `L` (for [`Layer::to_f64`] of the parts).
fn downcast<L: 'static>(wide: Option<Box<dyn Layer<f64>>>) -> Option<L> {
    let any: Box<dyn std::any::Any> = wide?;
    any.downcast().ok().map(|b| *b)
}

impl<T: Scalar> BasicBlock<T> {
    /// A block with He-initialised convolutions (`N(0, 2 / fan_out)`, torchvision's
    /// `kaiming_normal_(mode="fan_out")`), zero biases, and batch normalizations at weight 1,
    /// bias 0.
    ///
    /// # Errors
    /// [`NnError::Empty`] for a zero stride, the convolutions' and batch normalizations' errors
    /// for bad sizes or configurations.
    pub fn new(cfg: BasicBlockConfig, rng: &mut Rng) -> Result<Self> {
        if cfg.stride == 0 {
            return Err(NnError::Empty {
                what: "basic block stride",
            });
        }
        let bias = cfg.norm == BlockNorm::None;
        let conv = |c_in, kernel: usize, stride, hw, rng: &mut Rng| {
            let conv_cfg = Conv2dConfig {
                stride: [stride, stride],
                padding: [kernel / 2; 2],
                bias,
                ..Conv2dConfig::new(c_in, cfg.out_channels, kernel, hw)
            };
            let fan_out = (cfg.out_channels * kernel * kernel) as f64;
            Conv2d::gaussian(conv_cfg, (2.0 / fan_out).sqrt(), rng)
        };
        let conv1 = conv(cfg.in_channels, 3, cfg.stride, cfg.input_hw, rng)?;
        let hw = conv1.output_hw();
        let conv2 = conv(cfg.out_channels, 3, 1, hw, rng)?;
        let bn = || -> Result<Option<BatchNorm<T>>> {
            match cfg.norm {
                BlockNorm::Fused(c) | BlockNorm::Separate(c) => {
                    Ok(Some(BatchNorm::new(&[cfg.out_channels, hw[0], hw[1]], c)?))
                }
                BlockNorm::None => Ok(None),
            }
        };
        let downsample = if cfg.projects() {
            let proj = conv(cfg.in_channels, 1, cfg.stride, cfg.input_hw, rng)?;
            Some((proj, bn()?))
        } else {
            None
        };
        let [h, w] = cfg.input_hw;
        Ok(BasicBlock {
            in_len: cfg.in_channels * h * w,
            out_len: cfg.out_channels * hw[0] * hw[1],
            bn1: bn()?,
            bn2: bn()?,
            conv1,
            conv2,
            downsample,
            cfg,
            acts: Activations::default(),
            batch: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BasicBlockConfig {
        &self.cfg
    }

    /// Output height and width.
    pub fn output_hw(&self) -> [usize; 2] {
        self.conv1.output_hw()
    }

    /// The block with every batch normalization folded into the convolution before it
    /// ([`fold_into_conv2d`]): a block without normalization whose output in any mode is this
    /// block's in [`Mode::Eval`], up to rounding. A block without normalization is copied.
    ///
    /// # Errors
    /// As [`fold_into_conv2d`].
    pub fn fold(&self) -> std::result::Result<BasicBlock<T>, FoldError> {
        let fold = |conv: &Conv2d<T>, bn: &Option<BatchNorm<T>>| match bn {
            Some(bn) => fold_into_conv2d(conv, bn),
            None => Ok(conv.clone()),
        };
        let downsample = match &self.downsample {
            Some((conv, bn)) => Some((fold(conv, bn)?, None)),
            None => None,
        };
        Ok(BasicBlock {
            conv1: fold(&self.conv1, &self.bn1)?,
            bn1: None,
            conv2: fold(&self.conv2, &self.bn2)?,
            bn2: None,
            downsample,
            cfg: BasicBlockConfig {
                norm: BlockNorm::None,
                ..self.cfg
            },
            in_len: self.in_len,
            out_len: self.out_len,
            acts: Activations::default(),
            batch: None,
        })
    }

    /// Calls `f` on each part that the block has, with its index in [`PARTS`]: conv1, bn1,
    /// conv2, bn2, the projection's convolution and batch normalization.
    fn for_each_part(&mut self, f: &mut dyn FnMut(usize, &mut dyn Layer<T>)) {
        f(0, &mut self.conv1);
        if let Some(bn) = &mut self.bn1 {
            f(1, bn);
        }
        f(2, &mut self.conv2);
        if let Some(bn) = &mut self.bn2 {
            f(3, bn);
        }
        if let Some((conv, bn)) = &mut self.downsample {
            f(4, conv);
            if let Some(bn) = bn {
                f(5, bn);
            }
        }
    }

    /// Whether the batch normalizations run fused with their tails.
    fn fused(&self) -> bool {
        matches!(self.cfg.norm, BlockNorm::Fused(_))
    }
}

impl<T: Scalar> Layer<T> for BasicBlock<T> {
    fn name(&self) -> &'static str {
        "basic_block"
    }

    fn in_len(&self) -> usize {
        self.in_len
    }

    fn out_len(&self) -> usize {
        self.out_len
    }

    fn forward(&mut self, x: &[T], n: usize, mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("basic_block x", x.len(), n, self.in_len)?;
        check_batch("basic_block y", y.len(), n, self.out_len)?;
        self.batch = None;
        let fused = self.fused();
        let len = n * self.out_len;
        let acts = &mut self.acts;
        let a1 = sized(&mut acts.a1, len);
        self.conv1.forward(x, n, mode, a1)?;
        let h1 = sized(&mut acts.h1, len);
        match &mut self.bn1 {
            Some(bn) if fused => bn.forward_with(a1, Tail::Relu, n, mode, h1)?,
            Some(bn) => {
                bn.forward(a1, n, mode, h1)?;
                Tail::Relu.apply(h1);
            }
            None => {
                for (h, &a) in h1.iter_mut().zip(a1.iter()) {
                    *h = relu(a);
                }
            }
        }
        let a2 = sized(&mut acts.a2, len);
        self.conv2.forward(h1, n, mode, a2)?;
        let residual: &[T] = match &mut self.downsample {
            Some((conv, bn)) => {
                let s1 = sized(&mut acts.s1, len);
                conv.forward(x, n, mode, s1)?;
                match bn {
                    Some(bn) => {
                        let s2 = sized(&mut acts.s2, len);
                        bn.forward(s1, n, mode, s2)?;
                        s2
                    }
                    None => s1,
                }
            }
            None => x,
        };
        let tail = Tail::AddRelu(residual);
        match &mut self.bn2 {
            Some(bn) if fused => bn.forward_with(a2, tail, n, mode, y)?,
            Some(bn) => {
                bn.forward(a2, n, mode, y)?;
                tail.apply(y);
            }
            None => {
                y.copy_from_slice(a2);
                tail.apply(y);
            }
        }
        self.batch = Some(n);
        Ok(())
    }

    fn backward(
        &mut self,
        x: &[T],
        y: &[T],
        dy: &[T],
        n: usize,
        mut dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("basic_block x", x.len(), n, self.in_len)?;
        check_batch("basic_block y", y.len(), n, self.out_len)?;
        check_batch("basic_block dy", dy.len(), n, self.out_len)?;
        if let Some(dx) = dx.as_deref() {
            check_batch("basic_block dx", dx.len(), n, self.in_len)?;
        }
        if self.batch != Some(n) {
            return Err(NnError::BackwardBeforeForward {
                layer: "basic_block",
            });
        }
        let fused = self.fused();
        let len = n * self.out_len;
        let acts = &mut self.acts;
        let (a1, h1, a2) = (&acts.a1[..len], &acts.h1[..len], &acts.a2[..len]);
        // The tail: the residual's gradient, and a2's.
        let g_r = sized(&mut acts.g_r, len);
        let g_a2 = sized(&mut acts.g_a2, len);
        let g_a2: &[T] = match &mut self.bn2 {
            Some(bn) if fused => {
                bn.backward_with(a2, Some(y), dy, n, Some(g_a2), Some(g_r))?;
                g_a2
            }
            Some(bn) => {
                relu_grad(y, dy, g_r);
                bn.backward_with(a2, None, g_r, n, Some(g_a2), None)?;
                g_a2
            }
            None => {
                relu_grad(y, dy, g_r);
                g_r
            }
        };
        let g_h1 = sized(&mut acts.g_h1, len);
        self.conv2.backward(h1, a2, g_a2, n, Some(g_h1))?;
        let g_a1 = sized(&mut acts.g_a1, len);
        let g_a1: &[T] = match &mut self.bn1 {
            Some(bn) if fused => {
                bn.backward_with(a1, Some(h1), g_h1, n, Some(g_a1), None)?;
                g_a1
            }
            Some(bn) => {
                relu_grad(h1, g_h1, g_a1);
                bn.backward_with(a1, None, g_a1, n, Some(g_h1), None)?;
                g_h1
            }
            None => {
                relu_grad(h1, g_h1, g_a1);
                g_a1
            }
        };
        self.conv1.backward(x, a1, g_a1, n, dx.as_deref_mut())?;
        // The shortcut's gradient, added to dx.
        let g_r: &[T] = &acts.g_r[..len];
        let g_x: &[T] = match &mut self.downsample {
            Some((conv, bn)) => {
                let s1 = &acts.s1[..len];
                let g_s1 = sized(&mut acts.g_s1, len);
                let g_s1: &[T] = match bn {
                    Some(bn) => {
                        bn.backward_with(s1, None, g_r, n, Some(g_s1), None)?;
                        g_s1
                    }
                    None => g_r,
                };
                let g_x = dx.is_some().then(|| sized(&mut acts.g_x, n * self.in_len));
                conv.backward(x, s1, g_s1, n, g_x)?;
                &acts.g_x
            }
            None => g_r,
        };
        if let Some(dx) = dx {
            for (d, &g) in dx.iter_mut().zip(g_x) {
                *d += g;
            }
        }
        Ok(())
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        self.for_each_part(&mut |i, layer| {
            layer.visit_params(&mut |p| {
                f(Param {
                    name: part_name(i, p.name),
                    ..p
                })
            })
        });
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        self.for_each_part(&mut |i, layer| {
            layer.visit_state(&mut |e| {
                f(StateEntry {
                    name: part_name(i, e.name),
                    ..e
                })
            })
        });
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        let bn = |bn: &Option<BatchNorm<T>>| match bn {
            Some(bn) => bn.widened().map(Some),
            None => Some(None),
        };
        let downsample = match &self.downsample {
            Some((conv, b)) => Some((downcast(conv.to_f64())?, bn(b)?)),
            None => None,
        };
        Some(Box::new(BasicBlock::<f64> {
            conv1: downcast(self.conv1.to_f64())?,
            bn1: bn(&self.bn1)?,
            conv2: downcast(self.conv2.to_f64())?,
            bn2: bn(&self.bn2)?,
            downsample,
            cfg: self.cfg,
            in_len: self.in_len,
            out_len: self.out_len,
            acts: Activations::default(),
            batch: None,
        }))
    }

    fn fold_own_batch_norms(&self) -> Option<std::result::Result<Box<dyn Layer<T>>, FoldError>> {
        Some(self.fold().map(|b| Box::new(b) as Box<dyn Layer<T>>))
    }
}
