//! The backward kernels: per-channel gradient sums, then the input gradient.

use std::ops::Range;

use crate::element::Element;
use crate::layout::Geometry;
use crate::par::for_each_chunk;
use crate::plan::{channels_per_item, rows_per_block, Exec};
use crate::simd::multiversion;
use crate::tuning::LANES;

/// `sum(dy)` and `sum(dy * (x - mean))` of one channel or piece, in `f64`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GradSums {
    pub dy: f64,
    pub dy_xmu: f64,
}

multiversion! {
    /// The sums over one run of a single channel.
    fn run_grad_sums<T>(x: &[T], dy: &[T], mean: f64) -> GradSums {
        let mut s = [0.0f64; LANES];
        let mut sx = [0.0f64; LANES];
        let xc = x.chunks_exact(LANES);
        let dc = dy.chunks_exact(LANES);
        let (xt, dt) = (xc.remainder(), dc.remainder());
        for (xv, dv) in xc.zip(dc) {
            for l in 0..LANES {
                let d = dv[l].to_f64();
                s[l] += d;
                sx[l] += d * (xv[l].to_f64() - mean);
            }
        }
        for (l, (&xv, &dv)) in xt.iter().zip(dt).enumerate() {
            let d = dv.to_f64();
            s[l] += d;
            sx[l] += d * (xv.to_f64() - mean);
        }
        GradSums { dy: s.iter().sum(), dy_xmu: sx.iter().sum() }
    }
}

multiversion! {
    /// The per-channel sums over a block of rows, vectorised along the channels.
    fn block_grad_sums<T>(x: &[T], dy: &[T], mean: &[f64], out: &mut [GradSums]) {
        let c = mean.len();
        let mut s = vec![0.0f64; c];
        let mut sx = vec![0.0f64; c];
        for (xr, dr) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
            for i in 0..c {
                let d = dr[i].to_f64();
                s[i] += d;
                sx[i] += d * (xr[i].to_f64() - mean[i]);
            }
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = GradSums { dy: s[i], dy_xmu: sx[i] };
        }
    }
}

/// The gradient sums of the channels in `range` (all channels for channels-last input), written
/// to `out[range]`. `parts` is scratch for the per-piece partial sums.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grad_sums<T: Element>(
    x: &[T],
    dy: &[T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    mean: &[f64],
    parts: &mut Vec<GradSums>,
    out: &mut [GradSums],
) {
    let (c, g) = (geo.channels, range.len());
    let pieces = if geo.is_rows() {
        let rows = rows_per_block(c);
        parts.resize(geo.outer.div_ceil(rows) * c, GradSums::default());
        for_each_chunk(exec.par, parts, c, |b, p| {
            let start = b * rows * c;
            let end = (start + rows * c).min(x.len());
            block_grad_sums(exec.isa, &x[start..end], &dy[start..end], mean, p);
        });
        geo.outer.div_ceil(rows)
    } else {
        let (inner, sub) = (geo.inner, channels_per_item(geo.inner));
        parts.resize(geo.outer * g, GradSums::default());
        for_each_chunk(exec.par, parts, g, |o, p| {
            for_each_chunk(exec.par, p, sub, |k, pk| {
                for (j, s) in pk.iter_mut().enumerate() {
                    let ch = range.start + k * sub + j;
                    let r = (o * c + ch) * inner..(o * c + ch + 1) * inner;
                    *s = run_grad_sums(exec.isa, &x[r.clone()], &dy[r], mean[ch]);
                }
            });
        });
        geo.outer
    };
    for (j, s) in out[range].iter_mut().enumerate() {
        *s = (0..pieces).fold(GradSums::default(), |acc, p| GradSums {
            dy: acc.dy + parts[p * g + j].dy,
            dy_xmu: acc.dy_xmu + parts[p * g + j].dy_xmu,
        });
    }
}

/// Per-channel coefficients of `dx = k * ((dy - a) - (x - mean) * b)`, evaluated in `f64`.
///
/// After batch statistics `k = gamma * invstd`, `a = sum(dy) / m`,
/// `b = sum(dy * xhat) * invstd / m`; after running statistics (frozen BN) `a = b = 0`.
/// The three terms nearly cancel when m is small (for m = 2, dx is about `dy * eps / var`), so
/// they are combined in `f64` and rounded once.
#[derive(Debug, Clone, Default)]
pub(crate) struct GradMaps {
    pub mean: Vec<f64>,
    pub k: Vec<f64>,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

impl GradMaps {
    pub fn resize(&mut self, channels: usize) {
        self.mean.resize(channels, 0.0);
        self.k.resize(channels, 0.0);
        self.a.resize(channels, 0.0);
        self.b.resize(channels, 0.0);
    }
}

/// One channel's entry of [`GradMaps`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct GradMap {
    mean: f64,
    k: f64,
    a: f64,
    b: f64,
}

impl GradMaps {
    fn channel(&self, c: usize) -> GradMap {
        GradMap {
            mean: self.mean[c],
            k: self.k[c],
            a: self.a[c],
            b: self.b[c],
        }
    }
}

multiversion! {
    /// dx over one run of a single channel.
    fn run_input_grad<T>(x: &[T], dy: &[T], dx: &mut [T], map: GradMap) {
        let GradMap { mean, k, a, b } = map;
        for ((g, &xv), &d) in dx.iter_mut().zip(x).zip(dy) {
            *g = T::from_f64(k * ((d.to_f64() - a) - (xv.to_f64() - mean) * b));
        }
    }
}

multiversion! {
    /// dx over rows of all channels, vectorised along the channels.
    fn rows_input_grad<T>(x: &[T], dy: &[T], dx: &mut [T], maps: &GradMaps) {
        let c = maps.mean.len();
        let (mean, k, a, b) = (&maps.mean[..c], &maps.k[..c], &maps.a[..c], &maps.b[..c]);
        let rows = x.chunks_exact(c).zip(dy.chunks_exact(c)).zip(dx.chunks_exact_mut(c));
        for ((xr, dr), gr) in rows {
            for i in 0..c {
                let xmu = xr[i].to_f64() - mean[i];
                gr[i] = T::from_f64(k[i] * ((dr[i].to_f64() - a[i]) - xmu * b[i]));
            }
        }
    }
}

/// Writes the channels in `range` (all channels for channels-last input) of `dx`.
pub(crate) fn input_grad<T: Element>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    maps: &GradMaps,
) {
    let c = geo.channels;
    if geo.is_rows() {
        let rows = rows_per_block(c);
        for_each_chunk(exec.par, dx, rows * c, |b, gb| {
            let r = b * rows * c..b * rows * c + gb.len();
            rows_input_grad(exec.isa, &x[r.clone()], &dy[r], gb, maps);
        });
    } else {
        let (inner, sub) = (geo.inner, channels_per_item(geo.inner));
        for_each_chunk(exec.par, dx, c * inner, |o, go| {
            let group = &mut go[range.start * inner..range.end * inner];
            for_each_chunk(exec.par, group, sub * inner, |kk, gk| {
                for (j, gr) in gk.chunks_mut(inner).enumerate() {
                    let ch = range.start + kk * sub + j;
                    let r = (o * c + ch) * inner..(o * c + ch + 1) * inner;
                    run_input_grad(exec.isa, &x[r.clone()], &dy[r], gr, maps.channel(ch));
                }
            });
        });
    }
}
