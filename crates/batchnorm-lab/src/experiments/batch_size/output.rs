//! The experiment's files: `results.csv`, `curves.csv`, `summary.json`, `batch_size.png`,
//! `batch_size.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::Outcome;
use crate::experiments::output::{
    accuracy_axis, alternating, finite, num, pct, series, time_finding, write_outputs, Outputs,
};
use crate::experiments::LabError;
use crate::plot::{Figure, LineStyle, Marker, Panel, Series};

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[
            ("results.csv", results_csv(o)),
            ("curves.csv", curves_csv(o)),
        ],
        summary: summary_json(o),
        figures: &[("batch_size", figure(o))],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn results_csv(o: &Outcome) -> String {
    let mut s = String::from(
        "batch_size,lr,steps,test_accuracy,test_accuracy_batch_stats,final_train_loss,train_seconds\n",
    );
    for r in &o.runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{}",
            r.batch_size,
            r.lr,
            r.steps,
            num(r.test_accuracy),
            num(r.test_accuracy_batch_stats),
            num(r.final_train_loss),
            r.train_seconds
        );
    }
    s
}

fn curves_csv(o: &Outcome) -> String {
    let mut s = String::from("batch_size,examples,test_accuracy\n");
    for r in &o.runs {
        for &(e, a) in &r.curve {
            let _ = writeln!(s, "{},{e},{}", r.batch_size, num(a));
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
                "batch_size": r.batch_size,
                "lr": r.lr,
                "steps": r.steps,
                "test_accuracy": finite(r.test_accuracy),
                "test_accuracy_batch_stats": finite(r.test_accuracy_batch_stats),
                "final_train_loss": finite(r.final_train_loss),
                "train_seconds": r.train_seconds,
            })
        })
        .collect();
    json!({
        "runs": runs,
        "wall_seconds": o.wall_seconds,
        "config": {
            "batch_sizes": c.batch_sizes,
            "examples": c.examples,
            "lr": c.lr,
            "lr_batch": c.lr_batch,
            "lr_rule": "lr * batch_size / lr_batch (the same step per example)",
            "init_std": c.init_std,
            "evals": c.evals,
            "seed": c.seed,
            "threads": c.threads,
            "architecture": "784-100-100-100-10, BN before each hidden sigmoid, softmax cross-entropy",
            "optimizer": "plain SGD (no momentum, no weight decay)",
        },
    })
}

