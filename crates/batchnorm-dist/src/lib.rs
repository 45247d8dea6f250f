//! Batch normalization over a batch split across ranks (threads or MPI processes), exact for
//! any split: [`SyncBatchNorm`].
//!
//! The ranks exchange per-channel statistics through a [`Collective`]: [`local_group`] makes
//! in-process ranks (one thread each), and with the `mpi` feature `MpiComm` runs on an MPI
//! library under `mpirun`. Each rank's `(count, mean, M2)` per channel, in `f64`, is gathered
//! and merged in rank order, so every rank gets the same statistics, equal up to rounding to
//! one process's on the concatenated batch (see `docs/distributed.md` for the exchange and
//! its cost at scale).

mod collective;
mod error;
mod local;
#[cfg(feature = "mpi")]
mod mpi_comm;
mod sync_batch_norm;

pub use collective::{Collective, CommError, Word};
pub use error::{DistError, Result};
pub use local::{local_group, LocalComm};
#[cfg(feature = "mpi")]
pub use mpi_comm::MpiComm;
pub use sync_batch_norm::{SyncBatchNorm, SyncSaved};
