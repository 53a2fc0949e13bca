//! `apexsim race`: an offline AI race on the bundled content, watched on the terminal, its
//! laps archived.

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::race::{Race, RaceOptions, RaceReport};

use super::board::{RaceWatcher, gap_text};
use super::print::{Format, emit, emit_json, lap_time, table};
use super::{Context, UsageError, archive_errors};

/// Arguments of `apexsim race`.
#[derive(Debug, clap::Args)]
pub struct RaceArgs {
    /// Track slug, id or name.
    #[arg(long, default_value = "road_course_a")]
    pub track: String,
    /// Car slug, id or name.
    #[arg(long, default_value = "gt3_generic")]
    pub car: String,
    /// Number of AI cars.
    #[arg(long, default_value_t = 8)]
    pub cars: usize,
    /// Laps to race.
    #[arg(long, default_value_t = 3)]
    pub laps: u16,
    /// Seed of the simulation's random numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run as fast as the CPU allows instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Pace at this many times real time (for example 4 to watch a race in a quarter of its
    /// time); ignored with --fast.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR", value_parser = speed_factor)]
    pub speed: f64,
    /// Race time limit in seconds: after it, the leader's next crossing ends the race.
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    pub time_limit: Option<Duration>,
    /// Do not archive the race's laps.
    #[arg(long)]
    pub no_archive: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// A time limit: a positive, finite number of seconds.
fn positive_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s} is not a positive number of seconds")),
    }
}

/// A pace factor between 0 (exclusive) and 1000.
fn speed_factor(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1000.0 => Ok(v),
        _ => Err(format!("{s} is not a factor between 0 and 1000")),
    }
}

impl RaceArgs {
    /// The race these arguments describe.
    fn options(&self) -> RaceOptions {
        RaceOptions {
            track: self.track.clone(),
            car: self.car.clone(),
            cars: self.cars,
            laps: self.laps,
            seed: self.seed,
            fast: self.fast,
            speed: self.speed,
            time_limit: self.time_limit,
            session_id: Some(uuid::Uuid::new_v4()),
        }
    }
}

/// Runs the race, watched, archived unless `--no-archive`, and prints the results.
///
/// # Errors
/// A usage error for a bad track, car or grid; the race's or the archive's failure.
pub fn run(args: &RaceArgs, ctx: &Context) -> anyhow::Result<()> {
    let content = ctx.content_logged();
    let opts = args.options();
    let mut race = Race::new(&content, &opts).map_err(|e| {
        if e.is_usage() {
            anyhow::Error::new(UsageError(e.to_string()))
        } else {
            anyhow::Error::new(e)
        }
    })?;
    if !args.no_archive {
        let writer = apexsim::events::ArchiveWiring::default()
            .start_writer(&ctx.data)
            .with_context(|| format!("opening the archive in {}", ctx.data.display()))?;
        race.archive_to(writer, ctx.wal_sync)
            .with_context(|| format!("creating the write-ahead file in {}", ctx.data.display()))?;
    }
    let mut watcher = RaceWatcher::new(args.format);
    let result = race.run_watched(opts.fast, |e| watcher.event(e));
    watcher.finish();
    let result = result.context("race failed")?;
    print_race(&result, args.format).context("writing the results")?;
    match &result.archive {
        Some(archive) => archive_errors(archive),
        None => Ok(()),
    }
}

/// Prints the results of a race.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_race(report: &RaceReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(report);
    }
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.position.to_string(),
                r.driver.clone(),
                r.car.clone(),
                r.grid.to_string(),
                r.laps.to_string(),
                r.total_time_s.map_or("-".into(), lap_time),
                r.best_lap_s.map_or("-".into(), lap_time),
                gap_text(r.gap),
            ]
        })
        .collect();
    let mut text = format!(
        "{} ({:.0} m), {} laps, seed {}\n\n",
        report.track, report.track_length_m, report.laps, report.seed
    );
    text += &table(
        &[
            "Pos", "Driver", "Car", "Grid", "Laps", "Total", "Best lap", "Gap",
        ],
        &rows,
    );
    text += &format!(
        "\nideal lap {} | {} ticks ({:.1} s simulated) in {:.2} s wall: {:.0} ticks/s ({:.0}x real time)\n",
        lap_time(f64::from(report.ideal_lap_s)),
        report.ticks,
        report.sim_seconds,
        report.wall_seconds,
        report.ticks_per_second,
        report.sim_seconds / report.wall_seconds.max(1e-9),
    );
    if let Some(a) = &report.archive {
        text += &format!(
            "archived {} laps ({} rows), session {}; writer stalls {}, errors {}\n",
            a.laps_written,
            a.rows_written,
            report.session,
            a.stalls,
            a.errors.len()
        );
    }
    emit(&text)
}
