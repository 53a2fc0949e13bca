//! The upload pipeline of one command: the event bus, its handlers, and the uploader task,
//! wired to the archive writer. `ingest --upload`, `live --upload` and the race server with
//! `upload_url` all run it the same way: [`Pipeline::start`], start the archive writer with
//! [`Pipeline::wiring`], and [`Pipeline::finish`] once the writer is done.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::upload::{UploadOptions, UploadReport, Uploader};
use crate::archive::ArchiveError;
use crate::archive::outbox::UploadTarget;
use crate::events::{
    ArchiveWiring, Event, EventBus, EventHandler, EventKind, HandlerContext, HandlerRegistry,
    KindStats,
};

/// A running pipeline.
pub struct Pipeline {
    bus: EventBus,
    registry: HandlerRegistry,
    target: Option<UploadTarget>,
    stop: CancellationToken,
    finish: CancellationToken,
    done: CancellationToken,
    drain: Duration,
    task: Option<JoinHandle<UploadReport>>,
}

/// What a pipeline did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PipelineReport {
    /// The uploader's report, when it uploaded.
    pub upload: Option<UploadReport>,
    /// The bus's counters, summed over kinds.
    pub events: KindStats,
    /// Events the handlers handled.
    pub handled: u64,
}

impl Pipeline {
    /// Starts the bus, `handlers` and, with `opts.url`, the uploader, on the current tokio
    /// runtime. After [`Pipeline::finish`] the uploader delivers what is due within `drain`.
    ///
    /// # Errors
    /// [`ArchiveError`] when the outbox cannot be opened.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        data: &Path,
        opts: UploadOptions,
        drain: Duration,
        handlers: Vec<Arc<dyn EventHandler>>,
    ) -> Result<Self, ArchiveError> {
        let bus = EventBus::default();
        let mut registry = HandlerRegistry::new(bus.clone());
        registry.register(Arc::new(LogHandler));
        for h in handlers {
            registry.register(h);
        }
        let (stop, finish, done) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let target = opts.url.clone().map(|url| UploadTarget {
            url,
            invalid_laps: opts.invalid_laps,
        });
        let task = match &target {
            Some(_) => {
                let uploader = Uploader::new(data, opts, Some(bus.clone()))?;
                let (s, f, d) = (stop.clone(), finish.clone(), done.clone());
                Some(tokio::spawn(async move {
                    let report = uploader.run(s, f, drain).await;
                    d.cancel();
                    report
                }))
            }
            None => {
                done.cancel();
                None
            }
        };
        Ok(Self {
            bus,
            registry,
            target,
            stop,
            finish,
            done,
            drain,
            task,
        })
    }

    /// What the archive writer is wired to: the bus, and where to queue laps.
    pub fn wiring(&self) -> ArchiveWiring {
        ArchiveWiring {
            upload: self.target.clone(),
            bus: Some(self.bus.clone()),
        }
    }

    /// Cancelling it stops the uploader: the lap in flight gets its grace period, the rest
    /// stays in the outbox (Ctrl-C).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Cancelled once the uploader has ended.
    pub fn done_token(&self) -> CancellationToken {
        self.done.clone()
    }

    /// No more laps are coming: the uploader delivers what is due within the drain window
    /// (or until stopped), then the handlers drain the bus.
    pub async fn finish(self) -> PipelineReport {
        self.finish.cancel();
        let upload = match self.task {
            Some(task) => {
                // The uploader ends by itself once nothing is due within the drain window;
                // past it (plus a request's grace), it is stopped.
                let limit = self.drain + Duration::from_secs(120);
                let stop = self.stop.clone();
                let watchdog = tokio::spawn(async move {
                    tokio::time::sleep(limit).await;
                    stop.cancel();
                });
                let report = task.await.ok();
                watchdog.abort();
                report
            }
            None => None,
        };
        let events = self.bus.totals();
        let handled = self.registry.shutdown().await;
        PipelineReport {
            upload,
            events,
            handled,
        }
    }
}

/// Logs every event (info for uploads and sessions, debug for laps).
struct LogHandler;

#[async_trait::async_trait]
impl EventHandler for LogHandler {
    fn name(&self) -> &'static str {
        "log"
    }

    fn kinds(&self) -> &[EventKind] {
        &EventKind::ALL
    }

    async fn handle(&self, event: Event, _ctx: &HandlerContext) {
        match event {
            Event::SessionStart(s) => {
                tracing::info!(session = %s.id, track = %s.track, "session started");
            }
            Event::SessionEnd(e) => {
                tracing::info!(session = %e.id, finished = e.finished, "session ended");
            }
            Event::LapArchived(l) => {
                tracing::debug!(session = %l.meta.session, car = l.meta.car, lap = l.meta.lap, queued = l.queued_for_upload, "lap archived");
            }
            Event::MetricsExtracted(m) => {
                tracing::debug!(session = %m.meta.session, car = m.meta.car, lap = m.meta.lap, zones = m.metrics.braking.len(), corners = m.metrics.corners.len(), "lap metrics");
            }
            Event::LapUploadSucceeded(u) => {
                tracing::info!(session = %u.session, car = u.car, lap = u.lap, lap_id = %u.lap_id, "lap uploaded");
            }
            Event::LapUploadFailed(u) => {
                tracing::warn!(session = %u.session, car = u.car, lap = u.lap, attempts = u.attempts, will_retry = u.will_retry, error = u.error.as_deref().unwrap_or(""), "lap upload failed");
            }
        }
    }
}
