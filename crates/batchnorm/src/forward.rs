//! The normalising pass: one affine map per channel, applied to every element, optionally
//! followed in the same pass by a ReLU, or by the addition of a residual tensor and a ReLU
//! ([`Epilogue`]).

use std::ops::Range;

use crate::element::{quick_factor, Element, Float};
use crate::layout::Geometry;
use crate::mask::{MaskSpan, MaskWriter, SharedMask};
use crate::plan::{
    map_channels, map_per_channel, Apply, Coefficients, Disjoint, Exec, Span, WideMaps, QUICK_LEN,
};
use crate::simd::{
    map_cyclic, map_cyclic_recorded, map_runs, map_runs_recorded, multiversion, Isa, MAP_CHUNK,
};

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

impl<C: Float> ChannelMap<C> {
    /// The map of one value, in the compute type, before rounding.
    #[inline(always)]
    fn pre(self, x: C) -> C {
        ((x - self.mean_hi) - self.mean_lo) * self.scale + self.shift
    }
}

impl<C: Float> ChannelMap<C> {
    /// Whether the map increases (`Some(true)`) or decreases (`Some(false)`) with `x`, over
    /// every value, infinities included: when its coefficients are finite and its slope is not
    /// zero. Each of its operations is then a correctly rounded subtraction, multiplication or
    /// addition with a finite non-zero constant, monotonic in the same direction, and none gives
    /// NaN for an input that is not NaN. `None` otherwise (a zero weight, non-finite statistics
    /// or parameters).
    pub(crate) fn direction(self) -> Option<bool> {
        let coefficients = [self.mean_hi, self.mean_lo, self.scale, self.shift];
        let finite = coefficients.iter().all(|c| c.to_f64().is_finite());
        (finite && self.scale != C::ZERO).then(|| self.scale > C::ZERO)
    }
}

/// Whether the fused forward with a ReLU (`y = relu(map(x))`, rounded to `T`) gives `y <= 0`
/// at `x`, exactly as its kernels do.
pub(crate) fn relu_zeroes<T: Element>(map: NormMap<T>, x: T) -> bool {
    Relu(map).apply(x).to_f64() <= 0.0
}

/// The map of a step, lane `l` with the coefficients `c[k][l]`, before rounding: the same
/// arithmetic as [`ChannelMap::pre`], so the same bits.
#[inline(always)]
fn pre_lanes<C: Float>(
    [hi, lo, scale, shift]: [[C; MAP_CHUNK]; 4],
    x: [C; MAP_CHUNK],
) -> [C; MAP_CHUNK] {
    std::array::from_fn(|l| ((x[l] - hi[l]) - lo[l]) * scale[l] + shift[l])
}

impl<C: Float> ChannelMap<C> {
    /// The coefficients of [`pre_bounds`]: the mean as high and low `f32` parts, the scale
    /// ([`quick_factor`]) and shift rounded to `f32`, and the part of the error bound that does
    /// not depend on the value ([`quick_floor`]).
    #[inline(always)]
    fn quick_coefficients(&self) -> [f32; QUICK_LEN] {
        let mean = self.mean_hi.to_f64() + self.mean_lo.to_f64();
        let mh = mean as f32;
        let ml = (mean - f64::from(mh)) as f32;
        let (scale, shift) = (
            quick_factor(self.scale.to_f64()),
            self.shift.to_f64() as f32,
        );
        [
            mh,
            ml,
            scale,
            shift,
            quick_floor([ml * scale, shift], scale),
            0.0,
            0.0,
        ]
    }
}

