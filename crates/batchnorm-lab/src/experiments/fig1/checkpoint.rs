//! Checkpoints of a fig1 run (`--checkpoint-every N`, `--resume DIR`): enough state that a
//! resumed run ends with bitwise the same weights and metrics as an uninterrupted one.
//!
//! A checkpoint folder holds, for each network (`bn`, `plain`) on its own (the two train on
//! separate threads and never wait for each other):
//!
//! - `<net>-<step>.safetensors`: the network's state dict with PyTorch's `nn.Sequential` names
//!   (`0.weight`, `1.running_mean`, `1.num_batches_tracked`, ...), loadable with
//!   `load_state_dict(strict=True)`. Plain SGD without momentum has no optimiser state.
//! - `<net>.json`: everything else at the end of that step, and the commit point: `format`,
//!   `step`, the `config` that fixes the trajectory (refused on resume if it differs), the
//!   weights file's name, length and FNV-1a hash, the batch order (`sampler`: generator state,
//!   the current epoch's permutation, the position in it), the running sums since the last
//!   evaluation (`window`), the evaluations so far (`evals`) and the seconds spent.
//!   Floats are strings in Rust's shortest round-trip form, so they parse back bit for bit
//!   (and NaN, the step-0 training loss, fits).
//!
//! Saving writes the weights under a new name, then replaces `<net>.json`, each with
//! [`write_atomic`]; only then are the older weights removed. A process killed at any moment
//! leaves a `<net>.json` naming complete weights: the previous checkpoint or the new one.
//!
//! Every checkpointed run saves both networks at step 0, before training, so a folder holds
//! both networks' checkpoints and a missing one is an error, not a silent restart.
//!
//! For the crash tests, `BNLAB_FAULT_INJECT=<net>:<step>:<point>` aborts the process (as a
//! SIGKILL would: no destructor, no flush) while saving that checkpoint, at `tmp` (half the
//! weights written to their temporary file), `weights` (weights committed, JSON not yet) or
//! `json` (JSON committed, older weights not yet removed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use batchnorm_nn::state_dict::StateDict;
use batchnorm_nn::{NnError, Sequential};
use serde_json::{json, Value};

use super::network::Variant;
use super::train::EvalRecord;
use super::{Config, LabError};
use crate::atomic_write::{sync_dir, temp_path, write_atomic};
use crate::experiments::sampler::{order_seed, Sampler, SamplerState};
use crate::experiments::trainer::Trainer;

/// The `format` field of every checkpoint JSON this version writes and reads.
pub const FORMAT: &str = "bnlab-fig1-checkpoint/2";

/// What can go wrong saving or resuming a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A file is not a checkpoint this version can resume.
    #[error("{path}: not a usable fig1 checkpoint: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The checkpoint belongs to a run with other settings.
    #[error(
        "{path}: the checkpoint was made with other settings ({}); resume with the same \
         settings, or start afresh without --resume",
        diffs.join(", ")
    )]
    ConfigMismatch {
        /// The checkpoint JSON.
        path: PathBuf,
        /// One `--option: checkpoint X, now Y` per difference.
        diffs: Vec<String>,
    },
    /// The weights could not be saved or do not fit the network.
    #[error("{path}: {source}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// The training stack's error (naming the key for a state-dict mismatch); boxed, as
        /// it is large.
        source: Box<NnError>,
    },
    /// The folder holds no checkpoint of either network.
    #[error("{dir}: no checkpoint to resume from (neither bn.json nor plain.json)")]
    Missing {
        /// The folder given to `--resume`.
        dir: PathBuf,
    },
    /// The folder holds one network's checkpoint but not the other's (every checkpointed run
    /// saves both at step 0, before training).
    #[error(
        "{}: holds {present}.json but not {absent}.json, so the run cannot continue \
         bitwise; remove the folder to start afresh",
        dir.display()
    )]
    Incomplete {
        /// The folder given to `--resume`.
        dir: PathBuf,
        /// The network whose checkpoint is there.
        present: &'static str,
        /// The network whose checkpoint is missing.
        absent: &'static str,
    },
    /// A new run would replace the checkpoint of an earlier run.
    #[error(
        "{} already holds a checkpoint: continue that run with --resume {}, or give \
         another --out for a new one",
        dir.display(),
        dir.display()
    )]
    Exists {
        /// The checkpoint folder.
        dir: PathBuf,
    },
}

