//! `apexsim ingest` (iRacing recordings into the archive, optionally uploaded), `apexsim live`
//! (live iRacing telemetry, Windows) and `apexsim import racing-coach` (the Racing Coach
//! client's lap files).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::archive::outbox::Outbox;
use apexsim::ingest::{FileOutcome, IngestOptions, IngestReport};
use clap::Subcommand;

use super::board::Progress;
use super::coach::Upload;
use super::print::{Format, emit, emit_json, lap_time, table};
use super::{Context, UsageError, archive_errors, parse_duration};

/// Arguments of `apexsim ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Recordings: .ibt files or folders (searched recursively for .ibt files).
    #[arg(required = true, value_name = "FILE_OR_FOLDER")]
    pub paths: Vec<PathBuf>,
    /// Store drivers' names instead of stable pseudonyms.
    #[arg(long)]
    pub keep_driver_names: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Upload every complete, valid lap and its metrics to this Racing Coach server
    /// (recordings archived before are queued too).
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,
    /// Upload invalid laps too (a reset, a tow, off track); by default they are recorded in
    /// the outbox as skipped, with the reason.
    #[arg(long, requires = "upload")]
    pub upload_invalid: bool,
    /// After the ingest, how long to keep delivering laps that fail before leaving them in
    /// the outbox (`apexsim outbox retry` sends them later).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub upload_wait: Duration,
}

/// Arguments of `apexsim live`.
#[derive(Debug, clap::Args)]
pub struct LiveArgs {
    /// Store the driver's name instead of a pseudonym.
    #[arg(long)]
    pub keep_driver_names: bool,
    /// Upload every complete, valid lap and its metrics to this Racing Coach server.
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,
    /// Upload invalid laps too.
    #[arg(long, requires = "upload")]
    pub upload_invalid: bool,
}

/// `apexsim import` commands.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Laps written by the Racing Coach client (its Parquet schema: one file per lap); the
    /// files of one folder are one session.
    RacingCoach {
        /// Parquet files or folders (searched recursively for .parquet files).
        #[arg(required = true, value_name = "FILE_OR_FOLDER")]
        paths: Vec<PathBuf>,
        /// Track name (the files do not hold it).
        #[arg(long)]
        track: String,
        /// Car name.
        #[arg(long, default_value = "unknown")]
        car: String,
        /// Driver name (or pseudonym).
        #[arg(long, default_value = "unknown")]
        driver: String,
        /// Where sectors 2, 3... start, as fractions of the lap: `--sectors 0.33,0.67`.
        #[arg(long, value_delimiter = ',', value_name = "FRACTIONS", value_parser = sector_start)]
        sectors: Vec<f32>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// A sector start: a fraction of the lap above 0 and below 1.
fn sector_start(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!("{s}: a fraction of the lap above 0 and below 1")),
    }
}

/// How `ingest` and `live` upload: where, which laps, how long the uploads may go on at the
/// end, and whether Ctrl-C during the archiving ends the process.
struct UploadArgs<'a> {
    url: Option<&'a str>,
    invalid_laps: bool,
    drain: Duration,
    exit_on_interrupt: bool,
}

/// The ingest options of `ingest` and `live`, and their upload pipeline when they upload (its
/// wiring goes to the archive writer).
fn archiving(
    ctx: &Context,
    keep_driver_names: bool,
    upload: &UploadArgs<'_>,
) -> anyhow::Result<(IngestOptions, Option<Upload>)> {
    let upload = Upload::start(
        ctx,
        upload.url,
        upload.invalid_laps,
        upload.drain,
        upload.exit_on_interrupt,
    )?;
    let opts = IngestOptions {
        keep_driver_names,
        wal_sync: ctx.wal_sync,
        wiring: upload
            .as_ref()
            .map(|u| u.pipeline.wiring())
            .unwrap_or_default(),
    };
    Ok((opts, upload))
}

/// `apexsim ingest`: every recording archived, its laps uploaded with `--upload`.
///
/// # Errors
/// A usage error for paths without recordings; a failed file or archive write.
pub fn ingest(args: &IngestArgs, ctx: &Context) -> anyhow::Result<()> {
    let files =
        apexsim::ingest::collect_files(&args.paths).map_err(|e| UsageError(e.to_string()))?;
    if files.is_empty() {
        return Err(UsageError("no .ibt files found in the given paths".into()).into());
    }
    let upload = UploadArgs {
        url: args.upload.as_deref(),
        invalid_laps: args.upload_invalid,
        drain: args.upload_wait,
        exit_on_interrupt: true,
    };
    let (opts, upload) = archiving(ctx, args.keep_driver_names, &upload)?;
    let mut bar = Progress::new("ingest");
    let report = apexsim::ingest::ingest(&files, &ctx.data, &opts, |done, total, records| {
        bar.update(done, total, records)
    })
    .with_context(|| format!("opening the archive in {}", ctx.data.display()))?;
    bar.finish();
    print_ingest(&report, args.format).context("writing the ingest report")?;
    if let Some(u) = upload {
        // Recordings archived before are queued too: an upload is idempotent.
        let outbox = Outbox::open(&ctx.data).context("opening the outbox")?;
        for f in &report.files {
            if let FileOutcome::Skipped { session } = f.outcome {
                outbox
                    .enqueue_session(session, &u.target)
                    .context("queueing archived laps")?;
            }
        }
        u.finish(args.format)?;
    }
    ingest_outcome(&report)
}

