//! The stored metrics: three Parquet tables beside the laps, in the same Hive layout, so
//! queries read them instead of recomputing:
//!
//! ```text
//! <data>/metrics/laps/source=…/track=…/date=…/<session>[_<part>].parquet           a row per lap
//! <data>/metrics/braking_zones/source=…/track=…/date=…/<session>[_<part>].parquet  a row per zone
//! <data>/metrics/corners/source=…/track=…/date=…/<session>[_<part>].parquet        a row per corner
//! ```
//!
//! Every row carries the lap's identity (session, car, car model, driver, lap, validity) as
//! columns, so any engine can join and group them. Files hold many laps of one session: the
//! archive writer stores a session's metrics as parts while it runs (every 64 laps, every 30 s,
//! and when it ends), and `analyze` rewrites a finished session as one file. They are derived
//! data: renamed into place (never half-written), not synced; a lap whose metrics are missing
//! (a crash between two parts) is measured again by `analyze`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, ListArray, RecordBatch,
    StringArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{BrakingZone, Corner, LapMetrics};
use crate::archive::{ArchiveError, LapMeta, lap_path};

/// The metric tables, by directory name under `<data>/metrics/`.
pub const TABLES: [&str; 3] = ["laps", "braking_zones", "corners"];

/// Thresholds file of an archive: when present, the metrics of its laps are computed with it.
pub const THRESHOLDS_FILE: &str = "thresholds.toml";

/// The thresholds the archive under `data` computes metrics with: its `thresholds.toml`, else
/// the defaults.
///
/// # Errors
/// [`super::ThresholdError`] when the file exists but is not valid.
pub fn archive_thresholds(data: &Path) -> Result<super::Thresholds, super::ThresholdError> {
    let path = data.join(THRESHOLDS_FILE);
    if path.exists() {
        super::Thresholds::from_file(&path)
    } else {
        Ok(super::Thresholds::default())
    }
}

fn f32s(x: impl IntoIterator<Item = f32>) -> ArrayRef {
    Arc::new(Float32Array::from_iter_values(x))
}

/// The identity columns of `rows` rows of one lap.
fn identity(meta: &LapMeta, rows: usize) -> Vec<(&'static str, ArrayRef)> {
    let s = |v: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, rows)))
    };
    let session = meta.session.to_string();
    vec![
        ("session", s(&session)),
        (
            "car",
            Arc::new(Int32Array::from(vec![i32::from(meta.car); rows])),
        ),
        ("car_model", s(&meta.car_model)),
        ("driver", s(&meta.driver)),
        (
            "lap",
            Arc::new(Int32Array::from(vec![i32::from(meta.lap); rows])),
        ),
        (
            "complete",
            Arc::new(BooleanArray::from(vec![meta.complete; rows])),
        ),
        (
            "valid",
            Arc::new(BooleanArray::from(vec![meta.valid; rows])),
        ),
        (
            "track_length_m",
            f32s(std::iter::repeat_n(meta.track_length_m, rows)),
        ),
    ]
}

fn batch(columns: Vec<(&'static str, ArrayRef)>) -> Result<RecordBatch, ArchiveError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| {
            Field::new(
                *name,
                a.data_type().clone(),
                a.null_count() > 0 || matches!(a.data_type(), DataType::Float64),
            )
        })
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

fn list(values: &[f32]) -> ArrayRef {
    let field = Arc::new(Field::new("item", DataType::Float32, false));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::from_lengths([values.len()]),
        f32s(values.iter().copied()),
        None,
    ))
}

