//! The backward kernels: per-channel gradient sums, then the input gradient.

use crate::element::Element;
use crate::layout::Geometry;
use crate::tuning::LANES;

/// Per-channel `sum(dy)` and `sum(dy * (x - mean))`, accumulated in `f64`.
pub(crate) fn grad_sums<T: Element>(
    x: &[T],
    dy: &[T],
    geo: Geometry,
    mean: &[f64],
    sum_dy: &mut [f64],
    sum_dy_xmu: &mut [f64],
) {
    sum_dy.fill(0.0);
    sum_dy_xmu.fill(0.0);
    if geo.is_rows() {
        let c = geo.channels;
        for (xr, dr) in x.chunks_exact(c).zip(dy.chunks_exact(c)) {
            for i in 0..c {
                let d = dr[i].to_f64();
                sum_dy[i] += d;
                sum_dy_xmu[i] += d * (xr[i].to_f64() - mean[i]);
            }
        }
    } else {
        let runs = x.chunks_exact(geo.inner).zip(dy.chunks_exact(geo.inner));
        for (r, (xr, dr)) in runs.enumerate() {
            let c = r % geo.channels;
            let (s, sx) = run_grad_sums(xr, dr, mean[c]);
            sum_dy[c] += s;
            sum_dy_xmu[c] += sx;
        }
    }
}

fn run_grad_sums<T: Element>(x: &[T], dy: &[T], mean: f64) -> (f64, f64) {
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
    (s.iter().sum(), sx.iter().sum())
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

/// Writes the input gradient `dx` from the per-channel maps.
pub(crate) fn input_grad<T: Element>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    geo: Geometry,
    maps: &GradMaps,
) {
    if geo.is_rows() {
        let c = geo.channels;
        let rows = x
            .chunks_exact(c)
            .zip(dy.chunks_exact(c))
            .zip(dx.chunks_exact_mut(c));
        for ((xr, dr), gr) in rows {
            for i in 0..c {
                let xmu = xr[i].to_f64() - maps.mean[i];
                gr[i] = T::from_f64(maps.k[i] * ((dr[i].to_f64() - maps.a[i]) - xmu * maps.b[i]));
            }
        }
    } else {
        let n = geo.inner;
        let runs = x
            .chunks_exact(n)
            .zip(dy.chunks_exact(n))
            .zip(dx.chunks_exact_mut(n));
        for (r, ((xr, dr), gr)) in runs.enumerate() {
            let c = r % geo.channels;
            let (mean, k, a, b) = (maps.mean[c], maps.k[c], maps.a[c], maps.b[c]);
            for ((g, &xv), &d) in gr.iter_mut().zip(xr).zip(dr) {
                *g = T::from_f64(k * ((d.to_f64() - a) - (xv.to_f64() - mean) * b));
            }
        }
    }
}
