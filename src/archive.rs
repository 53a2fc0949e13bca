//! The lap archive: one Parquet file (zstd) per lap, in a Hive-partitioned layout that polars,
//! DuckDB, Spark and DataFusion read directly:
//!
//! ```text
//! <data>/laps/source=sim|iracing/track=<slug>/date=YYYY-MM-DD/<session>_<car>_lap<N>.parquet
//! ```
//!
//! One Arrow schema ([`lap_schema`]) for simulated and recorded laps, with units in the field
//! metadata; the lap's identity (session, car, driver, track, lap number, lap time, validity,
//! schema version) in the file's key-value metadata. A file is written beside its final name and
//! renamed into place after an fsync, so a reader never sees a half-written Parquet file.
//!
//! This runs on the archive's own thread, never inside a tick.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apexsim_systems::record::LapColumns;
use arrow::array::{
    Array, ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, compute_leaves,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use thiserror::Error;
use uuid::Uuid;

pub mod index;
pub mod lock;
pub mod outbox;
pub mod recorder;
pub mod session;
pub mod wal;
pub mod writer;

/// Version of the lap schema and metadata; readers check it. Version 3 added the lap's
/// identity as columns ([`IDENTITY_COLUMNS`]); version 2 gear and rpm.
pub const SCHEMA_VERSION: u32 = 3;

/// The lap's identity as columns at the end of every lap file (schema version 3), so any engine
/// can group rows by lap without parsing file names: constant within a file, so dictionary and
/// run-length encoded to a few bytes. The Hive partitions add `source`, `track` and `date`.
pub const IDENTITY_COLUMNS: [&str; 4] = ["session", "car", "driver", "lap"];

/// zstd level of lap files: one of zstd's fast levels. Telemetry floats compress little
/// whatever the level; this keeps encoding near disk speed (see `benches/archive.rs`).
pub const ZSTD_LEVEL: i32 = -3;

/// Key-value metadata prefix of every ApexSim key.
const META: &str = "apexsim.";

/// Why an archive operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file or directory could not be created, written, renamed or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The error.
        source: parquet::errors::ParquetError,
    },
    /// The SQLite index failed.
    #[error("{}: sqlite: {source}", path.display())]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// Arrow could not assemble the columns.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The session already has a write-ahead file: another process is writing it, or it
    /// waits for recovery.
    #[error(
        "session {session} is being written by another process (or its write-ahead file {} \
         waits for recovery)", path.display()
    )]
    SessionBusy {
        /// The session.
        session: Uuid,
        /// Its write-ahead file.
        path: PathBuf,
    },
    /// A file is not an ApexSim lap file, or its metadata is unusable.
    #[error("{}: {problem}", path.display())]
    BadLapFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Where a lap came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Simulated by ApexSim.
    Sim,
    /// Recorded in iRacing.
    Iracing,
}

impl Source {
    /// Name in paths and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::Iracing => "iracing",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sim" => Some(Self::Sim),
            "iracing" => Some(Self::Iracing),
            _ => None,
        }
    }
}

/// A calendar date (UTC), for the `date=` partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u32,
    /// Day, 1..=31.
    pub day: u32,
}

impl Date {
    /// The UTC date of a Unix time in seconds (clamped to the calendar jiff supports, years
    /// -9999 to 9999, for times beyond it).
    pub fn from_unix(secs: i64) -> Self {
        let ts = jiff::Timestamp::from_second(secs).unwrap_or(if secs < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        });
        Self::from(jiff::tz::Offset::UTC.to_datetime(ts).date())
    }

    /// Today, in UTC.
    pub fn today() -> Self {
        Self::from(
            jiff::tz::Offset::UTC
                .to_datetime(jiff::Timestamp::now())
                .date(),
        )
    }

    /// Parses `YYYY-MM-DD` (a real calendar date).
    pub fn parse(s: &str) -> Option<Self> {
        s.trim().parse::<jiff::civil::Date>().ok().map(Self::from)
    }
}

