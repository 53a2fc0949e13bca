//! Progress and timing: projects every active car onto its track's centerline (with the segment
//! cached from the previous tick), accumulates signed race distance, and detects lap
//! completions. Runs after collision, before the race rules.
//!
//! Lap detection works on the race distance, the signed distance travelled along the
//! centerline since the start line (negative on the grid). Lap `n` is complete the first time
//! race distance reaches `n * length`. A car that reverses over the line loses race distance and
//! must regain it before the line counts again, so reversing never produces a lap, and a lap
//! is never counted without a full lap of net progress.
//!
//! Times are in ticks, derived from the tick counter, and interpolated within the tick in which
//! the line was crossed (`crossing = tick - 1 + fraction`), never summed from durations.

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::{Active, InSession, Pose};
use crate::sim::{SimSystems, SimTick};
use crate::track::{TrackGeometry, TrackId, Tracks};

/// Largest plausible movement along the track in one tick, in metres (about 4,800 m/s at
/// 240 Hz): anything larger is a teleport (reset, tow, a corrupt sample) and invalidates the lap.
pub const MAX_STEP_M: f32 = 20.0;

/// Where a car is on its track.
#[derive(Component, Debug, Clone, Copy, PartialEq)]
pub struct TrackProgress {
    /// Distance along the centerline in metres, `0..length`.
    pub distance_m: f32,
    /// Signed distance from the centerline in metres, positive to the left.
    pub lateral_m: f32,
    /// Cached centerline segment, the starting point of next tick's projection.
    pub segment: u32,
    /// Net distance travelled along the track since the start line in metres
    /// (negative behind the line on the grid).
    pub race_distance_m: f64,
}

impl TrackProgress {
    /// Progress of a car placed at `(x, y)`: a full projection (no cached segment yet), with race
    /// distance measured from the start line the short way (so the grid is negative).
    pub fn place(track: &TrackGeometry, x_m: f32, y_m: f32) -> Self {
        let p = track.project(x_m, y_m);
        Self {
            distance_m: p.distance_m,
            lateral_m: p.lateral_m,
            segment: p.segment,
            race_distance_m: f64::from(track.progress_delta(0.0, p.distance_m)),
        }
    }

    /// Whether the car's centre is off the track surface (beyond half the width).
    pub fn is_off_track(&self, track: &TrackGeometry) -> bool {
        self.lateral_m.abs() > track.width_m() * 0.5
    }
}

/// Lap counting and times of one car. Times are in ticks (1/240 s), fractional.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct LapTiming {
    /// Current lap: 0 before the car first crosses the start line, then 1, 2, ...
    pub lap: u16,
    /// Tick (fractional) at which the current lap started.
    pub lap_start_tick: f64,
    /// Time of the last completed lap in ticks.
    pub last_lap_ticks: Option<f64>,
    /// Whether the last completed lap was valid.
    pub last_lap_valid: bool,
    /// Best valid lap in ticks.
    pub best_lap_ticks: Option<f64>,
    /// Whether the current lap is still valid (no off-track, no teleport).
    pub lap_valid: bool,
    /// Ticks spent off the track surface in the current lap.
    pub off_track_ticks: u32,
    /// Ticks spent off the track surface since the car spawned.
    pub total_off_track_ticks: u32,
    /// Tick (fractional) of the last line crossing that completed a lap.
    pub last_crossing_tick: Option<f64>,
}

impl LapTiming {
    /// Completed laps.
    pub fn laps_completed(&self) -> u16 {
        self.lap.saturating_sub(1)
    }
}

/// A car crossed the start line and completed a lap.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
pub struct LapCompleted {
    /// The car.
    pub car: Entity,
    /// Its session.
    pub session: Entity,
    /// The lap that was completed (1-based).
    pub lap: u16,
    /// Lap time in ticks (fractional).
    pub lap_ticks: f64,
    /// Tick (fractional) at which the line was crossed.
    pub crossing_tick: f64,
    /// Whether the lap was valid.
    pub valid: bool,
}

/// Convert ticks (possibly fractional) to seconds.
#[inline]
pub fn ticks_to_seconds(ticks: f64) -> f64 {
    ticks / f64::from(crate::sim::TICK_HZ)
}

/// What one timing step found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimingEvent {
    /// Nothing crossed.
    None,
    /// The car crossed the line for the first time and started lap 1.
    Started,
    /// The car completed a lap: `(lap, lap_ticks, crossing_tick, valid)`.
    Completed(u16, f64, f64, bool),
}

impl TimingEvent {
    /// The [`LapCompleted`] message of a completed lap of `car` in `session`.
    pub fn completed(self, car: Entity, session: Entity) -> Option<LapCompleted> {
        match self {
            Self::Completed(lap, lap_ticks, crossing_tick, valid) => Some(LapCompleted {
                car,
                session,
                lap,
                lap_ticks,
                crossing_tick,
                valid,
            }),
            Self::None | Self::Started => None,
        }
    }
}

