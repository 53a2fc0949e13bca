//! The uploader: a task that takes due laps from the outbox one at a time, in the order they
//! were queued, and delivers each to its server (the lap, then once it was accepted, its
//! metrics), settling the row after every step, so a restart resumes where it stopped.
//!
//! It runs beside the work that fills the outbox (an ingest, a live session, the race server)
//! and wakes when the bus says a lap was archived; a lagged wake-up costs nothing, since the
//! outbox, not the bus, holds the laps. Stopping is two-phase: `finish` (no more laps are
//! coming) lets it deliver what is due within a drain window, `stop` (Ctrl-C) gives the lap in
//! flight a grace period and leaves the rest in the outbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio_util::sync::CancellationToken;

use super::client::{CoachClient, CoachError};
use super::{api, mapping};
use crate::analysis::store::archive_thresholds;
use crate::analysis::{Thresholds, lap_metrics};
use crate::archive::ArchiveError;
use crate::archive::outbox::{Entry, Outbox, State, now_ms};
use crate::events::{Event, EventBus, EventKind, UploadOutcome};

/// How retries of transient failures are spaced: exponential from `first`, doubling up to
/// `max`, each with up to as much again of random jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Wait after the first failure.
    pub first: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            max: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failure (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        backon::ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempts.saturating_sub(1) as usize)
            .unwrap_or(self.max)
    }
}

/// How the uploader works.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Deliver only rows for this server (`None`: every server in the outbox).
    pub url: Option<String>,
    /// Device tokens by server URL.
    pub tokens: HashMap<String, String>,
    /// Longest time one request may take.
    pub timeout: Duration,
    /// Spacing of retries.
    pub retry: RetryPolicy,
    /// After `stop`, how long the lap in flight may still take.
    pub grace: Duration,
    /// How long a claimed row is kept from other uploaders.
    pub lease: Duration,
    /// Whether invalid laps archived by this process are queued to be sent too (by default
    /// they are recorded as skipped).
    pub invalid_laps: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            url: None,
            tokens: HashMap::new(),
            timeout: super::client::DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            grace: Duration::from_secs(10),
            invalid_laps: false,
            // Longer than a lap and its metrics can take (two requests of `timeout`).
            lease: Duration::from_secs(3 * 60),
        }
    }
}

/// What an uploader did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UploadReport {
    /// Laps delivered with their metrics.
    pub delivered: u64,
    /// Attempts that failed and will be tried again.
    pub retried: u64,
    /// Laps the server refused (kept as failed).
    pub refused: u64,
    /// Laps left in flight at a stop (back in the outbox).
    pub interrupted: u64,
    /// Rows still waiting in the outbox when it stopped.
    pub waiting: u64,
    /// Rows set aside as failed in the outbox when it stopped.
    pub failed: u64,
    /// Bytes of lap JSON sent.
    pub bytes_sent: u64,
    /// The last errors (at most 20).
    pub errors: Vec<String>,
}

/// Most errors kept in a report.
const REPORT_ERRORS: usize = 20;

/// How often an idle uploader looks at the outbox for rows other processes queued.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// The uploader of one data directory.
pub struct Uploader {
    data: PathBuf,
    outbox: Arc<Mutex<Outbox>>,
    opts: UploadOptions,
    bus: Option<EventBus>,
    clients: HashMap<String, CoachClient>,
    thresholds: Arc<Thresholds>,
    report: UploadReport,
}

/// A lap made ready to send.
struct Prepared {
    /// The lap body as JSON, unless the lap was sent already.
    lap_json: Option<Vec<u8>>,
    /// Its metrics, or why there are none.
    metrics: Result<api::LapMetrics, String>,
}

/// Why one delivery step failed.
enum Failure {
    /// Try again later.
    Transient(String),
    /// Do not try again by itself.
    Refused(String),
}

impl From<CoachError> for Failure {
    fn from(e: CoachError) -> Self {
        if e.is_retryable() {
            Self::Transient(e.to_string())
        } else {
            Self::Refused(e.to_string())
        }
    }
}

