//! The backward kernels: per-channel gradient sums, then the input gradient.

use std::ops::Range;

use crate::element::{quick_factor, to_f64_pair, Element};
use crate::forward::{quick_floor, QUICK_REL};
use crate::gate::{Gate, Gates, Open, ReluGate};
use crate::layout::Geometry;
use crate::mask::PairBits;
use crate::par::for_each_chunk;
use crate::plan::{
    column_strips, fold_widened_in_place, map_channels, map_per_channel, narrow_rows, narrow_walk,
    reduce_per_channel, step_sum, strip_step, strips, widen, Apply, Coefficients, Disjoint, Exec,
    Span, StripPrefetch, UnitRuns, WideMaps, QUICK_LEN,
};
use crate::scratch::with_zeroed;
use crate::simd::{map_cyclic, map_runs, multiversion, prefetch_ahead, Isa, RunAhead, MAP_CHUNK};
use crate::stream::streaming;
use crate::tuning::{LANES, MAP_TASK_ELEMS};

/// The gradient sums of one channel (or of a piece of it), in `f64`: what the backward pass
/// needs of the whole batch. Sums of pieces add up (`+`) to the sums of the whole.
///
/// The parameter gradients follow: `dweight = sum(dy * xhat) = dy_xmu * invstd`,
/// `dbias = dy`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GradSums {
    /// `sum(dy)`.
    pub dy: f64,
    /// `sum(dy * (x - mean))`, around the mean that normalised `x`.
    pub dy_xmu: f64,
}

/// The sums over both pieces.
impl std::ops::Add for GradSums {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            dy: self.dy + other.dy,
            dy_xmu: self.dy_xmu + other.dy_xmu,
        }
    }
}

impl std::ops::AddAssign for GradSums {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

impl GradSums {
    /// `d loss / d weight = sum(dy * xhat)`, given the channel's `invstd`.
    pub fn weight_grad(&self, invstd: f64) -> f64 {
        self.dy_xmu * invstd
    }