/// Advances one car's progress and timing for the tick numbered `tick`, given its new position.
/// Pure: the system is a loop over this.
pub fn advance_timing(
    track: &TrackGeometry,
    pose: &Pose,
    progress: &mut TrackProgress,
    timing: &mut LapTiming,
    tick: u64,
) -> TimingEvent {
    let p = track.project_near(pose.x_m, pose.y_m, progress.segment);
    let delta = track.progress_delta(progress.distance_m, p.distance_m);
    let before = progress.race_distance_m;
    let after = before + f64::from(delta);
    *progress = TrackProgress {
        distance_m: p.distance_m,
        lateral_m: p.lateral_m,
        segment: p.segment,
        race_distance_m: after,
    };
    if delta.abs() > MAX_STEP_M {
        timing.lap_valid = false;
    }
    if progress.is_off_track(track) {
        timing.lap_valid = false;
        timing.off_track_ticks += 1;
        timing.total_off_track_ticks += 1;
    }

    let length = f64::from(track.length_m());
    // The line that ends lap `timing.lap` lies at `lap * length` (lap 0 ends at the line itself).
    let line = f64::from(timing.lap) * length;
    if after < line || before >= line {
        return TimingEvent::None;
    }
    let fraction = if after > before {
        (line - before) / (after - before)
    } else {
        1.0
    };
    let crossing = (tick as f64 - 1.0) + fraction;
    let event = if timing.lap == 0 {
        TimingEvent::Started
    } else {
        let lap_ticks = crossing - timing.lap_start_tick;
        let valid = timing.lap_valid;
        timing.last_lap_ticks = Some(lap_ticks);
        timing.last_lap_valid = valid;
        if valid && timing.best_lap_ticks.is_none_or(|b| lap_ticks < b) {
            timing.best_lap_ticks = Some(lap_ticks);
        }
        timing.last_crossing_tick = Some(crossing);
        TimingEvent::Completed(timing.lap, lap_ticks, crossing, valid)
    };
    timing.lap += 1;
    timing.lap_start_tick = crossing;
    timing.lap_valid = true;
    timing.off_track_ticks = 0;
    event
}

/// Projects every active car, updates its timing and reports completed laps.
pub fn track_progress(
    tick: Res<SimTick>,
    tracks: Res<Tracks>,
    mut cars: Query<
        (
            Entity,
            &InSession,
            &TrackId,
            &Pose,
            &mut TrackProgress,
            &mut LapTiming,
        ),
        With<Active>,
    >,
    mut laps: MessageWriter<LapCompleted>,
) {
    for (car, session, track_id, pose, mut progress, mut timing) in &mut cars {
        let Some(track) = tracks.get(*track_id) else {
            continue;
        };
        let event = advance_timing(track, pose, &mut progress, &mut timing, tick.0);
        if let Some(completed) = event.completed(car, session.0) {
            laps.write(completed);
        }
    }
}

/// The timing systems.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimingSystems {
    /// Projects cars and detects laps.
    Progress,
}

/// Registers progress and timing in [`SimSystems::Timing`] and the [`LapCompleted`] message.
pub struct TimingPlugin;

