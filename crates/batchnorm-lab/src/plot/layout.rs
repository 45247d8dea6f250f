//! Lays a [`Figure`] out into a [`Scene`]: the panel grid, axes, ticks, curves and legends.
//!
//! Every panel gets a cell of [`PANEL_WIDTH`] × [`PANEL_HEIGHT`] logical pixels; room for titles,
//! axis labels and y tick labels is reserved alike in all cells, so the plot areas of a figure
//! line up. Frame lines are placed on whole logical pixels, which keeps them crisp in the PNG.

use std::path::Path;

use super::axis::{Axis, Ends};
use super::font::font;
use super::legend::Legend;
use super::scene::{Anchor, Item, Rgb, Scene, PALETTE};
use super::{Figure, LineStyle, Marker, Panel, PlotError, BAND_OPACITY};

/// Width of one panel's cell, in logical pixels (three columns make a 1200 px figure).
pub(crate) const PANEL_WIDTH: f64 = 400.0;
/// Height of one panel's cell, in logical pixels.
pub(crate) const PANEL_HEIGHT: f64 = 300.0;
/// Blank margin inside each cell's edge.
const CELL_PADDING: f64 = 12.0;
/// Extra room right of the plot area, for half of the last x tick label.
const RIGHT_GUTTER: f64 = 12.0;
/// Height of the band above the grid that holds the figure title (when there is one).
const FIGURE_TITLE_BAND: f64 = 40.0;

// Font sizes in logical pixels.
const FIGURE_TITLE_SIZE: f64 = 18.0;
const PANEL_TITLE_SIZE: f64 = 14.0;
const AXIS_LABEL_SIZE: f64 = 12.5;
const TICK_LABEL_SIZE: f64 = 11.0;
const NO_DATA_SIZE: f64 = 13.0;

// Gaps and lengths in logical pixels.
const MAJOR_TICK: f64 = 4.5;
const MINOR_TICK: f64 = 2.5;
const TICK_LABEL_GAP: f64 = 3.0;
const AXIS_LABEL_GAP: f64 = 7.0;
const TITLE_GAP: f64 = 9.0;
/// Smallest vertical distance between y tick labels, in tick-label font sizes.
const Y_LABEL_SPACING: f64 = 2.2;
/// Smallest blank between neighbouring x tick labels.
const X_LABEL_SPACING: f64 = 14.0;
/// Logical pixels per wanted y tick interval (at most 8 ticks on a 220 px axis).
const PIXELS_PER_Y_TICK: f64 = 30.0;
/// Logical pixels per wanted x tick interval (at most 6 ticks on a 320 px axis).
const PIXELS_PER_X_TICK: f64 = 60.0;
/// Width assumed for the y tick labels when placing the legend, before they are known.
const ESTIMATED_Y_LABEL_WIDTH: f64 = 35.0;
/// Most of the plot height given to headroom for a legend that would hide data (a legend is laid
/// out in up to three columns to fit); a taller legend stays where it hides the least.
const MAX_HEADROOM: f64 = 0.45;

// Strokes.
pub(super) const LINE_WIDTH: f64 = 1.75;
const DASH: [f64; 2] = [6.0, 3.5];
pub(super) const DOT_RADIUS: f64 = 2.4;
/// Radius of a point marker.
const MARKER_RADIUS: f64 = 3.0;
/// Half the width of a cross marker.
const CROSS_HALF: f64 = 4.5;
pub(super) const FRAME_WIDTH: f64 = 1.0;
/// Consecutive points within one column this wide (logical px) are thinned to the first, lowest,
/// highest and last of them: the drawn envelope is unchanged and a 50 000-step curve stays small.
const THIN_COLUMN: f64 = 0.5;

// Colours.
pub(super) const WHITE: Rgb = Rgb::hex(0xFFFFFF);
pub(super) const INK: Rgb = Rgb::hex(0x1A1A1A);
const TICK_INK: Rgb = Rgb::hex(0x4D4D4D);
const FRAME: Rgb = Rgb::hex(0x595959);
const GRID: Rgb = Rgb::hex(0xE6E6E6);
const MUTED: Rgb = Rgb::hex(0x8C8C8C);
pub(super) const LEGEND_EDGE: Rgb = Rgb::hex(0xCCCCCC);

