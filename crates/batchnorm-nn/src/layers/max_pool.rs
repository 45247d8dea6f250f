//! Two-dimensional max pooling (PyTorch's `MaxPool2d`, floor mode, dilation 1).

use super::{check_batch, window_output_hw, Layer, Mode};
use crate::error::{NnError, Result};
use crate::scalar::Scalar;

/// The shape of a [`MaxPool2d`]; [`MaxPool2dConfig::new`] gives PyTorch's defaults.
///
/// ```
/// use batchnorm_nn::layers::MaxPool2dConfig;
/// // PyTorch's `MaxPool2d(2)` after an 8-channel 28 x 28 feature map.
/// let cfg = MaxPool2dConfig::new(8, 2, [28, 28]);
/// assert_eq!(cfg.output_hw()?, [14, 14]);
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPool2dConfig {
    /// Channels `C` (pooled independently).
    pub channels: usize,
    /// Input height and width `[H, W]`.
    pub input_hw: [usize; 2],
    /// Window height and width `[KH, KW]`.
    pub kernel: [usize; 2],
    /// Step between windows `[SH, SW]`. Default: the kernel size (non-overlapping windows).
    pub stride: [usize; 2],
    /// Implicit `-inf` added on each side `[PH, PW]`; at most half the kernel, as in PyTorch.
    /// Default `[0, 0]`.
    pub padding: [usize; 2],
}

impl MaxPool2dConfig {
    /// Square `kernel x kernel` windows with stride `kernel` and no padding (PyTorch's
    /// `MaxPool2d(kernel)`) over `channels` planes of `input_hw`.
    pub fn new(channels: usize, kernel: usize, input_hw: [usize; 2]) -> Self {
        MaxPool2dConfig {
            channels,
            input_hw,
            kernel: [kernel, kernel],
            stride: [kernel, kernel],
            padding: [0, 0],
        }
    }

    /// Output height and width, `OH = (H + 2 PH - KH) / SH + 1` (rounded down), likewise `OW`.
    ///
    /// # Errors
    /// [`NnError::Empty`] for a zero size, kernel or stride, [`NnError::TooLarge`] on overflow;
    /// [`NnError::InvalidConfig`] for padding above half the kernel or a kernel larger than
    /// the padded input.
    pub fn output_hw(&self) -> Result<[usize; 2]> {
        let sizes = [
            self.channels,
            self.input_hw[0],
            self.input_hw[1],
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
        ];
        if sizes.contains(&0) {
            return Err(NnError::Empty {
                what: "max_pool2d channels, input size, kernel or stride",
            });
        }
        for d in 0..2 {
            if self.padding[d] > self.kernel[d] / 2 {
                return Err(NnError::InvalidConfig {
                    what: "max_pool2d padding",
                    value: self.padding[d] as f64,
                    why: "must be at most half the kernel size",
                });
            }
        }
        let names = (
            "max_pool2d padded input (size + 2 x padding)",
            "max_pool2d kernel size",
        );
        window_output_hw(self.input_hw, self.kernel, self.stride, self.padding, names)
    }
}

/// Max pooling over windows of each channel of samples `C x H x W` (channels first):
///
/// `y[c, p, q] = max_{i < KH, j < KW} x[c, p SH + i - PH, q SW + j - PW]`,
///
/// over the window's elements inside the input (padding never wins). The window is scanned row
/// by row and the first maximum is kept, so ties go to the first element in memory order; a
/// NaN in the window wins (the last NaN), so NaN propagates. Both rules are PyTorch's CPU ones.
///
/// Backward: `y[c, p, q]` depends only on its argmax `x[c, a(p, q)]`, so
/// `dL/dx[c, k] = sum over the (p, q) with a(p, q) = k of dL/dy[c, p, q]` (a sum only when
/// overlapping windows share an argmax), and 0 elsewhere. The argmax is found again from the
/// saved `x` by the same scan, so the layer stores nothing and allocates nothing.
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    cfg: MaxPool2dConfig,
    out_hw: [usize; 2],
    in_len: usize,
    out_len: usize,
}

