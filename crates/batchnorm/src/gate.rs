//! Where a fused ReLU let the gradient through, recovered from `x` in the backward, so that the
//! backward of `relu(bn(x))` streams what the plain backward streams (x and dy) and reads
//! neither `y` nor a mask.
//!
//! The forward's map of a channel is monotonic in `x` when its coefficients are finite and its
//! slope is not zero ([`ChannelMap::direction`](crate::forward::ChannelMap::direction)), so the
//! inputs whose output the ReLU zeroed form one interval of the storage type's values: every
//! value up to a threshold (rising map) or from one on (falling map). The threshold is found
//! with the forward's own arithmetic, a few evaluations around where the exact map crosses zero,
//! so the gate zeroes exactly the gradients a mask of `y > 0` would (NaN passes, as in PyTorch's
//! `threshold_backward`).

use crate::element::Element;
use crate::forward::relu_zeroes;
use crate::plan::widen_iter;
use crate::stages::Normalization;

/// Whether the upstream gradient stops at an input value (as `f64`, exact).
pub(crate) trait Gate: Copy {
    fn stops(self, x: f64) -> bool;
}

/// Everything passes: the plain backward.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Open;

impl Gate for Open {
    #[inline(always)]
    fn stops(self, _: f64) -> bool {
        false
    }
}

/// The gradient of one channel through the ReLU after its normalising map: zero for inputs
/// with `x * sign <= bound`, whose output the ReLU zeroed (`x <= t` after a rising map, `sign`
/// 1, `bound` t; `x >= t` after a falling one, `sign` -1, `bound` -t), `dy` elsewhere (NaN
/// included). One exact multiplication and one comparison per value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ReluGate {
    pub sign: f64,
    pub bound: f64,
}

impl Gate for ReluGate {
    #[inline(always)]
    fn stops(self, x: f64) -> bool {
        x * self.sign <= self.bound
    }
}

/// Every channel's gate, and their signs and bounds widened over a channels-last row (see
/// [`widen_iter`]), for the kernels.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gates {
    pub per_channel: Vec<ReluGate>,
    sign: Vec<f64>,
    bound: Vec<f64>,
}

impl Gates {
    /// The gates of `norms` over `T` inputs, widened when `rows`; false, leaving them
    /// unusable, when a channel's map is not monotonic.
    pub fn set<T: Element>(
        &mut self,
        norms: impl Iterator<Item = Normalization>,
        rows: bool,
    ) -> bool {
        self.per_channel.clear();
        for norm in norms {
            match ReluGate::of::<T>(&norm) {
                Some(gate) => self.per_channel.push(gate),
                None => return false,
            }
        }
        if rows {
            let (c, gates) = (self.per_channel.len(), &self.per_channel);
            widen_iter(c, gates.iter().map(|g| g.sign), &mut self.sign);
            widen_iter(c, gates.iter().map(|g| g.bound), &mut self.bound);
        }
        true
    }

    /// The signs and bounds over a widened row.
    pub fn wide(&self) -> [&[f64]; 2] {
        [&self.sign, &self.bound]
    }
}

impl ReluGate {
    /// The gate of `relu(norm(x))` over `T` inputs, as the forward computes it (the same map,
    /// the same rounding); `None` when the map is not monotonic (see
    /// [`ChannelMap::direction`](crate::forward::ChannelMap::direction)).
    pub fn of<T: Element>(norm: &Normalization) -> Option<Self> {
        let map = norm.map::<T>();
        let rising = map.direction()?;
        let (first, last) = (T::from_f64(f64::NEG_INFINITY), T::from_f64(f64::INFINITY));
        let (first, last) = (first.ordinal(), last.ordinal());
        // Rising: zeroed up to the threshold; falling: kept up to it.
        let before = |o: i64| relu_zeroes(map, T::from_ordinal(o)) == rising;
        if !before(first) || before(last) {
            return None;
        }
        // Where the exact map crosses zero: mean - bias / (weight * invstd).
        let cross = norm.mean - norm.bias / (norm.weight * norm.invstd);
        let guess = if cross.is_nan() {
            0
        } else {
            T::from_f64(cross).ordinal().clamp(first, last)
        };
        let t = last_before(before, first, last, guess);
        let at = |o: i64| T::from_ordinal(o).to_f64();
        Some(if rising {
            Self {
                sign: 1.0,
                bound: at(t),
            }
        } else {
            Self {
                sign: -1.0,
                bound: -at(t + 1),
            }
        })
    }
}

