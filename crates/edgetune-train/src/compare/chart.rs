//! `compare.svg`: every method's training loss curve above bar charts of peak memory, adapter
//! size, tok/s and held-out quality, drawn with the panels of [`edgetune_core::eval::plot`] (SVG text,
//! no fonts read; the same results give the same bytes).
//!
//! A method keeps its colour across charts and runs ([`method_color`]: its place in
//! [`Method::ALL`]); the base model's bars are grey ([`BASE_COLOR`]).

use plotters::backend::SVGBackend;
use plotters::prelude::*;

use super::MethodResult;
use crate::train::Method;
use edgetune_core::Result;
use edgetune_core::eval::plot::{
    BASE_COLOR, Bar, LossCurve, PALETTE, draw_bars, draw_err, draw_loss,
};

const COMPARE_SIZE: (u32, u32) = (1200, 960);
/// Height of the loss chart in `compare.svg`; the bar charts share the rest.
const COMPARE_LOSS_HEIGHT: u32 = 480;

/// The colour of `method`: its place in [`Method::ALL`]; an unknown name (or the base row)
/// gets [`BASE_COLOR`].
pub fn method_color(method: &str) -> (u8, u8, u8) {
    Method::ALL
        .iter()
        .position(|m| m.name() == method)
        .map_or(BASE_COLOR, |i| PALETTE[i % PALETTE.len()])
}

/// `compare.svg`: the methods' training loss curves (each `curves` entry whose label is a
/// method of `results`, in its colour) above four horizontal bar charts, one bar per row that
/// has the measure: peak memory (MiB), adapter size (KiB), tok/s, and held-out quality — the
/// suite's pass rate (%) when any row passed anything, else the held-out loss. The base row
/// ([`MethodResult::is_base`]) only has bars in the quality chart.
pub fn compare_svg(results: &[MethodResult], curves: &[LossCurve]) -> Result<String> {
    let colored: Vec<(&LossCurve, (u8, u8, u8))> =
        curves.iter().map(|c| (c, method_color(&c.label))).collect();
    // All-zero pass rates (a short run on a hard suite) would be a chart of empty bars.
    let has_pass = results
        .iter()
        .any(|r| r.eval_pass_rate.is_some_and(|p| p > 0.0));
    let quality: Panel = if has_pass {
        ("held-out pass rate (%)", |r| {
            r.eval_pass_rate.map(|p| p * 100.0)
        })
    } else {
        ("held-out loss", |r| r.heldout_loss)
    };
    let panels: [Panel; 4] = [
        ("peak memory (MiB)", |r| {
            r.peak_bytes.map(|b| b as f64 / 1048576.0)
        }),
        ("adapter size (KiB)", |r| {
            r.adapter_bytes.map(|b| b as f64 / 1024.0)
        }),
        ("training tok/s", |r| r.tok_per_s),
        quality,
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, COMPARE_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(COMPARE_LOSS_HEIGHT);
        draw_loss(&top, "training loss", &colored)?;
        let areas = bottom.split_evenly((1, panels.len()));
        for (area, (title, measure)) in areas.iter().zip(&panels) {
            let rows: Vec<Bar> = results
                .iter()
                .filter_map(|r| {
                    let v = measure(r)?;
                    (v.is_finite() && v >= 0.0).then(|| Bar {
                        label: r.method.clone(),
                        value: v,
                        color: method_color(&r.method),
                    })
                })
                .collect();
            draw_bars(area, title, &rows)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A bar chart of `compare.svg`: its title and the measure of a row.
type Panel = (&'static str, fn(&MethodResult) -> Option<f64>);
