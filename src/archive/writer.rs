//! The archive writer: a thread of its own that writes lap files and the index, fed through a
//! bounded channel. [`ArchiveWriter::submit`] never blocks the simulation: when the channel is
//! full the job waits in a local queue (in order, nothing dropped), and the stall is counted
//! and logged; the queue drains on the next submit or at [`ArchiveWriter::finish`].
//!
//! The thread encodes a lap and writes it beside its final name; a second thread syncs and
//! renames it while the first encodes the next lap (group commit: the laps waiting are synced
//! and renamed together, and each directory is synced once for them). A write that fails (disk full, directory
//! gone) keeps the lap in memory and is tried again with a growing wait (0.25 s to 8 s), in
//! order; what still fails when the writer finishes is reported, and the race keeps its
//! write-ahead file for the next start.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TrySendError, channel, sync_channel,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apexsim_systems::record::LapColumns;
use arrow::array::RecordBatch;
use uuid::Uuid;

use super::index::{Index, ResultEntry, SessionRow};
use super::lock::Owner;
use super::wal::Wal;
use super::{ArchiveError, LapMeta, StagedLap, lap_batch, stage_lap};
use crate::analysis::store::{archive_thresholds, write_part};
use crate::analysis::{LapMetrics, Thresholds, lap_metrics};
use crate::events::{Event, EventBus, LapArchived, LapMetricsReady, SessionEnded};
use std::sync::Arc;

/// Jobs the channel holds before submits start queueing locally.
pub const CHANNEL_CAPACITY: usize = 256;

/// Work for the writer thread.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "laps are most of the jobs; their columns are moved, not copied"
)]
pub enum ArchiveJob {
    /// The content's race templates, to store in the index.
    Templates(Vec<crate::content::RaceTemplate>),
    /// A session began.
    Session(SessionRow),
    /// A lap to write and index.
    Lap {
        /// Its identity.
        meta: Box<LapMeta>,
        /// Its rows.
        columns: LapColumns,
    },
    /// A session's end: once every lap submitted for it before is durable and indexed, the
    /// session is marked finished (when it ended normally) and its write-ahead file removed.
    /// If a lap of it could not be written, it stays unfinished and its write-ahead file is
    /// kept for recovery.
    Close(Box<SessionClose>),
}

/// The end of a session, for [`ArchiveJob::Close`].
#[derive(Debug)]
pub struct SessionClose {
    /// Session id.
    pub id: Uuid,
    /// Unix seconds and classification, when the session ended normally; `None` when it ended
    /// in an error (its laps are written, it stays unfinished, its write-ahead file is kept).
    pub finished: Option<(i64, Vec<ResultEntry>)>,
    /// The session's write-ahead file, held locked until the session is closed.
    pub wal: Option<Wal>,
}

/// What the writer did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct WriterReport {
    /// Lap files written and indexed.
    pub laps_written: u64,
    /// Rows in them.
    pub rows_written: u64,
    /// Submits that found the channel full (the writer was behind).
    pub stalls: u64,
    /// Most jobs that waited in the local queue at once.
    pub max_backlog: usize,
    /// Writes that failed and were kept in memory to be tried again.
    pub retries: u64,
    /// Times the session's write-ahead file was fsynced (filled in by the session's owner).
    pub wal_syncs: u64,
    /// Every failure, in order.
    pub errors: Vec<String>,
}

/// What the writer tells others beyond the archive.
#[derive(Debug, Clone, Default)]
pub struct WriterHooks {
    /// Where complete laps are uploaded: each is put in the outbox in the transaction that
    /// indexes it.
    pub upload: Option<String>,
    /// Where sessions, laps and metrics are published once durable.
    pub bus: Option<EventBus>,
}

/// Handle to the writer thread.
pub struct ArchiveWriter {
    data: PathBuf,
    tx: Option<SyncSender<ArchiveJob>>,
    thread: Option<JoinHandle<WriterReport>>,
    backlog: VecDeque<ArchiveJob>,
    stalls: u64,
    max_backlog: usize,
}

impl ArchiveWriter {
    /// Opens the index under `data` (failing early if it cannot), recovers any write-ahead
    /// files an unclean stop left, and starts the thread.
    ///
    /// # Errors
    /// [`ArchiveError`] when the data directory or the index cannot be opened, or recovery
    /// fails.
    pub fn start(data: &Path) -> Result<Self, ArchiveError> {
        Self::start_with(data, WriterHooks::default())
    }

