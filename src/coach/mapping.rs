//! From the archive to the API: a lap's rows to `TelemetryFrame`s in the units the API names,
//! its metrics to `LapMetrics`, its session to a `SessionFrame`, and the stable ids that make
//! an upload idempotent. Pure functions of the lap; the uploader calls them.
//!
//! Channels the archive does not record (clutch, vertical acceleration, roll and pitch, GPS,
//! tyres, weather) are sent as 0 or empty, since the API requires them.

use apexsim_systems::record::LapColumns;
use uuid::Uuid;

use super::api;
use crate::analysis::LapMetrics;
use crate::archive::index::SessionRow;
use crate::archive::outbox::NAMESPACE;
use crate::archive::{LapMeta, Source};

/// Steering wheel angle at full lock, rad, for the API's `steering_angle`: the archive keeps
/// steering as a fraction of the lock (-1 left ..= 1 right), not the wheel's angle.
pub const STEERING_LOCK_RAD: f64 = std::f64::consts::PI;

/// Samples per second of a lap's `tick` column: the simulation's tick, or iRacing's 60 Hz
/// telemetry sample (which posted telemetry is taken to be too).
fn ticks_per_second(source: Source) -> f64 {
    match source {
        Source::Sim => f64::from(apexsim_systems::TICK_HZ),
        Source::Iracing | Source::Api => 60.0,
    }
}

/// The session's id on the server: one per car of an archive session (a Racing Coach session
/// is one driver in one car).
pub fn session_id(session: Uuid, car: u8) -> Uuid {
    let mut name = [0u8; 17];
    name[..16].copy_from_slice(session.as_bytes());
    name[16] = car;
    Uuid::new_v5(&NAMESPACE, &name)
}

/// Where ApexSim's own ids (simulated tracks and cars, laps from other tools) start: iRacing's
/// ids are small (tracks and cars in the hundreds or thousands), so 2,000,000,000 up to
/// 2,099,999,999 never meets one, and still fits the 32-bit integers a server may keep.
pub const OWN_ID_BASE: i64 = 2_000_000_000;

/// A stable id for a name the API wants as a number (a simulated track or car): FNV-1a of the
/// name, in the range from [`OWN_ID_BASE`] that iRacing's ids never reach.
pub fn name_id(name: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    OWN_ID_BASE + i64::from(h % 100_000_000)
}

fn rfc3339(unix_s: f64) -> Option<String> {
    let nanos = (unix_s * 1e9).round();
    if !nanos.is_finite() {
        return None;
    }
    jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(|t| t.to_string())
}

/// The session frame of a lap: a recording's own identity (iRacing's track, car and session
/// ids and names) when the index has it, else ApexSim's names with ids of its own range.
pub fn session_frame(session: &SessionRow, meta: &LapMeta) -> api::SessionFrame {
    let timestamp = rfc3339(session.started_at as f64);
    let session_id = Some(session_id(meta.session, meta.car));
    if let Some(id) = &session.identity {
        return api::SessionFrame {
            timestamp,
            session_id,
            track_id: id.track_id,
            track_name: id.track_name.clone(),
            track_config_name: id.track_config.clone(),
            track_type: id.track_type.clone(),
            car_id: id.car_id,
            car_name: id.car_name.clone(),
            car_class_id: id.car_class_id,
            series_id: id.series_id,
            session_type: id.session_type.clone(),
        };
    }
    api::SessionFrame {
        timestamp,
        session_id,
        track_id: name_id(&meta.track),
        track_name: meta.track.clone(),
        track_config_name: None,
        track_type: Some("road course".into()),
        car_id: name_id(&meta.car_model),
        car_name: meta.car_model.clone(),
        car_class_id: name_id(&meta.car_model),
        series_id: 0,
        session_type: match meta.source {
            Source::Sim if session.lap_limit.is_some() => "Race",
            Source::Sim => "Practice",
            Source::Iracing | Source::Api => "Offline Testing",
        }
        .into(),
    }
}

/// A finite number, or 0.
fn num(v: f32) -> f64 {
    f64::from(fin(v))
}

/// A finite number, or 0, kept as `f32`.
fn fin(v: f32) -> f32 {
    if v.is_finite() { v } else { 0.0 }
}

