//! Axes: linear ticks and their labels, powers of ten on log axes, given values on a log x
//! axis, fixed y ranges, and point markers.

use super::*;

#[test]
fn linear_ticks_are_round_numbers_with_fitting_labels() {
    let always = |_: &[f64], _: &[String]| true;
    let x = Axis::linear(0.0, 49_900.0, Ends::Snapped, 0.0, 5, always).unwrap();
    let labels: Vec<_> = x.ticks.iter().map(|t| t.label.clone().unwrap()).collect();
    assert_eq!(labels, ["0", "10k", "20k", "30k", "40k", "50k"]);
    assert_eq!(x.fraction(50_000.0), 1.0);

    let y = Axis::linear(0.8, 0.985, Ends::Padded, 0.0, 5, always).unwrap();
    let labels: Vec<_> = y.ticks.iter().map(|t| t.label.clone().unwrap()).collect();
    assert_eq!(labels, ["0.80", "0.85", "0.90", "0.95"]);
    assert!(
        y.fraction(0.8) > 0.0 && y.fraction(0.985) < 1.0,
        "padded range"
    );

    let negative = Axis::linear(-2.0, 2.0, Ends::Snapped, 0.0, 4, always).unwrap();
    let labels: Vec<_> = negative
        .ticks
        .iter()
        .map(|t| t.label.clone().unwrap())
        .collect();
    assert_eq!(labels, ["\u{2212}2", "\u{2212}1", "0", "1", "2"]);

    let tiny = Axis::linear(0.0, 3e-4, Ends::Snapped, 0.0, 3, always).unwrap();
    let labels: Vec<_> = tiny
        .ticks
        .iter()
        .map(|t| t.label.clone().unwrap())
        .collect();
    assert_eq!(labels, ["0", "1×10⁻⁴", "2×10⁻⁴", "3×10⁻⁴"]);

    // Labels that do not fit force a coarser step.
    let at_most_3 = |f: &[f64], _: &[String]| f.len() <= 3;
    let coarse = Axis::linear(0.0, 10.0, Ends::Snapped, 0.0, 10, at_most_3).unwrap();
    let values: Vec<_> = coarse.ticks.iter().map(|t| t.value).collect();
    assert_eq!(values, [0.0, 5.0, 10.0]);

    // A single value gets a range around it.
    let single = Axis::linear(3.0, 3.0, Ends::Padded, 0.0, 4, always).unwrap();
    assert!(single.fraction(3.0) > 0.4 && single.fraction(3.0) < 0.6);
    // Headroom keeps the top of the axis free of data.
    let roomy = Axis::linear(0.8, 0.985, Ends::Padded, 0.3, 5, always).unwrap();
    assert!(roomy.fraction(0.985) <= 0.7 && roomy.fraction(0.8) > 0.0);
    // A span beyond f64 cannot be mapped.
    assert!(Axis::linear(-1e308, 1e308, Ends::Padded, 0.0, 4, always).is_none());
}

#[test]
fn log_axis_ticks_are_powers_of_ten() {
    let always = |_: &[f64], _: &[String]| true;
    let axis = Axis::log(1e-12, 1.0, 0.0, always);
    let major: Vec<_> = axis.ticks.iter().filter(|t| t.label.is_some()).collect();
    assert_eq!(major.len(), 13);
    for tick in &major {
        let exponent = tick.value.log10();
        assert!(
            (exponent - exponent.round()).abs() < 1e-12,
            "{} is not a power of ten",
            tick.value
        );
        assert_eq!(
            tick.label.as_deref(),
            Some(power_of_ten(exponent.round() as i32).as_str())
        );
    }
    assert_eq!(major[0].label.as_deref(), Some("10⁻¹²"));
    assert_eq!(major[12].label.as_deref(), Some("10⁰"));
    assert_eq!((axis.fraction(1e-12), axis.fraction(1.0)), (0.0, 1.0));

    // Crowded labels: every third decade, still powers of ten, the range widened to match.
    let sparse = |f: &[f64], _: &[String]| f.len() <= 6;
    let axis = Axis::log(3e-11, 0.5, 0.0, sparse);
    let exponents: Vec<_> = axis
        .ticks
        .iter()
        .filter(|t| t.label.is_some())
        .map(|t| t.value.log10().round() as i32)
        .collect();
    assert_eq!(exponents, [-12, -9, -6, -3, 0]);
    // The decades between are unlabelled minor ticks.
    assert_eq!(axis.ticks.iter().filter(|t| t.label.is_none()).count(), 8);

    // Less than a decade of data still shows two powers of ten around it.
    let narrow = Axis::log(0.2, 0.7, 0.0, always);
    let values: Vec<_> = narrow
        .ticks
        .iter()
        .filter(|t| t.label.is_some())
        .map(|t| t.value)
        .collect();
    assert_eq!(values, [0.1, 1.0]);
    let single = Axis::log(1.0, 1.0, 0.0, always);
    assert_eq!(single.fraction(1.0), 0.5);
    // Headroom adds whole decades above the data.
    let roomy = Axis::log(1e-12, 1.0, 0.3, always);
    assert!(roomy.fraction(1.0) <= 0.7, "{}", roomy.fraction(1.0));
    assert_eq!(roomy.fraction(1e-12), 0.0);
}

