//! The experiment's files: `metrics.csv`, `summary.json`, `fig1.png`, `fig1.svg`, `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::network::Variant;
use super::train::NetRun;
use super::{LabError, Outcome, PROBE_SIZE, PROBE_UNIT};
use crate::experiments::output::{
    best_cell, loss_cell, num, pct, series, step_or_never, write_outputs, Outputs,
};
use crate::plot::{Figure, LineStyle, Panel};

/// Writes every output file into `outcome.config.out`, creating the folder.
///
/// # Errors
/// [`LabError::Io`] or [`LabError::Plot`] naming the file that could not be written.
pub(super) fn write_all(outcome: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[("metrics.csv", metrics_csv(outcome))],
        summary: summary_json(outcome),
        figures: &[("fig1", figure(outcome))],
        report: report_md(outcome),
    };
    write_outputs(&outcome.config.out, &outputs)
}

/// One row per network and evaluation.
fn metrics_csv(o: &Outcome) -> String {
    let mut s = String::from("net,step,train_loss,train_accuracy,test_accuracy,p15,p50,p85\n");
    for run in [&o.bn, &o.plain] {
        for e in &run.evals {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{}",
                run.variant.key(),
                e.step,
                num(e.train_loss),
                num(e.train_accuracy),
                num(e.test_accuracy),
                num(e.percentiles[0]),
                num(e.percentiles[1]),
                num(e.percentiles[2]),
            );
        }
    }
    s
}

fn net_json(run: &NetRun, steps: usize) -> Value {
    let last = run.last();
    let best = run.best();
    json!({
        "final_test_accuracy": last.map(|e| e.test_accuracy),
        "best_test_accuracy": best.map(|b| b.0),
        "best_step": best.map(|b| b.1),
        "steps_to_90": run.steps_to(0.90),
        "steps_to_95": run.steps_to(0.95),
        "final_train_loss": last.map(|e| e.train_loss),
        "final_percentiles": last.map(|e| json!({"p15": e.percentiles[0], "p50": e.percentiles[1], "p85": e.percentiles[2]})),
        "train_seconds": run.train_seconds,
        "eval_seconds": run.eval_seconds,
        "steps_per_second": run.steps_per_second(steps),
    })
}

/// The summary; `steps_to_*` are the first evaluated steps at or above the threshold, `null`
/// when never reached.
pub(super) fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    json!({
        "bn": net_json(&o.bn, c.steps),
        "plain": net_json(&o.plain, c.steps),
        "wall_seconds": o.wall_seconds,
        "load_seconds": o.load_seconds,
        "steps_per_second": o.steps_per_second(),
        "config": {
            "steps": c.steps,
            "lr": c.lr,
            "batch_size": c.batch_size,
            "init_std": c.init_std,
            "seed": c.seed,
            "eval_every": c.eval_every,
            "threads": c.threads,
            "architecture": "784-100-100-100-10, sigmoid hidden units, softmax cross-entropy",
            "optimizer": "plain SGD (no momentum, no weight decay)",
            "batch_norm": "before each hidden sigmoid; eps 1e-5, momentum 0.1, learnable gamma/beta",
            "probe": format!("input of sigmoid {PROBE_UNIT} of the last hidden layer over {PROBE_SIZE} fixed training images, batch statistics, running statistics untouched"),
            "test_images": 10_000,
        },
    })
}

/// A percentile panel's title, naming the probed sigmoid (numbered from 0, as in the summary).
fn probe_title(which: &str) -> String {
    format!("{which}: sigmoid {PROBE_UNIT} of layer 3")
}

/// The range that holds every percentile of both networks, with margins: panels (b) and (c)
/// share it, so the spreads compare at a glance.
fn percentile_range(runs: [&NetRun; 2]) -> Option<(f64, f64)> {
    let values = runs
        .iter()
        .flat_map(|r| r.evals.iter().flat_map(|e| e.percentiles))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // 5 % below, and 60 % of the span above: room for the three-row legend over the data in
    // both panels, so that neither moves its range to make room (which would unshare them).
    let span = (hi - lo).max(1e-3);
    (lo <= hi).then_some((lo - 0.05 * span, hi + 0.6 * span))
}

fn percentile_panel(title: &str, run: &NetRun, y_range: Option<(f64, f64)>) -> Panel {
    let names = ["15th percentile", "50th percentile", "85th percentile"];
    Panel {
        title: title.to_owned(),
        x_label: "training steps".into(),
        y_label: "input to the sigmoid".into(),
        y_log: false,
        series: names
            .iter()
            .enumerate()
            .map(|(q, name)| {
                series(
                    name,
                    run.evals
                        .iter()
                        .map(|e| (e.step as f64, e.percentiles[q]))
                        .collect(),
                    LineStyle::Solid,
                )
            })
            .collect(),
        y_range,
        ..Default::default()
    }
}

