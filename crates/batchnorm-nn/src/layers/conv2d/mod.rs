//! Two-dimensional convolution (PyTorch's `Conv2d`: a cross-correlation) as matrix products.

mod lowering;

use batchnorm::Isa;
use lowering::{Geometry, Lowering};

use super::{
    check_batch, widen, window_output_hw, BatchNorm, Layer, Mode, Param, StateEntry, StateValue,
};
use crate::error::{NnError, Result};
use crate::fold::{fold_into_conv2d, FoldError};
use crate::indirect_gemm::{self, Rows};
use crate::init;
use crate::matmul::MatRef;
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
        let names = (
            "conv2d padded input (size + 2 x padding)",
            "conv2d kernel size",
        );
        window_output_hw(self.input_hw, self.kernel, self.stride, self.padding, names)
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

/// A 2-D convolution over samples `C x H x W` (channels first, NCHW batches), as PyTorch's
/// `Conv2d` with dilation 1 and one group:
///
/// `y[o, p, q] = b[o] + sum_{c, i, j} W[o, c, i, j] x[c, p SH + i - PH, q SW + j - PW]`,
///
/// with `x` zero outside the input. Seen through `X_col` (`(C KH KW) x (OH OW)`, row `(c, i,
/// j)` holding what tap `(c, i, j)` reads at each output position), a sample's output is
/// `Y = W X_col + b 1^T` with `W` as `O x (C KH KW)`. Backward, with `G = dL/dY` of a sample,
/// summed over the samples: `dL/dW = sum_samples G X_col^T`, `dL/db[o] = sum_samples
/// sum_{p,q} G[o, (p, q)]`, and `dL/dx = col2im(W^T G)`, where col2im (the adjoint of im2col)
/// adds each entry of `W^T G` onto the input element tap and position read.
///
/// `X_col` is never built: the sample is copied into a zero-bordered buffer, split into phase
/// planes at strides above 1, whose runs are the rows of `X_col` (the kernels of
/// `crate::indirect_gemm` read them in place; see `Lowering`). At stride 1 with a padding below
/// the kernel, `dL/dx` is itself a stride-1 convolution, of `G` padded by `K - 1 - P` with the
/// kernel flipped and transposed:
/// `dx[c, h, w] = sum_{o, i, j} W[o, c, KH-1-i, KW-1-j] G_pad[o, h + i, w + j]`; otherwise
/// `W^T G` is added onto the runs its rows were read from and the sum read back out of the
/// buffer. Against im2col and `matrixmultiply` per sample, whose im2col and packing copied
/// every tap of every sample twice per pass, the stride-1 runs made an epoch of
/// `bnlab cnn --arch resnet` 1.5-1.7x faster (45.3 to 26.0 s with fused BN, one thread), the
/// phase planes of the stride-2 layers 1.1-1.2x more.
///
/// Every workspace is allocated in the constructor; forward and backward allocate nothing.
/// Backward lowers each sample again rather than keeping the whole batch's.
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
    /// `X_col` of a sample, for the forward pass and the weight gradient.
    lowering: Lowering,
    /// `G` of a sample padded for `dL/dx` as a stride-1 convolution; `None`: `W^T G` added
    /// onto the taps' runs.
    dx_lowering: Option<Lowering>,
    /// `0, cols, 2 cols, ...`: the rows of `Y` and `G` in `work.wide` and `work.g_wide`.
    channel_starts: Vec<usize>,
    isa: Isa,
    work: Workspace<T>,
}

/// The per-sample buffers of [`Conv2d`].
#[derive(Debug, Clone)]
struct Workspace<T> {
    /// The lowering's source: the padded sample (in phase planes at strides above 1).
    src: Vec<T>,
    /// `W X_col` of one sample, `O x cols`.
    wide: Vec<T>,
    /// `G` of one sample on the product's columns, zero on the others (never written).
    g_wide: Vec<T>,
    /// `G` of one sample padded (`dx_lowering`'s source), or without `dx_lowering` the
    /// gradient with respect to `src`.
    g_src: Vec<T>,
    /// The flipped, transposed kernel `C x (O KH KW)` of `dx_lowering`.
    w_flip: Vec<T>,
    /// `dL/dx` of one sample on `dx_lowering`'s columns, or `W^T G` (`(C KH KW) x cols`).
    dx_wide: Vec<T>,
}

