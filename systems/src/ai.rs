//! AI drivers: for every active AI car, a look-ahead target on the centerline (farther at
//! speed), steering proportional to the bicycle angle that reaches it, and throttle or brake
//! from the gap between the car's speed and a target speed. The target speed comes from a
//! per-track, per-car speed profile (curvature-limited corner speeds, with braking distance
//! worked backwards from each corner) and drops behind a slower car ahead in the same lane.
//! Runs first in the tick, before physics.

use std::sync::Arc;

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::{Active, CarSpec, Controls, InSession, Motion, Pose};
use crate::sim::SimSystems;
use crate::timing::TrackProgress;
use crate::track::{TrackGeometry, TrackId, Tracks};

/// Spacing of speed profile samples in metres.
pub const PROFILE_STEP_M: f32 = 2.0;

/// Largest speed a car can hold at every point of a track, sampled every [`PROFILE_STEP_M`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedProfile {
    speeds_mps: Vec<f32>,
    step_m: f32,
    length_m: f32,
}

impl SpeedProfile {
    /// Builds the profile of `spec` on `track`: corner speed `sqrt(grip_share * a_lat / |k|)`
    /// capped at top speed, then lowered where the car could not brake down to the next corner
    /// using `brake_share` of its brakes.
    pub fn new(track: &TrackGeometry, spec: &CarSpec, grip_share: f32, brake_share: f32) -> Self {
        let length_m = track.length_m();
        let n = ((length_m / PROFILE_STEP_M).ceil() as usize).max(2);
        let step_m = length_m / n as f32;
        let top = spec.top_speed_mps();
        let a_lat = spec.lateral_limit_mps2() * grip_share;
        let mut speeds: Vec<f32> = (0..n)
            .map(|i| {
                let k = track.curvature_at(i as f32 * step_m).abs();
                if k > 1e-6 {
                    (a_lat / k).sqrt().min(top)
                } else {
                    top
                }
            })
            .collect();
        let decel = spec.brake_decel_mps2() * brake_share;
        // Walk backwards twice round the loop so braking for a corner just past the line
        // reaches the end of the previous lap.
        for pass in 0..2 * n {
            let i = n - 1 - pass % n;
            let next = speeds[(i + 1) % n];
            let reachable = (next * next + 2.0 * decel * step_m).sqrt();
            if reachable < speeds[i] {
                speeds[i] = reachable;
            }
        }
        Self {
            speeds_mps: speeds,
            step_m,
            length_m,
        }
    }

    /// Target speed at distance `d` (wrapped), interpolated, in m/s.
    pub fn speed_at(&self, d: f32) -> f32 {
        let x = d.rem_euclid(self.length_m) / self.step_m;
        let i = (x as usize).min(self.speeds_mps.len() - 1);
        let j = (i + 1) % self.speeds_mps.len();
        let t = x - i as f32;
        self.speeds_mps[i] + (self.speeds_mps[j] - self.speeds_mps[i]) * t
    }

    /// The samples in m/s.
    pub fn speeds_mps(&self) -> &[f32] {
        &self.speeds_mps
    }
}

/// Lap time in seconds of an ideal driver following the centerline of `track` in `spec`: full
/// grip in every corner, full throttle out of them, latest braking into them (a quasi-steady-
/// state lap simulation over the car's own force model). A car on the centerline cannot beat
/// it; a car that cuts corners within the track width can, by a few per cent.
pub fn ideal_lap_time_s(track: &TrackGeometry, spec: &CarSpec) -> f32 {
    let limit = SpeedProfile::new(track, spec, 1.0, 1.0);
    let n = limit.speeds_mps.len();
    let ds = limit.step_m;
    let mut v = limit.speeds_mps.clone();
    // Forward pass for traction, twice round so the lap closes on itself.
    for pass in 1..2 * n {
        let i = pass % n;
        let prev = v[(i + n - 1) % n];
        let a = spec.net_force_n(prev, 1.0, 0.0) / spec.mass_kg;
        let reachable = (prev * prev + 2.0 * a.max(0.0) * ds).sqrt();
        v[i] = limit.speeds_mps[i].min(reachable);
    }
    (0..n)
        .map(|i| {
            let mean = 0.5 * (v[i] + v[(i + 1) % n]);
            ds / mean.max(0.1)
        })
        .sum()
}

/// An AI driver's parameters and the profile it drives to.
#[derive(Component, Debug, Clone)]
pub struct AiDriver {
    /// Speed targets for this car on this track.
    pub profile: Arc<SpeedProfile>,
    /// Multiplier on the profile's speeds (skill; 1.0 drives at the profile).
    pub pace: f32,
    /// Look-ahead time in seconds: the steering target is `speed * look_ahead_s` ahead.
    pub look_ahead_s: f32,
    /// Shortest look-ahead distance in metres.
    pub min_look_ahead_m: f32,
    /// Speed error (m/s) that gives full throttle or full brake.
    pub speed_band_mps: f32,
}

