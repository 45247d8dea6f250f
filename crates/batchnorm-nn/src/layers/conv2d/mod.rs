//! Two-dimensional convolution (PyTorch's `Conv2d`: a cross-correlation) by im2col and GEMM.

use super::{check_batch, widen, BatchNorm, Layer, Mode, Param, StateEntry, StateValue};
use crate::error::{NnError, Result};
use crate::fold::{fold_into_conv2d, FoldError};
use crate::init;
use crate::matmul::{gemm, MatRef};
use crate::rng::Rng;
use crate::scalar::Scalar;

/// The shape of a [`Conv2d`]; [`Conv2dConfig::new`] gives PyTorch's defaults for the rest.
///
/// ```
/// use batchnorm_nn::layers::Conv2dConfig;
/// // PyTorch's `Conv2d(1, 8, 3, padding=1)` on 28 x 28 images.
/// let cfg = Conv2dConfig { padding: [1, 1], ..Conv2dConfig::new(1, 8, 3, [28, 28]) };
/// assert_eq!(cfg.output_hw()?, [28, 28]);
/// # Ok::<(), batchnorm_nn::NnError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dConfig {
    /// Input channels `C`.
    pub in_channels: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// Input height and width `[H, W]` (the layer's per-sample length is `C * H * W`).
    pub input_hw: [usize; 2],
    /// Kernel height and width `[KH, KW]`.
    pub kernel: [usize; 2],
    /// Step between neighbouring windows `[SH, SW]`. Default `[1, 1]`.
    pub stride: [usize; 2],
    /// Implicit zeros added on each side `[PH, PW]`. Default `[0, 0]`.
    pub padding: [usize; 2],
    /// Whether the layer has a per-output-channel bias. Default `true`.
    pub bias: bool,
}

impl Conv2dConfig {
    /// A square `kernel x kernel` convolution from `in_channels` to `out_channels` on inputs of
    /// `input_hw`, stride 1, no padding, with bias (PyTorch's defaults).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        input_hw: [usize; 2],
    ) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            input_hw,
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            bias: true,
        }
    }

    /// Output height and width, `OH = (H + 2 PH - KH) / SH + 1` (rounded down), likewise `OW`.
    ///
    /// # Errors
    /// [`NnError::Empty`] for a zero size, kernel or stride; [`NnError::InvalidConfig`] when the
    /// kernel is larger than the padded input; [`NnError::TooLarge`] on overflow.
    pub fn output_hw(&self) -> Result<[usize; 2]> {
        let sizes = [
            self.in_channels,
            self.out_channels,
            self.input_hw[0],
            self.input_hw[1],
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
        ];
        if sizes.contains(&0) {
            return Err(NnError::Empty {
                what: "conv2d channels, input size, kernel or stride",
            });
        }
        let mut out = [0; 2];
        for (d, out_d) in out.iter_mut().enumerate() {
            let padded = self.padding[d]
                .checked_mul(2)
                .and_then(|p| p.checked_add(self.input_hw[d]))
                .ok_or(NnError::TooLarge {
                    what: "conv2d padded input (size + 2 x padding)",
                    sizes: vec![self.input_hw[d], self.padding[d]],
                })?;
            if self.kernel[d] > padded {
                return Err(NnError::InvalidConfig {
                    what: "conv2d kernel size",
                    value: self.kernel[d] as f64,
                    why: "larger than the padded input",
                });
            }
            *out_d = (padded - self.kernel[d]) / self.stride[d] + 1;
        }
        Ok(out)
    }
}

/// `len` zeros, or an error if the memory cannot be had (never an abort on a huge request).
fn zeros<T: Scalar>(len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| NnError::TooLarge {
        what: "conv2d buffer (allocation failed)",
        sizes: vec![len],
    })?;
    v.resize(len, T::ZERO);
    Ok(v)
}

