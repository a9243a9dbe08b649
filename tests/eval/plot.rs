//! The SVG charts of `edgetune::eval::plot`: parsed as XML, one line per loss curve (its
//! points, in its colour), one bar per row that has each measure, the labels as `<text>`, and
//! the same bytes for the same input.

use edgetune::compare::chart::{compare_svg, method_color};
use edgetune::compare::{BASE_ROW, MethodResult};
use edgetune::eval::plot::{BASE_COLOR, LossCurve, PALETTE, loss_svg, svg_hex};

fn curve(label: &str, losses: &[f64]) -> LossCurve {
    LossCurve {
        label: label.into(),
        points: losses
            .iter()
            .enumerate()
            .map(|(i, &l)| ((i + 1) as f64, l))
            .collect(),
    }
}

/// The parsed document; fails the test when the SVG is not well-formed XML.
fn parse(svg: &str) -> roxmltree::Document<'_> {
    let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc
}

fn elements<'a>(
    doc: &'a roxmltree::Document<'a>,
    tag: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(move |n| n.has_tag_name(tag))
}

/// Filled rectangles of `color` (the bars; backgrounds are white, frames unfilled).
fn bars(doc: &roxmltree::Document<'_>, color: (u8, u8, u8)) -> usize {
    let hex = svg_hex(color);
    elements(doc, "rect")
        .filter(|r| r.attribute("fill") == Some(hex.as_str()))
        .count()
}

