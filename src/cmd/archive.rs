//! `apexsim archive ls` (sessions, their status and laps) and `apexsim archive prune` (sessions
//! past a retention period, with every file derived from their laps).

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::archive::index::{Index, IndexedLap, SessionRow};
use clap::Subcommand;
use serde::Serialize;

use super::Context;
use super::print::{Format, emit, emit_json, lap_time, table};

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
        #[arg(long, default_value = "168h", value_name = "DURATION", value_parser = retention)]
        older_than: Duration,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// A retention period: `168h`, `7d`, `90m`, `3600s`.
fn retention(s: &str) -> Result<Duration, String> {
    apexsim::archive::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 168h, 7d, 90m or 3600s"))
}

/// Runs an archive command.
///
/// # Errors
/// A usage error for a bad duration; the index's failures.
pub fn run(cmd: ArchiveCommand, ctx: &Context) -> anyhow::Result<()> {
    let data = &ctx.data;
    let index =
        Index::open(data).with_context(|| format!("opening the archive in {}", data.display()))?;
    // Sessions of processes that are gone are recovered first, so that what they hold is
    // listed (or pruned) with them; sessions of live processes are left alone.
    match cmd {
        ArchiveCommand::Ls { session, format } => {
            apexsim::archive::wal::recover_logged(data, &index)
                .context("recovering write-ahead files")?;
            let sessions = index.sessions().context("listing sessions")?;
            let laps = index.laps(session).context("listing laps")?;
            let live: Vec<uuid::Uuid> = sessions
                .iter()
                .filter(|s| s.finished_at.is_none() && apexsim::archive::wal::is_live(data, s.id))
                .map(|s| s.id)
                .collect();
            print_archive(&sessions, &live, &laps, session, format)
                .context("writing the archive list")
        }
        ArchiveCommand::Prune { older_than, format } => {
            let cutoff = apexsim::runner::unix_now()
                .saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX));
            apexsim::archive::wal::recover_logged(data, &index)
                .context("recovering write-ahead files")?;
            let pruned = apexsim::archive::prune(data, &index, cutoff).context("pruning")?;
            print_prune(&pruned, format).context("writing the prune report")
        }
    }
}

/// Prints what a prune removed.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_prune(report: &apexsim::archive::PruneReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(report);
    }
    let live = match report.live_sessions {
        0 => String::new(),
        n => format!(" ({n} older sessions kept: a live process is writing them)"),
    };
    emit(&format!(
        "pruned {} sessions, {} lap files, {:.1} MB{live}\n",
        report.sessions,
        report.laps,
        report.bytes as f64 / 1e6
    ))
}

/// A session with its status: `finished`, `live` (a process is writing it) or `unfinished`
/// (ended in an error or cut short; its laps so far are archived).
#[derive(Serialize)]
struct SessionListing<'a> {
    #[serde(flatten)]
    session: &'a SessionRow,
    status: &'static str,
}

#[derive(Serialize)]
struct ArchiveListing<'a> {
    sessions: Vec<SessionListing<'a>>,
    laps: &'a [IndexedLap],
}

/// Prints the archived sessions (with lap counts and best laps), and the laps of one session
/// when `session` is given.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_archive(
    sessions: &[SessionRow],
    live: &[uuid::Uuid],
    laps: &[IndexedLap],
    session: Option<uuid::Uuid>,
    format: Format,
) -> io::Result<()> {
    let shown: Vec<SessionListing<'_>> = sessions
        .iter()
        .filter(|s| session.is_none_or(|id| s.id == id))
        .map(|s| SessionListing {
            session: s,
            status: match (s.finished_at, live.contains(&s.id)) {
                (Some(_), _) => "finished",
                (None, true) => "live",
                (None, false) => "unfinished",
            },
        })
        .collect();
    if format == Format::Json {
        return emit_json(&ArchiveListing {
            sessions: shown,
            laps,
        });
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|listed| {
            let s = listed.session;
            let mine: Vec<&IndexedLap> = laps.iter().filter(|l| l.session == s.id).collect();
            let best = mine
                .iter()
                .filter(|l| l.valid)
                .filter_map(|l| l.lap_time_s)
                .fold(None, |b: Option<f64>, t| Some(b.map_or(t, |b| b.min(t))));
            vec![
                s.id.to_string(),
                listed.status.to_owned(),
                s.source.clone(),
                s.track.clone(),
                s.car_model.clone(),
                apexsim::archive::Date::from_unix(s.started_at).to_string(),
                mine.len().to_string(),
                mine.iter().filter(|l| l.complete).count().to_string(),
                best.map_or("-".into(), lap_time),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "Session", "Status", "Source", "Track", "Car", "Date", "Laps", "Complete", "Best lap",
        ],
        &rows,
    );
    if session.is_some() {
        text.push('\n');
        text += &table(
            &[
                "Car", "Driver", "Lap", "Time", "Complete", "Valid", "Rows", "File",
            ],
            &laps
                .iter()
                .map(|l| {
                    vec![
                        l.car.to_string(),
                        l.driver.clone(),
                        l.lap.to_string(),
                        l.lap_time_s.map_or("-".into(), lap_time),
                        l.complete.to_string(),
                        l.valid.to_string(),
                        l.rows.to_string(),
                        l.file.display().to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    emit(&text)
}