impl From<CheckpointError> for LabError {
    fn from(e: CheckpointError) -> Self {
        LabError::Checkpoint(Box::new(e))
    }
}

/// One network's training state at the end of a step, besides its weights and batch order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NetState {
    /// Training steps done.
    pub step: usize,
    /// Evaluations so far.
    pub evals: Vec<EvalRecord>,
    /// Sum of the batch losses since the last evaluation.
    pub loss_sum: f64,
    /// Correct training predictions since the last evaluation.
    pub correct: usize,
    /// Steps since the last evaluation.
    pub since: usize,
    /// Seconds spent in training steps, over every session of the run.
    pub train_seconds: f64,
    /// Seconds spent evaluating, over every session of the run.
    pub eval_seconds: f64,
    /// Wall-clock seconds of the run (data loading included) at the end of this step, over
    /// every session.
    pub wall_seconds: f64,
}

impl NetState {
    /// The state before the first step and the first evaluation, `wall_seconds` into the run.
    pub fn start(wall_seconds: f64) -> Self {
        NetState {
            step: 0,
            evals: Vec::new(),
            loss_sum: 0.0,
            correct: 0,
            since: 0,
            train_seconds: 0.0,
            eval_seconds: 0.0,
            wall_seconds,
        }
    }
}

/// Saves both networks' step-0 checkpoints for a new checkpointed run, one after the other,
/// before either trains: from then on the folder always holds both (with one thread the
/// second network would otherwise save its first checkpoint only after the first finished).
///
/// # Errors
/// As [`save`].
pub(super) fn save_start(
    cfg: &Config,
    nets: [(Variant, &mut Sequential<f32>); 2],
    train_len: usize,
    wall_seconds: f64,
) -> Result<(), CheckpointError> {
    let sampler = Sampler::new(order_seed(cfg.seed), train_len, cfg.batch_size).state();
    let state = NetState::start(wall_seconds);
    for (variant, model) in nets {
        save(&dir(cfg), variant, cfg, model, &state, &sampler)?;
    }
    Ok(())
}

/// A network's checkpoint as read back: its state, batch order and weights.
#[derive(Debug)]
pub(super) struct Resumed {
    /// The state at the end of `state.step`.
    pub state: NetState,
    /// The batch order.
    pub sampler: SamplerState,
    /// The weights, as a PyTorch state dict.
    pub weights: StateDict,
    /// The weights file (for messages).
    pub weights_path: PathBuf,
    /// The network's key (`bn`, `plain`).
    net: &'static str,
}

impl Resumed {
    /// Puts the weights (strictly: every key, shape and dtype must match) and the batch order
    /// into `trainer`; returns the rest of the state.
    ///
    /// # Errors
    /// [`CheckpointError::Weights`] naming the file and the key, or `Malformed` for a batch
    /// order that does not fit the training set.
    pub fn restore(self, trainer: &mut Trainer) -> Result<NetState, CheckpointError> {
        let path = self.weights_path;
        trainer
            .model
            .load_state_dict(&self.weights, true)
            .map_err(|source| CheckpointError::Weights {
                path: path.clone(),
                source: Box::new(source),
            })?;
        trainer
            .restore_sampler(self.sampler)
            .map_err(|why| CheckpointError::Malformed {
                path: path.with_file_name(format!("{}.json", self.net)),
                why: format!("sampler: {why}"),
            })?;
        Ok(self.state)
    }
}

