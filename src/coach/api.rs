//! The Racing Coach server's API (its OpenAPI file, `tests/fixtures/openapi/`), as serde
//! models: the request and response bodies ApexSim sends and reads. Field names, types and
//! which fields are required follow the file; `tests/it/coach.rs` checks every model field by
//! field against it, so a change on either side fails a test instead of a request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /api/v1/telemetry/lap`: upload a lap (query `lap_id`, header `X-Device-Token`).
pub const UPLOAD_LAP: &str = "/api/v1/telemetry/lap";
/// `POST /api/v1/metrics/lap`: upload a lap's metrics, after the lap was accepted.
pub const UPLOAD_METRICS: &str = "/api/v1/metrics/lap";
/// `POST /api/v1/auth/device/authorize`: start the device authorization flow.
pub const DEVICE_AUTHORIZE: &str = "/api/v1/auth/device/authorize";
/// `POST /api/v1/auth/device/token`: poll for the device's token.
pub const DEVICE_TOKEN: &str = "/api/v1/auth/device/token";
/// `GET /api/v1/sessions/{session_id}/laps/{lap_id}`: one lap (the uploader asks whether a
/// lap whose answer was lost is there).
pub fn session_lap(session_id: Uuid, lap_id: Uuid) -> String {
    format!("/api/v1/sessions/{session_id}/laps/{lap_id}")
}
/// `GET /api/v1/health`: the server and its database.
pub const HEALTH: &str = "/api/v1/health";
/// The header that carries a device token.
pub const DEVICE_TOKEN_HEADER: &str = "X-Device-Token";

/// `Body_uploadLap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadLapBody {
    /// The lap's frames and time.
    pub lap: LapTelemetry,
    /// The session it belongs to.
    pub session: SessionFrame,
}

/// `LapTelemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LapTelemetry {
    /// Every sample of the lap.
    pub frames: Vec<TelemetryFrame>,
    /// Total lap time in seconds (`null` when not timed).
    pub lap_time: Option<f64>,
}

/// `SessionFrame`: the session's track and car.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionFrame {
    /// When the session started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// Track id.
    pub track_id: i64,
    /// Track name.
    pub track_name: String,
    /// Track configuration (`null` for none).
    pub track_config_name: Option<String>,
    /// Track type (the server's default is "road course").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_type: Option<String>,
    /// Car id.
    pub car_id: i64,
    /// Car name.
    pub car_name: String,
    /// Car class id.
    pub car_class_id: i64,
    /// Series id.
    pub series_id: i64,
    /// Session type ("Race", "Practice", ...).
    pub session_type: String,
}

/// `TelemetryFrame`: one sample, in the units the API names (m, m/s, m/s², rad, 0..1). The
/// channels recorded as `f32` are sent as `f32`, so each is written with the digits it has
/// (`30.1`, not `30.100000381469727`): a lap's JSON is a third smaller and faster to encode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryFrame {
    /// Wall-clock time of the sample (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Seconds since the session started.
    pub session_time: f64,
    /// Lap number.
    pub lap_number: i64,
    /// Fraction of the lap completed, 0..1 (the API calls it a percentage).
    pub lap_distance_pct: f32,
    /// Metres from the start/finish line.
    pub lap_distance: f32,
    /// Seconds into the lap.
    pub current_lap_time: f32,
    /// The previous lap's time in seconds (0 when none).
    pub last_lap_time: f64,
    /// The best lap time so far in seconds (0 when none).
    pub best_lap_time: f64,
    /// m/s.
    pub speed: f32,
    /// rev/min.
    pub rpm: f32,
    /// Gear (-1 reverse, 0 neutral).
    pub gear: i64,
    /// 0..1.
    pub throttle: f32,
    /// 0..1.
    pub brake: f32,
    /// 0..1.
    pub clutch: f32,
    /// Steering wheel angle, rad (positive left).
    pub steering_angle: f32,
    /// m/s².
    pub lateral_acceleration: f32,
    /// m/s².
    pub longitudinal_acceleration: f32,
    /// m/s².
    pub vertical_acceleration: f32,
    /// rad/s.
    pub yaw_rate: f32,
    /// rad/s.
    pub roll_rate: f32,
    /// rad/s.
    pub pitch_rate: f32,
    /// m/s.
    pub velocity_x: f32,
    /// m/s.
    pub velocity_y: f32,
    /// m/s.
    pub velocity_z: f32,
    /// rad.
    pub yaw: f32,
    /// rad.
    pub pitch: f32,
    /// rad.
    pub roll: f32,
    /// Degrees.
    pub latitude: f64,
    /// Degrees.
    pub longitude: f64,
    /// Metres.
    pub altitude: f32,
    /// Per tyre (LF, RF, LR, RR), per position (left, middle, right), °C.
    pub tire_temps: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per tyre and position, wear in percent.
    pub tire_wear: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per wheel, bar.
    pub brake_line_pressure: BTreeMap<String, f64>,
    /// °C.
    pub track_temp: f32,
    /// Wetness level.
    pub track_wetness: i64,
    /// °C.
    pub air_temp: f32,
    /// Session flags bit field.
    pub session_flags: i64,
    /// Track surface type (iRacing's `irsdk_TrkLoc`: 3 = on track).
    pub track_surface: i64,
    /// On pit road.
    pub on_pit_road: bool,
}

