//! The experiment's files: `gradients.csv`, `activations.csv`, `summary.json`, `depth.png`,
//! `depth.svg`, `depth_preact.png`, `depth_preact.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{NetRun, Outcome, Snapshot};
use crate::experiments::output::{finite, num, series, time_finding, write_outputs, Outputs};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Panel};

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[
            ("gradients.csv", gradients_csv(o)),
            ("activations.csv", activations_csv(o)),
        ],
        summary: summary_json(o),
        figures: &[
            ("depth", gradient_figure(o)),
            ("depth_preact", preact_figure(o)),
        ],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn stages(r: &NetRun) -> [(&'static str, &Snapshot); 2] {
    [("init", &r.init), ("trained", &r.trained)]
}

/// One row per network, moment and linear layer (layer 1 = next to the input).
fn gradients_csv(o: &Outcome) -> String {
    let mut s = String::from("depth,net,stage,step,layer,grad_norm\n");
    for r in &o.runs {
        for (stage, snap) in stages(r) {
            for (l, g) in snap.grad_norms.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{stage},{},{},{}",
                    r.depth,
                    r.key(),
                    snap.step,
                    l + 1,
                    num(*g)
                );
            }
        }
    }
    s
}

/// One row per network, moment and hidden layer.
fn activations_csv(o: &Outcome) -> String {
    let mut s = String::from("depth,net,stage,step,layer,z_mean,z_std,act_in_mean,act_in_std\n");
    for r in &o.runs {
        for (stage, snap) in stages(r) {
            for (l, (z, a)) in snap.z.iter().zip(&snap.act_in).enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{stage},{},{},{},{},{},{}",
                    r.depth,
                    r.key(),
                    snap.step,
                    l + 1,
                    num(z.0),
                    num(z.1),
                    num(a.0),
                    num(a.1)
                );
            }
        }
    }
    s
}

fn snapshot_json(s: &Snapshot) -> Value {
    json!({
        "step": s.step,
        "loss": finite(s.loss),
        "grad_norms": s.grad_norms.iter().map(|&g| finite(g)).collect::<Vec<_>>(),
        "grad_norm_max_over_min": finite(s.spread()),
        "factor_per_layer": finite(s.factor_per_layer()),
    })
}

pub(super) fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    let runs: Vec<Value> = o
        .runs
        .iter()
        .map(|r| {
            json!({
                "depth": r.depth,
                "net": r.key(),
                "init": snapshot_json(&r.init),
                "trained": snapshot_json(&r.trained),
                "test_accuracy": finite(r.test_accuracy),
                "final_train_loss": finite(r.final_train_loss),
                "train_seconds": r.train_seconds,
            })
        })
        .collect();
    json!({
        "runs": runs,
        "wall_seconds": o.wall_seconds,
        "config": {
            "depths": c.depths,
            "width": c.width,
            "steps": c.steps,
            "lr": c.lr,
            "batch_size": c.batch_size,
            "init_gain": c.init_gain,
            "probe": c.probe,
            "seed": c.seed,
            "threads": c.threads,
            "architecture": format!("784-({}x depth)-10, sigmoid hidden units, softmax cross-entropy", c.width),
            "init": "weights N(0, (gain/sqrt(fan_in))^2), biases 0; the same weights with and without BN",
            "batch_norm": "before each hidden sigmoid; eps 1e-5, momentum 0.1, learnable gamma/beta",
            "measurement": "fixed batch of training images, batch statistics, running statistics untouched",
        },
    })
}

fn grad_points(s: &Snapshot) -> Vec<(f64, f64)> {
    s.grad_norms
        .iter()
        .enumerate()
        .map(|(l, &g)| ((l + 1) as f64, g))
        .collect()
}

/// One panel per depth (gradient norm against layer, log scale), then the max/min spread
/// against depth.
fn gradient_figure(o: &Outcome) -> Figure {
    let steps = o.config.steps;
    let mut panels = Vec::new();
    for (i, &depth) in o.config.depths.iter().enumerate() {
        let mut series_list = Vec::new();
        for bn in [true, false] {
            let Some(r) = o.get(depth, bn) else { continue };
            let (name, style) = if bn {
                ("with BN", LineStyle::Solid)
            } else {
                ("without BN", LineStyle::Dashed)
            };
            series_list.push(series(
                &format!("{name}, init"),
                grad_points(&r.init),
                style,
            ));
            series_list.push(series(
                &format!("{name}, {steps} steps"),
                grad_points(&r.trained),
                style,
            ));
        }
        panels.push(Panel {
            title: format!("({}) {depth} hidden layers", letter(i)),
            x_label: "linear layer (1 = input side)".into(),
            y_label: "‖∂L/∂W‖".into(),
            y_log: true,
            series: series_list,
            ..Default::default()
        });
    }
    let spread = |bn: bool, trained: bool| -> Vec<(f64, f64)> {
        o.config
            .depths
            .iter()
            .filter_map(|&d| o.get(d, bn))
            .map(|r| {
                let s = if trained { &r.trained } else { &r.init };
                (r.depth as f64, s.spread())
            })
            .collect()
    };
    panels.push(Panel {
        title: format!(
            "({}) Largest / smallest layer gradient",
            letter(panels.len())
        ),
        x_label: "hidden layers".into(),
        y_label: "max ‖∂L/∂W‖ / min ‖∂L/∂W‖".into(),
        y_log: true,
        series: vec![
            series("with BN, init", spread(true, false), LineStyle::Solid),
            series(
                &format!("with BN, {steps} steps"),
                spread(true, true),
                LineStyle::Solid,
            ),
            series("without BN, init", spread(false, false), LineStyle::Dashed),
            series(
                &format!("without BN, {steps} steps"),
                spread(false, true),
                LineStyle::Dashed,
            ),
        ],
        ..Default::default()
    });
    Figure {
        title: format!(
            "Gradient norm of each layer's weights, sigmoid MLPs ({} units per layer), MNIST",
            o.config.width
        ),
        columns: 3,
        panels,
    }
}

