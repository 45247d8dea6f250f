//! The experiment's files: `evals.csv`, `ics.csv`, `landscape.csv`, `summary.json`, the three
//! figures and `report.md`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::figures::{drift_figure, ics_figure, landscape_figure};
use super::network::{Arch, Net};
use super::train::{Measured, NetRun};
use super::{LabError, Outcome};
use crate::experiments::output::{finite, num, pct, time_finding, write_outputs, Outputs};

/// Writes every output file into `outcome.config.out`.
///
/// # Errors
/// [`LabError::Io`] or [`LabError::Plot`] naming the file that could not be written.
pub(super) fn write_all(o: &Outcome) -> Result<(), LabError> {
    let outputs = Outputs {
        csv: &[
            ("evals.csv", evals_csv(o)),
            ("ics.csv", ics_csv(o)),
            ("landscape.csv", landscape_csv(o)),
        ],
        summary: summary_json(o),
        figures: &[
            ("why_drift", drift_figure(o)),
            ("why_ics", ics_figure(o)),
            ("why_landscape", landscape_figure(o)),
        ],
        report: report_md(o),
    };
    write_outputs(&o.config.out, &outputs)
}

/// The mean of `values` (NaN if empty or if any is NaN: a diverged measurement is not hidden).
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n as f64
}

/// One network's measurements reduced to one number each: means over the measured steps (and,
/// for ICS, over layers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Headline {
    /// Mean `||G - G'||`.
    pub ics_l2: f64,
    /// Mean `||G - G'|| / ||G||`.
    pub ics_relative: f64,
    /// Mean `cos(G, G')`.
    pub ics_cosine: f64,
    /// Mean width (max - min) of the loss over the step sizes.
    pub loss_range: f64,
    /// Mean of the largest gradient change over the step sizes.
    pub grad_change: f64,
    /// Mean effective beta-smoothness.
    pub beta: f64,
    /// Largest effective beta-smoothness.
    pub beta_max: f64,
}

impl Headline {
    pub(super) fn of(r: &NetRun) -> Headline {
        let ics = || r.measured.iter().flat_map(|m| m.ics.iter());
        let lm = |f: fn(&Measured) -> f64| mean(r.measured.iter().map(f));
        Headline {
            ics_l2: mean(ics().map(|x| x.l2)),
            ics_relative: mean(ics().map(|x| x.l2 / x.grad_norm)),
            ics_cosine: mean(ics().map(|x| x.cosine)),
            loss_range: lm(|m| {
                let (lo, hi) = m.landscape.loss_range();
                hi - lo
            }),
            grad_change: lm(|m| m.landscape.grad_change_range().1),
            beta: lm(|m| m.landscape.beta()),
            beta_max: r
                .measured
                .iter()
                .map(|m| m.landscape.beta())
                .fold(0.0, |a: f64, b| if b.is_nan() { b } else { a.max(b) }),
        }
    }
}

/// One row per network and evaluation: the loss, the accuracy, the change since the previous
/// evaluation, and per hidden layer the percentiles of unit 0.
fn evals_csv(o: &Outcome) -> String {
    let hidden = o.hidden_layers();
    let mut s = String::from("net,step,train_loss,test_accuracy,change");
    for l in 1..=hidden {
        let _ = write!(s, ",l{l}_p15,l{l}_p50,l{l}_p85");
    }
    s.push('\n');
    for r in &o.runs {
        for (i, e) in r.evals.iter().enumerate() {
            let change = r.change_at(i);
            let _ = write!(
                s,
                "{},{},{},{},{}",
                r.net.key(),
                e.step,
                num(e.train_loss),
                num(e.test_accuracy),
                num(change)
            );
            for l in &e.layers {
                for p in l.percentiles {
                    let _ = write!(s, ",{}", num(p));
                }
            }
            s.push('\n');
        }
    }
    s
}

/// One row per network, measured step and layer.
fn ics_csv(o: &Outcome) -> String {
    let mut s = String::from("net,step,layer,l2,cosine,grad_norm\n");
    for r in &o.runs {
        for m in &r.measured {
            for (l, x) in m.ics.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{}",
                    r.net.key(),
                    m.step,
                    l + 2,
                    num(x.l2),
                    num(x.cosine),
                    num(x.grad_norm)
                );
            }
        }
    }
    s
}

/// One row per network, measured step and step size.
fn landscape_csv(o: &Outcome) -> String {
    let mut s = String::from("net,step,eta,loss_here,loss,grad_norm,grad_change\n");
    for r in &o.runs {
        for m in &r.measured {
            let l = &m.landscape;
            for &(eta, loss, change) in &l.points {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{}",
                    r.net.key(),
                    m.step,
                    eta,
                    num(l.loss_here),
                    num(loss),
                    num(l.grad_norm),
                    num(change)
                );
            }
        }
    }
    s
}

