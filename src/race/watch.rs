//! What a watcher of a running race is shown: the live timing board (positions, laps, last and
//! best lap, gaps) a few times a second of wall time, and each lap as it completes.

use std::time::Duration;

use apexsim_systems::prelude::*;
use serde::Serialize;

use super::{Gap, Race};

/// The state of a race as a watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the start.
    Lobby,
    /// Counting down to the green light.
    Countdown {
        /// Seconds left, rounded up.
        seconds: u32,
    },
    /// Racing.
    Racing {
        /// Race time in seconds.
        race_s: f64,
    },
    /// Over.
    Finished,
}

/// One line of the live timing board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardRow {
    /// Position now.
    pub position: usize,
    /// Driver.
    pub driver: String,
    /// The lap the car is on (laps completed once it finished).
    pub lap: u16,
    /// Its last lap, in seconds.
    pub last_lap_s: Option<f64>,
    /// Its best valid lap, in seconds.
    pub best_lap_s: Option<f64>,
    /// Behind the leader: seconds (estimated from the distance and the car's speed), or laps.
    pub gap: Gap,
}

/// The live timing board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Board {
    /// Track name.
    pub track: String,
    /// Lap limit.
    pub laps: u16,
    /// Where the race is.
    pub phase: Phase,
    /// The cars, leader first.
    pub rows: Vec<BoardRow>,
}

/// A lap a car completed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LapLine {
    /// Driver.
    pub driver: String,
    /// Lap number.
    pub lap: u16,
    /// Lap time in seconds.
    pub time_s: f64,
    /// Whether it was valid.
    pub valid: bool,
}

/// What a watcher of a running race is told.
#[derive(Debug, Clone, Copy)]
pub enum RaceEvent<'a> {
    /// The board, a few times a second of wall time.
    Board(&'a Board),
    /// A car completed a lap.
    Lap(&'a LapLine),
}

/// Wall time between two boards.
pub const BOARD_EVERY: Duration = Duration::from_millis(250);

impl Race {
    /// The live timing board now.
    pub fn board(&self) -> Board {
        let world = self.sim.world();
        let tick = self.sim.tick();
        let phase = match world.get::<RaceState>(self.session) {
            Some(RaceState::Countdown { remaining_ticks }) => Phase::Countdown {
                seconds: remaining_ticks.div_ceil(TICK_HZ),
            },
            Some(RaceState::Racing { start_tick }) => Phase::Racing {
                race_s: ticks_to_seconds(tick.saturating_sub(*start_tick) as f64),
            },
            Some(RaceState::Finished { .. }) => Phase::Finished,
            Some(RaceState::Lobby) | None => Phase::Lobby,
        };
        let standing = self.report(Duration::ZERO);
        let distance = |grid: u8| {
            let car = self.cars[usize::from(grid - 1)];
            let d = world
                .get::<TrackProgress>(car)
                .map_or(0.0, |p| p.race_distance_m);
            let v = world.get::<Motion>(car).map_or(0.0, |m| m.speed_mps);
            (d, f64::from(v))
        };
        let lead = standing.results.first().map_or(0.0, |r| distance(r.grid).0);
        let length = f64::from(self.track_length_m.max(1.0));
        let rows = standing
            .results
            .iter()
            .map(|r| {
                let car = self.cars[usize::from(r.grid - 1)];
                let timing = world.get::<LapTiming>(car).copied().unwrap_or_default();
                let (d, v) = distance(r.grid);
                let gap = match r.gap {
                    Gap::Dnf if r.position == 1 => Gap::Leader,
                    Gap::Dnf if lead - d >= length => Gap::Laps(((lead - d) / length) as u16),
                    Gap::Dnf => Gap::Seconds((lead - d).max(0.0) / v.max(1.0)),
                    g => g,
                };
                BoardRow {
                    position: r.position,
                    driver: r.driver.clone(),
                    lap: timing.lap.min(self.laps).max(r.laps),
                    last_lap_s: timing.last_lap_ticks.map(ticks_to_seconds),
                    best_lap_s: r.best_lap_s,
                    gap,
                }
            })
            .collect();
        Board {
            track: self.track_name.clone(),
            laps: self.laps,
            phase,
            rows,
        }
    }
}
