//! Write-ahead files: every 60 ticks the rows recorded since the last flush are appended to
//! `<data>/wal/<session>.arrows`, an Arrow IPC stream (one record batch per flush, the car and
//! lap of every row included, the session's identity in the schema metadata). The file is
//! removed once every lap of the session is in Parquet and indexed.
//!
//! After an unclean stop, [`recover`] reads each write-ahead file up to its last complete batch
//! (a torn tail is ignored), writes the laps that are not already archived as partial laps, and
//! indexes them.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apexsim_systems::record::{LapColumns, RecordChunk};
use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt8Array, UInt16Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bevy_ecs::entity::Entity;
use uuid::Uuid;

use super::index::{Index, SessionRow};
use super::{ArchiveError, Date, LapMeta, Source, write_lap};

/// Schema metadata key holding the session's identity as JSON.
const SESSION_KEY: &str = "apexsim.wal.session";

/// What a write-ahead file knows about its session, enough to archive its laps alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WalSession {
    /// Session id.
    pub session: Uuid,
    /// "sim" or "iracing".
    pub source: String,
    /// Track slug.
    pub track: String,
    /// Track length in metres.
    pub track_length_m: f32,
    /// Car model.
    pub car_model: String,
    /// Driver of each car index.
    pub drivers: Vec<String>,
    /// Session date, `YYYY-MM-DD`.
    pub date: String,
    /// Unix seconds at the start.
    pub started_at: i64,
}

/// An open write-ahead file.
pub struct Wal {
    writer: StreamWriter<File>,
    schema: Arc<Schema>,
    path: PathBuf,
}

fn wal_schema(session: &WalSession) -> Result<Schema, ArchiveError> {
    let mut fields = vec![
        Field::new("car", DataType::UInt8, false),
        Field::new("lap", DataType::UInt16, false),
        Field::new("tick", DataType::UInt64, false),
    ];
    fields.extend(
        LapColumns::F32_NAMES
            .iter()
            .map(|n| Field::new(*n, DataType::Float32, false)),
    );
    let json = serde_json::to_string(session).map_err(|e| ArchiveError::BadLapFile {
        path: PathBuf::from("<wal session>"),
        problem: e.to_string(),
    })?;
    Ok(Schema::new(fields).with_metadata(HashMap::from([(SESSION_KEY.to_owned(), json)])))
}

/// Path of a session's write-ahead file.
pub fn wal_path(data: &Path, session: Uuid) -> PathBuf {
    data.join("wal")
        .join(format!("{}.arrows", session.simple()))
}

