//! The experiment's files: `results.csv`, `curves.csv`, `summary.json`, `small_batch.png`,
//! `small_batch.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{Method, Outcome, Run};
use crate::experiments::output::{
    accuracy_axis, alternating, finite, num, pct, series, write_outputs, Outputs,
};
use crate::experiments::LabError;
use crate::plot::{Figure, Marker, Panel, Series};

/// The methods in the order of figures and tables.
const METHODS: [Method; 5] = [
    Method::Bn,
    Method::Renorm,
    Method::GroupNorm,
    Method::SyncBn,
    Method::Ghost,
];

pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[
            ("results.csv", results_csv(o)),
            ("curves.csv", curves_csv(o)),
        ],
        summary: summary_json(o),
        figures: &[("small_batch", figure(o))],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

fn results_csv(o: &Outcome) -> String {
    let mut s =
        String::from("method,batch_size,ranks,global_batch,lr,steps,test_accuracy,train_seconds\n");
    for r in &o.runs {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            r.job.method.key(),
            r.job.batch_size,
            r.job.ranks,
            r.job.global_batch(),
            r.lr,
            r.steps,
            num(r.test_accuracy),
            r.train_seconds
        );
    }
    s
}

fn curves_csv(o: &Outcome) -> String {
    let mut s = String::from("method,batch_size,ranks,examples,test_accuracy\n");
    for r in &o.runs {
        for &(e, a) in &r.curve {
            let j = &r.job;
            let _ = writeln!(
                s,
                "{},{},{},{e},{}",
                j.method.key(),
                j.batch_size,
                j.ranks,
                num(a)
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
                "method": r.job.method.key(),
                "batch_size": r.job.batch_size,
                "ranks": r.job.ranks,
                "test_accuracy": finite(r.test_accuracy),
                "global_batch": r.job.global_batch(),
                "lr": r.lr,
                "steps": r.steps,
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
            "lr_rule": "lr * global_batch / lr_batch (the same step per example)",
            "init_std": c.init_std,
            "groups": c.groups,
            "rmax": c.rmax,
            "dmax": c.dmax,
            "renorm_schedule": "rmax 1, dmax 0 for the first 5/160 of the steps, then linear to dmax at 25/160 and rmax at 40/160 (the paper's 5k, 25k, 40k steps of 160k)",
            "ranks": c.ranks,
            "sync_batches": c.sync_batches,
            "ghost_batch": c.ghost_batch,
            "virtual_batch": c.virtual_batch,
            "evals": c.evals,
            "seed": c.seed,
            "threads": c.threads,
            "architecture": "784-100-100-100-10, the normalization before each hidden sigmoid, softmax cross-entropy",
            "optimizer": "plain SGD (no momentum, no weight decay)",
        },
    })
}

/// The runs of `method`, by batch size per rank.
fn runs_of(o: &Outcome, method: Method) -> Vec<&Run> {
    let mut runs: Vec<&Run> = o.runs.iter().filter(|r| r.job.method == method).collect();
    runs.sort_by_key(|r| r.job.batch_size);
    runs
}

