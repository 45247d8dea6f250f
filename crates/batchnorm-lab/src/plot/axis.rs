//! Axis ranges, "nice" tick values and tick labels, for linear and base-10 logarithmic scales.
//!
//! Linear ticks are the multiples of a step `m·10^k` with `m ∈ {1, 2, 5}`; the smallest step
//! whose labels do not collide (as judged by the caller's `fits`) is taken. Logarithmic ticks are
//! powers of ten, every decade or every `k`-th one when the range spans many decades.

/// Fraction of the data span added on each side of a padded linear range.
const PAD_FRACTION: f64 = 0.05;
/// A snapped linear range grows to the next tick when that is at most this fraction of the span
/// away (so `0..49 900` shows as `0..50k` and `0..0.95` as `0..1`, each with an end label).
const SNAP_FRACTION: f64 = 0.1;
/// Relative tolerance on `value / step` when deciding whether a value sits on a tick (absorbs
/// the rounding in e.g. `0.3 / 0.1`).
const TICK_EPS: f64 = 1e-9;
/// Unlabelled decades get minor ticks only while labels are at most this many decades apart (more
/// would crowd into a solid bar).
const MAX_DECADES_PER_LABEL_WITH_MINORS: i32 = 10;
/// Most ticks one axis considers; finer steps are skipped (guards a pathological `target`).
const MAX_TICKS: f64 = 200.0;

/// One tick mark: its data value, its position along the axis as a fraction of the axis length
/// from `lo` (0) to `hi` (1), and its label (`None` for an unlabelled minor tick).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tick {
    pub value: f64,
    pub fraction: f64,
    pub label: Option<String>,
}

/// How a linear axis treats the ends of the data range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ends {
    /// Pad by 5 % of the span on each side (y axes: curves stay clear of the frame).
    Padded,
    /// Keep the data range, extended to a nearby tick (x axes: curves span the full width).
    Snapped,
}

/// A laid-out axis: its range and ticks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axis {
    /// Range ends: data values for a linear axis, base-10 exponents for a log axis.
    lo: f64,
    hi: f64,
    log: bool,
    pub ticks: Vec<Tick>,
}

impl Axis {
    /// Linear axis over the data range `min..=max` (finite, `min <= max`).
    ///
    /// `headroom` (in `0..1`) is the fraction of the axis above the data kept free (room for a
    /// legend); `target` is the most intervals wanted (at most `target + 1` ticks);
    /// `fits(fractions, labels)` says whether labels at those fractions of the axis length can be
    /// drawn without colliding. The finest step meeting both is taken. Returns `None` when the
    /// range cannot be represented (its span overflows f64).
    pub(crate) fn linear(
        min: f64,
        max: f64,
        ends: Ends,
        headroom: f64,
        target: usize,
        fits: impl Fn(&[f64], &[String]) -> bool,
    ) -> Option<Axis> {
        let (lo, hi) = if min == max {
            // A single value: centre it in a small range around it.
            let pad = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
            (min - pad, max + pad)
        } else {
            match ends {
                Ends::Padded => {
                    let pad = (max - min) * PAD_FRACTION;
                    (min - pad, max + pad)
                }
                Ends::Snapped => (min, max),
            }
        };
        let hi = lo + (hi - lo) / (1.0 - headroom);
        let span = hi - lo;
        if !(lo.is_finite() && hi.is_finite() && span.is_finite() && span > 0.0) {
            return None;
        }
        let target = target.max(1);
        // From a step giving about twice the wanted ticks, coarsen until they are few enough and
        // their labels fit: the finest readable step.
        let mut step = nice_step(span / (2 * target) as f64);
        loop {
            let (lo, hi) = match ends {
                Ends::Snapped => snap(lo, hi, step),
                Ends::Padded => (lo, hi),
            };
            let Some(values) = multiples(lo, hi, step) else {
                step = next_step(step);
                continue;
            };
            let labels = linear_labels(&values, step);
            let fractions: Vec<f64> = values.iter().map(|v| (v - lo) / (hi - lo)).collect();
            let coarsest = values.len() <= 2;
            if coarsest || (values.len() <= target + 1 && fits(&fractions, &labels)) {
                let ticks = values
                    .into_iter()
                    .zip(fractions)
                    .zip(labels)
                    .map(|((value, fraction), label)| Tick {
                        value,
                        fraction,
                        label: Some(label),
                    })
                    .collect();
                return Some(Axis {
                    lo,
                    hi,
                    log: false,
                    ticks,
                });
            }
            step = next_step(step);
        }
    }