/// The one-row `laps` table of a lap.
///
/// # Errors
/// [`ArchiveError::Arrow`] if the columns do not form a batch.
pub fn laps_batch(meta: &LapMeta, m: &LapMetrics) -> Result<RecordBatch, ArchiveError> {
    let mut c = identity(meta, 1);
    let st = &m.stats;
    c.extend([
        (
            "official_lap_time_s",
            Arc::new(Float64Array::from(vec![meta.lap_time_s])) as ArrayRef,
        ),
        (
            "lap_time_s",
            Arc::new(Float64Array::from(vec![st.lap_time_s])),
        ),
        ("distance_m", f32s([st.distance_m])),
        ("top_speed_mps", f32s([st.top_speed_mps])),
        ("min_speed_mps", f32s([st.min_speed_mps])),
        ("full_throttle_share", f32s([st.full_throttle_share])),
        ("braking_share", f32s([st.braking_share])),
        ("coasting_share", f32s([st.coasting_share])),
        (
            "braking_zones",
            Arc::new(Int32Array::from(vec![m.braking.len() as i32])),
        ),
        (
            "corners",
            Arc::new(Int32Array::from(vec![m.corners.len() as i32])),
        ),
        ("sector_times_s", list(&m.sector_times_s)),
        ("minisector_times_s", list(&m.minisector_times_s)),
    ]);
    batch(c)
}

/// The `braking_zones` table of a lap: a row per zone.
///
/// # Errors
/// [`ArchiveError::Arrow`] if the columns do not form a batch.
pub fn braking_batch(meta: &LapMeta, zones: &[BrakingZone]) -> Result<RecordBatch, ArchiveError> {
    let mut c = identity(meta, zones.len());
    let col = |f: fn(&BrakingZone) -> f32| f32s(zones.iter().map(f));
    c.extend([
        (
            "zone",
            Arc::new(Int32Array::from_iter_values(0..zones.len() as i32)) as ArrayRef,
        ),
        ("start_m", col(|z| z.start_m)),
        ("start_speed_mps", col(|z| z.start_speed_mps)),
        ("end_m", col(|z| z.end_m)),
        ("min_speed_mps", col(|z| z.min_speed_mps)),
        ("peak_brake", col(|z| z.peak_brake)),
        ("duration_s", col(|z| z.duration_s)),
        ("initial_decel_mps2", col(|z| z.initial_decel_mps2)),
        ("avg_decel_mps2", col(|z| z.avg_decel_mps2)),
        ("trail_brake_m", col(|z| z.trail_brake_m)),
        ("trail_brake_share", col(|z| z.trail_brake_share)),
    ]);
    batch(c)
}

/// The `corners` table of a lap: a row per corner.
///
/// # Errors
/// [`ArchiveError::Arrow`] if the columns do not form a batch.
pub fn corners_batch(meta: &LapMeta, corners: &[Corner]) -> Result<RecordBatch, ArchiveError> {
    let mut c = identity(meta, corners.len());
    let col = |f: fn(&Corner) -> f32| f32s(corners.iter().map(f));
    c.extend([
        (
            "corner",
            Arc::new(Int32Array::from_iter_values(0..corners.len() as i32)) as ArrayRef,
        ),
        (
            "direction",
            Arc::new(Int32Array::from_iter_values(
                corners.iter().map(|c| i32::from(c.direction)),
            )) as ArrayRef,
        ),
        ("turn_in_m", col(|c| c.turn_in_m)),
        ("turn_in_speed_mps", col(|c| c.turn_in_speed_mps)),
        ("apex_m", col(|c| c.apex_m)),
        ("apex_speed_mps", col(|c| c.apex_speed_mps)),
        ("apex_lat_g", col(|c| c.apex_lat_g)),
        ("exit_m", col(|c| c.exit_m)),
        ("exit_speed_mps", col(|c| c.exit_speed_mps)),
        ("time_s", col(|c| c.time_s)),
        ("throttle_m", col(|c| c.throttle_m.unwrap_or(f32::NAN))),
        ("min_speed_mps", col(|c| c.min_speed_mps)),
        ("speed_lost_mps", col(|c| c.speed_lost_mps)),
        ("speed_gained_mps", col(|c| c.speed_gained_mps)),
    ]);
    batch(c)
}

