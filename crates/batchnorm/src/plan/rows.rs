//! Channels-last rows, widened: per-channel values repeated over a row of at least
//! [`MIN_ROW_WIDTH`](crate::tuning::MIN_ROW_WIDTH) positions, the coefficient layouts the
//! element-wise passes cycle through, and the strip walks of the reductions.

use std::marker::PhantomData;
use std::ops::Range;

use super::row_width;
use crate::simd::{prefetch_past, Cyclic, Inputs, MAP_CHUNK};
use crate::tuning::{COLUMN_STRIP, PREFETCH_BYTES};

/// `pattern[i] = per_channel[i % C]` over one widened row.
pub(crate) fn widen<V: Copy>(per_channel: &[V], pattern: &mut Vec<V>) {
    widen_iter(per_channel.len(), per_channel.iter().copied(), pattern);
}

/// [`widen`] for the `channels` values an iterator yields: one row of them, then copies of it.
pub(crate) fn widen_iter<V: Copy>(
    channels: usize,
    per_channel: impl Iterator<Item = V>,
    pattern: &mut Vec<V>,
) {
    let width = row_width(channels);
    pattern.clear();
    pattern.reserve(width);
    pattern.extend(per_channel.take(channels));
    assert_eq!(pattern.len(), channels, "one value per channel");
    repeat_to(pattern, width);
}

/// Repeats `pattern` (one value per channel) until it is `width` long, a multiple of its length.
fn repeat_to<V: Copy>(pattern: &mut Vec<V>, width: usize) {
    while pattern.len() < width {
        // Doubling copies; `width` is a multiple of `channels`, so the pattern stays whole.
        let copy = pattern.len().min(width - pattern.len());
        pattern.extend_from_within(..copy);
    }
}

/// `K` coefficients per channel repeated over one widened row and wrapped: array `a` holds
/// coefficient `a` of channel `i % C` at every position `i` of the row, then its first
/// [`MAP_CHUNK`] values again, so that a step of [`crate::simd::map_cyclic`] starting anywhere
/// in the row reads each coefficient contiguously ([`Wrapped::chunks`]).
#[derive(Debug, Clone)]
pub(crate) struct Wrapped<V, const K: usize> {
    width: usize,
    /// Each `width + MAP_CHUNK` long: [`Wrapped::chunks`] relies on it.
    arrays: [Vec<V>; K],
}

impl<V, const K: usize> Default for Wrapped<V, K> {
    fn default() -> Self {
        Self {
            width: 0,
            arrays: std::array::from_fn(|_| Vec::new()),
        }
    }
}

impl<V: Copy, const K: usize> Wrapped<V, K> {
    /// Lays out the coefficients `field(map)` of each channel's map.
    pub fn set<M>(&mut self, maps: &[M], field: impl Fn(&M) -> [V; K]) {
        let (c, width) = (maps.len(), row_width(maps.len()));
        let Some(first) = maps.first() else {
            *self = Self::default();
            return;
        };
        for (out, v) in self.arrays.iter_mut().zip(field(first)) {
            out.clear();
            out.resize(c, v);
        }
        // One pass over the maps, writing through slices: pushing stored each array's length
        // back to memory after every value (a third of a 1024-channel evaluation's fixed cost).
        let mut arrays = self.arrays.each_mut().map(|a| a.as_mut_slice());
        for (i, m) in maps.iter().enumerate() {
            for (out, v) in arrays.iter_mut().zip(field(m)) {
                out[i] = v;
            }
        }
        for out in &mut self.arrays {
            repeat_to(out, width);
            out.extend_from_within(..MAP_CHUNK);
        }
        self.width = width;
    }

    /// Positions of one widened row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The [`MAP_CHUNK`] values of each coefficient from position `j` on.
    ///
    /// # Safety
    /// `j < self.width()`.
    #[inline(always)]
    pub unsafe fn chunks(&self, j: usize) -> [&[V; MAP_CHUNK]; K] {
        debug_assert!(j < self.width);
        std::array::from_fn(|a| {
            // SAFETY: `set` made every array `width + MAP_CHUNK` long (the fields are private
            // and nothing else changes them), and `j < width` (the caller's contract): the
            // `MAP_CHUNK` values from `j` are in bounds.
            unsafe { &*self.arrays[a].as_ptr().add(j).cast::<[V; MAP_CHUNK]>() }
        })
    }

