//! Telemetry posted to the REST API (`POST /api/v1/telemetry`, seed 002's record): each
//! [`TelemetryRecord`] is one sample of one driver's car in one of their sessions.
//!
//! The records of a (driver, session) pair are one archive session (`source=api`, its id a
//! UUID v5 of the pair): they play into a telemetry-driven car of a world of its own, one tick
//! per record, as live iRacing telemetry does ([`super::live`]), and each complete lap is
//! archived as soon as its time is known. The session has a write-ahead file like a race's:
//! a batch's rows are appended to it before the post is answered, so a process killed after
//! answering loses nothing it accepted. A session without a record for the idle time is
//! finished (a last lap waiting for its official time keeps the samples'), and so is every
//! session when the recorder stops.
//!
//! A batch is checked whole before any of it is played: a record that is malformed, goes back
//! in its session's clock or changes the session's track or car refuses the batch, naming the
//! record and its field, and nothing of it is kept.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use apexsim_systems::prelude::*;
use bevy_ecs::entity::Entity;
use thiserror::Error;
use uuid::Uuid;

mod record;

use record::invalid;
pub use record::{
    Invalid, MAX_NAME, MAX_RECORDS, PostedTrack, TelemetryRecord, TireTemps, session_id,
};

use super::{LapCollector, LapNumbers, RecordingInfo, begin_session, submit_lap};
use crate::archive::index::Index;
use crate::archive::wal::WalSync;
use crate::archive::writer::ArchiveWriter;
use crate::archive::{ArchiveError, Source};
use crate::events::ArchiveWiring;

/// Why a batch was not recorded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PostError {
    /// A record does not fit its session: `index` is its place in the batch.
    #[error("record {index}: {invalid}")]
    Record {
        /// The record's place in the batch.
        index: usize,
        /// What is wrong.
        invalid: Invalid,
    },
    /// The session was finished before (idle, or by an earlier process); records cannot be
    /// added to it.
    #[error(
        "record {index}: session {session} ({name:?}) is already archived and finished; post under a new session name"
    )]
    Finished {
        /// The record's place in the batch.
        index: usize,
        /// The archive session.
        session: Uuid,
        /// The driver's session name.
        name: String,
    },
    /// Another process writes the session.
    #[error("record {index}: session {session} is being written by another process")]
    Busy {
        /// The record's place in the batch.
        index: usize,
        /// The archive session.
        session: Uuid,
    },
    /// The recorder has more batches waiting than it holds; try again.
    #[error("the telemetry recorder is busy; retry")]
    Full,
    /// The recorder has stopped (the server is shutting down).
    #[error("the telemetry recorder has stopped")]
    Stopped,
    /// The archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// One session's part of a post.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PostedSession {
    /// The archive session.
    pub session: Uuid,
    /// The driver.
    pub driver: String,
    /// The driver's session name.
    pub name: String,
    /// Records of this post in it.
    pub records: usize,
    /// Records in it so far.
    pub total_records: u64,
    /// Laps of it archived so far.
    pub laps_archived: usize,
    /// Whether this post began it.
    pub began: bool,
}

/// What a post recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Posted {
    /// Records taken.
    pub records: usize,
    /// The sessions they went to, in order of first appearance.
    pub sessions: Vec<PostedSession>,
    /// Fields given that the archive has no column for (checked, then left out).
    pub not_archived: Vec<String>,
}

/// How the recorder runs.
#[derive(Debug, Clone)]
pub struct PostedOptions {
    /// When the sessions' write-ahead files are fsynced.
    pub wal_sync: WalSync,
    /// A session without a record for this long is finished.
    pub idle: Duration,
    /// What the archive writer is wired to.
    pub wiring: ArchiveWiring,
}

impl Default for PostedOptions {
    fn default() -> Self {
        Self {
            wal_sync: WalSync::default(),
            idle: Duration::from_secs(300),
            wiring: ArchiveWiring::default(),
        }
    }
}

/// Batches waiting for the recorder at most; more are refused with [`PostError::Full`].
const QUEUE: usize = 64;

/// A batch: checked records, each with its track.
struct Batch {
    records: Vec<(TelemetryRecord, PostedTrack)>,
    reply: tokio::sync::oneshot::Sender<Result<Posted, PostError>>,
}