/// Bounds of [`pre_lanes`]'s exact results from an evaluation in `f32`, for bf16's
/// [`Element::round_step`]: each lane's `f32` value `y` and a bound `e` of its distance to the
/// exact map `M = (x - mean) * scale + shift` (`mean = mean_hi + mean_lo`), from the quick
/// coefficients `q(l)` of each lane ([`ChannelMap::quick_coefficients`]).
///
/// The coefficients are rounded to `f32` (unit `u = 2^-24`): the scale within `u` of itself
/// ([`quick_factor`]), the mean as a high part `mh` and a low part `ml` within `u|ml| + 2^-150`
/// of the rest, the shift within `u|shift| + 2^-150`. Then `d = (x - mh) - ml`, `p = d * scale`,
/// `y = p + shift`, each rounded to `f32`. The first subtraction is exact unless `x` and `mh`
/// are a factor two apart (Sterbenz), and then `|x - mh|` is within `2^-22` of `|d|`: `d` is
/// within `2.01u|d| + u|ml| + 2^-150` of `x - mean`, and `p` within `4.1u|p| + |scale| (u|ml| +
/// 2^-150)` of `(x - mean) * scale` (the product's and the scale's roundings add `u|p|` each).
/// The sum and the shift's rounding add `u(|y| + |shift|) <= u(|p| + 2|shift|)`; the ends
/// `y -+ e` round by `u|y|` more, and the `f64` evaluation errs by `2^-52` of the same terms.
/// `e = 2^-21 (|p| + |ml scale| + |shift|) + 2^-147 |scale| + 2^-126` is `8u` of each term
/// against at most `6.1u` (the rest covers the roundings of `e` itself, `2u e`), and the last
/// term covers the roundings in `f32`'s subnormal range (at most 2^-149 each). A larger `e` only
/// sends more steps to the exact path: an interval holds a bf16 rounding boundary with
/// probability about `2^-12 (|p| + |shift|) / |y|`.
#[inline(always)]
fn pre_bounds(
    q: impl Fn(usize) -> [f32; QUICK_LEN],
    x: [f32; MAP_CHUNK],
) -> ([f32; MAP_CHUNK], [f32; MAP_CHUNK]) {
    let (mut y, mut e) = ([0.0f32; MAP_CHUNK], [0.0f32; MAP_CHUNK]);
    for l in 0..MAP_CHUNK {
        let [mh, ml, scale, shift, floor, ..] = q(l);
        let p = ((x[l] - mh) - ml) * scale;
        y[l] = p + shift;
        e[l] = p.abs() * QUICK_REL + floor;
    }
    (y, e)
}

/// `2^-21`: a quick evaluation's error bound relative to its terms (8 units of `f32`; the
/// analyses ask for at most 7.01). From 2^-20, it sent 2.3x fewer steps of the 16x64x56x56
/// backward to the exact path.
pub(crate) const QUICK_REL: f32 = 1.0 / (1u32 << 21) as f32;

/// The part of a quick evaluation's error bound that does not depend on the lane:
/// `QUICK_REL |terms| + 2^-147 |factor| + 2^-126` (see [`pre_bounds`]), in `f64` and rounded to
/// `f32` (its rounding is covered by the bound's slack).
#[inline(always)]
pub(crate) fn quick_floor<const N: usize>(terms: [f32; N], factor: f32) -> f32 {
    let terms: f64 = terms.iter().map(|t| f64::from(t.abs())).sum();
    let factor = f64::from(factor.abs());
    let rel = f64::from(QUICK_REL);
    (terms * rel + factor * 2f64.powi(-147) + 2f64.powi(-126)) as f32
}

/// The interval `[y - e, y + e]` of each lane, through the non-decreasing `f`.
#[inline(always)]
fn interval(
    (y, e): ([f32; MAP_CHUNK], [f32; MAP_CHUNK]),
    f: impl Fn(f32) -> f32,
) -> ([f32; MAP_CHUNK], [f32; MAP_CHUNK]) {
    let (mut lo, mut hi) = ([0.0f32; MAP_CHUNK], [0.0f32; MAP_CHUNK]);
    for l in 0..MAP_CHUNK {
        lo[l] = f(y[l] - e[l]);
        hi[l] = f(y[l] + e[l]);
    }
    (lo, hi)
}

/// `max(v, 0)`, with NaN kept (as `torch.relu`); negative values and -0 give +0.
#[inline(always)]
fn relu<C: Float>(v: C) -> C {
    if v <= C::ZERO {
        C::ZERO
    } else {
        v
    }
}

/// What a normalising pass applies after the map, in the compute type, before the one rounding
/// to the storage type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a, T> {
    /// Nothing: `y = bn(x)`.
    None,
    /// `y = relu(bn(x))`.
    Relu,
    /// `y = relu(bn(x) + residual)`, the residual in the memory order of `x`; with a mask,
    /// where `y` is not zero is written to it, a bit per value ([`crate::mask`]).
    AddRelu(&'a [T], Option<SharedMask<'a>>),
}

/// A map followed by a ReLU. `#[repr(transparent)]`: a slice of maps is read as a slice of
/// these ([`relu_maps`]).
#[derive(Debug, Clone, Copy, Default)]
#[repr(transparent)]
pub(crate) struct Relu<M>(M);

