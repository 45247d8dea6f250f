//! The experiment's files: `metrics.csv`, `summary.json`, `sync_bn.png`, `sync_bn.svg`,
//! `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Outcome, VariantRun};
use crate::experiments::output::{
    best_cell, finite, num, pct, series, step_or_never, write_outputs, Outputs,
};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Panel};

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[("metrics.csv", metrics_csv(o))],
        summary: summary_json(o),
        figures: &[("sync_bn", figure(o))],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn metrics_csv(o: &Outcome) -> String {
    let mut s = String::from("variant,step,test_accuracy,train_loss\n");
    for r in o.runs() {
        for &(step, acc, loss) in &r.evals {
            let _ = writeln!(s, "{},{step},{},{}", r.variant.key(), num(acc), num(loss));
        }
    }
    s
}

fn run_json(r: &VariantRun) -> Value {
    json!({
        "final_test_accuracy": r.final_accuracy().and_then(finite),
        "best_test_accuracy": r.best().map(|b| b.0),
        "steps_to_90": r.steps_to_90(),
        "steps_per_second": finite(r.steps_per_second()),
        "bytes_per_step": r.bytes_per_step,
    })
}

pub(super) fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    json!({
        "backend": o.backend.key(),
        "ranks": o.ranks,
        "per_rank_batch": c.per_rank_batch,
        "steps": c.steps,
        "sync": run_json(&o.sync),
        "local": o.local.as_ref().map_or_else(
            || json!({"skipped": "per-rank BN needs at least 2 images per rank"}),
            run_json,
        ),
        "single": run_json(&o.single),
        "max_rel_param_diff_at_100": o.max_rel_param_diff_at_100,
        "bytes_per_step": o.sync.bytes_per_step,
        "wall_seconds": o.wall_seconds,
        "config": {
            "global_batch": o.ranks * c.per_rank_batch,
            "lr": c.lr,
            "init_std": c.init_std,
            "eval_every": c.eval_every,
            "seed": c.seed,
            "architecture": "784-100-100-100-10, sigmoid, BatchNorm1d before each sigmoid (fig1's BN network)",
            "optimizer": "plain SGD on the mean loss over the global batch; gradients all-reduced in one flat buffer",
            "max_rel_param_diff_at_100": "over every weight, BN gamma and beta and the output bias; the biases of linear layers followed by BN are left out (BN subtracts them: their gradient is 0 up to rounding)",
            "bytes_per_step": "bytes the collectives deliver to each rank per training step (sync: BN statistics and gradients; local: gradients)",
        },
    })
}

fn label(r: &VariantRun) -> &'static str {
    match r.variant {
        super::Variant::Sync => "sync: synchronised BN",
        super::Variant::Local => "local: per-rank BN",
        super::Variant::Single => "single: one process, global batch",
    }
}

