//! Car components: the static physical specification, the per-tick pose, motion and controls,
//! and the relation of a car to its session. Every family reads these; each family's own
//! state lives in its module.

use bevy_ecs::prelude::*;
use thiserror::Error;

/// Standard gravity in m/s².
pub const GRAVITY_MPS2: f32 = 9.81;

/// Physical specification of a car model (seed 003 section 2, plus an optional power limit).
///
/// Copied onto every car entity so that the physics loop reads it from the same table as the
/// car's state instead of chasing a registry.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct CarSpec {
    /// Total mass in kg.
    pub mass_kg: f32,
    /// Length of the collision box in metres.
    pub length_m: f32,
    /// Width of the collision box in metres.
    pub width_m: f32,
    /// Peak engine force at the wheels in newtons.
    pub max_engine_force_n: f32,
    /// Engine power limit in watts: the drive force is `min(max_engine_force, power / speed)`.
    /// `f32::INFINITY` reproduces the seed's constant-force engine.
    pub max_power_w: f32,
    /// Peak brake force in newtons.
    pub max_brake_force_n: f32,
    /// Aerodynamic drag in N/(m/s)²: drag force = `drag_coefficient * speed²`.
    pub drag_coefficient: f32,
    /// Tyre grip multiplier: lateral acceleration is capped at `grip_coefficient * g`.
    pub grip_coefficient: f32,
    /// Steering angle at full lock in radians.
    pub max_steering_angle_rad: f32,
    /// Distance between the axles in metres.
    pub wheelbase_m: f32,
}

/// A field of a [`CarSpec`] outside its accepted range.
#[derive(Debug, Error, PartialEq)]
#[error("{field} = {value} is outside {min}..={max}")]
pub struct CarSpecError {
    /// Field name as written in `car.toml` (`physics.<field>`).
    pub field: &'static str,
    /// The rejected value.
    pub value: f32,
    /// Smallest accepted value.
    pub min: f32,
    /// Largest accepted value.
    pub max: f32,
}

impl CarSpec {
    /// The seed's GT3 car (seed 003 section 10), with the seed's constant-force engine.
    pub const SEED_GT3: CarSpec = CarSpec {
        mass_kg: 1300.0,
        length_m: 4.5,
        width_m: 2.0,
        max_engine_force_n: 8000.0,
        max_power_w: f32::INFINITY,
        max_brake_force_n: 15000.0,
        drag_coefficient: 0.35,
        grip_coefficient: 1.0,
        max_steering_angle_rad: 0.5,
        wheelbase_m: 2.7,
    };