impl From<jiff::civil::Date> for Date {
    fn from(d: jiff::civil::Date) -> Self {
        Self {
            year: i32::from(d.year()),
            month: u32::from(d.month().unsigned_abs()),
            day: u32::from(d.day().unsigned_abs()),
        }
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Who drove which lap where: everything in a lap file besides its rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LapMeta {
    /// Simulated or recorded.
    pub source: Source,
    /// Session id.
    pub session: Uuid,
    /// Car index within the session.
    pub car: u8,
    /// Car model name.
    pub car_model: String,
    /// Driver name (or pseudonym).
    pub driver: String,
    /// Track slug.
    pub track: String,
    /// Track length in metres.
    pub track_length_m: f32,
    /// Lap number (0 = out-lap / grid to line).
    pub lap: u16,
    /// Official lap time in seconds, for complete laps.
    pub lap_time_s: Option<f64>,
    /// Whether the lap ran from line to line.
    pub complete: bool,
    /// Whether the lap was valid.
    pub valid: bool,
    /// Date of the session (partition key).
    pub date: Date,
}

/// Column derived at write time: the distance as a fraction of the lap, after `distance_m`.
const DISTANCE_FRAC: &str = "distance_frac";

/// Column stored as nullable Int32 (null when not modelled) rather than Float32.
const GEAR: &str = "gear";

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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Turns a lap's columns into one Arrow batch in the order of [`lap_schema`], moving the
/// buffers (no copy).
pub fn lap_batch(meta: &LapMeta, columns: LapColumns) -> Result<RecordBatch, ArchiveError> {
    let length = meta.track_length_m.max(f32::MIN_POSITIVE);
    let frac: Vec<f32> = columns.distance_m.iter().map(|d| d / length).collect();
    let (tick, owned) = columns.into_columns();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(owned.len() + 2);
    arrays.push(Arc::new(UInt64Array::from(tick)));
    let mut frac = Some(frac);
    for (field, values) in LapColumns::FIELDS.iter().zip(owned) {
        if field.name == GEAR {
            arrays.push(Arc::new(
                values
                    .iter()
                    .map(|g| g.is_finite().then_some(*g as i32))
                    .collect::<Int32Array>(),
            ));
            continue;
        }
        arrays.push(Arc::new(Float32Array::from(values)));
        if field.name == "distance_m"
            && let Some(frac) = frac.take()
        {
            arrays.push(Arc::new(Float32Array::from(frac)));
        }
    }
    let rows = arrays.first().map_or(0, |a| a.len());
    let text = |v: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, rows)))
    };
    let session = meta.session.to_string();
    arrays.extend([
        text(&session),
        Arc::new(Int32Array::from(vec![i32::from(meta.car); rows])) as ArrayRef,
        text(&meta.driver),
        Arc::new(Int32Array::from(vec![i32::from(meta.lap); rows])),
    ]);
    Ok(RecordBatch::try_new(lap_schema(), arrays)?)
}

fn key_values(meta: &LapMeta, rows: usize) -> Vec<KeyValue> {
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

/// Writes a lap into the archive under `data` and returns its path: [`stage_lap`] writes
/// `<name>.tmp` beside the final name, [`StagedLap::commit`] syncs it and renames it into
/// place; an existing file of the same lap is replaced atomically.
///
/// # Errors
/// [`ArchiveError`] when the directory or file cannot be created, written, synced or renamed.
/// No half-written file is left under the final name.
pub fn write_lap(
    data: &Path,
    meta: &LapMeta,
    columns: LapColumns,
) -> Result<PathBuf, ArchiveError> {
    let owner = lock::Owner::acquire(data)?;
    write_lap_as(data, &owner, meta, columns)
}

/// [`write_lap`] for a process that already holds an [`Owner`](lock::Owner) lock.
///
/// # Errors
/// As [`write_lap`].
pub fn write_lap_as(
    data: &Path,
    owner: &lock::Owner,
    meta: &LapMeta,
    columns: LapColumns,
) -> Result<PathBuf, ArchiveError> {
    let rows = columns.len();
    let batch = lap_batch(meta, columns)?;
    stage_lap(data, owner, meta, &batch, rows)?.commit()
}

/// A lap file encoded and written beside its final name, not yet synced or renamed: the
/// archive writer encodes the next lap while this one waits for the disk.
#[derive(Debug)]
pub struct StagedLap {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

/// Encodes `batch` and writes it to `<final name>.<owner>.tmp` (creating the partition
/// directories): the temporary name is the writer's own, so two writers never share one, and
/// the file of a writer that is gone can be recognised and removed
/// ([`lock::clean_stray`]).
///
/// # Errors
/// [`ArchiveError`] when a directory or the file cannot be created or written; the temporary
/// file is removed then.
pub fn stage_lap(
    data: &Path,
    owner: &lock::Owner,
    meta: &LapMeta,
    batch: &RecordBatch,
    rows: usize,
) -> Result<StagedLap, ArchiveError> {
    let path = lap_path(data, meta);
    let dir = path.parent().unwrap_or(data);
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = owner.tmp_path(&path);
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    match encode_parquet(file, batch, key_values(meta, rows)) {
        Ok(file) => Ok(StagedLap { file, tmp, path }),
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            Err(ArchiveError::Parquet { path: tmp, source })
        }
    }
}

impl StagedLap {
    /// Syncs the file, renames it into place and syncs the directory; returns the final path.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the sync or the rename fails; the temporary file is removed.
    pub fn commit(self) -> Result<PathBuf, ArchiveError> {
        let path = self.sync_and_rename()?;
        if let Some(dir) = path.parent() {
            sync_dir(dir);
        }
        Ok(path)
    }

    /// Syncs the file and renames it into place; the rename is durable once the directory is
    /// synced ([`sync_dir`]), which a writer committing several laps does once for all.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the sync or the rename fails; the temporary file is removed.
    pub fn sync_and_rename(self) -> Result<PathBuf, ArchiveError> {
        let Self { file, tmp, path } = self;
        let result = file
            .sync_all()
            .map_err(io_err(&tmp))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err(&path)));
        drop(file);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(path)
    }
}

