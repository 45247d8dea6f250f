//! SyncBatchNorm and data-parallel training: fig1's BN network (784-100-100-100-10, sigmoid)
//! trained on a global batch of `P x per_rank_batch` images split over P ranks, in three ways
//! from the same initial weights and the same sequence of global batches:
//!
//! - `sync`: data-parallel, every BN layer synchronised (statistics of the global batch);
//! - `local`: data-parallel, BN per rank (each rank's statistics over its own few samples:
//!   what PyTorch's DDP does by default);
//! - `single`: one process on the whole global batch.
//!
//! `sync` computes what `single` does, up to rounding; `local` normalises by statistics of
//! `per_rank_batch` samples and falls behind. Ranks are MPI processes under `mpirun -np P`
//! (bnlab built with `--features mpi`) or, otherwise, `--ranks P` threads of this process.
//!
//! Outputs: `metrics.csv`, `summary.json`, `sync_bn.png`/`.svg`, `report.md`.

mod counting;
#[cfg(feature = "mpi")]
mod mpi_backend;
mod output;
mod train;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use batchnorm_dist::{local_group, Collective, CommError, DistError};
use batchnorm_nn::data::Mnist;
use batchnorm_nn::NnError;

use super::error::{at_least_one, bad, in_range, non_negative, positive};
use super::evaluate::{best_accuracy, first_step_reaching};
use super::mlp;
use super::output::print_wall_time;
use super::LabError;
use crate::progress::Progress;

/// Layer widths: fig1's.
pub const WIDTHS: [usize; 5] = [784, 100, 100, 100, 10];

/// Settings of the experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Ranks as threads of this process (ignored under `mpirun`, where the job's size
    /// counts). Default 4.
    pub ranks: usize,
    /// Training images per rank per step. Default 2 (a global batch of 8 on 4 ranks).
    pub per_rank_batch: usize,
    /// SGD steps of each run. Default 16,000.
    pub steps: usize,
    /// Learning rate of plain SGD. Default 0.5.
    pub lr: f64,
    /// Initial weights from N(0, std^2), biases 0 (fig1's). Default 0.05.
    pub init_std: f64,
    /// Steps between evaluations of test accuracy (and at step 0 and the end). Default 500.
    pub eval_every: usize,
    /// Seed of the weights and the batch order. Default 1.
    pub seed: u64,
    /// Output folder. Default `out/sync-bn`.
    pub out: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ranks: 4,
            per_rank_batch: 2,
            steps: 16_000,
            lr: 0.5,
            init_std: 0.05,
            eval_every: 500,
            seed: 1,
            out: PathBuf::from("out/sync-bn"),
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
        in_range("--ranks", self.ranks, 1..=64, "must be between 1 and 64")?;
        in_range(
            "--per-rank-batch",
            self.per_rank_batch,
            1..=super::EVAL_CHUNK,
            "must be between 1 and 1000",
        )?;
        at_least_one("--steps", self.steps)?;
        positive("--lr", self.lr)?;
        non_negative("--init-std", self.init_std)?;
        at_least_one("--eval-every", self.eval_every)
    }

    /// Checks that `ranks` ranks make a global batch that batch statistics and one process
    /// can handle.
    fn check_global(&self, ranks: usize) -> Result<(), LabError> {
        let global = ranks * self.per_rank_batch;
        if !(2..=super::EVAL_CHUNK).contains(&global) {
            return bad(
                "--per-rank-batch",
                self.per_rank_batch,
                "ranks x per-rank batch (the global batch) must be between 2 and 1000",
            );
        }
        Ok(())
    }
}

/// Where the ranks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Processes of an MPI job.
    Mpi,
    /// Threads of this process.
    Threads,
}

impl Backend {
    /// `"mpi"` or `"threads"`.
    pub fn key(self) -> &'static str {
        match self {
            Backend::Mpi => "mpi",
            Backend::Threads => "threads",
        }
    }
}

/// The way of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Data-parallel, synchronised BN.
    Sync,
    /// Data-parallel, per-rank BN.
    Local,
    /// One process on the global batch.
    Single,
}

impl Variant {
    /// `"sync"`, `"local"` or `"single"`.
    pub fn key(self) -> &'static str {
        match self {
            Variant::Sync => "sync",
            Variant::Local => "local",
            Variant::Single => "single",
        }
    }
}

/// One way's run, as rank 0 saw it.
#[derive(Debug, Clone)]
pub struct VariantRun {
    /// Which way.
    pub variant: Variant,
    /// (step, test accuracy with running statistics, mean training loss over the global
    /// batches since the previous evaluation; NaN at step 0).
    pub evals: Vec<(usize, f64, f64)>,
    /// Seconds of training (evaluations excluded).
    pub train_seconds: f64,
    /// Bytes delivered to this rank per step by the collectives (0 for `single`).
    pub bytes_per_step: f64,
}

