//! Tuning constants of the kernels, in one place. Each says what it trades.

/// Elements of one long channel-first run summarised at a time by the moment kernel, then
/// merged: bounds the shifted sums' cancellation (see [`crate::stats`]) and the length of each
/// accumulation; smaller chunks spend more time merging partial moments.
pub(crate) const RUN_CHUNK: usize = 4096;

/// Largest number of elements of one row block (channels-last), the unit of parallel work and
/// of the per-channel partial results. Each block costs a merge per channel, so small blocks
/// make merging visible (64k: 64x64x56x56 NHWC training 1.5x the copy instead of 1.35x).
pub(crate) const ROW_BLOCK_ELEMS: usize = 256 * 1024;

/// Fewest row blocks a channels-last tensor is cut into (when its rows allow), so that two
/// threads share small tensors evenly (8x3x224x224 in 5 blocks of 256k trained at 2.1x the
/// copy instead of 1.7x).
pub(crate) const MIN_ROW_BLOCKS: usize = 16;

/// Fewest rows in a row block, so that merging stays small next to the block's own work even
/// for very wide rows.
pub(crate) const MIN_BLOCK_ROWS: usize = 64;

/// Coefficient bytes per widened row above which a cache-resident channels-last element-wise
/// pass walks its rows one column strip of [`COLUMN_STRIP`] positions at a time, so that the
/// strip's coefficients stay in L1 (half of a 32 KiB L1): 1024 channels' `f64` dx maps (32 KiB)
/// go by strips, their `f32` normalising maps (16 KiB) by rows, which strips made 4-10% slower.
pub(crate) const STRIP_COEFFICIENT_BYTES: usize = 16 * 1024;

/// Positions of a widened row whose accumulators a channels-last reduction keeps at a time:
/// 512 `f64` per accumulator, 12 KiB for three, stay in L1 next to the streamed rows; wider rows
/// (C > 512) are walked strip by strip.
pub(crate) const COLUMN_STRIP: usize = 512;

/// Fewest values in one (widened) row of channels-last input: rows of fewer channels are
/// processed several at a time, so that the vectorised loops along a row stay long (64 f32 fill
/// eight AVX2 registers) even for C = 3.
pub(crate) const MIN_ROW_WIDTH: usize = 64;

/// Target elements of one unit of a reduction over channels-first input, per outer block: short
/// runs of neighbouring channels are grouped up to this (a contiguous 16 KiB of f32, long enough
/// for the hardware prefetcher); long runs are one unit each. Smaller units balance threads
/// better and cost more scheduling.
pub(crate) const ITEM_ELEMS: usize = 4 * 1024;

/// Target elements of one task of an element-wise pass over channels-first input (whole runs of
/// neighbouring channels in one outer block, mapped as one span): each task fences its
/// streamed stores once, so tasks much smaller than this pay for fences (one per 12 KiB cost
/// 12% of a streamed pass); much larger ones balance threads worse on single images.
pub(crate) const MAP_TASK_ELEMS: usize = 128 * 1024;

/// Values of one channel reduced together in channels-first input with short runs: the runs of
/// that many consecutive outer blocks are summed with one shift and merged once. Larger pieces
/// loosen the bound on the shifted sums' cancellation (see [`crate::stats`]); smaller ones
/// merge more often.
pub(crate) const PIECE_ELEMS: usize = 1024;

/// Bytes of the streams one channel group (a "wave") may hold: the group's statistics pass reads
/// them from memory and leaves them in the last-level cache, so the second pass (normalise, or
/// dx) reads from cache. Half of a 32 MiB L3 leaves room for the outputs being written.
pub(crate) const WAVE_BYTES: usize = 12 * 1024 * 1024;

/// Quarters of the L2 budget (half the L2, see [`crate::cache::l2_budget_bytes`]) one thread's
/// part of a channel's data may fill when no cut keeps it within the budget (see
/// [`crate::plan::channel_cut`]): 7/8 of the L2, a whole channel on a thread working alone, or
/// one share of a team's. Its reduction leaves it there for the element-wise pass, which starts
/// from the runs read last. Against 12 MiB channel groups, 2 MiB L2: 64x64x56x56 backward on one
/// thread (1.6 MB channels of x and dy) 1.18-1.20x the `a + b` pass instead of 1.43-1.46x,
/// 64x64x58x58 (1.72 MB) 10.7-12.1 ms against 13.3-13.9; two threads sharing 3.2 MB channels
/// (1.6 MB each): 128x64x56x56 backward 14.1-14.4 ms against 19.6-20.0, 8x3x224x224 0.41-0.43
/// against 0.51-0.56. A team still shares channels that one thread could hold whole: 64x64x56x56
/// backward on two threads, 1.6 MB channels each, 5.0-5.1 ms, against 4.56-4.62 shared.
pub(crate) const STRETCH_BUDGET_QUARTERS: usize = 7;

