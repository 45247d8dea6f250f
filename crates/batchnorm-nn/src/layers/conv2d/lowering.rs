//! How a sample reaches the matrix kernels: the rows of its `X_col` as runs of a source buffer
//! (see [`crate::indirect_gemm`]), and the product's columns mapped back to output positions.

use crate::error::{NnError, Result};
use crate::indirect_gemm::LANES;
use crate::scalar::Scalar;

/// The resolved geometry of one sample: every size the loops need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

/// The outputs `o` in `0..n_out` whose input index `o * stride + k - pad` lies in `0..len`, as
/// a half-open range (empty ranges come back as `lo == hi`).
fn valid_outputs(k: usize, stride: usize, pad: usize, len: usize, n_out: usize) -> (usize, usize) {
    // o * stride + k >= pad  <=>  o >= ceil((pad - k) / stride)
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    // o * stride + k < len + pad  <=>  o < ceil((len + pad - k) / stride)
    let hi = if k >= len + pad {
        0
    } else {
        (len + pad - k).div_ceil(stride)
    };
    let hi = hi.min(n_out);
    (lo.min(hi), hi)
}

impl Geometry {
    /// `C KH KW`: the rows of `X_col`.
    pub(super) fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Unfolds one sample `x` (`C x H x W`) into `col` (`(C KH KW)` rows, `ld` apart, of
    /// `OH OW` values): `col[(c, i, j), (p, q)] = x[c, p SH + i - PH, q SW + j - PW]`, zero
    /// outside the input. The rest of each row is not written.
    fn im2col<T: Scalar>(&self, x: &[T], col: &mut [T], ld: usize) {
        let g = *self;
        let npos = g.positions();
        for c in 0..g.c {
            let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for i in 0..g.kh {
                let (rlo, rhi) = valid_outputs(i, g.sh, g.ph, g.h, g.oh);
                for j in 0..g.kw {
                    let (clo, chi) = valid_outputs(j, g.sw, g.pw, g.w, g.ow);
                    let row = (c * g.kh + i) * g.kw + j;
                    let dst = &mut col[row * ld..row * ld + npos];
                    dst[..rlo * g.ow].fill(T::ZERO);
                    dst[rhi * g.ow..].fill(T::ZERO);
                    for p in rlo..rhi {
                        let d = &mut dst[p * g.ow..(p + 1) * g.ow];
                        d[..clo].fill(T::ZERO);
                        d[chi..].fill(T::ZERO);
                        if clo == chi {
                            continue;
                        }
                        let ih = p * g.sh + i - g.ph;
                        let start = ih * g.w + clo * g.sw + j - g.pw;
                        let src = &plane[start..start + (chi - clo - 1) * g.sw + 1];
                        if g.sw == 1 {
                            d[clo..chi].copy_from_slice(src);
                        } else {
                            // `chunks`, not `step_by`: the latter compiled to a loop that
                            // reloaded its state from the stack at every element (measured:
                            // im2col of the stride-2 layers took 10% of a resnet training step).
                            for (v, s) in d[clo..chi].iter_mut().zip(src.chunks(g.sw)) {
                                *v = s[0];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Geometry::im2col`]: adds every entry of `col` (rows `ld` apart) back
    /// onto the input element it was copied from,
    /// `dx[c, p SH + i - PH, q SW + j - PW] += col[(c, i, j), (p, q)]` (entries that came from
    /// padding are dropped). `dx` must be zeroed by the caller.
    pub(super) fn col2im_add<T: Scalar>(&self, col: &[T], ld: usize, dx: &mut [T]) {
        let g = *self;
        for c in 0..g.c {
            let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
            for i in 0..g.kh {
                let (rlo, rhi) = valid_outputs(i, g.sh, g.ph, g.h, g.oh);
                for j in 0..g.kw {
                    let (clo, chi) = valid_outputs(j, g.sw, g.pw, g.w, g.ow);
                    if clo == chi {
                        continue;
                    }
                    let row = (c * g.kh + i) * g.kw + j;
                    let src = &col[row * ld..];
                    for p in rlo..rhi {
                        let s = &src[p * g.ow + clo..p * g.ow + chi];
                        let ih = p * g.sh + i - g.ph;
                        let start = ih * g.w + clo * g.sw + j - g.pw;
                        let d = &mut plane[start..start + (chi - clo - 1) * g.sw + 1];
                        for (v, &a) in d.chunks_mut(g.sw).zip(s) {
                            v[0] += a;
                        }
                    }
                }
            }
        }
    }
}

/// Where the rows of `X_col` come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The sample itself (`c` planes of `h x w`), copied into planes of `hp x wp` with `ph`
    /// rows and `pw` columns of zeros before it: a stride-1 tap is a run of this buffer.
    Padded {
        c: usize,
        h: usize,
        w: usize,
        ph: usize,
        pw: usize,
        hp: usize,
        wp: usize,
    },
    /// `X_col` built by im2col, rows `cols` apart.
    Im2col(Geometry),
}

/// A sample's `X_col` as rows of a source buffer, and the product's columns: output position
/// `(p, q)` is column `p ldw + q`; the other columns (`q >= ow`, and past `oh ldw`) are
/// computed and discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lowering {
    source: Source,
    /// Where row `(c, i, j)` of `X_col` starts in the source buffer.
    pub(super) starts: Vec<usize>,
    /// Columns of the product: `oh ldw` rounded up to a multiple of [`LANES`].
    pub(super) cols: usize,
    ldw: usize,
    oh: usize,
    ow: usize,
    /// Length of the source buffer.
    pub(super) src_len: usize,
}

fn too_large(sizes: &[usize]) -> NnError {
    NnError::TooLarge {
        what: "conv2d lowering",
        sizes: sizes.to_vec(),
    }
}

impl Lowering {
    /// A stride-1 convolution with kernel `[kh, kw]` over `c` planes of `[h, w]` with padding
    /// `[ph, pw]`: the taps read the zero-bordered sample in place, and the output rows are
    /// `wp = w + 2 pw` columns wide (`kw - 1` more than the output), so a 28 x 28 output costs
    /// 30/28 of its products, a 7 x 7 one 64/49.
    ///
    /// # Errors
    /// [`NnError::TooLarge`] when a size overflows; [`NnError::InvalidConfig`] when the kernel
    /// is larger than the padded input.
    pub(super) fn padded(
        c: usize,
        [h, w]: [usize; 2],
        [kh, kw]: [usize; 2],
        [ph, pw]: [usize; 2],
    ) -> Result<Self> {
        let sizes = [c, h, w, kh, kw, ph, pw];
        let big = || too_large(&sizes);
        let hp = ph
            .checked_mul(2)
            .and_then(|v| v.checked_add(h))
            .ok_or_else(big)?;
        let wp = pw
            .checked_mul(2)
            .and_then(|v| v.checked_add(w))
            .ok_or_else(big)?;
        if kh > hp || kw > wp || kh == 0 || kw == 0 {
            return Err(NnError::InvalidConfig {
                what: "conv2d kernel size",
                value: kh.max(kw) as f64,
                why: "zero, or larger than the padded input",
            });
        }
        let (oh, ow) = (hp - kh + 1, wp - kw + 1);
        let plane = hp.checked_mul(wp).ok_or_else(big)?;
        let cols = oh
            .checked_mul(wp)
            .and_then(|v| v.checked_next_multiple_of(LANES))
            .ok_or_else(big)?;
        let last_start = c
            .saturating_sub(1)
            .checked_mul(plane)
            .and_then(|v| v.checked_add((kh - 1) * wp + kw - 1))
            .ok_or_else(big)?;
        let src_len = last_start.checked_add(cols).ok_or_else(big)?;
        let mut starts = Vec::new();
        starts
            .try_reserve_exact(c.checked_mul(kh * kw).ok_or_else(big)?)
            .map_err(|_| big())?;
        for ch in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    starts.push(ch * plane + i * wp + j);
                }
            }
        }
        Ok(Lowering {
            source: Source::Padded {
                c,
                h,
                w,
                ph,
                pw,
                hp,
                wp,
            },
            starts,
            cols,
            ldw: wp,
            oh,
            ow,
            src_len,
        })
    }

    /// Any convolution, by im2col into rows of `cols` values.
    ///
    /// # Errors
    /// [`NnError::TooLarge`] when a size overflows.
    pub(super) fn im2col(g: Geometry) -> Result<Self> {
        let big = || too_large(&[g.c, g.kh, g.kw, g.oh, g.ow]);
        let cols = g
            .positions()
            .checked_next_multiple_of(LANES)
            .ok_or_else(big)?;
        let src_len = g.rows().checked_mul(cols).ok_or_else(big)?;
        Ok(Lowering {
            source: Source::Im2col(g),
            starts: (0..g.rows()).map(|r| r * cols).collect(),
            cols,
            ldw: g.ow,
            oh: g.oh,
            ow: g.ow,
            src_len,
        })
    }

    /// Fills the source buffer `src` (of `src_len` values, zero where never written) from one
    /// sample `x`.
    pub(super) fn fill<T: Scalar>(&self, x: &[T], src: &mut [T]) {
        match self.source {
            Source::Padded {
                c,
                h,
                w,
                ph,
                pw,
                hp,
                wp,
            } => {
                // Only the interior is written: the borders keep the zeros of the allocation.
                for (plane, dst) in x.chunks_exact(h * w).zip(src.chunks_mut(hp * wp)).take(c) {
                    for (row, d) in plane.chunks_exact(w).zip(dst[ph * wp..].chunks_mut(wp)) {
                        d[pw..pw + w].copy_from_slice(row);
                    }
                }
            }
            Source::Im2col(g) => g.im2col(x, src, self.cols),
        }
    }

    /// Writes one sample's `y` (`channels x oh x ow`) into the product's columns of `wide`
    /// (rows `cols` apart); the other columns are not written, so stay zero.
    pub(super) fn gather<T: Scalar>(&self, y: &[T], wide: &mut [T]) {
        for (plane, dst) in y
            .chunks_exact(self.oh * self.ow)
            .zip(wide.chunks_mut(self.cols))
        {
            for (row, d) in plane.chunks_exact(self.ow).zip(dst.chunks_mut(self.ldw)) {
                d[..self.ow].copy_from_slice(row);
            }
        }
    }

    /// The adjoint of [`Lowering::gather`]: `y[ch, p, q] = wide[ch cols + p ldw + q] + bias[ch]`
    /// (no bias when `bias` is empty).
    pub(super) fn scatter<T: Scalar>(&self, wide: &[T], bias: &[T], y: &mut [T]) {
        for (ch, (plane, src)) in y
            .chunks_exact_mut(self.oh * self.ow)
            .zip(wide.chunks(self.cols))
            .enumerate()
        {
            let b = bias.get(ch).copied().unwrap_or(T::ZERO);
            for (row, s) in plane.chunks_exact_mut(self.ow).zip(src.chunks(self.ldw)) {
                for (v, &a) in row.iter_mut().zip(&s[..self.ow]) {
                    *v = a + b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_output_ranges() {
        // k = 0, pad 1, stride 1, len 5, 5 outputs: output 0 reads index -1.
        assert_eq!(valid_outputs(0, 1, 1, 5, 5), (1, 5));
        // k = 2 reads o + 1: the last output reads index 5 = len.
        assert_eq!(valid_outputs(2, 1, 1, 5, 5), (0, 4));
        // stride 2, pad 1, k 0: o*2 - 1 in 0..5 gives o in 1..3.
        assert_eq!(valid_outputs(0, 2, 1, 5, 3), (1, 3));
        // A kernel tap entirely in the padding.
        assert_eq!(valid_outputs(7, 1, 3, 2, 4), (0, 0));
    }

    #[test]
    fn padded_taps_are_the_rows_of_im2col() {
        // 2 channels of 4 x 5, kernel 3 x 2, padding (1, 1), stride 1.
        let g = Geometry {
            c: 2,
            h: 4,
            w: 5,
            kh: 3,
            kw: 2,
            sh: 1,
            sw: 1,
            ph: 1,
            pw: 1,
            oh: 4,
            ow: 6,
        };
        let x: Vec<f64> = (0..40).map(|v| v as f64 + 1.0).collect();
        let explicit = Lowering::im2col(g).unwrap();
        let mut col = vec![0.0; explicit.src_len];
        explicit.fill(&x, &mut col);
        let implicit = Lowering::padded(2, [4, 5], [3, 2], [1, 1]).unwrap();
        assert_eq!((implicit.oh, implicit.ow, implicit.ldw), (4, 6, 7));
        let mut src = vec![0.0; implicit.src_len];
        implicit.fill(&x, &mut src);
        for r in 0..g.rows() {
            for p in 0..4 {
                for q in 0..6 {
                    assert_eq!(
                        src[implicit.starts[r] + p * 7 + q],
                        col[explicit.starts[r] + p * 6 + q],
                        "row {r} at ({p}, {q})"
                    );
                }
            }
        }
        // gather then scatter is the identity on the output positions (plus the bias).
        let y: Vec<f64> = (0..2 * 24).map(f64::from).collect();
        let mut wide = vec![0.0; 2 * implicit.cols];
        implicit.gather(&y, &mut wide);
        let mut back = vec![0.0; y.len()];
        implicit.scatter(&wide, &[10.0, 20.0], &mut back);
        for (k, (&a, &b)) in back.iter().zip(&y).enumerate() {
            assert_eq!(a, b + if k < 24 { 10.0 } else { 20.0 });
        }
        assert_eq!(wide.iter().filter(|&&v| v != 0.0).count(), 47);
    }
}
