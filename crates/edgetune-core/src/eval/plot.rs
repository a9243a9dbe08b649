//! SVG charts of training runs: [`loss_svg`] (training loss curves), and the loss and bar
//! panels that `edgetune compare`'s chart (`crate::compare::chart`) is drawn from.
//!
//! Drawn with plotters' SVG backend and no font support compiled in: text goes out as SVG
//! `<text>` elements that the viewer lays out, and plotters places labels with its own size
//! estimate, so nothing reads system fonts. The output depends only on the input (no time, no
//! randomness): the same results give the same bytes.
//!
//! Colours: [`loss_svg`] colours its curves in order ([`PALETTE`]); the comparison chart gives
//! each method its own colour from the same palette and the base model's bars [`BASE_COLOR`].

use std::path::Path;

use plotters::backend::SVGBackend;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::{Error, Result};

/// One training run's loss per optimizer step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossCurve {
    pub label: String,
    /// `(step, loss)` in step order.
    pub points: Vec<(f64, f64)>,
}

impl LossCurve {
    /// The `step` and `loss` of every line of a run's `metrics.jsonl`; lines whose loss is not
    /// a finite number (a diverged step) are left out. A line that is not JSON is an error
    /// naming the file and the line.
    pub fn from_metrics(label: &str, path: &Path) -> Result<LossCurve> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))?;
            let step = v.get("step").and_then(Value::as_f64);
            let loss = v.get("loss").and_then(Value::as_f64);
            if let (Some(s), Some(l)) = (step, loss)
                && s.is_finite()
                && l.is_finite()
            {
                points.push((s, l));
            }
        }
        Ok(LossCurve {
            label: label.to_owned(),
            points,
        })
    }
}

/// Fifteen distinguishable colours (one per method), then reused in order.
pub const PALETTE: [(u8, u8, u8); 15] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 128),
    (128, 0, 0),
    (0, 128, 128),
    (255, 187, 120),
    (152, 223, 138),
    (70, 70, 70),
];

/// The base model's bars.
pub const BASE_COLOR: (u8, u8, u8) = (170, 170, 170);

/// A colour as the SVG output writes it (`#RRGGBB`, upper case), for finding elements in it.
pub fn svg_hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02X}{g:02X}{b:02X}")
}

const LOSS_SIZE: (u32, u32) = (900, 480);

/// Training loss against step, one line per curve (coloured in order from [`PALETTE`]), with a
/// legend of the labels.
pub fn loss_svg(title: &str, curves: &[LossCurve]) -> Result<String> {
    let colored: Vec<(&LossCurve, (u8, u8, u8))> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| (c, PALETTE[i % PALETTE.len()]))
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, LOSS_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw_loss(&root, title, &colored)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// One bar of a bar chart.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: (u8, u8, u8),
}

pub fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("drawing the chart: {e}"))
}

pub(crate) fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

/// A range around `lo..hi` that is never empty, with a little room above and below.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-6);
    (lo - pad, hi + pad)
}

pub fn draw_loss(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    curves: &[(&LossCurve, (u8, u8, u8))],
) -> Result<()> {
    // Points that cannot be placed (a diverged step's NaN, an infinite loss) are left out.
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all = || {
        curves
            .iter()
            .flat_map(|(c, _)| c.points.iter())
            .filter(finite)
    };
    let max_step = all().map(|p| p.0).fold(1.0f64, f64::max);
    let lo = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (y0, y1) = padded(lo, hi);
    let x1 = if max_step > 1.0 { max_step } else { 2.0 };
    // At most one label per step: steps are whole numbers.
    let x_labels = (x1 as usize).clamp(2, 10);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(1.0f64..x1, y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(x_labels)
        .y_desc("loss")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(draw_err)?;
    for (curve, color) in curves {
        let style = rgb(*color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                curve.points.iter().filter(finite).copied(),
                style,
            ))
            .map_err(draw_err)?
            .label(curve.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Horizontal bars, the first row at the top, each with its value at its end.
pub fn draw_bars(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    rows: &[Bar],
) -> Result<()> {
    let n = rows.len().max(1) as i32;
    let max = rows.iter().map(|b| b.value).fold(0.0f64, f64::max);
    // Room past the longest bar for its value.
    let x1 = if max > 0.0 { max * 1.3 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(72)
        // An integer range holds both ends: 0..=n-1 is n segments.
        .build_cartesian_2d(0.0f64..x1, (0..n - 1).into_segmented())
        .map_err(draw_err)?;
    // Row i is drawn in segment n-1-i, so the list reads top-down.
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(k) => usize::try_from(n - 1 - k)
            .ok()
            .and_then(|i| rows.get(i))
            .map_or(String::new(), |b| b.label.clone()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(n as usize)
        .y_label_formatter(&label_of)
        .x_labels(4)
        .x_label_formatter(&|x| short(*x))
        .draw()
        .map_err(draw_err)?;
    if rows.is_empty() {
        let style = ("sans-serif", 14).into_font().color(&BLACK);
        chart
            .draw_series(std::iter::once(Text::new(
                "no data",
                (x1 * 0.35, SegmentValue::CenterOf(0)),
                style,
            )))
            .map_err(draw_err)?;
        return Ok(());
    }
    chart
        .draw_series(rows.iter().enumerate().map(|(i, b)| {
            let k = n - 1 - i as i32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(k)),
                    (b.value, SegmentValue::Exact(k + 1)),
                ],
                rgb(b.color).filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(draw_err)?;
    let style = ("sans-serif", 11)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series(rows.iter().enumerate().map(|(i, b)| {
            let k = n - 1 - i as i32;
            Text::new(
                format!(" {}", short(b.value)),
                (b.value, SegmentValue::CenterOf(k)),
                style.clone(),
            )
        }))
        .map_err(draw_err)?;
    Ok(())
}

/// A value in at most four significant digits, without a trailing `.0`.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
