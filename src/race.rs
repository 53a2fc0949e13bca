//! `apexsim race`: an offline race between AI drivers on the bundled content, paced at 240 Hz
//! or run as fast as the CPU allows. It is the demo and the end-to-end benchmark of the
//! simulation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apexsim_systems::prelude::*;
use bevy_ecs::entity::Entity;
use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::archive::recorder::{RecordedCar, Recorder, RecorderMsg};
use crate::archive::wal::WalSync;
use crate::archive::writer::{ArchiveWriter, WriterReport};
mod watch;

pub use crate::runner::{BoardRow, Phase};
pub use watch::{BOARD_EVERY, Board, LapLine, RaceEvent};

use crate::content::{Content, TrackContent};
use crate::runner::{
    Entry, FLUSH_TICKS, Pacer, classify, driver_name, result_entries, session_row, unix_now,
};
pub use crate::runner::{Gap, ResultRow};

/// What race to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RaceOptions {
    /// Track slug, id or name.
    pub track: String,
    /// Car slug, id or name.
    pub car: String,
    /// Number of AI cars.
    pub cars: usize,
    /// Laps.
    pub laps: u16,
    /// Seed of the simulation's random numbers (AI pace).
    pub seed: u64,
    /// Run ticks back to back instead of pacing at 240 Hz.
    pub fast: bool,
    /// Pace at this many times real time (1.0 = 240 Hz) when not `fast`.
    pub speed: f64,
    /// Race time after which the leader's next crossing ends the race.
    pub time_limit: Option<Duration>,
    /// Session id; `None` derives one from the seed.
    pub session_id: Option<Uuid>,
}

impl Default for RaceOptions {
    fn default() -> Self {
        Self {
            track: "road_course_a".into(),
            car: "gt3_generic".into(),
            cars: 8,
            laps: 3,
            seed: 1,
            fast: false,
            speed: 1.0,
            time_limit: None,
            session_id: None,
        }
    }
}

/// Why a race could not run.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RaceError {
    /// No track matches.
    #[error("unknown track {name:?}; available: {available}")]
    UnknownTrack {
        /// What was asked for.
        name: String,
        /// Slugs of the loaded tracks.
        available: String,
    },
    /// No car matches.
    #[error("unknown car {name:?}; available: {available}")]
    UnknownCar {
        /// What was asked for.
        name: String,
        /// Slugs of the loaded cars.
        available: String,
    },
    /// Zero cars.
    #[error("a race needs at least 1 car")]
    NoCars,
    /// Zero laps.
    #[error("a race needs at least 1 lap")]
    NoLaps,
    /// More cars than the track's grid has slots.
    #[error("{requested} cars do not fit on {track}'s grid of {slots} slots")]
    GridTooSmall {
        /// Cars asked for.
        requested: usize,
        /// The track.
        track: String,
        /// Its grid slots.
        slots: usize,
    },
    /// The race did not end within its safety limit (cars stuck, for instance).
    #[error("the race did not finish within {0:?} of race time")]
    DidNotFinish(Duration),
}

impl RaceError {
    /// Whether the error is the user's argument (exit code 2) rather than a failure.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::DidNotFinish(_))
    }
}

/// What a race produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RaceReport {
    /// Session id.
    pub session: Uuid,
    /// Track name.
    pub track: String,
    /// Track length in metres.
    pub track_length_m: f32,
    /// Lap limit.
    pub laps: u16,
    /// Seed.
    pub seed: u64,
    /// Ideal lap time of the car on the track's centerline, in seconds (see
    /// [`ideal_lap_time_s`]).
    pub ideal_lap_s: f32,
    /// Classification, winner first.
    pub results: Vec<ResultRow>,
    /// Ticks simulated (countdown included).
    pub ticks: u64,
    /// Simulated seconds.
    pub sim_seconds: f64,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Ticks per wall-clock second.
    pub ticks_per_second: f64,
    /// Laps recorded (complete and partial).
    pub recorded_laps: usize,
    /// Rows in those laps.
    pub recorded_rows: usize,
    /// What the archive wrote, when the race was archived.
    pub archive: Option<WriterReport>,
}

