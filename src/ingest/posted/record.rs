//! Seed 002's telemetry record as the API takes it: its fields in their units, the checks
//! of each field, the archive session it goes to and the track it is archived under.

use apexsim_systems::prelude::RecordedSample;
use thiserror::Error;
use uuid::Uuid;

use crate::content::Content;

/// Records in one post at most.
pub const MAX_RECORDS: usize = 10_000;

/// Characters in a driver, session, track, car or session type at most.
pub const MAX_NAME: usize = 200;

/// Standard gravity, m/s², for the records' accelerations in g.
const G: f32 = 9.806_65;

/// Namespace of posted sessions' ids (uuid v5 of driver and session).
const NAMESPACE: Uuid = Uuid::from_u128(0x6170_6578_7369_6d2d_6170_692d_706f_7374);

/// One telemetry sample of one driver's car (seed 002's record), in the units its field names
/// say. Fields ApexSim's lap file has no column for (clutch, fuel, tyre temperatures, vertical
/// acceleration) are checked and then left out: the answer lists them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryRecord {
    /// The driver's id.
    #[schema(min_length = 1, max_length = 200)]
    pub driver: String,
    /// The driver's session (any name: the pair of driver and session is one archive
    /// session).
    #[schema(min_length = 1, max_length = 200)]
    pub session: String,
    /// Track: the slug, id or name of a track of the content, or any name with
    /// `track_length_m`.
    #[schema(min_length = 1, max_length = 200)]
    pub track: String,
    /// Car model.
    #[schema(min_length = 1, max_length = 200)]
    pub car: String,
    /// Session type (`Race`, `Practice`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 200)]
    pub session_type: Option<String>,
    /// Lap length in metres, for a track the content does not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 100.0, maximum = 100000.0)]
    pub track_length_m: Option<f32>,
    /// The session's clock in seconds; increasing from record to record of a session.
    #[schema(minimum = 0.0, maximum = 10000000000.0)]
    pub time_s: f64,
    /// Lap counter (the lap being driven).
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 65535)]
    pub lap: i32,
    /// Distance along the lap, 0..=1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub lap_dist_pct: f32,
    /// Speed in km/h.
    #[schema(minimum = 0.0, maximum = 1000.0)]
    pub speed_kph: f32,
    /// Engine speed in rev/min.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 30000.0)]
    pub rpm: f32,
    /// Gear: -1 reverse, 0 neutral, 1...
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = -1, maximum = 20)]
    pub gear: i8,
    /// Throttle, 0..=1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub throttle: f32,
    /// Brake, 0..=1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub brake: f32,
    /// Clutch, 0..=1 (not archived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub clutch: Option<f32>,
    /// Steering, -1 (left) ..= 1 (right).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub steering: Option<f32>,
    /// The last completed lap's official time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1.0, maximum = 100000.0)]
    pub last_lap_time_s: Option<f32>,
    /// Fuel in litres (not archived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1000.0)]
    pub fuel_l: Option<f32>,
    /// Tyre temperatures in °C (not archived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tire_temps_c: Option<TireTemps>,
    /// Longitudinal acceleration in g (positive forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -20.0, maximum = 20.0)]
    pub g_long: Option<f32>,
    /// Lateral acceleration in g (positive left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -20.0, maximum = 20.0)]
    pub g_lat: Option<f32>,
    /// Vertical acceleration in g (not archived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -20.0, maximum = 20.0)]
    pub g_vert: Option<f32>,
    /// Position east of the track's origin, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1000000.0, maximum = 1000000.0)]
    pub x_m: Option<f32>,
    /// Position north of the track's origin, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1000000.0, maximum = 1000000.0)]
    pub y_m: Option<f32>,
    /// Heading in radians.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -7.0, maximum = 7.0)]
    pub yaw_rad: Option<f32>,
    /// On pit road.
    #[serde(default)]
    pub on_pit_road: bool,
    /// Off the track surface.
    #[serde(default)]
    pub off_track: bool,
}