    /// As [`ArchiveWriter::start`], with the writer's events published on a bus and complete
    /// laps queued for upload.
    ///
    /// # Errors
    /// As [`ArchiveWriter::start`].
    pub fn start_with(data: &Path, hooks: WriterHooks) -> Result<Self, ArchiveError> {
        let index = Index::open(data)?;
        let owner = Owner::acquire(data)?;
        let cleaned = super::lock::clean_stray(data);
        if cleaned != super::lock::Cleaned::default() {
            tracing::info!(?cleaned, "removed files of writers that are gone");
        }
        super::wal::recover_logged(data, &index)?;
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        let dir = data.to_owned();
        let thread = std::thread::Builder::new()
            .name("apexsim-archive".into())
            .spawn(move || run(&dir, owner, index, rx, hooks))
            .map_err(|source| ArchiveError::Io {
                path: PathBuf::from("<archive thread>"),
                source,
            })?;
        Ok(Self {
            data: data.to_owned(),
            tx: Some(tx),
            thread: Some(thread),
            backlog: VecDeque::new(),
            stalls: 0,
            max_backlog: 0,
        })
    }

    /// The data directory it writes.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Hands a job to the writer without blocking.
    pub fn submit(&mut self, job: ArchiveJob) {
        self.backlog.push_back(job);
        self.drain_backlog();
    }

    fn drain_backlog(&mut self) {
        let Some(tx) = &self.tx else {
            return;
        };
        while let Some(job) = self.backlog.pop_front() {
            match tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.backlog.push_front(job);
                    self.stalls += 1;
                    if self.backlog.len() > self.max_backlog {
                        self.max_backlog = self.backlog.len();
                        tracing::warn!(
                            backlog = self.backlog.len(),
                            "archive writer is behind; laps wait in memory"
                        );
                    }
                    return;
                }
                Err(TrySendError::Disconnected(job)) => {
                    self.backlog.push_front(job);
                    tracing::error!("archive writer thread is gone");
                    return;
                }
            }
        }
    }

    /// Sends what is queued (blocking now), stops the thread and returns its report.
    pub fn finish(mut self) -> WriterReport {
        let mut lost = 0;
        if let Some(tx) = self.tx.take() {
            for job in self.backlog.drain(..) {
                if tx.send(job).is_err() {
                    lost += 1;
                }
            }
        }
        let mut report = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| WriterReport {
                errors: vec!["archive writer thread panicked".into()],
                ..WriterReport::default()
            });
        if lost > 0 {
            report.errors.push(format!(
                "{lost} archive jobs could not be handed to the writer"
            ));
        }
        report.stalls = self.stalls;
        report.max_backlog = self.max_backlog;
        report
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// First wait before a failed write is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(8);

/// How often the writer looks for synced laps to index while a sync is in flight.
const SYNC_POLL: Duration = Duration::from_millis(2);

/// A session's lap metrics are stored as a part once this many laps wait...
const METRICS_PART_LAPS: usize = 64;

/// ...or once the first of them has waited this long (and when the session ends).
const METRICS_PART_AGE: Duration = Duration::from_secs(30);

/// Staged lap files waiting for their sync: the writer encodes the next lap meanwhile.
const COMMIT_QUEUE: usize = 8;

/// Work that failed and waits in memory to be tried again.
enum Retry {
    /// Encode and write the lap file (the batch holds the lap's buffers).
    Lap(LapWork),
    /// The file is in place; its index row is not.
    IndexLap(LapWork, PathBuf),
    /// An index job (session, templates, results).
    Job(Box<ArchiveJob>),
}

struct LapWork {
    meta: Box<LapMeta>,
    batch: RecordBatch,
    rows: usize,
    /// The lap's metrics, stored once the lap is durable.
    metrics: Option<Box<LapMetrics>>,
}

struct Pending {
    work: Retry,
    attempts: u32,
    due: Instant,
    error: String,
}

impl Pending {
    /// The session of a lap waiting to be written.
    fn session(&self) -> Option<Uuid> {
        match &self.work {
            Retry::Lap(lap) | Retry::IndexLap(lap, _) => Some(lap.meta.session),
            Retry::Job(_) => None,
        }
    }
}

/// A staged file's sync, done on the commit thread.
struct Commit {
    lap: LapWork,
    staged: StagedLap,
    attempts: u32,
}

enum Committed {
    Done(LapWork, PathBuf, u32),
    Failed(LapWork, ArchiveError, u32),
}

