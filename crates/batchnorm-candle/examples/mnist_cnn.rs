//! A small candle CNN trained on the bundled MNIST twice from the same initial weights: once with
//! `batchnorm_candle::batch_norm`, once with `candle_nn::batch_norm`. Prints the test accuracy
//! and the training time of each epoch.
//!
//! ```text
//! cargo run --release -p batchnorm-candle --example mnist_cnn [-- --epochs 2] [--images 60000] [--seq]
//! ```
//!
//! An epoch takes `--images` images (default 30,000) of the shuffled 60,000; the test accuracy is
//! over all 10,000 test images, in evaluation mode. The two nets take their steps in turn, so
//! that both see the same machine; the epoch time of a net is the sum of its steps. `--seq` runs
//! our kernels on the calling thread instead of rayon's pool.
//!
//! conv 3x3 (1 -> 8) - BN - ReLU - max-pool 2 - conv 3x3 (8 -> 16) - BN - ReLU - max-pool 2 -
//! linear (784 -> 10); SGD, learning rate 0.05, batches of 64, the same shuffled order for both.

use std::path::Path;
use std::time::{Duration, Instant};

use batchnorm_candle::Par;
use batchnorm_nn::data::{Mnist, Split};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{loss, Conv2dConfig, ModuleT, Optimizer, VarBuilder, VarMap, SGD};

const BATCH: usize = 64;
const LEARNING_RATE: f64 = 0.05;

/// Which batch norm the net uses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Norm {
    Ours,
    CandleNn,
}

struct Net {
    conv1: candle_nn::Conv2d,
    bn1: Box<dyn ModuleT>,
    conv2: candle_nn::Conv2d,
    bn2: Box<dyn ModuleT>,
    fc: candle_nn::Linear,
}