/// `a, b, c`.
fn slugs<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// A race set up in a world, ready to step.
pub struct Race {
    sim: Simulation,
    session: Entity,
    session_id: Uuid,
    cars: Vec<Entity>,
    track_name: String,
    track_length_m: f32,
    car_name: String,
    ideal_lap_s: f32,
    laps: u16,
    seed: u64,
    tick_cap: u64,
    speed: f64,
    lap_lines: Vec<LapLine>,
    assembler: LapAssembler,
    recorded: Vec<RecordedLap>,
    recorded_laps: usize,
    recorded_rows: usize,
    track: Arc<TrackContent>,
    archive: Option<Recorder>,
}

impl Race {
    /// Builds the world: the track, a session, `cars` AI cars on the grid with paces drawn from
    /// the seeded generator, and the start request.
    ///
    /// # Errors
    /// [`RaceError`] for an unknown track or car, zero cars or laps, or too many cars.
    pub fn new(content: &Content, opts: &RaceOptions) -> Result<Self, RaceError> {
        let track = content
            .track(&opts.track)
            .ok_or_else(|| RaceError::UnknownTrack {
                name: opts.track.clone(),
                available: slugs(content.tracks.iter().map(|t| t.slug.as_str())),
            })?;
        let car = content
            .car(&opts.car)
            .ok_or_else(|| RaceError::UnknownCar {
                name: opts.car.clone(),
                available: slugs(content.cars.iter().map(|c| c.slug.as_str())),
            })?;
        if opts.cars == 0 {
            return Err(RaceError::NoCars);
        }
        if opts.laps == 0 {
            return Err(RaceError::NoLaps);
        }
        let slots = track.geometry.grid_slots().len();
        if opts.cars > slots {
            return Err(RaceError::GridTooSmall {
                requested: opts.cars,
                track: track.slug.clone(),
                slots,
            });
        }
        let ideal_lap_s = ideal_lap_time_s(&track.geometry, &car.spec);
        let mut sim = Simulation::new(SimulationPlugin { seed: opts.seed });
        let world = sim.world_mut();
        let track_id = world.resource_mut::<Tracks>().add(track.geometry.clone());
        let time_limit_ticks = opts
            .time_limit
            .map(|d| (d.as_secs_f64() * f64::from(TICK_HZ)).ceil() as u64);
        // A session id derived from the seed keeps runs with the same inputs identical.
        let session_id = opts
            .session_id
            .unwrap_or_else(|| Uuid::from_u64_pair(0xA9E5_5117, opts.seed));
        let session = spawn_session(
            world,
            SessionConfig {
                id: session_id,
                track: track_id,
                rules: RaceRules {
                    lap_limit: opts.laps,
                    time_limit_ticks,
                    ..RaceRules::default()
                },
            },
        );
        let mut cars = Vec::with_capacity(opts.cars);
        for _ in 0..opts.cars {
            let pace = world.resource_mut::<SimRng>().range_f32(0.94, 1.0);
            let car =
                spawn_car(world, session, car.spec, DriverKind::Ai { pace }).map_err(|_| {
                    RaceError::GridTooSmall {
                        requested: opts.cars,
                        track: track.slug.clone(),
                        slots,
                    }
                })?;
            cars.push(car);
        }
        world.write_message(StartRace { session });
        // Safety cap: countdown, the laps at a fifth of the ideal pace, the finish timeout.
        let race_s = time_limit_ticks
            .map_or(f64::from(ideal_lap_s) * f64::from(opts.laps) * 5.0, |t| {
                ticks_to_seconds(t as f64) + f64::from(ideal_lap_s) * 2.0
            });
        let tick_cap = u64::from(COUNTDOWN_TICKS) + ((race_s + 120.0) * f64::from(TICK_HZ)) as u64;
        Ok(Self {
            sim,
            session,
            session_id,
            cars,
            track_name: track.name.clone(),
            track_length_m: track.geometry.length_m(),
            car_name: car.name.clone(),
            ideal_lap_s,
            laps: opts.laps,
            seed: opts.seed,
            tick_cap,
            speed: if opts.speed.is_finite() && opts.speed > 0.0 {
                opts.speed
            } else {
                1.0
            },
            lap_lines: Vec::new(),
            assembler: LapAssembler::default(),
            recorded: Vec::new(),
            recorded_laps: 0,
            recorded_rows: 0,
            track: track.clone(),
            archive: None,
        })
    }