impl<T: Scalar> Workspace<T> {
    fn new(
        lowering: &Lowering,
        dx_lowering: Option<&Lowering>,
        g: &Geometry,
        o: usize,
    ) -> Result<Self> {
        let too_big = |sizes: Vec<usize>| NnError::TooLarge {
            what: "conv2d workspace",
            sizes,
        };
        let wide = o
            .checked_mul(lowering.cols)
            .ok_or_else(|| too_big(vec![o, lowering.cols]))?;
        let (g_src, w_flip, dx_wide) = match dx_lowering {
            Some(d) => (d.src_len, g.rows().checked_mul(o), g.c.checked_mul(d.cols)),
            None => (
                lowering.src_len,
                Some(0),
                g.rows().checked_mul(lowering.cols),
            ),
        };
        let w_flip = w_flip.ok_or_else(|| too_big(vec![g.rows(), o]))?;
        let dx_wide = dx_wide.ok_or_else(|| too_big(vec![g.rows(), lowering.cols]))?;
        Ok(Workspace {
            src: zeros(lowering.src_len)?,
            wide: zeros(wide)?,
            g_wide: zeros(wide)?,
            g_src: zeros(g_src)?,
            w_flip: zeros(w_flip)?,
            dx_wide: zeros(dx_wide)?,
        })
    }