impl AiDriver {
    /// A driver with default gains at the given pace.
    pub fn new(profile: Arc<SpeedProfile>, pace: f32) -> Self {
        Self {
            profile,
            pace,
            look_ahead_s: 0.45,
            min_look_ahead_m: 7.0,
            speed_band_mps: 2.0,
        }
    }
}

/// The car ahead of an AI car in its session, as the AI sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CarAhead {
    /// Distance along the track to the other car, in metres (> 0).
    pub gap_m: f32,
    /// Its speed in m/s.
    pub speed_mps: f32,
    /// Its lateral offset minus ours, in metres.
    pub lateral_offset_m: f32,
}

/// Gap (metres, nose to tail along the track) an AI keeps to a slower car in its lane.
pub const FOLLOW_GAP_M: f32 = 8.0;

/// Computes an AI car's controls. Pure: the system gathers the inputs and loops over this.
pub fn drive(
    ai: &AiDriver,
    spec: &CarSpec,
    track: &TrackGeometry,
    pose: &Pose,
    motion: &Motion,
    progress: &TrackProgress,
    ahead: Option<CarAhead>,
) -> Controls {
    let v = motion.speed_mps;
    // Steering: pure pursuit of a point on the centerline ahead.
    let look = (v * ai.look_ahead_s).max(ai.min_look_ahead_m);
    let (target, _) = track.point_at(progress.distance_m + look);
    let (sin, cos) = pose.yaw_rad.sin_cos();
    let dx = target[0] - pose.x_m;
    let dy = target[1] - pose.y_m;
    let forward = dx * cos + dy * sin;
    let left = -dx * sin + dy * cos;
    let dist2 = (dx * dx + dy * dy).max(1.0);
    // Bicycle angle whose arc passes through the target: tan(d) = 2 L left / dist².
    let delta = (2.0 * spec.wheelbase_m * left / dist2).atan();
    let mut steering = -delta / spec.max_steering_angle_rad;
    if forward < 0.0 {
        // The target is behind (spun round): full lock towards it.
        steering = if left > 0.0 { -1.0 } else { 1.0 };
    }

    // Speed: the lowest profile speed over the next tick's travel and a short horizon.
    let mut target_v = ai.profile.speed_at(progress.distance_m + v * 0.1) * ai.pace;
    if let Some(car) = ahead {
        let overlap = car.lateral_offset_m.abs() < spec.width_m + 0.5;
        if overlap && car.speed_mps < v {
            // Close the gap at a rate that stops at the follow distance.
            let room = (car.gap_m - spec.length_m - FOLLOW_GAP_M).max(0.0);
            let closing = (2.0 * spec.brake_decel_mps2() * 0.5 * room).sqrt();
            target_v = target_v.min(car.speed_mps + closing);
        }
    }
    let err = target_v - v;
    let (throttle, brake) = if err >= 0.0 {
        ((err / ai.speed_band_mps).clamp(0.0, 1.0).max(0.3), 0.0)
    } else {
        (0.0, (-err / ai.speed_band_mps).clamp(0.0, 1.0))
    };
    Controls::sanitized(throttle, brake, steering)
}

/// Per-car working data of one AI pass.
#[derive(Debug, Clone, Copy)]
struct Seen {
    session: u64,
    distance_m: f32,
    length_m: f32,
    lateral_m: f32,
    speed_mps: f32,
}

/// Reusable buffers of the AI system.
#[derive(Default)]
pub struct AiScratch {
    seen: Vec<Seen>,
    order: Vec<u32>,
    runs: Vec<(u64, std::ops::Range<usize>)>,
    ahead: Vec<Option<CarAhead>>,
}