impl Wal {
    /// Creates the session's write-ahead file (its schema header is written at once).
    ///
    /// # Errors
    /// [`ArchiveError`] when the file cannot be created.
    pub fn create(data: &Path, session: &WalSession) -> Result<Self, ArchiveError> {
        let path = wal_path(data, session.session);
        let dir = path.parent().unwrap_or(data);
        fs::create_dir_all(dir).map_err(|source| ArchiveError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = File::create(&path).map_err(|source| ArchiveError::Io {
            path: path.clone(),
            source,
        })?;
        let schema = Arc::new(wal_schema(session)?);
        let writer = StreamWriter::try_new(file, &schema)?;
        Ok(Self {
            writer,
            schema,
            path,
        })
    }

    /// Appends the rows of a chunk as one batch and hands them to the operating system (they
    /// survive the process being killed).
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn append(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
    ) -> Result<(), ArchiveError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from_iter_values(
                chunk.car.iter().map(|&e| car_index(e)),
            )),
            Arc::new(UInt16Array::from(chunk.lap.clone())),
            Arc::new(UInt64Array::from(chunk.columns.tick.clone())),
        ];
        arrays.extend(
            chunk
                .columns
                .f32_columns()
                .into_iter()
                .map(|v| Arc::new(Float32Array::from(v.clone())) as ArrayRef),
        );
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        self.writer
            .get_mut()
            .flush()
            .map_err(|source| ArchiveError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Removes the file: every lap of the session is archived.
    ///
    /// # Errors
    /// [`ArchiveError`] when the file cannot be removed.
    pub fn remove(self) -> Result<(), ArchiveError> {
        drop(self.writer);
        fs::remove_file(&self.path).map_err(|source| ArchiveError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct RecoveryReport {
    /// Write-ahead files found.
    pub files: usize,
    /// Partial laps written from them.
    pub laps: usize,
    /// Rows in those laps.
    pub rows: usize,
    /// Batches lost to a torn tail (0 or 1 per file).
    pub torn_tails: usize,
}

/// Recovers every write-ahead file under `data` into archived (partial) laps and removes it.
///
/// # Errors
/// [`ArchiveError`] when a file cannot be read at all or a lap cannot be written; files not yet
/// recovered stay for the next attempt.
pub fn recover(data: &Path, index: &Index) -> Result<RecoveryReport, ArchiveError> {
    let mut report = RecoveryReport::default();
    let dir = data.join("wal");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(report);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "arrows"))
        .collect();
    files.sort();
    for path in files {
        report.files += 1;
        recover_file(data, index, &path, &mut report)?;
        fs::remove_file(&path).map_err(|source| ArchiveError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

fn recover_file(
    data: &Path,
    index: &Index,
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    let bad = |problem: String| ArchiveError::BadLapFile {
        path: path.to_owned(),
        problem,
    };
    let file = File::open(path).map_err(|source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader = match StreamReader::try_new(file, None) {
        Ok(r) => r,
        // Killed before the header was complete: nothing to recover.
        Err(_) => return Ok(()),
    };
    let session: WalSession = reader
        .schema()
        .metadata()
        .get(SESSION_KEY)
        .ok_or_else(|| bad("no session metadata".into()))
        .and_then(|j| serde_json::from_str(j).map_err(|e| bad(e.to_string())))?;
    let mut laps: BTreeMap<(u8, u16), LapColumns> = BTreeMap::new();
    for batch in reader {
        let Ok(batch) = batch else {
            report.torn_tails += 1;
            break;
        };
        append_rows(&batch, &mut laps).map_err(bad)?;
    }
    let source = if session.source == "iracing" {
        Source::Iracing
    } else {
        Source::Sim
    };
    index.ensure_session(&SessionRow {
        id: session.session,
        source: session.source.clone(),
        track: session.track.clone(),
        car_model: session.car_model.clone(),
        lap_limit: None,
        seed: None,
        started_at: session.started_at,
        finished_at: None,
    })?;
    let date = super::Date::parse(&session.date).unwrap_or_else(Date::today);
    for ((car, lap), columns) in laps {
        if index.has_lap(session.session, car, lap)? {
            continue; // finalised before the stop
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
            lap_time_s: None,
            complete: false,
            valid: false,
            date,
        };
        let rows = columns.len();
        let file = write_lap(data, &meta, columns)?;
        index.put_lap(&meta, file.strip_prefix(data).unwrap_or(&file), rows)?;
        report.laps += 1;
        report.rows += rows;
    }
    Ok(())
}

fn append_rows(
    batch: &RecordBatch,
    laps: &mut BTreeMap<(u8, u16), LapColumns>,
) -> Result<(), String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or(format!("no column {name}"))
    };
    let cars = col("car")?
        .as_any()
        .downcast_ref::<UInt8Array>()
        .ok_or("car is not UInt8")?;
    let lap_numbers = col("lap")?
        .as_any()
        .downcast_ref::<UInt16Array>()
        .ok_or("lap is not UInt16")?;
    let ticks = col("tick")?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or("tick is not UInt64")?;
    // A column an older build did not write (gear, rpm) reads as NaN.
    let mut floats = Vec::new();
    for name in LapColumns::F32_NAMES {
        floats.push(match batch.column_by_name(name) {
            Some(c) => Some(
                c.as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or(format!("{name} is not Float32"))?
                    .values(),
            ),
            None => None,
        });
    }
    for i in 0..batch.num_rows() {
        let lap = laps
            .entry((cars.value(i), lap_numbers.value(i)))
            .or_default();
        lap.tick.push(ticks.value(i));
        for (col, values) in lap.f32_columns_mut().into_iter().zip(&floats) {
            col.push(values.as_ref().map_or(f32::NAN, |v| v[i]));
        }
    }
    Ok(())
}