fn figure(o: &Outcome) -> Figure {
    // `single` dashed over `sync`, which it follows.
    let curves = |f: fn(&(usize, f64, f64)) -> f64| {
        o.runs()
            .into_iter()
            .map(|r| {
                // `single` dashed over `sync`, which it follows.
                let style = match r.variant {
                    super::Variant::Single => LineStyle::Dashed,
                    _ => LineStyle::Solid,
                };
                let pts = r.evals.iter().map(|e| (e.0 as f64, f(e)));
                series(label(r), pts.filter(|p| p.1.is_finite()).collect(), style)
            })
            .collect()
    };
    Figure {
        title: format!(
            "Data-parallel training on {} ranks x {} images: synchronised vs per-rank BN",
            o.ranks, o.config.per_rank_batch
        ),
        columns: 2,
        panels: vec![
            Panel {
                title: "(a) Test accuracy (running statistics)".into(),
                x_label: "training steps".into(),
                y_label: "test accuracy".into(),
                series: curves(|e| e.1),
                ..Default::default()
            },
            Panel {
                title: "(b) Training loss over the global batch".into(),
                x_label: "training steps".into(),
                y_label: "cross-entropy".into(),
                y_log: true,
                series: curves(|e| e.2),
                ..Default::default()
            },
        ],
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let global = o.ranks * c.per_rank_batch;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# SyncBatchNorm: data-parallel training with synchronised BN\n"
    );
    let _ = writeln!(s, "![Test accuracy and training loss](sync_bn.png)\n");
    let _ = writeln!(
        s,
        "fig1's BN network (784-100-100-100-10, sigmoid) on MNIST, {} ranks ({}) of {} images: a \
         global batch of {global}. Plain SGD on the global batch's mean loss, learning rate {}, {} \
         steps, initial weights N(0, {}^2), seed {}; the three runs start from the same weights and \
         see the same global batches. Test accuracy on the 10,000 test images every {} steps, with \
         the running statistics (rank 0's for per-rank BN).\n",
        o.ranks,
        o.backend.key(),
        c.per_rank_batch,
        c.lr,
        c.steps,
        c.init_std,
        c.seed,
        c.eval_every
    );
    let _ = writeln!(s, "| | sync | local | single |\n|---|---:|---:|---:|");
    let row = |name: &str, f: &dyn Fn(&VariantRun) -> String| {
        let local = o.local.as_ref().map_or("not run".into(), f);
        format!("| {name} | {} | {local} | {} |", f(&o.sync), f(&o.single))
    };
    let lines = [
        row("final test accuracy", &|r| pct(r.final_accuracy())),
        row("best test accuracy", &|r| best_cell(r.best())),
        row("steps to 90%", &|r| step_or_never(r.steps_to_90())),
        row("steps per second", &|r| {
            format!("{:.0}", r.steps_per_second())
        }),
        row("bytes per step and rank", &|r| {
            format!("{:.0}", r.bytes_per_step)
        }),
    ];
    for l in lines {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "\n## Findings\n");
    match o.max_rel_param_diff_at_100 {
        Some(d) if d <= 1e-3 => {
            let _ = writeln!(
                s,
                "- `sync` computes what `single` does: after 100 steps the largest parameter \
                 difference is {d:.1e} of its tensor's largest value (f32 roundings in other \
                 orders)."
            );
        }
        Some(d) => {
            let _ = writeln!(
                s,
                "- After 100 steps `sync` and `single` differ by {d:.1e} of a tensor's largest \
                 value. Each step agrees to rounding (the tests check it), but training on \
                 {global} images amplifies rounding: changing `single`'s learning rate by 1e-7 \
                 moves it as far (docs/distributed.md)."
            );
        }
        None => {}
    }
    let local = o.local.as_ref().and_then(VariantRun::final_accuracy);
    if let (Some(a), Some(b)) = (o.sync.final_accuracy(), local) {
        let _ = writeln!(
            s,
            "- Per-rank BN normalises each rank's {} images by their own statistics: {} against \
             {} with synchronised BN ({:+.2} percentage points).",
            c.per_rank_batch,
            pct(Some(b)),
            pct(Some(a)),
            100.0 * (b - a)
        );
    }
    if o.local.is_none() {
        let _ = writeln!(
            s,
            "- Per-rank BN cannot train on one image per rank (a single value per channel has no \
             variance); synchronised BN can: its statistics run over the {global} images."
        );
    }
    let grads = o.local.as_ref().map_or(String::new(), |l| {
        format!(
            ", of which {:.0} for the gradients (per-rank BN's whole exchange)",
            l.bytes_per_step
        )
    });
    let _ = writeln!(
        s,
        "- Communication per step and rank: {:.0} bytes with synchronised BN{grads}; {:.1} s wall \
         clock.",
        o.sync.bytes_per_step, o.wall_seconds
    );
    let _ = writeln!(
        s,
        "\nPer evaluation: `metrics.csv`; summary: `summary.json`; figure: `sync_bn.png`, `sync_bn.svg`."
    );
    s
}
