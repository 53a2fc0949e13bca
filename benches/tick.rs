//! Tick benchmarks, each next to a plain struct-of-arrays loop doing the same work in the same
//! run, for 16 to 16,000 AI cars (sessions of 16 on the road course):
//!
//! - `tick/full`: the whole 240 Hz tick (`ecs`), and the empty tick; `soa` does the same per-car
//!   work by hand: the car ahead in each session, AI, physics, collisions within each session,
//!   progress and timing, and appending the record rows.
//! - `tick/kernels`: only AI (without the car ahead), physics and progress, as ECS systems and
//!   as a plain loop: the cost of the ECS itself on identical math.
//!
//! - `tick/served`: the tick as the server and the race runner run it (`ecs_archived`): every
//!   60 ticks the simulation thread swaps the record chunk with a spare and hands it to the
//!   recorder thread, which writes every session's write-ahead file (fsynced each second),
//!   assembles the laps and writes them as Parquet on the other core. Next to it, the same
//!   world whose chunk is only cleared (`ecs_cleared`) and the plain loop (`soa`).
//!
//! - `tick/archive_rate`: the same archived world in flush intervals of 60 ticks, the clock
//!   stopped only once the recorder has caught up: rows archived per second, sustained.
//!
//! `Throughput::Elements` is cars (rows for `tick/archive_rate`), so criterion's elements/s gives ns per car as its inverse.
//!
//! Outside `tick/served` the record chunk is emptied every 60 ticks, standing for the flush.

use std::path::Path;
use std::time::Duration;

use apexsim::archive::recorder::{RecordedCar, Recorder, RecorderMsg};
use apexsim::archive::wal::WalSync;
use apexsim::content::Content;
use apexsim::events::ArchiveWiring;
use apexsim_systems::ai::{AiDriver, CarAhead, drive};
use apexsim_systems::collision::{CONTACT_SPEED_FACTOR, Obb, obb_contact};
use apexsim_systems::physics::{integrate_cars, step_car};
use apexsim_systems::prelude::*;
use apexsim_systems::record::LapSample;
use apexsim_systems::timing::{advance_timing, track_progress};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::Schedule;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 4] = [16, 160, 1_600, 16_000];
const SESSION: usize = 16;

fn road_course() -> (TrackGeometry, CarSpec) {
    let report = Content::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("content"));
    let content = report.content;
    let track = content.track("road_course_a").expect("bundled track");
    let car = content.car("gt3_generic").expect("bundled car");
    (track.geometry.clone(), car.spec)
}

/// A simulation with `cars` AI cars in sessions of 16, two seconds into their races.
fn racing_world(cars: usize) -> Simulation {
    let (track, spec) = road_course();
    let mut sim = Simulation::new(SimulationPlugin { seed: 9 });
    let world = sim.world_mut();
    let track = world.resource_mut::<Tracks>().add(track);
    for s in 0..cars.div_ceil(SESSION) {
        let session = spawn_session(
            world,
            SessionConfig {
                id: uuid::Uuid::from_u64_pair(1, s as u64),
                track,
                rules: RaceRules {
                    lap_limit: 50,
                    countdown_ticks: 1,
                    ..RaceRules::default()
                },
            },
        );
        for _ in 0..SESSION.min(cars - s * SESSION) {
            let pace = world.resource_mut::<SimRng>().range_f32(0.94, 1.0);
            spawn_car(world, session, spec, DriverKind::Ai { pace }).expect("grid slot");
        }
        world.write_message(StartRace { session });
    }
    for _ in 0..2 * TICK_HZ {
        sim.step();
    }
    drain_records(sim.world_mut());
    sim
}

/// What the archive does every 60 ticks: take the buffered rows.
fn drain_records(world: &mut World) {
    world.resource_mut::<RecordChunk>().clear();
}

fn full_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick/full");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(20);
    {
        let mut sim = Simulation::new(SimulationPlugin::default());
        group.bench_function("empty", |b| b.iter(|| sim.step()));
    }
    for cars in SIZES {
        let mut sim = racing_world(cars);
        group.throughput(Throughput::Elements(cars as u64));
        bench_ecs_cleared(&mut group, "ecs", cars, &mut sim);
        bench_soa(&mut group, cars, &mut sim);
    }
    group.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The ECS tick, the record chunk emptied every 60 ticks.
fn bench_ecs_cleared(group: &mut Group<'_>, name: &str, cars: usize, sim: &mut Simulation) {
    let mut n = 0u32;
    group.bench_with_input(BenchmarkId::new(name, cars), &cars, |b, _| {
        b.iter(|| {
            sim.step();
            n += 1;
            if n.is_multiple_of(60) {
                drain_records(sim.world_mut());
            }
        })
    });
}

