//! The bundled font (DejaVu Sans, `assets/DejaVuSans.ttf`): text measurement and glyph outlines.
//!
//! Plots must render text on machines with no system fonts, so the font file is compiled into the
//! binary and both back ends measure text with it. The PNG back end also draws every glyph from
//! its outline; the SVG back end writes `<text>` and names DejaVu Sans first in `font-family`.
//! Layout is the plain advance widths plus the font's `kern` table pairs (no shaping): enough for
//! the Latin labels, digits and superscripts a plot uses.

use std::sync::OnceLock;

use tiny_skia::PathBuilder;
use ttf_parser::{Face, GlyphId, OutlineBuilder};

/// The font file, bundled with its licence (`assets/DejaVuSans-LICENSE.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The font family name written into SVG files, with fallbacks of similar width.
pub(crate) const SVG_FONT_FAMILY: &str = "'DejaVu Sans', Verdana, Geneva, sans-serif";

/// The parsed bundled font.
pub(crate) struct Font {
    face: Face<'static>,
    /// Font units per em, as f64 to scale by a font size in pixels.
    units_per_em: f64,
    /// Height of the capital "H" in font units (DejaVu's OS/2 table predates the cap-height
    /// field, so it is measured from the glyph).
    cap_units: f64,
}

impl std::fmt::Debug for Font {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Font")
            .field("units_per_em", &self.units_per_em)
            .finish()
    }
}

/// The bundled font, parsed once.
pub(crate) fn font() -> &'static Font {
    static FONT: OnceLock<Font> = OnceLock::new();
    FONT.get_or_init(|| {
        // The bytes are a fixed asset compiled into the binary, not input: a failure here is a
        // broken build, and the unit tests parse it.
        let face = Face::parse(FONT_BYTES, 0).expect("the bundled DejaVu Sans font parses");
        let units_per_em = f64::from(face.units_per_em());
        let cap_units = face
            .glyph_index('H')
            .and_then(|h| face.glyph_bounding_box(h))
            .map_or(0.73 * units_per_em, |bbox| f64::from(bbox.y_max));
        Font {
            face,
            units_per_em,
            cap_units,
        }
    })
}

impl Font {
    /// Height of capital letters (and digits) above the baseline, in pixels at `size` px.
    pub(crate) fn cap_height(&self, size: f64) -> f64 {
        self.cap_units / self.units_per_em * size
    }

    /// Depth of descenders ("g", "p", ")") below the baseline, positive, at `size` px.
    pub(crate) fn descent(&self, size: f64) -> f64 {
        -f64::from(self.face.descender()) / self.units_per_em * size
    }

    /// The glyphs of `text` with their pen positions in font units, and the total advance.
    fn glyphs(&self, text: &str) -> (Vec<(GlyphId, f64)>, f64) {
        let mut glyphs = Vec::with_capacity(text.len());
        let mut pen = 0.0;
        let mut previous: Option<GlyphId> = None;
        for ch in text.chars() {
            // A character the font lacks draws as the font's "missing glyph" box (glyph 0).
            let glyph = self.face.glyph_index(ch).unwrap_or(GlyphId(0));
            if let Some(left) = previous {
                pen += f64::from(self.kerning(left, glyph));
            }
            glyphs.push((glyph, pen));
            pen += f64::from(self.face.glyph_hor_advance(glyph).unwrap_or(0));
            previous = Some(glyph);
        }
        (glyphs, pen)
    }

    /// The horizontal `kern` table adjustment between two glyphs, in font units.
    fn kerning(&self, left: GlyphId, right: GlyphId) -> i16 {
        let Some(kern) = self.face.tables().kern else {
            return 0;
        };
        kern.subtables
            .into_iter()
            .filter(|table| table.horizontal && !table.variable && !table.has_cross_stream)
            .find_map(|table| table.glyphs_kerning(left, right))
            .unwrap_or(0)
    }

    /// Advance width of `text` set at `size` px.
    pub(crate) fn text_width(&self, text: &str, size: f64) -> f64 {
        self.glyphs(text).1 / self.units_per_em * size
    }

    /// Appends the outlines of `text` set at `size` px to `path`, with the pen starting at
    /// `(x, 0)` on the baseline `y = 0` and y growing downwards (screen coordinates).
    pub(crate) fn append_outlines(&self, text: &str, size: f64, x: f64, path: &mut PathBuilder) {
        let scale = size / self.units_per_em;
        let (glyphs, _) = self.glyphs(text);
        for (glyph, pen) in glyphs {
            let mut sink = OutlineSink {
                path,
                dx: x + pen * scale,
                scale,
            };
            // Glyphs without an outline (the space) return None: nothing to draw.
            let _ = self.face.outline_glyph(glyph, &mut sink);
        }
    }
}

/// Receives one glyph's contours in font units and adds them to a path in pixels.
struct OutlineSink<'a> {
    path: &'a mut PathBuilder,
    /// Pen position of this glyph, in pixels.
    dx: f64,
    /// Pixels per font unit.
    scale: f64,
}

impl OutlineSink<'_> {
    /// Font units (y up) to pixels (y down) relative to the baseline origin.
    fn map(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (self.dx + f64::from(x) * self.scale) as f32,
            (-f64::from(y) * self.scale) as f32,
        )
    }
}

impl OutlineBuilder for OutlineSink<'_> {
    fn move_to(&mut self, x: f32, y: f32) {
        let (x, y) = self.map(x, y);
        self.path.move_to(x, y);
    }

    fn line_to(&mut self, x: f32, y: f32) {
        let (x, y) = self.map(x, y);
        self.path.line_to(x, y);
    }

    fn quad_to(&mut self, x1: f32, y1: f32, x: f32, y: f32) {
        let (x1, y1) = self.map(x1, y1);
        let (x, y) = self.map(x, y);
        self.path.quad_to(x1, y1, x, y);
    }

    fn curve_to(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, x: f32, y: f32) {
        let (x1, y1) = self.map(x1, y1);
        let (x2, y2) = self.map(x2, y2);
        let (x, y) = self.map(x, y);
        self.path.cubic_to(x1, y1, x2, y2, x, y);
    }

    fn close(&mut self) {
        self.path.close();
    }
}