    /// `d loss / d bias = sum(dy)`.
    pub fn bias_grad(&self) -> f64 {
        self.dy
    }
}

multiversion! {
    /// The sums of `out.len()` neighbouring channels over the runs `u` of channels-first input:
    /// `x` and `dy` start at the first channel's run in the first block; `mean` holds those
    /// channels' means, `gates` (if any) their ReLU gates.
    #[allow(clippy::too_many_arguments)]
    fn unit_grad_sums<T>(
        x: &[T],
        dy: &[T],
        u: UnitRuns,
        mean: &[f64],
        gates: Option<&[ReluGate]>,
        out: &mut [GradSums],
        scratch: &mut [f64],
    ) {
        match gates {
            None => unit_sums(x, dy, u, mean, |_| Open, out, scratch),
            Some(g) => unit_sums(x, dy, u, mean, |j| g[j], out, scratch),
        }
    }
}

/// [`unit_grad_sums`] with the gate `gate(j)` on channel `j`'s gradient.
#[inline(always)]
fn unit_sums<T: Element, G: Gate>(
    x: &[T],
    dy: &[T],
    u: UnitRuns,
    mean: &[f64],
    gate: impl Fn(usize) -> G,
    out: &mut [GradSums],
    scratch: &mut [f64],
) {
    let (g, inner) = (out.len(), u.inner);
    let (lanes, _) = scratch.as_chunks_mut::<LANES>();
    let (s, sx) = lanes.split_at_mut(g);
    for k in 0..u.count {
        let r = k * u.stride..k * u.stride + g * inner;
        let runs = x[r.clone()]
            .chunks_exact(inner)
            .zip(dy[r].chunks_exact(inner));
        for (j, (xr, dr)) in runs.enumerate() {
            let ahead = u.ahead::<T>(g, j, k);
            add_grad_lanes(&mut s[j], &mut sx[j], xr, dr, mean[j], gate(j), ahead);
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = GradSums {
            dy: s[j].iter().sum(),
            dy_xmu: sx[j].iter().sum(),
        };
    }
}

/// `s[l] += dy[i]`, `sx[l] += dy[i] * (x[i] - mean)` (in `f64`, `dy[i]` taken as 0 where the
/// gate stops it) for `i % LANES == l`, in order; prefetching as `ahead` says.
#[inline(always)]
fn add_grad_lanes<T: Element, G: Gate>(
    s: &mut [f64; LANES],
    sx: &mut [f64; LANES],
    x: &[T],
    dy: &[T],
    mean: f64,
    gate: G,
    ahead: RunAhead,
) {
    let (xc, xt) = x.as_chunks::<LANES>();
    let (dc, dt) = dy.as_chunks::<LANES>();
    for (k, (xs, ds)) in xc.iter().zip(dc).enumerate() {
        let at = k * size_of_val(xs);
        ahead.prefetch(xs, at);
        ahead.prefetch(ds, at);
        let (x, d) = (to_f64_pair(xs), to_f64_pair(ds));
        for l in 0..LANES {
            let d = gated(gate, x[l], d[l]);
            s[l] += d;
            sx[l] += d * (x[l] - mean);
        }
    }
    for (l, (&xv, &dv)) in xt.iter().zip(dt).enumerate() {
        let x = xv.to_f64();
        let d = gated(gate, x, dv.to_f64());
        s[l] += d;
        sx[l] += d * (x - mean);
    }
}

/// `dy` where `gate` lets it through at `x`, else +0 (what a masked copy of `dy` would hold).
#[inline(always)]
fn gated<G: Gate>(gate: G, x: f64, dy: f64) -> f64 {
    if gate.stops(x) {
        0.0
    } else {
        dy
    }
}

multiversion! {
    /// The per-channel sums over a block of rows, vectorised along widened rows; `mean` is the
    /// per-channel mean repeated over one widened row, `gates` (if any) the ReLU gates' signs
    /// and bounds likewise; software prefetches only when `prefetch` (tensors beyond the cache).
    #[allow(clippy::too_many_arguments)]
    fn block_grad_sums<T>(
        x: &[T],
        dy: &[T],
        mean: &[f64],
        gates: Option<[&[f64]; 2]>,
        out: &mut [GradSums],
        scratch: &mut [f64],
        prefetch: bool,
    ) {
        match gates {
            None => block_sums(x, dy, [mean], |[m]| (m, Open), out, scratch, prefetch),
            Some([sign, bound]) => {
                let split = |[m, sign, bound]: [f64; 3]| (m, ReluGate { sign, bound });
                block_sums(x, dy, [mean, sign, bound], split, out, scratch, prefetch)
            }
        }
    }
}

/// [`block_grad_sums`] with the `K` per-position coefficients `coefs`, which `split` turns into
/// the mean and the gate of a position.
#[inline(always)]
fn block_sums<T: Element, G: Gate, const K: usize>(
    x: &[T],
    dy: &[T],
    coefs: [&[f64]; K],
    split: impl Fn([f64; K]) -> (f64, G) + Copy,
    out: &mut [GradSums],
    scratch: &mut [f64],
    prefetch: bool,
) {
    let (c, w) = (out.len(), coefs[0].len());
    let (s, sx) = scratch.split_at_mut(w);
    let row = |s: &mut [f64], sx: &mut [f64], coefs: [&[f64]; K], xr: &[T], dr: &[T]| {
        prefetch_ahead(xr);
        prefetch_ahead(dr);
        let acc = s.iter_mut().zip(sx.iter_mut());
        for (k, ((s, sx), (&xv, &dv))) in acc.zip(xr.iter().zip(dr)).enumerate() {
            add_grad_terms(
                s,
                sx,
                split(std::array::from_fn(|i| coefs[i][k])),
                [xv],
                [dv],
            );
        }
    };
    let split_at = x.len() / w * w;
    if narrow_rows(w, prefetch) {
        // Rows that `narrow_rows` picks: 64 (then 16) columns at a time down the rows, their
        // accumulators in registers.
        let (xw, dw) = (&x[..split_at], &dy[..split_at]);
        narrow_walk([xw, dw], s, sx, coefs, prefetch, |s, sx, c, [u, e]| {
            add_grad_terms(s, sx, split(c), [u], [e])
        });
    } else {
        // Two widened rows per step, read side by side with their dy (four streams, as the
        // statistics' four rows; four rows of both inputs ran out of registers): their terms
        // are added together first, so the accumulators (in L1, too many for registers) are
        // loaded and stored once per two. Wide rows go one column strip at a time (the same
        // sums per position, in the same order).
        let pairs = x.len() / (2 * w);
        for cols in column_strips(w) {
            // A step reads two rows of each input.
            let size = size_of::<T>();
            let ahead = StripPrefetch::new(pairs, 2 * cols.len() * size, 2 * w * size, prefetch);
            let (s, sx) = (&mut s[cols.clone()], &mut sx[cols.clone()]);
            let coefs: [_; K] = std::array::from_fn(|i| &coefs[i][cols.clone()]);
            for p in 0..pairs {
                let ([x0, x1], [d0, d1]) =
                    (strips(x, w, &cols, 2 * p), strips(dy, w, &cols, 2 * p));
                let rows = [x0, x1, d0, d1];
                strip_step(
                    rows,
                    s,
                    sx,
                    coefs,
                    ahead.far(p),
                    |s, sx, c, [u0, u1, e0, e1]| {
                        add_grad_terms(s, sx, split(c), [u0, u1], [e0, e1])
                    },
                );
            }
            for r in 2 * pairs..split_at / w {
                let ([xr], [dr]) = (strips(x, w, &cols, r), strips(dy, w, &cols, r));
                row(s, sx, coefs, xr, dr);
            }
        }
    }
    let tail = x[split_at..]
        .chunks_exact(c)
        .zip(dy[split_at..].chunks_exact(c));
    for (xr, dr) in tail {
        row(s, sx, coefs, xr, dr);
    }
    fold_widened_in_place(s, c);
    fold_widened_in_place(sx, c);
    for (i, o) in out.iter_mut().enumerate() {
        *o = GradSums {
            dy: s[i],
            dy_xmu: sx[i],
        };
    }
}

/// Adds the terms of one position of `R` rows (values `x`, `dy`; one row, or two added first,
/// see [`step_sum`]) with that position's mean and gate: `s += sum(dy)`,
/// `sx += sum(dy * (x - mean))`, in `f64`, `dy` taken as 0 where the gate stops it.
#[inline(always)]
fn add_grad_terms<T: Element, G: Gate, const R: usize>(
    s: &mut f64,
    sx: &mut f64,
    (mean, gate): (f64, G),
    x: [T; R],
    dy: [T; R],
) {
    let x = x.map(T::to_f64);
    let d: [f64; R] = std::array::from_fn(|r| gated(gate, x[r], dy[r].to_f64()));
    let t: [f64; R] = std::array::from_fn(|r| d[r] * (x[r] - mean));
    *s += step_sum(d);
    *sx += step_sum(t);
}

/// The gradient sums of the channels in `range` (all channels for channels-last input), written
/// to `out` (one per channel of `range`). `mean` holds every channel's mean; `parts` is scratch
/// for the per-piece partial sums, at least [`parts_len`](crate::plan::parts_len) long;
/// `wide_mean` scratch for the means over a widened row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn grad_sums<T: Element>(
    x: &[T],
    dy: &[T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    mean: &[f64],
    parts: &mut [GradSums],
    wide_mean: &mut Vec<f64>,
    out: &mut [GradSums],
) {
    if geo.is_rows() {
        widen(mean, wide_mean);
    }
    let kernel = grad_sums_kernel(x, dy, geo, exec, mean, wide_mean, None);
    reduce_per_channel(geo, range, exec, parts, out, kernel, std::ops::Add::add);
}

/// The partial gradient sums of one unit of work (a [`Span`] of `x` and `dy`), one per channel
/// it covers; `wide_mean` is `mean` widened (channels-last input only); with `gates`, of the
/// gradient through each channel's ReLU.
pub(crate) fn grad_sums_kernel<'a, T: Element>(
    x: &'a [T],
    dy: &'a [T],
    geo: Geometry,
    exec: Exec,
    mean: &'a [f64],
    wide_mean: &'a [f64],
    gates: Option<&'a Gates>,
) -> impl Fn(Span, &mut [GradSums]) + Sync + 'a {
    let isa = exec.isa;
    move |span: Span, p: &mut [GradSums]| match span {
        Span::Rows(r) => with_zeroed(2 * wide_mean.len(), |s| {
            let g = gates.map(Gates::wide);
            block_grad_sums(isa, &x[r.clone()], &dy[r], wide_mean, g, p, s, exec.stream)
        }),
        Span::Runs {
            elems,
            first,
            count,
            follow,
        } => {
            let channels = first..first + p.len();
            let m = &mean[channels.clone()];
            let g = gates.map(|g| &g.per_channel[channels]);
            let (xs, ds) = (&x[elems.clone()], &dy[elems]);
            let u = UnitRuns::new(geo, count, follow);
            with_zeroed(2 * p.len() * LANES, |s| {
                unit_grad_sums(isa, xs, ds, u, m, g, p, s)
            })
        }
    }
}

