//! How a call is cut into work: channels processed one at a time from L2 (each on one thread,
//! or shared by all), or channel groups ("waves") from L3, and the units of parallel work inside
//! them. The pieces each channel's statistics are merged from depend only on the shape, never on
//! the number of threads or the cache sizes, and merge in the same order on every path: the
//! results are bitwise the same.

use std::marker::PhantomData;
use std::ops::Range;

use crate::element::Element;
use crate::layout::Geometry;
use crate::par::{for_each_chunk, Par};
use crate::simd::{prefetch_past, Cyclic, Inputs, Isa, RunAhead, MAP_CHUNK};
use crate::stream::{streaming, Writer};
use crate::tuning::{
    COLUMN_STRIP, ITEM_ELEMS, MAP_TASK_ELEMS, MERGE_TASK_CHANNELS, MIN_BLOCK_ROWS,
    MIN_CHANNEL_RUN_BYTES, MIN_GROUP_RUN_BYTES, MIN_RESIDENT_BYTES, MIN_ROW_BLOCKS, MIN_ROW_WIDTH,
    PAR_MERGE_MIN, PIECE_ELEMS, PREFETCH_BYTES, ROW_BLOCK_ELEMS, STRETCH_BUDGET_QUARTERS,
    WAVE_BYTES,
};

/// The execution choices of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exec {
    pub isa: Isa,
    /// Whether to split the work over threads.
    pub par: bool,
    /// Whether to write outputs with non-temporal stores (see [`crate::stream`]).
    pub stream: bool,
    /// Bytes of a core's L2 one channel (or one share of it) may fill (see [`channel_cut`]).
    pub l2_budget: usize,
}

impl Exec {
    /// For a call over `len` elements of `elem_bytes` bytes each.
    pub fn new(isa: Isa, par: Par, len: usize, elem_bytes: usize) -> Self {
        let stream = len * elem_bytes >= crate::stream::threshold_bytes();
        Self {
            isa,
            par: par.split(len),
            stream,
            l2_budget: crate::cache::l2_budget_bytes(),
        }
    }

    /// The same choices, on the calling thread.
    pub fn sequential(self) -> Self {
        Self { par: false, ..self }
    }
}

/// The width of a widened row: the smallest multiple of `channels` of at least
/// [`MIN_ROW_WIDTH`]. Channels-last kernels treat that many consecutive values as one row, so a
/// layer with 3 channels still fills whole vectors; position `i` of a widened row belongs to
/// channel `i % channels`.
pub(crate) fn row_width(channels: usize) -> usize {
    channels * MIN_ROW_WIDTH.div_ceil(channels)
}

/// Rows per block for channels-last input: a whole number of widened rows, about
/// [`ROW_BLOCK_ELEMS`] values, but small enough that the tensor has [`MIN_ROW_BLOCKS`] blocks
/// to share between threads, and at least [`MIN_BLOCK_ROWS`] rows.
pub(crate) fn rows_per_block(geo: Geometry) -> usize {
    let c = geo.channels;
    let per_wide = row_width(c) / c;
    let target = (geo.len() / MIN_ROW_BLOCKS).min(ROW_BLOCK_ELEMS);
    (target / c).max(MIN_BLOCK_ROWS).next_multiple_of(per_wide)
}

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
        for (a, out) in self.arrays.iter_mut().enumerate() {
            widen_iter(maps.len(), maps.iter().map(|m| field(m)[a]), out);
            out.extend_from_within(..MAP_CHUNK);
        }
        self.width = row_width(maps.len());
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

/// A per-channel map of four coefficients of type `V`, which the channels-last passes lay out
/// over a widened row ([`WideMaps`]).
pub(crate) trait FourCoefficients<V>: Copy {
    /// The coefficients, in a fixed order.
    fn coefficients(&self) -> [V; 4];
    /// The map with these coefficients.
    fn from_coefficients(c: [V; 4]) -> Self;
}

