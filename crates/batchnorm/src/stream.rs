//! Non-temporal output for tensors larger than the cache.
//!
//! Writing an output the normal way first reads each cache line of the destination ("read for
//! ownership"), so a pass that reads x and writes y moves three bytes per byte of y. When y is
//! too large to stay in cache anyway, the kernels write it with non-temporal stores instead,
//! which skip that read: two bytes per byte, as `memcpy` does for large copies. The kernels
//! store straight from the registers, one aligned 32-byte store per step
//! ([`crate::simd::map_runs`], [`crate::simd::map_cyclic`]); they used to compute pieces
//! into a staging buffer and copy them out, 20% slower. The values are the same either way;
//! only the stores differ.

use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::simd::Isa;

/// Outputs at least this large are streamed: half the last-level cache (read once from sysfs),
/// like glibc's `memcpy` threshold for non-temporal stores, but never more than
/// [`MAX_THRESHOLD_BYTES`]. The environment variable `BATCHNORM_STREAM_MIN_BYTES`, read once,
/// overrides it.
pub(crate) fn threshold_bytes() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| {
        let over = std::env::var("BATCHNORM_STREAM_MIN_BYTES").ok();
        over.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            crate::cache::last_level_bytes()
                .map_or(MAX_THRESHOLD_BYTES, |b| (b / 2).min(MAX_THRESHOLD_BYTES))
        })
    })
}

/// The largest streaming threshold. Virtual machines report the host's whole L3 in sysfs (480
/// MiB on the 2-core benchmark machine), of which a guest keeps little: there, 51 MB written
/// with ordinary stores read back no faster than after streaming stores (4.12 against 4.17 ms),
/// while the streamed write itself took half the time.
const MAX_THRESHOLD_BYTES: usize = 16 << 20;

/// Runs `task`, which writes its outputs as the [`Writer`] it is given says: with normal stores,
/// or, when `stream` is set and the path has non-temporal stores, with those. The streamed
/// stores are fenced once, when `task` returns, before its thread can report the work done (a
/// fence per piece written cost 12% of a streamed pass).
#[inline]
pub(crate) fn streaming<R>(isa: Isa, stream: bool, task: impl FnOnce(&Writer) -> R) -> R {
    let writer = Writer {
        streams: stream && isa.streams(),
        _same_thread: PhantomData,
    };
    let result = task(&writer);
    if writer.streams {
        fence();
    }
    result
}

/// Writes outputs for one [`streaming`] task; bound to its thread, whose fence covers it.
pub(crate) struct Writer {
    streams: bool,
    _same_thread: PhantomData<*const ()>,
}

impl Writer {
    /// Whether the kernels use non-temporal stores (never on the baseline path).
    pub fn streams(&self) -> bool {
        self.streams
    }
}

/// Orders this thread's streamed stores before anything it does next.
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SFENCE has no preconditions; SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}