impl Net {
    fn new(norm: Norm, par: Par, vb: VarBuilder) -> Result<Self> {
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let bn = |c: usize, vb: VarBuilder| -> Result<Box<dyn ModuleT>> {
            Ok(match norm {
                Norm::Ours => {
                    let config = batchnorm_candle::BatchNormConfig::default();
                    let mut bn = batchnorm_candle::batch_norm(c, config, vb)?;
                    bn.set_par(par);
                    Box::new(bn)
                }
                Norm::CandleNn => Box::new(candle_nn::batch_norm(c, 1e-5, vb)?),
            })
        };
        Ok(Self {
            conv1: candle_nn::conv2d(1, 8, 3, padded, vb.pp("conv1"))?,
            bn1: bn(8, vb.pp("bn1"))?,
            conv2: candle_nn::conv2d(8, 16, 3, padded, vb.pp("conv2"))?,
            bn2: bn(16, vb.pp("bn2"))?,
            fc: candle_nn::linear(16 * 7 * 7, 10, vb.pp("fc"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.conv1.forward(x)?;
        let x = self.bn1.forward_t(&x, train)?.relu()?.max_pool2d(2)?;
        let x = self.conv2.forward(&x)?;
        let x = self.bn2.forward_t(&x, train)?.relu()?.max_pool2d(2)?;
        self.fc.forward(&x.flatten_from(1)?)
    }
}

/// Images `indices` of `split` as an (n, 1, 28, 28) tensor in [0, 1], and their labels.
fn batch(split: &Split, indices: &[usize]) -> Result<(Tensor, Tensor)> {
    let mut pixels = vec![0f32; indices.len() * split.pixels()];
    let mut labels = vec![0u8; indices.len()];
    split
        .gather(indices, &mut pixels, &mut labels)
        .map_err(candle_core::Error::wrap)?;
    let dims = (indices.len(), 1, split.rows, split.cols);
    let x = Tensor::from_vec(pixels, dims, &Device::Cpu)?;
    let labels: Vec<u32> = labels.into_iter().map(u32::from).collect();
    let y = Tensor::from_vec(labels, indices.len(), &Device::Cpu)?;
    Ok((x, y))
}

/// A deterministic shuffle (splitmix64 driving Fisher-Yates), the same for both nets.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

/// Test accuracy in evaluation mode (running statistics).
fn accuracy(net: &Net, test: &Split) -> Result<f64> {
    let mut correct = 0usize;
    let all: Vec<usize> = (0..test.len()).collect();
    for chunk in all.chunks(1000) {
        let (x, y) = batch(test, chunk)?;
        let predicted = net.forward_t(&x, false)?.argmax(D::Minus1)?;
        let hits = predicted.eq(&y)?.to_dtype(DType::U32)?.sum_all()?;
        correct += hits.to_scalar::<u32>()? as usize;
    }
    Ok(correct as f64 / test.len() as f64)
}

/// A net of its own `VarMap`, started from the weights in `init`, and its optimizer.
struct Trainee {
    norm: Norm,
    net: Net,
    sgd: SGD,
    loss_sum: f64,
    time: Duration,
}

impl Trainee {
    fn new(norm: Norm, init: &VarMap, par: Par) -> Result<Self> {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = Net::new(norm, par, vb)?;
        for (name, var) in init.data().lock().unwrap().iter() {
            varmap.set_one(name, var.as_tensor())?;
        }
        let sgd = SGD::new(varmap.all_vars(), LEARNING_RATE)?;
        Ok(Self {
            norm,
            net,
            sgd,
            loss_sum: 0.0,
            time: Duration::ZERO,
        })
    }

    /// One SGD step on a batch, timed.
    fn step(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let start = Instant::now();
        let loss = loss::cross_entropy(&self.net.forward_t(x, true)?, y)?;
        self.sgd.backward_step(&loss)?;
        self.time += start.elapsed();
        self.loss_sum += f64::from(loss.to_scalar::<f32>()?);
        Ok(())
    }
}

/// Trains both nets step by step in turn (so that both see the same machine load) and reports
/// each epoch.
fn train(init: &VarMap, data: &Mnist, run: &Run) -> Result<()> {
    let par = run.par;
    let mut nets = [
        Trainee::new(Norm::Ours, init, par)?,
        Trainee::new(Norm::CandleNn, init, par)?,
    ];
    for epoch in 1..=run.epochs {
        for t in nets.iter_mut() {
            (t.loss_sum, t.time) = (0.0, Duration::ZERO);
        }
        let order = shuffled(data.train.len(), epoch as u64);
        for indices in order[..run.images].chunks_exact(BATCH) {
            let (x, y) = batch(&data.train, indices)?;
            for t in nets.iter_mut() {
                t.step(&x, &y)?;
            }
        }
        let steps = run.images / BATCH;
        for t in &nets {
            println!(
                "| {:?} | {epoch} | {:.4} | {:.2}% | {:.1} |",
                t.norm,
                t.loss_sum / steps as f64,
                100.0 * accuracy(&t.net, &data.test)?,
                t.time.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// The command line.
#[derive(Debug)]
struct Run {
    epochs: usize,
    /// Training images per epoch.
    images: usize,
    par: Par,
}

impl Run {
    fn parse() -> Result<Self> {
        let mut run = Run {
            epochs: 1,
            images: 30_000,
            par: Par::Rayon,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut args = args.iter().map(String::as_str);
        let count = |flag: &str, n: Option<&str>| -> Result<usize> {
            n.and_then(|n| n.parse().ok())
                .ok_or_else(|| candle_core::Error::msg(format!("{flag} takes a count")))
        };
        while let Some(arg) = args.next() {
            match arg {
                "--epochs" => run.epochs = count(arg, args.next())?,
                "--images" => run.images = count(arg, args.next())?.clamp(BATCH, 60_000),
                "--seq" => run.par = Par::Seq,
                _ => candle_core::bail!("usage: mnist_cnn [--epochs N] [--images N] [--seq]"),
            }
        }
        Ok(run)
    }
}

fn main() -> Result<()> {
    let run = Run::parse()?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let data = Mnist::load(&dir).map_err(candle_core::Error::wrap)?;

    // One set of initial weights for both nets (the batch norms start at 1, 0 either way).
    let init = VarMap::new();
    let vb = VarBuilder::from_varmap(&init, DType::F32, &Device::Cpu);
    Net::new(Norm::Ours, run.par, vb)?;
    println!(
        "{} epoch(s) of {} training images, batches of {BATCH}, kernels {:?}",
        run.epochs, run.images, run.par
    );
    println!();
    println!("| batch norm | epoch | mean training loss | test accuracy | epoch time (s) |");
    println!("|---|---:|---:|---:|---:|");
    train(&init, &data, &run)
}
