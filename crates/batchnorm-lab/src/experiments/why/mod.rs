//! Why batch normalization works, put to the test (Santurkar, Tsipras, Ilyas & Madry, "How Does
//! Batch Normalization Help Optimization?", NeurIPS 2018) on fig1's MLP with ReLUs (or the conv
//! net of `bnlab cnn`), trained three ways from the same weights on the same batches: with BN,
//! without BN, and with "noisy BN" (BN followed by a random per-channel affine map redrawn
//! every step, [`NoisyAffine`]).
//!
//! Three measurements, each at step 0 and every `measure_every` steps:
//! - distribution drift: the 15th/50th/85th percentiles of one unit of each hidden layer's
//!   pre-activations (ReLU inputs) on a fixed probe batch, and one number per network, the
//!   drift ([`NetRun::drift`]);
//! - gradient-based internal covariate shift ([`ics`]): per layer, how much its weight gradient
//!   changes when the layers below it take their SGD step on the same batch;
//! - the loss landscape along the gradient ([`landscape`]): loss range, gradient predictiveness
//!   and effective beta-smoothness over a log range of step sizes.
//!
//! Results go to `evals.csv`, `ics.csv`, `landscape.csv`, `summary.json`, `why_drift`,
//! `why_ics` and `why_landscape` (PNG and SVG) and `report.md`.

pub mod drift;
mod figures;
pub mod ics;
pub mod landscape;
mod network;
pub mod noisy;
mod output;
mod params;
mod train;

use std::path::PathBuf;
use std::time::Instant;

pub use network::{Arch, Net, ACTIVATION, WIDTHS};
pub use noisy::{Noise, NoisyAffine};
pub use train::{Eval, Measured, NetRun};

use super::data::{fixed_batch, load_mnist, probe_seed};
use super::error::{at_least_one, bad, in_range, non_negative, positive, train_batch_size};
use super::parallel::{finish_bar, log_run, run_jobs};
use super::LabError;
use crate::progress::Progress;

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The networks: fig1's MLP with ReLUs, or the conv net of `bnlab cnn`. Default the MLP.
    pub arch: Arch,
    /// SGD steps per network. Default 6,000 (6 epochs of batch 60).
    pub steps: usize,
    /// Steps between measurements. Default 100.
    pub measure_every: usize,
    /// Learning rate of plain SGD, the same for the three networks. Default 0.1.
    pub lr: f64,
    /// Images per batch (2 to 60,000). Default 60.
    pub batch_size: usize,
    /// Standard deviation of the MLP's Gaussian initial weights. Default 0.05 (fig1's). The
    /// conv net's are He-initialised, as in `bnlab cnn`.
    pub init_std: f64,
    /// The noise of the noisy-BN network. Default shift 1, scale 3.
    pub noise: Noise,
    /// Smallest step size of the landscape probe. Default 0.01.
    pub eta_min: f64,
    /// Largest step size of the landscape probe. Default 1.
    pub eta_max: f64,
    /// Step sizes, log-spaced from `eta_min` to `eta_max` (2 to 100). Default 9.
    pub etas: usize,
    /// Training images in the fixed probe batch (2 to 60,000; the conv net takes at most
    /// [`Arch::eval_batch`]). Default 1,000.
    pub probe: usize,
    /// Seed of the initial weights, the batch order, the probe batch and the noise. Default 1.
    pub seed: u64,
    /// Networks trained at once. Default 2.
    pub threads: usize,
    /// Output folder. Default `out/why`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            arch: Arch::Mlp,
            steps: 6000,
            measure_every: 100,
            lr: 0.1,
            batch_size: 60,
            init_std: 0.05,
            noise: Noise {
                shift: 1.0,
                scale: 3.0,
            },
            eta_min: 0.01,
            eta_max: 1.0,
            etas: 9,
            probe: 1000,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/why"),
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
        at_least_one("--steps", self.steps)?;
        at_least_one("--measure-every", self.measure_every)?;
        positive("--lr", self.lr)?;
        train_batch_size(self.batch_size)?;
        non_negative("--init-std", self.init_std)?;
        non_negative("--noise-shift", self.noise.shift)?;
        if !(self.noise.scale.is_finite() && self.noise.scale >= 1.0) {
            return bad("--noise-scale", self.noise.scale, "must be finite and >= 1");
        }
        positive("--eta-min", self.eta_min)?;
        positive("--eta-max", self.eta_max)?;
        if self.eta_max < self.eta_min {
            return bad("--eta-max", self.eta_max, "must be >= --eta-min");
        }
        in_range("--etas", self.etas, 2..=100, "must be between 2 and 100")?;
        in_range(
            "--probe",
            self.probe,
            2..=60_000,
            "must be between 2 and 60000",
        )?;
        at_least_one("--threads", self.threads)
    }

    /// The landscape's step sizes: `etas` values from `eta_min` to `eta_max`, evenly spaced
    /// on a log scale.
    pub fn step_sizes(&self) -> Vec<f64> {
        let ratio = self.eta_max / self.eta_min;
        let last = (self.etas - 1).max(1) as f64;
        (0..self.etas)
            .map(|k| self.eta_min * ratio.powf(k as f64 / last))
            .collect()
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// The runs, in [`Net::ALL`] order.
    pub runs: Vec<NetRun>,
    /// Seconds from the start to the end of training (loading included, writing excluded).
    pub wall_seconds: f64,
}