/// Fewest bytes of one channel's run (one outer block) for channels too small to go one by one
/// (below [`MIN_RESIDENT_BYTES`]) to go in groups of neighbours on one thread each, their second
/// pass reading the group from L2 (see [`crate::plan::channel_cut`]), rather than in channel
/// groups from L3. Measured on one thread, NCHW, ratios to the yardstick: runs of 784 bytes
/// and more gained (32x256x14x14 training and backward 1.47-1.51 -> 1.32-1.39, 16x512x14x14
/// 1.43-1.50 -> 1.21-1.36, 32x128x28x28 1.32-1.44 -> 1.14-1.36); runs of 196 bytes lost
/// (64x512x7x7 1.59-1.64 -> 1.74-1.85, 128x2048x7x7 training 1.40-1.56 -> 1.86-2.02).
pub(crate) const MIN_GROUP_RUN_BYTES: usize = 512;

/// Fewest bytes of one channel, or of a group of neighbouring channels, for its two passes to be
/// fused on one thread (see [`crate::plan::channel_cut`]): smaller tasks take a few
/// microseconds, and fit in L3 in channel groups anyway.
pub(crate) const MIN_RESIDENT_BYTES: usize = 256 * 1024;

/// Fewest bytes of one run (one outer block of a channel, or of a group of them) for the
/// channel-by-channel cuts (see [`crate::plan::channel_cut`]), which walk those runs one after
/// the other: their element-wise pass prefetches [`PREFETCH_BYTES`] past each run into other
/// channels' data (the reductions follow the walk, see [`crate::plan::UnitRuns`]), and a short
/// run's ends share cache lines with its neighbours (2048x64x7x7, 196-byte runs, measured
/// before the reductions followed the walk: training 5.2x the copy channel by channel, 3.1x in
/// waves).
pub(crate) const MIN_CHANNEL_RUN_BYTES: usize = PREFETCH_BYTES;

/// Partial results above which the final merge of a reduction is split over threads by ranges
/// of [`MERGE_TASK_CHANNELS`] channels (each channel still merges its pieces in order, so the
/// bits do not change): 128x2048x7x7 channels-last merges 49 row blocks of 2048 channels, a few
/// hundred microseconds on one thread while the others wait; 256x1024 merges 4 blocks of 1024
/// channels, about 10 microseconds, a tenth of its training forward on two threads.
pub(crate) const PAR_MERGE_MIN: usize = 4 * 1024;

/// Channels from which the per-channel maps of a training step cut in waves (channels-last
/// input, channels-first groups from L3: the normalising maps after the statistics, the dx maps
/// after the gradient sums) are made on several threads, [`MERGE_TASK_CHANNELS`] per task: two
/// tasks at least, each a few microseconds of square roots and divisions (256x1024 on two
/// threads, with the split merge: training forward 0.75x and backward 0.86x the time, medians
/// of four alternating `bnlab bench` runs).
pub(crate) const PAR_MAPS_MIN: usize = 2 * MERGE_TASK_CHANNELS;

/// Channels per task of a split merge.
pub(crate) const MERGE_TASK_CHANNELS: usize = 256;

/// Below this many elements a call stays on the calling thread: fork-join costs a few
/// microseconds, as much as normalising ~32k elements.
pub(crate) const PAR_MIN_ELEMS: usize = 32 * 1024;

/// Independent accumulators in the reductions: lets the compiler keep several SIMD registers of
/// partial sums instead of a serial dependency chain (16 `f64` fill four AVX2 registers per
/// sum; 8 left the moments pass latency-bound), and fixes the summation order (so every
/// instruction set gives the same bits).
pub(crate) const LANES: usize = 16;

/// How far ahead of the data being processed the streaming loops prefetch: far enough to
/// cover the memory latency at full bandwidth (about 100 ns at 20-40 GB/s), near enough that
/// the lines are still in L1 when used. 1 KiB and 2 KiB measured slower on the moments pass;
/// 4 KiB and 8 KiB the same.
pub(crate) const PREFETCH_BYTES: usize = 4096;
