//! The archive work of a running world, off its simulation thread.
//!
//! Every 60 ticks the simulation thread swaps the world's [`RecordChunk`] with a spare one
//! (no allocation, no encoding) and sends it here. This thread splits the chunk by session,
//! appends each session's rows and closed laps to its write-ahead file, assembles laps and
//! hands them to the [`ArchiveWriter`], then sends the emptied chunk back for reuse. Sessions
//! are announced with [`RecorderMsg::Begin`] and ended with [`RecorderMsg::End`] through the
//! same channel, so each end follows the rows it closes.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use apexsim_systems::record::{LapAssembler, RecordChunk};
use bevy_ecs::entity::Entity;
use uuid::Uuid;

use super::index::{ResultEntry, SessionRow};
use super::session::ArchiveSession;
use super::wal::WalSync;
use super::writer::{ArchiveWriter, WriterReport};
use super::{ArchiveError, Date, LapMeta, Source};

/// A car of a session, as its laps are archived.
#[derive(Debug, Clone)]
pub struct RecordedCar {
    /// The car entity.
    pub entity: Entity,
    /// Index in the session.
    pub index: u8,
    /// Driver name.
    pub driver: String,
    /// Car model name.
    pub car_model: String,
}

/// What the simulation thread tells the recorder.
// A chunk is moved, not copied, four times a second: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RecorderMsg {
    /// A session starts recording.
    Begin {
        /// The index row.
        row: SessionRow,
        /// Track length in metres.
        track_length_m: f32,
        /// Its cars, by index.
        cars: Vec<RecordedCar>,
        /// Told whether the write-ahead file could be created, when the sender waits for it.
        ack: Option<SyncSender<Result<(), ArchiveError>>>,
    },
    /// The rows of the last flush interval.
    Chunk(RecordChunk),
    /// The race templates as loaded (at start and after each content reload), for the index.
    Templates(Vec<crate::content::RaceTemplate>),
    /// A session ended: finished with its results, or in a fault (unfinished, write-ahead file
    /// kept).
    End {
        /// The session.
        session: Uuid,
        /// Unix seconds.
        finished_at: i64,
        /// Classification.
        results: Vec<ResultEntry>,
        /// Why it ended abnormally.
        fault: Option<String>,
        /// Who ended it early, when an operator did (it is classified and archived).
        ended_by: Option<String>,
    },
}

/// Handle to the recorder thread.
pub struct Recorder {
    tx: Option<SyncSender<RecorderMsg>>,
    spare: Receiver<RecordChunk>,
    thread: Option<JoinHandle<WriterReport>>,
}

/// Chunks in flight before the simulation thread waits (4 s of flushes).
const QUEUE: usize = 16;

struct Live {
    archive: ArchiveSession,
    track: String,
    track_length_m: f32,
}

struct State {
    writer: ArchiveWriter,
    sync: WalSync,
    date: Date,
    assembler: LapAssembler,
    cars: HashMap<Entity, (Uuid, RecordedCar)>,
    sessions: HashMap<Uuid, Live>,
    errors: Vec<String>,
    wal_syncs: u64,
    observe: Box<dyn FnMut(std::time::Duration) + Send>,
}

impl Recorder {
    /// Starts the thread over a writer. `observe` is told how long each chunk's archive work
    /// took (for a histogram).
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(
        writer: ArchiveWriter,
        sync: WalSync,
        observe: impl FnMut(std::time::Duration) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (spare_tx, spare) = std::sync::mpsc::sync_channel(QUEUE + 2);
        let state = State {
            writer,
            sync,
            date: Date::today(),
            assembler: LapAssembler::default(),
            cars: HashMap::new(),
            sessions: HashMap::new(),
            errors: Vec::new(),
            wal_syncs: 0,
            observe: Box::new(observe),
        };
        let thread = std::thread::Builder::new()
            .name("apexsim-recorder".into())
            .spawn(move || state.run(rx, spare_tx))?;
        Ok(Self {
            tx: Some(tx),
            spare,
            thread: Some(thread),
        })
    }

    /// Sends a message; waits when the recorder is `QUEUE` chunks behind.
    pub fn send(&self, msg: RecorderMsg) {
        if let Some(tx) = &self.tx
            && tx.send(msg).is_err()
        {
            tracing::error!("the recorder thread is gone; archive data lost");
        }
    }