fn net_json(r: &NetRun) -> Value {
    let h = Headline::of(r);
    let per_layer = |f: fn(&super::ics::LayerIcs) -> f64| -> Vec<Value> {
        r.measured
            .iter()
            .map(|m| {
                let v: Vec<Option<f64>> = m.ics.iter().map(|x| finite(f(x))).collect();
                json!({"step": m.step, "per_layer": v})
            })
            .collect()
    };
    let range = |f: fn(&Measured) -> (f64, f64)| -> Vec<Value> {
        r.measured
            .iter()
            .map(|m| {
                let (lo, hi) = f(m);
                json!({"step": m.step, "min": finite(lo), "max": finite(hi)})
            })
            .collect()
    };
    json!({
        "final_test_accuracy": finite(r.final_test_accuracy()),
        "drift": finite(r.drift()),
        "ics_layers": (2..2 + r.measured.first().map_or(0, |m| m.ics.len())).collect::<Vec<_>>(),
        "ics_l2": per_layer(|x| x.l2),
        "ics_cosine": per_layer(|x| x.cosine),
        "loss_range": range(|m| m.landscape.loss_range()),
        "grad_predictiveness_range": range(|m| m.landscape.grad_change_range()),
        "beta_smoothness": r.measured.iter().map(|m| json!({"step": m.step, "beta": finite(m.landscape.beta())})).collect::<Vec<_>>(),
        "means": {
            "ics_l2": finite(h.ics_l2),
            "ics_relative_l2": finite(h.ics_relative),
            "ics_cosine": finite(h.ics_cosine),
            "loss_range_width": finite(h.loss_range),
            "grad_predictiveness_max": finite(h.grad_change),
            "beta_smoothness": finite(h.beta),
            "beta_smoothness_max": finite(h.beta_max),
        },
        "bn_input_std": {
            "first": r.evals.first().map(|e| &e.bn_input_std),
            "last": r.evals.last().map(|e| &e.bn_input_std),
        },
        "bn_gain": {
            "first": r.evals.first().map(|e| &e.bn_gain),
            "last": r.evals.last().map(|e| &e.bn_gain),
        },
        "seconds": r.seconds,
    })
}

/// The summary: per network the keys of [`net_json`], then the run's settings.
fn summary_json(o: &Outcome) -> Value {
    let c = &o.config;
    let mut v = json!({
        "wall_seconds": o.wall_seconds,
        "config": {
            "steps": c.steps,
            "measure_every": c.measure_every,
            "lr": c.lr,
            "batch_size": c.batch_size,
            "init_std": c.init_std,
            "noise_shift": c.noise.shift,
            "noise_scale": c.noise.scale,
            "etas": c.step_sizes(),
            "probe": c.probe,
            "seed": c.seed,
            "threads": c.threads,
            "arch": c.arch.key(),
            "architecture": format!("{}, softmax cross-entropy", c.arch.description()),
            "optimizer": "plain SGD (no momentum, no weight decay)",
            "drift": "mean over consecutive evaluations, hidden layers and units of |change of the unit's mean| + |change of its std| over the probe batch (ReLU inputs, batch statistics)",
            "ics": "per linear layer i >= 2: G = dL/dW_i, G' = dL/dW_i after the layers below i take their SGD step (lr) on the same batch",
        },
    });
    for r in &o.runs {
        v[r.net.key()] = net_json(r);
    }
    v
}

/// A number with four significant digits, `n/a` when not finite.
fn g4(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "n/a".into()
    }
}

