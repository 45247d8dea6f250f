//! Figures for the lab's reports, written as SVG and PNG with no system dependencies.
//!
//! A [`Figure`] is a grid of [`Panel`]s, each a line chart of one or more [`Series`]. Panels
//! get axes with round tick values (`0`, `10k`, `20k`; `0.80`, `0.85`; `10⁻¹²`, `10⁻⁹` on a
//! log axis), axis labels, a title, and a legend placed in the corner that hides the least data.
//! Series take their colours, in order, from the Okabe–Ito palette (safe for colour-blind
//! readers). Text is set in DejaVu Sans, which is bundled (`assets/`), so PNGs look the same on
//! every machine. Output is deterministic: the same figure always gives the same bytes.
//!
//! Layout: each panel takes a 400 × 300 px cell (logical pixels; the SVG's units), so three
//! columns make a 1200 px wide figure; the PNG is painted at [`PNG_SCALE`]× for crisp text.
//!
//! ```rust
//! use batchnorm_lab::plot::{Figure, LineStyle, Panel, Series};
//!
//! let steps = (0..=50).map(|i| f64::from(i) * 1000.0);
//! let figure = Figure {
//!     title: "MNIST".into(),
//!     columns: 1,
//!     panels: vec![Panel {
//!         title: "(a) Test accuracy".into(),
//!         x_label: "training steps".into(),
//!         y_label: "accuracy".into(),
//!         y_log: false,
//!         series: vec![Series {
//!             label: "with BN".into(),
//!             points: steps.map(|s| (s, 1.0 - 0.2 * (-s / 5000.0).exp())).collect(),
//!             style: LineStyle::Solid,
//!             ..Series::default()
//!         }],
//!         ..Panel::default()
//!     }],
//! };
//! let dir = std::env::temp_dir();
//! figure.save_svg(&dir.join("accuracy.svg")).unwrap();
//! figure.save_png(&dir.join("accuracy.png")).unwrap();
//! ```

mod axis;
mod error;
mod font;
mod layout;
mod legend;
mod raster;
mod scene;
mod svg;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::PlotError;

/// Per panel with a legend, the length of data lines (logical pixels) its legend covers: all 0
/// when every legend found a free spot.
///
/// # Errors
/// As [`Figure::save_svg`].
pub fn legend_overlap(figure: &Figure) -> Result<Vec<f64>, PlotError> {
    Ok(layout::lay_out(figure, Path::new("figure"))?.legend_hidden)
}

/// Device pixels per logical pixel in PNG output (a 3-column figure is 2400 px wide).
pub const PNG_SCALE: f64 = 2.0;

/// A figure: a title above a grid of panels, filled row by row.
///
/// `columns` is the number of panels per row (at least 1; more than there are panels is the same
/// as one row of all of them).
///
/// ```rust
/// use batchnorm_lab::plot::{Figure, Panel};
///
/// let panel = |title: &str| Panel {
///     title: title.into(),
///     x_label: "step".into(),
///     y_label: "value".into(),
///     y_log: false,
///     series: vec![],
///     ..Panel::default()
/// };
/// // Three panels side by side; with no series each says "no data".
/// let figure = Figure { title: "Figure 1".into(), columns: 3, panels: vec![panel("a"), panel("b"), panel("c")] };
/// figure.save_svg(&std::env::temp_dir().join("figure1.svg")).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Shown centred above the panels; empty for none.
    pub title: String,
    /// Panels per row.
    pub columns: usize,
    /// The panels, in reading order.
    pub panels: Vec<Panel>,
}

/// One chart: axes, a title, and its series.
///
/// Ranges come from the finite points of all series: the y range gets a 5 % margin (a log axis
/// is widened to whole decades instead), and the x range is widened to a neighbouring tick when
/// one is within 10 %. The legend goes to the corner or edge of the plot area where it hides no
/// data; when there is no such spot the y range grows at the top to make one.
///
/// ```rust
/// use batchnorm_lab::plot::{LineStyle, Panel, Series};
///
/// // Gradient norms across layers span many decades: use a log y axis.
/// let panel = Panel {
///     title: "Gradient norm per layer".into(),
///     x_label: "layer".into(),
///     y_label: "‖∇W‖".into(),
///     y_log: true,
///     series: vec![Series {
///         label: "without BN".into(),
///         points: (0..12).map(|l| (f64::from(l), 10f64.powi(-l))).collect(),
///         style: LineStyle::Dashed,
///         ..Series::default()
///     }],
///     ..Panel::default()
/// };
/// assert!(panel.y_log);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// Shown centred above the plot area; empty for none.
    pub title: String,
    /// Shown below the x axis; empty for none.
    pub x_label: String,
    /// Shown rotated left of the y axis; empty for none.
    pub y_label: String,
    /// Base-10 logarithmic y axis, ticked at powers of ten; points with `y <= 0` leave gaps.
    pub y_log: bool,
    /// Drawn in order, later ones on top; series `i` takes palette colour `i` (mod 7).
    pub series: Vec<Series>,
    /// When not empty: a logarithmic x axis ticked and labelled at these values, as they are
    /// (learning rates `0.01 … 5`, batch sizes `2, 4, … 128`); points with `x <= 0` leave gaps.
    /// Empty (the default): a linear x axis.
    pub x_log_ticks: Vec<f64>,
    /// A fixed linear y range (`lo < hi`): panels meant to be compared share it, and an
    /// accuracy axis stops at 1. The top stays; when the legend would hide data, the bottom
    /// moves down to make room for it. `None` (the default): from the data. Ignored on a log
    /// axis.
    pub y_range: Option<(f64, f64)>,
}

