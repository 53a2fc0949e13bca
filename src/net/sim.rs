//! The simulation thread of `apexsim serve`: the shell around the [`Lobby`] core and the
//! world. One world holds every session, stepped at 240 Hz by the real clock; the thread never
//! awaits. Connection tasks reach it through bounded channels: control messages ([`ToSim`])
//! are fed to the lobby between ticks, inputs are drained by [`apply_inputs`] in
//! [`SimSystems::Input`], and [`send_telemetry`] in [`SimSystems::Snapshot`] encodes each
//! session's packet once and queues it to its players. What the lobby returns is delivered
//! here: messages to the connections' queues, effects to the world, sessions to the
//! [`Recorder`] thread, which does the archive work.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use apexsim_systems::prelude::*;
use bevy_ecs::prelude::{
    Component, Entity, IntoScheduleConfigs, Local, Query, Res, ResMut, Resource,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::config::ServerConfig;
use super::lobby::{
    CarLap, Effect, GridSlot, Lobby, LobbyConfig, Output, RaceView, SessionIds, To,
};
use super::metrics::{DropReason, Metrics};
use super::protocol::{
    self, CarTelemetry, ClientMessage, CloseReason, FLAG_COLLIDING, FLAG_OFF_TRACK, FaultKind,
    PlayerInput, ServerMessage, SessionState, Standing, Telemetry,
};
use crate::archive::index::ResultEntry;
use crate::archive::recorder::{RecordedCar, Recorder, RecorderMsg};
use crate::archive::writer::WriterReport;
use crate::content::Content;
use crate::runner::{Entry, FLUSH_TICKS, Paced, Pacer, classify, session_row, unix_now};

pub use super::lobby::ConnId;

/// What the simulation thread sends a connection task.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded control frame.
    Frame(Arc<Vec<u8>>),
    /// An encoded datagram.
    Datagram(Vec<u8>),
    /// Close the connection: the lobby has let it go.
    Close(CloseReason),
}

/// What connection tasks tell the simulation thread.
#[derive(Debug)]
pub enum ToSim {
    /// A client authenticated.
    Connected {
        /// Its connection.
        conn: ConnId,
        /// Its player id.
        player: Uuid,
        /// Its name.
        name: String,
        /// Where to send it frames and datagrams.
        out: mpsc::Sender<Outgoing>,
    },
    /// A control message.
    Message {
        /// From.
        conn: ConnId,
        /// The message.
        msg: ClientMessage,
    },
    /// The connection is gone.
    Disconnected {
        /// Which.
        conn: ConnId,
    },
    /// SIGTERM/SIGINT: tell every client, drain, archive, stop.
    Shutdown,
}

/// A human's car: its connection and what its inputs said last.
#[derive(Component, Debug, Clone, Copy)]
pub struct NetDriver {
    /// The connection.
    pub conn: ConnId,
    /// Highest input `seq` applied.
    pub input_seq: u32,
}

/// Inputs from the connection tasks, which car each connection drives, and the connections
/// heard from this tick.
#[derive(Resource)]
pub struct NetInputs {
    rx: mpsc::Receiver<(ConnId, PlayerInput)>,
    cars: HashMap<ConnId, Entity>,
    heard: Vec<ConnId>,
}

/// Where each connection's outgoing queue is.
#[derive(Resource, Default)]
pub struct NetLinks(HashMap<ConnId, mpsc::Sender<Outgoing>>);

/// The metrics, for the systems.
#[derive(Resource, Clone)]
pub struct NetMetrics(pub Metrics);

/// Sessions the snapshot found faulted this tick, and sessions a drill asked to panic.
#[derive(Resource, Default)]
pub struct SessionFaults {
    /// Session entity and what happened.
    pub faulted: Vec<(Entity, String)>,
    /// Sessions whose next per-tick work panics (fault injection).
    pub panic_next: HashSet<Entity>,
}

