//! Element types: what tensors are stored in, kept apart from what the arithmetic runs in.
//!
//! | storage `T` | [`Element::Param`] (weight, bias, running and saved statistics, gradients) | [`Element::Compute`] (the normalising map) |
//! |---|---|---|
//! | `f64` | `f64` | `f64` |
//! | `f32` | `f32` | `f32` (mean as a high and a low part, see `docs/design.md`) |
//! | [`bf16`], [`f16`](struct@f16) | `f32` | `f64` |
//!
//! This is PyTorch's mixed-type convention for reduced precision: activations and their
//! gradients in 16 bits, parameters and statistics in `f32`. Statistics and gradient sums are
//! accumulated in `f64` whatever the storage type, and every 16-bit result is the nearest
//! representable value to an `f64` one ([`rounding`]); for bf16, a quick evaluation in `f32`
//! with a proven error bound usually settles it first ([`Element::round_step`]).

use std::fmt::Debug;
use std::ops::{Add, Mul, Sub};

pub use half::{bf16, f16};

pub(crate) mod rounding;

use rounding::HalfFormat;

pub(crate) mod sealed {
    /// What only this crate's element types have: their values in order, as integers.
    pub trait Sealed: Sized {
        /// The position of a value that is not NaN among the values of its type in increasing
        /// order, -0 and +0 both at 0: `a < b` exactly when `a.ordinal() < b.ordinal()`, and
        /// neighbours are one apart.
        fn ordinal(self) -> i64;
        /// The value at position `o` (+0 at 0), for `o` between the ordinals of -inf and +inf.
        fn from_ordinal(o: i64) -> Self;
    }

    macro_rules! sealed {
        ($t:ty, $bits:ty, $sign:expr) => {
            impl Sealed for $t {
                #[inline]
                fn ordinal(self) -> i64 {
                    let bits = self.to_bits();
                    let magnitude = (bits & !$sign) as i64;
                    if bits & $sign == 0 {
                        magnitude
                    } else {
                        -magnitude
                    }
                }

                #[inline]
                fn from_ordinal(o: i64) -> Self {
                    let magnitude = o.unsigned_abs() as $bits;
                    <$t>::from_bits(if o < 0 { magnitude | $sign } else { magnitude })
                }
            }
        };
    }
    sealed!(f32, u32, 1u32 << 31);
    sealed!(f64, u64, 1u64 << 63);
    sealed!(half::bf16, u16, 1u16 << 15);
    sealed!(half::f16, u16, 1u16 << 15);
}

