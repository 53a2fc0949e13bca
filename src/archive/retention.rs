//! Retention: sessions older than a period removed with their lap files and every file derived
//! from their laps; live sessions are left alone.

use std::fs::{self};
use std::io;
use std::path::Path;

use super::ArchiveError;
use super::{index, wal};

/// The directory under an archive of the tables derived from its laps (one directory per
/// table, each partitioned as the laps are, files named by their session:
/// `<table>/source=…/track=…/date=…/<session>[_<part>].parquet`). The archive does not know
/// what they hold; it removes a session's files with its laps.
pub const DERIVED_DIR: &str = "metrics";

/// Removes every derived file of `session` in the partition `rel` (relative to a table's
/// directory), and the partition directories left empty; returns the bytes freed.
pub(crate) fn remove_derived(data: &Path, rel: &Path, session: &str) -> u64 {
    let mut freed = 0;
    let root = data.join(DERIVED_DIR);
    let Ok(tables) = fs::read_dir(&root) else {
        return 0;
    };
    for table in tables.flatten() {
        let dir = table.path().join(rel);
        let Ok(files) = fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with(session) && name.ends_with(".parquet") {
                let len = f.metadata().map_or(0, |m| m.len());
                if fs::remove_file(f.path()).is_ok() {
                    freed += len;
                }
            }
        }
        let mut d = Some(dir.as_path());
        while let Some(p) = d {
            if p == table.path() || fs::remove_dir(p).is_err() {
                break;
            }
            d = p.parent();
        }
    }
    freed
}

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct PruneReport {
    /// Sessions removed.
    pub sessions: usize,
    /// Lap files removed.
    pub laps: usize,
    /// Bytes freed.
    pub bytes: u64,
    /// Sessions old enough but left alone because a live process is writing them.
    pub live_sessions: usize,
}

/// Removes every session that started before `cutoff` (Unix seconds): its lap files and the
/// files derived from them ([`DERIVED_DIR`]), then its rows. Partition directories left empty
/// are removed too. A session that a live process is
/// writing (its write-ahead file is locked) is never removed, however old.
///
/// # Errors
/// [`ArchiveError`] when the index or a file cannot be changed; sessions already pruned stay
/// pruned.
pub fn prune(data: &Path, index: &index::Index, cutoff: i64) -> Result<PruneReport, ArchiveError> {
    prune_with(data, index, cutoff, Keep::Nothing)
}

/// What a prune keeps of the sessions it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: `apexsim archive prune`.
    Nothing,
    /// The sessions' summaries and results in the index (seed 003 section 11): the server's
    /// retention. The sessions are marked with when their laps went.
    Summaries {
        /// Unix seconds.
        now: i64,
    },
}

/// The server's retention (seed 003 section 11): every session that started before `cutoff`
/// loses its lap files, the files derived from them and its lap rows, while its summary and
/// results stay in the index (marked with `laps_pruned_at = now`). Sessions already pruned
/// and sessions a live process is writing are left alone.
///
/// # Errors
/// As [`prune`].
pub fn prune_laps(
    data: &Path,
    index: &index::Index,
    cutoff: i64,
    now: i64,
) -> Result<PruneReport, ArchiveError> {
    prune_with(data, index, cutoff, Keep::Summaries { now })
}

fn prune_with(
    data: &Path,
    index: &index::Index,
    cutoff: i64,
    keep: Keep,
) -> Result<PruneReport, ArchiveError> {
    let mut report = PruneReport::default();
    for session in index
        .sessions()?
        .into_iter()
        .filter(|s| s.started_at < cutoff && s.laps_pruned_at.is_none())
    {
        if wal::is_live(data, session.id) {
            report.live_sessions += 1;
            continue;
        }
        remove_files(
            data,
            session.id,
            &index.laps(Some(session.id))?,
            &mut report,
        )?;
        match keep {
            Keep::Nothing => index.delete_session(session.id)?,
            Keep::Summaries { now } => index.delete_laps(session.id, now)?,
        }
        report.sessions += 1;
    }
    Ok(report)
}

/// Removes one driver's laps of the sessions that started at or before `cutoff` (Unix
/// seconds; a session started this second is older than `0s`):
/// their lap files and rows, and the files derived from those sessions (the metric tables are
/// per session; `analyze` measures the laps left again). The sessions, their results and the
/// other drivers' laps stay. Sessions a live process is writing are left alone.
///
/// # Errors
/// [`ArchiveError`] when the index or a file cannot be changed; laps already removed stay
/// removed.
pub fn prune_driver(
    data: &Path,
    index: &index::Index,
    driver: &str,
    cutoff: i64,
) -> Result<PruneReport, ArchiveError> {
    let mut report = PruneReport::default();
    for session in index
        .sessions()?
        .into_iter()
        .filter(|s| s.started_at <= cutoff)
    {
        let laps: Vec<_> = index
            .laps(Some(session.id))?
            .into_iter()
            .filter(|l| l.driver == driver)
            .collect();
        if laps.is_empty() {
            continue;
        }
        if wal::is_live(data, session.id) {
            report.live_sessions += 1;
            continue;
        }
        remove_files(data, session.id, &laps, &mut report)?;
        index.delete_driver_laps(session.id, driver)?;
        report.sessions += 1;
    }
    Ok(report)
}

/// Removes the files of some laps of a session and the files derived from the session in their
/// partitions, counting them in `report`.
fn remove_files(
    data: &Path,
    session: uuid::Uuid,
    laps: &[index::IndexedLap],
    report: &mut PruneReport,
) -> Result<(), ArchiveError> {
    let mut partitions = std::collections::BTreeSet::new();
    for lap in laps {
        if let Some(rel) = Path::new(&lap.file)
            .parent()
            .and_then(|p| p.strip_prefix("laps").ok())
        {
            partitions.insert(rel.to_path_buf());
        }
        let (removed, bytes) = remove_lap_file(data, &lap.file)?;
        report.laps += removed;
        report.bytes += bytes;
    }
    let name = session.simple().to_string();
    for rel in &partitions {
        report.bytes += remove_derived(data, rel, &name);
    }
    Ok(())
}

/// Removes a lap file (relative to `data`) and the partition directories it leaves empty:
/// (1, its size) when it was there, (0, 0) when it was already gone.
fn remove_lap_file(data: &Path, file: &Path) -> Result<(usize, u64), ArchiveError> {
    let path = data.join(file);
    let bytes = fs::metadata(&path).map_or(0, |m| m.len());
    let removed = match fs::remove_file(&path) {
        Ok(()) => 1,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(source) => return Err(ArchiveError::Io { path, source }),
    };
    // Drop now-empty partition directories (date=, then track=, then source=).
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == data.join("laps") || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok((removed, if removed == 1 { bytes } else { 0 }))
}

/// Parses a duration such as `168h`, `7d`, `90m`, `3600s` or `1h 30m` (humantime's syntax).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(s.trim()).ok()
}
