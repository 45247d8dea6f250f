//! In-process ranks: a group of threads that exchange through shared memory.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::collective::{check_len, Collective, CommError};

/// `size` communicators forming one group, rank `r` at index `r`: move each to its own thread.
///
/// Operations combine the ranks' buffers in rank order (a sum adds rank 0's, then rank 1's, ...),
/// so every rank gets the same bits, run after run. If a rank's communicator is dropped (its
/// thread returned or panicked) the others' pending and later operations fail with
/// [`CommError::PeerGone`] instead of waiting for it.
///
/// ```
/// use batchnorm_dist::{local_group, Collective};
/// let sums: Vec<f64> = std::thread::scope(|s| {
///     let handles: Vec<_> = local_group(3)
///         .into_iter()
///         .map(|comm| s.spawn(move || {
///             let mut buf = [comm.rank() as f64, 1.0];
///             comm.all_reduce_sum_f64(&mut buf).map(|()| buf[0] + buf[1])
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// assert_eq!(sums, [6.0, 6.0, 6.0]); // (0 + 1 + 2) + 3
/// ```
pub fn local_group(size: usize) -> Vec<LocalComm> {
    let group = Arc::new(Group {
        size,
        round: Mutex::new(Round {
            slots: vec![None; size],
            arrived: 0,
            result: None,
            unread: 0,
            gone: None,
        }),
        changed: Condvar::new(),
    });
    (0..size)
        .map(|rank| LocalComm {
            rank,
            group: Arc::clone(&group),
        })
        .collect()
}

/// One rank of a [`local_group`].
#[derive(Debug)]
pub struct LocalComm {
    rank: usize,
    group: Arc<Group>,
}

#[derive(Debug)]
struct Group {
    size: usize,
    round: Mutex<Round>,
    changed: Condvar,
}

/// The operation in progress: each rank deposits its buffer; the last to arrive combines them;
/// each rank then reads the result once, and the last reader opens the next round.
#[derive(Debug)]
struct Round {
    slots: Vec<Option<(Op, Vec<f64>)>>,
    arrived: usize,
    result: Option<Result<Arc<Vec<f64>>, CommError>>,
    unread: usize,
    /// The first rank whose communicator was dropped.
    gone: Option<usize>,
}

/// A collective operation and the element type it runs in (`f32` values travel widened to
/// `f64`, exactly; sums of `f32` are rounded to `f32` after each addition, as MPI sums them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Gather { f32: bool },
    Sum { f32: bool },
    Broadcast { f32: bool },
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Gather { f32: true } => "all_gather_f32",
            Op::Gather { f32: false } => "all_gather_f64",
            Op::Sum { f32: true } => "all_reduce_sum_f32",
            Op::Sum { f32: false } => "all_reduce_sum_f64",
            Op::Broadcast { f32: true } => "broadcast_f32",
            Op::Broadcast { f32: false } => "broadcast_f64",
        }
    }
}

/// The result of every rank's operation over its buffer, in rank order; an error unless every
/// rank called rank 0's operation with rank 0's length.
fn combine(slots: &[Option<(Op, Vec<f64>)>]) -> Result<Vec<f64>, CommError> {
    let calls: Vec<&(Op, Vec<f64>)> = slots.iter().flatten().collect();
    let bufs: Vec<&Vec<f64>> = calls.iter().map(|(_, b)| b).collect();
    let (op0, len0) = (calls[0].0, bufs[0].len());
    for (rank, (op, buf)) in calls.iter().enumerate() {
        if *op != op0 || buf.len() != len0 {
            return Err(CommError::Mismatch {
                rank,
                op: op.name(),
                len: buf.len(),
                op0: op0.name(),
                len0,
            });
        }
    }
    Ok(match op0 {
        Op::Gather { .. } => bufs.iter().flat_map(|b| b.iter().copied()).collect(),
        Op::Broadcast { .. } => bufs[0].clone(),
        Op::Sum { f32 } => {
            let mut acc = bufs[0].clone();
            for buf in &bufs[1..] {
                for (a, &b) in acc.iter_mut().zip(buf.iter()) {
                    *a = if f32 {
                        f64::from(*a as f32 + b as f32)
                    } else {
                        *a + b
                    };
                }
            }
            acc
        }
    })
}

