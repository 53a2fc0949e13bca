//! Playback of recorded laps: a recording (an iRacing file, or live iRacing telemetry) sets a
//! car's state each tick instead of physics, and laps are detected on the recording's own lap distance and
//! clock. The record system then records these cars exactly like simulated ones.
//!
//! One tick consumes one recorded sample. Lap times are kept in [`LapTiming`] in the common
//! tick unit (1/240 s) converted from the recording's clock, so everything downstream of timing
//! reads simulated and recorded laps the same way.
//!
//! A lap is complete between two forward wraps of the lap distance (from above 0.9 to below
//! 0.1 of the lap). It is valid when nothing in between breaks it: a time gap of more than
//! 2.5 recording ticks, a jump in lap distance (reset, tow, a corrupt sample) or the lap
//! counter changing away from the line, pit road, or a recorded off-track. The official time
//! is the recording's own last-lap time once it shows a fresh value (it stays stale for about
//! a second after the line, and is -1 after an out-lap), else the time between the two
//! crossings, each interpolated inside its sample.

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::{Active, Controls, Drivetrain, InSession, Motion, PlaybackDriven, Pose};
use crate::sim::{RecordedClock, SessionId, SimSystems, TICK_HZ};
use crate::timing::{LapCompleted, LapTiming, TimingEvent, TimingSystems, TrackProgress};

/// One recorded sample, in ApexSim's units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecordedSample {
    /// Record number in the recording (0-based).
    pub record: u64,
    /// The recording's clock in seconds.
    pub time_s: f64,
    /// The recording's lap counter (iRacing counts across the whole session).
    pub lap: i32,
    /// Distance along the lap, 0..1.
    pub lap_dist_pct: f32,
    /// Distance along the lap in metres.
    pub lap_dist_m: f32,
    /// The recording's last-lap time in seconds (stale or -1 right after the line).
    pub last_lap_time_s: f32,
    /// Speed in m/s.
    pub speed_mps: f32,
    /// Throttle 0..=1.
    pub throttle: f32,
    /// Brake 0..=1.
    pub brake: f32,
    /// Steering -1 (left) ..= 1 (right).
    pub steering: f32,
    /// Gear: -1 reverse, 0 neutral, 1...
    pub gear: i8,
    /// Engine speed in rev/min.
    pub rpm: f32,
    /// Local X in metres.
    pub x_m: f32,
    /// Local Y in metres.
    pub y_m: f32,
    /// Heading in radians.
    pub yaw_rad: f32,
    /// Longitudinal acceleration in m/s².
    pub long_accel_mps2: f32,
    /// Lateral acceleration in m/s².
    pub lat_accel_mps2: f32,
    /// On pit road.
    pub on_pit_road: bool,
    /// Recorded as off the track surface (when the recording says so).
    pub off_track: bool,
}

/// The samples still to play into a telemetry-driven car, one per tick. A recording's feed
/// holds all its samples; a live feed is open: samples are pushed as they arrive (one per
/// tick) until it is closed.
#[derive(Component, Debug, Clone, Default)]
pub struct PlaybackFeed {
    samples: Vec<RecordedSample>,
    next: usize,
    open: bool,
}

impl PlaybackFeed {
    /// A feed of these samples, in order.
    pub fn new(samples: Vec<RecordedSample>) -> Self {
        Self {
            samples,
            next: 0,
            open: false,
        }
    }

    /// An open feed, for live telemetry.
    pub fn live() -> Self {
        Self {
            open: true,
            ..Self::default()
        }
    }

    /// Adds a sample to an open feed (played samples are dropped).
    pub fn push(&mut self, sample: RecordedSample) {
        if self.next > 0 && self.next == self.samples.len() {
            // Keep the last played sample: timing reads it.
            let last = self.samples[self.next - 1];
            self.samples.clear();
            self.samples.push(last);
            self.next = 1;
        }
        self.samples.push(sample);
    }

    /// Closes an open feed: once played out, the car stops.
    pub fn close(&mut self) {
        self.open = false;
    }