/// Drains the input channel into the controls of the cars the connections drive: clamped
/// (the connection task already rejected non-finite values), latest wins.
pub fn apply_inputs(
    mut inputs: ResMut<NetInputs>,
    tick: Res<SimTick>,
    metrics: Res<NetMetrics>,
    mut cars: Query<(&mut Controls, &mut NetDriver)>,
) {
    let NetInputs {
        rx,
        cars: by_conn,
        heard,
    } = &mut *inputs;
    while let Ok((conn, input)) = rx.try_recv() {
        heard.push(conn);
        let Some(&car) = by_conn.get(&conn) else {
            metrics.0.dropped(DropReason::InputWithoutCar);
            continue;
        };
        if let Ok((mut controls, mut driver)) = cars.get_mut(car) {
            if input.seq < driver.input_seq {
                metrics.0.dropped(DropReason::InputOutOfOrder);
                continue;
            }
            *controls = Controls::sanitized(input.throttle, input.brake, input.steering);
            driver.input_seq = input.seq;
            metrics.0.input_packets_received.inc();
            let rtt_ticks = (tick.0 as u32).saturating_sub(input.server_tick_ack);
            metrics.0.player_rtt_ticks.observe(f64::from(rtt_ticks));
        }
    }
}

/// Per-tick buffers of [`send_telemetry`].
#[derive(Default)]
pub struct SnapshotScratch {
    sessions: HashMap<Entity, (Vec<CarTelemetry>, Vec<(ConnId, u32)>)>,
}

/// Builds each session's telemetry packet (only sessions with a connected player), encodes it
/// once, patches each player's input acknowledgement and queues it. Also finds the sessions
/// whose cars turned non-finite. A panic in one session's work faults that session only.
// System parameters: bevy systems take what they read.
#[allow(clippy::too_many_arguments)]
pub fn send_telemetry(
    mut scratch: Local<SnapshotScratch>,
    tick: Res<SimTick>,
    tracks: Res<Tracks>,
    links: Res<NetLinks>,
    metrics: Res<NetMetrics>,
    mut faults: ResMut<SessionFaults>,
    mut corrupt: bevy_ecs::message::MessageReader<apexsim_systems::physics::NonFiniteState>,
    states: Query<&RaceState>,
    drivers: Query<(&InSession, &NetDriver)>,
    cars: Query<(
        &InSession,
        &CarIndex,
        &TrackId,
        &Pose,
        &Motion,
        &Controls,
        &LapTiming,
        &TrackProgress,
        &Finish,
        &CollisionState,
    )>,
) {
    // Buffers are kept from tick to tick; sessions nobody listens to any more are dropped.
    let buckets = &mut scratch.sessions;
    for (list, recipients) in buckets.values_mut() {
        list.clear();
        recipients.clear();
    }
    for (session, driver) in &drivers {
        buckets
            .entry(session.0)
            .or_default()
            .1
            .push((driver.conn, driver.input_seq));
    }
    buckets.retain(|_, (_, recipients)| !recipients.is_empty());
    let mut bad: Vec<Entity> = corrupt.read().map(|c| c.session).collect();
    for (session, index, track, pose, motion, controls, timing, progress, finish, collision) in
        &cars
    {
        let finite = pose.x_m.is_finite()
            && pose.y_m.is_finite()
            && pose.yaw_rad.is_finite()
            && motion.speed_mps.is_finite()
            && motion.yaw_rate_rad_s.is_finite();
        if !finite && !bad.contains(&session.0) {
            bad.push(session.0);
        }
        let Some((list, _)) = buckets.get_mut(&session.0) else {
            continue;
        };
        let off = tracks.get(*track).is_some_and(|t| progress.is_off_track(t));
        let flags = if collision.is_colliding {
            FLAG_COLLIDING
        } else {
            0
        } | if off { FLAG_OFF_TRACK } else { 0 };
        list.push(CarTelemetry::quantize(
            index.0,
            pose.x_m,
            pose.y_m,
            pose.yaw_rad,
            motion.speed_mps,
            [controls.throttle, controls.brake, controls.steering],
            timing.lap,
            progress.distance_m,
            finish.position,
            flags,
        ));
    }
    for session in bad {
        if matches!(
            states.get(session),
            Ok(RaceState::Countdown { .. } | RaceState::Racing { .. })
        ) {
            faults
                .faulted
                .push((session, "a car's state became non-finite".into()));
        }
    }
    for (&session, (list, recipients)) in buckets.iter_mut() {
        let (state, countdown_ms) = match states.get(session) {
            Ok(RaceState::Countdown { remaining_ticks }) => (
                SessionState::Countdown,
                Some((u64::from(*remaining_ticks) * 1000 / u64::from(TICK_HZ)) as u16),
            ),
            Ok(RaceState::Racing { .. }) => (SessionState::Racing, None),
            _ => continue,
        };
        let panic_now = faults.panic_next.remove(&session);
        let work = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if panic_now {
                #[allow(clippy::panic)]
                {
                    panic!("injected fault");
                }
            }
            list.sort_unstable_by_key(|c| c.index);
            let telemetry = Telemetry {
                server_tick: tick.0 as u32,
                input_ack: 0,
                session_state: state,
                countdown_ms,
                cars: std::mem::take(list),
            };
            let encoded = protocol::encode_telemetry(&telemetry);
            // The car buffer goes back for the next tick.
            *list = telemetry.cars;
            encoded
        }));
        let bytes = match work {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                faults.faulted.push((session, format!("telemetry: {e}")));
                continue;
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                faults
                    .faulted
                    .push((session, format!("panic in session work: {what}")));
                continue;
            }
        };
        for &(conn, ack) in recipients.iter() {
            let Some(tx) = links.0.get(&conn) else {
                continue;
            };
            let mut datagram = bytes.clone();
            protocol::patch_input_ack(&mut datagram, ack);
            match tx.try_send(Outgoing::Datagram(datagram)) {
                Ok(()) => metrics.0.telemetry_packets_sent.inc(),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.0.dropped(DropReason::SendQueueFull)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// A session as the world holds it: its entity and its cars by index, with the names the
/// classification shows.
struct WorldSession {
    entity: Entity,
    cars: Vec<(Entity, String, usize)>,
}

/// Everything the simulation thread owns.
pub struct SimServer {
    sim: Simulation,
    content: Arc<Content>,
    lobby: Lobby,
    metrics: Metrics,
    control: mpsc::Receiver<ToSim>,
    recorder: Recorder,
    track_ids: Vec<TrackId>,
    sessions: HashMap<Uuid, WorldSession>,
    flush_now: bool,
}

/// What a finished simulation thread reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimReport {
    /// Ticks run.
    pub ticks: u64,
    /// Sessions raced to the end.
    pub sessions_finished: u64,
    /// What the archive wrote.
    pub archive: WriterReport,
}

/// The lobby's window on the world.
struct WorldView<'a> {
    world: &'a bevy_ecs::world::World,
    sessions: &'a HashMap<Uuid, WorldSession>,
    content: &'a Content,
}