/// A per-channel map applied to one value of its inputs `I` (x, or x and dy side by side).
pub(crate) trait Apply<I: Inputs, U> {
    fn apply(self, v: I::Value) -> U;
}

/// Per-channel maps `M` of coefficients `V` repeated over one widened row and wrapped, one
/// array per coefficient: the coefficients of a channels-last pass (see
/// [`crate::simd::map_cyclic`]).
#[derive(Debug, Clone)]
pub(crate) struct WideMaps<V, M>(Wrapped<V, 4>, PhantomData<M>);

impl<V, M> Default for WideMaps<V, M> {
    fn default() -> Self {
        Self(Wrapped::default(), PhantomData)
    }
}

impl<V: Copy, M: FourCoefficients<V>> WideMaps<V, M> {
    /// Lays out every channel's map.
    pub fn set(&mut self, maps: &[M]) {
        self.0.set(maps, M::coefficients);
    }
}

impl<I: Inputs, U, V: Copy, M: FourCoefficients<V> + Apply<I, U>> Cyclic<I, U> for WideMaps<V, M> {
    fn width(&self) -> usize {
        self.0.width()
    }

    #[inline(always)]
    unsafe fn step(&self, xs: I::Step, j: usize) -> [U; MAP_CHUNK] {
        // SAFETY: `j < width`, this function's own contract.
        let coefs = unsafe { self.0.chunks(j) };
        std::array::from_fn(|l| M::from_coefficients(coefs.map(|c| c[l])).apply(I::lane(xs, l)))
    }