    /// Whether every sample was played and no more will come.
    pub fn is_done(&self) -> bool {
        !self.open && self.next >= self.samples.len()
    }
}

/// Why a recorded lap is not valid (bit set).
pub mod reason {
    /// A gap in the recording's clock longer than 2.5 recording ticks (or a clock going back).
    pub const TIME_GAP: u8 = 1;
    /// The lap distance jumped (reset, tow, corrupt sample) or ran backwards over the line.
    pub const JUMP: u8 = 2;
    /// The lap counter changed away from the line.
    pub const LAP_COUNTER: u8 = 4;
    /// The car was on pit road.
    pub const PIT_ROAD: u8 = 8;
    /// The recording marks the car off the track surface.
    pub const OFF_TRACK: u8 = 16;

    /// Names of the bits set in `reasons`, for reports.
    pub fn names(reasons: u8) -> Vec<&'static str> {
        [
            (TIME_GAP, "time gap"),
            (JUMP, "jump"),
            (LAP_COUNTER, "lap counter"),
            (PIT_ROAD, "pit road"),
            (OFF_TRACK, "off track"),
        ]
        .into_iter()
        .filter(|(bit, _)| reasons & bit != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

/// Largest change of lap distance between two samples that is still driving (a fraction of the
/// lap): 2 % is 100 m on a 5 km track in one sample.
pub const MAX_PCT_STEP: f32 = 0.02;

/// How long after the line the recording's last-lap time may take to show the new lap.
pub const OFFICIAL_WAIT_S: f64 = 3.0;

/// The recording's last-lap time is taken only within this many seconds of the samples' time.
pub const OFFICIAL_TOLERANCE_S: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct PendingLap {
    lap: u16,
    recorded_lap: i32,
    start_record: u64,
    end_record: u64,
    sample_s: f64,
    stale_s: f32,
    deadline_s: f64,
    reasons: u8,
}

/// Lap detection state of a telemetry-driven car.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct RecordedLapState {
    /// Largest step of the recording's clock that is not a gap, in seconds.
    pub max_step_s: f64,
    /// Lap length in metres.
    pub track_length_m: f32,
    prev: Option<RecordedSample>,
    recorded_lap: i32,
    start_record: u64,
    reasons: u8,
    pending: Option<PendingLap>,
}

impl RecordedLapState {
    /// State for a recording sampled at `hz` on a lap of `track_length_m`.
    pub fn new(hz: f64, track_length_m: f32) -> Self {
        Self {
            max_step_s: 2.5 / hz.max(1.0),
            track_length_m,
            prev: None,
            recorded_lap: 0,
            start_record: 0,
            reasons: 0,
            pending: None,
        }
    }
}

/// A completed recorded lap with its official time, known once the recording showed it (or
/// when it could not: then the time is the samples').
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordedLapTime {
    /// The car.
    pub car: Entity,
    /// Lap number in [`LapTiming`] (1 = first lap from line to line).
    pub lap: u16,
    /// The recording's lap counter during the lap.
    pub recorded_lap: i32,
    /// First record of the lap.
    pub start_record: u64,
    /// First record after the lap.
    pub end_record: u64,
    /// Time between the two crossings, from the samples, in seconds.
    pub sample_s: f64,
    /// The recording's own time for the lap, when it showed one that agrees with the samples.
    pub official_s: Option<f32>,
    /// Why the lap is invalid ([`reason`] bits); 0 = valid.
    pub reasons: u8,
}

impl RecordedLapTime {
    /// The lap's time: the recording's own when it has one, else the samples'.
    pub fn time_s(&self) -> f64 {
        self.official_s.map_or(self.sample_s, f64::from)
    }