/// A rectangle in logical pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rect {
    pub left: f64,
    pub top: f64,
    pub right: f64,
    pub bottom: f64,
}

impl Rect {
    pub(super) fn width(&self) -> f64 {
        self.right - self.left
    }

    pub(super) fn height(&self) -> f64 {
        self.bottom - self.top
    }
}

/// A panel's drawable data: per series, its runs of consecutive drawable points (a point that
/// cannot be drawn ends a run, leaving a gap), and the ranges over all of them.
#[derive(Debug)]
struct PanelData {
    runs: Vec<Vec<Vec<(f64, f64)>>>,
    /// `(x_min, x_max, y_min, y_max)`, or `None` when no point can be drawn.
    extent: Option<(f64, f64, f64, f64)>,
    /// Some point had finite coordinates but a y that a log axis cannot show (`<= 0`).
    non_positive: bool,
}

impl PanelData {
    fn new(panel: &Panel) -> PanelData {
        let mut extent: Option<(f64, f64, f64, f64)> = None;
        let mut non_positive = false;
        let runs = panel
            .series
            .iter()
            .map(|series| {
                let mut runs = vec![Vec::new()];
                let x_log = !panel.x_log_ticks.is_empty();
                for &(x, y) in &series.points {
                    let finite = x.is_finite() && y.is_finite();
                    let shown = (!panel.y_log || y > 0.0) && (!x_log || x > 0.0);
                    non_positive |= finite && !shown;
                    if finite && shown {
                        extent = Some(match extent {
                            None => (x, x, y, y),
                            Some((x0, x1, y0, y1)) => (x0.min(x), x1.max(x), y0.min(y), y1.max(y)),
                        });
                        runs.last_mut().expect("runs starts non-empty").push((x, y));
                    } else if !runs.last().expect("runs starts non-empty").is_empty() {
                        runs.push(Vec::new());
                    }
                }
                runs.retain(|run| !run.is_empty());
                runs
            })
            .collect();
        PanelData {
            runs,
            extent,
            non_positive,
        }
    }
}

/// Which panel parts some panel of the figure has, and so every cell reserves room for.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    title: bool,
    x_label: bool,
    y_label: bool,
}

