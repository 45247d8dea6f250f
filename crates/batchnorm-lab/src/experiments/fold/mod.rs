//! Folding evaluation-mode BN into the preceding layer for inference
//! ([`batchnorm_nn::fold::fold_batch_norm`]: `W' = W gamma / sqrt(var + eps)`,
//! `b' = (b - mean) gamma / sqrt(var + eps) + beta`).
//!
//! Two networks are trained briefly with BN (fig1's sigmoid MLP and the conv net of `bnlab
//! cnn`), so that their running statistics and affine parameters are far from the identity;
//! then each is folded and both versions are run in evaluation mode on the 10,000 test images.
//! Agreement is judged against an f64 oracle: the unfolded network evaluated in f64 from the
//! same parameters. The folded f32 network computes the same function as the unfolded one, so
//! its distance to the oracle should be of the order of the unfolded f32 network's own (both
//! are f32 roundings of one exact value). Inference time is measured in the same run, both
//! versions alternating, at several batch sizes.
//!
//! Outputs: `timing.csv`, `summary.json`, `fold.png`/`.svg`, `report.md`.

mod output;
mod reference;

use std::path::PathBuf;
use std::time::Instant;

use batchnorm_nn::data::Mnist;
use batchnorm_nn::fold::fold_batch_norm;
use batchnorm_nn::layers::Mode;
use batchnorm_nn::Sequential;

use super::error::{at_least_one, each_in_range, in_range};
use super::mlp::{self, Activation};
use super::output::print_wall_time;
use super::parallel::run_jobs;
use super::sampler::order_seed;
use super::trainer::Trainer;
use super::{convnet, LabError, EVAL_CHUNK};

/// The networks folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// fig1's 784-100-100-100-10 sigmoid MLP with BN (BN after Linear).
    Mlp,
    /// The conv net of `bnlab cnn` with BN2d (BN after Conv2d).
    Cnn,
}

impl Net {
    /// `"mlp"` or `"cnn"`.
    pub fn key(self) -> &'static str {
        match self {
            Net::Mlp => "mlp",
            Net::Cnn => "cnn",
        }
    }

    /// For figures and reports.
    pub fn label(self) -> &'static str {
        match self {
            Net::Mlp => "MLP 784-100-100-100-10, sigmoid, BN after each hidden Linear",
            Net::Cnn => "conv net, BN2d after each Conv2d",
        }
    }
}

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// SGD steps of the MLP before folding. Default 2,000.
    pub mlp_steps: usize,
    /// SGD steps of the conv net before folding. Default 500.
    pub cnn_steps: usize,
    /// Batch sizes the inference time is measured at (each at most 1,000). Default 1, 10, 100,
    /// 1000.
    pub batch_sizes: Vec<usize>,
    /// Timed passes per network, version and batch size; the median is reported. Default 15.
    pub repeats: usize,
    /// Images per timed pass (the first ones of the test set). Default 1,000.
    pub images: usize,
    /// Seed of the weights and the batch order. Default 1.
    pub seed: u64,
    /// The two networks train at once with 2 (timing always runs alone). Default 2.
    pub threads: usize,
    /// Output folder. Default `out/fold`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mlp_steps: 2000,
            cnn_steps: 500,
            batch_sizes: vec![1, 10, 100, 1000],
            repeats: 15,
            images: 1000,
            seed: 1,
            threads: 2,
            out: PathBuf::from("out/fold"),
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
        at_least_one("--mlp-steps", self.mlp_steps)?;
        at_least_one("--cnn-steps", self.cnn_steps)?;
        each_in_range(
            "--batch-sizes",
            &self.batch_sizes,
            1..=EVAL_CHUNK,
            "each must be between 1 and 1000",
        )?;
        at_least_one("--repeats", self.repeats)?;
        in_range("--images", self.images, 1..=10_000, "must be in 1..=10000")?;
        at_least_one("--threads", self.threads)
    }
}

/// How far outputs are apart over the whole test set, for one network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Largest `|folded - unfolded|` over all logits (f32 both).
    pub max_abs_diff: f64,
    /// Largest `|logit|` of the unfolded network, for scale.
    pub max_abs_logit: f64,
    /// Largest `|unfolded f32 - f64 oracle|`.
    pub unfolded_err: f64,
    /// Largest `|folded f32 - f64 oracle|`.
    pub folded_err: f64,
    /// Test images on which the two predict different classes.
    pub prediction_mismatches: usize,
    /// Test accuracy unfolded and folded.
    pub accuracy: (f64, f64),
}

