//! Measuring an archive's laps for `analyze`: the lap files lacking stored metrics (all of
//! them with `--recompute`) are read (the metric columns only), measured on every core and
//! stored as the session's metric tables; a live session's laps are left to its writer.

use super::lap::METRIC_COLUMNS;
use super::query::{has_table, ints, scan, strs};
use super::store::{remove_session_files, write_tables};
use super::{LapMetrics, Thresholds, lap_metrics};
use crate::archive::{LapMeta, read_lap_columns};
use polars::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Lap files under `dir` (recursively), sorted; with a track, only its partition.
pub(crate) fn lap_files(laps: &Path, track: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![laps.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let pruned = track.is_some_and(|t| {
                    name.starts_with("track=") && name.as_ref() != format!("track={t}")
                });
                if !pruned {
                    stack.push(p);
                }
            } else if name.ends_with(".parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A lap measured: its identity and metrics, or why not (naming the file).
type Measured = Result<(LapMeta, LapMetrics), String>;

/// Reads a lap file's metric columns and measures it.
fn measure(file: &Path, sectors: &[f32], th: &Thresholds) -> Measured {
    let (meta, cols) = read_lap_columns(file, Some(&METRIC_COLUMNS)).map_err(|e| e.to_string())?;
    let m = lap_metrics(&cols, meta.track_length_m, meta.complete, sectors, th)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((meta, m))
}

/// Measures lap files on every core, results in the files' order.
pub(crate) fn measure_all(files: &[PathBuf], sectors: &[f32], th: &Thresholds) -> Vec<Measured> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(files.len())
        .max(1);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|f| measure(f, sectors, th))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("a measuring thread panicked".to_owned())])
            })
            .collect()
    })
}

/// The laps that have stored metrics: `(session, car, lap)`, read with polars (three columns
/// of the `laps` table).
fn stored_laps(data: &Path) -> HashSet<(Uuid, i32, i32)> {
    if !has_table(data, "laps") {
        return HashSet::new();
    }
    let Ok(df) = scan(data, "laps").and_then(|lf| {
        lf.select([col("session"), col("car"), col("lap")])
            .collect()
    }) else {
        return HashSet::new();
    };
    let (Ok(session), Ok(car), Ok(lap)) =
        (strs(&df, "session"), ints(&df, "car"), ints(&df, "lap"))
    else {
        return HashSet::new();
    };
    (0..df.height())
        .filter_map(|i| Some((Uuid::parse_str(&session[i]).ok()?, car[i], lap[i])))
        .collect()
}

/// `(session, car, lap)` from a lap file's name (`<session>_<car>_lap<N>.parquet`).
fn lap_key(file: &Path) -> Option<(Uuid, i32, i32)> {
    let stem = file.file_stem()?.to_str()?;
    let mut parts = stem.split('_');
    let session = Uuid::parse_str(parts.next()?).ok()?;
    let car = parts.next()?.parse().ok()?;
    let lap = parts.next()?.strip_prefix("lap")?.parse().ok()?;
    Some((session, car, lap))
}

/// What [`ensure_metrics`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ensured {
    /// Laps measured and stored.
    pub computed: usize,
    /// Laps of live sessions whose metrics their writer has not stored yet (left to it).
    pub waiting: usize,
    /// Lap files that could not be measured, named, with the reason.
    pub errors: Vec<String>,
}

/// Measures the laps of the archive under `data` whose metrics are missing (every lap with
/// `recompute`) and stores them: a session is measured whole and stored as one file per table
/// and partition (`<session>.parquet`, replacing its parts). A session a live process is
/// writing is left to it: its writer stores its laps' metrics in parts, and `analyze` reports
/// the laps still waiting.
pub fn ensure_metrics(
    data: &Path,
    track: Option<&str>,
    th: &Thresholds,
    recompute: bool,
) -> Ensured {
    let laps_root = data.join("laps");
    let mut groups: BTreeMap<(PathBuf, String), Vec<PathBuf>> = BTreeMap::new();
    for file in lap_files(&laps_root, track) {
        let dir = file.parent().unwrap_or(&laps_root).to_owned();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let session = name.split('_').next().unwrap_or_default().to_owned();
        groups.entry((dir, session)).or_default().push(file);
    }
    let stored = if recompute {
        HashSet::new()
    } else {
        stored_laps(data)
    };
    let index = crate::archive::index::Index::open(data).ok();
    let mut report = Ensured::default();
    for ((dir, session), files) in groups {
        let rel = dir.strip_prefix(&laps_root).unwrap_or(&dir).to_owned();
        let missing: Vec<PathBuf> = files
            .iter()
            .filter(|f| recompute || !lap_key(f).is_some_and(|k| stored.contains(&k)))
            .cloned()
            .collect();
        if missing.is_empty() {
            continue;
        }
        let id = Uuid::parse_str(&session).ok();
        let sectors = id
            .zip(index.as_ref())
            .and_then(|(id, i)| i.session_sectors(id).ok())
            .unwrap_or_default();
        if id.is_some_and(|id| crate::archive::wal::is_live(data, id)) {
            // Its writer stores these laps' metrics (within METRICS_PART_AGE); storing them
            // here too would list them twice.
            report.waiting += missing.len();
            continue;
        }
        let mut good = Vec::with_capacity(files.len());
        for m in measure_all(&files, &sectors, th) {
            match m {
                Ok(m) => good.push(m),
                Err(e) => {
                    tracing::error!(error = %e, "lap not analysed");
                    report.errors.push(e);
                }
            }
        }
        report.computed += good.len();
        let result = write_tables(data, &rel, &session, &good).map(|()| {
            // The session's file now holds every lap: its parts go.
            remove_session_files(data, &rel, &session, &format!("{session}.parquet"));
        });
        if let Err(e) = result {
            report.errors.push(e.to_string());
        }
    }
    report
}