/// Lays `figure` out; `path` is the output file, named in errors.
pub(crate) fn lay_out(figure: &Figure, path: &Path) -> Result<Scene, PlotError> {
    let panels = &figure.panels;
    if panels.is_empty() {
        return Err(PlotError::EmptyFigure {
            path: path.to_path_buf(),
        });
    }
    if figure.columns == 0 {
        return Err(PlotError::ZeroColumns {
            path: path.to_path_buf(),
        });
    }
    let f = font();
    let columns = figure.columns.min(panels.len());
    let rows = panels.len().div_ceil(columns);
    let has_title = !figure.title.trim().is_empty();
    let band = if has_title { FIGURE_TITLE_BAND } else { 0.0 };
    let width = columns as f64 * PANEL_WIDTH;
    let height = band + rows as f64 * PANEL_HEIGHT;
    let reserved = Reserved {
        title: panels.iter().any(|p| !p.title.trim().is_empty()),
        x_label: panels.iter().any(|p| !p.x_label.trim().is_empty()),
        y_label: panels.iter().any(|p| !p.y_label.trim().is_empty()),
    };

    // Vertical geometry within a cell, the same for every cell.
    let title_baseline = CELL_PADDING + f.cap_height(PANEL_TITLE_SIZE) * 1.1;
    let plot_top = if reserved.title {
        title_baseline + f.descent(PANEL_TITLE_SIZE) + TITLE_GAP
    } else {
        CELL_PADDING + TICK_LABEL_SIZE
    };
    let tick_label_drop = MAJOR_TICK + TICK_LABEL_GAP + f.cap_height(TICK_LABEL_SIZE);
    let x_label_drop = tick_label_drop
        + f.descent(TICK_LABEL_SIZE)
        + AXIS_LABEL_GAP
        + f.cap_height(AXIS_LABEL_SIZE);
    let below_plot = if reserved.x_label {
        x_label_drop + f.descent(AXIS_LABEL_SIZE)
    } else {
        tick_label_drop + f.descent(TICK_LABEL_SIZE)
    };
    let plot_bottom = (PANEL_HEIGHT - CELL_PADDING - below_plot).round();
    let plot_top = plot_top.round();
    let plot_height = plot_bottom - plot_top;

    // Horizontal geometry: the left margin depends on the widest y tick label, so the y axes
    // come first (with the x axes laid out on an estimated width to see where the legend goes).
    let y_label_baseline = CELL_PADDING + f.cap_height(AXIS_LABEL_SIZE) * 1.1;
    let label_column = if reserved.y_label {
        y_label_baseline + f.descent(AXIS_LABEL_SIZE) + AXIS_LABEL_GAP
    } else {
        CELL_PADDING
    };
    let plot_right = (PANEL_WIDTH - CELL_PADDING - RIGHT_GUTTER).round();
    let estimated_width = plot_right - label_column - ESTIMATED_Y_LABEL_WIDTH;

    let data: Vec<PanelData> = panels.iter().map(PanelData::new).collect();
    let mut y_axes = Vec::with_capacity(panels.len());
    for (panel, data) in panels.iter().zip(&data) {
        let axis = match data.extent {
            None => None,
            Some((x0, x1, y0, y1)) => {
                let mut axis = y_axis(panel, path, y0, y1, 0.0, plot_height)?;
                let x_axis = x_axis(panel, path, x0, x1, estimated_width)?;
                let plot = Rect {
                    left: 0.0,
                    top: 0.0,
                    right: estimated_width,
                    bottom: plot_height,
                };
                let traces = trace(plot, data, &x_axis, &axis);
                let legend = Legend::new(panel, plot, MAX_HEADROOM);
                if let Some(legend) = &legend {
                    let headroom = legend.headroom(plot);
                    let (_, hidden) = legend.best_spot(plot, &traces);
                    if hidden > 0.0 && headroom <= MAX_HEADROOM {
                        axis = y_axis(panel, path, y0, y1, headroom, plot_height)?;
                    }
                }
                Some((axis, legend))
            }
        };
        y_axes.push(axis);
    }
    let y_label_width = y_axes
        .iter()
        .flatten()
        .flat_map(|(axis, _)| &axis.ticks)
        .filter_map(|tick| tick.label.as_deref())
        .map(|label| f.text_width(label, TICK_LABEL_SIZE))
        .fold(0.0, f64::max);
    let plot_left = (label_column + y_label_width + TICK_LABEL_GAP + MAJOR_TICK).round();
    let plot_width = plot_right - plot_left;

    let mut items = Vec::new();
    let mut legend_hidden = Vec::new();
    if has_title {
        let baseline = (band + f.cap_height(FIGURE_TITLE_SIZE)) / 2.0 + 2.0;
        items.push(text(
            width / 2.0,
            baseline,
            &figure.title,
            FIGURE_TITLE_SIZE,
            INK,
            Anchor::Middle,
        ));
    }
    for (index, ((panel, data), y_axis)) in panels.iter().zip(&data).zip(y_axes).enumerate() {
        let cell_left = (index % columns) as f64 * PANEL_WIDTH;
        let cell_top = band + (index / columns) as f64 * PANEL_HEIGHT;
        let plot = Rect {
            left: cell_left + plot_left,
            top: cell_top + plot_top,
            right: cell_left + plot_right,
            bottom: cell_top + plot_bottom,
        };
        match (data.extent, y_axis) {
            (Some((x0, x1, _, _)), Some((y_axis, legend))) => {
                let x_axis = x_axis(panel, path, x0, x1, plot_width)?;
                draw_grid(&mut items, plot, &x_axis, &y_axis);
                draw_frame(&mut items, plot);
                draw_ticks(&mut items, plot, &x_axis, &y_axis);
                let traces = trace(plot, data, &x_axis, &y_axis);
                draw_traces(&mut items, panel, &traces);
                draw_markers(&mut items, panel, data, plot, &x_axis, &y_axis);
                if let Some(legend) = legend {
                    legend_hidden.push(legend.best_spot(plot, &traces).1);
                    legend.draw(&mut items, plot, panel, &traces);
                }
            }
            _ => {
                draw_frame(&mut items, plot);
                let message = if data.non_positive {
                    "no positive values for a log axis"
                } else {
                    "no data"
                };
                let y = (plot.top + plot.bottom) / 2.0 + f.cap_height(NO_DATA_SIZE) / 2.0;
                let x = (plot.left + plot.right) / 2.0;
                items.push(text(x, y, message, NO_DATA_SIZE, MUTED, Anchor::Middle));
            }
        }
        let middle_x = (plot.left + plot.right) / 2.0;
        if !panel.title.trim().is_empty() {
            let y = cell_top + title_baseline;
            items.push(text(
                middle_x,
                y,
                &panel.title,
                PANEL_TITLE_SIZE,
                INK,
                Anchor::Middle,
            ));
        }
        if !panel.x_label.trim().is_empty() {
            let y = plot.bottom + x_label_drop;
            items.push(text(
                middle_x,
                y,
                &panel.x_label,
                AXIS_LABEL_SIZE,
                INK,
                Anchor::Middle,
            ));
        }
        if !panel.y_label.trim().is_empty() {
            items.push(Item::Text {
                x: cell_left + y_label_baseline,
                y: (plot.top + plot.bottom) / 2.0,
                text: panel.y_label.clone(),
                size: AXIS_LABEL_SIZE,
                color: INK,
                anchor: Anchor::Middle,
                vertical: true,
            });
        }
    }
    Ok(Scene {
        width,
        height,
        title: figure.title.clone(),
        items,
        legend_hidden,
    })
}

