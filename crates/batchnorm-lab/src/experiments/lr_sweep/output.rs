//! The sweep's files: `results.csv`, `curves.csv`, `summary.json`, `lr_sweep.png`,
//! `lr_sweep.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Outcome, Run, DIVERGENCE_FACTOR};
use crate::experiments::mlp::Activation;
use crate::experiments::output::{finite, num, pct, series, time_finding, write_outputs, Outputs};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Panel};

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
        "activation,net,lr,test_accuracy,diverged,diverged_at,non_finite,initial_loss,max_loss,final_loss,steps_done,train_seconds\n",
    );
    for r in &o.runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            r.activation.key(),
            r.net_key(),
            r.lr,
            num(r.test_accuracy),
            r.diverged(),
            r.diverged_at.map_or(String::new(), |s| s.to_string()),
            r.non_finite,
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
                "at_chance": r.test_accuracy < AT_CHANCE,
                "non_finite": r.non_finite,
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
            "divergence": format!("a non-finite batch loss (training stops) or a batch loss above {DIVERGENCE_FACTOR}x the first batch's"),
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
    let acc_panel = |activation: Activation, title: &str| Panel {
        title: title.into(),
        x_label: "learning rate (log10)".into(),
        y_label: "test accuracy".into(),
        y_log: false,
        series: [true, false]
            .into_iter()
            .map(|bn| {
                series(
                    if bn { "with BN" } else { "without BN" },
                    o.series(activation, bn)
                        .iter()
                        .map(|r| (r.lr.log10(), r.test_accuracy))
                        .collect(),
                    style(bn),
                )
            })
            .collect(),
    };
    let loss_panel = Panel {
        title: "(c) Final training loss (NaN: not drawn)".into(),
        x_label: "learning rate (log10)".into(),
        y_label: "mean batch loss, last window".into(),
        y_log: true,
        series: COMBOS
            .iter()
            .map(|&(a, bn)| {
                series(
                    &label(a, bn),
                    o.series(a, bn)
                        .iter()
                        .map(|r| (r.lr.log10(), r.final_loss))
                        .collect(),
                    style(bn),
                )
            })
            .collect(),
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

fn cell(r: &Run) -> String {
    let mark = match (r.diverged_at, r.non_finite) {
        (Some(s), true) => format!(" (NaN at step {s})"),
        (Some(s), false) => format!(" (loss > {DIVERGENCE_FACTOR}x at step {s})"),
        (None, _) => String::new(),
    };
    format!("{}{mark}", pct(Some(r.test_accuracy)))
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
         NaN and count as wrong) or a batch loss above {}x the first batch's.\n",
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
        let best = runs
            .iter()
            .max_by(|x, y| x.test_accuracy.total_cmp(&y.test_accuracy));
        let worst = runs
            .iter()
            .min_by(|x, y| x.test_accuracy.total_cmp(&y.test_accuracy));
        let _ = writeln!(
            s,
            "- {}: best {} at lr {}, worst {} at lr {}; diverged at lr {}.",
            label(a, bn),
            best.map_or("n/a".into(), |r| pct(Some(r.test_accuracy))),
            best.map_or(f64::NAN, |r| r.lr),
            worst.map_or("n/a".into(), |r| pct(Some(r.test_accuracy))),
            worst.map_or(f64::NAN, |r| r.lr),
            if div.is_empty() {
                "none".into()
            } else {
                div.join(", ")
            }
        );
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
        let mean = |a: Activation, bn: bool| {
            let v: Vec<f64> = high
                .iter()
                .filter(|r| r.activation == a && r.batch_norm == bn)
                .map(|r| r.test_accuracy)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let _ = writeln!(
            s,
            "- At learning rates >= 1, mean test accuracy: ReLU {} with BN and {} without; sigmoid {} \
             with BN and {} without. (A TensorFlow reproduction reported ReLU without BN collapsing to \
             about 10% at lr >= 1 while BN held about 98%.)",
            pct(Some(mean(Activation::Relu, true))),
            pct(Some(mean(Activation::Relu, false))),
            pct(Some(mean(Activation::Sigmoid, true))),
            pct(Some(mean(Activation::Sigmoid, false)))
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
