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
/// Extends the core crate's [`batchnorm::Element`] with the few functions the layers need and
/// with the matching GEMM kernel of `matrixmultiply`.
pub trait Scalar:
    sealed::Sealed + batchnorm::Element + Div<Output = Self> + Neg<Output = Self> + AddAssign + Debug
{
    /// `e^self`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Larger of the two (NaN-ignoring, as `f32::max`).
    fn max(self, other: Self) -> Self;
    /// Converts a small integer or a pixel value exactly (`f32` holds every integer below 2^24).
    fn from_f32(v: f32) -> Self;

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
    ($t:ty, $gemm:path) => {
        impl Scalar for $t {
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

impl_scalar!(f32, matrixmultiply::sgemm);
impl_scalar!(f64, matrixmultiply::dgemm);