/// Syncs a directory, making the renames into it durable (best effort: not every file system
/// lets a directory be synced).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Encodes one batch as a Parquet file into `out` with the archive's settings and returns
/// `out`.
fn encode_parquet<W: std::io::Write + Send>(
    out: W,
    batch: &RecordBatch,
    kv: Vec<KeyValue>,
) -> Result<W, parquet::errors::ParquetError> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL)?;
    // Telemetry floats barely repeat: a dictionary costs a hash per value and is then dropped.
    // Byte-stream split groups the floats' bytes so zstd finds the repetition in exponents.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(false)
        .set_encoding(Encoding::BYTE_STREAM_SPLIT)
        .set_column_encoding(ColumnPath::from("tick"), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(ColumnPath::from("gear"), Encoding::DELTA_BINARY_PACKED);
    // The identity columns hold one value each. Delta encodings store a repeated value as
    // runs of zero deltas (a few bytes after zstd) without hashing every row, which a
    // dictionary would (twice the encoding time of a lap).
    let props = IDENTITY_COLUMNS.iter().fold(props, |p, name| {
        let encoding = if matches!(*name, "car" | "lap") {
            Encoding::DELTA_BINARY_PACKED
        } else {
            Encoding::PLAIN
        };
        p.set_column_encoding(ColumnPath::from(*name), encoding)
            .set_column_statistics_enabled(ColumnPath::from(*name), EnabledStatistics::None)
    });
    let props = props
        // One page per column in a lap: chunk statistics are as selective and cost less.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_key_value_metadata(Some(kv))
        .build();
    // The lap is one row group of flat columns (one leaf each). They are encoded apart, every
    // other one on a second thread, then spliced into the file in schema order.
    let schema = batch.schema();
    let (mut file, factory) =
        ArrowWriter::try_new(out, Arc::clone(&schema), Some(props))?.into_serialized_writer()?;
    let mut jobs = Vec::with_capacity(schema.fields().len());
    for ((writer, field), array) in factory
        .create_column_writers(0)?
        .into_iter()
        .zip(schema.fields())
        .zip(batch.columns())
    {
        let mut leaves = compute_leaves(field, array)?;
        let (Some(leaf), None) = (leaves.pop(), leaves.pop()) else {
            return Err(ParquetError::General(format!(
                "column {} is not a flat column",
                field.name()
            )));
        };
        jobs.push((writer, leaf));
    }
    let encode = |(mut writer, leaf): (ArrowColumnWriter, ArrowLeafColumn)| {
        writer.write(&leaf)?;
        writer.close()
    };
    // Balance the two threads by cost: a text column costs about three numeric ones (every
    // value is compared for the statistics and delta-encoded).
    let cost = |f: &Field| {
        if matches!(f.data_type(), DataType::Utf8) {
            3
        } else {
            1
        }
    };
    let (mut load_mine, mut load_theirs) = (0, 0);
    let (theirs, mine): (Vec<_>, Vec<_>) = jobs.into_iter().enumerate().partition(|(i, _)| {
        let c = cost(schema.field(*i));
        if load_theirs < load_mine {
            load_theirs += c;
            true
        } else {
            load_mine += c;
            false
        }
    });
    let chunks =
        std::thread::scope(
            |scope| -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
                let helper = scope.spawn(|| {
                    theirs
                        .into_iter()
                        .map(|(i, job)| encode(job).map(|c| (i, c)))
                        .collect::<Result<Vec<_>, ParquetError>>()
                });
                let mut chunks = mine
                    .into_iter()
                    .map(|(i, job)| encode(job).map(|c| (i, c)))
                    .collect::<Result<Vec<_>, ParquetError>>()?;
                chunks.extend(helper.join().map_err(|_| {
                    ParquetError::General("column encoder thread panicked".into())
                })??);
                chunks.sort_unstable_by_key(|(i, _)| *i);
                Ok(chunks)
            },
        )?;
    let mut row_group = file.next_row_group()?;
    for (_, chunk) in chunks {
        chunk.append_to_row_group(&mut row_group)?;
    }
    row_group.close()?;
    file.into_inner()
}

