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

use std::path::{Path, PathBuf};

use batchnorm_nn::state_dict::StateDict;
use batchnorm_nn::{NnError, Sequential};

mod format;

use format::{fnv1a64, Doc, SavedConfig};

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
    let doc = Doc::new(variant, cfg, state, sampler, &name, &bytes);
    let text = serde_json::to_string(&doc).map_err(|e| CheckpointError::Malformed {
        path: json_path(dir, variant),
        why: format!("cannot encode: {e}"),
    })? + "\n";
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
    let doc: Doc = serde_json::from_str(&text).map_err(|e| bad(format!("JSON: {e}")))?;
    if doc.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, this bnlab reads {FORMAT:?}",
            doc.format
        )));
    }
    if doc.net != variant.key() {
        return Err(bad(format!(
            "holds network {:?}, expected {:?}",
            doc.net,
            variant.key()
        )));
    }
    let diffs = doc.config.diffs(&SavedConfig::new(cfg, train_len));
    if !diffs.is_empty() {
        return Err(CheckpointError::ConfigMismatch { path, diffs });
    }
    let (name, want_len, want_hash) = (
        doc.weights.clone(),
        doc.weights_bytes,
        doc.weights_fnv1a64.clone(),
    );
    let (state, sampler) = doc.state(cfg).map_err(&bad)?;
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
