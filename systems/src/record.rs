//! Record: appends every active car's state to its lap buffer each tick, as plain `Vec`
//! columns ready to become Arrow arrays, and hands each finished lap to [`RecordedLaps`] for the
//! archive to take. Runs after the race rules, last before snapshot.
//!
//! A lap's rows run from the tick after one line crossing to the tick of the next, so the row
//! at which the timing system saw the crossing opens the new lap. The run from the grid to the
//! line is lap 0 and is handed over as incomplete, as are laps cut short by the end of a race.

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::{Active, Controls, InSession, Motion, Pose, SessionCars};
use crate::race::RaceFinished;
use crate::timing::{LapTiming, TrackProgress, ticks_to_seconds};
use crate::{SimSystems, SimTick};

/// One lap of one car, column by column (all columns have the same length).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LapColumns {
    /// Simulation tick of the row.
    pub tick: Vec<u64>,
    /// Time since the lap started in seconds.
    pub lap_time_s: Vec<f32>,
    /// Distance along the centerline in metres.
    pub distance_m: Vec<f32>,
    /// Signed distance from the centerline in metres (positive left).
    pub lateral_m: Vec<f32>,
    /// Speed in m/s.
    pub speed_mps: Vec<f32>,
    /// Throttle 0..=1.
    pub throttle: Vec<f32>,
    /// Brake 0..=1.
    pub brake: Vec<f32>,
    /// Steering -1 (left) ..= 1 (right).
    pub steering: Vec<f32>,
    /// World X in metres.
    pub x_m: Vec<f32>,
    /// World Y in metres.
    pub y_m: Vec<f32>,
    /// Heading in radians.
    pub yaw_rad: Vec<f32>,
    /// Longitudinal acceleration in m/s².
    pub long_accel_mps2: Vec<f32>,
    /// Lateral acceleration in m/s².
    pub lat_accel_mps2: Vec<f32>,
}

/// One row of [`LapColumns`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LapSample {
    /// Simulation tick.
    pub tick: u64,
    /// Seconds since the lap started.
    pub lap_time_s: f32,
    /// Distance along the centerline in metres.
    pub distance_m: f32,
    /// Signed lateral offset in metres.
    pub lateral_m: f32,
    /// Speed in m/s.
    pub speed_mps: f32,
    /// Throttle 0..=1.
    pub throttle: f32,
    /// Brake 0..=1.
    pub brake: f32,
    /// Steering -1..=1.
    pub steering: f32,
    /// World X in metres.
    pub x_m: f32,
    /// World Y in metres.
    pub y_m: f32,
    /// Heading in radians.
    pub yaw_rad: f32,
    /// Longitudinal acceleration in m/s².
    pub long_accel_mps2: f32,
    /// Lateral acceleration in m/s².
    pub lat_accel_mps2: f32,
}

impl LapColumns {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.tick.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.tick.is_empty()
    }

    /// Appends one row.
    pub fn push(&mut self, s: &LapSample) {
        self.tick.push(s.tick);
        self.lap_time_s.push(s.lap_time_s);
        self.distance_m.push(s.distance_m);
        self.lateral_m.push(s.lateral_m);
        self.speed_mps.push(s.speed_mps);
        self.throttle.push(s.throttle);
        self.brake.push(s.brake);
        self.steering.push(s.steering);
        self.x_m.push(s.x_m);
        self.y_m.push(s.y_m);
        self.yaw_rad.push(s.yaw_rad);
        self.long_accel_mps2.push(s.long_accel_mps2);
        self.lat_accel_mps2.push(s.lat_accel_mps2);
    }

    /// The row at `i`, if any.
    pub fn row(&self, i: usize) -> Option<LapSample> {
        Some(LapSample {
            tick: *self.tick.get(i)?,
            lap_time_s: self.lap_time_s[i],
            distance_m: self.distance_m[i],
            lateral_m: self.lateral_m[i],
            speed_mps: self.speed_mps[i],
            throttle: self.throttle[i],
            brake: self.brake[i],
            steering: self.steering[i],
            x_m: self.x_m[i],
            y_m: self.y_m[i],
            yaw_rad: self.yaw_rad[i],
            long_accel_mps2: self.long_accel_mps2[i],
            lat_accel_mps2: self.lat_accel_mps2[i],
        })
    }
}

