//! The legend: its size and columns, the spot in the plot area where it hides the least data,
//! and its drawing.

use super::font::font;
use super::layout::{
    dash, text, Rect, Trace, DOT_RADIUS, FRAME_WIDTH, INK, LEGEND_EDGE, LINE_WIDTH, WHITE,
};
use super::scene::{Anchor, Item, PALETTE};
use super::{LineStyle, Panel, BAND_OPACITY};

const LEGEND_TEXT_SIZE: f64 = 11.0;
/// Blank inside the legend box's edge.
const PADDING: f64 = 7.0;
/// Length of the line sample before each label.
const SAMPLE: f64 = 24.0;
/// Half the height of a band's filled swatch.
const SWATCH_HALF: f64 = 4.5;
/// Blank between a sample and its label.
const SAMPLE_GAP: f64 = 7.0;
/// Blank between legend columns.
const COLUMN_GAP: f64 = 14.0;
const ROW: f64 = 1.5 * LEGEND_TEXT_SIZE;
/// Distance from the plot area's edges.
const INSET: f64 = 8.0;
/// Legends with many entries wrap into at most this many columns.
const MAX_COLUMNS: usize = 3;
/// Margin around the box within which a curve counts as hidden (grazing the edge looks bad too).
const CLEARANCE: f64 = 3.0;

/// A panel's legend: the labelled series, filled column by column.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Legend {
    /// `(series index, label)` of each entry.
    entries: Vec<(usize, String)>,
    rows: usize,
    /// Width of one column: sample, gap and the widest label.
    column_width: f64,
    width: f64,
    height: f64,
}

impl Legend {
    /// The legend of `panel`'s labelled series (`None` if no series has a label), in the fewest
    /// columns (up to three) that keep it within `max_height` of the plot area's height and
    /// within its width.
    pub(super) fn new(panel: &Panel, plot: Rect, max_height: f64) -> Option<Legend> {
        let f = font();
        let entries: Vec<(usize, String)> = panel
            .series
            .iter()
            .enumerate()
            .filter(|(_, series)| !series.label.trim().is_empty())
            .map(|(index, series)| (index, series.label.clone()))
            .collect();
        if entries.is_empty() {
            return None;
        }
        let text_width = entries
            .iter()
            .map(|(_, label)| f.text_width(label, LEGEND_TEXT_SIZE))
            .fold(0.0, f64::max);
        let column_width = SAMPLE + SAMPLE_GAP + text_width;
        let shape = |columns: usize| {
            let rows = entries.len().div_ceil(columns);
            let width = 2.0 * PADDING + columns as f64 * (column_width + COLUMN_GAP) - COLUMN_GAP;
            let height = 2.0 * PADDING + rows as f64 * ROW - (ROW - LEGEND_TEXT_SIZE);
            (rows, width, height)
        };
        let fits_width = |width: f64| width <= plot.width() - 2.0 * INSET;
        let fits_height = |height: f64| height + INSET + CLEARANCE <= max_height * plot.height();
        let columns = (1..=MAX_COLUMNS.min(entries.len()))
            .find(|&c| {
                let (_, width, height) = shape(c);
                fits_width(width) && fits_height(height)
            })
            .or_else(|| {
                (1..=MAX_COLUMNS.min(entries.len()))
                    .rev()
                    .find(|&c| fits_width(shape(c).1))
            })
            .unwrap_or(1);
        let (rows, width, height) = shape(columns);
        Some(Legend {
            entries,
            rows,
            column_width,
            width,
            height,
        })
    }

    /// The fraction of the plot area's height the legend needs above the data to hide none.
    pub(super) fn headroom(&self, plot: Rect) -> f64 {
        (self.height + INSET + CLEARANCE) / plot.height()
    }