/// The plain loop doing the same work on a copy of the world's cars.
fn bench_soa(group: &mut Group<'_>, cars: usize, sim: &mut Simulation) {
    let mut soa = Soa::from_world(sim.world_mut());
    let track = track_of(sim.world());
    let mut tick = sim.tick();
    group.bench_with_input(BenchmarkId::new("soa", cars), &cars, |b, _| {
        b.iter(|| {
            tick += 1;
            soa.full_tick(&track, tick);
            if tick.is_multiple_of(60) {
                soa.record.clear();
            }
        })
    });
}

/// The AI kernel as a system without the neighbour search, to compare like with like.
fn drive_alone(
    tracks: Res<Tracks>,
    mut cars: Query<(
        &AiDriver,
        &CarSpec,
        &TrackId,
        &Pose,
        &Motion,
        &TrackProgress,
        &mut Controls,
    )>,
) {
    for (ai, spec, track, pose, motion, progress, mut controls) in &mut cars {
        if let Some(track) = tracks.get(*track) {
            *controls = drive(ai, spec, track, pose, motion, progress, None);
        }
    }
}

fn track_of(world: &World) -> TrackGeometry {
    world
        .resource::<Tracks>()
        .get(TrackId(0))
        .expect("track")
        .clone()
}

/// The same cars as plain arrays, sessions of 16 in order.
struct Soa {
    session: Vec<u32>,
    ahead: Vec<Option<CarAhead>>,
    colliding: Vec<bool>,
    radius: Vec<f32>,
    record: RecordChunk,
    spec: Vec<CarSpec>,
    ai: Vec<AiDriver>,
    pose: Vec<Pose>,
    motion: Vec<Motion>,
    controls: Vec<Controls>,
    progress: Vec<TrackProgress>,
    timing: Vec<LapTiming>,
}

impl Soa {
    fn from_world(world: &mut World) -> Self {
        let mut q = world.query::<(
            &InSession,
            &CarSpec,
            &AiDriver,
            &Pose,
            &Motion,
            &Controls,
            &TrackProgress,
            &LapTiming,
        )>();
        let mut soa = Soa {
            session: Vec::new(),
            ahead: Vec::new(),
            colliding: Vec::new(),
            radius: Vec::new(),
            record: RecordChunk::default(),
            spec: Vec::new(),
            ai: Vec::new(),
            pose: Vec::new(),
            motion: Vec::new(),
            controls: Vec::new(),
            progress: Vec::new(),
            timing: Vec::new(),
        };
        let mut sessions: Vec<Entity> = Vec::new();
        for (session, spec, ai, pose, motion, controls, progress, timing) in q.iter(world) {
            if sessions.last() != Some(&session.0) {
                sessions.push(session.0);
            }
            soa.session.push(sessions.len() as u32 - 1);
            soa.ahead.push(None);
            soa.colliding.push(false);
            soa.radius.push(0.5 * spec.length_m.hypot(spec.width_m));
            soa.spec.push(*spec);
            soa.ai.push(ai.clone());
            soa.pose.push(*pose);
            soa.motion.push(*motion);
            soa.controls.push(*controls);
            soa.progress.push(*progress);
            soa.timing.push(*timing);
        }
        soa
    }

