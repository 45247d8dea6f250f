//! Command-line options of the experiments added after fig1 (`depth`, `lr-sweep`,
//! `batch-size`, `cnn`, `fold`, `why`, `all`), kept beside the experiments so that `main.rs` only
//! dispatches.

use std::path::PathBuf;

use clap::Args;

use super::{all, batch_size, cnn, depth, fold, lr_sweep, small_batch, sync_bn, why};

/// Options every experiment shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Seed of the initial weights, the batch order and any fixed batch: the same seed gives
    /// the same numbers (timings apart).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Independent training runs at once (one per core helps; results do not depend on it).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...); a relative path is
    /// also looked up under the source checkout.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
}

/// `bnlab depth`.
#[derive(Debug, Clone, Args)]
pub struct DepthArgs {
    /// Numbers of hidden layers (1 to 100), e.g. `3,5` or `3 5`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [3, 5, 10, 15, 20])]
    pub depths: Vec<usize>,
    /// Units per hidden layer.
    #[arg(long, default_value_t = 100)]
    pub width: usize,
    /// SGD steps between the measurement at initialisation and the one after training.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Learning rate of plain SGD.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub lr: f64,
    /// Training images per mini-batch (at least 2).
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    /// Initial weights from N(0, (gain / sqrt(fan_in))^2); biases 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub init_gain: f64,
    /// Training images in the fixed batch the gradients and statistics are measured on.
    #[arg(long, default_value_t = 1000)]
    pub probe: usize,
    /// Output folder for gradients.csv, activations.csv, summary.json, depth.png/.svg,
    /// depth_preact.png/.svg and report.md.
    #[arg(long, default_value = "out/depth")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl DepthArgs {
    /// The experiment's settings.
    pub fn config(&self) -> depth::Config {
        depth::Config {
            depths: self.depths.clone(),
            width: self.width,
            steps: self.steps,
            lr: self.lr,
            batch_size: self.batch_size,
            init_gain: self.init_gain,
            probe: self.probe,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}

/// `bnlab lr-sweep`.
#[derive(Debug, Clone, Args)]
pub struct LrSweepArgs {
    /// Learning rates (each finite and > 0), e.g. `0.1,1` or `0.1 1`.
    #[arg(
        long,
        num_args = 1..,
        value_delimiter = ',',
        allow_negative_numbers = true,
        default_values_t = [0.01, 0.1, 0.5, 1.0, 2.0, 5.0]
    )]
    pub lrs: Vec<f64>,
    /// SGD steps per run.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Training images per mini-batch (at least 2).
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    /// Standard deviation of the Gaussian initial weights (fig1's); biases 0.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub init_std: f64,
    /// Steps per point of the training-loss curves in curves.csv.
    #[arg(long, default_value_t = 100)]
    pub log_every: usize,
    /// Output folder for results.csv, curves.csv, summary.json, lr_sweep.png/.svg and
    /// report.md.
    #[arg(long, default_value = "out/lr-sweep")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl LrSweepArgs {
    /// The experiment's settings.
    pub fn config(&self) -> lr_sweep::Config {
        lr_sweep::Config {
            lrs: self.lrs.clone(),
            steps: self.steps,
            batch_size: self.batch_size,
            init_std: self.init_std,
            log_every: self.log_every,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}

/// How the batch-size experiments size their runs of fig1's MLP: the same number of examples
/// at every batch size, the learning rate scaled linearly with the batch.
#[derive(Debug, Clone, Args)]
pub struct ScaledRuns {
    /// Training examples every run sees (steps = examples / batch size; the global batch under
    /// SyncBN).
    #[arg(long, default_value_t = 240_000)]
    pub examples: usize,
    /// Learning rate at batch size --lr-batch; a (global) batch B uses lr * B / lr-batch.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub lr: f64,
    /// The batch size --lr refers to.
    #[arg(long, default_value_t = 128)]
    pub lr_batch: usize,
    /// Standard deviation of the Gaussian initial weights (fig1's); biases 0.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub init_std: f64,
}

/// `bnlab batch-size`.
#[derive(Debug, Clone, Args)]
pub struct BatchSizeArgs {
    /// Batch sizes (each 2 to 1000), e.g. `2,4` or `2 4`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [2, 4, 8, 16, 32, 64, 128])]
    pub batch_sizes: Vec<usize>,
    #[command(flatten)]
    pub scaled: ScaledRuns,
    /// Test-accuracy evaluations per run, evenly spaced.
    #[arg(long, default_value_t = 10)]
    pub evals: usize,
    /// Output folder for results.csv, curves.csv, summary.json, batch_size.png/.svg and
    /// report.md.
    #[arg(long, default_value = "out/batch-size")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl BatchSizeArgs {
    /// The experiment's settings.
    pub fn config(&self) -> batch_size::Config {
        batch_size::Config {
            batch_sizes: self.batch_sizes.clone(),
            examples: self.scaled.examples,
            lr: self.scaled.lr,
            lr_batch: self.scaled.lr_batch,
            init_std: self.scaled.init_std,
            evals: self.evals,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}

/// `bnlab small-batch`.
#[derive(Debug, Clone, Args)]
pub struct SmallBatchArgs {
    /// Batch sizes of BN, Batch Renorm and GroupNorm (each 2 to 1000), e.g. `2,4` or `2 4`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [2, 4, 8, 16, 32])]
    pub batch_sizes: Vec<usize>,
    #[command(flatten)]
    pub scaled: ScaledRuns,
    /// GroupNorm's groups per 100-unit hidden layer (a divisor of 100).
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// Batch Renormalization's final bound on r (reached at 40/160 of the run).
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub rmax: f64,
    /// Batch Renormalization's final bound on |d| (reached at 25/160 of the run).
    #[arg(long, default_value_t = 5.0, allow_negative_numbers = true)]
    pub dmax: f64,
    /// SyncBN's ranks (threads of this process).
    #[arg(long, default_value_t = 4)]
    pub ranks: usize,
    /// SyncBN's per-rank batch sizes, e.g. `2,4`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [2, 4])]
    pub sync_batches: Vec<usize>,
    /// The large batch Ghost BN and plain BN are compared at.
    #[arg(long, default_value_t = 256)]
    pub ghost_batch: usize,
    /// Ghost BN's virtual batch size (divides --ghost-batch).
    #[arg(long, default_value_t = 32)]
    pub virtual_batch: usize,
    /// Test-accuracy evaluations per run, evenly spaced.
    #[arg(long, default_value_t = 8)]
    pub evals: usize,
    /// Output folder for results.csv, curves.csv, summary.json, small_batch.png/.svg and
    /// report.md.
    #[arg(long, default_value = "out/small-batch")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl SmallBatchArgs {
    /// The experiment's settings.
    pub fn config(&self) -> small_batch::Config {
        small_batch::Config {
            batch_sizes: self.batch_sizes.clone(),
            examples: self.scaled.examples,
            lr: self.scaled.lr,
            lr_batch: self.scaled.lr_batch,
            init_std: self.scaled.init_std,
            groups: self.groups,
            rmax: self.rmax,
            dmax: self.dmax,
            ranks: self.ranks,
            sync_batches: self.sync_batches.clone(),
            ghost_batch: self.ghost_batch,
            virtual_batch: self.virtual_batch,
            evals: self.evals,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}

/// `bnlab cnn`.
#[derive(Debug, Clone, Args)]
pub struct CnnArgs {
    /// The network: `convnet` (two conv blocks with max pooling, with and without BN) or
    /// `resnet` (a stem and three residual basic blocks, with fused BN, unfused BN, and without).
    #[arg(long, default_value = "convnet")]
    pub arch: cnn::Arch,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Learning rate of plain SGD.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub lr: f64,
    /// Training images per mini-batch (2 to 1000).
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    /// Evaluate test accuracy every this many steps (and at step 0 and the end).
    #[arg(long, default_value_t = 250)]
    pub eval_every: usize,
    /// Run only this many steps per epoch (a short run; the time per epoch is extrapolated).
    #[arg(long)]
    pub max_steps_per_epoch: Option<usize>,
    /// Output folder for metrics.csv, summary.json, cnn.png/.svg and report.md.
    #[arg(long, default_value = "out/cnn")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl CnnArgs {
    /// The experiment's settings.
    pub fn config(&self) -> cnn::Config {
        cnn::Config {
            arch: self.arch,
            epochs: self.epochs,
            lr: self.lr,
            batch_size: self.batch_size,
            eval_every: self.eval_every,
            max_steps_per_epoch: self.max_steps_per_epoch,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}

/// `bnlab fold`.
#[derive(Debug, Clone, Args)]
pub struct FoldArgs {
    /// SGD steps of the BN MLP before folding.
    #[arg(long, default_value_t = 2000)]
    pub mlp_steps: usize,
    /// SGD steps of the BN conv net before folding.
    #[arg(long, default_value_t = 500)]
    pub cnn_steps: usize,
    /// Batch sizes the inference time is measured at (each 1 to 1000), e.g. `1,10` or `1 10`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [1, 10, 100, 1000])]
    pub batch_sizes: Vec<usize>,
    /// Timed passes per network, version and batch size (the median is reported).
    #[arg(long, default_value_t = 15)]
    pub repeats: usize,
    /// Test images per timed pass.
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Output folder for timing.csv, summary.json, fold.png/.svg and report.md.
    #[arg(long, default_value = "out/fold")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl FoldArgs {
    /// The experiment's settings.
    pub fn config(&self) -> fold::Config {
        fold::Config {
            mlp_steps: self.mlp_steps,
            cnn_steps: self.cnn_steps,
            batch_sizes: self.batch_sizes.clone(),
            repeats: self.repeats,
            images: self.images,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}

/// `bnlab all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// Parent folder: each experiment writes into `<out>/<name>/`, the combined report into
    /// `<out>/report.md` and `<out>/index.html`.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Tiny settings for every experiment: checks the whole pipeline in seconds (not results).
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub common: Common,
}

impl AllArgs {
    /// The settings.
    pub fn config(&self) -> all::Config {
        all::Config {
            out: self.out.clone(),
            quick: self.quick,
            seed: self.common.seed,
            threads: self.common.threads,
            data: self.common.data.clone(),
        }
    }
}

/// `bnlab sync-bn`.
#[derive(Debug, Clone, Args)]
pub struct SyncBnArgs {
    /// Ranks as threads of this process; under `mpirun -np P` the job's P ranks are used
    /// instead (bnlab built with `--features mpi`).
    #[arg(long, default_value_t = 4)]
    pub ranks: usize,
    /// Training images per rank per step (the global batch is ranks x this).
    #[arg(long, default_value_t = 2)]
    pub per_rank_batch: usize,
    /// SGD steps of each of the three runs.
    #[arg(long, default_value_t = 16_000)]
    pub steps: usize,
    /// Learning rate of plain SGD.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub lr: f64,
    /// Standard deviation of the Gaussian initial weights (fig1's); biases 0.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub init_std: f64,
    /// Evaluate test accuracy every this many steps (and at step 0 and the end).
    #[arg(long, default_value_t = 500)]
    pub eval_every: usize,
    /// Seed of the initial weights and the batch order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder for metrics.csv, summary.json, sync_bn.png/.svg and report.md.
    #[arg(long, default_value = "out/sync-bn")]
    pub out: PathBuf,
    /// Folder with the MNIST IDX files; a relative path is also looked up under the source
    /// checkout.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
}

impl SyncBnArgs {
    /// The experiment's settings.
    pub fn config(&self) -> sync_bn::Config {
        sync_bn::Config {
            ranks: self.ranks,
            per_rank_batch: self.per_rank_batch,
            steps: self.steps,
            lr: self.lr,
            init_std: self.init_std,
            eval_every: self.eval_every,
            seed: self.seed,
            out: self.out.clone(),
            data: self.data.clone(),
        }
    }
}

/// `bnlab why`.
#[derive(Debug, Clone, Args)]
pub struct WhyArgs {
    /// The networks: `mlp` (fig1's 784-100-100-100-10 with ReLUs) or `cnn` (the conv net of
    /// `bnlab cnn`, He-initialised; slower: shorten it with --steps).
    #[arg(long, default_value = "mlp", value_parser = ["mlp", "cnn"])]
    pub arch: String,
    /// SGD steps per network.
    #[arg(long, default_value_t = 6000)]
    pub steps: usize,
    /// Steps between measurements (test accuracy, pre-activations, ICS, landscape).
    #[arg(long, default_value_t = 100)]
    pub measure_every: usize,
    /// Learning rate of plain SGD, the same for the three networks.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub lr: f64,
    /// Training images per mini-batch (at least 2).
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    /// Standard deviation of the MLP's Gaussian initial weights (fig1's); biases 0.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub init_std: f64,
    /// Noisy BN's shift: m ~ U(-shift, shift) per unit, redrawn every step.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub noise_shift: f64,
    /// Noisy BN's scale: s ~ U(1, scale) per unit, redrawn every step.
    #[arg(long, default_value_t = 3.0, allow_negative_numbers = true)]
    pub noise_scale: f64,
    /// Smallest step size of the landscape probe.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub eta_min: f64,
    /// Largest step size of the landscape probe.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub eta_max: f64,
    /// Step sizes of the landscape probe, log-spaced from --eta-min to --eta-max.
    #[arg(long, default_value_t = 9)]
    pub etas: usize,
    /// Training images in the fixed probe batch of the pre-activation percentiles (at most
    /// 250 for the conv net).
    #[arg(long, default_value_t = 1000)]
    pub probe: usize,
    /// Output folder for evals.csv, ics.csv, landscape.csv, summary.json, why_drift,
    /// why_ics and why_landscape (.png/.svg) and report.md.
    #[arg(long, default_value = "out/why")]
    pub out: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

impl WhyArgs {
    /// The experiment's settings.
    pub fn config(&self) -> why::Config {
        why::Config {
            arch: if self.arch == "cnn" {
                why::Arch::Cnn
            } else {
                why::Arch::Mlp
            },
            steps: self.steps,
            measure_every: self.measure_every,
            lr: self.lr,
            batch_size: self.batch_size,
            init_std: self.init_std,
            noise: why::Noise {
                shift: self.noise_shift,
                scale: self.noise_scale,
            },
            eta_min: self.eta_min,
            eta_max: self.eta_max,
            etas: self.etas,
            probe: self.probe,
            seed: self.common.seed,
            threads: self.common.threads,
            out: self.out.clone(),
            data: self.common.data.clone(),
        }
    }
}
