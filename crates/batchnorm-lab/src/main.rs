//! `bnlab`: parses the command line and dispatches to an experiment.

use std::path::PathBuf;

use anyhow::Context;
use batchnorm_lab::experiments::fig1;
use clap::{Args, Parser, Subcommand};

/// Reproduces the Batch Normalization paper's experiments on MNIST.
#[derive(Debug, Parser)]
#[command(name = "bnlab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Figure 1: a 784-100-100-100-10 sigmoid MLP trained with and without batch normalization
    /// (same initial weights, same batches); writes metrics.csv, summary.json, fig1.png,
    /// fig1.svg and report.md.
    Fig1(Fig1Args),
}

#[derive(Debug, Args)]
struct Fig1Args {
    /// Number of SGD steps (mini-batches) each network trains for.
    #[arg(long, default_value_t = 50_000)]
    steps: usize,
    /// Learning rate of plain SGD (no momentum, no weight decay).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Training images per mini-batch (at least 2: batch statistics need two values).
    #[arg(long, default_value_t = 60)]
    batch_size: usize,
    /// Standard deviation of the Gaussian initial weights N(0, std^2); biases start at 0.
    #[arg(long, default_value_t = 0.05)]
    init_std: f64,
    /// Seed of the initial weights, the batch order and the probe batch (same for both networks).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Evaluate (test accuracy on all 10,000 test images, sigmoid-input percentiles on the probe
    /// batch) every this many steps, plus at step 0 and at the last step.
    #[arg(long, default_value_t = 500)]
    eval_every: usize,
    /// Worker threads: 2 trains both networks at once (one per core), 1 one after the other.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Output folder for metrics.csv, summary.json, fig1.png, fig1.svg and report.md.
    #[arg(long, default_value = "out/fig1")]
    out: PathBuf,
    /// Folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...); a relative path is
    /// also looked up under the source checkout.
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fig1(a) => {
            let cfg = fig1::Config {
                steps: a.steps,
                lr: a.lr,
                batch_size: a.batch_size,
                init_std: a.init_std,
                seed: a.seed,
                eval_every: a.eval_every,
                threads: a.threads,
                out: a.out,
                data: a.data,
            };
            let outcome = fig1::run(&cfg).context("bnlab fig1 failed")?;
            fig1::print_summary(&outcome);
        }
    }
    Ok(())
}
