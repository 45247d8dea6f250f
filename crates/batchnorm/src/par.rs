//! Explicit parallelism: a [`Par`] says whether a call may use rayon's threads.
//!
//! The work is always cut into the same pieces, whatever the number of threads, and partial
//! results are merged in a fixed order: outputs are bitwise identical for `Par::Seq` and
//! `Par::Rayon` on any pool size.

use rayon::prelude::*;

use crate::tuning::PAR_MIN_ELEMS;

/// Whether a [`BatchNorm`](crate::BatchNorm) call may run on several threads.
///
/// `Rayon` uses the current rayon pool: the global one, or the one a caller entered with
/// `ThreadPool::install` (which is how to choose the number of threads). Inputs smaller than
/// about 32k elements always run on the calling thread: splitting them costs more than it saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Par {
    /// Everything on the calling thread (the default).
    #[default]
    Seq,
    /// Split large inputs over the current rayon pool.
    Rayon,
}

impl Par {
    /// Whether an operation over `len` elements should be split.
    pub(crate) fn split(self, len: usize) -> bool {
        self == Par::Rayon && len >= PAR_MIN_ELEMS
    }
}

/// Calls `f(i, chunk)` for each `chunk`-sized piece of `out` (the last may be shorter), in
/// parallel when `par` is set. `f` reads its inputs by the index `i`.
pub(crate) fn for_each_chunk<R: Send>(
    par: bool,
    out: &mut [R],
    chunk: usize,
    f: impl Fn(usize, &mut [R]) + Sync + Send,
) {
    if par {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    }
}
