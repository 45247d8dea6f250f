//! Conversions between `f64`, `f32` and the 16-bit storage types, on bits, without branches.
//!
//! Written as plain integer and float operations on one value, so that the compiler vectorises
//! them inside the element-wise kernels on every instruction set, and every path gives the same
//! bits (no F16C or AVX-512 BF16 instruction, whose results on NaN payloads differ).
//!
//! From `f64`, a 16-bit value is rounded in two steps without double rounding: first to `f32`
//! *rounded to odd* (truncate, then set the last bit if anything was lost), then to nearest
//! even. Round-to-odd to a format with at least two more bits than the target keeps the
//! information the second rounding needs (Boldo & Melquiond, "When double rounding is odd",
//! 2005): `f32` has 24 bits, `f16` 11 and `bf16` 8, and `f32`'s exponent range covers both
//! (its subnormals are 13 binades below `f16`'s and 16 bits finer than `bf16`'s).

/// `v` rounded to `f32` towards zero, with the last bit set when the rounding lost anything
/// (round to odd). Infinities and NaN are kept; values beyond `f32::MAX` give `f32::MAX` (odd),
/// which rounds on to infinity in any narrower format.
#[inline(always)]
pub(crate) fn f64_to_f32_odd(v: f64) -> f32 {
    let near = v as f32;
    let back = f64::from(near);
    let bits = near.to_bits();
    // Rounded to nearest, the result is off by at most half a unit; when it went away from zero
    // the value below it (towards zero) is the truncation. NaN compares false throughout.
    let away = u32::from(back.abs() > v.abs());
    let inexact = back != v && !v.is_nan();
    f32::from_bits(if inexact { (bits - away) | 1 } else { bits })
}

/// The `f32` value of bf16 bits: exact.
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `f` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN (made quiet).
#[inline(always)]
pub(crate) fn f32_to_bf16(f: f32) -> u16 {
    let b = f.to_bits();
    // Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
    // dropped half is above one half, or equal to it with an odd kept part; a carry out of the
    // largest finite value's mantissa gives infinity.
    let rounded = (b + 0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b >> 16) | 0x40;
    (if f.is_nan() { nan } else { rounded }) as u16
}

/// Bits of the smallest normal f16, 2^-14, as an `f32`.
const F32_F16_MIN_NORMAL: u32 = 113 << 23;
/// Bits of 2^16 as an `f32`: every value from here on is infinity in f16 (the largest f16 is
/// 65504, and from 65520 on values round to 2^16).
const F32_F16_OVERFLOW: u32 = (127 + 16) << 23;
/// 0.5 as an `f32`: added to a value below 2^-14, it puts the value's f16 subnormal bits at
/// the bottom of the sum's mantissa (its unit is 2^-24), rounded to nearest even by the
/// addition itself.
const F32_HALF: u32 = 126 << 23;

/// `f` rounded to the nearest f16 (ties to even), as bits; NaN stays NaN (made quiet).
#[inline(always)]
pub(crate) fn f32_to_f16(f: f32) -> u16 {
    let b = f.to_bits();
    let sign = (b >> 16) & 0x8000;
    let a = b & 0x7fff_ffff;
    // Normal results: rebias the exponent (127 -> 15, 112 binades) and round the 13 dropped bits to nearest
    // even by adding 0xfff plus the lowest kept bit; a carry may step into the next binade or
    // up to infinity (0x7c00), both right.
    // (Computed for every value and kept where it applies, hence the wrapping arithmetic.)
    let normal = (a.wrapping_sub(112 << 23) + 0xfff + ((a >> 13) & 1)) >> 13;
    // Subnormal results: the float addition rounds.
    let sub = (f32::from_bits(a) + f32::from_bits(F32_HALF))
        .to_bits()
        .wrapping_sub(F32_HALF);
    let finite = if a < F32_F16_MIN_NORMAL { sub } else { normal };
    let special = if a > 0x7f80_0000 { 0x7e00 } else { 0x7c00 };
    let magnitude = if a >= F32_F16_OVERFLOW {
        special
    } else {
        finite
    };
    (magnitude | sign) as u16
}

/// The `f32` value of f16 bits: exact.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let a = h & 0x7fff;
    // Normal: rebias the exponent (15 -> 127). Subnormal (and zero): the integer mantissa times
    // 2^-24, exact, without touching an `f32` subnormal (which costs a microcode assist per
    // value on some x86 cores, and f16 gradients are often subnormal). Infinity and NaN: all
    // exponent bits.
    let normal = (a << 13) + ((127 - 15) << 23);
    let sub = (a as f32 * f32::from_bits((127 - 24) << 23)).to_bits();
    let special = (a << 13) | 0x7f80_0000;
    let magnitude = if a >= 0x7c00 {
        special
    } else if a < 0x400 {
        sub
    } else {
        normal
    };
    f32::from_bits(magnitude | sign)
}

