//! `apexsim serve`, in the shape of mini-redis's server: [`bind`] the sockets, then [`run`]
//! the server on them until the `shutdown` future completes. Around the [`SimServer`] thread
//! it runs the accept loop (one task per connection, [`super::connection`]), the HTTP side
//! (health, readiness, metrics) and the graceful shutdown, which waits for the connection
//! tasks to deliver their last frames instead of sleeping.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::config::ServerConfig;
use super::connection::{Shared, connection};
use super::link::Link;
use super::metrics::{Metrics, Refusal};
use super::sim::{SimReport, SimServer, ToSim};
use super::tls;
use crate::archive::recorder::Recorder;
use crate::archive::wal::WalSync;
use crate::content::Content;

/// The REST API over the server's archive and its current content (which reloads).
fn api_state(
    shared: &Arc<Shared>,
    posted: Arc<crate::ingest::posted::PostedTelemetry>,
) -> crate::api::ApiState {
    let content = shared.content.clone();
    crate::api::ApiState {
        data: shared.data.clone(),
        content: Arc::new(move || match content.lock() {
            Ok(loaded) => loaded.content.clone(),
            Err(poisoned) => poisoned.into_inner().content.clone(),
        }),
        tokens: shared.config.api.tokens.clone(),
        host: shared.metrics.host.clone(),
        posted: Some(posted),
    }
}

/// Why the server could not start or run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// TLS set-up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The archive could not be opened.
    #[error("archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    /// The Redis publisher could not start.
    #[error(transparent)]
    Redis(crate::publish::PublishError),
    /// A socket could not be bound, or a thread started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The content has no track or no car.
    #[error("the content has no {0}: nothing to race")]
    NoContent(&'static str),
    /// Agones' SDK server refused or could not be reached.
    #[cfg(feature = "agones")]
    #[error(transparent)]
    Agones(#[from] super::agones::AgonesError),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.to_owned();
    move |source| ServeError::Io { what, source }
}

/// Where the server listens, once bound.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listening {
    /// QUIC address.
    pub quic: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// SHA-256 of the certificate, for clients that pin it.
    pub fingerprint: String,
    /// The certificate file, for clients that trust it by file.
    pub cert: PathBuf,
}

/// What a server run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeReport {
    /// Where it listened.
    pub listening: Listening,
    /// Connections accepted.
    pub connections: u64,
    /// The simulation thread's report.
    pub sim: SimReport,
    /// Process CPU seconds used.
    pub cpu_seconds: Option<f64>,
    /// Wall seconds served.
    pub wall_seconds: f64,
    /// What the uploader did, with `server.upload_url`.
    pub upload: Option<crate::coach::UploadReport>,
}

/// The server's sockets, bound: the QUIC endpoint (TLS from the configured or the generated
/// certificate) and the HTTP listener.
pub struct Bound {
    /// The QUIC endpoint.
    pub endpoint: quinn::Endpoint,
    /// The HTTP listener.
    pub http: tokio::net::TcpListener,
    /// Where they listen.
    pub listening: Listening,
    /// The endpoint's certificates (the browsers' one rotates).
    pub certs: Arc<tls::Certificates>,
}

