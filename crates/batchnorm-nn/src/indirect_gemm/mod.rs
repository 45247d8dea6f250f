//! Matrix products whose second operand is a list of rows at arbitrary offsets of one buffer
//! (an "indirect" GEMM: nothing is packed or copied).
//!
//! A convolution's `X_col` has one row per kernel tap `(c, i, j)`. For stride 1 that row need
//! not be built: with the sample copied into a zero-bordered buffer of planes `Hp x Wp`, and the
//! output positions numbered `p Wp + q` ("wide" rows whose last `KW - 1` columns are discarded),
//! the row of tap `(c, i, j)` is the run of that buffer starting at `c Hp Wp + i Wp + j`.
//! [`product`] computes `C = A B` and [`add_dots`] `D += G B^T` on such operands, which are the
//! forward pass, the input gradient (a stride-1 convolution of the padded output gradient) and
//! the weight gradient of `Conv2d`.
//!
//! `matrixmultiply` packs both operands on every call, and with the 8 to 32 output channels of
//! small conv nets its 16 x 16 AVX-512 tile runs half empty; on the residual net of
//! `bnlab cnn --arch resnet` im2col and packing took about half of the training time. These
//! kernels read the rows in place with tiles shaped for few rows ([`TILE_16`]).
//!
//! The `f32` kernels run with AVX2 and FMA intrinsics (`avx2.rs`) on every vector path of
//! [`batchnorm::Isa`] (AVX-512 machines have both); the portable kernels here serve the
//! baseline and `f64`. They differ by rounding: the vector kernels fuse each multiply-add and
//! add up a dot product's 8 partial sums pairwise. Each path is deterministic: its sums run in
//! a fixed order.

#[cfg(target_arch = "x86_64")]
mod avx2;

use batchnorm::Isa;

use crate::error::{NnError, Result};
use crate::matmul::MatRef;
use crate::scalar::Scalar;

/// Elements per lane group; row lengths are multiples of it.
pub(crate) const LANES: usize = 8;

/// A kernel's tile: [`product`] computes `rows x groups LANES` of `C` per pass over the rows
/// of `B` (each loaded run used `rows` times, each weight `groups` times); [`add_dots`]
/// computes `dot_g x dot_b` dot products per pass over their rows.
#[derive(Debug, Clone, Copy)]
struct Tile {
    rows: usize,
    groups: usize,
    dot_g: usize,
    dot_b: usize,
}

/// The tile for 16 vector registers (SSE2, AVX2): `4 x 2` accumulators, 2 runs and a weight
/// (a `4 x 3` tile spilled accumulators to the stack: a quarter of the product's time went to
/// one spilling store); `4 x 2` dot products and 6 loaded runs.
const TILE_16: Tile = Tile {
    rows: 4,
    groups: 2,
    dot_g: 4,
    dot_b: 2,
};

/// A matrix given by its rows: row `r` is `data[starts[r]..starts[r] + len]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a, T> {
    data: &'a [T],
    starts: &'a [usize],
    len: usize,
}

impl<'a, T> Rows<'a, T> {
    /// Rows of `len` elements of `data` starting at `starts`.
    ///
    /// # Errors
    /// [`NnError::LengthMismatch`] when `len` is not a multiple of [`LANES`] or a row ends past
    /// `data`.
    pub(crate) fn new(data: &'a [T], starts: &'a [usize], len: usize) -> Result<Self> {
        if !len.is_multiple_of(LANES) {
            return Err(NnError::LengthMismatch {
                buffer: "indirect gemm row length (a multiple of 8)",
                expected: len.next_multiple_of(LANES),
                got: len,
            });
        }
        for &start in starts {
            let end = start.saturating_add(len);
            if end > data.len() {
                return Err(NnError::LengthMismatch {
                    buffer: "indirect gemm rows",
                    expected: end,
                    got: data.len(),
                });
            }
        }
        Ok(Rows { data, starts, len })
    }

    /// The same rows of `data`, a view of this buffer as another element type (the `f32`
    /// kernels' view of a generic buffer, see [`Scalar::as_f32`]).
    #[cfg(target_arch = "x86_64")]
    fn over<U>(&self, data: &'a [U]) -> Rows<'a, U> {
        Rows {
            data,
            starts: self.starts,
            len: self.len,
        }
    }

    fn row(&self, r: usize) -> &'a [T] {
        &self.data[self.starts[r]..][..self.len]
    }
}

