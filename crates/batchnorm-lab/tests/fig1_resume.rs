//! Checkpoints of `bnlab fig1`: a run crashed at every point of a checkpoint's save (by
//! `BNLAB_FAULT_INJECT`, so the test depends on no timing), then killed with SIGKILL, and
//! resumed each time, ends with bitwise the same weights and metrics as an uninterrupted run; resuming with other settings or from a damaged checkpoint is a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batchnorm_nn::safetensors::Dtype;
use batchnorm_nn::state_dict::StateDict;
use serde_json::Value;

/// Short but with several evaluations, checkpoints between evaluations and several epochs'
/// worth of nothing: 600 steps of 60 images, an evaluation every 100, a checkpoint every 25
/// (so some checkpoints fall between evaluations, with a partial loss window).
const STEPS: usize = 600;
const ARGS: [&str; 7] = [
    "fig1",
    "--steps",
    "600",
    "--eval-every",
    "100",
    "--checkpoint-every",
    "25",
];

fn bnlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bnlab"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bnlab-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs to completion; panics with bnlab's stderr on failure.
fn run_ok(args: &[&str], out: &Path, extra: &[&str]) {
    let o = bnlab()
        .stderr(Stdio::piped())
        .args(args)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bnlab {args:?} {extra:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs and expects a failure; returns stderr.
fn run_err(out: &Path, extra: &[&str]) -> String {
    let o = bnlab()
        .stderr(Stdio::piped())
        .args(ARGS)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{extra:?} should fail");
    assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
    err
}

/// The step a network's committed checkpoint is at (0 if it has none).
fn committed_step(dir: &Path, net: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{net}.json")))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .map_or(0, |s| s as usize)
}

/// Starts bnlab (resuming from `ckpt` if it has a checkpoint) with
/// `BNLAB_FAULT_INJECT=<fault>`, which aborts it inside that checkpoint's save. Returns the
/// networks' committed steps afterwards.
fn crash_at(out: &Path, ckpt: &Path, fault: &str) -> (usize, usize) {
    let mut cmd = bnlab();
    cmd.args(ARGS).args(["--threads", "1", "--out"]).arg(out);
    if ckpt.join("bn.json").exists() {
        cmd.arg("--resume").arg(ckpt);
    }
    let status = cmd.env("BNLAB_FAULT_INJECT", fault).status().unwrap();
    assert!(!status.success(), "{fault}: the run did not crash");
    (committed_step(ckpt, "bn"), committed_step(ckpt, "plain"))
}

/// Resumes bnlab and SIGKILLs it at an arbitrary moment after the plain network's next commit
/// (whatever it is doing then); `false` if it finished first.
fn start_and_kill(out: &Path, ckpt: &Path) -> bool {
    let mut child = bnlab()
        .args(ARGS)
        .arg("--out")
        .arg(out)
        .arg("--resume")
        .arg(ckpt)
        .spawn()
        .unwrap();
    let before = committed_step(ckpt, "plain");
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_step(ckpt, "plain") == before {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "no checkpoint in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush, no clean-up runs
    !child.wait().unwrap().success()
}

/// summary.json without the timing fields (wall clock differs between runs).
fn summary_without_timings(out: &Path) -> Value {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    for k in ["wall_seconds", "load_seconds", "steps_per_second"] {
        obj.remove(k).unwrap();
    }
    for net in ["bn", "plain"] {
        let n = obj[net].as_object_mut().unwrap();
        for k in ["train_seconds", "eval_seconds", "steps_per_second"] {
            n.remove(k).unwrap();
        }
    }
    v
}

fn final_weights(out: &Path, net: &str) -> Vec<u8> {
    let f = out
        .join("checkpoint")
        .join(format!("{net}-{STEPS:08}.safetensors"));
    std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}

#[test]
fn killed_and_resumed_run_is_bitwise_identical_to_an_uninterrupted_one() {
    let reference = temp_dir("reference");
    run_ok(&ARGS, &reference, &[]);
    // Checkpointing itself changes nothing: the same run without it gives the same metrics.
    let plain_run = temp_dir("no-checkpoints");
    run_ok(&ARGS[..5], &plain_run, &[]);
    assert_eq!(
        std::fs::read(reference.join("metrics.csv")).unwrap(),
        std::fs::read(plain_run.join("metrics.csv")).unwrap()
    );

    let out = temp_dir("killed");
    let ckpt = out.join("checkpoint");
    // Crashes at every point of a save, on both networks, with and without an evaluation in
    // the checkpoint (every 25 steps, evaluations every 100), each run resuming the last. With
    // one thread the networks train one after the other, so each crash lands where it says.
    let mut crashes = Vec::new();
    for fault in [
        "plain:0:json",
        "bn:25:tmp",
        "bn:100:weights",
        "bn:150:json",
        "plain:175:tmp",
        "plain:300:weights",
    ] {
        let steps = crash_at(&out, &ckpt, fault);
        let (net, rest) = fault.split_once(':').unwrap();
        let (step, point) = rest.split_once(':').unwrap();
        let step: usize = step.parse().unwrap();
        // The crashed network's committed checkpoint is the new one only once its JSON is.
        let committed = if net == "bn" { steps.0 } else { steps.1 };
        let want = if point == "json" { step } else { step - 25 };
        if step > 0 {
            assert_eq!(committed, want, "{fault}: {steps:?}");
        }
        crashes.push((fault, steps));
    }
    // And a real SIGKILL at whatever moment it lands.
    let killed = start_and_kill(&out, &ckpt);
    eprintln!("crashes {crashes:?}, then a SIGKILL (landed: {killed})");
    run_ok(&ARGS, &out, &["--resume", ckpt.to_str().unwrap()]);

    assert_eq!(
        std::fs::read_to_string(reference.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(out.join("metrics.csv")).unwrap(),
        "metrics differ after {crashes:?}"
    );
    assert_eq!(
        summary_without_timings(&reference),
        summary_without_timings(&out)
    );
    for net in ["bn", "plain"] {
        assert!(
            final_weights(&reference, net) == final_weights(&out, net),
            "{net} weights differ after {crashes:?}"
        );
    }
    // Only the final checkpoint is left: no stale weights, no temporaries.
    let mut left: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "bn-00000600.safetensors",
            "bn.json",
            "plain-00000600.safetensors",
            "plain.json"
        ]
    );
    for d in [reference, plain_run, out] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn checkpoint_weights_are_a_pytorch_state_dict() {
    let out = temp_dir("state-dict");
    run_ok(
        &["fig1", "--steps", "30", "--eval-every", "30"],
        &out,
        &["--checkpoint-every", "30"],
    );
    let sd = StateDict::read(&out.join("checkpoint/bn-00000030.safetensors")).unwrap();
    // nn.Sequential(Linear, BatchNorm1d, Sigmoid, Linear, BatchNorm1d, Sigmoid, Linear,
    // BatchNorm1d, Sigmoid, Linear): indices 0, 1, 3, 4, 6, 7, 9 hold state.
    let mut want = Vec::new();
    for (i, width_in, width) in [(0, 784, 100), (3, 100, 100), (6, 100, 100)] {
        want.push((format!("{i}.weight"), vec![width, width_in]));
        want.push((format!("{i}.bias"), vec![width]));
        for k in ["weight", "bias", "running_mean", "running_var"] {
            want.push((format!("{}.{k}", i + 1), vec![width]));
        }
        want.push((format!("{}.num_batches_tracked", i + 1), vec![]));
    }
    want.push(("9.weight".into(), vec![10, 100]));
    want.push(("9.bias".into(), vec![10]));
    want.sort();
    let got: Vec<(String, Vec<usize>)> = sd
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec()))
        .collect();
    assert_eq!(got, want);
    let counter = &sd.tensors["1.num_batches_tracked"];
    assert_eq!(counter.dtype(), Dtype::I64);
    assert_eq!(
        counter.to_i64_vec(),
        Some(vec![30]),
        "one BN update per step"
    );
    assert_eq!(sd.tensors["0.weight"].dtype(), Dtype::F32);
    assert_eq!(sd.metadata.get("format").map(String::as_str), Some("pt"));
    let plain = StateDict::read(&out.join("checkpoint/plain-00000030.safetensors")).unwrap();
    let keys: Vec<&str> = plain.tensors.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight", "6.bias", "6.weight"]
    );
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn resuming_with_other_settings_or_a_damaged_checkpoint_is_an_error() {
    let out = temp_dir("refuse");
    let args = ["fig1", "--steps", "40", "--eval-every", "20"];
    run_ok(&args, &out, &["--checkpoint-every", "20"]);
    let ckpt = out.join("checkpoint");
    let ck = ckpt.to_str().unwrap();

    // Other settings: refused, naming each differing option.
    let err = run_err(&out, &["--resume", ck]);
    assert!(err.contains("other settings"), "{err}");
    assert!(err.contains("--steps: checkpoint 40, now 600"), "{err}");
    assert!(
        err.contains("--eval-every: checkpoint 20, now 100"),
        "{err}"
    );
    assert!(
        !err.contains("--checkpoint-every"),
        "the interval may change: {err}"
    );

    // The same settings with another thread count, output folder and interval: accepted.
    let elsewhere = temp_dir("refuse-ok");
    run_ok(
        &args,
        &elsewhere,
        &["--resume", ck, "--threads", "1", "--checkpoint-every", "7"],
    );

    // No checkpoint there.
    let empty = temp_dir("refuse-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = run_err(&out, &["--resume", empty.to_str().unwrap()]);
    assert!(err.contains("no checkpoint"), "{err}");

    // Damaged weights: a flipped byte is caught by the recorded hash, naming the file.
    let w = ckpt.join("bn-00000040.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&w, &bytes).unwrap();
    let o = bnlab()
        .stderr(Stdio::piped())
        .args(args)
        .arg("--out")
        .arg(&out)
        .args(["--resume", ck])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("bn-00000040.safetensors") && err.contains("hash"),
        "{err}"
    );
    for d in [out, empty, elsewhere] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn checkpoint_folders_are_never_replaced_nor_half_used() {
    let out = temp_dir("folders");
    let args = ["fig1", "--steps", "40", "--eval-every", "20"];
    run_ok(&args, &out, &["--checkpoint-every", "20"]);
    let ckpt = out.join("checkpoint");
    let ck = ckpt.to_str().unwrap();
    let bn_json = std::fs::read(ckpt.join("bn.json")).unwrap();
    let summary = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    };
    let first = summary(&out);

    // A new checkpointed run into the same folder refuses, saying how to resume; the
    // checkpoint is untouched.
    let o = bnlab()
        .stderr(Stdio::piped())
        .args(args)
        .arg("--out")
        .arg(&out)
        .args(["--checkpoint-every", "20"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("already holds a checkpoint") && err.contains(&format!("--resume {ck}")),
        "{err}"
    );
    assert_eq!(std::fs::read(ckpt.join("bn.json")).unwrap(), bn_json);

    // Resuming the finished run trains nothing and reports the original run's timing, not
    // the few milliseconds of this session.
    let again = temp_dir("folders-again");
    run_ok(&args, &again, &["--resume", ck]);
    let (w0, w1) = (
        first["wall_seconds"].as_f64().unwrap(),
        summary(&again)["wall_seconds"].as_f64().unwrap(),
    );
    // The last checkpoint is saved after the last step's evaluation, before the outputs.
    assert!(
        w1 <= w0 && w1 >= 0.5 * w0,
        "original {w0} s, resumed {w1} s"
    );
    for net in ["bn", "plain"] {
        assert_eq!(
            first[net]["train_seconds"],
            summary(&again)[net]["train_seconds"],
            "{net}"
        );
    }

    // One network's checkpoint missing: an error naming it, not a silent restart from step 0.
    std::fs::remove_file(ckpt.join("plain.json")).unwrap();
    let o = bnlab()
        .stderr(Stdio::piped())
        .args(args)
        .arg("--out")
        .arg(&out)
        .args(["--resume", ck])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("holds bn.json but not plain.json"), "{err}");
    for d in [out, again] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
