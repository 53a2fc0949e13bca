//! ApexSim's simulation: components, messages, pure kernels and the bevy plugins that run them
//! at 240 Hz in `FixedUpdate`. No I/O, no async: the `apexsim` crate feeds inputs in through
//! [`SimSystems::Input`] and takes telemetry and recorded laps out.
//!
//! One [`World`](bevy_ecs::world::World) holds every session; session entities own their car
//! entities through [`car::InSession`]. Every tick runs one chain of system sets:
//!
//! ```text
//! Input -> Ai -> Physics -> Collision -> Timing -> Race -> Record -> Snapshot
//! ```
//!
//! Simulation time is the tick counter [`SimTick`]; seconds are derived from ticks.
//! Randomness comes only from [`SimRng`]. Given the same content, seed and inputs, the state
//! after any number of ticks is bit-identical.
//!
//! ```
//! use apexsim_systems::prelude::*;
//!
//! let mut sim = Simulation::new(SimulationPlugin { seed: 7 });
//! let app = sim.app_mut();
//! // A 100 m x 40 m loop, 16 grid slots.
//! let pts: Vec<[f32; 2]> = (0..140)
//!     .map(|i| {
//!         let d = i as f32 * 2.0;
//!         match d {
//!             d if d < 100.0 => [d, 0.0],
//!             d if d < 140.0 => [100.0, d - 100.0],
//!             d if d < 240.0 => [240.0 - d, 40.0],
//!             d => [0.0, 280.0 - d],
//!         }
//!     })
//!     .collect();
//! let track = TrackGeometry::new(pts, 12.0).unwrap().with_grid(16);
//! let track = app.world_mut().resource_mut::<Tracks>().add(track);
//! let session = spawn_session(
//!     app.world_mut(),
//!     SessionConfig { id: uuid::Uuid::nil(), track, rules: RaceRules::default() },
//! );
//! spawn_car(app.world_mut(), session, CarSpec::SEED_GT3, DriverKind::Ai { pace: 0.95 }).unwrap();
//! app.world_mut().write_message(StartRace { session });
//! for _ in 0..2 * COUNTDOWN_TICKS {
//!     sim.step(); // exactly one 240 Hz tick
//! }
//! assert_eq!(sim.tick(), 2 * u64::from(COUNTDOWN_TICKS));
//! let car = sim.world_mut().query::<&Motion>().single(sim.world()).unwrap();
//! assert!(car.speed_mps > 10.0, "racing after the countdown");
//! ```

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;
use bevy_time::{Fixed, Time, TimePlugin, TimeUpdateStrategy};

pub mod ai;
pub mod car;
pub mod collision;
pub mod physics;
pub mod race;
pub mod record;
pub mod telemetry;
pub mod timing;
pub mod track;

#[cfg(test)]
pub(crate) mod testing;

/// Simulation rate in ticks per second.
pub const TICK_HZ: u32 = 240;

/// Length of one tick in seconds (as `f32`, for the per-tick kernels).
pub const TICK_DT_S: f32 = 1.0 / TICK_HZ as f32;

/// The chain of system sets that makes up one tick, in order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimSystems {
    /// Count the tick; drain network inputs or telemetry frames into components.
    Input,
    /// AI drivers set their controls.
    Ai,
    /// Physics integrates simulated cars.
    Physics,
    /// Cars of one session collide.
    Collision,
    /// Progress along the track and lap timing.
    Timing,
    /// Race state, finishing positions.
    Race,
    /// Lap buffers for the archive.
    Record,
    /// Telemetry snapshots for the network.
    Snapshot,
}

/// Ticks run since the world was created. The first tick is number 1.
#[derive(Resource, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimTick(pub u64);

/// The simulation's only source of randomness: SplitMix64, seeded once.
#[derive(Resource, Debug, Clone, PartialEq, Eq)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator from a seed.
    pub fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
}

/// Orders `order` (indices into per-car data) so that equal session keys are adjacent, and
/// returns each session's run as `start..end` in `runs`. When the cars are already grouped (as
/// they are when each session's cars were spawned together) nothing moves: grouping is checked
/// in O(n), with a sort of the run keys; otherwise a stable sort by key groups them.
pub(crate) fn group_by_session(
    order: &mut [u32],
    key: impl Fn(u32) -> u64,
    runs: &mut Vec<(u64, std::ops::Range<usize>)>,
) {
    let find_runs = |order: &[u32], runs: &mut Vec<(u64, std::ops::Range<usize>)>| {
        runs.clear();
        let mut start = 0;
        while start < order.len() {
            let k = key(order[start]);
            let mut end = start + 1;
            while end < order.len() && key(order[end]) == k {
                end += 1;
            }
            runs.push((k, start..end));
            start = end;
        }
    };
    find_runs(order, runs);
    // Runs in key order (the order sessions are processed in does not matter, only that it is
    // deterministic); a key that appears twice means a session's cars were not adjacent.
    runs.sort_unstable_by_key(|(k, r)| (*k, r.start));
    if runs.windows(2).any(|w| w[0].0 == w[1].0) {
        order.sort_by_key(|&i| key(i));
        find_runs(order, runs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_leaves_grouped_cars_in_place_and_groups_interleaved_ones() {
        let keys = [9u64, 9, 9, 4, 4, 7];
        let mut order: Vec<u32> = (0..6).collect();
        let mut runs = Vec::new();
        group_by_session(&mut order, |i| keys[i as usize], &mut runs);
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5], "already grouped: untouched");
        assert_eq!(runs, vec![(4, 3..5), (7, 5..6), (9, 0..3)]);

        let keys = [9u64, 4, 9, 4, 7, 9];
        let mut order: Vec<u32> = (0..6).collect();
        group_by_session(&mut order, |i| keys[i as usize], &mut runs);
        assert_eq!(order, vec![1, 3, 4, 0, 2, 5], "stable within a session");
        assert_eq!(runs, vec![(4, 0..2), (7, 2..3), (9, 3..6)]);
    }
}