    #[inline(always)]
    fn one(&self, x: I::Value, j: usize) -> U {
        M::from_coefficients(self.0.at(j)).apply(x)
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
pub(crate) const STRIP_CHUNK: usize = 16;

/// One step of a strip walk over four row strips side by side: `add(a[k], b[k], c[k], v)` at
/// every position `k` of the strip, `v` the four rows' values there, a chunk of
/// [`STRIP_CHUNK`] positions at a time, each chunk first prefetching the same chunk of the
/// rows `far` bytes on ([`StripPrefetch::far`]).
#[inline(always)]
pub(crate) fn strip_step<T: Copy>(
    rows: [&[T]; 4],
    a: &mut [f64],
    b: &mut [f64],
    c: &[f64],
    far: usize,
    add: impl Fn(&mut f64, &mut f64, f64, [T; 4]),
) {
    let split = rows.map(<[T]>::as_chunks::<STRIP_CHUNK>);
    let (rc, rt) = (split.map(|(c, _)| c), split.map(|(_, t)| t));
    let (ac, at) = a.as_chunks_mut::<STRIP_CHUNK>();
    let (bc, bt) = b.as_chunks_mut::<STRIP_CHUNK>();
    let (cc, ct) = c.as_chunks::<STRIP_CHUNK>();
    let acc = ac.iter_mut().zip(bc.iter_mut()).zip(cc);
    for (((a, b), c), rs) in acc.zip(side_by_side(rc)) {
        rs.iter().for_each(|r| prefetch_past(*r, far));
        for l in 0..STRIP_CHUNK {
            add(&mut a[l], &mut b[l], c[l], rs.map(|r| r[l]));
        }
    }
    rt.iter().for_each(|t| prefetch_past(t, far));
    for (k, ((a, b), &c)) in at.iter_mut().zip(bt.iter_mut()).zip(ct).enumerate() {
        add(a, b, c, rt.map(|r| r[k]));
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
}

impl StripPrefetch {
    /// For a walk of `steps` steps, each reading `read` bytes of each input, `stride` bytes
    /// apart in memory.
    pub fn new(steps: usize, read: usize, stride: usize) -> Self {
        let ahead = PREFETCH_BYTES.div_ceil(read.max(1));
        Self {
            steps,
            ahead,
            stride,
        }
    }

    /// How far past step `i`'s rows to prefetch, in bytes.
    #[inline(always)]
    pub fn far(&self, i: usize) -> usize {
        if i + self.ahead < self.steps {
            self.ahead * self.stride
        } else {
            0
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

/// Neighbouring channels per unit of work in one outer block of channels-first input.
pub(crate) fn channels_per_item(inner: usize) -> usize {
    (ITEM_ELEMS / inner).max(1)
}

/// Consecutive outer blocks whose runs are reduced together in channels-first input: short runs
/// are gathered up to [`PIECE_ELEMS`] values per channel, so that their reduction costs one merge
/// per piece, not one per run.
pub(crate) fn runs_per_piece(geo: Geometry) -> usize {
    (PIECE_ELEMS / geo.inner).clamp(1, geo.outer)
}

/// The channel groups processed one after the other, for a pass that keeps `streams` tensors of
/// `elem_bytes`-sized elements in cache between its two halves. Channels-last input has one
/// group: every row holds every channel.
pub(crate) fn channel_groups(
    geo: Geometry,
    elem_bytes: usize,
    streams: usize,
) -> impl Iterator<Item = Range<usize>> {
    let per_channel = geo.per_channel() * elem_bytes * streams;
    let size = if geo.is_rows() {
        geo.channels
    } else {
        (WAVE_BYTES / per_channel).clamp(1, geo.channels)
    };
    (0..geo.channels)
        .step_by(size)
        .map(move |c0| c0..(c0 + size).min(geo.channels))
}

/// The data of one unit of a per-channel reduction, as element ranges of the input.
#[derive(Debug, Clone)]
pub(crate) enum Span {
    /// Channels-last: a block of whole rows; the unit's partial results cover every channel.
    Rows(Range<usize>),
    /// Channels-first: the runs of channels `first..first + len` (the unit's partial results) in
    /// `count` consecutive outer blocks; `elems` runs from the first run to the end of the last.
    /// `follow`: the walk goes on to the same channels in the next outer block (the unit holds
    /// every channel being reduced), so a reduction prefetches along them past its last run.
    Runs {
        elems: Range<usize>,
        first: usize,
        count: usize,
        follow: bool,
    },
}

/// Partial results [`reduce_per_channel`] keeps for a range of `g` channels (all channels for
/// channels-last input, whatever `g`).
pub(crate) fn parts_len(geo: Geometry, g: usize) -> usize {
    if geo.is_rows() {
        geo.outer.div_ceil(rows_per_block(geo)) * geo.channels
    } else {
        geo.outer.div_ceil(runs_per_piece(geo)) * g
    }
}

/// Reduces per channel: `kernel(span, partial)` fills one unit's partial results (one per
/// channel it covers) into `parts` (at least [`parts_len`] long), in parallel when `exec.par`;
/// then the partials of each channel in `range` (all channels for channels-last input) are
/// merged into `out` (one entry per channel of `range`) in unit order, so the result does not
/// depend on the threads.
pub(crate) fn reduce_per_channel<P: Copy + Default + Send + Sync>(
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    parts: &mut [P],
    out: &mut [P],
    kernel: impl Fn(Span, &mut [P]) + Sync + Send,
    merge: impl Fn(P, P) -> P + Sync,
) {
    let (c, g) = (geo.channels, range.len());
    let parts = &mut parts[..parts_len(geo, g)];
    let pieces = if geo.is_rows() {
        let rows = rows_per_block(geo);
        let len = geo.len();
        for_each_chunk(exec.par, parts, c, |b, p| {
            let start = b * rows * c;
            kernel(Span::Rows(start..(start + rows * c).min(len)), p);
        });
        geo.outer.div_ceil(rows)
    } else {
        let sub = channels_per_item(geo.inner);
        let follow = sub >= g;
        for_each_chunk(exec.par, parts, g, |p, row| {
            for_each_chunk(exec.par, row, sub, |k, pk| {
                kernel(
                    piece_span(geo, range.start + k * sub, pk.len(), p, follow),
                    pk,
                );
            });
        });
        geo.outer.div_ceil(runs_per_piece(geo))
    };
    // Piece by piece across the channels: each channel still merges its pieces in order, and
    // the partials are read in memory order. Many merges are split by channel ranges.
    let parts = &parts[..pieces * g];
    let merge_channels = |first: usize, out: &mut [P]| {
        out.fill(P::default());
        for piece in parts.chunks_exact(g) {
            for (o, &p) in out.iter_mut().zip(&piece[first..]) {
                *o = merge(*o, p);
            }
        }
    };
    let par = exec.par && parts.len() >= PAR_MERGE_MIN;
    for_each_chunk(par, &mut out[..g], MERGE_TASK_CHANNELS, |k, o| {
        merge_channels(k * MERGE_TASK_CHANNELS, o)
    });
}

/// Writes an element-wise pass: `kernel(span, out)` fills the part of `out` at `span` (the same
/// element range of the inputs), in parallel when `exec.par`; for channels-first input only the
/// channels in `range` are written (channels-last: all). Large outputs go through
/// non-temporal stores ([`streaming`]), fenced once per task of about [`MAP_TASK_ELEMS`].
pub(crate) fn map_per_channel<T: Element>(
    geo: Geometry,
    range: Range<usize>,
    exec: Exec,
    out: &mut [T],
    kernel: impl Fn(Span, &mut [T], &Writer) + Sync + Send,
) {
    let c = geo.channels;
    let task =
        |span: Span, out: &mut [T]| streaming(exec.isa, exec.stream, |w| kernel(span, out, w));
    if geo.is_rows() {
        // A block of rows per task.
        let rows = rows_per_block(geo);
        for_each_chunk(exec.par, out, rows * c, |b, ob| {
            let start = b * rows * c;
            task(Span::Rows(start..start + ob.len()), ob);
        });
    } else {
        // Tasks of neighbouring channels in one outer block, one contiguous span each.
        let inner = geo.inner;
        let per_task = (MAP_TASK_ELEMS / inner).max(1);
        for_each_chunk(exec.par, out, c * inner, |o, oo| {
            let group = &mut oo[range.start * inner..range.end * inner];
            for_each_chunk(exec.par, group, per_task * inner, |t, ot| {
                let first = range.start + t * per_task;
                let start = (o * c + first) * inner;
                let elems = start..start + ot.len();
                let span = Span::Runs {
                    elems,
                    first,
                    count: 1,
                    follow: false,
                };
                task(span, ot);
            });
        });
    }
}

/// How the two passes of a channels-first training step (statistics then normalise, or
/// gradient sums then dx) meet in cache, for `streams` tensors of `elem_bytes`-sized elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Channel groups ("waves", see [`channel_groups`]): the second pass reads a group from L3.
    /// Also channels-last input, whose every row holds every channel.
    Waves,
    /// Groups of this many neighbouring channels (one, for channels of at least
    /// [`MIN_RESIDENT_BYTES`]), each on one thread ([`two_passes_grouped`]): the second pass
    /// reads the group from that core's L2.
    Channels(usize),
    /// Channel by channel, each shared by a team of this many threads
    /// ([`crate::team::two_passes_shared`]): the share each thread reduced stays in its L2.
    Shared(usize),
}

/// The cut for channels-first channels of `geo.per_channel()` values in `streams` tensors: on
/// one core, alone or in groups of neighbours, when they fit `exec.l2_budget` (a group holding
/// at least [`MIN_RESIDENT_BYTES`], below which tasks would be too short, runs of at least
/// [`MIN_CHANNEL_RUN_BYTES`] in each outer block, and each channel's runs at least
/// [`MIN_GROUP_RUN_BYTES`] when grouped); else shared by every thread of the pool when each
/// share fits [`STRETCH_BUDGET_QUARTERS`] of the budget (on the one core, when a thread works
/// alone); else in waves.
pub(crate) fn channel_cut(geo: Geometry, elem_bytes: usize, streams: usize, exec: Exec) -> Cut {
    if geo.is_rows() {
        return Cut::Waves;
    }
    let bytes = geo.per_channel() * elem_bytes * streams;
    let team = if exec.par {
        rayon::current_num_threads().min(crate::team::MAX_TEAM)
    } else {
        1
    };
    let run_bytes = geo.inner * elem_bytes;
    if bytes <= exec.l2_budget {
        // Smaller channels in as few groups as fit, a multiple of the threads, of even size.
        let g = if bytes >= MIN_RESIDENT_BYTES {
            1
        } else {
            let most = (exec.l2_budget / bytes.max(1)).max(1);
            let groups = geo.channels.div_ceil(most).next_multiple_of(team);
            geo.channels.div_ceil(groups)
        };
        let resident = g * bytes >= MIN_RESIDENT_BYTES;
        let long_runs = g * run_bytes >= MIN_CHANNEL_RUN_BYTES;
        let groups_pay = g == 1 || run_bytes >= MIN_GROUP_RUN_BYTES;
        return if resident && long_runs && groups_pay {
            Cut::Channels(g)
        } else {
            Cut::Waves
        };
    }
    if run_bytes < MIN_CHANNEL_RUN_BYTES {
        return Cut::Waves;
    }
    let stretch = exec.l2_budget.saturating_mul(STRETCH_BUDGET_QUARTERS) / 4;
    if team >= 2 && team <= parts_len(geo, 1) && bytes.div_ceil(team) <= stretch {
        Cut::Shared(team)
    } else if team == 1 && bytes <= stretch {
        Cut::Channels(1)
    } else {
        Cut::Waves
    }
}

/// The span of channels `first..first + len` in piece `p` of channels-first input (the runs of
/// [`runs_per_piece`] consecutive outer blocks); `follow` as in [`Span::Runs`].
pub(crate) fn piece_span(geo: Geometry, first: usize, len: usize, p: usize, follow: bool) -> Span {
    let (c, inner, per) = (geo.channels, geo.inner, runs_per_piece(geo));
    let count = per.min(geo.outer - p * per);
    let start = (p * per * c + first) * inner;
    let elems = start..start + (count - 1) * c * inner + len * inner;
    Span::Runs {
        elems,
        first,
        count,
        follow,
    }
}

/// The runs of a channels-first unit of work ([`Span::Runs`]): `count` consecutive outer
/// blocks `stride` values apart, each holding one run of `inner` values of each of the unit's
/// channels; `follow` as in [`Span::Runs`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnitRuns {
    pub stride: usize,
    pub count: usize,
    pub inner: usize,
    pub follow: bool,
}

impl UnitRuns {
    /// The runs of a unit of `count` outer blocks of `geo`.
    pub fn new(geo: Geometry, count: usize, follow: bool) -> Self {
        Self {
            stride: geo.channels * geo.inner,
            count,
            inner: geo.inner,
            follow,
        }
    }

    /// The prefetching of run `j` (of `g` channels) in block `k`, on to where the walk reads
    /// next (see [`UnitRuns::gap`]).
    #[inline(always)]
    pub fn ahead<T>(&self, g: usize, j: usize, k: usize) -> RunAhead {
        RunAhead::new::<T>(self.inner, self.gap(g, j, k))
    }

    /// Values from the end of run `j` (of `g` channels) in block `k` to where the walk reads
    /// next: the next channel's run right after it, else the first run of the next block (also
    /// after the last block when `follow`; otherwise the next unit is elsewhere, and the walk
    /// is taken to go on right after).
    #[inline(always)]
    fn gap(&self, g: usize, j: usize, k: usize) -> usize {
        let jumps = j + 1 == g && (k + 1 < self.count || self.follow);
        if jumps {
            self.stride - g * self.inner
        } else {
            0
        }
    }
}

/// The outer blocks of pieces `pieces` of channels-first input.
pub(crate) fn piece_blocks(geo: Geometry, pieces: Range<usize>) -> Range<usize> {
    let per = runs_per_piece(geo);
    pieces.start * per..(pieces.end * per).min(geo.outer)
}

/// Runs the two passes of channels-first channels in groups of `g` neighbours (the last may be
/// smaller), each group on one thread, in parallel when `exec.par` (see [`Cut::Channels`]):
/// `kernel` fills the partial results of the group's units into its share of `parts` (resized
/// here) and `merge` combines them into the group's entries of `out`, in piece order, as
/// [`reduce_per_channel`] does; `to_map(ch, merged)` makes channel `ch`'s entry of `maps`, and
/// `map(range, maps)` then writes the group's channels `range` on the same thread, from its L2.
#[allow(clippy::too_many_arguments)]
pub(crate) fn two_passes_grouped<P: Copy + Default + Send + Sync, M: Send>(
    exec: Exec,
    geo: Geometry,
    g: usize,
    parts: &mut Vec<P>,
    out: &mut [P],
    maps: &mut [M],
    kernel: impl Fn(Span, &mut [P]) + Sync + Send,
    merge: impl Fn(P, P) -> P + Sync,
    to_map: impl Fn(usize, P) -> M + Sync,
    map: impl Fn(Range<usize>, &[M]) + Sync,
) {
    let per = parts_len(geo, g);
    parts.resize(per * out.len().div_ceil(g), P::default());
    let seq = exec.sequential();
    let group = |k: usize, ((out, maps), parts): ((&mut [P], &mut [M]), &mut [P])| {
        let range = k * g..k * g + out.len();
        reduce_per_channel(geo, range.clone(), seq, parts, out, &kernel, &merge);
        for ((ch, &o), m) in range.clone().zip(&*out).zip(&mut *maps) {
            *m = to_map(ch, o);
        }
        map(range, maps);
    };
    if exec.par {
        use rayon::prelude::*;
        let groups = out.par_chunks_mut(g).zip(maps.par_chunks_mut(g));
        groups
            .zip(parts.par_chunks_mut(per))
            .enumerate()
            .for_each(|(k, item)| group(k, item));
    } else {
        let groups = out.chunks_mut(g).zip(maps.chunks_mut(g));
        groups
            .zip(parts.chunks_mut(per))
            .enumerate()
            .for_each(|(k, item)| group(k, item));
    }
}

/// Writes the channels in `range` of a channels-first element-wise pass in outer blocks
/// `blocks` on this thread, as one streaming task: `kernel(run, out)` fills the channels' runs
/// (contiguous) at element range `run` of each of those blocks.
pub(crate) fn map_channels<T: Element>(
    geo: Geometry,
    range: Range<usize>,
    blocks: Range<usize>,
    exec: Exec,
    out: &Disjoint<'_, T>,
    kernel: impl Fn(Range<usize>, &mut [T], &Writer),
) {
    streaming(exec.isa, exec.stream, |w| {
        // Last block first: the reduction just read the channels (or share) front to back, so
        // their last runs are the likeliest still in L2.
        for o in blocks.rev() {
            let start = (o * geo.channels + range.start) * geo.inner;
            let run = start..start + range.len() * geo.inner;
            // SAFETY: these runs of the channels in `range` belong to the one task that
            // handles them (`two_passes_grouped` gives each group to one task,
            // `two_passes_shared` each share), and this borrow ends here.
            let o = unsafe { out.slice(run.clone()) };
            kernel(run, o, w);
        }
    });
}

/// A mutable slice that parallel tasks write in disjoint parts which are not contiguous (one
/// channel of channels-first data), so `chunks_mut` cannot hand them out.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: PhantomData<&'a mut [T]>,
}

// SAFETY: a `Disjoint` is a `&mut [T]` whose parts are borrowed by at most one thread each (the
// contract of `slice`), which is sound to share between threads when `T` can be sent.
unsafe impl<T: Send> Send for Disjoint<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: PhantomData,
        }
    }

