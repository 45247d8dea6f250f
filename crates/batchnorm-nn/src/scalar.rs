//! The element types networks are built from: `f32` for training, `f64` for gradient checks.

use std::fmt::Debug;
use std::ops::{AddAssign, Div, Neg};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type of a network: `f32` or `f64`.
///
/// Extends the core crate's [`batchnorm::Float`] with the few functions the layers need and
/// with the matching GEMM kernel of `matrixmultiply`.
pub trait Scalar:
    sealed::Sealed
    + batchnorm::Float
    + batchnorm_dist::Word
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + Debug
{
    /// `e^self`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Larger of the two (NaN-ignoring, as `f32::max`).
    fn max(self, other: Self) -> Self;
    /// Converts a small integer or a pixel value exactly (`f32` holds every integer below 2^24).
    fn from_f32(v: f32) -> Self;
    /// The slice as `f32`s, if `Self` is `f32` (for kernels written for `f32` alone).
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        let _ = s;
        None
    }
    /// The slice as `f32`s, if `Self` is `f32`.
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        let _ = s;
        None
    }

    /// `y_i = 1 / (1 + e^{-x_i})` over a slice. `f64` uses `f64::exp`; `f32` uses a polynomial
    /// exponential the compiler vectorises (see [`exp_f32`]), within 5.2e-7 relative of the exact
    /// sigmoid. Only the first `min(x.len(), y.len())` elements are written.
    fn sigmoid_slice(x: &[Self], y: &mut [Self]) {
        for (o, &i) in y.iter_mut().zip(x) {
            *o = Self::ONE / (Self::ONE + (-i).exp());
        }
    }

    /// `c = alpha * a * b + beta * c` on strided matrices: `a` is `m x k`, `b` is `k x n`, `c` is
    /// `m x n`, element `(i, j)` of a matrix with strides `(rs, cs)` at `ptr + i * rs + j * cs`.
    ///
    /// # Safety
    /// Every element addressed by the dimensions and strides must lie inside the allocation of
    /// its pointer, and `c`'s elements must not alias `a`'s or `b`'s. Safe callers go through
    /// [`crate::matmul::gemm`], which checks this.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_scalar {
    ($t:ty, $gemm:path $(, $extra:item)*) => {
        impl Scalar for $t {
            $($extra)*
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: the caller upholds this function's contract, which is exactly
                // matrixmultiply's (in-bounds strided views, `c` not aliasing `a` or `b`).
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

impl_scalar!(
    f32,
    matrixmultiply::sgemm,
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    },
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    },
    fn sigmoid_slice(x: &[f32], y: &mut [f32]) {
        for (o, &i) in y.iter_mut().zip(x) {
            *o = 1.0 / (1.0 + exp_f32(-i));
        }
    }
);
impl_scalar!(f64, matrixmultiply::dgemm);

/// `e^x` in `f32` by range reduction and a polynomial, written so that a loop over it vectorises
/// (no calls, no table, no branches): `x = n ln 2 + r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`;
/// `e^r` by its degree-6 Taylor polynomial (truncation `|r|^7 / 7! <= 1.7e-7 e^r`; with the
/// `f32` roundings the worst relative error measured is 2.4e-7, 4 ulp), times `2^n` built in the exponent bits. `x` is clamped to [-87, 88] first, so
/// `n` stays in [-126, 127]: results never overflow to infinity nor reach subnormals (`e^-87 =
/// 1.6e-38`, `e^88 = 1.65e38`; outside the range this underestimates by design). NaN gives an
/// unspecified finite value.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9 (LN2_HI has 9 trailing zero bits).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::{exp_f32, Scalar};

    #[test]
    fn exp_f32_is_accurate_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            worst = worst.max((got - want).abs() / want);
            x += 0.001_37;
        }
        // Truncation of the series: |r|^7 / 7! / e^-|r| <= 1.7e-7 at |r| = ln 2 / 2; plus a few f32
        // roundings (6e-8 each) in the reduction and the polynomial. Measured: 2.4e-7 (4 ulp).
        eprintln!("exp_f32: worst relative error {worst:e}");
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(1000.0).is_finite() && exp_f32(-1000.0) > 0.0);
    }

    #[test]
    fn f32_sigmoid_matches_f64() {
        let x: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 0.005).collect();
        let mut y = vec![0.0f32; x.len()];
        f32::sigmoid_slice(&x, &mut y);
        for (&xi, &yi) in x.iter().zip(&y) {
            let want = 1.0 / (1.0 + (-f64::from(xi)).exp());
            // e^-x within 4e-7 relative moves 1 / (1 + e^-x) by at most as much, plus two f32
            // roundings (1.2e-7): 5.2e-7 relative. Below x = -87 the clamped exponential
            // saturates: the result stays a tiny positive number (absolute error < 1e-37).
            let tol = if xi >= -87.0 { 5.2e-7 * want } else { 1e-37 };
            assert!(
                (f64::from(yi) - want).abs() <= tol,
                "sigmoid({xi}) = {yi}, want {want}"
            );
        }
        f32::sigmoid_slice(&[100.0, -100.0], &mut y[..2]);
        assert_eq!(y[0], 1.0);
        assert!(y[1] > 0.0 && y[1] < 1e-37);
    }
}
