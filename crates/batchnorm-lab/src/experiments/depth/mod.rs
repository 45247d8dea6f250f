//! Gradient flow across depth: sigmoid MLPs of several depths with and without batch
//! normalization, from the same initial weights.
//!
//! For every network, at initialisation and after `steps` SGD steps, on one fixed batch of
//! `probe` training images (batch statistics, running statistics untouched): the Frobenius norm
//! of the loss gradient with respect to every linear layer's weights, and the mean and standard
//! deviation (over all units and images) of every hidden layer's pre-activation `z = W x + b`
//! and of the sigmoid's input (`z` itself without BN, `BN(z)` with it). The claim under test:
//! without BN the gradient shrinks geometrically toward the input (each sigmoid contributes a
//! factor `sigma' <= 0.25`); with BN it stays within an order of magnitude across layers.
//!
//! Outputs: `gradients.csv`, `activations.csv`, `summary.json`, `depth.png`/`.svg` (gradient
//! norm per layer, log scale, one panel per depth, plus the spread against depth),
//! `depth_preact.png`/`.svg` (pre-activation statistics of the deepest pair), `report.md`.

mod output;

use std::path::PathBuf;
use std::time::Instant;

use batchnorm_nn::data::Split;
use batchnorm_nn::layers::Mode;
use batchnorm_nn::{Sequential, SoftmaxCrossEntropy};

use super::data::probe_seed;
use super::error::{
    at_least_one, each_in_range, in_range, non_negative, positive, train_batch_size,
};
use super::mlp::{self, Activation};
use super::output::{net_key, print_wall_time};
use super::parallel::run_jobs;
use super::sampler::order_seed;
use super::trainer::Trainer;
use super::{LabError, EVAL_CHUNK};
use crate::progress::Progress;

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Numbers of hidden layers. Default 3, 5, 10, 15, 20.
    pub depths: Vec<usize>,
    /// Units per hidden layer. Default 100.
    pub width: usize,
    /// SGD steps between the two measurements. Default 1,000.
    pub steps: usize,
    /// Learning rate of plain SGD. Default 0.1.
    pub lr: f64,
    /// Images per training batch. Default 60.
    pub batch_size: usize,
    /// Weights start from N(0, (gain / sqrt(fan_in))^2) (LeCun's normal initialisation for
    /// gain 1), biases 0. Default 1.
    pub init_gain: f64,
    /// Training images in the fixed batch the gradients and statistics are measured on.
    /// Default 1,000.
    pub probe: usize,
    /// Seed of the weights, the batch order and the measurement batch. Default 1.
    pub seed: u64,
    /// Networks trained at once. Default 2.
    pub threads: usize,
    /// Output folder. Default `out/depth`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            depths: vec![3, 5, 10, 15, 20],
            width: 100,
            steps: 1000,
            lr: 0.1,
            batch_size: 60,
            init_gain: 1.0,
            probe: 1000,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/depth"),
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
        each_in_range("--depths", &self.depths, 1..=100, "each must be in 1..=100")?;
        in_range("--width", self.width, 1..=10_000, "must be in 1..=10000")?;
        positive("--lr", self.lr)?;
        train_batch_size(self.batch_size)?;
        non_negative("--init-gain", self.init_gain)?;
        in_range(
            "--probe",
            self.probe,
            2..=60_000,
            "must be between 2 and 60000",
        )?;
        at_least_one("--threads", self.threads)
    }
}

/// What was measured on one network at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Training steps done.
    pub step: usize,
    /// Mean loss on the measurement batch.
    pub loss: f64,
    /// `||dL/dW||` of every linear layer, input side first (`depth + 1` values).
    pub grad_norms: Vec<f64>,
    /// Per hidden layer: mean and std of `z = W x + b`.
    pub z: Vec<(f64, f64)>,
    /// Per hidden layer: mean and std of the sigmoid's input (`z`, or `BN(z)`).
    pub act_in: Vec<(f64, f64)>,
}

