//! What the offline race ([`crate::race`]) and the race server ([`crate::net`]) both do around
//! the world: begin a session's recording, pace ticks at 240 Hz, take the recorded rows every
//! [`FLUSH_TICKS`], classify the cars at the end and hand the results to the archive.
//!
//! It sits above the archive (it builds the recorder's messages) and below the two runners.

use std::time::{Duration, Instant};

use apexsim_systems::prelude::*;
use bevy_ecs::entity::Entity;
use serde::Serialize;
use uuid::Uuid;

use crate::archive::Source;
use crate::archive::index::{ResultEntry, SessionRow};
use crate::archive::recorder::RecordedCar;
use crate::content::TrackContent;

/// Ticks between two takes of the recorded rows (250 ms).
pub const FLUSH_TICKS: u64 = 60;

/// Gap of a car to the winner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gap {
    /// The winner.
    Leader,
    /// Seconds behind the winner on the same lap count.
    Seconds(f64),
    /// Laps behind the winner.
    Laps(u16),
    /// Not classified.
    Dnf,
}

/// One line of the results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResultRow {
    /// Classified position (1 = winner).
    pub position: usize,
    /// Grid position (1 = pole).
    pub grid: u8,
    /// Driver name.
    pub driver: String,
    /// Car name.
    pub car: String,
    /// Laps completed.
    pub laps: u16,
    /// Race time at the finish, in seconds.
    pub total_time_s: Option<f64>,
    /// Best valid lap, in seconds.
    pub best_lap_s: Option<f64>,
    /// Gap to the winner.
    pub gap: Gap,
    /// Ticks spent off the track surface.
    pub off_track_ticks: u32,
    /// Contacts with other cars.
    pub contacts: u32,
}

/// A car to classify: its entity (grid order gives the grid position), driver and car name.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The car.
    pub car: Entity,
    /// Driver name.
    pub driver: String,
    /// Car model name.
    pub car_name: &'a str,
}

/// The classification of a session's cars (given in grid order), winner first: finishers by
/// position, then by laps and distance; gaps to the winner.
pub fn classify(world: &bevy_ecs::world::World, cars: &[Entry<'_>]) -> Vec<ResultRow> {
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    for (i, entry) in cars.iter().enumerate() {
        let car = entry.car;
        let timing = world.get::<LapTiming>(car).copied().unwrap_or_default();
        let finish = world.get::<Finish>(car).copied().unwrap_or_default();
        let progress = world.get::<TrackProgress>(car);
        let collision = world
            .get::<CollisionState>(car)
            .copied()
            .unwrap_or_default();
        keys.push((
            finish.position,
            timing.laps_completed(),
            progress.map_or(0.0, |p| p.race_distance_m),
        ));
        rows.push(ResultRow {
            position: 0,
            grid: (i + 1) as u8,
            driver: entry.driver.clone(),
            car: entry.car_name.to_owned(),
            laps: timing.laps_completed(),
            total_time_s: finish.race_ticks.map(ticks_to_seconds),
            best_lap_s: timing.best_lap_ticks.map(ticks_to_seconds),
            gap: Gap::Dnf,
            off_track_ticks: timing.total_off_track_ticks,
            contacts: collision.contacts,
        });
    }
    let order = standings(&keys);
    let mut results: Vec<ResultRow> = order.iter().map(|&i| rows[i].clone()).collect();
    let (win_laps, win_time) = results
        .first()
        .map_or((0, None), |r| (r.laps, r.total_time_s));
    for (k, row) in results.iter_mut().enumerate() {
        row.position = k + 1;
        row.gap = match (k, row.total_time_s, win_time) {
            (0, Some(_), _) => Gap::Leader,
            (_, Some(t), Some(w)) if row.laps == win_laps => Gap::Seconds(t - w),
            (_, Some(_), _) => Gap::Laps(win_laps - row.laps),
            _ => Gap::Dnf,
        };
    }
    results
}

/// Where a race is, as watchers see it.
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

impl Phase {
    /// The phase of the session `session` at `tick`.
    pub fn of(world: &bevy_ecs::world::World, session: Entity, tick: u64) -> Self {
        match world.get::<RaceState>(session) {
            Some(RaceState::Countdown { remaining_ticks }) => Self::Countdown {
                seconds: remaining_ticks.div_ceil(TICK_HZ),
            },
            Some(RaceState::Racing { start_tick }) => Self::Racing {
                race_s: ticks_to_seconds(tick.saturating_sub(*start_tick) as f64),
            },
            Some(RaceState::Finished { .. }) => Self::Finished,
            Some(RaceState::Lobby) | None => Self::Lobby,
        }
    }
}

/// One line of a live timing board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardRow {
    /// Position now.
    pub position: usize,
    /// Grid position (1 = pole): the car's index in the session plus one.
    pub grid: u8,
    /// Driver.
    pub driver: String,
    /// Car model.
    pub car: String,
    /// The lap the car is on (laps completed once it finished).
    pub lap: u16,
    /// Its last lap, in seconds.
    pub last_lap_s: Option<f64>,
    /// Its best valid lap, in seconds.
    pub best_lap_s: Option<f64>,
    /// Behind the leader: seconds (estimated from the distance and the car's speed while
    /// racing), or laps.
    pub gap: Gap,
    /// Behind the car ahead, the same way.
    pub interval: Gap,
    /// Whether it took the chequered flag.
    pub finished: bool,
}