/// The coefficients of one channel's `dx = k * ((dy - a) - (x - mean) * b)`, evaluated in `f64`
/// as `p * dy + (q * (x - mean) + r)` with `p = k`, `q = -k * b`, `r = -k * a`, two fused
/// multiply-adds.
///
/// After batch statistics `k = gamma * invstd`, `a = sum(dy) / m`,
/// `b = sum(dy * xhat) * invstd / m`; after running statistics (frozen BN) `a = b = 0`, and
/// dx is exactly `k * dy` rounded. The three terms nearly cancel when m is small (for m = 2,
/// dx is about `dy * eps / var`), so they are combined in `f64` and rounded to the element type
/// once: `q`, `r`, `x - mean` and each fused step round once, relative to their own size, so the
/// error is a few `f64` units of the largest term, as for the unfused form (whose five
/// operations cost more than the memory they stream on channels-last input).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GradMap {
    mean: f64,
    p: f64,
    q: f64,
    r: f64,
}

impl GradMap {
    pub fn new(mean: f64, k: f64, a: f64, b: f64) -> Self {
        Self {
            mean,
            p: k,
            q: -(k * b),
            r: -(k * a),
        }
    }
}

impl Coefficients<f64, 4> for GradMap {
    #[inline(always)]
    fn coefficients(&self) -> [f64; 4] {
        [self.mean, self.p, self.q, self.r]
    }