/// Refuses to start a new checkpointed run (`--checkpoint-every` without `--resume`) into a
/// folder that already holds a checkpoint, which the run would replace.
///
/// # Errors
/// [`CheckpointError::Exists`] naming the folder and how to resume.
pub fn check_fresh(cfg: &Config) -> Result<(), CheckpointError> {
    let dir = dir(cfg);
    if cfg.checkpoint_every.is_some()
        && cfg.resume.is_none()
        && [Variant::BatchNorm, Variant::Plain]
            .iter()
            .any(|&v| json_path(&dir, v).exists())
    {
        return Err(CheckpointError::Exists { dir });
    }
    Ok(())
}

/// Both networks' checkpoints in `dir`, for `--resume`.
///
/// # Errors
/// [`CheckpointError::Missing`] if there are none, `Incomplete` if one network's is missing,
/// and any error of [`load`].
pub(super) fn load_both(
    dir: &Path,
    cfg: &Config,
    train_len: usize,
) -> Result<(Resumed, Resumed), CheckpointError> {
    let bn = load(dir, Variant::BatchNorm, cfg, train_len)?;
    let plain = load(dir, Variant::Plain, cfg, train_len)?;
    let incomplete = |present: Variant, absent: Variant| CheckpointError::Incomplete {
        dir: dir.to_path_buf(),
        present: present.key(),
        absent: absent.key(),
    };
    match (bn, plain) {
        (Some(bn), Some(plain)) => Ok((bn, plain)),
        (Some(_), None) => Err(incomplete(Variant::BatchNorm, Variant::Plain)),
        (None, Some(_)) => Err(incomplete(Variant::Plain, Variant::BatchNorm)),
        (None, None) => Err(CheckpointError::Missing {
            dir: dir.to_path_buf(),
        }),
    }
}

/// The folder checkpoints are saved in and resumed from: the `--resume` folder if given,
/// else `checkpoint/` in the output folder.
pub fn dir(cfg: &Config) -> PathBuf {
    cfg.resume
        .clone()
        .unwrap_or_else(|| cfg.out.join("checkpoint"))
}

/// `<dir>/<net>.json`.
fn json_path(dir: &Path, variant: Variant) -> PathBuf {
    dir.join(format!("{}.json", variant.key()))
}

/// The weights file name of `variant` at `step`.
fn weights_name(variant: Variant, step: usize) -> String {
    format!("{}-{step:08}.safetensors", variant.key())
}

/// Saves `variant`'s checkpoint into `dir` (created if needed): weights, then the JSON that
/// commits them, then removes what older checkpoints of this network left.
///
/// # Errors
/// [`CheckpointError::Io`] or [`CheckpointError::Weights`]; the previous checkpoint then
/// stays the one [`load`] finds.
pub(super) fn save(
    dir: &Path,
    variant: Variant,
    cfg: &Config,
    model: &mut Sequential<f32>,
    state: &NetState,
    sampler: &SamplerState,
) -> Result<(), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = weights_name(variant, state.step);
    let weights_path = dir.join(&name);
    let bytes = encode_weights(model, variant, state.step, &weights_path).map_err(|source| {
        CheckpointError::Weights {
            path: weights_path.clone(),
            source: Box::new(source),
        }
    })?;
    let fault = |point: &str| fault_point(variant, state.step, point);
    if fault("tmp") {
        let _ = std::fs::write(temp_path(&weights_path), &bytes[..bytes.len() / 2]);
        std::process::abort();
    }
    write_atomic(&weights_path, &bytes).map_err(io(&weights_path))?;
    if fault("weights") {
        std::process::abort();
    }
    let doc = to_json(variant, cfg, state, sampler, &name, &bytes);
    let text = serde_json::to_string(&doc).unwrap_or_default() + "\n";
    let json = json_path(dir, variant);
    write_atomic(&json, text.as_bytes()).map_err(io(&json))?;
    if fault("json") {
        std::process::abort();
    }
    remove_stale(dir, variant, &name).map_err(io(dir))
}

/// Whether `BNLAB_FAULT_INJECT` asks for a crash at `point` of this checkpoint (see the
/// module's documentation).
fn fault_point(variant: Variant, step: usize, point: &str) -> bool {
    std::env::var("BNLAB_FAULT_INJECT")
        .is_ok_and(|v| v == format!("{}:{step}:{point}", variant.key()))
}

