//! The event bus at the async edge of the world (seed 001): what happened to sessions, laps and
//! uploads, published once and seen by every handler that subscribed to its kind.
//!
//! One `tokio::sync::broadcast` channel per [`EventKind`] (discriminant-keyed, so a handler of
//! upload results never wakes for laps), payloads behind `Arc` (a receiver clones a pointer,
//! not a lap), [`EventBus::publish`] is synchronous and never blocks: the archive writer's
//! thread and async tasks publish alike. Handlers implement [`EventHandler`]; a
//! [`HandlerRegistry`] runs each on its own task with a [`HandlerContext`] that can publish
//! follow-up events, and on shutdown (a `CancellationToken`) each handler drains what its
//! receiver still holds before it stops.
//!
//! A broadcast receiver that falls behind loses the oldest events (counted as lagged). So work
//! that must not lose anything never sits behind one: the archive writes laps from its own
//! bounded queue, and a lap to upload enters the SQLite outbox in the same transaction that
//! indexes it ([`crate::archive::outbox`]); the bus only tells the uploader to look sooner.
//!
//! [`ArchiveWiring`] connects an archive writer to the bus (and to the lap metrics) through the
//! writer's hooks: the archive itself knows nothing of either.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod wiring;

pub use wiring::ArchiveWiring;

use crate::analysis::LapMetrics;
use crate::archive::LapMeta;
use crate::archive::index::SessionRow;

/// Events a channel holds for its slowest receiver before that receiver lags.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Every event, its payload behind an `Arc`.
#[derive(Debug, Clone)]
pub enum Event {
    /// A session began (it is in the index).
    SessionStart(Arc<SessionRow>),
    /// A session ended: its laps are durable.
    SessionEnd(Arc<SessionEnded>),
    /// A lap is durable in the archive and indexed (seed 001's `LapCompleted`; in the
    /// simulation a lap completes when a car crosses the line, long before this).
    LapArchived(Arc<ArchivedLap>),
    /// A lap's metrics were computed.
    MetricsExtracted(Arc<LapMetricsReady>),
    /// A lap and its metrics reached the Racing Coach server.
    LapUploadSucceeded(Arc<UploadOutcome>),
    /// An upload attempt failed (it waits in the outbox, or for a 4xx, is set aside).
    LapUploadFailed(Arc<UploadOutcome>),
}

/// The end of a session, for [`Event::SessionEnd`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEnded {
    /// Session id.
    pub id: Uuid,
    /// Whether it ended normally (marked finished in the index).
    pub finished: bool,
}

/// A lap in the archive, for [`Event::LapArchived`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedLap {
    /// Its identity.
    pub meta: LapMeta,
    /// Its file, relative to the data directory.
    pub file: PathBuf,
    /// Rows in it.
    pub rows: usize,
    /// Whether it was put in the upload outbox.
    pub queued_for_upload: bool,
}

/// A lap's metrics, for [`Event::MetricsExtracted`].
#[derive(Debug, Clone, PartialEq)]
pub struct LapMetricsReady {
    /// The lap.
    pub meta: LapMeta,
    /// Its metrics.
    pub metrics: LapMetrics,
}

/// What an upload attempt did, for [`Event::LapUploadSucceeded`] and [`Event::LapUploadFailed`].
#[derive(Debug, Clone, PartialEq)]
pub struct UploadOutcome {
    /// The outbox entry.
    pub entry: i64,
    /// The lap's id on the server (stable across retries).
    pub lap_id: Uuid,
    /// Session and lap.
    pub session: Uuid,
    /// Car index.
    pub car: u8,
    /// Lap number.
    pub lap: u16,
    /// Attempts so far.
    pub attempts: u32,
    /// Why it failed; `None` on success.
    pub error: Option<String>,
    /// Whether it will be tried again by itself (network errors, 5xx); a 4xx is not.
    pub will_retry: bool,
}

