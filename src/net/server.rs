//! `apexsim serve`: the QUIC endpoint, one task per connection, the HTTP side (health,
//! readiness, metrics) and the graceful shutdown, around the [`SimServer`] thread.

use std::collections::VecDeque;
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
use tracing::Instrument;
use uuid::Uuid;

use super::config::ServerConfig;
use super::metrics::{DropReason, Metrics, Refusal};
use super::protocol::{
    self, ClientMessage, CloseReason, PROTOCOL_VERSION, PlayerInput, ProtocolError, ServerMessage,
    code,
};
use super::sim::{ConnId, Outgoing, SimReport, SimServer, ToSim};
use super::tls;
use crate::archive::recorder::Recorder;
use crate::archive::wal::WalSync;
use crate::content::Content;

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

/// Shared between the connection tasks and the HTTP handlers.
struct Shared {
    config: ServerConfig,
    metrics: Metrics,
    accepting: AtomicBool,
    ready: AtomicBool,
    connections: AtomicUsize,
    accepted: AtomicU64,
    next_conn: AtomicU64,
    to_sim: mpsc::Sender<ToSim>,
    inputs: mpsc::Sender<(ConnId, PlayerInput)>,
}

/// Server build version: major * 10000 + minor * 100 + patch.
pub fn server_version() -> u32 {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    next() * 10_000 + next() * 100 + next()
}

/// Runs the server until SIGTERM/SIGINT (or `stop` turning true), then drains and returns.
/// `on_listening` is called once the sockets are bound.
///
/// # Errors
/// [`ServeError`] when the certificate, the archive or a socket cannot be set up.
pub fn serve(
    config: ServerConfig,
    content: Content,
    data: PathBuf,
    wal_sync: WalSync,
    on_listening: impl FnOnce(&Listening),
) -> Result<ServeReport, ServeError> {
    if content.tracks.is_empty() {
        return Err(ServeError::NoContent("track"));
    }
    if content.cars.is_empty() {
        return Err(ServeError::NoContent("car"));
    }
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| ServeError::Io { what, source }
    };
    let started = Instant::now();
    let cpu_start = super::metrics::process_cpu_seconds();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("apexsim-net")
        .build()
        .map_err(io("starting the async runtime"))?;
    let identity = tls::server_identity(
        &data,
        config.network.tls_cert_path.as_deref(),
        config.network.tls_key_path.as_deref(),
    )?;
    let idle = Duration::from_millis(config.network.heartbeat_timeout_ms * 2);
    let server_config = tls::quic_server_config(&identity, idle)?;
    // The event bus at the world's async edge: the writer publishes on it, the metrics count
    // from it, and races' laps go to the Racing Coach server when one is configured.
    let metrics = Metrics::new();
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
            ..Default::default()
        };
        let drain = Duration::from_secs_f64(config.server.drain_seconds);
        let handler: Arc<dyn crate::events::EventHandler> =
            Arc::new(super::metrics::MetricsHandler(metrics.clone()));
        runtime
            .block_on(async { crate::coach::Pipeline::start(&data, opts, drain, vec![handler]) })?
    };
    let writer = pipeline.wiring().start_writer(&data)?;
    let archive_seconds = metrics.archive_write_duration_seconds.clone();
    let recorder = Recorder::start(writer, wal_sync, move |d| {
        archive_seconds.observe(d.as_secs_f64());
    })
    .map_err(io("starting the recorder thread"))?;

    let (to_sim, control_rx) = mpsc::channel(4096);
    let (inputs, inputs_rx) = mpsc::channel(16 * 1024);
    let shared = Arc::new(Shared {
        config: config.clone(),
        metrics: metrics.clone(),
        accepting: AtomicBool::new(true),
        ready: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        accepted: AtomicU64::new(0),
        next_conn: AtomicU64::new(1),
        to_sim: to_sim.clone(),
        inputs,
    });
    let (sim_config, sim_metrics, seed) = (config.clone(), metrics.clone(), rand_seed());
    // The world is not `Send`: it is built on its own thread.
    let sim_thread = std::thread::Builder::new()
        .name("apexsim-sim".into())
        .spawn(move || {
            SimServer::new(
                content,
                sim_config,
                sim_metrics,
                control_rx,
                inputs_rx,
                recorder,
                seed,
            )
            .run()
        })
        .map_err(io("starting the simulation thread"))?;

    let result = runtime.block_on(async {
        let endpoint = quinn::Endpoint::server(server_config, config.network.bind)
            .map_err(io(&format!("binding QUIC on {}", config.network.bind)))?;
        let http = tokio::net::TcpListener::bind(config.network.http_bind)
            .await
            .map_err(io(&format!("binding HTTP on {}", config.network.http_bind)))?;
        let listening = Listening {
            quic: endpoint.local_addr().map_err(io("reading the QUIC address"))?,
            http: http.local_addr().map_err(io("reading the HTTP address"))?,
            fingerprint: identity.fingerprint.clone(),
            cert: identity.cert_path.clone(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let router = Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(render_metrics))
            .with_state(shared.clone());
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
        on_listening(&listening);

        let accept = {
            let shared = shared.clone();
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    if !shared.accepting.load(Ordering::SeqCst) {
                        shared.metrics.refused(Refusal::Shutdown);
                        incoming.refuse();
                        continue;
                    }
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => connection(shared, conn).await,
                            Err(e) => tracing::debug!(error = %e, "handshake failed"),
                        }
                    });
                }
            })
        };

        shutdown_signal().await;
        tracing::info!("shutdown requested: refusing new connections, draining sessions");
        shared.accepting.store(false, Ordering::SeqCst);
        let _ = shared.to_sim.send(ToSim::Shutdown).await;
        // The simulation thread ends once every session is drained and archived.
        let sim_done = tokio::task::spawn_blocking(move || sim_thread.join());
        let report = sim_done.await.ok().and_then(Result::ok);
        // Every lap is archived (and queued): deliver what is due within the drain window.
        let upload = pipeline.finish().await.upload;
        let _ = stop_tx.send(true);
        // Let the connection tasks deliver the last frames, then close every connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        endpoint.close(quinn::VarInt::from_u32(0), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        accept.abort();
        let _ = http_task.await;
        Ok::<_, ServeError>((listening, report, upload))
    });
    let (listening, report, upload) = result?;
    let sim = report.unwrap_or_else(|| SimReport {
        ticks: 0,
        sessions_finished: 0,
        archive: crate::archive::writer::WriterReport {
            errors: vec!["the simulation thread panicked".into()],
            ..Default::default()
        },
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
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

fn rand_seed() -> u64 {
    Uuid::new_v4().as_u64_pair().0
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

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.ready.load(Ordering::SeqCst) && shared.accepting.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
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
        shared.metrics.render(),
    )
}

/// A token bucket: `rate` per second, bursts up to `rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// Full bucket.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Malformed packets and rate-limit overruns in the last minute.
#[derive(Debug, Default)]
struct Violations(VecDeque<Instant>);

impl Violations {
    /// Counts one; `true` when the limit is reached.
    fn add(&mut self, now: Instant, limit: u32) -> bool {
        self.0.push_back(now);
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.0.pop_front();
        }
        self.0.len() >= limit as usize
    }
}