/// The lap's rows as frames. `last_lap_s` and `best_lap_s` are the car's previous lap and best
/// lap before this one (0 when none).
pub fn frames(
    session: &SessionRow,
    meta: &LapMeta,
    c: &LapColumns,
    last_lap_s: f64,
    best_lap_s: f64,
) -> Vec<api::TelemetryFrame> {
    let rate = ticks_per_second(meta.source);
    let length = meta.track_length_m;
    let lock = STEERING_LOCK_RAD as f32;
    let n = c.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let session_time = c.tick[i] as f64 / rate;
        let distance = fin(c.distance_m[i]);
        let speed = fin(c.speed_mps[i]);
        let yaw = fin(c.yaw_rad[i]);
        // Yaw rate from the neighbours (central difference, unwrapped).
        let (a, b) = (i.saturating_sub(1), (i + 1).min(n - 1));
        let dt = f64::from(c.lap_time_s[b]) - f64::from(c.lap_time_s[a]);
        let yaw_rate = if b > a && dt > 0.0 {
            let dy = f64::from(c.yaw_rad[b]) - f64::from(c.yaw_rad[a]);
            let dy = (dy + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU)
                - std::f64::consts::PI;
            fin((dy / dt) as f32)
        } else {
            0.0
        };
        out.push(api::TelemetryFrame {
            timestamp: rfc3339(session.started_at as f64 + session_time),
            session_time,
            lap_number: i64::from(meta.lap),
            lap_distance_pct: if length > 0.0 {
                (distance / length).clamp(0.0, 1.0)
            } else {
                0.0
            },
            lap_distance: distance,
            current_lap_time: fin(c.lap_time_s[i]),
            last_lap_time: last_lap_s,
            best_lap_time: best_lap_s,
            speed,
            rpm: fin(c.rpm[i]),
            gear: fin(c.gear[i]).round() as i64,
            throttle: fin(c.throttle[i]).clamp(0.0, 1.0),
            brake: fin(c.brake[i]).clamp(0.0, 1.0),
            clutch: 0.0,
            steering_angle: -fin(c.steering[i]) * lock,
            lateral_acceleration: fin(c.lat_accel_mps2[i]),
            longitudinal_acceleration: fin(c.long_accel_mps2[i]),
            vertical_acceleration: 0.0,
            yaw_rate,
            roll_rate: 0.0,
            pitch_rate: 0.0,
            velocity_x: speed * yaw.cos(),
            velocity_y: speed * yaw.sin(),
            velocity_z: 0.0,
            yaw,
            pitch: 0.0,
            roll: 0.0,
            latitude: 0.0,
            longitude: 0.0,
            altitude: 0.0,
            tire_temps: Default::default(),
            tire_wear: Default::default(),
            brake_line_pressure: Default::default(),
            track_temp: 0.0,
            track_wetness: 0,
            air_temp: 0.0,
            session_flags: 0,
            track_surface: 3,
            on_pit_road: false,
        });
    }
    out
}

/// The index of the first sample at or past `d` metres (the last sample when none is).
fn at_distance(c: &LapColumns, d: f32) -> usize {
    c.distance_m
        .iter()
        .position(|&x| x >= d)
        .unwrap_or(c.len().saturating_sub(1))
}

