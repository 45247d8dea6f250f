//! Batch Normalization for [candle](https://github.com/huggingface/candle) with the `batchnorm`
//! kernels: exact (statistics in `f64`, PyTorch's semantics), fast, and trainable through candle's
//! autograd. A drop-in for `candle_nn::batch_norm`:
//!
//! ```
//! use batchnorm_candle::{batch_norm, BatchNorm};
//! use candle_core::{DType, Device, Tensor, Var};
//! use candle_nn::{ModuleT, VarBuilder, VarMap};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let bn: BatchNorm = batch_norm(3, batchnorm::BatchNormConfig::default(), vb.pp("bn"))?;
//!
//! let x = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 3, 5, 5), &Device::Cpu)?)?;
//! let y = bn.forward_t(&x, /* train */ true)?;
//! let grads = y.sum_all()?.backward()?;
//! // d sum(y) / d bias = m = 8 * 5 * 5 per channel; d sum(y) / dx = 0 (y has mean bias).
//! let dbias = grads.get(bn.bias().unwrap()).unwrap().to_vec1::<f32>()?;
//! assert_eq!(dbias, [200.0; 3]);
//! let dx = grads.get(&x).unwrap().abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(dx < 1e-6);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! - [`batch_norm`] and [`BatchNorm`]: the module. `weight`, `bias`, `running_mean`,
//!   `running_var` (and `num_batches_tracked` where it counts) live in the `VarBuilder` under the
//!   names PyTorch and `candle_nn` use. Training updates the running statistics in place
//!   (momentum or cumulative average, unbiased variance); evaluation uses them and still passes
//!   gradients (frozen BN).
//! - Inside, one custom op per call (a `CustomOp3` over x, weight and bias, a `CustomOp1` without
//!   affine parameters) runs the kernels' forward and keeps their statistics for its backward, so
//!   dx, dweight and dbias come from the closed-form backward in one pass each.
//! - Dtypes `f32`, `f64`, `bf16`, `f16`; contiguous (channels-first) tensors and channels-last
//!   views without copies; CPU only.
//! - Errors are [`candle_core::Error`]s carrying an [`Error`]'s message: one value per channel in
//!   training, a wrong channel count, a tensor on another device, ...

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod error;
mod layout;
mod module;
mod op;

pub use batchnorm::{BatchNormConfig, Par};
pub use error::Error;
pub use module::{batch_norm, BatchNorm};
