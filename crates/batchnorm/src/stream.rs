//! Non-temporal output for tensors larger than the cache.
//!
//! Writing an output the normal way first reads each cache line of the destination ("read for
//! ownership"), so a pass that reads x and writes y moves three bytes per byte of y. When y is
//! too large to stay in cache anyway, the kernels write it with non-temporal stores instead,
//! which skip that read: two bytes per byte, as `memcpy` does for large copies. Kernels over
//! runs (channels-first) store straight from the registers ([`crate::simd::map_prefetched`]);
//! the row kernels (channels-last), whose rows need not start aligned, compute a slice into a
//! small per-thread staging buffer that stays in L1 and copy it out ([`Writer::staged`]). The
//! values are the same either way; only the stores differ.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::OnceLock;

use crate::element::Element;
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

thread_local! {
    /// Staging for one piece of output; `f64` words so that any element type is aligned.
    static STAGING: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `task`, which writes its outputs as the [`Writer`] it is given says: with normal stores,
/// or, when `stream` is set and the path has non-temporal stores, with those. The streamed
/// stores are fenced once, when `task` returns, before its thread can report the work done (a
/// fence per piece written cost 12% of a streamed pass).
#[inline]
pub(crate) fn streaming<R>(isa: Isa, stream: bool, task: impl FnOnce(&Writer) -> R) -> R {
    let writer = Writer {
        streams: stream && isa == Isa::Avx2,
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
    /// Whether kernels that store their results themselves use non-temporal stores (only ever
    /// on the AVX2 path).
    pub fn streams(&self) -> bool {
        self.streams
    }

    /// Runs `f` to produce `dst`: in place, or into a staging buffer that is then streamed to
    /// `dst`.
    #[inline]
    pub fn staged<T: Element>(&self, dst: &mut [T], f: impl FnOnce(&mut [T])) {
        if !self.streams {
            return f(dst);
        }
        STAGING.with(|cell| {
            let mut buf = cell.borrow_mut();
            let words = (std::mem::size_of_val(dst)).div_ceil(8);
            if buf.len() < words {
                buf.resize(words, 0.0);
            }
            // SAFETY: `buf` holds at least `size_of_val(dst)` bytes, aligned for `f64` and so
            // for `T` (f32 or f64, the only `Element`s); every bit pattern is a valid `T`; the
            // slice lives only inside this borrow of `buf`.
            let staged =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<T>(), dst.len()) };
            f(staged);
            stream_copy(dst, staged);
        });
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

/// `dst.copy_from_slice(src)` with non-temporal stores for the 32-byte-aligned middle.
#[cfg(target_arch = "x86_64")]
fn stream_copy<T: Element>(dst: &mut [T], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    // SAFETY: `Writer::staged` only calls this on the AVX2 path, which `Isa::detect` verified.
    unsafe {
        stream_copy_avx(
            dst.as_mut_ptr().cast(),
            src.as_ptr().cast(),
            size_of_val(src),
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn stream_copy<T: Element>(dst: &mut [T], src: &[T]) {
    dst.copy_from_slice(src);
}

/// Copies `len` bytes; the part of `dst` aligned to 32 bytes goes through non-temporal stores
/// (fenced by [`streaming`] when the task ends).
///
/// # Safety
/// The CPU supports AVX; `src` and `dst` are valid for `len` bytes and do not overlap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn stream_copy_avx(dst: *mut u8, src: *const u8, len: usize) {
    let head = dst.align_offset(32).min(len);
    let body = (len - head) / 32 * 32;
    // SAFETY: offsets stay within `len` of both buffers, which the caller guarantees valid and
    // disjoint; `dst + head` is 32-byte aligned and `body` a multiple of 32, as
    // `stream_bytes` needs; AVX is the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        crate::simd::stream_bytes(dst.add(head), src.add(head), body);
        let done = head + body;
        std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done);
    }
}
