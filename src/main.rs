//! The `apexsim` binary: parses the command line, sets up logging, runs the command (one file
//! per command under `cmd/`) and maps errors to exit codes (0 ok, 1 failure, 2 bad arguments
//! or content).

use std::path::PathBuf;
use std::process::ExitCode;

use apexsim::archive::wal::WalSync;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cmd;

use cmd::{Context, UsageError, print::Format};

/// ApexSim: sim racing simulation, telemetry and analysis.
#[derive(Debug, Parser)]
#[command(name = "apexsim", version, about)]
struct Cli {
    /// Content directory (cars, tracks, templates). Defaults to `content/` in the working
    /// directory, else the content shipped with the source.
    #[arg(long, global = true, value_name = "DIR")]
    content: Option<PathBuf>,
    /// Data directory: the lap archive and its index.
    #[arg(long, global = true, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// How often a writing session fsyncs its write-ahead file: a duration (`1s`, `250ms`),
    /// `0` after every flush, or `off`. A killed process loses at most the last flush (250 ms)
    /// whatever this says; a machine that goes down loses at most this much more.
    #[arg(long, global = true, value_name = "INTERVAL", default_value = "1s", value_parser = parse_wal_sync)]
    wal_sync: WalSync,
    /// Log more (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The command.
    #[command(subcommand)]
    command: Command,
}

fn parse_wal_sync(s: &str) -> Result<WalSync, String> {
    WalSync::parse(s).ok_or_else(|| format!("{s:?} is not a duration like 1s or 250ms, 0, or off"))
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run an offline race between AI drivers and print the results.
    Race(cmd::race::RaceArgs),
    /// Validate the content directory and list what it holds.
    Content {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Inspect the lap archive.
    #[command(subcommand)]
    Archive(cmd::archive::ArchiveCommand),
    /// Archive the laps of iRacing recordings (.ibt files, or folders of them).
    Ingest(cmd::ingest::IngestArgs),
    /// Lap metrics: one row per lap and a summary per track and car.
    Analyze(cmd::analyze::AnalyzeArgs),
    /// Two laps of one track: where time was gained and lost, and plots.
    Compare(cmd::compare::CompareArgs),
    /// Bring laps recorded by other tools into the archive.
    #[command(subcommand)]
    Import(cmd::ingest::ImportCommand),
    /// Build tracks.
    #[command(subcommand)]
    Track(cmd::content::TrackCommand),
    /// The REST API (/api/v1) over an archive, without a race server.
    Api(cmd::api::ApiArgs),
    /// Telemetry to the REST API: one record, or a simulated car's laps.
    #[command(subcommand)]
    Simulate(cmd::simulate::SimulateCommand),
    /// Run the race server: sessions over QUIC, health and metrics over HTTP.
    Serve(cmd::serve::ServeArgs),
    /// Client bots that race on a server (and load-test it).
    Drive(cmd::drive::DriveArgs),
    /// A bad network in front of a server: UDP relayed with loss, delay, jitter, duplication.
    Relay(cmd::relay::RelayArgs),
    /// Archive laps from live iRacing telemetry (Windows, with iRacing running).
    Live(cmd::ingest::LiveArgs),
    /// Racing Coach account of this device: log in (device authorization), log out, status.
    #[command(subcommand)]
    Coach(cmd::coach::CoachCommand),
    /// The upload outbox: laps waiting for or refused by a Racing Coach server.
    #[command(subcommand)]
    Outbox(cmd::coach::OutboxCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The server sets up its own logging from its configuration.
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let ctx = Context::new(cmd::content_dir(cli.content), cli.data, cli.wal_sync);
    let result = run(cli.command, &ctx);
    ctx.finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(command: Command, ctx: &Context) -> anyhow::Result<()> {
    match command {
        Command::Race(args) => cmd::race::run(&args, ctx),
        Command::Content { format } => cmd::content::list(format, ctx),
        Command::Archive(c) => cmd::archive::run(c, ctx),
        Command::Ingest(args) => cmd::ingest::ingest(&args, ctx),
        Command::Analyze(args) => cmd::analyze::run(&args, ctx),
        Command::Compare(args) => cmd::compare::run(&args, ctx),
        Command::Import(c) => cmd::ingest::import(c, ctx),
        Command::Track(c) => cmd::content::track(c, ctx),
        Command::Api(args) => cmd::api::run(&args, ctx),
        Command::Simulate(c) => cmd::simulate::run(&c, ctx),
        Command::Serve(args) => cmd::serve::run(&args, ctx),
        Command::Drive(args) => cmd::drive::run(&args, ctx),
        Command::Relay(args) => cmd::relay::run(&args, ctx),
        Command::Live(args) => cmd::ingest::live(&args, ctx),
        Command::Coach(c) => cmd::coach::coach(c, ctx),
        Command::Outbox(c) => cmd::coach::outbox(c, ctx),
    }
}