impl LocalComm {
    fn lock(&self) -> MutexGuard<'_, Round> {
        // The lock is never held across code that can panic; recover the state if it was.
        self.group
            .round
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, round: MutexGuard<'a, Round>) -> MutexGuard<'a, Round> {
        self.group
            .changed
            .wait(round)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `op` with this rank's `data`; returns the combined result.
    fn exchange(&self, op: Op, data: Vec<f64>) -> Result<Arc<Vec<f64>>, CommError> {
        let size = self.group.size;
        let mut round = self.lock();
        // Wait for the previous operation to be read by everyone.
        while round.result.is_some() {
            if let Some(rank) = round.gone {
                return Err(CommError::PeerGone { rank });
            }
            round = self.wait(round);
        }
        if let Some(rank) = round.gone {
            return Err(CommError::PeerGone { rank });
        }
        round.slots[self.rank] = Some((op, data));
        round.arrived += 1;
        if round.arrived == size {
            let result = combine(&round.slots).map(Arc::new);
            round.slots.iter_mut().for_each(|s| *s = None);
            round.arrived = 0;
            round.result = Some(result);
            round.unread = size;
            self.group.changed.notify_all();
        }
        // Wait for the result (a rank that left fails it, unless it already exists).
        let result = loop {
            if let Some(result) = &round.result {
                break result.clone();
            }
            if let Some(rank) = round.gone {
                round.slots[self.rank] = None;
                round.arrived -= 1;
                return Err(CommError::PeerGone { rank });
            }
            round = self.wait(round);
        };
        round.unread -= 1;
        if round.unread == 0 {
            round.result = None;
            self.group.changed.notify_all();
        }
        result
    }

    /// An all-gather into a buffer of `recv_len` values. A wrong length fails after the
    /// exchange, so that the other ranks are not left waiting.
    fn gather(
        &self,
        f32: bool,
        send: Vec<f64>,
        recv_len: usize,
    ) -> Result<Arc<Vec<f64>>, CommError> {
        let all = self.exchange(Op::Gather { f32 }, send)?;
        check_len("recv", recv_len, all.len())?;
        Ok(all)
    }
}

impl Drop for LocalComm {
    /// Leaves the group: the other ranks' operations fail from now on instead of waiting.
    fn drop(&mut self) {
        let mut round = self.lock();
        round.gone.get_or_insert(self.rank);
        self.group.changed.notify_all();
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

impl Collective for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn all_gather_f64(&self, send: &[f64], recv: &mut [f64]) -> Result<(), CommError> {
        recv.copy_from_slice(&self.gather(false, send.to_vec(), recv.len())?);
        Ok(())
    }

    fn all_gather_f32(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        let all = self.gather(true, widen(send), recv.len())?;
        // Exact: the values are f32s widened.
        recv.iter_mut()
            .zip(all.iter())
            .for_each(|(r, &v)| *r = v as f32);
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        buf.copy_from_slice(&self.exchange(Op::Sum { f32: false }, buf.to_vec())?);
        Ok(())
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let sum = self.exchange(Op::Sum { f32: true }, widen(buf))?;
        buf.iter_mut()
            .zip(sum.iter())
            .for_each(|(b, &v)| *b = v as f32);
        Ok(())
    }

    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        buf.copy_from_slice(&self.exchange(Op::Broadcast { f32: false }, buf.to_vec())?);
        Ok(())
    }

    fn broadcast_f32(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let root = self.exchange(Op::Broadcast { f32: true }, widen(buf))?;
        buf.iter_mut()
            .zip(root.iter())
            .for_each(|(b, &v)| *b = v as f32);
        Ok(())
    }
}
