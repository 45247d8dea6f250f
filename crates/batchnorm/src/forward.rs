//! The normalising pass: one affine map per channel, applied to every element.

use std::ops::Range;

use crate::element::Element;
use crate::layout::Geometry;
use crate::par::for_each_chunk;
use crate::plan::{channels_per_item, rows_per_block, widen, Exec};
use crate::simd::multiversion;
use crate::stream::write_out;

/// Per-channel coefficients of `y = (x - mean) * scale + shift`, evaluated in `f64` and rounded
/// once to the element type.
///
/// `x - mean` in `f64` is exact for `f32` input near the mean, so a large offset costs no
/// precision, and no intermediate rounding can cancel against `shift`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelMaps {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

impl ChannelMaps {
    pub fn resize(&mut self, channels: usize) {
        self.mean.resize(channels, 0.0);
        self.scale.resize(channels, 0.0);
        self.shift.resize(channels, 0.0);
    }
}

multiversion! {
    /// Consecutive runs of `inner` values, run `j` belonging to channel `first + j`.
    fn normalize_runs<T>(x: &[T], y: &mut [T], inner: usize, first: usize, maps: &ChannelMaps) {
        for (j, (xr, yr)) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)).enumerate() {
            let ch = first + j;
            let (mean, scale, shift) = (maps.mean[ch], maps.scale[ch], maps.shift[ch]);
            for (yv, &xv) in yr.iter_mut().zip(xr) {
                *yv = T::from_f64((xv.to_f64() - mean) * scale + shift);
            }
        }
    }
}

multiversion! {
    /// Rows of `channels` channels, vectorised along widened rows: `mean`, `scale` and `shift`
    /// are the per-channel maps repeated over one widened row (see [`widen`]).
    fn normalize_rows<T>(
        x: &[T],
        y: &mut [T],
        channels: usize,
        mean: &[f64],
        scale: &[f64],
        shift: &[f64],
    ) {
        let row = |xr: &[T], yr: &mut [T]| {
            let maps = mean.iter().zip(scale).zip(shift);
            for ((yv, &xv), ((&m, &s), &t)) in yr.iter_mut().zip(xr).zip(maps) {
                *yv = T::from_f64((xv.to_f64() - m) * s + t);
            }
        };
        let split = x.len() / mean.len() * mean.len();
        let (xw, xt) = x.split_at(split);
        let (yw, yt) = y.split_at_mut(split);
        for (xr, yr) in xw.chunks_exact(mean.len()).zip(yw.chunks_exact_mut(mean.len())) {
            row(xr, yr);
        }
        for (xr, yr) in xt.chunks_exact(channels).zip(yt.chunks_exact_mut(channels)) {
            row(xr, yr);
        }
    }
}

/// Applies the maps of the channels in `range` (all channels for channels-last input) to `x`,
/// writing those channels of `y`.
pub(crate) fn normalize<T: Element>(
    x: &[T],
    y: &mut [T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    maps: &ChannelMaps,
    wide: &mut ChannelMaps,
) {
    let c = geo.channels;
    if geo.is_rows() {
        let rows = rows_per_block(c);
        widen(&maps.mean, &mut wide.mean);
        widen(&maps.scale, &mut wide.scale);
        widen(&maps.shift, &mut wide.shift);
        let (mean, scale, shift) = (&wide.mean, &wide.scale, &wide.shift);
        for_each_chunk(exec.par, y, rows * c, |b, yb| {
            let start = b * rows * c;
            let xb = &x[start..start + yb.len()];
            write_out(exec.isa, exec.stream, yb, |yb| {
                normalize_rows(exec.isa, xb, yb, c, mean, scale, shift);
            });
        });
    } else {
        let (inner, sub) = (geo.inner, channels_per_item(geo.inner));
        for_each_chunk(exec.par, y, c * inner, |o, yo| {
            let group = &mut yo[range.start * inner..range.end * inner];
            for_each_chunk(exec.par, group, sub * inner, |k, yk| {
                let start = (o * c + range.start + k * sub) * inner;
                let xk = &x[start..start + yk.len()];
                write_out(exec.isa, exec.stream, yk, |yk| {
                    normalize_runs(exec.isa, xk, yk, inner, range.start + k * sub, maps);
                });
            });
        });
    }
}