/// Encodes a lap as a Parquet file in memory, exactly as [`write_lap`] writes it (for
/// benchmarks and for sending a lap elsewhere).
///
/// # Errors
/// [`ArchiveError`] when the columns cannot become a batch or the encoding fails.
pub fn encode_lap(meta: &LapMeta, columns: LapColumns) -> Result<Vec<u8>, ArchiveError> {
    let rows = columns.len();
    let batch = lap_batch(meta, columns)?;
    let out = Vec::with_capacity(batch.get_array_memory_size() / 2);
    encode_parquet(out, &batch, key_values(meta, rows)).map_err(|source| ArchiveError::Parquet {
        path: PathBuf::from("<memory>"),
        source,
    })
}

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
fn lap_meta(
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

/// The directory under an archive of the tables derived from its laps (one directory per
/// table, each partitioned as the laps are, files named by their session:
/// `<table>/source=…/track=…/date=…/<session>[_<part>].parquet`). The archive does not know
/// what they hold; it removes a session's files with its laps.
pub const DERIVED_DIR: &str = "metrics";

/// Removes every derived file of `session` in the partition `rel` (relative to a table's
/// directory), and the partition directories left empty; returns the bytes freed.
fn remove_derived(data: &Path, rel: &Path, session: &str) -> u64 {
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
    let mut report = PruneReport::default();
    for session in index
        .sessions()?
        .into_iter()
        .filter(|s| s.started_at < cutoff)
    {
        if wal::is_live(data, session.id) {
            report.live_sessions += 1;
            continue;
        }
        let mut partitions = std::collections::BTreeSet::new();
        for lap in index.laps(Some(session.id))? {
            let path = data.join(&lap.file);
            if let Some(rel) = Path::new(&lap.file)
                .parent()
                .and_then(|p| p.strip_prefix("laps").ok())
            {
                partitions.insert(rel.to_path_buf());
            }
            if let Ok(meta) = fs::metadata(&path) {
                report.bytes += meta.len();
            }
            match fs::remove_file(&path) {
                Ok(()) => report.laps += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(ArchiveError::Io { path, source }),
            }
            // Drop now-empty partition directories (date=, then track=, then source=).
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d == data.join("laps") || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        let name = session.id.simple().to_string();
        for rel in &partitions {
            report.bytes += remove_derived(data, rel, &name);
        }
        index.delete_session(session.id)?;
        report.sessions += 1;
    }
    Ok(report)
}

/// Parses a duration such as `168h`, `7d`, `90m`, `3600s` or `1h 30m` (humantime's syntax).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(s.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("168h"),
            Some(std::time::Duration::from_secs(168 * 3600))
        );
        assert_eq!(
            parse_duration("7d"),
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert_eq!(
            parse_duration("90m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("15s"),
            Some(std::time::Duration::from_secs(15))
        );
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(
            parse_duration("1h 30m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("week"), None);
    }

    #[test]
    fn dates_from_unix_time() {
        assert_eq!(Date::from_unix(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_unix(951_782_400).to_string(), "2000-02-29");
        assert_eq!(Date::from_unix(1_795_392_000).to_string(), "2026-11-23");
        assert_eq!(Date::from_unix(-86_400).to_string(), "1969-12-31");
        assert_eq!(
            Date::parse("2026-11-23"),
            Some(Date::from_unix(1_795_392_000))
        );
        assert_eq!(Date::parse("2026-13-01"), None);
        assert_eq!(Date::parse("2026-02-30"), None, "a real calendar date");
        assert_eq!(Date::from_unix(i64::MAX).year, 9999);
    }
}
