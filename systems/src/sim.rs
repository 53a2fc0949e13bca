//! The ground every family stands on, below all of them: the tick (its rate, its counter and
//! the chain of system sets one tick runs), the seeded generator, a session's identity, the
//! race's start and finish messages, and a recorded car's clock. It imports no family.

use bevy_ecs::prelude::*;
use uuid::Uuid;

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

/// Counts the tick.
pub fn advance_tick(mut tick: ResMut<SimTick>) {
    tick.0 += 1;
}

/// Stable identity of a session (for the archive, the network and logs).
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub Uuid);

/// Why a race ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// Every car took the chequered flag.
    AllFinished,
    /// Some cars had not finished when the finish timeout ran out.
    FinishTimeout,
    /// The session was stopped by a fault; the message says what happened.
    Fault(String),
}

/// Request: start the countdown of a session in the lobby.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartRace {
    /// The session.
    pub session: Entity,
}

/// The green light of a session.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceStarted {
    /// The session.
    pub session: Entity,
    /// Tick of the green light.
    pub tick: u64,
}

/// A session's race ended.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct RaceFinished {
    /// The session.
    pub session: Entity,
    /// Why it ended.
    pub reason: FinishReason,
    /// Tick at which it ended.
    pub tick: u64,
}

/// The recording's clock for the sample the car shows now; the record system stamps rows with
/// it instead of the simulation tick.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct RecordedClock {
    /// Record number of the current sample.
    pub record: u64,
    /// Recording time of the current sample in seconds.
    pub time_s: f64,
}

impl RecordedClock {
    /// The clock in ticks (1/240 s), the unit of lap timing.
    pub fn ticks(&self) -> f64 {
        self.time_s * f64::from(TICK_HZ)
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