impl Agreement {
    /// Whether the folded network agrees within float tolerance: its distance to the f64
    /// oracle is at most 10 times the unfolded f32 network's own plus 4 f32 ulps of the largest
    /// logit. Folding changes the order of the roundings (one product with pre-scaled weights
    /// against a product, then a per-channel affine map), not the function, so its error is of
    /// the same order; 10x allows for the longer accumulated dot products where a
    /// tiny-variance channel's scale amplifies the weights.
    pub fn within_tolerance(&self) -> bool {
        let ulp = f64::from(f32::EPSILON) * self.max_abs_logit;
        self.folded_err <= 10.0 * self.unfolded_err + 4.0 * ulp
    }
}

/// Median inference time of one batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Images per forward pass.
    pub batch: usize,
    /// Milliseconds per pass over `images` images, unfolded (median of `repeats`).
    pub unfolded_ms: f64,
    /// The same, folded.
    pub folded_ms: f64,
}

impl Timing {
    /// `unfolded / folded`.
    pub fn speedup(&self) -> f64 {
        self.unfolded_ms / self.folded_ms
    }
}

/// Everything about one network.
#[derive(Debug, Clone)]
pub struct NetResult {
    /// Which network.
    pub net: Net,
    /// Steps trained before folding.
    pub steps: usize,
    /// Layers before and after folding.
    pub layers: (usize, usize),
    /// Output agreement.
    pub agreement: Agreement,
    /// Inference times.
    pub timings: Vec<Timing>,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// MLP, then conv net.
    pub nets: Vec<NetResult>,
    /// Wall-clock seconds (loading included, writing excluded).
    pub wall_seconds: f64,
}

