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

/// One tick of a session (datagram kind 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Server tick.
    pub server_tick: u32,
    /// The `seq` of the receiver's latest input applied before this tick (0 = none yet).
    pub input_ack: u32,
    /// Session state.
    pub session_state: SessionState,
    /// Milliseconds to the green light during the countdown.
    pub countdown_ms: Option<u16>,
    /// Cars in the session, whether this datagram carries them or not.
    pub session_cars: u8,
    /// The cars this datagram carries, by index: the receiver's own and those near it every
    /// tick, the others at a lower rate.
    pub cars: Vec<CarTelemetry>,
}

/// One car in [`Telemetry`], quantized. Positions travel in 24 bits (±83.8 km) and the
/// distance along the centerline in 24 unsigned bits (167 km); [`CarTelemetry::quantize`]
/// saturates to those ranges and the encoder clamps values set by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarTelemetry {
    /// Car index in the session.
    pub index: u8,
    /// World X in centimetres, within ±[`POSITION_LIMIT_CM`].
    pub x_cm: i32,
    /// World Y in centimetres, within ±[`POSITION_LIMIT_CM`].
    pub y_cm: i32,
    /// Heading: `yaw / 2π * 65536`, wrapping.
    pub yaw: u16,
    /// Speed in cm/s.
    pub speed_cmps: u16,
    /// Throttle * 255.
    pub throttle: u8,
    /// Brake * 255.
    pub brake: u8,
    /// Steering * 127.
    pub steering: i8,
    /// Lap the car is on (0 before the start line).
    pub lap: u16,
    /// Distance along the centerline in centimetres, at most [`PROGRESS_LIMIT_CM`].
    pub progress_cm: u32,
    /// Finishing position, 0 while racing.
    pub finish_position: u8,
    /// Bit 0: colliding this tick; bit 1: off the track.
    pub flags: u8,
}

/// Bit of [`CarTelemetry::flags`]: in contact with another car.
pub const FLAG_COLLIDING: u8 = 1;
/// Bit of [`CarTelemetry::flags`]: off the track surface.
pub const FLAG_OFF_TRACK: u8 = 2;

/// Largest position magnitude a telemetry datagram carries, in centimetres (24 bits signed).
pub const POSITION_LIMIT_CM: i32 = (1 << 23) - 1;
/// Largest distance along the centerline a telemetry datagram carries, in centimetres
/// (24 bits).
pub const PROGRESS_LIMIT_CM: u32 = (1 << 24) - 1;

impl CarTelemetry {
    /// Quantizes a car's state. Out-of-range values saturate; NaN becomes 0.
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(
        index: u8,
        x_m: f32,
        y_m: f32,
        yaw_rad: f32,
        speed_mps: f32,
        controls: [f32; 3],
        lap: u16,
        progress_m: f32,
        finish_position: Option<u8>,
        flags: u8,
    ) -> Self {
        let [throttle, brake, steering] = controls;
        let turns = (yaw_rad / std::f32::consts::TAU).rem_euclid(1.0);
        Self {
            index,
            x_cm: ((x_m * 100.0).round() as i32).clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM),
            y_cm: ((y_m * 100.0).round() as i32).clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM),
            yaw: ((turns * 65536.0).round() as u32 & 0xFFFF) as u16,
            speed_cmps: (speed_mps * 100.0).round() as u16,
            throttle: (throttle * 255.0).round() as u8,
            brake: (brake * 255.0).round() as u8,
            steering: (steering * 127.0).round() as i8,
            lap,
            progress_cm: ((progress_m * 100.0).round() as u32).min(PROGRESS_LIMIT_CM),
            finish_position: finish_position.unwrap_or(0),
            flags,
        }
    }

    /// X in metres.
    pub fn x_m(&self) -> f32 {
        self.x_cm as f32 / 100.0
    }
    /// Y in metres.
    pub fn y_m(&self) -> f32 {
        self.y_cm as f32 / 100.0
    }
    /// Heading in radians, in `(-π, π]`.
    pub fn yaw_rad(&self) -> f32 {
        let a = f32::from(self.yaw) / 65536.0 * std::f32::consts::TAU;
        if a > std::f32::consts::PI {
            a - std::f32::consts::TAU
        } else {
            a
        }
    }
    /// Speed in m/s.
    pub fn speed_mps(&self) -> f32 {
        f32::from(self.speed_cmps) / 100.0
    }
    /// Distance along the centerline in metres.
    pub fn progress_m(&self) -> f32 {
        self.progress_cm as f32 / 100.0
    }
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

