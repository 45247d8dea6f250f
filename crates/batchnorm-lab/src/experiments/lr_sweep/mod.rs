//! Learning-rate robustness: the 784-100-100-100-10 MLP of fig1 with sigmoid or ReLU hidden
//! units, with and without batch normalization, trained at each of several learning rates.
//!
//! Every run starts from the same weights and sees the same batches. Recorded: the test
//! accuracy after the last step (BN with running statistics) and whether training diverged: a
//! non-finite loss at any step (training stops there: the weights are NaN from then on), test
//! outputs that are NaN or infinite after training, or a mean loss above 10 times the first
//! batch's over every window from some point to the end. A run whose loss rose above that and
//! came back down has recovered: it is not diverged (its first such step is kept, `spiked_at`).
//!
//! Outputs: `results.csv` (one row per run), `curves.csv` (mean training loss per window),
//! `summary.json`, `lr_sweep.png`/`.svg`, `report.md`.

mod output;

use std::path::PathBuf;
use std::time::Instant;

use batchnorm_nn::data::Split;
use batchnorm_nn::layers::Mode;

use super::error::{at_least_one, bad, non_negative, train_batch_size};
use super::evaluate::Accuracy;
use super::mlp::{self, Activation};
use super::output::{net_key, print_wall_time};
use super::parallel::{finish_bar, log_run, run_jobs};
use super::sampler::order_seed;
use super::trainer::Trainer;
use super::{LabError, EVAL_CHUNK};
use crate::progress::Progress;

/// Layer widths: as fig1.
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];
/// A loss above this multiple of the first batch's loss, to the end of the run, marks a run as
/// diverged.
pub const DIVERGENCE_FACTOR: f64 = 10.0;

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Learning rates. Default 0.01, 0.1, 0.5, 1, 2, 5.
    pub lrs: Vec<f64>,
    /// SGD steps per run. Default 3,000.
    pub steps: usize,
    /// Images per batch. Default 60.
    pub batch_size: usize,
    /// Initial weights from N(0, std^2), biases 0 (fig1's). Default 0.05.
    pub init_std: f64,
    /// Steps per point of the training-loss curves. Default 100.
    pub log_every: usize,
    /// Seed of the weights and the batch order. Default 1.
    pub seed: u64,
    /// Runs trained at once. Default 2.
    pub threads: usize,
    /// Output folder. Default `out/lr-sweep`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lrs: vec![0.01, 0.1, 0.5, 1.0, 2.0, 5.0],
            steps: 3000,
            batch_size: 60,
            init_std: 0.05,
            log_every: 100,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/lr-sweep"),
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
        if self.lrs.is_empty() {
            return Err(LabError::EmptyList { what: "--lrs" });
        }
        if let Some(&lr) = self.lrs.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
            return bad("--lrs", lr, "each must be finite and > 0");
        }
        at_least_one("--steps", self.steps)?;
        train_batch_size(self.batch_size)?;
        non_negative("--init-std", self.init_std)?;
        at_least_one("--log-every", self.log_every)?;
        at_least_one("--threads", self.threads)
    }
}

/// One training run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Hidden nonlinearity.
    pub activation: Activation,
    /// With batch normalization.
    pub batch_norm: bool,
    /// Learning rate.
    pub lr: f64,
    /// Loss of the first batch (before any update).
    pub initial_loss: f64,
    /// Largest finite batch loss seen.
    pub max_loss: f64,
    /// Mean training loss over the last `log_every` steps trained (NaN once diverged to NaN).
    pub final_loss: f64,
    /// Where the run diverged: the step its loss became non-finite, or the first step of the
    /// windows whose mean loss stayed above 10x the initial loss to the end. `None` if it did
    /// not (or only its test outputs became NaN: [`Run::nan_outputs`]).
    pub diverged_at: Option<usize>,
    /// The first step whose batch loss was above 10x the initial loss, even if it recovered.
    pub spiked_at: Option<usize>,
    /// Whether the loss became NaN or infinite (training stopped there).
    pub non_finite: bool,
    /// Whether some test outputs were NaN or infinite after training (no prediction).
    pub nan_outputs: bool,
    /// Steps trained.
    pub steps_done: usize,
    /// Test accuracy after training (BN with running statistics; a row with a NaN counts as
    /// wrong).
    pub test_accuracy: f64,
    /// Mean training loss per window of `log_every` steps: (last step of the window, loss).
    pub curve: Vec<(usize, f64)>,
    /// Seconds of training.
    pub train_seconds: f64,
}