impl Snapshot {
    /// Largest over smallest gradient norm across the layers (infinite if one is 0).
    pub fn spread(&self) -> f64 {
        let (lo, hi) = self
            .grad_norms
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), &g| {
                (lo.min(g), hi.max(g))
            });
        hi / lo
    }

    /// The factor by which the gradient norm changes per layer toward the input, from a
    /// least-squares line through `log10 ||dL/dW_l||` against `l` over the hidden layers'
    /// weights (`W_1 .. W_depth`; the output layer is left out: it has no sigmoid above it).
    /// NaN for fewer than two layers or a zero norm.
    pub fn factor_per_layer(&self) -> f64 {
        let ys: Vec<f64> = self.grad_norms[..self.grad_norms.len() - 1]
            .iter()
            .map(|g| g.log10())
            .collect();
        if ys.len() < 2 || ys.iter().any(|y| !y.is_finite()) {
            return f64::NAN;
        }
        let n = ys.len() as f64;
        let mx = (n - 1.0) / 2.0;
        let my = ys.iter().sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, y) in ys.iter().enumerate() {
            let dx = i as f64 - mx;
            sxy += dx * (y - my);
            sxx += dx * dx;
        }
        // Toward the input is toward smaller l: the factor per layer downwards is 10^-slope.
        10f64.powf(-sxy / sxx)
    }
}

/// One network's run.
#[derive(Debug, Clone, PartialEq)]
pub struct NetRun {
    /// Hidden layers.
    pub depth: usize,
    /// With batch normalization.
    pub batch_norm: bool,
    /// At initialisation.
    pub init: Snapshot,
    /// After training.
    pub trained: Snapshot,
    /// Test accuracy after training (BN with running statistics).
    pub test_accuracy: f64,
    /// Mean training loss over the last 100 steps (or all, if fewer).
    pub final_train_loss: f64,
    /// Seconds of training.
    pub train_seconds: f64,
}

impl NetRun {
    /// `"bn"` or `"plain"`.
    pub fn key(&self) -> &'static str {
        net_key(self.batch_norm)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// One run per depth and variant, by depth, BN first.
    pub runs: Vec<NetRun>,
    /// Wall-clock seconds (loading included, writing excluded).
    pub wall_seconds: f64,
}

