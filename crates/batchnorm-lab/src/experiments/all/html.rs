//! A minimal Markdown-to-HTML conversion for the combined report: headings, paragraphs,
//! images, tables, bullet lists, inline code and links; everything else is escaped text.

use std::fmt::Write as _;

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

/// Inline Markdown: `code`, ![alt](src), [text](href); the rest escaped.
fn inline(t: &str) -> String {
    let mut out = String::new();
    let mut rest = t;
    while !rest.is_empty() {
        if let Some(body) = rest.strip_prefix('`') {
            if let Some(end) = body.find('`') {
                let _ = write!(out, "<code>{}</code>", escape(&body[..end]));
                rest = &body[end + 1..];
                continue;
            }
        }
        let image = rest.starts_with("![");
        if image || rest.starts_with('[') {
            let open = if image { 2 } else { 1 };
            if let Some(mid) = rest.find("](") {
                if let Some(close) = rest[mid..].find(')') {
                    let text = &rest[open..mid];
                    let href = &rest[mid + 2..mid + close];
                    if image {
                        let _ = write!(
                            out,
                            "<a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a>",
                            escape(href),
                            escape(text)
                        );
                    } else {
                        let _ = write!(out, "<a href=\"{}\">{}</a>", escape(href), escape(text));
                    }
                    rest = &rest[mid + close + 1..];
                    continue;
                }
            }
        }
        let ch = rest.chars().next().unwrap_or(' ');
        out.push_str(&escape(&ch.to_string()));
        rest = &rest[ch.len_utf8()..];
    }
    out
}

fn cells(line: &str) -> Vec<&str> {
    line.trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

/// Block-level conversion, line by line.
fn to_html(md: &str) -> String {
    let mut out = String::new();
    let mut para: Vec<&str> = Vec::new();
    let mut in_list = false;
    let mut table: Vec<&str> = Vec::new();
    let flush_para = |para: &mut Vec<&str>, out: &mut String| {
        if !para.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(&para.join(" ")));
            para.clear();
        }
    };
    let flush_table = |table: &mut Vec<&str>, out: &mut String| {
        if table.is_empty() {
            return;
        }
        out.push_str("<table>\n");
        for (i, row) in table.iter().enumerate() {
            if i == 1 && row.contains("---") {
                continue;
            }
            let tag = if i == 0 { "th" } else { "td" };
            out.push_str("<tr>");
            for c in cells(row) {
                let _ = write!(out, "<{tag}>{}</{tag}>", inline(c));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        table.clear();
    };
    for line in md.lines() {
        let t = line.trim_end();
        if t.starts_with('|') {
            flush_para(&mut para, &mut out);
            table.push(t);
            continue;
        }
        flush_table(&mut table, &mut out);
        if let Some(item) = t.strip_prefix("- ") {
            flush_para(&mut para, &mut out);
            if !in_list {
                out.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(out, "<li>{}</li>", inline(item));
            continue;
        }
        if in_list && !t.is_empty() && t.starts_with(' ') {
            // Continuation of a list item: append to the last <li>.
            if out.ends_with("</li>\n") {
                out.truncate(out.len() - "</li>\n".len());
                let _ = writeln!(out, " {}</li>", inline(t.trim()));
            }
            continue;
        }
        if in_list {
            out.push_str("</ul>\n");
            in_list = false;
        }
        if t.is_empty() {
            flush_para(&mut para, &mut out);
        } else if t.starts_with('#') {
            flush_para(&mut para, &mut out);
            let level = t.chars().take_while(|&c| c == '#').count().min(6);
            let _ = writeln!(out, "<h{level}>{}</h{level}>", inline(t[level..].trim()));
        } else {
            para.push(t);
        }
    }
    flush_table(&mut table, &mut out);
    flush_para(&mut para, &mut out);
    if in_list {
        out.push_str("</ul>\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn converts_the_constructs_the_reports_use() {
        let md = "## Title\n\n![A <b>](cnn/cnn.png)\n\nSome `x < y` text\nmore.\n\n| a | b |\n|---|---:|\n| 1 | 2 |\n\n- one\n- two [l](u)\n";
        let html = to_html(md);
        assert!(html.contains("<h2>Title</h2>"));
        assert!(html.contains("<img src=\"cnn/cnn.png\" alt=\"A &lt;b&gt;\">"));
        assert!(html.contains("<p>Some <code>x &lt; y</code> text more.</p>"));
        assert!(html.contains("<tr><th>a</th><th>b</th></tr>\n<tr><td>1</td><td>2</td></tr>"));
        assert!(html.contains("<ul>\n<li>one</li>\n<li>two <a href=\"u\">l</a></li>\n</ul>"));
    }
}
