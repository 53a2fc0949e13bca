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

use apexsim_systems::record::{LapAssembler, LapClosed, RecordChunk};
use bevy_ecs::entity::Entity;
use uuid::Uuid;

use super::index::{ResultEntry, SessionRow};
use super::session::ArchiveSession;
use super::wal::WalSync;
use super::wal::writer::whole_rows;
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
    /// Answered once everything sent before it is processed.
    Barrier(SyncSender<()>),
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
    /// Its slot in the [`SessionSplit`].
    slot: u32,
}

struct State {
    writer: ArchiveWriter,
    sync: WalSync,
    date: Date,
    assembler: LapAssembler,
    cars: HashMap<Entity, (Uuid, RecordedCar)>,
    sessions: HashMap<Uuid, Live>,
    split: SessionSplit,
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
            split: SessionSplit::default(),
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

    /// Waits until everything sent so far is processed: its rows are in the write-ahead
    /// files and its closed laps handed to the writer.
    pub fn wait(&self) {
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        self.send(RecorderMsg::Barrier(done));
        let _ = answer.recv();
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
                RecorderMsg::Barrier(done) => {
                    let _ = done.send(());
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
                let slot = self.split.open_slot();
                for car in cars {
                    self.split.assign(car.entity, slot, car.index);
                    self.cars.insert(car.entity, (id, car));
                }
                self.sessions.insert(
                    id,
                    Live {
                        archive,
                        track,
                        track_length_m,
                        slot,
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
        self.split.split(chunk);
        let split = &self.split;
        for live in self.sessions.values_mut() {
            let (rows, closed) = split.part(live.slot);
            if !rows.is_empty() || !closed.is_empty() {
                live.archive
                    .record(chunk, rows, closed, |e| split.index_of(e).unwrap_or(0));
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
        let split = &mut self.split;
        self.cars.retain(|&car, (s, _)| {
            let keep = *s != session;
            if !keep {
                split.unassign(car);
            }
            keep
        });
        let Some(live) = self.sessions.remove(&session) else {
            return;
        };
        self.split.close_slot(live.slot);
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

/// A world-wide chunk's rows bucketed by session, through tables indexed by entity and by
/// session slot: no hashing per row, and the buffers are reused from chunk to chunk.
#[derive(Debug, Default)]
pub struct SessionSplit {
    /// By entity index: the car, its session's slot and its index in the session.
    cars: Vec<Option<(Entity, u32, u8)>>,
    /// By slot: the rows of the last chunk, in row order, and the laps it closed.
    parts: Vec<(Vec<u32>, Vec<LapClosed>)>,
    /// Slots of ended sessions, for the next ones.
    free: Vec<u32>,
}

impl SessionSplit {
    /// A slot for a new session.
    pub fn open_slot(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.parts.push(Default::default());
            self.parts.len() as u32 - 1
        })
    }

    /// Frees a session's slot (its cars unassigned first).
    pub fn close_slot(&mut self, slot: u32) {
        if let Some((rows, closed)) = self.parts.get_mut(slot as usize) {
            rows.clear();
            closed.clear();
            self.free.push(slot);
        }
    }

    /// Records `car` as a car of the session in `slot`, with its index in the session.
    pub fn assign(&mut self, car: Entity, slot: u32, index: u8) {
        let at = car.index_u32() as usize;
        if self.cars.len() <= at {
            self.cars.resize(at + 1, None);
        }
        self.cars[at] = Some((car, slot, index));
    }

    /// Forgets a car.
    pub fn unassign(&mut self, car: Entity) {
        if let Some(entry) = self.cars.get_mut(car.index_u32() as usize)
            && entry.is_some_and(|(e, ..)| e == car)
        {
            *entry = None;
        }
    }

    fn lookup(&self, car: Entity) -> Option<(u32, u8)> {
        match self.cars.get(car.index_u32() as usize) {
            Some(Some((e, slot, index))) if *e == car => Some((*slot, *index)),
            _ => None,
        }
    }

    /// A car's index in its session.
    pub fn index_of(&self, car: Entity) -> Option<u8> {
        self.lookup(car).map(|(_, index)| index)
    }

    /// Buckets the chunk's rows and closed laps by session (rows of unknown cars are
    /// dropped), keeping row order.
    pub fn split(&mut self, chunk: &RecordChunk) {
        for (rows, closed) in &mut self.parts {
            rows.clear();
            closed.clear();
        }
        for (i, &car) in chunk.car[..whole_rows(chunk)].iter().enumerate() {
            if let Some((slot, _)) = self.lookup(car) {
                self.parts[slot as usize].0.push(i as u32);
            }
        }
        for closed in &chunk.closed {
            if let Some((slot, _)) = self.lookup(closed.car) {
                self.parts[slot as usize].1.push(*closed);
            }
        }
    }

    /// A slot's rows and closed laps from the last [`split`](Self::split).
    pub fn part(&self, slot: u32) -> (&[u32], &[LapClosed]) {
        self.parts
            .get(slot as usize)
            .map_or((&[], &[]), |(rows, closed)| (rows, closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apexsim_systems::record::LapSample;

    #[test]
    fn a_chunk_splits_by_session_in_row_order() {
        let mut world = bevy_ecs::world::World::new();
        let [a, b, c] = [(); 3].map(|()| world.spawn_empty().id());
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
        let mut split = SessionSplit::default();
        let (s1, s2) = (split.open_slot(), split.open_slot());
        split.assign(a, s1, 0);
        split.assign(b, s1, 1);
        split.assign(c, s2, 0);
        split.unassign(c);
        split.close_slot(s2);
        split.split(&chunk);
        let (rows, closed) = split.part(s1);
        assert_eq!(rows, [0, 1, 2, 4], "c's session ended: its row is dropped");
        assert_eq!(closed.len(), 1);
        assert_eq!(split.part(s2), (&[][..], &[][..]));
        assert_eq!(split.index_of(b), Some(1));
        assert_eq!(split.index_of(c), None);
        // A freed slot is reused, and an entity index reused by another entity is not
        // mistaken for the old car.
        assert_eq!(split.open_slot(), s2);
        world.despawn(a);
        let a2 = world.spawn_empty().id();
        assert_eq!(split.index_of(a2), None);
    }
}
