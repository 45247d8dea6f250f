//! Figure 1 of Ioffe and Szegedy (2015): a 784-100-100-100-10 sigmoid MLP on MNIST trained with
//! and without batch normalization, from the same initial weights and the same batch order.
//!
//! Every `eval_every` steps both networks are evaluated: test accuracy on the 10,000 test images
//! (the BN network with its running statistics), and the 15th/50th/85th percentiles of the input
//! to one fixed sigmoid of the last hidden layer over a fixed probe batch of 1,000 training
//! images, fed with batch statistics and without touching the running statistics. Results go to
//! `metrics.csv`, `summary.json`, `fig1.png`, `fig1.svg` and `report.md`.

pub mod checkpoint;
mod network;
mod output;
mod train;

use std::path::PathBuf;
use std::time::Instant;

pub use network::{Variant, WIDTHS};
pub use train::{EvalRecord, NetRun, QUANTILES};

use super::data::probe_seed;
use super::error::{at_least_one, non_negative, positive, train_batch_size};
pub use super::{LabError, EVAL_CHUNK};
use crate::progress::Progress;
/// Training images in the fixed probe batch.
pub const PROBE_SIZE: usize = 1000;
/// Which sigmoid of the last hidden layer is probed.
pub const PROBE_UNIT: usize = 0;

/// Settings of the experiment; the defaults are the paper's.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// SGD steps per network. Default 50,000.
    pub steps: usize,
    /// Learning rate of plain SGD. Default 0.01.
    pub lr: f64,
    /// Images per batch. Default 60. At least 2 (batch statistics need two values).
    pub batch_size: usize,
    /// Standard deviation of the Gaussian initial weights. Default 0.05.
    pub init_std: f64,
    /// Seed of the initial weights, the batch order and the probe batch. Default 1.
    pub seed: u64,
    /// Steps between evaluations. Default 500.
    pub eval_every: usize,
    /// Threads: 2 trains the two networks at once, 1 one after the other. Default 2.
    pub threads: usize,
    /// Output folder. Default `out/fig1`.
    pub out: PathBuf,
    /// Folder holding the four MNIST IDX files (`.gz` or plain).
    pub data: PathBuf,
    /// Save a checkpoint every this many steps and at the last step, into
    /// [`checkpoint::dir`]. Default `None`: no checkpoints.
    pub checkpoint_every: Option<usize>,
    /// Continue the run checkpointed in this folder (same settings required). Default `None`.
    pub resume: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            steps: 50_000,
            lr: 0.01,
            batch_size: 60,
            init_std: 0.05,
            seed: 1,
            eval_every: 500,
            threads: 2,
            out: PathBuf::from("out/fig1"),
            data: PathBuf::from("data/mnist"),
            checkpoint_every: None,
            resume: None,
        }
    }
}

impl Config {
    /// Checks every setting's range.
    ///
    /// # Errors
    /// [`LabError::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), LabError> {
        at_least_one("--steps", self.steps)?;
        positive("--lr", self.lr)?;
        train_batch_size(self.batch_size)?;
        non_negative("--init-std", self.init_std)?;
        at_least_one("--eval-every", self.eval_every)?;
        at_least_one("--threads", self.threads)?;
        if let Some(every) = self.checkpoint_every {
            at_least_one("--checkpoint-every", every)?;
        }
        Ok(())
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// The network without batch normalization.
    pub plain: NetRun,
    /// The network with batch normalization.
    pub bn: NetRun,
    /// Seconds from the start of the run to the end of training (data loading included,
    /// writing the outputs excluded); for a resumed run, over every session.
    pub wall_seconds: f64,
    /// Seconds spent loading MNIST.
    pub load_seconds: f64,
}

impl Outcome {
    /// Training steps of both networks per wall-clock second (evaluation and loading included).
    pub fn steps_per_second(&self) -> f64 {
        2.0 * self.config.steps as f64 / self.wall_seconds
    }
}

