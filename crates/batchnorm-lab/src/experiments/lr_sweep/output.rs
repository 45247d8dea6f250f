//! The sweep's files: `results.csv`, `curves.csv`, `summary.json`, `lr_sweep.png`,
//! `lr_sweep.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Outcome, Run, DIVERGENCE_FACTOR};
use crate::experiments::mlp::Activation;
use crate::experiments::output::{finite, num, pct, series, time_finding, write_outputs, Outputs};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Marker, Panel, Series};

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[
            ("results.csv", results_csv(o)),
            ("curves.csv", curves_csv(o)),
        ],
        summary: summary_json(o),
        figures: &[("lr_sweep", figure(o))],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn results_csv(o: &Outcome) -> String {
    let mut s = String::from(
        "activation,net,lr,test_accuracy,diverged,diverged_at,non_finite,nan_outputs,spiked_at,initial_loss,max_loss,final_loss,steps_done,train_seconds\n",
    );
    for r in &o.runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.activation.key(),
            r.net_key(),
            r.lr,
            num(r.test_accuracy),
            r.diverged(),
            r.diverged_at.map_or(String::new(), |s| s.to_string()),
            r.non_finite,
            r.nan_outputs,
            r.spiked_at.map_or(String::new(), |s| s.to_string()),
            num(r.initial_loss),
            num(r.max_loss),
            num(r.final_loss),
            r.steps_done,
            r.train_seconds
        );
    }
    s
}

fn curves_csv(o: &Outcome) -> String {
    let mut s = String::from("activation,net,lr,step,train_loss\n");
    for r in &o.runs {
        for &(step, loss) in &r.curve {
            let _ = writeln!(
                s,
                "{},{},{},{step},{}",
                r.activation.key(),
                r.net_key(),
                r.lr,
                num(loss)
            );
        }
    }
    s
}

pub(super) fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    let runs: Vec<Value> = o
        .runs
        .iter()
        .map(|r| {
            json!({
                "activation": r.activation.key(),
                "net": r.net_key(),
                "lr": r.lr,
                "test_accuracy": finite(r.test_accuracy),
                "diverged": r.diverged(),
                "diverged_at": r.diverged_at,
                "at_chance": !r.diverged() && r.test_accuracy < AT_CHANCE,
                "non_finite": r.non_finite,
                "nan_outputs": r.nan_outputs,
                "spiked_at": r.spiked_at,
                "initial_loss": finite(r.initial_loss),
                "max_loss": finite(r.max_loss),
                "final_loss": finite(r.final_loss),
                "steps_done": r.steps_done,
                "train_seconds": r.train_seconds,
            })
        })
        .collect();
    json!({
        "runs": runs,
        "wall_seconds": o.wall_seconds,
        "config": {
            "lrs": c.lrs,
            "steps": c.steps,
            "batch_size": c.batch_size,
            "init_std": c.init_std,
            "log_every": c.log_every,
            "seed": c.seed,
            "threads": c.threads,
            "architecture": "784-100-100-100-10, sigmoid or ReLU hidden units, softmax cross-entropy",
            "optimizer": "plain SGD (no momentum, no weight decay)",
            "batch_norm": "before each hidden nonlinearity; eps 1e-5, momentum 0.1, learnable gamma/beta",
            "divergence": format!("a non-finite batch loss (training stops), non-finite test outputs, or a mean loss above {DIVERGENCE_FACTOR}x the first batch's in every window to the end"),
        },
    })
}

/// A final test accuracy below this is reported as "at chance" (10 classes).
const AT_CHANCE: f64 = 0.15;

const COMBOS: [(Activation, bool); 4] = [
    (Activation::Sigmoid, true),
    (Activation::Sigmoid, false),
    (Activation::Relu, true),
    (Activation::Relu, false),
];

fn label(activation: Activation, bn: bool) -> String {
    format!(
        "{}, {}",
        activation.label(),
        if bn { "with BN" } else { "without BN" }
    )
}

fn style(bn: bool) -> LineStyle {
    if bn {
        LineStyle::Solid
    } else {
        LineStyle::Dashed
    }
}

