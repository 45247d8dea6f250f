//! The training stack's tests, one module per subject, in one test binary (one build of the
//! kernels they share; `hostile.rs` and `no_alloc.rs` stay separate binaries: each installs its
//! own global allocator, and `mpi.rs` runs under `mpirun`).

mod common;
#[path = "../dp_common/mod.rs"]
mod dp_common;

mod conv_gradcheck;
mod conv_layers;
mod data_parallel;
mod fold;
mod gradcheck;
mod mnist_idx;
mod new_layer;
mod residual;
mod small_batch_layers;
mod state_dict;
mod state_dict_pytorch;
mod train_mnist;