/// A map followed by the addition of a residual value and a ReLU; `#[repr(transparent)]` as
/// [`Relu`].
#[derive(Debug, Clone, Copy, Default)]
#[repr(transparent)]
pub(crate) struct AddRelu<M>(M);

/// `maps` read as maps followed by a ReLU.
fn relu_maps<M>(maps: &[M]) -> &[Relu<M>] {
    // SAFETY: `Relu<M>` is `#[repr(transparent)]` over `M`: the same size, alignment and
    // layout, so a slice of `M` is a valid slice of `Relu<M>` of the same length and lifetime.
    unsafe { &*(std::ptr::from_ref(maps) as *const [Relu<M>]) }
}

/// `maps` read as maps followed by a residual addition and a ReLU.
fn add_relu_maps<M>(maps: &[M]) -> &[AddRelu<M>] {
    // SAFETY: as in `relu_maps`, `AddRelu<M>` being `#[repr(transparent)]` over `M`.
    unsafe { &*(std::ptr::from_ref(maps) as *const [AddRelu<M>]) }
}

macro_rules! forward_coefficients {
    ($wrapper:ident) => {
        impl<C: Copy, M: Coefficients<C, 4>> Coefficients<C, 4> for $wrapper<M> {
            #[inline(always)]
            fn coefficients(&self) -> [C; 4] {
                self.0.coefficients()
            }

            #[inline(always)]
            fn from_coefficients(c: [C; 4]) -> Self {
                Self(M::from_coefficients(c))
            }

            #[inline(always)]
            fn quick(&self) -> [f32; QUICK_LEN] {
                self.0.quick()
            }
        }
    };
}
forward_coefficients!(Relu);
forward_coefficients!(AddRelu);

impl<C: Float> Coefficients<C, 4> for ChannelMap<C> {
    #[inline(always)]
    fn coefficients(&self) -> [C; 4] {
        [self.mean_hi, self.mean_lo, self.scale, self.shift]
    }