    /// The coefficients at position `j` of the row.
    #[inline(always)]
    pub fn at(&self, j: usize) -> [V; K] {
        std::array::from_fn(|a| self.arrays[a][j])
    }
}

/// A per-channel map of `K` coefficients of type `V`, which the channels-last passes lay out
/// over a widened row ([`WideMaps`]).
pub(crate) trait Coefficients<V, const K: usize>: Copy {
    /// The coefficients, in a fixed order.
    fn coefficients(&self) -> [V; K];
    /// The map with these coefficients.
    fn from_coefficients(c: [V; K]) -> Self;

    /// The coefficients of the map's quick evaluation in `f32`, for the storage types that
    /// have one ([`Apply::QUICK`]); zeros for maps without it.
    fn quick(&self) -> [f32; QUICK_LEN] {
        [0.0; QUICK_LEN]
    }
}

/// The most coefficients a quick evaluation in `f32` takes per channel (the gated dx map's).
pub(crate) const QUICK_LEN: usize = 7;

/// A per-channel map of coefficients `V` applied to its inputs `I` (x, or x and dy side by
/// side), giving values `U`: one value, or a step of them converted and computed lane by lane
/// (which the compiler vectorises; per value, the 16-bit conversions would not be).
pub(crate) trait Apply<I: Inputs, U, V: Copy, const K: usize>: Coefficients<V, K> {
    /// One value.
    fn apply(self, v: I::Value) -> U;

    /// A step, lane `l` mapped with the coefficients `c[k][l]` (the same arithmetic as
    /// [`apply`](Self::apply), so the same bits).
    fn apply_lanes(c: [[V; MAP_CHUNK]; K], xs: I::Step) -> [U; MAP_CHUNK];

    /// Whether steps go through [`apply_quick_lanes`](Self::apply_quick_lanes): an evaluation
    /// in `f32` from the [`quick`](Coefficients::quick) coefficients, checked, with the exact
    /// coefficients read only when the check fails (bf16, see
    /// [`Element::round_step`](crate::Element::round_step)).
    const QUICK: bool = false;

    /// A step, lane `l` mapped with the quick coefficients `q(l)`, or with the exact ones
    /// `c()` where that does not settle the result: the bits of
    /// [`apply_lanes`](Self::apply_lanes).
    #[inline(always)]
    fn apply_quick_lanes(
        q: impl Fn(usize) -> [f32; QUICK_LEN],
        c: impl FnOnce() -> [[V; MAP_CHUNK]; K],
        xs: I::Step,
    ) -> [U; MAP_CHUNK] {
        let _ = q;
        Self::apply_lanes(c(), xs)
    }

    /// A step, every lane with this map.
    #[inline(always)]
    fn apply_step(self, xs: I::Step) -> [U; MAP_CHUNK] {
        let c = self.coefficients();
        let c: [[V; MAP_CHUNK]; K] = std::array::from_fn(|k| [c[k]; MAP_CHUNK]);
        if Self::QUICK {
            // Each lane's quick coefficients from its exact ones, inside the lane loop (hoisted
            // out of the caller's loop): made once and copied to every lane, the compiler
            // vectorised half of each step and left the rest to scalar code.
            let q = |l| Self::from_coefficients(std::array::from_fn(|k| c[k][l])).quick();
            Self::apply_quick_lanes(q, move || c, xs)
        } else {
            Self::apply_lanes(c, xs)
        }
    }
}

/// Per-channel maps `M` of coefficients `V` repeated over one widened row and wrapped, one
/// array per coefficient: the coefficients of a channels-last pass (see
/// [`crate::simd::map_cyclic`]), and those of the maps' quick evaluation when they have one.
/// `#[repr(C)]`: the maps type is only a marker, and [`reinterpret`](WideMaps::reinterpret)
/// reads the same coefficients as other maps.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct WideMaps<V, M, const K: usize> {
    exact: Wrapped<V, K>,
    quick: Wrapped<f32, QUICK_LEN>,
    maps: PhantomData<M>,
}

impl<V, M, const K: usize> Default for WideMaps<V, M, K> {
    fn default() -> Self {
        Self {
            exact: Wrapped::default(),
            quick: Wrapped::default(),
            maps: PhantomData,
        }
    }
}

