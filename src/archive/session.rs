//! One archive session: the life cycle of everything a session writes, in one place, for
//! races, ingest, live telemetry and the server alike.
//!
//! [`ArchiveSession::begin`] creates and locks the session's write-ahead file and indexes the
//! session (unfinished); [`ArchiveSession::record`] appends each flush's rows and the laps it
//! closed to the write-ahead file; [`ArchiveSession::submit_lap`] hands a lap to the archive
//! writer; [`ArchiveSession::finish`] asks the writer to mark the session finished once every
//! one of its laps is durable and indexed, and only then to remove the write-ahead file. A
//! session that ends in an error ([`ArchiveSession::abandon`]), or whose laps could not all be
//! written, stays unfinished and keeps its write-ahead file for recovery by the next process.

use apexsim_systems::record::{LapClosed, LapColumns, RecordChunk};
use bevy_ecs::entity::Entity;
use uuid::Uuid;

use super::index::{ResultEntry, SessionRow};
use super::wal::{LapClosure, Wal, WalSession, WalSync};
use super::writer::{ArchiveJob, ArchiveWriter, SessionClose};
use super::{ArchiveError, Date, LapMeta};

/// A session being archived. Dropping it without [`finish`](Self::finish) or
/// [`abandon`](Self::abandon) releases the write-ahead file's lock and leaves the file for
/// recovery.
#[derive(Debug)]
pub struct ArchiveSession {
    id: Uuid,
    wal: Option<Wal>,
    /// Write-ahead appends that failed, in order.
    errors: Vec<String>,
}

impl ArchiveSession {
    /// Creates and locks the session's write-ahead file under the writer's data directory and
    /// indexes the session `row`, unfinished. The write-ahead file carries the row's identity
    /// plus what recovery needs to archive the laps alone: the track length, the driver of each
    /// car index and the date partition.
    ///
    /// # Errors
    /// [`ArchiveError::SessionBusy`] when another process writes the same session;
    /// [`ArchiveError::Io`] when the write-ahead file cannot be created.
    pub fn begin(
        writer: &mut ArchiveWriter,
        row: SessionRow,
        track_length_m: f32,
        drivers: Vec<String>,
        date: Date,
        sync: WalSync,
    ) -> Result<Self, ArchiveError> {
        let wal = WalSession {
            session: row.id,
            source: row.source.clone(),
            track: row.track.clone(),
            track_length_m,
            car_model: row.car_model.clone(),
            drivers,
            date: date.to_string(),
            started_at: row.started_at,
        };
        let file = Wal::create(writer.data(), &wal, sync)?;
        let id = row.id;
        writer.submit(ArchiveJob::Session(row));
        Ok(Self {
            id,
            wal: Some(file),
            errors: Vec::new(),
        })
    }

    /// The session id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// How many times the write-ahead file was fsynced.
    pub fn wal_syncs(&self) -> u64 {
        self.wal.as_ref().map_or(0, Wal::syncs)
    }

    /// Appends the session's rows of a flush (`rows` of a world-wide chunk) and the laps it
    /// closed to the write-ahead file. A failure is logged and kept for the report; the
    /// session goes on.
    pub fn record(
        &mut self,
        chunk: &RecordChunk,
        rows: &[u32],
        closed: &[LapClosed],
        car_index: impl Fn(Entity) -> u8,
    ) {
        if let Some(wal) = self.wal.as_mut() {
            let rows = rows.iter().map(|&i| i as usize);
            let result = wal.append_at(chunk, rows, closed, car_index);
            self.note(result);
        }
    }

    /// Appends a flush of rows only (for recorded cars, whose laps close when their time is
    /// known: [`close_laps`](Self::close_laps)).
    pub fn record_rows(&mut self, chunk: &RecordChunk, car_index: impl Fn(Entity) -> u8) {
        if let Some(wal) = self.wal.as_mut() {
            let result = wal.append_rows(chunk, car_index);
            self.note(result);
        }
    }

    /// Records laps that closed in the write-ahead file.
    pub fn close_laps(&mut self, closures: &[LapClosure]) {
        if let Some(wal) = self.wal.as_mut() {
            let result = wal.close_laps(closures);
            self.note(result);
        }
    }

    fn note(&mut self, result: Result<(), ArchiveError>) {
        if let Err(e) = result {
            tracing::error!(session = %self.id, error = %e, "write-ahead append failed");
            self.errors.push(e.to_string());
        }
    }

    /// Hands a lap to the writer.
    pub fn submit_lap(&self, writer: &mut ArchiveWriter, meta: LapMeta, columns: LapColumns) {
        writer.submit(ArchiveJob::Lap {
            meta: Box::new(meta),
            columns,
        });
    }

    /// The session ended normally: the writer marks it finished once every lap submitted
    /// before is durable, then removes the write-ahead file. Returns the write-ahead append
    /// failures (a session with any stays unfinished).
    pub fn finish(
        self,
        writer: &mut ArchiveWriter,
        finished_at: i64,
        results: Vec<ResultEntry>,
    ) -> Vec<String> {
        self.finish_ended_by(writer, finished_at, results, None)
    }

    /// [`Self::finish`] for a session an operator ended early, saying who.
    pub fn finish_ended_by(
        mut self,
        writer: &mut ArchiveWriter,
        finished_at: i64,
        results: Vec<ResultEntry>,
        ended_by: Option<String>,
    ) -> Vec<String> {
        let finished = self.errors.is_empty().then_some((finished_at, results));
        self.close(writer, finished, ended_by)
    }

    /// The session ended in an error: its laps are still written, it stays unfinished, and the
    /// write-ahead file is kept for recovery.
    pub fn abandon(mut self, writer: &mut ArchiveWriter) -> Vec<String> {
        self.close(writer, None, None)
    }

    fn close(
        &mut self,
        writer: &mut ArchiveWriter,
        finished: Option<(i64, Vec<ResultEntry>)>,
        ended_by: Option<String>,
    ) -> Vec<String> {
        writer.submit(ArchiveJob::Close(Box::new(SessionClose {
            id: self.id,
            finished,
            ended_by,
            wal: self.wal.take(),
        })));
        std::mem::take(&mut self.errors)
    }
}