impl RaceView for WorldView<'_> {
    fn finished(&self, session: Uuid) -> Option<FinishReason> {
        let s = self.sessions.get(&session)?;
        match self.world.get::<RaceState>(s.entity) {
            Some(RaceState::Finished { reason, .. }) => Some(reason.clone()),
            _ => None,
        }
    }

    fn standings(&self, session: Uuid) -> Vec<Standing> {
        let Some(s) = self.sessions.get(&session) else {
            return Vec::new();
        };
        let entries: Vec<Entry<'_>> = s
            .cars
            .iter()
            .map(|(car, driver, model)| Entry {
                car: *car,
                driver: driver.clone(),
                car_name: &self.content.cars[*model].name,
            })
            .collect();
        classify(self.world, &entries)
            .into_iter()
            .map(|r| Standing {
                position: r.position as u8,
                car_index: r.grid - 1,
                name: r.driver,
                laps: r.laps,
                total_time_s: r.total_time_s,
                best_lap_s: r.best_lap_s,
            })
            .collect()
    }

    fn laps(&self, session: Uuid) -> Vec<CarLap> {
        let Some(s) = self.sessions.get(&session) else {
            return Vec::new();
        };
        s.cars
            .iter()
            .map(|(car, _, _)| CarLap {
                lap: self.world.get::<LapTiming>(*car).map_or(0, |t| t.lap),
                finished: self
                    .world
                    .get::<Finish>(*car)
                    .is_some_and(|f| f.position.is_some()),
            })
            .collect()
    }
}

