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

    /// The geometry of `dL/dx` as a stride-1 convolution of the output gradient (`O` channels of
    /// `OH x OW`, padded by `K - 1 - P`), given the number of output channels `o`; `None` when
    /// the stride is not 1 or the padding is not below the kernel.
    pub(super) fn input_gradient(&self, o: usize) -> Option<Geometry> {
        if self.sh != 1 || self.sw != 1 || self.ph >= self.kh || self.pw >= self.kw {
            return None;
        }
        Some(Geometry {
            c: o,
            h: self.oh,
            w: self.ow,
            kh: self.kh,
            kw: self.kw,
            sh: 1,
            sw: 1,
            ph: self.kh - 1 - self.ph,
            pw: self.kw - 1 - self.pw,
            oh: self.h,
            ow: self.w,
        })
    }
}

/// `dst[k dst_step] = src[k src_step]` for `k < len` (`len > 0`). A step of 2 goes in blocks
/// of 8 elements, which LLVM unrolls without bounds checks or a loop counter per element.
fn copy_every<T: Copy>(dst: &mut [T], dst_step: usize, src: &[T], src_step: usize, len: usize) {
    const BLOCK: usize = 8;
    // Whole blocks short of the last element: the strided side holds `2 (len - 1) + 1`.
    let blocks = (len - 1) / BLOCK * BLOCK;
    match (dst_step, src_step) {
        (1, 1) => dst[..len].copy_from_slice(&src[..len]),
        (1, 2) => {
            for (d, s) in dst[..blocks]
                .chunks_exact_mut(BLOCK)
                .zip(src[..2 * blocks].chunks_exact(2 * BLOCK))
            {
                for (k, v) in d.iter_mut().enumerate() {
                    *v = s[2 * k];
                }
            }
            copy_steps(&mut dst[blocks..], 1, &src[2 * blocks..], 2, len - blocks);
        }
        (2, 1) => {
            for (d, s) in dst[..2 * blocks]
                .chunks_exact_mut(2 * BLOCK)
                .zip(src[..blocks].chunks_exact(BLOCK))
            {
                for (k, &v) in s.iter().enumerate() {
                    d[2 * k] = v;
                }
            }
            copy_steps(&mut dst[2 * blocks..], 2, &src[blocks..], 1, len - blocks);
        }
        _ => copy_steps(dst, dst_step, src, src_step, len),
    }
}

/// `dst[k dst_step] = src[k src_step]` for `k < len`, one element at a time.
fn copy_steps<T: Copy>(dst: &mut [T], dst_step: usize, src: &[T], src_step: usize, len: usize) {
    for (d, s) in dst
        .iter_mut()
        .step_by(dst_step)
        .zip(src.iter().step_by(src_step))
        .take(len)
    {
        *d = *s;
    }
}

/// A sample's `X_col` as runs of a source buffer, and the product's columns: output position
/// `(p, q)` is column `p wq + q`; the other columns (`q >= ow`, and past `oh wq`) are computed
/// and discarded.
///
/// The source holds, for each channel, the zero-bordered sample (`hp x wp`, the padding around
/// it) split into its phase planes: plane `(a, b)` holds the padded elements `(SH u + a, SW v +
/// b)` at `(u, v)`, in `hq x wq` with `hq = ceil(hp / SH)`, `wq = ceil(wp / SW)`. Tap `(i, j)`
/// at output `(p, q)` reads padded element `(SH (p + i / SH) + i % SH, ...)`, that is element
/// `(p + i / SH, q + j / SW)` of plane `(i % SH, j % SW)`: a run of the buffer at every stride,
/// as a stride-1 tap is of the plain padded copy (its only plane). Only the `min(SH, KH) x
/// min(SW, KW)` planes some tap reads are built. Against im2col, which copied every tap's
/// values one at a time, each sample element is copied once: the copies in and out went from
/// 18% to 9% of the profile of 150 resnet training steps, and an epoch from 22.4 to 20.4 s
/// (fused BN, extrapolated from 200 steps, median of four runs alternating with the old build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lowering {
    g: Geometry,
    /// Phase planes per channel along the height and the width: `min(SH, KH)`, `min(SW, KW)`.
    phases: [usize; 2],
    /// Height of a phase plane, `ceil((H + 2 PH) / SH)`.
    hq: usize,
    /// Width of a phase plane and of a row of the product, `ceil((W + 2 PW) / SW)`.
    wq: usize,
    /// Where row `(c, i, j)` of `X_col` starts in the source buffer.
    pub(super) starts: Vec<usize>,
    /// Columns of the product: `oh wq` rounded up to a multiple of [`LANES`].
    pub(super) cols: usize,
    /// Length of the source buffer.
    pub(super) src_len: usize,
}

