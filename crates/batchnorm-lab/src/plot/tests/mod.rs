//! Tests of the plotting module: the public save functions end to end, and the layout, axis and
//! font pieces against hand-worked expectations.

use std::path::{Path, PathBuf};

use tiny_skia::Pixmap;

use super::axis::{power_of_ten, Axis, Ends};
use super::font::font;
use super::layout::{lay_out, thin, PANEL_HEIGHT, PANEL_WIDTH};
use super::scene::{Item, Scene, PALETTE};
use super::{Figure, LineStyle, Marker, Panel, PlotError, Series, PNG_SCALE};

mod scales;

/// A fresh folder for one test's output files.
fn out_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bnlab-plot-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn series(label: &str, points: Vec<(f64, f64)>, style: LineStyle) -> Series {
    Series {
        label: label.into(),
        points,
        style,
        ..Default::default()
    }
}

fn panel(title: &str, y_log: bool, series: Vec<Series>) -> Panel {
    Panel {
        title: title.into(),
        x_label: "training steps".into(),
        y_label: "value".into(),
        y_log,
        series,
        ..Default::default()
    }
}

/// A figure shaped like the paper's Figure 1: (a) test accuracy of two networks over training,
/// (b) and (c) the 15th, 50th and 85th percentiles of a sigmoid input without and with BN.
fn figure_1() -> Figure {
    let steps: Vec<f64> = (0..=500).map(|i| f64::from(i) * 100.0).collect();
    let accuracy = |rate: f64, top: f64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .map(|&s| (s, 0.75 + (top - 0.75) * (1.0 - (-s / rate).exp())))
            .collect()
    };
    let percentile = |offset: f64, drift: f64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .map(|&s| {
                (
                    s,
                    offset * (1.0 + drift * s / 50_000.0) + drift * (s / 7000.0).sin() * 0.3,
                )
            })
            .collect()
    };
    let percentiles = |drift: f64| {
        vec![
            series("15th percentile", percentile(-1.0, drift), LineStyle::Solid),
            series("50th percentile", percentile(0.0, drift), LineStyle::Dashed),
            series("85th percentile", percentile(1.0, drift), LineStyle::Solid),
        ]
    };
    Figure {
        title: "Figure 1: MNIST with and without batch normalization".into(),
        columns: 3,
        panels: vec![
            Panel {
                y_label: "test accuracy".into(),
                ..panel(
                    "(a) Test accuracy",
                    false,
                    vec![
                        series("Without BN", accuracy(9000.0, 0.96), LineStyle::Dashed),
                        series("With BN", accuracy(1500.0, 0.99), LineStyle::Solid),
                    ],
                )
            },
            Panel {
                y_label: "sigmoid input".into(),
                ..panel("(b) Without BN", false, percentiles(1.0))
            },
            Panel {
                y_label: "sigmoid input".into(),
                ..panel("(c) With BN", false, percentiles(0.0))
            },
        ],
    }
}

/// Gradient norms per layer over 13 decades, with a zero and a NaN that a log axis skips.
fn gradient_norms() -> Figure {
    let norms = |decay: f64| -> Vec<(f64, f64)> {
        (0..=12)
            .map(|l| (f64::from(l), 10f64.powf(-decay * f64::from(l))))
            .collect()
    };
    let mut with_gaps = norms(0.3);
    with_gaps[4].1 = 0.0;
    with_gaps[8].1 = f64::NAN;
    Figure {
        title: String::new(),
        columns: 2,
        panels: vec![
            Panel {
                x_label: "layer".into(),
                y_label: "gradient norm".into(),
                ..panel(
                    "Gradient norms",
                    true,
                    vec![
                        series("without BN", norms(1.0), LineStyle::Dashed),
                        series("with BN", with_gaps, LineStyle::Solid),
                    ],
                )
            },
            panel("Empty", true, vec![]),
        ],
    }
}

