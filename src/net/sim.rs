//! The simulation thread of `apexsim serve`: one world holds every session, stepped at
//! 240 Hz by the real clock. It never awaits. Connection tasks reach it through bounded
//! channels: control messages ([`ToSim`]) are handled between ticks (the lobby and the
//! sessions of seed 003 sections 4.3-4.5), inputs are drained by [`apply_inputs`] in
//! [`SimSystems::Input`], and [`send_telemetry`] in [`SimSystems::Snapshot`] encodes each
//! session's packet once and queues it to its players. Archive work goes to the
//! [`Recorder`] thread.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apexsim_systems::prelude::*;
use bevy_ecs::prelude::{
    Component, Entity, IntoScheduleConfigs, Local, Query, Res, ResMut, Resource,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::config::ServerConfig;
use super::metrics::Metrics;
use super::protocol::{
    self, CarConfigSummary, CarInfo, CarTelemetry, ClientMessage, FLAG_COLLIDING, FLAG_OFF_TRACK,
    FaultKind, GridEntry, LobbyPlayer, PlayerInput, ServerMessage, SessionState, SessionSummary,
    Standing, Telemetry, TrackConfigSummary, TrackInfo, code,
};
use crate::archive::Source;
use crate::archive::index::SessionRow;
use crate::archive::recorder::{RecordedCar, Recorder, RecorderMsg};
use crate::archive::writer::WriterReport;
use crate::content::Content;
use crate::race::{Entry, FLUSH_TICKS, classify, result_entries, unix_now};

/// A connection's id on this server (never reused while the process lives).
pub type ConnId = u64;

/// What the simulation thread sends a connection task.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded control frame.
    Frame(Arc<Vec<u8>>),
    /// An encoded datagram.
    Datagram(Vec<u8>),
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

/// Inputs from the connection tasks, and which car each connection drives.
#[derive(Resource)]
pub struct NetInputs {
    rx: mpsc::Receiver<(ConnId, PlayerInput)>,
    cars: HashMap<ConnId, Entity>,
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
    let NetInputs { rx, cars: by_conn } = &mut *inputs;
    while let Ok((conn, input)) = rx.try_recv() {
        let Some(&car) = by_conn.get(&conn) else {
            metrics.0.dropped("input_without_car");
            continue;
        };
        if let Ok((mut controls, mut driver)) = cars.get_mut(car) {
            if input.seq < driver.input_seq {
                metrics.0.dropped("input_out_of_order");
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
                Err(mpsc::error::TrySendError::Full(_)) => metrics.0.dropped("send_queue_full"),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

struct Player {
    id: Uuid,
    name: String,
    car: usize,
    session: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Lobby,
    Running,
    Finished { at: Instant },
}

struct GridCar {
    entity: Entity,
    name: String,
    car: usize,
    player: Option<(Uuid, ConnId)>,
}

struct Session {
    id: Uuid,
    entity: Entity,
    track: usize,
    host: ConnId,
    max_players: u8,
    ai_count: u8,
    lap_limit: u8,
    roster: Vec<ConnId>,
    grid: Vec<GridCar>,
    phase: Phase,
    /// Laps each car was on when the shutdown began.
    drain_laps: Option<Vec<u16>>,
    interrupted: bool,
}

/// Everything the simulation thread owns.
pub struct SimServer {
    sim: Simulation,
    content: Content,
    config: ServerConfig,
    metrics: Metrics,
    tick: Arc<AtomicU64>,
    control: mpsc::Receiver<ToSim>,
    recorder: Recorder,
    track_ids: Vec<TrackId>,
    players: HashMap<ConnId, Player>,
    sessions: Vec<Session>,
    lobby_dirty: bool,
    last_lobby: Instant,
    shutdown: Option<Instant>,
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

/// Minimum time between two lobby broadcasts (4 Hz).
const LOBBY_EVERY: Duration = Duration::from_millis(250);

impl SimServer {
    /// Builds the world with the network systems and loads every track.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        content: Content,
        config: ServerConfig,
        metrics: Metrics,
        tick: Arc<AtomicU64>,
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
        Self {
            sim,
            content,
            config,
            metrics,
            tick,
            control,
            recorder,
            track_ids,
            players: HashMap::new(),
            sessions: Vec::new(),
            lobby_dirty: false,
            last_lobby: Instant::now(),
            shutdown: None,
            flush_now: false,
        }
    }

    /// Runs until a shutdown has drained every session, paced at 240 Hz.
    pub fn run(mut self) -> SimReport {
        let period = Duration::from_secs_f64(1.0 / f64::from(TICK_HZ));
        let mut next = Instant::now();
        let mut finished = 0u64;
        loop {
            self.handle_control();
            let started = Instant::now();
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| self.sim.step())).is_ok();
            if !stepped {
                tracing::error!("a system panicked; every running session is faulted");
                let running: Vec<Entity> = self
                    .sessions
                    .iter()
                    .filter(|s| s.phase == Phase::Running)
                    .map(|s| s.entity)
                    .collect();
                let mut faults = self.sim.world_mut().resource_mut::<SessionFaults>();
                faults.faulted.extend(
                    running
                        .into_iter()
                        .map(|e| (e, "panic in the tick".to_owned())),
                );
            }
            let tick = self.sim.tick();
            self.tick.store(tick, Ordering::Relaxed);
            finished += self.finish_ended_sessions();
            self.handle_faults();
            if tick.is_multiple_of(FLUSH_TICKS) || std::mem::take(&mut self.flush_now) {
                self.flush();
            }
            self.broadcast_lobby();
            self.cleanup();
            self.metrics
                .tick_duration_us
                .observe(started.elapsed().as_secs_f64() * 1e6);
            if self.drained() {
                break;
            }
            next += period;
            let now = Instant::now();
            if now > next + period {
                self.metrics.ticks_late.inc();
                next = now;
            } else if let Some(wait) = next.checked_duration_since(now) {
                std::thread::sleep(wait);
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

    fn send(&self, conn: ConnId, msg: &ServerMessage) {
        let Some(tx) = self
            .sim
            .world()
            .resource::<NetLinks>()
            .0
            .get(&conn)
            .cloned()
        else {
            return;
        };
        match protocol::encode_frame(msg) {
            Ok(frame) => {
                if tx.try_send(Outgoing::Frame(Arc::new(frame))).is_err() {
                    self.metrics.dropped("control_queue_full");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a control message"),
        }
    }

    fn error(&self, conn: ConnId, code: u16, message: impl Into<String>) {
        let message = message.into();
        tracing::debug!(conn, code, %message, "request refused");
        self.send(conn, &ServerMessage::Error { code, message });
    }

    fn handle_control(&mut self) {
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
                    tracing::info!(conn, %player, %name, "player joined the lobby");
                    self.players.insert(
                        conn,
                        Player {
                            id: player,
                            name,
                            car: 0,
                            session: None,
                        },
                    );
                    self.metrics
                        .connected_players
                        .set(self.players.len() as i64);
                    let state = self.lobby_state();
                    self.send(conn, &state);
                    self.lobby_dirty = true;
                }
                ToSim::Message { conn, msg } => self.handle_message(conn, msg),
                ToSim::Disconnected { conn } => {
                    if let Some(player) = self.players.get(&conn) {
                        let id = player.id;
                        tracing::info!(conn, player = %id, "player disconnected");
                        if let Some(session) = player.session {
                            self.leave(conn, session);
                            let peers = self.session_conns(session);
                            for peer in peers {
                                self.send(
                                    peer,
                                    &ServerMessage::PlayerDisconnected { player_id: id },
                                );
                            }
                        }
                    }
                    self.players.remove(&conn);
                    self.sim
                        .world_mut()
                        .resource_mut::<NetLinks>()
                        .0
                        .remove(&conn);
                    self.metrics
                        .connected_players
                        .set(self.players.len() as i64);
                    self.lobby_dirty = true;
                }
                ToSim::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn handle_message(&mut self, conn: ConnId, msg: ClientMessage) {
        if !self.players.contains_key(&conn) {
            return;
        }
        match msg {
            ClientMessage::SelectCar { car_config_id } => {
                match self.content.cars.iter().position(|c| c.id == car_config_id) {
                    Some(car) => {
                        if let Some(p) = self.players.get_mut(&conn) {
                            p.car = car;
                        }
                        self.lobby_dirty = true;
                    }
                    None => self.error(
                        conn,
                        code::NOT_FOUND,
                        format!("unknown car {car_config_id}"),
                    ),
                }
            }
            ClientMessage::CreateSession {
                track_config_id,
                max_players,
                ai_count,
                lap_limit,
            } => self.create(conn, track_config_id, max_players, ai_count, lap_limit),
            ClientMessage::JoinSession { session_id } => self.join(conn, session_id),
            ClientMessage::LeaveSession => match self.players.get(&conn).and_then(|p| p.session) {
                Some(session) => {
                    self.leave(conn, session);
                    self.send(conn, &ServerMessage::SessionLeft);
                }
                None => self.error(conn, code::BAD_REQUEST, "not in a session"),
            },
            ClientMessage::StartSession => self.start(conn),
            ClientMessage::InjectFault { kind } => self.inject(conn, kind),
            // Answered by the connection task; nothing to do here.
            ClientMessage::Authenticate { .. }
            | ClientMessage::Heartbeat { .. }
            | ClientMessage::Disconnect => {}
        }
    }

    fn create(
        &mut self,
        conn: ConnId,
        track_id: Uuid,
        max_players: u8,
        ai_count: u8,
        lap_limit: u8,
    ) {
        if self.shutdown.is_some() {
            return self.error(conn, code::UNAVAILABLE, "server shutting down");
        }
        if self.players.get(&conn).and_then(|p| p.session).is_some() {
            return self.error(conn, code::CONFLICT, "already in a session: leave it first");
        }
        if self.sessions.len() >= self.config.server.max_sessions {
            return self.error(
                conn,
                code::UNAVAILABLE,
                format!(
                    "the server holds its maximum of {} sessions",
                    self.config.server.max_sessions
                ),
            );
        }
        let Some(track) = self.content.tracks.iter().position(|t| t.id == track_id) else {
            return self.error(conn, code::NOT_FOUND, format!("unknown track {track_id}"));
        };
        let slots = self.content.tracks[track]
            .geometry
            .grid_slots()
            .len()
            .min(16);
        if max_players == 0 || usize::from(max_players) > slots {
            return self.error(
                conn,
                code::BAD_REQUEST,
                format!("max_players = {max_players}: must be 1..={slots} on this track"),
            );
        }
        if !(1..=99).contains(&lap_limit) {
            return self.error(
                conn,
                code::BAD_REQUEST,
                format!("lap_limit = {lap_limit}: must be 1..=99"),
            );
        }
        let id = Uuid::new_v4();
        let _span = tracing::info_span!("session", id = %id).entered();
        let entity = spawn_session(
            self.sim.world_mut(),
            SessionConfig {
                id,
                track: self.track_ids[track],
                rules: RaceRules {
                    lap_limit: u16::from(lap_limit),
                    ..RaceRules::default()
                },
            },
        );
        tracing::info!(session = %id, track = %self.content.tracks[track].slug, max_players, ai_count, lap_limit, "session created");
        self.sessions.push(Session {
            id,
            entity,
            track,
            host: conn,
            max_players,
            ai_count: ai_count.min(max_players),
            lap_limit,
            roster: Vec::new(),
            grid: Vec::new(),
            phase: Phase::Lobby,
            drain_laps: None,
            interrupted: false,
        });
        self.join(conn, id);
    }

    fn join(&mut self, conn: ConnId, id: Uuid) {
        if self.players.get(&conn).and_then(|p| p.session).is_some() {
            return self.error(conn, code::CONFLICT, "already in a session: leave it first");
        }
        let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) else {
            return self.error(conn, code::NOT_FOUND, format!("no session {id}"));
        };
        if s.phase != Phase::Lobby {
            return self.error(conn, code::CONFLICT, format!("session {id} has started"));
        }
        if s.roster.len() >= usize::from(s.max_players) {
            let max = s.max_players;
            return self.error(
                conn,
                code::CONFLICT,
                format!("session {id} is full ({max} players)"),
            );
        }
        s.roster.push(conn);
        let position = s.roster.len() as u8;
        let track = &self.content.tracks[s.track];
        let Some(player) = self.players.get_mut(&conn) else {
            return;
        };
        player.session = Some(id);
        let car = &self.content.cars[player.car];
        tracing::info!(session = %id, player = %player.id, grid = position, "joined session");
        let msg = ServerMessage::SessionJoined {
            session_id: id,
            your_grid_position: position,
            track: TrackInfo {
                id: track.id,
                name: track.name.clone(),
                width_m: track.geometry.width_m(),
                centerline: track.geometry.points().to_vec(),
            },
            car: car_info(car),
        };
        self.send(conn, &msg);
        self.lobby_dirty = true;
    }

    /// Takes a player out of a session: from the roster in the lobby (the session goes when
    /// nobody is left), or from the car in a race (handed to the AI). The host role moves to
    /// the next human.
    fn leave(&mut self, conn: ConnId, id: Uuid) {
        if let Some(p) = self.players.get_mut(&conn) {
            p.session = None;
        }
        let Some(k) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        let _span = tracing::info_span!("session", id = %id).entered();
        let s = &mut self.sessions[k];
        s.roster.retain(|&c| c != conn);
        if s.host == conn
            && let Some(&next) = s.roster.first()
        {
            s.host = next;
            tracing::info!(session = %id, conn = next, "host handed on");
        }
        match s.phase {
            Phase::Lobby if s.roster.is_empty() => {
                let entity = s.entity;
                self.sessions.remove(k);
                self.sim.world_mut().despawn(entity);
                tracing::info!(session = %id, "empty session removed");
            }
            Phase::Running => {
                if let Some(car) = s
                    .grid
                    .iter()
                    .find(|g| g.player.is_some_and(|(_, c)| c == conn))
                {
                    let entity = car.entity;
                    let world = self.sim.world_mut();
                    world.resource_mut::<NetInputs>().cars.remove(&conn);
                    world.entity_mut(entity).remove::<NetDriver>();
                    if let Err(e) = hand_to_ai(world, entity, 0.97) {
                        tracing::warn!(session = %id, error = %e, "cannot hand the car to the AI");
                    } else {
                        tracing::info!(session = %id, conn, "car handed to the AI");
                    }
                }
            }
            Phase::Lobby | Phase::Finished { .. } => {}
        }
        self.lobby_dirty = true;
    }

    fn start(&mut self, conn: ConnId) {
        let Some(id) = self.players.get(&conn).and_then(|p| p.session) else {
            return self.error(conn, code::BAD_REQUEST, "not in a session");
        };
        if self.shutdown.is_some() {
            return self.error(conn, code::UNAVAILABLE, "server shutting down");
        }
        let Some(k) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        let _span = tracing::info_span!("session", id = %id).entered();
        if self.sessions[k].host != conn {
            return self.error(conn, code::FORBIDDEN, "only the host can start the session");
        }
        if self.sessions[k].phase != Phase::Lobby {
            return self.error(conn, code::CONFLICT, "the session has already started");
        }
        let (entity, roster, ai, host_car) = {
            let s = &self.sessions[k];
            let ai = usize::from(s.ai_count).min(usize::from(s.max_players) - s.roster.len());
            let host_car = self.players.get(&s.host).map_or(0, |p| p.car);
            (s.entity, s.roster.clone(), ai, host_car)
        };
        let mut grid = Vec::new();
        for &c in &roster {
            let Some(p) = self.players.get(&c) else {
                continue;
            };
            let spec = self.content.cars[p.car].spec;
            match spawn_car(self.sim.world_mut(), entity, spec, DriverKind::Human) {
                Ok(car) => {
                    let world = self.sim.world_mut();
                    world.entity_mut(car).insert(NetDriver {
                        conn: c,
                        input_seq: 0,
                    });
                    world.resource_mut::<NetInputs>().cars.insert(c, car);
                    grid.push(GridCar {
                        entity: car,
                        name: p.name.clone(),
                        car: p.car,
                        player: Some((p.id, c)),
                    });
                }
                Err(e) => tracing::error!(session = %id, error = %e, "cannot place a car"),
            }
        }
        for i in 0..ai {
            let world = self.sim.world_mut();
            let pace = world.resource_mut::<SimRng>().range_f32(0.94, 1.0);
            let spec = self.content.cars[host_car].spec;
            match spawn_car(world, entity, spec, DriverKind::Ai { pace }) {
                Ok(car) => grid.push(GridCar {
                    entity: car,
                    name: crate::race::driver_name(i),
                    car: host_car,
                    player: None,
                }),
                Err(e) => tracing::error!(session = %id, error = %e, "cannot place an AI car"),
            }
        }
        self.sim
            .world_mut()
            .write_message(StartRace { session: entity });
        let track = &self.content.tracks[self.sessions[k].track];
        let models: Vec<&str> = grid
            .iter()
            .map(|g| self.content.cars[g.car].name.as_str())
            .collect();
        let car_model = if models.windows(2).all(|w| w[0] == w[1]) {
            models.first().map_or_else(String::new, |m| (*m).to_owned())
        } else {
            "mixed".to_owned()
        };
        self.recorder.send(RecorderMsg::Begin {
            row: SessionRow {
                id,
                source: Source::Sim.as_str().into(),
                track: track.slug.clone(),
                car_model,
                lap_limit: Some(u16::from(self.sessions[k].lap_limit)),
                seed: None,
                started_at: unix_now(),
                finished_at: None,
                sectors: track.sectors.clone(),
            },
            track_length_m: track.geometry.length_m(),
            cars: grid
                .iter()
                .enumerate()
                .map(|(i, g)| RecordedCar {
                    entity: g.entity,
                    index: i as u8,
                    driver: g.name.clone(),
                    car_model: self.content.cars[g.car].name.clone(),
                })
                .collect(),
            ack: None,
        });
        let entries: Vec<GridEntry> = grid
            .iter()
            .enumerate()
            .map(|(i, g)| GridEntry {
                car_index: i as u8,
                name: g.name.clone(),
                player_id: g.player.map(|(p, _)| p),
            })
            .collect();
        let msg = ServerMessage::SessionStarting {
            countdown_seconds: (COUNTDOWN_TICKS / TICK_HZ) as u8,
            grid: entries,
        };
        for &c in &roster {
            self.send(c, &msg);
        }
        tracing::info!(session = %id, cars = grid.len(), humans = roster.len(), "countdown started");
        let s = &mut self.sessions[k];
        s.grid = grid;
        s.phase = Phase::Running;
        self.metrics.active_sessions.set(self.running() as i64);
        self.lobby_dirty = true;
    }

    fn inject(&mut self, conn: ConnId, kind: FaultKind) {
        if !self.config.server.fault_injection {
            return self.error(
                conn,
                code::FORBIDDEN,
                "fault injection is disabled on this server",
            );
        }
        let Some(s) = self
            .players
            .get(&conn)
            .and_then(|p| p.session)
            .and_then(|id| self.sessions.iter().find(|s| s.id == id))
            .filter(|s| s.phase == Phase::Running)
        else {
            return self.error(conn, code::CONFLICT, "not in a running session");
        };
        tracing::warn!(session = %s.id, ?kind, "fault injected");
        let entity = s.entity;
        let car = s
            .grid
            .iter()
            .find(|g| g.player.is_some_and(|(_, c)| c == conn))
            .map(|g| g.entity);
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

    fn running(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.phase == Phase::Running)
            .count()
    }

    fn session_conns(&self, id: Uuid) -> Vec<ConnId> {
        self.players
            .iter()
            .filter(|(_, p)| p.session == Some(id))
            .map(|(&c, _)| c)
            .collect()
    }

    /// Sessions whose race ended: results to the players, the session to the archive.
    fn finish_ended_sessions(&mut self) -> u64 {
        let mut ended = Vec::new();
        for (k, s) in self.sessions.iter().enumerate() {
            if s.phase != Phase::Running {
                continue;
            }
            if let Some(RaceState::Finished { reason, .. }) =
                self.sim.world().get::<RaceState>(s.entity)
            {
                ended.push((k, reason.clone()));
            }
        }
        if ended.is_empty() {
            return 0;
        }
        // The rows up to the end (and the laps the end closed) go before the session's end.
        self.flush();
        let mut finished = 0;
        for (k, reason) in ended {
            let s = &self.sessions[k];
            let _span = tracing::info_span!("session", id = %s.id).entered();
            let entries: Vec<Entry<'_>> = s
                .grid
                .iter()
                .map(|g| Entry {
                    car: g.entity,
                    driver: g.name.clone(),
                    car_name: &self.content.cars[g.car].name,
                })
                .collect();
            let results = classify(self.sim.world(), &entries);
            let fault = match reason {
                FinishReason::Fault(m) if !s.interrupted => Some(m),
                _ => None,
            };
            let standings = results
                .iter()
                .map(|r| Standing {
                    position: r.position as u8,
                    car_index: r.grid - 1,
                    name: r.driver.clone(),
                    laps: r.laps,
                    total_time_s: r.total_time_s,
                    best_lap_s: r.best_lap_s,
                })
                .collect();
            let msg = ServerMessage::SessionResults {
                session_id: s.id,
                fault: fault.clone(),
                standings,
            };
            let id = s.id;
            for c in self.session_conns(id) {
                self.send(c, &msg);
            }
            tracing::info!(session = %id, ?fault, winner = ?results.first().map(|r| &r.driver), "session finished");
            self.recorder.send(RecorderMsg::End {
                session: id,
                finished_at: unix_now(),
                results: result_entries(&results),
                fault,
            });
            let conns: Vec<ConnId> = self.sessions[k]
                .grid
                .iter()
                .filter_map(|g| g.player.map(|(_, c)| c))
                .collect();
            let world = self.sim.world_mut();
            for c in &conns {
                world.resource_mut::<NetInputs>().cars.remove(c);
            }
            for g in &self.sessions[k].grid {
                world.entity_mut(g.entity).remove::<NetDriver>();
            }
            for c in conns {
                if let Some(p) = self.players.get_mut(&c)
                    && p.session == Some(id)
                {
                    p.session = None;
                }
            }
            self.sessions[k].phase = Phase::Finished { at: Instant::now() };
            finished += 1;
        }
        self.metrics.active_sessions.set(self.running() as i64);
        self.lobby_dirty = true;
        finished
    }

    fn handle_faults(&mut self) {
        let faulted =
            std::mem::take(&mut self.sim.world_mut().resource_mut::<SessionFaults>().faulted);
        for (entity, message) in faulted {
            let Some(s) = self.sessions.iter().find(|s| s.entity == entity) else {
                continue;
            };
            let id = s.id;
            let _span = tracing::info_span!("session", id = %id).entered();
            if !end_race(
                self.sim.world_mut(),
                entity,
                FinishReason::Fault(message.clone()),
            ) {
                continue;
            }
            tracing::error!(session = %id, %message, "session fault: the session ends, the others race on");
            self.metrics.session_faults.inc();
            for c in self.session_conns(id) {
                self.error(c, code::SESSION_FAULT, format!("session fault: {message}"));
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let drain = Duration::from_secs_f64(self.config.server.drain_seconds);
        tracing::info!(?drain, "shutting down: draining the racing sessions");
        self.shutdown = Some(Instant::now() + drain);
        let conns: Vec<ConnId> = self.players.keys().copied().collect();
        for c in conns {
            self.error(c, code::UNAVAILABLE, "server shutting down");
        }
        // Sessions that have not started go; racing ones finish their current lap.
        let world = self.sim.world();
        for s in &mut self.sessions {
            if s.phase == Phase::Running {
                s.drain_laps = Some(
                    s.grid
                        .iter()
                        .map(|g| world.get::<LapTiming>(g.entity).map_or(0, |t| t.lap))
                        .collect(),
                );
            }
        }
        let lobby: Vec<Entity> = self
            .sessions
            .iter()
            .filter(|s| s.phase == Phase::Lobby)
            .map(|s| s.entity)
            .collect();
        self.sessions.retain(|s| s.phase != Phase::Lobby);
        for e in lobby {
            self.sim.world_mut().despawn(e);
        }
    }

    /// During a shutdown: ends the sessions whose cars all finished the lap they were on (or
    /// every session once the drain time is up); `true` once nothing is left running.
    fn drained(&mut self) -> bool {
        let Some(deadline) = self.shutdown else {
            return false;
        };
        let out_of_time = Instant::now() >= deadline;
        let mut to_end = Vec::new();
        for s in &mut self.sessions {
            if s.phase != Phase::Running || s.interrupted {
                continue;
            }
            let world = self.sim.world();
            let lap_done = s.drain_laps.as_ref().is_some_and(|laps| {
                s.grid.iter().zip(laps).all(|(g, &lap)| {
                    world
                        .get::<LapTiming>(g.entity)
                        .is_some_and(|t| t.lap > lap)
                        || world
                            .get::<Finish>(g.entity)
                            .is_some_and(|f| f.position.is_some())
                })
            });
            if out_of_time || lap_done {
                s.interrupted = true;
                to_end.push(s.entity);
            }
        }
        for e in to_end {
            end_race(
                self.sim.world_mut(),
                e,
                FinishReason::Fault("server shut down".into()),
            );
            self.flush_now = true;
        }
        self.running() == 0
    }

    fn cleanup(&mut self) {
        let timeout = Duration::from_secs(self.config.server.session_timeout_seconds);
        let mut gone = Vec::new();
        self.sessions.retain(|s| match s.phase {
            Phase::Finished { at } if at.elapsed() >= timeout => {
                gone.push((s.id, s.entity));
                false
            }
            _ => true,
        });
        for (id, entity) in gone {
            self.sim.world_mut().despawn(entity);
            tracing::info!(session = %id, "finished session cleaned up");
            self.lobby_dirty = true;
        }
        self.metrics.sessions.set(self.sessions.len() as i64);
        let cars: usize = self.sessions.iter().map(|s| s.grid.len()).sum();
        self.metrics.cars.set(cars as i64);
    }

    fn lobby_state(&self) -> ServerMessage {
        let name_of = |c: &ConnId| {
            self.players
                .get(c)
                .map_or_else(String::new, |p| p.name.clone())
        };
        let mut players: Vec<LobbyPlayer> = self
            .players
            .values()
            .map(|p| LobbyPlayer {
                id: p.id,
                name: p.name.clone(),
                selected_car: self.content.cars.get(p.car).map(|c| c.id),
                in_session: p.session,
            })
            .collect();
        players.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        ServerMessage::LobbyState {
            players_in_lobby: players,
            available_sessions: self
                .sessions
                .iter()
                .map(|s| SessionSummary {
                    id: s.id,
                    track_name: self.content.tracks[s.track].name.clone(),
                    host_name: name_of(&s.host),
                    player_count: s.roster.len() as u8,
                    max_players: s.max_players,
                    ai_count: s.ai_count,
                    lap_limit: s.lap_limit,
                    state: match s.phase {
                        Phase::Lobby => SessionState::Lobby,
                        Phase::Running => match self.sim.world().get::<RaceState>(s.entity) {
                            Some(RaceState::Countdown { .. }) => SessionState::Countdown,
                            Some(RaceState::Finished { .. }) => SessionState::Finished,
                            _ => SessionState::Racing,
                        },
                        Phase::Finished { .. } => SessionState::Finished,
                    },
                })
                .collect(),
            car_configs: self
                .content
                .cars
                .iter()
                .map(|c| CarConfigSummary {
                    id: c.id,
                    slug: c.slug.clone(),
                    name: c.name.clone(),
                })
                .collect(),
            track_configs: self
                .content
                .tracks
                .iter()
                .map(|t| TrackConfigSummary {
                    id: t.id,
                    slug: t.slug.clone(),
                    name: t.name.clone(),
                })
                .collect(),
        }
    }

    fn broadcast_lobby(&mut self) {
        if !self.lobby_dirty || self.last_lobby.elapsed() < LOBBY_EVERY || self.shutdown.is_some() {
            return;
        }
        self.lobby_dirty = false;
        self.last_lobby = Instant::now();
        let state = self.lobby_state();
        let Ok(frame) = protocol::encode_frame(&state) else {
            return;
        };
        let frame = Arc::new(frame);
        for tx in self.sim.world().resource::<NetLinks>().0.values() {
            if tx.try_send(Outgoing::Frame(frame.clone())).is_err() {
                self.metrics.dropped("control_queue_full");
            }
        }
    }
}

/// A car's physics as the protocol carries it.
pub fn car_info(car: &crate::content::CarContent) -> CarInfo {
    CarInfo {
        id: car.id,
        name: car.name.clone(),
        physics: car.spec.to_array(),
    }
}
