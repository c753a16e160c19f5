//! One group's latency-percentile plot: the waiting threads' latency (µs,
//! log scale) against the percentile on a log axis of the tail
//! (`-log10(1 - q)`: p90, p99, p99.9, … evenly apart, as HdrHistogram
//! plots them, with p50 at the left edge), one curve per
//! configuration (the median over runs) in a band from the lowest run to
//! the highest. A white background, so that it reads on light and dark
//! pages alike.

use plotters::prelude::*;

use super::{Group, RowResult};
use crate::harness::CURVE_QUANTILES;

/// Colours per configuration, in order: the crate as published first.
const COLOURS: [RGBColor; 4] = [
    RGBColor(200, 40, 40),
    RGBColor(30, 100, 200),
    RGBColor(20, 140, 60),
    RGBColor(200, 120, 0),
];

/// -log10(1 - q): p50 at 0.3, p90 at 1, p99 at 2, p99.9 at 3.
fn tail_position(q: f64) -> f64 {
    -(1.0 - q).log10()
}

fn percentile_label(x: f64) -> String {
    let p = (1.0 - 10f64.powf(-x)) * 100.0;
    // p90, p99, p99.9, p99.99: the digits that tell them apart.
    let digits = (x - 2.0).round().max(0.0) as usize;
    let s = format!("{p:.digits$}");
    format!("p{s}")
}

fn us_label(y: f64) -> String {
    if y >= 1.0 {
        format!("{y:.0}")
    } else {
        format!("{y}")
    }
}

/// The SVG text of `g`'s plot.
pub fn svg(row: &RowResult, g: &Group) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", row.name);
    let xs: Vec<f64> = CURVE_QUANTILES.iter().map(|&q| tail_position(q)).collect();
    let n = g.series.iter().map(|s| s.curve.len()).min().unwrap_or(0);
    let values = g
        .series
        .iter()
        .flat_map(|s| s.curve.iter().take(n))
        .flat_map(|f| [f.min, f.max])
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if n < 2 || !lo.is_finite() {
        return Err(format!("plot {}: no latency curve to draw", row.name));
    }
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    // p50 at the left edge, then p90, p99, p99.9, ... up to the last
    // quantile drawn.
    let top = (xs[n - 1] - 1e-9).ceil();
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (720, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} · {} · {}: waiting latency", row.name, g.alloc, g.size),
                ("sans-serif", 18).into_font().color(&BLACK),
            )
            .margin(12)
            .margin_right(36)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xs[0]..top, (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(top as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| us_label(*y))
            .y_desc("µs")
            .x_desc("percentile")
            .label_style(("sans-serif", 13).into_font().color(&BLACK))
            .axis_desc_style(("sans-serif", 14).into_font().color(&BLACK))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()
            .map_err(|e| err(&e))?;
        // The mesh labels whole steps (p90, p99, ...); p50 is the left edge.
        let (px, py) = chart.backend_coord(&(xs[0], lo));
        root.draw(&Text::new(
            "p50",
            (px - 10, py + 8),
            ("sans-serif", 13).into_font().color(&BLACK),
        ))
        .map_err(|e| err(&e))?;
        for (i, s) in g.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut band: Vec<(f64, f64)> =
                (0..n).map(|q| (xs[q], s.curve[q].max.max(lo))).collect();
            band.extend((0..n).rev().map(|q| (xs[q], s.curve[q].min.max(lo))));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    colour.mix(0.18).filled(),
                )))
                .map_err(|e| err(&e))?;
            let line: Vec<(f64, f64)> =
                (0..n).map(|q| (xs[q], s.curve[q].median.max(lo))).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(s.config.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(line.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14).into_font().color(&BLACK))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(150, 150, 150))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(text)
}