/// `LapUploadResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LapUploadResponse {
    /// Status word.
    pub status: String,
    /// Message.
    pub message: String,
    /// The lap's id on the server.
    pub lap_id: String,
}

/// `MetricsUploadRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsUploadRequest {
    /// The metrics.
    pub lap_metrics: LapMetrics,
    /// The lap they belong to (as the server returned it).
    pub lap_id: String,
}

/// `LapMetrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LapMetrics {
    /// Lap number.
    pub lap_number: i64,
    /// Lap time, s.
    pub lap_time: Option<f64>,
    /// Braking zones in lap order.
    pub braking_zones: Vec<BrakingMetrics>,
    /// Corners in lap order.
    pub corners: Vec<CornerMetrics>,
    /// Corners.
    pub total_corners: i64,
    /// Braking zones.
    pub total_braking_zones: i64,
    /// Mean apex speed, m/s.
    pub average_corner_speed: f64,
    /// m/s.
    pub max_speed: f64,
    /// m/s.
    pub min_speed: f64,
}

/// `BrakingMetrics`: one braking zone (distances in metres from the line, speeds m/s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrakingMetrics {
    /// Where braking starts.
    pub braking_point_distance: f64,
    /// Speed there.
    pub braking_point_speed: f64,
    /// Where it ends.
    pub end_distance: f64,
    /// Peak brake, 0..1.
    pub max_brake_pressure: f64,
    /// s.
    pub braking_duration: f64,
    /// Lowest speed in the zone.
    pub minimum_speed: f64,
    /// m/s² (positive).
    pub initial_deceleration: f64,
    /// m/s² (positive).
    pub average_deceleration: f64,
    /// Average over initial deceleration, 0..1.
    pub braking_efficiency: f64,
    /// Whether the brake was trailed into the corner.
    pub has_trail_braking: bool,
    /// Metres braked while turning.
    pub trail_brake_distance: f64,
    /// Share of the zone braked while turning, 0..1.
    pub trail_brake_percentage: f64,
}

/// `CornerMetrics`: one corner (distances in metres from the line, speeds m/s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CornerMetrics {
    /// Turn-in.
    pub turn_in_distance: f64,
    /// Apex.
    pub apex_distance: f64,
    /// Exit.
    pub exit_distance: f64,
    /// Back on the throttle.
    pub throttle_application_distance: f64,
    /// Speed at turn-in.
    pub turn_in_speed: f64,
    /// Speed at the apex.
    pub apex_speed: f64,
    /// Speed at the exit.
    pub exit_speed: f64,
    /// Speed back on the throttle.
    pub throttle_application_speed: f64,
    /// Peak lateral acceleration, g.
    pub max_lateral_g: f64,
    /// s.
    pub time_in_corner: f64,
    /// Turn-in to exit, m.
    pub corner_distance: f64,
    /// Largest steering wheel angle, rad.
    pub max_steering_angle: f64,
    /// Turn-in speed minus apex speed.
    pub speed_loss: f64,
    /// Exit speed minus apex speed.
    pub speed_gain: f64,
}

/// `MetricsUploadResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsUploadResponse {
    /// Status word.
    pub status: String,
    /// Message.
    pub message: String,
    /// The stored metrics' id.
    pub lap_metrics_id: String,
}

/// `DeviceAuthorizationRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAuthorizationRequest {
    /// This device's name, at most 100 characters.
    pub device_name: String,
}

/// `DeviceAuthorizationResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAuthorizationResponse {
    /// The code this device polls with.
    pub device_code: String,
    /// The code the user confirms in the browser.
    pub user_code: String,
    /// Where the user confirms it.
    pub verification_uri: String,
    /// Seconds until the codes expire.
    pub expires_in: i64,
    /// Seconds between polls.
    pub interval: i64,
}

/// `DeviceTokenRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTokenRequest {
    /// The device code from the authorization.
    pub device_code: String,
}

/// `DeviceTokenResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTokenResponse {
    /// The token to send as `X-Device-Token`.
    pub access_token: String,
    /// Token type (the server's default is "Bearer").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// The device's name.
    pub device_name: String,
}

/// `HTTPValidationError`: the body of a 422.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HttpValidationError {
    /// What is wrong, field by field.
    #[serde(default)]
    pub detail: Vec<ValidationError>,
}

/// `ValidationError`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationError {
    /// Where: body, field names and indices.
    pub loc: Vec<serde_json::Value>,
    /// What.
    pub msg: String,
    /// Error type.
    #[serde(rename = "type")]
    pub kind: String,
}

impl ValidationError {
    /// `body.lap.frames.3.speed: field required`.
    pub fn describe(&self) -> String {
        let loc: Vec<String> = self
            .loc
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        format!("{}: {}", loc.join("."), self.msg)
    }
}

/// `HealthCheckResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckResponse {
    /// healthy / unhealthy.
    pub status: String,
    /// Message.
    pub message: String,
    /// Database status.
    pub database_status: String,
    /// Database message.
    pub database_message: String,
}
