//! Writing an experiment's files (folders, text, numbers for CSV and JSON, figures) and the
//! pieces of text its report and summary share.

use std::path::Path;

use super::LabError;
use crate::plot::{Figure, LineStyle, Series};

/// An experiment's outputs, written by [`write_outputs`].
pub(crate) struct Outputs<'a> {
    /// Tables: (file name, contents).
    pub(crate) csv: &'a [(&'a str, String)],
    /// Written to `summary.json`.
    pub(crate) summary: serde_json::Value,
    /// Figures: (file stem, figure), each saved as `stem.png` and `stem.svg`.
    pub(crate) figures: &'a [(&'a str, Figure)],
    /// Written to `report.md`.
    pub(crate) report: String,
}

/// Creates `dir` and writes `out` into it: the tables, `summary.json`, the figures, then
/// `report.md`.
///
/// # Errors
/// [`LabError::Io`] or [`LabError::Plot`] naming the file that could not be written.
pub(crate) fn write_outputs(dir: &Path, out: &Outputs<'_>) -> Result<(), LabError> {
    create_dir(dir)?;
    for (name, text) in out.csv {
        write(&dir.join(name), text)?;
    }
    write_json(&dir.join("summary.json"), &out.summary)?;
    for (stem, fig) in out.figures {
        save_figure(fig, dir, stem)?;
    }
    write(&dir.join("report.md"), &out.report)
}

/// Creates `dir` (and its parents) and checks that a file can be written in it, before any
/// training: a run never ends by failing to save what it computed.
///
/// # Errors
/// [`LabError::Unwritable`] naming `dir` (it is a file, or permission is denied, ...).
pub(crate) fn prepare_out(dir: &Path) -> Result<(), LabError> {
    let unwritable = |source| LabError::Unwritable {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(unwritable)?;
    let probe = dir.join(format!(".bnlab-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(unwritable)?;
    std::fs::remove_file(&probe).map_err(unwritable)
}

/// Creates `dir` and its parents.
///
/// # Errors
/// [`LabError::Io`] naming `dir`.
pub(crate) fn create_dir(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path`.
///
/// # Errors
/// [`LabError::Io`] naming `path`.
pub(crate) fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as pretty JSON with a final newline.
///
/// # Errors
/// [`LabError::Io`] naming `path`.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), LabError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    write(path, &(text + "\n"))
}

/// Writes `fig` as `dir/stem.png` and `dir/stem.svg`.
///
/// # Errors
/// [`LabError::Plot`] naming the file.
pub(crate) fn save_figure(fig: &Figure, dir: &Path, stem: &str) -> Result<(), LabError> {
    fig.save_png(&dir.join(format!("{stem}.png")))?;
    fig.save_svg(&dir.join(format!("{stem}.svg")))?;
    Ok(())
}

/// A number for CSV: empty when not finite (train loss at step 0, a diverged run).
pub(crate) fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

/// A number for JSON: `null` when not finite.
pub(crate) fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The key of a network with or without batch normalization in files: `"bn"` or `"plain"`.
pub(crate) fn net_key(batch_norm: bool) -> &'static str {
    if batch_norm {
        "bn"
    } else {
        "plain"
    }
}

/// A series with a label, its points and a line style.
pub(crate) fn series(label: &str, points: Vec<(f64, f64)>, style: LineStyle) -> Series {
    Series {
        label: label.to_owned(),
        points,
        style,
        ..Default::default()
    }
}

/// Solid for even `i`, dashed for odd: neighbouring curves that run together stay visible
/// under each other.
pub(crate) fn alternating(i: usize) -> LineStyle {
    if i.is_multiple_of(2) {
        LineStyle::Solid
    } else {
        LineStyle::Dashed
    }
}

/// An accuracy axis from a tenth below the `lowest` accuracy shown (at most 0.9) to 1.
pub(crate) fn accuracy_axis(lowest: f64) -> Option<(f64, f64)> {
    Some((((lowest * 10.0).floor() / 10.0).min(0.9), 1.0))
}

/// An accuracy in [0, 1] as a percentage with two decimals, `n/a` when absent or not finite.
pub(crate) fn pct(v: Option<f64>) -> String {
    match v {
        Some(a) if a.is_finite() => format!("{:.2}%", 100.0 * a),
        _ => "n/a".into(),
    }
}

/// A step for a report table, `not reached` when absent.
pub(crate) fn step_or_never(v: Option<usize>) -> String {
    v.map_or_else(|| "not reached".into(), |s| s.to_string())
}

/// The best test accuracy and its step for a report table (`97.12% (step 500)`), `n/a` when
/// absent.
pub(crate) fn best_cell(best: Option<(f64, usize)>) -> String {
    best.map_or("n/a".into(), |(a, st)| {
        format!("{:.2}% (step {st})", 100.0 * a)
    })
}

/// A loss with four decimals for a report table, `n/a` when absent.
pub(crate) fn loss_cell(loss: Option<f64>) -> String {
    loss.map_or("n/a".into(), |l| format!("{l:.4}"))
}

/// The report's last finding for experiments of independent runs: `- Time: 12.3 s wall clock
/// for 8 runs with 2 thread(s).` (`what` names the runs).
pub(crate) fn time_finding(wall_seconds: f64, n: usize, what: &str, threads: usize) -> String {
    format!("- Time: {wall_seconds:.1} s wall clock for {n} {what} with {threads} thread(s).")
}

/// The last line an experiment prints to stdout: the wall time and where the outputs are.
pub(crate) fn print_wall_time(wall_seconds: f64, out: &Path) {
    println!(
        "wall time {:.1} s; outputs in {}",
        wall_seconds,
        out.display()
    );
}
