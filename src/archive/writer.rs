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

use std::collections::VecDeque;
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
    /// Who ended the session early, when an operator did.
    pub ended_by: Option<String>,
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

/// A lap that is durable and indexed, as [`WriterHooks::lap_durable`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct DurableLap<'a> {
    /// Its identity.
    pub meta: &'a LapMeta,
    /// Its file, relative to the data directory.
    pub file: &'a Path,
    /// Rows in it.
    pub rows: usize,
    /// Whether it waits in the upload outbox (queued now or before).
    pub queued_for_upload: bool,
}

/// What the writer tells the layers above it (lap metrics, the event bus), on its own thread
/// and in the order things happen. Every method does nothing unless implemented; `()` is the
/// writer without hooks.
pub trait WriterHooks: Send {
    /// A session began and is indexed.
    fn session_started(&mut self, _index: &Index, _row: &SessionRow) {}
    /// A lap was submitted: its columns before they are encoded. It is not durable yet.
    fn lap_submitted(&mut self, _index: &Index, _meta: &LapMeta, _columns: &LapColumns) {}
    /// A lap is durable and indexed.
    fn lap_durable(&mut self, _lap: DurableLap<'_>) {}
    /// Every lap of a session is durable (`finished`: the session ended normally).
    fn session_closed(&mut self, _session: Uuid, _finished: bool) {}
    /// When [`WriterHooks::wake`] is next due, if ever: the writer waits no longer.
    fn next_wake(&self) -> Option<Instant> {
        None
    }
    /// Time passed: do what is due (batched work).
    fn wake(&mut self, _now: Instant) {}
    /// The writer is finishing: do what is left.
    fn finish(&mut self) {}
}

impl WriterHooks for () {}

/// How a writer starts: where complete laps queue for upload, and its hooks.
pub struct WriterOptions {
    /// Where complete laps are uploaded: each is put in the outbox in the transaction that
    /// indexes it.
    pub upload: Option<super::outbox::UploadTarget>,
    /// What the writer tells the layers above it.
    pub hooks: Box<dyn WriterHooks>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            upload: None,
            hooks: Box::new(()),
        }
    }
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
        Self::start_with(data, WriterOptions::default())
    }

    /// As [`ArchiveWriter::start`], with hooks and complete laps queued for upload.
    ///
    /// # Errors
    /// As [`ArchiveWriter::start`].
    pub fn start_with(data: &Path, options: WriterOptions) -> Result<Self, ArchiveError> {
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
            .spawn(move || run(&dir, owner, index, rx, options))
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
    upload: Option<super::outbox::UploadTarget>,
    hooks: Box<dyn WriterHooks>,
}

fn run(
    data: &Path,
    owner: Owner,
    index: Index,
    rx: Receiver<ArchiveJob>,
    options: WriterOptions,
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
        upload: options.upload,
        hooks: options.hooks,
    };
    loop {
        worker.collect(false);
        worker.retry_due(false);
        let now = Instant::now();
        if worker.hooks.next_wake().is_some_and(|at| at <= now) {
            worker.hooks.wake(now);
        }
        // Wait for the next job, but wake for a retry that is due, for the hooks' batched
        // work and, while a lap is being synced, often enough to index it as soon as it is in
        // place.
        let retry = worker
            .retry
            .front()
            .map(|p| p.due.saturating_duration_since(now));
        let sync = (worker.in_flight > 0).then_some(SYNC_POLL);
        let hooks = worker
            .hooks
            .next_wake()
            .map(|at| at.saturating_duration_since(now));
        let job = match retry.into_iter().chain(sync).chain(hooks).min() {
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
    worker.hooks.finish();
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
                // The hooks see the columns here, off the simulation thread, before they move
                // into the batch.
                self.hooks.lap_submitted(&self.index, &meta, &columns);
                match lap_batch(&meta, columns) {
                    Ok(batch) => self.write(LapWork { meta, batch, rows }, 0),
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

    /// Applies an index job after the laps submitted before it; a failure is retried.
    fn apply(&mut self, job: ArchiveJob, attempts: u32) {
        // Sessions and results are indexed after the laps submitted before them.
        self.collect(true);
        let result = match &job {
            ArchiveJob::Templates(t) => self.index.put_templates(t, unix_now()),
            ArchiveJob::Session(s) => {
                let put = self.index.put_session(s);
                if put.is_ok() {
                    self.hooks.session_started(&self.index, s);
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
                    Some((at, results)) => {
                        self.index
                            .finish_session(close.id, *at, results, close.ended_by.as_deref())
                    }
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
        // What the hooks derive is stored before the session stops being live.
        self.hooks
            .session_closed(close.id, close.finished.is_some());
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
            .put_lap_queued(&lap.meta, &rel, lap.rows, self.upload.as_ref())
        {
            Ok(queued) => {
                self.hooks.lap_durable(DurableLap {
                    meta: &lap.meta,
                    file: &rel,
                    rows: lap.rows,
                    queued_for_upload: queued,
                });
                if attempts > 0 {
                    tracing::info!(file = %rel.display(), attempts, "lap archived after retrying");
                }
                self.report.laps_written += 1;
                self.report.rows_written += lap.rows as u64;
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