    /// The top-left corner of the spot that hides the least of `traces`, and how much it hides
    /// (length of curve, in pixels). Spots: the four corners of `plot`, then the middles of its
    /// top, bottom, right and left edges; the first of equals wins.
    pub(super) fn best_spot(&self, plot: Rect, traces: &[Trace]) -> ((f64, f64), f64) {
        let left = plot.left + INSET;
        let right = plot.right - INSET - self.width;
        let top = plot.top + INSET;
        let bottom = plot.bottom - INSET - self.height;
        let centre_x = (plot.left + plot.right - self.width) / 2.0;
        let centre_y = (plot.top + plot.bottom - self.height) / 2.0;
        let spots = [
            (right, top),
            (left, top),
            (right, bottom),
            (left, bottom),
            (centre_x, top),
            (centre_x, bottom),
            (right, centre_y),
            (left, centre_y),
        ];
        let mut best = (spots[0], f64::INFINITY);
        for (x, y) in spots {
            let area = Rect {
                left: x - CLEARANCE,
                top: y - CLEARANCE,
                right: x + self.width + CLEARANCE,
                bottom: y + self.height + CLEARANCE,
            };
            let hidden = hidden_length(area, traces);
            if hidden < best.1 {
                best = ((x, y), hidden);
            }
        }
        best
    }

    /// Draws the legend at its best spot: a translucent white box, and per entry a line sample in
    /// the series' colour and style followed by its label.
    pub(super) fn draw(&self, items: &mut Vec<Item>, plot: Rect, panel: &Panel, traces: &[Trace]) {
        let f = font();
        let ((x, y), _) = self.best_spot(plot, traces);
        items.push(Item::Box {
            x,
            y,
            width: self.width,
            height: self.height,
            corner_radius: 3.0,
            fill: WHITE,
            fill_opacity: 0.9,
            stroke: LEGEND_EDGE,
            stroke_width: FRAME_WIDTH,
        });
        for (n, (index, label)) in self.entries.iter().enumerate() {
            let (column, row) = (n / self.rows, n % self.rows);
            let color = PALETTE[panel.series[*index].palette_index(*index) % PALETTE.len()];
            let middle = y + PADDING + LEGEND_TEXT_SIZE / 2.0 + row as f64 * ROW;
            let sample_left = x + PADDING + column as f64 * (self.column_width + COLUMN_GAP);
            let series = &panel.series[*index];
            if series.style == LineStyle::Band {
                items.push(Item::Area {
                    points: vec![
                        (sample_left, middle - SWATCH_HALF),
                        (sample_left + SAMPLE, middle - SWATCH_HALF),
                        (sample_left + SAMPLE, middle + SWATCH_HALF),
                        (sample_left, middle + SWATCH_HALF),
                    ],
                    color,
                    opacity: BAND_OPACITY,
                });
            } else if series.style != LineStyle::NoLine {
                items.push(Item::Line {
                    points: vec![(sample_left, middle), (sample_left + SAMPLE, middle)],
                    color,
                    width: LINE_WIDTH,
                    dash: dash(series.style),
                });
            }
            super::layout::marker(
                items,
                series.marker,
                (sample_left + SAMPLE / 2.0, middle),
                color,
            );
            let text_x = sample_left + SAMPLE + SAMPLE_GAP;
            let baseline = middle + f.cap_height(LEGEND_TEXT_SIZE) / 2.0;
            items.push(text(
                text_x,
                baseline,
                label,
                LEGEND_TEXT_SIZE,
                INK,
                Anchor::Start,
            ));
        }
    }
}

/// Length of the traces inside `area`, a lone point counting as its diameter.
fn hidden_length(area: Rect, traces: &[Trace]) -> f64 {
    let mut hidden = 0.0;
    for trace in traces {
        if let [(x, y)] = trace.points[..] {
            if x >= area.left && x <= area.right && y >= area.top && y <= area.bottom {
                hidden += 2.0 * DOT_RADIUS;
            }
        }
        for pair in trace.points.windows(2) {
            hidden += clipped_length(area, pair[0], pair[1]);
        }
    }
    hidden
}

/// Length of the part of the segment `a`–`b` inside `area` (Liang–Barsky clipping).
fn clipped_length(area: Rect, a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let mut t0: f64 = 0.0;
    let mut t1: f64 = 1.0;
    for (p, q) in [
        (-dx, a.0 - area.left),
        (dx, area.right - a.0),
        (-dy, a.1 - area.top),
        (dy, area.bottom - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return 0.0;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 < t1 {
        (t1 - t0) * dx.hypot(dy)
    } else {
        0.0
    }
}