    /// Accepted range of every field, by name. Ranges are wide enough for anything from a
    /// kart to a prototype and narrow enough to keep the physics stable at 240 Hz.
    pub const RANGES: [(&'static str, f32, f32); 10] = [
        ("mass_kg", 100.0, 5000.0),
        ("length_m", 1.0, 10.0),
        ("width_m", 0.5, 4.0),
        ("max_engine_force_n", 100.0, 100_000.0),
        ("max_power_w", 1_000.0, f32::INFINITY),
        ("max_brake_force_n", 100.0, 200_000.0),
        ("drag_coefficient", 0.0, 5.0),
        ("grip_coefficient", 0.1, 5.0),
        ("max_steering_angle_rad", 0.05, 1.2),
        ("wheelbase_m", 0.5, 6.0),
    ];

    /// The fields in the order of [`CarSpec::RANGES`] (how the network protocol carries a car).
    pub fn to_array(&self) -> [f32; 10] {
        [
            self.mass_kg,
            self.length_m,
            self.width_m,
            self.max_engine_force_n,
            self.max_power_w,
            self.max_brake_force_n,
            self.drag_coefficient,
            self.grip_coefficient,
            self.max_steering_angle_rad,
            self.wheelbase_m,
        ]
    }

    /// A spec from its fields in the order of [`CarSpec::RANGES`].
    pub fn from_array(fields: [f32; 10]) -> Self {
        let [
            mass_kg,
            length_m,
            width_m,
            max_engine_force_n,
            max_power_w,
            max_brake_force_n,
            drag_coefficient,
            grip_coefficient,
            max_steering_angle_rad,
            wheelbase_m,
        ] = fields;
        Self {
            mass_kg,
            length_m,
            width_m,
            max_engine_force_n,
            max_power_w,
            max_brake_force_n,
            drag_coefficient,
            grip_coefficient,
            max_steering_angle_rad,
            wheelbase_m,
        }
    }

    /// Checks every field against [`CarSpec::RANGES`] (NaN is always out of range;
    /// `max_power_w` may be infinite, nothing else may).
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), CarSpecError> {
        for ((field, min, max), value) in Self::RANGES.into_iter().zip(self.to_array()) {
            if !(value >= min && value <= max) {
                return Err(CarSpecError {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    /// Braking deceleration at full brake in m/s², ignoring drag (a safe lower bound).
    pub fn brake_decel_mps2(&self) -> f32 {
        self.max_brake_force_n / self.mass_kg
    }

    /// Lateral acceleration limit in m/s².
    pub fn lateral_limit_mps2(&self) -> f32 {
        self.grip_coefficient * GRAVITY_MPS2
    }

    /// Drive force at `speed_mps` and full throttle in newtons.
    pub fn drive_force_n(&self, speed_mps: f32) -> f32 {
        self.max_engine_force_n
            .min(self.max_power_w / speed_mps.max(1.0))
    }

    /// Net longitudinal force in newtons at `speed_mps` (not negative) with `throttle` and
    /// `brake` (0..=1): the drive force minus the brakes, aerodynamic drag and rolling
    /// resistance, which only oppose motion (none at rest). The one force model: physics
    /// integrates it, the AI and the ideal lap plan with it.
    pub fn net_force_n(&self, speed_mps: f32, throttle: f32, brake: f32) -> f32 {
        let drive = throttle * self.drive_force_n(speed_mps);
        let resist = brake * self.max_brake_force_n
            + self.drag_coefficient * speed_mps * speed_mps
            + if speed_mps > 0.0 {
                ROLLING_RESISTANCE_N
            } else {
                0.0
            };
        drive - resist
    }

    /// Speed at which full-throttle drive force equals drag plus rolling resistance, in m/s.
    pub fn top_speed_mps(&self) -> f32 {
        // Bisection on a monotone function: net force is decreasing in speed.
        let net = |v: f32| self.net_force_n(v, 1.0, 0.0);
        let (mut lo, mut hi) = (0.0f32, 400.0f32);
        if net(hi) > 0.0 {
            return hi;
        }
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if net(mid) > 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Rolling resistance in newtons (seed 003), opposing motion.
pub const ROLLING_RESISTANCE_N: f32 = 100.0;

/// World pose of a car.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Pose {
    /// World X in metres.
    pub x_m: f32,
    /// World Y in metres.
    pub y_m: f32,
    /// Heading in radians, counter-clockwise from +X, kept in `(-π, π]`.
    pub yaw_rad: f32,
}

/// Motion state of a car, written by physics (or by the telemetry feed).
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Motion {
    /// Speed along the heading in m/s, never negative.
    pub speed_mps: f32,
    /// Yaw rate in rad/s, counter-clockwise positive.
    pub yaw_rate_rad_s: f32,
    /// Longitudinal acceleration in m/s² over the last tick (positive = speeding up).
    pub long_accel_mps2: f32,
    /// Lateral acceleration in m/s² (positive = towards the left).
    pub lat_accel_mps2: f32,
}

/// Driver controls in effect for a car, already validated.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Controls {
    /// Throttle, 0..=1.
    pub throttle: f32,
    /// Brake, 0..=1.
    pub brake: f32,
    /// Steering, -1 (full left) ..= 1 (full right).
    pub steering: f32,
}

impl Controls {
    /// Controls from untrusted input: NaN becomes 0, everything is clamped to its range.
    pub fn sanitized(throttle: f32, brake: f32, steering: f32) -> Self {
        let clean = |v: f32, lo: f32, hi: f32| if v.is_nan() { 0.0 } else { v.clamp(lo, hi) };
        Self {
            throttle: clean(throttle, 0.0, 1.0),
            brake: clean(brake, 0.0, 1.0),
            steering: clean(steering, -1.0, 1.0),
        }
    }
}

/// The session a car races in. The session entity holds [`SessionCars`], kept in sync by
/// bevy's relationship hooks. Every car has a pose, a motion and controls; each family's
/// plugin registers what else a car requires, so spawning one sets only its identity and pose.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
#[relationship(relationship_target = SessionCars)]
#[require(Pose, Motion, Controls)]
pub struct InSession(pub Entity);

/// The cars of a session, in the order they joined.
#[derive(Component, Debug, Default)]
#[relationship_target(relationship = InSession, linked_spawn)]
pub struct SessionCars(Vec<Entity>);

impl SessionCars {
    /// The car entities.
    pub fn cars(&self) -> &[Entity] {
        &self.0
    }
}

/// Index of a car within its session (0-based, unique per session; grid order at spawn).
/// Small enough to address a car in a telemetry packet; also the tie-breaker that keeps
/// per-session processing order deterministic.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CarIndex(pub u8);

/// Gear and engine speed, for cars that report them (recorded cars; the physics model has no
/// gearbox). Cars without it record NaN.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Drivetrain {
    /// Gear: -1 reverse, 0 neutral, 1...
    pub gear: i8,
    /// Engine speed in rev/min.
    pub rpm: f32,
}

/// Marker: the car's state comes from the physics model (AI or a human over the network).
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Simulated;

/// Marker: the car's state is played back from a recording (a file or live iRacing
/// telemetry); physics skips it.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct PlaybackDriven;

/// Marker: the car's session is racing, so the car is simulated, timed and recorded.
/// Inserted on all cars of a session at the green light and removed when it finishes.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct Active;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::gt3;

    #[test]
    fn seed_gt3_is_valid_and_out_of_range_fields_are_named() {
        assert_eq!(gt3().validate(), Ok(()));
        let bad = CarSpec {
            mass_kg: f32::NAN,
            ..gt3()
        };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("mass_kg"));
        let bad = CarSpec {
            max_steering_angle_rad: 1.5,
            ..gt3()
        };
        assert_eq!(
            bad.validate().map_err(|e| e.field),
            Err("max_steering_angle_rad")
        );
    }

    #[test]
    fn top_speed_balances_drive_and_drag() {
        let spec = gt3();
        let v = spec.top_speed_mps();
        // 8000 N - 100 N = 0.35 v²  =>  v ≈ 150.2 m/s
        assert!(
            (v - ((8000.0f32 - 100.0) / 0.35).sqrt()).abs() < 0.01,
            "{v}"
        );
        let limited = CarSpec {
            max_power_w: 400_000.0,
            ..spec
        };
        assert!(limited.top_speed_mps() < v);
    }

    #[test]
    fn sanitized_controls_clamp_and_drop_nan() {
        let c = Controls::sanitized(f32::NAN, 2.0, -7.0);
        assert_eq!(
            c,
            Controls {
                throttle: 0.0,
                brake: 1.0,
                steering: -1.0
            }
        );
        assert_eq!(Controls::sanitized(0.5, f32::INFINITY, 0.25).brake, 1.0);
    }
}