/// The y axis of `panel` over data `y0..=y1` on a plot area `plot_height` tall, keeping the top
/// `headroom` fraction free: labels at least [`Y_LABEL_SPACING`] font sizes apart.
fn y_axis(
    panel: &Panel,
    path: &Path,
    y0: f64,
    y1: f64,
    headroom: f64,
    plot_height: f64,
) -> Result<Axis, PlotError> {
    let fits = |fractions: &[f64], _: &[String]| {
        fractions
            .windows(2)
            .all(|w| (w[1] - w[0]) * plot_height >= Y_LABEL_SPACING * TICK_LABEL_SIZE)
    };
    if panel.y_log {
        return Ok(Axis::log(y0, y1, headroom, fits));
    }
    let target = (plot_height / PIXELS_PER_Y_TICK).floor().max(2.0) as usize;
    if let Some((lo, hi)) = panel.y_range.filter(|(lo, hi)| lo < hi) {
        // A fixed top (an accuracy's 1) cannot move: room for a legend is made at the bottom.
        let lo = hi - (hi - lo) / (1.0 - headroom);
        return Axis::linear(lo, hi, Ends::Snapped, 0.0, target, fits)
            .ok_or_else(|| range_overflow(panel, path, "y", lo, hi));
    }
    Axis::linear(y0, y1, Ends::Padded, headroom, target, fits)
        .ok_or_else(|| range_overflow(panel, path, "y", y0, y1))
}

/// The x axis of `panel` over data `x0..=x1` on a plot area `plot_width` wide: labels at least
/// [`X_LABEL_SPACING`] apart.
fn x_axis(
    panel: &Panel,
    path: &Path,
    x0: f64,
    x1: f64,
    plot_width: f64,
) -> Result<Axis, PlotError> {
    let f = font();
    let fits = |fractions: &[f64], labels: &[String]| {
        let widths: Vec<f64> = labels
            .iter()
            .map(|l| f.text_width(l, TICK_LABEL_SIZE))
            .collect();
        fractions
            .windows(2)
            .zip(widths.windows(2))
            .all(|(at, w)| (at[1] - at[0]) * plot_width >= (w[0] + w[1]) / 2.0 + X_LABEL_SPACING)
    };
    if !panel.x_log_ticks.is_empty() {
        return Ok(Axis::log_at(&panel.x_log_ticks, x0, x1));
    }
    let target = (plot_width / PIXELS_PER_X_TICK).floor().max(2.0) as usize;
    Axis::linear(x0, x1, Ends::Snapped, 0.0, target, fits)
        .ok_or_else(|| range_overflow(panel, path, "x", x0, x1))
}

fn range_overflow(panel: &Panel, path: &Path, axis: &'static str, min: f64, max: f64) -> PlotError {
    PlotError::RangeOverflow {
        path: path.to_path_buf(),
        panel: panel.title.clone(),
        axis,
        min,
        max,
    }
}

