//! Physics: the seed's kinematic bicycle model with a lateral grip cap, integrated once per
//! 240 Hz tick for every active simulated car. Runs after AI (which sets [`Controls`]) and
//! before collision.
//!
//! Two defects of the seed's formula are fixed here: its yaw rate used `signum(0.0) = 1.0`, so a
//! car with centred steering still turned left, and it turned left for positive (right)
//! steering. Here yaw rate = `-speed * tan(steering angle) / wheelbase`, which is exact for the
//! kinematic bicycle and zero for centred steering.

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::{Active, CarSpec, Controls, GRAVITY_MPS2, InSession, Motion, Pose, Simulated};
use crate::sim::{SimSystems, TICK_DT_S};

/// What a physics step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The state advanced normally.
    Advanced,
    /// The step produced a non-finite value; non-finite pose fields were zeroed and the car
    /// stopped.
    Recovered,
}

/// Advances one car by `dt_s` seconds: longitudinal forces, kinematic bicycle steering, the
/// lateral grip cap, then semi-implicit integration of heading and position.
///
/// Guarantees, whatever the inputs: every output is finite, speed is `>= 0`, the displacement is
/// at most `speed_after * dt_s`, and speed does not grow when throttle is zero.
pub fn step_car(
    spec: &CarSpec,
    pose: &mut Pose,
    motion: &mut Motion,
    controls: &Controls,
    dt_s: f32,
) -> StepOutcome {
    let c = Controls::sanitized(controls.throttle, controls.brake, controls.steering);
    let v0 = if motion.speed_mps.is_finite() {
        motion.speed_mps.max(0.0)
    } else {
        0.0
    };

    // 1. Longitudinal forces: the car's force model.
    let accel = spec.net_force_n(v0, c.throttle, c.brake) / spec.mass_kg;
    // 2. Speed: braking and resistance stop the car, never reverse it.
    let v1 = (v0 + accel * dt_s).max(0.0);

    // 3. Kinematic bicycle: positive steering (right) turns clockwise.
    let delta = c.steering * spec.max_steering_angle_rad;
    let mut yaw_rate = -v1 * delta.tan() / spec.wheelbase_m;
    // 4. Grip: cap lateral acceleration (the car runs wide instead of turning tighter).
    let lat_limit = spec.grip_coefficient * GRAVITY_MPS2;
    let lat = v1 * yaw_rate.abs();
    if lat > lat_limit {
        yaw_rate *= lat_limit / lat;
    }

    // 5. Integrate heading, then position along the new heading.
    let yaw = wrap_angle(pose.yaw_rad + yaw_rate * dt_s);
    let (sin, cos) = yaw.sin_cos();
    let x = pose.x_m + v1 * cos * dt_s;
    let y = pose.y_m + v1 * sin * dt_s;

    if !(x.is_finite() && y.is_finite() && yaw.is_finite() && v1.is_finite()) {
        // Only a corrupt pose gets here (the forces above are finite for any finite state):
        // stop the car and keep whatever part of the pose is still a number.
        let keep = |v: f32| if v.is_finite() { v } else { 0.0 };
        *pose = Pose {
            x_m: keep(pose.x_m),
            y_m: keep(pose.y_m),
            yaw_rad: keep(pose.yaw_rad),
        };
        *motion = Motion::default();
        return StepOutcome::Recovered;
    }
    *pose = Pose {
        x_m: x,
        y_m: y,
        yaw_rad: yaw,
    };
    *motion = Motion {
        speed_mps: v1,
        yaw_rate_rad_s: yaw_rate,
        long_accel_mps2: (v1 - v0) / dt_s,
        lat_accel_mps2: v1 * yaw_rate,
    };
    StepOutcome::Advanced
}

/// Wraps an angle into `(-π, π]`.
#[inline]
pub fn wrap_angle(a: f32) -> f32 {
    use std::f32::consts::{PI, TAU};
    if a > PI {
        a - TAU
    } else if a <= -PI {
        a + TAU
    } else {
        a
    }
}

