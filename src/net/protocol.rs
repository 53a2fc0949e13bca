//! The wire protocol between `apexsim serve` and its clients (seed 003 section 3, on QUIC).
//!
//! Control messages ([`ClientMessage`], [`ServerMessage`]) travel on one bidirectional stream
//! per connection as frames: a 4-byte little-endian length, then the message encoded with
//! bincode 2 (standard configuration). A frame longer than [`MAX_FRAME_BYTES`] is a protocol
//! violation and the stream cannot be resynchronised after it. The client's first frame is
//! [`ClientMessage::Authenticate`], whose `protocol_version` must equal [`PROTOCOL_VERSION`].
//!
//! The high-rate traffic is QUIC datagrams, one message each, a kind byte first:
//! [`PlayerInput`] from the client (kind 1, bincode's fixed-size integers) and [`Telemetry`]
//! from the server (kind 2, a packed layout of its own, see [`encode_telemetry`]), so that a
//! packet's size depends only on its car count. Telemetry addresses cars by their index in the
//! session and quantizes their state (see [`CarTelemetry`]): a datagram carrying all of a
//! 16-car session is [`telemetry_datagram_len`]`(16)` bytes, well inside the 1,200 bytes every
//! QUIC path carries. A datagram may carry only some of the session's cars (the server sends
//! far cars at a lower rate); [`FieldState`] keeps each car's newest state from them.
//!
//! Every decoder here takes untrusted bytes: it returns an error, never panics, and never
//! allocates more than its limit whatever length a packet claims.

use bincode::config::{self, Configuration, Fixint, LittleEndian, Varint};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

pub use crate::content::StartMode;
pub use telemetry::{
    CAR_TELEMETRY_BYTES, CarTelemetry, FLAG_COLLIDING, FLAG_OFF_TRACK, FieldState,
    POSITION_LIMIT_CM, PROGRESS_LIMIT_CM, TELEMETRY_HEADER_BYTES, Telemetry, TelemetryHeader,
    decode_telemetry, encode_telemetry, telemetry_datagram_len,
};

mod telemetry;

/// Version of this protocol; a client speaking another is refused at authentication.
pub const PROTOCOL_VERSION: u32 = 3;

/// The TLS application protocol (ALPN) of the QUIC connection.
pub const ALPN: &[u8] = b"apexsim/1";

/// Largest control frame payload accepted, in bytes (a track's centerline fits many times).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Largest datagram accepted or sent, in bytes: the QUIC minimum path MTU payload.
pub const MAX_DATAGRAM_BYTES: usize = 1200;

/// Kind byte of a [`PlayerInput`] datagram.
pub const KIND_INPUT: u8 = 1;
/// Kind byte of a [`Telemetry`] datagram.
pub const KIND_TELEMETRY: u8 = 2;

/// Error codes carried by [`ServerMessage::Error`] (HTTP-like).
pub mod code {
    /// The request is malformed or not allowed in this state.
    pub const BAD_REQUEST: u16 = 400;
    /// Not the host, or not permitted by the configuration.
    pub const FORBIDDEN: u16 = 403;
    /// No such session, track or car.
    pub const NOT_FOUND: u16 = 404;
    /// The session is full or has started.
    pub const CONFLICT: u16 = 409;
    /// Too many messages.
    pub const RATE_LIMITED: u16 = 429;
    /// A fault ended the session.
    pub const SESSION_FAULT: u16 = 500;
    /// The server is full or shutting down.
    pub const UNAVAILABLE: u16 = 503;
}

/// Why the server closes a connection; its text is the QUIC close reason a client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client said goodbye ([`ClientMessage::Disconnect`]).
    Goodbye,
    /// Nothing was heard from the client for the heartbeat timeout.
    HeartbeatTimeout,
    /// Too many malformed packets or rate-limit overruns, or an oversized frame.
    ProtocolViolation,
    /// The client opened no control stream in time.
    NoControlStream,
    /// The client sent no authentication in time.
    NoAuthentication,
    /// Authentication was refused (the client was told why in [`ServerMessage::AuthFailure`]).
    AuthRefused,
    /// The server is full.
    ServerFull,
    /// The server is shutting down.
    ShuttingDown,
    /// An operator removed the player (the reason was sent before, in an error message).
    Kicked,
}