/// Binds the QUIC endpoint and the HTTP listener of `config`, with the certificate under
/// `data` (generated on first start unless configured).
///
/// # Errors
/// [`ServeError`] when the certificate cannot be read or made, or a socket cannot be bound.
///
/// # Panics
/// Outside a tokio runtime.
pub async fn bind(config: &ServerConfig, data: &std::path::Path) -> Result<Bound, ServeError> {
    let identity = tls::server_identity(
        data,
        config.network.tls_cert_path.as_deref(),
        config.network.tls_key_path.as_deref(),
    )?;
    let idle = Duration::from_millis(config.network.heartbeat_timeout_ms * 2);
    let certs = Arc::new(tls::Certificates::new(
        &identity,
        std::time::SystemTime::now(),
    )?);
    let server_config = tls::quic_server_config(certs.clone(), idle)?;
    let endpoint = quinn::Endpoint::server(server_config, config.network.bind)
        .map_err(io(&format!("binding QUIC on {}", config.network.bind)))?;
    let http = tokio::net::TcpListener::bind(config.network.http_bind)
        .await
        .map_err(io(&format!("binding HTTP on {}", config.network.http_bind)))?;
    let listening = Listening {
        quic: endpoint
            .local_addr()
            .map_err(io("reading the QUIC address"))?,
        http: http.local_addr().map_err(io("reading the HTTP address"))?,
        fingerprint: identity.fingerprint.clone(),
        cert: identity.cert_path.clone(),
    };
    Ok(Bound {
        endpoint,
        http,
        listening,
        certs,
    })
}

/// What the server serves: its configuration, content and archive.
pub struct Setup {
    /// The configuration.
    pub config: ServerConfig,
    /// Cars, tracks and templates.
    pub content: Content,
    /// The directory they were loaded from, watched for changes when `[content] watch` is on.
    pub content_dir: Option<PathBuf>,
    /// The data directory (archive, logs, certificate).
    pub data: PathBuf,
    /// When the sessions' write-ahead files are fsynced.
    pub wal_sync: WalSync,
}

/// How long the connection tasks get to deliver their last frames once the simulation
/// thread is done, before the endpoint closes them.
const CONNECTIONS_GRACE: Duration = Duration::from_secs(2);

