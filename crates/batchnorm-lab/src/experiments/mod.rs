//! The experiments `bnlab` runs, one module each, and the pieces they share: the error type,
//! MNIST loading, MLP construction, the training step, test accuracy and output
//! files.

mod data;
mod error;
mod evaluate;
pub mod fig1;
mod mlp;
mod output;
mod sampler;
mod trainer;

pub use error::LabError;
pub use evaluate::EVAL_CHUNK;
pub use mlp::Activation;
