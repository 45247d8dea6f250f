//! Tuning constants of the kernels, in one place. Each says what it trades.

/// Elements of one channel-first run summarised at a time by the two-pass moment kernel.
/// The second pass re-reads them from L1 (16 KiB of f32), so statistics cost one trip to memory;
/// larger chunks spill L1, smaller ones spend more time merging partial moments.
pub(crate) const RUN_CHUNK: usize = 4096;

/// Target elements of one row block (channels-last): the block is summed, then centred from L1/L2.
pub(crate) const ROW_BLOCK_ELEMS: usize = 8192;

/// Fewest rows in a row block, so that merging per-block moments (about ten flops per channel)
/// stays small next to the block's own work even for very wide rows.
pub(crate) const MIN_BLOCK_ROWS: usize = 16;

/// Independent accumulators in the scalar reductions: lets the compiler keep one SIMD register
/// of partial sums instead of a serial dependency chain, and fixes the summation order.
pub(crate) const LANES: usize = 8;
