//! The combined report as an HTML page: CommonMark with tables (pulldown-cmark), each figure
//! a link to itself at full size.

use std::fmt::Write as _;

use pulldown_cmark::{html, Event, Options, Parser, Tag, TagEnd};

/// An HTML page with `title` and the Markdown `md` converted.
pub(super) fn page(title: &str, md: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;line-height:1.45}}\
         img{{max-width:100%}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px}}td{{text-align:right}}td:first-child{{text-align:left}}\
         code{{background:#f3f3f3;padding:0 3px}}</style>\n</head>\n<body>\n",
        escape(title)
    );
    s.push_str(&to_html(md));
    s.push_str("</body>\n</html>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The Markdown `md` as HTML; every image is wrapped in a link to its file.
fn to_html(md: &str) -> String {
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).flat_map(|event| {
        let mut out = Vec::with_capacity(2);
        match &event {
            Event::Start(Tag::Image { dest_url, .. }) => {
                let href = escape(dest_url);
                out.push(Event::InlineHtml(format!("<a href=\"{href}\">").into()));
                out.push(event);
            }
            Event::End(TagEnd::Image) => {
                out.push(event);
                out.push(Event::InlineHtml("</a>".into()));
            }
            _ => out.push(event),
        }
        out
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn converts_the_constructs_the_reports_use() {
        let md = "## Title\n\n![A <b>](cnn/cnn.png)\n\nSome `x < y` text\nmore.\n\n| a | b |\n|---|---:|\n| 1 | 2 |\n\n- one\n- two [l](u)\n";
        let html = to_html(md);
        assert!(html.contains("<h2>Title</h2>"), "{html}");
        assert!(
            html.contains(
                "<a href=\"cnn/cnn.png\"><img src=\"cnn/cnn.png\" alt=\"A &lt;b&gt;\" /></a>"
            ),
            "{html}"
        );
        assert!(
            html.contains("<p>Some <code>x &lt; y</code> text\nmore.</p>"),
            "{html}"
        );
        assert!(html.contains("<th>a</th>"), "{html}");
        assert!(
            html.contains("<td style=\"text-align: right\">2</td>"),
            "{html}"
        );
        assert!(html.contains("<li>two <a href=\"u\">l</a></li>"), "{html}");
    }

    #[test]
    fn a_bracket_before_a_link_stays_text() {
        // The hand parser took "[see" through "](u)" as one link's text.
        let html = to_html("Ranges [0, 1] and [the docs](u).\n");
        assert!(
            html.contains("<p>Ranges [0, 1] and <a href=\"u\">the docs</a>.</p>"),
            "{html}"
        );
    }
}
