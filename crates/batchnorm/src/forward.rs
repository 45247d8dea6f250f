//! The normalising pass: one affine map per channel, applied to every element.

use crate::element::Element;
use crate::layout::Geometry;

/// Per-channel coefficients of `y = (x - mean) * scale + shift`, evaluated in `f64` and rounded
/// once to the element type.
///
/// `x - mean` in `f64` is exact for `f32` input near the mean, so a large offset costs no
/// precision, and no intermediate rounding can cancel against `shift`: `y` is the correctly
/// rounded value of the `f64` map up to two `f64` roundings.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChannelMaps {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

/// Applies the per-channel maps to `x`, writing `y` (both laid out as `geo`).
pub(crate) fn normalize<T: Element>(x: &[T], y: &mut [T], geo: Geometry, maps: &ChannelMaps) {
    debug_assert_eq!(x.len(), geo.len());
    debug_assert_eq!(y.len(), geo.len());
    if geo.is_rows() {
        let c = geo.channels;
        let (mean, scale, shift) = (&maps.mean[..c], &maps.scale[..c], &maps.shift[..c]);
        for (xr, yr) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)) {
            for i in 0..c {
                yr[i] = T::from_f64((xr[i].to_f64() - mean[i]) * scale[i] + shift[i]);
            }
        }
    } else {
        let runs = x.chunks_exact(geo.inner).zip(y.chunks_exact_mut(geo.inner));
        for (r, (xr, yr)) in runs.enumerate() {
            let c = r % geo.channels;
            let (mean, scale, shift) = (maps.mean[c], maps.scale[c], maps.shift[c]);
            for (yv, &xv) in yr.iter_mut().zip(xr) {
                *yv = T::from_f64((xv.to_f64() - mean) * scale + shift);
            }
        }
    }
}