/// The resolved geometry of one sample: every size the loops need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
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
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Unfolds one sample `x` (`C x H x W`) into `col` (`(C KH KW) x (OH OW)`, row-major):
    /// `col[(c, i, j), (p, q)] = x[c, p SH + i - PH, q SW + j - PW]`, zero outside the input.
    fn im2col<T: Scalar>(&self, x: &[T], col: &mut [T]) {
        let g = *self;
        let npos = g.positions();
        for c in 0..g.c {
            let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for i in 0..g.kh {
                let (rlo, rhi) = valid_outputs(i, g.sh, g.ph, g.h, g.oh);
                for j in 0..g.kw {
                    let (clo, chi) = valid_outputs(j, g.sw, g.pw, g.w, g.ow);
                    let row = (c * g.kh + i) * g.kw + j;
                    let dst = &mut col[row * npos..(row + 1) * npos];
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
                        let src = &plane[start..];
                        if g.sw == 1 {
                            d[clo..chi].copy_from_slice(&src[..chi - clo]);
                        } else {
                            for (v, s) in d[clo..chi].iter_mut().zip(src.iter().step_by(g.sw)) {
                                *v = *s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Geometry::im2col`]: adds every entry of `col` back onto the input
    /// element it was copied from, `dx[c, p SH + i - PH, q SW + j - PW] += col[(c, i, j), (p, q)]`
    /// (entries that came from padding are dropped). `dx` must be zeroed by the caller.
    fn col2im_add<T: Scalar>(&self, col: &[T], dx: &mut [T]) {
        let g = *self;
        let npos = g.positions();
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
                    let src = &col[row * npos..(row + 1) * npos];
                    for p in rlo..rhi {
                        let s = &src[p * g.ow + clo..p * g.ow + chi];
                        let ih = p * g.sh + i - g.ph;
                        let start = ih * g.w + clo * g.sw + j - g.pw;
                        let d = &mut plane[start..];
                        if g.sw == 1 {
                            for (v, &a) in d.iter_mut().zip(s) {
                                *v += a;
                            }
                        } else {
                            for (v, &a) in d.iter_mut().step_by(g.sw).zip(s) {
                                *v += a;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A 2-D convolution over samples `C x H x W` (channels first, NCHW batches), as PyTorch's
/// `Conv2d` with dilation 1 and one group:
///
/// `y[o, p, q] = b[o] + sum_{c, i, j} W[o, c, i, j] x[c, p SH + i - PH, q SW + j - PW]`,
///
/// with `x` zero outside the input. Each sample is unfolded by im2col into `X_col`
/// (`(C KH KW) x (OH OW)`), so that `Y = W X_col + b 1^T` is one GEMM with `W` seen as
/// `O x (C KH KW)`, and `Y` (`O x (OH OW)`) is already the sample's output in NCHW order.
///
/// Backward, with `G = dL/dY` of a sample (`O x (OH OW)`), summed over the samples:
/// `dL/dW = sum_samples G X_col^T`, `dL/db[o] = sum_samples sum_{p,q} G[o, (p, q)]`, and
/// `dL/dx = col2im(W^T G)`, where col2im (the adjoint of im2col) adds each entry of the
/// `(C KH KW) x (OH OW)` matrix `W^T G` onto the input element im2col copied it from.
///
/// The one workspace, a single `X_col` (`C KH KW OH OW` values), is allocated in the
/// constructor; forward and backward allocate nothing. Backward unfolds each sample again
/// rather than keeping the whole batch's `X_col`, then reuses the buffer for `W^T G`.
#[derive(Debug, Clone)]
pub struct Conv2d<T> {
    /// Weights, `O x C x KH x KW`, row-major (PyTorch's memory order).
    pub weight: Vec<T>,
    /// Biases, `O`; empty when the configuration has `bias = false`.
    pub bias: Vec<T>,
    /// Gradient of the loss with respect to `weight`.
    pub weight_grad: Vec<T>,
    /// Gradient of the loss with respect to `bias`.
    pub bias_grad: Vec<T>,
    cfg: Conv2dConfig,
    geom: Geometry,
    in_len: usize,
    out_len: usize,
    /// `X_col` of one sample, then `W^T G` in backward.
    col: Vec<T>,
}

impl<T: Scalar> Conv2d<T> {
    /// A convolution with zero weights and biases.
    ///
    /// # Errors
    /// As [`Conv2dConfig::output_hw`], and [`NnError::TooLarge`] when a size overflows.
    pub fn new(cfg: Conv2dConfig) -> Result<Self> {
        let [oh, ow] = cfg.output_hw()?;
        let too_big = || NnError::TooLarge {
            what: "conv2d (channels, input and kernel sizes)",
            sizes: vec![
                cfg.in_channels,
                cfg.out_channels,
                cfg.input_hw[0],
                cfg.input_hw[1],
                cfg.kernel[0],
                cfg.kernel[1],
            ],
        };
        let mul = |a: usize, b: usize| a.checked_mul(b).ok_or_else(too_big);
        let c = cfg.in_channels;
        let o = cfg.out_channels;
        let [h, w] = cfg.input_hw;
        let [kh, kw] = cfg.kernel;
        let rows = mul(mul(c, kh)?, kw)?;
        let weight_len = mul(o, rows)?;
        let positions = mul(oh, ow)?;
        let col_len = mul(rows, positions)?;
        let in_len = mul(mul(c, h)?, w)?;
        let out_len = mul(o, positions)?;
        // Element counts stay far from isize::MAX bytes, so every index computed later fits.
        if [col_len, in_len, out_len, weight_len]
            .iter()
            .any(|&v| v > isize::MAX as usize / 16)
        {
            return Err(too_big());
        }
        let bias_len = if cfg.bias { o } else { 0 };
        Ok(Conv2d {
            weight: zeros(weight_len)?,
            bias: zeros(bias_len)?,
            weight_grad: zeros(weight_len)?,
            bias_grad: zeros(bias_len)?,
            cfg,
            geom: Geometry {
                c,
                h,
                w,
                kh,
                kw,
                sh: cfg.stride[0],
                sw: cfg.stride[1],
                ph: cfg.padding[0],
                pw: cfg.padding[1],
                oh,
                ow,
            },
            in_len,
            out_len,
            col: zeros(col_len)?,
        })
    }

    /// Weights from N(0, `std`^2) drawn from `rng` in memory order, zero biases.
    ///
    /// # Errors
    /// As [`Conv2d::new`], and [`NnError::InvalidConfig`] for a negative or non-finite `std`.
    pub fn gaussian(cfg: Conv2dConfig, std: f64, rng: &mut Rng) -> Result<Self> {
        let mut l = Self::new(cfg)?;
        init::gaussian(&mut l.weight, std, rng)?;
        Ok(l)
    }

    /// The configuration.
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    /// Output height and width `[OH, OW]`.
    pub fn output_hw(&self) -> [usize; 2] {
        [self.geom.oh, self.geom.ow]
    }

    /// `C KH KW`: the length of one output channel's weights.
    fn fan_in(&self) -> usize {
        self.geom.rows()
    }
}

impl<T: Scalar> Layer<T> for Conv2d<T> {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn in_len(&self) -> usize {
        self.in_len
    }

    fn out_len(&self) -> usize {
        self.out_len
    }

    fn forward(&mut self, x: &[T], n: usize, _mode: Mode, y: &mut [T]) -> Result<()> {
        check_batch("conv2d x", x.len(), n, self.in_len)?;
        check_batch("conv2d y", y.len(), n, self.out_len)?;
        let (rows, npos) = (self.fan_in(), self.geom.positions());
        let w = MatRef::row_major(&self.weight, self.cfg.out_channels, rows);
        let beta = if self.bias.is_empty() {
            T::ZERO
        } else {
            T::ONE
        };
        for (xs, ys) in x
            .chunks_exact(self.in_len)
            .zip(y.chunks_exact_mut(self.out_len))
        {
            self.geom.im2col(xs, &mut self.col);
            for (row, &b) in ys.chunks_exact_mut(npos).zip(&self.bias) {
                row.fill(b);
            }
            // Y = W X_col (+ b 1^T already in Y)
            gemm(
                T::ONE,
                w,
                MatRef::row_major(&self.col, rows, npos),
                beta,
                ys,
            )?;
        }
        Ok(())
    }

    fn backward(
        &mut self,
        x: &[T],
        _y: &[T],
        dy: &[T],
        n: usize,
        mut dx: Option<&mut [T]>,
    ) -> Result<()> {
        check_batch("conv2d x", x.len(), n, self.in_len)?;
        check_batch("conv2d dy", dy.len(), n, self.out_len)?;
        if let Some(dx) = dx.as_deref() {
            check_batch("conv2d dx", dx.len(), n, self.in_len)?;
        }
        let (rows, npos, o) = (self.fan_in(), self.geom.positions(), self.cfg.out_channels);
        self.weight_grad.fill(T::ZERO);
        self.bias_grad.fill(T::ZERO);
        for (s, (xs, gs)) in x
            .chunks_exact(self.in_len)
            .zip(dy.chunks_exact(self.out_len))
            .enumerate()
        {
            let g = MatRef::row_major(gs, o, npos);
            self.geom.im2col(xs, &mut self.col);
            // dW += G X_col^T
            gemm(
                T::ONE,
                g,
                MatRef::row_major(&self.col, rows, npos).t(),
                T::ONE,
                &mut self.weight_grad,
            )?;
            for (acc, row) in self.bias_grad.iter_mut().zip(gs.chunks_exact(npos)) {
                let mut sum = T::ZERO;
                for &v in row {
                    sum += v;
                }
                *acc += sum;
            }
            if let Some(dx) = dx.as_deref_mut() {
                // dX_col = W^T G, then dx = col2im(dX_col)
                let w = MatRef::row_major(&self.weight, o, rows);
                gemm(T::ONE, w.t(), g, T::ZERO, &mut self.col)?;
                let dxs = &mut dx[s * self.in_len..(s + 1) * self.in_len];
                dxs.fill(T::ZERO);
                self.geom.col2im_add(&self.col, dxs);
            }
        }
        Ok(())
    }

    fn visit_state(&mut self, f: &mut dyn FnMut(StateEntry<'_, T>)) {
        let cfg = self.cfg;
        let [kh, kw] = cfg.kernel;
        f(StateEntry {
            name: "weight",
            shape: vec![cfg.out_channels, cfg.in_channels, kh, kw],
            value: StateValue::Float(&mut self.weight),
        });
        if cfg.bias {
            f(StateEntry {
                name: "bias",
                shape: vec![cfg.out_channels],
                value: StateValue::Float(&mut self.bias),
            });
        }
    }

    fn boxed_clone(&self) -> Option<Box<dyn Layer<T>>> {
        Some(Box::new(self.clone()))
    }

    fn to_f64(&self) -> Option<Box<dyn Layer<f64>>> {
        Some(Box::new(Conv2d {
            weight: widen(&self.weight),
            bias: widen(&self.bias),
            weight_grad: widen(&self.weight_grad),
            bias_grad: widen(&self.bias_grad),
            cfg: self.cfg,
            geom: self.geom,
            in_len: self.in_len,
            out_len: self.out_len,
            col: widen(&self.col),
        }))
    }

    fn fold_batch_norm(
        &self,
        bn: &BatchNorm<T>,
    ) -> Option<std::result::Result<Box<dyn Layer<T>>, FoldError>> {
        Some(fold_into_conv2d(self, bn).map(|c| Box::new(c) as Box<dyn Layer<T>>))
    }

    fn visit_params(&mut self, f: &mut dyn FnMut(Param<'_, T>)) {
        f(Param {
            name: "weight",
            value: &mut self.weight,
            grad: &mut self.weight_grad,
        });
        if !self.bias.is_empty() {
            f(Param {
                name: "bias",
                value: &mut self.bias,
                grad: &mut self.bias_grad,
            });
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
}