    /// Begins a session and waits until its write-ahead file exists (or could not be made).
    ///
    /// # Errors
    /// [`ArchiveError`] from [`ArchiveSession::begin`]; [`ArchiveError::Io`] if the recorder
    /// thread is gone.
    pub fn begin(
        &self,
        row: SessionRow,
        track_length_m: f32,
        cars: Vec<RecordedCar>,
    ) -> Result<(), ArchiveError> {
        let (ack, answer) = std::sync::mpsc::sync_channel(1);
        self.send(RecorderMsg::Begin {
            row,
            track_length_m,
            cars,
            ack: Some(ack),
        });
        answer.recv().unwrap_or_else(|_| {
            Err(ArchiveError::Io {
                path: std::path::PathBuf::new(),
                source: std::io::Error::other("the recorder thread is gone"),
            })
        })
    }

    /// Swaps the world's chunk with an emptied one the recorder returned (or a new one) and
    /// sends the full one. The simulation thread does no archive work beyond this swap.
    pub fn flush(&self, chunk: &mut RecordChunk) {
        let mut full = self.spare.try_recv().unwrap_or_default();
        full.clear();
        std::mem::swap(chunk, &mut full);
        self.send(RecorderMsg::Chunk(full));
    }

    /// Stops the thread once everything sent is processed, and finishes the writer.
    pub fn finish(mut self) -> WriterReport {
        self.tx.take();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| WriterReport {
                errors: vec!["the recorder thread panicked".into()],
                ..WriterReport::default()
            })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn run(mut self, rx: Receiver<RecorderMsg>, spare: SyncSender<RecordChunk>) -> WriterReport {
        while let Ok(msg) = rx.recv() {
            match msg {
                RecorderMsg::Begin {
                    row,
                    track_length_m,
                    cars,
                    ack,
                } => {
                    let result = self.begin(row, track_length_m, cars);
                    if let Some(ack) = ack {
                        let _ = ack.send(result);
                    }
                }
                RecorderMsg::Templates(templates) => {
                    self.writer
                        .submit(crate::archive::writer::ArchiveJob::Templates(templates));
                }
                RecorderMsg::Chunk(mut chunk) => {
                    let started = Instant::now();
                    self.chunk(&chunk);
                    (self.observe)(started.elapsed());
                    chunk.clear();
                    let _ = spare.try_send(chunk);
                }
                RecorderMsg::End {
                    session,
                    finished_at,
                    results,
                    fault,
                    ended_by,
                } => self.end(session, finished_at, results, fault, ended_by),
            }
        }
        // Sessions still open (the process is stopping without ending them) stay unfinished
        // with their write-ahead files, for recovery.
        for (id, live) in self.sessions.drain() {
            tracing::warn!(session = %id, "session still open at stop: left for recovery");
            self.wal_syncs += live.archive.wal_syncs();
            self.errors.extend(live.archive.abandon(&mut self.writer));
        }
        let mut report = self.writer.finish();
        report.errors.append(&mut self.errors);
        report.wal_syncs = self.wal_syncs;
        report
    }

    fn begin(
        &mut self,
        row: SessionRow,
        track_length_m: f32,
        cars: Vec<RecordedCar>,
    ) -> Result<(), ArchiveError> {
        let id = row.id;
        let track = row.track.clone();
        let drivers = cars.iter().map(|c| c.driver.clone()).collect();
        match ArchiveSession::begin(
            &mut self.writer,
            row,
            track_length_m,
            drivers,
            self.date,
            self.sync,
        ) {
            Ok(archive) => {
                for car in cars {
                    self.cars.insert(car.entity, (id, car));
                }
                self.sessions.insert(
                    id,
                    Live {
                        archive,
                        track,
                        track_length_m,
                    },
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "cannot archive the session");
                self.errors.push(format!("session {id}: {e}"));
                Err(e)
            }
        }
    }

    fn chunk(&mut self, chunk: &RecordChunk) {
        if chunk.is_empty() && chunk.closed.is_empty() {
            return;
        }
        let cars = &self.cars;
        for (id, part) in split_by_session(chunk, |e| cars.get(&e).map(|(s, _)| *s)) {
            if let Some(live) = self.sessions.get_mut(&id) {
                live.archive
                    .record(&part, |e| cars.get(&e).map_or(0, |(_, c)| c.index));
            }
        }
        if let Some(tick) = chunk.columns.tick.iter().max() {
            // Logged once the rows are in the write-ahead files (the crash tests wait for it).
            tracing::debug!(tick, "write-ahead flush");
        }
        for lap in self.assembler.ingest(chunk) {
            let Some((session, car)) = self.cars.get(&lap.car) else {
                continue;
            };
            let Some(live) = self.sessions.get(session) else {
                continue;
            };
            let meta = LapMeta {
                source: Source::Sim,
                session: *session,
                car: car.index,
                car_model: car.car_model.clone(),
                driver: car.driver.clone(),
                track: live.track.clone(),
                track_length_m: live.track_length_m,
                lap: lap.lap,
                lap_time_s: lap.lap_time_s,
                complete: lap.complete,
                valid: lap.valid,
                date: self.date,
            };
            live.archive.submit_lap(&mut self.writer, meta, lap.columns);
        }
    }