impl Uploader {
    /// An uploader of `data`'s outbox, publishing upload outcomes on `bus`.
    ///
    /// # Errors
    /// [`ArchiveError`] when the index cannot be opened.
    pub fn new(
        data: &Path,
        opts: UploadOptions,
        bus: Option<EventBus>,
    ) -> Result<Self, ArchiveError> {
        let outbox = Outbox::open(data)?;
        let thresholds = archive_thresholds(data).unwrap_or_else(|e| {
            tracing::error!(error = %e, "bad thresholds file: uploaded metrics use the defaults");
            Thresholds::default()
        });
        Ok(Self {
            data: data.to_owned(),
            outbox: Arc::new(Mutex::new(outbox)),
            opts,
            bus,
            clients: HashMap::new(),
            thresholds: Arc::new(thresholds),
            report: UploadReport::default(),
        })
    }

    /// Runs until `stop`, or after `finish` once nothing is due within `drain` of it.
    pub async fn run(
        mut self,
        stop: CancellationToken,
        finish: CancellationToken,
        drain: Duration,
    ) -> UploadReport {
        let mut wake = self
            .bus
            .as_ref()
            .map(|b| b.subscribe(EventKind::LapArchived));
        let mut deadline: Option<i64> = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if deadline.is_none() && finish.is_cancelled() {
                deadline = Some(now_ms() + drain.as_millis() as i64);
            }
            let url = self.opts.url.clone();
            let lease = self.opts.lease;
            let claimed = self
                .db(move |o| o.claim(url.as_deref(), 1, lease))
                .await
                .map(|mut v| v.pop());
            let entry = match claimed {
                Ok(Some(e)) => e,
                Ok(None) => {
                    let url = self.opts.url.clone();
                    let next = self
                        .db(move |o| o.next_due(url.as_deref()))
                        .await
                        .unwrap_or(None);
                    if let Some(end) = deadline
                        && next.is_none_or(|t| t > end)
                    {
                        break;
                    }
                    let wait = next.map_or(IDLE_POLL, |t| {
                        Duration::from_millis(
                            (t - now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64
                        )
                    });
                    let woken = async {
                        match &mut wake {
                            Some(rx) => {
                                let _ = rx.recv().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = finish.cancelled(), if deadline.is_none() => {}
                        () = woken => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                Err(e) => {
                    self.note(format!("outbox: {e}"));
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(IDLE_POLL) => {}
                    }
                    continue;
                }
            };
            let id = entry.id;
            let grace = self.opts.grace;
            let delivered = {
                let fut = self.deliver(entry);
                tokio::pin!(fut);
                tokio::select! {
                    biased;
                    () = &mut fut => true,
                    () = stop.cancelled() => tokio::time::timeout(grace, &mut fut).await.is_ok(),
                }
            };
            if !delivered {
                self.report.interrupted += 1;
                if let Err(e) = self.db(move |o| o.release(id)).await {
                    self.note(format!("outbox: {e}"));
                }
            }
        }
        let url = self.opts.url.clone();
        if let Ok(c) = self.db(move |o| o.counts(url.as_deref())).await {
            self.report.waiting = c.waiting();
            self.report.failed = c.failed;
        }
        self.report
    }

    /// Runs `f` on the outbox on a blocking thread.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Outbox) -> Result<T, ArchiveError> + Send + 'static,
    ) -> Result<T, ArchiveError> {
        let outbox = Arc::clone(&self.outbox);
        tokio::task::spawn_blocking(move || {
            let o = outbox.lock().map_err(|_| ArchiveError::BadLapFile {
                path: PathBuf::from("<outbox>"),
                problem: "outbox lock poisoned".into(),
            })?;
            f(&o)
        })
        .await
        .map_err(|e| ArchiveError::BadLapFile {
            path: PathBuf::from("<outbox>"),
            problem: format!("outbox task: {e}"),
        })?
    }

    fn note(&mut self, error: String) {
        tracing::warn!(%error, "upload");
        if self.report.errors.len() >= REPORT_ERRORS {
            self.report.errors.remove(0);
        }
        self.report.errors.push(error);
    }

    fn client(&mut self, url: &str) -> Result<CoachClient, CoachError> {
        if let Some(c) = self.clients.get(url) {
            return Ok(c.clone());
        }
        let token = self.opts.tokens.get(url).cloned();
        let c = CoachClient::new(url, token, self.opts.timeout)?;
        self.clients.insert(url.to_owned(), c.clone());
        Ok(c)
    }

    /// Delivers one row and settles it in the outbox.
    async fn deliver(&mut self, entry: Entry) {
        let mut attempts = entry.attempts;
        let result = self.send(&entry, &mut attempts).await;
        let id = entry.id;
        let (settle, error, will_retry) = match result {
            Ok(note) => {
                self.report.delivered += 1;
                (
                    self.db(move |o| o.done(id, note.as_deref())).await,
                    None,
                    false,
                )
            }
            Err(Failure::Transient(error)) => {
                self.report.retried += 1;
                let next = now_ms() + self.opts.retry.delay(attempts).as_millis() as i64;
                let e = error.clone();
                let settle = self
                    .db(move |o| o.retry_later(id, attempts, next, &e))
                    .await;
                self.note(error.clone());
                (settle, Some(error), true)
            }
            Err(Failure::Refused(error)) => {
                self.report.refused += 1;
                let e = error.clone();
                let settle = self.db(move |o| o.fail(id, attempts, &e)).await;
                self.note(error.clone());
                (settle, Some(error), false)
            }
        };
        let outcome = UploadOutcome {
            entry: entry.id,
            lap_id: entry.lap_id,
            session: entry.session,
            car: entry.car,
            lap: entry.lap,
            attempts,
            error,
            will_retry,
        };
        if let Err(e) = settle {
            self.note(format!("outbox: {e}"));
        }
        if let Some(bus) = &self.bus {
            let event = if outcome.error.is_none() {
                Event::LapUploadSucceeded(Arc::new(outcome))
            } else {
                Event::LapUploadFailed(Arc::new(outcome))
            };
            bus.publish(event);
        }
    }

    /// The lap (unless accepted before), then its metrics. `Ok(note)` when delivered, with
    /// what was left out.
    async fn send(&mut self, entry: &Entry, attempts: &mut u32) -> Result<Option<String>, Failure> {
        let client = self
            .client(&entry.url)
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let prepared = {
            let data = self.data.clone();
            let outbox = Arc::clone(&self.outbox);
            let thresholds = Arc::clone(&self.thresholds);
            let e = entry.clone();
            tokio::task::spawn_blocking(move || prepare(&data, &outbox, &e, &thresholds))
                .await
                .map_err(|e| Failure::Transient(format!("preparing the lap: {e}")))??
        };
        // An earlier attempt may have stored the lap without its answer reaching us: if the
        // server has it, only the metrics are left. (A server that cannot say falls back on the
        // stable lap id: the lap is sent again under the same id.)
        let known = entry.state == State::Pending
            && entry.maybe_sent
            && client
                .has_lap(mapping::session_id(entry.session, entry.car), entry.lap_id)
                .await
                .unwrap_or(false);
        if known {
            let (id, lap_id) = (entry.id, entry.lap_id.to_string());
            self.db(move |o| o.lap_sent(id, &lap_id))
                .await
                .map_err(|e| Failure::Transient(format!("outbox: {e}")))?;
        }
        let server_lap_id = match (entry.state, &entry.server_lap_id, prepared.lap_json) {
            _ if known => entry.lap_id.to_string(),
            (State::LapSent, Some(id), _) => id.clone(),
            (_, _, Some(json)) => {
                *attempts += 1;
                self.report.bytes_sent += json.len() as u64;
                let resp = client.upload_lap_json(entry.lap_id, json).await?;
                let (id, server_id) = (entry.id, resp.lap_id.clone());
                self.db(move |o| o.lap_sent(id, &server_id))
                    .await
                    .map_err(|e| Failure::Transient(format!("outbox: {e}")))?;
                resp.lap_id
            }
            (_, _, None) => return Err(Failure::Refused("lap body missing".into())),
        };
        match prepared.metrics {
            Ok(lap_metrics) => {
                if entry.state == State::LapSent {
                    *attempts += 1;
                }
                client
                    .upload_metrics(&api::MetricsUploadRequest {
                        lap_metrics,
                        lap_id: server_lap_id,
                    })
                    .await?;
                Ok(None)
            }
            Err(why) => Ok(Some(format!("lap sent without metrics: {why}"))),
        }
    }
}

/// Reads the lap from the archive and builds what is sent: the lap's JSON body (unless it was
/// accepted already) and its metrics. The index being busy is worth another try later; a lap
/// gone from the archive, or a file that does not read, is not.
fn prepare(
    data: &Path,
    outbox: &Mutex<Outbox>,
    e: &Entry,
    thresholds: &Thresholds,
) -> Result<Prepared, Failure> {
    let (laps, session) = {
        let transient = |x: ArchiveError| Failure::Transient(x.to_string());
        let o = outbox
            .lock()
            .map_err(|_| Failure::Transient("outbox lock poisoned".into()))?;
        let laps = o.index().laps(Some(e.session)).map_err(transient)?;
        let session = o.index().session(e.session).map_err(transient)?;
        (laps, session)
    };
    let gone = |what: String| Failure::Refused(format!("{what} is no longer in the archive"));
    let row = laps
        .iter()
        .find(|l| l.car == e.car && l.lap == e.lap)
        .ok_or_else(|| gone(format!("lap {} of car {}", e.lap, e.car)))?;
    let session = session.ok_or_else(|| gone(format!("session {}", e.session)))?;
    let (meta, columns) = crate::archive::read_lap(&data.join(&row.file))
        .map_err(|x| Failure::Refused(x.to_string()))?;
    let car_laps = || laps.iter().filter(|l| l.car == e.car && l.complete);
    let last = car_laps()
        .find(|l| l.lap + 1 == e.lap)
        .and_then(|l| l.lap_time_s)
        .unwrap_or(0.0);
    let best = car_laps()
        .filter(|l| l.lap < e.lap && l.valid)
        .filter_map(|l| l.lap_time_s)
        .fold(None, |b: Option<f64>, t| Some(b.map_or(t, |b| b.min(t))))
        .unwrap_or(0.0);
    let metrics = lap_metrics(
        &columns,
        meta.track_length_m,
        meta.complete,
        &session.sectors,
        thresholds,
    )
    .map(|m| mapping::lap_metrics(&meta, &m, &columns))
    .map_err(|x| x.to_string());
    let lap_json = if e.state == State::LapSent && e.server_lap_id.is_some() {
        None
    } else {
        let body = api::UploadLapBody {
            lap: api::LapTelemetry {
                frames: mapping::frames(&session, &meta, &columns, last, best),
                lap_time: meta.lap_time_s.filter(|t| t.is_finite()),
            },
            session: mapping::session_frame(&session, &meta),
        };
        Some(serde_json::to_vec(&body).map_err(|x| Failure::Refused(x.to_string()))?)
    };
    Ok(Prepared { lap_json, metrics })
}

/// Delivers what is due in `data`'s outbox until nothing more is due within `drain` (or
/// `stop`), without a bus: `apexsim outbox retry`.
pub async fn drain(
    data: &Path,
    opts: UploadOptions,
    stop: CancellationToken,
    drain: Duration,
) -> Result<UploadReport, ArchiveError> {
    let uploader = Uploader::new(data, opts, None)?;
    let finish = CancellationToken::new();
    finish.cancel();
    Ok(uploader.run(stop, finish, drain).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let p = RetryPolicy {
            first: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        for attempt in 1..=12u32 {
            let base = (2u64 << (attempt - 1)).min(60);
            let d = p.delay(attempt).as_secs_f64();
            // Jitter adds up to as much again.
            assert!(
                d >= base as f64 && d < 2.0 * base as f64 + 1e-9,
                "attempt {attempt}: {d} s for a base of {base} s"
            );
        }
        // Two clients retrying at once do not retry in step.
        let spread: std::collections::BTreeSet<u128> =
            (0..20).map(|_| p.delay(3).as_micros()).collect();
        assert!(spread.len() > 10, "{spread:?}");
    }
}