/// Counts the tick.
pub fn advance_tick(mut tick: ResMut<SimTick>) {
    tick.0 += 1;
}

/// Everything needed to simulate: the fixed 240 Hz loop, the tick chain and every family.
///
/// Each [`App::update`] runs exactly one fixed tick (`TimeUpdateStrategy::FixedTimesteps(1)`):
/// the caller paces updates in real time or runs them back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimulationPlugin {
    /// Seed of [`SimRng`].
    pub seed: u64,
}

impl Plugin for SimulationPlugin {
    fn build(&self, app: &mut App) {
        if !app.is_plugin_added::<TimePlugin>() {
            app.add_plugins(TimePlugin);
        }
        app.insert_resource(Time::<Fixed>::from_hz(f64::from(TICK_HZ)))
            .insert_resource(TimeUpdateStrategy::FixedTimesteps(1))
            .insert_resource(SimRng::seeded(self.seed))
            .init_resource::<SimTick>()
            .init_resource::<track::Tracks>()
            .configure_sets(
                FixedUpdate,
                (
                    SimSystems::Input,
                    SimSystems::Ai,
                    SimSystems::Physics,
                    SimSystems::Collision,
                    SimSystems::Timing,
                    SimSystems::Race,
                    SimSystems::Record,
                    SimSystems::Snapshot,
                )
                    .chain(),
            )
            .add_systems(FixedUpdate, advance_tick.in_set(SimSystems::Input))
            .add_plugins((
                ai::AiPlugin,
                physics::PhysicsPlugin,
                collision::CollisionPlugin,
                timing::TimingPlugin,
                race::RacePlugin,
                record::RecordPlugin,
                telemetry::TelemetryPlugin,
            ));
    }
}

/// A headless app running [`SimulationPlugin`], stepped one tick at a time.
///
/// bevy's clock starts on the first [`App::update`] and runs no fixed tick then; `Simulation`
/// performs that first update when it is built, so every [`Simulation::step`] is one tick.
pub struct Simulation {
    app: App,
}

impl Simulation {
    /// Builds the app and starts its clock.
    pub fn new(plugin: SimulationPlugin) -> Self {
        let mut app = App::new();
        app.add_plugins(plugin);
        app.finish();
        app.cleanup();
        app.update();
        Self { app }
    }

    /// Runs one 240 Hz tick.
    pub fn step(&mut self) {
        self.app.update();
    }

    /// The tick counter.
    pub fn tick(&self) -> u64 {
        self.app.world().resource::<SimTick>().0
    }

    /// The world.
    pub fn world(&self) -> &World {
        self.app.world()
    }

    /// The world, mutably.
    pub fn world_mut(&mut self) -> &mut World {
        self.app.world_mut()
    }

    /// The app, to add systems or plugins.
    pub fn app_mut(&mut self) -> &mut App {
        &mut self.app
    }
}

/// The types most users need.
pub mod prelude {
    pub use crate::ai::{AiDriver, SpeedProfile, ideal_lap_time_s};
    pub use crate::car::{
        Active, CarIndex, CarSpec, Controls, Drivetrain, InSession, Motion, Pose, SessionCars,
        Simulated, TelemetryDriven,
    };
    pub use crate::collision::{CarsCollided, CollisionState};
    pub use crate::race::{
        COUNTDOWN_TICKS, CarFinished, Classification, DriverKind, Finish, FinishReason,
        RaceFinished, RaceRules, RaceStarted, RaceState, SessionConfig, SessionId, StartRace,
        end_race, hand_to_ai, spawn_car, spawn_session, standings,
    };
    pub use crate::record::{
        LapAssembler, LapClosed, LapColumns, LapRecorder, RecordChunk, RecordedLap,
    };
    pub use crate::telemetry::{
        RecordedClock, RecordedLapState, RecordedLapTime, RecordedLapTimes, RecordedSample,
        TelemetryFeed, end_feed, spawn_fed, spawn_recording,
    };
    pub use crate::timing::{LapCompleted, LapTiming, TrackProgress, ticks_to_seconds};
    pub use crate::track::{GridSlot, TrackGeometry, TrackId, Tracks};
    pub use crate::{
        SimRng, SimSystems, SimTick, Simulation, SimulationPlugin, TICK_DT_S, TICK_HZ,
    };
}
