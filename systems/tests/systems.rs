//! System tests: a minimal simulation app, stepped one exact tick at a time, asserting on
//! components and messages.

use apexsim_systems::prelude::*;
use bevy_ecs::message::Messages;
use bevy_ecs::prelude::*;

/// A 100 m x 40 m anticlockwise loop (280 m), a point every 2 m, 12 m wide, 8 grid slots.
fn small_loop() -> TrackGeometry {
    let pts: Vec<[f32; 2]> = (0..140)
        .map(|i| {
            let d = i as f32 * 2.0;
            match d {
                d if d < 100.0 => [d, 0.0],
                d if d < 140.0 => [100.0, d - 100.0],
                d if d < 240.0 => [240.0 - d, 40.0],
                d => [0.0, 280.0 - d],
            }
        })
        .collect();
    TrackGeometry::new(pts, 12.0)
        .expect("valid loop")
        .with_grid(8)
}

/// A 1 km circle of radius ~159 m, 15 m wide.
fn circle() -> TrackGeometry {
    let r = 1000.0 / std::f32::consts::TAU;
    let pts = (0..500)
        .map(|i| {
            let a = -std::f32::consts::FRAC_PI_2 + i as f32 / 500.0 * std::f32::consts::TAU;
            [r * a.cos(), r * a.sin() + r]
        })
        .collect();
    TrackGeometry::new(pts, 15.0)
        .expect("valid circle")
        .with_grid(16)
}

fn setup(track: TrackGeometry, rules: RaceRules, cars: usize) -> (Simulation, Entity, Vec<Entity>) {
    let mut sim = Simulation::new(SimulationPlugin { seed: 3 });
    let world = sim.world_mut();
    let track = world.resource_mut::<Tracks>().add(track);
    let session = spawn_session(
        world,
        SessionConfig {
            id: uuid::Uuid::nil(),
            track,
            rules,
        },
    );
    let cars = (0..cars)
        .map(|_| {
            spawn_car(
                world,
                session,
                CarSpec::SEED_GT3,
                DriverKind::Ai { pace: 0.97 },
            )
            .expect("grid slot")
        })
        .collect();
    (sim, session, cars)
}

fn state(sim: &Simulation, session: Entity) -> RaceState {
    sim.world()
        .get::<RaceState>(session)
        .cloned()
        .expect("session")
}

#[test]
fn countdown_lasts_exactly_five_seconds_then_cars_move() {
    let (mut sim, session, cars) = setup(circle(), RaceRules::default(), 2);
    sim.step();
    assert_eq!(
        state(&sim, session),
        RaceState::Lobby,
        "nothing starts by itself"
    );
    sim.world_mut().write_message(StartRace { session });
    sim.step();
    let requested_at = sim.tick();
    assert!(matches!(state(&sim, session), RaceState::Countdown { .. }));
    // The countdown runs COUNTDOWN_TICKS ticks including the one that saw the request.
    for _ in 1..COUNTDOWN_TICKS {
        let pose = *sim.world().get::<Pose>(cars[0]).expect("car");
        sim.step();
        assert_eq!(
            sim.world().get::<Pose>(cars[0]),
            Some(&pose),
            "no motion before the green"
        );
        if sim.tick() < requested_at + u64::from(COUNTDOWN_TICKS) - 1 {
            assert!(matches!(state(&sim, session), RaceState::Countdown { .. }));
        }
    }
    let green = requested_at + u64::from(COUNTDOWN_TICKS) - 1;
    assert_eq!(
        state(&sim, session),
        RaceState::Racing { start_tick: green }
    );
    assert!(sim.world().get::<Active>(cars[0]).is_some());
    let before = *sim.world().get::<Pose>(cars[0]).expect("car");
    sim.step();
    let after = *sim.world().get::<Pose>(cars[0]).expect("car");
    assert_ne!(before, after, "AI drives off at the green");
}

