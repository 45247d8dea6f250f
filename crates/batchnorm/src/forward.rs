//! The normalising pass: one affine map per channel, applied to every element.

use std::ops::Range;

use crate::element::Element;
use crate::layout::Geometry;
use crate::plan::{map_per_channel, widen, Exec, Span};
use crate::simd::{map_prefetched, multiversion, prefetch_ahead};

/// Per-channel coefficients of `y = ((x - mean_hi) - mean_lo) * scale + shift`, evaluated in the
/// element type.
///
/// The `f64` mean travels as two values of the element type, `mean_hi = round(mean)` and
/// `mean_lo = round(mean - mean_hi)`: `x - mean_hi` is exact (Sterbenz) when `x` is within a
/// factor two of the mean, so a large offset costs no precision, a constant channel gives
/// exactly `shift`, and `mean_lo` restores the bits `mean_hi` could not hold. The remaining
/// roundings are relative to `|(x - mean) * scale|` and `|y|`, a few units in the last place.
#[derive(Debug, Clone)]
pub(crate) struct ChannelMaps<T> {
    pub mean_hi: Vec<T>,
    pub mean_lo: Vec<T>,
    pub scale: Vec<T>,
    pub shift: Vec<T>,
}

impl<T> Default for ChannelMaps<T> {
    fn default() -> Self {
        Self {
            mean_hi: Vec::new(),
            mean_lo: Vec::new(),
            scale: Vec::new(),
            shift: Vec::new(),
        }
    }
}

impl<T: Element> ChannelMaps<T> {
    pub fn resize(&mut self, channels: usize) {
        self.mean_hi.resize(channels, T::ZERO);
        self.mean_lo.resize(channels, T::ZERO);
        self.scale.resize(channels, T::ZERO);
        self.shift.resize(channels, T::ZERO);
    }

    /// Sets channel `ch` to normalise with `mean` and `invstd`, then scale by `gamma` and shift
    /// by `beta` (all `f64`, rounded here once each).
    pub fn set(&mut self, ch: usize, mean: f64, invstd: f64, gamma: f64, beta: f64) {
        let hi = T::from_f64(mean);
        self.mean_hi[ch] = hi;
        self.mean_lo[ch] = T::from_f64(mean - hi.to_f64());
        self.scale[ch] = T::from_f64(invstd * gamma);
        self.shift[ch] = T::from_f64(beta);
    }

    /// Writes the maps repeated over one widened row (see [`widen`]) into `wide`.
    fn widen_into(&self, wide: &mut ChannelMaps<T>) {
        widen(&self.mean_hi, &mut wide.mean_hi);
        widen(&self.mean_lo, &mut wide.mean_lo);
        widen(&self.scale, &mut wide.scale);
        widen(&self.shift, &mut wide.shift);
    }
}

multiversion! {
    /// Consecutive runs of `inner` values, run `j` belonging to channel `first + j`.
    fn normalize_runs<T>(x: &[T], y: &mut [T], inner: usize, first: usize, maps: &ChannelMaps<T>) {
        for (j, (xr, yr)) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)).enumerate() {
            let ch = first + j;
            let (hi, lo) = (maps.mean_hi[ch], maps.mean_lo[ch]);
            let (scale, shift) = (maps.scale[ch], maps.shift[ch]);
            map_prefetched(xr, yr, |xv| ((xv - hi) - lo) * scale + shift);
        }
    }
}

multiversion! {
    /// Rows of `channels` channels, vectorised along widened rows: `wide` holds the per-channel
    /// maps repeated over one widened row (see [`widen`]).
    fn normalize_rows<T>(x: &[T], y: &mut [T], channels: usize, wide: &ChannelMaps<T>) {
        let w = wide.mean_hi.len();
        let (hi, lo) = (&wide.mean_hi[..w], &wide.mean_lo[..w]);
        let (scale, shift) = (&wide.scale[..w], &wide.shift[..w]);
        let row = |xr: &[T], yr: &mut [T]| {
            prefetch_ahead(xr);
            let maps = hi.iter().zip(lo).zip(scale.iter().zip(shift));
            for ((yv, &xv), ((&h, &l), (&s, &t))) in yr.iter_mut().zip(xr).zip(maps) {
                *yv = ((xv - h) - l) * s + t;
            }
        };
        let split = x.len() / w * w;
        let (xw, xt) = x.split_at(split);
        let (yw, yt) = y.split_at_mut(split);
        for (xr, yr) in xw.chunks_exact(w).zip(yw.chunks_exact_mut(w)) {
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
    maps: &ChannelMaps<T>,
    wide: &mut ChannelMaps<T>,
) {
    if geo.is_rows() {
        maps.widen_into(wide);
    }
    let (wide, c, inner) = (&*wide, geo.channels, geo.inner);
    map_per_channel(geo, range, exec, y, |span, ys| match span {
        Span::Rows(r) => normalize_rows(exec.isa, &x[r], ys, c, wide),
        Span::Runs { elems, first, .. } => {
            normalize_runs(exec.isa, &x[elems], ys, inner, first, maps)
        }
    });
}
