//! The experiment's files: `metrics.csv`, `summary.json`, `cnn.png`, `cnn.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Arch, NetRun, Outcome};
use crate::experiments::output::{
    best_cell, loss_cell, num, pct, series, step_or_never, write_outputs, Outputs,
};
use crate::experiments::resnet;
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Marker, Panel, Series};

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
    for r in o.runs() {
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
    let mut v = conv_net_summary_json(o);
    if o.config.arch == Arch::Resnet {
        v["bn_unfused"] = o.unfused.as_ref().map(net_json).into();
        v["fused_matches_unfused"] = o.fused_matches_unfused().into();
        v["config"]["arch"] = o.config.arch.name().into();
        v["config"]["init"] = resnet::INIT.into();
        v["config"]["batch_norm"] = "BatchNorm2d after each convolution (fused with the ReLU and the residual addition in `bn`, separate passes in `bn_unfused`), statistics per channel over N x H x W; eps 1e-5, momentum 0.1".into();
    }
    v
}

/// The summary as the conv net writes it.
fn conv_net_summary_json(o: &Outcome) -> Value {
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
            "architecture": c.arch.description(),
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
    let all = |f: fn(&super::EvalRecord) -> f64| {
        o.runs()
            .map(|r| {
                // The unfused run's points (the fused run's, bit for bit) as crosses.
                let (style, marker) = match (r.batch_norm, r.separate) {
                    (true, false) => (LineStyle::Solid, Marker::None),
                    (true, true) => (LineStyle::NoLine, Marker::Cross),
                    (false, _) => (LineStyle::Dashed, Marker::None),
                };
                Series {
                    marker,
                    ..series(r.label(), pts(r, f), style)
                }
            })
            .collect()
    };
    let net = match o.config.arch {
        Arch::Convnet => "small conv net",
        Arch::Resnet => "small residual net",
    };
    Figure {
        title: format!("MNIST, {net}: with and without BatchNorm2d"),
        columns: 2,
        panels: vec![
            Panel {
                title: "(a) Test accuracy".into(),
                x_label: "training steps".into(),
                y_label: "test accuracy".into(),
                y_log: false,
                series: all(|e| e.test_accuracy),
                ..Default::default()
            },
            Panel {
                title: "(b) Training loss (mean since the previous point)".into(),
                x_label: "training steps".into(),
                y_label: "cross-entropy".into(),
                y_log: true,
                series: all(|e| e.train_loss),
                ..Default::default()
            },
        ],
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let (bn, plain) = (&o.bn, &o.plain);
    let runs: Vec<&NetRun> = o.runs().collect();
    let fin = |r: &NetRun| r.last().map(|e| e.test_accuracy);
    // A table row: the label, then one cell per run.
    let row = |label: &str, cell: &dyn Fn(&NetRun) -> String| {
        let cells: Vec<String> = runs.iter().map(|r| cell(r)).collect();
        format!("| {label} | {} |", cells.join(" | "))
    };
    let mut s = String::new();
    let (title, init, count) = match c.arch {
        Arch::Convnet => (
            "A conv net",
            "Conv weights from N(0, 2/fan_in), linear from N(0, 1/784), biases 0, \
             the same with and without BN",
            "two",
        ),
        Arch::Resnet => (
            "A residual net",
            "Conv weights from N(0, 2/fan_out), linear from \
             N(0, 1/32), biases 0, BN weights 1, the same with and without BN; `with BN` runs \
             each BN fused with its ReLU (and residual addition), `with BN, unfused` the same BN \
             followed by separate passes",
            "three",
        ),
    };
    let _ = writeln!(s, "# {title} with BatchNorm2d\n");
    let _ = writeln!(s, "![Test accuracy and training loss](cnn.png)\n");
    let shortened = c.max_steps_per_epoch.map_or(String::new(), |m| {
        format!(" (shortened to {m} steps per epoch)")
    });
    let _ = writeln!(
        s,
        "MNIST, {}. {init}. Plain SGD, learning rate {}, batches of {}, {} epoch(s){shortened}, \
         seed {}; test accuracy on the 10,000 test images every {} steps (BN with running statistics). \
         The {count} networks train at once on {} thread(s); epoch times exclude evaluation.\n",
        c.arch.description(), c.lr, c.batch_size, c.epochs, c.seed, c.eval_every, c.threads
    );
    let labels: Vec<&str> = runs.iter().map(|r| r.label()).collect();
    let _ = writeln!(s, "| | {} |", labels.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(runs.len()));
    let _ = writeln!(s, "{}", row("final test accuracy", &|r| pct(fin(r))));
    let _ = writeln!(s, "{}", row("best test accuracy", &|r| best_cell(r.best())));
    let to = |r: &NetRun| {
        let (a, b) = (r.steps_to(0.95), r.steps_to(0.98));
        format!("{} / {}", step_or_never(a), step_or_never(b))
    };
    let _ = writeln!(s, "{}", row("steps to 95% / 98%", &to));
    let loss = |r: &NetRun| loss_cell(r.last().map(|e| e.train_loss));
    let label = format!("training loss, last {} steps", c.eval_every);
    let _ = writeln!(s, "{}", row(&label, &loss));
    let label = format!("training time per epoch ({} steps)", bn.full_epoch_steps);
    let time = |r: &NetRun| format!("{:.2} s", r.seconds_per_epoch());
    let _ = writeln!(s, "{}\n", row(&label, &time));
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
    if let (Some(u), Some(same)) = (&o.unfused, o.fused_matches_unfused()) {
        let verdict = if same {
            "the same losses and accuracies at every evaluation, bit for bit"
        } else {
            "different results (they should agree bit for bit: a defect)"
        };
        let _ = writeln!(
            s,
            "- Fused against unfused BN: {verdict}; {:.2} s per epoch fused, {:.2} s unfused \
             ({:.2}x).",
            bn.seconds_per_epoch(),
            u.seconds_per_epoch(),
            u.seconds_per_epoch() / bn.seconds_per_epoch()
        );
    }
    let _ = writeln!(
        s,
        "\nPer evaluation: `metrics.csv`; summary: `summary.json`; figure: `cnn.png`, `cnn.svg`."
    );
    s
}
