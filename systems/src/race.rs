//! Race sessions: the session entity and its rules, the state machine Lobby -> Countdown (5 s)
//! -> Racing -> Finished, finish positions, the lap limit and the time limit, and the spawning
//! of sessions and cars. Runs after timing, before record.
//!
//! Finishing follows real race control: the first car to complete the lap limit (or the
//! leader's first crossing after the time limit) takes the chequered flag; every other car
//! finishes at its next crossing of the line. Cars that crossed in the same tick are ordered by
//! their interpolated crossing time. The race is over when every car has finished, or when
//! the finish timeout after the chequered flag runs out.

use std::sync::Arc;

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;
use thiserror::Error;
use uuid::Uuid;

use crate::ai::{AiDriver, SpeedProfile};
use crate::car::{Active, CarIndex, CarSpec, InSession, Pose, SessionCars, Simulated};
use crate::sim::{
    FinishReason, RaceFinished, RaceStarted, SessionId, SimSystems, SimTick, StartRace, TICK_HZ,
};
use crate::timing::{LapCompleted, LapTiming, TrackProgress};
use crate::track::{TrackId, Tracks};

/// Countdown before the green light, in ticks (5 s).
pub const COUNTDOWN_TICKS: u32 = 5 * TICK_HZ;

/// Rules of a race.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceRules {
    /// Laps to complete (1-based), at least 1.
    pub lap_limit: u16,
    /// Race time after which the leader's next crossing ends the race, in ticks.
    pub time_limit_ticks: Option<u64>,
    /// Ticks of countdown between the start request and the green light.
    pub countdown_ticks: u32,
    /// Ticks after the chequered flag after which cars still running are not classified as
    /// finished and the race ends.
    pub finish_timeout_ticks: u64,
}

impl Default for RaceRules {
    fn default() -> Self {
        Self {
            lap_limit: 3,
            time_limit_ticks: None,
            countdown_ticks: COUNTDOWN_TICKS,
            finish_timeout_ticks: 120 * u64::from(TICK_HZ),
        }
    }
}

/// State of a session (seed 003 `SessionState`).
#[derive(Component, Debug, Clone, PartialEq, Eq)]
pub enum RaceState {
    /// Players are joining.
    Lobby,
    /// Counting down to the green light.
    Countdown {
        /// Ticks left.
        remaining_ticks: u32,
    },
    /// Racing since `start_tick` (the green light; race time 0 is the end of that tick).
    Racing {
        /// Tick of the green light.
        start_tick: u64,
    },
    /// The race is over.
    Finished {
        /// Tick of the green light, if the race started.
        start_tick: Option<u64>,
        /// Tick at which it ended.
        end_tick: u64,
        /// Why.
        reason: FinishReason,
    },
}

impl RaceState {
    /// Tick of the green light, once the race has started.
    pub fn start_tick(&self) -> Option<u64> {
        match self {
            Self::Racing { start_tick } => Some(*start_tick),
            Self::Finished { start_tick, .. } => *start_tick,
            _ => None,
        }
    }
}

/// Progress of the classification of a session.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Classification {
    /// Tick (fractional) of the chequered flag: the winner's finishing crossing.
    pub chequered_tick: Option<f64>,
    /// Tick at which the time limit ran out, if it did.
    pub time_expired_tick: Option<u64>,
    /// Cars classified as finished so far.
    pub finishers: u8,
}

/// Finishing result of a car (seed 003 `finish_position`).
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct Finish {
    /// 1 = winner; `None` while racing or when not classified.
    pub position: Option<u8>,
    /// Race time at the finishing crossing in ticks (fractional), from the green light.
    pub race_ticks: Option<f64>,
}

/// A car took the chequered flag.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
pub struct CarFinished {
    /// The session.
    pub session: Entity,
    /// The car.
    pub car: Entity,
    /// Finishing position (1 = winner).
    pub position: u8,
    /// Race time in ticks (fractional).
    pub race_ticks: f64,
}

/// The race systems, in the order they run inside [`SimSystems::Race`].
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaceSystems {
    /// Start requests move sessions from the lobby into the countdown.
    Start,
    /// Line crossings become finishing positions.
    Classify,
    /// Countdowns run, the green light, time limits, the end of the race.
    Advance,
}

