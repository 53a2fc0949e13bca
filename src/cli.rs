//! Command-line interface: the `apexsim` commands and their arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::race::RaceOptions;

/// ApexSim: sim racing simulation, telemetry and analysis.
#[derive(Debug, Parser)]
#[command(name = "apexsim", version, about)]
pub struct Cli {
    /// Content directory (cars, tracks, templates). Defaults to `content/` in the working
    /// directory, else the content shipped with the source.
    #[arg(long, global = true, value_name = "DIR")]
    pub content: Option<PathBuf>,
    /// Data directory: the lap archive and its index.
    #[arg(long, global = true, value_name = "DIR", default_value = "data")]
    pub data: PathBuf,
    /// How often a writing session fsyncs its write-ahead file: a duration (`1s`, `250ms`),
    /// `0` after every flush, or `off`. A killed process loses at most the last flush (250 ms)
    /// whatever this says; a machine that goes down loses at most this much more.
    #[arg(long, global = true, value_name = "INTERVAL", default_value = "1s", value_parser = parse_wal_sync)]
    pub wal_sync: crate::archive::wal::WalSync,
    /// Log more (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

fn parse_wal_sync(s: &str) -> Result<crate::archive::wal::WalSync, String> {
    crate::archive::wal::WalSync::parse(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 1s or 250ms, 0, or off"))
}

/// Output format of commands that print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned text table.
    #[default]
    Table,
    /// JSON on one line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an offline race between AI drivers and print the results.
    Race(RaceArgs),
    /// Validate the content directory and list what it holds.
    Content {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Inspect the lap archive.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Archive the laps of iRacing recordings (.ibt files, or folders of them).
    Ingest(IngestArgs),
    /// Lap metrics: one row per lap and a summary per track and car.
    Analyze(AnalyzeArgs),
    /// Two laps of one track: where time was gained and lost, and plots.
    Compare(CompareArgs),
    /// Bring laps recorded by other tools into the archive.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Build tracks.
    #[command(subcommand)]
    Track(TrackCommand),
    /// Run the race server: sessions over QUIC, health and metrics over HTTP.
    Serve(ServeArgs),
    /// Client bots that race on a server (and load-test it).
    Drive(DriveArgs),
    /// Archive laps from live iRacing telemetry (Windows, with iRacing running).
    Live {
        /// Store the driver's name instead of a pseudonym.
        #[arg(long)]
        keep_driver_names: bool,
        /// Upload every complete lap and its metrics to this Racing Coach server.
        #[arg(long, value_name = "URL")]
        upload: Option<String>,
    },
    /// Racing Coach account of this device: log in (device authorization), log out, status.
    #[command(subcommand)]
    Coach(CoachCommand),
    /// The upload outbox: laps waiting for or refused by a Racing Coach server.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

/// `apexsim coach ...`
#[derive(Debug, Subcommand)]
pub enum CoachCommand {
    /// Logs this device in: shows a code to confirm in the browser, waits for it, and stores
    /// the device token (readable only by you) for uploads to that server.
    Login {
        /// The Racing Coach server.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The name the device is registered under (default: `apexsim on HOSTNAME`).
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Forgets the token of a server (of every server without `--server`).
    Logout {
        /// The Racing Coach server.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Shows the servers this device is logged in to, each server's health, and the outbox.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `apexsim outbox ...`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Lists the laps waiting for upload or refused, with their last error.
    Ls {
        /// Delivered laps too.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Sends again now: one lap by its outbox id, or every waiting and refused lap.
    Retry {
        /// Outbox id (from `outbox ls`).
        id: Option<i64>,
        /// How long to keep delivering laps that fail again before leaving them in the outbox.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
        wait: Duration,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// A duration like `30s`, `5m` or `250ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))
}

/// `apexsim track` commands.
#[derive(Debug, Subcommand)]
pub enum TrackCommand {
    /// Build a track for the content directory from a clean lap of an iRacing recording.
    FromIbt {
        /// The recording (.ibt).
        file: PathBuf,
        /// The lap, by the recording's lap number (as `apexsim ingest` lists it).
        #[arg(long)]
        lap: i32,
        /// Directory name of the new track under `<content>/tracks/` (a-z, 0-9, _).
        #[arg(long)]
        name: String,
        /// Track width in metres (the recording does not hold it).
        #[arg(long, default_value_t = 12.0)]
        width: f32,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

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
    /// Upload every complete lap and its metrics to this Racing Coach server (recordings
    /// archived before are queued too).
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,
    /// After the ingest, how long to keep delivering laps that fail before leaving them in
    /// the outbox (`apexsim outbox retry` sends them later).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub upload_wait: Duration,
}

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
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

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
        #[arg(long, value_delimiter = ',', value_name = "FRACTIONS")]
        sectors: Vec<f32>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `apexsim archive` commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// List the archived sessions and their laps.
    Ls {
        /// Only this session (its id).
        #[arg(long)]
        session: Option<uuid::Uuid>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete sessions (their lap files and index rows) older than a retention period.
    Prune {
        /// Age beyond which sessions go: `168h`, `7d`, `90m`, `3600s`.
        #[arg(long, default_value = "168h", value_name = "DURATION")]
        older_than: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

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
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub speed: f64,
    /// Race time limit in seconds: after it, the leader's next crossing ends the race.
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Do not archive the race's laps.
    #[arg(long)]
    pub no_archive: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

impl RaceArgs {
    /// The race these arguments describe.
    ///
    /// # Errors
    /// A message when the time limit is not a positive number of seconds.
    pub fn options(&self) -> Result<RaceOptions, String> {
        let time_limit = match self.time_limit {
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(format!(
                    "--time-limit {s} is not a positive number of seconds"
                ));
            }
            None => None,
        };
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= 1000.0) {
            return Err(format!(
                "--speed {} is not a factor between 0 and 1000",
                self.speed
            ));
        }
        Ok(RaceOptions {
            track: self.track.clone(),
            car: self.car.clone(),
            cars: self.cars,
            laps: self.laps,
            seed: self.seed,
            fast: self.fast,
            speed: self.speed,
            time_limit,
            session_id: Some(uuid::Uuid::new_v4()),
        })
    }
}

/// Arguments of `apexsim serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The configuration file; without it, `server.toml` in the working directory if present,
    /// else the defaults.
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Log level (trace, debug, info, warn, error), overriding `logging.level`.
    #[arg(short = 'l', long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// QUIC address to bind, overriding `network.bind` (the seed's TCP and UDP ports are one
    /// QUIC port).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<std::net::SocketAddr>,
    /// QUIC port, overriding the port of `network.bind` (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// HTTP port for /health, /ready and /metrics, overriding `network.http_bind`.
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Output format of the start line and the final report.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Arguments of `apexsim drive`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriveArgs {
    /// The server's QUIC address.
    #[arg(long, value_name = "ADDR")]
    pub server: std::net::SocketAddr,
    /// Number of bots, each its own connection.
    #[arg(long, default_value_t = 1)]
    pub bots: usize,
    /// The first bot creates a session (the default).
    #[arg(long, conflicts_with = "join")]
    pub create: bool,
    /// Join this session instead of creating one.
    #[arg(long, value_name = "SESSION_ID")]
    pub join: Option<uuid::Uuid>,
    /// Track of the created session (slug, name or id).
    #[arg(long, default_value = "oval_simple")]
    pub track: String,
    /// Laps of the created session.
    #[arg(long, default_value_t = 1)]
    pub laps: u8,
    /// AI cars filling the created session's grid.
    #[arg(long, default_value_t = 0)]
    pub ai: u8,
    /// Trust the server's certificate from this PEM file.
    #[arg(long, value_name = "PEM", conflicts_with_all = ["fingerprint", "insecure"])]
    pub cert: Option<std::path::PathBuf>,
    /// Trust the server's certificate by its SHA-256 (as `serve` prints it).
    #[arg(long, value_name = "HEX", conflicts_with = "insecure")]
    pub fingerprint: Option<String>,
    /// Trust any certificate (local tests only).
    #[arg(long)]
    pub insecure: bool,
    /// Access token.
    #[arg(long, default_value = "")]
    pub token: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}