/// The recorder of posted telemetry: a thread holding the live sessions, fed batches by
/// [`PostedTelemetry::post`]. [`PostedTelemetry::stop`] finishes every session and waits for
/// their laps to be durable.
#[derive(Debug)]
pub struct PostedTelemetry {
    tx: Mutex<Option<mpsc::SyncSender<Batch>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PostedTelemetry {
    /// Starts the recorder over the archive under `data`.
    ///
    /// # Errors
    /// [`ArchiveError`] when the archive cannot be opened or the thread started.
    pub fn start(data: PathBuf, opts: PostedOptions) -> Result<Arc<Self>, ArchiveError> {
        let index = Index::open(&data)?;
        let writer = opts.wiring.start_writer(&data)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("apexsim-posted".into())
            .spawn(move || {
                Recorder {
                    index,
                    writer,
                    opts,
                    live: HashMap::new(),
                    finished: HashSet::new(),
                }
                .run(&rx);
            })
            .map_err(|source| ArchiveError::Io { path: data, source })?;
        Ok(Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Records a batch of checked records, each with its track ([`PostedTrack::of`]); answers
    /// once their rows are in the sessions' write-ahead files.
    ///
    /// # Errors
    /// [`PostError`]: a record that does not fit its session, a finished or busy session, a
    /// full queue, a stopped recorder.
    pub async fn post(
        &self,
        records: Vec<(TelemetryRecord, PostedTrack)>,
    ) -> Result<Posted, PostError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let tx = self.tx.lock().map_err(|_| PostError::Stopped)?;
            let tx = tx.as_ref().ok_or(PostError::Stopped)?;
            tx.try_send(Batch { records, reply }).map_err(|e| match e {
                mpsc::TrySendError::Full(_) => PostError::Full,
                mpsc::TrySendError::Disconnected(_) => PostError::Stopped,
            })?;
        }
        answer.await.map_err(|_| PostError::Stopped)?
    }

    /// Finishes every session and waits until their laps are durable. Posts after it are
    /// refused.
    pub fn stop(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the posted-telemetry recorder panicked");
        }
    }
}

impl Drop for PostedTelemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One posted session being recorded.
struct Live {
    name: String,
    info: RecordingInfo,
    archive: crate::archive::session::ArchiveSession,
    numbers: LapNumbers,
    sim: Simulation,
    car: Entity,
    collector: LapCollector,
    records: u64,
    first_time: f64,
    last_time: f64,
    laps: usize,
    seen: Instant,
}

struct Recorder {
    index: Index,
    writer: ArchiveWriter,
    opts: PostedOptions,
    live: HashMap<Uuid, Live>,
    /// Sessions this recorder finished.
    finished: HashSet<Uuid>,
}