/// The writer thread's state: the index, what is in flight on the commit thread, and what
/// waits to be retried.
struct Worker {
    data: PathBuf,
    owner: Owner,
    index: Index,
    report: WriterReport,
    retry: VecDeque<Pending>,
    in_flight: usize,
    commit_tx: Option<SyncSender<Commit>>,
    done_rx: Receiver<Committed>,
    /// What lap metrics are computed with (the archive's `thresholds.toml`, else defaults).
    thresholds: Thresholds,
    /// Sector starts of each session seen, for lap metrics.
    sectors: HashMap<Uuid, Vec<f32>>,
    /// Metrics of durable laps not stored yet, by session, with when the first came.
    metrics: HashMap<Uuid, (Instant, Vec<(LapMeta, LapMetrics)>)>,
    hooks: WriterHooks,
}

fn run(
    data: &Path,
    owner: Owner,
    index: Index,
    rx: Receiver<ArchiveJob>,
    hooks: WriterHooks,
) -> WriterReport {
    let (commit_tx, commit_rx) = sync_channel::<Commit>(COMMIT_QUEUE);
    let (done_tx, done_rx) = channel();
    let committer = std::thread::Builder::new()
        .name("apexsim-archive-sync".into())
        .spawn(move || {
            // Group commit: every staged file waiting is synced and renamed, then each
            // directory they went into is synced once, then they are reported.
            while let Ok(first) = commit_rx.recv() {
                let mut group = vec![first];
                group.extend(commit_rx.try_iter());
                let mut dirs: Vec<PathBuf> = Vec::new();
                let done: Vec<Committed> = group
                    .into_iter()
                    .map(|c| match c.staged.sync_and_rename() {
                        Ok(path) => {
                            if let Some(dir) = path.parent()
                                && !dirs.iter().any(|d| d == dir)
                            {
                                dirs.push(dir.to_owned());
                            }
                            Committed::Done(c.lap, path, c.attempts)
                        }
                        Err(e) => Committed::Failed(c.lap, e, c.attempts),
                    })
                    .collect();
                for dir in &dirs {
                    super::sync_dir(dir);
                }
                for d in done {
                    if done_tx.send(d).is_err() {
                        return;
                    }
                }
            }
        });
    let mut worker = Worker {
        data: data.to_owned(),
        owner,
        index,
        report: WriterReport::default(),
        retry: VecDeque::new(),
        in_flight: 0,
        // Without a commit thread the writer syncs laps itself.
        commit_tx: committer.is_ok().then_some(commit_tx),
        done_rx,
        thresholds: archive_thresholds(data).unwrap_or_else(|e| {
            tracing::error!(error = %e, "bad thresholds file: lap metrics use the defaults");
            Thresholds::default()
        }),
        sectors: HashMap::new(),
        metrics: HashMap::new(),
        hooks,
    };
    loop {
        worker.collect(false);
        worker.retry_due(false);
        worker.store_old_metrics();
        // Wait for the next job, but wake for a retry that is due, for metrics waiting to be
        // stored and, while a lap is being synced, often enough to index it as soon as it is
        // in place.
        let retry = worker
            .retry
            .front()
            .map(|p| p.due.saturating_duration_since(Instant::now()));
        let sync = (worker.in_flight > 0).then_some(SYNC_POLL);
        let metrics = worker
            .metrics
            .values()
            .map(|(since, _)| METRICS_PART_AGE.saturating_sub(since.elapsed()))
            .min();
        let job = match retry.into_iter().chain(sync).chain(metrics).min() {
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        worker.handle(job);
    }
    // The channel is closed: finish what is in flight, give everything that failed one last
    // try, and report what still could not be written.
    worker.collect(true);
    worker.retry_due(true);
    worker.collect(true);
    worker.store_metrics(None);
    worker.commit_tx = None;
    if let Ok(handle) = committer {
        let _ = handle.join();
    }
    let Worker {
        mut report, retry, ..
    } = worker;
    for p in retry {
        match p.work {
            Retry::Job(job) if matches!(*job, ArchiveJob::Close(_)) => {
                // Dropping the write-ahead file releases its lock and keeps it for recovery.
                report.errors.push(p.error);
            }
            _ => report.errors.push(format!(
                "{} (not written after {} attempts; the write-ahead file keeps the data)",
                p.error, p.attempts
            )),
        }
    }
    report
}

impl Worker {
    fn handle(&mut self, job: ArchiveJob) {
        match job {
            ArchiveJob::Lap { meta, columns } => {
                let rows = columns.len();
                // Metrics are computed here, off the simulation thread, before the columns
                // move into the batch.
                let sectors = self.sectors_of(meta.session);
                let metrics = match lap_metrics(
                    &columns,
                    meta.track_length_m,
                    meta.complete,
                    &sectors,
                    &self.thresholds,
                ) {
                    Ok(m) => Some(Box::new(m)),
                    Err(e) => {
                        tracing::warn!(error = %e, lap = meta.lap, car = meta.car, "lap has no metrics");
                        None
                    }
                };
                match lap_batch(&meta, columns) {
                    Ok(batch) => self.write(
                        LapWork {
                            meta,
                            batch,
                            rows,
                            metrics,
                        },
                        0,
                    ),
                    Err(e) => {
                        // Columns that do not form a batch will not form one later either.
                        tracing::error!(error = %e, lap = meta.lap, car = meta.car, "lap not archived");
                        self.report.errors.push(e.to_string());
                    }
                }
            }
            job => self.apply(job, 0),
        }
    }

    /// Stores the waiting lap metrics of one session (all with `None`) as a part of its metric
    /// tables. Derived data: a failure is logged, and `analyze` measures those laps again.
    fn store_metrics(&mut self, session: Option<Uuid>) {
        let sessions: Vec<Uuid> = match session {
            Some(s) => vec![s],
            None => self.metrics.keys().copied().collect(),
        };
        for s in sessions {
            if let Some((_, laps)) = self.metrics.remove(&s)
                && let Err(e) = write_part(&self.data, &laps)
            {
                tracing::warn!(error = %e, session = %s, "lap metrics not stored");
            }
        }
    }

    /// Stores the parts whose first lap has waited [`METRICS_PART_AGE`].
    fn store_old_metrics(&mut self) {
        let old: Vec<Uuid> = self
            .metrics
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= METRICS_PART_AGE)
            .map(|(s, _)| *s)
            .collect();
        for s in old {
            self.store_metrics(Some(s));
        }
    }

    /// Where a session's sectors start: as its row said, else as the index has it (a session
    /// recovered from its write-ahead file), else one sector.
    fn sectors_of(&mut self, session: Uuid) -> Vec<f32> {
        if let Some(s) = self.sectors.get(&session) {
            return s.clone();
        }
        let s = self.index.session_sectors(session).unwrap_or_default();
        self.sectors.insert(session, s.clone());
        s
    }

    /// Applies an index job after the laps submitted before it; a failure is retried.
    fn apply(&mut self, job: ArchiveJob, attempts: u32) {
        // Sessions and results are indexed after the laps submitted before them.
        self.collect(true);
        let result = match &job {
            ArchiveJob::Templates(t) => self.index.put_templates(t, unix_now()),
            ArchiveJob::Session(s) => {
                self.sectors.insert(s.id, s.sectors.clone());
                let put = self.index.put_session(s);
                if put.is_ok()
                    && let Some(bus) = &self.hooks.bus
                {
                    bus.publish(Event::SessionStart(Arc::new(s.clone())));
                }
                put
            }
            ArchiveJob::Close(close) => {
                let waiting = self
                    .retry
                    .iter()
                    .filter(|p| p.session() == Some(close.id))
                    .count();
                if waiting > 0 {
                    // Not durable yet: the session waits behind its laps.
                    let error = format!(
                        "session {} not marked finished: {waiting} of its laps could not be \
                         written; its write-ahead file is kept for recovery",
                        close.id
                    );
                    self.retry.push_back(Pending {
                        work: Retry::Job(Box::new(job)),
                        attempts,
                        due: Instant::now(),
                        error,
                    });
                    return;
                }
                match &close.finished {
                    Some((at, results)) => self.index.finish_session(close.id, *at, results),
                    None => Ok(()),
                }
            }
            ArchiveJob::Lap { .. } => Ok(()),
        };
        match result {
            Ok(()) => {
                if let ArchiveJob::Close(close) = job {
                    self.closed(*close);
                }
            }
            Err(e) => self.failed(Retry::Job(Box::new(job)), attempts, &e),
        }
    }

    /// A session whose laps are all durable: finished, its write-ahead file removed; ended in
    /// an error, its write-ahead file kept (the lock goes with the handle).
    fn closed(&mut self, close: SessionClose) {
        // Its metrics are stored before the session stops being live.
        self.store_metrics(Some(close.id));
        if let Some(bus) = &self.hooks.bus {
            bus.publish(Event::SessionEnd(Arc::new(SessionEnded {
                id: close.id,
                finished: close.finished.is_some(),
            })));
        }
        if close.finished.is_some()
            && let Some(wal) = close.wal
            && let Err(e) = wal.remove()
        {
            self.report.errors.push(e.to_string());
        }
    }

    /// Encodes and writes the lap's file and hands it to the commit thread.
    fn write(&mut self, lap: LapWork, attempts: u32) {
        match stage_lap(&self.data, &self.owner, &lap.meta, &lap.batch, lap.rows) {
            Ok(staged) => match &self.commit_tx {
                Some(tx) => {
                    self.in_flight += 1;
                    if let Err(err) = tx.send(Commit {
                        lap,
                        staged,
                        attempts,
                    }) {
                        self.in_flight -= 1;
                        let Commit { lap, staged, .. } = err.0;
                        self.committed(staged.commit(), lap, attempts);
                    }
                }
                None => self.committed(staged.commit(), lap, attempts),
            },
            Err(e) => self.failed(Retry::Lap(lap), attempts, &e),
        }
    }

    fn committed(&mut self, result: Result<PathBuf, ArchiveError>, lap: LapWork, attempts: u32) {
        match result {
            Ok(path) => self.index_lap(lap, path, attempts),
            Err(e) => self.failed(Retry::Lap(lap), attempts, &e),
        }
    }

    fn index_lap(&mut self, lap: LapWork, path: PathBuf, attempts: u32) {
        let rel = path.strip_prefix(&self.data).unwrap_or(&path).to_owned();
        match self
            .index
            .put_lap_queued(&lap.meta, &rel, lap.rows, self.hooks.upload.as_deref())
        {
            Ok(queued) => {
                if let Some(bus) = &self.hooks.bus {
                    bus.publish(Event::LapCompleted(Arc::new(LapArchived {
                        meta: (*lap.meta).clone(),
                        file: rel.clone(),
                        rows: lap.rows,
                        queued_for_upload: queued,
                    })));
                    if let Some(m) = &lap.metrics {
                        bus.publish(Event::MetricsExtracted(Arc::new(LapMetricsReady {
                            meta: (*lap.meta).clone(),
                            metrics: (**m).clone(),
                        })));
                    }
                }
                if attempts > 0 {
                    tracing::info!(file = %rel.display(), attempts, "lap archived after retrying");
                }
                self.report.laps_written += 1;
                self.report.rows_written += lap.rows as u64;
                if let Some(m) = lap.metrics {
                    let session = lap.meta.session;
                    let entry = self
                        .metrics
                        .entry(session)
                        .or_insert_with(|| (Instant::now(), Vec::new()));
                    entry.1.push(((*lap.meta).clone(), *m));
                    if entry.1.len() >= METRICS_PART_LAPS {
                        self.store_metrics(Some(session));
                    }
                }
            }
            Err(e) => self.failed(Retry::IndexLap(lap, path), attempts, &e),
        }
    }

    /// Takes the commit thread's results; with `wait`, until nothing is in flight.
    fn collect(&mut self, wait: bool) {
        while self.in_flight > 0 {
            let done = if wait {
                self.done_rx.recv().ok()
            } else {
                self.done_rx.try_recv().ok()
            };
            let Some(done) = done else {
                if wait {
                    // The commit thread is gone; what it held is in the write-ahead file.
                    self.report.errors.push(format!(
                        "{} staged laps lost with the sync thread",
                        self.in_flight
                    ));
                    self.in_flight = 0;
                }
                return;
            };
            self.in_flight -= 1;
            match done {
                Committed::Done(lap, path, attempts) => self.index_lap(lap, path, attempts),
                Committed::Failed(lap, e, attempts) => self.failed(Retry::Lap(lap), attempts, &e),
            }
        }
    }

    fn failed(&mut self, work: Retry, attempts: u32, error: &ArchiveError) {
        let attempts = attempts + 1;
        if attempts == 1 {
            tracing::warn!(%error, "archive write failed; the data stays in memory and is retried");
        } else {
            tracing::debug!(%error, attempts, "archive write failed again");
        }
        let wait = RETRY_FIRST
            .saturating_mul(1 << (attempts - 1).min(6))
            .min(RETRY_MAX);
        self.report.retries += 1;
        self.retry.push_back(Pending {
            work,
            attempts,
            due: Instant::now() + wait,
            error: error.to_string(),
        });
    }

    /// Tries again what is due (with `all`, everything), in the order it failed.
    fn retry_due(&mut self, all: bool) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(p) = self.retry.front() {
            if !all && p.due > now {
                break;
            }
            due.extend(self.retry.pop_front());
        }
        for p in due {
            match p.work {
                Retry::Lap(lap) => self.write(lap, p.attempts),
                Retry::IndexLap(lap, path) => self.index_lap(lap, path, p.attempts),
                Retry::Job(job) => self.apply(*job, p.attempts),
            }
        }
    }
}
