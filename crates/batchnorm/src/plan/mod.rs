//! How a call is cut into work: channels processed one at a time from L2 (each on one thread,
//! or shared by all), or channel groups ("waves") from L3, and the units of parallel work inside
//! them. The pieces each channel's statistics are merged from depend only on the shape, never on
//! the number of threads or the cache sizes, and merge in the same order on every path: the
//! results are bitwise the same.
//!
//! - this file: the policy (which [`Cut`], the pieces and units of a channel, the row blocks);
//! - [`drivers`]: the loops every kernel runs under (reduce per channel, map per channel, both
//!   passes of a training step under each cut);
//! - [`rows`]: channels-last rows widened, their coefficient layouts and strip walks;
//! - [`disjoint`]: the output slice parallel tasks write in strided parts.

mod disjoint;
mod drivers;
mod rows;

pub(crate) use disjoint::Disjoint;
pub(crate) use drivers::{map_channels, map_per_channel, reduce_per_channel, two_passes};
pub(crate) use rows::{
    column_strips, fold_widened_in_place, narrow_rows, narrow_walk, step_sum, strip_step, strips,
    widen, widen_iter, Apply, Coefficients, StripPrefetch, WideMaps, QUICK_LEN,
};

use std::ops::Range;

use crate::layout::Geometry;
use crate::par::Par;
use crate::simd::{Isa, RunAhead};
use crate::tuning::{
    ITEM_ELEMS, MIN_BLOCK_ROWS, MIN_CHANNEL_RUN_BYTES, MIN_GROUP_RUN_BYTES, MIN_RESIDENT_BYTES,
    MIN_ROW_BLOCKS, MIN_ROW_WIDTH, PIECE_ELEMS, ROW_BLOCK_ELEMS, STRETCH_BUDGET_QUARTERS,
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

/// Neighbouring channels per unit of work in one outer block of channels-first input.
pub(crate) fn channels_per_item(inner: usize) -> usize {
    (ITEM_ELEMS / inner).max(1)
}

/// Consecutive outer blocks whose runs are reduced together in channels-first input: short runs
/// are gathered up to [`PIECE_ELEMS`] values per channel, so that their reduction costs one merge
/// per piece, not one per run.
pub(crate) fn runs_per_piece(geo: Geometry) -> usize {
    (PIECE_ELEMS / geo.inner).clamp(1, geo.outer.max(1))
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
}