/// Moves sessions whose start was requested from Lobby to Countdown.
pub fn start_requested_races(
    mut requests: MessageReader<StartRace>,
    mut sessions: Query<(&RaceRules, &mut RaceState)>,
) {
    for request in requests.read() {
        if let Ok((rules, mut state)) = sessions.get_mut(request.session)
            && *state == RaceState::Lobby
        {
            *state = RaceState::Countdown {
                remaining_ticks: rules.countdown_ticks,
            };
        }
    }
}

/// Classifies cars that took the chequered flag this tick.
pub fn classify_finishers(
    mut laps: MessageReader<LapCompleted>,
    mut sessions: Query<(&RaceRules, &RaceState, &mut Classification)>,
    mut cars: Query<(&CarIndex, &mut Finish)>,
    mut finished: MessageWriter<CarFinished>,
    mut crossings: Local<Vec<(u64, f64, u8, u16, Entity, Entity)>>,
) {
    crossings.clear();
    for lap in laps.read() {
        if let Ok((_, RaceState::Racing { .. }, _)) = sessions.get(lap.session)
            && let Ok((index, finish)) = cars.get(lap.car)
            && finish.position.is_none()
        {
            crossings.push((
                lap.session.to_bits(),
                lap.crossing_tick,
                index.0,
                lap.lap,
                lap.session,
                lap.car,
            ));
        }
    }
    crossings.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
    for &(_, crossing, _, completed, session, car) in crossings.iter() {
        let Ok((rules, state, mut class)) = sessions.get_mut(session) else {
            continue;
        };
        let Some(start_tick) = state.start_tick() else {
            continue;
        };
        let Ok((_, mut finish)) = cars.get_mut(car) else {
            continue;
        };
        let flag_out = class.chequered_tick.is_some_and(|t| crossing >= t);
        let time_up = class.time_expired_tick.is_some();
        if !(flag_out || time_up || completed >= rules.lap_limit) {
            continue;
        }
        if class.chequered_tick.is_none() {
            class.chequered_tick = Some(crossing);
        }
        class.finishers += 1;
        let race_ticks = crossing - start_tick as f64;
        *finish = Finish {
            position: Some(class.finishers),
            race_ticks: Some(race_ticks),
        };
        finished.write(CarFinished {
            session,
            car,
            position: class.finishers,
            race_ticks,
        });
    }
}

/// Runs countdowns, turns the green light on (activating the session's cars), applies the time
/// limit and ends races.
pub fn advance_race_states(
    tick: Res<SimTick>,
    mut commands: Commands,
    mut sessions: Query<(
        Entity,
        &SessionId,
        &RaceRules,
        &mut RaceState,
        &mut Classification,
        &SessionCars,
    )>,
    mut timings: Query<&mut LapTiming>,
    mut started: MessageWriter<RaceStarted>,
    mut ended: MessageWriter<RaceFinished>,
) {
    for (session, id, rules, mut state, mut class, cars) in &mut sessions {
        match *state {
            RaceState::Countdown { remaining_ticks } if remaining_ticks > 1 => {
                *state = RaceState::Countdown {
                    remaining_ticks: remaining_ticks - 1,
                };
            }
            RaceState::Countdown { .. } => {
                *state = RaceState::Racing { start_tick: tick.0 };
                for &car in cars.cars() {
                    commands.entity(car).insert(Active);
                    if let Ok(mut timing) = timings.get_mut(car) {
                        timing.lap_start_tick = tick.0 as f64;
                    }
                }
                started.write(RaceStarted {
                    session,
                    tick: tick.0,
                });
                tracing::info!(session = %id.0, tick = tick.0, cars = cars.cars().len(), "green light");
            }
            RaceState::Racing { start_tick } => {
                let elapsed = tick.0 - start_tick;
                if class.time_expired_tick.is_none()
                    && rules.time_limit_ticks.is_some_and(|limit| elapsed >= limit)
                {
                    class.time_expired_tick = Some(tick.0);
                }
                let all_done = usize::from(class.finishers) >= cars.cars().len();
                let timed_out = class
                    .chequered_tick
                    .is_some_and(|t| tick.0 as f64 - t >= rules.finish_timeout_ticks as f64);
                let reason = if all_done {
                    FinishReason::AllFinished
                } else if timed_out {
                    FinishReason::FinishTimeout
                } else {
                    continue;
                };
                for &car in cars.cars() {
                    commands.entity(car).remove::<Active>();
                }
                ended.write(RaceFinished {
                    session,
                    reason: reason.clone(),
                    tick: tick.0,
                });
                tracing::info!(
                    session = %id.0,
                    tick = tick.0,
                    finishers = class.finishers,
                    ?reason,
                    "race finished"
                );
                *state = RaceState::Finished {
                    start_tick: Some(start_tick),
                    end_tick: tick.0,
                    reason,
                };
            }
            RaceState::Lobby | RaceState::Finished { .. } => {}
        }
    }
}

