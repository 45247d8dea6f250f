//! The loops every kernel runs under: a reduction per channel, an element-wise pass per
//! channel, and both passes of a training step under each [`Cut`].

use std::ops::Range;

use super::{
    channel_cut, channel_groups, channels_per_item, parts_len, piece_span, rows_per_block,
    runs_per_piece, Cut, Disjoint, Exec, Span,
};
use crate::element::Element;
use crate::layout::Geometry;
use crate::par::for_each_chunk;
use crate::stream::{streaming, Writer};
use crate::team::{two_passes_shared, Board};
use crate::tuning::{MAP_TASK_ELEMS, MERGE_TASK_CHANNELS, PAR_MAPS_MIN, PAR_MERGE_MIN};

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
    if geo.is_empty() {
        out[..g].fill(P::default());
        return;
    }
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
    if geo.is_empty() {
        return;
    }
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

/// Runs the two passes of channels-first channels in groups of `g` neighbours (the last may be
/// smaller), each group on one thread, in parallel when `exec.par` (see [`Cut::Channels`]):
/// `kernel` fills the partial results of the group's units into its share of `parts` (resized
/// here) and `merge` combines them into the group's entries of `out`, in piece order, as
/// [`reduce_per_channel`] does; `to_map(ch, merged)` makes channel `ch`'s entry of `maps`, and
/// `map(range, maps)` then writes the group's channels `range` on the same thread, from its L2.
#[allow(clippy::too_many_arguments)]
fn two_passes_grouped<P: Copy + Default + Send + Sync, M: Send>(
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

/// Both passes of a training step over every channel (the statistics then the normalising
/// pass, or the gradient sums then dx), under the cut [`channel_cut`] chooses for `streams`
/// input tensors of `T`:
///
/// - `kernel(span, partials)` reduces one unit of work and `merge` combines a channel's
///   partials in piece order into its entry of `merged` (`parts` and `board` are scratch);
/// - `to_map(ch, merged)` makes channel `ch`'s map for the second pass (into `maps`, one per
///   channel);
/// - the second pass writes `out`: `write_channels(out, range, blocks, maps)` the channels
///   `range` of channels-first data in outer blocks `blocks` on the calling thread (with one map
///   per channel of `range`), for the cuts that keep channels in a core's L2;
///   `write(out, range, maps)` the channels `range` of the whole tensor (every channel of
///   channels-last data), in parallel as `exec` says, for channel groups from L3.
///
/// Every cut merges each channel's pieces in the same order: the results are bitwise the same.
#[allow(clippy::too_many_arguments)]
pub(crate) fn two_passes<T: Element, P: Copy + Default + Send + Sync, M: Send>(
    exec: Exec,
    geo: Geometry,
    streams: usize,
    parts: &mut Vec<P>,
    board: &mut Board,
    merged: &mut [P],
    maps: &mut [M],
    out: &mut [T],
    kernel: impl Fn(Span, &mut [P]) + Sync + Send,
    merge: impl Fn(P, P) -> P + Sync,
    to_map: impl Fn(usize, P) -> M + Sync,
    write_channels: impl Fn(&Disjoint<'_, T>, Range<usize>, Range<usize>, &[M]) + Sync,
    mut write: impl FnMut(&mut [T], Range<usize>, &[M]),
) {
    if geo.is_empty() {
        // An empty batch: empty statistics, maps from them, nothing to write.
        for (ch, (m, map)) in merged.iter_mut().zip(maps.iter_mut()).enumerate() {
            *m = P::default();
            *map = to_map(ch, *m);
        }
        return;
    }
    let elem = std::mem::size_of::<T>();
    match channel_cut(geo, elem, streams, exec) {
        Cut::Channels(g) => {
            // Channel group by channel group, each on one thread: its second pass reads it
            // from L2.
            let out = Disjoint::new(out);
            let write = |range, maps: &[M]| write_channels(&out, range, 0..geo.outer, maps);
            two_passes_grouped(
                exec, geo, g, parts, merged, maps, kernel, merge, to_map, write,
            );
        }
        Cut::Shared(team) => {
            // Channel by channel, each shared by the threads: each writes its share from its
            // L2.
            let out = Disjoint::new(out);
            two_passes_shared(
                team,
                geo,
                parts,
                board,
                merged,
                kernel,
                merge,
                |ch, blocks, m| write_channels(&out, ch..ch + 1, blocks, &[to_map(ch, m)]),
            );
        }
        Cut::Waves => {
            // Channel group by channel group: a group's reduction leaves it in L3 for the
            // second pass.
            for group in channel_groups(geo, elem, streams) {
                parts.resize(parts_len(geo, group.len()), P::default());
                let range = group.clone();
                reduce_per_channel(
                    geo,
                    range,
                    exec,
                    parts,
                    &mut merged[group.clone()],
                    &kernel,
                    &merge,
                );
                let merged = &merged[group.clone()];
                let maps_of = |k: usize, maps: &mut [M]| {
                    let first = k * MERGE_TASK_CHANNELS;
                    for (i, (map, &m)) in maps.iter_mut().zip(&merged[first..]).enumerate() {
                        *map = to_map(group.start + first + i, m);
                    }
                };
                // The maps on several threads only after a reduction of several pieces per
                // channel (which kept them busy): a thread idle since the call began may be
                // asleep, and waking it cost more than it saved (32x1024, one block: 1.4x).
                let pieces = parts_len(geo, group.len()) / group.len().max(1);
                let par = exec.par && group.len() >= PAR_MAPS_MIN && pieces >= 2;
                for_each_chunk(par, &mut maps[group.clone()], MERGE_TASK_CHANNELS, maps_of);
                write(out, group, maps);
            }
        }
    }
}
