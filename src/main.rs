//! The `apexsim` binary: parses the command line, sets up logging, runs the command and maps
//! errors to exit codes (0 ok, 1 failure, 2 bad arguments or content).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use apexsim::archive::index::Index;
use apexsim::archive::writer::ArchiveWriter;
use apexsim::cli::{ArchiveCommand, Cli, Command, TrackCommand};
use apexsim::content::Content;
use apexsim::{output, race};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// An error that is the user's: bad arguments or content (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
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

fn content_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        let local = PathBuf::from("content");
        if local.is_dir() {
            local
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("content")
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = content_dir(cli.content);
    let report = Content::load(&dir);
    match cli.command {
        Command::Race(args) => {
            for e in &report.errors {
                tracing::warn!("content: {e}");
            }
            let opts = args.options().map_err(UsageError)?;
            let mut race = race::Race::new(&report.content, &opts).map_err(|e| {
                if e.is_usage() {
                    anyhow::Error::new(UsageError(e.to_string()))
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            if !args.no_archive {
                let writer = ArchiveWriter::start(&cli.data)
                    .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
                race.archive_to(writer, cli.wal_sync).with_context(|| {
                    format!("creating the write-ahead file in {}", cli.data.display())
                })?;
            }
            let mut watcher = output::RaceWatcher::new(args.format);
            let result = race.run_watched(opts.fast, |e| watcher.event(e));
            watcher.finish();
            let result = result.context("race failed")?;
            output::print_race(&result, args.format).context("writing the results")?;
            if let Some(archive) = &result.archive
                && !archive.errors.is_empty()
            {
                anyhow::bail!(
                    "{} archive write(s) failed; first: {}",
                    archive.errors.len(),
                    archive.errors[0]
                );
            }
        }
        Command::Content { format } => {
            let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
            output::print_content(&report.content, &errors, format)
                .context("writing the content list")?;
            if !errors.is_empty() {
                return Err(UsageError(format!(
                    "{} problem(s) in {}",
                    errors.len(),
                    dir.display()
                ))
                .into());
            }
        }
        Command::Archive(ArchiveCommand::Ls { session, format }) => {
            let index = Index::open(&cli.data)
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            apexsim::archive::wal::recover_logged(&cli.data, &index)
                .context("recovering write-ahead files")?;
            let sessions = index.sessions().context("listing sessions")?;
            let laps = index.laps(session).context("listing laps")?;
            let live: Vec<uuid::Uuid> = sessions
                .iter()
                .filter(|s| {
                    s.finished_at.is_none() && apexsim::archive::wal::is_live(&cli.data, s.id)
                })
                .map(|s| s.id)
                .collect();
            output::print_archive(&sessions, &live, &laps, session, format)
                .context("writing the archive list")?;
        }
        Command::Archive(ArchiveCommand::Prune { older_than, format }) => {
            let age = apexsim::archive::parse_duration(&older_than).ok_or_else(|| {
                UsageError(format!(
                    "--older-than {older_than:?} is not a duration like 168h, 7d, 90m or 3600s"
                ))
            })?;
            let index = Index::open(&cli.data)
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
            // Sessions of processes that are gone are recovered first, so that what they hold
            // is pruned with them; sessions of live processes are left alone.
            apexsim::archive::wal::recover_logged(&cli.data, &index)
                .context("recovering write-ahead files")?;
            let pruned = apexsim::archive::prune(&cli.data, &index, cutoff).context("pruning")?;
            output::print_prune(&pruned, format).context("writing the prune report")?;
        }
        Command::Ingest(args) => {
            let files = apexsim::ingest::collect_files(&args.paths)
                .map_err(|e| UsageError(e.to_string()))?;
            if files.is_empty() {
                return Err(UsageError("no .ibt files found in the given paths".into()).into());
            }
            let opts = apexsim::ingest::IngestOptions {
                keep_driver_names: args.keep_driver_names,
                wal_sync: cli.wal_sync,
            };
            let mut bar = output::Progress::new("ingest");
            let report =
                apexsim::ingest::ingest(&files, &cli.data, &opts, |done, total, records| {
                    bar.update(done, total, records)
                })
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            bar.finish();
            output::print_ingest(&report, args.format).context("writing the ingest report")?;
            let failed = report.failed();
            if failed > 0 {
                anyhow::bail!("{failed} of {} file(s) could not be ingested", files.len());
            }
            if let Some(archive) = &report.archive
                && !archive.errors.is_empty()
            {
                anyhow::bail!(
                    "{} archive write(s) failed; first: {}",
                    archive.errors.len(),
                    archive.errors[0]
                );
            }
        }
        Command::Track(TrackCommand::FromIbt {
            file,
            lap,
            name,
            width,
            format,
        }) => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(UsageError(format!(
                    "--name {name:?}: use lowercase letters, digits and _"
                ))
                .into());
            }
            if !(3.0..=60.0).contains(&width) {
                return Err(UsageError(format!("--width {width}: use 3 to 60 metres")).into());
            }
            use apexsim::ingest::track::{TrackBuildError, from_ibt};
            let built = from_ibt(&file, lap, &name, width, &dir).map_err(|e| match e {
                TrackBuildError::NoLap { .. }
                | TrackBuildError::NotClean { .. }
                | TrackBuildError::Exists(_) => anyhow::Error::new(UsageError(e.to_string())),
                other => anyhow::Error::new(other),
            })?;
            // The new track must load like any other content.
            let check = Content::load(&dir);
            let problems: Vec<String> = check
                .errors
                .iter()
                .map(ToString::to_string)
                .filter(|e| e.contains(&name))
                .collect();
            if !problems.is_empty() {
                anyhow::bail!("the new track does not load: {}", problems.join("; "));
            }
            output::print_track_built(&built, format).context("writing the result")?;
        }
        Command::Live { keep_driver_names } => {
            let opts = apexsim::ingest::IngestOptions {
                keep_driver_names,
                wal_sync: cli.wal_sync,
            };
            let report = apexsim::ingest::live::run(&cli.data, &opts)?;
            output::print_live(&report).context("writing the live report")?;
        }
    }
    Ok(())
}