#[test]
fn log_panel_labels_only_powers_of_ten_and_skips_non_positive_points() {
    let scene = lay_out(&gradient_norms(), Path::new("g.svg")).unwrap();
    let texts = texts(&scene);
    assert!(
        texts.contains(&"10⁻¹²") && texts.contains(&"10⁰"),
        "{texts:?}"
    );
    // Every y tick label is 10 with a superscript exponent.
    let numeric: Vec<_> = texts.iter().filter(|t| t.starts_with("10")).collect();
    assert!(numeric.len() >= 4);
    for label in numeric {
        assert!(
            label[2..].chars().all(|c| "⁻⁰¹²³⁴⁵⁶⁷⁸⁹".contains(c)),
            "{label}"
        );
    }
    // "with BN" (second colour) has a zero at index 4 and a NaN at 8: three pieces.
    let pieces = scene
        .items
        .iter()
        .filter(|item| matches!(item, Item::Line { color, width, .. } if *color == PALETTE[1] && *width > 1.5))
        .count();
    assert_eq!(pieces, 3 + 1, "three curve pieces and the legend sample");
}

#[test]
fn log_x_ticks_fixed_y_ranges_and_markers() {
    let lrs = [0.01, 0.1, 0.5, 1.0, 2.0, 5.0];
    let panel = Panel {
        title: "lr".into(),
        x_label: "learning rate".into(),
        y_label: "accuracy".into(),
        series: vec![
            Series {
                label: "with BN".into(),
                points: lrs.iter().map(|&lr| (lr, 0.9)).collect(),
                style: LineStyle::Solid,
                marker: Marker::Dot,
                color_of: None,
            },
            Series {
                label: "diverged".into(),
                points: vec![(5.0, 0.0)],
                style: LineStyle::NoLine,
                marker: Marker::Cross,
                color_of: None,
            },
        ],
        x_log_ticks: lrs.to_vec(),
        y_range: Some((0.0, 1.0)),
        ..Panel::default()
    };
    let figure = Figure {
        title: String::new(),
        columns: 1,
        panels: vec![panel],
    };
    let scene = lay_out(&figure, Path::new("t.svg")).unwrap();
    let labels = texts(&scene);
    // The x axis reads the learning rates themselves, the y axis stops at 1.
    for want in ["0.01", "0.1", "0.5", "1", "2", "5", "0.0", "1.0"] {
        assert!(labels.contains(&want), "{want} missing from {labels:?}");
    }
    assert!(!labels.contains(&"1.2"), "{labels:?}");
    // Six dots (plus one in the legend) and a cross of two strokes (plus one in the legend).
    let dots = scene
        .items
        .iter()
        .filter(|i| matches!(i, Item::Dot { .. }))
        .count();
    assert_eq!(dots, 6 + 1);
    // 0.5 sits at log10 position between 0.1 and 1, not halfway along a linear axis.
    let x_of = |label: &str| {
        scene.items.iter().find_map(|i| match i {
            Item::Text { text, x, .. } if text == label => Some(*x),
            _ => None,
        })
    };
    let (a, b, c) = (
        x_of("0.1").unwrap(),
        x_of("0.5").unwrap(),
        x_of("1").unwrap(),
    );
    let at = (b - a) / (c - a);
    assert!((at - (1.0 + 0.5f64.log10())).abs() < 0.02, "{at}");
}
