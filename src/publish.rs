//! The Redis publisher (seed 004): lap summaries as laps become durable, session results as
//! sessions finish, and the host's metrics every few seconds, as schema-versioned JSON
//! [`message::Message`]s pushed (`LPUSH`) to configured lists, for whoever listens (a league's
//! website, a Discord bot, a dashboard). Consumers take the oldest first with `RPOP`/`BRPOP`.
//!
//! The server never waits for Redis: [`Publisher::publish`] only queues (a short lock), and one
//! task sends, in order, in batches of consecutive messages to the same list. When Redis
//! cannot be reached the task retries with exponential backoff and jitter, and the queue holds
//! at most [`PublisherOptions::buffer`] messages: the oldest are dropped past it, counted on
//! `/metrics` and seen as gaps in the messages' `seq`. Delivery is at least once: a push whose
//! reply was lost is sent again, with the same `id`.

pub mod message;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder as _;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Event, EventHandler, EventKind, HandlerContext};
use crate::host::HostMonitor;
use message::{Body, Classified, LapSummary, Message, Producer, SCHEMA_VERSION, SessionResults};

/// Messages sent in one `LPUSH` at most.
const BATCH: usize = 100;

/// The publisher's settings (`[redis]` of `server.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct PublisherOptions {
    /// `redis://host:port/db`.
    pub url: String,
    /// The list of lap summaries.
    pub laps_list: String,
    /// The list of session results.
    pub sessions_list: String,
    /// The list of host metrics.
    pub host_list: String,
    /// How often the host's metrics are published (`None`: never).
    pub host_every: Option<Duration>,
    /// Messages held while Redis is unreachable, at most.
    pub buffer: usize,
    /// The longest wait between two attempts.
    pub retry_max: Duration,
    /// The data directory, whose index gives a finished session's results.
    pub data: PathBuf,
}

/// The publisher's counters, on `/metrics`.
#[derive(Debug, Clone)]
pub struct PublisherCounters {
    /// Messages Redis took.
    pub published: IntCounter,
    /// Messages dropped because the buffer was full.
    pub dropped: IntCounter,
    /// Messages waiting.
    pub buffered: IntGauge,
    /// 1 while the last push succeeded.
    pub up: IntGauge,
}

/// The publisher's health, for `/ready`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RedisHealth {
    /// Whether the last push (or connection) succeeded.
    pub connected: bool,
    /// Messages waiting.
    pub buffered: usize,
    /// Messages Redis took.
    pub published: u64,
    /// Messages dropped because the buffer was full.
    pub dropped: u64,
    /// The last failure, while not connected.
    pub last_error: Option<String>,
}

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The URL is not a Redis URL.
    #[error("redis.url {url:?}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        source: redis::RedisError,
    },
    /// The buffer holds nothing.
    #[error("redis.buffer must be at least 1")]
    NoBuffer,
}

/// Which list a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Laps,
    Sessions,
    Host,
}

/// A message ready to send.
#[derive(Debug)]
struct Queued {
    list: List,
    json: String,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Messages taken by the sending task and not yet confirmed.
    in_flight: usize,
    next_seq: u64,
    connected: bool,
    last_error: Option<String>,
}

struct Inner {
    opts: PublisherOptions,
    counters: PublisherCounters,
    producer: Producer,
    state: Mutex<State>,
    wake: Notify,
}

/// The Redis publisher: cheap to clone, shared by the event handler and the host task.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

