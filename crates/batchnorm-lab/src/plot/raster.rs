//! Paints a [`Scene`] into a PNG with `tiny-skia`, drawing text from the bundled font's outlines.

use tiny_skia::{
    Color, FillRule, LineCap, LineJoin, Paint, PathBuilder, Pixmap, Rect, Stroke, StrokeDash,
    Transform,
};

use super::font::font;
use super::scene::{Anchor, Item, Rgb, Scene};

/// Why a scene could not be painted; the caller adds the output path.
#[derive(Debug)]
pub(crate) enum RasterError {
    /// The canvas would exceed `limit` pixels on a side.
    TooLarge { width: u32, height: u32, limit: u32 },
    /// The PNG encoder failed.
    Encode(String),
}

/// Largest PNG side in pixels: 3 columns of panels can be up to ~33 rows at 2× (a 16 000 px
/// side is a 1 GB RGBA buffer, far beyond any report figure).
pub(crate) const MAX_SIDE: u32 = 16_000;

/// The PNG of `scene` painted at `scale` device pixels per logical pixel.
pub(crate) fn to_png(scene: &Scene, scale: f64) -> Result<Vec<u8>, RasterError> {
    let width = (scene.width * scale).ceil();
    let height = (scene.height * scale).ceil();
    let limit = MAX_SIDE;
    if !(width >= 1.0 && height >= 1.0 && width <= f64::from(limit) && height <= f64::from(limit)) {
        // Saturating casts: only for the message.
        return Err(RasterError::TooLarge {
            width: width as u32,
            height: height as u32,
            limit,
        });
    }
    // Both sides are in 1..=MAX_SIDE, so the casts are exact and the buffer size fits.
    let mut pixmap = Pixmap::new(width as u32, height as u32).ok_or(RasterError::TooLarge {
        width: width as u32,
        height: height as u32,
        limit,
    })?;
    pixmap.fill(Color::WHITE);
    let base = Transform::from_scale(scale as f32, scale as f32);
    for item in &scene.items {
        paint_item(&mut pixmap, base, item);
    }
    pixmap
        .encode_png()
        .map_err(|e| RasterError::Encode(e.to_string()))
}

fn paint(color: Rgb, opacity: f64) -> Paint<'static> {
    let Rgb(r, g, b) = color;
    let alpha = (opacity.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut paint = Paint {
        anti_alias: true,
        ..Paint::default()
    };
    paint.set_color_rgba8(r, g, b, alpha);
    paint
}

fn paint_item(pixmap: &mut Pixmap, base: Transform, item: &Item) {
    match item {
        Item::Line {
            points,
            color,
            width,
            dash,
        } => {
            // A path with fewer than two points (or non-finite ones) has nothing to draw.
            let Some(path) = polyline(points, false) else {
                return;
            };
            let stroke = Stroke {
                width: *width as f32,
                line_cap: LineCap::Round,
                line_join: LineJoin::Round,
                dash: dash.and_then(|[on, off]| StrokeDash::new(vec![on as f32, off as f32], 0.0)),
                ..Stroke::default()
            };
            pixmap.stroke_path(&path, &paint(*color, 1.0), &stroke, base, None);
        }
        Item::Area {
            points,
            color,
            opacity,
        } => {
            let Some(path) = polyline(points, true) else {
                return;
            };
            pixmap.fill_path(
                &path,
                &paint(*color, *opacity),
                FillRule::Winding,
                base,
                None,
            );
        }
        Item::Dot {
            x,
            y,
            radius,
            color,
        } => {
            if let Some(path) = PathBuilder::from_circle(*x as f32, *y as f32, *radius as f32) {
                pixmap.fill_path(&path, &paint(*color, 1.0), FillRule::Winding, base, None);
            }
        }
        Item::Box {
            x,
            y,
            width,
            height,
            corner_radius,
            fill,
            fill_opacity,
            stroke,
            stroke_width,
        } => {
            let Some(rect) = Rect::from_xywh(*x as f32, *y as f32, *width as f32, *height as f32)
            else {
                return;
            };
            let Some(path) = rounded_rect(rect, *corner_radius as f32) else {
                return;
            };
            pixmap.fill_path(
                &path,
                &paint(*fill, *fill_opacity),
                FillRule::Winding,
                base,
                None,
            );
            let outline = Stroke {
                width: *stroke_width as f32,
                ..Stroke::default()
            };
            pixmap.stroke_path(&path, &paint(*stroke, 1.0), &outline, base, None);
        }
        Item::Text {
            x,
            y,
            text,
            size,
            color,
            anchor,
            vertical,
        } => {
            let f = font();
            let width = f.text_width(text, *size);
            let start = match anchor {
                Anchor::Start => 0.0,
                Anchor::Middle => -width / 2.0,
                Anchor::End => -width,
            };
            let mut builder = PathBuilder::new();
            f.append_outlines(text, *size, start, &mut builder);
            let Some(path) = builder.finish() else { return };
            let mut transform = base.pre_translate(*x as f32, *y as f32);
            if *vertical {
                transform = transform.pre_rotate(-90.0);
            }
            pixmap.fill_path(
                &path,
                &paint(*color, 1.0),
                FillRule::Winding,
                transform,
                None,
            );
        }
    }
}

/// The path through `points` in order, closed back to the first when `closed`; `None` when
/// there is nothing to draw.
fn polyline(points: &[(f64, f64)], closed: bool) -> Option<tiny_skia::Path> {
    let mut builder = PathBuilder::new();
    for (i, &(x, y)) in points.iter().enumerate() {
        if i == 0 {
            builder.move_to(x as f32, y as f32);
        } else {
            builder.line_to(x as f32, y as f32);
        }
    }
    if closed {
        builder.close();
    }
    builder.finish()
}

/// A rectangle path with circular-arc corners of radius `r` (cubic approximation).
fn rounded_rect(rect: Rect, r: f32) -> Option<tiny_skia::Path> {
    let r = r.min(rect.width() / 2.0).min(rect.height() / 2.0).max(0.0);
    // Control-point distance for a quarter circle drawn as one cubic Bézier.
    let k = r * 0.552_284_8;
    let (l, t, rt, b) = (rect.left(), rect.top(), rect.right(), rect.bottom());
    let mut p = PathBuilder::new();
    p.move_to(l + r, t);
    p.line_to(rt - r, t);
    p.cubic_to(rt - r + k, t, rt, t + r - k, rt, t + r);
    p.line_to(rt, b - r);
    p.cubic_to(rt, b - r + k, rt - r + k, b, rt - r, b);
    p.line_to(l + r, b);
    p.cubic_to(l + r - k, b, l, b - r + k, l, b - r);
    p.line_to(l, t + r);
    p.cubic_to(l, t + r - k, l + r - k, t, l + r, t);
    p.close();
    p.finish()
}
