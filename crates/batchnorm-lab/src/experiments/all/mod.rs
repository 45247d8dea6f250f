//! `bnlab all`: every experiment at its defaults (or, with `quick`, at tiny settings), each into
//! its own folder under `out`, then one combined `report.md` and an `index.html` with the
//! figures.

mod html;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use super::output::write;
use super::{batch_size, cnn, depth, fig1, fold, lr_sweep, small_batch, sync_bn, why, LabError};

/// Settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Parent folder of the experiments' folders and the combined report. Default `out`.
    pub out: PathBuf,
    /// Tiny settings for every experiment (a smoke test of the whole pipeline in seconds).
    pub quick: bool,
    /// Seed of every experiment. Default 1.
    pub seed: u64,
    /// Threads of every experiment. Default 2.
    pub threads: usize,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            out: PathBuf::from("out"),
            quick: false,
            seed: 1,
            threads: 2,
            data: PathBuf::from("data/mnist"),
        }
    }
}

/// One experiment's place in the combined report.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Folder name under `out` (also the subcommand).
    pub name: &'static str,
    /// Wall-clock seconds of the experiment, writing included.
    pub seconds: f64,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings used.
    pub config: Config,
    /// The experiments in the order run.
    pub sections: Vec<Section>,
    /// Total wall-clock seconds.
    pub wall_seconds: f64,
}

/// Runs every experiment, then writes `report.md` and `index.html` into `cfg.out`.
///
/// # Errors
/// The first experiment's error, or an unwritable output folder.
pub fn run(cfg: &Config) -> Result<Outcome, LabError> {
    super::error::at_least_one("--threads", cfg.threads)?;
    let start = Instant::now();
    super::output::prepare_out(&cfg.out)?;
    let dir = |name: &str| cfg.out.join(name);
    let (seed, threads, data) = (cfg.seed, cfg.threads, cfg.data.clone());
    let mut sections = Vec::new();
    let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<(), LabError>| {
        eprintln!(
            "== bnlab all: {name} ({:.0} s so far) ==",
            start.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        f()?;
        sections.push(Section {
            name,
            seconds: t.elapsed().as_secs_f64(),
        });
        Ok::<(), LabError>(())
    };

    let mut c = fig1::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("fig1"),
        ..fig1::Config::default()
    };
    if cfg.quick {
        (c.steps, c.eval_every) = (100, 50);
    }
    timed("fig1", &mut || {
        fig1::run(&c).map(|o| fig1::print_summary(&o))
    })?;

    let mut c = depth::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("depth"),
        ..depth::Config::default()
    };
    if cfg.quick {
        (c.depths, c.steps, c.probe) = (vec![2, 3], 20, 100);
    }
    timed("depth", &mut || {
        depth::run(&c).map(|o| depth::print_summary(&o))
    })?;

    let mut c = lr_sweep::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("lr-sweep"),
        ..lr_sweep::Config::default()
    };
    if cfg.quick {
        (c.lrs, c.steps, c.log_every) = (vec![0.1, 1.0], 30, 10);
    }
    timed("lr-sweep", &mut || {
        lr_sweep::run(&c).map(|o| lr_sweep::print_summary(&o))
    })?;

    let mut c = batch_size::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("batch-size"),
        ..batch_size::Config::default()
    };
    if cfg.quick {
        (c.batch_sizes, c.examples, c.evals) = (vec![4, 32], 320, 1);
    }
    timed("batch-size", &mut || {
        batch_size::run(&c).map(|o| batch_size::print_summary(&o))
    })?;

    let mut c = cnn::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("cnn"),
        ..cnn::Config::default()
    };
    if cfg.quick {
        (c.epochs, c.max_steps_per_epoch, c.eval_every) = (1, Some(10), 10);
    }
    timed("cnn", &mut || cnn::run(&c).map(|o| cnn::print_summary(&o)))?;

    let mut c = fold::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("fold"),
        ..fold::Config::default()
    };
    if cfg.quick {
        (c.mlp_steps, c.cnn_steps, c.batch_sizes, c.repeats, c.images) =
            (10, 5, vec![1, 50], 1, 50);
    }
    timed("fold", &mut || {
        fold::run(&c).map(|o| fold::print_summary(&o))
    })?;

    // Ranks as threads, whatever launched bnlab.
    let mut c = sync_bn::Config {
        seed,
        data: data.clone(),
        out: dir("sync-bn"),
        ..sync_bn::Config::default()
    };
    if cfg.quick {
        (c.steps, c.eval_every) = (120, 60);
    }
    timed("sync-bn", &mut || {
        sync_bn::run_threads(&c).map(|o| sync_bn::print_summary(&o))
    })?;

    let mut c = small_batch::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("small-batch"),
        ..small_batch::Config::default()
    };
    if cfg.quick {
        (
            c.batch_sizes,
            c.sync_batches,
            c.ghost_batch,
            c.virtual_batch,
        ) = (vec![4], vec![2], 16, 8);
        (c.examples, c.evals) = (320, 1);
    }
    timed("small-batch", &mut || {
        small_batch::run(&c).map(|o| small_batch::print_summary(&o))
    })?;

    let mut c = why::Config {
        seed,
        threads,
        data: data.clone(),
        out: dir("why"),
        ..why::Config::default()
    };
    if cfg.quick {
        (c.steps, c.measure_every, c.etas, c.probe) = (40, 20, 3, 100);
    }
    timed("why", &mut || why::run(&c).map(|o| why::print_summary(&o)))?;

    let outcome = Outcome {
        config: cfg.clone(),
        sections,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    let report = combined_report(&outcome)?;
    write(&cfg.out.join("report.md"), &report)?;
    write(
        &cfg.out.join("index.html"),
        &html::page(
            "bnlab: the Batch Normalization paper's experiments on MNIST",
            &report,
        ),
    )?;
    Ok(outcome)
}

