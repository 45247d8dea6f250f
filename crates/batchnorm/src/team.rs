//! Channels shared by a team of threads.
//!
//! A channels-first channel too large for one core's L2 may still fit in the L2s of several:
//! then every thread takes one share of each channel's pieces (consecutive outer blocks), reads
//! it for the statistics pass, waits until the other shares' partial results are in, and runs
//! the element-wise pass over its own share, which is still in its L2. Channels go one after
//! the other, the team in step.
//!
//! Threads meet only through one state per share (free, claimed, done). A thread claims its own
//! share of each channel; it claims another thread's share only while that thread has not
//! started (the pool may be busy elsewhere), so a team never waits on a thread that is not
//! running, and one thread alone finishes the whole call. A claimed share is being reduced
//! without waiting on anything, so every wait ends. Which thread reduces a share does not
//! change its partial results, and every channel merges its pieces in order: the bits are those
//! of the other cuts.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::layout::Geometry;
use crate::plan::{parts_len, piece_blocks, piece_span, Disjoint, Span};

const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const DONE: u8 = 2;
/// State of a team member that has started.
const STARTED: u8 = 1;

/// The largest team: shares are tracked in a 64-bit mask per channel.
pub(crate) const MAX_TEAM: usize = 64;

/// The shared states of one call, kept between calls so that warm calls allocate nothing.
#[derive(Debug, Default)]
pub(crate) struct Board {
    /// One state per share of each channel, then one per team member.
    states: Vec<AtomicU8>,
}

/// A fresh board: states only live during a call.
impl Clone for Board {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Board {
    fn reset(&mut self, len: usize) {
        self.states.resize_with(len, || AtomicU8::new(FREE));
        self.states.iter_mut().for_each(|s| *s.get_mut() = FREE);
    }
}

/// The pieces of share `s` out of `team` of a channel of `pieces` pieces.
fn share(pieces: usize, team: usize, s: usize) -> Range<usize> {
    pieces * s / team..pieces * (s + 1) / team
}

/// The two passes of a channels-first training step, every channel shared by a team of `team`
/// threads: `kernel(span, partials)` reduces one piece of a channel (as in
/// [`crate::plan::reduce_per_channel`]) into `parts` (scratch, resized here), `merge` combines
/// a channel's partials in piece order into its entry of `out`, and `map(ch, blocks, merged)`
/// then writes the outer blocks `blocks` of channel `ch`, on the thread that reduced them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn two_passes_shared<P: Copy + Default + Send + Sync>(
    team: usize,
    geo: Geometry,
    parts: &mut Vec<P>,
    board: &mut Board,
    out: &mut [P],
    kernel: impl Fn(Span, &mut [P]) + Sync,
    merge: impl Fn(P, P) -> P + Sync,
    map: impl Fn(usize, Range<usize>, P) + Sync,
) {
    let per = parts_len(geo, 1);
    parts.resize(per * out.len(), P::default());
    let merged = |all: &[P]| all.iter().fold(P::default(), |o, &p| merge(o, p));
    for_each_channel_shared(
        team,
        out.len(),
        per,
        parts,
        board,
        |ch, pieces, partials| {
            for (p, o) in pieces.zip(partials.chunks_mut(1)) {
                kernel(piece_span(geo, ch, 1, p, true), o);
            }
        },
        |ch, pieces, all| map(ch, piece_blocks(geo, pieces), merged(all)),
    );
    for (o, all) in out.iter_mut().zip(parts.chunks_exact(per)) {
        *o = merged(all);
    }
}