fn letter(i: usize) -> char {
    char::from(b'a' + (i % 26) as u8)
}

/// The deepest pair: mean and std of each hidden layer's sigmoid input (and of `z` with BN).
fn preact_figure(o: &Outcome) -> Figure {
    let depth = o.config.depths.iter().copied().max().unwrap_or(0);
    let steps = o.config.steps;
    let stat = |s: &Snapshot, z: bool, std: bool| -> Vec<(f64, f64)> {
        let v = if z { &s.z } else { &s.act_in };
        v.iter()
            .enumerate()
            .map(|(l, &(m, sd))| ((l + 1) as f64, if std { sd } else { m }))
            .collect()
    };
    // One panel per network and statistic, at most four curves each, so that every legend
    // finds a spot clear of the data.
    let panel = |bn: bool, std: bool, title: &str| {
        let mut list = Vec::new();
        if let Some(r) = o.get(depth, bn) {
            if bn {
                list.push(series(
                    "BN(z), init",
                    stat(&r.init, false, std),
                    LineStyle::Solid,
                ));
                list.push(series(
                    &format!("BN(z), {steps} steps"),
                    stat(&r.trained, false, std),
                    LineStyle::Solid,
                ));
            }
            list.push(series(
                "z, init",
                stat(&r.init, true, std),
                LineStyle::Dashed,
            ));
            list.push(series(
                &format!("z, {steps} steps"),
                stat(&r.trained, true, std),
                LineStyle::Dashed,
            ));
        }
        Panel {
            title: title.into(),
            x_label: "hidden layer (1 = input side)".into(),
            y_label: if std { "standard deviation" } else { "mean" }.into(),
            y_log: std,
            series: list,
            ..Default::default()
        }
    };
    Figure {
        title: format!(
            "Pre-activations of the {depth}-hidden-layer networks over the measurement batch"
        ),
        columns: 2,
        panels: vec![
            panel(true, false, "(a) With BN: mean"),
            panel(false, false, "(b) Without BN: mean"),
            panel(true, true, "(c) With BN: standard deviation"),
            panel(false, true, "(d) Without BN: standard deviation"),
        ],
    }
}

