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
    ];
    for (name, stem) in [
        ("fig1", "fig1"),
        ("depth", "depth"),
        ("lr-sweep", "lr_sweep"),
        ("batch-size", "batch_size"),
        ("cnn", "cnn"),
        ("fold", "fold"),
        ("sync-bn", "sync_bn"),
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
    assert!(links.len() >= 7, "{links:?}");
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
        "all",
    ] {
        let t = std::time::Instant::now();
        let err = user_error(&[exp, "--out", o, "--data", "/nonexistent/mnist"]);
        // The output folder is checked first: the data folder (which does not exist) is never
        // reached, nor is training.
        assert!(err.contains("cannot write there"), "{exp}: {err}");
        assert!(err.contains(o), "{exp}: {err}");
        assert!(!err.contains("mnist"), "{exp}: {err}");
        // The operating system's reason once, not twice.
        let reason = err.rsplit(": ").next().unwrap().trim();
        assert_eq!(err.matches(reason).count(), 1, "{exp}: {err}");
        assert!(t.elapsed().as_secs() < 30, "{exp} took {:?}", t.elapsed());
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