impl SimServer {
    /// Builds the world with the network systems and loads every track.
    pub fn new(
        content: Content,
        config: ServerConfig,
        metrics: Metrics,
        control: mpsc::Receiver<ToSim>,
        inputs: mpsc::Receiver<(ConnId, PlayerInput)>,
        recorder: Recorder,
        seed: u64,
    ) -> Self {
        let mut sim = Simulation::new(SimulationPlugin { seed });
        let app = sim.app_mut();
        app.insert_resource(NetInputs {
            rx: inputs,
            cars: HashMap::new(),
            heard: Vec::new(),
        })
        .insert_resource(NetLinks::default())
        .insert_resource(NetMetrics(metrics.clone()))
        .insert_resource(SessionFaults::default())
        .add_systems(
            bevy_app::FixedUpdate,
            (
                apply_inputs
                    .in_set(SimSystems::Input)
                    .after(apexsim_systems::advance_tick),
                send_telemetry.in_set(SimSystems::Snapshot),
            ),
        );
        let track_ids = content
            .tracks
            .iter()
            .map(|t| {
                sim.world_mut()
                    .resource_mut::<Tracks>()
                    .add(t.geometry.clone())
            })
            .collect();
        let content = Arc::new(content);
        let lobby = Lobby::new(
            content.clone(),
            LobbyConfig::from_server(&config),
            SessionIds::Random,
        );
        Self {
            sim,
            content,
            lobby,
            metrics,
            control,
            recorder,
            track_ids,
            sessions: HashMap::new(),
            flush_now: false,
        }
    }