/// The publisher's tasks; [`Self::stop`] ends them.
pub struct PublisherTasks {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl PublisherTasks {
    /// Stops publishing the host's metrics and gives the sender `grace` to deliver what is
    /// queued.
    pub async fn stop(self, grace: Duration) {
        self.cancel.cancel();
        for t in self.tasks {
            if tokio::time::timeout(grace, t).await.is_err() {
                tracing::warn!("redis: messages still queued at shutdown are dropped");
            }
        }
    }
}

impl Publisher {
    /// Starts the sender (and, when `host_every` is set, the host task reading `host`) on the
    /// current tokio runtime. Nothing waits for Redis to be reachable.
    ///
    /// # Errors
    /// [`PublishError`] for a URL that is not a Redis URL or an empty buffer.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        opts: PublisherOptions,
        counters: PublisherCounters,
        host: Arc<Mutex<HostMonitor>>,
    ) -> Result<(Self, PublisherTasks), PublishError> {
        if opts.buffer == 0 {
            return Err(PublishError::NoBuffer);
        }
        let client =
            redis::Client::open(opts.url.as_str()).map_err(|source| PublishError::Url {
                url: opts.url.clone(),
                source,
            })?;
        let producer = Producer {
            service: "apexsim".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            host: sysinfo::System::host_name().ok(),
            pid: Some(std::process::id()),
        };
        let publisher = Self {
            inner: Arc::new(Inner {
                opts,
                counters,
                producer,
                state: Mutex::new(State {
                    next_seq: 1,
                    ..State::default()
                }),
                wake: Notify::new(),
            }),
        };
        let cancel = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(send_loop(
            publisher.inner.clone(),
            client,
            cancel.clone(),
        ))];
        if let Some(every) = publisher.inner.opts.host_every {
            tasks.push(tokio::spawn(host_loop(
                publisher.clone(),
                host,
                every,
                cancel.clone(),
            )));
        }
        tracing::info!(url = %publisher.inner.opts.url, "publishing to redis");
        Ok((publisher, PublisherTasks { cancel, tasks }))
    }

    /// Queues a message; never waits. Past the buffer the oldest queued message is dropped.
    pub fn publish(&self, body: Body) {
        let list = match body {
            Body::LapSummary(_) => List::Laps,
            Body::SessionResults(_) => List::Sessions,
            Body::HostMetrics(_) => List::Host,
        };
        let Ok(mut state) = self.inner.state.lock() else {
            return;
        };
        let message = Message {
            schema_version: SCHEMA_VERSION,
            id: Uuid::new_v4(),
            seq: state.next_seq,
            time: jiff::Timestamp::now().to_string(),
            producer: self.inner.producer.clone(),
            body,
        };
        let json = match serde_json::to_string(&message) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(error = %e, "redis: cannot encode a message");
                return;
            }
        };
        state.next_seq += 1;
        if state.queue.len() + state.in_flight >= self.inner.opts.buffer {
            if state.queue.pop_front().is_none() {
                // Everything held is being sent: the new one is the one dropped.
                self.inner.counters.dropped.inc();
                return;
            }
            self.inner.counters.dropped.inc();
        }
        state.queue.push_back(Queued { list, json });
        self.inner.counters.buffered.set(state.queue.len() as i64);
        drop(state);
        self.inner.wake.notify_one();
    }

    /// The publisher's health.
    pub fn health(&self) -> RedisHealth {
        let (connected, buffered, last_error) = match self.inner.state.lock() {
            Ok(s) => (
                s.connected,
                s.queue.len() + s.in_flight,
                s.last_error.clone(),
            ),
            Err(_) => (false, 0, Some("the publisher's state is poisoned".into())),
        };
        RedisHealth {
            connected,
            buffered,
            published: self.inner.counters.published.get(),
            dropped: self.inner.counters.dropped.get(),
            last_error: (!connected).then_some(last_error).flatten(),
        }
    }

    /// The event handler that publishes lap summaries and session results from the bus.
    pub fn handler(&self) -> Arc<dyn EventHandler> {
        Arc::new(BusHandler(self.clone()))
    }
}

/// Takes up to [`BATCH`] consecutive messages to one list off the queue.
fn take_batch(inner: &Inner) -> Option<(List, Vec<Queued>)> {
    let mut state = inner.state.lock().ok()?;
    let list = state.queue.front()?.list;
    let n = state
        .queue
        .iter()
        .take(BATCH)
        .take_while(|q| q.list == list)
        .count();
    let batch: Vec<Queued> = state.queue.drain(..n).collect();
    state.in_flight = batch.len();
    Some((list, batch))
}

/// A batch Redis took.
fn sent(inner: &Inner, n: usize) {
    if let Ok(mut state) = inner.state.lock() {
        state.in_flight = 0;
        state.connected = true;
        state.last_error = None;
        inner.counters.buffered.set(state.queue.len() as i64);
    }
    inner.counters.published.inc_by(n as u64);
    inner.counters.up.set(1);
}

/// A batch Redis did not take: back at the front, the oldest dropped past the buffer.
fn failed(inner: &Inner, batch: Vec<Queued>, error: String) {
    if let Ok(mut state) = inner.state.lock() {
        state.in_flight = 0;
        for q in batch.into_iter().rev() {
            state.queue.push_front(q);
        }
        while state.queue.len() > inner.opts.buffer {
            state.queue.pop_front();
            inner.counters.dropped.inc();
        }
        if state.connected {
            tracing::warn!(error = %error, "redis unreachable: buffering messages");
        }
        state.connected = false;
        state.last_error = Some(error);
        inner.counters.buffered.set(state.queue.len() as i64);
    }
    inner.counters.up.set(0);
}

