//! [`PlotError`]: why a figure could not be written.

use std::path::PathBuf;

/// Why [`Figure::save_svg`](super::Figure::save_svg) or
/// [`Figure::save_png`](super::Figure::save_png) failed. Every variant names the output path.
///
/// Points that cannot be drawn (NaN, ±∞, or `y <= 0` on a log axis) are not errors: they leave
/// gaps, and a panel without any drawable point says "no data".
///
/// ```rust
/// use batchnorm_lab::plot::{Figure, PlotError};
///
/// let empty = Figure { title: "nothing".into(), columns: 1, panels: vec![] };
/// let err = empty.save_svg(std::path::Path::new("out/empty.svg")).unwrap_err();
/// assert!(matches!(err, PlotError::EmptyFigure { .. }));
/// assert_eq!(err.to_string(), "figure out/empty.svg has no panels to draw");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Creating the output's folder or writing the file failed.
    #[error("cannot write figure {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The figure has no panels.
    #[error("figure {} has no panels to draw", path.display())]
    EmptyFigure { path: PathBuf },
    /// `columns` is 0.
    #[error("figure {} asks for 0 columns; the panel grid needs at least 1", path.display())]
    ZeroColumns { path: PathBuf },
    /// A panel's finite values span a range wider than an f64 can hold (e.g. `-1e308..1e308`),
    /// so no axis can map them.
    #[error(
        "figure {}: panel {panel:?} has {axis} values from {min:e} to {max:e}, a range too wide to draw",
        path.display()
    )]
    RangeOverflow {
        path: PathBuf,
        /// The panel's title.
        panel: String,
        /// `"x"` or `"y"`.
        axis: &'static str,
        min: f64,
        max: f64,
    },
    /// The PNG would be larger than `limit` pixels on a side (far too many panels).
    #[error(
        "figure {} would be {width}x{height} pixels, over the {limit}-pixel limit per side",
        path.display()
    )]
    CanvasTooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u32,
    },
    /// The PNG encoder failed.
    #[error("cannot encode figure {} as PNG: {message}", path.display())]
    PngEncode { path: PathBuf, message: String },
}