/// The live timing board of a session's cars (given in grid order), leader first: the
/// [`classify`] order, with the gaps of cars still racing estimated from the distance between
/// them and the follower's speed (laps when a whole lap or more).
pub fn board_rows(
    world: &bevy_ecs::world::World,
    cars: &[Entry<'_>],
    lap_limit: u16,
    track_length_m: f32,
) -> Vec<BoardRow> {
    let results = classify(world, cars);
    let at = |grid: u8| {
        let car = cars[usize::from(grid - 1)].car;
        let d = world
            .get::<TrackProgress>(car)
            .map_or(0.0, |p| p.race_distance_m);
        let v = world.get::<Motion>(car).map_or(0.0, |m| m.speed_mps);
        (d, f64::from(v))
    };
    let length = f64::from(track_length_m.max(1.0));
    let behind = |ahead: f64, d: f64, v: f64| {
        if ahead - d >= length {
            Gap::Laps(((ahead - d) / length) as u16)
        } else {
            Gap::Seconds((ahead - d).max(0.0) / v.max(1.0))
        }
    };
    let lead = results.first().map_or(0.0, |r| at(r.grid).0);
    let mut rows: Vec<BoardRow> = Vec::with_capacity(results.len());
    for (k, r) in results.iter().enumerate() {
        let car = cars[usize::from(r.grid - 1)].car;
        let timing = world.get::<LapTiming>(car).copied().unwrap_or_default();
        let finished = world
            .get::<Finish>(car)
            .is_some_and(|f| f.position.is_some());
        let (d, v) = at(r.grid);
        let gap = match r.gap {
            Gap::Dnf if r.position == 1 => Gap::Leader,
            Gap::Dnf => behind(lead, d, v),
            g => g,
        };
        let interval = match (k, results.get(k.wrapping_sub(1))) {
            (0, _) | (_, None) => Gap::Leader,
            (_, Some(ahead)) => match (r.total_time_s, ahead.total_time_s) {
                (Some(t), Some(a)) if r.laps == ahead.laps => Gap::Seconds(t - a),
                (Some(_), Some(_)) => Gap::Laps(ahead.laps - r.laps),
                _ => behind(at(ahead.grid).0, d, v),
            },
        };
        rows.push(BoardRow {
            position: r.position,
            grid: r.grid,
            driver: r.driver.clone(),
            car: r.car.clone(),
            lap: timing.lap.min(lap_limit).max(r.laps),
            last_lap_s: timing.last_lap_ticks.map(ticks_to_seconds),
            best_lap_s: r.best_lap_s,
            gap,
            interval,
            finished,
        });
    }
    rows
}

/// The index rows of a classification.
pub fn result_entries(results: &[ResultRow]) -> Vec<ResultEntry> {
    results
        .iter()
        .map(|r| ResultEntry {
            position: r.position as u32,
            car: r.grid - 1,
            driver: r.driver.clone(),
            laps: r.laps,
            total_time_s: r.total_time_s,
            best_lap_s: r.best_lap_s,
        })
        .collect()
}

/// Name of the AI driver of grid slot `i` (0-based).
pub fn driver_name(i: usize) -> String {
    format!("AI {:02}", i + 1)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The index row of a simulated session on `track` with `cars` (by index), starting now: the
/// row names the car model the cars share, or "mixed".
pub fn session_row(
    id: Uuid,
    track: &TrackContent,
    lap_limit: u16,
    seed: Option<u64>,
    cars: &[RecordedCar],
) -> SessionRow {
    let shared = cars.windows(2).all(|w| w[0].car_model == w[1].car_model);
    let car_model = match cars.first() {
        Some(first) if shared => first.car_model.clone(),
        Some(_) => "mixed".to_owned(),
        None => String::new(),
    };
    SessionRow {
        id,
        source: Source::Sim.as_str().into(),
        track: track.slug.clone(),
        car_model,
        lap_limit: Some(lap_limit),
        seed,
        started_at: unix_now(),
        finished_at: None,
        sectors: track.sectors.clone(),
        identity: None,
        template_id: None,
        ended_by: None,
        laps_pruned_at: None,
    }
}

/// Whether a paced tick started on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    /// Waited for its deadline, or was within one period of it.
    OnTime,
    /// Started more than one period after its deadline; the schedule restarts from now.
    Late,
}

/// Paces ticks by the wall clock: tick `n` is due `n` periods after the start, at 240 Hz
/// times a speed factor. A tick more than one period late does not make the next ones race to
/// catch up: the schedule restarts from now.
#[derive(Debug, Clone)]
pub struct Pacer {
    period: Duration,
    next: Instant,
}

impl Pacer {
    /// Starts now at `speed` times real time (values that are not positive and finite mean 1).
    pub fn new(speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self {
            period: Duration::from_secs_f64(1.0 / (f64::from(TICK_HZ) * speed)),
            next: Instant::now(),
        }
    }

    /// Sleeps until the next tick is due.
    pub fn wait(&mut self) -> Paced {
        self.next += self.period;
        let now = Instant::now();
        if now > self.next + self.period {
            self.next = now;
            Paced::Late
        } else {
            if let Some(wait) = self.next.checked_duration_since(now) {
                std::thread::sleep(wait);
            }
            Paced::OnTime
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_keeps_240_hz_and_restarts_after_a_stall() {
        let mut pacer = Pacer::new(1.0);
        let started = Instant::now();
        for _ in 0..24 {
            pacer.wait();
        }
        // 24 ticks at 240 Hz are 100 ms; the pacer never runs ahead of its schedule.
        assert!(started.elapsed() >= Duration::from_millis(99));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(pacer.wait(), Paced::Late, "40 ms behind is late");
        let restarted = Instant::now();
        pacer.wait();
        assert!(
            restarted.elapsed() >= Duration::from_millis(3),
            "the schedule restarted from the stall instead of racing to catch up"
        );
    }

    #[test]
    fn the_car_model_is_shared_or_mixed() {
        let content = crate::content::Content::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("content"),
        )
        .content;
        let track = &content.tracks[0];
        let car = |index: u8, model: &str| RecordedCar {
            entity: Entity::PLACEHOLDER,
            index,
            driver: driver_name(usize::from(index)),
            car_model: model.into(),
        };
        let model = |cars: &[RecordedCar]| session_row(Uuid::nil(), track, 3, None, cars).car_model;
        assert_eq!(model(&[car(0, "GT3"), car(1, "GT3")]), "GT3");
        assert_eq!(model(&[car(0, "GT3"), car(1, "F4")]), "mixed");
    }
}