    #[inline(always)]
    fn from_coefficients([mean, p, q, r]: [f64; 4]) -> Self {
        Self { mean, p, q, r }
    }

    #[inline(always)]
    fn quick(&self) -> [f32; QUICK_LEN] {
        self.quick_coefficients()
    }
}

impl GradMap {
    /// dx at one value.
    #[inline(always)]
    fn dx<T: Element>(self, x: f64, dy: f64) -> T {
        let (p, q, r, mean) = (self.p, self.q, self.r, self.mean);
        T::from_f64(p.mul_add(dy, q.mul_add(x - mean, r)))
    }
}

/// dx of a step, lane `l` with the coefficients `c[k][l]` ([`GradMap::dx`]'s arithmetic).
#[inline(always)]
fn dx_lanes<T: Element>(
    [mean, p, q, r]: [[f64; MAP_CHUNK]; 4],
    x: [f64; MAP_CHUNK],
    dy: [f64; MAP_CHUNK],
) -> [T; MAP_CHUNK] {
    T::from_f64_step(std::array::from_fn(|l| {
        p[l].mul_add(dy[l], q[l].mul_add(x[l] - mean[l], r[l]))
    }))
}

impl GradMap {
    /// The coefficients of [`dx_bounds`]: a centre `c` as high and low `f32` parts, `p` and
    /// `q` ([`quick_factor`]), an offset `o` rounded to `f32`, the part of the error bound that
    /// does not depend on the values ([`quick_floor`]), and the ReLU gate's bound (0 here), for
    /// `dx = p dy + q (x - c) + o`.
    ///
    /// The centre is where `q (x - mean) + r` crosses zero, `x0 = mean - r / q`, and the offset
    /// 0, whenever `x0` is finite in `f32`: the quick evaluation then never adds two terms that
    /// cancel where `dy` is 0 (behind a ReLU, half the values), whose bound, relative to the
    /// terms, left about one step in 11 of the 16x64x56x56 backward after a ReLU to the exact
    /// path (one in 130 centred). `x0` itself is within `2^-53 (|r / q| + |x0|)` of its value: `2^-53 (|r| + |q x0|)`
    /// once multiplied, which the floor takes with `2^-50`. Else the mean and `r`.
    #[inline(always)]
    fn quick_coefficients(&self) -> [f32; QUICK_LEN] {
        let x0 = self.mean - self.r / self.q;
        let (centre, offset, moved) = if x0.abs() <= f64::from(f32::MAX) {
            (
                x0,
                0.0,
                (self.r.abs() + (self.q * x0).abs()) * 2f64.powi(-50),
            )
        } else {
            (self.mean, self.r, 0.0)
        };
        let ch = centre as f32;
        let cl = (centre - f64::from(ch)) as f32;
        let (p, q, o) = (quick_factor(self.p), quick_factor(self.q), offset as f32);
        let floor = quick_floor([o, q * cl], q) + moved as f32;
        [ch, cl, p, q, o, floor, 0.0]
    }
}

