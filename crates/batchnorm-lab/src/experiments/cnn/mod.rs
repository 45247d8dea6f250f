//! A small conv net on MNIST with and without BatchNorm2d (per channel over N x H x W), from the
//! same initial weights and the same batches; the outputs of fig1 (test accuracy along the run,
//! summary, figure, report) plus the training time per epoch. With `--arch resnet`, a small
//! residual net instead (`experiments/resnet.rs`), trained three ways: BN fused with its ReLU
//! and residual addition, the same BN as separate passes (the same results, bit for bit), and
//! no BN.
//!
//! Outputs: `metrics.csv`, `summary.json`, `cnn.png`/`.svg`, `report.md`.

mod output;

use std::path::PathBuf;
use std::time::Instant;

use batchnorm_nn::data::Split;
use batchnorm_nn::layers::Mode;
use batchnorm_nn::Sequential;

use super::convnet;
use super::error::{at_least_one, in_range, positive};
use super::evaluate::{best_accuracy, first_step_reaching, Accuracy};
use super::output::{net_key, print_wall_time};
use super::parallel::run_jobs;
use super::resnet::{self, Norm};
use super::sampler::order_seed;
use super::trainer::Trainer;
use super::{LabError, EVAL_CHUNK};
use crate::progress::{NetProgress, Progress};

/// The network trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// The small conv net (`experiments/convnet.rs`): two conv blocks with max pooling.
    Convnet,
    /// The small residual net (`experiments/resnet.rs`): a stem and three basic blocks.
    Resnet,
}

impl Arch {
    /// The name on the command line and in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Convnet => "convnet",
            Arch::Resnet => "resnet",
        }
    }

    /// The layers, as in the reports.
    pub fn description(self) -> &'static str {
        match self {
            Arch::Convnet => convnet::DESCRIPTION,
            Arch::Resnet => resnet::DESCRIPTION,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Arch::Convnet, Arch::Resnet]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown architecture {s:?}: use convnet or resnet"))
    }
}

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The network. Default [`Arch::Convnet`].
    pub arch: Arch,
    /// Passes over the 60,000 training images. Default 2.
    pub epochs: usize,
    /// Learning rate of plain SGD. Default 0.05.
    pub lr: f64,
    /// Images per batch. Default 60 (1,000 steps per epoch).
    pub batch_size: usize,
    /// Steps between evaluations of test accuracy. Default 250.
    pub eval_every: usize,
    /// Only this many steps per epoch (a shortened run; epoch times are then extrapolated
    /// from the steps run). Default `None`: whole epochs.
    pub max_steps_per_epoch: Option<usize>,
    /// Seed of the weights and the batch order. Default 1.
    pub seed: u64,
    /// 2 trains both networks at once. Default 2.
    pub threads: usize,
    /// Output folder. Default `out/cnn`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            arch: Arch::Convnet,
            epochs: 2,
            lr: 0.05,
            batch_size: 60,
            eval_every: 250,
            max_steps_per_epoch: None,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/cnn"),
            data: PathBuf::from("data/mnist"),
        }
    }
}

impl Config {
    /// Checks every setting's range.
    ///
    /// # Errors
    /// [`LabError::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), LabError> {
        at_least_one("--epochs", self.epochs)?;
        positive("--lr", self.lr)?;
        in_range(
            "--batch-size",
            self.batch_size,
            2..=EVAL_CHUNK,
            "must be between 2 and 1000",
        )?;
        at_least_one("--eval-every", self.eval_every)?;
        if let Some(m) = self.max_steps_per_epoch {
            at_least_one("--max-steps-per-epoch", m)?;
        }
        at_least_one("--threads", self.threads)
    }

    /// Steps in a full epoch over `train_len` images.
    fn epoch_steps(&self, train_len: usize) -> usize {
        train_len / self.batch_size
    }

    /// Steps run per epoch.
    fn steps_per_epoch(&self, train_len: usize) -> usize {
        let full = self.epoch_steps(train_len);
        self.max_steps_per_epoch.map_or(full, |m| m.min(full))
    }
}

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalRecord {
    /// Training steps done.
    pub step: usize,
    /// Mean training loss since the previous evaluation (NaN at step 0).
    pub train_loss: f64,
    /// Accuracy on the training batches since the previous evaluation (NaN at step 0).
    pub train_accuracy: f64,
    /// Test accuracy (BN with running statistics).
    pub test_accuracy: f64,
}

