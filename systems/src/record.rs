//! Record: appends every active car's state each tick to one world-wide columnar chunk
//! ([`RecordChunk`]: plain `Vec` columns, one row per car per tick, with the car and lap of
//! each row), and marks where each car's laps end. Runs after the race rules, last before
//! snapshot.
//!
//! The chunk is the unit the archive flushes every 60 ticks; taking it is O(1) (a swap). Laps
//! are assembled from chunks off the tick by [`LapAssembler`], a pure function of the chunks.
//! Appending to one set of columns for all cars keeps the tick's writes sequential: per-car
//! column buffers cost about 13 cache misses per car per tick (a third of a 16,000-car tick).
//!
//! A lap's rows run from the tick after one line crossing to the tick of the next, so the row
//! at which the timing system saw the crossing opens the new lap. The run from the grid to the
//! line is lap 0 and is closed as incomplete, as are laps cut short by the end of a race.

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::Drivetrain;
use crate::car::{Active, Controls, InSession, Motion, Pose, SessionCars};
use crate::sim::{RaceFinished, RecordedClock, SimSystems, SimTick};
use crate::timing::{LapTiming, TrackProgress, ticks_to_seconds};

/// Declares the lap row once: [`LapColumns`] (one `Vec` per field), [`LapSample`] (one row),
/// and [`LapColumns::FIELDS`] (name, unit and description of every `f32` column, in order),
/// from which the archive derives its Arrow schema, its write-ahead schema and its readers.
macro_rules! lap_row {
    (
        $(#[doc = $tick_doc:literal])*
        tick: u64,
        $(
            $(#[doc = $doc:literal])*
            $name:ident: f32 [$unit:literal],
        )*
    ) => {
        /// One lap of one car, column by column (all columns have the same length). Equality
        /// is bit for bit, so columns holding NaN ("not measured") compare equal to their
        /// copies.
        #[derive(Debug, Clone, Default)]
        pub struct LapColumns {
            $(#[doc = $tick_doc])*
            pub tick: Vec<u64>,
            $(
                $(#[doc = $doc])*
                pub $name: Vec<f32>,
            )*
        }

        /// One row of [`LapColumns`].
        #[derive(Debug, Clone, Copy, PartialEq, Default)]
        pub struct LapSample {
            $(#[doc = $tick_doc])*
            pub tick: u64,
            $(
                $(#[doc = $doc])*
                pub $name: f32,
            )*
        }

        impl LapColumns {
            /// The `f32` columns: name, unit and description, in the order of
            /// [`LapColumns::f32_columns`].
            pub const FIELDS: [LapField; lap_row!(@count $($name)*)] = [
                $(LapField {
                    name: stringify!($name),
                    unit: $unit,
                    doc: concat!($($doc),*),
                },)*
            ];

            /// Names of the `f32` columns, in the order of [`LapColumns::f32_columns`].
            pub const F32_NAMES: [&'static str; lap_row!(@count $($name)*)] =
                [$(stringify!($name)),*];

            /// The `f32` columns, in the order of [`LapColumns::F32_NAMES`].
            pub fn f32_columns(&self) -> [&Vec<f32>; lap_row!(@count $($name)*)] {
                [$(&self.$name),*]
            }

            /// The `f32` columns, mutably, in the order of [`LapColumns::F32_NAMES`].
            pub fn f32_columns_mut(&mut self) -> [&mut Vec<f32>; lap_row!(@count $($name)*)] {
                [$(&mut self.$name),*]
            }

            /// The columns, moved: the ticks and the `f32` columns in the order of
            /// [`LapColumns::F32_NAMES`].
            pub fn into_columns(self) -> (Vec<u64>, [Vec<f32>; lap_row!(@count $($name)*)]) {
                (self.tick, [$(self.$name),*])
            }

            /// Empty columns with the same capacity as these.
            pub fn empty_like(&self) -> Self {
                let cap = self.tick.capacity();
                Self {
                    tick: Vec::with_capacity(cap),
                    $($name: Vec::with_capacity(cap),)*
                }
            }

            /// Appends one row.
            #[inline]
            pub fn push(&mut self, s: &LapSample) {
                self.tick.push(s.tick);
                $(self.$name.push(s.$name);)*
            }

            /// Appends the rows of `src` at `rows` (indices in order), column by column. Indices
            /// past the end of `src` are skipped.
            pub fn extend_from(&mut self, src: &Self, rows: &[u32]) {
                let n = src.tick.len();
                let rows = &rows[..rows.partition_point(|&i| (i as usize) < n)];
                self.tick.extend(rows.iter().map(|&i| src.tick[i as usize]));
                $(self.$name.extend(rows.iter().map(|&i| src.$name[i as usize]));)*
            }

            /// The row at `i`, if any.
            pub fn row(&self, i: usize) -> Option<LapSample> {
                Some(LapSample {
                    tick: *self.tick.get(i)?,
                    $($name: *self.$name.get(i)?,)*
                })
            }
        }
    };
    (@count) => { 0 };
    (@count $head:ident $($tail:ident)*) => { 1 + lap_row!(@count $($tail)*) };
}

/// Name, unit and description of one `f32` column of the lap row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LapField {
    /// Column name.
    pub name: &'static str,
    /// Unit (`1` for a ratio or a count).
    pub unit: &'static str,
    /// What it is.
    pub doc: &'static str,
}

lap_row! {
    /// Simulation tick of the row (1/240 s), or for a recorded car the recording's record
    /// number.
    tick: u64,
    /// Time since the lap started in seconds.
    lap_time_s: f32 ["s"],
    /// Distance along the centerline in metres.
    distance_m: f32 ["m"],
    /// Signed distance from the centerline in metres (positive left).
    lateral_m: f32 ["m"],
    /// Speed in m/s.
    speed_mps: f32 ["m/s"],
    /// Throttle 0..=1.
    throttle: f32 ["1"],
    /// Brake 0..=1.
    brake: f32 ["1"],
    /// Steering -1 (left) ..= 1 (right).
    steering: f32 ["1"],
    /// Gear (-1 reverse, 0 neutral, 1...); NaN when the car has no gearbox model.
    gear: f32 ["1"],
    /// Engine speed in rev/min; NaN when the car has no engine model.
    rpm: f32 ["1/min"],
    /// World X in metres.
    x_m: f32 ["m"],
    /// World Y in metres.
    y_m: f32 ["m"],
    /// Heading in radians, counter-clockwise from +X.
    yaw_rad: f32 ["rad"],
    /// Longitudinal acceleration in m/s².
    long_accel_mps2: f32 ["m/s^2"],
    /// Lateral acceleration in m/s² (positive left).
    lat_accel_mps2: f32 ["m/s^2"],
}

impl PartialEq for LapColumns {
    fn eq(&self, other: &Self) -> bool {
        self.tick == other.tick
            && self
                .f32_columns()
                .iter()
                .zip(other.f32_columns())
                .all(|(a, b)| {
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                })
    }
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

    /// Removes every row, keeping the capacity.
    pub fn clear(&mut self) {
        self.tick.clear();
        for col in self.f32_columns_mut() {
            col.clear();
        }
    }
}

/// The lap a car's rows currently belong to.
#[derive(Component, Debug, Clone, Copy, Default)]
pub struct LapRecorder {
    /// Lap number of the rows being appended (0 = grid to line).
    pub lap: u16,
}

/// The end of one car's lap, as the record system saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LapClosed {
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
}

/// Rows appended since the chunk was last taken: every active car, every tick, in tick order
/// and, within a tick, in query order. Laps closed in the same period are listed in order.
///
/// Whoever runs the simulation takes the chunk regularly (the archive every 60 ticks, the
/// offline race runner likewise); nothing else bounds its size.
#[derive(Resource, Debug, Clone, PartialEq, Default)]
pub struct RecordChunk {
    /// Car of each row.
    pub car: Vec<Entity>,
    /// Lap of each row.
    pub lap: Vec<u16>,
    /// The state columns.
    pub columns: LapColumns,
    /// Laps that ended, in the order they ended.
    pub closed: Vec<LapClosed>,
}

impl RecordChunk {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.car.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.car.is_empty()
    }

    /// Takes the chunk, leaving an empty one with the same capacity (so the tick that follows
    /// does not reallocate).
    pub fn take(&mut self) -> RecordChunk {
        let mut empty = RecordChunk {
            car: Vec::with_capacity(self.car.capacity()),
            lap: Vec::with_capacity(self.lap.capacity()),
            columns: self.columns.empty_like(),
            closed: Vec::new(),
        };
        std::mem::swap(self, &mut empty);
        empty
    }

    /// Empties the chunk, keeping its capacity.
    pub fn clear(&mut self) {
        self.car.clear();
        self.lap.clear();
        self.columns.clear();
        self.closed.clear();
    }
}

/// A car's lap, assembled from chunks.
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

/// Splits chunks into laps: rows are gathered per (car, lap) and a lap is handed out when its
/// end is marked. Pure and deterministic; runs wherever the chunks are consumed, never in the
/// tick.
#[derive(Debug, Default)]
pub struct LapAssembler {
    open: std::collections::BTreeMap<(Entity, u16), LapColumns>,
}

impl LapAssembler {
    /// Adds a chunk's rows and returns the laps it closed, in the order they closed.
    pub fn ingest(&mut self, chunk: &RecordChunk) -> Vec<RecordedLap> {
        // Rows of one car's lap are spread over the chunk (one per tick): gather each lap's
        // row indices, then copy column by column.
        let rows = chunk.len().min(chunk.columns.len());
        let mut groups: Vec<((Entity, u16), Vec<u32>)> = Vec::new();
        let mut slot: std::collections::HashMap<(Entity, u16), usize> =
            std::collections::HashMap::new();
        for i in 0..rows {
            let key = (chunk.car[i], chunk.lap[i]);
            let k = *slot.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[k].1.push(i as u32);
        }
        for (key, idx) in groups {
            self.open
                .entry(key)
                .or_default()
                .extend_from(&chunk.columns, &idx);
        }
        chunk
            .closed
            .iter()
            .map(|c| RecordedLap {
                car: c.car,
                session: c.session,
                lap: c.lap,
                complete: c.complete,
                valid: c.valid,
                lap_time_s: c.lap_time_s,
                columns: self.open.remove(&(c.car, c.lap)).unwrap_or_default(),
            })
            .collect()
    }

    /// Laps with rows but no end yet.
    pub fn open_laps(&self) -> usize {
        self.open.len()
    }
}

/// The record systems, in order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordSystems {
    /// Append this tick's rows, closing laps whose line was crossed.
    Append,
    /// Close the open laps of sessions that finished.
    Close,
}

/// Closes the lap `rec` is on. The lap is complete when timing has moved on to the next lap
/// (the line was crossed), with the time and validity timing gave it.
fn close_lap(car: Entity, session: Entity, rec: &mut LapRecorder, timing: &LapTiming) -> LapClosed {
    let complete = rec.lap >= 1 && timing.lap == rec.lap + 1;
    let closed = LapClosed {
        car,
        session,
        lap: rec.lap,
        complete,
        valid: complete && timing.last_lap_valid,
        lap_time_s: complete
            .then_some(timing.last_lap_ticks)
            .flatten()
            .map(ticks_to_seconds),
    };
    rec.lap = timing.lap;
    closed
}

/// Appends one row per active car, closing a car's lap first when timing moved it to a new one.
pub fn record_cars(
    tick: Res<SimTick>,
    mut chunk: ResMut<RecordChunk>,
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
            Option<&RecordedClock>,
            Option<&Drivetrain>,
        ),
        With<Active>,
    >,
) {
    let chunk = &mut *chunk;
    for (car, session, pose, motion, controls, progress, timing, mut rec, clock, drive) in &mut cars
    {
        if rec.lap != timing.lap {
            let closed = close_lap(car, session.0, &mut rec, timing);
            chunk.closed.push(closed);
        }
        // A recorded car's rows carry the recording's record number and clock.
        let (row, now) = match clock {
            Some(c) => (c.record, c.ticks()),
            None => (tick.0, tick.0 as f64),
        };
        let lap_time_s = ticks_to_seconds((now - timing.lap_start_tick).max(0.0)) as f32;
        chunk.car.push(car);
        chunk.lap.push(rec.lap);
        chunk.columns.push(&LapSample {
            tick: row,
            lap_time_s,
            distance_m: progress.distance_m,
            lateral_m: progress.lateral_m,
            speed_mps: motion.speed_mps,
            throttle: controls.throttle,
            brake: controls.brake,
            steering: controls.steering,
            gear: drive.map_or(f32::NAN, |d| f32::from(d.gear)),
            rpm: drive.map_or(f32::NAN, |d| d.rpm),
            x_m: pose.x_m,
            y_m: pose.y_m,
            yaw_rad: pose.yaw_rad,
            long_accel_mps2: motion.long_accel_mps2,
            lat_accel_mps2: motion.lat_accel_mps2,
        });
    }
}

/// Closes the open laps of every car of a session whose race ended: complete if the car
/// crossed the line in the tick the race ended, incomplete otherwise.
pub fn close_finished_sessions(
    mut ended: MessageReader<RaceFinished>,
    sessions: Query<&SessionCars>,
    mut recorders: Query<(&mut LapRecorder, &LapTiming)>,
    mut chunk: ResMut<RecordChunk>,
) {
    for finished in ended.read() {
        let Ok(cars) = sessions.get(finished.session) else {
            continue;
        };
        for &car in cars.cars() {
            if let Ok((mut rec, timing)) = recorders.get_mut(car) {
                let closed = close_lap(car, finished.session, &mut rec, timing);
                chunk.closed.push(closed);
            }
        }
    }
}

/// Registers the record systems in [`SimSystems::Record`].
pub struct RecordPlugin;

impl Plugin for RecordPlugin {
    fn build(&self, app: &mut App) {
        app.register_required_components::<InSession, LapRecorder>()
            .init_resource::<RecordChunk>()
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