async fn write_msg(send: &mut quinn::SendStream, msg: &ServerMessage) -> bool {
    match protocol::encode_frame(msg) {
        Ok(frame) => send.write_all(&frame).await.is_ok(),
        Err(_) => false,
    }
}

/// Closes a connection with its reason's code and text.
fn close(conn: &quinn::Connection, reason: CloseReason) {
    conn.close(
        quinn::VarInt::from_u32(reason.code()),
        reason.as_str().as_bytes(),
    );
}

/// Closes a connection with a reason, after telling the client on the control stream.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    msg: ServerMessage,
    reason: CloseReason,
) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        write_msg(send, &msg).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    })
    .await;
    close(conn, reason);
}

/// Refuses an authentication: counted under `refusal`, `AuthFailure { reason }` to the
/// client, then the connection closed.
async fn refuse_auth(
    shared: &Shared,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    refusal: Refusal,
    reason: String,
) {
    shared.metrics.refused(refusal);
    tracing::warn!(%reason, "authentication refused");
    let msg = ServerMessage::AuthFailure { reason };
    refuse(conn, send, msg, CloseReason::AuthRefused).await;
}

fn valid_name(name: &str) -> bool {
    let n = name.trim().chars().count();
    (1..=32).contains(&n) && !name.chars().any(char::is_control)
}

async fn connection(shared: Arc<Shared>, conn: quinn::Connection) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let span = tracing::info_span!("conn", id, remote = %conn.remote_address());
    async move {
        let open = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let registered = serve_connection(&shared, id, &conn, open).await;
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        if registered {
            let _ = shared.to_sim.send(ToSim::Disconnected { conn: id }).await;
        }
    }
    .instrument(span)
    .await;
}