/// The key of a run: `"bn"`, `"bn_unfused"` (BN as separate passes) or `"plain"`.
fn run_key(batch_norm: bool, separate: bool) -> &'static str {
    if separate {
        "bn_unfused"
    } else {
        net_key(batch_norm)
    }
}

/// One network's run.
#[derive(Debug, Clone)]
pub struct NetRun {
    /// With BatchNorm2d.
    pub batch_norm: bool,
    /// BN, ReLU and residual addition as separate passes (the residual net's reference run).
    pub separate: bool,
    /// Evaluations at step 0, every `eval_every` steps and at the end.
    pub evals: Vec<EvalRecord>,
    /// Training seconds of each epoch (evaluations excluded).
    pub epoch_seconds: Vec<f64>,
    /// Steps per epoch run.
    pub steps_per_epoch: usize,
    /// Steps of a full epoch.
    pub full_epoch_steps: usize,
    /// Seconds spent evaluating.
    pub eval_seconds: f64,
}

impl NetRun {
    /// `"bn"`, `"bn_unfused"` (BN as separate passes) or `"plain"`.
    pub fn key(&self) -> &'static str {
        run_key(self.batch_norm, self.separate)
    }

    /// The label in figures and tables.
    pub fn label(&self) -> &'static str {
        match (self.batch_norm, self.separate) {
            (false, _) => "without BN",
            (true, false) => "with BN",
            (true, true) => "with BN, unfused",
        }
    }

    /// Training seconds per full epoch: the median over epochs, scaled to a full epoch when
    /// epochs were shortened.
    pub fn seconds_per_epoch(&self) -> f64 {
        let mut v: Vec<f64> = self.epoch_seconds.clone();
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        median * self.full_epoch_steps as f64 / self.steps_per_epoch.max(1) as f64
    }

    /// The first evaluated step with test accuracy at or above `threshold`.
    pub fn steps_to(&self, threshold: f64) -> Option<usize> {
        first_step_reaching(self.accuracies(), threshold)
    }

    /// The best test accuracy and its step (first on ties).
    pub fn best(&self) -> Option<(f64, usize)> {
        best_accuracy(self.accuracies())
    }

    fn accuracies(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.evals.iter().map(|e| (e.step, e.test_accuracy))
    }

    /// The last evaluation.
    pub fn last(&self) -> Option<&EvalRecord> {
        self.evals.last()
    }
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// The network with BN.
    pub bn: NetRun,
    /// The network without BN.
    pub plain: NetRun,
    /// The residual net with BN as separate passes (`None` for the conv net).
    pub unfused: Option<NetRun>,
    /// Wall-clock seconds (loading included, writing excluded).
    pub wall_seconds: f64,
}

impl Outcome {
    /// The runs: with BN, with BN unfused (residual net), without BN.
    pub fn runs(&self) -> impl Iterator<Item = &NetRun> {
        [Some(&self.bn), self.unfused.as_ref(), Some(&self.plain)]
            .into_iter()
            .flatten()
    }

    /// Whether the fused and unfused BN runs gave the same losses and accuracies at every
    /// evaluation (`None` without an unfused run).
    pub fn fused_matches_unfused(&self) -> Option<bool> {
        let u = self.unfused.as_ref()?;
        let bits = |r: &NetRun| -> Vec<[u64; 3]> {
            r.evals
                .iter()
                .map(|e| [e.train_loss, e.train_accuracy, e.test_accuracy].map(f64::to_bits))
                .collect()
        };
        Some(bits(&self.bn) == bits(u))
    }
}