/// A car's state was not finite when physics came to it (a fault: the car was stopped where
/// its pose was still a number, so nothing else sees the bad values). Whoever runs the session
/// decides what a fault means; the server ends the session.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFiniteState {
    /// The car's session.
    pub session: Entity,
    /// The car.
    pub car: Entity,
}

/// Integrates every active simulated car by one tick.
pub fn integrate_cars(
    mut cars: Query<
        (
            Entity,
            &InSession,
            &CarSpec,
            &mut Pose,
            &mut Motion,
            &Controls,
        ),
        (With<Simulated>, With<Active>),
    >,
    mut faults: MessageWriter<NonFiniteState>,
) {
    for (car, session, spec, mut pose, mut motion, controls) in &mut cars {
        if step_car(spec, &mut pose, &mut motion, controls, TICK_DT_S) == StepOutcome::Recovered {
            tracing::warn!(?car, "physics stopped a car whose state was not finite");
            faults.write(NonFiniteState {
                session: session.0,
                car,
            });
        }
    }
}

/// The physics systems.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhysicsSystems {
    /// Integrates the active simulated cars.
    Integrate,
}

/// Registers the physics system in [`SimSystems::Physics`].
pub struct PhysicsPlugin;

impl Plugin for PhysicsPlugin {
    fn build(&self, app: &mut App) {
        app.add_message::<NonFiniteState>()
            .configure_sets(
                FixedUpdate,
                PhysicsSystems::Integrate.in_set(SimSystems::Physics),
            )
            .add_systems(
                FixedUpdate,
                integrate_cars.in_set(PhysicsSystems::Integrate),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testing::gt3;

    fn run(controls: Controls, speed: f32, ticks: usize) -> (Pose, Motion) {
        let mut pose = Pose::default();
        let mut motion = Motion {
            speed_mps: speed,
            ..Motion::default()
        };
        for _ in 0..ticks {
            step_car(&gt3(), &mut pose, &mut motion, &controls, TICK_DT_S);
        }
        (pose, motion)
    }

    #[test]
    fn full_throttle_from_rest_matches_newton() {
        let c = Controls {
            throttle: 1.0,
            ..Controls::default()
        };
        let (pose, motion) = run(c, 0.0, 1);
        // First tick from rest: no drag or rolling resistance yet: a = 8000 / 1300.
        let a = 8000.0 / 1300.0;
        assert!((motion.speed_mps - a * TICK_DT_S).abs() < 1e-6);
        assert!((motion.long_accel_mps2 - a).abs() < 1e-3);
        assert!(
            pose.y_m.abs() < 1e-9 && pose.yaw_rad == 0.0,
            "straight line: {pose:?}"
        );
        // One second: about 6 m/s, a little less because of drag and rolling resistance.
        let (_, motion) = run(c, 0.0, 240);
        assert!(motion.speed_mps > 5.9 && motion.speed_mps < a, "{motion:?}");
    }

    #[test]
    fn braking_stops_without_reversing() {
        let c = Controls {
            brake: 1.0,
            ..Controls::default()
        };
        // 30 m/s at ~11.5 m/s² plus drag: stopped within 3 s, never negative.
        let (pose, motion) = run(c, 30.0, 720);
        assert_eq!(motion.speed_mps, 0.0);
        assert!(
            pose.x_m > 30.0 && pose.x_m < 30.0 * 30.0 / (2.0 * 11.0),
            "{pose:?}"
        );
    }

    #[test]
    fn right_steering_turns_clockwise_and_centred_goes_straight() {
        let right = Controls {
            steering: 0.2,
            throttle: 0.3,
            ..Controls::default()
        };
        let (pose, motion) = run(right, 10.0, 60);
        assert!(motion.yaw_rate_rad_s < 0.0 && pose.yaw_rad < 0.0 && pose.y_m < 0.0);
        let (pose, _) = run(Controls::default(), 10.0, 240);
        assert_eq!(pose.yaw_rad, 0.0);
        assert_eq!(pose.y_m, 0.0);
    }

    #[test]
    fn turn_radius_matches_bicycle_and_grip_caps_lateral_accel() {
        // Slow: kinematic radius = wheelbase / tan(delta).
        let delta: f32 = 0.25;
        let c = Controls {
            steering: delta / 0.5,
            ..Controls::default()
        };
        let mut pose = Pose::default();
        let mut motion = Motion {
            speed_mps: 5.0,
            ..Motion::default()
        };
        step_car(&gt3(), &mut pose, &mut motion, &c, TICK_DT_S);
        let r = motion.speed_mps / motion.yaw_rate_rad_s.abs();
        assert!((r - 2.7 / delta.tan()).abs() < 0.01, "radius {r}");
        // Fast: the grip cap holds lateral acceleration at 1 g.
        let mut motion = Motion {
            speed_mps: 40.0,
            ..Motion::default()
        };
        step_car(&gt3(), &mut pose, &mut motion, &c, TICK_DT_S);
        assert!(
            (motion.lat_accel_mps2.abs() - 9.81).abs() < 1e-3,
            "{motion:?}"
        );
    }

    #[test]
    fn non_finite_state_is_recovered() {
        let mut pose = Pose {
            x_m: 10.0,
            y_m: f32::INFINITY,
            yaw_rad: f32::NAN,
        };
        let mut motion = Motion {
            speed_mps: f32::MAX,
            ..Motion::default()
        };
        let c = Controls {
            throttle: 1.0,
            ..Controls::default()
        };
        assert_eq!(
            step_car(&gt3(), &mut pose, &mut motion, &c, TICK_DT_S),
            StepOutcome::Recovered
        );
        assert_eq!(motion, Motion::default());
        assert_eq!(
            pose,
            Pose {
                x_m: 10.0,
                y_m: 0.0,
                yaw_rad: 0.0
            }
        );
        // An absurd but finite speed is braked by drag, not turned into infinity.
        let mut pose = Pose::default();
        let mut motion = Motion {
            speed_mps: f32::MAX,
            ..Motion::default()
        };
        step_car(&gt3(), &mut pose, &mut motion, &c, TICK_DT_S);
        assert!(motion.speed_mps.is_finite() && pose.x_m.is_finite());
    }

    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -2.0f32..2.0,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => any::<f32>(),
        ]
    }

