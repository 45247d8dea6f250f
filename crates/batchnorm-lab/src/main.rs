//! `bnlab`: parses the command line and dispatches to an experiment.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use batchnorm_lab::bench;
use batchnorm_lab::experiments::{
    all, batch_size, cli, cnn, depth, fig1, fold, lr_sweep, small_batch, sync_bn, why,
};
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
    /// Times the BatchNorm kernels (train forward, eval forward, backward; f32) against a memory
    /// copy (forward) or `c = a + b` (backward) of the same bytes, measured in the same run.
    Bench(BenchArgs),
    /// Gradient flow across depth: sigmoid MLPs of 3-20 hidden layers with and without BN;
    /// gradient norm of every layer's weights and pre-activation statistics at initialisation
    /// and after training.
    Depth(cli::DepthArgs),
    /// Learning-rate robustness: lr 0.01-5 x {sigmoid, ReLU} x {BN, none}; final test accuracy
    /// and whether training diverged.
    LrSweep(cli::LrSweepArgs),
    /// Batch size: the BN MLP at batch 2-128 for the same number of examples; test accuracy
    /// with running statistics.
    BatchSize(cli::BatchSizeArgs),
    /// A conv net (conv3x3(8)-BN2d-ReLU-maxpool2, conv3x3(16)-BN2d-ReLU-maxpool2,
    /// linear(784,10)) with and without BN: test accuracy along the run, time per epoch.
    Cnn(cli::CnnArgs),
    /// Folding eval-mode BN into the preceding Linear/Conv2d: folded vs unfolded outputs
    /// (against an f64 oracle) and the inference speed-up, measured in the same run.
    Fold(cli::FoldArgs),
    /// SyncBatchNorm: fig1's BN network data-parallel on P ranks (MPI processes under
    /// `mpirun -np P`, else --ranks threads) with synchronised BN, per-rank BN, and one
    /// process on the global batch; same weights, same batches.
    SyncBn(cli::SyncBnArgs),
    /// Small batches: BN, Batch Renorm, GroupNorm and SyncBN (in-process ranks) at batch 2-32,
    /// Ghost BN against BN at batch 256; test accuracy with the inference statistics.
    SmallBatch(cli::SmallBatchArgs),
    /// Why BN works, put to the test (Santurkar et al. 2018): the ReLU MLP (or, with --arch
    /// cnn, the conv net) with BN, without BN and with noisy BN; distribution drift,
    /// gradient-based internal covariate shift and the loss landscape along the gradient.
    Why(cli::WhyArgs),
    /// Every experiment at its defaults (fig1, depth, lr-sweep, batch-size, cnn, fold, sync-bn
    /// on threads, small-batch, why) into
    /// `<out>/<name>/`, then one combined `<out>/report.md` and `<out>/index.html`.
    All(cli::AllArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Shapes to measure, logical N,C[,spatial...] separated by spaces (default: the six shapes
    /// of the benchmark table, from 64,64,56,56 down to the fig1 MLP layer 60,100).
    #[arg(long, num_args = 1.., value_delimiter = ' ')]
    shapes: Vec<String>,
    /// Thread counts to measure (each gets its own pool), e.g. `1,2` or `1 2`.
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = [1, 2])]
    threads: Vec<usize>,
    /// Storage types of x, y, dy, dx to measure, each on every shape: `f32`, `bf16`, `f16`
    /// (e.g. `f32,bf16`; parameters and statistics stay f32).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = ["f32".to_string()])]
    dtype: Vec<String>,
    /// Only this layout: `nchw` (channels-first) or `nhwc` (channels-last); default both.
    #[arg(long)]
    layout: Option<String>,
    /// Timed samples per measurement (at least 1); the median is reported.
    #[arg(long, default_value_t = 21)]
    samples: usize,
    /// Print one JSON array instead of the table.
    #[arg(long)]
    json: bool,
    /// Flush every buffer from the caches before each timed call of the kernel and of the
    /// yardstick (the regime of tensors larger than the last-level cache).
    #[arg(long)]
    cold: bool,
    /// Put every buffer, the kernel's and the yardsticks', on transparent huge pages (Linux,
    /// madvise; fails if they are disabled). The two-pass kernels gain more from them than a
    /// copy does.
    #[arg(long)]
    huge_pages: bool,
    /// The kernel path: `baseline`, `avx2` or `avx512` (default: the best this machine has;
    /// JSON key `isa`).
    #[arg(long)]
    isa: Option<String>,
    /// Only these operations, e.g. `forward_train,forward_eval,backward` (default: all, the
    /// fused ones included).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    ops: Vec<String>,
}