#[test]
fn a_race_classifies_every_car_and_ends() {
    let rules = RaceRules {
        lap_limit: 2,
        ..RaceRules::default()
    };
    let (mut sim, session, cars) = setup(circle(), rules, 4);
    sim.world_mut().write_message(StartRace { session });
    let mut finished_msgs = Vec::new();
    let mut laps_seen = 0;
    for _ in 0..240 * 200 {
        sim.step();
        let w = sim.world();
        finished_msgs.extend(
            w.resource::<Messages<CarFinished>>()
                .iter_current_update_messages()
                .copied(),
        );
        laps_seen += w
            .resource::<Messages<LapCompleted>>()
            .iter_current_update_messages()
            .count();
        if matches!(state(&sim, session), RaceState::Finished { .. }) {
            break;
        }
    }
    let RaceState::Finished { reason, .. } = state(&sim, session) else {
        panic!("race did not end: {:?}", state(&sim, session));
    };
    assert_eq!(reason, FinishReason::AllFinished);
    assert_eq!(finished_msgs.len(), 4);
    assert_eq!(laps_seen, 8, "4 cars x 2 laps, no false laps");
    let mut positions: Vec<u8> = finished_msgs.iter().map(|f| f.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    // Positions follow race time.
    let mut by_pos = finished_msgs.clone();
    by_pos.sort_by_key(|f| f.position);
    assert!(
        by_pos
            .windows(2)
            .all(|w| w[0].race_ticks <= w[1].race_ticks)
    );
    for &car in &cars {
        assert!(
            sim.world().get::<Active>(car).is_none(),
            "finished cars are frozen"
        );
        let timing = sim.world().get::<LapTiming>(car).expect("timing");
        assert_eq!(timing.laps_completed(), 2);
        assert_eq!(timing.total_off_track_ticks, 0);
    }
}

#[test]
fn time_limit_ends_the_race_at_the_leaders_next_crossing() {
    let rules = RaceRules {
        lap_limit: 50,
        time_limit_ticks: Some(240 * 40),
        ..RaceRules::default()
    };
    let (mut sim, session, cars) = setup(circle(), rules, 3);
    sim.world_mut().write_message(StartRace { session });
    for _ in 0..240 * 300 {
        sim.step();
        if matches!(state(&sim, session), RaceState::Finished { .. }) {
            break;
        }
    }
    let RaceState::Finished {
        start_tick: Some(start),
        end_tick,
        ..
    } = state(&sim, session)
    else {
        panic!("race did not end: {:?}", state(&sim, session));
    };
    assert!(end_tick - start >= 240 * 40, "ran past the time limit");
    let winner = cars
        .iter()
        .filter_map(|&c| sim.world().get::<Finish>(c))
        .find(|f| f.position == Some(1))
        .expect("a winner");
    let race_s = ticks_to_seconds(winner.race_ticks.expect("time"));
    // Lap of a 1 km circle at ~30-40 m/s is 25-35 s: the flag falls within one lap of 40 s.
    assert!((40.0..80.0).contains(&race_s), "{race_s}");
}

#[test]
fn overlapping_cars_are_separated_and_slowed_once() {
    let (mut sim, session, cars) = setup(circle(), RaceRules::default(), 2);
    let world = sim.world_mut();
    // Put both cars side by side, 1.5 m apart (2 m wide boxes overlap by 0.5 m), at 20 m/s,
    // and remove the AI so the controls stay neutral.
    for (k, &car) in cars.iter().enumerate() {
        let mut e = world.entity_mut(car);
        e.remove::<AiDriver>();
        e.insert((
            Pose {
                x_m: 0.0,
                y_m: k as f32 * 1.5,
                yaw_rad: 0.0,
            },
            Motion {
                speed_mps: 20.0,
                ..Motion::default()
            },
            Active,
        ));
    }
    world
        .entity_mut(session)
        .insert(RaceState::Racing { start_tick: 0 });
    sim.step();
    let w = sim.world();
    let a = w.get::<CollisionState>(cars[0]).expect("state");
    let b = w.get::<CollisionState>(cars[1]).expect("state");
    assert!(a.is_colliding && b.is_colliding);
    assert_eq!((a.contacts, b.contacts), (1, 1));
    let collided = w.resource::<Messages<CarsCollided>>();
    assert_eq!(collided.iter_current_update_messages().count(), 1);
    let speed = w.get::<Motion>(cars[0]).expect("motion").speed_mps;
    assert!(
        speed < 20.0 * 0.8 + 0.01 && speed > 20.0 * 0.8 - 0.1,
        "{speed}"
    );
    let ya = w.get::<Pose>(cars[0]).expect("pose").y_m;
    let yb = w.get::<Pose>(cars[1]).expect("pose").y_m;
    assert!(
        (yb - ya - 2.0).abs() < 0.05,
        "separated to touching: {ya} {yb}"
    );
    // The next ticks: apart, no new contact, no further speed loss.
    sim.step();
    sim.step();
    let w = sim.world();
    assert!(
        !w.get::<CollisionState>(cars[0])
            .expect("state")
            .is_colliding
    );
    assert_eq!(w.get::<CollisionState>(cars[0]).expect("state").contacts, 1);
}

#[test]
fn cars_of_different_sessions_never_collide() {
    let mut sim = Simulation::new(SimulationPlugin::default());
    let world = sim.world_mut();
    let track = world.resource_mut::<Tracks>().add(circle());
    let mut cars = Vec::new();
    for _ in 0..2 {
        let session = spawn_session(
            world,
            SessionConfig {
                id: uuid::Uuid::new_v4(),
                track,
                rules: RaceRules::default(),
            },
        );
        let car = spawn_car(world, session, CarSpec::SEED_GT3, DriverKind::Human).expect("car");
        world.entity_mut(car).insert(Active);
        world
            .entity_mut(session)
            .insert(RaceState::Racing { start_tick: 0 });
        cars.push(car);
    }
    // Both on pole of their own session: the same spot.
    sim.step();
    for car in cars {
        assert!(
            !sim.world()
                .get::<CollisionState>(car)
                .expect("state")
                .is_colliding
        );
    }
}

#[test]
fn a_full_grid_rejects_one_more_car_and_a_started_session_rejects_all() {
    let (mut sim, session, cars) = setup(small_loop(), RaceRules::default(), 8);
    assert_eq!(cars.len(), 8);
    let world = sim.world_mut();
    assert_eq!(
        spawn_car(world, session, CarSpec::SEED_GT3, DriverKind::Human).err(),
        Some(apexsim_systems::race::SpawnError::GridFull { slots: 8 })
    );
    let indices: Vec<u8> = cars
        .iter()
        .map(|&c| world.get::<CarIndex>(c).expect("index").0)
        .collect();
    assert_eq!(indices, (0..8).collect::<Vec<u8>>());
    world.write_message(StartRace { session });
    sim.step();
    assert_eq!(
        spawn_car(
            sim.world_mut(),
            session,
            CarSpec::SEED_GT3,
            DriverKind::Human
        )
        .err(),
        Some(apexsim_systems::race::SpawnError::AlreadyStarted)
    );
}

/// The rows `range` of a chunk, with the lap ends `keep` selects.
fn part(
    chunk: &RecordChunk,
    range: std::ops::Range<usize>,
    keep: impl Fn(&LapClosed) -> bool,
) -> RecordChunk {
    let mut out = RecordChunk::default();
    for i in range {
        out.car.push(chunk.car[i]);
        out.lap.push(chunk.lap[i]);
        out.columns.push(&chunk.columns.row(i).expect("row"));
    }
    out.closed = chunk.closed.iter().filter(|c| keep(c)).copied().collect();
    out
}

#[test]
fn record_splits_rows_into_laps_at_the_line() {
    let rules = RaceRules {
        lap_limit: 2,
        ..RaceRules::default()
    };
    let (mut sim, session, _) = setup(circle(), rules, 1);
    sim.world_mut().write_message(StartRace { session });
    for _ in 0..240 * 120 {
        sim.step();
        if matches!(state(&sim, session), RaceState::Finished { .. }) {
            break;
        }
    }
    let chunk = sim.world_mut().resource_mut::<RecordChunk>().take();
    assert!(sim.world().resource::<RecordChunk>().is_empty());
    let mut assembler = LapAssembler::default();
    // Feed the chunk in two halves, as the archive would across flushes. The halfway row is
    // past the end of lap 0 and before the end of lap 1.
    let half = chunk.len() / 2;
    let first = part(&chunk, 0..half, |c| c.lap == 0);
    let second = part(&chunk, half..chunk.len(), |c| c.lap > 0);
    let mut laps = assembler.ingest(&first);
    laps.extend(assembler.ingest(&second));
    assert_eq!(assembler.open_laps(), 0, "every lap was closed");
    let whole = LapAssembler::default().ingest(&chunk);
    assert_eq!(
        laps, whole,
        "splitting the rows across chunks changes nothing"
    );
    let numbers: Vec<(u16, bool)> = laps.iter().map(|l| (l.lap, l.complete)).collect();
    assert_eq!(numbers, vec![(0, false), (1, true), (2, true)]);
    let lap1 = &laps[1];
    let t = lap1.lap_time_s.expect("complete lap has a time");
    // Rows are one per tick, so a lap of t seconds has t * 240 rows (within one).
    assert!(
        (lap1.columns.len() as f64 - t * 240.0).abs() <= 1.0,
        "{} rows for {t} s",
        lap1.columns.len()
    );
    // Distance runs from just after the line to just before it.
    let first = lap1.columns.row(0).expect("row");
    let last = lap1.columns.row(lap1.columns.len() - 1).expect("row");
    assert!(
        first.distance_m < 1.0 && last.distance_m > 999.0,
        "{first:?} {last:?}"
    );
    // Consecutive ticks, no gaps.
    assert!(lap1.columns.tick.windows(2).all(|w| w[1] == w[0] + 1));
}
