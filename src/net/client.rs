//! A client of `apexsim serve`: one QUIC connection, its control stream and its datagrams.
//! The bots of `apexsim drive` and the integration tests use it.

use std::net::SocketAddr;

use thiserror::Error;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::protocol::{
    self, ClientMessage, PROTOCOL_VERSION, PlayerInput, ProtocolError, ServerMessage, Telemetry,
};
use super::tls::{self, Trust};

/// Why a client failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// TLS set-up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The local socket.
    #[error("binding the client socket: {0}")]
    Bind(std::io::Error),
    /// The connection could not be made.
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The server refused the authentication (or closed the connection at once).
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Lost(String),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// A QUIC endpoint for clients, trusting the server as `trust` says.
///
/// # Errors
/// [`ClientError`] when the certificate cannot be read or the socket bound.
pub fn endpoint(trust: &Trust) -> Result<quinn::Endpoint, ClientError> {
    let mut endpoint =
        quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(ClientError::Bind)?;
    endpoint.set_default_client_config(tls::quic_client_config(trust)?);
    Ok(endpoint)
}

/// An authenticated connection.
pub struct Client {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    send: quinn::SendStream,
    frames: mpsc::Receiver<Result<ServerMessage, ProtocolError>>,
    /// The player id the server gave.
    pub player_id: Uuid,
}

impl Client {
    /// Connects, opens the control stream and authenticates.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the server's reason, or a connection error.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        token: &str,
        name: &str,
    ) -> Result<Self, ClientError> {
        Self::connect_as(endpoint, addr, token, name, PROTOCOL_VERSION).await
    }

    /// [`connect`](Self::connect) claiming a given protocol version (to test refusals).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_as(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        token: &str,
        name: &str,
        protocol_version: u32,
    ) -> Result<Self, ClientError> {
        let connect_err = |message: String| ClientError::Connect { addr, message };
        let conn = endpoint
            .connect(addr, "localhost")
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        let mut client = {
            let frame = protocol::encode_frame(&ClientMessage::Authenticate {
                protocol_version,
                token: token.to_owned(),
                player_name: name.to_owned(),
            })?;
            send.write_all(&frame)
                .await
                .map_err(|e| ClientError::Lost(e.to_string()))?;
            Self {
                conn,
                send,
                frames: spawn_reader(recv),
                player_id: Uuid::nil(),
            }
        };
        match client.recv().await {
            Some(Ok(ServerMessage::AuthSuccess { player_id, .. })) => {
                client.player_id = player_id;
                Ok(client)
            }
            Some(Ok(ServerMessage::AuthFailure { reason })) => Err(ClientError::Refused(reason)),
            Some(Ok(ServerMessage::Error { code, message })) => {
                Err(ClientError::Refused(format!("{code}: {message}")))
            }
            Some(Ok(other)) => Err(ClientError::Refused(format!("unexpected {other:?}"))),
            Some(Err(e)) => Err(e.into()),
            None => Err(ClientError::Refused(
                client
                    .conn
                    .close_reason()
                    .map_or_else(|| "connection closed".into(), |r| r.to_string()),
            )),
        }
    }

    /// Sends a control message.
    ///
    /// # Errors
    /// [`ClientError::Lost`] when the stream is gone.
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        let frame = protocol::encode_frame(msg)?;
        self.send_raw(&frame).await
    }

    /// Writes raw bytes on the control stream (to test the server's defences).
    ///
    /// # Errors
    /// [`ClientError::Lost`] when the stream is gone.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// The next control message; `None` when the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<ServerMessage, ProtocolError>> {
        self.frames.recv().await
    }

    /// Sends an input datagram.
    ///
    /// # Errors
    /// [`ClientError::Lost`] when the connection is gone.
    pub fn send_input(&self, input: &PlayerInput) -> Result<(), ClientError> {
        let bytes = protocol::encode_input(input)?;
        self.send_datagram(bytes)
    }

    /// Sends raw datagram bytes (to test the server's defences).
    ///
    /// # Errors
    /// [`ClientError::Lost`] when the connection is gone.
    pub fn send_datagram(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.conn
            .send_datagram(bytes::Bytes::from(bytes))
            .map_err(|e| ClientError::Lost(e.to_string()))
    }

    /// The next telemetry datagram.
    ///
    /// # Errors
    /// [`ClientError::Lost`] when the connection is gone; a decoding error for a bad packet.
    pub async fn telemetry(&self) -> Result<Telemetry, ClientError> {
        let bytes = self
            .conn
            .read_datagram()
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))?;
        Ok(protocol::decode_telemetry(&bytes)?)
    }
}

fn spawn_reader(
    mut recv: quinn::RecvStream,
) -> mpsc::Receiver<Result<ServerMessage, ProtocolError>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            let item = match protocol::read_frame::<ServerMessage, _>(&mut recv, &mut buf).await {
                Ok(Some(m)) => Ok(m),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            let fatal = item.is_err();
            if tx.send(item).await.is_err() || fatal {
                break;
            }
        }
    });
    rx
}