fn figure(o: &Outcome) -> Figure {
    let lrs = o.config.lrs.clone();
    // A diverged run has no accuracy or final loss: no point, a cross at the bottom instead.
    let point = |r: &Run, y: f64| (r.lr, if r.diverged() { f64::NAN } else { y });
    // In the colour of its network's series (0: with BN, 1: without).
    let diverged = |runs: &[&Run], y: f64, label: &str, color_of: usize| Series {
        label: label.into(),
        points: runs
            .iter()
            .filter(|r| r.diverged())
            .map(|r| (r.lr, y))
            .collect(),
        style: LineStyle::NoLine,
        marker: Marker::Cross,
        color_of: Some(color_of),
    };
    let acc_panel = |activation: Activation, title: &str| {
        let mut series_list: Vec<Series> = [true, false]
            .into_iter()
            .map(|bn| Series {
                marker: Marker::Dot,
                ..series(
                    if bn { "with BN" } else { "without BN" },
                    o.series(activation, bn)
                        .iter()
                        .map(|r| point(r, r.test_accuracy))
                        .collect(),
                    style(bn),
                )
            })
            .collect();
        for bn in [true, false] {
            let runs = o.series(activation, bn);
            if runs.iter().any(|r| r.diverged()) {
                let label = if bn {
                    "diverged, with BN"
                } else {
                    "diverged, without BN"
                };
                series_list.push(diverged(&runs, 0.0, label, usize::from(!bn)));
            }
        }
        Panel {
            title: title.into(),
            x_label: "learning rate (log scale)".into(),
            y_label: "test accuracy".into(),
            series: series_list,
            x_log_ticks: lrs.clone(),
            y_range: Some((0.0, 1.0)),
            ..Default::default()
        }
    };
    let loss_panel = Panel {
        title: "(c) Final training loss (diverged: no point)".into(),
        x_label: "learning rate (log scale)".into(),
        y_label: "mean batch loss, last window".into(),
        y_log: true,
        series: COMBOS
            .iter()
            .map(|&(a, bn)| Series {
                marker: Marker::Dot,
                ..series(
                    &label(a, bn),
                    o.series(a, bn)
                        .iter()
                        .map(|r| point(r, r.final_loss))
                        .collect(),
                    style(bn),
                )
            })
            .collect(),
        x_log_ticks: lrs.clone(),
        ..Default::default()
    };
    Figure {
        title: format!(
            "MNIST, 784-100-100-100-10 MLP, {} SGD steps: test accuracy against learning rate",
            o.config.steps
        ),
        columns: 3,
        panels: vec![
            acc_panel(Activation::Sigmoid, "(a) Sigmoid hidden units"),
            acc_panel(Activation::Relu, "(b) ReLU hidden units"),
            loss_panel,
        ],
    }
}

