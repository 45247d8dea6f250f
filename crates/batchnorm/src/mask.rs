//! The ReLU mask of `relu(bn(x) + r)`: one bit per value, set where the output is not zero
//! (positive, or NaN), written by the forward's normalising pass as it stores y, read by the
//! backward instead of y. Bit `i` of the mask is bit `i % 64` of word `i / 64`, `i` the value's
//! index in memory order.
//!
//! A mask is a sixteenth of the bytes of a bf16 tensor (a thirty-second of an `f32` one), so the
//! backward's masking pass reads dy and the mask, not dy and y (see `docs/design.md`, "Fused
//! ReLU and residual add").

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::element::Element;
use crate::simd::{Inputs, Record, MAP_CHUNK};

/// Words of a mask over `len` values.
pub(crate) fn mask_words(len: usize) -> usize {
    len.div_ceil(64)
}

/// Whether a ReLU's output passes the gradient: not +0, the value the ReLU gives every input
/// it stops (NaN passes, as in PyTorch's `threshold_backward`; the ReLU never gives -0).
#[inline(always)]
fn passes<T: Element>(v: T) -> bool {
    v != T::default()
}

/// The bits of a step of outputs, lane `l` at bit `l`: [`passes`] of each, which for the
/// outputs of a ReLU (never -0) is whether its bits are not all zero.
#[inline(always)]
fn step_bits<T: Element>(v: &[T; MAP_CHUNK]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if size_of::<T>() <= 4 {
        use std::arch::x86_64::{
            __m128i, _mm_castsi128_ps, _mm_cmpeq_epi16, _mm_cmpeq_epi32, _mm_loadu_si128,
            _mm_movemask_epi8, _mm_movemask_ps, _mm_packs_epi16, _mm_setzero_si128,
        };
        // The lanes' bits compared with zero and their masks moved out, four or eight lanes
        // per instruction (SSE2, in every x86-64 path). Gathered with shifts and ors, the bits
        // cost the map its vectorisation (the residual forward took 1.5x as long).
        let p = v.as_ptr().cast::<__m128i>();
        // SAFETY: SSE2 is part of the x86-64 baseline; the step is 16 bytes of 16-bit values
        // (one load) or 32 bytes of `f32` (two), read unaligned.
        let zeros = unsafe {
            let zero = _mm_setzero_si128();
            if size_of::<T>() == 2 {
                let eq = _mm_cmpeq_epi16(_mm_loadu_si128(p), zero);
                _mm_movemask_epi8(_mm_packs_epi16(eq, zero))
            } else {
                let half = |k| {
                    _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(
                        _mm_loadu_si128(p.add(k)),
                        zero,
                    )))
                };
                half(0) | half(1) << 4
            }
        };
        return u64::from(!zeros as u8);
    }
    v.iter()
        .enumerate()
        .fold(0, |bits, (l, &v)| bits | (u64::from(passes(v)) << l))
}

/// A mask that parallel tasks write, each the values of its own span: the words wholly inside
/// a span are stored by its task alone; in a word shared with a neighbouring span, each task
/// replaces its own bits atomically. Whatever the words held before is overwritten, so a mask
/// is reused without being cleared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedMask<'a> {
    ptr: *mut u64,
    words: usize,
    _mask: PhantomData<&'a mut [u64]>,
}

// SAFETY: a `SharedMask` is a `&mut [u64]` whose words are written by one task each, except
// the words at the ends of spans, which are only accessed atomically (see `MaskWriter::flush`).
unsafe impl Send for SharedMask<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedMask<'_> {}

impl<'a> SharedMask<'a> {
    /// Writes into `words`.
    pub fn new(words: &'a mut [u64]) -> Self {
        Self {
            ptr: words.as_mut_ptr(),
            words: words.len(),
            _mask: PhantomData,
        }
    }

    /// The span of values `start..end` of one task; its words are stored with non-temporal
    /// stores when `stream` (the task fences them when it ends, see
    /// [`crate::stream::streaming`]).
    ///
    /// # Safety
    /// No other span overlapping `start..end` may be written at the same time.
    pub unsafe fn span(self, start: usize, end: usize, stream: bool) -> MaskSpan<'a> {
        assert!(start <= end && mask_words(end) <= self.words);
        MaskSpan {
            mask: self,
            start,
            end,
            stream,
        }
    }
}

/// The values `start..end` of a [`SharedMask`] that one task writes: what its writer reads only
/// when it stores a word.
#[derive(Debug)]
pub(crate) struct MaskSpan<'a> {
    mask: SharedMask<'a>,
    start: usize,
    end: usize,
    stream: bool,
}

