//! Instruction sets, chosen at run time.
//!
//! Every kernel is written once, as plain Rust over fixed-width lanes, and compiled twice: for
//! the baseline target and, on x86-64, again inside a `#[target_feature(enable = "avx2,fma")]`
//! wrapper (the [`multiversion`] macro). The compiler vectorises both; neither contracts `a * b + c`
//! into a fused multiply-add, and the reductions keep their lane order, so every path gives
//! bitwise the same results. Nothing requires `-C target-cpu=native`.

use std::sync::OnceLock;

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
