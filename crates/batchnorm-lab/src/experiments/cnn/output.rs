//! The experiment's files: `metrics.csv`, `summary.json`, `cnn.png`, `cnn.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{NetRun, Outcome};
use crate::experiments::convnet::DESCRIPTION;
use crate::experiments::output::{
    best_cell, loss_cell, num, pct, series, step_or_never, write_outputs, Outputs,
};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Panel};

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[("metrics.csv", metrics_csv(o))],
        summary: summary_json(o),
        figures: &[("cnn", figure(o))],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn metrics_csv(o: &Outcome) -> String {
    let mut s = String::from("net,step,train_loss,train_accuracy,test_accuracy\n");
    for r in [&o.bn, &o.plain] {
        for e in &r.evals {
            let _ = writeln!(
                s,
                "{},{},{},{},{}",
                r.key(),
                e.step,
                num(e.train_loss),
                num(e.train_accuracy),
                num(e.test_accuracy)
            );
        }
    }
    s
}

fn net_json(r: &NetRun) -> Value {
    let last = r.last();
    let best = r.best();
    json!({
        "final_test_accuracy": last.map(|e| e.test_accuracy),
        "best_test_accuracy": best.map(|b| b.0),
        "best_step": best.map(|b| b.1),
        "steps_to_95": r.steps_to(0.95),
        "steps_to_98": r.steps_to(0.98),
        "final_train_loss": last.and_then(|e| e.train_loss.is_finite().then_some(e.train_loss)),
        "seconds_per_epoch": r.seconds_per_epoch(),
        "epoch_seconds": r.epoch_seconds,
        "steps_per_epoch": r.steps_per_epoch,
        "eval_seconds": r.eval_seconds,
    })
}

pub(super) fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    json!({
        "bn": net_json(&o.bn),
        "plain": net_json(&o.plain),
        "wall_seconds": o.wall_seconds,
        "config": {
            "epochs": c.epochs,
            "lr": c.lr,
            "batch_size": c.batch_size,
            "eval_every": c.eval_every,
            "max_steps_per_epoch": c.max_steps_per_epoch,
            "seed": c.seed,
            "threads": c.threads,
            "architecture": DESCRIPTION,
            "init": "conv weights N(0, 2/fan_in), linear N(0, 1/784), biases 0; the same with and without BN",
            "optimizer": "plain SGD (no momentum, no weight decay)",
            "batch_norm": "BatchNorm2d after each convolution, statistics per channel over N x H x W; eps 1e-5, momentum 0.1",
        },
    })
}

fn figure(o: &Outcome) -> Figure {
    let pts = |r: &NetRun, f: fn(&super::EvalRecord) -> f64| -> Vec<(f64, f64)> {
        r.evals.iter().map(|e| (e.step as f64, f(e))).collect()
    };
    Figure {
        title: "MNIST, small conv net: with and without BatchNorm2d".into(),
        columns: 2,
        panels: vec![
            Panel {
                title: "(a) Test accuracy".into(),
                x_label: "training steps".into(),
                y_label: "test accuracy".into(),
                y_log: false,
                series: vec![
                    series("with BN", pts(&o.bn, |e| e.test_accuracy), LineStyle::Solid),
                    series(
                        "without BN",
                        pts(&o.plain, |e| e.test_accuracy),
                        LineStyle::Dashed,
                    ),
                ],
                ..Default::default()
            },
            Panel {
                title: "(b) Training loss (mean since the previous point)".into(),
                x_label: "training steps".into(),
                y_label: "cross-entropy".into(),
                y_log: true,
                series: vec![
                    series("with BN", pts(&o.bn, |e| e.train_loss), LineStyle::Solid),
                    series(
                        "without BN",
                        pts(&o.plain, |e| e.train_loss),
                        LineStyle::Dashed,
                    ),
                ],
                ..Default::default()
            },
        ],
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let (bn, plain) = (&o.bn, &o.plain);
    let fin = |r: &NetRun| r.last().map(|e| e.test_accuracy);
    let mut s = String::new();
    let _ = writeln!(s, "# A conv net with BatchNorm2d\n");
    let _ = writeln!(s, "![Test accuracy and training loss](cnn.png)\n");
    let shortened = c.max_steps_per_epoch.map_or(String::new(), |m| {
        format!(" (shortened to {m} steps per epoch)")
    });
    let _ = writeln!(
        s,
        "MNIST, {DESCRIPTION}. Conv weights from N(0, 2/fan_in), linear from N(0, 1/784), biases 0, \
         the same with and without BN. Plain SGD, learning rate {}, batches of {}, {} epoch(s){shortened}, \
         seed {}; test accuracy on the 10,000 test images every {} steps (BN with running statistics). \
         The two networks train at once on {} thread(s); epoch times exclude evaluation.\n",
        c.lr, c.batch_size, c.epochs, c.seed, c.eval_every, c.threads
    );
    let _ = writeln!(s, "| | with BN | without BN |\n|---|---:|---:|");
    let _ = writeln!(
        s,
        "| final test accuracy | {} | {} |",
        pct(fin(bn)),
        pct(fin(plain))
    );
    let _ = writeln!(
        s,
        "| best test accuracy | {} | {} |",
        best_cell(bn.best()),
        best_cell(plain.best())
    );
    let _ = writeln!(
        s,
        "| steps to 95% / 98% | {} / {} | {} / {} |",
        step_or_never(bn.steps_to(0.95)),
        step_or_never(bn.steps_to(0.98)),
        step_or_never(plain.steps_to(0.95)),
        step_or_never(plain.steps_to(0.98))
    );
    let loss = |r: &NetRun| loss_cell(r.last().map(|e| e.train_loss));
    let _ = writeln!(
        s,
        "| training loss, last {} steps | {} | {} |",
        c.eval_every,
        loss(bn),
        loss(plain)
    );
    let _ = writeln!(
        s,
        "| training time per epoch ({} steps) | {:.2} s | {:.2} s |\n",
        bn.full_epoch_steps,
        bn.seconds_per_epoch(),
        plain.seconds_per_epoch()
    );
    let _ = writeln!(s, "## Findings\n");
    if let (Some(fb), Some(fp)) = (fin(bn), fin(plain)) {
        let _ = writeln!(
            s,
            "- After {} epoch(s): {} with BN, {} without ({:+.2} percentage points).",
            c.epochs,
            pct(Some(fb)),
            pct(Some(fp)),
            100.0 * (fb - fp)
        );
    }
    let early = |r: &NetRun| r.evals.get(1).map(|e| (e.step, e.test_accuracy));
    if let (Some((sb, ab)), Some((_, ap))) = (early(bn), early(plain)) {
        let _ = writeln!(
            s,
            "- Early training: at step {sb}, {} with BN against {} without.",
            pct(Some(ab)),
            pct(Some(ap))
        );
    }
    let _ = writeln!(
        s,
        "- Time: {:.2} s per epoch with BN and {:.2} s without (BN costs {:+.0}%); {:.1} s wall clock \
         for the whole run, evaluation {:.1} s and {:.1} s.",
        bn.seconds_per_epoch(),
        plain.seconds_per_epoch(),
        100.0 * (bn.seconds_per_epoch() / plain.seconds_per_epoch() - 1.0),
        o.wall_seconds,
        bn.eval_seconds,
        plain.eval_seconds
    );
    let _ = writeln!(
        s,
        "\nPer evaluation: `metrics.csv`; summary: `summary.json`; figure: `cnn.png`, `cnn.svg`."
    );
    s
}
