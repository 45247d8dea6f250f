//! Runs each experiment subcommand of `bnlab` end to end on real MNIST with tiny settings and
//! checks its outputs: files exist, JSON keys, CSV rows, PNG magic, report sections.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bnlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bnlab"))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bnlab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run_ok(args: &[&str], out: &Path) {
    let o = bnlab().args(args).arg("--out").arg(out).output().unwrap();
    assert!(
        o.status.success(),
        "bnlab {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Rows of a CSV file after checking its header; every row has the header's field count.
fn csv_rows(path: &Path, header: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header), "{}", path.display());
    let width = header.split(',').count();
    lines
        .map(|l| {
            let r: Vec<String> = l.split(',').map(str::to_owned).collect();
            assert_eq!(r.len(), width, "{}: {l}", path.display());
            r
        })
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `stem.png` is a PNG and `stem.svg` an SVG document.
fn assert_figure(dir: &Path, stem: &str) {
    let png = std::fs::read(dir.join(format!("{stem}.png"))).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{stem}.png is not a PNG"
    );
    let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
}

fn report(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("report.md")).unwrap()
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn depth_writes_gradients_per_layer() {
    let out = temp_dir("depth");
    run_ok(
        &[
            "depth", "--depths", "2,4", "--steps", "20", "--probe", "100",
        ],
        &out,
    );
    let rows = csv_rows(
        &out.join("gradients.csv"),
        "depth,net,stage,step,layer,grad_norm",
    );
    // (2 + 1) + (4 + 1) linear layers, two networks each, two moments.
    assert_eq!(rows.len(), (3 + 5) * 2 * 2);
    for r in &rows {
        assert!(num(&r[5]) > 0.0, "{r:?}");
    }
    let act = csv_rows(
        &out.join("activations.csv"),
        "depth,net,stage,step,layer,z_mean,z_std,act_in_mean,act_in_std",
    );
    assert_eq!(act.len(), (2 + 4) * 2 * 2);
    // With BN the sigmoid input is normalised over the batch: mean 0, std 1 (gamma 1, beta 0
    // at initialisation), up to eps = 1e-5 in the denominator and f32 rounding.
    for r in act.iter().filter(|r| r[1] == "bn" && r[2] == "init") {
        let (m, s) = (num(&r[7]), num(&r[8]));
        assert!(m.abs() < 1e-4 && (s - 1.0).abs() < 1e-3, "{r:?}");
    }
    let s = json(&out.join("summary.json"));
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        for key in ["depth", "net", "init", "trained", "test_accuracy"] {
            assert!(r.get(key).is_some(), "{key} missing");
        }
        let g = r["init"]["grad_norms"].as_array().unwrap();
        assert_eq!(g.len(), r["depth"].as_u64().unwrap() as usize + 1);
        assert!(f(&r["init"]["grad_norm_max_over_min"]) >= 1.0);
    }
    assert_eq!(s["config"]["steps"], 20);
    assert_figure(&out, "depth");
    assert_figure(&out, "depth_preact");
    assert!(report(&out).contains("](depth.png)"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn lr_sweep_reports_accuracy_and_divergence() {
    let out = temp_dir("lr-sweep");
    run_ok(
        &[
            "lr-sweep",
            "--lrs",
            "0.1,50",
            "--steps",
            "40",
            "--log-every",
            "20",
        ],
        &out,
    );
    let rows = csv_rows(
        &out.join("results.csv"),
        "activation,net,lr,test_accuracy,diverged,diverged_at,non_finite,nan_outputs,spiked_at,initial_loss,max_loss,final_loss,steps_done,train_seconds",
    );
    assert_eq!(rows.len(), 2 * 2 * 2, "lrs x activations x BN");
    for r in &rows {
        let acc = num(&r[3]);
        assert!((0.0..=1.0).contains(&acc), "{r:?}");
        assert_eq!(
            r[4] == "true",
            !r[5].is_empty() || r[7] == "true",
            "diverged iff it has a step or NaN outputs: {r:?}"
        );
    }
    // lr 50 on ReLU without BN blows up: the detector must say so. lr 0.1 with BN must not.
    let find = |a: &str, n: &str, lr: &str| {
        rows.iter()
            .find(|r| r[0] == a && r[1] == n && r[2] == lr)
            .unwrap()
            .clone()
    };
    assert_eq!(find("relu", "plain", "50")[4], "true");
    assert_eq!(find("relu", "bn", "0.1")[4], "false");
    assert!(num(&find("relu", "bn", "0.1")[3]) > 0.5);
    let curves = csv_rows(&out.join("curves.csv"), "activation,net,lr,step,train_loss");
    assert!(curves.len() >= 8);
    let s = json(&out.join("summary.json"));
    assert_eq!(s["runs"].as_array().unwrap().len(), 8);
    for key in [
        "activation",
        "net",
        "lr",
        "test_accuracy",
        "diverged",
        "diverged_at",
    ] {
        assert!(s["runs"][0].get(key).is_some(), "{key} missing");
    }
    assert_figure(&out, "lr_sweep");
    assert!(report(&out).contains("](lr_sweep.png)"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn batch_size_reports_both_kinds_of_statistics() {
    let out = temp_dir("batch-size");
    run_ok(
        &[
            "batch-size",
            "--batch-sizes",
            "3,32",
            "--examples",
            "960",
            "--evals",
            "2",
        ],
        &out,
    );
    let rows = csv_rows(
        &out.join("results.csv"),
        "batch_size,lr,steps,test_accuracy,test_accuracy_batch_stats,final_train_loss,train_seconds",
    );
    assert_eq!(rows.len(), 2);
    // Same examples: 960 / 3 and 960 / 32 steps; lr scaled by B / 128.
    assert_eq!((rows[0][0].as_str(), rows[0][2].as_str()), ("3", "320"));
    assert_eq!((rows[1][0].as_str(), rows[1][2].as_str()), ("32", "30"));
    assert_eq!(num(&rows[1][1]), 0.25);
    for r in &rows {
        for v in [num(&r[3]), num(&r[4])] {
            assert!((0.0..=1.0).contains(&v), "{r:?}");
        }
    }
    // Evaluations at 0 and 2 points per run.
    let curves = csv_rows(&out.join("curves.csv"), "batch_size,examples,test_accuracy");
    assert_eq!(curves.len(), 2 * 3);
    let s = json(&out.join("summary.json"));
    for key in [
        "batch_size",
        "lr",
        "steps",
        "test_accuracy",
        "test_accuracy_batch_stats",
    ] {
        assert!(s["runs"][0].get(key).is_some(), "{key} missing");
    }
    assert_eq!(s["config"]["examples"], 960);
    assert_figure(&out, "batch_size");
    assert!(report(&out).contains("](batch_size.png)"));
    std::fs::remove_dir_all(&out).unwrap();
}

/// Every method's run is there with the keys; SyncBN on R ranks of b trains exactly
/// as BN on R x b (same initial weights and batches; rounding of the merged statistics is the
/// only difference, which may flip a borderline test image or two, 0.02% each).
#[test]
fn small_batch_runs_every_method_and_sync_bn_is_bn_of_the_global_batch() {
    let out = temp_dir("small-batch");
    run_ok(
        &[
            "small-batch",
            "--batch-sizes",
            "2,8",
            "--sync-batches",
            "2",
            "--ranks",
            "4",
            "--ghost-batch",
            "16",
            "--virtual-batch",
            "4",
            "--examples",
            "480",
            "--evals",
            "1",
        ],
        &out,
    );
    let s = json(&out.join("summary.json"));
    let runs = s["runs"].as_array().unwrap();
    let find = |method: &str, b: u64, ranks: u64| {
        runs.iter()
            .find(|r| r["method"] == method && r["batch_size"] == b && r["ranks"] == ranks)
            .unwrap_or_else(|| panic!("no {method} run at {b} x {ranks}"))
    };
    for (method, b, ranks) in [
        ("bn", 2, 1),
        ("renorm", 2, 1),
        ("groupnorm", 2, 1),
        ("bn", 8, 1),
        ("renorm", 8, 1),
        ("groupnorm", 8, 1),
        ("syncbn", 2, 4),
        ("ghost", 16, 1),
        ("bn", 16, 1),
    ] {
        let a = f(&find(method, b, ranks)["test_accuracy"]);
        assert!((0.0..=1.0).contains(&a), "{method} {b}: {a}");
    }
    assert_eq!(runs.len(), 9);
    let sync = f(&find("syncbn", 2, 4)["test_accuracy"]);
    let bn8 = f(&find("bn", 8, 1)["test_accuracy"]);
    assert!(
        (sync - bn8).abs() <= 0.0003,
        "syncbn {sync} vs bn at 8 {bn8}"
    );
    let rows = csv_rows(
        &out.join("results.csv"),
        "method,batch_size,ranks,global_batch,lr,steps,test_accuracy,train_seconds",
    );
    assert_eq!(rows.len(), 9);
    assert_figure(&out, "small_batch");
    assert!(report(&out).contains("Ghost BN"));
}

#[test]
fn cnn_resnet_fused_and_unfused_bn_train_to_the_same_bits() {
    let out = temp_dir("cnn_resnet");
    run_ok(
        &[
            "cnn",
            "--arch",
            "resnet",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "6",
            "--eval-every",
            "1000",
        ],
        &out,
    );
    let rows = csv_rows(
        &out.join("metrics.csv"),
        "net,step,train_loss,train_accuracy,test_accuracy",
    );
    let of = |net: &str| -> Vec<Vec<String>> {
        rows.iter()
            .filter(|r| r[0] == net)
            .map(|r| r[1..].to_vec())
            .collect()
    };
    // Steps 0 and 6 (the end) per network; the fused and the unfused BN runs print the same
    // losses and accuracies (the CSV has every digit of the f64 values).
    assert_eq!(of("bn").len(), 2);
    assert_eq!(of("bn"), of("bn_unfused"));
    assert_ne!(of("bn"), of("plain"));
    assert_eq!(rows.len(), 6);
    let s = json(&out.join("summary.json"));
    assert_eq!(s["fused_matches_unfused"], true);
    assert_eq!(s["config"]["arch"], "resnet");
    for net in ["bn", "bn_unfused", "plain"] {
        assert!(f(&s[net]["seconds_per_epoch"]) > 0.0, "{net}");
    }
    assert_figure(&out, "cnn");
    assert!(report(&out).contains("with BN, unfused") && report(&out).contains("bit for bit"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn cnn_writes_fig1_style_outputs_and_epoch_times() {
    let out = temp_dir("cnn");
    run_ok(
        &[
            "cnn",
            "--epochs",
            "2",
            "--max-steps-per-epoch",
            "15",
            "--eval-every",
            "10",
        ],
        &out,
    );
    let rows = csv_rows(
        &out.join("metrics.csv"),
        "net,step,train_loss,train_accuracy,test_accuracy",
    );
    // Steps 0, 10, 20, 30 (the end) per network.
    let steps: Vec<&str> = rows
        .iter()
        .filter(|r| r[0] == "bn")
        .map(|r| r[1].as_str())
        .collect();
    assert_eq!(steps, ["0", "10", "20", "30"]);
    assert_eq!(rows.len(), 8);
    let s = json(&out.join("summary.json"));
    for net in ["bn", "plain"] {
        for key in [
            "final_test_accuracy",
            "best_test_accuracy",
            "steps_to_95",
            "steps_to_98",
            "seconds_per_epoch",
        ] {
            assert!(s[net].get(key).is_some(), "{net}.{key} missing");
        }
        assert_eq!(s[net]["epoch_seconds"].as_array().unwrap().len(), 2);
        assert!(f(&s[net]["seconds_per_epoch"]) > 0.0);
    }
    // 30 steps of a conv net with BN at lr 0.05: well above chance (10%).
    assert!(f(&s["bn"]["final_test_accuracy"]) > 0.5);
    assert_figure(&out, "cnn");
    assert!(report(&out).contains("](cnn.png)") && report(&out).contains("per epoch"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn fold_agrees_with_the_unfolded_networks_and_times_both() {
    let out = temp_dir("fold");
    run_ok(
        &[
            "fold",
            "--mlp-steps",
            "30",
            "--cnn-steps",
            "10",
            "--batch-sizes",
            "1,50",
            "--repeats",
            "1",
            "--images",
            "50",
        ],
        &out,
    );
    let s = json(&out.join("summary.json"));
    // Every BN is folded away: the MLP loses 3 layers, the conv net 2.
    for (net, before, after) in [("mlp", 10, 7), ("cnn", 10, 8)] {
        let n = &s["nets"][net];
        assert_eq!(n["layers_unfolded"], before);
        assert_eq!(n["layers_folded"], after);
        // The folded network computes the unfolded one's function: its error against the f64
        // oracle is of the order of the unfolded f32 network's (see Agreement::within_tolerance).
        assert_eq!(n["within_tolerance"], true, "{net}: {n}");
        assert!(
            f(&n["max_abs_diff"]) < 1e-4 * f(&n["max_abs_logit"]).max(1.0),
            "{net}: {n}"
        );
        assert!(
            n["prediction_mismatches"].as_u64().unwrap() <= 2,
            "{net}: {n}"
        );
        assert_eq!(n["timings"].as_array().unwrap().len(), 2);
    }
    let rows = csv_rows(
        &out.join("timing.csv"),
        "net,batch,images,unfolded_ms,folded_ms,speedup",
    );
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert!(num(&r[3]) > 0.0 && num(&r[4]) > 0.0, "{r:?}");
    }
    assert_figure(&out, "fold");
    assert!(report(&out).contains("](fold.png)"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn sync_bn_equals_one_process_and_per_rank_bn_does_not() {
    let out = temp_dir("sync-bn");
    let args = [
        "sync-bn",
        "--ranks",
        "3",
        "--steps",
        "150",
        "--eval-every",
        "50",
    ];
    run_ok(&args, &out);
    let s = json(&out.join("summary.json"));
    assert_eq!(s["backend"], "threads");
    assert_eq!(
        (s["ranks"].as_u64(), s["per_rank_batch"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(s["steps"].as_u64(), Some(150));
    for v in ["sync", "local", "single"] {
        for key in [
            "final_test_accuracy",
            "best_test_accuracy",
            "steps_to_90",
            "steps_per_second",
        ] {
            assert!(s[v].get(key).is_some(), "{v}.{key}");
        }
    }
    // One step agrees to f32 rounding; 100 steps on a global batch of 6 amplify it to about
    // 1e-4 (a 1e-7 change of the learning rate moves one process as far).
    let d = f(&s["max_rel_param_diff_at_100"]);
    assert!(d <= 1e-3, "{d}");
    assert!(f(&s["local"]["final_test_accuracy"]) < f(&s["single"]["final_test_accuracy"]));
    // Bytes: 3 BN layers of 100 channels, gathered (8 (2C + 1) x 3 ranks) and reduced
    // (8 (2C + 1)), plus the f32 gradients of every parameter (the local run's whole exchange).
    let params = 784 * 100 + 100 + 2 * (100 * 100 + 100) + 100 * 10 + 10 + 3 * 200;
    assert_eq!(f(&s["local"]["bytes_per_step"]), (4 * params) as f64);
    let bn = 3 * 8 * 201 * (3 + 1);
    assert_eq!(f(&s["bytes_per_step"]), (4 * params + bn) as f64);
    let rows = csv_rows(
        &out.join("metrics.csv"),
        "variant,step,test_accuracy,train_loss",
    );
    assert_eq!(rows.len(), 3 * 4);
    assert_figure(&out, "sync_bn");
    assert!(report(&out).contains("| final test accuracy |"));

    // One image per rank: per-rank BN cannot run, synchronised BN can.
    run_ok(
        &[
            "sync-bn",
            "--ranks",
            "3",
            "--per-rank-batch",
            "1",
            "--steps",
            "20",
            "--eval-every",
            "10",
        ],
        &out,
    );
    let s = json(&out.join("summary.json"));
    assert!(s["local"]["skipped"].is_string());
    assert!(f(&s["sync"]["final_test_accuracy"]) > 0.0);
    std::fs::remove_dir_all(&out).unwrap();
}

/// `bnlab why` at tiny settings: 40 steps, measured at 0 and 20, three step sizes.
const WHY_TINY: [&str; 9] = [
    "why",
    "--steps",
    "40",
    "--measure-every",
    "20",
    "--etas",
    "3",
    "--probe",
    "100",
];

#[test]
fn why_measures_drift_ics_and_the_landscape_for_the_three_networks() {
    let out = temp_dir("why");
    run_ok(&WHY_TINY, &out);
    let nets = ["bn", "plain", "noisy_bn"];
    // Evaluations at steps 0, 20, 40; measurements at 0 and 20 (before those steps' updates);
    // three linear layers after the first; three step sizes.
    let evals = csv_rows(
        &out.join("evals.csv"),
        "net,step,train_loss,test_accuracy,change,l1_p15,l1_p50,l1_p85,l2_p15,l2_p50,l2_p85,l3_p15,l3_p50,l3_p85",
    );
    assert_eq!(evals.len(), 9);
    let ics = csv_rows(&out.join("ics.csv"), "net,step,layer,l2,cosine,grad_norm");
    assert_eq!(ics.len(), 3 * 2 * 3);
    let landscape = csv_rows(
        &out.join("landscape.csv"),
        "net,step,eta,loss_here,loss,grad_norm,grad_change",
    );
    assert_eq!(landscape.len(), 3 * 2 * 3);
    let etas: Vec<f64> = landscape[..3].iter().map(|r| num(&r[2])).collect();
    assert_eq!(etas[0], 0.01);
    assert!((etas[1] - 0.1).abs() < 1e-12 && (etas[2] - 1.0).abs() < 1e-12);

    let s = json(&out.join("summary.json"));
    for net in nets {
        let n = &s[net];
        let acc = f(&n["final_test_accuracy"]);
        assert!((0.0..=1.0).contains(&acc), "{net}: {acc}");
        assert!(f(&n["drift"]) >= 0.0);
        for (key, lo, hi) in [("ics_l2", 0.0, f64::INFINITY), ("ics_cosine", -1.0, 1.0)] {
            let per_step = n[key].as_array().unwrap();
            assert_eq!(per_step.len(), 2, "{net}.{key}");
            for (m, step) in per_step.iter().zip([0, 20]) {
                assert_eq!(m["step"], step);
                let layers = m["per_layer"].as_array().unwrap();
                assert_eq!(layers.len(), 3, "{net}.{key}");
                for v in layers {
                    let v = f(v);
                    assert!(v.is_finite() && (lo..=hi).contains(&v), "{net}.{key}: {v}");
                }
            }
        }
        for key in ["loss_range", "grad_predictiveness_range"] {
            let per_step = n[key].as_array().unwrap();
            assert_eq!(per_step.len(), 2, "{net}.{key}");
            for m in per_step {
                let (lo, hi) = (f(&m["min"]), f(&m["max"]));
                // A cross-entropy and a norm: both >= 0.
                assert!(
                    0.0 <= lo && lo <= hi && hi.is_finite(),
                    "{net}.{key}: {lo} {hi}"
                );
            }
        }
        for m in n["beta_smoothness"].as_array().unwrap() {
            let beta = f(&m["beta"]);
            assert!(beta.is_finite() && beta >= 0.0, "{net}: beta {beta}");
        }
    }
    // gamma / sigma per BN layer: three positive numbers with BN, none without.
    for (net, layers) in [("bn", 3), ("noisy_bn", 3), ("plain", 0)] {
        for at in ["first", "last"] {
            let gains = s[net]["bn_gain"][at].as_array().unwrap();
            assert_eq!(gains.len(), layers, "{net}.bn_gain.{at}");
            assert!(gains.iter().all(|g| f(g) > 0.0 && f(g).is_finite()));
        }
    }
    // BN fixes each unit's batch mean and std to its beta and gamma, which 20 steps of SGD
    // barely move; noisy BN redraws a shift from U(-1, 1) per unit every step (mean |change|
    // 2/3) and a scale from U(1, 3): its drift is larger by far.
    let (bn, noisy) = (f(&s["bn"]["drift"]), f(&s["noisy_bn"]["drift"]));
    assert!(noisy > 0.3 && noisy > 10.0 * bn, "noisy {noisy} vs bn {bn}");
    for stem in ["why_drift", "why_ics", "why_landscape"] {
        assert_figure(&out, stem);
    }
    let r = report(&out);
    assert!(r.contains("](why_landscape.png)") && r.contains("Claim 2"));
    // Deterministic for the seed, whatever the threads; and the measurements leave training
    // untouched (they restore every parameter and gradient and never update BN's running
    // statistics): measuring twice as often, on one thread, gives the same rows at the steps
    // both runs measure (0 and 20; evaluations at 0, 20, 40), bit for bit.
    let again = temp_dir("why-1-thread");
    let mut args = WHY_TINY.to_vec();
    args[4] = "10"; // --measure-every
    args.extend(["--threads", "1"]);
    run_ok(&args, &again);
    let rows = |dir: &Path, file: &str, keep: &dyn Fn(&[&str]) -> bool| -> Vec<String> {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .filter(|l| keep(&l.split(',').collect::<Vec<_>>()))
            .map(str::to_owned)
            .collect()
    };
    // evals.csv without train_loss and change (averages over the steps since the last
    // evaluation, which differ with the spacing).
    let evals = |dir: &Path| -> Vec<String> {
        rows(dir, "evals.csv", &|r| ["0", "20", "40"].contains(&r[1]))
            .iter()
            .map(|l| {
                let r: Vec<&str> = l.split(',').collect();
                [&r[..2], &r[3..4], &r[5..]].concat().join(",")
            })
            .collect()
    };
    assert_eq!(evals(&out).len(), 9);
    assert_eq!(evals(&out), evals(&again));
    for file in ["ics.csv", "landscape.csv"] {
        let keep = |r: &[&str]| ["0", "20"].contains(&r[1]);
        let (a, b) = (rows(&out, file, &keep), rows(&again, file, &keep));
        assert_eq!(a.len(), 18, "{file}");
        assert_eq!(a, b, "{file}");
    }
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&again).unwrap();
}

#[test]
fn why_on_the_conv_net_measures_its_two_hidden_layers() {
    let out = temp_dir("why-cnn");
    run_ok(
        &[
            "why",
            "--arch",
            "cnn",
            "--steps",
            "10",
            "--measure-every",
            "5",
            "--etas",
            "2",
            "--probe",
            "50",
        ],
        &out,
    );
    // Two ReLU layers (the conv blocks) and two shifted layers (conv 2, the linear layer).
    let evals = csv_rows(
        &out.join("evals.csv"),
        "net,step,train_loss,test_accuracy,change,l1_p15,l1_p50,l1_p85,l2_p15,l2_p50,l2_p85",
    );
    assert_eq!(evals.len(), 3 * 3);
    let s = json(&out.join("summary.json"));
    assert_eq!(s["config"]["arch"], "cnn");
    for net in ["bn", "plain", "noisy_bn"] {
        assert_eq!(s[net]["ics_layers"], serde_json::json!([2, 3]), "{net}");
        for m in s[net]["ics_cosine"].as_array().unwrap() {
            for c in m["per_layer"].as_array().unwrap() {
                assert!((-1.0..=1.0).contains(&f(c)), "{net}: {c}");
            }
        }
    }
    // BN2d's sigma is per channel (over samples and positions): finite and positive.
    let gains = s["bn"]["bn_gain"]["first"].as_array().unwrap();
    assert_eq!(gains.len(), 2);
    assert!(gains.iter().all(|g| f(g).is_finite() && f(g) > 0.0));
    assert_figure(&out, "why_drift");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn all_quick_runs_every_experiment_and_combines_the_reports() {
    let out = temp_dir("all");
    run_ok(&["all", "--quick"], &out);
    let sections = [
        "fig1",
        "depth",
        "lr-sweep",
        "batch-size",
        "cnn",
        "fold",
        "sync-bn",
        "small-batch",
        "why",
    ];
    for (name, stem) in [
        ("fig1", "fig1"),
        ("depth", "depth"),
        ("lr-sweep", "lr_sweep"),
        ("batch-size", "batch_size"),
        ("cnn", "cnn"),
        ("fold", "fold"),
        ("sync-bn", "sync_bn"),
        ("small-batch", "small_batch"),
        ("why", "why_landscape"),
    ] {
        let dir = out.join(name);
        assert!(dir.join("summary.json").is_file(), "{name}/summary.json");
        assert_figure(&dir, stem);
    }
    let combined = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in sections {
        assert!(
            combined.contains(&format!("| `bnlab {name}` | `{name}/` |")),
            "{name}"
        );
    }
    // Headings one level down; every figure link points into its experiment's folder and exists.
    assert!(combined.contains("\n## Figure 1 of the Batch Normalization paper"));
    let links: Vec<&str> = combined
        .split("](")
        .skip(1)
        .map(|r| &r[..r.find(')').unwrap()])
        .filter(|l| l.ends_with(".png"))
        .collect();
    assert!(links.len() >= 11, "{links:?}");
    for l in &links {
        assert!(out.join(l).is_file(), "broken link {l}");
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for l in &links {
        assert!(
            html.contains(&format!("<img src=\"{l}\"")),
            "{l} not in index.html"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn results_depend_on_the_seed_only_not_on_threads() {
    // Everything but the timing column, from runs with 1 and 2 threads and one with another seed.
    let rows = |threads: &str, seed: &str| {
        let out = temp_dir(&format!("det-{threads}-{seed}"));
        run_ok(
            &[
                "lr-sweep",
                "--lrs",
                "0.1,0.5",
                "--steps",
                "25",
                "--log-every",
                "25",
                "--threads",
                threads,
                "--seed",
                seed,
            ],
            &out,
        );
        let header = "activation,net,lr,test_accuracy,diverged,diverged_at,non_finite,nan_outputs,spiked_at,initial_loss,max_loss,final_loss,steps_done,train_seconds";
        let r: Vec<Vec<String>> = csv_rows(&out.join("results.csv"), header)
            .into_iter()
            .map(|mut r| {
                r.pop();
                r
            })
            .collect();
        std::fs::remove_dir_all(&out).unwrap();
        r
    };
    let one = rows("1", "1");
    assert_eq!(one, rows("2", "1"));
    assert_ne!(
        one,
        rows("2", "2"),
        "another seed gives other weights and batches"
    );
}

/// Runs bnlab with `RUST_BACKTRACE=1`, expects a failure; returns stderr after checking it
/// is one line, without a panic or a backtrace.
fn user_error(args: &[&str]) -> String {
    let o = bnlab()
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(!err.contains("backtrace"), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    err
}

#[test]
fn bad_options_are_one_line_errors_quoting_the_value() {
    let out = temp_dir("bad-exp");
    let o = out.to_str().unwrap();
    for (args, says) in [
        (&["depth", "--depths", "0"][..], "--depths = 0: "),
        (&["depth", "--depths", "3,1000"], "--depths = 1000: "),
        (&["depth", "--depths", "3", "1000"], "--depths = 1000: "),
        (
            &["depth", "--lr", "-1"],
            "--lr = -1: must be finite and > 0",
        ),
        (&["depth", "--threads", "0"], "--threads = 0: "),
        (&["lr-sweep", "--lrs", "0"], "--lrs = 0: "),
        (&["lr-sweep", "--lrs", "0.1", "-2"], "--lrs = -2: "),
        (&["lr-sweep", "--batch-size", "1"], "--batch-size = 1: "),
        (
            &["batch-size", "--batch-sizes", "4,1"],
            "--batch-sizes = 1: ",
        ),
        (
            &["batch-size", "--batch-sizes", "2000"],
            "--batch-sizes = 2000: ",
        ),
        (&["cnn", "--epochs", "0"], "--epochs = 0: "),
        (
            &["small-batch", "--virtual-batch", "5"],
            "--virtual-batch = 5: ",
        ),
        (&["small-batch", "--groups", "3"], "--groups = 3: "),
        (&["small-batch", "--rmax", "0.5"], "--rmax = 0.5: "),
        (
            &["small-batch", "--sync-batches", "0"],
            "--sync-batches = 0: ",
        ),
        (&["fold", "--batch-sizes", "0"], "--batch-sizes = 0: "),
        (&["fold", "--cnn-steps", "0"], "--cnn-steps = 0: "),
        (&["all", "--threads", "0"], "--threads = 0: "),
        (&["fig1", "--init-std", "-0.5"], "--init-std = -0.5: "),
        (
            &["batch-size", "--examples", "10", "--batch-sizes", "64"],
            "--examples = 10: ",
        ),
        (
            &["bench", "--threads", "0"],
            "--threads = 0: must be at least 1",
        ),
        (
            &["bench", "--samples", "0"],
            "--samples = 0: must be at least 1",
        ),
    ] {
        let mut all = args.to_vec();
        if args[0] != "bench" {
            all.extend(["--out", o]);
        }
        let err = user_error(&all);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn list_options_take_commas_or_spaces() {
    let help = bnlab().args(["depth", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("`3,5` or `3 5`"), "{help}");
    // Both spellings reach validation with both values (the second is out of range).
    for args in [["--depths", "3,101", ""], ["--depths", "3", "101"]] {
        let args: Vec<&str> = ["depth"]
            .into_iter()
            .chain(args.into_iter().filter(|a| !a.is_empty()))
            .collect();
        let err = user_error(&args);
        assert!(err.contains("--depths = 101"), "{err}");
    }
}

#[test]
fn an_unwritable_out_fails_before_training_in_every_experiment() {
    // A file where the folder should be: creating the folder fails, whoever runs the test (a
    // permission test would pass as root).
    let file = temp_dir("out-is-a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let o = file.to_str().unwrap();
    for exp in [
        "fig1",
        "depth",
        "lr-sweep",
        "batch-size",
        "cnn",
        "fold",
        "sync-bn",
        "small-batch",
        "why",
        "all",
    ] {
        let err = user_error(&[exp, "--out", o, "--data", "/nonexistent/mnist"]);
        // The output folder is checked first: the data folder (which does not exist) is never
        // reached, nor is training.
        assert!(err.contains("cannot write there"), "{exp}: {err}");
        assert!(err.contains(o), "{exp}: {err}");
        assert!(!err.contains("mnist"), "{exp}: {err}");
        // The operating system's reason once, not twice.
        let reason = err.rsplit(": ").next().unwrap().trim();
        assert_eq!(err.matches(reason).count(), 1, "{exp}: {err}");
    }
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn data_errors_name_the_missing_file() {
    let out = temp_dir("missing-data");
    let err = user_error(&[
        "depth",
        "--out",
        out.to_str().unwrap(),
        "--data",
        "/nonexistent/mnist",
    ]);
    assert!(
        err.contains("neither train-images-idx3-ubyte.gz nor train-images-idx3-ubyte"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bench_measures_the_ops_and_kernel_path_asked_for() {
    for isa in batchnorm::Isa::available() {
        let o = bnlab()
            .args([
                "bench",
                "--shapes",
                "4,3,5",
                "--threads",
                "1",
                "--samples",
                "1",
            ])
            .args([
                "--ops",
                "backward,forward_eval",
                "--isa",
                isa.name(),
                "--json",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        let ops: Vec<_> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
        assert_eq!(ops, ["backward", "forward_eval"].repeat(2), "2 layouts");
        assert!(rows.iter().all(|r| r["isa"] == isa.name()), "{rows:?}");
    }
    for (args, says) in [
        (
            ["--ops", "forward"],
            "unknown op \"forward\": use one of forward_train",
        ),
        (["--isa", "sse9"], "unknown kernel path \"sse9\""),
    ] {
        let o = bnlab()
            .args(["bench", "--samples", "1"])
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn bench_reports_every_op_against_its_yardstick_hot_and_cold() {
    for (flag, cache) in [(None, "hot"), (Some("--cold"), "cold")] {
        let mut cmd = bnlab();
        cmd.args([
            "bench",
            "--shapes",
            "4,3,5,5",
            "--threads",
            "1",
            "--samples",
            "3",
        ])
        .arg("--json");
        cmd.args(flag);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        let ops = [
            "forward_train",
            "forward_eval",
            "backward",
            "forward_train_relu",
            "forward_eval_relu",
            "backward_relu",
            "forward_train_add_relu",
            "backward_add_relu",
        ];
        assert_eq!(rows.len(), 16, "8 ops x 2 layouts");
        for (r, op) in rows.iter().zip(ops.iter().chain(&ops)) {
            assert_eq!(r["op"], *op);
            let yard = if op.starts_with("backward") {
                "add"
            } else {
                "copy"
            };
            assert_eq!(r["yardstick"], yard);
            assert_eq!(r["cache"], cache);
            assert_eq!(r["pages"], "base");
            assert_eq!(r["shape"], serde_json::json!([4, 3, 5, 5]));
            let (ms, yard_ms) = (
                r["median_ms"].as_f64().unwrap(),
                r["yardstick_ms"].as_f64().unwrap(),
            );
            assert!(ms > 0.0 && yard_ms > 0.0, "{r}");
            assert!((r["ratio"].as_f64().unwrap() - ms / yard_ms).abs() < 1e-9 * ms / yard_ms);
            let (read_ms, floor) = (r["read_ms"].as_f64().unwrap(), r["floor"].as_f64().unwrap());
            let streamed_ms = r["streamed_ms"].as_f64().unwrap();
            assert!(read_ms > 0.0 && streamed_ms > 0.0, "{r}");
            let expected = if op.starts_with("forward_eval") {
                1.0
            } else {
                (read_ms + streamed_ms) / yard_ms
            };
            assert!((floor - expected).abs() < 1e-9 * expected, "{r}");
            // A fused op carries its plain op's median, measured alternately; a plain one not.
            if ops[..3].contains(op) {
                assert!(r["plain_ms"].is_null() && r["vs_plain"].is_null(), "{r}");
            } else {
                let plain_ms = r["plain_ms"].as_f64().unwrap();
                assert!(plain_ms > 0.0, "{r}");
                let vs_plain = r["vs_plain"].as_f64().unwrap();
                assert!((vs_plain - ms / plain_ms).abs() < 1e-9 * vs_plain, "{r}");
            }
        }
    }
}

#[test]
fn bench_on_huge_pages_reports_them_or_says_why_not() {
    // 1 MiB per buffer (no whole huge page inside: the flag must still work) and 12 MiB.
    for shape in ["4,64,32,32", "48,64,32,32"] {
        let o = bnlab()
            .args([
                "bench",
                "--shapes",
                shape,
                "--threads",
                "1",
                "--samples",
                "3",
            ])
            .args(["--layout", "nhwc", "--json", "--huge-pages"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        if o.status.success() {
            let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
            let rows = rows.as_array().unwrap();
            assert_eq!(rows.len(), 8, "8 ops");
            assert!(rows.iter().all(|r| r["pages"] == "huge"), "{rows:?}");
        } else {
            // A machine without transparent huge pages: a clear error, nothing measured.
            assert!(err.contains("huge pages"), "{err}");
            assert!(o.stdout.is_empty());
        }
    }
}
