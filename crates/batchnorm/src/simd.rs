//! Instruction sets, chosen at run time.
//!
//! Every kernel is written once, as plain Rust over fixed-width lanes, and compiled three times:
//! for the baseline target and, on x86-64, again inside `#[target_feature]` wrappers for AVX2
//! with FMA and for AVX-512 (F, BW, VL, DQ) (the [`multiversion`] macro). The compiler vectorises both; neither contracts `a * b + c`
//! into a fused multiply-add (the fused operations a kernel wants are written as `mul_add`,
//! correctly rounded on every path), and the reductions keep their lane order, so every path
//! gives bitwise the same results. Nothing requires `-C target-cpu=native`.

use std::sync::OnceLock;

use crate::plan::{column_strips, Apply};
use crate::tuning::{PREFETCH_BYTES, STRIP_COEFFICIENT_BYTES};

/// A kernel path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// The baseline of the compilation target (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512 F, BW, VL and DQ (and AVX2 and FMA): 64-byte vectors, mask
    /// registers, and conversions between every lane width (the 16-bit types' kernels gain
    /// most).
    Avx512,
}

impl Isa {
    /// The best path this machine supports (detected once).
    pub fn detect() -> Isa {
        *Isa::paths()
            .last()
            .expect("the baseline is always available")
    }

    /// Every path this machine supports, baseline first (detected once).
    pub fn available() -> Vec<Isa> {
        Isa::paths().to_vec()
    }

    /// Whether this machine can run the path.
    pub fn is_supported(self) -> bool {
        Isa::paths().contains(&self)
    }

    /// The paths this machine supports, baseline first, detected on the first call.
    fn paths() -> &'static [Isa] {
        static PATHS: OnceLock<Vec<Isa>> = OnceLock::new();
        PATHS.get_or_init(|| {
            let mut v = vec![Isa::Baseline];
            #[cfg(target_arch = "x86_64")]
            {
                use std::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    v.push(Isa::Avx2);
                    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
                        v.push(Isa::Avx512);
                    }
                }
            }
            v
        })
    }

    /// Whether the path writes with non-temporal stores from vector registers (see
    /// [`crate::stream`]).
    pub(crate) fn streams(self) -> bool {
        self != Isa::Baseline
    }

    /// Every path, whether or not this machine supports it.
    pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    /// The path's name: `"baseline"`, `"avx2"` or `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = crate::BatchNormError;

    /// A path by its [`name`](Isa::name).
    fn from_str(s: &str) -> Result<Isa, Self::Err> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == s)
            .ok_or_else(|| crate::BatchNormError::UnknownIsa {
                name: s.to_string(),
            })
    }
}

