//! Checkpoints of `bnlab fig1`: a run killed with SIGKILL (repeatedly, as soon as a checkpoint
//! write is seen in progress) and resumed ends with bitwise the same weights and metrics as an
//! uninterrupted run; resuming with other settings or from a damaged checkpoint is a clear error.

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

/// Whether a checkpoint write is in progress (a temporary exists).
fn writing(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
    })
}

/// How one kill went.
#[derive(Debug)]
struct Kill {
    /// A temporary existed when the SIGKILL was sent.
    mid_write: bool,
    /// The networks' committed steps after the kill.
    steps_after: (usize, usize),
}

/// Starts bnlab (resuming from `ckpt` if it has a checkpoint), waits until it has committed a
/// checkpoint past `after`, then SIGKILLs it at the first moment a checkpoint write is in
/// progress (or after a short wait). `None` if the run finished before it could be killed.
fn start_and_kill(out: &Path, ckpt: &Path, after: usize) -> Option<Kill> {
    let mut cmd = bnlab();
    cmd.args(ARGS).arg("--out").arg(out);
    if ckpt.join("bn.json").exists() || ckpt.join("plain.json").exists() {
        cmd.arg("--resume").arg(ckpt);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait for a new commit, then for a write in progress (up to 300 ms, then kill anyway).
    let mut hunt_until = None;
    let mut mid_write = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "bnlab made no checkpoint in 60 s"
        );
        match hunt_until {
            None => {
                if committed_step(ckpt, "bn").max(committed_step(ckpt, "plain")) >= after {
                    hunt_until = Some(Instant::now() + Duration::from_millis(300));
                }
            }
            Some(t) => {
                if writing(ckpt) {
                    mid_write = true;
                    break;
                }
                if Instant::now() > t {
                    break;
                }
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush, no clean-up runs
    let status = child.wait().unwrap();
    if status.success() {
        return None; // it finished between the last poll and the kill
    }
    Some(Kill {
        mid_write,
        steps_after: (committed_step(ckpt, "bn"), committed_step(ckpt, "plain")),
    })
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
    let mut kills = Vec::new();
    // Kill points spread over the run: each round waits for a checkpoint at least 60 steps past
    // the last one, so kills land before and after evaluations and with partial loss windows.
    let mut after = 1;
    for _ in 0..4 {
        match start_and_kill(&out, &ckpt, after) {
            Some(k) => {
                // The kill left a usable checkpoint behind (checked bitwise by the end result).
                let done = k.steps_after.0.max(k.steps_after.1);
                assert!(done >= after, "{k:?}");
                after = done + 60;
                kills.push(k);
            }
            None => break,
        }
        if after >= STEPS {
            break;
        }
    }
    assert!(!kills.is_empty(), "no run could be killed mid-run");
    assert!(
        kills
            .iter()
            .any(|k| k.steps_after.0.min(k.steps_after.1) < STEPS),
        "every kill came after the end: {kills:?}"
    );
    let mid_write = kills.iter().filter(|k| k.mid_write).count();
    eprintln!(
        "{} kills, {mid_write} during a checkpoint write: {kills:?}",
        kills.len()
    );
    // Writes take milliseconds (fsync) and are polled every few microseconds: most kills land
    // inside one. At least one must, or the property "killed at any moment" is untested.
    assert!(mid_write >= 1, "no kill landed during a write: {kills:?}");
    run_ok(&ARGS, &out, &["--resume", ckpt.to_str().unwrap()]);

    assert_eq!(
        std::fs::read_to_string(reference.join("metrics.csv")).unwrap(),
        std::fs::read_to_string(out.join("metrics.csv")).unwrap(),
        "metrics differ after {kills:?}"
    );
    assert_eq!(
        summary_without_timings(&reference),
        summary_without_timings(&out)
    );
    for net in ["bn", "plain"] {
        assert!(
            final_weights(&reference, net) == final_weights(&out, net),
            "{net} weights differ after {kills:?}"
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