impl Outcome {
    /// The run of `depth` with or without BN.
    pub fn get(&self, depth: usize, batch_norm: bool) -> Option<&NetRun> {
        self.runs
            .iter()
            .find(|r| r.depth == depth && r.batch_norm == batch_norm)
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
    let (probe, probe_labels) =
        super::data::fixed_batch(&data.train, probe_seed(cfg.seed), cfg.probe)?;
    // Deepest first, so two threads finish together.
    let mut jobs: Vec<(usize, bool)> = cfg
        .depths
        .iter()
        .flat_map(|&d| [(d, true), (d, false)])
        .collect();
    jobs.sort_by_key(|&(d, bn)| (std::cmp::Reverse(d), !bn));
    let progress = Progress::new();
    let mut runs = run_jobs(&jobs, cfg.threads, |_, &(depth, bn)| {
        let name = format!("d{depth} {}", net_key(bn));
        let bar = progress.add(&name, cfg.steps as u64);
        let r = run_one(
            cfg,
            depth,
            bn,
            &data.train,
            &data.test,
            &probe,
            &probe_labels,
            &bar,
        );
        bar.finish();
        r
    })?;
    runs.sort_by_key(|r| (r.depth, !r.batch_norm));
    let outcome = Outcome {
        config: cfg.clone(),
        runs,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    cfg: &Config,
    depth: usize,
    batch_norm: bool,
    train: &Split,
    test: &Split,
    probe: &[f32],
    probe_labels: &[u8],
    bar: &crate::progress::NetProgress,
) -> Result<NetRun, LabError> {
    let mut widths = vec![train.pixels()];
    widths.extend(std::iter::repeat_n(cfg.width, depth));
    widths.push(10);
    // The same weights for a depth with and without BN: the seed and the depth fix them.
    let gain = cfg.init_gain;
    let linears = mlp::initial_linears(&widths, cfg.seed, |fan_in| gain / (fan_in as f64).sqrt())?;
    let capacity = cfg.batch_size.max(EVAL_CHUNK).max(probe_labels.len());
    let model = mlp::build(&linears, Activation::Sigmoid, batch_norm, capacity)?;
    let mut trainer = Trainer::new(
        model,
        cfg.lr,
        cfg.batch_size,
        order_seed(cfg.seed),
        train.len(),
    )?;
    let init = measure(&mut trainer.model, probe, probe_labels, 0)?;
    let t = Instant::now();
    let mut recent = std::collections::VecDeque::with_capacity(100);
    for step in 1..=cfg.steps {
        let s = trainer.step(train)?;
        if recent.len() == 100 {
            recent.pop_front();
        }
        recent.push_back((s.loss, s.correct));
        if step.is_multiple_of(100) {
            bar.set_step(step as u64);
        }
    }
    let train_seconds = t.elapsed().as_secs_f64();
    let trained = measure(&mut trainer.model, probe, probe_labels, cfg.steps)?;
    let test_accuracy =
        super::evaluate::Accuracy::new(test).run(&mut trainer.model, test, Mode::Eval)?;
    let window = recent.len().max(1) as f64;
    let final_train_loss = recent.iter().map(|r| r.0).sum::<f64>() / window;
    let batch_acc =
        recent.iter().map(|r| r.1).sum::<usize>() as f64 / (window * cfg.batch_size as f64);
    bar.report(
        cfg.steps as u64,
        final_train_loss,
        batch_acc,
        test_accuracy,
        true,
    );
    Ok(NetRun {
        depth,
        batch_norm,
        init,
        trained,
        test_accuracy,
        final_train_loss,
        train_seconds,
    })
}

/// Mean and population standard deviation, accumulated in f64.
fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Gradients and statistics on the measurement batch: batch statistics, running statistics
/// untouched, weights unchanged.
fn measure(
    model: &mut Sequential<f32>,
    probe: &[f32],
    labels: &[u8],
    step: usize,
) -> Result<Snapshot, LabError> {
    let n = labels.len();
    model.forward_from(probe, n, Mode::BatchStats)?;
    let (out, grad) = model.output_and_grad(n)?;
    let loss = SoftmaxCrossEntropy::new(10)?
        .forward_backward(out, labels, grad)?
        .loss;
    model.backward(n, false)?;
    let names: Vec<&'static str> = model.layers().iter().map(|l| l.name()).collect();
    let (mut z, mut act_in) = (Vec::new(), Vec::new());
    for (i, name) in names.iter().enumerate() {
        if *name == "linear" && i + 1 < names.len() {
            z.push(mean_std(model.activation(i + 1, n)?));
        }
        if *name == Activation::Sigmoid.key() {
            act_in.push(mean_std(model.activation(i, n)?));
        }
    }
    let mut grad_norms = Vec::new();
    for layer in model.layers_mut() {
        if layer.name() != "linear" {
            continue;
        }
        layer.visit_params(&mut |p| {
            if p.name == "weight" {
                let ss: f64 = p.grad.iter().map(|&g| f64::from(g).powi(2)).sum();
                grad_norms.push(ss.sqrt());
            }
        });
    }
    Ok(Snapshot {
        step,
        loss,
        grad_norms,
        z,
        act_in,
    })
}

/// Prints the headline numbers to stdout.
pub fn print_summary(o: &Outcome) {
    for r in &o.runs {
        println!(
            "depth {:>3} {:>5}: grad norm max/min {:>9.3e} at init, {:>9.3e} after {} steps; \
             factor per layer {:.3} / {:.3}; test accuracy {:.4}",
            r.depth,
            r.key(),
            r.init.spread(),
            r.trained.spread(),
            o.config.steps,
            r.init.factor_per_layer(),
            r.trained.factor_per_layer(),
            r.test_accuracy
        );
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}
