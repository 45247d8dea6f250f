//! Matrix products through `matrixmultiply`, with the bounds checked before the unsafe call.
//!
//! `matrixmultiply` was chosen over `gemm` after measuring both on this crate's shapes (see
//! `docs/benchmarks.md`, "GEMM choice for batchnorm-nn", and `examples/gemm_bench.rs`).

use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// A borrowed strided matrix view: `rows x cols`, element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The storage.
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row stride, in elements.
    pub rs: usize,
    /// Column stride, in elements.
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows x cols` view of `data` (row stride `cols`).
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The number of elements a strided view reaches: `1 + (rows-1) rs + (cols-1) cs`, or 0 when empty.
fn extent(buffer: &'static str, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    let reach = (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
        .and_then(|e| e.checked_add(1))
        .filter(|&e| e <= isize::MAX as usize);
    reach.ok_or(NnError::TooLarge {
        what: buffer,
        sizes: vec![rows, cols, rs, cs],
    })
}

fn check_view(
    buffer: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    let need = extent(buffer, rows, cols, rs, cs)?;
    if need > len {
        return Err(NnError::LengthMismatch {
            buffer,
            expected: need,
            got: len,
        });
    }
    Ok(())
}

/// `c = alpha * a b + beta * c`, with `c` a row-major `a.rows x b.cols` matrix in `c`.
///
/// When `beta` is zero, `c` is only written (its old contents, even NaN, are ignored), as in BLAS.
///
/// # Errors
/// [`NnError::LengthMismatch`] when the inner dimensions differ or a buffer is shorter than
/// its view (`c` must hold exactly `m * n`); [`NnError::TooLarge`] when a view's extent or
/// `m * n` overflows. Nothing is written then.
pub fn gemm<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut [T],
) -> Result<()> {
    if a.cols != b.rows {
        return Err(NnError::LengthMismatch {
            buffer: "gemm inner dimension",
            expected: a.cols,
            got: b.rows,
        });
    }
    let (m, k, n) = (a.rows, a.cols, b.cols);
    check_view("gemm a", a.data.len(), m, k, a.rs, a.cs)?;
    check_view("gemm b", b.data.len(), k, n, b.rs, b.cs)?;
    // Checked: a wrapped product would let a short `c` pass and the kernel write past it.
    let c_len = m.checked_mul(n).ok_or(NnError::TooLarge {
        what: "gemm c (m x n)",
        sizes: vec![m, n],
    })?;
    crate::error::check_len("gemm c", c.len(), c_len)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: `check_view` proved every element addressed in `a` and `b` lies inside their slices
    // (strides and extents fit in isize), `c` is exactly `m * n` elements addressed row-major
    // with strides (n, 1), and `c` is a unique borrow so it cannot alias the shared `a` or `b`.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop, the oracle.
    fn naive(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    c[i * b.cols + j] += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_with_transposes() {
        let a: Vec<f64> = (0..12).map(|v| v as f64 * 0.5 - 2.0).collect();
        let b: Vec<f64> = (0..20).map(|v| (v as f64).sin()).collect();
        let av = MatRef::row_major(&a, 4, 3); // 4x3
        let bv = MatRef::row_major(&b, 5, 3).t(); // 3x5 view of a 5x3 matrix
        let mut c = vec![f64::NAN; 20];
        gemm(1.0, av, bv, 0.0, &mut c).unwrap();
        let want = naive(av, bv);
        for (g, w) in c.iter().zip(&want) {
            // Sums of three products of O(1) values: a few ulps of rounding at most.
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
    }

    #[test]
    fn rejects_short_buffers_and_bad_dims() {
        let a = vec![1.0f32; 11];
        let b = vec![1.0f32; 12];
        let mut c = vec![0.0f32; 16];
        assert!(gemm(
            1.0,
            MatRef::row_major(&a, 4, 3),
            MatRef::row_major(&b, 3, 4),
            0.0,
            &mut c
        )
        .is_err());
        let a = vec![1.0f32; 12];
        assert!(gemm(
            1.0,
            MatRef::row_major(&a, 4, 3),
            MatRef::row_major(&b, 4, 3),
            0.0,
            &mut c
        )
        .is_err());
        assert!(gemm(
            1.0,
            MatRef::row_major(&a, 4, 3),
            MatRef::row_major(&b, 3, 4),
            0.0,
            &mut c[..15]
        )
        .is_err());
        gemm(
            1.0,
            MatRef::row_major(&a, 4, 3),
            MatRef::row_major(&b, 3, 4),
            0.0,
            &mut c,
        )
        .unwrap();
        assert!(c.iter().all(|&v| v == 3.0));
    }

    #[test]
    fn huge_dims_with_empty_buffers_are_errors_not_writes() {
        let empty: [f32; 0] = [];
        let mut c: [f32; 0] = [];
        // k = 0: `a` and `b` address nothing, so only `c`'s check stands between the kernel and
        // m x n writes; 2^32 x 2^32 wraps to 0 in unchecked arithmetic.
        let huge = 1usize << (usize::BITS / 2);
        let a = MatRef::row_major(&empty, huge, 0);
        let b = MatRef::row_major(&empty, 0, huge);
        let err = gemm(1.0, a, b, 0.0, &mut c).unwrap_err();
        assert!(
            matches!(err, NnError::TooLarge { ref sizes, .. } if sizes == &[huge, huge]),
            "{err}"
        );
        // A product that fits but a `c` that is too short.
        let a = MatRef::row_major(&empty, 3, 0);
        let b = MatRef::row_major(&empty, 0, 5);
        assert!(matches!(
            gemm(1.0, a, b, 0.0, &mut c),
            Err(NnError::LengthMismatch {
                expected: 15,
                got: 0,
                ..
            })
        ));
        // A view whose extent overflows.
        let v = [1.0f32; 4];
        let a = MatRef {
            data: &v,
            rows: 2,
            cols: 2,
            rs: usize::MAX,
            cs: 1,
        };
        let mut c = [0.0f32; 4];
        assert!(matches!(
            gemm(1.0, a, MatRef::row_major(&v, 2, 2), 0.0, &mut c),
            Err(NnError::TooLarge { .. })
        ));
        // Empty products are fine and write nothing.
        let mut c: [f32; 0] = [];
        gemm(
            1.0,
            MatRef::row_major(&empty, 0, 0),
            MatRef::row_major(&empty, 0, 7),
            0.0,
            &mut c,
        )
        .unwrap();
    }
}