impl CloseReason {
    /// The reason's text, as the client sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Goodbye => "goodbye",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::ProtocolViolation => "protocol violation",
            Self::NoControlStream => "no control stream",
            Self::NoAuthentication => "no authentication",
            Self::AuthRefused => "authentication refused",
            Self::ServerFull => "server full",
            Self::ShuttingDown => "server shutting down",
            Self::Kicked => "kicked by an operator",
        }
    }

    /// The QUIC application error code: 0 for an orderly close, 1 for a refusal or a fault.
    pub fn code(self) -> u32 {
        match self {
            Self::Goodbye | Self::HeartbeatTimeout => 0,
            _ => 1,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message of every connection.
    Authenticate {
        /// Must be [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// Access token (checked when the server requires tokens).
        token: String,
        /// Display name, 1 to 32 characters.
        player_name: String,
    },
    /// Sent every second; answered with [`ServerMessage::HeartbeatAck`].
    Heartbeat {
        /// The client's own counter.
        client_tick: u32,
    },
    /// Chooses the car model used in the next session joined or created.
    SelectCar {
        /// A car id from [`ServerMessage::LobbyState`].
        car_config_id: Uuid,
    },
    /// Creates a session and joins it as its host.
    CreateSession {
        /// A track id from [`ServerMessage::LobbyState`].
        track_config_id: Uuid,
        /// Grid size, 1 to 16 (humans and AI).
        max_players: u8,
        /// AI cars to fill empty grid slots with at the start.
        ai_count: u8,
        /// Laps, 1 to 99.
        lap_limit: u8,
    },
    /// Creates a custom session from a race template (its track, grid size and allowed cars)
    /// and joins it as its host; the lap limit and AI count may be changed within the
    /// template's bounds.
    CreateFromTemplate {
        /// A template id from [`ServerMessage::LobbyState`].
        template_id: Uuid,
        /// Laps, within the template's `lap_limit_range`; `None` for its default.
        lap_limit: Option<u8>,
        /// AI cars, within the template's `ai_count_range`; `None` for its default.
        ai_count: Option<u8>,
    },
    /// Joins a session in its lobby.
    JoinSession {
        /// The session.
        session_id: Uuid,
    },
    /// Leaves the session (a racing car is handed to the AI).
    LeaveSession,
    /// Starts the countdown (host only).
    StartSession,
    /// Says goodbye before closing.
    Disconnect,
    /// Chaos drill: makes the caller's session fault (only when the server's
    /// `fault_injection` setting is on; refused otherwise).
    InjectFault {
        /// The fault.
        kind: FaultKind,
    },
}

/// A fault a chaos drill can inject into a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The session's per-tick work panics.
    Panic,
    /// A car's state becomes non-finite.
    NonFinite,
    /// The whole simulation thread stops for [`crate::net::sim::STALL`] (its health checks
    /// must notice).
    Stall,
}

/// What the server sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Authentication accepted.
    AuthSuccess {
        /// The player's id for this connection.
        player_id: Uuid,
        /// Server build version (major * 10000 + minor * 100 + patch).
        server_version: u32,
        /// The protocol version spoken.
        protocol_version: u32,
    },
    /// Authentication refused, or the connection is closed for a protocol violation.
    AuthFailure {
        /// Why.
        reason: String,
    },
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The server's tick.
        server_tick: u32,
    },
    /// The lobby: sent on change, at most 4 times a second.
    LobbyState {
        /// Authenticated players.
        players_in_lobby: Vec<LobbyPlayer>,
        /// Sessions (joinable ones are in the `Lobby` state).
        available_sessions: Vec<SessionSummary>,
        /// Car models.
        car_configs: Vec<CarConfigSummary>,
        /// Tracks.
        track_configs: Vec<TrackConfigSummary>,
        /// Race templates, active or not.
        templates: Vec<TemplateSummary>,
    },
    /// Joined (or created) a session.
    SessionJoined {
        /// The session.
        session_id: Uuid,
        /// Grid position for now (1 = pole); final in [`ServerMessage::SessionStarting`].
        your_grid_position: u8,
        /// The track, to draw and drive.
        track: TrackInfo,
        /// The car model selected.
        car: CarInfo,
    },
    /// Left the session.
    SessionLeft,
    /// The countdown started; the grid is final.
    SessionStarting {
        /// Seconds to the green light.
        countdown_seconds: u8,
        /// Every car, by car index (the index telemetry uses).
        grid: Vec<GridEntry>,
    },
    /// The session ended: its classification.
    SessionResults {
        /// The session.
        session_id: Uuid,
        /// `None` when the race ended normally; the fault otherwise.
        fault: Option<String>,
        /// Who ended the race early ("ended by admin alice"), when an operator did.
        ended_by: Option<String>,
        /// Winner first.
        standings: Vec<Standing>,
    },
    /// A request failed, or the server is going away (`code` 503).
    Error {
        /// See [`code`].
        code: u16,
        /// What went wrong.
        message: String,
    },
    /// A player of the session disconnected.
    PlayerDisconnected {
        /// The player.
        player_id: Uuid,
    },
    /// A message from the server's operator, to the lobby or to one session.
    Announcement {
        /// The session it is for; `None` for everyone.
        session_id: Option<Uuid>,
        /// The text.
        message: String,
    },
}