/// A horizontal text item.
pub(super) fn text(x: f64, y: f64, text: &str, size: f64, color: Rgb, anchor: Anchor) -> Item {
    Item::Text {
        x,
        y,
        text: text.to_string(),
        size,
        color,
        anchor,
        vertical: false,
    }
}

/// A solid line through `points`.
fn line(points: Vec<(f64, f64)>, color: Rgb, width: f64) -> Item {
    Item::Line {
        points,
        color,
        width,
        dash: None,
    }
}

/// Light grid lines at the labelled ticks, behind everything else.
fn draw_grid(items: &mut Vec<Item>, plot: Rect, x_axis: &Axis, y_axis: &Axis) {
    for tick in y_axis.ticks.iter().filter(|t| t.label.is_some()) {
        let y = (plot.bottom - tick.fraction * plot.height()).round();
        if y > plot.top + 0.5 && y < plot.bottom - 0.5 {
            items.push(line(
                vec![(plot.left, y), (plot.right, y)],
                GRID,
                FRAME_WIDTH,
            ));
        }
    }
    for tick in x_axis.ticks.iter().filter(|t| t.label.is_some()) {
        let x = (plot.left + tick.fraction * plot.width()).round();
        if x > plot.left + 0.5 && x < plot.right + 0.5 {
            items.push(line(
                vec![(x, plot.top), (x, plot.bottom)],
                GRID,
                FRAME_WIDTH,
            ));
        }
    }
}

/// The left and bottom axis lines.
fn draw_frame(items: &mut Vec<Item>, plot: Rect) {
    let corner = vec![
        (plot.left, plot.top),
        (plot.left, plot.bottom),
        (plot.right, plot.bottom),
    ];
    items.push(line(corner, FRAME, FRAME_WIDTH));
}

/// Tick marks pointing out of the plot area, and the labels of the major ones.
fn draw_ticks(items: &mut Vec<Item>, plot: Rect, x_axis: &Axis, y_axis: &Axis) {
    let f = font();
    for tick in &y_axis.ticks {
        let y = (plot.bottom - tick.fraction * plot.height()).round();
        let length = if tick.label.is_some() {
            MAJOR_TICK
        } else {
            MINOR_TICK
        };
        items.push(line(
            vec![(plot.left - length, y), (plot.left, y)],
            FRAME,
            FRAME_WIDTH,
        ));
        if let Some(label) = &tick.label {
            let x = plot.left - MAJOR_TICK - TICK_LABEL_GAP;
            let y = y + f.cap_height(TICK_LABEL_SIZE) / 2.0;
            items.push(text(x, y, label, TICK_LABEL_SIZE, TICK_INK, Anchor::End));
        }
    }
    for tick in &x_axis.ticks {
        let x = (plot.left + tick.fraction * plot.width()).round();
        let length = if tick.label.is_some() {
            MAJOR_TICK
        } else {
            MINOR_TICK
        };
        items.push(line(
            vec![(x, plot.bottom), (x, plot.bottom + length)],
            FRAME,
            FRAME_WIDTH,
        ));
        if let Some(label) = &tick.label {
            let y = plot.bottom + MAJOR_TICK + TICK_LABEL_GAP + f.cap_height(TICK_LABEL_SIZE);
            items.push(text(x, y, label, TICK_LABEL_SIZE, TICK_INK, Anchor::Middle));
        }
    }
}

/// One drawn piece of a series in logical pixels: a thinned polyline, or a lone point.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Trace {
    /// Index of the series in its panel (its palette colour).
    pub series: usize,
    pub points: Vec<(f64, f64)>,
}

/// The panel's runs of points mapped onto `plot` and thinned.
fn trace(plot: Rect, data: &PanelData, x_axis: &Axis, y_axis: &Axis) -> Vec<Trace> {
    let mut traces = Vec::new();
    for (series, runs) in data.runs.iter().enumerate() {
        for run in runs {
            let mapped: Vec<(f64, f64)> = run
                .iter()
                .map(|&(x, y)| {
                    (
                        plot.left + x_axis.fraction(x) * plot.width(),
                        plot.bottom - y_axis.fraction(y) * plot.height(),
                    )
                })
                .collect();
            traces.push(Trace {
                series,
                points: thin(&mapped),
            });
        }
    }
    traces
}