/// Runs the experiment and writes its outputs into `cfg.out`.
///
/// # Errors
/// A bad setting, unreadable data, a failed fold, or an unwritable output folder.
pub fn run(cfg: &Config) -> Result<Outcome, LabError> {
    cfg.validate()?;
    super::output::prepare_out(&cfg.out)?;
    let start = Instant::now();
    let (data, _) = super::data::load_mnist(&cfg.data)?;
    let trained = run_jobs(&[Net::Mlp, Net::Cnn], cfg.threads, |_, &net| {
        train(cfg, net, &data)
    })?;
    let mut nets = Vec::new();
    for (net, steps, mut model) in trained {
        let before = model.layers().len();
        let mut folded = fold_batch_norm(&model)?;
        let after = folded.layers().len();
        let agreement = agree(&mut model, &mut folded, &data)?;
        let timings = cfg
            .batch_sizes
            .iter()
            .map(|&b| time_both(cfg, &mut model, &mut folded, &data, b))
            .collect::<Result<Vec<_>, _>>()?;
        eprintln!(
            "[fold] {}: max |folded - unfolded| {:.2e}; error against f64 {:.2e} folded, {:.2e} unfolded; speed-up {}",
            net.key(),
            agreement.max_abs_diff,
            agreement.folded_err,
            agreement.unfolded_err,
            timings
                .iter()
                .map(|t| format!("{:.2}x at batch {}", t.speedup(), t.batch))
                .collect::<Vec<_>>()
                .join(", ")
        );
        nets.push(NetResult {
            net,
            steps,
            layers: (before, after),
            agreement,
            timings,
        });
    }
    let outcome = Outcome {
        config: cfg.clone(),
        nets,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(outcome)
}

/// Trains the network with BN; returns it with its step count.
fn train(cfg: &Config, net: Net, data: &Mnist) -> Result<(Net, usize, Sequential<f32>), LabError> {
    let (model, lr, steps) = match net {
        Net::Mlp => {
            let linears = mlp::initial_linears(&[784, 100, 100, 100, 10], cfg.seed, |_| 0.05)?;
            (
                mlp::build(&linears, Activation::Sigmoid, true, EVAL_CHUNK)?,
                0.5,
                cfg.mlp_steps,
            )
        }
        Net::Cnn => (
            convnet::build(&convnet::init(cfg.seed)?, true, EVAL_CHUNK)?,
            0.05,
            cfg.cnn_steps,
        ),
    };
    let mut trainer = Trainer::new(model, lr, 60, order_seed(cfg.seed), data.train.len())?;
    for _ in 0..steps {
        trainer.step(&data.train)?;
    }
    Ok((net, steps, trainer.model))
}

/// Compares the unfolded and folded networks and the f64 oracle on the whole test set.
fn agree(
    model: &mut Sequential<f32>,
    folded: &mut Sequential<f32>,
    data: &Mnist,
) -> Result<Agreement, LabError> {
    // Chunks of at most EVAL_BATCH images: the f64 conv net at 1,000 would take ~600 MB.
    let chunk_len = model.capacity().min(convnet::EVAL_BATCH);
    let mut oracle = reference::to_f64(model, chunk_len)?;
    let test = &data.test;
    let index: Vec<usize> = (0..test.len()).collect();
    let mut x = vec![0.0f32; chunk_len * test.pixels()];
    let mut labels = vec![0u8; chunk_len];
    let mut a = Agreement {
        max_abs_diff: 0.0,
        max_abs_logit: 0.0,
        unfolded_err: 0.0,
        folded_err: 0.0,
        prediction_mismatches: 0,
        accuracy: (0.0, 0.0),
    };
    let (mut right_u, mut right_f) = (0usize, 0usize);
    for chunk in index.chunks(chunk_len) {
        let n = chunk.len();
        let xs = &mut x[..n * test.pixels()];
        test.gather(chunk, xs, &mut labels[..n])?;
        let u = model.forward_from(xs, n, Mode::Eval)?.to_vec();
        let f = folded.forward_from(xs, n, Mode::Eval)?.to_vec();
        let x64: Vec<f64> = xs.iter().map(|&v| f64::from(v)).collect();
        let r = oracle.forward_from(&x64, n, Mode::Eval)?;
        for ((&u, &f), &r) in u.iter().zip(&f).zip(r) {
            let (u, f) = (f64::from(u), f64::from(f));
            a.max_abs_diff = a.max_abs_diff.max((u - f).abs());
            a.max_abs_logit = a.max_abs_logit.max(u.abs());
            a.unfolded_err = a.unfolded_err.max((u - r).abs());
            a.folded_err = a.folded_err.max((f - r).abs());
        }
        for ((ru, rf), &l) in u.chunks_exact(10).zip(f.chunks_exact(10)).zip(&labels[..n]) {
            let (pu, pf) = (argmax(ru), argmax(rf));
            a.prediction_mismatches += usize::from(pu != pf);
            right_u += usize::from(pu == usize::from(l));
            right_f += usize::from(pf == usize::from(l));
        }
    }
    let total = test.len().max(1) as f64;
    a.accuracy = (right_u as f64 / total, right_f as f64 / total);
    Ok(a)
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Median milliseconds per pass over `cfg.images` test images in batches of `batch`, for the
/// unfolded and the folded network, passes alternating so that both see the same machine.
fn time_both(
    cfg: &Config,
    model: &mut Sequential<f32>,
    folded: &mut Sequential<f32>,
    data: &Mnist,
    batch: usize,
) -> Result<Timing, LabError> {
    let test = &data.test;
    let n = cfg.images.min(test.len());
    let index: Vec<usize> = (0..n).collect();
    let mut x = vec![0.0f32; n * test.pixels()];
    let mut labels = vec![0u8; n];
    test.gather(&index, &mut x, &mut labels)?;
    let px = test.pixels();
    let pass = |m: &mut Sequential<f32>| -> Result<f64, LabError> {
        let t = Instant::now();
        let mut sink = 0.0f32;
        for c in x.chunks(batch * px) {
            let out = m.forward_from(c, c.len() / px, Mode::Eval)?;
            sink += out[0];
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(sink);
        Ok(ms)
    };
    // One warm-up pass each, then alternate.
    pass(model)?;
    pass(folded)?;
    let (mut u, mut f) = (Vec::new(), Vec::new());
    for _ in 0..cfg.repeats {
        u.push(pass(model)?);
        f.push(pass(folded)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Timing {
        batch,
        unfolded_ms: median(&mut u),
        folded_ms: median(&mut f),
    })
}

/// Prints the headline numbers to stdout.
pub fn print_summary(o: &Outcome) {
    for r in &o.nets {
        let a = &r.agreement;
        println!(
            "{}: {} -> {} layers; max |folded - unfolded| {:.2e} (largest logit {:.2}); error against f64: folded {:.2e}, unfolded {:.2e} ({}); {} of 10000 predictions differ; accuracy {:.4} / {:.4}",
            r.net.key(),
            r.layers.0,
            r.layers.1,
            a.max_abs_diff,
            a.max_abs_logit,
            a.folded_err,
            a.unfolded_err,
            if a.within_tolerance() { "within tolerance" } else { "OUTSIDE tolerance" },
            a.prediction_mismatches,
            a.accuracy.0,
            a.accuracy.1
        );
        for t in &r.timings {
            println!(
                "    batch {:>4}: {:.3} ms unfolded, {:.3} ms folded per {} images: {:.2}x",
                t.batch,
                t.unfolded_ms,
                t.folded_ms,
                o.config.images,
                t.speedup()
            );
        }
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}
