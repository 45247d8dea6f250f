//! Batch Normalization (Ioffe & Szegedy, 2015) with exactly PyTorch's semantics, more exact than
//! PyTorch in `f32`.
//!
//! Each channel of an input of logical shape (N, C, spatial...) is normalised over the
//! m = N * prod(spatial) values it has in the batch, then scaled and shifted:
//!
//! ```text
//! y = (x - mean) / sqrt(var + eps) * weight + bias      var: biased (divided by m)
//! ```
//!
//! - [`Mode::Train`]: batch statistics; the running mean and UNBIASED variance (m / (m - 1)) move
//!   by `new = (1 - momentum) * old + momentum * batch`.
//! - [`Mode::Eval`]: the running statistics (or batch statistics when not tracking).
//! - [`BatchNorm::backward`]: closed-form gradients for x, weight and bias.
//!
//! Memory may be channels-first (NCHW...) or channels-last (NHWC...): see [`Layout`] and
//! [`Shape`]. Tensors may be stored as `f32`, `f64`, [`bf16`] or [`f16`](struct@f16) ([`Element`]); with the
//! 16-bit types the parameters and statistics are `f32` and every output is correctly rounded.
//! Statistics accumulate in `f64`; see `docs/design.md` for the numerics.
//!
//! A call is a pipeline of public stages ([`stages`]): per-channel [`Moments`] of the batch,
//! merged (across pieces, threads or processes), the normalisation they give, the pass that
//! applies it, the running-statistics update; backward, the gradient sums and the dx pass.
//! [`BatchNorm`] composes them in one process, bit for bit; a batch split over processes
//! composes them around a collective.
//!
//! ```
//! use batchnorm::{BatchNorm, BatchNormConfig, Layout, Mode, Shape};
//! // A [4, 1, 3, 3] batch: one channel of 36 values.
//! let shape = Shape::new(&[4, 1, 3, 3], Layout::ChannelsFirst)?;
//! let x: Vec<f32> = (0..36).map(|i| 1e6 + i as f32).collect();
//! let mut y = vec![0.0; 36];
//! let mut bn = BatchNorm::<f32>::new(1, BatchNormConfig::default())?;
//! bn.forward(&x, &shape, Mode::Train, &mut y)?;
//! let mean_y = y.iter().sum::<f32>() / 36.0;
//! assert!(mean_y.abs() < 1e-6);
//! # Ok::<(), batchnorm::BatchNormError>(())
//! ```

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod backward;
mod batch_norm;
mod cache;
mod config;
mod element;
mod error;
mod forward;
mod gate;
mod layout;
mod mask;
mod par;
mod plan;
pub mod renorm;
mod running_stats;
mod scratch;
mod simd;
pub mod stages;
mod stats;
mod stream;
mod team;
mod tuning;

pub use batch_norm::{BatchNorm, Grads, Saved};
pub use config::{BatchNormConfig, Mode, Statistics};
pub use element::{bf16, f16, Element, Float};
pub use error::{BatchNormError, Result};
pub use layout::{Geometry, Layout, Shape, MAX_RANK};
pub use par::Par;
pub use renorm::Renorm;
pub use simd::Isa;
pub use stats::Moments;