/// Encodes a telemetry datagram: the header ([`TelemetryHeader`]) and then each car as
/// [`CarTelemetry::write`] packs it.
///
/// # Errors
/// [`ProtocolError::DatagramTooLarge`] when the cars do not fit.
pub fn encode_telemetry(telemetry: &Telemetry) -> Result<Vec<u8>, ProtocolError> {
    let len = telemetry_datagram_len(telemetry.cars.len());
    if len > MAX_DATAGRAM_BYTES || telemetry.cars.len() > usize::from(u8::MAX) {
        return Err(ProtocolError::DatagramTooLarge(len));
    }
    let mut out = Vec::with_capacity(len);
    TelemetryHeader {
        server_tick: telemetry.server_tick,
        input_ack: telemetry.input_ack,
        session_state: telemetry.session_state,
        countdown_ms: telemetry.countdown_ms,
        session_cars: telemetry.session_cars,
    }
    .write(&mut out, telemetry.cars.len() as u8);
    for car in &telemetry.cars {
        car.write(&mut out);
    }
    Ok(out)
}

/// What a telemetry datagram says before its cars. On the wire: the kind byte, the tick and the
/// input acknowledgement (u32 little-endian each), a byte with the session state in its low two
/// bits and bit 7 set when the countdown follows, the countdown (u16, only then), the session's
/// car count and the count of cars that follow (a byte each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryHeader {
    /// See [`Telemetry::server_tick`].
    pub server_tick: u32,
    /// See [`Telemetry::input_ack`].
    pub input_ack: u32,
    /// See [`Telemetry::session_state`].
    pub session_state: SessionState,
    /// See [`Telemetry::countdown_ms`].
    pub countdown_ms: Option<u16>,
    /// See [`Telemetry::session_cars`].
    pub session_cars: u8,
}

const COUNTDOWN_FOLLOWS: u8 = 0x80;

impl TelemetryHeader {
    /// Appends the header for `cars` cars to `out` (the server writes one per recipient and
    /// then copies the cars' records, encoded once per tick, after it).
    pub fn write<B: Extend<u8>>(&self, out: &mut B, cars: u8) {
        let state = match self.session_state {
            SessionState::Lobby => 0,
            SessionState::Countdown => 1,
            SessionState::Racing => 2,
            SessionState::Finished => 3,
        };
        let mut head = [0u8; TELEMETRY_HEADER_BYTES + 2];
        head[0] = KIND_TELEMETRY;
        head[1..5].copy_from_slice(&self.server_tick.to_le_bytes());
        head[5..9].copy_from_slice(&self.input_ack.to_le_bytes());
        let mut at = 10;
        if let Some(ms) = self.countdown_ms {
            head[9] = state | COUNTDOWN_FOLLOWS;
            head[10..12].copy_from_slice(&ms.to_le_bytes());
            at = 12;
        } else {
            head[9] = state;
        }
        head[at] = self.session_cars;
        head[at + 1] = cars;
        out.extend(head[..at + 2].iter().copied());
    }
}

impl CarTelemetry {
    /// Appends the car's [`CAR_TELEMETRY_BYTES`] to `out`: index, x and y (i24), yaw, speed
    /// (u16), throttle, brake, steering (a byte each), lap (u16), progress (u24), finishing
    /// position and flags (a byte each), little-endian. Out-of-range values are clamped.
    pub fn write<B: Extend<u8>>(&self, out: &mut B) {
        let x = self
            .x_cm
            .clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM)
            .to_le_bytes();
        let y = self
            .y_cm
            .clamp(-POSITION_LIMIT_CM, POSITION_LIMIT_CM)
            .to_le_bytes();
        let p = self.progress_cm.min(PROGRESS_LIMIT_CM).to_le_bytes();
        let yaw = self.yaw.to_le_bytes();
        let speed = self.speed_cmps.to_le_bytes();
        let lap = self.lap.to_le_bytes();
        let record: [u8; CAR_TELEMETRY_BYTES] = [
            self.index,
            x[0],
            x[1],
            x[2],
            y[0],
            y[1],
            y[2],
            yaw[0],
            yaw[1],
            speed[0],
            speed[1],
            self.throttle,
            self.brake,
            self.steering as u8,
            lap[0],
            lap[1],
            p[0],
            p[1],
            p[2],
            self.finish_position,
            self.flags,
        ];
        out.extend(record);
    }

    fn read(b: &[u8; CAR_TELEMETRY_BYTES]) -> Self {
        let i24 = |lo: u8, mid: u8, hi: u8| i32::from_le_bytes([lo, mid, hi, 0]) << 8 >> 8;
        Self {
            index: b[0],
            x_cm: i24(b[1], b[2], b[3]),
            y_cm: i24(b[4], b[5], b[6]),
            yaw: u16::from_le_bytes([b[7], b[8]]),
            speed_cmps: u16::from_le_bytes([b[9], b[10]]),
            throttle: b[11],
            brake: b[12],
            steering: b[13] as i8,
            lap: u16::from_le_bytes([b[14], b[15]]),
            progress_cm: u32::from_le_bytes([b[16], b[17], b[18], 0]),
            finish_position: b[19],
            flags: b[20],
        }
    }
}

