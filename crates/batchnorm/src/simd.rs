//! Instruction sets, chosen at run time.
//!
//! Every kernel is written once, as plain Rust over fixed-width lanes, and compiled twice: for
//! the baseline target and, on x86-64, again inside a `#[target_feature(enable = "avx2,fma")]`
//! wrapper (the [`multiversion`] macro). The compiler vectorises both; neither contracts `a * b + c`
//! into a fused multiply-add, and the reductions keep their lane order, so every path gives
//! bitwise the same results. Nothing requires `-C target-cpu=native`.

use std::sync::OnceLock;

use crate::tuning::PREFETCH_BYTES;

/// A kernel path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// The baseline of the compilation target (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2,
}

impl Isa {
    /// The best path this machine supports (detected once).
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
            Isa::Baseline
        })
    }

    /// Every path this machine supports, baseline first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Baseline];
        if Isa::detect() == Isa::Avx2 {
            v.push(Isa::Avx2);
        }
        v
    }

    /// Whether this machine can run the path.
    pub fn is_supported(self) -> bool {
        Isa::available().contains(&self)
    }
}

/// Defines `pub(crate) fn $name<T: Element>(isa: Isa, args...)` that runs `$body` compiled for
/// the chosen instruction set.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        fn $name:ident<$T:ident>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        pub(crate) fn $name<$T: $crate::element::Element>(
            isa: $crate::simd::Isa,
            $($arg: $ty),*
        ) $(-> $ret)? {
            #[inline(always)]
            fn generic<$T: $crate::element::Element>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2<$T: $crate::element::Element>($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }

            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `BatchNorm::set_isa` only accepts paths the running CPU supports, and
                // `Isa::detect` found AVX2 and FMA before this variant is ever chosen.
                $crate::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => generic($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// Asks for the cache lines of `data` to be loaded into L1 (a hint, as [`prefetch_ahead`]).
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    prefetch_bytes(data.as_ptr().cast(), std::mem::size_of_val(data));
}

#[inline(always)]
fn prefetch_bytes(start: *const i8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never dereferences its address in the program's sense and
            // cannot fault; SSE (which provides it) is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Asks for the cache lines [`PREFETCH_BYTES`] past `chunk` (as many bytes as it spans) to be
/// loaded into L1. Streaming loops call it on each chunk they are about to process: their loads
/// then stay in flight ahead of the arithmetic, which out-of-order execution alone does not
/// achieve for the `f64` reductions (measured: the moments pass reads 2.5x faster). A hint only:
/// it never faults and changes no result; a no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(chunk: &[T]) {
    let ahead = chunk.as_ptr().cast::<i8>().wrapping_add(PREFETCH_BYTES);
    prefetch_bytes(ahead, std::mem::size_of_val(chunk));
}

/// Elements per step of the prefetching maps.
const MAP_CHUNK: usize = 16;

/// `y[i] = f(x[i])` over equal-length slices, prefetching `x` ahead (see [`prefetch_ahead`]).
#[inline(always)]
pub(crate) fn map_prefetched<T: Copy, U>(x: &[T], y: &mut [U], f: impl Fn(T) -> U) {
    let (xc, xt) = x.as_chunks::<MAP_CHUNK>();
    let (yc, yt) = y.as_chunks_mut::<MAP_CHUNK>();
    for (ys, xs) in yc.iter_mut().zip(xc) {
        prefetch_ahead(xs);
        for l in 0..MAP_CHUNK {
            ys[l] = f(xs[l]);
        }
    }
    for (yv, &xv) in yt.iter_mut().zip(xt) {
        *yv = f(xv);
    }
}

/// `y[i] = f(a[i], b[i])` over equal-length slices, prefetching `a` and `b` ahead.
#[inline(always)]
pub(crate) fn map2_prefetched<T: Copy, U>(a: &[T], b: &[T], y: &mut [U], f: impl Fn(T, T) -> U) {
    let (ac, at) = a.as_chunks::<MAP_CHUNK>();
    let (bc, bt) = b.as_chunks::<MAP_CHUNK>();
    let (yc, yt) = y.as_chunks_mut::<MAP_CHUNK>();
    for ((ys, as_), bs) in yc.iter_mut().zip(ac).zip(bc) {
        prefetch_ahead(as_);
        prefetch_ahead(bs);
        for l in 0..MAP_CHUNK {
            ys[l] = f(as_[l], bs[l]);
        }
    }
    for ((yv, &av), &bv) in yt.iter_mut().zip(at).zip(bt) {
        *yv = f(av, bv);
    }
}