    proptest! {
        #[test]
        fn step_invariants(
            x in -5000.0f32..5000.0,
            y in -5000.0f32..5000.0,
            yaw in -std::f32::consts::PI..std::f32::consts::PI,
            speed in 0.0f32..120.0,
            throttle in any_f32(),
            brake in any_f32(),
            steering in any_f32(),
            ticks in 1usize..50,
        ) {
            let spec = gt3();
            let mut pose = Pose { x_m: x, y_m: y, yaw_rad: yaw };
            let mut motion = Motion { speed_mps: speed, ..Motion::default() };
            let controls = Controls { throttle, brake, steering };
            let no_throttle = throttle.is_nan() || throttle <= 0.0;
            for _ in 0..ticks {
                let before_pose = pose;
                let before_speed = motion.speed_mps;
                step_car(&spec, &mut pose, &mut motion, &controls, TICK_DT_S);
                prop_assert!(pose.x_m.is_finite() && pose.y_m.is_finite() && pose.yaw_rad.is_finite());
                prop_assert!(motion.speed_mps.is_finite() && motion.yaw_rate_rad_s.is_finite());
                prop_assert!(motion.long_accel_mps2.is_finite() && motion.lat_accel_mps2.is_finite());
                prop_assert!(motion.speed_mps >= 0.0);
                let moved = (pose.x_m - before_pose.x_m).hypot(pose.y_m - before_pose.y_m);
                // f32 positions of up to 5 km carry about 0.5 mm of rounding.
                prop_assert!(moved <= motion.speed_mps * TICK_DT_S + 1e-3,
                    "moved {moved} at {} m/s", motion.speed_mps);
                if no_throttle {
                    prop_assert!(motion.speed_mps <= before_speed, "gained speed without throttle");
                }
            }
        }
    }
}
