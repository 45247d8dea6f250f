//! BN's weak spot and its remedies: fig1's sigmoid MLP trained at small batch sizes with
//! batch normalization (`bn`), Batch Renormalization (`renorm`), GroupNorm (`groupnorm`) and
//! SyncBN over in-process ranks (`syncbn`, per-rank batches of the small sizes); and, for the
//! opposite case of a large batch, Ghost BN (`ghost`, virtual batches) against plain BN at that
//! batch.
//!
//! Every run sees the same number of training examples at the same learning rate per example
//! (`lr * B / lr_batch` for a batch, global for SyncBN, of B) from the same initial weights and
//! batch order seed; test accuracy uses the inference statistics (running statistics; GroupNorm
//! has none).
//!
//! Outputs: `results.csv`, `curves.csv`, `summary.json`, `small_batch.png`/`.svg`, `report.md`.

mod output;

use std::path::PathBuf;
use std::time::Instant;

use batchnorm::{BatchNormConfig, Renorm};
use batchnorm_nn::data::Mnist;
use batchnorm_nn::layers::{BatchNorm, GhostBatchNorm, GroupNorm, Layer, Linear};
use batchnorm_nn::{NnError, Sequential};

use super::error::{at_least_one, bad, each_in_range, in_range, non_negative, positive};
use super::mlp::{self, Activation};
use super::output::print_wall_time;
use super::parallel::{finish_bar, log_run, run_jobs};
use super::sampler::order_seed;
use super::trainer::{train_evaluating, Trainer};
use super::{sync_bn, LabError, EVAL_CHUNK};
use crate::progress::{NetProgress, Progress};

/// Layer widths: fig1's.
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];

/// A normalization method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Batch normalization (PyTorch's defaults).
    Bn,
    /// Batch Renormalization, rmax/dmax on the paper's schedule scaled to the run.
    Renorm,
    /// GroupNorm over groups of hidden units, per sample.
    GroupNorm,
    /// BN synchronised over in-process ranks.
    SyncBn,
    /// Ghost BN: BN per virtual batch.
    Ghost,
}