/// What to create a session with.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Stable id.
    pub id: Uuid,
    /// Track to race on.
    pub track: TrackId,
    /// Rules.
    pub rules: RaceRules,
}

/// Who drives a car.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DriverKind {
    /// The built-in AI at a pace (multiplier on its speed profile, about 0.9..=1.0).
    Ai {
        /// Pace multiplier.
        pace: f32,
    },
    /// A human over the network: controls come from the input queue.
    Human,
}

/// Why a car could not be spawned.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// The session entity does not exist or is not a session.
    #[error("session {0} does not exist")]
    NoSession(Entity),
    /// The session's track id is not in [`Tracks`].
    #[error("track {0:?} is not loaded")]
    NoTrack(TrackId),
    /// The session has no free grid slot.
    #[error("the grid is full: the track has {slots} slots")]
    GridFull {
        /// Slots on the track's grid.
        slots: usize,
    },
    /// The session is not in the lobby.
    #[error("the session has already started")]
    AlreadyStarted,
}

/// Speed profiles already computed, by track and car (AI cars of one model share one).
#[derive(Resource, Default)]
pub struct SpeedProfiles(Vec<(TrackId, [u32; 10], Arc<SpeedProfile>)>);

impl SpeedProfiles {
    /// Grip and brake share the AI plans with: a margin for the tyre limit.
    pub const GRIP_SHARE: f32 = 0.88;
    /// Share of the brakes the AI plans with.
    pub const BRAKE_SHARE: f32 = 0.8;

    fn get_or_build(
        &mut self,
        tracks: &Tracks,
        track: TrackId,
        spec: &CarSpec,
    ) -> Option<Arc<SpeedProfile>> {
        let key = spec_key(spec);
        if let Some((_, _, p)) = self.0.iter().find(|(t, k, _)| *t == track && *k == key) {
            return Some(p.clone());
        }
        let geometry = tracks.get(track)?;
        let profile = Arc::new(SpeedProfile::new(
            geometry,
            spec,
            Self::GRIP_SHARE,
            Self::BRAKE_SHARE,
        ));
        self.0.push((track, key, profile.clone()));
        Some(profile)
    }
}

fn spec_key(spec: &CarSpec) -> [u32; 10] {
    spec.to_array().map(f32::to_bits)
}

/// Creates a session in the lobby.
pub fn spawn_session(world: &mut World, config: SessionConfig) -> Entity {
    world
        .spawn((
            SessionId(config.id),
            config.track,
            config.rules,
            RaceState::Lobby,
            Classification::default(),
        ))
        .id()
}

/// Places a car on the next free grid slot of a session in the lobby.
///
/// # Errors
/// [`SpawnError`] when the session does not exist, has started, its track is not loaded or
/// its grid is full.
pub fn spawn_car(
    world: &mut World,
    session: Entity,
    spec: CarSpec,
    driver: DriverKind,
) -> Result<Entity, SpawnError> {
    let entity = world
        .get_entity(session)
        .map_err(|_| SpawnError::NoSession(session))?;
    let track_id = *entity
        .get::<TrackId>()
        .ok_or(SpawnError::NoSession(session))?;
    if entity.get::<RaceState>() != Some(&RaceState::Lobby) {
        return Err(SpawnError::AlreadyStarted);
    }
    let index = entity.get::<SessionCars>().map_or(0, |c| c.cars().len());
    world.init_resource::<Tracks>();
    world.init_resource::<SpeedProfiles>();
    let tracks = world.resource::<Tracks>();
    let track = tracks.get(track_id).ok_or(SpawnError::NoTrack(track_id))?;
    let slot = *track.grid_slots().get(index).ok_or(SpawnError::GridFull {
        slots: track.grid_slots().len(),
    })?;
    let progress = TrackProgress::place(track, slot.x_m, slot.y_m);
    let pose = Pose {
        x_m: slot.x_m,
        y_m: slot.y_m,
        yaw_rad: slot.yaw_rad,
    };
    let car = world
        .spawn((
            InSession(session),
            CarIndex(index as u8),
            track_id,
            spec,
            pose,
            progress,
        ))
        .id();
    match driver {
        DriverKind::Ai { pace } => {
            let profile = world.resource_scope(|world, mut profiles: Mut<SpeedProfiles>| {
                profiles.get_or_build(world.resource::<Tracks>(), track_id, &spec)
            });
            let profile = profile.ok_or(SpawnError::NoTrack(track_id))?;
            world
                .entity_mut(car)
                .insert((Simulated, AiDriver::new(profile, pace)));
        }
        DriverKind::Human => {
            world.entity_mut(car).insert(Simulated);
        }
    }
    Ok(car)
}