/// Decodes a telemetry datagram.
///
/// # Errors
/// A [`ProtocolError`] naming what is wrong.
pub fn decode_telemetry(bytes: &[u8]) -> Result<Telemetry, ProtocolError> {
    let body = datagram_body(bytes, KIND_TELEMETRY)?;
    let short = |what: &str| ProtocolError::Malformed(format!("telemetry ends before its {what}"));
    let (head, mut rest) = body
        .split_first_chunk::<9>()
        .ok_or_else(|| short("header"))?;
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let session_state = match head[8] & !COUNTDOWN_FOLLOWS {
        0 => SessionState::Lobby,
        1 => SessionState::Countdown,
        2 => SessionState::Racing,
        3 => SessionState::Finished,
        other => {
            return Err(ProtocolError::Malformed(format!(
                "telemetry session state {other}"
            )));
        }
    };
    let countdown_ms = if head[8] & COUNTDOWN_FOLLOWS != 0 {
        let (ms, r) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| short("countdown"))?;
        rest = r;
        Some(u16::from_le_bytes(*ms))
    } else {
        None
    };
    let ([session_cars, count], records) = rest
        .split_first_chunk::<2>()
        .map(|(c, r)| (*c, r))
        .ok_or_else(|| short("car counts"))?;
    let want = usize::from(count) * CAR_TELEMETRY_BYTES;
    if records.len() < want {
        return Err(short("cars"));
    }
    if records.len() > want {
        return Err(ProtocolError::Trailing(records.len() - want));
    }
    if count > session_cars {
        return Err(ProtocolError::Malformed(format!(
            "telemetry carries {count} cars of a {session_cars}-car session"
        )));
    }
    let (chunks, _) = records.as_chunks::<CAR_TELEMETRY_BYTES>();
    Ok(Telemetry {
        server_tick: word(0),
        input_ack: word(4),
        session_state,
        countdown_ms,
        session_cars,
        cars: chunks.iter().map(CarTelemetry::read).collect(),
    })
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

/// Bytes of a telemetry datagram's header without a countdown (two more with one).
pub const TELEMETRY_HEADER_BYTES: usize = 1 + 4 + 4 + 1 + 1 + 1;

/// Bytes of a telemetry datagram carrying `cars` cars, outside the countdown (two more in it).
pub const fn telemetry_datagram_len(cars: usize) -> usize {
    TELEMETRY_HEADER_BYTES + cars * CAR_TELEMETRY_BYTES
}

/// Bytes of one [`CarTelemetry`] on the wire.
pub const CAR_TELEMETRY_BYTES: usize = 1 + 3 + 3 + 2 + 2 + 1 + 1 + 1 + 2 + 3 + 1 + 1;

/// Each car's newest state from telemetry datagrams that carry some of a session's cars: what a
/// client drives and draws from.
#[derive(Debug, Clone, Default)]
pub struct FieldState {
    cars: Vec<Option<(u32, CarTelemetry)>>,
    session_cars: u8,
}

impl FieldState {
    /// Takes in a datagram's cars (a car is replaced only by a newer tick's state).
    pub fn update(&mut self, telemetry: &Telemetry) {
        self.session_cars = telemetry.session_cars;
        for car in &telemetry.cars {
            let i = usize::from(car.index);
            if self.cars.len() <= i {
                self.cars.resize(i + 1, None);
            }
            let slot = &mut self.cars[i];
            if slot.is_none_or(|(tick, _)| tick <= telemetry.server_tick) {
                *slot = Some((telemetry.server_tick, *car));
            }
        }
    }

    /// The newest state of car `index`, with its tick.
    pub fn car(&self, index: u8) -> Option<(u32, &CarTelemetry)> {
        self.cars
            .get(usize::from(index))?
            .as_ref()
            .map(|(tick, car)| (*tick, car))
    }

    /// Every car heard of, by index.
    pub fn cars(&self) -> impl Iterator<Item = &CarTelemetry> {
        self.cars.iter().flatten().map(|(_, car)| car)
    }