fn figure(o: &Outcome) -> Figure {
    let x = |b: usize| b as f64;
    // Accuracy stops at 1: the axis runs from a tenth below the lowest value to 1.
    let lowest = o
        .runs
        .iter()
        .flat_map(|r| {
            [r.test_accuracy, r.test_accuracy_batch_stats]
                .into_iter()
                .chain(r.curve.iter().filter(|p| p.0 > 0).map(|p| p.1))
        })
        .filter(|a| a.is_finite())
        .fold(1.0f64, f64::min);
    let accuracy_range = accuracy_axis(lowest);
    let batch_ticks: Vec<f64> = o.runs.iter().map(|r| x(r.batch_size)).collect();
    let final_panel = Panel {
        title: "(a) Test accuracy after the run".into(),
        x_label: "batch size (log scale)".into(),
        y_label: "test accuracy".into(),
        y_log: false,
        series: vec![
            series(
                "running statistics (eval mode)",
                o.runs
                    .iter()
                    .map(|r| (x(r.batch_size), r.test_accuracy))
                    .collect(),
                LineStyle::Solid,
            ),
            series(
                "batch statistics (test batches of the same size)",
                o.runs
                    .iter()
                    .map(|r| (x(r.batch_size), r.test_accuracy_batch_stats))
                    .collect(),
                LineStyle::Dashed,
            ),
        ]
        .into_iter()
        .map(|s| Series {
            marker: Marker::Dot,
            ..s
        })
        .collect(),
        x_log_ticks: batch_ticks,
        y_range: accuracy_range,
    };
    let curve_panel = Panel {
        title: "(b) Test accuracy during training (running statistics)".into(),
        x_label: "training examples seen".into(),
        y_label: "test accuracy".into(),
        y_log: false,
        series: o
            .runs
            .iter()
            .enumerate()
            .map(|(i, r)| Series {
                // Alternate solid and dashed, with a dot at each evaluation: curves that run
                // together stay visible under each other.
                marker: Marker::Dot,
                ..series(
                    &format!("batch {}", r.batch_size),
                    r.curve
                        .iter()
                        .filter(|p| p.0 > 0)
                        .map(|&(e, a)| (e as f64, a))
                        .collect(),
                    alternating(i),
                )
            })
            .collect(),
        y_range: accuracy_range,
        ..Default::default()
    };
    Figure {
        title: format!(
            "Sigmoid MLP with BN, MNIST: batch size ({} examples each)",
            o.config.examples
        ),
        columns: 2,
        panels: vec![final_panel, curve_panel],
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = String::new();
    let _ = writeln!(s, "# Batch size and batch normalization\n");
    let _ = writeln!(
        s,
        "![Test accuracy against batch size; during training](batch_size.png)\n"
    );
    let _ = writeln!(
        s,
        "MNIST, fig1's 784-100-100-100-10 sigmoid MLP with BN before each hidden sigmoid, weights \
         from N(0, {}^2), biases 0 (the same for every run), plain SGD. Every run sees {} training \
         examples; a batch of B takes {}/B steps at learning rate {} x B / {} (the same step per \
         example). Test accuracy on the 10,000 test images with the running statistics \
         (evaluation mode) and, for comparison, with batch statistics over consecutive test \
         batches of B images. Seed {}.\n",
        c.init_std, c.examples, c.examples, c.lr, c.lr_batch, c.seed
    );
    let _ = writeln!(
        s,
        "| batch size | learning rate | steps | test accuracy (running stats) | test accuracy (batch stats) | final training loss | training s |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &o.runs {
        let _ = writeln!(
            s,
            "| {} | {:.4} | {} | {} | {} | {:.4} | {:.1} |",
            r.batch_size,
            r.lr,
            r.steps,
            pct(Some(r.test_accuracy)),
            pct(Some(r.test_accuracy_batch_stats)),
            r.final_train_loss,
            r.train_seconds
        );
    }
    let _ = writeln!(s, "\n## Findings\n");
    let best = o
        .runs
        .iter()
        .max_by(|a, b| a.test_accuracy.total_cmp(&b.test_accuracy));
    let smallest = o.runs.first();
    if let (Some(best), Some(small)) = (best, smallest) {
        let _ = writeln!(
            s,
            "- Best test accuracy {} at batch {}; at batch {} it is {} ({:+.2} percentage points), \
             error {:.2}% against {:.2}%.",
            pct(Some(best.test_accuracy)),
            best.batch_size,
            small.batch_size,
            pct(Some(small.test_accuracy)),
            100.0 * (small.test_accuracy - best.test_accuracy),
            100.0 * (1.0 - small.test_accuracy),
            100.0 * (1.0 - best.test_accuracy)
        );
        let _ = writeln!(
            s,
            "- At batch {} the running statistics give {} and the test batches' own statistics {}; \
             at batch {}: {} and {}. (Wu & He 2018: ResNet-50 on ImageNet, top-1 error 23.6% at 32 \
             images per GPU against 34.7% at 2.)",
            small.batch_size,
            pct(Some(small.test_accuracy)),
            pct(Some(small.test_accuracy_batch_stats)),
            best.batch_size,
            pct(Some(best.test_accuracy)),
            pct(Some(best.test_accuracy_batch_stats))
        );
    }
    let _ = writeln!(
        s,
        "{}",
        time_finding(o.wall_seconds, o.runs.len(), "runs", c.threads)
    );
    let _ = writeln!(
        s,
        "\nPer run: `results.csv`; accuracy along the runs: `curves.csv`; summary: `summary.json`; \
         figure: `batch_size.png`, `batch_size.svg`."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Run};
    use super::*;

    #[test]
    fn axes_show_batch_sizes_and_stop_at_one() {
        let runs = [2, 4, 8, 128]
            .into_iter()
            .map(|b| Run {
                batch_size: b,
                lr: 1.0,
                steps: 10,
                test_accuracy: 0.9 + 0.01 * (b as f64).log2(),
                test_accuracy_batch_stats: 0.55,
                final_train_loss: 0.1,
                curve: vec![(0, 0.1), (100, 0.97), (200, 0.99)],
                train_seconds: 1.0,
            })
            .collect();
        let o = Outcome {
            config: Config::default(),
            runs,
            wall_seconds: 1.0,
        };
        let f = figure(&o);
        assert_eq!(f.panels[0].x_log_ticks, [2.0, 4.0, 8.0, 128.0]);
        assert_eq!(f.panels[0].series[0].points[3], (128.0, 0.97));
        for p in &f.panels {
            assert_eq!(p.y_range, Some((0.5, 1.0)), "{}", p.title);
        }
        let hidden = crate::plot::legend_overlap(&f).unwrap();
        assert!(hidden.iter().all(|&h| h == 0.0), "{hidden:?}");
        // Neighbouring curves differ in dash, so one running over another stays visible.
        let styles: Vec<LineStyle> = f.panels[1].series.iter().map(|s| s.style).collect();
        assert!(styles.windows(2).all(|w| w[0] != w[1]), "{styles:?}");
        assert!(f.panels[1].series.iter().all(|s| s.marker == Marker::Dot));
    }
}