/// A 16-bit format, for the conversions of the element-wise kernels: plain lane-wise code
/// that the compiler vectorises on every instruction set, with a rare exact fallback.
pub(crate) trait HalfFormat {
    /// Bits of an `f32` below the format's last place, for normal values (16 for bf16, 13 for
    /// f16).
    const DROPPED: u32;
    /// Bits of the smallest normal value of the format, as an `f32` (0 for bf16, whose
    /// subnormals are `f32`'s).
    const MIN_NORMAL: u32;
    /// The `f32` value of bits: exact.
    fn widen(h: u16) -> f32;
    /// An `f32` rounded to nearest (ties to even), as bits; NaN stays NaN.
    fn narrow(f: f32) -> u16;
    /// [`narrow`](Self::narrow) of an `f32` that is zero or not below the format's normal
    /// range ([`MIN_NORMAL`](Self::MIN_NORMAL)): fewer operations, all of which vectorise.
    fn narrow_normal(f: f32) -> u16;

    /// The `f64` values of a step of bits: exact.
    #[inline(always)]
    fn widen_step<const N: usize>(h: [u16; N]) -> [f64; N] {
        // (Loops rather than `map`, which the compiler may leave out of line: lane by lane.)
        let mut v = [0.0; N];
        for (v, &h) in v.iter_mut().zip(&h) {
            *v = f64::from(Self::widen(h));
        }
        v
    }

    /// The step of values rounded to nearest (ties to even), as bits: rounded to `f32` first
    /// (to nearest), then to 16 bits; and whether that is rounding once (else the bits mean
    /// nothing).
    ///
    /// Every midpoint between two 16-bit values is an `f32`, so rounding to the nearest `f32`
    /// never carries a value across one (rounding is monotonic): it can only land on one. The
    /// two roundings then agree unless some value's `f32` is a midpoint (dropped bits
    /// `10...0`), about one value in 2^16 (bf16) or 2^13 (f16) of random data. Such a step, and
    /// for f16 a step with a nonzero value below its normal range (below 6.1e-5: rare in
    /// activations), is left to the caller, who rounds it the general way ([`f64_to_f32_odd`]).
    /// Infinities, NaN and overflow need no exception.
    #[inline(always)]
    fn narrow_step<const N: usize>(v: [f64; N]) -> ([u16; N], bool) {
        let mut near = [0.0f32; N];
        for (n, &v) in near.iter_mut().zip(&v) {
            *n = v as f32;
        }
        let (half, low) = (1 << (Self::DROPPED - 1), (1 << Self::DROPPED) - 1);
        let suspect = near.iter().fold(false, |any, n| {
            let a = n.to_bits() & 0x7fff_ffff;
            any | (a & low == half) | ((a != 0) & (a < Self::MIN_NORMAL))
        });
        let mut bits = [0; N];
        for (b, &n) in bits.iter_mut().zip(&near) {
            *b = Self::narrow_normal(n);
        }
        (bits, !suspect)
    }
}

/// The bf16 value every point of each lane's interval `[lo, hi]` rounds to, as bits, and
/// whether there is one for every lane: false when some lane's interval holds a rounding
/// boundary or NaN (the bits then mean nothing). The intervals bound exact results
/// that a cheaper evaluation in `f32` approximated (see [`crate::Element::round_step`]): when the
/// whole interval rounds to one value, that value is the exact result's (rounding is
/// monotonic), and the `f64` result's, which lies in the interval too.
///
/// Adding half a unit of bf16 (`1 << 15`) to an `f32`'s bits and truncating rounds its
/// magnitude to nearest with ties away from zero, monotonically, on every finite value
/// (subnormals and infinity included: bf16 is `f32`'s top half). The two ends round alike
/// exactly when no midpoint lies in `(lo, hi]`, and then every point rounds to nearest with ties
/// to even alike (a tie would be a midpoint). An interval across zero has ends of two signs and
/// never passes.
#[inline(always)]
pub(crate) fn bf16_interval<const N: usize>(lo: [f32; N], hi: [f32; N]) -> ([u16; N], bool) {
    let half = 1u32 << 15;
    let (mut bits, mut ok) = ([0; N], true);
    for ((b, &l), &h) in bits.iter_mut().zip(&lo).zip(&hi) {
        let (lk, hk) = (
            l.to_bits().wrapping_add(half),
            h.to_bits().wrapping_add(half),
        );
        ok &= ((lk ^ hk) >> 16 == 0) & !l.is_nan() & !h.is_nan();
        *b = (hk >> 16) as u16;
    }
    (bits, ok)
}

impl HalfFormat for half::bf16 {
    const DROPPED: u32 = 16;
    const MIN_NORMAL: u32 = 0;

