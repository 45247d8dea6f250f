//! A small, fast training stack built on the `batchnorm` kernels.
//!
//! Layers ([`layers`]) have explicit forward and backward passes, the chain rule written out;
//! a [`Sequential`] model owns every workspace, allocated once, so a training step allocates
//! nothing of its own. Matrix products go through `matrixmultiply` ([`matmul`]).
//!
//! ```
//! use batchnorm_nn::{layers::{Layer, Linear, Mode, Sigmoid}, Rng, Sequential, Sgd, SgdConfig, SoftmaxCrossEntropy};
//! let mut rng = Rng::new(0);
//! let layers: Vec<Box<dyn Layer<f32>>> = vec![
//!     Box::new(Linear::gaussian(4, 8, 0.5, &mut rng)?),
//!     Box::new(Sigmoid::new(8)?),
//!     Box::new(Linear::gaussian(8, 3, 0.5, &mut rng)?),
//! ];
//! let mut model = Sequential::new(layers, 16)?;
//! let mut sgd = Sgd::new(SgdConfig { lr: 0.1, ..SgdConfig::default() }, &mut model)?;
//! let ce = SoftmaxCrossEntropy::new(3)?;
//! let labels = [0u8, 1, 2, 1];
//! model.input_mut(4)?.copy_from_slice(&[0.5; 16]);
//! model.forward(4, Mode::Train)?;
//! let (out, grad) = model.output_and_grad(4)?;
//! let stats = ce.forward_backward(out, &labels, grad)?;
//! assert!(stats.loss.is_finite());
//! model.backward(4, false)?;
//! sgd.step(&mut model)?;
//! # Ok::<(), batchnorm_nn::NnError>(())
//! ```

pub mod data;
mod data_parallel;
mod error;
pub mod fold;
mod indirect_gemm;
mod init;
pub mod layers;
mod loss;
pub mod matmul;
mod model;
mod optim;
mod rng;
pub mod safetensors;
mod scalar;
pub mod state_dict;

pub use data_parallel::{convert_sync_batch_norm, DataParallel};
pub use error::{NnError, Result};
pub use init::gaussian;
pub use loss::{count_correct, LossStats, SoftmaxCrossEntropy};
pub use model::Sequential;
pub use optim::{Sgd, SgdConfig};
pub use rng::Rng;
pub use scalar::{exp_f32, Scalar};
