//! A client's transport, whichever it came over: a QUIC connection speaking `apexsim/1`, or a
//! browser's WebTransport session (HTTP/3, ALPN `h3`) on the same endpoint and port. Both carry
//! the same control stream of frames and the same datagrams, so [`super::connection`] serves
//! them with one set of rules; this module only tells them apart and adapts their calls.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::protocol::CloseReason;
use super::tls::ALPN_H3;

/// The path a browser opens its WebTransport session on.
pub const WEBTRANSPORT_PATH: &str = "/apexsim";

/// One client's transport.
#[derive(Debug, Clone)]
pub enum Link {
    /// A QUIC connection speaking `apexsim/1`.
    Quic(quinn::Connection),
    /// A WebTransport session.
    Web(Box<web_transport_quinn::Session>),
}

/// Why a connection could not become a [`Link`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The WebTransport handshake (HTTP/3 settings and the CONNECT request) failed or timed out.
    #[error("WebTransport handshake: {0}")]
    Handshake(String),
    /// The session was requested on a path the server does not serve.
    #[error("WebTransport session requested on {0}, not {WEBTRANSPORT_PATH}")]
    Path(String),
}

/// Whether the handshake negotiated HTTP/3.
fn is_h3(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == ALPN_H3)
}

impl Link {
    /// The transport of a connection that finished its QUIC handshake: by the negotiated ALPN,
    /// the connection itself, or (HTTP/3) the WebTransport session the browser requests on
    /// [`WEBTRANSPORT_PATH`] within `timeout`.
    ///
    /// # Errors
    /// [`LinkError`] when the WebTransport handshake fails; the connection is then closed.
    pub async fn accept(conn: quinn::Connection, timeout: Duration) -> Result<Self, LinkError> {
        if !is_h3(&conn) {
            // No more streams than the control stream; what the transport's first limits
            // allowed HTTP/3 stays bounded by the stream windows and is never read.
            conn.set_max_concurrent_uni_streams(0u32.into());
            conn.set_max_concurrent_bi_streams(1u32.into());
            return Ok(Self::Quic(conn));
        }
        let handshake = async {
            let request = web_transport_quinn::Request::accept(conn.clone())
                .await
                .map_err(|e| LinkError::Handshake(e.to_string()))?;
            let path = request.url.path().to_owned();
            if path != WEBTRANSPORT_PATH {
                let _ = request
                    .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
                    .await;
                return Err(LinkError::Path(path));
            }
            request
                .ok()
                .await
                .map_err(|e| LinkError::Handshake(e.to_string()))
        };
        let result = match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Handshake("timed out".into())),
        };
        match result {
            Ok(session) => Ok(Self::Web(Box::new(session))),
            Err(e) => {
                let reason = CloseReason::NoControlStream;
                conn.close(reason.code().into(), e.to_string().as_bytes());
                Err(e)
            }
        }
    }

    /// Which transport, for logs and metrics: `quic` or `webtransport`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Quic(_) => "quic",
            Self::Web(_) => "webtransport",
        }
    }

    /// The client's address.
    pub fn remote_address(&self) -> std::net::SocketAddr {
        match self {
            Self::Quic(c) => c.remote_address(),
            Self::Web(s) => s.remote_address(),
        }
    }

    /// The control stream the client opens.
    ///
    /// # Errors
    /// When the connection ends first.
    pub async fn accept_bi(&self) -> Result<(SendHalf, RecvHalf), LinkClosed> {
        match self {
            Self::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(|_| LinkClosed)?;
                Ok((SendHalf::Quic(send), Box::new(recv)))
            }
            Self::Web(s) => {
                let (send, recv) = s.accept_bi().await.map_err(|_| LinkClosed)?;
                Ok((SendHalf::Web(send), Box::new(recv)))
            }
        }
    }

    /// The next datagram.
    ///
    /// # Errors
    /// When the connection ends.
    pub async fn read_datagram(&self) -> Result<Bytes, LinkClosed> {
        match self {
            Self::Quic(c) => c.read_datagram().await.map_err(|_| LinkClosed),
            Self::Web(s) => s.read_datagram().await.map_err(|_| LinkClosed),
        }
    }

    /// Sends a datagram (dropped by the transport when its buffer is full).
    ///
    /// # Errors
    /// When the connection ended or the datagram is too large.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), LinkClosed> {
        match self {
            Self::Quic(c) => c.send_datagram(data).map_err(|_| LinkClosed),
            Self::Web(s) => s.send_datagram(data).map_err(|_| LinkClosed),
        }
    }

    /// Closes it with a reason's code and text. A WebTransport session tells the page both in
    /// a capsule on its CONNECT stream first, waited for (half a second at most) so the page
    /// learns why rather than seeing the connection lost.
    pub async fn close(&self, reason: CloseReason) {
        let text = reason.as_str().as_bytes();
        match self {
            Self::Quic(c) => c.close(reason.code().into(), text),
            Self::Web(s) => {
                s.close(reason.code(), text);
                let _ = tokio::time::timeout(Duration::from_millis(500), s.closed()).await;
            }
        }
    }

    /// UDP bytes sent and received on the connection so far (QUIC's count).
    pub fn udp_bytes(&self) -> (u64, u64) {
        let stats = match self {
            Self::Quic(c) => c.stats(),
            Self::Web(s) => quinn::Connection::stats(s),
        };
        (stats.udp_tx.bytes, stats.udp_rx.bytes)
    }

    /// The QUIC round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        match self {
            Self::Quic(c) => c.rtt(),
            Self::Web(s) => s.rtt(),
        }
    }
}

/// The connection ended.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the connection ended")]
pub struct LinkClosed;

/// The receiving half of the control stream.
pub type RecvHalf = Box<dyn AsyncRead + Send + Unpin>;

/// The sending half of the control stream.
#[derive(Debug)]
pub enum SendHalf {
    /// Of a QUIC connection.
    Quic(quinn::SendStream),
    /// Of a WebTransport session.
    Web(web_transport_quinn::SendStream),
}

impl SendHalf {
    /// Writes all of `bytes`.
    ///
    /// # Errors
    /// When the stream or the connection ended.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), LinkClosed> {
        match self {
            Self::Quic(s) => s.write_all(bytes).await.map_err(|_| LinkClosed),
            Self::Web(s) => s.write_all(bytes).await.map_err(|_| LinkClosed),
        }
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) {
        match self {
            Self::Quic(s) => {
                let _ = s.finish();
            }
            Self::Web(s) => {
                let _ = s.finish();
            }
        }
    }

    /// Completes once the peer has everything written (or the stream ended otherwise).
    pub async fn stopped(&mut self) {
        match self {
            Self::Quic(s) => {
                let _ = s.stopped().await;
            }
            Self::Web(s) => {
                let _ = s.stopped().await;
            }
        }
    }
}
