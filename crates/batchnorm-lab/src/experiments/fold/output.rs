//! The experiment's files: `timing.csv`, `summary.json`, `fold.png`, `fold.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{NetResult, Outcome};
use crate::experiments::output::{pct, series, write_outputs, Outputs};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Marker, Panel, Series};

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[("timing.csv", timing_csv(o))],
        summary: summary_json(o),
        figures: &[("fold", figure(o))],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn timing_csv(o: &Outcome) -> String {
    let mut s = String::from("net,batch,images,unfolded_ms,folded_ms,speedup\n");
    for r in &o.nets {
        for t in &r.timings {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{}",
                r.net.key(),
                t.batch,
                o.config.images,
                t.unfolded_ms,
                t.folded_ms,
                t.speedup()
            );
        }
    }
    s
}

fn net_json(r: &NetResult) -> Value {
    let a = &r.agreement;
    json!({
        "steps_trained": r.steps,
        "layers_unfolded": r.layers.0,
        "layers_folded": r.layers.1,
        "max_abs_diff": a.max_abs_diff,
        "max_abs_logit": a.max_abs_logit,
        "unfolded_error_vs_f64": a.unfolded_err,
        "folded_error_vs_f64": a.folded_err,
        "within_tolerance": a.within_tolerance(),
        "prediction_mismatches": a.prediction_mismatches,
        "test_accuracy_unfolded": a.accuracy.0,
        "test_accuracy_folded": a.accuracy.1,
        "timings": r.timings.iter().map(|t| json!({
            "batch": t.batch,
            "unfolded_ms": t.unfolded_ms,
            "folded_ms": t.folded_ms,
            "speedup": t.speedup(),
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    let mut nets = serde_json::Map::new();
    for r in &o.nets {
        nets.insert(r.net.key().into(), net_json(r));
    }
    json!({
        "nets": nets,
        "wall_seconds": o.wall_seconds,
        "config": {
            "mlp_steps": c.mlp_steps,
            "cnn_steps": c.cnn_steps,
            "batch_sizes": c.batch_sizes,
            "repeats": c.repeats,
            "images": c.images,
            "seed": c.seed,
            "threads": c.threads,
            "tolerance": "folded error against the f64 oracle <= 10 x the unfolded f32 network's + 4 f32 ulps of the largest logit",
            "timing": "median of the repeats, one thread, unfolded and folded passes alternating, evaluation mode",
        },
    })
}

fn figure(o: &Outcome) -> Figure {
    let images = o.config.images as f64;
    let panels = o
        .nets
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let pts = |folded: bool| -> Vec<(f64, f64)> {
                r.timings
                    .iter()
                    .map(|t| {
                        let ms = if folded { t.folded_ms } else { t.unfolded_ms };
                        (t.batch as f64, 1e3 * ms / images)
                    })
                    .collect()
            };
            Panel {
                title: format!(
                    "({}) {}",
                    char::from(b'a' + i as u8),
                    match r.net {
                        super::Net::Mlp => "MLP, BN after Linear",
                        super::Net::Cnn => "Conv net, BN2d after Conv2d",
                    }
                ),
                x_label: "batch size (log scale)".into(),
                y_label: "µs per image (evaluation)".into(),
                y_log: true,
                series: vec![
                    series("with BN layers", pts(false), LineStyle::Dashed),
                    series("BN folded", pts(true), LineStyle::Solid),
                ]
                .into_iter()
                .map(|s| Series {
                    marker: Marker::Dot,
                    ..s
                })
                .collect(),
                x_log_ticks: r.timings.iter().map(|t| t.batch as f64).collect(),
                ..Default::default()
            }
        })
        .collect();
    Figure {
        title: "Inference time with BN layers and with BN folded into the preceding layer".into(),
        columns: 2,
        panels,
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = String::new();
    let _ = writeln!(s, "# Folding BN into the preceding layer for inference\n");
    let _ = writeln!(s, "![Inference time per image, folded and not](fold.png)\n");
    let _ = writeln!(
        s,
        "An evaluation-mode BN is a fixed per-channel affine map, so it folds into the Linear or Conv2d \
         before it: `W' = W gamma / sqrt(var + eps)`, `b' = (b - mean) gamma / sqrt(var + eps) + beta` \
         (`batchnorm_nn::fold::fold_batch_norm`). Fig1's sigmoid MLP with BN ({} SGD steps, lr 0.5) and \
         the conv net of `bnlab cnn` ({} steps, lr 0.05) are trained, folded, and compared on the 10,000 \
         test images; the f64 oracle is the unfolded network evaluated in f64 from the same parameters. \
         Inference time: milliseconds per pass over the first {} test images in evaluation mode, one \
         thread, median of {} passes, unfolded and folded alternating (measured in the same run). Seed \
         {}.\n",
        c.mlp_steps, c.cnn_steps, c.images, c.repeats, c.seed
    );
    let _ = writeln!(
        s,
        "| network | layers | max abs(folded - unfolded) | largest logit | error vs f64: unfolded / folded | within tolerance | predictions that differ | accuracy unfolded / folded |\n|---|---:|---:|---:|---:|---|---:|---:|"
    );
    for r in &o.nets {
        let a = &r.agreement;
        let _ = writeln!(
            s,
            "| {} | {} -> {} | {:.2e} | {:.2} | {:.2e} / {:.2e} | {} | {} of 10,000 | {} / {} |",
            r.net.key(),
            r.layers.0,
            r.layers.1,
            a.max_abs_diff,
            a.max_abs_logit,
            a.unfolded_err,
            a.folded_err,
            if a.within_tolerance() { "yes" } else { "no" },
            a.prediction_mismatches,
            pct(Some(a.accuracy.0)),
            pct(Some(a.accuracy.1))
        );
    }
    let _ = writeln!(
        s,
        "\n| network | batch | unfolded ms | folded ms | speed-up |\n|---|---:|---:|---:|---:|"
    );
    for r in &o.nets {
        for t in &r.timings {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {:.2}x |",
                r.net.key(),
                t.batch,
                t.unfolded_ms,
                t.folded_ms,
                t.speedup()
            );
        }
    }
    let _ = writeln!(s, "\n## Findings\n");
    for r in &o.nets {
        let a = &r.agreement;
        let (lo, hi) = r
            .timings
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
                (lo.min(t.speedup()), hi.max(t.speedup()))
            });
        let _ = writeln!(
            s,
            "- {}: the folded network's logits differ from the unfolded ones by at most {:.2e} (largest \
             logit {:.2}); against the f64 oracle the folded network errs by {:.2e} and the unfolded by \
             {:.2e}, so folding is exact up to f32 rounding ({}); {} of 10,000 predictions differ. \
             Inference is {:.2}x to {:.2}x as fast folded.",
            r.net.label(),
            a.max_abs_diff,
            a.max_abs_logit,
            a.folded_err,
            a.unfolded_err,
            if a.within_tolerance() {
                "within the stated tolerance"
            } else {
                "OUTSIDE the stated tolerance"
            },
            a.prediction_mismatches,
            lo,
            hi
        );
    }
    let _ = writeln!(
        s,
        "- Tolerance: the folded error against the f64 oracle may be at most 10 times the unfolded \
         f32 network's own plus 4 f32 ulps of the largest logit (folding reorders the roundings, it does \
         not change the function).\n- Time: {:.1} s wall clock.",
        o.wall_seconds
    );
    let _ = writeln!(
        s,
        "\nTimes: `timing.csv`; summary: `summary.json`; figure: `fold.png`, `fold.svg`."
    );
    s
}