/// The lap's metrics as the API has them. Steering and the throttle speed are read from the
/// lap's rows between the corner's turn-in and exit.
pub fn lap_metrics(meta: &LapMeta, m: &LapMetrics, c: &LapColumns) -> api::LapMetrics {
    let braking_zones = m
        .braking
        .iter()
        .map(|z| api::BrakingMetrics {
            braking_point_distance: num(z.start_m),
            braking_point_speed: num(z.start_speed_mps),
            end_distance: num(z.end_m),
            max_brake_pressure: num(z.peak_brake),
            braking_duration: num(z.duration_s),
            minimum_speed: num(z.min_speed_mps),
            initial_deceleration: num(z.initial_decel_mps2),
            average_deceleration: num(z.avg_decel_mps2),
            braking_efficiency: if z.initial_decel_mps2 > 0.0 {
                num(z.avg_decel_mps2 / z.initial_decel_mps2).clamp(0.0, 1.0)
            } else {
                0.0
            },
            has_trail_braking: z.trail_brake_m > 0.0,
            trail_brake_distance: num(z.trail_brake_m),
            trail_brake_percentage: num(z.trail_brake_share),
        })
        .collect();
    let corners: Vec<api::CornerMetrics> = m
        .corners
        .iter()
        .map(|k| {
            let (a, b) = (at_distance(c, k.turn_in_m), at_distance(c, k.exit_m));
            let span = if a <= b { a..=b } else { b..=a };
            let max_steer = c
                .steering
                .get(span)
                .into_iter()
                .flatten()
                .map(|s| f64::from(s.abs()))
                .filter(|s| s.is_finite())
                .fold(0.0, f64::max);
            let (throttle_d, throttle_v) = match k.throttle_m {
                Some(d) => (num(d), num(c.speed_mps[at_distance(c, d)])),
                None => (num(k.turn_in_m), num(k.turn_in_speed_mps)),
            };
            let mut corner_distance = f64::from(k.exit_m - k.turn_in_m);
            if corner_distance < 0.0 {
                corner_distance += f64::from(meta.track_length_m);
            }
            api::CornerMetrics {
                turn_in_distance: num(k.turn_in_m),
                apex_distance: num(k.apex_m),
                exit_distance: num(k.exit_m),
                throttle_application_distance: throttle_d,
                turn_in_speed: num(k.turn_in_speed_mps),
                apex_speed: num(k.apex_speed_mps),
                exit_speed: num(k.exit_speed_mps),
                throttle_application_speed: throttle_v,
                max_lateral_g: num(k.apex_lat_g),
                time_in_corner: num(k.time_s),
                corner_distance: if corner_distance.is_finite() {
                    corner_distance
                } else {
                    0.0
                },
                max_steering_angle: max_steer * STEERING_LOCK_RAD,
                speed_loss: num(k.speed_lost_mps),
                speed_gain: num(k.speed_gained_mps),
            }
        })
        .collect();
    let average_corner_speed = if corners.is_empty() {
        0.0
    } else {
        corners.iter().map(|k| k.apex_speed).sum::<f64>() / corners.len() as f64
    };
    api::LapMetrics {
        lap_number: i64::from(meta.lap),
        lap_time: meta.lap_time_s.filter(|t| t.is_finite()),
        total_corners: corners.len() as i64,
        total_braking_zones: m.braking.len() as i64,
        braking_zones,
        corners,
        average_corner_speed,
        max_speed: num(m.stats.top_speed_mps),
        min_speed: num(m.stats.min_speed_mps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::outbox::lap_id;
    use apexsim_systems::record::LapSample;

    fn session() -> SessionRow {
        SessionRow {
            id: Uuid::from_u128(7),
            source: "sim".into(),
            track: "oval".into(),
            car_model: "gt3".into(),
            lap_limit: Some(3),
            seed: Some(1),
            started_at: 1_764_000_000,
            finished_at: None,
            sectors: Vec::new(),
            identity: None,
            template_id: None,
            ended_by: None,
            laps_pruned_at: None,
        }
    }

    fn meta() -> LapMeta {
        LapMeta {
            source: Source::Sim,
            session: Uuid::from_u128(7),
            car: 2,
            car_model: "gt3".into(),
            driver: "d".into(),
            track: "oval".into(),
            track_length_m: 1000.0,
            lap: 3,
            lap_time_s: Some(60.0),
            complete: true,
            valid: true,
            date: crate::archive::Date::from_unix(0),
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let s = Uuid::from_u128(7);
        assert_eq!(lap_id(s, 2, 3), lap_id(s, 2, 3));
        assert_ne!(lap_id(s, 2, 3), lap_id(s, 2, 4));
        assert_ne!(lap_id(s, 2, 3), lap_id(s, 3, 3));
        assert_ne!(session_id(s, 2), session_id(s, 3));
        assert_eq!(name_id("oval"), name_id("oval"));
        assert!(name_id("oval") >= 0 && name_id("oval") != name_id("grand_circuit"));
    }

    #[test]
    fn rows_become_frames_in_the_apis_units() {
        let mut c = LapColumns::default();
        for i in 0..3u64 {
            c.push(&LapSample {
                tick: 2400 + i * 24,
                lap_time_s: i as f32 * 0.1,
                distance_m: 250.0 + i as f32,
                speed_mps: 30.0,
                throttle: 1.5,
                brake: -0.5,
                steering: 0.5,
                gear: f32::NAN,
                rpm: f32::NAN,
                // The third sample is past +π, so wrapped to just above -π.
                yaw_rad: {
                    let y = std::f32::consts::PI - 0.05 + i as f32 * 0.05;
                    if y > std::f32::consts::PI {
                        y - std::f32::consts::TAU
                    } else {
                        y
                    }
                },
                ..LapSample::default()
            });
        }
        let f = frames(&session(), &meta(), &c, 61.0, 59.5);
        assert_eq!(f.len(), 3);
        // 240 Hz ticks: tick 2400 is 10 s into the session, dated from its start.
        assert_eq!(f[0].session_time, 10.0);
        assert_eq!(f[0].timestamp.as_deref(), Some("2025-11-24T16:00:10Z"));
        assert_eq!(f[0].lap_distance_pct, 0.25);
        assert_eq!((f[0].last_lap_time, f[0].best_lap_time), (61.0, 59.5));
        // Pedals clamped to 0..1, NaN channels sent as 0, steering right is negative.
        assert_eq!(
            (f[0].throttle, f[0].brake, f[0].gear, f[0].rpm),
            (1.0, 0.0, 0, 0.0)
        );
        assert!((f[0].steering_angle + STEERING_LOCK_RAD as f32 / 2.0).abs() < 1e-6);
        // Yaw rate across the ±π seam: 0.05 rad per 0.1 s, unwrapped.
        assert!((f[1].yaw_rate - 0.5).abs() < 1e-3, "{}", f[1].yaw_rate);
        assert_eq!(f[0].lap_number, 3);
    }
}