/// The kind of an [`Event`]: the key of its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// [`Event::SessionStart`].
    SessionStart,
    /// [`Event::SessionEnd`].
    SessionEnd,
    /// [`Event::LapArchived`].
    LapArchived,
    /// [`Event::MetricsExtracted`].
    MetricsExtracted,
    /// [`Event::LapUploadSucceeded`].
    LapUploadSucceeded,
    /// [`Event::LapUploadFailed`].
    LapUploadFailed,
}

impl EventKind {
    /// Every kind, in channel order.
    pub const ALL: [EventKind; 6] = [
        Self::SessionStart,
        Self::SessionEnd,
        Self::LapArchived,
        Self::MetricsExtracted,
        Self::LapUploadSucceeded,
        Self::LapUploadFailed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Name in logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionStart => "session_start",
            Self::SessionEnd => "session_end",
            Self::LapArchived => "lap_archived",
            Self::MetricsExtracted => "metrics_extracted",
            Self::LapUploadSucceeded => "lap_upload_succeeded",
            Self::LapUploadFailed => "lap_upload_failed",
        }
    }
}

impl Event {
    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::SessionStart(_) => EventKind::SessionStart,
            Self::SessionEnd(_) => EventKind::SessionEnd,
            Self::LapArchived(_) => EventKind::LapArchived,
            Self::MetricsExtracted(_) => EventKind::MetricsExtracted,
            Self::LapUploadSucceeded(_) => EventKind::LapUploadSucceeded,
            Self::LapUploadFailed(_) => EventKind::LapUploadFailed,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    lagged: AtomicU64,
}

struct Inner {
    channels: [broadcast::Sender<Event>; EventKind::ALL.len()],
    counters: [Counters; EventKind::ALL.len()],
    capacity: usize,
}

/// The bus: cheap to clone (one `Arc`), shared by publishers and handlers.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

/// Counters of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct KindStats {
    /// Events handed to at least one receiver.
    pub published: u64,
    /// Events published while nobody subscribed to their kind.
    pub dropped: u64,
    /// Events receivers lost because they fell behind (each receiver counts its own).
    pub lagged: u64,
}