fn texts(scene: &Scene) -> Vec<&str> {
    scene
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn png_bytes(figure: &Figure, dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    figure.save_png(&path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn png_has_magic_and_decodes_to_the_stated_size() {
    let dir = out_dir("png-size");
    let bytes = png_bytes(&figure_1(), &dir, "fig1.png");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let image = Pixmap::decode_png(&bytes).unwrap();
    // Three 400 px columns and one 300 px row under a 40 px title band, at 2x.
    assert_eq!(image.width(), (3.0 * PANEL_WIDTH * PNG_SCALE) as u32);
    assert_eq!(image.width(), 2400);
    assert_eq!(image.height(), ((40.0 + PANEL_HEIGHT) * PNG_SCALE) as u32);
    // Not a blank canvas: the series colours are painted.
    let [r, g, b] = [PALETTE[0].0, PALETTE[0].1, PALETTE[0].2];
    let blue = image
        .pixels()
        .iter()
        .filter(|p| (p.red(), p.green(), p.blue()) == (r, g, b))
        .count();
    assert!(blue > 500, "only {blue} pixels in the first series colour");
}

#[test]
fn columns_lay_panels_out_in_rows() {
    let mut figure = figure_1();
    figure.columns = 2;
    let scene = lay_out(&figure, Path::new("f.svg")).unwrap();
    assert_eq!((scene.width, scene.height), (800.0, 40.0 + 600.0));
    // More columns than panels: one row, no empty cells.
    figure.columns = 10;
    let scene = lay_out(&figure, Path::new("f.svg")).unwrap();
    assert_eq!((scene.width, scene.height), (1200.0, 340.0));
}

/// Checks that every tag is closed in order: enough XML to catch a broken writer.
fn assert_balanced(svg: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap());
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags {stack:?}");
}

#[test]
fn svg_is_well_formed_and_holds_titles_and_legend_labels_as_text() {
    let dir = out_dir("svg");
    let path = dir.join("fig1.svg");
    let mut figure = figure_1();
    figure.panels[0].series[0].label = "Without BN <&> \"quoted\"".into();
    figure.save_svg(&path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.contains(r#"width="1200" height="340" viewBox="0 0 1200 340""#));
    assert!(svg.ends_with("</svg>\n"));
    assert_balanced(&svg);
    for text in [
        ">Figure 1: MNIST with and without batch normalization</text>",
        ">(a) Test accuracy</text>",
        ">(b) Without BN</text>",
        ">(c) With BN</text>",
        ">Without BN &lt;&amp;&gt; &quot;quoted&quot;</text>",
        ">With BN</text>",
        ">15th percentile</text>",
        ">50th percentile</text>",
        ">85th percentile</text>",
        ">training steps</text>",
        ">test accuracy</text>",
        ">50k</text>",
        "stroke-dasharray=",
        "<title>Figure 1: MNIST with and without batch normalization</title>",
    ] {
        assert!(svg.contains(text), "SVG lacks {text:?}");
    }
    // Each series has its own palette colour: panel (b) uses the first three.
    for color in &PALETTE[..3] {
        let hex = format!("stroke=\"#{:02x}{:02x}{:02x}\"", color.0, color.1, color.2);
        assert!(svg.contains(&hex), "SVG lacks {hex}");
    }
}

#[test]
fn nan_and_infinite_points_leave_gaps() {
    let points = vec![
        (0.0, 1.0),
        (1.0, 2.0),
        (2.0, f64::NAN),
        (3.0, 3.0),
        (4.0, 2.0),
        (f64::INFINITY, 1.0),
        (6.0, f64::NEG_INFINITY),
        (7.0, 0.5),
    ];
    let figure = Figure {
        title: "gaps".into(),
        columns: 1,
        panels: vec![panel(
            "gaps",
            false,
            vec![series("s", points, LineStyle::Solid)],
        )],
    };
    let scene = lay_out(&figure, Path::new("gaps.svg")).unwrap();
    let curves: Vec<_> = scene
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Line { points, color, .. } if *color == PALETTE[0] => Some(points.len()),
            Item::Dot { .. } => Some(1),
            _ => None,
        })
        .collect();
    // Two 2-point pieces, the isolated last point as a dot, and the legend sample.
    assert_eq!(curves, [2, 2, 1, 2]);
    let dir = out_dir("gaps");
    figure.save_svg(&dir.join("gaps.svg")).unwrap();
    let svg = std::fs::read_to_string(dir.join("gaps.svg")).unwrap();
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "non-finite numbers in the SVG"
    );
    figure.save_png(&dir.join("gaps.png")).unwrap();
}

#[test]
fn panels_without_finite_points_say_no_data() {
    let figure = Figure {
        title: "empty".into(),
        columns: 2,
        panels: vec![
            panel("no series", false, vec![]),
            panel(
                "all NaN",
                false,
                vec![series(
                    "nan",
                    vec![(f64::NAN, 1.0), (1.0, f64::NAN)],
                    LineStyle::Solid,
                )],
            ),
            panel(
                "log of zeros",
                true,
                vec![series(
                    "zeros",
                    vec![(0.0, 0.0), (1.0, -1.0)],
                    LineStyle::Solid,
                )],
            ),
        ],
    };
    let scene = lay_out(&figure, Path::new("empty.svg")).unwrap();
    let texts = texts(&scene);
    assert_eq!(texts.iter().filter(|t| **t == "no data").count(), 2);
    assert_eq!(
        texts
            .iter()
            .filter(|t| **t == "no positive values for a log axis")
            .count(),
        1
    );
    let dir = out_dir("empty");
    figure.save_svg(&dir.join("empty.svg")).unwrap();
    figure.save_png(&dir.join("empty.png")).unwrap();
    let image = Pixmap::decode_png(&std::fs::read(dir.join("empty.png")).unwrap()).unwrap();
    assert_eq!((image.width(), image.height()), (1600, 1280));
}

/// Renders both test figures as PNG and SVG into the folder `BNLAB_RENDER_TO` names: the
/// child process of [`renders_are_deterministic`] (ignored when run on its own).
#[test]
#[ignore = "run by renders_are_deterministic in a child process"]
fn render_into_the_folder_given() {
    let Some(dir) = std::env::var_os("BNLAB_RENDER_TO") else {
        return;
    };
    let dir = PathBuf::from(dir);
    for (name, figure) in [("fig1", figure_1()), ("grad", gradient_norms())] {
        figure.save_png(&dir.join(format!("{name}.png"))).unwrap();
        figure.save_svg(&dir.join(format!("{name}.svg"))).unwrap();
    }
}

/// The same figures give the same bytes in two processes, whose hash maps are seeded
/// differently, and twice within one.
#[test]
fn renders_are_deterministic() {
    let dir = out_dir("determinism");
    let render_in_child = |name: &str| {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "plot::tests::render_into_the_folder_given",
                "--ignored",
                "--test-threads=1",
            ])
            .env("BNLAB_RENDER_TO", &sub)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child render failed");
        sub
    };
    let (a, b) = (render_in_child("a"), render_in_child("b"));
    for (name, figure) in [("fig1", figure_1()), ("grad", gradient_norms())] {
        for ext in ["png", "svg"] {
            let file = format!("{name}.{ext}");
            let first = std::fs::read(a.join(&file)).unwrap();
            assert!(first.len() > 100, "{file}: the child wrote nothing");
            assert!(
                first == std::fs::read(b.join(&file)).unwrap(),
                "{file}: bytes differ between two processes"
            );
        }
        let here = png_bytes(&figure, &dir, &format!("{name}-here.png"));
        assert!(
            here == std::fs::read(a.join(format!("{name}.png"))).unwrap(),
            "{name}: this process renders other PNG bytes than a child"
        );
        assert!(
            here == png_bytes(&figure.clone(), &dir, &format!("{name}-again.png")),
            "{name}: PNG bytes differ between two renders"
        );
    }
}