    /// Everything the full ECS tick does per car, by hand.
    fn full_tick(&mut self, track: &TrackGeometry, tick: u64) {
        let n = self.pose.len();
        let len = track.length_m();
        // The car ahead in each session: sort the session's cars by distance.
        let mut start = 0;
        let mut by_dist: Vec<(f32, usize)> = Vec::with_capacity(16);
        while start < n {
            let mut end = start + 1;
            while end < n && self.session[end] == self.session[start] {
                end += 1;
            }
            by_dist.clear();
            by_dist.extend((start..end).map(|i| (self.progress[i].distance_m, i)));
            by_dist.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
            for k in 0..by_dist.len() {
                let me = by_dist[k].1;
                let other = by_dist[(k + 1) % by_dist.len()].1;
                self.ahead[me] = (by_dist.len() > 1).then(|| CarAhead {
                    gap_m: (self.progress[other].distance_m - self.progress[me].distance_m)
                        .rem_euclid(len),
                    speed_mps: self.motion[other].speed_mps,
                    lateral_offset_m: self.progress[other].lateral_m - self.progress[me].lateral_m,
                });
            }
            start = end;
        }
        for i in 0..n {
            self.controls[i] = drive(
                &self.ai[i],
                &self.spec[i],
                track,
                &self.pose[i],
                &self.motion[i],
                &self.progress[i],
                self.ahead[i],
            );
            step_car(
                &self.spec[i],
                &mut self.pose[i],
                &mut self.motion[i],
                &self.controls[i],
                TICK_DT_S,
            );
        }
        // Collisions within each session.
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && self.session[end] == self.session[start] {
                end += 1;
            }
            let mut now = [false; 16];
            for a in start..end {
                for b in a + 1..end {
                    let (sa, sb) = (&self.spec[a], &self.spec[b]);
                    let reach = self.radius[a] + self.radius[b];
                    let dx = self.pose[b].x_m - self.pose[a].x_m;
                    let dy = self.pose[b].y_m - self.pose[a].y_m;
                    if dx * dx + dy * dy >= reach * reach {
                        continue;
                    }
                    let Some(c) = obb_contact(
                        &Obb::of_car(&self.pose[a], sa),
                        &Obb::of_car(&self.pose[b], sb),
                    ) else {
                        continue;
                    };
                    let half = c.depth_m * 0.5;
                    self.pose[a].x_m -= c.normal[0] * half;
                    self.pose[a].y_m -= c.normal[1] * half;
                    self.pose[b].x_m += c.normal[0] * half;
                    self.pose[b].y_m += c.normal[1] * half;
                    now[a - start] = true;
                    now[b - start] = true;
                }
            }
            for i in start..end {
                if now[i - start] && !self.colliding[i] {
                    self.motion[i].speed_mps *= CONTACT_SPEED_FACTOR;
                }
                self.colliding[i] = now[i - start];
            }
            start = end;
        }
        for i in 0..n {
            advance_timing(
                track,
                &self.pose[i],
                &mut self.progress[i],
                &mut self.timing[i],
                tick,
            );
            self.record.car.push(Entity::PLACEHOLDER);
            self.record.lap.push(self.timing[i].lap);
            self.record.columns.push(&LapSample {
                tick,
                lap_time_s: ((tick as f64 - self.timing[i].lap_start_tick) / 240.0) as f32,
                distance_m: self.progress[i].distance_m,
                lateral_m: self.progress[i].lateral_m,
                speed_mps: self.motion[i].speed_mps,
                throttle: self.controls[i].throttle,
                brake: self.controls[i].brake,
                steering: self.controls[i].steering,
                gear: f32::NAN,
                rpm: f32::NAN,
                x_m: self.pose[i].x_m,
                y_m: self.pose[i].y_m,
                yaw_rad: self.pose[i].yaw_rad,
                long_accel_mps2: self.motion[i].long_accel_mps2,
                lat_accel_mps2: self.motion[i].lat_accel_mps2,
            });
        }
    }

    /// AI (without the car ahead), physics and progress only.
    fn tick(&mut self, track: &TrackGeometry, tick: u64) {
        for i in 0..self.pose.len() {
            self.controls[i] = drive(
                &self.ai[i],
                &self.spec[i],
                track,
                &self.pose[i],
                &self.motion[i],
                &self.progress[i],
                None,
            );
        }
        for i in 0..self.pose.len() {
            step_car(
                &self.spec[i],
                &mut self.pose[i],
                &mut self.motion[i],
                &self.controls[i],
                TICK_DT_S,
            );
        }
        for i in 0..self.pose.len() {
            advance_timing(
                track,
                &self.pose[i],
                &mut self.progress[i],
                &mut self.timing[i],
                tick,
            );
        }
    }
}

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick/kernels");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(20);
    for cars in SIZES {
        group.throughput(Throughput::Elements(cars as u64));
        let mut sim = racing_world(cars);
        let mut soa = Soa::from_world(sim.world_mut());
        let world = sim.world_mut();
        let mut schedule = Schedule::default();
        schedule.add_systems((drive_alone, integrate_cars, track_progress).chain());
        world.init_resource::<bevy_ecs::message::Messages<LapCompleted>>();
        let mut tick = world.resource::<SimTick>().0;
        group.bench_with_input(BenchmarkId::new("ecs", cars), &cars, |b, _| {
            b.iter(|| {
                world.resource_mut::<SimTick>().0 += 1;
                schedule.run(world);
            })
        });
        let track = track_of(world);
        group.bench_with_input(BenchmarkId::new("soa", cars), &cars, |b, _| {
            b.iter(|| {
                tick += 1;
                soa.tick(&track, tick);
            })
        });
    }
    group.finish();
}