/// `c[m * ldc + j] = sum_k a[m, k] b.row(k)[j]` for every row `m` of `a` and `j < b.len`.
///
/// # Errors
/// [`NnError::LengthMismatch`] when `a.cols` differs from the number of rows of `b`, `a` is
/// shorter than its view, `ldc < b.len`, or `c` is shorter than `(a.rows - 1) ldc + b.len`.
/// Nothing is written then.
pub(crate) fn product<T: Scalar>(
    isa: Isa,
    a: MatRef<'_, T>,
    b: Rows<'_, T>,
    c: &mut [T],
    ldc: usize,
) -> Result<()> {
    check_a(a, b.starts.len())?;
    check_out("indirect gemm c", c.len(), a.rows, ldc, b.len)?;
    #[cfg(target_arch = "x86_64")]
    if let (Some(a32), Some(b32), Some(c32)) =
        (T::as_f32(a.data), T::as_f32(b.data), T::as_f32_mut(c))
    {
        let a32 = MatRef {
            data: a32,
            rows: a.rows,
            cols: a.cols,
            rs: a.rs,
            cs: a.cs,
        };
        if vector(isa) {
            // SAFETY: `vector` found AVX2 and FMA on this machine.
            unsafe { avx2::product(a32, b.over(b32), c32, ldc) };
            return Ok(());
        }
    }
    product_body(a, b, c, ldc);
    Ok(())
}

/// `d[m * ldd + k] += sum_j g.row(m)[j] b.row(k)[j]`: `D += G B^T`.
///
/// # Errors
/// [`NnError::LengthMismatch`] when the rows of `g` and `b` differ in length, `ldd` is less than
/// the number of rows of `b`, or `d` is too short. Nothing is written then.
pub(crate) fn add_dots<T: Scalar>(
    isa: Isa,
    g: Rows<'_, T>,
    b: Rows<'_, T>,
    d: &mut [T],
    ldd: usize,
) -> Result<()> {
    if g.len != b.len {
        return Err(NnError::LengthMismatch {
            buffer: "indirect gemm row length of b",
            expected: g.len,
            got: b.len,
        });
    }
    check_out(
        "indirect gemm d",
        d.len(),
        g.starts.len(),
        ldd,
        b.starts.len(),
    )?;
    #[cfg(target_arch = "x86_64")]
    if let (Some(g32), Some(b32), Some(d32)) =
        (T::as_f32(g.data), T::as_f32(b.data), T::as_f32_mut(d))
    {
        if vector(isa) {
            // SAFETY: `vector` found AVX2 and FMA on this machine.
            unsafe { avx2::add_dots(g.over(g32), b.over(b32), d32, ldd) };
            return Ok(());
        }
    }
    dots_body(g, b, d, ldd);
    Ok(())
}

/// Whether `isa` is a vector path this machine runs (each has AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
fn vector(isa: Isa) -> bool {
    isa != Isa::Baseline && isa.is_supported()
}

fn check_a<T>(a: MatRef<'_, T>, b_rows: usize) -> Result<()> {
    if a.cols != b_rows {
        return Err(NnError::LengthMismatch {
            buffer: "indirect gemm inner dimension",
            expected: a.cols,
            got: b_rows,
        });
    }
    if a.rows == 0 || a.cols == 0 {
        return Ok(());
    }
    let reach = (a.rows - 1)
        .checked_mul(a.rs)
        .zip((a.cols - 1).checked_mul(a.cs))
        .and_then(|(r, c)| r.checked_add(c))
        .unwrap_or(usize::MAX);
    if reach >= a.data.len() {
        return Err(NnError::LengthMismatch {
            buffer: "indirect gemm a",
            expected: reach.saturating_add(1),
            got: a.data.len(),
        });
    }
    Ok(())
}

/// Checks that `len` holds `rows` rows of `cols` elements, `ld` apart.
fn check_out(buffer: &'static str, len: usize, rows: usize, ld: usize, cols: usize) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let need = (rows - 1)
        .checked_mul(ld)
        .and_then(|r| r.checked_add(cols))
        .unwrap_or(usize::MAX);
    if ld < cols || need > len {
        return Err(NnError::LengthMismatch {
            buffer,
            expected: need.max(rows.saturating_mul(cols)),
            got: len,
        });
    }
    Ok(())
}

/// The portable [`product`].
fn product_body<T: Scalar>(a: MatRef<'_, T>, b: Rows<'_, T>, c: &mut [T], ldc: usize) {
    let full_rows = a.rows - a.rows % TILE_16.rows;
    let mut col = 0;
    while col < b.len {
        if b.len - col >= TILE_16.groups * LANES {
            for m in (0..full_rows).step_by(TILE_16.rows) {
                product_tile::<T, { TILE_16.rows }, { TILE_16.groups }>(a, m, b, col, c, ldc);
            }
            for m in full_rows..a.rows {
                product_tile::<T, 1, { TILE_16.groups }>(a, m, b, col, c, ldc);
            }
            col += TILE_16.groups * LANES;
        } else {
            for m in (0..full_rows).step_by(TILE_16.rows) {
                product_tile::<T, { TILE_16.rows }, 1>(a, m, b, col, c, ldc);
            }
            for m in full_rows..a.rows {
                product_tile::<T, 1, 1>(a, m, b, col, c, ldc);
            }
            col += LANES;
        }
    }
}

