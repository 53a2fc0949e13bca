//! Tick benchmarks: one full 240 Hz tick of the simulation for 16 to 16,000 AI cars (sessions
//! of 16 on the road course), the empty tick, and the per-car kernels (AI steering and speed,
//! physics, centerline projection and lap timing) run two ways in the same process: as ECS
//! systems and as a plain struct-of-arrays loop. `Throughput::Elements` is cars, so criterion's
//! elements/s gives ns per car as its inverse.
//!
//! The record chunk is emptied every 60 ticks, as the archive does when it flushes it.

use std::path::Path;
use std::time::Duration;

use apexsim::content::Content;
use apexsim_systems::ai::{AiDriver, drive};
use apexsim_systems::physics::{integrate_cars, step_car};
use apexsim_systems::prelude::*;
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
        let mut n = 0u32;
        group.throughput(Throughput::Elements(cars as u64));
        group.bench_with_input(BenchmarkId::from_parameter(cars), &cars, |b, _| {
            b.iter(|| {
                sim.step();
                n += 1;
                if n.is_multiple_of(60) {
                    drain_records(sim.world_mut());
                }
            })
        });
    }
    group.finish();
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

/// The same cars as plain arrays.
struct Soa {
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
            &CarSpec,
            &AiDriver,
            &Pose,
            &Motion,
            &Controls,
            &TrackProgress,
            &LapTiming,
        )>();
        let mut soa = Soa {
            spec: Vec::new(),
            ai: Vec::new(),
            pose: Vec::new(),
            motion: Vec::new(),
            controls: Vec::new(),
            progress: Vec::new(),
            timing: Vec::new(),
        };
        for (spec, ai, pose, motion, controls, progress, timing) in q.iter(world) {
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
        let track = world
            .resource::<Tracks>()
            .get(TrackId(0))
            .expect("track")
            .clone();
        group.bench_with_input(BenchmarkId::new("soa", cars), &cars, |b, _| {
            b.iter(|| {
                tick += 1;
                soa.tick(&track, tick);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, full_tick, kernels);
criterion_main!(benches);