    #[inline(always)]
    fn quick(&self) -> [f32; QUICK_LEN] {
        self.quick_coefficients()
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

impl<T: Element> Apply<&[T], T, T::Compute, 4> for NormMap<T> {
    #[inline(always)]
    fn apply(self, x: T) -> T {
        T::from_compute(self.pre(x.to_compute()))
    }

    #[inline(always)]
    fn apply_lanes(c: [[T::Compute; MAP_CHUNK]; 4], xs: &[T; MAP_CHUNK]) -> [T; MAP_CHUNK] {
        T::from_compute_step(pre_lanes(c, T::to_compute_step(*xs)))
    }

    const QUICK: bool = T::QUICK;

    #[inline(always)]
    fn apply_quick_lanes(
        q: impl Fn(usize) -> [f32; QUICK_LEN],
        c: impl FnOnce() -> [[T::Compute; MAP_CHUNK]; 4],
        xs: &[T; MAP_CHUNK],
    ) -> [T; MAP_CHUNK] {
        let bounds = interval(pre_bounds(q, T::to_f32_step(*xs)), |v| v);
        T::round_step(bounds, move || Self::apply_lanes(c(), xs))
    }
}

impl<T: Element> Apply<&[T], T, T::Compute, 4> for Relu<NormMap<T>> {
    #[inline(always)]
    fn apply(self, x: T) -> T {
        T::from_compute(relu(self.0.pre(x.to_compute())))
    }

    #[inline(always)]
    fn apply_lanes(c: [[T::Compute; MAP_CHUNK]; 4], xs: &[T; MAP_CHUNK]) -> [T; MAP_CHUNK] {
        T::from_compute_step(pre_lanes(c, T::to_compute_step(*xs)).map(relu))
    }

    const QUICK: bool = T::QUICK;

    #[inline(always)]
    fn apply_quick_lanes(
        q: impl Fn(usize) -> [f32; QUICK_LEN],
        c: impl FnOnce() -> [[T::Compute; MAP_CHUNK]; 4],
        xs: &[T; MAP_CHUNK],
    ) -> [T; MAP_CHUNK] {
        let bounds = interval(pre_bounds(q, T::to_f32_step(*xs)), relu);
        T::round_step(bounds, move || Self::apply_lanes(c(), xs))
    }
}

/// The residual is added in the compute type: for `f32` tensors `bn(x)` is rounded to `f32`
/// before the addition rounds again (as PyTorch's separate ops do), for the others the sum is
/// exact up to `f64` roundings and rounded once to the storage type.
impl<'a, T: Element> Apply<(&'a [T], &'a [T]), T, T::Compute, 4> for AddRelu<NormMap<T>> {
    #[inline(always)]
    fn apply(self, (x, r): (T, T)) -> T {
        T::from_compute(relu(self.0.pre(x.to_compute()) + r.to_compute()))
    }

    #[inline(always)]
    fn apply_lanes(
        c: [[T::Compute; MAP_CHUNK]; 4],
        (xs, rs): (&'a [T; MAP_CHUNK], &'a [T; MAP_CHUNK]),
    ) -> [T; MAP_CHUNK] {
        let pre = pre_lanes(c, T::to_compute_step(*xs));
        T::from_compute_step(add_relu_lanes(pre, T::to_compute_step(*rs)))
    }

    const QUICK: bool = T::QUICK;

    /// The quick evaluation's sum `z = y + r` rounds once more in `f32`, by at most `2^-24 |z|`
    /// (its bound takes `2^-22 |z|`).
    #[inline(always)]
    fn apply_quick_lanes(
        q: impl Fn(usize) -> [f32; QUICK_LEN],
        c: impl FnOnce() -> [[T::Compute; MAP_CHUNK]; 4],
        (xs, rs): (&'a [T; MAP_CHUNK], &'a [T; MAP_CHUNK]),
    ) -> [T; MAP_CHUNK] {
        let (y, e) = pre_bounds(q, T::to_f32_step(*xs));
        let r = T::to_f32_step(*rs);
        let (mut z, mut ez) = ([0.0f32; MAP_CHUNK], [0.0f32; MAP_CHUNK]);
        for l in 0..MAP_CHUNK {
            z[l] = y[l] + r[l];
            ez[l] = e[l] + z[l].abs() * (1.0 / (1u32 << 22) as f32);
        }
        T::round_step(interval((z, ez), relu), move || {
            Self::apply_lanes(c(), (xs, rs))
        })
    }
}

/// `relu(pre + r)` lane by lane.
#[inline(always)]
fn add_relu_lanes<C: Float>(pre: [C; MAP_CHUNK], r: [C; MAP_CHUNK]) -> [C; MAP_CHUNK] {
    std::array::from_fn(|l| relu(pre[l] + r[l]))
}

multiversion! {
    /// Consecutive runs of `inner` values, run `j` mapped by `maps[j]`.
    fn normalize_runs<T>(x: &[T], y: &mut [T], inner: usize, maps: &[NormMap<T>], stream: bool) {
        map_runs(x, y, inner, maps, stream);
    }
}

multiversion! {
    /// Rows of channels-last input as one run whose positions cycle through the widened maps
    /// `wide` (see [`map_cyclic`]); `stream` as in [`map_runs`].
    fn normalize_rows<T>(x: &[T], y: &mut [T], wide: &WideMaps<T::Compute, NormMap<T>, 4>, stream: bool) {
        map_cyclic(x, y, stream, wide);
    }
}

multiversion! {
    /// [`normalize_runs`] followed by a ReLU.
    fn relu_runs<T>(x: &[T], y: &mut [T], inner: usize, maps: &[Relu<NormMap<T>>], stream: bool) {
        map_runs(x, y, inner, maps, stream);
    }
}

multiversion! {
    /// [`normalize_rows`] followed by a ReLU.
    fn relu_rows<T>(x: &[T], y: &mut [T], wide: &WideMaps<T::Compute, Relu<NormMap<T>>, 4>, stream: bool) {
        map_cyclic(x, y, stream, wide);
    }
}

multiversion! {
    /// [`normalize_runs`] plus the residual `r`, followed by a ReLU; where `y` is not zero
    /// written to `mask`, if any.
    #[allow(clippy::too_many_arguments)]
    fn add_relu_runs<T>(
        x: &[T],
        r: &[T],
        y: &mut [T],
        inner: usize,
        maps: &[AddRelu<NormMap<T>>],
        stream: bool,
        mask: Option<MaskWriter<'_>>,
    ) {
        match mask {
            None => map_runs((x, r), y, inner, maps, stream),
            Some(mask) => map_runs_recorded((x, r), y, inner, maps, stream, mask).finish(),
        }
    }
}

multiversion! {
    /// [`normalize_rows`] plus the residual `r`, followed by a ReLU; where `y` is not zero
    /// written to `mask`, if any.
    fn add_relu_rows<T>(
        x: &[T],
        r: &[T],
        y: &mut [T],
        wide: &WideMaps<T::Compute, AddRelu<NormMap<T>>, 4>,
        stream: bool,
        mask: Option<MaskWriter<'_>>,
    ) {
        match mask {
            None => map_cyclic((x, r), y, stream, wide),
            Some(mask) => map_cyclic_recorded((x, r), y, stream, wide, mask).finish(),
        }
    }
}

/// The mask bits of the values at `elems`, the span of one task; streamed when the task's
/// outputs are.
fn task_span<'a>(mask: SharedMask<'a>, elems: &Range<usize>, stream: bool) -> MaskSpan<'a> {
    // SAFETY: each span of an element-wise pass is written by one task (`map_per_channel`
    // and `map_channels` hand out disjoint spans), and its span lives as long as the task,
    // inside its `streaming` call, which fences.
    unsafe { mask.span(elems.start, elems.end, stream) }
}

