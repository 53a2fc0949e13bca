//! Lap files back to their identity and columns, checking the schema version.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use apexsim_systems::record::LapColumns;
use arrow::array::{Array, Float32Array, Int32Array, UInt64Array};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use uuid::Uuid;

use super::durable::io_err;
use super::format::*;
use super::{ArchiveError, Date, LapMeta, META, SCHEMA_VERSION, Source};

/// Reads a lap file back: its metadata and its rows.
///
/// # Errors
/// [`ArchiveError`] when the file cannot be read, is not Parquet, or is not an ApexSim lap file
/// of a schema version this build reads.
pub fn read_lap(path: &Path) -> Result<(LapMeta, LapColumns), ArchiveError> {
    read_lap_columns(path, None)
}

/// Reads a lap file's metadata and some of its `f32` columns (by name; `tick` always): the
/// others are left empty and their bytes are not decoded. `None` reads every column.
///
/// # Errors
/// As [`read_lap`]; a column asked for that the file lacks is an error naming it.
pub fn read_lap_columns(
    path: &Path,
    only: Option<&[&str]>,
) -> Result<(LapMeta, LapColumns), ArchiveError> {
    let pq = |source| ArchiveError::Parquet {
        path: path.to_owned(),
        source,
    };
    let bad = |problem: String| ArchiveError::BadLapFile {
        path: path.to_owned(),
        problem,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
    let (meta, version) = lap_meta(path, &builder)?;
    let wanted = |name: &str| name == "tick" || only.is_none_or(|o| o.contains(&name));
    let builder = match only {
        Some(_) => {
            let schema = builder.schema().clone();
            let roots: Vec<usize> = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| wanted(f.name()))
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder.with_projection(mask)
        }
        None => builder,
    };
    let mut columns = LapColumns::default();
    for batch in builder.build().map_err(pq)? {
        let batch = batch?;
        let ticks = batch
            .column_by_name("tick")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| bad("no UInt64 column tick".into()))?;
        columns.tick.extend(ticks.values().iter());
        let rows = batch.num_rows();
        for (name, col) in LapColumns::F32_NAMES.iter().zip(columns.f32_columns_mut()) {
            if !wanted(name) {
                continue;
            }
            let column = batch.column_by_name(name);
            if *name == GEAR {
                match column {
                    Some(c) => {
                        let gears = c
                            .as_any()
                            .downcast_ref::<Int32Array>()
                            .ok_or_else(|| bad("gear is not Int32".into()))?;
                        col.extend(gears.iter().map(|g| g.map_or(f32::NAN, |g| g as f32)));
                    }
                    None if version == 1 => col.extend(std::iter::repeat_n(f32::NAN, rows)),
                    None => return Err(bad("no Int32 column gear".into())),
                }
                continue;
            }
            match column.and_then(|c| c.as_any().downcast_ref::<Float32Array>()) {
                Some(values) => col.extend(values.values().iter()),
                None if version == 1 && *name == "rpm" => {
                    col.extend(std::iter::repeat_n(f32::NAN, rows));
                }
                None => return Err(bad(format!("no Float32 column {name}"))),
            }
        }
    }
    Ok((meta, columns))
}

/// The lap's identity from a lap file's key-value metadata, and the file's schema version.
pub(crate) fn lap_meta(
    path: &Path,
    builder: &ParquetRecordBatchReaderBuilder<File>,
) -> Result<(LapMeta, u32), ArchiveError> {
    let bad = |problem: String| ArchiveError::BadLapFile {
        path: path.to_owned(),
        problem,
    };
    let kv: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|k| Some((k.key.strip_prefix(META)?.to_owned(), k.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let get = |k: &str| {
        kv.get(k)
            .ok_or_else(|| bad(format!("no {META}{k} metadata")))
    };
    let version: u32 = get("schema_version")?
        .parse()
        .map_err(|_| bad("schema_version is not a number".into()))?;
    // Version 1 had no gear and rpm columns: they read as not measured.
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(bad(format!(
            "schema version {version}; this build reads 1 to {SCHEMA_VERSION}"
        )));
    }
    let num = |k: &str| -> Result<f64, ArchiveError> {
        get(k)?
            .parse::<f64>()
            .map_err(|_| bad(format!("{k} is not a number")))
    };
    let meta = LapMeta {
        source: Source::parse(get("source")?).ok_or_else(|| bad("unknown source".into()))?,
        session: Uuid::parse_str(get("session")?).map_err(|e| bad(format!("session: {e}")))?,
        car: num("car")? as u8,
        car_model: get("car_model")?.clone(),
        driver: get("driver")?.clone(),
        track: get("track")?.clone(),
        track_length_m: num("track_length_m")? as f32,
        lap: num("lap")? as u16,
        lap_time_s: get("lap_time_s")?.parse::<f64>().ok(),
        complete: get("complete")? == "true",
        valid: get("valid")? == "true",
        date: Date::parse(get("date")?).ok_or_else(|| bad("bad date".into()))?,
    };
    Ok((meta, version))
}

/// Reads only a lap file's metadata (no rows) and its row count.
///
/// # Errors
/// As [`read_lap`].
pub fn read_lap_meta(path: &Path) -> Result<(LapMeta, usize), ArchiveError> {
    let file = File::open(path).map_err(io_err(path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| ArchiveError::Parquet {
            path: path.to_owned(),
            source,
        })?;
    let rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let (meta, _) = lap_meta(path, &builder)?;
    Ok((meta, rows))
}