impl Method {
    /// The key in files (`bn`, `renorm`, `groupnorm`, `syncbn`, `ghost`).
    pub fn key(self) -> &'static str {
        match self {
            Method::Bn => "bn",
            Method::Renorm => "renorm",
            Method::GroupNorm => "groupnorm",
            Method::SyncBn => "syncbn",
            Method::Ghost => "ghost",
        }
    }

    /// The label in figures and reports.
    pub fn label(self) -> &'static str {
        match self {
            Method::Bn => "BN",
            Method::Renorm => "Batch Renorm",
            Method::GroupNorm => "GroupNorm",
            Method::SyncBn => "SyncBN",
            Method::Ghost => "Ghost BN",
        }
    }
}

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Batch sizes (per rank for SyncBN) of BN, Batch Renorm and GroupNorm. Default 2, 4, 8,
    /// 16, 32.
    pub batch_sizes: Vec<usize>,
    /// Training examples each run sees. Default 240,000 (four epochs).
    pub examples: usize,
    /// Learning rate at batch size `lr_batch`; a (global) batch of `B` uses
    /// `lr * B / lr_batch`. Default 1.0.
    pub lr: f64,
    /// The batch size `lr` refers to. Default 128.
    pub lr_batch: usize,
    /// Initial weights from N(0, std^2), biases 0 (fig1's). Default 0.05.
    pub init_std: f64,
    /// GroupNorm's groups per hidden layer (must divide 100). Default 10.
    pub groups: usize,
    /// Batch Renormalization's final rmax. Default 3 (the paper's).
    pub rmax: f64,
    /// Batch Renormalization's final dmax. Default 5 (the paper's).
    pub dmax: f64,
    /// Ranks of SyncBN (threads of this process). Default 4.
    pub ranks: usize,
    /// Per-rank batch sizes of SyncBN. Default 2 and 4 (global batches 8 and 16).
    pub sync_batches: Vec<usize>,
    /// The large batch of Ghost BN and its plain-BN comparison. Default 256.
    pub ghost_batch: usize,
    /// Ghost BN's virtual batch size (must divide `ghost_batch`). Default 32.
    pub virtual_batch: usize,
    /// Test accuracy is evaluated this many times per run, evenly spaced. Default 8.
    pub evals: usize,
    /// Seed of the weights and the batch order. Default 1.
    pub seed: u64,
    /// Runs trained at once (SyncBN runs alone, on its ranks). Default 2.
    pub threads: usize,
    /// Output folder. Default `out/small-batch`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batch_sizes: vec![2, 4, 8, 16, 32],
            examples: 240_000,
            lr: 1.0,
            lr_batch: 128,
            init_std: 0.05,
            groups: 10,
            rmax: 3.0,
            dmax: 5.0,
            ranks: 4,
            sync_batches: vec![2, 4],
            ghost_batch: 256,
            virtual_batch: 32,
            evals: 8,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/small-batch"),
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
        let batch = 2..=EVAL_CHUNK;
        each_in_range(
            "--batch-sizes",
            &self.batch_sizes,
            batch.clone(),
            "each must be between 2 and 1000",
        )?;
        each_in_range(
            "--sync-batches",
            &self.sync_batches,
            1..=EVAL_CHUNK,
            "each must be between 1 and 1000",
        )?;
        in_range("--ranks", self.ranks, 1..=64, "must be between 1 and 64")?;
        in_range(
            "--ghost-batch",
            self.ghost_batch,
            batch,
            "must be between 2 and 1000",
        )?;
        if self.virtual_batch < 2 || !self.ghost_batch.is_multiple_of(self.virtual_batch) {
            return bad(
                "--virtual-batch",
                self.virtual_batch,
                "must be at least 2 and divide --ghost-batch",
            );
        }
        if self.groups == 0 || !WIDTHS[1].is_multiple_of(self.groups) {
            return bad("--groups", self.groups, "must divide the 100 hidden units");
        }
        let global: Vec<usize> = self.sync_batches.iter().map(|b| b * self.ranks).collect();
        each_in_range(
            "--sync-batches x --ranks",
            &global,
            2..=EVAL_CHUNK,
            "each global batch must be between 2 and 1000",
        )?;
        let largest = self
            .jobs()
            .iter()
            .map(|j| j.global_batch())
            .max()
            .unwrap_or(2);
        if self.examples < largest {
            return bad(
                "--examples",
                self.examples,
                "must be at least the largest batch",
            );
        }
        positive("--lr", self.lr)?;
        at_least_one("--lr-batch", self.lr_batch)?;
        non_negative("--init-std", self.init_std)?;
        if !(self.rmax.is_finite() && self.rmax >= 1.0) {
            return bad("--rmax", self.rmax, "must be finite and at least 1");
        }
        if !(self.dmax.is_finite() && self.dmax >= 0.0) {
            return bad("--dmax", self.dmax, "must be finite and at least 0");
        }
        at_least_one("--evals", self.evals)?;
        at_least_one("--threads", self.threads)
    }

    /// The learning rate of a (global) batch of `b`.
    pub fn lr_for(&self, b: usize) -> f64 {
        self.lr * b as f64 / self.lr_batch as f64
    }

    /// Every run, the single-process ones (smallest batches, the longest, first), then SyncBN's.
    pub fn jobs(&self) -> Vec<Job> {
        let mut sizes = self.batch_sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let mut jobs = Vec::new();
        for &b in &sizes {
            for method in [Method::Bn, Method::Renorm, Method::GroupNorm] {
                jobs.push(Job::single(method, b));
            }
        }
        jobs.push(Job::single(Method::Ghost, self.ghost_batch));
        if !sizes.contains(&self.ghost_batch) {
            jobs.push(Job::single(Method::Bn, self.ghost_batch));
        }
        let mut sync = self.sync_batches.clone();
        sync.sort_unstable();
        sync.dedup();
        for b in sync {
            jobs.push(Job {
                method: Method::SyncBn,
                batch_size: b,
                ranks: self.ranks,
            });
        }
        jobs
    }
}

/// One run's method and batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The normalization.
    pub method: Method,
    /// Images per step on each rank.
    pub batch_size: usize,
    /// Ranks (1 but for SyncBN).
    pub ranks: usize,
}

impl Job {
    fn single(method: Method, batch_size: usize) -> Self {
        Self {
            method,
            batch_size,
            ranks: 1,
        }
    }

    /// Images per step over every rank.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.ranks
    }

    fn name(&self) -> String {
        match self.ranks {
            1 => format!("{} batch {}", self.method.key(), self.batch_size),
            r => format!("{} {r}x{}", self.method.key(), self.batch_size),
        }
    }
}