#[test]
fn errors_name_the_path_and_the_problem() {
    let path = Path::new("out/figure.png");
    let empty = Figure {
        title: "t".into(),
        columns: 2,
        panels: vec![],
    };
    let err = empty.save_png(path).unwrap_err();
    assert!(matches!(&err, PlotError::EmptyFigure { path: p } if p == path));
    assert_eq!(
        err.to_string(),
        "figure out/figure.png has no panels to draw"
    );

    let zero = Figure {
        columns: 0,
        ..figure_1()
    };
    assert!(matches!(
        zero.save_svg(path),
        Err(PlotError::ZeroColumns { .. })
    ));

    let huge = vec![series(
        "huge",
        vec![(0.0, -1e308), (1.0, 1e308)],
        LineStyle::Solid,
    )];
    let wide = Figure {
        title: String::new(),
        columns: 1,
        panels: vec![panel("wide", false, huge)],
    };
    let err = wide.save_svg(path).unwrap_err();
    assert!(matches!(&err, PlotError::RangeOverflow { axis: "y", panel, .. } if panel == "wide"));
    assert!(err.to_string().contains("out/figure.png") && err.to_string().contains("\"wide\""));

    let tall = Figure {
        columns: 1,
        panels: vec![panel("p", false, vec![]); 30],
        ..figure_1()
    };
    let err = tall.save_png(path).unwrap_err();
    assert!(
        matches!(err, PlotError::CanvasTooLarge { width: 800, .. }),
        "{err}"
    );

    // Writing below a regular file fails with the path in the error.
    let dir = out_dir("errors");
    std::fs::write(dir.join("file"), b"x").unwrap();
    let blocked = dir.join("file").join("fig.svg");
    let err = figure_1().save_svg(&blocked).unwrap_err();
    assert!(matches!(&err, PlotError::Io { path, .. } if *path == blocked));
    assert!(err.to_string().contains(&blocked.display().to_string()));
}