/// An integer, also written as a number with no fraction (`4.0`), as JSON Schema's
/// `integer` allows.
fn integral<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error as _;
    let v: f64 = serde::Deserialize::deserialize(d)?;
    if v.fract() != 0.0 || !v.is_finite() || v.abs() > 1e15 {
        return Err(D::Error::custom(format!("{v} is not an integer")));
    }
    T::try_from(v as i64).map_err(|_| D::Error::custom(format!("{v} is out of range")))
}

/// Tyre temperatures in °C, each within -50..=300.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TireTemps {
    /// Left front.
    #[schema(minimum = -50.0, maximum = 300.0)]
    pub lf: f32,
    /// Right front.
    #[schema(minimum = -50.0, maximum = 300.0)]
    pub rf: f32,
    /// Left rear.
    #[schema(minimum = -50.0, maximum = 300.0)]
    pub lr: f32,
    /// Right rear.
    #[schema(minimum = -50.0, maximum = 300.0)]
    pub rr: f32,
}

/// A record's field that is wrong, and how.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field (`time_s`, `tire_temps_c`...).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Checks that `v` is finite and within `lo..=hi`.
fn within(field: &'static str, v: f32, lo: f32, hi: f32) -> Result<(), Invalid> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, format!("{v} is not within {lo}..={hi}")))
    }
}

fn name(field: &'static str, v: &str) -> Result<(), Invalid> {
    let n = v.chars().count();
    if n == 0 {
        Err(invalid(field, "is empty"))
    } else if n > MAX_NAME {
        Err(invalid(
            field,
            format!("is {n} characters, over {MAX_NAME}"),
        ))
    } else {
        Ok(())
    }
}

impl TelemetryRecord {
    /// Checks every field on its own (the order within a session is checked by the
    /// recorder).
    ///
    /// # Errors
    /// The first field that is wrong.
    pub fn check(&self) -> Result<(), Invalid> {
        name("driver", &self.driver)?;
        name("session", &self.session)?;
        name("track", &self.track)?;
        name("car", &self.car)?;
        if let Some(t) = &self.session_type {
            name("session_type", t)?;
        }
        if let Some(l) = self.track_length_m {
            within("track_length_m", l, 100.0, 100_000.0)?;
        }
        if !(self.time_s.is_finite() && (0.0..=1e10).contains(&self.time_s)) {
            return Err(invalid(
                "time_s",
                format!("{} is not within 0..=1e10", self.time_s),
            ));
        }
        if !(0..=i32::from(u16::MAX)).contains(&self.lap) {
            return Err(invalid(
                "lap",
                format!("{} is not within 0..=65535", self.lap),
            ));
        }
        within("lap_dist_pct", self.lap_dist_pct, 0.0, 1.0)?;
        within("speed_kph", self.speed_kph, 0.0, 1000.0)?;
        within("rpm", self.rpm, 0.0, 30_000.0)?;
        if !(-1..=20).contains(&self.gear) {
            return Err(invalid(
                "gear",
                format!("{} is not within -1..=20", self.gear),
            ));
        }
        within("throttle", self.throttle, 0.0, 1.0)?;
        within("brake", self.brake, 0.0, 1.0)?;
        let optional: [(&'static str, Option<f32>, f32, f32); 10] = [
            ("clutch", self.clutch, 0.0, 1.0),
            ("steering", self.steering, -1.0, 1.0),
            ("last_lap_time_s", self.last_lap_time_s, 1.0, 100_000.0),
            ("fuel_l", self.fuel_l, 0.0, 1000.0),
            ("g_long", self.g_long, -20.0, 20.0),
            ("g_lat", self.g_lat, -20.0, 20.0),
            ("g_vert", self.g_vert, -20.0, 20.0),
            ("x_m", self.x_m, -1e6, 1e6),
            ("y_m", self.y_m, -1e6, 1e6),
            ("yaw_rad", self.yaw_rad, -7.0, 7.0),
        ];
        for (field, v, lo, hi) in optional {
            if let Some(v) = v {
                within(field, v, lo, hi)?;
            }
        }
        if let Some(t) = self.tire_temps_c {
            within("tire_temps_c.lf", t.lf, -50.0, 300.0)?;
            within("tire_temps_c.rf", t.rf, -50.0, 300.0)?;
            within("tire_temps_c.lr", t.lr, -50.0, 300.0)?;
            within("tire_temps_c.rr", t.rr, -50.0, 300.0)?;
        }
        Ok(())
    }

    /// The archive session these records go to.
    pub fn session_id(&self) -> Uuid {
        session_id(&self.driver, &self.session)
    }

    /// The fields given that the archive has no column for.
    pub(super) fn not_archived(&self) -> impl Iterator<Item = &'static str> {
        [
            ("clutch", self.clutch.is_some()),
            ("fuel_l", self.fuel_l.is_some()),
            ("tire_temps_c", self.tire_temps_c.is_some()),
            ("g_vert", self.g_vert.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, given)| given.then_some(f))
    }