fn sci(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2e}")
    } else {
        "n/a".into()
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = String::new();
    let _ = writeln!(s, "# Gradient flow across depth, with and without BN\n");
    let _ = writeln!(
        s,
        "![Gradient norm of each layer's weights, log scale](depth.png)\n\n\
         ![Pre-activation mean and std per layer, deepest networks](depth_preact.png)\n"
    );
    let _ = writeln!(
        s,
        "Sigmoid MLPs on MNIST with {} units per hidden layer and {:?} hidden layers, weights from \
         N(0, ({}/sqrt(fan_in))^2), biases 0, the same weights with and without BN (BN before each \
         hidden sigmoid). Plain SGD, learning rate {}, batches of {}, {} steps, seed {}. Gradients of \
         the mean cross-entropy and pre-activation statistics are measured on one fixed batch of {} \
         training images (batch statistics, running statistics untouched), at initialisation and \
         after training. `factor per layer` is 10^(-slope) of a least-squares line through \
         log10 ||dL/dW_l|| over the hidden layers l = 1..depth: the average ratio of a layer's \
         gradient norm to the next layer's.\n",
        c.width, c.depths, c.init_gain, c.lr, c.batch_size, c.steps, c.seed, c.probe
    );
    let _ = writeln!(
        s,
        "| hidden layers | BN | max/min grad norm, init | factor per layer, init | max/min, {0} steps | factor per layer, {0} steps | test accuracy |\n|---:|---|---:|---:|---:|---:|---:|",
        c.steps
    );
    for r in &o.runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {} | {:.3} | {:.2}% |",
            r.depth,
            if r.batch_norm { "yes" } else { "no" },
            sci(r.init.spread()),
            r.init.factor_per_layer(),
            sci(r.trained.spread()),
            r.trained.factor_per_layer(),
            100.0 * r.test_accuracy
        );
    }
    let _ = writeln!(s, "\n## Findings\n");
    let deepest = c.depths.iter().copied().max().unwrap_or(0);
    if let (Some(bn), Some(pl)) = (o.get(deepest, true), o.get(deepest, false)) {
        let first_last = |snap: &Snapshot| {
            (
                snap.grad_norms.first().copied().unwrap_or(f64::NAN),
                snap.grad_norms.last().copied().unwrap_or(f64::NAN),
            )
        };
        let (p0, pl_) = first_last(&pl.init);
        let (b0, bl) = first_last(&bn.init);
        let _ = writeln!(
            s,
            "- At {deepest} hidden layers, at initialisation: without BN the first layer's gradient \
             norm is {} against {} at the output layer (ratio {}; factor per layer {:.3}); with BN {} \
             against {} (max/min over all layers {}; factor per layer {:.3}).",
            sci(p0),
            sci(pl_),
            sci(pl_ / p0),
            pl.init.factor_per_layer(),
            sci(b0),
            sci(bl),
            sci(bn.init.spread()),
            bn.init.factor_per_layer()
        );
        let _ = writeln!(
            s,
            "- After {} steps: max/min {} without BN (factor {:.3}), {} with BN (factor {:.3}); test \
             accuracy {:.2}% without BN and {:.2}% with BN.",
            c.steps,
            sci(pl.trained.spread()),
            pl.trained.factor_per_layer(),
            sci(bn.trained.spread()),
            bn.trained.factor_per_layer(),
            100.0 * pl.test_accuracy,
            100.0 * bn.test_accuracy
        );
    }
    let within: Vec<String> = o
        .runs
        .iter()
        .filter(|r| r.batch_norm)
        .map(|r| {
            format!(
                "{} layers: {} / {}",
                r.depth,
                sci(r.init.spread()),
                sci(r.trained.spread())
            )
        })
        .collect();
    let within_all = o
        .runs
        .iter()
        .filter(|r| r.batch_norm)
        .all(|r| r.init.spread() <= 10.0 && r.trained.spread() <= 10.0);
    let _ = writeln!(
        s,
        "- With BN, max/min gradient norm at init / after training: {}. Within one order of magnitude \
         at every depth and both moments: {}.",
        within.join("; "),
        if within_all { "yes" } else { "no" }
    );
    let _ = writeln!(
        s,
        "- Without BN the per-layer factor at initialisation ranges over {} across depths; each \
         sigmoid's derivative is at most 0.25, and the weights (gain {}) multiply the backward \
         signal by about {} per layer in norm.",
        o.runs
            .iter()
            .filter(|r| !r.batch_norm)
            .map(|r| format!("{:.3} ({} layers)", r.init.factor_per_layer(), r.depth))
            .collect::<Vec<_>>()
            .join(", "),
        c.init_gain,
        c.init_gain
    );
    let _ = writeln!(
        s,
        "{}",
        time_finding(o.wall_seconds, o.runs.len(), "networks", c.threads)
    );
    let _ = writeln!(
        s,
        "\nPer layer: `gradients.csv`, `activations.csv`; summary: `summary.json`; figures: \
         `depth.png`, `depth_preact.png` (and `.svg`)."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::{Config, NetRun, Snapshot};
    use super::*;

    /// Statistics shaped like a real run: means wandering by about 0.1 around 0, standard
    /// deviations near 0.5 (z) and exactly 1 (BN(z)).
    fn snapshot(depth: usize, phase: f64) -> Snapshot {
        let z: Vec<(f64, f64)> = (0..depth)
            .map(|l| {
                let t = l as f64 + phase;
                (0.1 * (1.7 * t).sin(), 0.5 + 0.05 * t.cos())
            })
            .collect();
        Snapshot {
            step: 0,
            loss: 2.3,
            grad_norms: vec![1.0; depth + 1],
            act_in: z.iter().map(|&(m, _)| (0.002 * m, 1.0)).collect(),
            z,
        }
    }

    #[test]
    fn preactivation_legends_cover_no_data() {
        let runs = [true, false]
            .into_iter()
            .map(|bn| NetRun {
                depth: 20,
                batch_norm: bn,
                init: snapshot(20, 0.0),
                trained: snapshot(20, 0.4),
                test_accuracy: 0.9,
                final_train_loss: 0.3,
                train_seconds: 1.0,
            })
            .collect();
        let o = Outcome {
            config: Config {
                depths: vec![20],
                ..Config::default()
            },
            runs,
            wall_seconds: 1.0,
        };
        let f = preact_figure(&o);
        assert_eq!(f.panels.len(), 4);
        let hidden = crate::plot::legend_overlap(&f).unwrap();
        assert_eq!(hidden.len(), 4, "every panel has a legend");
        assert!(hidden.iter().all(|&h| h == 0.0), "{hidden:?}");
    }
}