/// Runs the server on `bound` until `shutdown` completes, then drains: `/health` turns 503,
/// new connections are refused, the simulation thread tells every client and lets racing
/// sessions finish their lap, every lap is archived (and its upload queued), the connection
/// tasks deliver what they hold, and the endpoint closes.
///
/// # Errors
/// [`ServeError`] when the content is empty or the archive cannot be opened.
///
/// # Panics
/// Outside a tokio runtime.
pub async fn run(
    bound: Bound,
    setup: Setup,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeReport, ServeError> {
    let Setup {
        config,
        content,
        content_dir,
        data,
        wal_sync,
    } = setup;
    if content.tracks.is_empty() {
        return Err(ServeError::NoContent("track"));
    }
    if content.cars.is_empty() {
        return Err(ServeError::NoContent("car"));
    }
    // Under Agones the sidecar must answer before anything starts: a server that cannot
    // report itself ready or healthy is of no use to the fleet.
    #[cfg(feature = "agones")]
    let mut agones = if config.agones.enabled {
        Some(super::agones::Agones::connect().await?)
    } else {
        None
    };
    let started = Instant::now();
    let cpu_start = super::metrics::process_cpu_seconds();
    // The event bus at the world's async edge: the writer publishes on it, the metrics count
    // from it, and races' laps go to the Racing Coach server when one is configured.
    let metrics = Metrics::new();
    // The Redis publisher, when configured: fed by the bus and the host task, never waited on.
    let mut publisher = match &config.redis.url {
        Some(url) => {
            let r = &config.redis;
            let opts = crate::publish::PublisherOptions {
                url: url.clone(),
                laps_list: r.laps_list.clone(),
                sessions_list: r.sessions_list.clone(),
                host_list: r.host_list.clone(),
                host_every: (r.host_every_seconds > 0.0)
                    .then(|| Duration::from_secs_f64(r.host_every_seconds)),
                buffer: r.buffer,
                retry_max: Duration::from_secs_f64(r.retry_max_seconds),
                data: data.clone(),
            };
            Some(
                crate::publish::Publisher::start(opts, metrics.redis.clone(), metrics.host.clone())
                    .map_err(ServeError::Redis)?,
            )
        }
        None => None,
    };
    let pipeline = {
        let tokens = match &config.server.upload_url {
            Some(_) => crate::coach::credentials::stored_tokens().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "uploading without a device token");
                Default::default()
            }),
            None => Default::default(),
        };
        let opts = crate::coach::UploadOptions {
            url: config
                .server
                .upload_url
                .as_deref()
                .map(crate::coach::credentials::normalize_url),
            tokens,
            invalid_laps: config.server.upload_invalid_laps,
            ..Default::default()
        };
        let drain = Duration::from_secs_f64(config.server.drain_seconds);
        let handler: Arc<dyn crate::events::EventHandler> =
            Arc::new(super::metrics::MetricsHandler(metrics.clone()));
        let mut handlers = vec![handler];
        if let Some(p) = &publisher {
            handlers.push(p.0.handler());
        }
        crate::coach::Pipeline::start(&data, opts, drain, handlers)?
    };
    let writer = pipeline.wiring().start_writer(&data)?;
    // Telemetry posted to the API is archived by a recorder of its own, wired the same.
    let posted = crate::ingest::posted::PostedTelemetry::start(
        data.clone(),
        crate::ingest::posted::PostedOptions {
            wal_sync,
            idle: Duration::from_secs_f64(config.api.session_idle_seconds),
            wiring: pipeline.wiring(),
        },
    )?;
    let archive_seconds = metrics.archive_write_duration_seconds.clone();
    let recorder = Recorder::start(writer, wal_sync, move |d| {
        archive_seconds.observe(d.as_secs_f64());
    })
    .map_err(io("starting the recorder thread"))?;

    let content = Arc::new(content);
    let loaded = super::watch::Loaded::new(content.clone());
    if let Err(e) = loaded.status.write(&data) {
        tracing::warn!(error = %e, "cannot write the content status");
    }
    let loaded = Arc::new(std::sync::Mutex::new(loaded));
    // The live timing: the simulation publishes its view at 20 Hz, one task turns each into
    // JSON once for every viewer.
    let (live_tx, mut live_rx) = watch::channel(Arc::new(super::live::LiveView::default()));
    let (json_tx, live_json) = watch::channel(Arc::<str>::from("{\"tick\":0,\"sessions\":[]}"));
    let live_task = tokio::spawn(async move {
        while live_rx.changed().await.is_ok() {
            let view = live_rx.borrow_and_update().clone();
            match serde_json::to_string(&*view) {
                Ok(json) => {
                    json_tx.send_replace(Arc::from(json));
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode the live view"),
            }
        }
    });
    let (to_sim, control_rx) = mpsc::channel(4096);
    let shared = Arc::new(Shared {
        config: config.clone(),
        metrics: metrics.clone(),
        accepting: AtomicBool::new(true),
        ready: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        accepted: AtomicU64::new(0),
        next_conn: AtomicU64::new(1),
        to_sim,
        content: loaded.clone(),
        redis: publisher.as_ref().map(|p| p.0.clone()),
        data: data.clone(),
        live: live_json,
        web_transport: super::connection::WebTransport {
            port: bound.listening.quic.port(),
            certs: bound.certs.clone(),
        },
    });
    let seed = config
        .server
        .seed
        .unwrap_or_else(|| Uuid::new_v4().as_u64_pair().0);
    let _watcher = match (&content_dir, config.content.watch) {
        (Some(dir), true) => {
            match super::watch::watch(
                dir,
                &data,
                content.clone(),
                Duration::from_millis(config.content.debounce_ms),
                shared.to_sim.clone(),
                loaded.clone(),
            ) {
                Ok(w) => {
                    tracing::info!(dir = %dir.display(), "watching the content for changes");
                    Some(w)
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the content: no hot reload");
                    None
                }
            }
        }
        _ => None,
    };
    let retention = config.server.retention_hours.map(|hours| {
        tokio::spawn(retention_loop(
            data.clone(),
            hours,
            config.server.retention_schedule.clone(),
        ))
    });
    // The world is not `Send`: it is built on its own thread.
    let sim_thread = std::thread::Builder::new()
        .name("apexsim-sim".into())
        .spawn(move || {
            SimServer::new(content, config, metrics, control_rx, recorder, seed)
                .with_live(live_tx)
                .run()
        })
        .map_err(io("starting the simulation thread"))?;

    let Bound {
        endpoint,
        http,
        listening,
        certs,
    } = bound;
    let rotation = tokio::spawn(rotate_browser_cert(
        certs,
        Duration::from_secs(shared.config.network.browser_cert_rotate_seconds),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .merge(super::admin::routes())
        .merge(super::web::routes())
        .with_state(shared.clone())
        .merge(crate::api::routes(api_state(&shared, posted.clone())));
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, router)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(quic = %listening.quic, http = %listening.http, fingerprint = %listening.fingerprint, "serving");

    let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), stop_rx));
    #[cfg(feature = "agones")]
    if let Some(a) = &mut agones {
        let to_sim = shared.to_sim.clone();
        let ready = a.ready(&shared.config.agones, shared.metrics.clone(), to_sim);
        if let Err(e) = ready.await {
            // Agones never sees this server ready and replaces it; it drains meanwhile.
            tracing::error!(error = %e, "agones: not ready");
        }
    }

    shutdown.await;
    tracing::info!("shutdown requested: refusing new connections, draining sessions");
    shared.accepting.store(false, Ordering::SeqCst);
    let _ = shared.to_sim.send(ToSim::Shutdown).await;
    // The simulation thread ends once every session is drained and archived; its queues to
    // the connections close with it.
    let report = tokio::task::spawn_blocking(move || sim_thread.join())
        .await
        .ok()
        .and_then(Result::ok);
    // Posted sessions finish too, their laps durable.
    let _ = tokio::task::spawn_blocking(move || posted.stop()).await;
    // Every lap is archived (and queued): deliver what is due within the drain window.
    let upload = pipeline.finish().await.upload;
    // The last messages (the drained sessions' results) get a moment to reach Redis.
    if let Some((_, tasks)) = publisher.take() {
        tasks.stop(Duration::from_secs(2)).await;
    }
    let _ = stop_tx.send(true);
    // The connection tasks deliver what their queues still hold and end.
    let mut tasks = accept.await.unwrap_or_default();
    let waited = tokio::time::timeout(CONNECTIONS_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if waited.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "connections still open after the grace period are closed"
        );
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    tasks.shutdown().await;
    let _ = http_task.await;
    live_task.abort();
    rotation.abort();
    if let Some(t) = retention {
        t.abort();
    }
    #[cfg(feature = "agones")]
    if let Some(a) = agones {
        a.shutdown().await;
    }
    let sim = report.unwrap_or_else(|| SimReport {
        ticks: 0,
        sessions_finished: 0,
        archive: crate::archive::writer::WriterReport {
            errors: vec!["the simulation thread panicked".into()],
            ..Default::default()
        },
    });
    Ok(ServeReport {
        listening,
        connections: shared.accepted.load(Ordering::SeqCst),
        sim,
        cpu_seconds: super::metrics::process_cpu_seconds()
            .zip(cpu_start)
            .map(|(end, start)| end - start),
        wall_seconds: started.elapsed().as_secs_f64(),
        upload,
    })
}