/// Runs one connection; `true` if it was registered with the simulation.
async fn serve_connection(
    shared: &Arc<Shared>,
    id: ConnId,
    conn: &quinn::Connection,
    open: usize,
) -> bool {
    let cfg = &shared.config.network;
    let silence = Duration::from_millis(cfg.heartbeat_timeout_ms);
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(silence, conn.accept_bi()).await else {
        tracing::debug!("no control stream");
        close(conn, CloseReason::NoControlStream);
        return false;
    };
    // The first frame must authenticate.
    let mut buf = Vec::new();
    let first = tokio::time::timeout(
        silence,
        protocol::read_frame::<ClientMessage, _>(&mut recv, &mut buf),
    )
    .await;
    let refusal = match first {
        Ok(Ok(Some(ClientMessage::Authenticate {
            protocol_version,
            token,
            player_name,
        }))) => {
            if protocol_version != PROTOCOL_VERSION {
                Err((
                    Refusal::Version,
                    format!(
                        "protocol version {protocol_version} is not supported: this server speaks {PROTOCOL_VERSION}"
                    ),
                ))
            } else if !shared.config.token_accepted(&token) {
                Err((Refusal::Token, "invalid token".to_owned()))
            } else if !valid_name(&player_name) {
                Err((
                    Refusal::Name,
                    "player_name must be 1 to 32 printable characters".to_owned(),
                ))
            } else {
                Ok(player_name)
            }
        }
        Ok(Ok(Some(_))) | Ok(Err(_)) => {
            shared.metrics.malformed_packets.inc();
            Err((
                Refusal::Protocol,
                "the first message must be Authenticate".to_owned(),
            ))
        }
        Ok(Ok(None)) | Err(_) => {
            close(conn, CloseReason::NoAuthentication);
            return false;
        }
    };
    let name = match refusal {
        Ok(name) => name,
        Err((label, reason)) => {
            refuse_auth(shared, conn, &mut send, label, reason).await;
            return false;
        }
    };
    if !shared.accepting.load(Ordering::SeqCst) {
        let msg = ServerMessage::Error {
            code: code::UNAVAILABLE,
            message: "server shutting down".into(),
        };
        refuse(conn, &mut send, msg, CloseReason::ShuttingDown).await;
        return false;
    }
    if open > shared.config.server.max_connections {
        shared.metrics.refused(Refusal::Limit);
        let message = format!(
            "server full: it accepts {} connections",
            shared.config.server.max_connections
        );
        let msg = ServerMessage::Error {
            code: code::UNAVAILABLE,
            message,
        };
        refuse(conn, &mut send, msg, CloseReason::ServerFull).await;
        return false;
    }
    let player = Uuid::new_v4();
    let name = name.trim().to_owned();
    tracing::info!(%player, %name, "authenticated");
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(512);
    if !write_msg(
        &mut send,
        &ServerMessage::AuthSuccess {
            player_id: player,
            server_version: server_version(),
            protocol_version: PROTOCOL_VERSION,
        },
    )
    .await
    {
        return false;
    }
    if shared
        .to_sim
        .send(ToSim::Connected {
            conn: id,
            player,
            name,
            out: out_tx,
        })
        .await
        .is_err()
    {
        return false;
    }

    // Frames are read by their own task: a frame read cancelled half-way would lose bytes.
    let (frames_tx, mut frames) = mpsc::channel::<Result<ClientMessage, ProtocolError>>(16);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            let r = protocol::read_frame::<ClientMessage, _>(&mut recv, &mut buf).await;
            let fatal = matches!(
                r,
                Ok(None) | Err(ProtocolError::FrameTooLarge(_) | ProtocolError::Io(_))
            );
            let item = match r {
                Ok(Some(m)) => Ok(m),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            if frames_tx.send(item).await.is_err() || fatal {
                break;
            }
        }
    });

    let mut control = RateLimit::new(cfg.control_rate_per_s);
    let mut datagrams = RateLimit::new(cfg.datagram_rate_per_s);
    let mut violations = Violations::default();
    let metrics = &shared.metrics;
    let close_reason: Option<CloseReason> = loop {
        tokio::select! {
            frame = frames.recv() => {
                let now = Instant::now();
                let Some(frame) = frame else { break None };
                match frame {
                    Ok(msg) => {
                        if !control.take(now) {
                            metrics.dropped(DropReason::ControlRateLimit);
                            if violations.add(now, cfg.violations_per_minute) {
                                break Some(CloseReason::ProtocolViolation);
                            }
                            continue;
                        }
                        match msg {
                            ClientMessage::Disconnect => break Some(CloseReason::Goodbye),
                            ClientMessage::Authenticate { .. } => {
                                metrics.malformed_packets.inc();
                                if violations.add(now, cfg.violations_per_minute) {
                                    break Some(CloseReason::ProtocolViolation);
                                }
                            }
                            msg => {
                                if shared.to_sim.send(ToSim::Message { conn: id, msg }).await.is_err() {
                                    break None;
                                }
                            }
                        }
                    }
                    Err(ProtocolError::FrameTooLarge(n)) => {
                        metrics.malformed_packets.inc();
                        tracing::warn!(bytes = n, "oversized control frame");
                        break Some(CloseReason::ProtocolViolation);
                    }
                    Err(ProtocolError::Io(_)) => break None,
                    Err(e) => {
                        metrics.malformed_packets.inc();
                        tracing::warn!(error = %e, "malformed control frame dropped");
                        if violations.add(now, cfg.violations_per_minute) {
                            break Some(CloseReason::ProtocolViolation);
                        }
                    }
                }
            }
            datagram = conn.read_datagram() => {
                let now = Instant::now();
                let Ok(bytes) = datagram else { break None };
                if !datagrams.take(now) {
                    metrics.dropped(DropReason::DatagramRateLimit);
                    if violations.add(now, cfg.violations_per_minute) {
                        break Some(CloseReason::ProtocolViolation);
                    }
                    continue;
                }
                match protocol::decode_input(&bytes) {
                    Ok(input) if [input.throttle, input.brake, input.steering].iter().all(|v| v.is_finite()) => {
                        if shared.inputs.try_send((id, input)).is_err() {
                            metrics.dropped(DropReason::InputQueueFull);
                        }
                    }
                    Ok(_) => {
                        metrics.malformed_packets.inc();
                        metrics.dropped(DropReason::NonFiniteInput);
                        if violations.add(now, cfg.violations_per_minute) {
                            break Some(CloseReason::ProtocolViolation);
                        }
                    }
                    Err(e) => {
                        metrics.malformed_packets.inc();
                        tracing::debug!(error = %e, "malformed datagram dropped");
                        if violations.add(now, cfg.violations_per_minute) {
                            break Some(CloseReason::ProtocolViolation);
                        }
                    }
                }
            }
            out = out_rx.recv() => {
                match out {
                    Some(Outgoing::Frame(frame)) => {
                        if send.write_all(&frame).await.is_err() {
                            break None;
                        }
                    }
                    Some(Outgoing::Datagram(d)) => {
                        if conn.send_datagram(bytes::Bytes::from(d)).is_err() {
                            metrics.dropped(DropReason::DatagramSendFailed);
                        }
                    }
                    Some(Outgoing::Close(reason)) => {
                        tracing::warn!(%reason, "closed by the lobby");
                        break Some(reason);
                    }
                    None => break None,
                }
            }
        }
    };
    reader.abort();
    match close_reason {
        Some(CloseReason::ProtocolViolation) => {
            metrics.violation_disconnects.inc();
            tracing::warn!("disconnected: protocol violation");
            let reason = CloseReason::ProtocolViolation;
            let msg = ServerMessage::AuthFailure {
                reason: reason.as_str().into(),
            };
            refuse(conn, &mut send, msg, reason).await;
        }
        Some(reason) => {
            tracing::info!(%reason, "connection closed");
            close(conn, reason);
        }
        None => {
            // Deliver what is queued (the shutdown's 503, results) before the stream goes.
            while let Ok(Outgoing::Frame(frame)) = out_rx.try_recv() {
                let _ = send.write_all(&frame).await;
            }
            let _ = send.finish();
            tracing::info!("connection ended");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_its_rate_and_refills() {
        let mut r = RateLimit::new(10);
        let t0 = r.last;
        let taken = (0..20).filter(|_| r.take(t0)).count();
        assert_eq!(taken, 10, "a burst of 20 gets the 10 of the bucket");
        assert!(!r.take(t0));
        assert!(
            r.take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!r.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn ten_violations_within_a_minute_trip_the_limit_and_old_ones_expire() {
        let mut v = Violations::default();
        let t0 = Instant::now();
        for i in 0..9 {
            assert!(!v.add(t0 + Duration::from_secs(i), 10));
        }
        assert!(
            !v.add(t0 + Duration::from_secs(70), 10),
            "the first ones expired"
        );
        let mut v = Violations::default();
        let tripped = (0..10).map(|_| v.add(t0, 10)).last();
        assert_eq!(tripped, Some(true));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("bot-01"));
        assert!(!valid_name("   "));
        assert!(!valid_name(&"x".repeat(33)));
        assert!(!valid_name("a\nb"));
    }
}
