//! A small conv net on MNIST with and without BatchNorm2d (per channel over N x H x W), from the
//! same initial weights and the same batches; the outputs of fig1 (test accuracy along the run,
//! summary, figure, report) plus the training time per epoch.
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
use super::sampler::order_seed;
use super::trainer::Trainer;
use super::{LabError, EVAL_CHUNK};
use crate::progress::{NetProgress, Progress};

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
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

/// One network's run.
#[derive(Debug, Clone)]
pub struct NetRun {
    /// With BatchNorm2d.
    pub batch_norm: bool,
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
    /// `"bn"` or `"plain"`.
    pub fn key(&self) -> &'static str {
        net_key(self.batch_norm)
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
    /// Wall-clock seconds (loading included, writing excluded).
    pub wall_seconds: f64,
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
    let init = convnet::init(cfg.seed)?;
    let steps = cfg.epochs * cfg.steps_per_epoch(data.train.len());
    let progress = Progress::new();
    let bars = [
        progress.add("bn", steps as u64),
        progress.add("plain", steps as u64),
    ];
    let mut runs = run_jobs(&[true, false], cfg.threads, |i, &bn| {
        let model = convnet::build(&init, bn, cfg.batch_size.max(convnet::EVAL_BATCH))?;
        train(cfg, model, bn, &data.train, &data.test, &bars[i])
    })?;
    let plain = runs.pop().ok_or(LabError::Setup("no plain run"))?;
    let bn = runs.pop().ok_or(LabError::Setup("no BN run"))?;
    let outcome = Outcome {
        config: cfg.clone(),
        bn,
        plain,
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
        evals,
        epoch_seconds,
        steps_per_epoch: per_epoch,
        full_epoch_steps: cfg.epoch_steps(train.len()),
        eval_seconds,
    })
}

/// Prints the headline numbers to stdout.
pub fn print_summary(o: &Outcome) {
    for r in [&o.bn, &o.plain] {
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
