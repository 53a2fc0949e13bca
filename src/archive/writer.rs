//! The archive writer: a thread of its own that writes lap files and the index, fed through a
//! bounded channel. [`ArchiveWriter::submit`] never blocks the simulation: when the channel is
//! full the job waits in a local queue (in order, nothing dropped), and the stall is counted
//! and logged; the queue drains on the next submit or at [`ArchiveWriter::finish`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use apexsim_systems::record::LapColumns;
use uuid::Uuid;

use super::index::{Index, ResultEntry, SessionRow};
use super::{ArchiveError, LapMeta, write_lap};

/// Jobs the channel holds before submits start queueing locally.
pub const CHANNEL_CAPACITY: usize = 256;

/// Work for the writer thread.
#[derive(Debug)]
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
    /// A session ended with this classification.
    Finished {
        /// Session id.
        id: Uuid,
        /// Unix seconds.
        finished_at: i64,
        /// Classification.
        results: Vec<ResultEntry>,
    },
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
    /// Every failure, in order.
    pub errors: Vec<String>,
}

/// Handle to the writer thread.
pub struct ArchiveWriter {
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
        let index = Index::open(data)?;
        let recovered = super::wal::recover(data, &index)?;
        if recovered.files > 0 {
            tracing::warn!(
                ?recovered,
                "recovered write-ahead files from an unclean stop"
            );
        }
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        let data = data.to_owned();
        let thread = std::thread::Builder::new()
            .name("apexsim-archive".into())
            .spawn(move || run(&data, index, rx))
            .map_err(|source| ArchiveError::Io {
                path: PathBuf::from("<archive thread>"),
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            backlog: VecDeque::new(),
            stalls: 0,
            max_backlog: 0,
        })
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

fn run(data: &Path, mut index: Index, rx: Receiver<ArchiveJob>) -> WriterReport {
    let mut report = WriterReport::default();
    for job in rx {
        let result = match job {
            ArchiveJob::Templates(t) => index.put_templates(&t, unix_now()),
            ArchiveJob::Session(s) => index.put_session(&s),
            ArchiveJob::Lap { meta, columns } => {
                let rows = columns.len();
                write_lap(data, &meta, columns).and_then(|path| {
                    let rel = path.strip_prefix(data).unwrap_or(&path);
                    index.put_lap(&meta, rel, rows)?;
                    report.laps_written += 1;
                    report.rows_written += rows as u64;
                    Ok(())
                })
            }
            ArchiveJob::Finished {
                id,
                finished_at,
                results,
            } => index.finish_session(id, finished_at, &results),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "archive write failed");
            report.errors.push(e.to_string());
        }
    }
    report
}