impl<V: Copy, M: Coefficients<V, K>, const K: usize> WideMaps<V, M, K> {
    /// Lays out every channel's map, and its quick coefficients when `quick` (the maps'
    /// [`Apply::QUICK`]).
    pub fn set(&mut self, maps: &[M], quick: bool) {
        self.exact.set(maps, M::coefficients);
        if quick {
            self.quick.set(maps, M::quick);
        } else {
            self.quick = Wrapped::default();
        }
    }

    /// The same coefficients, applied as maps `N` (which must read them in the order `M`
    /// lays them out: a wrapper that applies more after `M`).
    pub fn reinterpret<N: Coefficients<V, K>>(&self) -> &WideMaps<V, N, K> {
        // SAFETY: `WideMaps` is `#[repr(C)]` and its maps type only appears in `PhantomData`,
        // a zero-sized field: `WideMaps<V, M, K>` and `WideMaps<V, N, K>` have the same fields
        // of the same types in the same order, hence the same layout, and the reference keeps
        // its lifetime.
        unsafe { &*std::ptr::from_ref(self).cast::<WideMaps<V, N, K>>() }
    }
}

impl<I: Inputs, U, V: Copy, M: Apply<I, U, V, K>, const K: usize> Cyclic<I, U>
    for WideMaps<V, M, K>
{
    /// Checks (once per pass) that the maps' quick coefficients are laid out when they have
    /// some, which [`step`](Cyclic::step) relies on.
    fn width(&self) -> usize {
        let w = self.exact.width();
        assert!(
            !M::QUICK || self.quick.width() == w,
            "quick coefficients laid out for {} positions of {w}",
            self.quick.width()
        );
        w
    }

    #[inline(always)]
    unsafe fn step(&self, xs: I::Step, j: usize) -> [U; MAP_CHUNK] {
        // (`from_fn`, not `map`: the compiler left `map` out of line in these loops.)
        let c = move || {
            // SAFETY: `j < width`, this function's own contract.
            let c = unsafe { self.exact.chunks(j) };
            std::array::from_fn(|k| *c[k])
        };
        if M::QUICK {
            // SAFETY: `j < width`, this function's own contract, and the quick coefficients
            // span the same width when `M::QUICK` (checked by `width`, which `map_cyclic`
            // calls before any step).
            let q = unsafe { self.quick.chunks(j) };
            M::apply_quick_lanes(|l| std::array::from_fn(|k| q[k][l]), c, xs)
        } else {
            M::apply_lanes(c(), xs)
        }
    }

    #[inline(always)]
    fn one(&self, x: I::Value, j: usize) -> U {
        M::from_coefficients(self.exact.at(j)).apply(x)
    }

    fn period_bytes(&self) -> usize {
        // The quick coefficients when the maps have them (the exact ones are read only when
        // a step falls back).
        let per_position = if M::QUICK {
            QUICK_LEN * size_of::<f32>()
        } else {
            K * size_of::<V>()
        };
        per_position * self.exact.width()
    }
}

/// The column strips of a widened row of `w` positions: the channels-last reductions walk a
/// block of rows one strip at a time, so that their per-position accumulators stay in L1 even
/// for thousands of channels.
pub(crate) fn column_strips(w: usize) -> impl Iterator<Item = Range<usize>> {
    (0..w)
        .step_by(COLUMN_STRIP)
        .map(move |s| s..(s + COLUMN_STRIP).min(w))
}

/// Positions `cols` of widened rows `first..first + R` (rows `w` long) of `t`: one step of a
/// strip walk.
#[inline(always)]
pub(crate) fn strips<'a, T, const R: usize>(
    t: &'a [T],
    w: usize,
    cols: &Range<usize>,
    first: usize,
) -> [&'a [T]; R] {
    std::array::from_fn(|i| &t[(first + i) * w..][cols.clone()])
}

