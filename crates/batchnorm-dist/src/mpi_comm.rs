//! Ranks as MPI processes (the `mpi` feature): [`MpiComm`] over rsmpi.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use mpi::Threading;

use crate::collective::{check_len, Collective, CommError};

/// The world communicator of an MPI job: run the program with `mpirun -np P`, one rank per
/// process. Without `mpirun`, the process is a group of one.
///
/// MPI is initialised by [`MpiComm::init`] (once per process) and finalised when the
/// `MpiComm` is dropped. An MPI error aborts the whole job (MPI's default error handler), so
/// a failing rank never leaves the others waiting. Calls are serialised by a lock, so the
/// communicator may be shared between threads.
///
/// ```no_run
/// use batchnorm_dist::{Collective, MpiComm};
/// let comm = MpiComm::init()?;
/// let mut buf = [comm.rank() as f64];
/// comm.all_reduce_sum_f64(&mut buf)?;
/// # Ok::<(), batchnorm_dist::CommError>(())
/// ```
pub struct MpiComm {
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
    // Finalises MPI when dropped, after `world`.
    _universe: Universe,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiComm")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

// SAFETY: MPI is initialised with `Threading::Serialized` (checked in `init`): any thread may
// call MPI as long as no two do at once, which the mutex around the communicator guarantees.
// The universe is only touched again when dropped, by the thread that owns the `MpiComm`.
unsafe impl Send for MpiComm {}
// SAFETY: as for `Send`: every use of the communicator goes through the mutex.
unsafe impl Sync for MpiComm {}

impl MpiComm {
    /// Initialises MPI and returns the world communicator.
    ///
    /// # Errors
    /// [`CommError::MpiInitialized`] if MPI was initialised before in this process (or
    /// cannot serialise calls from several threads).
    pub fn init() -> Result<Self, CommError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or(CommError::MpiInitialized)?;
        if threading < Threading::Serialized {
            return Err(CommError::MpiInitialized);
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self {
            world: Mutex::new(world),
            rank,
            size,
            _universe: universe,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> R) -> R {
        let world = self.world.lock().unwrap_or_else(|p| p.into_inner());
        f(&world)
    }

    fn gather<W: Equivalence + Default + Clone>(
        &self,
        send: &[W],
        recv: &mut [W],
    ) -> Result<(), CommError> {
        check_len("recv", recv.len(), send.len() * self.size)?;
        self.with(|w| w.all_gather_into(send, recv));
        Ok(())
    }

    fn sum<W: Equivalence + Default + Clone>(&self, buf: &mut [W]) -> Result<(), CommError> {
        let send = buf.to_vec();
        self.with(|w| w.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        Ok(())
    }

    fn broadcast<W: Equivalence>(&self, buf: &mut [W]) -> Result<(), CommError> {
        self.with(|w| w.process_at_rank(0).broadcast_into(buf));
        Ok(())
    }
}

impl Collective for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<(), CommError> {
        self.gather(send, recv)
    }

    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        self.gather(send, recv)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.sum(buf)
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.sum(buf)
    }

    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.broadcast(buf)
    }

    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.broadcast(buf)
    }
}