    /// Cars in the session, from the newest datagram.
    pub fn session_cars(&self) -> u8 {
        self.session_cars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn car(i: u8) -> CarTelemetry {
        CarTelemetry::quantize(
            i,
            -1234.567,
            89.01,
            -2.5,
            71.3,
            [1.0, 0.25, -0.5],
            3,
            4567.89,
            Some(2),
            FLAG_COLLIDING,
        )
    }

    #[test]
    fn a_full_session_fits_one_datagram_and_its_size_is_known() {
        let t = Telemetry {
            server_tick: 123_456,
            input_ack: 99,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 16,
            cars: (0..16).map(car).collect(),
        };
        let bytes = encode_telemetry(&t).expect("fits");
        assert_eq!(bytes.len(), telemetry_datagram_len(16));
        assert_eq!(bytes.len(), 12 + 16 * 21);
        assert_eq!(decode_telemetry(&bytes).expect("decodes"), t);
        // The countdown adds its two bytes.
        let counting = Telemetry {
            session_state: SessionState::Countdown,
            countdown_ms: Some(4000),
            ..t
        };
        let bytes = encode_telemetry(&counting).expect("fits");
        assert_eq!(bytes.len(), telemetry_datagram_len(16) + 2);
        assert_eq!(decode_telemetry(&bytes).expect("decodes"), counting);
    }

    #[test]
    fn quantized_fields_come_back_within_their_step() {
        let c = car(0);
        assert!((c.x_m() + 1234.567).abs() <= 0.005);
        assert!((c.y_m() - 89.01).abs() <= 0.005);
        assert!((c.yaw_rad() + 2.5).abs() < 1e-3);
        assert!((c.speed_mps() - 71.3).abs() <= 0.005);
        assert!((c.progress_m() - 4567.89).abs() <= 0.01);
        assert_eq!((c.throttle, c.brake, c.steering), (255, 64, -64));
        let nan =
            CarTelemetry::quantize(0, f32::NAN, 0.0, f32::NAN, -5.0, [2.0; 3], 0, -1.0, None, 0);
        assert_eq!(
            (nan.x_cm, nan.speed_cmps, nan.progress_cm, nan.throttle),
            (0, 0, 0, 255)
        );
    }

    #[test]
    fn positions_past_the_wire_range_saturate() {
        let far = CarTelemetry::quantize(3, 1e6, -1e6, 0.0, 0.0, [0.0; 3], 0, 1e7, None, 0);
        assert_eq!(
            (far.x_cm, far.y_cm, far.progress_cm),
            (POSITION_LIMIT_CM, -POSITION_LIMIT_CM, PROGRESS_LIMIT_CM)
        );
        // Set by hand past the range, a value is clamped on the wire, not wrapped.
        let t = Telemetry {
            server_tick: 1,
            input_ack: 0,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 1,
            cars: vec![CarTelemetry {
                x_cm: i32::MIN,
                y_cm: -5,
                ..far
            }],
        };
        let back = decode_telemetry(&encode_telemetry(&t).expect("fits")).expect("decodes");
        assert_eq!(
            (back.cars[0].x_cm, back.cars[0].y_cm),
            (-POSITION_LIMIT_CM, -5)
        );
    }

    #[test]
    fn bad_telemetry_is_named() {
        let t = Telemetry {
            server_tick: 7,
            input_ack: 0,
            session_state: SessionState::Countdown,
            countdown_ms: Some(4000),
            session_cars: 2,
            cars: vec![car(0), car(1)],
        };
        let bytes = encode_telemetry(&t).expect("fits");
        let err = |b: &[u8]| decode_telemetry(b).expect_err("refused").to_string();
        assert!(err(&bytes[..bytes.len() - 1]).contains("before its cars"));
        assert!(err(&bytes[..5]).contains("before its header"));
        let mut state = bytes.clone();
        state[9] = 0x85;
        assert!(err(&state).contains("session state 5"));
        let mut more = bytes.clone();
        more[12] = 1;
        assert!(err(&more).contains("2 cars of a 1-car session"));
        let mut long = bytes;
        long.push(0);
        assert!(matches!(
            decode_telemetry(&long),
            Err(ProtocolError::Trailing(1))
        ));
    }

    #[test]
    fn the_field_keeps_each_cars_newest_state() {
        let datagram = |tick: u32, cars: Vec<CarTelemetry>| Telemetry {
            server_tick: tick,
            input_ack: 0,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 3,
            cars,
        };
        let mut field = FieldState::default();
        field.update(&datagram(10, vec![car(0), car(1), car(2)]));
        let moved = CarTelemetry { x_cm: 1, ..car(0) };
        field.update(&datagram(11, vec![moved]));
        // A late datagram does not take a car back.
        field.update(&datagram(9, vec![car(0), car(2)]));
        assert_eq!(field.car(0), Some((11, &moved)));
        assert_eq!(field.car(2).map(|(tick, _)| tick), Some(10));
        assert_eq!(field.cars().count(), 3);
        assert_eq!(field.session_cars(), 3);
        assert_eq!(field.car(7), None);
    }

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