/// Sets the controls of every active AI car.
pub fn drive_ai_cars(
    mut scratch: Local<AiScratch>,
    tracks: Res<Tracks>,
    mut cars: Query<
        (
            &InSession,
            &TrackId,
            &TrackProgress,
            &Motion,
            &Pose,
            &CarSpec,
            Option<(&AiDriver, &mut Controls)>,
        ),
        With<Active>,
    >,
) {
    let AiScratch {
        seen,
        order,
        runs,
        ahead,
    } = &mut *scratch;
    seen.clear();
    for (session, track_id, progress, motion, ..) in &cars {
        let length_m = tracks.get(*track_id).map_or(1.0, TrackGeometry::length_m);
        seen.push(Seen {
            session: session.0.to_bits(),
            distance_m: progress.distance_m,
            length_m,
            lateral_m: progress.lateral_m,
            speed_mps: motion.speed_mps,
        });
    }
    order.clear();
    order.extend(0..seen.len() as u32);
    // Group by session, then order each session's few cars by distance.
    crate::sim::group_by_session(order, |i| seen[i as usize].session, runs);
    for (_, run) in runs.iter() {
        order[run.clone()].sort_unstable_by(|&a, &b| {
            seen[a as usize]
                .distance_m
                .total_cmp(&seen[b as usize].distance_m)
        });
    }
    // The car ahead of each car is the next one in its session's run, wrapping round the lap.
    ahead.clear();
    ahead.resize(seen.len(), None);
    for (_, run) in runs.iter() {
        let (start, end) = (run.start, run.end);
        if end - start < 2 {
            continue;
        }
        for k in start..end {
            let me = seen[order[k] as usize];
            let next = if k + 1 < end { k + 1 } else { start };
            let other = seen[order[next] as usize];
            let gap = (other.distance_m - me.distance_m).rem_euclid(me.length_m);
            ahead[order[k] as usize] = Some(CarAhead {
                gap_m: gap,
                speed_mps: other.speed_mps,
                lateral_offset_m: other.lateral_m - me.lateral_m,
            });
        }
    }

    // Same query, same order as the gathering pass.
    for ((_, track_id, progress, motion, pose, spec, driver), car_ahead) in
        cars.iter_mut().zip(ahead.iter())
    {
        let (Some((ai, mut controls)), Some(track)) = (driver, tracks.get(*track_id)) else {
            continue;
        };
        *controls = drive(ai, spec, track, pose, motion, progress, *car_ahead);
    }
}

/// The ai systems.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AiSystems {
    /// Sets AI controls.
    Drive,
}

/// Registers the AI system in [`SimSystems::Ai`].
pub struct AiPlugin;

impl Plugin for AiPlugin {
    fn build(&self, app: &mut App) {
        app.configure_sets(FixedUpdate, AiSystems::Drive.in_set(SimSystems::Ai))
            .add_systems(FixedUpdate, drive_ai_cars.in_set(AiSystems::Drive));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{circle_track, gt3};

    #[test]
    fn profile_on_a_circle_is_the_grip_limit() {
        let t = circle_track(100.0, 400, 12.0);
        let p = SpeedProfile::new(&t, &gt3(), 1.0, 1.0);
        let expect = (9.81f32 * 100.0).sqrt();
        for v in p.speeds_mps() {
            assert!((v - expect).abs() < 0.2, "{v} vs {expect}");
        }
        let lap = ideal_lap_time_s(&t, &gt3());
        let expect_lap = t.length_m() / expect;
        assert!(
            (lap - expect_lap).abs() / expect_lap < 0.01,
            "{lap} vs {expect_lap}"
        );
    }

    #[test]
    fn profile_brakes_before_a_corner() {
        let t = crate::testing::rectangle_track(400.0, 100.0, 2.0, 12.0);
        let p = SpeedProfile::new(&t, &gt3(), 1.0, 1.0);
        // The rectangle's corners are sharp: speed is low there and rises with distance before.
        let at_corner = p.speed_at(400.0);
        let before = p.speed_at(300.0);
        let mid = p.speed_at(200.0);
        assert!(at_corner < 15.0, "{at_corner}");
        assert!(
            before > at_corner && mid > before,
            "{mid} {before} {at_corner}"
        );
        // 100 m of braking at 15000/1300 m/s² from the corner speed.
        let reach = (at_corner * at_corner + 2.0 * 15000.0 / 1300.0 * 100.0).sqrt();
        assert!((before - reach).abs() < 2.0, "{before} vs {reach}");
    }

    #[test]
    fn steers_towards_the_centerline_and_brakes_for_a_slow_car() {
        let t = circle_track(100.0, 400, 12.0);
        let ai = AiDriver::new(Arc::new(SpeedProfile::new(&t, &gt3(), 0.9, 0.9)), 1.0);
        // On the start line, heading +X: the circle turns left, so steer left (negative).
        let pose = Pose::default();
        let motion = Motion {
            speed_mps: 20.0,
            ..Motion::default()
        };
        let progress = TrackProgress::place(&t, 0.0, 0.0);
        let c = drive(&ai, &gt3(), &t, &pose, &motion, &progress, None);
        assert!(c.steering < 0.0, "{c:?}");
        assert!(
            c.throttle > 0.0 && c.brake == 0.0,
            "below the corner speed: {c:?}"
        );
        // A car 10 m ahead at 5 m/s in the same lane: brake.
        let slow = CarAhead {
            gap_m: 10.0,
            speed_mps: 5.0,
            lateral_offset_m: 0.3,
        };
        let c = drive(&ai, &gt3(), &t, &pose, &motion, &progress, Some(slow));
        assert!(c.brake > 0.0 && c.throttle == 0.0, "{c:?}");
        // The same car in the other lane: no reason to brake.
        let beside = CarAhead {
            lateral_offset_m: 4.0,
            ..slow
        };
        let c = drive(&ai, &gt3(), &t, &pose, &motion, &progress, Some(beside));
        assert_eq!(c.brake, 0.0, "{c:?}");
    }
}