/// Bounds of the exact dx at a step of `x` and `dy` (as `f32`, exact), `dy` stopped where
/// `stops(quick coefficients, x)`, from an evaluation in `f32` with the quick coefficients `q(l)`
/// of each lane ([`GradMap::quick_coefficients`]), for bf16's [`Element::round_step`]: each
/// lane's interval around `M = p dy + q (x - c) + o`.
///
/// As the forward's quick evaluation (`forward::pre_bounds`), with `u = 2^-24`: `p` and `q`
/// rounded within `u` of themselves ([`quick_factor`]), `o` within `u|o| + 2^-150`,
/// `d = (x - ch) - cl` within `2.01u|d| + u|cl| + 2^-150` of `x - c`; then `a = q d` is
/// within `4.01u|a| + |q| (u|cl| + 2^-150)` of `q (x - c)`, `t = a + o` adds
/// `u(|a| + 2|o|)`, `b = p dy` is within `2u|b|` of `p dy`, `z = b + t` adds
/// `u(|a| + |b| + |o|)`, and the ends `z -+ e` round by as much again: at most
/// `u(7.01|a| + 4|b| + 4|o| + |q cl|)` and `2^-148 |q|`, plus the `f64` evaluation's `2^-52`
/// of its terms and the centre's own error (in the floor). `e = 2^-21 (|a| + |b| + |o| +
/// |q cl|) + 2^-147 |q| + 2^-126` is `8u` of each, and covers the roundings in `f32`'s
/// subnormal range.
#[inline(always)]
fn dx_bounds(
    q: impl Fn(usize) -> [f32; QUICK_LEN],
    stops: impl Fn([f32; QUICK_LEN], f32) -> bool,
    x: [f32; MAP_CHUNK],
    dy: [f32; MAP_CHUNK],
) -> ([f32; MAP_CHUNK], [f32; MAP_CHUNK]) {
    let (mut lo, mut hi) = ([0.0f32; MAP_CHUNK], [0.0f32; MAP_CHUNK]);
    for l in 0..MAP_CHUNK {
        let c = q(l);
        let [mh, ml, p, q, r, floor, _] = c;
        // +0 where stopped, by masking the bits: with a select, the compiler branched per lane.
        let keep = u32::from(!stops(c, x[l])).wrapping_neg();
        let dy = f32::from_bits(dy[l].to_bits() & keep);
        let a = q * ((x[l] - mh) - ml);
        let b = p * dy;
        let z = b + (a + r);
        let e = (a.abs() + b.abs()) * QUICK_REL + floor;
        (lo[l], hi[l]) = (z - e, z + e);
    }
    (lo, hi)
}

impl<'a, T: Element> Apply<(&'a [T], &'a [T]), T, f64, 4> for GradMap {
    #[inline(always)]
    fn apply(self, (x, dy): (T, T)) -> T {
        self.dx(x.to_f64(), dy.to_f64())
    }

    #[inline(always)]
    fn apply_lanes(
        c: [[f64; MAP_CHUNK]; 4],
        (x, dy): (&'a [T; MAP_CHUNK], &'a [T; MAP_CHUNK]),
    ) -> [T; MAP_CHUNK] {
        dx_lanes(c, T::to_f64_step(*x), T::to_f64_step(*dy))
    }

    const QUICK: bool = T::QUICK;

    #[inline(always)]
    fn apply_quick_lanes(
        q: impl Fn(usize) -> [f32; QUICK_LEN],
        c: impl FnOnce() -> [[f64; MAP_CHUNK]; 4],
        (x, dy): (&'a [T; MAP_CHUNK], &'a [T; MAP_CHUNK]),
    ) -> [T; MAP_CHUNK] {
        let bounds = dx_bounds(q, |_, _| false, T::to_f32_step(*x), T::to_f32_step(*dy));
        T::round_step(bounds, move || Self::apply_lanes(c(), (x, dy)))
    }
}

/// A channel's dx map after a ReLU: [`GradMap`] of `dy` where the gate lets it through, of 0
/// elsewhere (the same bits as the map of a masked copy of `dy`). The gate's sign is the sign of
/// `p = weight * invstd`, the same product whose rounding is the forward map's slope (whose
/// sign gives the gate's direction, see [`ReluGate::of`]): five coefficients, not six.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GatedGradMap {
    grad: GradMap,
    bound: f64,
}

impl GatedGradMap {
    /// `grad` through `gate`, whose sign must be `p`'s.
    pub fn new(grad: GradMap, gate: ReluGate) -> Self {
        debug_assert_eq!(gate.sign, 1f64.copysign(grad.p));
        Self {
            grad,
            bound: gate.bound,
        }
    }
}

/// The gate of a channel whose dx map has coefficient `p`, with `bound`.
#[inline(always)]
fn gate_of(p: f64, bound: f64) -> ReluGate {
    ReluGate {
        sign: 1f64.copysign(p),
        bound,
    }
}

impl Coefficients<f64, 5> for GatedGradMap {
    #[inline(always)]
    fn coefficients(&self) -> [f64; 5] {
        let [mean, p, q, r] = self.grad.coefficients();
        [mean, p, q, r, self.bound]
    }

    #[inline(always)]
    fn from_coefficients([mean, p, q, r, bound]: [f64; 5]) -> Self {
        Self {
            grad: GradMap { mean, p, q, r },
            bound,
        }
    }

    /// The dx map's, and the gate's bound (a value of the storage type, exact in `f32`).
    #[inline(always)]
    fn quick(&self) -> [f32; QUICK_LEN] {
        let mut q = self.grad.quick_coefficients();
        q[6] = self.bound as f32;
        q
    }
}