impl VariantRun {
    fn accuracies(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.evals.iter().map(|e| (e.0, e.1))
    }

    /// Test accuracy after the last step.
    pub fn final_accuracy(&self) -> Option<f64> {
        self.evals.last().map(|e| e.1)
    }

    /// The best test accuracy and its step.
    pub fn best(&self) -> Option<(f64, usize)> {
        best_accuracy(self.accuracies())
    }

    /// The first evaluated step at 90% test accuracy or more.
    pub fn steps_to_90(&self) -> Option<usize> {
        first_step_reaching(self.accuracies(), 0.9)
    }

    /// Training steps per second.
    pub fn steps_per_second(&self) -> f64 {
        let steps = self.evals.last().map_or(0, |e| e.0);
        steps as f64 / self.train_seconds
    }
}

/// The outcome (rank 0's).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// Where the ranks ran.
    pub backend: Backend,
    /// Ranks.
    pub ranks: usize,
    /// The three runs.
    pub sync: VariantRun,
    /// Per-rank BN; `None` with one image per rank, where per-rank statistics do not exist
    /// (PyTorch: "Expected more than 1 value per channel when training").
    pub local: Option<VariantRun>,
    /// One process.
    pub single: VariantRun,
    /// Largest `|sync - single|` over every parameter after 100 steps, relative to its
    /// tensor's largest `|single|` (None for runs shorter than 100 steps). The biases of linear
    /// layers followed by BN are left out: BN subtracts them, so they hold rounding noise.
    pub max_rel_param_diff_at_100: Option<f64>,
    /// Wall-clock seconds (loading included, writing excluded).
    pub wall_seconds: f64,
}