/// One curve: points joined in the given order.
///
/// A point with a NaN or infinite coordinate is skipped and breaks the line (a gap); a point
/// with no drawable neighbour on either side is drawn as a dot.
///
/// ```rust
/// use batchnorm_lab::plot::{LineStyle, Series};
///
/// // Drawn as two pieces: (0, 1)–(1, 2), then (3, 1)–(4, 0).
/// let series = Series {
///     label: "85th percentile".into(),
///     points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0), (4.0, 0.0)],
///     style: LineStyle::Solid,
///     marker: batchnorm_lab::plot::Marker::None,
///     color_of: None,
/// };
/// assert_eq!(series.points.len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text; a series with an empty label is left out of the legend.
    pub label: String,
    /// `(x, y)` data points.
    pub points: Vec<(f64, f64)>,
    /// How the line is stroked.
    pub style: LineStyle,
    /// What marks each point (besides the line).
    pub marker: Marker,
    /// The palette colour to take instead of the series' own index (a marker series that
    /// belongs with another series takes its colour).
    pub color_of: Option<usize>,
}

impl Series {
    /// The palette index this series is drawn in: `color_of`, or its own index in the panel.
    pub(crate) fn palette_index(&self, index: usize) -> usize {
        self.color_of.unwrap_or(index)
    }
}

impl Default for Series {
    fn default() -> Self {
        Series {
            label: String::new(),
            points: Vec::new(),
            style: LineStyle::Solid,
            marker: Marker::None,
            color_of: None,
        }
    }
}

/// What marks each point of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Nothing: the line alone.
    None,
    /// A filled disc at every point.
    Dot,
    /// An × at every point (e.g. a run that diverged).
    Cross,
}

/// How a series' line is stroked.
///
/// ```rust
/// use batchnorm_lab::plot::LineStyle;
///
/// let style = LineStyle::Dashed; // e.g. the network without batch normalization
/// assert_ne!(style, LineStyle::Solid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    /// A continuous line.
    Solid,
    /// A dashed line (6 px dashes, 3.5 px gaps).
    Dashed,
    /// No line: the markers alone.
    NoLine,
    /// No line: the points outline a region (one edge left to right, then the other edge back),
    /// filled with the series' colour at [`BAND_OPACITY`]; a min-max band behind a curve. A
    /// labelled band shows a filled swatch in the legend.
    Band,
}

/// Fill opacity of a [`LineStyle::Band`]: light enough that overlapping bands and the curves
/// over them stay readable.
pub const BAND_OPACITY: f64 = 0.22;

impl Figure {
    /// Writes the figure to `path` as an SVG document, creating the parent folder if needed.
    ///
    /// Text is kept as SVG `<text>` in DejaVu Sans (falling back to Verdana or any sans-serif
    /// font where the viewer lacks it). Errors name `path`: no panels, 0 columns, a data range
    /// too wide for f64, or an I/O failure.
    ///
    /// ```rust
    /// # use batchnorm_lab::plot::{Figure, Panel};
    /// # let figure = Figure { title: "t".into(), columns: 1, panels: vec![Panel {
    /// #     title: "p".into(), x_label: "x".into(), y_label: "y".into(), y_log: false, series: vec![], ..Panel::default() }] };
    /// figure.save_svg(&std::env::temp_dir().join("fig.svg"))?;
    /// # Ok::<(), batchnorm_lab::plot::PlotError>(())
    /// ```
    pub fn save_svg(&self, path: &Path) -> Result<(), PlotError> {
        let scene = layout::lay_out(self, path)?;
        write(path, svg::to_svg(&scene).as_bytes())
    }

    /// Writes the figure to `path` as an RGBA PNG painted at [`PNG_SCALE`]× (a 3-column figure
    /// is 2400 px wide), creating the parent folder if needed.
    ///
    /// Fails, naming `path`, in the cases of [`Figure::save_svg`] and when the image would be
    /// larger than 16 000 px on a side.
    ///
    /// ```rust
    /// # use batchnorm_lab::plot::{Figure, Panel};
    /// # let figure = Figure { title: "t".into(), columns: 1, panels: vec![Panel {
    /// #     title: "p".into(), x_label: "x".into(), y_label: "y".into(), y_log: false, series: vec![], ..Panel::default() }] };
    /// figure.save_png(&std::env::temp_dir().join("fig.png"))?;
    /// # Ok::<(), batchnorm_lab::plot::PlotError>(())
    /// ```
    pub fn save_png(&self, path: &Path) -> Result<(), PlotError> {
        let scene = layout::lay_out(self, path)?;
        let png = raster::to_png(&scene, PNG_SCALE).map_err(|e| match e {
            raster::RasterError::TooLarge {
                width,
                height,
                limit,
            } => PlotError::CanvasTooLarge {
                path: path.to_path_buf(),
                width,
                height,
                limit,
            },
            raster::RasterError::Encode(message) => PlotError::PngEncode {
                path: path.to_path_buf(),
                message,
            },
        })?;
        write(path, &png)
    }
}

/// Writes `bytes` to `path`, creating its parent folder first.
fn write(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    let io = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}