fn figure(o: &Outcome) -> Figure {
    let lowest = o
        .runs
        .iter()
        .flat_map(|r| r.curve.iter().skip(1).map(|p| p.1))
        .filter(|a| a.is_finite())
        .fold(1.0f64, f64::min);
    let accuracy_range = accuracy_axis(lowest);
    let mut ticks: Vec<f64> = o.runs.iter().map(|r| r.job.batch_size as f64).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let final_panel = Panel {
        title: "(a) Test accuracy against the batch each rank normalises".into(),
        x_label: "batch size per rank (log scale)".into(),
        y_label: "test accuracy (inference statistics)".into(),
        series: METHODS
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let points = runs_of(o, m)
                    .iter()
                    .map(|r| (r.job.batch_size as f64, r.test_accuracy))
                    .collect();
                let style = alternating(i);
                Series {
                    marker: Marker::Dot,
                    ..series(&label(o, m), points, style)
                }
            })
            .collect(),
        x_log_ticks: ticks,
        y_range: accuracy_range,
        ..Default::default()
    };
    let smallest = smallest_runs(o);
    let curve_panel = Panel {
        title: format!(
            "(b) Along training at the smallest batch per rank ({})",
            smallest.first().map_or(0, |r| r.job.batch_size)
        ),
        x_label: "training examples seen".into(),
        y_label: "test accuracy".into(),
        series: smallest
            .iter()
            .enumerate()
            .map(|(i, r)| Series {
                marker: Marker::Dot,
                color_of: METHODS.iter().position(|&m| m == r.job.method),
                ..series(
                    &label(o, r.job.method),
                    r.curve
                        .iter()
                        .skip(1)
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
            "Sigmoid MLP on MNIST: BN at small batches and its remedies ({} examples each)",
            o.config.examples
        ),
        columns: 2,
        panels: vec![final_panel, curve_panel],
    }
}

/// A method's legend label, with its setting.
fn label(o: &Outcome, m: Method) -> String {
    let c = &o.config;
    match m {
        Method::GroupNorm => format!("GroupNorm ({} groups)", c.groups),
        Method::SyncBn => format!("SyncBN ({} ranks)", c.ranks),
        Method::Ghost => format!("Ghost BN (virtual batch {})", c.virtual_batch),
        Method::Renorm => format!("Batch Renorm (rmax {}, dmax {})", c.rmax, c.dmax),
        Method::Bn => "BN".into(),
    }
}

/// Each method's run at the smallest batch per rank that method was run with, among the
/// smallest batch of the experiment (SyncBN: its smallest per-rank batch).
fn smallest_runs(o: &Outcome) -> Vec<&Run> {
    let smallest = o.config.batch_sizes.iter().copied().min().unwrap_or(2);
    let mut out: Vec<&Run> = [Method::Bn, Method::Renorm, Method::GroupNorm]
        .iter()
        .filter_map(|&m| {
            runs_of(o, m)
                .into_iter()
                .find(|r| r.job.batch_size == smallest)
        })
        .collect();
    out.extend(runs_of(o, Method::SyncBn).into_iter().next());
    out
}

/// The accuracy of `method` at batch `b` per rank, if it ran.
fn accuracy(o: &Outcome, method: Method, b: usize) -> Option<f64> {
    o.runs
        .iter()
        .find(|r| r.job.method == method && r.job.batch_size == b)
        .map(|r| r.test_accuracy)
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Small batches: where BN fails and which remedy holds\n"
    );
    let _ = writeln!(
        s,
        "![Test accuracy against batch size per method; along training at the smallest batch](small_batch.png)\n"
    );
    let _ = writeln!(
        s,
        "MNIST, fig1's 784-100-100-100-10 sigmoid MLP with the normalization before each hidden \
         sigmoid, weights from N(0, {}^2), biases 0 (the same for every run), plain SGD. Every run \
         sees {} training examples at learning rate {} x B / {} for a (global) batch of B. BN: \
         PyTorch's defaults. Batch Renorm: r and d clipped to rmax {} and dmax {} on the paper's \
         schedule scaled to the run (plain BN for the first 5/160 of the steps, dmax reached at \
         25/160, rmax at 40/160). GroupNorm: {} groups of {} units per sample. SyncBN: {} \
         in-process ranks, each normalising its share with the statistics of the global batch. \
         Ghost BN: batch {} normalised in virtual batches of {}. Test accuracy on the 10,000 test \
         images with the inference statistics (running statistics; GroupNorm has none). Seed {}.\n",
        c.init_std,
        c.examples,
        c.lr,
        c.lr_batch,
        c.rmax,
        c.dmax,
        c.groups,
        super::WIDTHS[1] / c.groups,
        c.ranks,
        c.ghost_batch,
        c.virtual_batch,
        c.seed
    );
    let mut sizes: Vec<usize> = o.runs.iter().map(|r| r.job.batch_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let _ = write!(s, "| method \\ batch per rank |");
    for b in &sizes {
        let _ = write!(s, " {b} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in &sizes {
        let _ = write!(s, "---:|");
    }
    s.push('\n');
    for m in METHODS {
        let _ = write!(s, "| {} |", label(o, m));
        for &b in &sizes {
            let cell = accuracy(o, m, b).map_or(String::new(), |a| pct(Some(a)));
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\n## Findings\n");
    let smallest = c.batch_sizes.iter().copied().min().unwrap_or(2);
    let at = |m: Method, b: usize| pct(accuracy(o, m, b));
    let _ = writeln!(
        s,
        "- At batch {smallest}: BN {}, Batch Renorm {}, GroupNorm {}; SyncBN with {} per rank on {} \
         ranks (global batch {}) {}.",
        at(Method::Bn, smallest),
        at(Method::Renorm, smallest),
        at(Method::GroupNorm, smallest),
        smallest,
        c.ranks,
        smallest * c.ranks,
        at(Method::SyncBn, smallest),
    );
    if smallest == 2 {
        let _ = writeln!(
            s,
            "- With two values per channel (batch 2, no spatial positions) BN's output is ±1 \
             whatever the input, and its input gradient `k (dy - mean(dy) - xhat mean(dy xhat))` \
             is zero up to eps / var: nothing below a BN layer learns. Batch Renorm's r and d \
             are constants for backward, so its input gradient is the same zero scaled by r: it \
             changes what the layers above see, not what the layers below learn."
        );
    }
    if let Some(&largest) = c.batch_sizes.iter().max() {
        let _ = writeln!(
            s,
            "- At batch {largest}: BN {}, Batch Renorm {}, GroupNorm {}.",
            at(Method::Bn, largest),
            at(Method::Renorm, largest),
            at(Method::GroupNorm, largest),
        );
    }
    let _ = writeln!(
        s,
        "- At batch {}: BN {}, Ghost BN (virtual batch {}) {}.",
        c.ghost_batch,
        at(Method::Bn, c.ghost_batch),
        c.virtual_batch,
        at(Method::Ghost, c.ghost_batch),
    );
    let _ = writeln!(
        s,
        "- The papers: Batch Renorm (Ioffe 2017), Inception on ImageNet at microbatch 4: BN 74.2% \
         against renorm 76.5%; GroupNorm (Wu & He 2018), ResNet-50 on ImageNet at 2 images per \
         GPU: error 34.7% with BN against 24.1% with GN."
    );
    let _ = writeln!(
        s,
        "- Time: {:.1} s wall clock for {} runs ({} at once; SyncBN's {} ranks alone).",
        o.wall_seconds,
        o.runs.len(),
        c.threads,
        c.ranks
    );
    let _ = writeln!(
        s,
        "\nPer run: `results.csv`; accuracy along the runs: `curves.csv`; summary: `summary.json`; \
         figure: `small_batch.png`, `small_batch.svg`."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn outcome() -> Outcome {
        let cfg = Config::default();
        let runs = cfg
            .jobs()
            .into_iter()
            .map(|job| Run {
                job,
                lr: 0.1,
                steps: 10,
                test_accuracy: 0.9 + 0.001 * job.batch_size as f64 / 16.0,
                curve: vec![(0, 0.1), (100, 0.8), (200, 0.9)],
                train_seconds: 1.0,
            })
            .collect();
        Outcome {
            config: cfg,
            runs,
            wall_seconds: 1.0,
        }
    }

    #[test]
    fn every_method_is_a_series_and_the_smallest_batch_has_its_curves() {
        let o = outcome();
        let f = figure(&o);
        assert_eq!(f.panels[0].series.len(), 5);
        let bn = &f.panels[0].series[0];
        let sizes: Vec<f64> = bn.points.iter().map(|p| p.0).collect();
        assert_eq!(sizes, [2.0, 4.0, 8.0, 16.0, 32.0, 256.0]);
        let sync = &f.panels[0].series[3];
        assert_eq!(sync.points.len(), 2);
        // BN, renorm, GroupNorm at batch 2 and SyncBN at 2 per rank.
        assert_eq!(f.panels[1].series.len(), 4);
        let hidden = crate::plot::legend_overlap(&f).unwrap();
        assert!(hidden.iter().all(|&h| h == 0.0), "{hidden:?}");
        let json = summary_json(&o);
        let runs = json["runs"].as_array().unwrap();
        assert_eq!(runs.len(), o.runs.len());
        for key in ["method", "batch_size", "ranks", "test_accuracy"] {
            assert!(runs.iter().all(|r| !r[key].is_null()), "{key}");
        }
        let sync_run = runs.iter().find(|r| r["method"] == "syncbn").unwrap();
        assert_eq!(sync_run["ranks"], 4);
        assert!(report_md(&o).contains("| BN |"));
    }
}