impl Outcome {
    /// Hidden layers whose pre-activations were probed (3 for the MLP, 2 for the conv net).
    pub fn hidden_layers(&self) -> usize {
        let first = self.runs.first().and_then(|r| r.evals.first());
        first.map_or(0, |e| e.layers.len())
    }

    /// Layers whose gradient-based ICS was measured (3 for the MLP, 2 for the conv net).
    pub fn shifted_layers(&self) -> usize {
        let first = self.runs.first().and_then(|r| r.measured.first());
        first.map_or(0, |m| m.ics.len())
    }
}

/// Runs the experiment and writes its outputs into `cfg.out`.
///
/// # Errors
/// A bad setting, unreadable data, or an unwritable output folder (checked before training).
pub fn run(cfg: &Config) -> Result<Outcome, LabError> {
    cfg.validate()?;
    super::output::prepare_out(&cfg.out)?;
    let start = Instant::now();
    let (data, _) = load_mnist(&cfg.data)?;
    let eval_batch = cfg.arch.eval_batch();
    let probe_len = cfg.probe.min(eval_batch);
    let (probe, _) = fixed_batch(&data.train, probe_seed(cfg.seed), probe_len)?;
    let probe_size = probe.len() / data.train.pixels();
    let etas = cfg.step_sizes();
    let probe_units = cfg.arch.probe_units();
    let inputs = train::Inputs {
        train: &data.train,
        test: &data.test,
        probe: &probe,
        probe_size,
        etas: &etas,
        probe_units: &probe_units,
        eval_batch,
    };
    let init = network::Init::new(cfg.arch, cfg.seed, cfg.init_std)?;
    let capacity = cfg
        .batch_size
        .max(eval_batch.min(data.test.len()))
        .max(probe_size);
    let progress = Progress::new();
    let nets = Net::ALL;
    let runs = run_jobs(&nets, cfg.threads, |i, &net| {
        let bar = progress.add(net.key(), cfg.steps as u64);
        let model = network::build(&init, net, cfg.noise, cfg.seed, capacity)?;
        let run = train::train(net, model, &inputs, cfg, &bar)?;
        let last_loss = run.evals.last().map_or(f64::NAN, |e| e.train_loss);
        finish_bar(&bar, cfg.steps, last_loss, run.final_test_accuracy());
        log_run("why", i, nets.len(), || {
            format!(
                "{}: test accuracy {:.4}, drift {:.4}, {:.1} s",
                net.key(),
                run.final_test_accuracy(),
                run.drift(),
                run.seconds
            )
        });
        Ok(run)
    })?;
    let outcome = Outcome {
        config: cfg.clone(),
        runs,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

/// Prints the headline numbers per network and the output folder to stdout.
pub fn print_summary(o: &Outcome) {
    for r in &o.runs {
        let h = output::Headline::of(r);
        println!(
            "{:>8}: test accuracy {:.4}, drift {:.4}, ICS ||G-G'|| {:.4} (cos {:.3}), loss range {:.4}, grad change {:.4}, beta {:.3}",
            r.net.key(),
            r.final_test_accuracy(),
            r.drift(),
            h.ics_l2,
            h.ics_cosine,
            h.loss_range,
            h.grad_change,
            h.beta
        );
    }
    super::output::print_wall_time(o.wall_seconds, &o.config.out);
}
