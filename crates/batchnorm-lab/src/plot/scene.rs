//! The drawing primitives a figure is laid out into, shared by the SVG and PNG back ends.
//!
//! Coordinates are logical pixels with the origin at the top left and y growing downwards; the
//! SVG uses them as they are and the PNG scales them by [`super::PNG_SCALE`].

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// Parses `0xRRGGBB`.
    pub(crate) const fn hex(rgb: u32) -> Rgb {
        Rgb((rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8)
    }
}

/// Series colours: the Okabe–Ito palette, distinguishable under the common colour-vision
/// deficiencies, in a fixed order (its yellow is left out: it vanishes on white). Series `i` of a
/// panel gets `PALETTE[i % PALETTE.len()]`.
pub(crate) const PALETTE: [Rgb; 7] = [
    Rgb::hex(0x0072B2), // blue
    Rgb::hex(0xD55E00), // vermillion
    Rgb::hex(0x009E73), // bluish green
    Rgb::hex(0xCC79A7), // reddish purple
    Rgb::hex(0xE69F00), // orange
    Rgb::hex(0x56B4E9), // sky blue
    Rgb::hex(0x000000), // black
];

/// Where a text's anchor point sits along its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

/// One drawing primitive, painted in order (later ones on top).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    /// An open polyline of at least two points.
    Line {
        points: Vec<(f64, f64)>,
        color: Rgb,
        width: f64,
        /// Dash and gap lengths, or `None` for a solid line.
        dash: Option<[f64; 2]>,
    },
    /// A closed polygon of at least three points, filled (no outline).
    Area {
        points: Vec<(f64, f64)>,
        color: Rgb,
        /// Fill opacity in `0..=1`.
        opacity: f64,
    },
    /// A filled disc (an isolated data point, which a polyline cannot show).
    Dot {
        x: f64,
        y: f64,
        radius: f64,
        color: Rgb,
    },
    /// A rectangle with rounded corners, filled and outlined.
    Box {
        x: f64,
        y: f64,
        width: f64,
        height: f64,
        corner_radius: f64,
        fill: Rgb,
        /// Fill opacity in `0..=1`.
        fill_opacity: f64,
        stroke: Rgb,
        stroke_width: f64,
    },
    /// One line of text; `(x, y)` is the anchor point on the baseline.
    Text {
        x: f64,
        y: f64,
        text: String,
        size: f64,
        color: Rgb,
        anchor: Anchor,
        /// Rotated 90° anticlockwise about `(x, y)`, reading bottom to top (a y-axis label).
        vertical: bool,
    },
}

/// A laid-out figure: a white canvas of `width` × `height` logical pixels and its items.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scene {
    pub width: f64,
    pub height: f64,
    /// The figure title, for the SVG `<title>` element (may be empty).
    pub title: String,
    pub items: Vec<Item>,
    /// Per panel with a legend, the length of data lines (logical px) its legend covers.
    pub legend_hidden: Vec<f64>,
}
