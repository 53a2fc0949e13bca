//! `apexsim compare`: two laps of one track, where time went, with plots.

use std::io;
use std::path::PathBuf;

use anyhow::Context as _;
use apexsim::analysis::compare::{compare, load, resolve};

use super::print::{Format, emit, emit_json, lap_time, table};
use super::{Context, UsageError, thresholds};

/// Arguments of `apexsim compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The reference lap: a lap file, or `SESSION:CAR:LAP` (as `analyze` lists them).
    pub a: String,
    /// The lap compared with it.
    pub b: String,
    /// Draw speed, pedals, time delta and a track map into this file (.svg or .png).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Thresholds file (TOML); default: the archive's `thresholds.toml`, else built-in values.
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Override one threshold: `--set match_window_m=30` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Both laps found, measured and compared; the report, and the plot.
///
/// # Errors
/// A usage error for a lap that cannot be found or measured, or a plot that cannot be drawn.
pub fn run(args: &CompareArgs, ctx: &Context) -> anyhow::Result<()> {
    let data = &ctx.data;
    let th = thresholds(args.thresholds.as_deref(), &args.sets, data)?;
    let index = apexsim::archive::index::Index::open(data).ok();
    let mut laps = Vec::new();
    for name in [&args.a, &args.b] {
        let path = resolve(data, name).map_err(|e| UsageError(e.to_string()))?;
        let session = apexsim::archive::read_lap_meta(&path)
            .map_err(|e| UsageError(e.to_string()))?
            .0
            .session;
        let sectors = index
            .as_ref()
            .and_then(|i| i.session_sectors(session).ok())
            .unwrap_or_default();
        laps.push((
            load(&path, &sectors, &th).map_err(|e| UsageError(e.to_string()))?,
            sectors,
        ));
    }
    let (b, _) = laps.pop().context("two laps")?;
    let (a, sectors) = laps.pop().context("two laps")?;
    let report = compare(&a, &b, &th).map_err(|e| UsageError(e.to_string()))?;
    if let Some(file) = &args.plot {
        apexsim::analysis::plot::plot(file, &a, &b, &report, &sectors)
            .map_err(|e| UsageError(e.to_string()))?;
    }
    print_compare(&report, args.format, args.plot.as_deref()).context("writing the comparison")
}

/// Prints a lap comparison: the laps and the delta at the line, then sector, braking-zone and
/// corner tables (negative deltas: lap B gained), or all of it as JSON.
pub fn print_compare(
    c: &apexsim::analysis::compare::Comparison,
    format: Format,
    plot: Option<&std::path::Path>,
) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(c);
    }
    let kmh = |v: f32| format!("{:.0}", v * 3.6);
    let signed = |d: f32| format!("{d:+.3}");
    let mut text = format!(
        "{}: lap B {} ({}, {}) against lap A {} ({}, {}): {:+.3} s at the line\n\n",
        c.track,
        c.b.name,
        c.b.driver,
        lap_time(c.b.lap_time_s),
        c.a.name,
        c.a.driver,
        lap_time(c.a.lap_time_s),
        c.delta_s
    );
    let sectors: Vec<Vec<String>> = c
        .sectors
        .iter()
        .map(|s| {
            vec![
                s.sector.to_string(),
                format!("{:.3}", s.a_s),
                format!("{:.3}", s.b_s),
                signed(s.delta_s),
            ]
        })
        .collect();
    text.push_str(&table(&["Sector", "A (s)", "B (s)", "B - A"], &sectors));
    let zones: Vec<Vec<String>> = c
        .zones
        .iter()
        .map(|z| {
            vec![
                format!("{:.0}", z.a_start_m),
                format!("{:+.0}", z.later_m),
                format!(
                    "{} / {}",
                    kmh(z.entry_speed_mps.0),
                    kmh(z.entry_speed_mps.1)
                ),
                format!("{} / {}", kmh(z.min_speed_mps.0), kmh(z.min_speed_mps.1)),
                signed(z.delta_s),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &[
            "Braking at (m)",
            "B later (m)",
            "Entry km/h A / B",
            "Min km/h A / B",
            "B - A (s)",
        ],
        &zones,
    ));
    let corners: Vec<Vec<String>> = c
        .corners
        .iter()
        .map(|k| {
            let m = |x: Option<f32>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"));
            vec![
                format!("{:.0}", k.apex_m),
                if k.direction > 0 { "left" } else { "right" }.into(),
                format!("{} / {}", kmh(k.apex_speed_mps.0), kmh(k.apex_speed_mps.1)),
                format!("{} / {}", m(k.throttle_m.0), m(k.throttle_m.1)),
                signed(k.delta_s),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &[
            "Apex (m)",
            "Turn",
            "Apex km/h A / B",
            "Throttle at (m) A / B",
            "B - A (s)",
        ],
        &corners,
    ));
    text.push_str(&format!(
        "\n{} zone(s) and corner(s) without a match within the window\n",
        c.unmatched
    ));
    if let Some(p) = plot {
        text.push_str(&format!("plot: {}\n", p.display()));
    }
    emit(&text)
}
