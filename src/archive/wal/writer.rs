//! A session's write-ahead file while it records: created locked under a temporary name, given
//! its header, linked into place; a batch appended per flush; fsynced on the process's
//! schedule for its interval ([`schedule`]); removed once every lap is durable.

use super::schedule::{self, Scheduled};
use super::*;
use crate::archive::ArchiveError;
use crate::archive::lock::{self, Lock};
use apexsim_systems::record::{LapClosed, RecordChunk};
use arrow::array::{
    ArrayRef, Float32Array, Float64Array, RecordBatch, UInt8Array, UInt16Array, UInt64Array,
};
use arrow::datatypes::Schema;
use arrow::ipc::writer::StreamWriter;
use bevy_ecs::entity::Entity;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Bytes gathered before a write to the file: a session's batch of 60 ticks of 16 cars is
/// about 70 kB.
const WRITE_BUFFER: usize = 128 * 1024;

/// The rows of a chunk present in every column.
pub fn whole_rows(chunk: &RecordChunk) -> usize {
    chunk.len().min(chunk.columns.len()).min(chunk.lap.len())
}

/// An open, locked write-ahead file.
pub struct Wal {
    writer: StreamWriter<BufWriter<File>>,
    schema: Arc<Schema>,
    path: PathBuf,
    sync: WalSync,
    /// Syncs made on the simulation's side ([`WalSync::EveryFlush`]).
    syncs: u64,
    scheduled: Option<Scheduled>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("path", &self.path).finish()
    }
}

