//! ApexSim's simulation: components, messages, pure kernels and the bevy plugins that run them
//! at 240 Hz in `FixedUpdate`. No I/O, no async: the `apexsim` crate feeds inputs in through
//! [`SimSystems::Input`] and takes snapshots and recorded laps out; recordings are played back
//! into the same world by [`playback`].
//!
//! One [`World`] holds every session; session entities own their car
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
pub mod playback;
pub mod race;
pub mod record;
pub mod sim;
pub mod timing;
pub mod track;

#[cfg(test)]
pub(crate) mod testing;

pub use sim::{SimRng, SimSystems, SimTick, TICK_DT_S, TICK_HZ, advance_tick};

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
                playback::PlaybackPlugin,
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
        Active, CarIndex, CarSpec, Controls, Drivetrain, InSession, Motion, PlaybackDriven, Pose,
        SessionCars, Simulated,
    };
    pub use crate::collision::{CarsCollided, CollisionState};
    pub use crate::playback::{
        PlaybackFeed, RecordedLapState, RecordedLapTime, RecordedLapTimes, RecordedSample,
        end_feed, spawn_fed, spawn_recording,
    };
    pub use crate::race::{
        COUNTDOWN_TICKS, CarFinished, Classification, DriverKind, Finish, RaceRules, RaceState,
        SessionConfig, end_race, hand_to_ai, spawn_car, spawn_session, standings,
    };
    pub use crate::record::{
        LapAssembler, LapClosed, LapColumns, LapRecorder, RecordChunk, RecordedLap,
    };
    pub use crate::sim::{
        FinishReason, RaceFinished, RaceStarted, RecordedClock, SessionId, SimRng, SimSystems,
        SimTick, StartRace, TICK_DT_S, TICK_HZ,
    };
    pub use crate::timing::{LapCompleted, LapTiming, TrackProgress, ticks_to_seconds};
    pub use crate::track::{GridSlot, TrackGeometry, TrackId, Tracks};
    pub use crate::{Simulation, SimulationPlugin};
}