/// A storage type of tensors: `f32`, `f64`, [`bf16`] or [`f16`](struct@f16).
///
/// Conversions to and from `f64` are exact one way and correctly rounded (to nearest, ties to
/// even) the other; NaN stays NaN.
pub trait Element:
    sealed::Sealed + Copy + Default + Debug + PartialEq + Send + Sync + 'static
{
    /// The type of the per-channel parameters, statistics and parameter gradients: `f32`, or
    /// `f64` for `f64` tensors. Never a 16-bit type: running statistics kept in half precision
    /// drift.
    type Param: Float;
    /// The type the normalising map evaluates in (see the module table).
    type Compute: Float;
    /// The name used in messages and file formats (`"f32"`, `"f64"`, `"bf16"`, `"f16"`).
    const NAME: &'static str;

    /// The value as `f64`; exact.
    fn to_f64(self) -> f64;
    /// The value of this type nearest to `v` (ties to even); NaN gives NaN.
    fn from_f64(v: f64) -> Self;
    /// The value in the compute type; exact.
    fn to_compute(self) -> Self::Compute;
    /// The value of this type nearest to `v` (ties to even).
    fn from_compute(v: Self::Compute) -> Self;

    /// [`to_f64`](Self::to_f64) of a step of values. The element-wise kernels convert a step
    /// at a time: the 16-bit types do it in 64-bit lanes, which the compiler vectorises.
    #[doc(hidden)]
    #[inline(always)]
    fn to_f64_step(xs: [Self; STEP]) -> [f64; STEP] {
        xs.map(Self::to_f64)
    }

    /// [`from_f64`](Self::from_f64) of a step of values.
    #[doc(hidden)]
    #[inline(always)]
    fn from_f64_step(v: [f64; STEP]) -> [Self; STEP] {
        v.map(Self::from_f64)
    }

    /// [`to_compute`](Self::to_compute) of a step of values.
    #[doc(hidden)]
    #[inline(always)]
    fn to_compute_step(xs: [Self; STEP]) -> [Self::Compute; STEP] {
        xs.map(Self::to_compute)
    }

    /// [`from_compute`](Self::from_compute) of a step of values.
    #[doc(hidden)]
    #[inline(always)]
    fn from_compute_step(v: [Self::Compute; STEP]) -> [Self; STEP] {
        v.map(Self::from_compute)
    }

    /// Whether [`round_step`](Self::round_step) tries its bounds: the element-wise kernels then
    /// compute them (and lay out the quick coefficients they need for channels-last passes).
    #[doc(hidden)]
    const QUICK: bool = false;

    /// A step of values as `f32` (exact for the 16-bit types): the input of the quick
    /// evaluation whose bounds [`round_step`](Self::round_step) takes.
    #[doc(hidden)]
    #[inline(always)]
    fn to_f32_step(xs: [Self; STEP]) -> [f32; STEP] {
        xs.map(|x| x.to_f64() as f32)
    }

    /// The step of values `exact` computes (in the compute type or `f64`, rounded once to
    /// this type). bf16 first tries `bounds`: intervals of `f32` values around each lane's
    /// exact result, from a cheaper evaluation in `f32` (twice the lanes of `f64` per
    /// instruction). When each lane's interval rounds to one bf16 value, that value is the
    /// result, the same bits `exact` would give (see [`rounding::bf16_interval`]); else, about
    /// one step in a few hundred, `exact` runs. The other types ignore `bounds` (the compiler
    /// drops its evaluation): `f32` and `f64` compute exactly what they store, and for f16 the
    /// checks of its narrower range and subnormals cost more than the `f64` arithmetic they
    /// save.
    #[doc(hidden)]
    #[inline(always)]
    fn round_step(
        bounds: ([f32; STEP], [f32; STEP]),
        exact: impl FnOnce() -> [Self; STEP],
    ) -> [Self; STEP] {
        let _ = bounds;
        exact()
    }
}

/// Values per step of the element-wise kernels ([`crate::simd::MAP_CHUNK`]).
pub(crate) const STEP: usize = 8;

/// [`Element::to_f64`] of `2 * STEP` values, a step at a time (the reductions' lanes).
#[inline(always)]
pub(crate) fn to_f64_pair<T: Element>(xs: &[T; 2 * STEP]) -> [f64; 2 * STEP] {
    let a = T::to_f64_step(std::array::from_fn(|l| xs[l]));
    let b = T::to_f64_step(std::array::from_fn(|l| xs[STEP + l]));
    std::array::from_fn(|l| if l < STEP { a[l] } else { b[l - STEP] })
}

/// [`Element::from_f64`] of a step, out of the way of the kernels' loops: the 16-bit types'
/// step conversions fall back on it for about one step in 2^13 (bf16) or 2^10 (f16) of random
/// data.
#[cold]
#[inline(never)]
fn from_f64_rare<T: Element>(v: [f64; STEP]) -> [T; STEP] {
    v.map(T::from_f64)
}

/// A coefficient that multiplies in a quick evaluation for [`Element::round_step`], rounded to
/// `f32` within `2^-24` of itself: zero, or a magnitude in `f32`'s normal range; else NaN,
/// which sends every step to the exact path (below that range the rounding error is not
/// relative; above it the value is infinite, which does the same).
#[inline(always)]
pub(crate) fn quick_factor(c: f64) -> f32 {
    let a = c.abs();
    if a == 0.0 || a >= f64::from(f32::MIN_POSITIVE) {
        c as f32
    } else {
        f32::NAN
    }
}

/// Marks the path that calls it as rarely taken, so that the compiler lays it out of the way of
/// the kernels' loops while still compiling it inline, for the kernel's instruction set (out of
/// line, the `f64` fallback's fused multiply-adds became calls to the C library's `fma`).
#[cold]
#[inline(never)]
fn rarely() {}