impl Outcome {
    /// The runs made, in the order sync, local, single.
    pub fn runs(&self) -> Vec<&VariantRun> {
        [Some(&self.sync), self.local.as_ref(), Some(&self.single)]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Whether this process was started by `mpirun` (Open MPI, MPICH or a PMIx launcher).
fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Runs the experiment and writes its outputs into `cfg.out` (on rank 0, which returns the
/// outcome; other MPI ranks return `None`).
///
/// # Errors
/// A bad setting, unreadable data, an unwritable output folder, a failed exchange; under
/// `mpirun`, a bnlab built without the `mpi` feature.
pub fn run(cfg: &Config) -> Result<Option<Outcome>, LabError> {
    cfg.validate()?;
    if launched_by_mpirun() {
        return run_mpi(cfg);
    }
    run_threads(cfg).map(Some)
}

/// Runs the experiment on `cfg.ranks` threads of this process and writes its outputs.
///
/// # Errors
/// As [`run`].
pub fn run_threads(cfg: &Config) -> Result<Outcome, LabError> {
    cfg.validate()?;
    cfg.check_global(cfg.ranks)?;
    super::output::prepare_out(&cfg.out)?;
    let start = Instant::now();
    let (data, _) = super::data::load_mnist(&cfg.data)?;
    let outcomes = on_thread_ranks(cfg.ranks, |comm| {
        rank_main(&comm, Backend::Threads, cfg, &data, start)
    })?;
    outcomes
        .into_iter()
        .flatten()
        .next()
        .ok_or(LabError::Setup("rank 0 returned no outcome"))
}

/// One data-parallel run with synchronised BN on `cfg.ranks` in-process ranks, from the
/// linear layers `linears` (fig1's widths): rank 0's evaluations and timings. For experiments
/// that compare SyncBN with other remedies (`bnlab small-batch`).
///
/// # Errors
/// Any rank's error (its cause, see [`on_thread_ranks`]).
pub(crate) fn sync_run_on_threads(
    cfg: &Config,
    data: &Mnist,
    linears: &[batchnorm_nn::layers::Linear<f32>],
    bar: Option<&crate::progress::NetProgress>,
) -> Result<VariantRun, LabError> {
    let runs = on_thread_ranks(cfg.ranks, |comm| {
        let bar = if comm.rank() == 0 { bar } else { None };
        train::distributed(&comm, cfg, data, linears, Variant::Sync, bar).map(|(run, _)| run)
    })?;
    runs.into_iter()
        .next()
        .ok_or(LabError::Setup("rank 0 returned no outcome"))
}

/// Runs `f` on `ranks` in-process ranks (one thread each, a [`local_group`]); returns every
/// rank's result in rank order. A rank that fails leaves the group and the others fail with
/// `PeerGone`: the error returned is the cause, the first in rank order that is not such a
/// consequence.
///
/// # Errors
/// That cause, or [`LabError::Panicked`] for a rank that panicked.
pub(crate) fn on_thread_ranks<R: Send>(
    ranks: usize,
    f: impl Fn(Arc<dyn Collective>) -> Result<R, LabError> + Sync,
) -> Result<Vec<R>, LabError> {
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = local_group(ranks)
            .into_iter()
            .map(|comm| {
                let f = &f;
                s.spawn(move || f(Arc::new(comm)))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        results
    });
    let (mut errors, mut oks) = (Vec::new(), Vec::new());
    for (rank, r) in results.into_iter().enumerate() {
        match r.map_err(|_| LabError::Panicked(format!("rank {rank}")))? {
            Ok(v) => oks.push(v),
            Err(e) => errors.push(e),
        }
    }
    let consequence = |e: &LabError| {
        matches!(
            e,
            LabError::Nn(NnError::Dist(DistError::Comm(CommError::PeerGone { .. })))
        )
    };
    match errors.iter().position(|e| !consequence(e)) {
        Some(i) => Err(errors.swap_remove(i)),
        None => match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(oks),
        },
    }
}

#[cfg(feature = "mpi")]
fn run_mpi(cfg: &Config) -> Result<Option<Outcome>, LabError> {
    mpi_backend::run(cfg)
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_: &Config) -> Result<Option<Outcome>, LabError> {
    Err(LabError::NoMpi)
}

/// One rank's part: `sync` and `local` (every rank), then `single` and the outputs (rank 0).
fn rank_main(
    comm: &Arc<dyn Collective>,
    backend: Backend,
    cfg: &Config,
    data: &Mnist,
    start: Instant,
) -> Result<Option<Outcome>, LabError> {
    let rank0 = comm.rank() == 0;
    let linears = mlp::initial_linears(&WIDTHS, cfg.seed, |_| cfg.init_std)?;
    let progress = rank0.then(Progress::new);
    let bar = |v: Variant| progress.as_ref().map(|p| p.add(v.key(), cfg.steps as u64));
    let sync_bar = bar(Variant::Sync);
    let (sync, sync_at) =
        train::distributed(comm, cfg, data, &linears, Variant::Sync, sync_bar.as_ref())?;
    // Per-rank BN needs two values per channel on every rank.
    let local_bar = (cfg.per_rank_batch >= 2)
        .then(|| bar(Variant::Local))
        .flatten();
    let local = match cfg.per_rank_batch {
        1 => None,
        _ => {
            let bar = local_bar.as_ref();
            Some(train::distributed(comm, cfg, data, &linears, Variant::Local, bar)?.0)
        }
    };
    if !rank0 {
        return Ok(None);
    }
    let single_bar = bar(Variant::Single);
    let (single, single_at) = train::single(comm.size(), cfg, data, &linears, single_bar.as_ref())?;
    for b in [sync_bar, local_bar, single_bar].iter().flatten() {
        b.finish();
    }
    let max_rel_param_diff_at_100 = match (sync_at, single_at) {
        (Some(a), Some(b)) => Some(train::max_rel_param_diff(&a, &b)),
        _ => None,
    };
    let outcome = Outcome {
        config: cfg.clone(),
        backend,
        ranks: comm.size(),
        sync,
        local,
        single,
        max_rel_param_diff_at_100,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    output::write_all(&outcome)?;
    Ok(Some(outcome))
}

/// Prints one line per way of training to stdout.
pub fn print_summary(o: &Outcome) {
    println!(
        "{} ranks ({}), {} images per rank, {} steps:",
        o.ranks,
        o.backend.key(),
        o.config.per_rank_batch,
        o.config.steps
    );
    if o.local.is_none() {
        println!(" local: not run (per-rank BN needs at least 2 images per rank)");
    }
    for r in o.runs() {
        println!(
            "{:>6}: test accuracy {:.4} (best {:.4}), 90% after {}, {:.0} steps/s, {:.0} bytes/step",
            r.variant.key(),
            r.final_accuracy().unwrap_or(f64::NAN),
            r.best().map_or(f64::NAN, |b| b.0),
            r.steps_to_90().map_or("never".into(), |s| format!("{s} steps")),
            r.steps_per_second(),
            r.bytes_per_step
        );
    }
    if let Some(d) = o.max_rel_param_diff_at_100 {
        println!("sync vs single after 100 steps: largest relative parameter difference {d:.2e}");
    }
    print_wall_time(o.wall_seconds, &o.config.out);
}
