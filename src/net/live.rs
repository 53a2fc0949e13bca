//! The live timing of every session, as the web page shows it: the board of [`board_rows`]
//! (positions, laps, last and best lap, gap and interval), each car's place on the track, its
//! speed and top speed, and sector times where the track has sectors. The simulation thread
//! keeps the per-car clocks each tick ([`LiveClocks::observe`]) and publishes a [`LiveView`]
//! at [`LIVE_EVERY_TICKS`]; the HTTP side turns each view into JSON once for every viewer.

use std::collections::HashMap;

use apexsim_systems::prelude::*;
use bevy_ecs::entity::Entity;
use bevy_ecs::world::World;
use serde::Serialize;
use uuid::Uuid;

use super::sim::NetDriver;
use crate::runner::{BoardRow, Entry, Phase, board_rows};

/// Ticks between two live views (20 Hz).
pub const LIVE_EVERY_TICKS: u64 = TICK_HZ as u64 / 20;

/// Every session, as watchers see it now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiveView {
    /// The server's tick.
    pub tick: u64,
    /// Ticks per second, for the page's clock.
    pub tick_hz: u32,
    /// The sessions: in their lobby, racing, or finished and not yet cleaned up.
    pub sessions: Vec<LiveSession>,
}

/// One session's live timing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSession {
    /// Id.
    pub id: Uuid,
    /// Track id (its map: `/api/tracks/{id}`).
    pub track_id: Uuid,
    /// Track name.
    pub track: String,
    /// Lap limit.
    pub laps: u16,
    /// Where the race is.
    pub phase: Phase,
    /// How many sectors the track has (1 when it has none).
    pub sectors: usize,
    /// The cars, leader first.
    pub cars: Vec<LiveCar>,
}

/// One car's live line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveCar {
    /// The timing line.
    #[serde(flatten)]
    pub row: BoardRow,
    /// Index in the session (telemetry's car index).
    pub index: u8,
    /// World position, metres.
    pub x_m: f32,
    /// World position, metres.
    pub y_m: f32,
    /// Heading, radians.
    pub yaw_rad: f32,
    /// Speed now, km/h.
    pub speed_kph: f32,
    /// Highest speed of the race so far, km/h.
    pub top_speed_kph: f32,
    /// A person drives it (else the AI).
    pub human: bool,
    /// Sector times of the lap it is on so far, seconds.
    pub sectors_s: Vec<Option<f64>>,
    /// Sector times of its last complete lap, seconds.
    pub last_sectors_s: Vec<Option<f64>>,
}

/// What a session is for the live view.
pub struct SessionCars<'a> {
    /// Id.
    pub id: Uuid,
    /// Its entity.
    pub entity: Entity,
    /// Track id and name.
    pub track: (Uuid, &'a str),
    /// Track length, metres.
    pub track_length_m: f32,
    /// Where the sectors start, as fractions of the lap (the first, at 0, not listed).
    pub sector_starts: &'a [f32],
    /// Lap limit.
    pub laps: u16,
    /// Its cars in grid order.
    pub cars: Vec<Entry<'a>>,
}

#[derive(Debug, Clone, Default)]
struct CarClock {
    top_mps: f32,
    lap: u16,
    sector: usize,
    sector_start_tick: f64,
    current: Vec<Option<f64>>,
    last: Vec<Option<f64>>,
}

/// The per-car clocks the live view needs beyond the world's components: top speed and
/// sector times.
#[derive(Debug, Default)]
pub struct LiveClocks {
    cars: HashMap<Entity, CarClock>,
}

impl LiveClocks {
    /// One tick of a session's `cars` on a track of `track_length_m` whose sectors start at
    /// `sector_starts`: top speeds, sector crossings and lap changes. Runs every tick, so it
    /// allocates nothing once each car has its clock.
    pub fn observe(
        &mut self,
        world: &World,
        tick: u64,
        cars: impl IntoIterator<Item = Entity>,
        track_length_m: f32,
        sector_starts: &[f32],
    ) {
        let sectors = sector_starts.len() + 1;
        let length = track_length_m.max(1.0);
        for car in cars {
            let clock = self.cars.entry(car).or_insert_with(|| CarClock {
                current: vec![None; sectors],
                last: vec![None; sectors],
                ..CarClock::default()
            });
            if let Some(m) = world.get::<Motion>(car) {
                clock.top_mps = clock.top_mps.max(m.speed_mps);
            }
            let (Some(timing), Some(progress)) =
                (world.get::<LapTiming>(car), world.get::<TrackProgress>(car))
            else {
                continue;
            };
            if timing.lap != clock.lap {
                // A new lap: the last sector closes at the line.
                if clock.lap >= 1 && timing.lap == clock.lap + 1 {
                    let last = sectors - 1;
                    if clock.sector == last {
                        clock.current[last] = Some(ticks_to_seconds(
                            timing.lap_start_tick - clock.sector_start_tick,
                        ));
                    }
                    std::mem::swap(&mut clock.last, &mut clock.current);
                }
                clock.current.iter_mut().for_each(|s| *s = None);
                clock.lap = timing.lap;
                clock.sector = 0;
                clock.sector_start_tick = timing.lap_start_tick;
                continue;
            }
            if clock.lap == 0 || sectors == 1 {
                continue;
            }
            let fraction = progress.distance_m / length;
            let sector = sector_starts.iter().filter(|&&b| fraction >= b).count();
            if sector == clock.sector + 1 {
                clock.current[clock.sector] =
                    Some(ticks_to_seconds(tick as f64 - clock.sector_start_tick));
                clock.sector = sector;
                clock.sector_start_tick = tick as f64;
            }
        }
    }

