//! The plots of `apexsim compare` (plotters): speed, throttle and brake over distance with the
//! braking points marked, the time delta over distance, and a track map coloured by where lap
//! B gained (green) or lost (red) time against lap A. SVG or PNG by the file's extension; text
//! is drawn with the bundled DejaVu Sans, so no system font is needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use thiserror::Error;

use super::across::delta_at;
use super::compare::{Comparison, Lap, sector_marks};

/// The font every label is drawn with (DejaVu Sans, see `assets/fonts/LICENSE`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Why a plot could not be drawn.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The extension is not `.svg` nor `.png`.
    #[error("{0}: plots are .svg or .png files")]
    Format(String),
    /// Drawing or writing failed.
    #[error("{path}: {message}")]
    Draw {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

const A: RGBColor = RGBColor(31, 119, 180);
const B: RGBColor = RGBColor(214, 39, 40);
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1700;

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registering the same bytes cannot fail after the first time; a failure leaves
        // plotters' default, which the drawing reports.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws the comparison of `b` against `a` into `path` (`.svg` or `.png`).
///
/// # Errors
/// [`PlotError`] for another extension, or when drawing or writing fails.
pub fn plot(
    path: &Path,
    a: &Lap,
    b: &Lap,
    c: &Comparison,
    sectors: &[f32],
) -> Result<(), PlotError> {
    fonts();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let draw_err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    match ext.as_str() {
        "svg" => {
            let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw(&root, a, b, c, sectors).map_err(|e| draw_err(&e))?;
            root.present().map_err(|e| draw_err(&e))
        }
        "png" => {
            let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw(&root, a, b, c, sectors).map_err(|e| draw_err(&e))?;
            root.present().map_err(|e| draw_err(&e))
        }
        _ => Err(PlotError::Format(path.display().to_string())),
    }
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    a: &Lap,
    b: &Lap,
    c: &Comparison,
    sectors: &[f32],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let title = format!(
        "{}: lap B {} ({}) against lap A {} ({}): {:+.3} s",
        c.track,
        c.b.name,
        super::format_lap_time(c.b.lap_time_s),
        c.a.name,
        super::format_lap_time(c.a.lap_time_s),
        c.delta_s
    );
    let root = root.titled(&title, ("sans-serif", 24))?;
    let (charts, map) = root.split_vertically(HEIGHT * 62 / 100);
    let parts = charts.split_by_breakpoints([] as [u32; 0], [HEIGHT * 26 / 100, HEIGHT * 42 / 100]);
    let length = a.meta.track_length_m;
    let marks = sector_marks(length, sectors);
    speed(&parts[0], a, b, length, &marks)?;
    pedals(&parts[1], a, b, length)?;
    delta(&parts[2], c, length, &marks)?;
    track_map(&map, a, c)?;
    Ok(())
}

fn series(l: &Lap, f: impl Fn(usize) -> f32) -> Vec<(f32, f32)> {
    let d = &l.columns.distance_m;
    // Every other sample at 240 Hz is still finer than the pixels.
    let step = (d.len() / 4000).max(1);
    (0..d.len()).step_by(step).map(|i| (d[i], f(i))).collect()
}

fn speed<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    a: &Lap,
    b: &Lap,
    length: f32,
    marks: &[f32],
) -> DrawResult<DB> {
    let top = a
        .metrics
        .stats
        .top_speed_mps
        .max(b.metrics.stats.top_speed_mps)
        * 3.6
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("speed, braking points marked", ("sans-serif", 18))
        .build_cartesian_2d(0f32..length, 0f32..top)?;
    chart
        .configure_mesh()
        .y_desc("km/h")
        .label_style(("sans-serif", 14))
        .draw()?;
    for m in marks {
        chart.draw_series(LineSeries::new([(*m, 0.0), (*m, top)], BLACK.mix(0.25)))?;
    }
    for (lap, colour, label) in [(a, A, "lap A"), (b, B, "lap B")] {
        chart
            .draw_series(LineSeries::new(
                series(lap, |i| lap.columns.speed_mps[i] * 3.6),
                colour.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        for z in &lap.metrics.braking {
            let v = z.start_speed_mps * 3.6;
            chart.draw_series(std::iter::once(TriangleMarker::new(
                (z.start_m, v),
                7,
                colour.filled(),
            )))?;
            chart.draw_series(LineSeries::new(
                [(z.start_m, 0.0), (z.start_m, v)],
                colour.mix(0.4),
            ))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn pedals<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    a: &Lap,
    b: &Lap,
    length: f32,
) -> DrawResult<DB> {
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .caption("throttle (up) and brake (down)", ("sans-serif", 18))
        .build_cartesian_2d(0f32..length, -1.05f32..1.05)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .draw()?;
    for (lap, colour) in [(a, A), (b, B)] {
        chart.draw_series(LineSeries::new(
            series(lap, |i| lap.columns.throttle[i]),
            colour,
        ))?;
        chart.draw_series(LineSeries::new(
            series(lap, |i| -lap.columns.brake[i]),
            colour,
        ))?;
    }
    Ok(())
}

fn delta<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &Comparison,
    length: f32,
    marks: &[f32],
) -> DrawResult<DB> {
    let (lo, hi) = c
        .grid
        .iter()
        .fold((0f32, 0f32), |(lo, hi), (_, d)| (lo.min(*d), hi.max(*d)));
    let pad = ((hi - lo) * 0.1).max(0.05);
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption("time delta, B - A (below 0: B ahead)", ("sans-serif", 18))
        .build_cartesian_2d(0f32..length, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("distance (m)")
        .y_desc("s")
        .label_style(("sans-serif", 14))
        .draw()?;
    for m in marks {
        chart.draw_series(LineSeries::new(
            [(*m, lo - pad), (*m, hi + pad)],
            BLACK.mix(0.25),
        ))?;
    }
    chart.draw_series(LineSeries::new([(0.0, 0.0), (length, 0.0)], BLACK.mix(0.4)))?;
    chart.draw_series(AreaSeries::new(c.grid.iter().copied(), 0.0, B.mix(0.15)))?;
    chart.draw_series(LineSeries::new(
        c.grid.iter().copied(),
        BLACK.stroke_width(2),
    ))?;
    Ok(())
}

/// Lap A's path, each 20 m coloured by what B did there: green where B gained, red where it
/// lost, the stronger the more.
fn track_map<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    a: &Lap,
    c: &Comparison,
) -> DrawResult<DB> {
    let (x, y, d) = (&a.columns.x_m, &a.columns.y_m, &a.columns.distance_m);
    let finite: Vec<usize> = (0..x.len())
        .filter(|&i| x[i].is_finite() && y[i].is_finite())
        .collect();
    let Some(&first) = finite.first() else {
        return Ok(());
    };
    let (mut x0, mut x1, mut y0, mut y1) = (x[first], x[first], y[first], y[first]);
    for &i in &finite {
        (x0, x1, y0, y1) = (x0.min(x[i]), x1.max(x[i]), y0.min(y[i]), y1.max(y[i]));
    }
    // Equal scales on both axes, centred.
    let (w, h) = area.dim_in_pixel();
    let span = ((x1 - x0) / w as f32).max((y1 - y0) / h as f32) * 1.1;
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let (hw, hh) = (span * w as f32 / 2.0, span * h as f32 / 2.0);
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .caption(
            "track map: where B gained (green) and lost (red)",
            ("sans-serif", 18),
        )
        .build_cartesian_2d((cx - hw)..(cx + hw), (cy - hh)..(cy + hh))?;
    const STEP: f32 = 20.0;
    let slope = |dist: f32| delta_at(&c.grid, dist + STEP) - delta_at(&c.grid, dist);
    let worst = (0..(d.last().copied().unwrap_or(0.0) / STEP) as u32)
        .map(|k| slope(k as f32 * STEP).abs())
        .fold(1e-3f32, f32::max);
    let mut start = 0;
    while start + 1 < finite.len() {
        let bin = (d[finite[start]] / STEP).floor();
        let mut end = start + 1;
        while end + 1 < finite.len() && (d[finite[end]] / STEP).floor() == bin {
            end += 1;
        }
        let s = (slope(bin * STEP) / worst).clamp(-1.0, 1.0);
        // From grey (as fast) to red (B lost) or green (B gained).
        let to = if s > 0.0 {
            (220.0, 30.0, 30.0)
        } else {
            (30.0, 160.0, 60.0)
        };
        let mix = |grey: f32, end: f32| (grey + (end - grey) * s.abs()) as u8;
        let colour = RGBColor(mix(185.0, to.0), mix(185.0, to.1), mix(185.0, to.2));
        let points: Vec<(f32, f32)> = finite[start..=end].iter().map(|&i| (x[i], y[i])).collect();
        chart.draw_series(LineSeries::new(points, colour.stroke_width(6)))?;
        start = end;
    }
    // The line.
    chart.draw_series(std::iter::once(Circle::new(
        (x[first], y[first]),
        8,
        BLACK.filled(),
    )))?;
    chart.draw_series(std::iter::once(Text::new(
        "start/finish",
        (x[first] + span * 12.0, y[first]),
        ("sans-serif", 16),
    )))?;
    Ok(())
}