/// The legend box of the only panel in `scene`, as (left, top, right, bottom).
fn legend_box(scene: &Scene) -> (f64, f64, f64, f64) {
    let boxes: Vec<_> = scene
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Box {
                x,
                y,
                width,
                height,
                ..
            } => Some((*x, *y, x + width, y + height)),
            _ => None,
        })
        .collect();
    assert_eq!(boxes.len(), 1);
    boxes[0]
}

/// Whether any drawn curve (lines wider than the frame) passes through `area`.
fn hides_data(scene: &Scene, (left, top, right, bottom): (f64, f64, f64, f64)) -> bool {
    scene.items.iter().any(|item| match item {
        // Legend samples lie inside the box by design: only longer lines are data.
        Item::Line { points, width, .. } if *width > 1.5 && points.len() > 2 => {
            points.windows(2).any(|w| {
                // Sample each segment finely: enough for a test.
                (0..=20).any(|i| {
                    let t = f64::from(i) / 20.0;
                    let (x, y) = (
                        w[0].0 + t * (w[1].0 - w[0].0),
                        w[0].1 + t * (w[1].1 - w[0].1),
                    );
                    x >= left && x <= right && y >= top && y <= bottom
                })
            })
        }
        _ => false,
    })
}

#[test]
fn legend_avoids_the_data() {
    // A curve along the top and an unlabelled one along the bottom: the legend takes the middle
    // of the right edge, the first spot free of data.
    let high: Vec<(f64, f64)> = (0..100)
        .map(|i| (f64::from(i), 1.0 - 0.001 * f64::from(i)))
        .collect();
    let low: Vec<(f64, f64)> = (0..100).map(|i| (f64::from(i), 0.0)).collect();
    let figure = Figure {
        title: String::new(),
        columns: 1,
        panels: vec![panel(
            "",
            false,
            vec![
                series("high", high, LineStyle::Solid),
                series("", low, LineStyle::Solid),
            ],
        )],
    };
    let scene = lay_out(&figure, Path::new("legend.svg")).unwrap();
    let legend = legend_box(&scene);
    assert!(!hides_data(&scene, legend), "legend {legend:?} hides data");
    assert!(
        legend.0 > scene.width / 2.0,
        "legend {legend:?} is not on the right"
    );
    // Only the labelled series is listed.
    assert!(texts(&scene).contains(&"high"));
    assert!(!texts(&scene).contains(&""));

    // Three flat lines at the bottom, middle and top leave no free spot: the y axis grows
    // headroom above the data and the legend goes there.
    let flat = |y: f64| (0..50).map(|i| (f64::from(i), y)).collect::<Vec<_>>();
    let crowded = Figure {
        title: String::new(),
        columns: 1,
        panels: vec![panel(
            "",
            false,
            vec![
                series("a", flat(-1.0), LineStyle::Solid),
                series("b", flat(0.0), LineStyle::Dashed),
                series("c", flat(1.0), LineStyle::Solid),
            ],
        )],
    };
    let scene = lay_out(&crowded, Path::new("crowded.svg")).unwrap();
    let legend = legend_box(&scene);
    assert!(!hides_data(&scene, legend), "legend {legend:?} hides data");

    // Eight series: the legend wraps into columns to fit in the headroom.
    let eight = Figure {
        title: String::new(),
        columns: 1,
        panels: vec![panel(
            "",
            false,
            (0..8)
                .map(|k| series(&format!("layer {k}"), flat(f64::from(k)), LineStyle::Solid))
                .collect(),
        )],
    };
    let scene = lay_out(&eight, Path::new("eight.svg")).unwrap();
    let legend = legend_box(&scene);
    assert!(!hides_data(&scene, legend), "legend {legend:?} hides data");
    let samples: Vec<f64> = scene
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Line { points, .. }
                if points.len() == 2 && points[0].1 == points[1].1 && points[0].0 >= legend.0 =>
            {
                Some(points[0].0)
            }
            _ => None,
        })
        .filter(|&x| x < legend.2)
        .collect();
    let mut columns = samples.clone();
    columns.dedup();
    assert_eq!(samples.len(), 8);
    assert_eq!(columns.len(), 2, "legend sample columns at {columns:?}");
}