    fn widen(&self) -> Workspace<f64> {
        Workspace {
            src: widen(&self.src),
            wide: widen(&self.wide),
            g_wide: widen(&self.g_wide),
            g_src: widen(&self.g_src),
            w_flip: widen(&self.w_flip),
            dx_wide: widen(&self.dx_wide),
        }
    }
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
        let [ph, pw] = cfg.padding;
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
        let geom = Geometry {
            c,
            h,
            w,
            kh,
            kw,
            sh: cfg.stride[0],
            sw: cfg.stride[1],
            ph,
            pw,
            oh,
            ow,
        };
        let lowering = Lowering::new(geom)?;
        let dx_lowering = geom.input_gradient(o).map(Lowering::new).transpose()?;
        let work = Workspace::new(&lowering, dx_lowering.as_ref(), &geom, o)?;
        let bias_len = if cfg.bias { o } else { 0 };
        Ok(Conv2d {
            weight: zeros(weight_len)?,
            bias: zeros(bias_len)?,
            weight_grad: zeros(weight_len)?,
            bias_grad: zeros(bias_len)?,
            cfg,
            geom,
            in_len,
            out_len,
            channel_starts: (0..o).map(|ch| ch * lowering.cols).collect(),
            lowering,
            dx_lowering,
            isa: Isa::detect(),
            work,
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

    /// `w_flip[c, (o, i, j)] = W[o, c, KH-1-i, KW-1-j]`: the kernel of `dL/dx` as a convolution.
    fn flip_weights(&mut self) {
        let (c_n, o_n) = (self.cfg.in_channels, self.cfg.out_channels);
        let taps = self.geom.kh * self.geom.kw;
        for c in 0..c_n {
            for o in 0..o_n {
                let kernel = &self.weight[(o * c_n + c) * taps..][..taps];
                let dst = &mut self.work.w_flip[(c * o_n + o) * taps..][..taps];
                for (d, &v) in dst.iter_mut().zip(kernel.iter().rev()) {
                    *d = v;
                }
            }
        }
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
        let l = &self.lowering;
        let w = MatRef::row_major(&self.weight, self.cfg.out_channels, self.geom.rows());
        for (xs, ys) in x
            .chunks_exact(self.in_len)
            .zip(y.chunks_exact_mut(self.out_len))
        {
            l.fill(xs, &mut self.work.src);
            // Y = W X_col, then + b 1^T on the output positions
            let x_col = Rows::new(&self.work.src, &l.starts, l.cols)?;
            indirect_gemm::product(self.isa, w, x_col, &mut self.work.wide, l.cols)?;
            l.scatter(&self.work.wide, &self.bias, ys);
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
        let npos = self.geom.oh * self.geom.ow;
        self.weight_grad.fill(T::ZERO);
        self.bias_grad.fill(T::ZERO);
        if dx.is_some() && self.dx_lowering.is_some() {
            self.flip_weights();
        }
        let rows = self.fan_in();
        let (l, work) = (&self.lowering, &mut self.work);
        let w = MatRef::row_major(&self.weight, self.cfg.out_channels, rows);
        for (s, (xs, gs)) in x
            .chunks_exact(self.in_len)
            .zip(dy.chunks_exact(self.out_len))
            .enumerate()
        {
            l.fill(xs, &mut work.src);
            l.gather(gs, &mut work.g_wide);
            let g = Rows::new(&work.g_wide, &self.channel_starts, l.cols)?;
            // dW += G X_col^T
            let x_col = Rows::new(&work.src, &l.starts, l.cols)?;
            indirect_gemm::add_dots(self.isa, g, x_col, &mut self.weight_grad, rows)?;
            for (acc, row) in self.bias_grad.iter_mut().zip(gs.chunks_exact(npos)) {
                let mut sum = T::ZERO;
                for &v in row {
                    sum += v;
                }
                *acc += sum;
            }
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            let dxs = &mut dx[s * self.in_len..(s + 1) * self.in_len];
            match &self.dx_lowering {
                Some(dl) => {
                    // dx = the flipped kernel over G padded
                    dl.fill(gs, &mut work.g_src);
                    let w_flip = MatRef::row_major(&work.w_flip, self.geom.c, dl.starts.len());
                    let g_pad = Rows::new(&work.g_src, &dl.starts, dl.cols)?;
                    indirect_gemm::product(self.isa, w_flip, g_pad, &mut work.dx_wide, dl.cols)?;
                    dl.scatter(&work.dx_wide, &[], dxs);
                }
                None => {
                    // dX_col = W^T G added onto the runs the taps read, then read back out
                    indirect_gemm::product(self.isa, w.t(), g, &mut work.dx_wide, l.cols)?;
                    work.g_src.fill(T::ZERO);
                    l.add_taps(&work.dx_wide, &mut work.g_src);
                    l.unfill(&work.g_src, dxs);
                }
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
            lowering: self.lowering.clone(),
            dx_lowering: self.dx_lowering.clone(),
            channel_starts: self.channel_starts.clone(),
            isa: self.isa,
            work: self.work.widen(),
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

    /// `y`, `dW`, `db` and `dx` by the definition, each with the sum of the absolute values of
    /// its terms (for the rounding bound) and their number.
    struct Direct {
        y: Vec<(f64, f64)>,
        dw: Vec<(f64, f64)>,
        db: Vec<(f64, f64)>,
        dx: Vec<(f64, f64)>,
    }

    fn direct(conv: &Conv2d<f64>, x: &[f64], g: &[f64], n: usize) -> Direct {
        let Geometry {
            c: cn,
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
        } = conv.geom;
        let on = conv.cfg.out_channels;
        let add = |acc: &mut (f64, f64), v: f64| {
            acc.0 += v;
            acc.1 += v.abs();
        };
        let mut d = Direct {
            y: vec![(0.0, 0.0); n * on * oh * ow],
            dw: vec![(0.0, 0.0); conv.weight.len()],
            db: vec![(0.0, 0.0); conv.bias.len()],
            dx: vec![(0.0, 0.0); n * cn * h * w],
        };
        for s in 0..n {
            for o in 0..on {
                for p in 0..oh {
                    for q in 0..ow {
                        let yi = ((s * on + o) * oh + p) * ow + q;
                        add(&mut d.y[yi], conv.bias.get(o).copied().unwrap_or(0.0));
                        if let Some(b) = d.db.get_mut(o) {
                            add(b, g[yi]);
                        }
                        for c in 0..cn {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let (ih, iw) = (p * sh + i, q * sw + j);
                                    if ih < ph || iw < pw || ih - ph >= h || iw - pw >= w {
                                        continue;
                                    }
                                    let xi = ((s * cn + c) * h + ih - ph) * w + iw - pw;
                                    let wi = ((o * cn + c) * kh + i) * kw + j;
                                    add(&mut d.y[yi], conv.weight[wi] * x[xi]);
                                    add(&mut d.dw[wi], g[yi] * x[xi]);
                                    add(&mut d.dx[xi], g[yi] * conv.weight[wi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        d
    }

    /// Within `terms u sum |terms|` (plus two roundings): any order of summation, fused or not.
    fn assert_close<T: Scalar>(what: &str, got: &[T], want: &[(f64, f64)], terms: usize, u: f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (k, (&g, &(v, abs))) in got.iter().zip(want).enumerate() {
            let bound = (terms as f64 + 2.0) * u * abs;
            let g = g.to_f64();
            assert!(
                (g - v).abs() <= bound,
                "{what}[{k}]: {g} vs {v} (bound {bound:e})"
            );
        }
    }

    /// Forward and backward against the definition on every instruction-set path, in `T`,
    /// for the residual net's shapes (3x3 padding 1 at stride 1 and 2, 1x1 at stride 2) and the
    /// general case (a padding of the kernel size, whose input gradient is added onto the taps'
    /// runs as at stride 2).
    fn check<T: Scalar>(u: f64) {
        let mut rng = Rng::new(5);
        let configs = [
            Conv2dConfig {
                padding: [1, 1],
                ..Conv2dConfig::new(3, 8, 3, [9, 7])
            },
            Conv2dConfig {
                padding: [1, 1],
                stride: [2, 2],
                bias: false,
                ..Conv2dConfig::new(4, 5, 3, [7, 8])
            },
            Conv2dConfig {
                stride: [2, 2],
                ..Conv2dConfig::new(8, 16, 1, [7, 7])
            },
            Conv2dConfig {
                padding: [2, 3],
                kernel: [2, 3],
                ..Conv2dConfig::new(2, 3, 1, [4, 5])
            },
            // A stride above the kernel height: some input rows are read by no tap.
            Conv2dConfig {
                padding: [1, 0],
                kernel: [2, 3],
                stride: [3, 2],
                ..Conv2dConfig::new(3, 4, 1, [8, 9])
            },
        ];
        for cfg in configs {
            for isa in Isa::available() {
                let n = 3;
                let mut conv = Conv2d::<T>::new(cfg).unwrap();
                conv.isa = isa;
                let draw = |len: usize, rng: &mut Rng| -> Vec<T> {
                    (0..len).map(|_| T::from_f64(rng.normal())).collect()
                };
                conv.weight = draw(conv.weight.len(), &mut rng);
                conv.bias = draw(conv.bias.len(), &mut rng);
                let x = draw(n * conv.in_len, &mut rng);
                let g = draw(n * conv.out_len, &mut rng);
                let mut y = vec![T::ZERO; g.len()];
                conv.forward(&x, n, Mode::Train, &mut y).unwrap();
                let mut dx = vec![T::ZERO; x.len()];
                conv.backward(&x, &y, &g, n, Some(&mut dx)).unwrap();
                let wide = conv.to_f64().unwrap();
                let any: Box<dyn std::any::Any> = wide;
                let exact = any.downcast::<Conv2d<f64>>().unwrap();
                let d = direct(&exact, &widen(&x), &widen(&g), n);
                let [kh, kw] = cfg.kernel;
                let positions = n * conv.geom.oh * conv.geom.ow;
                let taps = cfg.in_channels * kh * kw;
                let ctx = format!("{cfg:?} on {isa}");
                assert_close(&format!("y {ctx}"), &y, &d.y, taps + 1, u);
                assert_close(&format!("dW {ctx}"), &conv.weight_grad, &d.dw, positions, u);
                assert_close(&format!("db {ctx}"), &conv.bias_grad, &d.db, positions, u);
                let dx_terms = cfg.out_channels * kh * kw;
                assert_close(&format!("dx {ctx}"), &dx, &d.dx, dx_terms, u);
            }
        }
    }

    #[test]
    fn forward_and_gradients_match_the_definition_on_every_path() {
        check::<f32>(f64::from(f32::EPSILON) / 2.0);
        check::<f64>(f64::EPSILON / 2.0);
    }
}