#[derive(Debug, Args)]
struct Fig1Args {
    /// Number of SGD steps (mini-batches) each network trains for.
    #[arg(long, default_value_t = 50_000)]
    steps: usize,
    /// Learning rate of plain SGD (no momentum, no weight decay).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    lr: f64,
    /// Training images per mini-batch (at least 2: batch statistics need two values).
    #[arg(long, default_value_t = 60)]
    batch_size: usize,
    /// Standard deviation of the Gaussian initial weights N(0, std^2); biases start at 0.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    init_std: f64,
    /// Seed of the initial weights, the batch order and the probe batch (same for both networks).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Evaluate (test accuracy on all 10,000 test images, sigmoid-input percentiles on the probe
    /// batch) every this many steps, plus at step 0 and at the last step.
    #[arg(long, default_value_t = 500)]
    eval_every: usize,
    /// Worker threads: 2 trains both networks at once (one per core), 1 one after the other;
    /// more than 2 is the same as 2 (there are two networks).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Output folder for metrics.csv, summary.json, fig1.png, fig1.svg and report.md.
    #[arg(long, default_value = "out/fig1")]
    out: PathBuf,
    /// Folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...); a relative path is
    /// also looked up under the source checkout.
    #[arg(long, default_value = "data/mnist")]
    data: PathBuf,
    /// Save a checkpoint every N steps and at the last step, into `<out>/checkpoint` (or the
    /// --resume folder): each network's PyTorch state dict (safetensors) and a JSON with the
    /// step, batch order, generator state and metrics. Writes are atomic: a killed run keeps
    /// its previous checkpoint.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Continue the run checkpointed in DIR (made with the same --steps, --lr, --batch-size,
    /// --init-std, --seed and --eval-every); it ends exactly as an uninterrupted run would.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, or no subcommand at all: the full text.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            // A malformed command line: clap's first line says what and where; its usage
            // block and tips would make a one-line mistake a screenful.
            eprintln!("{}", first_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, causes joined, no backtrace (even with RUST_BACKTRACE=1): these are the
            // user's errors (options, files), not the program's.
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The first non-empty line of `text`, with a pointer to `--help`.
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("error");
    format!("{} (see --help)", line.trim_end())
}

/// `e` and its causes joined by `": "`, leaving out a cause whose text its parent already
/// shows (`path: Permission denied` caused by `Permission denied`).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
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
                checkpoint_every: a.checkpoint_every,
                resume: a.resume,
            };
            let outcome = fig1::run(&cfg)?;
            fig1::print_summary(&outcome);
        }
        Command::Bench(a) => run_bench(a)?,
        Command::Depth(a) => {
            depth::print_summary(&depth::run(&a.config())?);
        }
        Command::Cnn(a) => cnn::print_summary(&cnn::run(&a.config())?),
        Command::All(a) => all::print_summary(&all::run(&a.config())?),
        Command::Fold(a) => {
            fold::print_summary(&fold::run(&a.config())?);
        }
        Command::LrSweep(a) => {
            lr_sweep::print_summary(&lr_sweep::run(&a.config())?);
        }
        Command::BatchSize(a) => batch_size::print_summary(&batch_size::run(&a.config())?),
        Command::SmallBatch(a) => small_batch::print_summary(&small_batch::run(&a.config())?),
        Command::Why(a) => why::print_summary(&why::run(&a.config())?),
        Command::SyncBn(a) => {
            // Under mpirun only rank 0 has an outcome to print.
            if let Some(outcome) = sync_bn::run(&a.config())? {
                sync_bn::print_summary(&outcome);
            }
        }
    }
    Ok(())
}