/// Laid out like the paper's Figure 1: (a) test accuracy of both networks, (b) and (c) the
/// percentiles of the probed sigmoid input without and with BN.
fn figure(o: &Outcome) -> Figure {
    let shared = percentile_range([&o.plain, &o.bn]);
    let acc = |run: &NetRun| {
        run.evals
            .iter()
            .map(|e| (e.step as f64, e.test_accuracy))
            .collect()
    };
    Figure {
        title: "MNIST, 784-100-100-100-10 sigmoid MLP: with and without batch normalization".into(),
        columns: 3,
        panels: vec![
            Panel {
                title: "(a) Test accuracy".into(),
                x_label: "training steps".into(),
                y_label: "test accuracy".into(),
                y_log: false,
                series: vec![
                    series(Variant::BatchNorm.label(), acc(&o.bn), LineStyle::Solid),
                    series(Variant::Plain.label(), acc(&o.plain), LineStyle::Dashed),
                ],
                ..Default::default()
            },
            percentile_panel(&probe_title("(b) Without BN"), &o.plain, shared),
            percentile_panel(&probe_title("(c) With BN"), &o.bn, shared),
        ],
    }
}

/// Range (max - min) of a percentile over the evaluations after step 0.
fn spread(run: &NetRun, q: usize) -> f64 {
    let vals = run
        .evals
        .iter()
        .filter(|e| e.step > 0)
        .map(|e| e.percentiles[q]);
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    hi - lo
}

/// "90% first reached at step 2000" or "90% never reached in N steps".
fn reach(run: &NetRun, threshold: f64) -> String {
    let steps = run.last().map_or(0, |e| e.step);
    match run.steps_to(threshold) {
        Some(s) => format!("{:.0}% first reached at step {s}", 100.0 * threshold),
        None => format!("{:.0}% never reached in {steps} steps", 100.0 * threshold),
    }
}

fn first_after_zero(run: &NetRun) -> Option<&super::EvalRecord> {
    run.evals.iter().find(|e| e.step > 0)
}