/// A player in the lobby.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LobbyPlayer {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Selected car model.
    pub selected_car: Option<Uuid>,
    /// Session joined.
    pub in_session: Option<Uuid>,
}

/// State of a session, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Players are joining.
    Lobby,
    /// Counting down.
    Countdown,
    /// Racing.
    Racing,
    /// Over.
    Finished,
}

/// A session in the lobby list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Id.
    pub id: Uuid,
    /// Track name.
    pub track_name: String,
    /// Host name.
    pub host_name: String,
    /// Humans joined.
    pub player_count: u8,
    /// Grid size.
    pub max_players: u8,
    /// AI cars requested.
    pub ai_count: u8,
    /// Laps.
    pub lap_limit: u8,
    /// State.
    pub state: SessionState,
    /// The template it was made from, if any.
    pub template_id: Option<Uuid>,
    /// That template's name.
    pub template_name: Option<String>,
    /// Made by the server's rotation (the session `drive --join next` joins).
    pub rotation: bool,
    /// How it starts.
    pub start_mode: StartMode,
    /// When a scheduled session's countdown begins, Unix seconds.
    pub starts_at_unix_s: Option<i64>,
    /// Car models allowed; empty for every car.
    pub allowed_cars: Vec<Uuid>,
}

/// A race template in the lobby list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateSummary {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Track id.
    pub track_id: Uuid,
    /// Whether sessions can be made from it (its track and cars are loaded).
    pub active: bool,
    /// How its sessions start.
    pub start_mode: StartMode,
    /// Grid size.
    pub max_players: u8,
    /// Default laps.
    pub lap_limit: u8,
    /// Laps a custom session may ask for.
    pub lap_limit_range: (u8, u8),
    /// AI cars a custom session may ask for.
    pub ai_count_range: (u8, u8),
    /// Car models allowed; empty for every car.
    pub allowed_cars: Vec<Uuid>,
}

/// A car model in the lobby list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarConfigSummary {
    /// Id.
    pub id: Uuid,
    /// Directory name in the content.
    pub slug: String,
    /// Name.
    pub name: String,
}

/// A track in the lobby list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackConfigSummary {
    /// Id.
    pub id: Uuid,
    /// Directory name in the content.
    pub slug: String,
    /// Name.
    pub name: String,
}

/// A track as a client needs it: the centerline to draw and drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Width in metres.
    pub width_m: f32,
    /// Centerline points in metres, in driving order (closed: the last joins the first).
    pub centerline: Vec<[f32; 2]>,
}

/// A car model's physics, as a client needs it to predict and drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarInfo {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Seed 003 physics, in the order of [`apexsim_systems::car::CarSpec::RANGES`].
    pub physics: [f32; 10],
}

/// A car on the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridEntry {
    /// Index in telemetry (grid position - 1).
    pub car_index: u8,
    /// Driver.
    pub name: String,
    /// The player, `None` for an AI car.
    pub player_id: Option<Uuid>,
}

/// A line of the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// 1 = winner.
    pub position: u8,
    /// Car index.
    pub car_index: u8,
    /// Driver.
    pub name: String,
    /// Laps completed.
    pub laps: u16,
    /// Race time at the finish in seconds, `None` if not classified as finished.
    pub total_time_s: Option<f64>,
    /// Best valid lap in seconds.
    pub best_lap_s: Option<f64>,
}

/// A client's controls (datagram kind 1), sent every tick it drives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlayerInput {
    /// The client's input counter; echoed in telemetry once applied.
    pub seq: u32,
    /// The last server tick the client received telemetry for (round-trip time).
    pub server_tick_ack: u32,
    /// 0..=1.
    pub throttle: f32,
    /// 0..=1.
    pub brake: f32,
    /// -1 (left) ..= 1 (right).
    pub steering: f32,
}

/// Why bytes could not be decoded or encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's length is over [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    FrameTooLarge(usize),
    /// A datagram is over [`MAX_DATAGRAM_BYTES`].
    #[error("datagram of {0} bytes is over the {MAX_DATAGRAM_BYTES}-byte limit")]
    DatagramTooLarge(usize),
    /// A datagram of the wrong kind, or empty.
    #[error("datagram kind {0:?} is not expected here")]
    WrongKind(Option<u8>),
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload decoded with bytes left over.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// A message could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The stream failed or ended.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

