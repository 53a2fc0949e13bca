//! One client connection of `apexsim serve` (QUIC or a browser's WebTransport session, the
//! same rules for both: [`super::link`]), from the handshake to its close: authentication
//! (protocol version, token, name, limits), then the control stream's frames and the input
//! datagrams passed to the simulation thread, and what the simulation sends back, under the
//! connection's rate limits and violation count. The lobby ([`super::lobby`]) decides
//! everything about sessions; this module only carries bytes and polices them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use super::config::ServerConfig;
use super::link::{Link, SendHalf};
use super::metrics::{DropReason, Metrics, Refusal};
use super::protocol::{
    self, ClientMessage, CloseReason, PROTOCOL_VERSION, ProtocolError, ServerMessage, code,
};
use super::sim::{ConnId, Outgoing, ToSim};

/// What every connection task and the HTTP handlers share.
pub struct Shared {
    /// The configuration.
    pub config: ServerConfig,
    /// The Redis publisher, when `[redis] url` is set.
    pub redis: Option<crate::publish::Publisher>,
    /// The metrics.
    pub metrics: Metrics,
    /// Whether new connections are accepted (false once a shutdown began).
    pub accepting: AtomicBool,
    /// Whether the server is ready (content loaded, archive open, sockets bound).
    pub ready: AtomicBool,
    /// Connections open now.
    pub connections: AtomicUsize,
    /// Connections accepted since the start.
    pub accepted: AtomicU64,
    /// The next connection's id.
    pub next_conn: AtomicU64,
    /// Control messages to the simulation thread.
    pub to_sim: mpsc::Sender<ToSim>,
    /// The content as last loaded, for `/ready` and the live page's maps.
    pub content: Arc<std::sync::Mutex<super::watch::Loaded>>,
    /// The data directory (the index the results pages read).
    pub data: std::path::PathBuf,
    /// The live timing, as JSON, at 20 Hz.
    pub live: tokio::sync::watch::Receiver<Arc<str>>,
    /// Where browsers open WebTransport sessions.
    pub web_transport: WebTransport,
}

/// What a browser page needs to open a WebTransport session.
#[derive(Debug, Clone)]
pub struct WebTransport {
    /// The QUIC endpoint's UDP port.
    pub port: u16,
    /// Its certificates (the browsers' hash comes from here).
    pub certs: Arc<super::tls::Certificates>,
}

/// Server build version: major * 10000 + minor * 100 + patch.
pub fn server_version() -> u32 {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    next() * 10_000 + next() * 100 + next()
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

/// A connection's malformed packets and rate-limit overruns in the last minute: counted by its
/// task (control frames) and by the simulation thread (input datagrams, which it reads from
/// the transport itself) against one limit.
#[derive(Debug, Default)]
pub struct Violations(std::sync::Mutex<VecDeque<Instant>>);

impl Violations {
    /// Counts one; `true` when the limit is reached.
    pub fn add(&self, now: Instant, limit: u32) -> bool {
        let mut times = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            times.pop_front();
        }
        times.len() >= limit as usize
    }
}

async fn write_msg(send: &mut SendHalf, msg: &ServerMessage) -> bool {
    match protocol::encode_frame(msg) {
        Ok(frame) => send.write_all(&frame).await.is_ok(),
        Err(_) => false,
    }
}

/// Closes a connection with a reason, after telling the client on the control stream.
async fn refuse(conn: &Link, send: &mut SendHalf, msg: ServerMessage, reason: CloseReason) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        write_msg(send, &msg).await;
        send.finish();
        send.stopped().await;
    })
    .await;
    conn.close(reason).await;
}

/// Refuses an authentication: counted under `refusal`, `AuthFailure { reason }` to the
/// client, then the connection closed.
async fn refuse_auth(
    shared: &Shared,
    conn: &Link,
    send: &mut SendHalf,
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

/// Runs one connection to its end inside its span: authentication, then control frames and
/// what the simulation sends it, policed by the rate limits. Input datagrams are the
/// simulation thread's to read ([`super::sim::apply_inputs`]): no task wakes per input.
pub async fn connection(shared: Arc<Shared>, conn: Link) {
    let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let span =
        tracing::info_span!("conn", id, remote = %conn.remote_address(), transport = conn.kind());
    async move {
        let open = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let registered = serve_connection(&shared, id, &conn, open).await;
        let (sent, received) = conn.udp_bytes();
        shared.metrics.udp_sent_bytes.inc_by(sent);
        shared.metrics.udp_received_bytes.inc_by(received);
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        if registered {
            let _ = shared.to_sim.send(ToSim::Disconnected { conn: id }).await;
        }
    }
    .instrument(span)
    .await;
}

/// Runs one connection; `true` if it was registered with the simulation.
async fn serve_connection(shared: &Arc<Shared>, id: ConnId, conn: &Link, open: usize) -> bool {
    let cfg = &shared.config.network;
    let silence = Duration::from_millis(cfg.heartbeat_timeout_ms);
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(silence, conn.accept_bi()).await else {
        tracing::debug!("no control stream");
        conn.close(CloseReason::NoControlStream).await;
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
            conn.close(CloseReason::NoAuthentication).await;
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
    let violations = Arc::new(Violations::default());
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
            datagrams: conn.clone(),
            violations: violations.clone(),
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
            out = out_rx.recv() => {
                match out {
                    Some(Outgoing::Frame(frame)) => {
                        if send.write_all(&frame).await.is_err() {
                            break None;
                        }
                    }
                    Some(Outgoing::Close(reason)) => {
                        tracing::warn!(%reason, "closed by the simulation thread");
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
            // What was written before (a kick's reason, say) reaches the client first: a close
            // drops the stream data not yet acknowledged.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                send.finish();
                send.stopped().await;
            })
            .await;
            conn.close(reason).await;
        }
        None => {
            // Deliver what is queued (the shutdown's 503, results) before the stream goes.
            while let Ok(Outgoing::Frame(frame)) = out_rx.try_recv() {
                let _ = send.write_all(&frame).await;
            }
            send.finish();
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
        let v = Violations::default();
        let t0 = Instant::now();
        for i in 0..9 {
            assert!(!v.add(t0 + Duration::from_secs(i), 10));
        }
        assert!(
            !v.add(t0 + Duration::from_secs(70), 10),
            "the first ones expired"
        );
        let v = Violations::default();
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