    /// Base-10 logarithmic axis over the positive data range `min..=max`.
    ///
    /// The range is widened to whole decades, so at least two major ticks show, and the major
    /// ticks are the powers of ten `10^e` with `e` a multiple of `k`, where `k` is the smallest of
    /// 1, 2, 3, 4, 5, 6, 8, 10, 20, … for which `fits` accepts the labels. Minor ticks mark
    /// `2·10^e … 9·10^e` when every decade is labelled, and otherwise the unlabelled decades (while
    /// labels are at most 10 decades apart).
    /// `headroom` is as for [`Axis::linear`].
    pub(crate) fn log(
        min: f64,
        max: f64,
        headroom: f64,
        fits: impl Fn(&[f64], &[String]) -> bool,
    ) -> Axis {
        debug_assert!(min > 0.0 && min <= max && max.is_finite());
        // Exponents of f64 values lie within -324..=309, so these casts are exact.
        let mut lo_e = (min.log10() + TICK_EPS).floor() as i32;
        let mut hi_e = (max.log10() - TICK_EPS).ceil() as i32;
        if hi_e <= lo_e {
            // A single power of ten: show the decade on each side of it.
            lo_e -= 1;
            hi_e += 1;
        }
        if headroom > 0.0 {
            let top = f64::from(lo_e) + (max.log10() - f64::from(lo_e)) / (1.0 - headroom);
            hi_e = hi_e.max((top - TICK_EPS).ceil() as i32);
        }
        for every in [1, 2, 3, 4, 5, 6, 8, 10, 20, 50, 100, 200, 500] {
            let lo = lo_e.div_euclid(every) * every;
            let hi = (hi_e + every - 1).div_euclid(every) * every;
            let exponents: Vec<i32> = (lo..=hi).step_by(every as usize).collect();
            let labels: Vec<String> = exponents.iter().map(|&e| power_of_ten(e)).collect();
            let span = f64::from(hi - lo);
            let fractions: Vec<f64> = exponents
                .iter()
                .map(|&e| f64::from(e - lo) / span)
                .collect();
            if exponents.len() > 2 && !fits(&fractions, &labels) {
                continue;
            }
            let mut ticks: Vec<Tick> = exponents
                .iter()
                .zip(fractions)
                .zip(labels)
                .map(|((&e, fraction), label)| Tick {
                    value: 10f64.powi(e),
                    fraction,
                    label: Some(label),
                })
                .collect();
            for e in lo..hi {
                if every == 1 {
                    for m in 2..=9 {
                        let fraction = (f64::from(e - lo) + f64::from(m).log10()) / span;
                        let value = f64::from(m) * 10f64.powi(e);
                        ticks.push(Tick {
                            value,
                            fraction,
                            label: None,
                        });
                    }
                } else if e % every != 0 && every <= MAX_DECADES_PER_LABEL_WITH_MINORS {
                    let fraction = f64::from(e - lo) / span;
                    ticks.push(Tick {
                        value: 10f64.powi(e),
                        fraction,
                        label: None,
                    });
                }
            }
            return Axis {
                lo: f64::from(lo),
                hi: f64::from(hi),
                log: true,
                ticks,
            };
        }
        unreachable!("a step of 500 decades covers the whole f64 exponent range in two ticks")
    }

    /// Base-10 logarithmic axis over the positive data range `min..=max`, ticked and labelled
    /// at `at` (positive values, shown as they are: `0.01`, `0.5`, `128`), with 4 % of the span
    /// of margin on each side so that markers at the ends stay inside.
    pub(crate) fn log_at(at: &[f64], min: f64, max: f64) -> Axis {
        let shown = at.iter().copied().filter(|v| *v > 0.0 && v.is_finite());
        let (lo, hi) = shown
            .clone()
            .fold((min, max), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = (lo.log10(), hi.log10());
        let pad = if hi > lo { (hi - lo) * 0.04 } else { 0.5 };
        let (lo, hi) = (lo - pad, hi + pad);
        let ticks = shown
            .map(|v| Tick {
                value: v,
                fraction: (v.log10() - lo) / (hi - lo),
                label: Some(format!("{v}")),
            })
            .collect();
        Axis {
            lo,
            hi,
            log: true,
            ticks,
        }
    }

    /// Position of `value` along the axis, as a fraction from `lo` (0) to `hi` (1); values
    /// outside the range give fractions outside `0..=1`. On a log axis `value` must be positive.
    pub(crate) fn fraction(&self, value: f64) -> f64 {
        if self.log {
            (value.log10() - self.lo) / (self.hi - self.lo)
        } else {
            (value - self.lo) / (self.hi - self.lo)
        }
    }
}

/// The smallest `m·10^k` with `m ∈ {1, 2, 5, 10}` that is at least `raw` (> 0).
fn nice_step(raw: f64) -> f64 {
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|&step| step >= raw * (1.0 - TICK_EPS))
        .unwrap_or(10.0 * base)
}