    #[inline(always)]
    fn widen(h: u16) -> f32 {
        bf16_to_f32(h)
    }

    #[inline(always)]
    fn narrow(f: f32) -> u16 {
        f32_to_bf16(f)
    }

    #[inline(always)]
    fn narrow_normal(f: f32) -> u16 {
        f32_to_bf16(f)
    }
}

impl HalfFormat for half::f16 {
    const DROPPED: u32 = 13;
    const MIN_NORMAL: u32 = F32_F16_MIN_NORMAL;

    #[inline(always)]
    fn widen(h: u16) -> f32 {
        f16_to_f32(h)
    }

    #[inline(always)]
    fn narrow(f: f32) -> u16 {
        f32_to_f16(f)
    }

    #[inline(always)]
    fn narrow_normal(f: f32) -> u16 {
        let b = f.to_bits();
        let a = b & 0x7fff_ffff;
        // As `f32_to_f16`'s normal results (zero too: the wrapping subtraction and shift
        // leave 0 after masking below), and its values from 2^16 on.
        let normal = (a.wrapping_sub(112 << 23) + 0xfff + ((a >> 13) & 1)) >> 13;
        let normal = if a == 0 { 0 } else { normal };
        let special = if a > 0x7f80_0000 { 0x7e00 } else { 0x7c00 };
        let magnitude = if a >= F32_F16_OVERFLOW {
            special
        } else {
            normal
        };
        (magnitude | ((b >> 16) & 0x8000)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// SplitMix64: deterministic bit patterns.
    fn patterns(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        let mut s = seed;
        (0..n).map(move |_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    /// A 16-bit format: its widening, and the magnitude one unit past its largest finite value
    /// (where infinity sits, for the rounding check).
    #[derive(Clone, Copy)]
    struct Format {
        widen: fn(u16) -> f32,
        past_max: f64,
    }

    const BF16: Format = Format {
        widen: bf16_to_f32,
        past_max: 3.402_823_669_209_385e38, // 2^128
    };
    const F16: Format = Format {
        widen: f16_to_f32,
        past_max: 65536.0,
    };

    impl Format {
        fn magnitude(self, m: u16) -> f64 {
            let v = f64::from((self.widen)(m));
            if v.is_infinite() {
                self.past_max
            } else {
                v
            }
        }

        /// Whether `bits` is `v` rounded to nearest, ties to even, checked against the midpoints
        /// to its neighbours (exact in `f64`): an oracle independent of the conversions.
        fn is_nearest(self, v: f64, bits: u16) -> bool {
            let (sign, m) = (bits & 0x8000 != 0, bits & 0x7fff);
            if v.is_nan() {
                return f64::from((self.widen)(bits)).is_nan();
            }
            if sign != v.is_sign_negative() {
                return false;
            }
            let (a, r) = (v.abs(), self.magnitude(m));
            let even = m % 2 == 0;
            let below = if m == 0 {
                0.0
            } else {
                (self.magnitude(m - 1) + r) / 2.0
            };
            let above = if r == self.past_max {
                f64::INFINITY
            } else {
                (r + self.magnitude(m + 1)) / 2.0
            };
            (a > below || a == below && (even || m == 0)) && (a < above || a == above && even)
        }
    }

    #[test]
    fn every_16_bit_pattern_widens_exactly() {
        for h in 0..=u16::MAX {
            let (b, f) = (bf16::from_bits(h), f16::from_bits(h));
            let (wb, wf) = (bf16_to_f32(h), f16_to_f32(h));
            assert_eq!(wb.is_nan(), b.is_nan());
            assert_eq!(wf.is_nan(), f.is_nan());
            if !b.is_nan() {
                assert_eq!(wb.to_bits(), b.to_f32().to_bits(), "bf16 {h:#06x}");
            }
            if !f.is_nan() {
                assert_eq!(wf.to_bits(), f.to_f32().to_bits(), "f16 {h:#06x}");
            }
        }
    }

    /// Values around every value of `format`: the value, the midpoints to its neighbour, and
    /// values a hair (`hair` units of the last place of `f64`) either side of both.
    fn around_every_value(format: Format, hair: i64) -> impl Iterator<Item = f64> {
        let step = |v: f64, k: i64| f64::from_bits((v.to_bits() as i64 + k) as u64);
        (0..0x7c00u16).chain(0x8000..0xfc00).flat_map(move |h| {
            let v = f64::from((format.widen)(h));
            let next = format.magnitude((h & 0x7fff) + 1).copysign(v);
            let mid = (v + next) / 2.0;
            [
                v,
                mid,
                step(mid, hair),
                step(mid, -hair),
                step(v, hair),
                step(v, -hair),
            ]
        })
    }

    #[test]
    fn f32_to_16_bits_rounds_to_nearest_even() {
        let random = patterns(1, 1 << 20).map(|p| f64::from(f32::from_bits(p as u32)));
        // A hair of 2^29 units of f64 is one unit of f32.
        let cases = around_every_value(BF16, 1 << 29)
            .chain(around_every_value(F16, 1 << 29))
            .map(|v| f64::from(v as f32))
            .chain(random)
            .chain([0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, 3.4e38, -3.4e38]);
        for v in cases {
            let f = v as f32;
            assert!(
                BF16.is_nearest(v, f32_to_bf16(f)),
                "bf16 of {f:e} ({:#x})",
                f.to_bits()
            );
            assert!(
                F16.is_nearest(v, f32_to_f16(f)),
                "f16 of {f:e} ({:#x})",
                f.to_bits()
            );
        }
    }

    /// [`HalfFormat::narrow_step`] of one value, where it applies.
    fn narrowed<H: HalfFormat>(v: f64) -> Option<u16> {
        let ([b], ok) = H::narrow_step([v]);
        ok.then_some(b)
    }

    /// The step rounding gives the bits of the general one wherever it applies, applies to
    /// all but about one value in 2^16 of random bits, and declines a value whose nearest
    /// `f32` is a midpoint (where rounding twice errs).
    #[test]
    fn step_rounding_is_the_general_one_where_it_applies() {
        fn check<H: HalfFormat>(fmt: Format) {
            let general = |v: f64| H::narrow(f64_to_f32_odd(v));
            let near_midpoints = around_every_value(fmt, 1).chain(around_every_value(fmt, 1 << 30));
            let mut fast = 0;
            for v in near_midpoints {
                if let Some(b) = narrowed::<H>(v) {
                    fast += 1;
                    assert_eq!(b, general(v), "{v:e}");
                }
            }
            assert!(fast > 100_000, "the fast path took {fast} values");
            let n = 1 << 20;
            // Values of either sign below 2^-1 to 2^5 in magnitude, as activations are.
            let random = patterns(3, n).map(|p| {
                let unit = (p >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                unit * 2f64.powi((p % 7) as i32)
            });
            let mut declined = 0;
            for v in random {
                match narrowed::<H>(v) {
                    Some(b) => assert_eq!(b, general(v), "{v:e}"),
                    None => declined += 1,
                }
            }
            // A midpoint's pattern: one in 2^16 values for bf16, 2^13 for f16; f16's subnormal
            // range (|v| < 2^-14) holds about one value in 2^13 here.
            assert!(declined < n >> 11, "{declined} of {n} declined");
            for raw in patterns(4, 1 << 18) {
                let v = f64::from_bits(raw);
                if let Some(b) = narrowed::<H>(v) {
                    assert_eq!(b, general(v), "{v:e}");
                }
            }
        }
        check::<half::bf16>(BF16);
        check::<half::f16>(F16);
        let just_above = f64::from_bits(((1.0f64 + 1.0 / 256.0).to_bits()) + 1);
        assert_eq!(narrowed::<half::bf16>(just_above), None);
        // f16's subnormal range is left to the general rounding; zero is not.
        assert_eq!(narrowed::<half::f16>(2f64.powi(-23)), None);
        assert_eq!(narrowed::<half::f16>(-0.0), Some(0x8000));
    }

    /// Rounding an `f64` through `f32` to odd, then to 16 bits, is rounding it directly: also a
    /// hair off a midpoint, where `f64 -> f32 -> 16 bits` to nearest rounds twice and can err
    /// (and where `half`'s own `from_f64`, which ignores the low 32 bits, does).
    #[test]
    fn f64_to_16_bits_rounds_once() {
        let random = patterns(2, 1 << 20).map(f64::from_bits);
        let cases = around_every_value(BF16, 1)
            .chain(around_every_value(F16, 1))
            .chain(around_every_value(BF16, 1 << 20))
            .chain(around_every_value(F16, 1 << 20))
            .chain(random)
            .chain([
                1e300, -1e300, 1e-300, -1e-300, 3.5e38, 65519.99, 65520.0, -0.0,
            ]);
        for v in cases {
            let f = f64_to_f32_odd(v);
            assert!(BF16.is_nearest(v, f32_to_bf16(f)), "bf16 of {v:e}");
            assert!(F16.is_nearest(v, f32_to_f16(f)), "f16 of {v:e}");
        }
        // A plain double rounding errs on such a value: the check above can fail.
        let just_above = f64::from_bits(((1.0f64 + 1.0 / 256.0).to_bits()) + 1);
        let twice = f32_to_bf16(just_above as f32);
        assert!(!BF16.is_nearest(just_above, twice));
        assert!(BF16.is_nearest(just_above, f32_to_bf16(f64_to_f32_odd(just_above))));
    }
}
