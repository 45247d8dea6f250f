//! The experiments `bnlab` runs, one module each, and the pieces they share: the error type,
//! MNIST loading, MLP construction, the training step, test accuracy, parallel runs and output
//! files.

pub mod all;
pub mod batch_size;
pub mod cli;
pub mod cnn;
mod convnet;
mod data;
pub mod depth;
mod error;
mod evaluate;
pub mod fig1;
pub mod fold;
pub mod lr_sweep;
mod mlp;
mod output;
mod parallel;
mod resnet;
mod sampler;
pub mod small_batch;
pub mod sync_bn;
mod trainer;
pub mod why;

pub use error::LabError;
pub use evaluate::EVAL_CHUNK;
pub use mlp::Activation;
