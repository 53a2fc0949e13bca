//! `apexsim analyze`: every lap's metrics and a summary per track and car, as tables, CSV,
//! JSON or Parquet.

use std::io;
use std::path::PathBuf;

use anyhow::Context as _;
use apexsim::analysis::query::{Analysis, LapFilter, analyze_paths};
use clap::ValueEnum;

use super::print::{emit, emit_json, lap_time, table};
use super::{Context, thresholds};

/// Output formats of `analyze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum TableFormat {
    /// Aligned text tables.
    #[default]
    Table,
    /// Comma-separated lap rows.
    Csv,
    /// JSON on one line: laps, summary, errors.
    Json,
    /// Lap rows as a Parquet file (`--out`).
    Parquet,
}

/// Arguments of `apexsim analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Archives (data directories) or lap files and folders of them; the `--data` archive when
    /// none is given.
    #[arg(value_name = "ARCHIVE_OR_PARQUET")]
    pub paths: Vec<PathBuf>,
    /// Only this track (its slug: a partition, so the others are not read).
    #[arg(long)]
    pub track: Option<String>,
    /// Only this car model.
    #[arg(long)]
    pub car: Option<String>,
    /// Only this session (its id).
    #[arg(long)]
    pub session: Option<String>,
    /// Only this driver.
    #[arg(long)]
    pub driver: Option<String>,
    /// Measure every lap again and store the metrics (after a threshold change).
    #[arg(long)]
    pub recompute: bool,
    /// Thresholds file (TOML); default: the archive's `thresholds.toml`, else built-in values.
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Override one threshold: `--set brake_on=0.15` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: TableFormat,
    /// Output file (required for parquet).
    #[arg(long, value_name = "FILE", required_if_eq("format", "parquet"))]
    pub out: Option<PathBuf>,
}

/// Thresholds (file, then `--set`), the analysis, the report; exit 1 when a lap file could not
/// be analysed.
///
/// # Errors
/// A usage error for bad thresholds; the analysis's failures.
pub fn run(args: &AnalyzeArgs, ctx: &Context) -> anyhow::Result<()> {
    let paths = if args.paths.is_empty() {
        vec![ctx.data.clone()]
    } else {
        args.paths.clone()
    };
    let th = thresholds(args.thresholds.as_deref(), &args.sets, &paths[0])?;
    let filter = LapFilter {
        track: args.track.clone(),
        car: args.car.clone(),
        session: args.session.clone(),
        driver: args.driver.clone(),
    };
    let recompute = args.recompute || args.thresholds.is_some() || !args.sets.is_empty();
    let report = analyze_paths(&paths, &filter, &th, recompute)?;
    print_analysis(&report, args.format, args.out.as_deref()).context("writing the analysis")?;
    if !report.errors.is_empty() {
        anyhow::bail!(
            "{} lap file(s) could not be analysed; first: {}",
            report.errors.len(),
            report.errors[0]
        );
    }
    Ok(())
}