/// The partition of a lap's metrics, relative to a table's directory (the lap's own
/// partition: `source=…/track=…/date=…`).
pub fn partition(meta: &LapMeta) -> PathBuf {
    let lap = lap_path(Path::new(""), meta);
    lap.parent()
        .and_then(|p| p.strip_prefix("laps").ok())
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Writes measured laps as one file per table: `metrics/<table>/<rel>/<name>.parquet`.
///
/// # Errors
/// [`ArchiveError`] when a batch cannot be built or a file written.
pub fn write_tables(
    data: &Path,
    rel: &Path,
    name: &str,
    laps: &[(LapMeta, LapMetrics)],
) -> Result<(), ArchiveError> {
    if laps.is_empty() {
        return Ok(());
    }
    for table in TABLES {
        let batches = laps
            .iter()
            .map(|(meta, m)| match table {
                "laps" => laps_batch(meta, m),
                "braking_zones" => braking_batch(meta, &m.braking),
                _ => corners_batch(meta, &m.corners),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schema = batches[0].schema();
        let all = arrow::compute::concat_batches(&schema, &batches)?;
        let path = data
            .join(crate::archive::DERIVED_DIR)
            .join(table)
            .join(rel)
            .join(format!("{name}.parquet"));
        write_parquet(&path, &all)?;
    }
    Ok(())
}

/// Writes measured laps of one session as a new part of its metrics (named by the session and
/// the time, so parts never collide), grouped by partition.
///
/// # Errors
/// As [`write_tables`].
pub fn write_part(data: &Path, laps: &[(LapMeta, LapMetrics)]) -> Result<(), ArchiveError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut groups: std::collections::BTreeMap<(PathBuf, String), Vec<(LapMeta, LapMetrics)>> =
        std::collections::BTreeMap::new();
    for (meta, m) in laps {
        groups
            .entry((partition(meta), meta.session.simple().to_string()))
            .or_default()
            .push((meta.clone(), m.clone()));
    }
    for ((rel, session), laps) in groups {
        write_tables(data, &rel, &format!("{session}_{stamp}"), &laps)?;
    }
    Ok(())
}

/// Removes every metrics file of a session in a partition except `keep` (its name).
pub fn remove_session_files(data: &Path, rel: &Path, session: &str, keep: &str) {
    for table in TABLES {
        let dir = data.join(crate::archive::DERIVED_DIR).join(table).join(rel);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(session) && name != keep && name.ends_with(".parquet") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Writes one batch as a Parquet file (zstd), through a temporary name in the same directory.
///
/// # Errors
/// [`ArchiveError`] when the directory or file cannot be created or written.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), ArchiveError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| ArchiveError::Io { path: p, source }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let pq = |source| ArchiveError::Parquet {
        path: path.to_owned(),
        source,
    };
    let result = (|| {
        let file = File::create(&tmp).map_err(io(&tmp))?;
        // A few rows each: compression would save little and cost a codec context per column.
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .build();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
        w.write(batch).map_err(pq)?;
        w.close().map_err(pq)?;
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `analyze`'s lap rows as a Parquet file.
///
/// # Errors
/// [`ArchiveError`] when the file cannot be written.
pub fn write_lap_rows(path: &Path, rows: &[super::query::LapRow]) -> Result<(), ArchiveError> {
    let text = |f: fn(&super::query::LapRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let int = |f: fn(&super::query::LapRow) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(rows.iter().map(f)))
    };
    let opt = |f: fn(&super::query::LapRow) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let num = |f: fn(&super::query::LapRow) -> f32| f32s(rows.iter().map(f));
    let b = batch(vec![
        ("source", text(|r| &r.source)),
        ("track", text(|r| &r.track)),
        ("date", text(|r| &r.date)),
        ("session", text(|r| &r.session)),
        ("car", int(|r| r.car)),
        ("car_model", text(|r| &r.car_model)),
        ("driver", text(|r| &r.driver)),
        ("lap", int(|r| r.lap)),
        (
            "valid",
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.valid).collect::<Vec<_>>(),
            )),
        ),
        ("official_lap_time_s", opt(|r| r.official_lap_time_s)),
        ("lap_time_s", opt(|r| r.lap_time_s)),
        ("top_speed_mps", num(|r| r.top_speed_mps)),
        ("full_throttle_share", num(|r| r.full_throttle_share)),
        ("braking_share", num(|r| r.braking_share)),
        ("coasting_share", num(|r| r.coasting_share)),
        ("braking_zones", int(|r| r.braking_zones)),
        ("corners", int(|r| r.corners)),
    ])?;
    write_parquet(path, &b)
}
