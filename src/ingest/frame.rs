//! The channels ApexSim takes from a recording, decoded by a pitwall [`FrameAdapter`]: the plan
//! (where each channel lies in a record) is made once per file from the variable schema, then
//! every record is decoded by index, without name lookups.

use pitwall::{AdapterValidation, FieldExtraction, FrameAdapter, FramePacket, VariableSchema};
use pitwall::{VariableInfo, VariableType};

/// Channels, in plan order.
const CHANNELS: [&str; 20] = [
    "SessionTime",
    "Lap",
    "LapDistPct",
    "LapDist",
    "LapLastLapTime",
    "Speed",
    "Throttle",
    "Brake",
    "SteeringWheelAngle",
    "SteeringWheelAngleMax",
    "Gear",
    "RPM",
    "Lat",
    "Lon",
    "Yaw",
    "YawNorth",
    "LongAccel",
    "LatAccel",
    "OnPitRoad",
    "PlayerTrackSurface",
];

/// Channels without which laps cannot be detected.
pub const REQUIRED: [&str; 3] = ["SessionTime", "Lap", "LapDistPct"];

/// One record, in the recording's own units. Channels a recording lacks are `None` (or NaN
/// for plain floats whose absence is harmless).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IbtFrame {
    /// Session clock, seconds.
    pub session_time_s: f64,
    /// Lap counter (session-wide).
    pub lap: i32,
    /// Lap distance 0..1.
    pub lap_dist_pct: f32,
    /// Lap distance, metres.
    pub lap_dist_m: f32,
    /// Last lap time, seconds (-1 when none).
    pub last_lap_time_s: f32,
    /// Speed, m/s.
    pub speed_mps: f32,
    /// Throttle 0..1.
    pub throttle: f32,
    /// Brake 0..1.
    pub brake: f32,
    /// Steering wheel angle, radians, positive to the left.
    pub steering_rad: f32,
    /// Steering lock, radians.
    pub steering_max_rad: Option<f32>,
    /// Gear (-1 reverse, 0 neutral).
    pub gear: i32,
    /// Engine speed, rev/min.
    pub rpm: f32,
    /// Latitude, degrees.
    pub lat_deg: f64,
    /// Longitude, degrees.
    pub lon_deg: f64,
    /// Yaw, radians.
    pub yaw_rad: f32,
    /// Yaw relative to north, radians (version 2 only).
    pub yaw_north_rad: Option<f32>,
    /// Longitudinal acceleration, m/s².
    pub long_accel_mps2: f32,
    /// Lateral acceleration, m/s².
    pub lat_accel_mps2: f32,
    /// On pit road.
    pub on_pit_road: bool,
    /// `irsdk_TrkLoc` (-1 not in world, 0 off track, 1 pit stall, 2 approaching pits, 3 on
    /// track); version 2 only.
    pub track_surface: Option<i32>,
}

/// Reads a scalar of any numeric type as `f64`.
fn number(data: &[u8], info: &VariableInfo) -> Option<f64> {
    let at = info.offset;
    let four = || -> Option<[u8; 4]> { data.get(at..at + 4)?.try_into().ok() };
    Some(match info.data_type {
        VariableType::Float32 => f64::from(f32::from_le_bytes(four()?)),
        VariableType::Float64 => f64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?),
        VariableType::Int32 => f64::from(i32::from_le_bytes(four()?)),
        VariableType::UInt32 | VariableType::BitField => f64::from(u32::from_le_bytes(four()?)),
        VariableType::Bool | VariableType::UInt8 | VariableType::Char => f64::from(*data.get(at)?),
        VariableType::Int8 => f64::from(*data.get(at)? as i8),
        VariableType::Int16 => {
            f64::from(i16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
        }
        VariableType::UInt16 => {
            f64::from(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
        }
    })
}

impl IbtFrame {
    /// Decodes one record with a plan made by [`FrameAdapter::validate_schema`].
    pub fn decode(data: &[u8], plan: &[FieldExtraction]) -> Self {
        let get = |i: usize| {
            plan.get(i)
                .and_then(|f| f.var_info())
                .and_then(|v| number(data, v))
        };
        let f = |i: usize| get(i).map_or(f32::NAN, |v| v as f32);
        Self {
            session_time_s: get(0).unwrap_or(f64::NAN),
            lap: get(1).map_or(0, |v| v as i32),
            lap_dist_pct: f(2),
            lap_dist_m: f(3),
            last_lap_time_s: f(4),
            speed_mps: f(5),
            throttle: f(6),
            brake: f(7),
            steering_rad: f(8),
            steering_max_rad: get(9).map(|v| v as f32),
            gear: get(10).map_or(0, |v| v as i32),
            rpm: f(11),
            lat_deg: get(12).unwrap_or(f64::NAN),
            lon_deg: get(13).unwrap_or(f64::NAN),
            yaw_rad: f(14),
            yaw_north_rad: get(15).map(|v| v as f32),
            long_accel_mps2: f(16),
            lat_accel_mps2: f(17),
            on_pit_road: get(18).is_some_and(|v| v != 0.0),
            track_surface: get(19).map(|v| v as i32),
        }
    }

    /// Latitude and longitude in degrees, when the frame has a position.
    pub fn location(&self) -> Option<(f64, f64)> {
        (self.lat_deg.is_finite()
            && self.lon_deg.is_finite()
            && self.lat_deg != 0.0
            && self.lon_deg != 0.0)
            .then_some((self.lat_deg, self.lon_deg))
    }

    /// Whether this is one of the blank records many recordings start with: the clock runs
    /// but lap, lap distance and position are all zero.
    pub fn is_blank(&self) -> bool {
        let zero = |v: f64| v == 0.0 || v.is_nan();
        self.lap == 0 && self.lap_dist_pct == 0.0 && zero(self.lat_deg) && zero(self.lon_deg)
    }
}

impl FrameAdapter for IbtFrame {
    fn validate_schema(schema: &VariableSchema) -> pitwall::Result<AdapterValidation> {
        let plan = CHANNELS
            .iter()
            .map(|&name| {
                let var_info = schema.variables.get(name).cloned();
                match var_info {
                    Some(var_info) if REQUIRED.contains(&name) => Ok(FieldExtraction::Required {
                        name: name.to_owned(),
                        var_info,
                    }),
                    None if REQUIRED.contains(&name) => {
                        Err(pitwall::TelemetryError::FieldNotFound {
                            field: name.to_owned(),
                        })
                    }
                    var_info => Ok(FieldExtraction::Optional {
                        name: name.to_owned(),
                        var_info,
                    }),
                }
            })
            .collect::<pitwall::Result<Vec<_>>>()?;
        Ok(AdapterValidation::new(plan))
    }

    fn adapt(packet: &FramePacket, validation: &AdapterValidation) -> Self {
        Self::decode(&packet.data, &validation.extraction_plan)
    }
}