/// Ends a session's race from outside the rules (a fault, a server shutting down): the
/// session is finished with `reason` at the current tick, its cars stop being active, and
/// [`RaceFinished`] is written so the record systems close the open laps (as partial) on the
/// next tick. Returns `false`, doing nothing, when the session does not exist or is already
/// finished.
pub fn end_race(world: &mut World, session: Entity, reason: FinishReason) -> bool {
    let tick = world.get_resource::<SimTick>().map_or(0, |t| t.0);
    let Some(state) = world.get::<RaceState>(session).cloned() else {
        return false;
    };
    let start_tick = match state {
        RaceState::Finished { .. } => return false,
        RaceState::Racing { start_tick } => Some(start_tick),
        RaceState::Lobby | RaceState::Countdown { .. } => None,
    };
    let cars: Vec<Entity> = world
        .get::<SessionCars>(session)
        .map(|c| c.cars().to_vec())
        .unwrap_or_default();
    for car in cars {
        world.entity_mut(car).remove::<Active>();
    }
    if let Some(mut state) = world.get_mut::<RaceState>(session) {
        *state = RaceState::Finished {
            start_tick,
            end_tick: tick,
            reason: reason.clone(),
        };
    }
    world.write_message(RaceFinished {
        session,
        reason,
        tick,
    });
    true
}

/// Hands a car to the built-in AI at `pace` (a human who left or lost the connection: the car
/// races on instead of standing on the track).
///
/// # Errors
/// [`SpawnError::NoSession`] when the entity is not a car; [`SpawnError::NoTrack`] when its
/// track is not loaded.
pub fn hand_to_ai(world: &mut World, car: Entity, pace: f32) -> Result<(), SpawnError> {
    let entity = world
        .get_entity(car)
        .map_err(|_| SpawnError::NoSession(car))?;
    let (Some(&track_id), Some(&spec)) = (entity.get::<TrackId>(), entity.get::<CarSpec>()) else {
        return Err(SpawnError::NoSession(car));
    };
    world.init_resource::<SpeedProfiles>();
    let profile = world.resource_scope(|world, mut profiles: Mut<SpeedProfiles>| {
        profiles.get_or_build(world.resource::<Tracks>(), track_id, &spec)
    });
    let profile = profile.ok_or(SpawnError::NoTrack(track_id))?;
    world.entity_mut(car).insert(AiDriver::new(profile, pace));
    Ok(())
}

/// Order of the final classification: finishers by position, then the others by laps
/// completed and race distance (both descending). Input: `(finish position, laps completed,
/// race distance)` per car; output: indices into the input, winner first.
pub fn standings(cars: &[(Option<u8>, u16, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cars.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, la, da) = cars[a];
        let (pb, lb, db) = cars[b];
        match (pa, pb) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => lb.cmp(&la).then(db.total_cmp(&da)),
        }
    });
    order
}

/// Registers the race messages and systems in [`SimSystems::Race`].
pub struct RacePlugin;