impl Recorder {
    fn run(mut self, rx: &mpsc::Receiver<Batch>) {
        let tick = (self.opts.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match rx.recv_timeout(tick) {
                Ok(batch) => {
                    let answer = self.record(batch.records);
                    // The poster may have gone; what it sent is recorded all the same.
                    let _ = batch.reply.send(answer);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.finish_idle();
        }
        let ids: Vec<Uuid> = self.live.keys().copied().collect();
        for id in ids {
            self.finish(id);
        }
        let report = self.writer.finish();
        if !report.errors.is_empty() {
            tracing::error!(errors = ?report.errors, "posted telemetry: archive errors");
        }
    }

    /// Checks a batch against its sessions, then plays it.
    fn record(
        &mut self,
        records: Vec<(TelemetryRecord, PostedTrack)>,
    ) -> Result<Posted, PostError> {
        // The check: each session's clock goes forward, its track and car stay, and a session
        // not live yet can begin.
        let mut last: HashMap<Uuid, f64> = HashMap::new();
        let mut fresh: HashMap<Uuid, (usize, &TelemetryRecord, &PostedTrack)> = HashMap::new();
        for (index, (r, track)) in records.iter().enumerate() {
            let id = r.session_id();
            let bad = |field, message: String| PostError::Record {
                index,
                invalid: invalid(field, message),
            };
            let (first_track, first_car, before) = match (self.live.get(&id), fresh.get(&id)) {
                (Some(l), _) => (
                    l.info.track.as_str(),
                    l.info.car.as_str(),
                    last.get(&id).copied().unwrap_or(l.last_time),
                ),
                (None, Some((_, f, t))) => (
                    t.slug.as_str(),
                    f.car.as_str(),
                    last.get(&id).copied().unwrap_or(f64::NEG_INFINITY),
                ),
                (None, None) => {
                    if self.finished.contains(&id) || self.index.session(id)?.is_some() {
                        return Err(PostError::Finished {
                            index,
                            session: id,
                            name: r.session.clone(),
                        });
                    }
                    fresh.insert(id, (index, r, track));
                    last.insert(id, r.time_s);
                    continue;
                }
            };
            if track.slug != first_track {
                return Err(bad(
                    "track",
                    format!("the session is on {first_track}, not {}", track.slug),
                ));
            }
            if r.car != first_car {
                return Err(bad(
                    "car",
                    format!("the session's car is {first_car:?}, not {:?}", r.car),
                ));
            }
            if r.time_s <= before {
                return Err(bad(
                    "time_s",
                    format!(
                        "{} s is not after the session's previous record ({before} s)",
                        r.time_s
                    ),
                ));
            }
            last.insert(id, r.time_s);
        }
        let mut began = HashSet::new();
        let mut order: Vec<(usize, Uuid)> = fresh.iter().map(|(id, (i, ..))| (*i, *id)).collect();
        order.sort_unstable();
        for (index, id) in order {
            let (_, r, track) = fresh[&id];
            let live = self.begin(id, r, track).map_err(|e| match e {
                ArchiveError::SessionBusy { session, .. } => PostError::Busy { index, session },
                e => PostError::Archive(e),
            })?;
            self.live.insert(id, live);
            began.insert(id);
        }
        // The play: one tick per record in its session's world.
        let mut sessions: Vec<PostedSession> = Vec::new();
        let mut not_archived: Vec<String> = Vec::new();
        let n = records.len();
        for (r, track) in &records {
            let id = r.session_id();
            for f in r.not_archived() {
                if !not_archived.iter().any(|n| n == f) {
                    not_archived.push(f.to_owned());
                }
            }
            let Some(live) = self.live.get_mut(&id) else {
                continue;
            };
            let sample = r.sample(live.records, track.length_m);
            live.records += 1;
            if live.records == 1 {
                live.first_time = r.time_s;
            }
            live.last_time = r.time_s;
            live.seen = Instant::now();
            if let Some(mut feed) = live.sim.world_mut().get_mut::<PlaybackFeed>(live.car) {
                feed.push(sample);
            }
            live.sim.step();
            match sessions.iter_mut().find(|s| s.session == id) {
                Some(s) => s.records += 1,
                None => sessions.push(PostedSession {
                    session: id,
                    driver: r.driver.clone(),
                    name: r.session.clone(),
                    records: 1,
                    total_records: 0,
                    laps_archived: 0,
                    began: began.contains(&id),
                }),
            }
        }
        for s in &mut sessions {
            if let Some(live) = self.live.get_mut(&s.session) {
                live.flush(&mut self.writer);
                s.total_records = live.records;
                s.laps_archived = live.laps;
            }
        }
        Ok(Posted {
            records: n,
            sessions,
            not_archived,
        })
    }

    fn begin(
        &mut self,
        id: Uuid,
        r: &TelemetryRecord,
        track: &PostedTrack,
    ) -> Result<Live, ArchiveError> {
        let info = RecordingInfo {
            version: 0,
            hz: POSTED_HZ,
            records: 0,
            track_name: track.name.clone(),
            track_config: None,
            track: track.slug.clone(),
            track_length_m: track.length_m,
            car: r.car.clone(),
            session_type: r.session_type.clone().unwrap_or_else(|| "Practice".into()),
            driver: r.driver.clone(),
            started_at: jiff::Timestamp::now().as_second(),
            sectors: track.sectors.clone(),
            identity: None,
        };
        let archive = begin_session(&mut self.writer, id, &info, Source::Api, self.opts.wal_sync)?;
        let mut sim = Simulation::new(SimulationPlugin::default());
        let (_, car) = spawn_fed(
            sim.world_mut(),
            id,
            PlaybackFeed::live(),
            POSTED_HZ,
            track.length_m,
        );
        tracing::info!(session = %id, driver = r.driver, name = r.session, track = track.slug, "posted session began");
        Ok(Live {
            name: r.session.clone(),
            info,
            archive,
            numbers: LapNumbers::default(),
            sim,
            car,
            collector: LapCollector::default(),
            records: 0,
            first_time: r.time_s,
            last_time: r.time_s,
            laps: 0,
            seen: Instant::now(),
        })
    }

    fn finish_idle(&mut self) {
        let idle = self.opts.idle;
        let gone: Vec<Uuid> = self
            .live
            .iter()
            .filter(|(_, l)| l.seen.elapsed() >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.finish(id);
        }
    }

    /// Finishes a session: a lap still waiting for its official time keeps the samples'.
    fn finish(&mut self, id: Uuid) {
        let Some(mut live) = self.live.remove(&id) else {
            return;
        };
        end_feed(live.sim.world_mut(), live.car);
        live.sim.step();
        live.flush(&mut self.writer);
        let duration = (live.last_time - live.first_time).max(0.0);
        let errors = live.archive.finish(
            &mut self.writer,
            live.info.started_at.saturating_add(duration.round() as i64),
            Vec::new(),
        );
        if !errors.is_empty() {
            tracing::error!(session = %id, ?errors, "posted session not finished cleanly");
        }
        tracing::info!(
            session = %id,
            name = live.name,
            records = live.records,
            laps = live.laps,
            "posted session finished"
        );
        self.finished.insert(id);
    }
}

/// Nominal sample rate of posted records (iRacing's telemetry rate): a gap of more than 2.5
/// samples in a session's clock makes the lap invalid.
pub const POSTED_HZ: f64 = 60.0;

impl Live {
    /// Appends the rows played since the last flush to the write-ahead file and archives the
    /// laps whose time is known.
    fn flush(&mut self, writer: &mut ArchiveWriter) {
        let chunk = self.collector.drain(&mut self.sim);
        self.archive.record_rows(&chunk, |_| 0);
        for (t, columns) in self.collector.take_ready() {
            let from = (&self.info, Source::Api);
            let lap = submit_lap(
                writer,
                &mut self.archive,
                from,
                &mut self.numbers,
                t,
                columns,
            );
            if lap.archived_lap.is_some() {
                self.laps += 1;
            }
            tracing::info!(
                lap = lap.lap,
                time_s = lap.time_s,
                valid = lap.valid,
                "posted lap archived"
            );
        }
    }
}
