//! Batch size and BN: fig1's BN network trained with several batch sizes for the same number of
//! training examples, the learning rate scaled linearly with the batch size (the same step per
//! example).
//!
//! Test accuracy is measured with the running statistics (evaluation mode, as deployed) and,
//! for comparison, with batch statistics over consecutive test batches of the training batch
//! size (the statistics the network was trained with).
//!
//! Outputs: `results.csv`, `curves.csv`, `summary.json`, `batch_size.png`/`.svg`, `report.md`.

mod output;

use std::path::PathBuf;
use std::time::Instant;

use batchnorm_nn::data::Mnist;
use batchnorm_nn::layers::Mode;

use super::error::{at_least_one, bad, each_in_range, non_negative, positive};
use super::evaluate::Accuracy;
use super::mlp::{self, Activation};
use super::output::print_wall_time;
use super::parallel::{finish_bar, log_run, run_jobs};
use super::sampler::order_seed;
use super::trainer::{train_evaluating, Trainer};
use super::{LabError, EVAL_CHUNK};
use crate::progress::Progress;

/// Layer widths: as fig1.
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Batch sizes. Default 2, 4, 8, 16, 32, 64, 128.
    pub batch_sizes: Vec<usize>,
    /// Training examples each run sees (steps = examples / batch size). Default 240,000
    /// (four epochs).
    pub examples: usize,
    /// Learning rate at batch size `lr_batch`; a batch of `B` uses `lr * B / lr_batch`.
    /// Default 1.0.
    pub lr: f64,
    /// The batch size `lr` refers to. Default 128.
    pub lr_batch: usize,
    /// Initial weights from N(0, std^2), biases 0 (fig1's). Default 0.05.
    pub init_std: f64,
    /// Test accuracy is evaluated this many times per run, evenly spaced in examples.
    /// Default 10.
    pub evals: usize,
    /// Seed of the weights and the batch order. Default 1.
    pub seed: u64,
    /// Runs trained at once. Default 2.
    pub threads: usize,
    /// Output folder. Default `out/batch-size`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            batch_sizes: vec![2, 4, 8, 16, 32, 64, 128],
            examples: 240_000,
            lr: 1.0,
            lr_batch: 128,
            init_std: 0.05,
            evals: 10,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/batch-size"),
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
        each_in_range(
            "--batch-sizes",
            &self.batch_sizes,
            2..=EVAL_CHUNK,
            "each must be between 2 and 1000",
        )?;
        let largest = self.batch_sizes.iter().copied().max().unwrap_or(2);
        if self.examples < largest {
            return bad(
                "--examples",
                self.examples,
                "must be at least the largest batch size",
            );
        }
        positive("--lr", self.lr)?;
        at_least_one("--lr-batch", self.lr_batch)?;
        non_negative("--init-std", self.init_std)?;
        at_least_one("--evals", self.evals)?;
        at_least_one("--threads", self.threads)
    }

    /// The learning rate of batch size `b`.
    pub fn lr_for(&self, b: usize) -> f64 {
        self.lr * b as f64 / self.lr_batch as f64
    }
}

/// One batch size's run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate used.
    pub lr: f64,
    /// SGD steps (examples / batch size).
    pub steps: usize,
    /// Test accuracy with running statistics after the last step.
    pub test_accuracy: f64,
    /// Test accuracy with batch statistics over test batches of `batch_size`.
    pub test_accuracy_batch_stats: f64,
    /// Mean training loss over the last tenth of the run.
    pub final_train_loss: f64,
    /// (examples seen, test accuracy with running statistics) along the run.
    pub curve: Vec<(usize, f64)>,
    /// Seconds of training (evaluations excluded).
    pub train_seconds: f64,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// Runs by batch size, ascending.
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
    // Smallest batches first: they take the most steps.
    let mut jobs = cfg.batch_sizes.clone();
    jobs.sort_unstable();
    jobs.dedup();
    let progress = Progress::new();
    let total = jobs.len();
    let runs = run_jobs(&jobs, cfg.threads, |i, &b| {
        let steps = cfg.examples / b;
        let bar = progress.add(&format!("batch {b}"), steps as u64);
        let model = mlp::build(&linears, Activation::Sigmoid, true, EVAL_CHUNK)?;
        let r = train_one(cfg, model, b, &data, &bar)?;
        finish_bar(&bar, steps, r.final_train_loss, r.test_accuracy);
        log_run("batch-size", i, total, || {
            format!(
                "batch {b}, lr {}: test accuracy {:.4} (running statistics), {:.4} (batch statistics), {:.1} s",
                r.lr,
                r.test_accuracy,
                r.test_accuracy_batch_stats,
                r.train_seconds
            )
        });
        Ok(r)
    })?;
    let outcome = Outcome {
        config: cfg.clone(),
        runs,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

fn train_one(
    cfg: &Config,
    model: batchnorm_nn::Sequential<f32>,
    b: usize,
    data: &Mnist,
    bar: &crate::progress::NetProgress,
) -> Result<Run, LabError> {
    let steps = cfg.examples / b;
    let lr = cfg.lr_for(b);
    let mut trainer = Trainer::new(model, lr, b, order_seed(cfg.seed), data.train.len())?;
    let tail_from = steps - steps / 10;
    let (mut tail_loss, mut tail_n) = (0.0, 0usize);
    let (curve, train_seconds) =
        train_evaluating(&mut trainer, data, steps, cfg.evals, bar, |step, loss| {
            if step > tail_from {
                tail_loss += loss;
                tail_n += 1;
            }
        })?;
    let test_accuracy = curve.last().map_or(f64::NAN, |c| c.1);
    let test_accuracy_batch_stats = Accuracy::new(&data.test).run_chunked(
        &mut trainer.model,
        &data.test,
        Mode::BatchStats,
        b,
    )?;
    Ok(Run {
        batch_size: b,
        lr,
        steps,
        test_accuracy,
        test_accuracy_batch_stats,
        final_train_loss: tail_loss / tail_n.max(1) as f64,
        curve,
        train_seconds,
    })
}

/// Prints one line per run to stdout.
pub fn print_summary(o: &Outcome) {
    for r in &o.runs {
        println!(
            "batch {:>4} (lr {:.4}, {} steps): test accuracy {:.4} with running statistics, {:.4} with batch statistics; final loss {:.4}; {:.1} s",
            r.batch_size,
            r.lr,
            r.steps,
            r.test_accuracy,
            r.test_accuracy_batch_stats,
            r.final_train_loss,
            r.train_seconds
        );
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}
