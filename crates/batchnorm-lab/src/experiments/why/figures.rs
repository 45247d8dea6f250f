//! The experiment's three figures: drift (fig1-style percentile panels), gradient-based ICS, and
//! the loss landscape (Santurkar et al.'s Figure 4: min-max bands over the step sizes).

use super::network::Net;
use super::train::{Eval, Measured, NetRun};
use super::Outcome;
use crate::experiments::output::series;
use crate::plot::{Figure, LineStyle, Panel, Series};

/// Line style per network: BN solid, plain dashed, noisy BN solid (told apart by colour).
fn style(net: Net) -> LineStyle {
    match net {
        Net::Plain => LineStyle::Dashed,
        Net::Bn | Net::NoisyBn => LineStyle::Solid,
    }
}

fn panel(title: &str, y_label: &str, y_log: bool, series: Vec<Series>) -> Panel {
    Panel {
        title: title.to_owned(),
        x_label: "training steps".into(),
        y_label: y_label.to_owned(),
        y_log,
        series,
        ..Default::default()
    }
}

/// One line per network of `value` at each evaluation.
fn per_net_evals(o: &Outcome, value: impl Fn(&NetRun, usize, &Eval) -> f64) -> Vec<Series> {
    o.runs
        .iter()
        .map(|r| {
            let points = r
                .evals
                .iter()
                .enumerate()
                .map(|(i, e)| (e.step as f64, value(r, i, e)))
                .collect();
            series(r.net.label(), points, style(r.net))
        })
        .collect()
}

/// Measured points averaged over this many neighbours (centred) in the line figures: one
/// batch of 60 makes each measurement noisy; the CSV files keep every raw value.
const SMOOTHING: usize = 5;