/// Accepts connections, one task each, until `stop`; refuses them once a shutdown began.
/// Returns the tasks still running.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if !shared.accepting.load(Ordering::SeqCst) {
                    shared.metrics.refused(Refusal::Shutdown);
                    incoming.refuse();
                    continue;
                }
                let shared = shared.clone();
                tasks.spawn(async move {
                    let silence = Duration::from_millis(shared.config.network.heartbeat_timeout_ms);
                    match incoming.await {
                        Ok(conn) => match Link::accept(conn, silence).await {
                            Ok(link) => connection(shared, link).await,
                            Err(e) => tracing::debug!(error = %e, "no session"),
                        },
                        Err(e) => tracing::debug!(error = %e, "handshake failed"),
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    tasks
}

/// Replaces the browsers' WebTransport certificate once it is `after` old, checking every
/// minute (or every `after`, when shorter). New handshakes get the new one and pages fetch its
/// hash when they connect; connections already open keep theirs.
async fn rotate_browser_cert(certs: Arc<tls::Certificates>, after: Duration) {
    let mut every = tokio::time::interval(after.min(Duration::from_secs(60)) / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match certs.rotate_if_due(std::time::SystemTime::now(), after) {
            Ok(true) => {
                let hash = certs.browser().map(|c| tls::fingerprint_hex(&c.hash));
                tracing::info!(
                    hash = hash.as_deref().unwrap_or(""),
                    "rotated the browsers' WebTransport certificate"
                );
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot rotate the browsers' certificate: keeping the current one")
            }
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.accepting.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

/// `ready` or `not ready`, then the content's details: what is loaded, the templates
/// inactive and each quarantined entry with its error.
async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let (status, mut text) =
        if shared.ready.load(Ordering::SeqCst) && shared.accepting.load(Ordering::SeqCst) {
            (StatusCode::OK, "ready\n".to_owned())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
        };
    if let Ok(loaded) = shared.content.lock() {
        let c = &loaded.status;
        text.push_str(&format!(
            "content: {} cars, {} tracks, {} templates, {} reloads\n",
            c.cars, c.tracks, c.templates, c.reloads
        ));
        for t in &c.inactive_templates {
            text.push_str(&format!("inactive template: {t}\n"));
        }
        for q in &c.quarantined {
            text.push_str(&format!("quarantined {} {}: {}\n", q.kind, q.slug, q.error));
        }
    }
    // Redis is optional delivery: its state is told, it does not make the server unready.
    if let Some(redis) = &shared.redis {
        let h = redis.health();
        let state = if h.connected {
            "connected".to_owned()
        } else {
            format!(
                "unreachable ({})",
                h.last_error.as_deref().unwrap_or("not connected yet")
            )
        };
        text.push_str(&format!(
            "redis: {state}, {} buffered, {} published, {} dropped\n",
            h.buffered, h.published, h.dropped
        ));
    }
    (status, text)
}

/// Prunes the laps of sessions older than `hours` at every time `schedule` names; session
/// summaries and results stay (seed 003 section 11), live sessions are never touched.
async fn retention_loop(data: PathBuf, hours: u64, schedule: String) {
    let Ok(schedule) = crate::content::Schedule::parse(&schedule) else {
        return;
    };
    tracing::info!(hours, schedule = %schedule, "retention on");
    loop {
        let now = crate::runner::unix_now();
        let Some(next) = schedule.next_at_or_after(now + 1) else {
            return;
        };
        tokio::time::sleep(Duration::from_secs((next - now).max(1) as u64)).await;
        let data = data.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let index = crate::archive::index::Index::open(&data)?;
            let now = crate::runner::unix_now();
            let cutoff = now - (hours as i64).saturating_mul(3600);
            crate::archive::prune_laps(&data, &index, cutoff, now)
        })
        .await;
        match pruned {
            Ok(Ok(r)) if r.sessions > 0 || r.live_sessions > 0 => tracing::info!(
                sessions = r.sessions,
                laps = r.laps,
                bytes = r.bytes,
                live_left = r.live_sessions,
                "retention: laps pruned, summaries kept"
            ),
            Ok(Ok(_)) => tracing::debug!("retention: nothing to prune"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            Err(e) => tracing::warn!(error = %e, "retention task failed"),
        }
    }
}

async fn render_metrics(
    State(shared): State<Arc<Shared>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        // Rendering reads /proc and the host's sensors: off the async workers.
        tokio::task::spawn_blocking(move || shared.metrics.render())
            .await
            .unwrap_or_default(),
    )
}