/// Prints an analysis: lap rows and the summary per track and car as tables, CSV (lap rows),
/// JSON (everything), or Parquet (lap rows, into `out`).
pub fn print_analysis(
    a: &Analysis,
    format: TableFormat,
    out: Option<&std::path::Path>,
) -> io::Result<()> {
    let secs = |t: Option<f64>| t.map_or_else(|| "-".to_owned(), lap_time);
    let pct = |x: f32| format!("{:.0}", x * 100.0);
    let sectors = |v: &[f32], sep: &str| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(sep)
    };
    match format {
        TableFormat::Json => emit_json(a),
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(io::stdout().lock());
            w.write_record([
                "source",
                "track",
                "date",
                "session",
                "car",
                "car_model",
                "driver",
                "lap",
                "valid",
                "official_lap_time_s",
                "lap_time_s",
                "top_speed_mps",
                "full_throttle_share",
                "braking_share",
                "coasting_share",
                "braking_zones",
                "corners",
                "sector_times_s",
            ])?;
            for r in &a.laps {
                let opt = |t: Option<f64>| t.map_or_else(String::new, |t| format!("{t:.3}"));
                w.write_record([
                    r.source.clone(),
                    r.track.clone(),
                    r.date.clone(),
                    r.session.clone(),
                    r.car.to_string(),
                    r.car_model.clone(),
                    r.driver.clone(),
                    r.lap.to_string(),
                    r.valid.to_string(),
                    opt(r.official_lap_time_s),
                    opt(r.lap_time_s),
                    format!("{:.2}", r.top_speed_mps),
                    format!("{:.4}", r.full_throttle_share),
                    format!("{:.4}", r.braking_share),
                    format!("{:.4}", r.coasting_share),
                    r.braking_zones.to_string(),
                    r.corners.to_string(),
                    sectors(&r.sector_times_s, ";"),
                ])?;
            }
            w.flush()
        }
        TableFormat::Parquet => {
            let path = out.ok_or_else(|| io::Error::other("--format parquet needs --out"))?;
            apexsim::analysis::store::write_lap_rows(path, &a.laps).map_err(io::Error::other)?;
            emit(&format!(
                "{} lap rows written to {}\n",
                a.laps.len(),
                path.display()
            ))
        }
        TableFormat::Table => {
            let rows: Vec<Vec<String>> = a
                .laps
                .iter()
                .map(|r| {
                    vec![
                        r.track.clone(),
                        r.session.chars().take(8).collect(),
                        r.car.to_string(),
                        r.car_model.clone(),
                        r.driver.clone(),
                        r.lap.to_string(),
                        if r.valid { "yes" } else { "no" }.into(),
                        secs(r.official_lap_time_s),
                        secs(r.lap_time_s),
                        format!("{:.0}", r.top_speed_mps * 3.6),
                        pct(r.full_throttle_share),
                        pct(r.braking_share),
                        pct(r.coasting_share),
                        r.braking_zones.to_string(),
                        r.corners.to_string(),
                        sectors(&r.sector_times_s, " "),
                    ]
                })
                .collect();
            let mut text = table(
                &[
                    "Track",
                    "Session",
                    "#",
                    "Car",
                    "Driver",
                    "Lap",
                    "Valid",
                    "Official",
                    "Measured",
                    "Top km/h",
                    "Full %",
                    "Brake %",
                    "Coast %",
                    "Zones",
                    "Corners",
                    "Sectors (s)",
                ],
                &rows,
            );
            let summary: Vec<Vec<String>> = a
                .summary
                .iter()
                .map(|s| {
                    vec![
                        s.track.clone(),
                        s.car_model.clone(),
                        s.laps.to_string(),
                        s.valid_laps.to_string(),
                        secs(s.best_lap_s),
                        s.best_lap.clone().unwrap_or_else(|| "-".into()),
                        secs(s.mean_lap_s),
                        secs(s.theoretical_best_s),
                        s.braking_point_mad_m
                            .map_or_else(|| "-".into(), |m| format!("{m:.1}")),
                        s.apex_speed_mad_mps
                            .map_or_else(|| "-".into(), |m| format!("{:.1}", m * 3.6)),
                    ]
                })
                .collect();
            text.push('\n');
            text.push_str(&table(
                &[
                    "Track",
                    "Car",
                    "Laps",
                    "Valid",
                    "Best",
                    "Best lap",
                    "Mean",
                    "Theoretical",
                    "Braking MAD m",
                    "Apex MAD km/h",
                ],
                &summary,
            ));
            let rate = if a.compute_s > 0.0 {
                a.computed as f64 / a.compute_s
            } else {
                0.0
            };
            text.push_str(&format!(
                "\n{} laps; {} measured now in {:.2} s ({:.0} laps/s); stored metrics read in {:.3} s; {} error(s)\n",
                a.laps.len(),
                a.computed,
                a.compute_s,
                rate,
                a.query_s,
                a.errors.len()
            ));
            if a.waiting > 0 {
                text.push_str(&format!(
                    "{} lap(s) of live sessions wait for their writer to store their metrics (within 30 s)\n",
                    a.waiting
                ));
            }
            for e in &a.errors {
                text.push_str(&format!("error: {e}\n"));
            }
            emit(&text)
        }
    }
}