/// Positions per column chunk of a strip walk: one cache line of `f32`, two of `f64`. The
/// channels-last reductions take a step's columns a chunk at a time, four row strips side by
/// side ([`strip_step`]): a fixed length, which the compiler unrolls into whole vectors, and
/// four streams, whose pointers stay in registers next to the accumulators' (with eight, four
/// rows of both x and dy, they were spilled to the stack and reloaded for every vector). Before
/// each chunk they prefetch the same chunk of the rows a few steps on ([`StripPrefetch`]), addressed from
/// the current rows (one more register), so the prefetches go out spread over the step, not as
/// a burst of the whole strip before it (a burst of the 32 lines of a 2 KiB strip row stalled
/// the loads behind it: C = 256 to 2048 ran 10-20% slower). Against the walk over a line-long
/// range of run-time length with the far rows' own pointers, the statistics pass of
/// 64x64x56x56 channels-last took 1.17-1.25 ms instead of 1.54-1.65, and the gradient sums
/// 1.06-1.09 times a plain `f64` loop over x and dy instead of 1.18-1.22.
///
/// Only tensors whose output is streamed (beyond the cache, see [`crate::stream`]) prefetch so:
/// rows of a cache-resident tensor are contiguous streams the hardware prefetchers follow from
/// L2 or L3, and the software prefetches only cost issue slots (prefetching against not, with
/// the element-wise passes likewise, medians of three alternating `bnlab bench` runs, AMD EPYC
/// Zen 4: 256x1024 backward 0.247 against 0.199 ms on one thread, 0.193 against 0.161 on two;
/// 32x256x14x14 channels-last backward on two threads 0.730 against 0.525).
pub(crate) const STRIP_CHUNK: usize = 16;

/// One step of a strip walk over four row strips side by side: `add(a[k], b[k], c[k], v)` at
/// every position `k` of the strip, `c[k]` the `K` per-position coefficients there (one array
/// each), `v` the four rows' values there, a chunk of
/// [`STRIP_CHUNK`] positions at a time, each chunk first prefetching the same chunk of the
/// rows `far` bytes on when `far` is given ([`StripPrefetch::far`]).
#[inline(always)]
pub(crate) fn strip_step<T: Copy, const K: usize>(
    rows: [&[T]; 4],
    a: &mut [f64],
    b: &mut [f64],
    c: [&[f64]; K],
    far: Option<usize>,
    add: impl Fn(&mut f64, &mut f64, [f64; K], [T; 4]),
) {
    let split = rows.map(<[T]>::as_chunks::<STRIP_CHUNK>);
    let (rc, rt) = (split.map(|(c, _)| c), split.map(|(_, t)| t));
    let (ac, at) = a.as_chunks_mut::<STRIP_CHUNK>();
    let (bc, bt) = b.as_chunks_mut::<STRIP_CHUNK>();
    let split: [_; K] = std::array::from_fn(|k| c[k].as_chunks::<STRIP_CHUNK>());
    let (cc, ct): ([_; K], [_; K]) = (
        std::array::from_fn(|k| split[k].0),
        std::array::from_fn(|k| split[k].1),
    );
    let acc = ac.iter_mut().zip(bc.iter_mut()).enumerate();
    for ((i, (a, b)), rs) in acc.zip(side_by_side(rc)) {
        if let Some(far) = far {
            rs.iter().for_each(|r| prefetch_past(*r, far));
        }
        add_lanes(a, b, std::array::from_fn(|k| &cc[k][i]), rs, &add);
    }
    if let Some(far) = far {
        rt.iter().for_each(|t| prefetch_past(t, far));
    }
    for (k, (a, b)) in at.iter_mut().zip(bt.iter_mut()).enumerate() {
        add(a, b, std::array::from_fn(|i| ct[i][k]), rt.map(|r| r[k]));
    }
}

/// Positions of a column chunk of [`narrow_walk`], whose accumulators stay in registers.
const NARROW_ROW: usize = 64;

/// Whether a reduction over widened rows of `w` positions goes by [`narrow_walk`] (else by the
/// strip walk, [`strip_step`]). Rows of a tensor in cache: any multiple of [`NARROW_TAIL`]
/// positions (8x80x28x28, statistics over a read of x 4.15 -> 2.96, gradient sums 2.82 ->
/// 2.27, one thread). Streamed rows (tensors beyond the cache, `prefetch`), which the column
/// chunks walk from memory once per chunk: multiples of 64 up to 256 positions (64x256x28x28,
/// statistics 2.82 -> 2.55); wider ones measured slower (statistics 2.28 -> 2.69 at 512
/// positions, 2.20 -> 2.80 at 2048), and so did a chunk of 16 after the whole ones (gradient
/// sums of 32x96x56x56 1.54 -> 2.05).
pub(crate) fn narrow_rows(w: usize, prefetch: bool) -> bool {
    if prefetch {
        w.is_multiple_of(NARROW_ROW) && w <= 4 * NARROW_ROW
    } else {
        w.is_multiple_of(NARROW_TAIL)
    }
}