#[test]
fn long_series_are_thinned_without_changing_their_envelope() {
    // 200 000 points over 100 logical pixels (200 thinning columns), zig-zagging in y.
    let points: Vec<(f64, f64)> = (0..200_000)
        .map(|i| {
            (
                f64::from(i) * 5e-4,
                if i % 2 == 0 {
                    f64::from(i % 7)
                } else {
                    -f64::from(i % 5)
                },
            )
        })
        .collect();
    let kept = thin(&points);
    assert!(kept.len() <= 4 * 200, "{} points kept", kept.len());
    assert_eq!(
        (kept[0], kept[kept.len() - 1]),
        (points[0], points[points.len() - 1])
    );
    // Each column keeps its lowest and highest point, so every column's envelope is unchanged.
    let column = |x: f64| (x / 0.5).floor() as i64;
    for c in 0..200 {
        let envelope = |pts: &[(f64, f64)]| {
            pts.iter()
                .filter(|p| column(p.0) == c)
                .fold((f64::MAX, f64::MIN), |(lo, hi), p| {
                    (lo.min(p.1), hi.max(p.1))
                })
        };
        assert_eq!(envelope(&kept), envelope(&points), "column {c}");
    }
    // Order is preserved and short runs are kept whole.
    assert!(kept.windows(2).all(|w| w[0].0 <= w[1].0));
    let short = [(0.0, 1.0), (0.1, 2.0), (3.0, 0.0)];
    assert_eq!(thin(&short), short);
}

#[test]
fn bundled_font_measures_and_kerns() {
    let f = font();
    let one = f.text_width("0", 10.0);
    // DejaVu Sans digits are 1303/2048 em wide.
    assert!((one - 10.0 * 1303.0 / 2048.0).abs() < 1e-9, "{one}");
    assert_eq!(f.text_width("00", 10.0), 2.0 * one);
    assert!(
        f.text_width("AV", 10.0) < f.text_width("A", 10.0) + f.text_width("V", 10.0),
        "kerning"
    );
    assert!(f.cap_height(10.0) > 7.0 && f.cap_height(10.0) < 7.5);
    assert!(f.descent(10.0) > 2.0 && f.descent(10.0) < 2.6);
}

/// The example invocation: writes Figure 1 and a gradient-norm figure as PNG and SVG.
/// Set `BNLAB_PLOT_EXAMPLES=<folder>` to keep them somewhere to look at.
#[test]
fn example_figures() {
    let dir =
        std::env::var_os("BNLAB_PLOT_EXAMPLES").map_or_else(|| out_dir("examples"), PathBuf::from);
    for (name, figure) in [
        ("figure1", figure_1()),
        ("gradient-norms", gradient_norms()),
    ] {
        figure.save_png(&dir.join(format!("{name}.png"))).unwrap();
        figure.save_svg(&dir.join(format!("{name}.svg"))).unwrap();
        assert!(
            std::fs::metadata(dir.join(format!("{name}.png")))
                .unwrap()
                .len()
                > 10_000
        );
    }
}

#[test]
fn a_band_is_a_translucent_polygon_with_a_swatch_in_the_legend() {
    // A min-max band over x = 0, 1, 2: the lower edge forward, the upper edge back.
    let outline = vec![
        (0.0, 1.0),
        (1.0, 2.0),
        (2.0, 1.5),
        (2.0, 3.0),
        (1.0, 4.0),
        (0.0, 2.0),
    ];
    let figure = Figure {
        title: String::new(),
        columns: 1,
        panels: vec![panel(
            "band",
            false,
            vec![series("range", outline, LineStyle::Band)],
        )],
    };
    let scene = lay_out(&figure, Path::new("band.svg")).unwrap();
    let areas: Vec<(usize, f64)> = scene
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Area {
                points,
                color,
                opacity,
            } if *color == PALETTE[0] => Some((points.len(), *opacity)),
            _ => None,
        })
        .collect();
    // The band's six corners, then the legend's four-cornered swatch; no line of its colour.
    assert_eq!(areas, [(6, super::BAND_OPACITY), (4, super::BAND_OPACITY)]);
    assert!(!scene
        .items
        .iter()
        .any(|item| matches!(item, Item::Line { color, .. } if *color == PALETTE[0])));
    let dir = out_dir("band");
    figure.save_svg(&dir.join("band.svg")).unwrap();
    let svg = std::fs::read_to_string(dir.join("band.svg")).unwrap();
    assert_eq!(svg.matches("<polygon").count(), 2);
    figure.save_png(&dir.join("band.png")).unwrap();
}