/// A run's cell in the report: its test accuracy, or why it has none.
fn cell(r: &Run) -> String {
    match (r.diverged_at, r.non_finite) {
        (Some(s), true) => format!("diverged (NaN loss at step {s})"),
        (Some(s), false) => format!("diverged (loss > {DIVERGENCE_FACTOR}x from step {s})"),
        (None, _) if r.nan_outputs => "diverged (NaN outputs)".into(),
        (None, _) => match r.spiked_at {
            Some(s) => format!(
                "{} (loss > {DIVERGENCE_FACTOR}x at step {s}, recovered)",
                pct(Some(r.test_accuracy))
            ),
            None => pct(Some(r.test_accuracy)),
        },
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = String::new();
    let _ = writeln!(s, "# Learning-rate robustness with and without BN\n");
    let _ = writeln!(
        s,
        "![Test accuracy against learning rate; final training loss](lr_sweep.png)\n"
    );
    let _ = writeln!(
        s,
        "MNIST, 784-100-100-100-10 MLP with sigmoid or ReLU hidden units, weights from N(0, {}^2), \
         biases 0 (the same weights and batches for every run), {} steps of plain SGD with batches of \
         {}, seed {}. Test accuracy on the 10,000 test images after the last step (BN with running \
         statistics). Diverged: a non-finite batch loss (training stops; the network's outputs are \
         NaN), NaN test outputs, or a mean loss above {}x the first batch's in every window to the \
         end; a diverged run has no accuracy. A run whose loss passed that and came back is \
         marked recovered.\n",
        c.init_std, c.steps, c.batch_size, c.seed, DIVERGENCE_FACTOR
    );
    let _ = write!(s, "| learning rate |");
    for &(a, bn) in &COMBOS {
        let _ = write!(s, " {} |", label(a, bn));
    }
    let _ = writeln!(s, "\n|---:|---:|---:|---:|---:|");
    for (i, lr) in c.lrs.iter().enumerate() {
        let _ = write!(s, "| {lr} |");
        for &(a, bn) in &COMBOS {
            let cellv = o.series(a, bn).get(i).map_or("n/a".into(), |r| cell(r));
            let _ = write!(s, " {cellv} |");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## Findings\n");
    for &(a, bn) in &COMBOS {
        let runs = o.series(a, bn);
        let div: Vec<String> = runs
            .iter()
            .filter(|r| r.diverged())
            .map(|r| r.lr.to_string())
            .collect();
        // Best and worst among the runs that did not diverge (a diverged one has no accuracy).
        let kept = || runs.iter().filter(|r| !r.diverged());
        let best = kept().max_by(|x, y| x.test_accuracy.total_cmp(&y.test_accuracy));
        let worst = kept().min_by(|x, y| x.test_accuracy.total_cmp(&y.test_accuracy));
        let range = match (best, worst) {
            (Some(b), Some(w)) => format!(
                "best {} at lr {}, worst {} at lr {}",
                pct(Some(b.test_accuracy)),
                b.lr,
                pct(Some(w.test_accuracy)),
                w.lr
            ),
            _ => "no run trained".into(),
        };
        let diverged = if div.is_empty() {
            "did not diverge at any learning rate".into()
        } else {
            format!("diverged at lr {}", div.join(", "))
        };
        let _ = writeln!(s, "- {}: {range}; {diverged}.", label(a, bn));
    }
    let chance: Vec<String> = o
        .runs
        .iter()
        .filter(|r| !r.diverged() && r.test_accuracy < AT_CHANCE)
        .map(|r| {
            format!(
                "{} at lr {} ({}, final loss {:.3})",
                label(r.activation, r.batch_norm),
                r.lr,
                pct(Some(r.test_accuracy)),
                r.final_loss
            )
        })
        .collect();
    if !chance.is_empty() {
        let _ = writeln!(
            s,
            "- Ended at chance (test accuracy below {:.0}%) without meeting the divergence criterion: {}. \
             The loss never exceeded {}x its initial value, but the network stopped learning \
             (a loss near ln 10 = 2.303 means uniform predictions).",
            100.0 * AT_CHANCE,
            chance.join("; "),
            DIVERGENCE_FACTOR
        );
    }
    let high: Vec<&Run> = o.runs.iter().filter(|r| r.lr >= 1.0).collect();
    if !high.is_empty() {
        // The mean over the runs that did not diverge, and how many did.
        let mean = |a: Activation, bn: bool| {
            let runs: Vec<&&Run> = high
                .iter()
                .filter(|r| r.activation == a && r.batch_norm == bn)
                .collect();
            let kept: Vec<f64> = runs
                .iter()
                .filter(|r| !r.diverged())
                .map(|r| r.test_accuracy)
                .collect();
            let diverged = runs.len() - kept.len();
            let avg = (!kept.is_empty()).then(|| kept.iter().sum::<f64>() / kept.len() as f64);
            match (avg, diverged) {
                (Some(m), 0) => pct(Some(m)),
                (Some(m), d) => format!("{} ({d} of {} diverged)", pct(Some(m)), runs.len()),
                (None, _) => "none (all diverged)".into(),
            }
        };
        let _ = writeln!(
            s,
            "- At learning rates >= 1, mean test accuracy of the runs that did not diverge: ReLU {} \
             with BN and {} without; sigmoid {} with BN and {} without. (A TensorFlow reproduction \
             reported ReLU without BN collapsing to about 10% at lr >= 1 while BN held about 98%.)",
            mean(Activation::Relu, true),
            mean(Activation::Relu, false),
            mean(Activation::Sigmoid, true),
            mean(Activation::Sigmoid, false)
        );
    }
    let _ = writeln!(
        s,
        "{}",
        time_finding(o.wall_seconds, o.runs.len(), "runs", c.threads)
    );
    let _ = writeln!(
        s,
        "\nPer run: `results.csv`; loss curves: `curves.csv`; summary: `summary.json`; figure: \
         `lr_sweep.png`, `lr_sweep.svg`."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    pub(super) fn run(activation: Activation, batch_norm: bool, lr: f64, acc: f64) -> Run {
        Run {
            activation,
            batch_norm,
            lr,
            initial_loss: 2.3,
            max_loss: 2.3,
            final_loss: 0.3,
            diverged_at: None,
            spiked_at: None,
            non_finite: false,
            nan_outputs: false,
            steps_done: 100,
            test_accuracy: acc,
            curve: Vec::new(),
            train_seconds: 1.0,
        }
    }

    #[test]
    fn report_names_divergence_instead_of_an_accuracy() {
        let mut runs = Vec::new();
        for &(a, bn) in &COMBOS {
            runs.push(run(a, bn, 0.1, 0.9));
            runs.push(run(a, bn, 5.0, 0.8));
        }
        // ReLU without BN at lr 5: NaN outputs, accuracy 0 (no row predicted).
        runs[7].nan_outputs = true;
        runs[7].test_accuracy = 0.0;
        // Sigmoid with BN at lr 5: a spike that recovered.
        runs[1].spiked_at = Some(40);
        let o = Outcome {
            config: Config {
                lrs: vec![0.1, 5.0],
                ..Config::default()
            },
            runs,
            wall_seconds: 1.0,
        };
        let md = report_md(&o);
        assert!(!md.contains("lr none"), "{md}");
        assert!(md.contains("did not diverge at any learning rate"), "{md}");
        assert!(md.contains("| diverged (NaN outputs) |"), "{md}");
        assert!(!md.contains(" 0.00%"), "{md}");
        assert!(
            md.contains("ReLU 80.00% with BN and none (all diverged) without"),
            "{md}"
        );
        assert!(
            md.contains("80.00% (loss > 10x at step 40, recovered)"),
            "{md}"
        );
        assert!(
            md.contains("ReLU, without BN: best 90.00% at lr 0.1, worst 90.00% at lr 0.1; diverged at lr 5."),
            "{md}"
        );
    }
}

#[cfg(test)]
mod figure_tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn learning_rates_on_a_log_axis_and_diverged_runs_crossed() {
        let mut runs = Vec::new();
        for &(a, bn) in &COMBOS {
            for lr in [0.01, 0.5, 5.0] {
                let mut r = super::tests::run(a, bn, lr, 0.9);
                if !bn && lr == 5.0 {
                    r.diverged_at = Some(12);
                    r.non_finite = true;
                }
                runs.push(r);
            }
        }
        let o = Outcome {
            config: Config {
                lrs: vec![0.01, 0.5, 5.0],
                ..Config::default()
            },
            runs,
            wall_seconds: 1.0,
        };
        let f = figure(&o);
        for p in &f.panels {
            assert_eq!(p.x_log_ticks, [0.01, 0.5, 5.0], "{}", p.title);
        }
        let relu = &f.panels[1];
        let without = &relu.series[1];
        assert_eq!(without.marker, Marker::Dot);
        assert_eq!(
            without.points[1],
            (0.5, 0.9),
            "real learning rates, not log10"
        );
        assert!(
            without.points[2].1.is_nan(),
            "no accuracy for a diverged run"
        );
        let crossed = relu.series.last().unwrap();
        assert_eq!(
            (crossed.marker, crossed.style),
            (Marker::Cross, LineStyle::NoLine)
        );
        assert_eq!(crossed.points, [(5.0, 0.0)]);
        assert_eq!(crossed.color_of, Some(1), "the colour of \"without BN\"");
        assert_eq!(relu.y_range, Some((0.0, 1.0)));
    }
}