impl MaskSpan<'_> {
    /// The writer of the span's bits, in order.
    pub fn writer(&self) -> MaskWriter<'_> {
        MaskWriter {
            span: self,
            next: self.start,
            word: 0,
        }
    }
}

const _: () = assert!(align_of::<AtomicU64>() == align_of::<u64>());

/// Writes the bits of consecutive values of a [`MaskSpan`], a word at a time. `Copy` and
/// small, so that the passes keep it in registers ([`Record`]; with the span's fields besides,
/// they spilled their own pointers, and cache-resident passes slowed down); one per span,
/// finished once.
#[derive(Clone, Copy)]
pub(crate) struct MaskWriter<'a> {
    span: &'a MaskSpan<'a>,
    /// The index of the next value.
    next: usize,
    /// The bits of the word `next` is in, gathered so far.
    word: u64,
}

impl MaskWriter<'_> {
    /// Adds the `n <= 8` bits `bits` (the next `n` values').
    #[inline(always)]
    fn push(&mut self, bits: u64, n: usize) {
        debug_assert!(n <= MAP_CHUNK && self.next + n <= self.span.end);
        let (w, at) = (self.next / 64, self.next % 64);
        self.word |= bits << at;
        self.next += n;
        if at + n >= 64 {
            self.flush(w);
            // The bits that went past the word (none when it ended exactly).
            self.word = if at + n > 64 { bits >> (64 - at) } else { 0 };
        }
    }

    /// Writes the gathered bits of word `w`: stored when the span holds all of it, else only
    /// the span's bits replaced, atomically (the others are another span's).
    #[inline(always)]
    fn flush(&mut self, w: usize) {
        let MaskSpan {
            mask,
            start,
            end,
            stream,
        } = *self.span;
        debug_assert!(w < mask.words);
        let (first, last) = (w * 64, w * 64 + 64);
        if first >= start && last <= end {
            // SAFETY: `w` is in bounds (`span` checked the span's end against the mask), and
            // every value of word `w` is in this writer's span, which no other task writes
            // (`span`'s contract).
            let at = unsafe { mask.ptr.add(w) };
            #[cfg(target_arch = "x86_64")]
            if stream {
                // Streamed, as the pass's outputs are: a normal store that misses the cache
                // reads the line first and holds back the pass's later stores until it has.
                // SAFETY: as above; SSE2 is part of the x86-64 baseline, and the task fences
                // its streamed stores when it ends (`span`'s `stream`).
                unsafe { std::arch::x86_64::_mm_stream_si64(at.cast::<i64>(), self.word as i64) };
                return;
            }
            // SAFETY: as above.
            unsafe { at.write(self.word) };
        } else {
            let (from, to) = (start.max(first) - first, end.min(last) - first);
            let ours = (u64::MAX >> (64 - (to - from))) << from;
            // SAFETY: in bounds, as above; `AtomicU64` has the layout and alignment of `u64`
            // (asserted above), and every access to a word shared by two spans is atomic.
            let atomic = unsafe { AtomicU64::from_ptr(mask.ptr.add(w)) };
            atomic.fetch_and(!ours, Ordering::Relaxed);
            atomic.fetch_or(self.word & ours, Ordering::Relaxed);
        }
    }

    /// Writes the bits of the last, partial word.
    pub fn finish(mut self) {
        debug_assert_eq!(self.next, self.span.end, "every value of the span recorded");
        if !self.next.is_multiple_of(64) {
            self.flush(self.next / 64);
        }
    }
}

impl<T: Element> Record<T> for MaskWriter<'_> {
    const RECORDS: bool = true;

    #[inline(always)]
    fn step(&mut self, v: &[T; MAP_CHUNK]) {
        self.push(step_bits(v), MAP_CHUNK);
    }

    #[inline(always)]
    fn one(&mut self, v: T) {
        self.push(u64::from(passes(v)), 1);
    }
}

/// The bits of a mask read by pairs of values, from value `at` on, for `pairs` pairs: the
/// second input of the backward's masking pass, which goes by pairs of values (see
/// `backward::MaskPass`). A pair's value is its two bits (the first value's lowest), a step's
/// the bits of its [`MAP_CHUNK`] pairs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairBits<'a> {
    words: &'a [u64],
    at: usize,
    pairs: usize,
}

impl<'a> PairBits<'a> {
    /// The bits of `2 * pairs` values from value `at` on; panics unless `words` holds them.
    pub fn new(words: &'a [u64], at: usize, pairs: usize) -> Self {
        assert!(mask_words(at + 2 * pairs) <= words.len());
        Self { words, at, pairs }
    }