/// Per-layer values at the first and the last evaluation, `0.37, 0.29 → 0.86, 0.56`; `no BN`
/// for none.
fn first_to_last(r: &NetRun, values: fn(&super::train::Eval) -> &Vec<f64>) -> String {
    let list = |e: Option<&super::train::Eval>| {
        e.map(|e| {
            values(e)
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    match (list(r.evals.first()), list(r.evals.last())) {
        (Some(a), Some(b)) if !a.is_empty() => format!("{a} → {b}"),
        _ => "no BN".into(),
    }
}

fn report_md(o: &Outcome) -> String {
    let c = &o.config;
    let mut s = String::new();
    let _ = writeln!(s, "# Why BN works, put to the test\n");
    let _ = writeln!(
        s,
        "MNIST, {}, {}, {} steps of \
         plain SGD (lr {}, batch {}), seed {}: with BN, without BN, and noisy BN (after each BN, per \
         unit, y * s + m with m ~ U(-{}, {}) and s ~ U(1, {}) drawn anew every step). Every {} steps: \
         test accuracy, the hidden pre-activations over {} fixed training images, gradient-based ICS \
         and the loss landscape along the gradient for {} step sizes from {} to {}.\n",
        c.arch.description(),
        match c.arch {
            Arch::Mlp => format!("weights N(0, {}^2), biases 0", c.init_std),
            Arch::Cnn => "He-initialised convolutions".to_owned(),
        },
        c.steps,
        c.lr,
        c.batch_size,
        c.seed,
        c.noise.shift,
        c.noise.shift,
        c.noise.scale,
        c.measure_every,
        c.probe.min(c.arch.eval_batch()),
        c.etas,
        c.eta_min,
        c.eta_max
    );
    let _ = writeln!(
        s,
        "![Test accuracy, drift and pre-activation percentiles](why_drift.png)\n\n\
         ![Gradient-based ICS per layer](why_ics.png)\n\n\
         ![Loss landscape, gradient predictiveness, beta-smoothness](why_landscape.png)\n"
    );
    let _ = writeln!(
        s,
        "| | {} |\n|---|{}",
        o.runs
            .iter()
            .map(|r| r.net.label())
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(o.runs.len())
    );
    let heads: Vec<(Net, Headline, &NetRun)> =
        o.runs.iter().map(|r| (r.net, Headline::of(r), r)).collect();
    let row = |s: &mut String, name: &str, f: &dyn Fn(&Headline, &NetRun) -> String| {
        let cells: Vec<String> = heads.iter().map(|(_, h, r)| f(h, r)).collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    };
    row(&mut s, "final test accuracy", &|_, r| {
        pct(Some(r.final_test_accuracy()))
    });
    row(
        &mut s,
        "drift (mean \\|Δmean\\| + \\|Δstd\\|)",
        &|_, r| g4(r.drift()),
    );
    row(&mut s, "ICS: mean \\|\\|G - G'\\|\\|", &|h, _| g4(h.ics_l2));
    row(
        &mut s,
        "ICS: mean \\|\\|G - G'\\|\\| / \\|\\|G\\|\\|",
        &|h, _| g4(h.ics_relative),
    );
    row(&mut s, "ICS: mean cos(G, G')", &|h, _| g4(h.ics_cosine));
    row(&mut s, "mean loss range over η", &|h, _| g4(h.loss_range));
    row(&mut s, "mean max gradient change over η", &|h, _| {
        g4(h.grad_change)
    });
    row(&mut s, "mean effective β", &|h, _| g4(h.beta));
    row(&mut s, "largest effective β", &|h, _| g4(h.beta_max));
    row(
        &mut s,
        "mean std σ of the BN inputs, step 0 → end",
        &|_, r| first_to_last(r, |e| &e.bn_input_std),
    );
    row(&mut s, "mean γ/σ of the BNs, step 0 → end", &|_, r| {
        first_to_last(r, |e| &e.bn_gain)
    });
    let _ = writeln!(s, "\n## Findings\n");
    let find = |net| heads.iter().find(|(n, _, _)| *n == net);
    if let (Some(bn), Some(plain), Some(noisy)) =
        (find(Net::Bn), find(Net::Plain), find(Net::NoisyBn))
    {
        let _ = writeln!(
            s,
            "- Claim 1 (noisy BN drifts more yet trains as well): drift {} (noisy BN) against {} (BN) \
             and {} (plain), {:.1}x BN's; test accuracy {} against {} and {}.",
            g4(noisy.2.drift()),
            g4(bn.2.drift()),
            g4(plain.2.drift()),
            noisy.2.drift() / bn.2.drift(),
            pct(Some(noisy.2.final_test_accuracy())),
            pct(Some(bn.2.final_test_accuracy())),
            pct(Some(plain.2.final_test_accuracy()))
        );
        let _ = writeln!(
            s,
            "- Claim 2 (BN does not reduce gradient-based ICS): mean ||G - G'|| {} with BN, {} without \
             (relative to ||G||: {} and {}); mean cosine {} and {}.",
            g4(bn.1.ics_l2),
            g4(plain.1.ics_l2),
            g4(bn.1.ics_relative),
            g4(plain.1.ics_relative),
            g4(bn.1.ics_cosine),
            g4(plain.1.ics_cosine)
        );
        let _ = writeln!(
            s,
            "- Claim 3 (BN smooths the landscape): mean loss range {} with BN, {} without ({} noisy); \
             mean largest gradient change {} and {}; mean effective beta {} and {} (largest {} and {}).",
            g4(bn.1.loss_range),
            g4(plain.1.loss_range),
            g4(noisy.1.loss_range),
            g4(bn.1.grad_change),
            g4(plain.1.grad_change),
            g4(bn.1.beta),
            g4(plain.1.beta),
            g4(bn.1.beta_max),
            g4(plain.1.beta_max)
        );
    }
    let _ = writeln!(
        s,
        "{}",
        time_finding(o.wall_seconds, o.runs.len(), "networks", c.threads)
    );
    let _ = writeln!(
        s,
        "\nData: `evals.csv` (accuracy, loss, change, percentiles), `ics.csv`, `landscape.csv`; \
         summary: `summary.json`; figures: `why_drift`, `why_ics`, `why_landscape` (.png, .svg)."
    );
    s
}
