//! A session's write-ahead file while it records: created locked under a temporary name, given
//! its header, linked into place; a batch appended per flush; fsynced on its schedule by a
//! thread of its own; removed once every lap is durable.

use super::*;
use crate::archive::ArchiveError;
use crate::archive::lock::{self, Lock};
use apexsim_systems::record::RecordChunk;
use arrow::array::{
    ArrayRef, Float32Array, Float64Array, RecordBatch, UInt8Array, UInt16Array, UInt64Array,
};
use arrow::datatypes::Schema;
use arrow::ipc::writer::StreamWriter;
use bevy_ecs::entity::Entity;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use uuid::Uuid;

/// Syncs the file on a schedule until stopped.
struct Syncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(file: File, every: Duration, syncs: Arc<AtomicU64>) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("apexsim-wal-sync".into())
            .spawn(move || {
                let (lock, cvar) = &*flag;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    match cvar.wait_timeout(stopped, every) {
                        Ok((guard, _)) => stopped = guard,
                        Err(_) => return,
                    }
                    if !*stopped {
                        match file.sync_data() {
                            Ok(()) => {
                                syncs.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tracing::error!(error = %e, "write-ahead fsync failed"),
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Ok(mut stopped) = self.stop.0.lock() {
            *stopped = true;
            self.stop.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An open, locked write-ahead file.
pub struct Wal {
    writer: StreamWriter<File>,
    schema: Arc<Schema>,
    path: PathBuf,
    sync: WalSync,
    syncs: Arc<AtomicU64>,
    syncer: Option<Syncer>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("path", &self.path).finish()
    }
}

impl Wal {
    /// Creates and locks the session's write-ahead file (its schema header is written at
    /// once) and, for [`WalSync::Every`], starts its sync thread.
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
            let mut writer =
                StreamWriter::try_new(file.try_clone().map_err(io_at(&tmp))?, &schema)?;
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
        let syncs = Arc::new(AtomicU64::new(0));
        let syncer = match sync {
            WalSync::Every(every) => Some(
                Syncer::start(
                    file.try_clone().map_err(io_at(&path))?,
                    every,
                    Arc::clone(&syncs),
                )
                .map_err(io_at(&path))?,
            ),
            WalSync::Off | WalSync::EveryFlush => None,
        };
        Ok(Self {
            writer,
            schema,
            path,
            sync,
            syncs,
            syncer,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the file was fsynced so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
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
        let closures: Vec<LapClosure> = chunk
            .closed
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
        self.write_batch(chunk, car_index, &closures)
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
        self.write_batch(chunk, car_index, &[])
    }

    /// Records laps that closed (for feeds whose lap times are known after their rows).
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn close_laps(&mut self, closures: &[LapClosure]) -> Result<(), ArchiveError> {
        self.write_batch(&RecordChunk::default(), |_| 0, closures)
    }

    fn write_batch(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
        closures: &[LapClosure],
    ) -> Result<(), ArchiveError> {
        if chunk.is_empty() && closures.is_empty() {
            return Ok(());
        }
        let k = closures.len();
        let n = chunk.len();
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from_iter_values(
                chunk
                    .car
                    .iter()
                    .map(|&e| car_index(e))
                    .chain(closures.iter().map(|c| c.car)),
            )),
            Arc::new(UInt16Array::from_iter_values(
                chunk
                    .lap
                    .iter()
                    .copied()
                    .chain(closures.iter().map(|c| c.row_lap)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                chunk
                    .columns
                    .tick
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, k)),
            )),
        ];
        arrays.extend(chunk.columns.f32_columns().into_iter().map(|v| {
            Arc::new(Float32Array::from_iter_values(
                v.iter().copied().chain(std::iter::repeat_n(f32::NAN, k)),
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
        if self.sync == WalSync::EveryFlush {
            self.writer
                .get_ref()
                .sync_data()
                .map_err(io_at(&self.path))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes the file: every lap of the session is archived. The lock is held until the
    /// file is gone.
    ///
    /// # Errors
    /// [`ArchiveError`] when the file cannot be removed.
    pub fn remove(mut self) -> Result<(), ArchiveError> {
        self.syncer = None;
        fs::remove_file(&self.path).map_err(io_at(&self.path))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Kept for recovery: make what it holds durable before the lock goes.
        if self.syncer.take().is_some() || self.sync == WalSync::EveryFlush {
            let _ = self.writer.get_ref().sync_data();
        }
    }
}
