//! The collective operations that SyncBatchNorm and data-parallel training need, and their
//! errors.

/// A group of `size` ranks that call the same collective operations in the same order, each
/// from its own thread or process.
///
/// Every operation is collective: each rank of the group must call it, with buffers of the same
/// length, before any returns. Results are identical on every rank. Implemented by
/// [`LocalComm`](crate::LocalComm) (threads of one process) and, with the `mpi` feature,
/// `MpiComm` (processes under `mpirun`).
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This rank, `0..size`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Every rank's `send` (the same length on every rank), concatenated in rank order into
    /// `recv` (`size * send.len()` values).
    ///
    /// # Errors
    /// [`CommError`]: a wrong `recv` length, a rank gone, ranks that disagree.
    fn all_gather_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<(), CommError>;

    /// [`all_gather_f64`](Self::all_gather_f64) for `f32`.
    ///
    /// # Errors
    /// As [`all_gather_f64`](Self::all_gather_f64).
    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;

    /// Replaces `buf` by the element-wise sum of every rank's `buf`, computed in `f64`.
    ///
    /// # Errors
    /// As [`all_gather_f64`](Self::all_gather_f64).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError>;

    /// [`all_reduce_sum_f64`](Self::all_reduce_sum_f64) for `f32`, summed in `f32`.
    ///
    /// # Errors
    /// As [`all_gather_f64`](Self::all_gather_f64).
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CommError>;

    /// Replaces `buf` on every rank by rank 0's.
    ///
    /// # Errors
    /// As [`all_gather_f64`](Self::all_gather_f64).
    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<(), CommError>;

    /// [`broadcast_f64`](Self::broadcast_f64) for `f32`.
    ///
    /// # Errors
    /// As [`all_gather_f64`](Self::all_gather_f64).
    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<(), CommError>;
}

/// What can go wrong in a collective operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommError {
    /// A rank left the group (its communicator was dropped, or its thread panicked) before
    /// taking part in this operation: it never will, so the operation cannot complete.
    #[error("rank {rank} left the group: the collective operation cannot complete")]
    PeerGone {
        /// The rank that left.
        rank: usize,
    },
    /// Ranks called different operations, or the same one with different lengths.
    #[error("rank {rank} called {op} with {len} values where rank 0 called {op0} with {len0}")]
    Mismatch {
        /// The first rank that differs from rank 0.
        rank: usize,
        /// Its operation.
        op: &'static str,
        /// Its length.
        len: usize,
        /// Rank 0's operation.
        op0: &'static str,
        /// Rank 0's length.
        len0: usize,
    },
    /// A receive buffer of the wrong length.
    #[error("`{buffer}` has {got} values, expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        buffer: &'static str,
        /// Its required length.
        expected: usize,
        /// Its actual length.
        got: usize,
    },
    /// MPI was initialised before in this process (one universe per process).
    #[error("MPI is already initialised in this process: create one MpiComm and share it")]
    MpiInitialized,
}

/// Checks a receive buffer's length.
pub(crate) fn check_len(
    buffer: &'static str,
    got: usize,
    expected: usize,
) -> Result<(), CommError> {
    if got == expected {
        Ok(())
    } else {
        Err(CommError::LengthMismatch {
            buffer,
            expected,
            got,
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// An element type the collectives carry (`f32`, `f64`): picks the [`Collective`] method of
/// its type, for code generic over it (a network's gradients, say).
pub trait Word: sealed::Sealed + Copy + Send + Sync + 'static {
    /// [`Collective::all_reduce_sum_f64`] or [`Collective::all_reduce_sum_f32`].
    ///
    /// # Errors
    /// As the method.
    fn all_reduce_sum<C: Collective + ?Sized>(comm: &C, buf: &mut [Self]) -> Result<(), CommError>;

    /// [`Collective::broadcast_f64`] or [`Collective::broadcast_f32`].
    ///
    /// # Errors
    /// As the method.
    fn broadcast<C: Collective + ?Sized>(comm: &C, buf: &mut [Self]) -> Result<(), CommError>;
}

impl Word for f32 {
    fn all_reduce_sum<C: Collective + ?Sized>(comm: &C, buf: &mut [f32]) -> Result<(), CommError> {
        comm.all_reduce_sum_f32(buf)
    }

    fn broadcast<C: Collective + ?Sized>(comm: &C, buf: &mut [f32]) -> Result<(), CommError> {
        comm.broadcast_f32(buf)
    }
}

impl Word for f64 {
    fn all_reduce_sum<C: Collective + ?Sized>(comm: &C, buf: &mut [f64]) -> Result<(), CommError> {
        comm.all_reduce_sum_f64(buf)
    }

    fn broadcast<C: Collective + ?Sized>(comm: &C, buf: &mut [f64]) -> Result<(), CommError> {
        comm.broadcast_f64(buf)
    }
}
