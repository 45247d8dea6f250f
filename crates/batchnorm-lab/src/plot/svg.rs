//! Writes a [`Scene`] as an SVG document.
//!
//! Text stays text (`<text>`, searchable and selectable), set in DejaVu Sans when the viewer has
//! it. Numbers are written with at most two decimals, so the same scene gives the same bytes.

use std::fmt::Write;

use super::font::SVG_FONT_FAMILY;
use super::scene::{Anchor, Item, Rgb, Scene};

/// The SVG document for `scene`.
pub(crate) fn to_svg(scene: &Scene) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // `write!` into a String cannot fail; the results are ignored throughout.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{family}">"#,
        w = num(scene.width),
        h = num(scene.height),
        family = SVG_FONT_FAMILY,
    );
    if !scene.title.trim().is_empty() {
        let _ = writeln!(out, "<title>{}</title>", escape(&scene.title));
    }
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    for item in &scene.items {
        write_item(&mut out, item);
    }
    out.push_str("</svg>\n");
    out
}

fn write_item(out: &mut String, item: &Item) {
    match item {
        Item::Line {
            points,
            color,
            width,
            dash,
        } => {
            let _ = write!(out, r#"<polyline points="{}"#, point_list(points));
            let _ = write!(
                out,
                r#"" fill="none" stroke="{}" stroke-width="{}" stroke-linecap="round" stroke-linejoin="round""#,
                hex(*color),
                num(*width)
            );
            if let Some([on, off]) = dash {
                let _ = write!(out, r#" stroke-dasharray="{} {}""#, num(*on), num(*off));
            }
            out.push_str("/>\n");
        }
        Item::Area {
            points,
            color,
            opacity,
        } => {
            let _ = write!(out, r#"<polygon points="{}"#, point_list(points));
            let _ = writeln!(
                out,
                r#"" fill="{}" fill-opacity="{}" stroke="none"/>"#,
                hex(*color),
                num(*opacity)
            );
        }
        Item::Dot {
            x,
            y,
            radius,
            color,
        } => {
            let _ = writeln!(
                out,
                r#"<circle cx="{}" cy="{}" r="{}" fill="{}"/>"#,
                num(*x),
                num(*y),
                num(*radius),
                hex(*color)
            );
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
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}" rx="{}" fill="{}" fill-opacity="{}" stroke="{}" stroke-width="{}"/>"#,
                num(*x),
                num(*y),
                num(*width),
                num(*height),
                num(*corner_radius),
                hex(*fill),
                num(*fill_opacity),
                hex(*stroke),
                num(*stroke_width)
            );
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
            let anchor = match anchor {
                Anchor::Start => "start",
                Anchor::Middle => "middle",
                Anchor::End => "end",
            };
            let _ = write!(
                out,
                r#"<text x="{x}" y="{y}" font-size="{}" fill="{}" text-anchor="{anchor}""#,
                num(*size),
                hex(*color),
                x = num(*x),
                y = num(*y),
            );
            if *vertical {
                let _ = write!(out, r#" transform="rotate(-90 {} {})""#, num(*x), num(*y));
            }
            let _ = writeln!(out, ">{}</text>", escape(text));
        }
    }
}

/// `x,y x,y ...` for a `points` attribute.
fn point_list(points: &[(f64, f64)]) -> String {
    let pairs: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{},{}", num(x), num(y)))
        .collect();
    pairs.join(" ")
}

/// `v` with at most two decimals and no trailing zeros (`12`, `12.5`, `-0.25`).
fn num(v: f64) -> String {
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "-0" | "" => "0".to_string(),
        other => other.to_string(),
    }
}

/// `#rrggbb`.
fn hex(Rgb(r, g, b): Rgb) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// `text` with the XML special characters escaped, and control characters (not allowed in XML
/// 1.0) dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}