/// The point counts of the lines drawn in `color`.
fn lines(doc: &roxmltree::Document<'_>, color: (u8, u8, u8)) -> Vec<usize> {
    let hex = svg_hex(color);
    elements(doc, "polyline")
        .filter(|p| p.attribute("stroke") == Some(hex.as_str()))
        .map(|p| {
            p.attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
        .collect()
}

fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
    elements(doc, "text")
        .filter_map(|t| t.text())
        .map(|t| t.trim().to_owned())
        .collect()
}

#[test]
fn loss_svg_draws_one_line_per_curve_with_a_legend() {
    let curves = [
        curve("run a", &[3.0, 2.5, 2.0, 1.8, 1.7]),
        curve("run <b>", &[3.1, 2.9, 2.7]),
    ];
    let svg = loss_svg("demo & loss", &curves).unwrap();
    let doc = parse(&svg);
    for (i, c) in curves.iter().enumerate() {
        let found = lines(&doc, PALETTE[i]);
        // The series itself (every point) and its legend mark.
        assert!(found.contains(&c.points.len()), "{}: {found:?}", c.label);
        assert!(
            found.contains(&2),
            "{}: no legend mark in {found:?}",
            c.label
        );
    }
    let found = texts(&doc);
    for label in ["demo & loss", "run a", "run <b>", "step", "loss"] {
        assert!(found.iter().any(|t| t == label), "{label} in {found:?}");
    }
    assert_eq!(
        svg,
        loss_svg("demo & loss", &curves).unwrap(),
        "deterministic"
    );
    // Points that cannot be placed are left out, the rest drawn.
    let odd = [LossCurve {
        label: "odd".into(),
        points: vec![
            (1.0, 2.0),
            (2.0, f64::NAN),
            (3.0, f64::INFINITY),
            (4.0, 1.0),
        ],
    }];
    let doc_odd_svg = loss_svg("odd", &odd).unwrap();
    assert!(lines(&parse(&doc_odd_svg), PALETTE[0]).contains(&2));
    // Nothing to draw is still a chart.
    let empty = loss_svg("nothing", &[]).unwrap();
    assert!(texts_of(&empty).iter().any(|t| t == "nothing"));
    assert!(elements(&parse(&empty), "polyline").all(|p| p.attribute("stroke") == Some("#000000")));
}

fn texts_of(svg: &str) -> Vec<String> {
    texts(&parse(svg))
}

fn row(method: &str, peak: Option<u64>, pass: Option<f64>, loss: Option<f64>) -> MethodResult {
    MethodResult {
        peak_bytes: peak,
        adapter_bytes: peak.map(|p| p / 100),
        tok_per_s: peak.map(|p| p as f64 / 1e6),
        eval_pass_rate: pass,
        heldout_loss: loss,
        ..MethodResult::new(method)
    }
}

#[test]
fn compare_svg_has_a_curve_per_method_and_a_bar_per_measure() {
    let results = vec![
        row(BASE_ROW, None, Some(0.25), Some(3.0)),
        row("lora", Some(300 << 20), Some(0.5), Some(2.0)),
        row("dora", Some(350 << 20), Some(0.75), Some(1.9)),
        // Failed before any measure: no bars, no curve.
        MethodResult {
            error: Some("boom".into()),
            ..MethodResult::new("hira")
        },
    ];
    let curves = [
        curve("lora", &[3.0, 2.0, 1.5, 1.2]),
        curve("dora", &[3.0, 2.1, 1.4, 1.1]),
    ];
    let svg = compare_svg(&results, &curves).unwrap();
    let doc = parse(&svg);
    // Peak memory, adapter size, tok/s and the pass rate: four bars each.
    assert_eq!(bars(&doc, method_color("lora")), 4);
    assert_eq!(bars(&doc, method_color("dora")), 4);
    assert_eq!(bars(&doc, method_color("hira")), 0);
    // The base model only in the quality chart.
    assert_eq!(bars(&doc, BASE_COLOR), 1);
    for c in &curves {
        assert!(
            lines(&doc, method_color(&c.label)).contains(&4),
            "{}",
            c.label
        );
    }
    assert!(lines(&doc, method_color("hira")).is_empty());
    let found = texts(&doc);
    for t in [
        "training loss",
        "peak memory (MiB)",
        "adapter size (KiB)",
        "training tok/s",
        "held-out pass rate (%)",
        "base",
        "lora",
        "dora",
    ] {
        assert!(found.iter().any(|x| x == t), "{t} in {found:?}");
    }
    assert_eq!(
        svg,
        compare_svg(&results, &curves).unwrap(),
        "deterministic"
    );

    // Without a suite the quality chart is the held-out loss, the base model's included.
    let no_suite: Vec<MethodResult> = results
        .iter()
        .cloned()
        .map(|r| MethodResult {
            eval_pass_rate: None,
            ..r
        })
        .collect();
    let doc2_svg = compare_svg(&no_suite, &curves).unwrap();
    let doc2 = parse(&doc2_svg);
    assert!(texts(&doc2).iter().any(|t| t == "held-out loss"));
    assert_eq!(bars(&doc2, BASE_COLOR), 1);
    assert_eq!(bars(&doc2, method_color("lora")), 4);
    // Nothing passed anywhere: the held-out loss too.
    let zero: Vec<MethodResult> = results
        .iter()
        .cloned()
        .map(|r| MethodResult {
            eval_pass_rate: r.eval_pass_rate.map(|_| 0.0),
            ..r
        })
        .collect();
    let zero_svg = compare_svg(&zero, &curves).unwrap();
    assert!(texts_of(&zero_svg).iter().any(|t| t == "held-out loss"));
}

#[test]
fn every_method_has_its_own_colour() {
    let colors: std::collections::BTreeSet<String> = edgetune::train::Method::NAMES
        .iter()
        .map(|m| svg_hex(method_color(m)))
        .collect();
    assert_eq!(colors.len(), 15);
    assert!(!colors.contains(&svg_hex(BASE_COLOR)));
    assert!(!colors.contains("#FFFFFF") && !colors.contains("#000000"));
}

#[test]
fn loss_curves_come_from_metrics_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(
        &path,
        "{\"step\": 1, \"loss\": 3.5, \"lr\": 0.001}\n\
         {\"step\": 2, \"loss\": null}\n\
         \n\
         {\"step\": 3, \"loss\": 2.25}\n",
    )
    .unwrap();
    let c = LossCurve::from_metrics("lora", &path).unwrap();
    assert_eq!(c.label, "lora");
    assert_eq!(c.points, [(1.0, 3.5), (3.0, 2.25)]);
    std::fs::write(&path, "{\"step\": 1, \"loss\": 3.5}\n{not json\n").unwrap();
    let e = LossCurve::from_metrics("lora", &path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("metrics.jsonl:2"), "{e}");
    let e = LossCurve::from_metrics("x", &dir.path().join("none.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.jsonl"), "{e}");
}