    /// The `n <= 32` bits from value `i` on, the first lowest.
    #[inline(always)]
    fn bits(self, i: usize, n: usize) -> u32 {
        let (w, s) = (i / 64, i % 64);
        let low = self.words[w] >> s;
        let high = if s + n > 64 {
            self.words[w + 1] << (64 - s)
        } else {
            0
        };
        ((low | high) & ((1u64 << n) - 1)) as u32
    }
}

impl Inputs for PairBits<'_> {
    type Value = u32;
    type Step = u32;

    #[inline(always)]
    fn split_at(self, mid: usize) -> (Self, Self) {
        assert!(mid <= self.pairs);
        let rest = Self {
            at: self.at + 2 * mid,
            pairs: self.pairs - mid,
            ..self
        };
        (Self { pairs: mid, ..self }, rest)
    }

    #[inline(always)]
    fn values(self) -> impl Iterator<Item = u32> {
        (0..self.pairs).map(move |p| self.bits(self.at + 2 * p, 2))
    }

    #[inline(always)]
    fn steps(self) -> (impl ExactSizeIterator<Item = u32>, Self) {
        let steps = self.pairs / MAP_CHUNK;
        let (whole, rest) = self.split_at(steps * MAP_CHUNK);
        let bits = (0..steps).map(move |k| whole.bits(whole.at + 2 * MAP_CHUNK * k, 2 * MAP_CHUNK));
        (bits, rest)
    }

    #[inline(always)]
    fn lane(step: u32, l: usize) -> u32 {
        (step >> (2 * l)) & 3
    }

    #[inline(always)]
    fn prefetch(_: u32) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Values of a ReLU's output, +0 at about a third, NaN at every 29th, at `i`.
    fn output(i: usize) -> f32 {
        let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        match (i % 29, h % 3) {
            (0, _) => f32::NAN,
            (_, 0) => 0.0,
            _ => 1.0 + (h % 100) as f32,
        }
    }

    /// Writes the mask of `values` through writers of the spans that `cuts` delimit, each on
    /// its own thread, a few values one by one and the rest by steps, into words that held
    /// garbage, and reads it back by pairs.
    fn check<T: Element>(values: &[T], cuts: &[usize]) {
        let mut words = vec![0xA5A5_5A5A_F0F0_0F0Fu64; mask_words(values.len())];
        let shared = SharedMask::new(&mut words);
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c < values.len()));
        bounds.push(values.len());
        std::thread::scope(|s| {
            for span in bounds.windows(2) {
                let (start, end) = (span[0], span[1]);
                s.spawn(move || {
                    // SAFETY: the spans are disjoint.
                    let span = unsafe { shared.span(start, end, false) };
                    let mut w = span.writer();
                    let ones = (end - start).min(3);
                    for &v in &values[start..start + ones] {
                        Record::<T>::one(&mut w, v);
                    }
                    let (steps, rest) = values[start + ones..end].as_chunks::<MAP_CHUNK>();
                    for step in steps {
                        w.step(step);
                    }
                    for &v in rest {
                        Record::<T>::one(&mut w, v);
                    }
                    w.finish();
                });
            }
        });
        for (i, &v) in values.iter().enumerate() {
            let bit = (words[i / 64] >> (i % 64)) & 1 == 1;
            assert_eq!(bit, passes(v), "value {i} ({v:?}), cuts {cuts:?}");
        }
        let pairs = PairBits::new(&words, 0, values.len() / 2);
        for (p, bits) in pairs.values().enumerate() {
            let expected =
                u32::from(passes(values[2 * p])) | u32::from(passes(values[2 * p + 1])) << 1;
            assert_eq!(bits, expected, "pair {p}");
        }
        let (steps, _) = pairs.steps();
        for (k, bits) in steps.enumerate() {
            for l in 0..MAP_CHUNK {
                let p = k * MAP_CHUNK + l;
                assert_eq!(
                    PairBits::lane(bits, l),
                    pairs.values().nth(p).unwrap(),
                    "step {k}"
                );
            }
        }
    }

    #[test]
    fn writers_of_any_spans_give_every_value_its_bit() {
        let n = 1000;
        let f: Vec<f32> = (0..n).map(output).collect();
        let b: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
        let d: Vec<f64> = f.iter().map(|&v| f64::from(v)).collect();
        for cuts in [
            vec![],
            vec![64, 128, 640],
            vec![1, 2, 63, 65, 129, 130, 500, 999],
            (1..n).step_by(37).collect(),
            (1..n).step_by(7).collect(),
        ] {
            check(&f, &cuts);
            check(&b, &cuts);
            check(&d, &cuts);
        }
        check(&f[..5], &[2]);
        check::<f32>(&[], &[]);
    }
}