    /// The cars in grid order, as the classification and the board take them.
    fn entries(&self) -> Vec<Entry<'_>> {
        self.cars
            .iter()
            .enumerate()
            .map(|(i, &car)| Entry {
                car,
                driver: driver_name(i),
                car_name: &self.car_name,
            })
            .collect()
    }

    /// Sets the safety cap: the race ends in [`RaceError::DidNotFinish`] after this many
    /// ticks (by default five times the ideal race, plus the countdown and two minutes).
    pub fn with_tick_cap(mut self, ticks: u64) -> Self {
        self.tick_cap = ticks;
        self
    }

    /// The simulation, for inspection.
    pub fn sim(&self) -> &Simulation {
        &self.sim
    }

    /// The car entities, grid order.
    pub fn cars(&self) -> &[Entity] {
        &self.cars
    }

    /// Whether the race has ended.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.sim.world().get::<RaceState>(self.session),
            Some(RaceState::Finished { .. })
        )
    }

    /// Sends the race's laps, session and results to an archive writer instead of keeping the
    /// laps in memory, through a [`Recorder`] thread: every flush hands the recorded rows over
    /// (the simulation thread only swaps buffers); the recorder appends them to the session's
    /// locked write-ahead file (fsynced as `sync` says), assembles the laps and submits them,
    /// and the write-ahead file is removed once every lap is durable.
    ///
    /// # Errors
    /// [`crate::archive::ArchiveError`] when the write-ahead file cannot be created.
    pub fn archive_to(
        &mut self,
        writer: ArchiveWriter,
        sync: WalSync,
    ) -> Result<(), crate::archive::ArchiveError> {
        let recorder = Recorder::start(writer, sync, |_| {}).map_err(|source| {
            crate::archive::ArchiveError::Io {
                path: std::path::PathBuf::new(),
                source,
            }
        })?;
        let cars: Vec<RecordedCar> = self
            .cars
            .iter()
            .enumerate()
            .map(|(i, &entity)| RecordedCar {
                entity,
                index: i as u8,
                driver: driver_name(i),
                car_model: self.car_name.clone(),
            })
            .collect();
        let row = session_row(
            self.session_id,
            &self.track,
            self.laps,
            Some(self.seed),
            &cars,
        );
        recorder.begin(row, self.track_length_m, cars)?;
        self.archive = Some(recorder);
        Ok(())
    }

    /// Runs one tick. Every 60 ticks, and when the race ends, the recorded rows are taken:
    /// handed to the recorder thread when archiving, else assembled into laps in memory.
    pub fn step(&mut self) {
        self.sim.step();
        if self.sim.tick().is_multiple_of(FLUSH_TICKS) || self.is_finished() {
            self.flush();
        }
    }

    /// Takes the recorded rows; the laps they closed become lap lines for the watcher.
    fn flush(&mut self) {
        let cars = &self.cars;
        let car_index = |e| cars.iter().position(|&c| c == e).unwrap_or(0);
        let world = self.sim.world_mut();
        let mut chunk = world.resource_mut::<RecordChunk>();
        for lap in &chunk.closed {
            tracing::debug!(
                car = car_index(lap.car),
                lap = lap.lap,
                complete = lap.complete,
                "lap closed"
            );
            if let (true, Some(time_s)) = (lap.complete, lap.lap_time_s) {
                self.lap_lines.push(LapLine {
                    driver: driver_name(car_index(lap.car)),
                    lap: lap.lap,
                    time_s,
                    valid: lap.valid,
                });
            }
        }
        self.recorded_laps += chunk.closed.len();
        self.recorded_rows += chunk.len();
        match &self.archive {
            Some(recorder) => recorder.flush(&mut chunk),
            None => {
                let chunk = chunk.take();
                self.recorded.extend(self.assembler.ingest(&chunk));
            }
        }
    }

    /// Laps recorded so far (complete and partial), in the order they ended; empty when the
    /// laps go to an archive.
    pub fn laps(&self) -> &[RecordedLap] {
        &self.recorded
    }

    /// Runs to the end: paced at 240 Hz (times the race's speed) unless `fast`.
    ///
    /// # Errors
    /// [`RaceError::DidNotFinish`] if the race is still running at its safety cap.
    pub fn run(self, fast: bool) -> Result<RaceReport, RaceError> {
        self.run_watched(fast, |_| {})
    }

    /// [`run`](Self::run), telling `watch` the live timing board every [`BOARD_EVERY`] of
    /// wall time and every lap as it completes.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn run_watched(
        mut self,
        fast: bool,
        mut watch: impl FnMut(RaceEvent<'_>),
    ) -> Result<RaceReport, RaceError> {
        let mut next_board = Instant::now();
        let started = Instant::now();
        let mut pacer = Pacer::new(self.speed);
        let first_tick = self.sim.tick();
        let mut last_log = 0u64;
        while !self.is_finished() {
            if self.sim.tick() - first_tick >= self.tick_cap {
                // What was recorded is still written; the session stays unfinished and its
                // write-ahead file is kept, so the laps in progress are recovered as partial.
                self.flush();
                if let Some(recorder) = self.archive.take() {
                    // Never ended: the recorder leaves the session unfinished, write-ahead
                    // file kept.
                    let written = recorder.finish();
                    tracing::warn!(
                        laps_written = written.laps_written,
                        errors = ?written.errors,
                        "race ended in an error; its laps are archived, the session is unfinished"
                    );
                }
                return Err(RaceError::DidNotFinish(Duration::from_secs_f64(
                    ticks_to_seconds(self.tick_cap as f64),
                )));
            }
            self.step();
            let n = self.sim.tick() - first_tick;
            if !fast {
                pacer.wait();
            }
            if n - last_log >= 10 * u64::from(TICK_HZ) {
                last_log = n;
                self.log_progress();
            }
            for line in std::mem::take(&mut self.lap_lines) {
                watch(RaceEvent::Lap(&line));
            }
            if Instant::now() >= next_board {
                next_board += BOARD_EVERY;
                watch(RaceEvent::Board(&self.board()));
            }
        }
        watch(RaceEvent::Board(&self.board()));
        let wall = started.elapsed();
        let mut report = self.report(wall);
        if let Some(recorder) = self.archive.take() {
            recorder.send(RecorderMsg::End {
                session: self.session_id,
                finished_at: unix_now(),
                results: result_entries(&report.results),
                fault: None,
                ended_by: None,
            });
            // The writer removes the write-ahead file once every lap is durable and indexed;
            // otherwise it stays, and the next start recovers from it.
            report.archive = Some(recorder.finish());
        }
        Ok(report)
    }

    fn log_progress(&self) {
        let world = self.sim.world();
        let leader = self
            .cars
            .iter()
            .filter_map(|&c| world.get::<TrackProgress>(c))
            .map(|p| p.race_distance_m)
            .fold(f64::NEG_INFINITY, f64::max);
        tracing::info!(
            tick = self.sim.tick(),
            leader_laps = leader / f64::from(self.track_length_m),
            "racing"
        );
    }

    /// The classification and run statistics.
    pub fn report(&self, wall: Duration) -> RaceReport {
        let results = classify(self.sim.world(), &self.entries());
        let ticks = self.sim.tick();
        RaceReport {
            session: self.session_id,
            track: self.track_name.clone(),
            track_length_m: self.track_length_m,
            laps: self.laps,
            seed: self.seed,
            ideal_lap_s: self.ideal_lap_s,
            results,
            ticks,
            sim_seconds: ticks_to_seconds(ticks as f64),
            wall_seconds: wall.as_secs_f64(),
            ticks_per_second: ticks as f64 / wall.as_secs_f64().max(1e-9),
            recorded_laps: self.recorded_laps,
            recorded_rows: self.recorded_rows,
            archive: None,
        }
    }
}
