//! What a watcher of a running race is shown: the live timing board (positions, laps, last and
//! best lap, gaps) a few times a second of wall time, and each lap as it completes.

use std::time::Duration;

use serde::Serialize;

use super::Race;
use crate::runner::{BoardRow, Phase, board_rows};

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
        let entries = self.entries();
        Board {
            track: self.track_name.clone(),
            laps: self.laps,
            phase: Phase::of(world, self.session, self.sim.tick()),
            rows: board_rows(world, &entries, self.laps, self.track_length_m),
        }
    }
}