/// A reduction over the whole rows of `rows` (`R` inputs side by side, rows as long as `a`, a
/// multiple of [`NARROW_TAIL`]; see [`narrow_rows`]): `add(a[k], b[k], c[k], v)` at every
/// position `k` of every row, in row order, `c[k]` the `K` per-position coefficients there, `v`
/// the inputs' values there; software prefetches when `prefetch`. It goes a chunk of
/// [`NARROW_ROW`] columns at a time down all the rows (then chunks of [`NARROW_TAIL`]), the
/// chunk's accumulators and coefficients in registers (eight vectors each), where the strip
/// walk ([`strip_step`]) loads and stores its accumulators at every step. Time over a plain
/// read of the same inputs in the same process (`Kernels::moments`, `Kernels::grad_sums`,
/// channels-last `f32`, medians of 31, AMD EPYC Zen 4), strip walk -> this, one thread:
/// statistics of 64x64x56x56 2.14-2.18 -> 1.25-1.31, of 32x128x28x28 4.08 -> 2.01, of
/// 32x256x14x14 3.38 -> 3.04, of 256x1024 4.12 -> 3.93; gradient sums 1.38-1.41 -> 1.22,
/// 2.54 -> 1.57, 2.61 -> 2.29, 2.88 -> 2.64; on two threads likewise (statistics 1.61-1.66
/// -> 1.12-1.23, 2.93 -> 2.11, 2.93 -> 2.04, 3.75 -> 3.42). Its chunks of 64 read 256
/// contiguous bytes of `f32` per row; chunks of 16 over whole rows (4 KiB rows of 256x1024)
/// ran slower than the strip walk, so they only follow the last whole chunk of 64.
#[inline(always)]
pub(crate) fn narrow_walk<T: Copy, const K: usize, const R: usize>(
    rows: [&[T]; R],
    a: &mut [f64],
    b: &mut [f64],
    c: [&[f64]; K],
    prefetch: bool,
    add: impl Fn(&mut f64, &mut f64, [f64; K], [T; R]) + Copy,
) {
    let w = a.len();
    let whole = w / NARROW_ROW * NARROW_ROW;
    for j in (0..whole).step_by(NARROW_ROW) {
        walk_columns::<T, K, R, NARROW_ROW>(rows, j, a, b, c, prefetch, add);
    }
    for j in (whole..w).step_by(NARROW_TAIL) {
        walk_columns::<T, K, R, NARROW_TAIL>(rows, j, a, b, c, prefetch, add);
    }
}

/// Positions of the chunks of [`narrow_walk`] past the last whole [`NARROW_ROW`].
const NARROW_TAIL: usize = 16;

/// [`narrow_walk`]'s chunk of `N` columns from `j` on, down all the rows.
#[inline(always)]
fn walk_columns<T: Copy, const K: usize, const R: usize, const N: usize>(
    rows: [&[T]; R],
    j: usize,
    a: &mut [f64],
    b: &mut [f64],
    c: [&[f64]; K],
    prefetch: bool,
    add: impl Fn(&mut f64, &mut f64, [f64; K], [T; R]),
) {
    let w = a.len();
    let n = rows[0].len() / w;
    // About `PREFETCH_BYTES` on, in whole rows: the same chunk of a later row.
    let far = PREFETCH_BYTES.div_ceil(w * size_of::<T>()).max(1) * w * size_of::<T>();
    let chunk = |v: &[f64]| -> [f64; N] { *v[j..].first_chunk().expect("whole chunks") };
    let (mut la, mut lb) = (chunk(a), chunk(b));
    let cs: [[f64; N]; K] = std::array::from_fn(|k| chunk(c[k]));
    for i in 0..n {
        let rs: [&[T; N]; R] =
            std::array::from_fn(|r| rows[r][i * w + j..].first_chunk().expect("whole rows"));
        if prefetch {
            rs.iter().for_each(|r| prefetch_past(*r, far));
        }
        add_lanes(&mut la, &mut lb, std::array::from_fn(|k| &cs[k]), rs, &add);
    }
    a[j..j + N].copy_from_slice(&la);
    b[j..j + N].copy_from_slice(&lb);
}