/// The lap being recorded for a car.
#[derive(Component, Debug, Clone, Default)]
pub struct LapRecorder {
    /// Lap number the buffered rows belong to (0 = grid to line).
    pub lap: u16,
    /// The rows of that lap so far.
    pub columns: LapColumns,
}

/// A lap handed over by the record system.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedLap {
    /// The car.
    pub car: Entity,
    /// Its session.
    pub session: Entity,
    /// Lap number (0 = grid to line).
    pub lap: u16,
    /// Whether the lap ran from line to line.
    pub complete: bool,
    /// Whether the lap was valid (complete laps only).
    pub valid: bool,
    /// Official lap time in seconds (complete laps only).
    pub lap_time_s: Option<f64>,
    /// The rows.
    pub columns: LapColumns,
}

/// Laps waiting for the archive, oldest first. The archive drains it.
#[derive(Resource, Debug, Default)]
pub struct RecordedLaps(pub Vec<RecordedLap>);

/// The record systems, in order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordSystems {
    /// Append this tick's rows, closing laps whose line was crossed.
    Append,
    /// Hand over the open laps of sessions that finished.
    Close,
}

/// Appends one row per active car, closing a car's lap first when timing moved it to a new one.
pub fn record_cars(
    tick: Res<SimTick>,
    mut out: ResMut<RecordedLaps>,
    mut cars: Query<
        (
            Entity,
            &InSession,
            &Pose,
            &Motion,
            &Controls,
            &TrackProgress,
            &LapTiming,
            &mut LapRecorder,
        ),
        With<Active>,
    >,
) {
    for (car, session, pose, motion, controls, progress, timing, mut rec) in &mut cars {
        if rec.lap != timing.lap {
            out.0.push(close_lap(car, session.0, &mut rec, timing));
        }
        let lap_time_s = ticks_to_seconds((tick.0 as f64 - timing.lap_start_tick).max(0.0)) as f32;
        rec.columns.push(&LapSample {
            tick: tick.0,
            lap_time_s,
            distance_m: progress.distance_m,
            lateral_m: progress.lateral_m,
            speed_mps: motion.speed_mps,
            throttle: controls.throttle,
            brake: controls.brake,
            steering: controls.steering,
            x_m: pose.x_m,
            y_m: pose.y_m,
            yaw_rad: pose.yaw_rad,
            long_accel_mps2: motion.long_accel_mps2,
            lat_accel_mps2: motion.lat_accel_mps2,
        });
    }
}

/// Takes the buffered rows of `rec` as a finished lap. The lap is complete when timing has
/// moved on to the next lap (the line was crossed), with the time and validity timing gave it.
fn close_lap(
    car: Entity,
    session: Entity,
    rec: &mut LapRecorder,
    timing: &LapTiming,
) -> RecordedLap {
    let complete = rec.lap >= 1 && timing.lap == rec.lap + 1;
    let lap = RecordedLap {
        car,
        session,
        lap: rec.lap,
        complete,
        valid: complete && timing.last_lap_valid,
        lap_time_s: complete
            .then_some(timing.last_lap_ticks)
            .flatten()
            .map(ticks_to_seconds),
        columns: std::mem::take(&mut rec.columns),
    };
    rec.lap = timing.lap;
    lap
}

/// Hands over the open laps of every car of a session whose race ended: complete if the car
/// crossed the line in the tick the race ended, incomplete otherwise.
pub fn close_finished_sessions(
    mut ended: MessageReader<RaceFinished>,
    sessions: Query<&SessionCars>,
    mut recorders: Query<(&mut LapRecorder, &LapTiming)>,
    mut out: ResMut<RecordedLaps>,
) {
    for finished in ended.read() {
        let Ok(cars) = sessions.get(finished.session) else {
            continue;
        };
        for &car in cars.cars() {
            if let Ok((mut rec, timing)) = recorders.get_mut(car)
                && !rec.columns.is_empty()
            {
                out.0
                    .push(close_lap(car, finished.session, &mut rec, timing));
            }
        }
    }
}

/// Registers the record systems in [`SimSystems::Record`].
pub struct RecordPlugin;

impl Plugin for RecordPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<RecordedLaps>()
            .configure_sets(
                FixedUpdate,
                (RecordSystems::Append, RecordSystems::Close)
                    .chain()
                    .in_set(SimSystems::Record),
            )
            .add_systems(
                FixedUpdate,
                (
                    record_cars.in_set(RecordSystems::Append),
                    close_finished_sessions.in_set(RecordSystems::Close),
                ),
            );
    }
}