/// Runs the experiment and writes its outputs into `cfg.out`.
///
/// # Errors
/// A bad setting, unreadable data, or an unwritable output folder.
pub fn run(cfg: &Config) -> Result<Outcome, LabError> {
    cfg.validate()?;
    super::output::prepare_out(&cfg.out)?;
    checkpoint::check_fresh(cfg)?;
    let start = Instant::now();
    let (data, load_seconds) = super::data::load_mnist(&cfg.data)?;

    // The fixed probe batch: PROBE_SIZE training images chosen by the seed.
    let (probe, _) = super::data::fixed_batch(&data.train, probe_seed(cfg.seed), PROBE_SIZE)?;
    let probe_size = probe.len() / data.train.pixels();
    let inputs = train::Inputs {
        start,
        train: &data.train,
        test: &data.test,
        probe: &probe,
        probe_size,
    };

    let linears = network::initial_linears(cfg.seed, cfg.init_std)?;
    let capacity = cfg.batch_size.max(EVAL_CHUNK).max(probe_size);
    let mut plain = network::build(&linears, Variant::Plain, capacity)?;
    let mut bn = network::build(&linears, Variant::BatchNorm, capacity)?;

    let (resume_bn, resume_plain) = match &cfg.resume {
        Some(dir) => {
            let (bn, plain) = checkpoint::load_both(dir, cfg, data.train.len())?;
            (Some(bn), Some(plain))
        }
        None => {
            if cfg.checkpoint_every.is_some() {
                let nets = [(Variant::BatchNorm, &mut bn), (Variant::Plain, &mut plain)];
                let wall = start.elapsed().as_secs_f64();
                checkpoint::save_start(cfg, nets, data.train.len(), wall)?;
            }
            (None, None)
        }
    };
    // Wall-clock seconds of the earlier sessions of a resumed run (each network's checkpoint
    // records the run's wall clock when it was saved).
    let earlier = [&resume_bn, &resume_plain]
        .iter()
        .filter_map(|r| r.as_ref().map(|r| (r.state.step, r.state.wall_seconds)))
        .collect::<Vec<_>>();
    let finished = !earlier.is_empty() && earlier.iter().all(|&(step, _)| step == cfg.steps);
    let earlier_seconds = earlier.iter().map(|&(_, w)| w).fold(0.0, f64::max);

    let progress = Progress::new();
    let bar_bn = progress.add(Variant::BatchNorm.key(), cfg.steps as u64);
    let bar_plain = progress.add(Variant::Plain.key(), cfg.steps as u64);
    let train_bn = || train::train(Variant::BatchNorm, bn, &inputs, cfg, &bar_bn, resume_bn);
    let train_plain = || {
        train::train(
            Variant::Plain,
            plain,
            &inputs,
            cfg,
            &bar_plain,
            resume_plain,
        )
    };
    let (bn_run, plain_run) = if cfg.threads >= 2 {
        std::thread::scope(|s| {
            let h = s.spawn(train_plain);
            let bn_run = train_bn();
            let plain_run = h.join().map_err(|_| LabError::Panicked("plain".into()));
            (bn_run, plain_run.and_then(|r| r))
        })
    } else {
        (train_bn(), train_plain())
    };
    let outcome = Outcome {
        config: cfg.clone(),
        plain: plain_run?,
        bn: bn_run?,
        // A finished run resumed trains nothing: its timing is the original run's.
        wall_seconds: if finished {
            earlier_seconds
        } else {
            earlier_seconds + start.elapsed().as_secs_f64()
        },
        load_seconds,
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

/// Prints the headline numbers and the output folder to stdout.
pub fn print_summary(o: &Outcome) {
    for run in [&o.bn, &o.plain] {
        let fin = run.last().map_or(f64::NAN, |e| e.test_accuracy);
        let best = run.best().map_or(f64::NAN, |b| b.0);
        let to = |t| {
            run.steps_to(t)
                .map_or_else(|| "never".to_owned(), |s| s.to_string())
        };
        println!(
            "{:>6}: final test accuracy {:.4}, best {:.4}, 90% at step {}, 95% at step {}, {:.0} steps/s",
            run.variant.key(),
            fin,
            best,
            to(0.90),
            to(0.95),
            run.steps_per_second(o.config.steps)
        );
    }
    println!(
        "wall time {:.1} s ({:.0} steps/s over both networks); outputs in {}",
        o.wall_seconds,
        o.steps_per_second(),
        o.config.out.display()
    );
}