/// The cost the record system adds to a tick: the same 1,600-car world with and without the
/// Record set.
fn record_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick/record");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    let cars = 1_600;
    group.throughput(Throughput::Elements(cars as u64));
    let mut with = racing_world(cars);
    let mut n = 0u32;
    group.bench_function(BenchmarkId::new("with_record", cars), |b| {
        b.iter(|| {
            with.step();
            n += 1;
            if n.is_multiple_of(60) {
                drain_records(with.world_mut());
            }
        })
    });
    let mut without = racing_world(cars);
    without
        .app_mut()
        .configure_sets(bevy_app::FixedUpdate, SimSystems::Record.run_if(|| false));
    group.bench_function(BenchmarkId::new("without_record", cars), |b| {
        b.iter(|| without.step())
    });
    group.finish();
}

/// Announces every session of the world to a recorder, as the server does at the start.
fn begin_sessions(world: &mut World, recorder: &Recorder) {
    use apexsim::archive::index::SessionRow;
    let mut cars: std::collections::BTreeMap<Entity, Vec<RecordedCar>> = Default::default();
    let mut q = world.query::<(Entity, &InSession, &CarIndex)>();
    for (entity, session, index) in q.iter(world) {
        cars.entry(session.0).or_default().push(RecordedCar {
            entity,
            index: index.0,
            driver: format!("AI {:02}", index.0 + 1),
            car_model: "GT3 Generic".into(),
        });
    }
    let length = track_of(world).length_m();
    for (session, cars) in cars {
        let id = world.get::<SessionId>(session).expect("session").0;
        recorder.send(RecorderMsg::Begin {
            row: SessionRow {
                id,
                source: "sim".into(),
                track: "road_course_a".into(),
                car_model: "GT3 Generic".into(),
                lap_limit: Some(50),
                seed: Some(9),
                started_at: 0,
                finished_at: None,
                sectors: Vec::new(),
                identity: None,
                template_id: None,
                ended_by: None,
                laps_pruned_at: None,
            },
            track_length_m: length,
            cars,
            ack: None,
        });
    }
}

/// `cars` racing in sessions of 16, each begun in an archive in a fresh directory, wired as the
/// server's writer is (lap metrics measured on the writer thread), with a 1 s fsync schedule.
fn archived_world(cars: usize) -> (tempfile::TempDir, Recorder, Simulation) {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = ArchiveWiring::default()
        .start_writer(dir.path())
        .expect("archive");
    let recorder =
        Recorder::start(writer, WalSync::Every(Duration::from_secs(1)), |_| {}).expect("recorder");
    let mut sim = racing_world(cars);
    begin_sessions(sim.world_mut(), &recorder);
    (dir, recorder, sim)
}

fn served_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick/served");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(20);
    for cars in SIZES {
        group.throughput(Throughput::Elements(cars as u64));
        let (_dir, recorder, mut sim) = archived_world(cars);
        let mut n = 0u32;
        group.bench_with_input(BenchmarkId::new("ecs_archived", cars), &cars, |b, _| {
            b.iter(|| {
                sim.step();
                n += 1;
                if n.is_multiple_of(60) {
                    recorder.flush(&mut sim.world_mut().resource_mut::<RecordChunk>());
                }
            })
        });
        let report = recorder.finish();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut plain = racing_world(cars);
        bench_ecs_cleared(&mut group, "ecs_cleared", cars, &mut plain);
        bench_soa(&mut group, cars, &mut plain);
    }
    group.finish();
}

/// The archive's sustained rate: each iteration is one flush interval (60 ticks and the swap),
/// and the clock stops only once the recorder has written every row it was handed, so a
/// sample cannot end with work still queued. Elements are rows (cars x 60).
fn archive_rate(c: &mut Criterion) {
    let mut group = c.benchmark_group("tick/archive_rate");
    group.measurement_time(Duration::from_secs(15));
    group.sample_size(10);
    for cars in [1_600, 16_000] {
        group.throughput(Throughput::Elements(cars as u64 * 60));
        let (_dir, recorder, mut sim) = archived_world(cars);
        group.bench_function(BenchmarkId::new("ecs_archived", cars), |b| {
            b.iter_custom(|iters| {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    for _ in 0..60 {
                        sim.step();
                    }
                    recorder.flush(&mut sim.world_mut().resource_mut::<RecordChunk>());
                }
                recorder.wait();
                started.elapsed()
            })
        });
        let report = recorder.finish();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    group.finish();
}

criterion_group!(
    benches,
    full_tick,
    kernels,
    record_cost,
    served_tick,
    archive_rate
);
criterion_main!(benches);
