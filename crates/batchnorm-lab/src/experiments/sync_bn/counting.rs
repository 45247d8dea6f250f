//! A communicator that counts the bytes its collectives deliver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use batchnorm_dist::{Collective, CommError};

/// Passes every operation to `inner` and adds up, per rank, the bytes of each operation's
/// result: an all-gather of `k` values delivers `k * P` of them, an all-reduce or a broadcast
/// `k`. (So a BN layer of C channels counts `8 (2C + 1) P` bytes in forward and `8 (2C + 1)`
/// in backward.)
#[derive(Debug)]
pub(super) struct Counting {
    inner: Arc<dyn Collective>,
    bytes: AtomicU64,
}

impl Counting {
    pub(super) fn new(inner: Arc<dyn Collective>) -> Self {
        Self {
            inner,
            bytes: AtomicU64::new(0),
        }
    }

    /// Bytes delivered since the last call (and starts counting again from 0).
    pub(super) fn take(&self) -> u64 {
        self.bytes.swap(0, Ordering::Relaxed)
    }

    fn add<W>(&self, values: usize) {
        let bytes = (values * std::mem::size_of::<W>()) as u64;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Collective for Counting {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn all_gather_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<(), CommError> {
        self.add::<f64>(recv.len());
        self.inner.all_gather_f64(send, recv)
    }

    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        self.add::<f32>(recv.len());
        self.inner.all_gather_f32(send, recv)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.add::<f64>(buf.len());
        self.inner.all_reduce_sum_f64(buf)
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.add::<f32>(buf.len());
        self.inner.all_reduce_sum_f32(buf)
    }

    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        self.add::<f64>(buf.len());
        self.inner.broadcast_f64(buf)
    }

    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.add::<f32>(buf.len());
        self.inner.broadcast_f32(buf)
    }
}