    fn end(
        &mut self,
        session: Uuid,
        finished_at: i64,
        results: Vec<ResultEntry>,
        fault: Option<String>,
        ended_by: Option<String>,
    ) {
        self.cars.retain(|_, (s, _)| *s != session);
        let Some(live) = self.sessions.remove(&session) else {
            return;
        };
        self.wal_syncs += live.archive.wal_syncs();
        let errors = match fault {
            None => live
                .archive
                .finish_ended_by(&mut self.writer, finished_at, results, ended_by),
            Some(reason) => {
                tracing::warn!(%session, %reason, "session ended in a fault: archived unfinished");
                live.archive.abandon(&mut self.writer)
            }
        };
        self.errors.extend(errors);
    }
}

/// Splits a world-wide chunk into one chunk per session (`session_of` maps a car to its
/// session; rows of unknown cars are dropped), keeping row order.
pub fn split_by_session(
    chunk: &RecordChunk,
    session_of: impl Fn(Entity) -> Option<Uuid>,
) -> Vec<(Uuid, RecordChunk)> {
    // Each car's session, looked up once; then each session's rows gathered column by column.
    let mut car_slot: HashMap<Entity, Option<usize>> = HashMap::new();
    let mut parts: Vec<(Uuid, Vec<u32>, RecordChunk)> = Vec::new();
    let mut slot_of = |car: Entity, parts: &mut Vec<(Uuid, Vec<u32>, RecordChunk)>| {
        *car_slot.entry(car).or_insert_with(|| {
            let id = session_of(car)?;
            Some(match parts.iter().position(|(s, ..)| *s == id) {
                Some(k) => k,
                None => {
                    parts.push((id, Vec::new(), RecordChunk::default()));
                    parts.len() - 1
                }
            })
        })
    };
    let rows = chunk.len().min(chunk.columns.len());
    for (i, &car) in chunk.car.iter().enumerate().take(rows) {
        if let Some(k) = slot_of(car, &mut parts) {
            parts[k].1.push(i as u32);
        }
    }
    for closed in &chunk.closed {
        if let Some(k) = slot_of(closed.car, &mut parts) {
            parts[k].2.closed.push(*closed);
        }
    }
    parts
        .into_iter()
        .map(|(id, rows, mut part)| {
            part.car.extend(rows.iter().map(|&i| chunk.car[i as usize]));
            part.lap.extend(rows.iter().map(|&i| chunk.lap[i as usize]));
            part.columns.extend_from(&chunk.columns, &rows);
            (id, part)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apexsim_systems::record::{LapClosed, LapSample};

    #[test]
    fn a_chunk_splits_by_session_in_row_order() {
        let mut world = bevy_ecs::world::World::new();
        let [a, b, c] = [(); 3].map(|()| world.spawn_empty().id());
        let (s1, s2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut chunk = RecordChunk::default();
        for (i, car) in [a, b, a, c, b].into_iter().enumerate() {
            chunk.car.push(car);
            chunk.lap.push(i as u16);
            chunk.columns.push(&LapSample {
                tick: i as u64,
                ..LapSample::default()
            });
        }
        chunk.closed.push(LapClosed {
            car: b,
            session: b,
            lap: 1,
            complete: true,
            valid: true,
            lap_time_s: Some(1.0),
        });
        let parts = split_by_session(&chunk, |e| match e {
            e if e == a || e == b => Some(s1),
            e if e == c => None,
            _ => Some(s2),
        });
        assert_eq!(parts.len(), 1, "c's session is unknown: its row is dropped");
        let (id, part) = &parts[0];
        assert_eq!(*id, s1);
        assert_eq!(part.columns.tick, vec![0, 1, 2, 4]);
        assert_eq!(part.car, vec![a, b, a, b]);
        assert_eq!(part.closed.len(), 1);
    }
}