impl<'a, T: Element> Apply<(&'a [T], &'a [T]), T, f64, 5> for GatedGradMap {
    #[inline(always)]
    fn apply(self, (x, dy): (T, T)) -> T {
        let x = x.to_f64();
        let gate = gate_of(self.grad.p, self.bound);
        self.grad.dx(x, gated(gate, x, dy.to_f64()))
    }

    #[inline(always)]
    fn apply_lanes(
        [mean, p, q, r, bound]: [[f64; MAP_CHUNK]; 5],
        (x, dy): (&'a [T; MAP_CHUNK], &'a [T; MAP_CHUNK]),
    ) -> [T; MAP_CHUNK] {
        let (x, dy) = (T::to_f64_step(*x), T::to_f64_step(*dy));
        let dy = std::array::from_fn(|l| gated(gate_of(p[l], bound[l]), x[l], dy[l]));
        dx_lanes([mean, p, q, r], x, dy)
    }

    const QUICK: bool = T::QUICK;

    /// The gate `x * sign <= bound` ([`ReluGate`], the sign `p`'s) decides in `f32` exactly
    /// as in `f64`: `x` and the bound are values of the storage type, and `x * sign` is exact.
    #[inline(always)]
    fn apply_quick_lanes(
        q: impl Fn(usize) -> [f32; QUICK_LEN],
        c: impl FnOnce() -> [[f64; MAP_CHUNK]; 5],
        (x, dy): (&'a [T; MAP_CHUNK], &'a [T; MAP_CHUNK]),
    ) -> [T; MAP_CHUNK] {
        let stops =
            |[_, _, p, _, _, _, bound]: [f32; QUICK_LEN], x: f32| x * 1f32.copysign(p) <= bound;
        let bounds = dx_bounds(q, stops, T::to_f32_step(*x), T::to_f32_step(*dy));
        T::round_step(bounds, move || Self::apply_lanes(c(), (x, dy)))
    }
}

/// A per-channel dx map the passes below run: [`GradMap`], or [`GatedGradMap`] after a ReLU.
pub(crate) trait DxMap: Copy + Default + Send + Sync {
    /// The maps laid out over a widened row.
    type Wide: Default + Sync;
    /// Lays out `maps` over a widened row, with their quick coefficients when `quick`.
    fn set_wide(wide: &mut Self::Wide, maps: &[Self], quick: bool);
    /// dx over consecutive runs of `inner` values, run `j` mapped by `maps[j]`.
    fn runs<T: Element>(
        isa: Isa,
        x: (&[T], &[T]),
        dx: &mut [T],
        inner: usize,
        maps: &[Self],
        stream: bool,
    );
    /// dx over rows of channels-last input.
    fn rows<T: Element>(isa: Isa, x: (&[T], &[T]), dx: &mut [T], wide: &Self::Wide, stream: bool);
}

/// Implements [`DxMap`] for `$map` (`$k` coefficients) with its two kernels, `$runs` over
/// consecutive runs and `$rows` over channels-last rows as one run whose positions cycle through
/// the widened maps (see [`map_cyclic`]), each compiled for every instruction set.
macro_rules! dx_map {
    ($map:ty, $k:literal, $runs:ident, $rows:ident) => {
        multiversion! {
            #[doc = concat!("dx over consecutive runs of `inner` values, run `j` mapped by `maps[j]` (`", stringify!($map), "`).")]
            fn $runs<T>(x: &[T], dy: &[T], dx: &mut [T], inner: usize, maps: &[$map], stream: bool) {
                map_runs((x, dy), dx, inner, maps, stream);
            }
        }

        multiversion! {
            #[doc = concat!("dx over rows of channels-last input (`", stringify!($map), "`); `stream` as in [`map_runs`].")]
            fn $rows<T>(x: &[T], dy: &[T], dx: &mut [T], maps: &WideMaps<f64, $map, $k>, stream: bool) {
                map_cyclic((x, dy), dx, stream, maps);
            }
        }

        impl DxMap for $map {
            type Wide = WideMaps<f64, $map, $k>;

            fn set_wide(wide: &mut Self::Wide, maps: &[Self], quick: bool) {
                wide.set(maps, quick);
            }

            fn runs<T: Element>(
                isa: Isa,
                (x, dy): (&[T], &[T]),
                dx: &mut [T],
                inner: usize,
                maps: &[Self],
                stream: bool,
            ) {
                $runs(isa, x, dy, dx, inner, maps, stream);
            }

            fn rows<T: Element>(
                isa: Isa,
                (x, dy): (&[T], &[T]),
                dx: &mut [T],
                wide: &Self::Wide,
                stream: bool,
            ) {
                $rows(isa, x, dy, dx, wide, stream);
            }
        }
    };
}

dx_map!(GradMap, 4, runs_input_grad, rows_input_grad);
dx_map!(GatedGradMap, 5, runs_gated_grad, rows_gated_grad);

