//! `--plot FILE.svg`: the latency distributions of the run, one panel per mode.

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One distribution: (mode, system, all rounds' samples merged).
pub(crate) type Distribution = (String, String, Histogram<u64>);

/// One colour per system (in the order systems first appear in the run), the same in every
/// panel; enough for every system the latency scenario measures.
const COLORS: [RGBColor; 8] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
    RGBColor(40, 150, 60),
    RGBColor(200, 130, 0),
    RGBColor(120, 60, 160),
    RGBColor(0, 150, 150),
    RGBColor(90, 90, 90),
    RGBColor(210, 80, 170),
];

/// The colour of `system`: its place among the systems of the run.
fn color_of(system: &str, dists: &[Distribution]) -> RGBColor {
    let mut seen: Vec<&str> = Vec::new();
    for d in dists {
        if !seen.contains(&d.1.as_str()) {
            seen.push(&d.1);
        }
    }
    let i = seen.iter().position(|s| *s == system).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Percentile curves: x is the number of nines (0 = p0, 2 = p99, 3 = p99.9, 4 = p99.99),
/// y the round-trip time in µs on a log scale.
pub(crate) fn latency_svg(
    path: &str,
    dists: &[Distribution],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut modes: Vec<&str> = dists.iter().map(|d| d.0.as_str()).collect();
    modes.dedup();
    let root = SVGBackend::new(path, (600 * modes.len().max(1) as u32, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, modes.len().max(1)));
    let min_us = dists
        .iter()
        .map(|d| d.2.min() as f64 / 1000.0)
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let max_us = dists
        .iter()
        .map(|d| d.2.value_at_quantile(0.9999) as f64 / 1000.0)
        .fold(10.0, f64::max);
    for (panel, mode) in panels.iter().zip(&modes) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("64-byte round trip, {mode}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..4f64, (min_us * 0.7..max_us * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("percentile (nines: 1 = p90, 2 = p99, 3 = p99.9)")
            .y_desc("microseconds")
            .draw()?;
        for (_, system, h) in dists.iter().filter(|d| d.0 == *mode) {
            let color = color_of(system, dists);
            let points = (0..=400).map(|k| {
                let nines = k as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-nines);
                (
                    nines,
                    (h.value_at_quantile(q.min(0.99999)) as f64 / 1000.0).max(1.0),
                )
            });
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(system.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