    /// The elements at `range`. Panics if it is out of bounds.
    ///
    /// # Safety
    /// No other borrow of an overlapping range may be alive at the same time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked above) of the slice this was made from, which outlives
        // `'a`; exclusive by the caller's guarantee.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// The elements at `range`, to read. Panics if it is out of bounds.
    ///
    /// # Safety
    /// No mutable borrow of an overlapping range may be alive at the same time.
    pub unsafe fn get(&self, range: Range<usize>) -> &[T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds, as in `slice`; shared by the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_walks_prefetch_the_run_they_read_next() {
        // Three channels of 10 values in blocks of 50: after the third channel's run, the walk
        // reads the first channel's run of the next block, 20 values on.
        let u = UnitRuns {
            stride: 50,
            count: 2,
            inner: 10,
            follow: false,
        };
        assert_eq!(u.gap(3, 0, 0), 0);
        assert_eq!(u.gap(3, 1, 1), 0);
        assert_eq!(u.gap(3, 2, 0), 20);
        assert_eq!(u.gap(3, 2, 1), 0, "the next unit is not known");
        let follow = UnitRuns { follow: true, ..u };
        assert_eq!(follow.gap(3, 2, 1), 20);
        assert_eq!(follow.gap(1, 0, 1), 40);
    }

    #[test]
    fn a_thread_s_part_of_a_channel_may_fill_most_of_the_l2() {
        // 32 outer blocks of 64x64 f32 values: one channel of x and dy is 1 MiB.
        let geo = Geometry {
            outer: 32,
            channels: 8,
            inner: 64 * 64,
        };
        let exec = |par, l2_budget| Exec {
            isa: Isa::Baseline,
            par,
            stream: false,
            l2_budget,
        };
        let mib = 1 << 20;
        assert_eq!(channel_cut(geo, 4, 2, exec(false, mib)), Cut::Channels(1));
        assert_eq!(
            channel_cut(geo, 4, 2, exec(false, 600 << 10)),
            Cut::Channels(1)
        );
        assert_eq!(channel_cut(geo, 4, 2, exec(false, mib / 2)), Cut::Waves);
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let shared = pool(2).install(|| channel_cut(geo, 4, 2, exec(true, 600 << 10)));
        assert_eq!(
            shared,
            Cut::Shared(2),
            "a team shares what one thread would hold alone"
        );
        let alone = pool(1).install(|| channel_cut(geo, 4, 2, exec(true, 600 << 10)));
        assert_eq!(alone, Cut::Channels(1));
        // Shares of 512 KiB, within the budget or within 7/4 of it.
        for (budget, cut) in [(mib / 2, Cut::Shared(2)), (300 << 10, Cut::Shared(2))] {
            assert_eq!(
                pool(2).install(|| channel_cut(geo, 4, 2, exec(true, budget))),
                cut
            );
        }
        let waves = pool(2).install(|| channel_cut(geo, 4, 2, exec(true, 256 << 10)));
        assert_eq!(waves, Cut::Waves);
    }

    #[test]
    fn small_channels_go_in_groups_unless_their_runs_are_short() {
        // 32 outer blocks of 14x14 f32 values: 50 KB of x and dy per channel, 20 channels in a
        // 1 MiB budget; of 7x7: 12.5 KB, whose 196-byte runs go in waves.
        let exec = Exec {
            isa: Isa::Baseline,
            par: false,
            stream: false,
            l2_budget: 1 << 20,
        };
        let geo = |inner| Geometry {
            outer: 32,
            channels: 256,
            inner,
        };
        assert_eq!(channel_cut(geo(14 * 14), 4, 2, exec), Cut::Channels(20));
        assert_eq!(channel_cut(geo(7 * 7), 4, 2, exec), Cut::Waves);
        // Two threads: 14 groups of 19 (and one of 9) rather than 13 of 20.
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let par = Exec { par: true, ..exec };
        let cut = two.install(|| channel_cut(geo(14 * 14), 4, 2, par));
        assert_eq!(cut, Cut::Channels(19));
    }

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