/// One run's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// What ran.
    pub job: Job,
    /// Learning rate used.
    pub lr: f64,
    /// SGD steps (examples / global batch).
    pub steps: usize,
    /// Test accuracy with the inference statistics after the last step.
    pub test_accuracy: f64,
    /// (examples seen, test accuracy) along the run, from 0.
    pub curve: Vec<(usize, f64)>,
    /// Seconds of training (evaluations excluded).
    pub train_seconds: f64,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// The runs in the order of [`Config::jobs`].
    pub runs: Vec<Run>,
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
    let linears = mlp::initial_linears(&WIDTHS, cfg.seed, |_| cfg.init_std)?;
    let jobs = cfg.jobs();
    let (single, sync): (Vec<Job>, Vec<Job>) =
        jobs.iter().partition(|j| j.method != Method::SyncBn);
    let progress = Progress::new();
    let total = jobs.len();
    let report = |i: usize, bar: &NetProgress, r: &Run| {
        finish_bar(bar, r.steps, f64::NAN, r.test_accuracy);
        log_run("small-batch", i, total, || {
            format!(
                "{}, lr {}: test accuracy {:.4}, {:.1} s",
                r.job.name(),
                r.lr,
                r.test_accuracy,
                r.train_seconds
            )
        });
    };
    let mut runs = run_jobs(&single, cfg.threads, |i, job| {
        let bar = progress.add(&job.name(), (cfg.examples / job.global_batch()) as u64);
        let r = train_single(cfg, *job, &linears, &data, &bar)?;
        report(i, &bar, &r);
        Ok(r)
    })?;
    // SyncBN's ranks are threads of their own: one run at a time.
    for (k, job) in sync.iter().enumerate() {
        let bar = progress.add(&job.name(), (cfg.examples / job.global_batch()) as u64);
        let r = train_sync(cfg, *job, &linears, &data, &bar)?;
        report(single.len() + k, &bar, &r);
        runs.push(r);
    }
    let outcome = Outcome {
        config: cfg.clone(),
        runs,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

/// The network of `job` (BN, renorm, GroupNorm or Ghost BN between each hidden linear layer
/// and its sigmoid) from the shared initial `linears`.
fn network(
    cfg: &Config,
    job: Job,
    linears: &[Linear<f32>],
    steps: usize,
) -> Result<Sequential<f32>, NnError> {
    let renorm = renorm_schedule(cfg, steps);
    let norm = |width: usize| -> Result<Box<dyn Layer<f32>>, NnError> {
        let bn = |config| BatchNorm::new(&[width], config);
        Ok(match job.method {
            Method::Bn | Method::SyncBn => Box::new(bn(BatchNormConfig::default())?),
            Method::Renorm => Box::new(bn(BatchNormConfig {
                renorm: Some(renorm),
                ..BatchNormConfig::default()
            })?),
            Method::GroupNorm => Box::new(GroupNorm::new(&[width], cfg.groups, 1e-5)?),
            Method::Ghost => Box::new(GhostBatchNorm::new(
                bn(BatchNormConfig::default())?,
                cfg.virtual_batch,
            )?),
        })
    };
    mlp::build_with(linears, Activation::Sigmoid, Some(&norm), EVAL_CHUNK)
}

/// The paper's schedule (plain BN for 5k steps, dmax reached at 25k, rmax at 40k) scaled to a
/// run of `steps`: the same fractions of a 160k-step run.
pub fn renorm_schedule(cfg: &Config, steps: usize) -> Renorm {
    let at = |k: u64| (steps as u64 * k) / 160;
    Renorm {
        rmax: cfg.rmax,
        dmax: cfg.dmax,
        warmup_steps: at(5),
        rmax_steps: at(40),
        dmax_steps: at(25),
    }
}

fn train_single(
    cfg: &Config,
    job: Job,
    linears: &[Linear<f32>],
    data: &Mnist,
    bar: &NetProgress,
) -> Result<Run, LabError> {
    let b = job.batch_size;
    let steps = cfg.examples / b;
    let lr = cfg.lr_for(b);
    let model = network(cfg, job, linears, steps)?;
    let mut trainer = Trainer::new(model, lr, b, order_seed(cfg.seed), data.train.len())?;
    let (curve, train_seconds) =
        train_evaluating(&mut trainer, data, steps, cfg.evals, bar, |_, _| {})?;
    Ok(Run {
        job,
        lr,
        steps,
        test_accuracy: curve.last().map_or(f64::NAN, |c| c.1),
        curve,
        train_seconds,
    })
}

fn train_sync(
    cfg: &Config,
    job: Job,
    linears: &[Linear<f32>],
    data: &Mnist,
    bar: &NetProgress,
) -> Result<Run, LabError> {
    let global = job.global_batch();
    let steps = cfg.examples / global;
    let lr = cfg.lr_for(global);
    let sync_cfg = sync_bn::Config {
        ranks: job.ranks,
        per_rank_batch: job.batch_size,
        steps,
        lr,
        init_std: cfg.init_std,
        eval_every: (steps / cfg.evals).max(1),
        seed: cfg.seed,
        out: cfg.out.clone(),
        data: cfg.data.clone(),
    };
    let run = sync_bn::sync_run_on_threads(&sync_cfg, data, linears, Some(bar))?;
    let curve: Vec<(usize, f64)> = run.evals.iter().map(|&(s, a, _)| (s * global, a)).collect();
    Ok(Run {
        job,
        lr,
        steps,
        test_accuracy: curve.last().map_or(f64::NAN, |c| c.1),
        curve,
        train_seconds: run.train_seconds,
    })
}

/// Prints one line per run to stdout.
pub fn print_summary(o: &Outcome) {
    for r in &o.runs {
        println!(
            "{:<10} batch {:>4} x {} rank(s) (lr {:.4}, {} steps): test accuracy {:.4}; {:.1} s",
            r.job.method.key(),
            r.job.batch_size,
            r.job.ranks,
            r.lr,
            r.steps,
            r.test_accuracy,
            r.train_seconds
        );
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}
