//! Recovery: write-ahead files whose owner is gone are read, their laps archived (closed laps
//! complete, the rest partial), and removed; a file that cannot be read is quarantined with
//! the reason beside it.

use super::*;
use crate::archive::index::{Index, SessionRow};
use crate::archive::lock::{self, Lock, Owner};
use crate::archive::{ArchiveError, Date, LapMeta, Source};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct RecoveryReport {
    /// Write-ahead files recovered (their owner was gone).
    pub files: usize,
    /// Write-ahead files left alone because a live process holds them.
    pub live: usize,
    /// Laps written from them (closed laps complete, the rest partial).
    pub laps: usize,
    /// Of those, laps that had closed and were restored complete.
    pub closed_laps: usize,
    /// Rows in those laps.
    pub rows: usize,
    /// Batches lost to a torn tail (0 or 1 per file).
    pub torn_tails: usize,
    /// Files moved to `wal/quarantine/`, with why.
    pub quarantined: Vec<String>,
    /// Files that could not be recovered now (the archive could not be written); they stay.
    pub errors: Vec<String>,
}

/// Recovers every write-ahead file under `data` whose owner is gone into archived laps and
/// removes it; files held by a live process are left alone. A corrupt or foreign file is
/// moved to `wal/quarantine/`; a file whose laps cannot be written now stays for the next
/// attempt. Neither stops the others.
///
/// # Errors
/// [`ArchiveError`] when no owner lock can be taken for the temporary files.
pub fn recover(data: &Path, index: &Index) -> Result<RecoveryReport, ArchiveError> {
    let mut report = RecoveryReport::default();
    let dir = data.join("wal");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(report);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "arrows"))
        .collect();
    if files.is_empty() {
        return Ok(report);
    }
    files.sort();
    let owner = Owner::acquire(data)?;
    for path in files {
        let Ok(file) = File::open(&path) else {
            continue; // recovered by someone else meanwhile
        };
        match lock::try_lock(&file) {
            Ok(Lock::Taken) if lock::still_linked(&file) => {}
            Ok(Lock::Taken) => continue,
            Ok(Lock::Busy) => {
                report.live += 1;
                continue;
            }
            Err(e) => {
                report.errors.push(format!("{}: lock: {e}", path.display()));
                continue;
            }
        }
        match read_wal(&file) {
            Ok(wal) => match archive_wal(data, index, &owner, wal, &mut report) {
                Ok(()) => {
                    report.files += 1;
                    if let Err(e) = fs::remove_file(&path) {
                        report.errors.push(format!("{}: {e}", path.display()));
                    }
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "write-ahead file not recovered; it stays for the next attempt");
                    report.errors.push(e.to_string());
                }
            },
            Err(problem) => {
                tracing::error!(file = %path.display(), %problem, "write-ahead file quarantined");
                match quarantine(&path, &problem.to_string()) {
                    Ok(to) => report
                        .quarantined
                        .push(format!("{}: {problem}", to.display())),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        drop(file);
    }
    Ok(report)
}

/// Moves a write-ahead file to `wal/quarantine/` with a `.reason` file beside it.
pub(crate) fn quarantine(path: &Path, problem: &str) -> Result<PathBuf, ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new(".")).join("quarantine");
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let name = path.file_name().unwrap_or_default();
    let to = dir.join(name);
    fs::rename(path, &to).map_err(io_at(&to))?;
    let mut reason = to.as_os_str().to_owned();
    reason.push(".reason");
    let _ = fs::write(PathBuf::from(reason), format!("{problem}\n"));
    Ok(to)
}

/// Archives what a write-ahead file holds: each lap not yet indexed, complete if it closed.
pub(crate) fn archive_wal(
    data: &Path,
    index: &Index,
    owner: &Owner,
    wal: WalContents,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    let session = wal.session;
    if wal.torn_tail {
        report.torn_tails += 1;
    }
    let source = Source::parse(&session.source).unwrap_or(Source::Sim);
    index.ensure_session(&SessionRow {
        id: session.session,
        source: session.source.clone(),
        track: session.track.clone(),
        car_model: session.car_model.clone(),
        lap_limit: None,
        seed: None,
        started_at: session.started_at,
        finished_at: None,
        sectors: Vec::new(),
        identity: None,
        template_id: None,
        ended_by: None,
        laps_pruned_at: None,
    })?;
    let date = Date::parse(&session.date).unwrap_or_else(Date::today);
    for ((car, row_lap), columns) in wal.laps {
        let closure = wal.closed.get(&(car, row_lap));
        let lap = closure.map_or(row_lap, |c| c.lap);
        if index.has_lap(session.session, car, lap)? {
            continue; // archived before the stop
        }
        let meta = LapMeta {
            source,
            session: session.session,
            car,
            car_model: session.car_model.clone(),
            driver: session
                .drivers
                .get(usize::from(car))
                .cloned()
                .unwrap_or_default(),
            track: session.track.clone(),
            track_length_m: session.track_length_m,
            lap,
            lap_time_s: closure.and_then(|c| c.lap_time_s),
            complete: closure.is_some_and(|c| c.complete),
            valid: closure.is_some_and(|c| c.valid),
            date,
        };
        // A complete file of this lap is already in place (written, not yet indexed): index
        // it as it is, never overwrite it.
        let path = crate::archive::lap_path(data, &meta);
        if let Ok((existing, rows)) = crate::archive::read_lap_meta(&path)
            && existing.complete
        {
            index.put_lap(&existing, path.strip_prefix(data).unwrap_or(&path), rows)?;
            continue;
        }
        let rows = columns.len();
        let file = crate::archive::write_lap_as(data, owner, &meta, columns)?;
        index.put_lap(&meta, file.strip_prefix(data).unwrap_or(&file), rows)?;
        report.laps += 1;
        report.closed_laps += usize::from(meta.complete);
        report.rows += rows;
    }
    Ok(())
}

/// [`recover`], with what it did logged: recovered files as a warning, quarantined files and
/// files that could not be recovered as errors.
///
/// # Errors
/// As [`recover`].
pub fn recover_logged(data: &Path, index: &Index) -> Result<RecoveryReport, ArchiveError> {
    let report = recover(data, index)?;
    if report.files > 0 {
        tracing::warn!(
            files = report.files,
            laps = report.laps,
            closed_laps = report.closed_laps,
            torn_tails = report.torn_tails,
            "recovered write-ahead files of processes that are gone"
        );
    }
    for q in &report.quarantined {
        tracing::error!("quarantined write-ahead file {q}");
    }
    for e in &report.errors {
        tracing::error!("write-ahead file not recovered: {e}");
    }
    Ok(report)
}