/// The nice step after `step`: 1 → 2 → 5 → 10 (times the same power of ten).
fn next_step(step: f64) -> f64 {
    let base = 10f64.powf(step.log10().floor());
    let mantissa = (step / base).round();
    if mantissa < 2.0 {
        2.0 * base
    } else if mantissa < 5.0 {
        5.0 * base
    } else {
        10.0 * base
    }
}

/// `lo..hi` grown to the nearest multiples of `step` outside it, where they are close.
fn snap(lo: f64, hi: f64, step: f64) -> (f64, f64) {
    let slack = (hi - lo) * SNAP_FRACTION;
    let up = (hi / step - TICK_EPS).ceil() * step;
    let down = (lo / step + TICK_EPS).floor() * step;
    (
        if lo - down <= slack { down } else { lo },
        if up - hi <= slack { up } else { hi },
    )
}

/// The multiples of `step` in `lo..=hi`, computed as `k·step` (no accumulated rounding), with
/// a value that rounds to zero made exactly zero; `None` when there are more than [`MAX_TICKS`].
fn multiples(lo: f64, hi: f64, step: f64) -> Option<Vec<f64>> {
    let first = (lo / step - TICK_EPS).ceil();
    let last = (hi / step + TICK_EPS).floor();
    if !(first.is_finite() && last.is_finite()) || last - first > MAX_TICKS {
        return None;
    }
    if first > last {
        return Some(Vec::new());
    }
    // Both are integers of magnitude below 2^53 here (at most MAX_TICKS steps apart, from finite
    // values divided by a step that is a sizeable fraction of their span).
    Some(
        (first as i64..=last as i64)
            .map(|k| if k == 0 { 0.0 } else { k as f64 * step })
            .collect(),
    )
}

/// Labels for linear ticks spaced `step` apart: plain decimals with as many digits as the step
/// needs, `k`/`M` suffixes from ten thousand (training steps read `20k`), and a shared
/// `×10ⁿ` mantissa form for very large or very small values. Negative numbers use the
/// typographic minus sign.
pub(crate) fn linear_labels(values: &[f64], step: f64) -> Vec<String> {
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (divisor, suffix) = if largest >= 1e9 || (largest > 0.0 && largest < 1e-3) {
        let e = largest.log10().floor() as i32;
        (10f64.powi(e), format!("×{}", power_of_ten(e)))
    } else if largest >= 1e6 {
        (1e6, "M".to_string())
    } else if largest >= 1e4 {
        (1e3, "k".to_string())
    } else {
        (1.0, String::new())
    };
    let decimals = decimals_for(step / divisor);
    values
        .iter()
        .map(|&v| {
            if v == 0.0 {
                // "0.0" beside "0.5", but a bare "0" beside "10k" or "1×10⁻⁴".
                return if suffix.is_empty() {
                    format!("{:.*}", decimals, 0.0)
                } else {
                    "0".into()
                };
            }
            let text = format!("{:.*}{suffix}", decimals, v / divisor);
            text.replace('-', "\u{2212}")
        })
        .collect()
}

/// Digits after the decimal point needed to tell apart multiples of `step`.
fn decimals_for(step: f64) -> usize {
    let digits = (-step.log10() - TICK_EPS).ceil();
    if digits > 0.0 {
        digits as usize
    } else {
        0
    }
}

/// `10ⁿ` with the exponent in Unicode superscript digits (`10⁻¹²`).
pub(crate) fn power_of_ten(exponent: i32) -> String {
    const SUPERSCRIPT: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let mut label = String::from("10");
    if exponent < 0 {
        label.push('⁻');
    }
    for digit in exponent.unsigned_abs().to_string().bytes() {
        label.push(SUPERSCRIPT[usize::from(digit - b'0')]);
    }
    label
}