impl Run {
    /// `"bn"` or `"plain"`.
    pub fn net_key(&self) -> &'static str {
        net_key(self.batch_norm)
    }

    /// Whether the run diverged: NaN loss or outputs, or a loss above 10x the initial loss
    /// to the end.
    pub fn diverged(&self) -> bool {
        self.diverged_at.is_some() || self.nan_outputs
    }
}

/// The outcome of a sweep.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// Runs by activation (sigmoid first), BN first, then learning rate.
    pub runs: Vec<Run>,
    /// Wall-clock seconds (loading included, writing excluded).
    pub wall_seconds: f64,
}

impl Outcome {
    /// The runs of one activation and variant, by learning rate.
    pub fn series(&self, activation: Activation, batch_norm: bool) -> Vec<&Run> {
        self.runs
            .iter()
            .filter(|r| r.activation == activation && r.batch_norm == batch_norm)
            .collect()
    }
}

/// Runs the sweep and writes its outputs into `cfg.out`.
///
/// # Errors
/// A bad setting, unreadable data, or an unwritable output folder.
pub fn run(cfg: &Config) -> Result<Outcome, LabError> {
    cfg.validate()?;
    super::output::prepare_out(&cfg.out)?;
    let start = Instant::now();
    let (data, _) = super::data::load_mnist(&cfg.data)?;
    let linears = mlp::initial_linears(&WIDTHS, cfg.seed, |_| cfg.init_std)?;
    let mut jobs = Vec::new();
    for activation in [Activation::Sigmoid, Activation::Relu] {
        for bn in [true, false] {
            for &lr in &cfg.lrs {
                jobs.push((activation, bn, lr));
            }
        }
    }
    let progress = Progress::new();
    let total = jobs.len();
    let runs = run_jobs(&jobs, cfg.threads, |i, &(activation, bn, lr)| {
        let name = format!("{} {} lr {lr}", activation.key(), net_key(bn));
        let bar = progress.add(&name, cfg.steps as u64);
        let model = mlp::build(&linears, activation, bn, cfg.batch_size.max(EVAL_CHUNK))?;
        let r = train_one(
            cfg,
            model,
            (activation, bn, lr),
            &data.train,
            &data.test,
            &bar,
        )?;
        finish_bar(&bar, r.steps_done, r.final_loss, r.test_accuracy);
        log_run("lr-sweep", i, total, || {
            format!(
                "{name}: test accuracy {:.4}{}",
                r.test_accuracy,
                match (r.diverged_at, r.non_finite) {
                    (Some(s), true) => format!(", diverged (NaN) at step {s}"),
                    (Some(s), false) => format!(", diverged (loss > 10x initial) at step {s}"),
                    (None, _) => String::new(),
                }
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
    (activation, batch_norm, lr): (Activation, bool, f64),
    train: &Split,
    test: &Split,
    bar: &crate::progress::NetProgress,
) -> Result<Run, LabError> {
    let mut trainer = Trainer::new(model, lr, cfg.batch_size, order_seed(cfg.seed), train.len())?;
    let t = Instant::now();
    let (mut initial_loss, mut max_loss) = (f64::NAN, f64::NEG_INFINITY);
    let mut watch = Divergence::default();
    let (mut window, mut since) = (0.0, 0usize);
    let mut curve = Vec::new();
    let mut final_loss = f64::NAN;
    let mut steps_done = 0;
    for step in 1..=cfg.steps {
        let loss = trainer.step(train)?.loss;
        steps_done = step;
        if step == 1 {
            initial_loss = loss;
        }
        let limit = DIVERGENCE_FACTOR * initial_loss;
        if !loss.is_finite() {
            watch.non_finite(step);
            curve.push((step, loss));
            final_loss = loss;
            break;
        }
        max_loss = max_loss.max(loss);
        watch.batch(step, loss, limit);
        window += loss;
        since += 1;
        if step.is_multiple_of(cfg.log_every) || step == cfg.steps {
            final_loss = window / since as f64;
            watch.window(step + 1 - since, final_loss, limit);
            curve.push((step, final_loss));
            (window, since) = (0.0, 0);
        }
        if step.is_multiple_of(100) {
            bar.set_step(step as u64);
        }
    }
    let train_seconds = t.elapsed().as_secs_f64();
    let mut accuracy = Accuracy::new(test);
    let test_accuracy = accuracy.run(&mut trainer.model, test, Mode::Eval)?;
    let (diverged_at, spiked_at, non_finite) = (watch.diverged_at(), watch.spiked_at, watch.nan);
    let nan_outputs = accuracy.non_finite_rows > 0;
    Ok(Run {
        activation,
        batch_norm,
        lr,
        initial_loss,
        max_loss,
        final_loss,
        diverged_at,
        spiked_at,
        non_finite,
        nan_outputs,
        steps_done,
        test_accuracy,
        curve,
        train_seconds,
    })
}

/// Watches a run's losses for divergence.
#[derive(Debug, Default, Clone, PartialEq)]
struct Divergence {
    /// Whether the loss became non-finite.
    nan: bool,
    /// The step it did.
    nan_at: Option<usize>,
    /// The first step of the current stretch of windows whose mean loss is above the limit.
    above_since: Option<usize>,
    /// The first step whose batch loss was above the limit.
    spiked_at: Option<usize>,
}

impl Divergence {
    /// A non-finite loss at `step`: training stops.
    fn non_finite(&mut self, step: usize) {
        self.nan = true;
        self.nan_at = Some(step);
    }

    /// A finite batch loss.
    fn batch(&mut self, step: usize, loss: f64, limit: f64) {
        if loss > limit {
            self.spiked_at.get_or_insert(step);
        }
    }

    /// The mean loss of a window starting at step `first`: above the limit it starts (or
    /// continues) a stretch; at or below it, the run has recovered.
    fn window(&mut self, first: usize, mean: f64, limit: f64) {
        if mean > limit {
            self.above_since.get_or_insert(first);
        } else {
            self.above_since = None;
        }
    }

    /// Where the run diverged, if it did: its NaN step, or the stretch that lasted to the end.
    fn diverged_at(&self) -> Option<usize> {
        self.nan_at.or(self.above_since)
    }
}

/// Prints one line per run to stdout.
pub fn print_summary(o: &Outcome) {
    for r in &o.runs {
        println!(
            "{:>7} {:>5} lr {:>5}: test accuracy {:.4}, final loss {:.4}{}",
            r.activation.key(),
            r.net_key(),
            r.lr,
            r.test_accuracy,
            r.final_loss,
            if r.diverged() { ", diverged" } else { "" }
        );
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_recovery_is_not_divergence() {
        let mut d = Divergence::default();
        d.batch(5, 30.0, 23.0);
        d.window(1, 25.0, 23.0);
        assert_eq!((d.diverged_at(), d.spiked_at), (Some(1), Some(5)));
        d.window(11, 2.0, 23.0);
        assert_eq!((d.diverged_at(), d.spiked_at), (None, Some(5)));
        // Above again to the end: diverged from the start of that stretch.
        d.window(21, 24.0, 23.0);
        d.window(31, 40.0, 23.0);
        assert_eq!(d.diverged_at(), Some(21));
        d.non_finite(35);
        assert_eq!(d.diverged_at(), Some(35));
        assert!(d.nan);
    }
}