/// The last `o` in `first..last` with `before(o)`, for a predicate true from `first` up to some
/// point and false after it up to `last` (`before(first)`, `!before(last)`): galloping from
/// `guess` (within `first..=last`), then bisecting, so a good guess costs a few evaluations.
fn last_before(before: impl Fn(i64) -> bool, first: i64, last: i64, guess: i64) -> i64 {
    // Invariant: before(lo), !before(hi).
    let (mut lo, mut hi) = (first, last);
    let mut step = 1;
    if before(guess) {
        lo = guess;
        while lo + step < hi {
            if !before(lo + step) {
                hi = lo + step;
                break;
            }
            lo += step;
            step *= 2;
        }
    } else {
        hi = guess;
        while hi - step > lo {
            if before(hi - step) {
                lo = hi - step;
                break;
            }
            hi -= step;
            step *= 2;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::sealed::Sealed;
    use crate::element::{bf16, f16};

    #[test]
    fn ordinals_count_the_values_in_order() {
        let values = [
            f32::NEG_INFINITY,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            1.0,
        ];
        for w in values.windows(2) {
            assert!(w[0].ordinal() < w[1].ordinal());
            assert_eq!(f32::from_ordinal(w[0].ordinal()), w[0]);
        }
        assert_eq!((-0.0f32).ordinal(), 0);
        assert_eq!(1e-45f32.ordinal(), 1);
        assert_eq!(f32::from_ordinal(-1), -1e-45);
        assert_eq!(1.0f64.ordinal() + 1, (1.0 + f64::EPSILON).ordinal());
        let one = bf16::from_f32(1.0);
        assert_eq!(
            bf16::from_ordinal(one.ordinal() + 1),
            bf16::from_f32(1.0078125)
        );
        assert_eq!(f16::from_ordinal(-1), -f16::from_bits(1));
    }

    #[test]
    fn last_before_finds_the_boundary_from_any_guess() {
        for boundary in [-50, -1, 0, 7, 49] {
            for guess in -50..=50 {
                let t = last_before(|o| o <= boundary, -50, 50, guess);
                assert_eq!(t, boundary, "guess {guess}");
            }
        }
    }

    /// The gate against the forward's ReLU, value by value, around its threshold and at the
    /// extremes, for rising and falling maps of every storage type.
    fn gate_matches_the_forward<T: Element>(values: impl Fn(f64) -> T) {
        let norms = [
            (0.3, 2.0, 1.5, 0.25),
            (0.3, 2.0, -1.5, 0.25),
            (-1e4, 1e-3, 0.7, -2.0),
            (5.0, 1e6, 1.0, 0.0),
            (1.0, 1.0, 1.0, 1e30),
            (1.0, 1.0, -1.0, -1e30),
        ];
        for (mean, invstd, weight, bias) in norms {
            let norm = Normalization {
                mean,
                invstd,
                weight,
                bias,
            };
            let gate = ReluGate::of::<T>(&norm).expect("a monotonic map");
            let map = norm.map::<T>();
            let cross = mean - bias / (weight * invstd);
            let (first, last) = (values(f64::NEG_INFINITY), values(f64::INFINITY));
            let (first, last) = (first.ordinal(), last.ordinal());
            let centre = values(cross).ordinal();
            let around = (centre - 300..centre + 300).filter(|o| (first..=last).contains(o));
            let around = around.map(T::from_ordinal);
            let extremes = [
                f64::NEG_INFINITY,
                -1e300,
                -1.0,
                0.0,
                1.0,
                1e300,
                f64::INFINITY,
            ];
            for x in around.chain(extremes.map(&values)) {
                let zeroed = relu_zeroes(map, x);
                assert_eq!(gate.stops(x.to_f64()), zeroed, "{norm:?} at {x:?}");
            }
            assert!(!gate.stops(f64::NAN));
        }
        let flat = Normalization {
            mean: 0.0,
            invstd: 1.0,
            weight: 0.0,
            bias: 1.0,
        };
        assert_eq!(ReluGate::of::<T>(&flat), None);
        let nan = Normalization {
            mean: f64::NAN,
            ..flat
        };
        assert_eq!(ReluGate::of::<T>(&nan), None);
    }

    #[test]
    fn gates_zero_exactly_what_the_forward_relu_zeroed() {
        gate_matches_the_forward::<f32>(|v| v as f32);
        gate_matches_the_forward::<f64>(|v| v);
        gate_matches_the_forward::<bf16>(bf16::from_f64);
        gate_matches_the_forward::<f16>(f16::from_f64);
    }
}