type FrameConfig = Configuration<LittleEndian, Varint, bincode::config::Limit<MAX_FRAME_BYTES>>;
type DatagramConfig =
    Configuration<LittleEndian, Fixint, bincode::config::Limit<MAX_DATAGRAM_BYTES>>;

fn frame_config() -> FrameConfig {
    config::standard().with_limit::<MAX_FRAME_BYTES>()
}

fn datagram_config() -> DatagramConfig {
    config::standard()
        .with_fixed_int_encoding()
        .with_limit::<MAX_DATAGRAM_BYTES>()
}

fn decode_exact<T: serde::de::DeserializeOwned, C: bincode::config::Config>(
    bytes: &[u8],
    config: C,
) -> Result<T, ProtocolError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    match bytes.len() - used {
        0 => Ok(msg),
        n => Err(ProtocolError::Trailing(n)),
    }
}

/// Encodes a control message as a frame (length prefix included).
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] when the message is over the limit.
pub fn encode_frame<M: Serialize>(msg: &M) -> Result<Vec<u8>, ProtocolError> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(msg, &mut out, frame_config())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Checks a frame's length prefix.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] over [`MAX_FRAME_BYTES`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's payload (without its length prefix).
///
/// # Errors
/// [`ProtocolError::Malformed`] or [`ProtocolError::Trailing`].
pub fn decode_payload<M: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<M, ProtocolError> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge(payload.len()));
    }
    decode_exact(payload, frame_config())
}

/// Reads one frame from a stream: `Ok(None)` at a clean end of stream.
///
/// # Errors
/// [`ProtocolError::FrameTooLarge`] (the stream cannot go on after it), [`ProtocolError::Io`]
/// when the stream fails mid-frame, or a decoding error (the stream can go on).
pub async fn read_frame<M, R>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Option<M>, ProtocolError>
where
    M: serde::de::DeserializeOwned,
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame_len(prefix)?;
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    decode_payload(buf).map(Some)
}

/// Encodes an input datagram.
///
/// # Errors
/// Never in practice (the message has a fixed size).
pub fn encode_input(input: &PlayerInput) -> Result<Vec<u8>, ProtocolError> {
    let mut out = vec![KIND_INPUT];
    bincode::serde::encode_into_std_write(input, &mut out, datagram_config())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes an input datagram.
///
/// # Errors
/// A [`ProtocolError`] naming what is wrong.
pub fn decode_input(bytes: &[u8]) -> Result<PlayerInput, ProtocolError> {
    datagram_body(bytes, KIND_INPUT).and_then(|b| decode_exact(b, datagram_config()))
}

fn datagram_body(bytes: &[u8], kind: u8) -> Result<&[u8], ProtocolError> {
    if bytes.len() > MAX_DATAGRAM_BYTES {
        return Err(ProtocolError::DatagramTooLarge(bytes.len()));
    }
    match bytes.split_first() {
        Some((&k, body)) if k == kind => Ok(body),
        other => Err(ProtocolError::WrongKind(other.map(|(k, _)| *k))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_wrong_kind_datagrams_are_named() {
        let input = PlayerInput {
            seq: 1,
            server_tick_ack: 2,
            throttle: 1.0,
            brake: 0.0,
            steering: 0.0,
        };
        let bytes = encode_input(&input).expect("encodes");
        assert_eq!(decode_input(&bytes).expect("decodes"), input);
        assert!(matches!(
            decode_telemetry(&bytes),
            Err(ProtocolError::WrongKind(Some(1)))
        ));
        assert!(matches!(
            decode_input(&[]),
            Err(ProtocolError::WrongKind(None))
        ));
        assert!(matches!(
            decode_input(&vec![1u8; 2000]),
            Err(ProtocolError::DatagramTooLarge(2000))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode_input(&long),
            Err(ProtocolError::Trailing(1))
        ));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_prefix() {
        let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(matches!(
            frame_len(prefix),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        let frame = encode_frame(&ClientMessage::StartSession).expect("encodes");
        let len = frame_len(frame[..4].try_into().expect("4 bytes")).expect("ok");
        assert_eq!(len, frame.len() - 4);
        let back: ClientMessage = decode_payload(&frame[4..]).expect("decodes");
        assert_eq!(back, ClientMessage::StartSession);
    }
}