impl Plugin for TimingPlugin {
    fn build(&self, app: &mut App) {
        app.register_required_components::<InSession, LapTiming>()
            .add_message::<LapCompleted>()
            .configure_sets(
                FixedUpdate,
                TimingSystems::Progress.in_set(SimSystems::Timing),
            )
            .add_systems(FixedUpdate, track_progress.in_set(TimingSystems::Progress));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 400 m straight-sided loop: 100 m along +X and back 40 m higher, points every 2 m.
    fn track() -> TrackGeometry {
        crate::testing::rectangle_track(100.0, 40.0, 2.0, 12.0)
    }

    fn drive(
        track: &TrackGeometry,
        progress: &mut TrackProgress,
        timing: &mut LapTiming,
        tick: &mut u64,
        step_m: f32,
        steps: usize,
    ) -> Vec<TimingEvent> {
        let mut events = Vec::new();
        for _ in 0..steps {
            *tick += 1;
            let (p, _) = track.point_at(progress.distance_m + step_m);
            let pose = Pose {
                x_m: p[0],
                y_m: p[1],
                yaw_rad: 0.0,
            };
            let e = advance_timing(track, &pose, progress, timing, *tick);
            if e != TimingEvent::None {
                events.push(e);
            }
        }
        events
    }

    #[test]
    fn laps_are_counted_and_timed_from_the_line() {
        let t = track();
        let l = t.length_m();
        assert!((l - 280.0).abs() < 0.01, "{l}");
        // Start 10 m behind the line.
        let (p, _) = t.point_at(l - 10.0);
        let mut progress = TrackProgress::place(&t, p[0], p[1]);
        assert!((progress.race_distance_m + 10.0).abs() < 1e-3);
        let mut timing = LapTiming::default();
        let mut tick = 0;
        // 1 m per tick: the line at tick 10, lap 1 done at tick 290, lap 2 at 570.
        let events = drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 600);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], TimingEvent::Started);
        let TimingEvent::Completed(lap, ticks, crossing, valid) = events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(lap, 1);
        assert!(valid);
        assert!((ticks - 280.0).abs() < 1e-3, "{ticks}");
        assert!((crossing - 290.0).abs() < 1e-3, "{crossing}");
        assert_eq!(timing.lap, 3);
        assert_eq!(timing.laps_completed(), 2);
        assert!((timing.best_lap_ticks.unwrap_or(0.0) - 280.0).abs() < 1e-3);
    }

    #[test]
    fn crossing_is_interpolated_inside_the_tick() {
        let t = track();
        let (p, _) = t.point_at(t.length_m() - 0.75);
        let mut progress = TrackProgress::place(&t, p[0], p[1]);
        let mut timing = LapTiming::default();
        let mut tick = 100;
        // 1 m per tick from 0.75 m behind the line: crossed 3/4 of the way through tick 101.
        drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 1);
        assert_eq!(timing.lap, 1);
        assert!(
            (timing.lap_start_tick - 100.75).abs() < 1e-4,
            "{}",
            timing.lap_start_tick
        );
    }

    #[test]
    fn reversing_over_the_line_never_makes_a_lap() {
        let t = track();
        let (p, _) = t.point_at(t.length_m() - 5.0);
        let mut progress = TrackProgress::place(&t, p[0], p[1]);
        let mut timing = LapTiming::default();
        let mut tick = 0;
        // Cross, start lap 1, drive 150 m, reverse 160 m back over the line, forward again.
        drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 155);
        assert_eq!(timing.lap, 1);
        let back = drive(&t, &mut progress, &mut timing, &mut tick, -1.0, 160);
        assert!(back.is_empty(), "{back:?}");
        let fwd = drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 20);
        assert!(
            fwd.is_empty(),
            "re-crossing the line forwards is no lap: {fwd:?}"
        );
        assert_eq!(timing.lap, 1);
        // Back and forth across the line many times: still no lap.
        for _ in 0..10 {
            drive(&t, &mut progress, &mut timing, &mut tick, -1.0, 15);
            let e = drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 15);
            assert!(e.is_empty());
        }
        // A full lap forward from where the car is now completes lap 1 exactly once.
        let e = drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 290);
        assert_eq!(e.len(), 1, "{e:?}");
    }

    proptest::proptest! {
        /// Whatever a car does (forwards, backwards, stopping, across the line in either
        /// direction), the laps counted are exactly the multiples of the lap length that its
        /// race distance has ever reached: never a lap without a full lap of net progress.
        #[test]
        fn laps_are_the_full_laps_of_net_progress(
            steps in proptest::collection::vec(-1.0f32..1.5, 1..3000),
        ) {
            let t = crate::testing::circle_track(40.0, 120, 12.0);
            let (p, _) = t.point_at(t.length_m() - 3.0);
            let mut progress = TrackProgress::place(&t, p[0], p[1]);
            let mut timing = LapTiming::default();
            let mut max_distance = progress.race_distance_m;
            let mut completed = 0u16;
            for (k, step) in steps.iter().enumerate() {
                let (p, _) = t.point_at(progress.distance_m + step);
                let pose = Pose { x_m: p[0], y_m: p[1], yaw_rad: 0.0 };
                if let TimingEvent::Completed(lap, ..) =
                    advance_timing(&t, &pose, &mut progress, &mut timing, k as u64 + 1)
                {
                    completed += 1;
                    proptest::prop_assert_eq!(lap, completed);
                }
                max_distance = max_distance.max(progress.race_distance_m);
            }
            let length = f64::from(t.length_m());
            let expected = (max_distance / length).floor().max(0.0) as u16;
            proptest::prop_assert_eq!(completed, expected);
            proptest::prop_assert_eq!(timing.lap > 0, max_distance >= 0.0);
        }
    }

    #[test]
    fn off_track_and_teleport_invalidate_the_lap() {
        let t = track();
        let (p, _) = t.point_at(t.length_m() - 1.0);
        let mut progress = TrackProgress::place(&t, p[0], p[1]);
        let mut timing = LapTiming::default();
        let mut tick = 0;
        drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 50);
        // Step 7 m off the centerline of a 12 m wide track.
        let (p, _) = t.point_at(progress.distance_m + 1.0);
        tick += 1;
        advance_timing(
            &t,
            &Pose {
                x_m: p[0],
                y_m: p[1] - 7.0,
                yaw_rad: 0.0,
            },
            &mut progress,
            &mut timing,
            tick,
        );
        assert!(!timing.lap_valid);
        assert_eq!(timing.off_track_ticks, 1);
        let e = drive(&t, &mut progress, &mut timing, &mut tick, 1.0, 300);
        assert!(
            matches!(e[0], TimingEvent::Completed(1, _, _, false)),
            "{e:?}"
        );
        assert!(
            timing.best_lap_ticks.is_none(),
            "an invalid lap is never the best"
        );
        assert!(timing.lap_valid, "the next lap starts valid");
        // Teleport 30 m along the track in one tick.
        drive(&t, &mut progress, &mut timing, &mut tick, 30.0, 1);
        assert!(!timing.lap_valid);
    }
}