/// Defines `pub(crate) fn $name<T: Element>(isa: Isa, args...)` that runs `$body` compiled for
/// the chosen instruction set.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        fn $name:ident<$T:ident>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        pub(crate) fn $name<$T: $crate::element::Element>(
            isa: $crate::simd::Isa,
            $($arg: $ty),*
        ) $(-> $ret)? {
            #[inline(always)]
            fn generic<$T: $crate::element::Element>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2<$T: $crate::element::Element>($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            fn avx512<$T: $crate::element::Element>($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }

            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `BatchNorm::set_isa` only accepts paths the running CPU supports, and
                // `Isa::available` found AVX2 and FMA before this variant is ever chosen.
                $crate::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, with AVX-512 F, BW, VL and DQ besides.
                $crate::simd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                _ => generic($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[inline(always)]
fn prefetch_bytes(start: *const i8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never dereferences its address in the program's sense and
            // cannot fault; SSE (which provides it) is part of the x86-64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Asks for the cache lines [`PREFETCH_BYTES`] past `chunk` (as many bytes as it spans) to be
/// loaded into L1. Streaming loops call it on each chunk they are about to process: their loads
/// then stay in flight ahead of the arithmetic, which out-of-order execution alone does not
/// achieve for the `f64` reductions (measured: the moments pass reads 2.5x faster). A hint only:
/// it never faults and changes no result; a no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(chunk: &[T]) {
    prefetch_past(chunk, PREFETCH_BYTES);
}

/// Asks for the cache lines `bytes` past `chunk` (as many bytes as it spans) to be loaded into
/// L1; see [`prefetch_ahead`]. The address need not be in any allocation: a prefetch never
/// dereferences it.
#[inline(always)]
pub(crate) fn prefetch_past<T>(chunk: &[T], bytes: usize) {
    let ahead = chunk.as_ptr().cast::<i8>().wrapping_add(bytes);
    prefetch_bytes(ahead, std::mem::size_of_val(chunk));
}

/// Where a reduction over one run of values prefetches: [`PREFETCH_BYTES`] ahead of each chunk,
/// and for the chunks whose lookahead passes the run's end, `gap` further, onto the run the walk
/// reads next (the same channels in the next outer block). Past the end of a channels-first
/// run lie other channels, which a walk channel by channel reads much later: following its runs
/// instead, the 64x64x56x56 backward on one thread (1.6 MB channels of x and dy) ran 7-9%
/// faster (in-process, alternating).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAhead {
    /// Offset into the run, in bytes, from which prefetches jump the gap.
    turn: usize,
    gap: usize,
}

impl RunAhead {
    /// For a run of `len` values of `T` whose walk goes on `gap` values past its end (0: right
    /// after it).
    #[inline(always)]
    pub fn new<T>(len: usize, gap: usize) -> Self {
        let size = std::mem::size_of::<T>();
        Self {
            turn: (len * size).saturating_sub(PREFETCH_BYTES),
            gap: gap * size,
        }
    }

    /// The same walk from `bytes` into the run on.
    #[inline(always)]
    pub fn skip(self, bytes: usize) -> Self {
        Self {
            turn: self.turn.saturating_sub(bytes),
            ..self
        }
    }

    /// Prefetches for `chunk`, which starts `at` bytes into the run.
    #[inline(always)]
    pub fn prefetch<T>(self, chunk: &[T], at: usize) {
        prefetch_past(chunk, self.far(at));
    }

    /// How far past the chunk at `at` bytes into the run to prefetch, in bytes.
    #[inline(always)]
    fn far(self, at: usize) -> usize {
        PREFETCH_BYTES + if at >= self.turn { self.gap } else { 0 }
    }
}

/// Elements per step of the prefetching maps. Eight `f32` are one 32-byte store: streamed one
/// per step, the 64x64x56x56 f32 backward ran 20% faster than with two per step of 16 values
/// or through a staging buffer (5.1-5.6 against 6.0-6.9 ms, 2 threads); the stores are the same
/// when not streaming.
pub(crate) const MAP_CHUNK: usize = 8;

/// Bytes of one step of [`MAP_CHUNK`] values of `U`: 16 for the 16-bit types, 32 for `f32`,
/// 64 for `f64`.
const fn step_bytes<U>() -> usize {
    std::mem::size_of::<[U; MAP_CHUNK]>()
}

/// Whether steps of `U` are written with non-temporal stores when the output is streamed: when
/// a step is a whole number of 32-byte AVX stores (`f32`, `f64`). Steps of the 16-bit types
/// would be one 16-byte store each, which made the streamed passes slower than normal stores
/// (64x64x56x56 bf16, 2 threads, AVX-512: evaluation 5.6 against 3.2 ms, backward 6.2
/// against 5.2).
const fn streams_steps<U>() -> bool {
    step_bytes::<U>().is_multiple_of(32)
}

/// Alignment of a streamed step.
const STREAM_ALIGN: usize = 32;

/// The inputs of an element-wise kernel: one slice, or two of the same length read side by
/// side (`x` and `dy`), walked a value or a step of [`MAP_CHUNK`] values at a time.
pub(crate) trait Inputs: Copy {
    /// One value of each input.
    type Value: Copy;
    /// One step of each input.
    type Step: Copy;
    /// The first `mid` values of each input, and the rest.
    fn split_at(self, mid: usize) -> (Self, Self);
    /// The values one by one.
    fn values(self) -> impl Iterator<Item = Self::Value>;
    /// The whole steps, and the values after them.
    fn steps(self) -> (impl ExactSizeIterator<Item = Self::Step>, Self);
    /// Value `l` of a step.
    fn lane(step: Self::Step, l: usize) -> Self::Value;
    /// Asks for the data ahead of a step (see [`prefetch_ahead`]).
    fn prefetch(step: Self::Step);
}

impl<'a, T: Copy> Inputs for &'a [T] {
    type Value = T;
    type Step = &'a [T; MAP_CHUNK];

    #[inline(always)]
    fn split_at(self, mid: usize) -> (Self, Self) {
        <[T]>::split_at(self, mid)
    }

    #[inline(always)]
    fn values(self) -> impl Iterator<Item = T> {
        self.iter().copied()
    }

    #[inline(always)]
    fn steps(self) -> (impl ExactSizeIterator<Item = Self::Step>, Self) {
        let (steps, rest) = self.as_chunks::<MAP_CHUNK>();
        (steps.iter(), rest)
    }

    #[inline(always)]
    fn lane(step: Self::Step, l: usize) -> T {
        step[l]
    }

    #[inline(always)]
    fn prefetch(step: Self::Step) {
        prefetch_ahead(step);
    }
}

impl<A: Inputs, B: Inputs> Inputs for (A, B) {
    type Value = (A::Value, B::Value);
    type Step = (A::Step, B::Step);

    #[inline(always)]
    fn split_at(self, mid: usize) -> (Self, Self) {
        let ((a0, a1), (b0, b1)) = (self.0.split_at(mid), self.1.split_at(mid));
        ((a0, b0), (a1, b1))
    }

    #[inline(always)]
    fn values(self) -> impl Iterator<Item = Self::Value> {
        self.0.values().zip(self.1.values())
    }

    #[inline(always)]
    fn steps(self) -> (impl ExactSizeIterator<Item = Self::Step>, Self) {
        let ((a, ar), (b, br)) = (self.0.steps(), self.1.steps());
        (a.zip(b), (ar, br))
    }

    #[inline(always)]
    fn lane(step: Self::Step, l: usize) -> Self::Value {
        (A::lane(step.0, l), B::lane(step.1, l))
    }

    #[inline(always)]
    fn prefetch(step: Self::Step) {
        A::prefetch(step.0);
        B::prefetch(step.1);
    }
}

/// `y[i] = maps[i / inner].apply(x[i])` over inputs `x` (of `y`'s length) that hold
/// consecutive runs of `inner` values, run `r` mapped with `maps[r]` (channels-first data: one
/// run per channel), a step of [`MAP_CHUNK`] values at a time ([`Apply::apply_step`]),
/// prefetching ahead. When `stream`, `y` is
/// written with non-temporal stores (see [`put`]), aligned steps across the whole span, so that
/// short runs still fill whole cache lines; a step that straddles two runs maps its values
/// both ways and keeps the right ones.
#[inline(always)]
pub(crate) fn map_runs<I, U, V, M, const K: usize>(
    x: I,
    y: &mut [U],
    inner: usize,
    maps: &[M],
    stream: bool,
) where
    I: Inputs,
    U: Copy + Default,
    V: Copy,
    M: Apply<I, U, V, K>,
{
    map_runs_recorded(x, y, inner, maps, stream, ());
}

/// [`map_runs`], handing every value of `y` to `record` as it is stored, in order; returns
/// it. (The step loop works on a copy of it in its own variables: behind a reference, its
/// state went through memory at every step.)
#[inline(always)]
pub(crate) fn map_runs_recorded<I, U, V, M, R, const K: usize>(
    x: I,
    y: &mut [U],
    inner: usize,
    maps: &[M],
    stream: bool,
    mut record: R,
) -> R
where
    I: Inputs,
    U: Copy + Default,
    V: Copy,
    M: Apply<I, U, V, K>,
    R: Record<U>,
{
    let stream = stream && streams_steps::<U>();
    let mut run = Runs::new(inner);
    let head = aligned_head(y, stream);
    let (xh, x) = x.split_at(head);
    let (yh, y) = y.split_at_mut(head);
    for (yv, xv) in yh.iter_mut().zip(xh.values()) {
        *yv = maps[run.next()].apply(xv);
        record.one(*yv);
    }
    let (xc, xt) = x.steps();
    let (yc, yt) = y.as_chunks_mut::<MAP_CHUNK>();
    let steps = yc.iter_mut().zip(xc);
    if stream {
        run_steps::<I, U, V, M, K, true>(steps, &mut run, maps, &mut record);
    } else {
        run_steps::<I, U, V, M, K, false>(steps, &mut run, maps, &mut record);
    }
    for (yv, xv) in yt.iter_mut().zip(xt.values()) {
        *yv = maps[run.next()].apply(xv);
        record.one(*yv);
    }
    record
}

/// What an element-wise pass records of its outputs besides storing them, in order: the ReLU
/// mask of the residual forward ([`crate::mask`]), or nothing (`()`).
pub(crate) trait Record<U>: Copy {
    /// Whether anything is recorded: the passes that would visit values out of order (by
    /// column strips) go in order when so.
    const RECORDS: bool;
    /// The next step of values.
    fn step(&mut self, v: &[U; MAP_CHUNK]);
    /// The next value.
    fn one(&mut self, v: U);
}

impl<U> Record<U> for () {
    const RECORDS: bool = false;

    #[inline(always)]
    fn step(&mut self, _: &[U; MAP_CHUNK]) {}

    #[inline(always)]
    fn one(&mut self, _: U) {}
}

/// The whole steps of [`map_runs`], from where `run` is, with the choice of stores fixed for
/// the loop.
#[inline(always)]
fn run_steps<'a, I, U, V, M, const K: usize, const STREAM: bool>(
    mut steps: impl ExactSizeIterator<Item = (&'a mut [U; MAP_CHUNK], I::Step)>,
    run: &mut Runs,
    maps: &[M],
    record: &mut impl Record<U>,
) where
    I: Inputs,
    U: Copy + Default + 'a,
    V: Copy,
    M: Apply<I, U, V, K>,
{
    // A copy in the loop's own variables, which the compiler keeps in registers (behind the
    // reference, it stored the recorder's state back after every step).
    let mut rec = *record;
    while steps.len() > 0 {
        match run.steps(steps.len()) {
            Step::One(r, n) => {
                let map = maps[r];
                for (ys, xs) in steps.by_ref().take(n) {
                    I::prefetch(xs);
                    let v = map.apply_step(xs);
                    rec.step(&v);
                    put(ys, v, STREAM);
                }
            }
            Step::Two(r, k) => {
                let (ys, xs) = steps.next().expect("a step is left");
                I::prefetch(xs);
                let (m0, m1) = (maps[r], maps[r + 1]);
                let (a, b) = (m0.apply_step(xs), m1.apply_step(xs));
                let v = std::array::from_fn(|l| if l < k { a[l] } else { b[l] });
                rec.step(&v);
                put(ys, v, STREAM);
            }
            Step::Many => {
                let (ys, xs) = steps.next().expect("a step is left");
                I::prefetch(xs);
                let mut v = [U::default(); MAP_CHUNK];
                for (l, o) in v.iter_mut().enumerate() {
                    *o = maps[run.next()].apply(I::lane(xs, l));
                }
                rec.step(&v);
                put(ys, v, STREAM);
            }
        }
    }
    *record = rec;
}

/// Where a walk over consecutive runs of `inner` values is: the run, and the values left in it.
struct Runs {
    inner: usize,
    run: usize,
    left: usize,
}

impl Runs {
    #[inline(always)]
    fn new(inner: usize) -> Self {
        Self {
            inner,
            run: 0,
            left: inner,
        }
    }

    /// The run of the next value; moves past it.
    #[inline(always)]
    fn next(&mut self) -> usize {
        let r = self.run;
        self.left -= 1;
        if self.left == 0 {
            self.run += 1;
            self.left = self.inner;
        }
        r
    }

    /// Where the next steps of [`MAP_CHUNK`] values lie, at most `max` of them; moves past
    /// those it reports, except for [`Step::Many`].
    #[inline(always)]
    fn steps(&mut self, max: usize) -> Step {
        let r = self.run;
        if self.left >= MAP_CHUNK {
            let n = (self.left / MAP_CHUNK).min(max);
            self.left -= n * MAP_CHUNK;
            if self.left == 0 {
                (self.run, self.left) = (r + 1, self.inner);
            }
            Step::One(r, n)
        } else if self.inner >= MAP_CHUNK {
            let k = self.left;
            (self.run, self.left) = (r + 1, self.inner - (MAP_CHUNK - k));
            Step::Two(r, k)
        } else {
            Step::Many
        }
    }
}

/// The runs the next steps of [`MAP_CHUNK`] values cover.
enum Step {
    /// `n` steps all in run `r`.
    One(usize, usize),
    /// One step: the first `k` values in run `r`, the rest in run `r + 1`.
    Two(usize, usize),
    /// One step over runs shorter than a step: value by value.
    Many,
}

/// Coefficients that cycle with period [`width`](Self::width) over a run (channels-last rows
/// widened, see [`crate::plan::Wrapped`]), applied to inputs `I` to give values `U`.
pub(crate) trait Cyclic<I: Inputs, U> {
    /// Positions of one period (at least [`MAP_CHUNK`]).
    fn width(&self) -> usize;
    /// Maps one step of consecutive values, the first at position `j`.
    ///
    /// # Safety
    /// `j < self.width()`: implementations read their coefficients unchecked (a bounds check
    /// per coefficient array cost a third of the instructions of a step).
    unsafe fn step(&self, xs: I::Step, j: usize) -> [U; MAP_CHUNK];
    /// Maps one value at position `j < width`.
    fn one(&self, x: I::Value, j: usize) -> U;
    /// Bytes of coefficients a pass over one period reads.
    fn period_bytes(&self) -> usize;
}

/// `y[i] = maps(x[i])` at position `i % maps.width()` over inputs `x` of `y`'s length, a step at
/// a time; when `stream` (a tensor beyond the cache), prefetching ahead and writing `y` with
/// non-temporal stores. Cache-resident rows are left to the hardware prefetchers (see
/// `STRIP_CHUNK` in `plan/rows.rs`).
#[inline(always)]
pub(crate) fn map_cyclic<I: Inputs, U: Copy + Default>(
    x: I,
    y: &mut [U],
    stream: bool,
    maps: &impl Cyclic<I, U>,
) {
    map_cyclic_recorded(x, y, stream, maps, ());
}

/// [`map_cyclic`], handing every value of `y` to `record` as it is stored, in order; returns
/// it (by value, as [`map_runs_recorded`]).
#[inline(always)]
pub(crate) fn map_cyclic_recorded<I: Inputs, U: Copy + Default, R: Record<U>>(
    x: I,
    y: &mut [U],
    stream: bool,
    maps: &impl Cyclic<I, U>,
    mut record: R,
) -> R {
    let prefetch = stream;
    let stream = stream && streams_steps::<U>();
    let w = maps.width();
    assert!(
        w >= MAP_CHUNK,
        "a period of {w} positions is shorter than a step"
    );
    // (Streamed tensors are bound by memory, not by their coefficients.)
    if !prefetch
        && !R::RECORDS
        && maps.period_bytes() > STRIP_COEFFICIENT_BYTES
        && y.len().is_multiple_of(w)
    {
        strip_rows(x, y, maps);
        return record;
    }
    let head = aligned_head(y, stream);
    let (xh, x) = x.split_at(head);
    let (yh, y) = y.split_at_mut(head);
    for (i, (yv, xv)) in yh.iter_mut().zip(xh.values()).enumerate() {
        *yv = maps.one(xv, i);
        record.one(*yv);
    }
    let (xc, xt) = x.steps();
    let (yc, yt) = y.as_chunks_mut::<MAP_CHUNK>();
    let steps = yc.iter_mut().zip(xc);
    let j = match (stream, prefetch) {
        (true, _) => cyclic_steps::<I, U, true, true>(steps, head % w, maps, &mut record),
        (false, true) => cyclic_steps::<I, U, false, true>(steps, head % w, maps, &mut record),
        (false, false) => cyclic_steps::<I, U, false, false>(steps, head % w, maps, &mut record),
    };
    for (k, (yv, xv)) in yt.iter_mut().zip(xt.values()).enumerate() {
        *yv = maps.one(xv, (j + k) % w);
        record.one(*yv);
    }
    record
}

/// [`map_cyclic`] over whole periods (rows) of a cache-resident tensor whose coefficients
/// outgrow half of L1 ([`STRIP_COEFFICIENT_BYTES`]), one column strip of every row after the
/// other (see [`column_strips`]), so that the strip's coefficients stay in L1 while the rows
/// stream past: a 1024-channel row's four `f64` dx coefficient arrays fill 32 KiB, all of L1,
/// and each step read four times more bytes of them, from L2, than of the data (256x1024
/// backward, AMD EPYC Zen 4, medians of six alternating runs: 0.169 -> 0.141 ms on one thread,
/// 0.099 -> 0.084 on two).
#[inline(always)]
fn strip_rows<I: Inputs, U: Copy>(x: I, y: &mut [U], maps: &impl Cyclic<I, U>) {
    let w = maps.width();
    for cols in column_strips(w) {
        for (r, yr) in y.chunks_exact_mut(w).enumerate() {
            let (xs, ys) = (x.split_at(r * w + cols.start).1, &mut yr[cols.clone()]);
            let (xc, xt) = xs.split_at(cols.len()).0.steps();
            let (yc, yt) = ys.as_chunks_mut::<MAP_CHUNK>();
            for (s, (yv, xv)) in yc.iter_mut().zip(xc).enumerate() {
                // SAFETY: `cols.start + s * MAP_CHUNK < cols.end <= w`: the step lies in the strip.
                *yv = unsafe { maps.step(xv, cols.start + s * MAP_CHUNK) };
                keep_steps();
            }
            let j = cols.start + yc.len() * MAP_CHUNK;
            for (k, (yv, xv)) in yt.iter_mut().zip(xt.values()).enumerate() {
                *yv = maps.one(xv, j + k);
            }
        }
    }
}

/// The whole steps of [`map_cyclic`], the first at position `j < maps.width()`, with the
/// choice of stores fixed for the loop; returns the position after the last. The period is at
/// least a step long (checked by [`map_cyclic`]).
///
/// Cache-resident tensors (no prefetching) go a period at a time: an inner loop over the steps
/// that start before the period ends, whose position is a plain induction variable, then one
/// wrap. Wrapping after every step chained each step's coefficient addresses to the last
/// step's through a compare and a conditional move (256x1024 evaluation on one thread, AMD EPYC
/// Zen 4: 0.062 -> 0.044-0.047 ms, 2.8 -> 2.0 times a copy of the same bytes). Streamed tensors,
/// bound by memory, keep the wrap in the loop: by periods, the 64-position rows of 64x64x56x56
/// channels-last took 1.28x as long to evaluate.
#[inline(always)]
fn cyclic_steps<'a, I: Inputs, U: Copy + 'a, const STREAM: bool, const PREFETCH: bool>(
    mut steps: impl ExactSizeIterator<Item = (&'a mut [U; MAP_CHUNK], I::Step)>,
    mut j: usize,
    maps: &impl Cyclic<I, U>,
    record: &mut impl Record<U>,
) -> usize {
    let w = maps.width();
    // In the loop's own variables, as in `run_steps`.
    let mut rec = *record;
    if PREFETCH {
        for (ys, xs) in steps {
            // SAFETY: `j < w` on entry, and a step of `MAP_CHUNK <= w` positions followed by
            // the wrap below leaves it below `w`.
            let v = unsafe { maps.step(xs, j) };
            I::prefetch(xs);
            rec.step(&v);
            put(ys, v, STREAM);
            j += MAP_CHUNK;
            if j >= w {
                j -= w;
            }
        }
        *record = rec;
        return j;
    }
    while steps.len() > 0 {
        // The steps starting at j, j + MAP_CHUNK, ... below w.
        let n = (w - j).div_ceil(MAP_CHUNK).min(steps.len());
        let mut at = j;
        for (ys, xs) in steps.by_ref().take(n) {
            // SAFETY: `at < w` for each of the `n` steps that fit before `w`.
            let v = unsafe { maps.step(xs, at) };
            rec.step(&v);
            *ys = v;
            keep_steps();
            at += MAP_CHUNK;
        }
        // Below `2w` (the last step started below `w`, and `MAP_CHUNK <= w`); below `w` after.
        j = at;
        if j >= w {
            j -= w;
        }
    }
    *record = rec;
    j
}

/// Marks a loop over steps, each already vectorised over its lanes, as not to be vectorised
/// again across steps: an empty `asm!` block, which the loop vectoriser cannot widen and which
/// emits no instruction. Vectorised across steps, the dx map's loop read its coefficients with
/// gathers (256x1024 backward 2.6x slower).
#[inline(always)]
fn keep_steps() {
    // SAFETY: an empty assembly block touches no memory, stack or flags.
    unsafe { std::arch::asm!("", options(nomem, nostack, preserves_flags)) };
}

/// Elements of `y` before its first aligned address when streaming (non-temporal stores need
/// aligned addresses, see [`STREAM_ALIGN`]; those elements are stored normally), else none.
#[inline(always)]
fn aligned_head<U>(y: &[U], stream: bool) -> usize {
    if stream {
        y.as_ptr().align_offset(STREAM_ALIGN).min(y.len())
    } else {
        0
    }
}

/// Stores one step's results: with non-temporal stores straight from the registers when
/// `stream` (the task fences them when it ends, see [`crate::stream::streaming`]), which skip
/// the read of the destination a normal store starts with. `stream` is never set on the
/// baseline path nor for steps of 16 bytes ([`streams_steps`]), and `dst` is then aligned to
/// [`STREAM_ALIGN`] (see [`aligned_head`]). Normal stores first ask for
/// the destination [`PREFETCH_BYTES`] ahead, as the inputs are, so that its read is in flight
/// early: outputs below the streaming threshold but beyond L2 otherwise wait on it (backward,
/// one thread: 32x256x14x14 1.30-1.39 -> 1.22-1.28 ms, 8x3x224x224 0.94-1.00 -> 0.86-0.91;
/// 256x1024, whose output stays in L2, 0.218-0.253 -> 0.226-0.257).
#[inline(always)]
fn put<U: Copy>(dst: &mut [U; MAP_CHUNK], v: [U; MAP_CHUNK], stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if stream {
        debug_assert!(streams_steps::<U>());
        debug_assert_eq!(dst.as_ptr().align_offset(STREAM_ALIGN), 0);
        let (dst, src) = (dst.as_mut_ptr().cast::<u8>(), v.as_ptr().cast::<u8>());
        // SAFETY: `stream` is only set on the AVX2 and AVX-512 paths; `dst` is valid for the
        // step's bytes, a multiple of 32 (`streams_steps`), and 32-byte aligned (the caller's
        // contract); `v` is a local array of as many bytes.
        unsafe { stream_32(dst, src, step_bytes::<U>()) };
        return;
    }
    prefetch_ahead(&dst[..]);
    *dst = v;
}

/// Copies `len` bytes (a multiple of 32) with non-temporal 32-byte stores.
///
/// # Safety
/// The CPU supports AVX; `src` and `dst` are valid for `len` bytes; `dst` is 32-byte aligned.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
unsafe fn stream_32(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    for i in (0..len).step_by(32) {
        // SAFETY: `i + 32 <= len` for both buffers, and `dst + i` stays aligned (the caller's
        // contract).
        unsafe {
            let v = _mm256_loadu_si256(src.add(i).cast::<__m256i>());
            _mm256_stream_si256(dst.add(i).cast::<__m256i>(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_from_their_names_and_the_baseline_is_always_there() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
            assert_eq!(isa.to_string(), isa.name());
        }
        assert!(matches!(
            "sse9".parse::<Isa>(),
            Err(crate::BatchNormError::UnknownIsa { name }) if name == "sse9"
        ));
        let available = Isa::available();
        assert_eq!(available[0], Isa::Baseline);
        assert_eq!(Isa::detect(), *available.last().unwrap());
        // AVX-512 is only offered beside AVX2.
        assert!(!available.contains(&Isa::Avx512) || available.contains(&Isa::Avx2));
    }

    #[test]
    fn run_prefetches_jump_the_gap_once_they_would_pass_the_end() {
        // 3000 f32 (12000 bytes), the next run 1000 values (4000 bytes) past the end.
        let ahead = RunAhead::new::<f32>(3000, 1000);
        let end = 12000 - PREFETCH_BYTES;
        assert_eq!(ahead.far(0), PREFETCH_BYTES);
        assert_eq!(ahead.far(end - 64), PREFETCH_BYTES);
        assert_eq!(ahead.far(end), PREFETCH_BYTES + 4000);
        // The same walk from 4000 bytes on: the turn comes 4000 bytes sooner.
        assert_eq!(ahead.skip(4000).far(end - 4000), PREFETCH_BYTES + 4000);
        assert_eq!(ahead.skip(4000).far(end - 4064), PREFETCH_BYTES);
        assert_eq!(ahead.skip(end + 64).far(0), PREFETCH_BYTES + 4000);
        // A run shorter than the lookahead jumps from its start; no gap, no jump.
        assert_eq!(RunAhead::new::<f64>(100, 7).far(0), PREFETCH_BYTES + 56);
        assert_eq!(RunAhead::new::<f32>(3000, 0).far(end), PREFETCH_BYTES);
    }
}
