//! The lap file's format: one Arrow schema for simulated and recorded laps (units in the field
//! metadata), the Hive-partitioned path of a lap, and the lap's identity in the file's
//! key-value metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apexsim_systems::record::LapColumns;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::file::metadata::KeyValue;

use super::{LapMeta, META, SCHEMA_VERSION};

/// Column derived at write time: the distance as a fraction of the lap, after `distance_m`.
pub(crate) const DISTANCE_FRAC: &str = "distance_frac";

/// Column stored as nullable Int32 (null when not modelled) rather than Float32.
pub(crate) const GEAR: &str = "gear";

/// The Arrow schema of a lap file, derived from the lap row ([`LapColumns::FIELDS`]): `tick`,
/// then every `f32` column in order (gear as nullable Int32), with `distance_frac` derived
/// after `distance_m`. Units and descriptions are in each field's `unit` and `doc` metadata.
pub fn lap_schema() -> SchemaRef {
    let f = |name: &str, ty: DataType, unit: &str, doc: &str| {
        Field::new(name, ty, false).with_metadata(HashMap::from([
            ("unit".to_owned(), unit.to_owned()),
            ("doc".to_owned(), doc.trim().to_owned()),
        ]))
    };
    let mut fields = vec![f(
        "tick",
        DataType::UInt64,
        "tick",
        "simulation tick (1/240 s) or recording sample",
    )];
    for field in LapColumns::FIELDS {
        if field.name == GEAR {
            fields.push(f(field.name, DataType::Int32, field.unit, field.doc).with_nullable(true));
            continue;
        }
        fields.push(f(field.name, DataType::Float32, field.unit, field.doc));
        if field.name == "distance_m" {
            fields.push(f(
                DISTANCE_FRAC,
                DataType::Float32,
                "1",
                "distance as a fraction of the lap, 0..1",
            ));
        }
    }
    fields.extend([
        f("session", DataType::Utf8, "id", "session id"),
        f("car", DataType::Int32, "1", "car index within the session"),
        f("driver", DataType::Utf8, "name", "driver name or pseudonym"),
        f(
            "lap",
            DataType::Int32,
            "1",
            "lap number (0 = out-lap, grid to line)",
        ),
    ]);
    Arc::new(Schema::new(fields))
}

/// The lap's file, relative to the data directory.
pub fn lap_path(data: &Path, meta: &LapMeta) -> PathBuf {
    data.join("laps")
        .join(format!("source={}", meta.source.as_str()))
        .join(format!("track={}", meta.track))
        .join(format!("date={}", meta.date))
        .join(format!(
            "{}_{:02}_lap{:03}.parquet",
            meta.session.simple(),
            meta.car,
            meta.lap
        ))
}

pub(crate) fn key_values(meta: &LapMeta, rows: usize) -> Vec<KeyValue> {
    let kv = |k: &str, v: String| KeyValue::new(format!("{META}{k}"), v);
    vec![
        kv("schema_version", SCHEMA_VERSION.to_string()),
        kv("source", meta.source.as_str().into()),
        kv("session", meta.session.to_string()),
        kv("car", meta.car.to_string()),
        kv("car_model", meta.car_model.clone()),
        kv("driver", meta.driver.clone()),
        kv("track", meta.track.clone()),
        kv("track_length_m", meta.track_length_m.to_string()),
        kv("lap", meta.lap.to_string()),
        kv(
            "lap_time_s",
            meta.lap_time_s.map_or(String::new(), |t| t.to_string()),
        ),
        kv("complete", meta.complete.to_string()),
        kv("valid", meta.valid.to_string()),
        kv("date", meta.date.to_string()),
        kv("rows", rows.to_string()),
    ]
}