    /// Whether the lap is valid.
    pub fn valid(&self) -> bool {
        self.reasons == 0
    }
}

/// Completed recorded laps, in the order their times became known. Drained by whoever archives
/// them.
#[derive(Resource, Debug, Default)]
pub struct RecordedLapTimes(pub Vec<RecordedLapTime>);

/// Advances one telemetry-driven car by one sample. Pure: the system is a loop over this.
/// Returns the timing event and a lap whose official time became known.
pub fn advance_recorded(
    state: &mut RecordedLapState,
    s: &RecordedSample,
    progress: &mut TrackProgress,
    timing: &mut LapTiming,
) -> (TimingEvent, Option<PendingLapTime>) {
    let length = f64::from(state.track_length_m.max(1.0));
    *progress = TrackProgress {
        distance_m: s.lap_dist_m,
        lateral_m: f32::NAN,
        segment: 0,
        race_distance_m: (f64::from(timing.lap) - 1.0 + f64::from(s.lap_dist_pct)) * length,
    };
    let Some(prev) = state.prev.replace(*s) else {
        state.recorded_lap = s.lap;
        state.start_record = s.record;
        state.reasons = flags_of(s);
        return (TimingEvent::None, None);
    };
    let dt = s.time_s - prev.time_s;
    if !(dt > 0.0 && dt <= state.max_step_s) {
        state.reasons |= reason::TIME_GAP;
    }
    let forward_wrap = prev.lap_dist_pct > 0.9 && s.lap_dist_pct < 0.1;
    let backward_wrap = prev.lap_dist_pct < 0.1 && s.lap_dist_pct > 0.9;
    let step = (s.lap_dist_pct - prev.lap_dist_pct).abs();
    // A NaN step is a jump too.
    let driving = step <= MAX_PCT_STEP;
    if backward_wrap || (!forward_wrap && !driving) {
        state.reasons |= reason::JUMP;
    }
    if !forward_wrap && s.lap != prev.lap {
        state.reasons |= reason::LAP_COUNTER;
    }
    state.reasons |= flags_of(s);
    if s.off_track {
        timing.off_track_ticks += 1;
        timing.total_off_track_ticks += 1;
    }

    let mut event = TimingEvent::None;
    let mut done = None;
    if forward_wrap {
        // A lap still waiting for its official time when the next one ends keeps the samples'.
        done = state.pending.take().map(|p| p.resolve(None));
        let span = f64::from(s.lap_dist_pct) + 1.0 - f64::from(prev.lap_dist_pct);
        let fraction = (1.0 - f64::from(prev.lap_dist_pct)) / span.max(f64::EPSILON);
        let crossing_s = prev.time_s + fraction * dt.max(0.0);
        let crossing = crossing_s * f64::from(TICK_HZ);
        if timing.lap == 0 {
            event = TimingEvent::Started;
        } else {
            let lap_ticks = crossing - timing.lap_start_tick;
            let valid = state.reasons == 0;
            timing.last_lap_ticks = Some(lap_ticks);
            timing.last_lap_valid = valid;
            if valid && timing.best_lap_ticks.is_none_or(|b| lap_ticks < b) {
                timing.best_lap_ticks = Some(lap_ticks);
            }
            timing.last_crossing_tick = Some(crossing);
            event = TimingEvent::Completed(timing.lap, lap_ticks, crossing, valid);
            state.pending = Some(PendingLap {
                lap: timing.lap,
                recorded_lap: state.recorded_lap,
                start_record: state.start_record,
                end_record: s.record,
                sample_s: lap_ticks / f64::from(TICK_HZ),
                stale_s: prev.last_lap_time_s,
                deadline_s: s.time_s + OFFICIAL_WAIT_S,
                reasons: state.reasons,
            });
        }
        // A hostile recording can wrap its lap distance on every other sample: the counter
        // stops at its top instead of overflowing.
        timing.lap = timing.lap.saturating_add(1);
        timing.lap_start_tick = crossing;
        timing.off_track_ticks = 0;
        state.recorded_lap = s.lap;
        state.start_record = s.record;
        state.reasons = flags_of(s);
    }
    timing.lap_valid = state.reasons == 0;

    if let Some(p) = state.pending {
        let shown = s.last_lap_time_s;
        if shown > 0.0 && shown != p.stale_s {
            let agrees = (f64::from(shown) - p.sample_s).abs() <= OFFICIAL_TOLERANCE_S;
            state.pending = None;
            done = Some(p.resolve(agrees.then_some(shown)));
        } else if s.time_s > p.deadline_s {
            state.pending = None;
            done = Some(p.resolve(None));
        }
    }
    (event, done)
}

/// A lap whose time is known, before the car it belongs to is attached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PendingLapTime(RecordedLapTime);

impl PendingLap {
    fn resolve(self, official_s: Option<f32>) -> PendingLapTime {
        PendingLapTime(RecordedLapTime {
            car: Entity::PLACEHOLDER,
            lap: self.lap,
            recorded_lap: self.recorded_lap,
            start_record: self.start_record,
            end_record: self.end_record,
            sample_s: self.sample_s,
            official_s,
            reasons: self.reasons,
        })
    }
}

impl PendingLapTime {
    /// The lap, attached to its car.
    pub fn of(self, car: Entity) -> RecordedLapTime {
        RecordedLapTime { car, ..self.0 }
    }
}

/// The recording ended: a lap still waiting for its official time keeps the samples'.
pub fn finish_recorded(state: &mut RecordedLapState) -> Option<PendingLapTime> {
    state.pending.take().map(|p| p.resolve(None))
}

/// Ends a live car's feed: it stops, and a lap still waiting for its official time is handed
/// out with the samples' time (into [`RecordedLapTimes`]).
pub fn end_feed(world: &mut World, car: Entity) {
    if let Some(mut feed) = world.get_mut::<PlaybackFeed>(car) {
        feed.close();
    }
    world.entity_mut(car).remove::<Active>();
    let last = world
        .get_mut::<RecordedLapState>(car)
        .and_then(|mut state| finish_recorded(&mut state));
    if let Some(last) = last {
        world.init_resource::<RecordedLapTimes>();
        world
            .resource_mut::<RecordedLapTimes>()
            .0
            .push(last.of(car));
    }
}

fn flags_of(s: &RecordedSample) -> u8 {
    let mut r = 0;
    if s.on_pit_road {
        r |= reason::PIT_ROAD;
    }
    if s.off_track {
        r |= reason::OFF_TRACK;
    }
    r
}

/// Plays the next sample into every telemetry-driven car; a car whose feed is done stops being
/// active (it is no longer timed or recorded).
pub fn feed_playback(
    mut commands: Commands,
    mut cars: Query<
        (
            Entity,
            &mut PlaybackFeed,
            &mut RecordedClock,
            &mut Pose,
            &mut Motion,
            &mut Controls,
            &mut Drivetrain,
        ),
        (With<PlaybackDriven>, With<Active>),
    >,
) {
    for (car, mut feed, mut clock, mut pose, mut motion, mut controls, mut drive) in &mut cars {
        let Some(s) = feed.samples.get(feed.next).copied() else {
            if !feed.open {
                commands.entity(car).remove::<Active>();
            }
            continue;
        };
        feed.next += 1;
        *clock = RecordedClock {
            record: s.record,
            time_s: s.time_s,
        };
        *pose = Pose {
            x_m: s.x_m,
            y_m: s.y_m,
            yaw_rad: s.yaw_rad,
        };
        motion.speed_mps = s.speed_mps;
        motion.long_accel_mps2 = s.long_accel_mps2;
        motion.lat_accel_mps2 = s.lat_accel_mps2;
        controls.throttle = s.throttle;
        controls.brake = s.brake;
        controls.steering = s.steering;
        *drive = Drivetrain {
            gear: s.gear,
            rpm: s.rpm,
        };
    }
}

/// Detects laps of telemetry-driven cars from their current sample.
pub fn recorded_progress(
    mut cars: Query<
        (
            Entity,
            &InSession,
            &PlaybackFeed,
            &mut RecordedLapState,
            &mut TrackProgress,
            &mut LapTiming,
        ),
        (With<PlaybackDriven>, With<Active>),
    >,
    mut times: ResMut<RecordedLapTimes>,
    mut laps: bevy_ecs::message::MessageWriter<LapCompleted>,
) {
    for (car, session, feed, mut state, mut progress, mut timing) in &mut cars {
        let Some(s) = feed.next.checked_sub(1).and_then(|i| feed.samples.get(i)) else {
            continue;
        };
        // A sample already played (no new one this tick) is not played again.
        if state.prev.is_none_or(|p| p.record != s.record) {
            let (event, done) = advance_recorded(&mut state, s, &mut progress, &mut timing);
            if let Some(completed) = event.completed(car, session.0) {
                laps.write(completed);
            }
            times.0.extend(done.map(|d| d.of(car)));
        }
        if feed.is_done()
            && let Some(last) = finish_recorded(&mut state)
        {
            times.0.push(last.of(car));
        }
    }
}

/// The telemetry systems.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaybackSystems {
    /// Plays samples into cars.
    Feed,
    /// Detects recorded laps.
    Progress,
}