/// Writes the channels in `range` (all channels for channels-last input) of `dx`. `maps` holds
/// every channel's map.
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_grad<T: Element, M: DxMap>(
    x: &[T],
    dy: &[T],
    dx: &mut [T],
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    maps: &[M],
    wide: &mut M::Wide,
) {
    if geo.is_rows() {
        M::set_wide(wide, maps, T::QUICK);
    }
    let (wide, inner) = (&*wide, geo.inner);
    map_per_channel(geo, range, exec, dx, |span, gs, w| match span {
        Span::Rows(r) => M::rows(exec.isa, (&x[r.clone()], &dy[r]), gs, wide, w.streams()),
        Span::Runs { elems, first, .. } => {
            let xs = (&x[elems.clone()], &dy[elems]);
            M::runs(exec.isa, xs, gs, inner, &maps[first..], w.streams())
        }
    });
}

/// Writes the channels in `range` of channels-first `dx` in outer blocks `blocks` with `maps`
/// (one per channel of `range`), on this thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_grad_channels<T: Element, M: DxMap>(
    x: &[T],
    dy: &[T],
    dx: &Disjoint<'_, T>,
    geo: Geometry,
    range: Range<usize>,
    blocks: Range<usize>,
    exec: Exec,
    maps: &[M],
) {
    map_channels(geo, range, blocks, exec, dx, |run, gs, w| {
        let xs = (&x[run.clone()], &dy[run]);
        M::runs(exec.isa, xs, gs, geo.inner, maps, w.streams())
    });
}

/// Implements [`Coefficients`] for a map that has none (a masking pass).
macro_rules! no_coefficients {
    ($pass:ty) => {
        impl Coefficients<f64, 0> for $pass {
            #[inline(always)]
            fn coefficients(&self) -> [f64; 0] {
                []
            }

            #[inline(always)]
            fn from_coefficients(_: [f64; 0]) -> Self {
                Self
            }
        }
    };
}

/// `dy` where `y > 0`, +0 elsewhere (also where `y` is 0 exactly); where `y` is NaN, `dy`
/// passes (PyTorch's `threshold_backward`).
#[inline(always)]
fn relu_pass_one<T: Element>(y: T, dy: T) -> T {
    if y.to_f64() <= 0.0 {
        T::default()
    } else {
        dy
    }
}

/// [`relu_pass_one`] as a map of pairs of values `(y, dy)`, with no coefficients, so that it
/// runs through [`map_runs`], streamed beyond the cache as every other element-wise pass. Pairs:
/// a step of eight is 32 bytes of a 16-bit type, one streamed store, where a step of eight
/// single values would be 16 bytes, which are not streamed (see `map_runs`); y is compared in
/// `f32` where that is exact (widening f16 to `f64` cost more than the pass's memory). Against
/// single values compared in `f64`, the residual backward that ran it (before the forward kept
/// a mask) went from 1.79 to 1.25 (bf16) and 2.10 to 1.58 (f16) times the plain backward, `f32`
/// unchanged (64x64x56x56 channels-first, two threads, AMD EPYC Zen 4, three alternating
/// runs). It serves [`relu_grad`]: `Kernels::relu_grad`, and `backward_relu`'s channels without
/// a gate.
#[derive(Debug, Clone, Copy, Default)]
struct ReluPass;
no_coefficients!(ReluPass);

impl<'a, T: Element> Apply<(&'a [[T; 2]], &'a [[T; 2]]), [T; 2], f64, 0> for ReluPass {
    #[inline(always)]
    fn apply(self, (y, dy): ([T; 2], [T; 2])) -> [T; 2] {
        [relu_pass_one(y[0], dy[0]), relu_pass_one(y[1], dy[1])]
    }

    #[inline(always)]
    fn apply_lanes(
        _: [[f64; MAP_CHUNK]; 0],
        (y, dy): (&'a [[T; 2]; MAP_CHUNK], &'a [[T; 2]; MAP_CHUNK]),
    ) -> [[T; 2]; MAP_CHUNK] {
        // The step's 16 values as two steps of eight, in memory order.
        let step = |i: usize| {
            let at = |v: &[[T; 2]; MAP_CHUNK]| -> [T; MAP_CHUNK] {
                std::array::from_fn(|l| v[(i * MAP_CHUNK + l) / 2][l % 2])
            };
            let (yi, di) = (at(y), at(dy));
            // In `f32` where that is exact (every type but `f64`).
            let pass = if size_of::<T>() <= 4 {
                T::to_f32_step(yi).map(|v| v > 0.0 || v.is_nan())
            } else {
                T::to_f64_step(yi).map(|v| v > 0.0 || v.is_nan())
            };
            std::array::from_fn::<T, MAP_CHUNK, _>(|l| if pass[l] { di[l] } else { T::default() })
        };
        let (a, b) = (step(0), step(1));
        std::array::from_fn(|l| {
            let v = if l < MAP_CHUNK / 2 { &a } else { &b };
            let k = 2 * l % MAP_CHUNK;
            [v[k], v[k + 1]]
        })
    }
}