/// Runs two passes over `channels` channels of `pieces` pieces each, every channel shared by a
/// team of `team` threads of the current rayon pool (at most [`MAX_TEAM`]). `reduce(ch, range,
/// out)` fills the partial results of pieces `range` of channel `ch` (`out` is their part of
/// `parts`, which holds `pieces` entries per channel); once every piece of `ch` is reduced,
/// `map(ch, range, partials)` runs the second pass over pieces `range`, on the thread that
/// reduced them, given all of the channel's partial results.
fn for_each_channel_shared<P: Send + Sync>(
    team: usize,
    channels: usize,
    pieces: usize,
    parts: &mut [P],
    board: &mut Board,
    reduce: impl Fn(usize, Range<usize>, &mut [P]) + Sync,
    map: impl Fn(usize, Range<usize>, &[P]) + Sync,
) {
    assert!((1..=MAX_TEAM).contains(&team) && team <= pieces);
    board.reset(channels * team + team);
    let (shares, members) = board.states.split_at(channels * team);
    let parts = Disjoint::new(&mut parts[..channels * pieces]);
    let member = |w: usize| {
        members[w].store(STARTED, Ordering::Release);
        for ch in 0..channels {
            let states = &shares[ch * team..(ch + 1) * team];
            let mut mine = 0u64;
            // Own share first, so that a running thread has claimed its share of every
            // channel it is at.
            for s in (w..team).chain(0..w) {
                let state = &states[s];
                let mut spins = 0u32;
                loop {
                    let now = state.load(Ordering::Acquire);
                    if now == DONE {
                        break;
                    }
                    let ours = s == w || members[s].load(Ordering::Acquire) != STARTED;
                    if now == FREE
                        && ours
                        && state
                            .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        let range = share(pieces, team, s);
                        let at = ch * pieces;
                        // SAFETY: the claim makes this thread the only one to touch the
                        // partials of this share until it is marked done.
                        let out = unsafe { parts.slice(at + range.start..at + range.end) };
                        reduce(ch, range, out);
                        state.store(DONE, Ordering::Release);
                        mine |= 1 << s;
                        break;
                    }
                    snooze(&mut spins);
                }
            }
            // SAFETY: every share of `ch` is done (acquired above): nothing writes these
            // partials any more.
            let all = unsafe { parts.get(ch * pieces..(ch + 1) * pieces) };
            for s in (0..team).filter(|s| mine & (1 << s) != 0) {
                map(ch, share(pieces, team, s), all);
            }
        }
    };
    rayon::scope(|scope| {
        for w in 1..team {
            let member = &member;
            scope.spawn(move |_| member(w));
        }
        member(0);
    });
}

/// Waits a little: spins first (the other shares finish within microseconds when the team is
/// in step), then yields the core (a team member was descheduled).
fn snooze(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 12 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every piece reduced once, each share mapped once by the thread that reduced it, with
    /// every partial of its channel in, for teams larger and smaller than the pool.
    #[test]
    fn every_share_is_reduced_then_mapped_once() {
        use std::sync::Mutex;
        let (channels, pieces) = (7, 9);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for team in [1, 2, 3, 4] {
                let mut parts = vec![0usize; channels * pieces];
                let mut board = Board::default();
                let (reduced, mapped) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
                let me = || std::thread::current().id();
                pool.install(|| {
                    for_each_channel_shared(
                        team,
                        channels,
                        pieces,
                        &mut parts,
                        &mut board,
                        |ch, range, out| {
                            reduced.lock().unwrap().push((ch, range.start, me()));
                            for (p, o) in range.zip(out) {
                                *o = ch * pieces + p + 1;
                            }
                        },
                        |ch, range, all| {
                            let expected: Vec<usize> =
                                (1..=pieces).map(|p| ch * pieces + p).collect();
                            assert_eq!(all, expected, "channel {ch} mapped before it was reduced");
                            mapped.lock().unwrap().push((ch, range.start, me()));
                        },
                    );
                });
                let expected: Vec<usize> = (1..=channels * pieces).collect();
                assert_eq!(parts, expected);
                let sorted = |v: Mutex<Vec<(usize, usize, std::thread::ThreadId)>>| {
                    let mut v = v.into_inner().unwrap();
                    v.sort_by_key(|&(ch, start, _)| (ch, start));
                    v
                };
                let (reduced, mapped) = (sorted(reduced), sorted(mapped));
                let starts: Vec<_> = mapped.iter().map(|&(ch, start, _)| (ch, start)).collect();
                let want: Vec<_> = (0..channels)
                    .flat_map(|ch| (0..team).map(move |s| (ch, share(pieces, team, s).start)))
                    .collect();
                assert_eq!(starts, want, "{threads} threads, team {team}");
                assert_eq!(
                    reduced, mapped,
                    "a share mapped on another thread than reduced it"
                );
            }
        }
    }
}