impl Wal {
    /// Creates and locks the session's write-ahead file (its schema header is written at
    /// once) and, for [`WalSync::Every`], puts it on the process's fsync schedule.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the file cannot be created, and [`ArchiveError::SessionBusy`]
    /// when the session already has a write-ahead file (another process is writing it, or it
    /// waits for recovery).
    pub fn create(data: &Path, session: &WalSession, sync: WalSync) -> Result<Self, ArchiveError> {
        let path = wal_path(data, session.session);
        let dir = path.parent().unwrap_or(data);
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let tmp = dir.join(format!(
            "{}.{}.tmp",
            session.session.simple(),
            Uuid::new_v4().simple()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let created = (|| {
            if let Lock::Busy = lock::try_lock(&file).map_err(io_at(&tmp))? {
                return Err(io_at(&tmp)(std::io::Error::other(
                    "a new file is locked by someone else",
                )));
            }
            let schema = Arc::new(wal_schema(session)?);
            // A batch goes to the operating system in a few large writes, not one per buffer.
            let out =
                BufWriter::with_capacity(WRITE_BUFFER, file.try_clone().map_err(io_at(&tmp))?);
            let mut writer = StreamWriter::try_new(out, &schema)?;
            writer.flush()?;
            // Linking fails if the final name exists: never two writers of one session.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok((writer, schema)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ArchiveError::SessionBusy {
                        session: session.session,
                        path: path.clone(),
                    })
                }
                // A file system without hard links: rename, after a check (not atomic, but the
                // session ids of races and live sessions are random).
                Err(_) if !path.exists() => match fs::rename(&tmp, &path) {
                    Ok(()) => Ok((writer, schema)),
                    Err(e) => Err(io_at(&path)(e)),
                },
                Err(_) => Err(ArchiveError::SessionBusy {
                    session: session.session,
                    path: path.clone(),
                }),
            }
        })();
        let _ = fs::remove_file(&tmp);
        let (writer, schema) = created?;
        let scheduled = match sync {
            WalSync::Every(every) => Some(
                schedule::register(file.try_clone().map_err(io_at(&path))?, every)
                    .map_err(io_at(&path))?,
            ),
            WalSync::Off | WalSync::EveryFlush => None,
        };
        Ok(Self {
            writer,
            schema,
            path,
            sync,
            syncs: 0,
            scheduled,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the file was fsynced so far.
    pub fn syncs(&self) -> u64 {
        self.syncs + self.scheduled.as_ref().map_or(0, Scheduled::syncs)
    }

    /// Appends a chunk's rows and the laps it closed as one batch and hands them to the
    /// operating system (they survive the process being killed). `car_index` maps a car
    /// entity to its index in the session.
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn append(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
    ) -> Result<(), ArchiveError> {
        self.append_at(chunk, 0..whole_rows(chunk), &chunk.closed, car_index)
    }

    /// Appends the rows `rows` of a chunk (in that order; each below [`whole_rows`]) and the
    /// laps `closed` as one batch: a world-wide chunk is written session by session straight
    /// from its columns, without a copy per session.
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn append_at(
        &mut self,
        chunk: &RecordChunk,
        rows: impl ExactSizeIterator<Item = usize> + Clone,
        closed: &[LapClosed],
        car_index: impl Fn(Entity) -> u8,
    ) -> Result<(), ArchiveError> {
        let closures: Vec<LapClosure> = closed
            .iter()
            .map(|c| LapClosure {
                car: car_index(c.car),
                row_lap: c.lap,
                lap: c.lap,
                complete: c.complete,
                valid: c.valid,
                lap_time_s: c.lap_time_s,
            })
            .collect();
        self.write_batch(chunk, rows, car_index, &closures)
    }

    /// Appends a chunk's rows only, not the laps it closed.
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn append_rows(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
    ) -> Result<(), ArchiveError> {
        self.write_batch(chunk, 0..whole_rows(chunk), car_index, &[])
    }

    /// Records laps that closed (for feeds whose lap times are known after their rows).
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn close_laps(&mut self, closures: &[LapClosure]) -> Result<(), ArchiveError> {
        self.write_batch(&RecordChunk::default(), 0..0, |_| 0, closures)
    }

    fn write_batch(
        &mut self,
        chunk: &RecordChunk,
        rows: impl ExactSizeIterator<Item = usize> + Clone,
        car_index: impl Fn(Entity) -> u8,
        closures: &[LapClosure],
    ) -> Result<(), ArchiveError> {
        let n = rows.len();
        let k = closures.len();
        if n == 0 && k == 0 {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from_iter_values(
                rows.clone()
                    .map(|i| car_index(chunk.car[i]))
                    .chain(closures.iter().map(|c| c.car)),
            )),
            Arc::new(UInt16Array::from_iter_values(
                rows.clone()
                    .map(|i| chunk.lap[i])
                    .chain(closures.iter().map(|c| c.row_lap)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.clone()
                    .map(|i| chunk.columns.tick[i])
                    .chain(std::iter::repeat_n(0, k)),
            )),
        ];
        arrays.extend(chunk.columns.f32_columns().into_iter().map(|v| {
            Arc::new(Float32Array::from_iter_values(
                rows.clone()
                    .map(|i| v[i])
                    .chain(std::iter::repeat_n(f32::NAN, k)),
            )) as ArrayRef
        }));
        arrays.push(Arc::new(UInt16Array::from_iter(
            std::iter::repeat_n(None, n).chain(closures.iter().map(|c| Some(c.lap))),
        )));
        arrays.push(Arc::new(Float64Array::from_iter(
            std::iter::repeat_n(None, n).chain(closures.iter().map(|c| c.lap_time_s)),
        )));
        arrays.push(Arc::new(UInt8Array::from_iter(
            std::iter::repeat_n(None, n).chain(closures.iter().map(|c| {
                Some(u8::from(c.complete) * CLOSED_COMPLETE + u8::from(c.valid) * CLOSED_VALID)
            })),
        )));
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        self.writer.flush()?;
        if let Some(scheduled) = &self.scheduled {
            scheduled.written();
        }
        if self.sync == WalSync::EveryFlush {
            self.writer
                .get_ref()
                .get_ref()
                .sync_data()
                .map_err(io_at(&self.path))?;
            self.syncs += 1;
        }
        Ok(())
    }

    /// Removes the file: every lap of the session is archived. The lock is held until the
    /// file is gone.
    ///
    /// # Errors
    /// [`ArchiveError`] when the file cannot be removed.
    pub fn remove(mut self) -> Result<(), ArchiveError> {
        // Off the schedule without a last sync: the file is going.
        if let Some(s) = self.scheduled.take() {
            s.forget();
        }
        fs::remove_file(&self.path).map_err(io_at(&self.path))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Kept for recovery: make what it holds durable before the lock goes.
        let _ = self.writer.flush();
        if let Some(s) = self.scheduled.take() {
            s.written();
        } else if self.sync == WalSync::EveryFlush {
            let _ = self.writer.get_ref().get_ref().sync_data();
        }
    }
}