/// The network's weights as safetensors bytes: its state dict, with `format: pt` (as
/// `safetensors.torch.save_file` writes) and the network and step in the metadata.
fn encode_weights(
    model: &mut Sequential<f32>,
    variant: Variant,
    step: usize,
    path: &Path,
) -> Result<Vec<u8>, NnError> {
    let mut sd = model.state_dict()?;
    sd.metadata.insert("format".into(), "pt".into());
    sd.metadata.insert("net".into(), variant.key().into());
    sd.metadata.insert("step".into(), step.to_string());
    sd.to_bytes().map_err(|source| NnError::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes this network's weights other than `keep` and temporaries of killed writes.
fn remove_stale(dir: &Path, variant: Variant, keep: &str) -> std::io::Result<()> {
    let weights_prefix = format!("{}-", variant.key());
    let tmp_prefix = format!(".{}", variant.key());
    let json_tmp = temp_path(&json_path(dir, variant));
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let old_weights =
            name.starts_with(&weights_prefix) && name.ends_with(".safetensors") && name != keep;
        let stale_tmp = name.starts_with(&tmp_prefix)
            && name.ends_with(".safetensors.tmp")
            && name[tmp_prefix.len()..].starts_with('-');
        if old_weights || stale_tmp || entry.path() == json_tmp {
            std::fs::remove_file(entry.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads `variant`'s checkpoint from `dir`: `None` if it has none.
///
/// # Errors
/// [`CheckpointError::ConfigMismatch`] if it was made with other settings; `Malformed`, `Io`
/// or `Weights` if it cannot be used.
fn load(
    dir: &Path,
    variant: Variant,
    cfg: &Config,
    train_len: usize,
) -> Result<Option<Resumed>, CheckpointError> {
    let path = json_path(dir, variant);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    let bad = |why: String| CheckpointError::Malformed {
        path: path.clone(),
        why,
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(format!("JSON: {e}")))?;
    let r = Reader(&doc);
    let format = r.str("format").map_err(&bad)?;
    if format != FORMAT {
        return Err(bad(format!(
            "format {format:?}, this bnlab reads {FORMAT:?}"
        )));
    }
    let net = r.str("net").map_err(&bad)?;
    if net != variant.key() {
        return Err(bad(format!(
            "holds network {net:?}, expected {:?}",
            variant.key()
        )));
    }
    let saved = r.get("config").map_err(&bad)?;
    let diffs = config_diffs(&Reader(saved), cfg, train_len).map_err(&bad)?;
    if !diffs.is_empty() {
        return Err(CheckpointError::ConfigMismatch { path, diffs });
    }
    let (state, sampler) = read_state(&r, cfg).map_err(&bad)?;

    let name = r.str("weights").map_err(&bad)?;
    if name != weights_name(variant, state.step) {
        return Err(bad(format!(
            "weights file {name:?} does not match step {}",
            state.step
        )));
    }
    let weights_path = dir.join(name);
    let bytes = std::fs::read(&weights_path).map_err(|source| CheckpointError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let want_len = r.usize("weights_bytes").map_err(&bad)?;
    let want_hash = r.str("weights_fnv1a64").map_err(&bad)?;
    if bytes.len() != want_len || format!("{:016x}", fnv1a64(&bytes)) != want_hash {
        return Err(CheckpointError::Malformed {
            path: weights_path,
            why: format!(
                "{} bytes with hash {:016x}, the checkpoint recorded {want_len} bytes with hash \
                 {want_hash}",
                bytes.len(),
                fnv1a64(&bytes)
            ),
        });
    }
    let weights = StateDict::from_bytes(&bytes).map_err(|e| CheckpointError::Malformed {
        path: weights_path.clone(),
        why: e.to_string(),
    })?;
    Ok(Some(Resumed {
        state,
        sampler,
        weights,
        weights_path,
        net: variant.key(),
    }))
}

/// A float as a string that parses back to the same bits (`NaN` and `inf` included).
fn float(v: f64) -> Value {
    Value::String(format!("{v:?}"))
}

/// FNV-1a, 64 bits: a cheap check that the weights are the ones the JSON committed.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The settings that fix a network's trajectory, as saved. Threads, output and data folders
/// and the checkpoint interval change nothing in the results and may differ on resume.
fn config_json(cfg: &Config, train_len: usize) -> Value {
    json!({
        "steps": cfg.steps,
        "lr": float(cfg.lr),
        "batch_size": cfg.batch_size,
        "init_std": float(cfg.init_std),
        "seed": cfg.seed,
        "eval_every": cfg.eval_every,
        "train_images": train_len,
    })
}

fn to_json(
    variant: Variant,
    cfg: &Config,
    s: &NetState,
    sampler: &SamplerState,
    weights: &str,
    bytes: &[u8],
) -> Value {
    let evals: Vec<Value> = s
        .evals
        .iter()
        .map(|e| {
            json!({
                "step": e.step,
                "train_loss": float(e.train_loss),
                "train_accuracy": float(e.train_accuracy),
                "test_accuracy": float(e.test_accuracy),
                "percentiles": e.percentiles.map(float),
            })
        })
        .collect();
    let (words, spare) = sampler.rng;
    json!({
        "format": FORMAT,
        "net": variant.key(),
        "step": s.step,
        "config": config_json(cfg, sampler.order.len()),
        "weights": weights,
        "weights_bytes": bytes.len(),
        "weights_fnv1a64": format!("{:016x}", fnv1a64(bytes)),
        "sampler": {
            "rng": words.map(|w| format!("{w:016x}")),
            "spare_normal": spare.map(float),
            "pos": sampler.pos,
            "order": sampler.order,
        },
        "window": {
            "loss_sum": float(s.loss_sum),
            "correct": s.correct,
            "since": s.since,
        },
        "train_seconds": float(s.train_seconds),
        "eval_seconds": float(s.eval_seconds),
        "wall_seconds": float(s.wall_seconds),
        "evals": evals,
    })
}

/// `--option: checkpoint X, now Y` for each trajectory setting that differs.
fn config_diffs(saved: &Reader<'_>, cfg: &Config, train_len: usize) -> Result<Vec<String>, String> {
    let now = config_json(cfg, train_len);
    let mut diffs = Vec::new();
    let options: BTreeMap<&str, &str> = [
        ("steps", "--steps"),
        ("lr", "--lr"),
        ("batch_size", "--batch-size"),
        ("init_std", "--init-std"),
        ("seed", "--seed"),
        ("eval_every", "--eval-every"),
        ("train_images", "training images in --data"),
    ]
    .into_iter()
    .collect();
    for (key, option) in options {
        let was = saved.get(key)?;
        let is = &now[key];
        // Floats compare by value ("0.010" and "0.01" are the same learning rate).
        let same = match (was, is) {
            (Value::String(a), Value::String(b)) => a.parse::<f64>().ok() == b.parse::<f64>().ok(),
            (a, b) => a == b,
        };
        if !same {
            let show = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            diffs.push(format!(
                "{option}: checkpoint {}, now {}",
                show(was),
                show(is)
            ));
        }
    }
    Ok(diffs)
}

/// The state and batch order, checked for consistency with each other and with `cfg`.
fn read_state(r: &Reader<'_>, cfg: &Config) -> Result<(NetState, SamplerState), String> {
    let step = r.usize("step")?;
    if step > cfg.steps {
        return Err(format!("step {step} is outside 0..={}", cfg.steps));
    }
    let s = Reader(r.get("sampler")?);
    let words: Vec<u64> = s
        .array("rng")?
        .iter()
        .map(|w| {
            w.as_str()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("sampler.rng: {w} is not a 64-bit hex word"))
        })
        .collect::<Result<_, _>>()?;
    let words: [u64; 4] = words
        .try_into()
        .map_err(|_| "sampler.rng: needs 4 words".to_owned())?;
    let spare = match s.get("spare_normal")? {
        Value::Null => None,
        v => Some(parse_float(v, "sampler.spare_normal")?),
    };
    let order: Vec<usize> = s
        .array("order")?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| format!("sampler.order: {v} is not an index"))
        })
        .collect::<Result<_, _>>()?;
    let sampler = SamplerState {
        rng: (words, spare),
        order,
        pos: s.usize("pos")?,
    };

    let w = Reader(r.get("window")?);
    let evals = r
        .array("evals")?
        .iter()
        .map(|e| read_eval(&Reader(e)))
        .collect::<Result<Vec<_>, _>>()?;
    let state = NetState {
        step,
        loss_sum: w.float("loss_sum")?,
        correct: w.usize("correct")?,
        since: w.usize("since")?,
        train_seconds: r.float("train_seconds")?,
        eval_seconds: r.float("eval_seconds")?,
        wall_seconds: r.float("wall_seconds")?,
        evals,
    };
    // The evaluations are those an uninterrupted run makes up to `step` (none in the
    // checkpoint saved at step 0, before the first evaluation), and the window counts the steps
    // after the last one.
    let due = |k: usize| k.is_multiple_of(cfg.eval_every) || k == cfg.steps;
    let want: Vec<usize> = if step == 0 {
        Vec::new()
    } else {
        (0..=step).filter(|&k| k == 0 || due(k)).collect()
    };
    let got: Vec<usize> = state.evals.iter().map(|e| e.step).collect();
    if got != want {
        return Err(format!("evaluations at steps {got:?}, expected {want:?}"));
    }
    let last = want.last().copied().unwrap_or(0);
    if state.since != step - last || state.correct > state.since * cfg.batch_size {
        return Err(format!(
            "window of {} steps and {} correct after the evaluation at step {last}, at step {step}",
            state.since, state.correct
        ));
    }
    Ok((state, sampler))
}

fn read_eval(r: &Reader<'_>) -> Result<EvalRecord, String> {
    let p = r.array("percentiles")?;
    if p.len() != 3 {
        return Err("evals: percentiles need 3 values".into());
    }
    Ok(EvalRecord {
        step: r.usize("step")?,
        train_loss: r.float("train_loss")?,
        train_accuracy: r.float("train_accuracy")?,
        test_accuracy: r.float("test_accuracy")?,
        percentiles: [
            parse_float(&p[0], "percentiles")?,
            parse_float(&p[1], "percentiles")?,
            parse_float(&p[2], "percentiles")?,
        ],
    })
}

fn parse_float(v: &Value, what: &str) -> Result<f64, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what}: {v} is not a float string"))
}

/// Field access on a JSON object with messages naming the missing or mistyped field.
struct Reader<'a>(&'a Value);

impl<'a> Reader<'a> {
    fn get(&self, key: &str) -> Result<&'a Value, String> {
        self.0
            .get(key)
            .ok_or_else(|| format!("missing field `{key}`"))
    }

    fn str(&self, key: &str) -> Result<&'a str, String> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| format!("`{key}` is not a string"))
    }

    fn usize(&self, key: &str) -> Result<usize, String> {
        self.get(key)?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("`{key}` is not a non-negative integer"))
    }

    fn float(&self, key: &str) -> Result<f64, String> {
        parse_float(self.get(key)?, key)
    }

    fn array(&self, key: &str) -> Result<&'a Vec<Value>, String> {
        self.get(key)?
            .as_array()
            .ok_or_else(|| format!("`{key}` is not an array"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_bit_for_bit() {
        for v in [
            0.1,
            1.0 / 3.0,
            f64::NAN,
            f64::INFINITY,
            -0.0,
            5e-324,
            f64::MAX,
            0.9123000000000001,
        ] {
            let back = parse_float(&float(v), "v").unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v:?}");
        }
    }

    #[test]
    fn fnv1a64_reference_values() {
        // From the FNV reference test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
