//! The `f32` kernels with AVX2 and FMA intrinsics: one 8-lane vector per lane group, on
//! [`TILE_16`], on AVX-512 machines too: the `8 x 3` tile their 32 registers allow was
//! measured and took as long (26.8k against 26.4k profile samples in the product over 150
//! resnet training steps on the 2-core AMD EPYC machine).
//!
//! Written with intrinsics because the portable tiles of `mod.rs`, compiled with these
//! features, were not vectorised as tiles (LLVM gathered 4-lane vectors across rows): a
//! training step of `bnlab cnn --arch resnet` took 4x as long as with `matrixmultiply`.

use std::arch::x86_64::{
    __m256, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_cvtss_f32, _mm_movehl_ps,
    _mm_shuffle_ps,
};

use super::{Rows, LANES, TILE_16};
use crate::matmul::MatRef;

/// [`super::product`] for `f32`; the shapes are checked by the caller.
#[target_feature(enable = "avx2,fma")]
pub(super) fn product(a: MatRef<'_, f32>, b: Rows<'_, f32>, c: &mut [f32], ldc: usize) {
    let full_rows = a.rows - a.rows % TILE_16.rows;
    let mut col = 0;
    while col < b.len {
        if b.len - col >= TILE_16.groups * LANES {
            for m in (0..full_rows).step_by(TILE_16.rows) {
                product_tile::<{ TILE_16.rows }, { TILE_16.groups }>(a, m, b, col, c, ldc);
            }
            for m in full_rows..a.rows {
                product_tile::<1, { TILE_16.groups }>(a, m, b, col, c, ldc);
            }
            col += TILE_16.groups * LANES;
        } else {
            for m in (0..full_rows).step_by(TILE_16.rows) {
                product_tile::<{ TILE_16.rows }, 1>(a, m, b, col, c, ldc);
            }
            for m in full_rows..a.rows {
                product_tile::<1, 1>(a, m, b, col, c, ldc);
            }
            col += LANES;
        }
    }
}

/// Rows `m..m + R` and columns `col..col + 8 V` of `C = A B`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn product_tile<const R: usize, const V: usize>(
    a: MatRef<'_, f32>,
    m: usize,
    b: Rows<'_, f32>,
    col: usize,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(col + V * LANES <= b.len && m + R <= a.rows && b.starts.len() == a.cols);
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    let mut bv = [_mm256_setzero_ps(); V];
    let mut a_k = a.data[m * a.rs..].as_ptr();
    for &start in b.starts {
        let run = b.data[start + col..][..V * LANES].as_ptr();
        for (v, bv_v) in bv.iter_mut().enumerate() {
            // SAFETY: `run` points at `V LANES` elements of `b.data` (the slice above).
            *bv_v = unsafe { _mm256_loadu_ps(run.add(v * LANES)) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: element (m + r, k) of `a`, in bounds as the caller checked every element
            // of `a`'s view (`check_a`) and `m + r < a.rows`, `k < a.cols` (asserted above).
            let w = _mm256_set1_ps(unsafe { *a_k.add(r * a.rs) });
            for (acc_v, &bv_v) in acc_r.iter_mut().zip(&bv) {
                *acc_v = _mm256_fmadd_ps(w, bv_v, *acc_v);
            }
        }
        a_k = a_k.wrapping_add(a.cs);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let out = c[(m + r) * ldc + col..][..V * LANES].as_mut_ptr();
        for (v, &acc_v) in acc_r.iter().enumerate() {
            // SAFETY: `out` points at `V LANES` elements of `c` (the slice above).
            unsafe { _mm256_storeu_ps(out.add(v * LANES), acc_v) };
        }
    }
}

/// [`super::add_dots`] for `f32`; the shapes are checked by the caller.
#[target_feature(enable = "avx2,fma")]
pub(super) fn add_dots(g: Rows<'_, f32>, b: Rows<'_, f32>, d: &mut [f32], ldd: usize) {
    let (g_rows, b_rows) = (g.starts.len(), b.starts.len());
    let full_g = g_rows - g_rows % TILE_16.dot_g;
    let full_b = b_rows - b_rows % TILE_16.dot_b;
    for m in (0..full_g).step_by(TILE_16.dot_g) {
        for k in (0..full_b).step_by(TILE_16.dot_b) {
            dots_tile::<{ TILE_16.dot_g }, { TILE_16.dot_b }>(g, m, b, k, d, ldd);
        }
        for k in full_b..b_rows {
            dots_tile::<{ TILE_16.dot_g }, 1>(g, m, b, k, d, ldd);
        }
    }
    for m in full_g..g_rows {
        for k in 0..b_rows {
            dots_tile::<1, 1>(g, m, b, k, d, ldd);
        }
    }
}

/// `d[(m + r) ldd + k + q] += g.row(m + r) . b.row(k + q)` for `r < R`, `q < Q`, summed in 8
/// lanes, then the lanes by [`hsum`].
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dots_tile<const R: usize, const Q: usize>(
    g: Rows<'_, f32>,
    m: usize,
    b: Rows<'_, f32>,
    k: usize,
    d: &mut [f32],
    ldd: usize,
) {
    let len = g.len;
    assert!(b.len == len && len.is_multiple_of(LANES));
    let mut g_rows = [std::ptr::null::<f32>(); R];
    for (r, p) in g_rows.iter_mut().enumerate() {
        *p = g.row(m + r).as_ptr();
    }
    let mut b_rows = [std::ptr::null::<f32>(); Q];
    for (q, p) in b_rows.iter_mut().enumerate() {
        *p = b.row(k + q).as_ptr();
    }
    let mut acc = [[_mm256_setzero_ps(); Q]; R];
    let mut gv = [_mm256_setzero_ps(); R];
    let mut bv = [_mm256_setzero_ps(); Q];
    for j in (0..len).step_by(LANES) {
        for (v, &p) in gv.iter_mut().zip(&g_rows) {
            // SAFETY: `p` starts a row of `len` elements (`Rows::row`), and `j + 8 <= len`.
            *v = unsafe { _mm256_loadu_ps(p.add(j)) };
        }
        for (v, &p) in bv.iter_mut().zip(&b_rows) {
            // SAFETY: as above.
            *v = unsafe { _mm256_loadu_ps(p.add(j)) };
        }
        for (acc_r, &gv_r) in acc.iter_mut().zip(&gv) {
            for (acc_q, &bv_q) in acc_r.iter_mut().zip(&bv) {
                *acc_q = _mm256_fmadd_ps(gv_r, bv_q, *acc_q);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (q, &acc_q) in acc_r.iter().enumerate() {
            d[(m + r) * ldd + k + q] += hsum(acc_q);
        }
    }
}

/// The sum of the 8 lanes, as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ps(pair, _mm_shuffle_ps::<0b01>(pair, pair)))
}