fn run_bench(a: BenchArgs) -> anyhow::Result<()> {
    let dtypes = a
        .dtype
        .iter()
        .map(|d| d.parse())
        .collect::<anyhow::Result<_>>()?;
    let mut cfg = bench::Config {
        threads: a.threads,
        dtypes,
        samples: a.samples,
        cold: a.cold,
        huge_pages: a.huge_pages,
        ..Default::default()
    };
    if !a.ops.is_empty() {
        cfg.ops = a
            .ops
            .iter()
            .map(|o| bench::Op::from_name(o.trim()))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(isa) = &a.isa {
        cfg.isa = isa.parse()?;
        anyhow::ensure!(
            cfg.isa.is_supported(),
            batchnorm::BatchNormError::UnsupportedIsa { isa: cfg.isa }
        );
    }
    if !a.shapes.is_empty() {
        cfg.shapes = a
            .shapes
            .iter()
            .map(|s| s.split(',').map(|d| d.trim().parse::<usize>()).collect())
            .collect::<Result<_, _>>()
            .context("--shapes takes comma-separated dims, e.g. 64,64,56,56")?;
    }
    if let Some(l) = a.layout {
        cfg.layouts = vec![match l.as_str() {
            "nchw" | "channels_first" => batchnorm::Layout::ChannelsFirst,
            "nhwc" | "channels_last" => batchnorm::Layout::ChannelsLast,
            other => anyhow::bail!("unknown layout {other:?}: use nchw or nhwc"),
        }];
    }
    if !a.json {
        println!("kernel path: {}", cfg.isa);
        if a.huge_pages {
            println!("every buffer on transparent huge pages");
        }
        println!(
            "{:<18} {:<14} {:<5} {:<22} {:>3} {:>10} {:>8} {:>6} {:>10} {:>6} {:>8} {:>8} {:>6} {:>8}",
            "shape",
            "layout",
            "dtype",
            "op",
            "thr",
            "median ms",
            "GB/s",
            "yard",
            "yard ms",
            "ratio",
            "read ms",
            "strm ms",
            "floor",
            "vs plain"
        );
    }
    let rows = bench::run(&cfg, |r| {
        if !a.json {
            let dims = r
                .dims
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            println!(
                "{:<18} {:<14} {:<5} {:<22} {:>3} {:>10.3} {:>8.1} {:>6} {:>10.3} {:>6.2} {:>8.3} {:>8.3} {:>6.2} {:>8}",
                dims,
                bench::layout_name(r.layout),
                r.dtype.name(),
                r.op.name(),
                r.threads,
                r.median_ms,
                r.gb_per_s(),
                r.op.yardstick(),
                r.yardstick_ms,
                r.ratio(),
                r.read_ms,
                r.streamed_ms,
                r.floor(),
                r.vs_plain().map_or("-".to_string(), |v| format!("{v:.2}"))
            );
        }
    })?;
    if a.json {
        let all: Vec<_> = rows.iter().map(bench::Row::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_causes_and_skips_repeated_ones() {
        let io = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
        let reason = io.to_string();
        let e = anyhow::Error::new(batchnorm_lab::experiments::LabError::Unwritable {
            path: "out/fig1".into(),
            source: io,
        });
        assert_eq!(e.chain().count(), 2, "the I/O error is also the source");
        assert_eq!(
            one_line(&e),
            format!("--out out/fig1: cannot write there: {reason}")
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }

    #[test]
    fn parse_errors_are_one_line() {
        let e = Cli::try_parse_from(["bnlab", "fig1", "--steps", "abc"]).unwrap_err();
        let line = first_line(&e.render().to_string());
        assert!(
            line.starts_with("error: invalid value 'abc' for '--steps"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(
            first_line("\n\nerror: x\n\nUsage: y\n"),
            "error: x (see --help)"
        );
    }
}