    /// The record as a sample, number `record` of its session, on a lap of `track_length_m`.
    pub(super) fn sample(&self, record: u64, track_length_m: f32) -> RecordedSample {
        RecordedSample {
            record,
            time_s: self.time_s,
            lap: self.lap,
            lap_dist_pct: self.lap_dist_pct,
            lap_dist_m: self.lap_dist_pct * track_length_m,
            last_lap_time_s: self.last_lap_time_s.unwrap_or(-1.0),
            speed_mps: self.speed_kph / 3.6,
            throttle: self.throttle,
            brake: self.brake,
            steering: self.steering.unwrap_or(f32::NAN),
            gear: self.gear,
            rpm: self.rpm,
            x_m: self.x_m.unwrap_or(f32::NAN),
            y_m: self.y_m.unwrap_or(f32::NAN),
            yaw_rad: self.yaw_rad.unwrap_or(f32::NAN),
            long_accel_mps2: self.g_long.map_or(f32::NAN, |g| g * G),
            lat_accel_mps2: self.g_lat.map_or(f32::NAN, |g| g * G),
            on_pit_road: self.on_pit_road,
            off_track: self.off_track,
        }
    }
}

/// The archive session of a driver's session: a UUID v5 of the pair.
pub fn session_id(driver: &str, session: &str) -> Uuid {
    let mut name = Vec::with_capacity(driver.len() + session.len() + 1);
    name.extend_from_slice(driver.as_bytes());
    name.push(0);
    name.extend_from_slice(session.as_bytes());
    Uuid::new_v5(&NAMESPACE, &name)
}

/// The track a session is archived under.
#[derive(Debug, Clone, PartialEq)]
pub struct PostedTrack {
    /// The archive's track name (the content's slug, else the record's name as a slug).
    pub slug: String,
    /// Its display name.
    pub name: String,
    /// Lap length in metres.
    pub length_m: f32,
    /// Where its sectors start (fractions of the lap), when the content has it.
    pub sectors: Vec<f32>,
}

impl PostedTrack {
    /// The track a record names: the content's (its length unless the record gives one), or
    /// any track with `track_length_m`.
    ///
    /// # Errors
    /// [`Invalid`] on `track` when the content has no such track and the record gives no
    /// length.
    pub fn of(record: &TelemetryRecord, content: &Content) -> Result<Self, Invalid> {
        match (content.track(&record.track), record.track_length_m) {
            (Some(t), length) => Ok(Self {
                slug: t.slug.clone(),
                name: t.name.clone(),
                length_m: length.unwrap_or_else(|| t.geometry.length_m()),
                sectors: t.sectors.clone(),
            }),
            (None, Some(length_m)) => Ok(Self {
                slug: crate::ingest::slug(&record.track),
                name: record.track.clone(),
                length_m,
                sectors: Vec::new(),
            }),
            (None, None) => Err(invalid(
                "track",
                format!(
                    "{:?} is not a track of this server's content (GET /api/v1/tracks); give \
                     track_length_m for another track",
                    record.track
                ),
            )),
        }
    }
}