    /// Forgets the cars of a session that is gone.
    pub fn forget(&mut self, cars: impl IntoIterator<Item = Entity>) {
        for car in cars {
            self.cars.remove(&car);
        }
    }

    /// The live timing of one session.
    pub fn session(&self, world: &World, tick: u64, s: &SessionCars<'_>) -> LiveSession {
        let rows = board_rows(world, &s.cars, s.laps, s.track_length_m);
        let cars = rows
            .into_iter()
            .map(|row| {
                let car = s.cars[usize::from(row.grid - 1)].car;
                let pose = world.get::<Pose>(car).copied().unwrap_or_default();
                let speed = world.get::<Motion>(car).map_or(0.0, |m| m.speed_mps);
                let clock = self.cars.get(&car);
                LiveCar {
                    index: row.grid - 1,
                    x_m: pose.x_m,
                    y_m: pose.y_m,
                    yaw_rad: pose.yaw_rad,
                    speed_kph: speed * 3.6,
                    top_speed_kph: clock.map_or(0.0, |c| c.top_mps) * 3.6,
                    human: world.get::<NetDriver>(car).is_some(),
                    sectors_s: clock.map(|c| c.current.clone()).unwrap_or_default(),
                    last_sectors_s: clock.map(|c| c.last.clone()).unwrap_or_default(),
                    row,
                }
            })
            .collect();
        LiveSession {
            id: s.id,
            track_id: s.track.0,
            track: s.track.1.to_owned(),
            laps: s.laps,
            phase: Phase::of(world, s.entity, tick),
            sectors: s.sector_starts.len() + 1,
            cars,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A car driven by hand along a 1,000 m lap in three sectors (starting at 300 m and 700 m).
    struct Drive {
        world: World,
        car: Entity,
        session: Entity,
    }

    impl Drive {
        fn new() -> Self {
            let mut world = World::new();
            let session = world.spawn_empty().id();
            let car = world
                .spawn((
                    LapTiming::default(),
                    TrackProgress {
                        distance_m: 0.0,
                        lateral_m: 0.0,
                        segment: 0,
                        race_distance_m: 0.0,
                    },
                    Motion::default(),
                ))
                .id();
            Self {
                world,
                car,
                session,
            }
        }

        /// The car at `distance_m` on lap `lap` (begun at `lap_start`), going `speed` m/s.
        fn at(&mut self, lap: u16, lap_start: f64, distance_m: f32, speed: f32) {
            let mut e = self.world.entity_mut(self.car);
            if let Some(mut t) = e.get_mut::<LapTiming>() {
                t.lap = lap;
                t.lap_start_tick = lap_start;
            }
            if let Some(mut p) = e.get_mut::<TrackProgress>() {
                p.distance_m = distance_m;
            }
            if let Some(mut m) = e.get_mut::<Motion>() {
                m.speed_mps = speed;
            }
        }

        fn cars(&self) -> SessionCars<'static> {
            SessionCars {
                id: Uuid::nil(),
                entity: self.session,
                track: (Uuid::nil(), "test"),
                track_length_m: 1000.0,
                sector_starts: &[0.3, 0.7],
                laps: 3,
                cars: vec![Entry {
                    car: self.car,
                    driver: "d".into(),
                    car_name: "c",
                }],
            }
        }
    }

    #[test]
    fn sector_times_and_the_top_speed_follow_the_car() {
        let mut d = Drive::new();
        let mut clocks = LiveClocks::default();
        // Lap 1 begins at tick 100; sector 1 ends at tick 340 (1 s), sector 2 at tick 820.
        let lap = [
            (100, 0.0, 40.0),
            (200, 150.0, 55.0),
            (340, 301.0, 60.0),
            (600, 500.0, 70.0),
            (820, 705.0, 50.0),
            (1000, 990.0, 45.0),
        ];
        for (tick, at, v) in lap {
            d.at(1, 100.0, at, v);
            let s = d.cars();
            clocks.observe(&d.world, tick, [d.car], s.track_length_m, s.sector_starts);
        }
        let s = clocks.session(&d.world, 1000, &d.cars());
        let car = &s.cars[0];
        assert_eq!(s.sectors, 3);
        assert_eq!(car.sectors_s, vec![Some(1.0), Some(2.0), None]);
        assert!((car.top_speed_kph - 70.0 * 3.6).abs() < 1e-3);
        assert_eq!(car.last_sectors_s, vec![None, None, None]);
        // The line at tick 1060.5: the last sector closes at the lap's exact start.
        d.at(2, 1060.5, 2.0, 40.0);
        let s = d.cars();
        clocks.observe(&d.world, 1061, [d.car], s.track_length_m, s.sector_starts);
        let s = clocks.session(&d.world, 1061, &d.cars());
        let car = &s.cars[0];
        assert_eq!(
            car.last_sectors_s,
            vec![Some(1.0), Some(2.0), Some(240.5 / 240.0)]
        );
        assert_eq!(car.sectors_s, vec![None, None, None]);
        // Forgotten with its session.
        clocks.forget([d.car]);
        let s = clocks.session(&d.world, 1061, &d.cars());
        assert!(s.cars[0].sectors_s.is_empty());
    }
}