fn too_large(g: &Geometry) -> NnError {
    NnError::TooLarge {
        what: "conv2d lowering",
        sizes: vec![g.c, g.h, g.w, g.kh, g.kw, g.ph, g.pw],
    }
}

impl Lowering {
    /// The lowering of a convolution of geometry `g` (sizes non-zero, `oh` and `ow` as
    /// [`super::Conv2dConfig::output_hw`] gives them). With stride 1 the output rows are
    /// `wp = w + 2 pw` columns wide (`kw - 1` more than the output), so a 28 x 28 output costs
    /// 30/28 of its products, a 7 x 7 one 64/49; with stride 2 and a 3 x 3 kernel, 15/14 and
    /// 8/7.
    ///
    /// # Errors
    /// [`NnError::TooLarge`] when a size overflows.
    pub(super) fn new(g: Geometry) -> Result<Self> {
        let big = || too_large(&g);
        let padded = |len: usize, pad: usize| pad.checked_mul(2).and_then(|p| p.checked_add(len));
        let hq = padded(g.h, g.ph).ok_or_else(big)?.div_ceil(g.sh);
        let wq = padded(g.w, g.pw).ok_or_else(big)?.div_ceil(g.sw);
        let phases = [g.sh.min(g.kh), g.sw.min(g.kw)];
        let plane = hq.checked_mul(wq).ok_or_else(big)?;
        let cols =
            g.oh.checked_mul(wq)
                .and_then(|v| v.checked_next_multiple_of(LANES))
                .ok_or_else(big)?;
        let planes =
            g.c.checked_mul(phases[0] * phases[1])
                .and_then(|v| v.checked_mul(plane))
                .ok_or_else(big)?;
        let mut starts = Vec::new();
        starts.try_reserve_exact(g.rows()).map_err(|_| big())?;
        for ch in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let phase = (ch * phases[0] + i % g.sh) * phases[1] + j % g.sw;
                    starts.push(phase * plane + i / g.sh * wq + j / g.sw);
                }
            }
        }
        let last = starts.iter().copied().max().unwrap_or(0);
        let src_len = last.checked_add(cols).ok_or_else(big)?.max(planes);
        Ok(Lowering {
            g,
            phases,
            hq,
            wq,
            starts,
            cols,
            src_len,
        })
    }

    /// Calls `f(at, from, len)` for every run of the sample in the source buffer: sample
    /// elements `from, from + SW, ..., from + (len - 1) SW` are source elements `at..at + len`.
    /// Each sample element read by some tap lies in exactly one run; the rest of the source is
    /// padding.
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (g, plane) = (self.g, self.hq * self.wq);
        for a in 0..self.phases[0] {
            // Rows u of the plane holding sample rows SH u + a - PH.
            let (ulo, uhi) = valid_outputs(a, g.sh, g.ph, g.h, self.hq);
            for b in 0..self.phases[1] {
                let (vlo, vhi) = valid_outputs(b, g.sw, g.pw, g.w, self.wq);
                if vlo == vhi {
                    continue;
                }
                for ch in 0..g.c {
                    let base = ((ch * self.phases[0] + a) * self.phases[1] + b) * plane;
                    for u in ulo..uhi {
                        let row = (ch * g.h + u * g.sh + a - g.ph) * g.w;
                        f(
                            base + u * self.wq + vlo,
                            row + vlo * g.sw + b - g.pw,
                            vhi - vlo,
                        );
                    }
                }
            }
        }
    }

    /// Fills the source buffer `src` (of `src_len` values, zero where never written) from one
    /// sample `x`. Only the runs are written: the padding keeps the zeros of the allocation.
    pub(super) fn fill<T: Scalar>(&self, x: &[T], src: &mut [T]) {
        let sw = self.g.sw;
        self.runs(|at, from, len| copy_every(&mut src[at..], 1, &x[from..], sw, len));
    }

    /// The adjoint of [`Lowering::fill`]: `dx` (one sample, every element written) gets the
    /// element of `d_src` each of its elements was copied to, zero for those in no phase plane
    /// built (no tap reads them).
    pub(super) fn unfill<T: Scalar>(&self, d_src: &[T], dx: &mut [T]) {
        let sw = self.g.sw;
        if self.phases != [self.g.sh, self.g.sw] {
            dx.fill(T::ZERO);
        }
        self.runs(|at, from, len| copy_every(&mut dx[from..], sw, &d_src[at..], 1, len));
    }

    /// The adjoint of reading the taps: `d_src` (zeroed by the caller) gets every row `(c, i,
    /// j)` of `dx_col` (rows `cols` apart) added onto the run that row was read from. The
    /// product's discarded columns must be zero in `dx_col` (they are for `W^T G` with `G` zero
    /// there and finite weights).
    pub(super) fn add_taps<T: Scalar>(&self, dx_col: &[T], d_src: &mut [T]) {
        for (&start, row) in self.starts.iter().zip(dx_col.chunks(self.cols)) {
            for (d, &v) in d_src[start..start + self.cols].iter_mut().zip(row) {
                *d += v;
            }
        }
    }

    /// Writes one sample's `y` (`channels x oh x ow`) into the product's columns of `wide`
    /// (rows `cols` apart); the other columns are not written, so stay zero.
    pub(super) fn gather<T: Scalar>(&self, y: &[T], wide: &mut [T]) {
        let (oh, ow) = (self.g.oh, self.g.ow);
        for (plane, dst) in y.chunks_exact(oh * ow).zip(wide.chunks_mut(self.cols)) {
            for (row, d) in plane.chunks_exact(ow).zip(dst.chunks_mut(self.wq)) {
                d[..ow].copy_from_slice(row);
            }
        }
    }

    /// The adjoint of [`Lowering::gather`]: `y[ch, p, q] = wide[ch cols + p wq + q] + bias[ch]`
    /// (no bias when `bias` is empty).
    pub(super) fn scatter<T: Scalar>(&self, wide: &[T], bias: &[T], y: &mut [T]) {
        let (oh, ow) = (self.g.oh, self.g.ow);
        for (ch, (plane, src)) in y
            .chunks_exact_mut(oh * ow)
            .zip(wide.chunks(self.cols))
            .enumerate()
        {
            let b = bias.get(ch).copied().unwrap_or(T::ZERO);
            for (row, s) in plane.chunks_exact_mut(ow).zip(src.chunks(self.wq)) {
                for (v, &a) in row.iter_mut().zip(&s[..ow]) {
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

    /// Every tap read through the lowering is the element the definition names (zero in the
    /// padding), at strides 1 to 3, paddings up to past the kernel, and stride-2 runs shorter
    /// and longer than `copy_every`'s blocks; `unfill` is the adjoint of `fill`, and `gather`
    /// then `scatter` the identity on the output positions.
    #[test]
    fn taps_read_the_definition_at_every_stride() {
        for (kh, kw, sh, sw, ph, pw, w) in [
            (3, 2, 1, 1, 1, 1, 6),
            (3, 3, 2, 2, 1, 1, 6),
            (1, 1, 2, 2, 0, 0, 6),
            (2, 3, 3, 2, 2, 3, 6),
            (3, 3, 2, 2, 1, 1, 17),
            (1, 1, 2, 2, 0, 0, 17),
            (1, 1, 2, 2, 0, 0, 35),
        ] {
            let (c, h) = (2, 7);
            let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
            let g = Geometry {
                c,
                h,
                w,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                oh,
                ow,
            };
            let l = Lowering::new(g).unwrap();
            let x: Vec<f64> = (0..c * h * w).map(|v| v as f64 + 1.0).collect();
            let mut src = vec![0.0; l.src_len];
            l.fill(&x, &mut src);
            let mut read = vec![false; x.len()];
            for ch in 0..c {
                for i in 0..kh {
                    for j in 0..kw {
                        let start = l.starts[(ch * kh + i) * kw + j];
                        for p in 0..oh {
                            for q in 0..ow {
                                let (y, z) =
                                    ((p * sh + i).wrapping_sub(ph), (q * sw + j).wrapping_sub(pw));
                                let want = if y < h && z < w {
                                    read[(ch * h + y) * w + z] = true;
                                    x[(ch * h + y) * w + z]
                                } else {
                                    0.0
                                };
                                let got = src[start + p * l.wq + q];
                                assert_eq!(got, want, "{g:?}: tap ({ch}, {i}, {j}) at ({p}, {q})");
                            }
                        }
                    }
                }
            }
            let mut back = vec![f64::NAN; x.len()];
            l.unfill(&src, &mut back);
            for (k, (&b, &r)) in back.iter().zip(&read).enumerate() {
                assert_eq!(b, if r { x[k] } else { 0.0 }, "{g:?}: unfill at {k}");
            }
            let y: Vec<f64> = (0..2 * oh * ow).map(|v| v as f64).collect();
            let mut wide = vec![0.0; 2 * l.cols];
            l.gather(&y, &mut wide);
            let mut back = vec![0.0; y.len()];
            l.scatter(&wide, &[10.0, 20.0], &mut back);
            for (k, (&a, &b)) in back.iter().zip(&y).enumerate() {
                assert_eq!(a, b + if k < oh * ow { 10.0 } else { 20.0 });
            }
            assert_eq!(wide.iter().filter(|&&v| v != 0.0).count(), y.len() - 1);
        }
    }
}