/// The report: the figure, the numbers, and findings stated from them.
fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let (bn, plain) = (&o.bn, &o.plain);
    let fin = |r: &NetRun| r.last().map(|e| e.test_accuracy);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Figure 1 of the Batch Normalization paper, reproduced\n"
    );
    let _ = writeln!(
        s,
        "![Figure 1: test accuracy; sigmoid input percentiles without and with BN](fig1.png)\n"
    );
    let _ = writeln!(
        s,
        "MNIST, 784-100-100-100-10 MLP with sigmoid hidden units, weights from N(0, {}^2), biases 0, \
         {} steps of plain SGD (learning rate {}, batch {}), seed {}. Both networks start from the same \
         weights and see the same batches; the BN network normalises before each hidden sigmoid. Every {} \
         steps: accuracy on the 10,000 test images (BN with running statistics) and the 15th/50th/85th \
         percentiles of the input to sigmoid {} of the last hidden layer over {} fixed training images \
         (batch statistics, running statistics untouched).\n",
        c.init_std, c.steps, c.lr, c.batch_size, c.seed, c.eval_every, PROBE_UNIT, PROBE_SIZE
    );
    let _ = writeln!(s, "| | with BN | without BN |\n|---|---:|---:|");
    let _ = writeln!(
        s,
        "| final test accuracy (step {}) | {} | {} |",
        c.steps,
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
        "| steps to 90% | {} | {} |",
        step_or_never(bn.steps_to(0.90)),
        step_or_never(plain.steps_to(0.90))
    );
    let _ = writeln!(
        s,
        "| steps to 95% | {} | {} |",
        step_or_never(bn.steps_to(0.95)),
        step_or_never(plain.steps_to(0.95))
    );
    let loss = |r: &NetRun| loss_cell(r.last().map(|e| e.train_loss));
    let _ = writeln!(
        s,
        "| mean training loss, last {} steps | {} | {} |",
        c.eval_every,
        loss(bn),
        loss(plain)
    );
    let p = |r: &NetRun| {
        r.last().map_or("n/a".into(), |e| {
            format!(
                "{:.2} / {:.2} / {:.2}",
                e.percentiles[0], e.percentiles[1], e.percentiles[2]
            )
        })
    };
    let _ = writeln!(
        s,
        "| sigmoid input p15 / p50 / p85, final | {} | {} |",
        p(bn),
        p(plain)
    );
    let _ = writeln!(
        s,
        "| range of p50 / p15 / p85 over the run | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} |",
        spread(bn, 1),
        spread(bn, 0),
        spread(bn, 2),
        spread(plain, 1),
        spread(plain, 0),
        spread(plain, 2)
    );
    let _ = writeln!(
        s,
        "| training steps/s (evaluation excluded) | {:.0} | {:.0} |\n",
        bn.steps_per_second(c.steps),
        plain.steps_per_second(c.steps)
    );

    let _ = writeln!(s, "## Findings\n");
    if let (Some(fb), Some(fp)) = (fin(bn), fin(plain)) {
        let verdict = if fb > fp {
            "higher than"
        } else if fb < fp {
            "lower than"
        } else {
            "equal to"
        };
        let _ = writeln!(
            s,
            "- Accuracy: after {} steps the BN network reaches {} test accuracy, {verdict} the plain network's {} \
             ({:+.2} percentage points).",
            c.steps,
            pct(Some(fb)),
            pct(Some(fp)),
            100.0 * (fb - fp)
        );
    }
    let _ = writeln!(
        s,
        "- Speed (test accuracy evaluated every {} steps): with BN, {} and {}; without BN, {} and {}.",
        c.eval_every,
        reach(bn, 0.90),
        reach(bn, 0.95),
        reach(plain, 0.90),
        reach(plain, 0.95),
    );
    if let (Some(b0), Some(p0), Some(bl), Some(pl)) = (
        first_after_zero(bn),
        first_after_zero(plain),
        bn.last(),
        plain.last(),
    ) {
        let _ = writeln!(
            s,
            "- Sigmoid input distribution: from step {} to step {}, the median moves from {:.2} to {:.2} with BN and \
             from {:.2} to {:.2} without; the 15-85 band goes from [{:.2}, {:.2}] to [{:.2}, {:.2}] with BN and \
             from [{:.2}, {:.2}] to [{:.2}, {:.2}] without. Over the whole run the median spans {:.2} with BN and \
             {:.2} without.",
            b0.step,
            bl.step,
            b0.percentiles[1],
            bl.percentiles[1],
            p0.percentiles[1],
            pl.percentiles[1],
            b0.percentiles[0],
            b0.percentiles[2],
            bl.percentiles[0],
            bl.percentiles[2],
            p0.percentiles[0],
            p0.percentiles[2],
            pl.percentiles[0],
            pl.percentiles[2],
            spread(bn, 1),
            spread(plain, 1)
        );
    }
    let _ = writeln!(
        s,
        "- Time: {:.1} s wall clock for both networks with {} thread(s) (MNIST loading {:.1} s of it), \
         {:.0} training steps/s over both networks; per network {:.0} (BN) and {:.0} (plain) steps/s with \
         evaluation excluded, evaluation {:.1} s and {:.1} s.",
        o.wall_seconds,
        c.threads.min(2),
        o.load_seconds,
        o.steps_per_second(),
        bn.steps_per_second(c.steps),
        plain.steps_per_second(c.steps),
        bn.eval_seconds,
        plain.eval_seconds
    );
    let _ = writeln!(s, "\nData per evaluation: `metrics.csv`; summary: `summary.json`; figure: `fig1.png`, `fig1.svg`.");
    s
}

#[cfg(test)]
mod tests {
    use super::super::{Config, EvalRecord, Variant};
    use super::*;

    fn run(variant: Variant, spread: f64) -> NetRun {
        NetRun {
            variant,
            evals: (0..5)
                .map(|i| EvalRecord {
                    step: 100 * i,
                    train_loss: 1.0,
                    train_accuracy: 0.5,
                    test_accuracy: 0.5,
                    percentiles: [-spread * i as f64, 0.1, spread * i as f64],
                })
                .collect(),
            train_seconds: 1.0,
            eval_seconds: 1.0,
        }
    }

    #[test]
    fn the_percentile_panels_share_their_range_and_name_the_sigmoid() {
        let o = Outcome {
            config: Config::default(),
            plain: run(Variant::Plain, 0.3),
            bn: run(Variant::BatchNorm, 0.5),
            wall_seconds: 1.0,
            load_seconds: 0.1,
        };
        let f = figure(&o);
        let (b, c) = (&f.panels[1], &f.panels[2]);
        assert_eq!(b.y_range, c.y_range);
        let (lo, hi) = b.y_range.unwrap();
        assert!(
            lo < -2.0 && hi > 2.0,
            "{lo}..{hi} holds both networks' -2..2"
        );
        assert!(b.title.contains("sigmoid 0 of layer 3"), "{}", b.title);
        assert!(c.title.starts_with("(c) With BN"), "{}", c.title);
        let hidden = crate::plot::legend_overlap(&f).unwrap();
        assert!(hidden.iter().all(|&h| h == 0.0), "{hidden:?}");
    }
}