/// Rows `m..m + R` and columns `col..col + V LANES` of `C = A B`.
#[inline(always)]
fn product_tile<T: Scalar, const R: usize, const V: usize>(
    a: MatRef<'_, T>,
    m: usize,
    b: Rows<'_, T>,
    col: usize,
    c: &mut [T],
    ldc: usize,
) {
    let mut acc = [[[T::ZERO; LANES]; V]; R];
    for (k, &start) in b.starts.iter().enumerate() {
        let run = &b.data[start + col..][..V * LANES];
        let bv: [&[T; LANES]; V] = std::array::from_fn(|v| {
            run[v * LANES..][..LANES]
                .try_into()
                .expect("LANES elements")
        });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = a.data[(m + r) * a.rs + k * a.cs];
            for (acc_v, bv_v) in acc_r.iter_mut().zip(&bv) {
                for (s, &x) in acc_v.iter_mut().zip(bv_v.iter()) {
                    *s += w * x;
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let out = &mut c[(m + r) * ldc + col..][..V * LANES];
        for (dst, acc_v) in out.chunks_exact_mut(LANES).zip(acc_r) {
            dst.copy_from_slice(acc_v);
        }
    }
}

/// The portable [`add_dots`].
fn dots_body<T: Scalar>(g: Rows<'_, T>, b: Rows<'_, T>, d: &mut [T], ldd: usize) {
    let (g_rows, b_rows) = (g.starts.len(), b.starts.len());
    let full_g = g_rows - g_rows % TILE_16.dot_g;
    let full_b = b_rows - b_rows % TILE_16.dot_b;
    for m in (0..full_g).step_by(TILE_16.dot_g) {
        for k in (0..full_b).step_by(TILE_16.dot_b) {
            dots_tile::<T, { TILE_16.dot_g }, { TILE_16.dot_b }>(g, m, b, k, d, ldd);
        }
        for k in full_b..b_rows {
            dots_tile::<T, { TILE_16.dot_g }, 1>(g, m, b, k, d, ldd);
        }
    }
    for m in full_g..g_rows {
        for k in 0..b_rows {
            dots_tile::<T, 1, 1>(g, m, b, k, d, ldd);
        }
    }
}

/// `d[(m + r) ldd + k + q] += g.row(m + r) . b.row(k + q)` for `r < R`, `q < Q`; each dot
/// product summed in `LANES` partial sums, then those in order.
#[inline(always)]
fn dots_tile<T: Scalar, const R: usize, const Q: usize>(
    g: Rows<'_, T>,
    m: usize,
    b: Rows<'_, T>,
    k: usize,
    d: &mut [T],
    ldd: usize,
) {
    let g_rows: [&[T]; R] = std::array::from_fn(|r| g.row(m + r));
    let b_rows: [&[T]; Q] = std::array::from_fn(|q| b.row(k + q));
    let mut acc = [[[T::ZERO; LANES]; Q]; R];
    for j in 0..g.len / LANES {
        let lanes = |row: &[T]| -> [T; LANES] {
            row[j * LANES..][..LANES]
                .try_into()
                .expect("LANES elements")
        };
        let gv: [[T; LANES]; R] = std::array::from_fn(|r| lanes(g_rows[r]));
        let bv: [[T; LANES]; Q] = std::array::from_fn(|q| lanes(b_rows[q]));
        for (acc_r, gv_r) in acc.iter_mut().zip(&gv) {
            for (acc_q, bv_q) in acc_r.iter_mut().zip(&bv) {
                for ((s, &x), &y) in acc_q.iter_mut().zip(gv_r).zip(bv_q) {
                    *s += x * y;
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (q, acc_q) in acc_r.iter().enumerate() {
            let mut sum = T::ZERO;
            for &v in acc_q {
                sum += v;
            }
            d[(m + r) * ldd + k + q] += sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::Rng::new(seed);
        (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// Checks [`product`] and [`add_dots`] in `T` on `isa` against sums in `f64` of the same
    /// (rounded) values. A sum of `n` products rounded in any order, fused or not, is within
    /// `n u sum |terms|` of the exact one (`u` the unit roundoff of `T`); the bound used allows
    /// `n + 2`.
    fn check<T: Scalar>(isa: Isa, u: f64) {
        let t = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::from_f64).collect() };
        let tol = |terms: &mut dyn Iterator<Item = f64>, n: usize| {
            (n as f64 + 2.0) * u * terms.map(f64::abs).sum::<f64>()
        };
        // Every shape class of the tiles: full and partial row blocks, full and partial
        // lane-group blocks, rows overlapping as the taps of a padded sample, and a strided
        // (transposed) `a`.
        for (m, k, len) in [
            (8, 9, 840),
            (5, 7, 16),
            (32, 144, 64),
            (3, 2, 8),
            (72, 16, 200),
        ] {
            let data = t(values(k * 3 + len + 5, 1));
            let starts: Vec<usize> = (0..k).map(|r| r * 3 - r / 2 * 2).collect();
            let b = Rows::new(&data, &starts, len).unwrap();
            let wt = t(values(k * m, 2));
            for a in [
                MatRef::row_major(&wt, m, k),
                MatRef::row_major(&wt, k, m).t(),
            ] {
                let ldc = len + 8;
                let mut c = vec![T::from_f64(f64::NAN); m * ldc];
                product(isa, a, b, &mut c, ldc).unwrap();
                for i in 0..m {
                    for j in 0..len {
                        let term =
                            |p: usize| a.data[i * a.rs + p * a.cs].to_f64() * b.row(p)[j].to_f64();
                        let want: f64 = (0..k).map(term).sum();
                        let got = c[i * ldc + j].to_f64();
                        let bound = tol(&mut (0..k).map(term), k);
                        assert!(
                            (got - want).abs() <= bound,
                            "{isa} c[{i},{j}] {got} vs {want}"
                        );
                    }
                }
            }
            let gdata = t(values(m * len, 3));
            let gstarts: Vec<usize> = (0..m).map(|r| r * len).collect();
            let g = Rows::new(&gdata, &gstarts, len).unwrap();
            let mut d = vec![T::from_f64(0.5); m * k];
            add_dots(isa, g, b, &mut d, k).unwrap();
            for i in 0..m {
                for p in 0..k {
                    let terms = || {
                        g.row(i)
                            .iter()
                            .zip(b.row(p))
                            .map(|(x, y)| x.to_f64() * y.to_f64())
                    };
                    let want = 0.5 + terms().sum::<f64>();
                    let got = d[i * k + p].to_f64();
                    let bound = tol(&mut terms().chain([0.5]), len + 1);
                    assert!(
                        (got - want).abs() <= bound,
                        "{isa} d[{i},{p}] {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn product_and_dots_match_plain_sums_on_every_path() {
        for isa in Isa::available() {
            check::<f32>(isa, f64::from(f32::EPSILON) / 2.0);
            check::<f64>(isa, f64::EPSILON / 2.0);
        }
    }

    #[test]
    fn bad_shapes_are_errors_not_writes() {
        let data = [1.0f32; 40];
        assert!(Rows::new(&data, &[0], 12).is_err());
        assert!(Rows::new(&data, &[0, 33], 8).is_err());
        assert!(Rows::new(&data, &[usize::MAX], 8).is_err());
        let b = Rows::new(&data, &[0, 32], 8).unwrap();
        let w = [1.0f32; 4];
        let mut c = [0.0f32; 16];
        let isa = Isa::detect();
        // Inner dimension 1 against 2 rows of b.
        assert!(product(isa, MatRef::row_major(&w, 4, 1), b, &mut c, 8).is_err());
        // c short by one element, and a row stride below the row length.
        assert!(product(isa, MatRef::row_major(&w, 2, 2), b, &mut c[..15], 8).is_err());
        assert!(product(isa, MatRef::row_major(&w, 2, 2), b, &mut c, 7).is_err());
        // a shorter than its view.
        assert!(product(isa, MatRef::row_major(&w[..3], 2, 2), b, &mut c, 8).is_err());
        assert!(c.iter().all(|&v| v == 0.0));
        product(isa, MatRef::row_major(&w, 2, 2), b, &mut c, 8).unwrap();
        assert!(c.iter().all(|&v| v == 2.0));
        let g16 = Rows::new(&data, &[0], 16).unwrap();
        let mut d = [0.0f32; 2];
        assert!(add_dots(isa, g16, b, &mut d, 2).is_err());
        let g = Rows::new(&data, &[0], 8).unwrap();
        assert!(add_dots(isa, g, b, &mut d[..1], 2).is_err());
        add_dots(isa, g, b, &mut d, 2).unwrap();
        assert_eq!(d, [8.0, 8.0]);
    }
}