impl Plugin for RacePlugin {
    fn build(&self, app: &mut App) {
        app.register_required_components::<Simulated, Finish>()
            .add_message::<StartRace>()
            .add_message::<RaceStarted>()
            .add_message::<CarFinished>()
            .add_message::<RaceFinished>()
            .init_resource::<SpeedProfiles>()
            .configure_sets(
                FixedUpdate,
                (
                    RaceSystems::Start,
                    RaceSystems::Classify,
                    RaceSystems::Advance,
                )
                    .chain()
                    .in_set(SimSystems::Race),
            )
            .add_systems(
                FixedUpdate,
                (
                    start_requested_races.in_set(RaceSystems::Start),
                    classify_finishers.in_set(RaceSystems::Classify),
                    advance_race_states.in_set(RaceSystems::Advance),
                ),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::car::Motion;

    #[test]
    fn standings_put_finishers_first_then_by_distance() {
        let cars = [
            (None, 2, 900.0),
            (Some(2), 3, 1500.0),
            (None, 2, 950.0),
            (Some(1), 3, 1400.0),
            (None, 1, 2000.0),
        ];
        assert_eq!(standings(&cars), vec![3, 1, 2, 0, 4]);
    }

    fn racing_pair() -> (crate::Simulation, Entity, Entity, Entity) {
        let mut sim = crate::Simulation::new(crate::SimulationPlugin { seed: 3 });
        let world = sim.world_mut();
        let track = world
            .resource_mut::<Tracks>()
            .add(crate::testing::rectangle_track(200.0, 80.0, 2.0, 14.0).with_grid(4));
        let session = spawn_session(
            world,
            SessionConfig {
                id: Uuid::nil(),
                track,
                rules: RaceRules::default(),
            },
        );
        let human =
            spawn_car(world, session, crate::testing::gt3(), DriverKind::Human).expect("slot");
        let ai = spawn_car(
            world,
            session,
            crate::testing::gt3(),
            DriverKind::Ai { pace: 0.95 },
        )
        .expect("slot");
        world.write_message(StartRace { session });
        for _ in 0..COUNTDOWN_TICKS + 240 {
            sim.step();
        }
        (sim, session, human, ai)
    }

    #[test]
    fn end_race_finishes_a_running_session_once_and_stops_its_cars() {
        let (mut sim, session, human, ai) = racing_pair();
        assert!(matches!(
            sim.world().get::<RaceState>(session),
            Some(RaceState::Racing { .. })
        ));
        let reason = FinishReason::Fault("drill".into());
        assert!(end_race(sim.world_mut(), session, reason.clone()));
        assert!(
            !end_race(sim.world_mut(), session, reason),
            "already finished"
        );
        match sim.world().get::<RaceState>(session) {
            Some(RaceState::Finished {
                reason, start_tick, ..
            }) => {
                assert_eq!(*reason, FinishReason::Fault("drill".into()));
                assert!(start_tick.is_some());
            }
            other => panic!("not finished: {other:?}"),
        }
        for car in [human, ai] {
            assert!(sim.world().get::<Active>(car).is_none());
        }
        // The record systems close the open laps (as partial) on the next tick.
        sim.step();
        let chunk = sim
            .world_mut()
            .resource_mut::<crate::record::RecordChunk>()
            .take();
        assert_eq!(chunk.closed.len(), 2);
        assert!(chunk.closed.iter().all(|c| !c.complete));
    }

    #[test]
    fn a_car_handed_to_the_ai_drives_on() {
        let (mut sim, _, human, _) = racing_pair();
        let before = sim
            .world()
            .get::<TrackProgress>(human)
            .expect("progress")
            .race_distance_m;
        let parked = sim.world().get::<Motion>(human).expect("motion").speed_mps;
        assert_eq!(parked, 0.0, "nobody drives the human car");
        hand_to_ai(sim.world_mut(), human, 0.95).expect("handed");
        for _ in 0..480 {
            sim.step();
        }
        let after = sim
            .world()
            .get::<TrackProgress>(human)
            .expect("progress")
            .race_distance_m;
        // From a standstill, 2 s at about 6 m/s² is about 12 m.
        assert!(
            after > before + 8.0,
            "the AI drove it from {before} to {after} m"
        );
        let speed = sim.world().get::<Motion>(human).expect("motion").speed_mps;
        assert!(speed > 8.0, "and it is accelerating: {speed} m/s");
        assert_eq!(
            hand_to_ai(sim.world_mut(), Entity::PLACEHOLDER, 1.0),
            Err(SpawnError::NoSession(Entity::PLACEHOLDER))
        );
    }
}