/// `add(a[l], b[l], c[l], v[l])` at each position `l` of a chunk of `N` positions of a strip
/// or column walk: `c` the chunks of the `K` coefficient arrays, `v` those of the `R` rows.
#[inline(always)]
fn add_lanes<T: Copy, const K: usize, const R: usize, const N: usize>(
    a: &mut [f64; N],
    b: &mut [f64; N],
    c: [&[f64; N]; K],
    rows: [&[T; N]; R],
    add: &impl Fn(&mut f64, &mut f64, [f64; K], [T; R]),
) {
    for l in 0..N {
        add(
            &mut a[l],
            &mut b[l],
            std::array::from_fn(|k| c[k][l]),
            rows.map(|r| r[l]),
        );
    }
}

/// The chunks of four row strips side by side (see [`STRIP_CHUNK`]).
#[inline(always)]
fn side_by_side<T>(rows: [&[[T; STRIP_CHUNK]]; 4]) -> impl Iterator<Item = [&[T; STRIP_CHUNK]; 4]> {
    let [a, b, c, d] = rows;
    a.iter()
        .zip(b)
        .zip(c)
        .zip(d)
        .map(|(((a, b), c), d)| [a, b, c, d])
}

/// The sum of the terms of one position over a strip walk's step of `R` rows: one term as it
/// is, two as `a + b`, four as `(a + b) + (c + d)`.
#[inline(always)]
pub(crate) fn step_sum<const R: usize>(t: [f64; R]) -> f64 {
    match t.as_slice() {
        [a] => *a,
        [a, b] => a + b,
        [a, b, c, d] => (a + b) + (c + d),
        _ => t.iter().sum(),
    }
}

/// Where a strip walk's steps prefetch: about [`PREFETCH_BYTES`] of each input ahead, in whole
/// steps (at least one), and the last steps their own rows again.
pub(crate) struct StripPrefetch {
    steps: usize,
    ahead: usize,
    stride: usize,
    on: bool,
}

impl StripPrefetch {
    /// For a walk of `steps` steps, each reading `read` bytes of each input, `stride` bytes
    /// apart in memory; prefetching at all only when `on` (see [`STRIP_CHUNK`]).
    pub fn new(steps: usize, read: usize, stride: usize, on: bool) -> Self {
        let ahead = PREFETCH_BYTES.div_ceil(read.max(1));
        Self {
            steps,
            ahead,
            stride,
            on,
        }
    }

    /// How far past step `i`'s rows to prefetch, in bytes; `None` when not prefetching.
    #[inline(always)]
    pub fn far(&self, i: usize) -> Option<usize> {
        if !self.on {
            None
        } else if i + self.ahead < self.steps {
            Some(self.ahead * self.stride)
        } else {
            Some(0)
        }
    }
}

/// Folds a widened accumulator back to one value per channel, in a fixed order, into its own
/// first `channels` entries.
pub(crate) fn fold_widened_in_place(wide: &mut [f64], channels: usize) {
    let (head, rest) = wide.split_at_mut(channels);
    for row in rest.chunks_exact(channels) {
        for (o, &v) in head.iter_mut().zip(row) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_steps_read_the_channels_of_their_positions() {
        // Widths that are and are not multiples of a step: C = 3 (66 positions), 64, 100.
        for c in [3usize, 64, 100] {
            let maps: Vec<usize> = (0..c).collect();
            let mut wrapped = Wrapped::<f64, 2>::default();
            wrapped.set(&maps, |&ch| [ch as f64, -(ch as f64)]);
            let w = wrapped.width();
            assert_eq!(w, row_width(c));
            for j in 0..w {
                // SAFETY: j < width.
                let [a, b] = unsafe { wrapped.chunks(j) };
                for k in 0..MAP_CHUNK {
                    let ch = ((j + k) % w % c) as f64;
                    assert_eq!((a[k], b[k]), (ch, -ch), "C = {c}, position {j} + {k}");
                }
                assert_eq!(wrapped.at(j), [(j % c) as f64, -((j % c) as f64)]);
            }
        }
    }
}