/// The traces as lines (lone points as dots) in their series' palette colour and style.
fn draw_traces(items: &mut Vec<Item>, panel: &Panel, traces: &[Trace]) {
    for trace in traces {
        let series = &panel.series[trace.series];
        let color = PALETTE[series.palette_index(trace.series) % PALETTE.len()];
        if series.style == LineStyle::NoLine {
            continue;
        }
        if series.style == LineStyle::Band {
            if trace.points.len() >= 3 {
                items.push(Item::Area {
                    points: trace.points.clone(),
                    color,
                    opacity: BAND_OPACITY,
                });
            }
            continue;
        }
        if let [(x, y)] = trace.points[..] {
            if series.marker != Marker::None {
                continue; // drawn by its marker
            }
            items.push(Item::Dot {
                x,
                y,
                radius: DOT_RADIUS,
                color,
            });
        } else {
            let dash = dash(panel.series[trace.series].style);
            items.push(Item::Line {
                points: trace.points.clone(),
                color,
                width: LINE_WIDTH,
                dash,
            });
        }
    }
}

pub(super) fn dash(style: LineStyle) -> Option<[f64; 2]> {
    match style {
        LineStyle::Solid | LineStyle::NoLine | LineStyle::Band => None,
        LineStyle::Dashed => Some(DASH),
    }
}

/// Each series' markers at every drawable point (not thinned: series with markers are short).
fn draw_markers(
    items: &mut Vec<Item>,
    panel: &Panel,
    data: &PanelData,
    plot: Rect,
    x_axis: &Axis,
    y_axis: &Axis,
) {
    for (index, (series, runs)) in panel.series.iter().zip(&data.runs).enumerate() {
        let color = PALETTE[series.palette_index(index) % PALETTE.len()];
        for &(x, y) in runs.iter().flatten() {
            let at = (
                plot.left + x_axis.fraction(x) * plot.width(),
                plot.bottom - y_axis.fraction(y) * plot.height(),
            );
            marker(items, series.marker, at, color);
        }
    }
}

/// `kind` of marker centred at `at`.
pub(super) fn marker(items: &mut Vec<Item>, kind: Marker, (x, y): (f64, f64), color: Rgb) {
    match kind {
        Marker::None => {}
        Marker::Dot => items.push(Item::Dot {
            x,
            y,
            radius: MARKER_RADIUS,
            color,
        }),
        Marker::Cross => {
            let r = CROSS_HALF;
            for (dx, dy) in [(r, r), (r, -r)] {
                items.push(Item::Line {
                    points: vec![(x - dx, y - dy), (x + dx, y + dy)],
                    color,
                    width: LINE_WIDTH,
                    dash: None,
                });
            }
        }
    }
}

/// Thins a polyline: each run of consecutive points in one [`THIN_COLUMN`]-wide column keeps
/// only its first, lowest, highest and last point, in their original order. The column's
/// vertical extent and the connections to its neighbours are unchanged.
pub(crate) fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut kept = Vec::with_capacity(points.len().min(4096));
    let mut start = 0;
    while start < points.len() {
        let column = (points[start].0 / THIN_COLUMN).floor();
        let mut end = start + 1;
        while end < points.len() && (points[end].0 / THIN_COLUMN).floor() == column {
            end += 1;
        }
        let group = &points[start..end];
        if group.len() <= 4 {
            kept.extend_from_slice(group);
        } else {
            let by_y =
                |a: &(usize, &(f64, f64)), b: &(usize, &(f64, f64))| a.1 .1.total_cmp(&b.1 .1);
            let low = group.iter().enumerate().min_by(by_y).map_or(0, |(i, _)| i);
            let high = group.iter().enumerate().max_by(by_y).map_or(0, |(i, _)| i);
            let mut picks = [0, low, high, group.len() - 1];
            picks.sort_unstable();
            let mut previous = None;
            for pick in picks {
                if previous != Some(pick) {
                    kept.push(group[pick]);
                    previous = Some(pick);
                }
            }
        }
        start = end;
    }
    kept
}