/// `common` where `ok`, else what `rare` gives. Both are arrays of their own, chosen lane by
/// lane: merged as one value of two branches, the common one went through memory (a truncating
/// store to the stack, reloaded, in each step of the 16-bit maps), and the 64x64x56x56 bf16
/// passes took 1.03-1.14x as long (two threads, AMD EPYC Zen 4, five alternating runs).
#[inline(always)]
fn unless_rarely<T: Element>(
    common: [T; STEP],
    ok: bool,
    rare: impl FnOnce() -> [T; STEP],
) -> [T; STEP] {
    let mut other = [T::default(); STEP];
    if !ok {
        other = rare();
    }
    std::array::from_fn(|l| if ok { common[l] } else { other[l] })
}

/// A storage type that is also an arithmetic type: `f32` and `f64`. Parameters, statistics
/// and the normalising map are of this kind.
pub trait Float:
    Element<Param = Self, Compute = Self>
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
{
    /// The additive identity.
    const ZERO: Self;
    /// The multiplicative identity.
    const ONE: Self;
}

macro_rules! float {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            type Param = $t;
            type Compute = $t;
            const NAME: &'static str = $name;

            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }

            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }

            #[inline(always)]
            fn to_compute(self) -> Self {
                self
            }

            #[inline(always)]
            fn from_compute(v: Self) -> Self {
                v
            }
        }

        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
        }
    };
}

float!(f32, "f32");
float!(f64, "f64");

macro_rules! half_float {
    ($t:ty, $name:literal $(, $item:item)*) => {
        impl Element for $t {
            type Param = f32;
            type Compute = f64;
            const NAME: &'static str = $name;

            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(<$t as HalfFormat>::widen(self.to_bits()))
            }

            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_bits(<$t as HalfFormat>::narrow(rounding::f64_to_f32_odd(v)))
            }

            // (`bf16` and `f16` have inherent `to_f64` and `from_f64`, which would take
            // precedence over these; the latter rounds values near a midpoint wrongly.)
            #[inline(always)]
            fn to_compute(self) -> f64 {
                <Self as Element>::to_f64(self)
            }

            #[inline(always)]
            fn from_compute(v: f64) -> Self {
                <Self as Element>::from_f64(v)
            }

            #[inline(always)]
            fn to_f64_step(xs: [Self; STEP]) -> [f64; STEP] {
                <$t as HalfFormat>::widen_step(xs.map(|x| x.to_bits()))
            }

            #[inline(always)]
            fn from_f64_step(v: [f64; STEP]) -> [Self; STEP] {
                let (bits, ok) = <$t as HalfFormat>::narrow_step(v);
                unless_rarely(bits.map(<$t>::from_bits), ok, || from_f64_rare(v))
            }

            #[inline(always)]
            fn to_compute_step(xs: [Self; STEP]) -> [f64; STEP] {
                Self::to_f64_step(xs)
            }

            #[inline(always)]
            fn from_compute_step(v: [f64; STEP]) -> [Self; STEP] {
                Self::from_f64_step(v)
            }

            #[inline(always)]
            fn to_f32_step(xs: [Self; STEP]) -> [f32; STEP] {
                let mut v = [0.0; STEP];
                for (v, x) in v.iter_mut().zip(&xs) {
                    *v = <$t as HalfFormat>::widen(x.to_bits());
                }
                v
            }

            $($item)*
        }
    };
}

half_float!(
    bf16,
    "bf16",
    const QUICK: bool = true;,
    #[inline(always)]
    fn round_step(
        (lo, hi): ([f32; STEP], [f32; STEP]),
        exact: impl FnOnce() -> [Self; STEP],
    ) -> [Self; STEP] {
        let (bits, ok) = rounding::bf16_interval(lo, hi);
        unless_rarely(bits.map(bf16::from_bits), ok, || {
            rarely();
            exact()
        })
    }
);
half_float!(f16, "f16");

#[cfg(test)]
mod quick_tests;