multiversion! {
    /// [`ReluPass`] over `y` and `dy` into `out`; `stream` as in [`map_runs`].
    fn relu_pass<T>(y: &[T], dy: &[T], out: &mut [T], stream: bool) {
        let ((yp, yt), (dp, dt)) = (y.as_chunks::<2>(), dy.as_chunks::<2>());
        let (op, ot) = out.as_chunks_mut::<2>();
        map_runs((yp, dp), op, op.len().max(1), &[ReluPass], stream);
        for ((o, &y), &d) in ot.iter_mut().zip(yt).zip(dt) {
            *o = relu_pass_one(y, d);
        }
    }
}

/// The gradient through a ReLU whose mask the forward wrote ([`crate::mask`]): `dy` where its
/// bit is set, +0 elsewhere, by pairs of values (a pair's two bits, the first value's lowest) as
/// [`ReluPass`], whose bits it gives where the mask is `y`'s.
#[derive(Debug, Clone, Copy, Default)]
struct MaskPass;
no_coefficients!(MaskPass);

/// `dy` where `bit` is set, else +0.
#[inline(always)]
fn kept<T: Element>(bit: u32, dy: T) -> T {
    if bit & 1 != 0 {
        dy
    } else {
        T::default()
    }
}

impl<'a, T: Element> Apply<(&'a [[T; 2]], PairBits<'a>), [T; 2], f64, 0> for MaskPass {
    #[inline(always)]
    fn apply(self, (dy, bits): ([T; 2], u32)) -> [T; 2] {
        [kept(bits, dy[0]), kept(bits >> 1, dy[1])]
    }

    #[inline(always)]
    fn apply_lanes(
        _: [[f64; MAP_CHUNK]; 0],
        (dy, bits): (&'a [[T; 2]; MAP_CHUNK], u32),
    ) -> [[T; 2]; MAP_CHUNK] {
        std::array::from_fn(|p| {
            let b = bits >> (2 * p);
            [kept(b, dy[p][0]), kept(b >> 1, dy[p][1])]
        })
    }
}

multiversion! {
    /// [`MaskPass`] over `dy` (values `at..at + dy.len()` of the tensor) with the mask `mask`
    /// into `out`; `stream` as in [`map_runs`].
    fn mask_pass<T>(mask: &[u64], at: usize, dy: &[T], out: &mut [T], stream: bool) {
        let (dp, dt) = dy.as_chunks::<2>();
        let (op, ot) = out.as_chunks_mut::<2>();
        let bits = PairBits::new(mask, at, dp.len());
        map_runs((dp, bits), op, op.len().max(1), &[MaskPass], stream);
        let tail = at + 2 * dp.len();
        for (k, (o, &d)) in ot.iter_mut().zip(dt).enumerate() {
            let i = tail + k;
            *o = kept((mask[i / 64] >> (i % 64)) as u32, d);
        }
    }
}

/// The gradient through the ReLU of the residual forward whose mask is `mask`: `out = dy` where
/// its bit is set, else 0, as [`relu_grad`] of that forward's `y` gives; in parallel when
/// `exec.par`, streamed when `exec.stream`.
pub(crate) fn relu_grad_masked<T: Element>(mask: &[u64], dy: &[T], out: &mut [T], exec: Exec) {
    masking_tasks(out, exec, |r, o, stream| {
        mask_pass(exec.isa, mask, r.start, &dy[r], o, stream)
    });
}

/// Runs an element-wise masking pass over `out` in tasks of [`MAP_TASK_ELEMS`] values:
/// `pass(range, out, stream)` writes the values at `range`, streamed when `stream`; in
/// parallel when `exec.par` (element-wise, so the same bits on every cut).
fn masking_tasks<T: Element>(
    out: &mut [T],
    exec: Exec,
    pass: impl Fn(Range<usize>, &mut [T], bool) + Sync,
) {
    for_each_chunk(exec.par, out, MAP_TASK_ELEMS, |k, o| {
        let r = k * MAP_TASK_ELEMS..k * MAP_TASK_ELEMS + o.len();
        streaming(exec.isa, exec.stream, |w| pass(r, o, w.streams()));
    });
}

/// The gradient through a ReLU whose output is `y`: `out = dy` where `y > 0`, else 0
/// ([`ReluPass`]), in parallel when `exec.par` (element-wise, so the same bits on every cut),
/// streamed when `exec.stream`.
pub(crate) fn relu_grad<T: Element>(y: &[T], dy: &[T], out: &mut [T], exec: Exec) {
    masking_tasks(out, exec, |r, o, stream| {
        relu_pass(exec.isa, &y[r.clone()], &dy[r], o, stream)
    });
}