impl MaxPool2d {
    /// A max-pooling layer.
    ///
    /// # Errors
    /// As [`MaxPool2dConfig::output_hw`], and [`NnError::TooLarge`] when a size overflows.
    pub fn new(cfg: MaxPool2dConfig) -> Result<Self> {
        let out_hw = cfg.output_hw()?;
        let too_big = || NnError::TooLarge {
            what: "max_pool2d (channels x height x width)",
            sizes: vec![cfg.channels, cfg.input_hw[0], cfg.input_hw[1]],
        };
        let in_len = cfg
            .channels
            .checked_mul(cfg.input_hw[0])
            .and_then(|v| v.checked_mul(cfg.input_hw[1]))
            .ok_or_else(too_big)?;
        let out_len = cfg
            .channels
            .checked_mul(out_hw[0])
            .and_then(|v| v.checked_mul(out_hw[1]))
            .ok_or_else(too_big)?;
        Ok(MaxPool2d {
            cfg,
            out_hw,
            in_len,
            out_len,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MaxPool2dConfig {
        &self.cfg
    }

    /// Output height and width `[OH, OW]`.
    pub fn output_hw(&self) -> [usize; 2] {
        self.out_hw
    }

    /// Whether the windows are PyTorch's `MaxPool2d(2)`: 2 x 2, stride 2, no padding.
    fn is_2x2(&self) -> bool {
        self.cfg.kernel == [2, 2] && self.cfg.stride == [2, 2] && self.cfg.padding == [0, 0]
    }

    /// The input rows (or columns) `lo..hi` of window `o` along dimension `d`.
    #[inline]
    fn span(&self, d: usize, o: usize) -> (usize, usize) {
        let start = o * self.cfg.stride[d];
        let lo = start.saturating_sub(self.cfg.padding[d]);
        let hi = (start + self.cfg.kernel[d] - self.cfg.padding[d]).min(self.cfg.input_hw[d]);
        (lo, hi)
    }

    /// Calls `f(output index, argmax index, maximum)` for every output of one plane `x`
    /// (`H x W`), indices within the plane.
    #[inline]
    fn for_each_argmax<T: Scalar>(&self, x: &[T], mut f: impl FnMut(usize, usize, T)) {
        let w = self.cfg.input_hw[1];
        let [oh, ow] = self.out_hw;
        for p in 0..oh {
            let (r0, r1) = self.span(0, p);
            for q in 0..ow {
                let (c0, c1) = self.span(1, q);
                let mut best = r0 * w + c0;
                let mut max = x[best];
                for r in r0..r1 {
                    for (k, &v) in x[r * w + c0..r * w + c1].iter().enumerate() {
                        // `max` starts as the first element; `v > max` keeps the first of
                        // equal maxima; `v != v` is true exactly for NaN (the last NaN wins).
                        #[allow(clippy::eq_op)]
                        let nan = v != v;
                        if v > max || nan {
                            max = v;
                            best = r * w + c0 + k;
                        }
                    }
                }
                f(p * ow + q, best, max);
            }
        }
    }
}

/// The maximum of the 2 x 2 window at columns `c, c + 1` of rows `top` and `bottom`, and its
/// position 0..4 in scan order (top left, top right, bottom left, bottom right), by the same rule
/// as the general scan: first maximum, last NaN.
///
/// Without NaN, a tournament with strict comparisons (each pair keeps its first element on a
/// tie, the top pair wins a tie against the bottom one) picks the first maximum, as the scan
/// does, but with independent comparisons combined arithmetically: on real data each comparison
/// is a coin toss, and as branches they made the backward pass several times slower than the
/// forward one. A NaN (rare) takes the plain scan.
#[inline(always)]
fn argmax_2x2<T: Scalar>(top: &[T], bottom: &[T], c: usize) -> (usize, T) {
    let [a, b, d, e] = [top[c], top[c + 1], bottom[c], bottom[c + 1]];
    #[allow(clippy::eq_op)]
    let nan = (a != a) | (b != b) | (d != d) | (e != e);
    if nan {
        let (mut best, mut max) = (0, a);
        for (k, v) in [(1, b), (2, d), (3, e)] {
            #[allow(clippy::eq_op)]
            if v > max || v != v {
                (best, max) = (k, v);
            }
        }
        return (best, max);
    }
    let (up, low) = (usize::from(b > a), usize::from(e > d));
    let m_top = if b > a { b } else { a };
    let m_bottom = if e > d { e } else { d };
    let down = usize::from(m_bottom > m_top);
    let best = up * (1 - down) + (2 + low) * down;
    (best, if m_bottom > m_top { m_bottom } else { m_top })
}

impl<T: Scalar> Layer<T> for MaxPool2d {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn in_len(&self) -> usize {
        self.in_len
    }

    fn out_len(&self) -> usize {
        self.out_len
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("max_pool2d x", x.len(), n, self.in_len)?;
        check_batch("max_pool2d y", y.len(), n, self.out_len)?;
        let plane_in = self.cfg.input_hw[0] * self.cfg.input_hw[1];
        let plane_out = self.out_hw[0] * self.out_hw[1];
        let [w, ow] = [self.cfg.input_hw[1], self.out_hw[1]];
        for (xp, yp) in x.chunks_exact(plane_in).zip(y.chunks_exact_mut(plane_out)) {
            if self.is_2x2() {
                // The common case without the window arithmetic (several times faster).
                for (rows, yr) in xp.chunks_exact(2 * w).zip(yp.chunks_exact_mut(ow)) {
                    let (top, bottom) = rows.split_at(w);
                    for (q, v) in yr.iter_mut().enumerate() {
                        *v = argmax_2x2(top, bottom, 2 * q).1;
                    }
                }
            } else {
                self.for_each_argmax(xp, |o, _, v| yp[o] = v);
            }
        }
        Ok(())
    }

    fn backward(
        &mut self,
        x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("max_pool2d x", x.len(), n, self.in_len)?;
        check_batch("max_pool2d dy", dy.len(), n, self.out_len)?;
        let Some(dx) = dx else {
            return Ok(());
        };
        check_batch("max_pool2d dx", dx.len(), n, self.in_len)?;
        let w = self.cfg.input_hw[1];
        dx.fill(T::ZERO);
        let plane_in = self.cfg.input_hw[0] * self.cfg.input_hw[1];
        let plane_out = self.out_hw[0] * self.out_hw[1];
        let ow = self.out_hw[1];
        for ((xp, gp), dp) in x
            .chunks_exact(plane_in)
            .zip(dy.chunks_exact(plane_out))
            .zip(dx.chunks_exact_mut(plane_in))
        {
            if self.is_2x2() {
                // Windows do not overlap: one store per window, at the argmax's offset
                // `(k / 2) W + k % 2` within the window's two rows (computed, not branched on:
                // `k` is unpredictable).
                let rows = xp.chunks_exact(2 * w).zip(dp.chunks_exact_mut(2 * w));
                for ((xr, dr), gr) in rows.zip(gp.chunks_exact(ow)) {
                    let (top, bottom) = xr.split_at(w);
                    for (q, &g) in gr.iter().enumerate() {
                        let k = argmax_2x2(top, bottom, 2 * q).0;
                        dr[2 * q + (k & 1) + (k >> 1 & 1) * w] = g;
                    }
                }
            } else {
                self.for_each_argmax(xp, |o, k, _| dp[k] += gp[o]);
            }
        }
        Ok(())
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(self.clone()))
    }
}