impl EventBus {
    /// A bus whose channels each hold `capacity` events for their slowest receiver.
    ///
    /// # Panics
    /// Never: a capacity of 0 is taken as 1.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Arc::new(Inner {
                channels: std::array::from_fn(|_| broadcast::channel(capacity).0),
                counters: std::array::from_fn(|_| Counters::default()),
                capacity,
            }),
        }
    }

    /// Publishes an event to its kind's subscribers, without blocking or awaiting.
    pub fn publish(&self, event: Event) {
        let kind = event.kind().index();
        let counters = &self.inner.counters[kind];
        match self.inner.channels[kind].send(event) {
            Ok(_) => counters.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A receiver of one kind's events from now on.
    pub fn subscribe(&self, kind: EventKind) -> broadcast::Receiver<Event> {
        self.inner.channels[kind.index()].subscribe()
    }

    /// Counts `n` events a receiver of `kind` lost by lagging.
    pub fn record_lag(&self, kind: EventKind, n: u64) {
        self.inner.counters[kind.index()]
            .lagged
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The counters of one kind.
    pub fn stats(&self, kind: EventKind) -> KindStats {
        let c = &self.inner.counters[kind.index()];
        KindStats {
            published: c.published.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
        }
    }

    /// The counters summed over every kind.
    pub fn totals(&self) -> KindStats {
        EventKind::ALL
            .iter()
            .map(|k| self.stats(*k))
            .fold(KindStats::default(), |a, b| KindStats {
                published: a.published + b.published,
                dropped: a.dropped + b.dropped,
                lagged: a.lagged + b.lagged,
            })
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// What a handler gets besides the event: the bus, to publish what follows from it.
#[derive(Debug, Clone)]
pub struct HandlerContext {
    /// The bus the event came from.
    pub bus: EventBus,
    /// When the handler started.
    pub started: Instant,
}

impl HandlerContext {
    /// Publishes a follow-up event.
    pub fn publish(&self, event: Event) {
        self.bus.publish(event);
    }
}

/// Something that reacts to events of some kinds. Each kind it handles gets its own task and
/// receiver; events of one kind reach it in the order they were published.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Its name, in logs.
    fn name(&self) -> &'static str;

    /// The kinds it handles.
    fn kinds(&self) -> &[EventKind];

    /// Handles one event (of one of its kinds).
    async fn handle(&self, event: Event, ctx: &HandlerContext);
}

/// Runs handlers on the bus until shut down.
pub struct HandlerRegistry {
    bus: EventBus,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<u64>>,
}

impl HandlerRegistry {
    /// A registry of handlers on `bus`.
    pub fn new(bus: EventBus) -> Self {
        Self {
            bus,
            cancel: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    /// Subscribes the handler to its kinds now (it sees every event published from here on)
    /// and runs it on the current tokio runtime, one task per kind.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn register(&mut self, handler: Arc<dyn EventHandler>) {
        for &kind in handler.kinds() {
            let rx = self.bus.subscribe(kind);
            let ctx = HandlerContext {
                bus: self.bus.clone(),
                started: Instant::now(),
            };
            let handler = Arc::clone(&handler);
            let cancel = self.cancel.clone();
            self.tasks
                .push(tokio::spawn(run_handler(handler, kind, rx, ctx, cancel)));
        }
    }

    /// Stops the handlers: each handles what its receiver already holds, then ends. Returns
    /// how many events they handled in all.
    pub async fn shutdown(self) -> u64 {
        self.cancel.cancel();
        let mut handled = 0;
        for task in self.tasks {
            handled += task.await.unwrap_or(0);
        }
        handled
    }
}

async fn run_handler(
    handler: Arc<dyn EventHandler>,
    kind: EventKind,
    mut rx: broadcast::Receiver<Event>,
    ctx: HandlerContext,
    cancel: CancellationToken,
) -> u64 {
    let mut handled = 0;
    // One registration with the token for the handler's life, not one per event.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            result = rx.recv() => match result {
                Ok(event) => {
                    handler.handle(event, &ctx).await;
                    handled += 1;
                }
                Err(RecvError::Lagged(n)) => {
                    ctx.bus.record_lag(kind, n);
                    tracing::warn!(handler = handler.name(), kind = kind.as_str(), missed = n, "event handler lagged");
                }
                Err(RecvError::Closed) => return handled,
            },
            () = &mut cancelled => break,
        }
    }
    // Drain what was published before the shutdown.
    loop {
        match rx.try_recv() {
            Ok(event) => {
                handler.handle(event, &ctx).await;
                handled += 1;
            }
            Err(TryRecvError::Lagged(n)) => ctx.bus.record_lag(kind, n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return handled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ended(n: u128) -> Event {
        Event::SessionEnd(Arc::new(SessionEnded {
            id: Uuid::from_u128(n),
            finished: true,
        }))
    }

    struct Collect {
        kinds: Vec<EventKind>,
        seen: Mutex<Vec<Uuid>>,
        follow_up: bool,
    }

    #[async_trait::async_trait]
    impl EventHandler for Collect {
        fn name(&self) -> &'static str {
            "collect"
        }
        fn kinds(&self) -> &[EventKind] {
            &self.kinds
        }
        async fn handle(&self, event: Event, ctx: &HandlerContext) {
            if let Event::SessionEnd(e) = &event {
                if let Ok(mut seen) = self.seen.lock() {
                    seen.push(e.id);
                }
                if self.follow_up {
                    ctx.publish(Event::SessionStart(Arc::new(SessionRow {
                        id: e.id,
                        source: "sim".into(),
                        track: "t".into(),
                        car_model: "c".into(),
                        lap_limit: None,
                        seed: None,
                        started_at: 0,
                        finished_at: None,
                        sectors: Vec::new(),
                        identity: None,
                        template_id: None,
                        ended_by: None,
                        laps_pruned_at: None,
                    })));
                }
            }
        }
    }

    #[tokio::test]
    async fn a_kind_reaches_only_its_subscribers_and_is_counted() {
        let bus = EventBus::new(8);
        let mut ends = bus.subscribe(EventKind::SessionEnd);
        let mut laps = bus.subscribe(EventKind::LapArchived);
        bus.publish(ended(1));
        bus.publish(Event::LapUploadFailed(Arc::new(UploadOutcome {
            entry: 1,
            lap_id: Uuid::nil(),
            session: Uuid::nil(),
            car: 0,
            lap: 1,
            attempts: 1,
            error: Some("x".into()),
            will_retry: true,
        })));
        assert!(matches!(ends.recv().await, Ok(Event::SessionEnd(_))));
        assert!(matches!(laps.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(bus.stats(EventKind::SessionEnd).published, 1);
        assert_eq!(bus.stats(EventKind::LapUploadFailed).dropped, 1);
        assert_eq!(bus.totals().published, 1);
    }

    #[tokio::test]
    async fn handlers_publish_follow_ups_and_drain_on_shutdown() {
        let bus = EventBus::new(64);
        let mut registry = HandlerRegistry::new(bus.clone());
        let ends = Arc::new(Collect {
            kinds: vec![EventKind::SessionEnd],
            seen: Mutex::new(Vec::new()),
            follow_up: true,
        });
        registry.register(ends.clone());
        let mut starts = bus.subscribe(EventKind::SessionStart);
        for n in 0..20 {
            bus.publish(ended(n));
        }
        // Shut down at once: the handler still sees every event published before.
        let handled = registry.shutdown().await;
        assert_eq!(handled, 20);
        let seen = ends.seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, (0..20).map(Uuid::from_u128).collect::<Vec<_>>());
        for n in 0..20 {
            match starts.recv().await {
                Ok(Event::SessionStart(s)) => assert_eq!(s.id, Uuid::from_u128(n)),
                other => panic!("expected the follow-up of {n}, got {other:?}"),
            }
        }
    }

    /// Blocks on its first event until released, then records what it sees.
    struct Slow {
        gate: Arc<tokio::sync::Notify>,
        seen: Mutex<Vec<Uuid>>,
    }

    #[async_trait::async_trait]
    impl EventHandler for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn kinds(&self) -> &[EventKind] {
            &[EventKind::SessionEnd]
        }
        async fn handle(&self, event: Event, _ctx: &HandlerContext) {
            let first = match (&event, self.seen.lock()) {
                (Event::SessionEnd(e), Ok(mut seen)) => {
                    seen.push(e.id);
                    seen.len() == 1
                }
                _ => false,
            };
            if first {
                self.gate.notified().await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_that_falls_behind_loses_the_oldest_and_they_are_counted() {
        let bus = EventBus::new(4);
        let mut registry = HandlerRegistry::new(bus.clone());
        let slow = Arc::new(Slow {
            gate: Arc::new(tokio::sync::Notify::new()),
            seen: Mutex::new(Vec::new()),
        });
        registry.register(slow.clone());
        bus.publish(ended(0));
        while slow.seen.lock().map(|s| s.is_empty()).unwrap_or(true) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // The handler is stuck on the first: nine more overflow its four-event channel, and
        // publishing never waits for it.
        for n in 1..10 {
            bus.publish(ended(n));
        }
        slow.gate.notify_one();
        let handled = registry.shutdown().await;
        let stats = bus.stats(EventKind::SessionEnd);
        assert_eq!(stats.published, 10);
        assert_eq!(stats.lagged, 5, "{stats:?}");
        assert_eq!(handled + stats.lagged, 10);
        let seen = slow.seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, [0, 6, 7, 8, 9].map(Uuid::from_u128).to_vec());
    }
}
