//! The normalising pass: one affine map per channel, applied to every element.

use std::ops::Range;

use crate::element::{Element, Float};
use crate::layout::Geometry;
use crate::plan::{
    map_channels, map_per_channel, Apply, Disjoint, Exec, FourCoefficients, Span, WideMaps,
};
use crate::simd::{map_cyclic, map_runs, multiversion};

/// The coefficients of one channel's `y = ((x - mean_hi) - mean_lo) * scale + shift`, evaluated
/// in the compute type `C` of the storage type ([`Element::Compute`]: `f32` for `f32` tensors,
/// `f64` for the others) and rounded once to the storage type.
///
/// The `f64` mean travels as two values of the compute type, `mean_hi = round(mean)` and
/// `mean_lo = round(mean - mean_hi)`: `x - mean_hi` is exact (Sterbenz) when `x` is within a
/// factor two of the mean, so a large offset costs no precision, a constant channel gives
/// exactly `shift`, and `mean_lo` restores the bits `mean_hi` could not hold. The remaining
/// roundings are relative to `|(x - mean) * scale|` and `|y|`, a few units in the last place.
/// In `f64` (`mean_lo` is then 0) those are 2^-29 units of an `f32`, 2^-45 of a 16-bit value:
/// rounding once more to 16 bits gives the nearest value except when the exact result lies
/// within that distance of a midpoint.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChannelMap<C> {
    mean_hi: C,
    mean_lo: C,
    scale: C,
    shift: C,
}

/// The normalising map of storage type `T`.
pub(crate) type NormMap<T> = ChannelMap<<T as Element>::Compute>;

impl<C: Float> ChannelMap<C> {
    /// Normalises with `mean` and `invstd`, then scales by `gamma` and shifts by `beta` (all
    /// `f64`, rounded here once each).
    pub fn new(mean: f64, invstd: f64, gamma: f64, beta: f64) -> Self {
        let hi = C::from_f64(mean);
        Self {
            mean_hi: hi,
            mean_lo: C::from_f64(mean - hi.to_f64()),
            scale: C::from_f64(invstd * gamma),
            shift: C::from_f64(beta),
        }
    }
}

impl<C: Copy> FourCoefficients<C> for ChannelMap<C> {
    #[inline(always)]
    fn coefficients(&self) -> [C; 4] {
        [self.mean_hi, self.mean_lo, self.scale, self.shift]
    }

    #[inline(always)]
    fn from_coefficients([mean_hi, mean_lo, scale, shift]: [C; 4]) -> Self {
        Self {
            mean_hi,
            mean_lo,
            scale,
            shift,
        }
    }
}

impl<T: Element> Apply<&[T], T> for NormMap<T> {
    #[inline(always)]
    fn apply(self, x: T) -> T {
        let x = x.to_compute();
        T::from_compute(((x - self.mean_hi) - self.mean_lo) * self.scale + self.shift)
    }
}

multiversion! {
    /// Consecutive runs of `inner` values, run `j` mapped by `maps[j]`.
    fn normalize_runs<T>(x: &[T], y: &mut [T], inner: usize, maps: &[NormMap<T>], stream: bool) {
        map_runs(x, y, inner, maps, stream, |map, xv| map.apply(xv));
    }
}

multiversion! {
    /// Rows of channels-last input as one run whose positions cycle through the widened maps
    /// `wide` (see [`map_cyclic`]); `stream` as in [`map_runs`].
    fn normalize_rows<T>(x: &[T], y: &mut [T], wide: &WideMaps<T::Compute, NormMap<T>>, stream: bool) {
        map_cyclic(x, y, stream, wide);
    }
}

/// Applies the maps of the channels in `range` (all channels for channels-last input) to `x`,
/// writing those channels of `y`. `maps` holds every channel's map.
pub(crate) fn normalize<T: Element>(
    x: &[T],
    y: &mut [T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    maps: &[NormMap<T>],
    wide: &mut WideMaps<T::Compute, NormMap<T>>,
) {
    if geo.is_rows() {
        wide.set(maps);
    }
    let (wide, inner) = (&*wide, geo.inner);
    map_per_channel(geo, range, exec, y, |span, ys, w| match span {
        Span::Rows(r) => normalize_rows(exec.isa, &x[r], ys, wide, w.streams()),
        Span::Runs { elems, first, .. } => {
            let maps = &maps[first..];
            normalize_runs(exec.isa, &x[elems], ys, inner, maps, w.streams())
        }
    });
}

/// Applies `maps` (one per channel of `range`) to the channels in `range` of channels-first
/// `x` in outer blocks `blocks`, writing them to `y`, on this thread.
pub(crate) fn normalize_channels<T: Element>(
    x: &[T],
    y: &Disjoint<'_, T>,
    geo: Geometry,
    range: Range<usize>,
    blocks: Range<usize>,
    exec: Exec,
    maps: &[NormMap<T>],
) {
    map_channels(geo, range, blocks, exec, y, |run, ys, w| {
        normalize_runs(exec.isa, &x[run], ys, geo.inner, maps, w.streams())
    });
}