    /// Runs until a shutdown has drained every session, paced at 240 Hz.
    pub fn run(mut self) -> SimReport {
        let mut pacer = Pacer::new(1.0);
        let mut finished = 0u64;
        loop {
            self.handle_control();
            self.deliver();
            let started = Instant::now();
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| self.sim.step())).is_ok();
            if !stepped {
                tracing::error!("a system panicked; every running session is faulted");
                for session in self.lobby.running_sessions() {
                    if self.lobby.session_faulted(session, "panic in the tick") {
                        self.metrics.session_faults.inc();
                    }
                }
            }
            let tick = self.sim.tick();
            let heard = std::mem::take(&mut self.sim.world_mut().resource_mut::<NetInputs>().heard);
            for conn in heard {
                self.lobby.heard(tick, conn);
            }
            let view = WorldView {
                world: self.sim.world(),
                sessions: &self.sessions,
                content: &self.content,
            };
            self.lobby.tick(tick, &view);
            self.handle_faults();
            finished += self.deliver();
            if tick.is_multiple_of(FLUSH_TICKS) || std::mem::take(&mut self.flush_now) {
                self.flush();
            }
            let counts = self.lobby.counts();
            self.metrics.connected_players.set(counts.players as i64);
            self.metrics.sessions.set(counts.sessions as i64);
            self.metrics.active_sessions.set(counts.running as i64);
            self.metrics.cars.set(counts.cars as i64);
            self.metrics
                .tick_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            if self.lobby.is_drained() {
                break;
            }
            if pacer.wait() == Paced::Late {
                self.metrics.ticks_late.inc();
            }
        }
        self.flush();
        let ticks = self.sim.tick();
        let archive = self.recorder.finish();
        SimReport {
            ticks,
            sessions_finished: finished,
            archive,
        }
    }

    fn flush(&mut self) {
        let world = self.sim.world_mut();
        let mut chunk = world.resource_mut::<RecordChunk>();
        self.recorder.flush(&mut chunk);
    }

    fn handle_control(&mut self) {
        let now = self.sim.tick();
        // Bounded per tick so a burst cannot stall the simulation.
        for _ in 0..1024 {
            let Ok(msg) = self.control.try_recv() else {
                return;
            };
            match msg {
                ToSim::Connected {
                    conn,
                    player,
                    name,
                    out,
                } => {
                    self.sim
                        .world_mut()
                        .resource_mut::<NetLinks>()
                        .0
                        .insert(conn, out);
                    self.lobby.connect(now, conn, player, name);
                }
                ToSim::Message { conn, msg } => self.lobby.handle(now, conn, msg),
                ToSim::Disconnected { conn } => {
                    self.lobby.disconnect(conn);
                    self.forget(conn);
                }
                ToSim::Shutdown => {
                    let view = WorldView {
                        world: self.sim.world(),
                        sessions: &self.sessions,
                        content: &self.content,
                    };
                    self.lobby.shutdown(now, &view);
                }
            }
        }
    }

    /// The connection's queue and car mapping go.
    fn forget(&mut self, conn: ConnId) {
        let world = self.sim.world_mut();
        world.resource_mut::<NetLinks>().0.remove(&conn);
        world.resource_mut::<NetInputs>().cars.remove(&conn);
    }

    fn handle_faults(&mut self) {
        let faulted =
            std::mem::take(&mut self.sim.world_mut().resource_mut::<SessionFaults>().faulted);
        for (entity, message) in faulted {
            let Some(id) = self
                .sessions
                .iter()
                .find(|(_, s)| s.entity == entity)
                .map(|(id, _)| *id)
            else {
                continue;
            };
            let _span = tracing::info_span!("session", id = %id).entered();
            if self.lobby.session_faulted(id, &message) {
                self.metrics.session_faults.inc();
            }
        }
    }

    /// Carries out what the lobby asked, in order; returns the sessions that ended.
    fn deliver(&mut self) -> u64 {
        let mut ended = 0;
        let mut flushed = false;
        while let Some(output) = self.lobby.poll() {
            match output {
                Output::Send { to, msg } => self.send(&to, &msg),
                Output::Close { conn, reason } => {
                    if let Some(tx) = self.sim.world().resource::<NetLinks>().0.get(&conn) {
                        let _ = tx.try_send(Outgoing::Close(reason));
                    }
                    self.forget(conn);
                }
                Output::World(effect) => {
                    if let Effect::SessionEnded { .. } = effect {
                        // The rows up to the end (and the laps it closed) go before the end.
                        if !std::mem::replace(&mut flushed, true) {
                            self.flush();
                        }
                        ended += 1;
                    }
                    self.apply(effect);
                }
            }
        }
        ended
    }

    fn send(&self, to: &To, msg: &ServerMessage) {
        let frame = match protocol::encode_frame(msg) {
            Ok(frame) => Arc::new(frame),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a control message");
                return;
            }
        };
        let links = &self.sim.world().resource::<NetLinks>().0;
        let mut deliver = |tx: &mpsc::Sender<Outgoing>| {
            if tx.try_send(Outgoing::Frame(frame.clone())).is_err() {
                self.metrics.dropped(DropReason::ControlQueueFull);
            }
        };
        match to {
            To::One(conn) => links.get(conn).into_iter().for_each(&mut deliver),
            To::Many(conns) => conns
                .iter()
                .filter_map(|c| links.get(c))
                .for_each(&mut deliver),
            To::Everyone => links.values().for_each(&mut deliver),
        }
    }

    fn car(&self, session: Uuid, index: u8) -> Option<Entity> {
        self.sessions
            .get(&session)
            .and_then(|s| s.cars.get(usize::from(index)))
            .map(|c| c.0)
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::CreateSession {
                session,
                track,
                lap_limit,
            } => {
                let entity = spawn_session(
                    self.sim.world_mut(),
                    SessionConfig {
                        id: session,
                        track: self.track_ids[track],
                        rules: RaceRules {
                            lap_limit,
                            ..RaceRules::default()
                        },
                    },
                );
                self.sessions.insert(
                    session,
                    WorldSession {
                        entity,
                        cars: Vec::new(),
                    },
                );
            }
            Effect::RemoveSession { session } => {
                if let Some(s) = self.sessions.remove(&session) {
                    let world = self.sim.world_mut();
                    let mut inputs = world.resource_mut::<NetInputs>();
                    inputs
                        .cars
                        .retain(|_, car| !s.cars.iter().any(|c| c.0 == *car));
                    world.despawn(s.entity);
                }
            }
            Effect::StartRace {
                session,
                track,
                lap_limit,
                grid,
            } => self.start_race(session, track, lap_limit, &grid),
            Effect::HandToAi { session, car_index } => {
                let Some(car) = self.car(session, car_index) else {
                    return;
                };
                let world = self.sim.world_mut();
                world
                    .resource_mut::<NetInputs>()
                    .cars
                    .retain(|_, c| *c != car);
                world.entity_mut(car).remove::<NetDriver>();
                if let Err(e) = hand_to_ai(world, car, 0.97) {
                    tracing::warn!(%session, error = %e, "cannot hand the car to the AI");
                }
            }
            Effect::EndRace { session, reason } => {
                if let Some(s) = self.sessions.get(&session) {
                    end_race(self.sim.world_mut(), s.entity, reason);
                    self.flush_now = true;
                }
            }
            Effect::InjectFault {
                session,
                kind,
                car_index,
            } => {
                let Some(entity) = self.sessions.get(&session).map(|s| s.entity) else {
                    return;
                };
                let car = car_index.and_then(|i| self.car(session, i));
                let world = self.sim.world_mut();
                match kind {
                    FaultKind::Panic => {
                        world
                            .resource_mut::<SessionFaults>()
                            .panic_next
                            .insert(entity);
                    }
                    FaultKind::NonFinite => {
                        if let Some(mut pose) = car.and_then(|c| world.get_mut::<Pose>(c)) {
                            pose.x_m = f32::NAN;
                        }
                    }
                }
            }
            Effect::SessionEnded {
                session,
                standings,
                fault,
            } => {
                self.recorder.send(RecorderMsg::End {
                    session,
                    finished_at: unix_now(),
                    results: standings
                        .into_iter()
                        .map(|s| ResultEntry {
                            position: u32::from(s.position),
                            car: s.car_index,
                            driver: s.name,
                            laps: s.laps,
                            total_time_s: s.total_time_s,
                            best_lap_s: s.best_lap_s,
                        })
                        .collect(),
                    fault,
                });
                if let Some(s) = self.sessions.get(&session) {
                    let world = self.sim.world_mut();
                    world
                        .resource_mut::<NetInputs>()
                        .cars
                        .retain(|_, car| !s.cars.iter().any(|c| c.0 == *car));
                    for (car, _, _) in &s.cars {
                        world.entity_mut(*car).remove::<NetDriver>();
                    }
                }
            }
        }
    }

    /// Places the grid, starts the countdown and begins the session's recording.
    fn start_race(&mut self, session: Uuid, track: usize, lap_limit: u16, grid: &[GridSlot]) {
        let Some(entity) = self.sessions.get(&session).map(|s| s.entity) else {
            return;
        };
        let _span = tracing::info_span!("session", id = %session).entered();
        let mut cars = Vec::with_capacity(grid.len());
        for slot in grid {
            let world = self.sim.world_mut();
            let spec = self.content.cars[slot.car].spec;
            let kind = match slot.driver {
                Some(_) => DriverKind::Human,
                None => DriverKind::Ai {
                    pace: world.resource_mut::<SimRng>().range_f32(0.94, 1.0),
                },
            };
            match spawn_car(world, entity, spec, kind) {
                Ok(car) => {
                    if let Some((_, conn)) = slot.driver {
                        world
                            .entity_mut(car)
                            .insert(NetDriver { conn, input_seq: 0 });
                        world.resource_mut::<NetInputs>().cars.insert(conn, car);
                    }
                    cars.push((car, slot.name.clone(), slot.car));
                }
                Err(e) => tracing::error!(error = %e, "cannot place a car"),
            }
        }
        self.sim
            .world_mut()
            .write_message(StartRace { session: entity });
        let recorded: Vec<RecordedCar> = cars
            .iter()
            .enumerate()
            .map(|(i, (car, driver, model))| RecordedCar {
                entity: *car,
                index: i as u8,
                driver: driver.clone(),
                car_model: self.content.cars[*model].name.clone(),
            })
            .collect();
        let track = &self.content.tracks[track];
        self.recorder.send(RecorderMsg::Begin {
            row: session_row(session, track, lap_limit, None, &recorded),
            track_length_m: track.geometry.length_m(),
            cars: recorded,
            ack: None,
        });
        if let Some(s) = self.sessions.get_mut(&session) {
            s.cars = cars;
        }
    }
}
