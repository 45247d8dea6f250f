//! Runs the `bnlab` binary end to end on real MNIST with few steps and checks every output file.

use std::path::PathBuf;
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

#[test]
fn fig1_short_run_writes_well_formed_outputs() {
    let out = temp_dir("fig1");
    let status = bnlab()
        .args(["fig1", "--steps", "200", "--eval-every", "100", "--out"])
        .arg(&out)
        .status()
        .expect("bnlab runs");
    assert!(status.success(), "bnlab fig1 failed: {status}");

    // metrics.csv: header, then one row per network per evaluation (steps 0, 100, 200).
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("net,step,train_loss,train_accuracy,test_accuracy,p15,p50,p85")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(r.len(), 8, "{r:?}");
        assert!(r[0] == "bn" || r[0] == "plain");
        let acc: f64 = r[4].parse().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let p: Vec<f64> = r[5..].iter().map(|v| v.parse().unwrap()).collect();
        assert!(
            p[0] <= p[1] && p[1] <= p[2],
            "percentiles out of order: {p:?}"
        );
        if r[1] == "0" {
            assert_eq!(r[2], "", "no training loss before training");
        } else {
            assert!(r[2].parse::<f64>().unwrap() > 0.0);
        }
    }
    let steps: Vec<&str> = rows.iter().filter(|r| r[0] == "bn").map(|r| r[1]).collect();
    assert_eq!(steps, ["0", "100", "200"]);

    // summary.json: the keys outside checks read.
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for net in ["bn", "plain"] {
        let n = &summary[net];
        for key in [
            "final_test_accuracy",
            "best_test_accuracy",
            "steps_to_90",
            "steps_to_95",
        ] {
            assert!(n.get(key).is_some(), "summary.{net}.{key} missing");
        }
        let fin = n["final_test_accuracy"].as_f64().unwrap();
        assert!(fin >= 0.0 && n["best_test_accuracy"].as_f64().unwrap() >= fin);
        assert!(n["steps_to_95"].is_null() || n["steps_to_95"].is_u64());
    }
    // 200 steps at lr 0.01: the BN network is well above chance (10%); the plain one barely moves.
    assert!(summary["bn"]["final_test_accuracy"].as_f64().unwrap() > 0.5);
    assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);
    assert!(summary["steps_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["config"]["steps"], 200);
    assert_eq!(summary["config"]["batch_size"], 60);
    assert_eq!(summary["config"]["eval_every"], 100);

    let png = std::fs::read(out.join("fig1.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let svg = std::fs::read_to_string(out.join("fig1.svg")).unwrap();
    let body = svg.trim_start().trim_start_matches(|c| c != '<');
    assert!(
        body.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("](fig1.png)") && report.contains("steps to 90%"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn help_documents_every_option() {
    let out = bnlab().args(["fig1", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--steps",
        "--lr",
        "--batch-size",
        "--init-std",
        "--seed",
        "--eval-every",
        "--threads",
        "--out",
        "--checkpoint-every",
        "--resume",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}

#[test]
fn bad_options_are_errors_not_panics() {
    for args in [
        &["fig1", "--batch-size", "1"][..],
        &["fig1", "--lr", "-1"],
        &["fig1", "--threads", "0"],
        &["fig1", "--steps", "abc"],
        &["fig1", "--data", "/nonexistent/mnist"],
    ] {
        let out = bnlab()
            .args(args)
            .arg("--out")
            .arg(temp_dir("bad"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(!err.is_empty());
        // Parse errors and our own: one line each.
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}