async fn send_loop(inner: Arc<Inner>, client: redis::Client, cancel: CancellationToken) {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    let backoff = || {
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(inner.opts.retry_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    let mut conn: Option<redis::aio::ConnectionManager> = None;
    loop {
        let Some((list, batch)) = take_batch(&inner) else {
            tokio::select! {
                () = inner.wake.notified() => continue,
                () = cancel.cancelled() => return,
            }
        };
        let name = match list {
            List::Laps => &inner.opts.laps_list,
            List::Sessions => &inner.opts.sessions_list,
            List::Host => &inner.opts.host_list,
        };
        let result = async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(
                    redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone())
                        .await?,
                ),
            };
            let mut cmd = redis::cmd("LPUSH");
            cmd.arg(name);
            for q in &batch {
                cmd.arg(&q.json);
            }
            cmd.query_async::<i64>(c).await
        }
        .await;
        match result {
            Ok(_) => {
                sent(&inner, batch.len());
                delays = backoff();
            }
            Err(e) => {
                conn = None;
                failed(&inner, batch, e.to_string());
                let wait = delays.next().unwrap_or(inner.opts.retry_max);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // Stopping while Redis is down: what is queued stays undelivered.
                    () = cancel.cancelled() => return,
                }
            }
        }
    }
}

async fn host_loop(
    publisher: Publisher,
    host: Arc<Mutex<HostMonitor>>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => return,
        }
        let host = host.clone();
        // sysinfo reads /proc and the sensors: off the async workers.
        let sample = tokio::task::spawn_blocking(move || match host.lock() {
            Ok(mut h) => Some(h.sample()),
            Err(_) => None,
        })
        .await
        .ok()
        .flatten();
        if let Some(sample) = sample {
            publisher.publish(Body::HostMetrics(sample));
        }
    }
}

/// Publishes what the bus says: lap summaries and finished sessions' results.
struct BusHandler(Publisher);

#[async_trait::async_trait]
impl EventHandler for BusHandler {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn kinds(&self) -> &[EventKind] {
        &[EventKind::LapArchived, EventKind::SessionEnd]
    }

    async fn handle(&self, event: Event, _ctx: &HandlerContext) {
        match event {
            Event::LapArchived(lap) => {
                let m = &lap.meta;
                self.0.publish(Body::LapSummary(LapSummary {
                    session: m.session,
                    source: m.source.as_str().into(),
                    track: m.track.clone(),
                    car: m.car,
                    car_model: m.car_model.clone(),
                    driver: m.driver.clone(),
                    lap: m.lap,
                    lap_time_s: m.lap_time_s,
                    complete: m.complete,
                    valid: m.valid,
                    rows: lap.rows as u64,
                    file: lap.file.to_string_lossy().replace('\\', "/"),
                }));
            }
            Event::SessionEnd(end) if end.finished => {
                let data = self.0.inner.opts.data.clone();
                let id = end.id;
                let read = tokio::task::spawn_blocking(move || {
                    let index = crate::archive::index::Index::open(&data)?;
                    Ok::<_, crate::archive::ArchiveError>(
                        index.session(id)?.map(|s| (s, index.results(id))),
                    )
                })
                .await;
                match read {
                    Ok(Ok(Some((s, results)))) => {
                        let results = results.unwrap_or_default();
                        self.0.publish(Body::SessionResults(SessionResults {
                            session: s.id,
                            source: s.source,
                            track: s.track,
                            car_model: s.car_model,
                            lap_limit: s.lap_limit,
                            started_at: s.started_at,
                            finished_at: s.finished_at,
                            ended_by: s.ended_by,
                            results: results
                                .into_iter()
                                .map(|r| Classified {
                                    position: r.position,
                                    car: r.car,
                                    driver: r.driver,
                                    laps: r.laps,
                                    total_time_s: r.total_time_s,
                                    best_lap_s: r.best_lap_s,
                                })
                                .collect(),
                        }));
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(session = %id, error = %e, "redis: cannot read the session's results")
                    }
                    Err(e) => tracing::warn!(error = %e, "redis: the results task failed"),
                }
            }
            _ => {}
        }
    }
}