/// `apexsim live`: archives live telemetry until Ctrl-C, uploading with `--upload`.
///
/// # Errors
/// The live loop's failures; refused uploads.
pub fn live(args: &LiveArgs, ctx: &Context) -> anyhow::Result<()> {
    // Ctrl-C is how a live session ends: the live loop archives it, then the uploads stop
    // after the lap in flight and the rest waits in the outbox.
    let upload = UploadArgs {
        url: args.upload.as_deref(),
        invalid_laps: args.upload_invalid,
        drain: Duration::from_secs(30),
        exit_on_interrupt: false,
    };
    let (opts, upload) = archiving(ctx, args.keep_driver_names, &upload)?;
    let report = apexsim::ingest::live::run(&ctx.data, &opts)?;
    print_live(&report).context("writing the live report")?;
    if let Some(u) = upload {
        u.finish(Format::Table)?;
    }
    Ok(())
}

/// `apexsim import ...`.
///
/// # Errors
/// A usage error for sectors out of order or unreadable inputs; a failed file or write.
pub fn import(cmd: ImportCommand, ctx: &Context) -> anyhow::Result<()> {
    let ImportCommand::RacingCoach {
        paths,
        track,
        car,
        driver,
        sectors,
        format,
    } = cmd;
    if sectors.windows(2).any(|w| w[0] >= w[1]) {
        return Err(
            UsageError("--sectors: fractions of the lap in increasing order".into()).into(),
        );
    }
    let opts = apexsim::ingest::racing_coach::ImportOptions {
        track,
        car,
        driver,
        sectors,
    };
    let report = apexsim::ingest::racing_coach::import(&paths, &ctx.data, &opts)
        .map_err(|e| UsageError(e.to_string()))?;
    print_ingest(&report, format).context("writing the import report")?;
    ingest_outcome(&report)
}

/// The exit status of an ingest or import: an error when a file failed or an archive write did.
fn ingest_outcome(report: &IngestReport) -> anyhow::Result<()> {
    let failed = report.failed();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} file(s) could not be read",
            report.files.len()
        );
    }
    match &report.archive {
        Some(archive) => archive_errors(archive),
        None => Ok(()),
    }
}

/// Prints what an ingest did: one line per file (laps, valid laps, lap times, or why it
/// failed), then the totals.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_ingest(report: &apexsim::ingest::IngestReport, format: Format) -> io::Result<()> {
    use apexsim::ingest::FileOutcome;
    if format == Format::Json {
        return emit_json(report);
    }
    let rows: Vec<Vec<String>> = report
        .files
        .iter()
        .map(|f| {
            let name = f.path.file_name().map_or_else(
                || f.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            match &f.outcome {
                FileOutcome::Ingested { info, laps, .. } => {
                    let times: Vec<String> = laps
                        .iter()
                        .map(|l| {
                            let t = lap_time(l.time_s);
                            if l.valid {
                                t
                            } else {
                                format!("({t} invalid: {})", l.invalid_because.join(", "))
                            }
                        })
                        .collect();
                    vec![
                        name,
                        "ingested".into(),
                        info.track_name.clone(),
                        info.car.clone(),
                        laps.len().to_string(),
                        laps.iter().filter(|l| l.valid).count().to_string(),
                        if times.is_empty() {
                            "-".into()
                        } else {
                            times.join(" ")
                        },
                    ]
                }
                FileOutcome::InProgress { .. } => vec![
                    name,
                    "being ingested by another process".into(),
                    String::new(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ],
                FileOutcome::Skipped { .. } => vec![
                    name,
                    "already archived".into(),
                    String::new(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ],
                FileOutcome::Failed { error } => vec![
                    name,
                    "FAILED".into(),
                    error.clone(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ],
            }
        })
        .collect();
    let mut text = table(
        &[
            "File",
            "Status",
            "Track",
            "Car",
            "Laps",
            "Valid",
            "Lap times",
        ],
        &rows,
    );
    let (laps, valid) = report.laps();
    let archived = report.archive.as_ref().map_or(0, |a| a.laps_written);
    text += &format!(
        "\n{} files ({} failed): {laps} complete laps, {valid} valid, {archived} archived; \
         {} records ({:.0} s recorded) in {:.2} s = {:.0} records/s\n",
        report.files.len(),
        report.failed(),
        report.records,
        report.recorded_s,
        report.wall_s,
        report.records as f64 / report.wall_s.max(1e-9),
    );
    emit(&text)
}

/// Prints what a live session archived.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_live(r: &apexsim::ingest::live::LiveReport) -> io::Result<()> {
    let rows: Vec<Vec<String>> = r
        .laps
        .iter()
        .map(|l| {
            vec![
                l.lap.to_string(),
                lap_time(l.time_s),
                if l.valid {
                    "valid".into()
                } else {
                    format!("invalid: {}", l.invalid_because.join(", "))
                },
            ]
        })
        .collect();
    let mut text = table(&["Lap", "Time", "Validity"], &rows);
    text += &format!(
        "\nsession {} at {} in {}: {} frames, {} laps archived\n",
        r.session, r.info.track_name, r.info.car, r.records, r.archive.laps_written
    );
    emit(&text)
}
