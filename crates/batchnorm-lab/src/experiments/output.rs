//! Writing an experiment's files: folders, text, numbers for CSV, figures.

use std::path::Path;

use super::LabError;
use crate::plot::{Figure, LineStyle, Series};

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

/// A series with a label, its points and a line style.
pub(crate) fn series(label: &str, points: Vec<(f64, f64)>, style: LineStyle) -> Series {
    Series {
        label: label.to_owned(),
        points,
        style,
    }
}

/// An accuracy in [0, 1] as a percentage with two decimals, `n/a` when absent or not finite.
pub(crate) fn pct(v: Option<f64>) -> String {
    match v {
        Some(a) if a.is_finite() => format!("{:.2}%", 100.0 * a),
        _ => "n/a".into(),
    }
}