/// Registers [`feed_playback`] in [`SimSystems::Input`] and [`recorded_progress`] beside the
/// simulated cars' progress in [`SimSystems::Timing`].
pub struct PlaybackPlugin;

impl Plugin for PlaybackPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<RecordedLapTimes>()
            .configure_sets(FixedUpdate, PlaybackSystems::Feed.in_set(SimSystems::Input))
            .configure_sets(
                FixedUpdate,
                PlaybackSystems::Progress.in_set(TimingSystems::Progress),
            )
            .add_systems(
                FixedUpdate,
                (
                    feed_playback.in_set(PlaybackSystems::Feed),
                    recorded_progress.in_set(PlaybackSystems::Progress),
                ),
            );
    }
}

/// Spawns a session holding one telemetry-driven car that plays `samples` (recorded at `hz` on
/// a lap of `track_length_m`), active from the next tick. Returns `(session, car)`.
pub fn spawn_recording(
    world: &mut World,
    id: uuid::Uuid,
    samples: Vec<RecordedSample>,
    hz: f64,
    track_length_m: f32,
) -> (Entity, Entity) {
    spawn_fed(world, id, PlaybackFeed::new(samples), hz, track_length_m)
}

/// Spawns a session holding one telemetry-driven car played from `feed` (a recording's, or an
/// open one for live telemetry). Returns `(session, car)`.
pub fn spawn_fed(
    world: &mut World,
    id: uuid::Uuid,
    feed: PlaybackFeed,
    hz: f64,
    track_length_m: f32,
) -> (Entity, Entity) {
    let session = world.spawn(SessionId(id)).id();
    let car = world
        .spawn((
            InSession(session),
            crate::car::CarIndex(0),
            Drivetrain::default(),
            TrackProgress {
                distance_m: 0.0,
                lateral_m: f32::NAN,
                segment: 0,
                race_distance_m: 0.0,
            },
            (
                PlaybackDriven,
                feed,
                RecordedClock::default(),
                RecordedLapState::new(hz, track_length_m),
                Active,
            ),
        ))
        .id();
    (session, car)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A car lapping a 1,000 m track at 50 m/s, sampled at 60 Hz, from `start_pct`.
    fn lapping(samples: usize, start_pct: f32) -> Vec<RecordedSample> {
        let mut lap = 10;
        let mut pct = start_pct;
        (0..samples)
            .map(|i| {
                let prev = pct;
                pct = (start_pct + i as f32 * 50.0 / 60.0 / 1000.0).fract();
                if pct < prev {
                    lap += 1;
                }
                RecordedSample {
                    record: i as u64,
                    time_s: 100.0 + i as f64 / 60.0,
                    lap,
                    lap_dist_pct: pct,
                    lap_dist_m: pct * 1000.0,
                    last_lap_time_s: -1.0,
                    speed_mps: 50.0,
                    ..Default::default()
                }
            })
            .collect()
    }

    fn run(samples: &[RecordedSample]) -> (Vec<TimingEvent>, Vec<PendingLapTime>) {
        let mut state = RecordedLapState::new(60.0, 1000.0);
        let mut progress = TrackProgress {
            distance_m: 0.0,
            lateral_m: 0.0,
            segment: 0,
            race_distance_m: 0.0,
        };
        let mut timing = LapTiming::default();
        let mut events = Vec::new();
        let mut done = Vec::new();
        for s in samples {
            let (e, d) = advance_recorded(&mut state, s, &mut progress, &mut timing);
            if e != TimingEvent::None {
                events.push(e);
            }
            done.extend(d);
        }
        done.extend(finish_recorded(&mut state));
        (events, done)
    }

    #[test]
    fn laps_run_from_wrap_to_wrap_and_take_the_samples_time_without_an_official_one() {
        // 20 s per lap; starting at 0.5 gives an out-lap, then full laps.
        let samples = lapping(60 * 55, 0.5);
        let (events, done) = run(&samples);
        assert_eq!(events[0], TimingEvent::Started);
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(done.len(), 2);
        for d in &done {
            let t = d.of(Entity::PLACEHOLDER);
            assert!((t.sample_s - 20.0).abs() < 1e-3, "{t:?}");
            assert_eq!(t.official_s, None);
            assert!(t.valid());
            assert_eq!(t.end_record - t.start_record, 1200);
        }
    }

    #[test]
    fn the_official_time_is_the_first_fresh_last_lap_time_after_the_line() {
        let mut samples = lapping(60 * 45, 0.5);
        // Lap 1 ends near record 600 + 1200 = 1800; the recording shows 19.987 from 60
        // records later, stale (-1) before.
        for s in &mut samples[1860..] {
            s.last_lap_time_s = 19.987;
        }
        let (_, done) = run(&samples);
        let first = done[0].of(Entity::PLACEHOLDER);
        assert_eq!(first.official_s, Some(19.987));
        assert!((first.time_s() - 19.987).abs() < 1e-6);
        // A value far from the samples' time is not this lap's.
        for s in &mut samples[1860..] {
            s.last_lap_time_s = 35.0;
        }
        let (_, done) = run(&samples);
        assert_eq!(done[0].of(Entity::PLACEHOLDER).official_s, None);
    }

    #[test]
    fn a_reset_inside_a_lap_makes_it_invalid_and_pit_road_too() {
        let mut samples = lapping(60 * 65, 0.5);
        // Towed: distance jumps back and the lap counter resets for a while.
        for s in &mut samples[1000..1100] {
            s.lap_dist_pct = 0.05;
            s.lap = 0;
        }
        let (_, done) = run(&samples);
        let lap = done[0].of(Entity::PLACEHOLDER);
        assert!(!lap.valid());
        assert!(lap.reasons & reason::JUMP != 0 && lap.reasons & reason::LAP_COUNTER != 0);
        assert!(done[1].of(Entity::PLACEHOLDER).valid());

        let mut samples = lapping(60 * 65, 0.5);
        samples[2000].on_pit_road = true;
        let (_, done) = run(&samples);
        assert!(done[0].of(Entity::PLACEHOLDER).valid());
        assert_eq!(done[1].of(Entity::PLACEHOLDER).reasons, reason::PIT_ROAD);
    }

    #[test]
    fn an_open_feed_plays_what_is_pushed_and_ends_when_closed() {
        let mut feed = PlaybackFeed::live();
        assert!(!feed.is_done());
        for s in lapping(3, 0.5) {
            feed.push(s);
        }
        feed.next = 3;
        assert!(!feed.is_done(), "open: more may come");
        feed.push(RecordedSample::default());
        assert_eq!(feed.samples.len(), 2, "played samples dropped but the last");
        assert_eq!(feed.next, 1);
        feed.next = 2;
        feed.close();
        assert!(feed.is_done());
    }

    #[test]
    fn a_gap_in_the_clock_invalidates_the_lap() {
        let mut samples = lapping(60 * 45, 0.5);
        for s in &mut samples[900..] {
            s.time_s += 0.05; // three recording ticks missing
        }
        let (_, done) = run(&samples);
        assert_eq!(done[0].of(Entity::PLACEHOLDER).reasons, reason::TIME_GAP);
    }
}