/// `points` with each y replaced by the mean of the (up to) `window` points centred on it; a
/// non-finite value makes its neighbours' means non-finite (gaps, not hidden values).
fn moving_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    (0..points.len())
        .map(|i| {
            let near = &points[i.saturating_sub(half)..(i + half + 1).min(points.len())];
            let mean = near.iter().map(|p| p.1).sum::<f64>() / near.len() as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// One line per network of `value` at each measured step, as a [`moving_mean`] of
/// [`SMOOTHING`] measurements.
fn per_net_measured(o: &Outcome, value: impl Fn(&Measured) -> f64) -> Vec<Series> {
    o.runs
        .iter()
        .map(|r| {
            let points: Vec<(f64, f64)> = r
                .measured
                .iter()
                .map(|m| (m.step as f64, value(m)))
                .collect();
            let points = moving_mean(&points, SMOOTHING);
            series(r.net.label(), points, style(r.net))
        })
        .collect()
}

/// Per network, a band from `range(m).0` to `range(m).1` over the measured steps (drawn first)
/// and no line: Santurkar et al.'s Figure 4 (a) and (b).
fn bands(o: &Outcome, range: impl Fn(&Measured) -> (f64, f64)) -> Vec<Series> {
    o.runs
        .iter()
        .map(|r| {
            let lower = r.measured.iter().map(|m| (m.step as f64, range(m).0));
            let upper = r.measured.iter().rev().map(|m| (m.step as f64, range(m).1));
            Series {
                label: r.net.label().to_owned(),
                points: lower.chain(upper).collect(),
                style: LineStyle::Band,
                ..Default::default()
            }
        })
        .collect()
}

/// The range holding every percentile of layer `layer` over the three networks, with 5 % below
/// and 60 % above for the legend: the three networks' panels of a layer share it.
fn percentile_range(o: &Outcome, layer: usize) -> Option<(f64, f64)> {
    let values = o
        .runs
        .iter()
        .flat_map(|r| r.evals.iter())
        .filter_map(|e| e.layers.get(layer))
        .flat_map(|l| l.percentiles)
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let span = (hi - lo).max(1e-3);
    (lo <= hi).then_some((lo - 0.05 * span, hi + 0.6 * span))
}

/// (a) test accuracy, (b) the change between evaluations whose mean is the drift, (c) the
/// training loss; then per network a row of the three hidden layers' pre-activation
/// percentiles (unit 0), each layer's column on one shared range.
pub(super) fn drift_figure(o: &Outcome) -> Figure {
    let mut panels = vec![
        panel(
            "(a) Test accuracy",
            "test accuracy",
            false,
            per_net_evals(o, |_, _, e| e.test_accuracy),
        ),
        panel(
            "(b) Change of unit means and stds",
            "mean |Δmean| + |Δstd|",
            true,
            per_net_evals(o, |r, i, _| r.change_at(i)),
        ),
        panel(
            "(c) Training loss",
            "mean batch loss",
            true,
            per_net_evals(o, |_, _, e| e.train_loss),
        ),
    ];
    let hidden = o.hidden_layers();
    let ranges: Vec<_> = (0..hidden).map(|l| percentile_range(o, l)).collect();
    let names = ["15th percentile", "50th percentile", "85th percentile"];
    let mut letter = b'd';
    for r in &o.runs {
        for (l, &y_range) in ranges.iter().enumerate() {
            let lines = names
                .iter()
                .enumerate()
                .map(|(q, name)| {
                    let points = r
                        .evals
                        .iter()
                        .map(|e| (e.step as f64, e.layers[l].percentiles[q]))
                        .collect();
                    series(name, points, LineStyle::Solid)
                })
                .collect();
            let title = format!(
                "({}) {}: layer {}, {}",
                letter as char,
                r.net.label(),
                l + 1,
                o.config.arch.probe_label()
            );
            letter += 1;
            panels.push(Panel {
                y_range,
                ..panel(&title, "ReLU input", false, lines)
            });
        }
    }
    Figure {
        title: "Distribution drift: hidden pre-activations over training (fixed probe batch)"
            .into(),
        columns: 3,
        panels,
    }
}

/// Row 1: `||G - G'||` per layer; row 2: `cos(G, G')` per layer.
pub(super) fn ics_figure(o: &Outcome) -> Figure {
    let layers = o.shifted_layers();
    let mut panels = Vec::new();
    let mut letter = b'a';
    for (what, y_label, log) in [
        ("||G - G'||", "ℓ2 difference", true),
        ("cos(G, G')", "cosine", false),
    ] {
        for l in 0..layers {
            let title = format!("({}) {what}, layer {}", letter as char, l + 2);
            letter += 1;
            let lines = per_net_measured(o, |m| {
                m.ics
                    .get(l)
                    .map_or(f64::NAN, |x| if log { x.l2 } else { x.cosine })
            });
            // Cosines on one fixed range: the layers compare at a glance.
            let y_range = (!log).then_some((-1.0, 1.0));
            panels.push(Panel {
                y_range,
                ..panel(&title, y_label, log, lines)
            });
        }
    }
    Figure {
        title: format!(
            "Gradient-based internal covariate shift: G before, G' after the layers below step \
             (mean of {SMOOTHING} measurements)"
        ),
        columns: 3,
        panels,
    }
}

/// Santurkar et al.'s Figure 4: (a) the range of `L(theta - eta g)` over the step sizes, (b)
/// the range of `||g - grad L(theta - eta g)||`, (c) the effective beta-smoothness.
pub(super) fn landscape_figure(o: &Outcome) -> Figure {
    let c = &o.config;
    Figure {
        title: format!(
            "Loss landscape along the gradient, step sizes {}..{} ({} log-spaced)",
            c.eta_min, c.eta_max, c.etas
        ),
        columns: 3,
        panels: vec![
            panel(
                "(a) Loss landscape",
                "loss L(θ - ηg), min to max",
                true,
                bands(o, |m| m.landscape.loss_range()),
            ),
            panel(
                "(b) Gradient predictiveness",
                "‖g - ∇L(θ - ηg)‖, min to max",
                true,
                bands(o, |m| m.landscape.grad_change_range()),
            ),
            panel(
                &format!("(c) Effective β-smoothness (mean of {SMOOTHING})"),
                "max ‖Δ∇L‖ / ‖ηg‖",
                true,
                per_net_measured(o, |m| m.landscape.beta()),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::moving_mean;

    #[test]
    fn the_moving_mean_is_centred_and_truncated_at_the_ends() {
        let p: Vec<(f64, f64)> = [1.0, 2.0, 3.0, 4.0, 10.0]
            .iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect();
        let m = moving_mean(&p, 3);
        assert_eq!(
            m,
            [
                (0.0, 1.5),
                (1.0, 2.0),
                (2.0, 3.0),
                (3.0, 17.0 / 3.0),
                (4.0, 7.0)
            ]
        );
        let with_nan = [
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 1.0),
            (3.0, 1.0),
            (4.0, 1.0),
        ];
        let m = moving_mean(&with_nan, 3);
        assert!(m[0].1.is_nan() && m[2].1.is_nan() && m[3].1 == 1.0);
        assert_eq!(moving_mean(&p, 1), p);
    }
}