/// Runs of `inner` values at `elems` of the inputs (channels-first), run `j` mapped by
/// `maps[j]` and then by `epi`, written to `y`.
#[allow(clippy::too_many_arguments)]
fn runs_with<T: Element>(
    isa: Isa,
    x: &[T],
    epi: Epilogue<'_, T>,
    elems: Range<usize>,
    y: &mut [T],
    inner: usize,
    maps: &[NormMap<T>],
    stream: bool,
) {
    match epi {
        Epilogue::None => normalize_runs(isa, &x[elems], y, inner, maps, stream),
        Epilogue::Relu => relu_runs(isa, &x[elems], y, inner, relu_maps(maps), stream),
        Epilogue::AddRelu(r, mask) => {
            let (xs, rs, maps) = (&x[elems.clone()], &r[elems.clone()], add_relu_maps(maps));
            let span = mask.map(|m| task_span(m, &elems, stream));
            let mask = span.as_ref().map(MaskSpan::writer);
            add_relu_runs(isa, xs, rs, y, inner, maps, stream, mask)
        }
    }
}

/// Rows at `elems` of the inputs (channels-last) with the widened maps `wide` and then `epi`,
/// written to `y`.
fn rows_with<T: Element>(
    isa: Isa,
    x: &[T],
    epi: Epilogue<'_, T>,
    elems: Range<usize>,
    y: &mut [T],
    wide: &WideMaps<T::Compute, NormMap<T>, 4>,
    stream: bool,
) {
    match epi {
        Epilogue::None => normalize_rows(isa, &x[elems], y, wide, stream),
        Epilogue::Relu => relu_rows(isa, &x[elems], y, wide.reinterpret(), stream),
        Epilogue::AddRelu(r, mask) => {
            let (xs, rs, wide) = (&x[elems.clone()], &r[elems.clone()], wide.reinterpret());
            let span = mask.map(|m| task_span(m, &elems, stream));
            let mask = span.as_ref().map(MaskSpan::writer);
            add_relu_rows(isa, xs, rs, y, wide, stream, mask)
        }
    }
}

/// Applies the maps of the channels in `range` (all channels for channels-last input) to `x`,
/// then `epi`, writing those channels of `y`. `maps` holds every channel's map.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize<T: Element>(
    x: &[T],
    epi: Epilogue<'_, T>,
    y: &mut [T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    maps: &[NormMap<T>],
    wide: &mut WideMaps<T::Compute, NormMap<T>, 4>,
) {
    if geo.is_rows() {
        wide.set(maps, T::QUICK);
    }
    let (wide, inner) = (&*wide, geo.inner);
    map_per_channel(geo, range, exec, y, |span, ys, w| match span {
        Span::Rows(r) => rows_with(exec.isa, x, epi, r, ys, wide, w.streams()),
        Span::Runs { elems, first, .. } => {
            let maps = &maps[first..];
            runs_with(exec.isa, x, epi, elems, ys, inner, maps, w.streams())
        }
    });
}

/// Applies `maps` (one per channel of `range`), then `epi`, to the channels in `range` of
/// channels-first `x` in outer blocks `blocks`, writing them to `y`, on this thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize_channels<T: Element>(
    x: &[T],
    epi: Epilogue<'_, T>,
    y: &Disjoint<'_, T>,
    geo: Geometry,
    range: Range<usize>,
    blocks: Range<usize>,
    exec: Exec,
    maps: &[NormMap<T>],
) {
    map_channels(geo, range, blocks, exec, y, |run, ys, w| {
        runs_with(exec.isa, x, epi, run, ys, geo.inner, maps, w.streams())
    });
}