/// Runs the experiment and writes its outputs into `cfg.out`.
///
/// # Errors
/// A bad setting, unreadable data, or an unwritable output folder.
pub fn run(cfg: &Config) -> Result<Outcome, LabError> {
    cfg.validate()?;
    super::output::prepare_out(&cfg.out)?;
    let start = Instant::now();
    let (data, _) = super::data::load_mnist(&cfg.data)?;
    let steps = cfg.epochs * cfg.steps_per_epoch(data.train.len());
    let nets: &[(bool, bool)] = match cfg.arch {
        Arch::Convnet => &[(true, false), (false, false)],
        Arch::Resnet => &[(true, false), (true, true), (false, false)],
    };
    let progress = Progress::new();
    let bars: Vec<NetProgress> = nets
        .iter()
        .map(|&(bn, separate)| progress.add(run_key(bn, separate), steps as u64))
        .collect();
    let capacity = cfg.batch_size.max(convnet::EVAL_BATCH);
    let init = match cfg.arch {
        Arch::Convnet => Some(convnet::init(cfg.seed)?),
        Arch::Resnet => None,
    };
    let mut runs = run_jobs(nets, cfg.threads, |i, &(bn, separate)| {
        let model = match &init {
            Some(init) => convnet::build(init, bn, capacity)?,
            None => {
                let norm = match (bn, separate) {
                    (false, _) => Norm::None,
                    (true, false) => Norm::Fused,
                    (true, true) => Norm::Separate,
                };
                resnet::build(cfg.seed, norm, capacity)?
            }
        };
        let mut run = train(cfg, model, bn, &data.train, &data.test, &bars[i])?;
        run.separate = separate;
        Ok(run)
    })?;
    let plain = runs.pop().ok_or(LabError::Setup("no plain run"))?;
    let unfused = if cfg.arch == Arch::Resnet {
        Some(runs.pop().ok_or(LabError::Setup("no unfused BN run"))?)
    } else {
        None
    };
    let bn = runs.pop().ok_or(LabError::Setup("no BN run"))?;
    let outcome = Outcome {
        config: cfg.clone(),
        bn,
        plain,
        unfused,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

fn train(
    cfg: &Config,
    model: Sequential<f32>,
    batch_norm: bool,
    train: &Split,
    test: &Split,
    progress: &NetProgress,
) -> Result<NetRun, LabError> {
    let bs = cfg.batch_size;
    let per_epoch = cfg.steps_per_epoch(train.len());
    let steps = cfg.epochs * per_epoch;
    let mut trainer = Trainer::new(model, cfg.lr, bs, order_seed(cfg.seed), train.len())?;
    let mut acc = Accuracy::new(test);
    let t = Instant::now();
    let mut evals = vec![EvalRecord {
        step: 0,
        train_loss: f64::NAN,
        train_accuracy: f64::NAN,
        test_accuracy: acc.run_chunked(
            &mut trainer.model,
            test,
            Mode::Eval,
            convnet::EVAL_BATCH,
        )?,
    }];
    let mut eval_seconds = t.elapsed().as_secs_f64();
    let mut epoch_seconds = Vec::with_capacity(cfg.epochs);
    let (mut loss_sum, mut correct, mut since) = (0.0, 0usize, 0usize);
    let mut step = 0usize;
    for _ in 0..cfg.epochs {
        let mut epoch_time = 0.0;
        let mut t_train = Instant::now();
        for _ in 0..per_epoch {
            let s = trainer.step(train)?;
            step += 1;
            loss_sum += s.loss;
            correct += s.correct;
            since += 1;
            if step.is_multiple_of(50) {
                progress.set_step(step as u64);
            }
            if step.is_multiple_of(cfg.eval_every) || step == steps {
                epoch_time += t_train.elapsed().as_secs_f64();
                let t_eval = Instant::now();
                let loss = loss_sum / since as f64;
                let train_accuracy = correct as f64 / (since * bs) as f64;
                let test_accuracy =
                    acc.run_chunked(&mut trainer.model, test, Mode::Eval, convnet::EVAL_BATCH)?;
                let loud = (step / cfg.eval_every).is_multiple_of(4) || step == steps;
                progress.report(step as u64, loss, train_accuracy, test_accuracy, loud);
                evals.push(EvalRecord {
                    step,
                    train_loss: loss,
                    train_accuracy,
                    test_accuracy,
                });
                (loss_sum, correct, since) = (0.0, 0, 0);
                eval_seconds += t_eval.elapsed().as_secs_f64();
                t_train = Instant::now();
            }
        }
        epoch_time += t_train.elapsed().as_secs_f64();
        epoch_seconds.push(epoch_time);
    }
    progress.finish();
    Ok(NetRun {
        batch_norm,
        separate: false,
        evals,
        epoch_seconds,
        steps_per_epoch: per_epoch,
        full_epoch_steps: cfg.epoch_steps(train.len()),
        eval_seconds,
    })
}

/// Prints the headline numbers to stdout.
pub fn print_summary(o: &Outcome) {
    for r in o.runs() {
        println!(
            "{:>6}: final test accuracy {:.4}, best {:.4}, 98% at step {}, {:.2} s per epoch",
            r.key(),
            r.last().map_or(f64::NAN, |e| e.test_accuracy),
            r.best().map_or(f64::NAN, |b| b.0),
            r.steps_to(0.98)
                .map_or_else(|| "never".to_owned(), |s| s.to_string()),
            r.seconds_per_epoch()
        );
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}