/// The experiments' reports, each under its own heading (one level down), with figure links
/// pointing into the experiment's folder, after a table of runtimes.
fn combined_report(o: &Outcome) -> Result<String, LabError> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# bnlab: the Batch Normalization paper's experiments on MNIST\n"
    );
    let _ = writeln!(
        s,
        "All experiments{} with seed {} and {} thread(s), run by `bnlab all`. Each section is the \
         experiment's own `report.md`; its data files are in the folder named in the table.\n",
        if o.config.quick {
            " at tiny settings (--quick: a smoke test, not results)"
        } else {
            " at their defaults"
        },
        o.config.seed,
        o.config.threads
    );
    let _ = writeln!(s, "| experiment | folder | seconds |\n|---|---|---:|");
    for sec in &o.sections {
        let _ = writeln!(
            s,
            "| `bnlab {0}` | `{0}/` | {1:.1} |",
            sec.name, sec.seconds
        );
    }
    let _ = writeln!(s, "| total | | {:.1} |\n", o.wall_seconds);
    for sec in &o.sections {
        let path = o.config.out.join(sec.name).join("report.md");
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::Io {
            path: path.clone(),
            source,
        })?;
        s.push_str(&rebase(&text, sec.name));
        s.push('\n');
    }
    Ok(s)
}

/// `text` with every heading one level deeper and every relative link `](x)` made `](dir/x)`.
fn rebase(text: &str, dir: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line.starts_with('#') {
            out.push('#');
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            out.push_str(&rest[..i + 2]);
            rest = &rest[i + 2..];
            let relative =
                !(rest.starts_with("http") || rest.starts_with('/') || rest.starts_with('#'));
            if relative {
                out.push_str(dir);
                out.push('/');
            }
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

/// Prints the runtimes.
pub fn print_summary(o: &Outcome) {
    for s in &o.sections {
        println!("{:>10}: {:.1} s", s.name, s.seconds);
    }
    println!(
        "total {:.1} s; combined report {} and {}",
        o.wall_seconds,
        o.config.out.join("report.md").display(),
        o.config.out.join("index.html").display()
    );
}

#[cfg(test)]
mod tests {
    use super::rebase;

    #[test]
    fn rebase_demotes_headings_and_prefixes_relative_links() {
        let text = "# Title\n\n![fig](a.png) and [x](http://e.org) `c`\n## Sub\n";
        assert_eq!(
            rebase(text, "cnn"),
            "## Title\n\n![fig](cnn/a.png) and [x](http://e.org) `c`\n### Sub\n"
        );
    }
}
