//! The lobby and session state machine of `apexsim serve` (seed 003 sections 4.3-4.5), as an
//! I/O-free core in the way of quinn-proto: it is driven by the simulation shell
//! ([`super::sim`]) with the tick as its clock, takes what connections said
//! ([`Lobby::connect`], [`Lobby::handle`], [`Lobby::heard`], [`Lobby::disconnect`]) and what the
//! world did ([`Lobby::tick`] reads it through a [`RaceView`]), and queues what is to be done
//! ([`Lobby::poll`]): messages to deliver, connections to close and effects on the world.
//!
//! Every deadline is counted in ticks: the countdown, the heartbeat timeout, the clean-up of
//! finished sessions, the lobby broadcast interval and the shutdown's drain. There are no
//! sockets, channels, threads or clocks in here, so the whole life of a session is unit-tested
//! in-process with a manual clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use apexsim_systems::prelude::{COUNTDOWN_TICKS, FinishReason, TICK_HZ};
use uuid::Uuid;

use super::config::ServerConfig;
use super::protocol::{
    CarConfigSummary, CarInfo, ClientMessage, CloseReason, FaultKind, GridEntry, LobbyPlayer,
    ServerMessage, SessionState, SessionSummary, TrackConfigSummary, TrackInfo, code,
};
use crate::content::{CarContent, Content};

/// A connection's id on this server (never reused while the process lives).
pub type ConnId = u64;

/// Ticks between two lobby broadcasts (4 Hz).
pub const LOBBY_EVERY_TICKS: u64 = TICK_HZ as u64 / 4;

/// The lobby's limits and deadlines, in ticks.
#[derive(Debug, Clone, PartialEq)]
pub struct LobbyConfig {
    /// Sessions the server holds at once.
    pub max_sessions: usize,
    /// How long a finished session stays listed.
    pub session_timeout_ticks: u64,
    /// How long a shutdown lets racing sessions finish their lap.
    pub drain_ticks: u64,
    /// Silence after which a connection is closed.
    pub heartbeat_timeout_ticks: u64,
    /// Whether a host may fault its own session (drills and tests).
    pub fault_injection: bool,
}

impl LobbyConfig {
    /// The server configuration's limits, with its seconds and milliseconds as ticks.
    pub fn from_server(config: &ServerConfig) -> Self {
        let hz = f64::from(TICK_HZ);
        Self {
            max_sessions: config.server.max_sessions,
            session_timeout_ticks: config.server.session_timeout_seconds * u64::from(TICK_HZ),
            drain_ticks: (config.server.drain_seconds * hz).ceil() as u64,
            heartbeat_timeout_ticks: (config.network.heartbeat_timeout_ms as f64 * hz / 1000.0)
                .ceil() as u64,
            fault_injection: config.server.fault_injection,
        }
    }
}

#[derive(Debug)]
struct Player {
    id: Uuid,
    name: String,
    car: usize,
    session: Option<Uuid>,
    last_heard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Lobby,
    Running { started: u64 },
    Finished { at: u64 },
}

#[derive(Debug)]
struct Session {
    id: Uuid,
    track: usize,
    host: ConnId,
    max_players: u8,
    ai_count: u8,
    lap_limit: u8,
    roster: Vec<ConnId>,
    grid: Vec<GridSlot>,
    phase: Phase,
    /// An end was asked of the world (fault or drain); its results are still to come.
    ending: bool,
    /// Laps each car was on when the shutdown began.
    drain_laps: Option<Vec<u16>>,
    /// Ended by the shutdown's drain: no fault in its results.
    interrupted: bool,
}

/// The lobby and every session's life cycle. See the module documentation.
#[derive(Debug)]
pub struct Lobby {
    content: Arc<Content>,
    config: LobbyConfig,
    players: BTreeMap<ConnId, Player>,
    sessions: Vec<Session>,
    out: VecDeque<Output>,
    lobby_dirty: bool,
    last_broadcast: Option<u64>,
    drain_until: Option<u64>,
    ids: SessionIds,
}

/// Where session ids come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIds {
    /// Random (version 4) UUIDs: the server's.
    Random,
    /// 1, 2, 3 ... as UUIDs, from this one on: reproducible, for tests.
    Sequential(u128),
}

impl SessionIds {
    fn next(&mut self) -> Uuid {
        match self {
            Self::Random => Uuid::new_v4(),
            Self::Sequential(n) => {
                *n += 1;
                Uuid::from_u128(*n)
            }
        }
    }
}

impl Lobby {
    /// An empty lobby over `content`, naming its sessions from `ids`.
    pub fn new(content: Arc<Content>, config: LobbyConfig, ids: SessionIds) -> Self {
        Self {
            content,
            config,
            players: BTreeMap::new(),
            sessions: Vec::new(),
            out: VecDeque::new(),
            lobby_dirty: false,
            last_broadcast: None,
            drain_until: None,
            ids,
        }
    }

    /// The next thing to do, oldest first.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// How many players, sessions and cars there are.
    pub fn counts(&self) -> Counts {
        Counts {
            players: self.players.len(),
            sessions: self.sessions.len(),
            running: self.running().count(),
            cars: self.sessions.iter().map(|s| s.grid.len()).sum(),
        }
    }

    /// The sessions counting down or racing.
    pub fn running_sessions(&self) -> Vec<Uuid> {
        self.running().map(|s| s.id).collect()
    }

    /// Whether a shutdown began and every session is over.
    pub fn is_drained(&self) -> bool {
        self.drain_until.is_some() && self.running().next().is_none()
    }

    /// A client authenticated: it joins the lobby and is sent the lobby's state.
    pub fn connect(&mut self, now: u64, conn: ConnId, player: Uuid, name: String) {
        tracing::info!(conn, %player, %name, "player joined the lobby");
        self.players.insert(
            conn,
            Player {
                id: player,
                name,
                car: 0,
                session: None,
                last_heard: now,
            },
        );
        let state = self.lobby_state(now);
        self.send(To::One(conn), state);
        self.lobby_dirty = true;
    }

    /// The connection sent something (an input datagram): it is alive.
    pub fn heard(&mut self, now: u64, conn: ConnId) {
        if let Some(p) = self.players.get_mut(&conn) {
            p.last_heard = now;
        }
    }

    /// The connection is gone: its player leaves its session and the lobby.
    pub fn disconnect(&mut self, conn: ConnId) {
        let Some(player) = self.players.get(&conn) else {
            return;
        };
        let (id, session) = (player.id, player.session);
        tracing::info!(conn, player = %id, "player disconnected");
        if let Some(session) = session {
            self.leave(conn, session);
            let peers = self.session_conns(session);
            if !peers.is_empty() {
                self.send(
                    To::Many(peers),
                    ServerMessage::PlayerDisconnected { player_id: id },
                );
            }
        }
        self.players.remove(&conn);
        self.lobby_dirty = true;
    }

    /// A control message from an authenticated connection.
    pub fn handle(&mut self, now: u64, conn: ConnId, msg: ClientMessage) {
        let Some(player) = self.players.get_mut(&conn) else {
            return;
        };
        player.last_heard = now;
        match msg {
            ClientMessage::Heartbeat { .. } => self.send(
                To::One(conn),
                ServerMessage::HeartbeatAck {
                    server_tick: now as u32,
                },
            ),
            ClientMessage::SelectCar { car_config_id } => {
                match self.content.cars.iter().position(|c| c.id == car_config_id) {
                    Some(car) => {
                        player.car = car;
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
            ClientMessage::LeaveSession => match player.session {
                Some(session) => {
                    self.leave(conn, session);
                    self.send(To::One(conn), ServerMessage::SessionLeft);
                }
                None => self.error(conn, code::BAD_REQUEST, "not in a session"),
            },
            ClientMessage::StartSession => self.start(now, conn),
            ClientMessage::InjectFault { kind } => self.inject(conn, kind),
            // The connection answers these itself (authentication, goodbye).
            ClientMessage::Authenticate { .. } | ClientMessage::Disconnect => {}
        }
    }

    /// A fault ends a running session: its players are told, the world ends the race, and
    /// the results follow as for any end. `false` when the session is not running (or is
    /// already ending), so the fault is not counted twice.
    pub fn session_faulted(&mut self, session: Uuid, message: &str) -> bool {
        let Some(s) = self
            .sessions
            .iter_mut()
            .find(|s| s.id == session && matches!(s.phase, Phase::Running { .. }) && !s.ending)
        else {
            return false;
        };
        s.ending = true;
        tracing::error!(%session, %message, "session fault: the session ends, the others race on");
        self.out.push_back(Output::World(Effect::EndRace {
            session,
            reason: FinishReason::Fault(message.to_owned()),
        }));
        let conns = self.session_conns(session);
        if !conns.is_empty() {
            self.send(
                To::Many(conns),
                ServerMessage::Error {
                    code: code::SESSION_FAULT,
                    message: format!("session fault: {message}"),
                },
            );
        }
        true
    }

    /// SIGTERM or SIGINT: every player is told, sessions that have not started go, racing
    /// ones finish the lap they are on (within the drain time).
    pub fn shutdown(&mut self, now: u64, view: &dyn RaceView) {
        if self.drain_until.is_some() {
            return;
        }
        tracing::info!(
            drain_ticks = self.config.drain_ticks,
            "shutting down: draining the racing sessions"
        );
        self.drain_until = Some(now + self.config.drain_ticks);
        self.send(
            To::Everyone,
            ServerMessage::Error {
                code: code::UNAVAILABLE,
                message: "server shutting down".into(),
            },
        );
        for s in &mut self.sessions {
            if matches!(s.phase, Phase::Running { .. }) {
                s.drain_laps = Some(view.laps(s.id).iter().map(|c| c.lap).collect());
            }
        }
        let lobby: Vec<Uuid> = self
            .sessions
            .iter()
            .filter(|s| s.phase == Phase::Lobby)
            .map(|s| s.id)
            .collect();
        self.sessions.retain(|s| s.phase != Phase::Lobby);
        for p in self.players.values_mut() {
            if p.session.is_some_and(|id| lobby.contains(&id)) {
                p.session = None;
            }
        }
        for session in lobby {
            self.out
                .push_back(Output::World(Effect::RemoveSession { session }));
        }
    }

    /// The lobby's work after a world step at tick `now`: silent connections closed, ended
    /// races' results delivered, the drain advanced, finished sessions cleaned up after their
    /// timeout, and the lobby's state broadcast when it changed (at most every
    /// [`LOBBY_EVERY_TICKS`]).
    pub fn tick(&mut self, now: u64, view: &dyn RaceView) {
        self.close_silent(now);
        self.finish_ended(now, view);
        self.drain(now, view);
        self.clean_up(now);
        self.broadcast(now);
    }

    fn send(&mut self, to: To, msg: ServerMessage) {
        self.out.push_back(Output::Send { to, msg });
    }

    fn error(&mut self, conn: ConnId, code: u16, message: impl Into<String>) {
        let message = message.into();
        tracing::debug!(conn, code, %message, "request refused");
        self.send(To::One(conn), ServerMessage::Error { code, message });
    }

    fn running(&self) -> impl Iterator<Item = &Session> {
        self.sessions
            .iter()
            .filter(|s| matches!(s.phase, Phase::Running { .. }))
    }

    fn session_conns(&self, id: Uuid) -> Vec<ConnId> {
        self.players
            .iter()
            .filter(|(_, p)| p.session == Some(id))
            .map(|(&c, _)| c)
            .collect()
    }

    fn session_of(&self, conn: ConnId) -> Option<Uuid> {
        self.players.get(&conn).and_then(|p| p.session)
    }

    fn create(
        &mut self,
        conn: ConnId,
        track_id: Uuid,
        max_players: u8,
        ai_count: u8,
        lap_limit: u8,
    ) {
        if self.drain_until.is_some() {
            return self.error(conn, code::UNAVAILABLE, "server shutting down");
        }
        if self.session_of(conn).is_some() {
            return self.error(conn, code::CONFLICT, "already in a session: leave it first");
        }
        if self.sessions.len() >= self.config.max_sessions {
            let max = self.config.max_sessions;
            return self.error(
                conn,
                code::UNAVAILABLE,
                format!("the server holds its maximum of {max} sessions"),
            );
        }
        let Some(track) = self.content.tracks.iter().position(|t| t.id == track_id) else {
            return self.error(conn, code::NOT_FOUND, format!("unknown track {track_id}"));
        };
        let t = &self.content.tracks[track];
        let slots = t.geometry.grid_slots().len().min(16);
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
        let id = self.ids.next();
        tracing::info!(session = %id, track = %t.slug, max_players, ai_count, lap_limit, "session created");
        self.out.push_back(Output::World(Effect::CreateSession {
            session: id,
            track,
            lap_limit: u16::from(lap_limit),
        }));
        self.sessions.push(Session {
            id,
            track,
            host: conn,
            max_players,
            ai_count: ai_count.min(max_players),
            lap_limit,
            roster: Vec::new(),
            grid: Vec::new(),
            phase: Phase::Lobby,
            ending: false,
            drain_laps: None,
            interrupted: false,
        });
        self.join(conn, id);
    }

    fn join(&mut self, conn: ConnId, id: Uuid) {
        if self.session_of(conn).is_some() {
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
            car: car_info(&self.content.cars[player.car]),
        };
        self.send(To::One(conn), msg);
        self.lobby_dirty = true;
    }

    /// Takes a player out of a session: from the roster in the lobby (the session goes when
    /// nobody is left), or from its car in a race (handed to the AI). The host role moves to
    /// the next human.
    fn leave(&mut self, conn: ConnId, id: Uuid) {
        if let Some(p) = self.players.get_mut(&conn) {
            p.session = None;
        }
        let Some(k) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
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
                self.sessions.remove(k);
                self.out
                    .push_back(Output::World(Effect::RemoveSession { session: id }));
                tracing::info!(session = %id, "empty session removed");
            }
            Phase::Running { .. } => {
                if let Some(car) = s
                    .grid
                    .iter_mut()
                    .find(|g| g.driver.is_some_and(|(_, c)| c == conn))
                {
                    car.driver = None;
                    let car_index = car.car_index;
                    tracing::info!(session = %id, conn, car_index, "car handed to the AI");
                    self.out.push_back(Output::World(Effect::HandToAi {
                        session: id,
                        car_index,
                    }));
                }
            }
            Phase::Lobby | Phase::Finished { .. } => {}
        }
        self.lobby_dirty = true;
    }

    fn start(&mut self, now: u64, conn: ConnId) {
        if self.drain_until.is_some() {
            return self.error(conn, code::UNAVAILABLE, "server shutting down");
        }
        let Some(id) = self.session_of(conn) else {
            return self.error(conn, code::BAD_REQUEST, "not in a session");
        };
        let Some(k) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        let s = &self.sessions[k];
        if s.host != conn {
            return self.error(conn, code::FORBIDDEN, "only the host can start the session");
        }
        if s.phase != Phase::Lobby {
            return self.error(conn, code::CONFLICT, "the session has already started");
        }
        let ai = usize::from(s.ai_count).min(usize::from(s.max_players) - s.roster.len());
        let host_car = self.players.get(&s.host).map_or(0, |p| p.car);
        let grid: Vec<GridSlot> = s
            .roster
            .iter()
            .filter_map(|c| self.players.get(c).map(|p| (c, p)))
            .map(|(&c, p)| (p.name.clone(), p.car, Some((p.id, c))))
            .chain((0..ai).map(|i| (crate::runner::driver_name(i), host_car, None)))
            .enumerate()
            .map(|(i, (name, car, driver))| GridSlot {
                car_index: i as u8,
                name,
                car,
                driver,
            })
            .collect();
        let roster = s.roster.clone();
        let (track, lap_limit) = (s.track, u16::from(s.lap_limit));
        tracing::info!(session = %id, cars = grid.len(), humans = roster.len(), "countdown started");
        self.out.push_back(Output::World(Effect::StartRace {
            session: id,
            track,
            lap_limit,
            grid: grid.clone(),
        }));
        let entries = grid
            .iter()
            .map(|g| GridEntry {
                car_index: g.car_index,
                name: g.name.clone(),
                player_id: g.driver.map(|(p, _)| p),
            })
            .collect();
        self.send(
            To::Many(roster),
            ServerMessage::SessionStarting {
                countdown_seconds: (COUNTDOWN_TICKS / TICK_HZ) as u8,
                grid: entries,
            },
        );
        let s = &mut self.sessions[k];
        s.grid = grid;
        s.phase = Phase::Running { started: now };
        self.lobby_dirty = true;
    }

    fn inject(&mut self, conn: ConnId, kind: FaultKind) {
        if !self.config.fault_injection {
            return self.error(
                conn,
                code::FORBIDDEN,
                "fault injection is disabled on this server",
            );
        }
        let Some(s) = self
            .session_of(conn)
            .and_then(|id| self.sessions.iter().find(|s| s.id == id))
            .filter(|s| matches!(s.phase, Phase::Running { .. }))
        else {
            return self.error(conn, code::CONFLICT, "not in a running session");
        };
        tracing::warn!(session = %s.id, ?kind, "fault injected");
        let car_index = s
            .grid
            .iter()
            .find(|g| g.driver.is_some_and(|(_, c)| c == conn))
            .map(|g| g.car_index);
        let session = s.id;
        self.out.push_back(Output::World(Effect::InjectFault {
            session,
            kind,
            car_index,
        }));
    }

    fn close_silent(&mut self, now: u64) {
        let timeout = self.config.heartbeat_timeout_ticks;
        let silent: Vec<ConnId> = self
            .players
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_heard) >= timeout)
            .map(|(&c, _)| c)
            .collect();
        for conn in silent {
            tracing::warn!(conn, timeout_ticks = timeout, "heartbeat timeout");
            self.disconnect(conn);
            self.out.push_back(Output::Close {
                conn,
                reason: CloseReason::HeartbeatTimeout,
            });
        }
    }

    /// Sessions whose race ended: results to their players, the session to the archive.
    fn finish_ended(&mut self, now: u64, view: &dyn RaceView) {
        for k in 0..self.sessions.len() {
            let s = &self.sessions[k];
            if !matches!(s.phase, Phase::Running { .. }) {
                continue;
            }
            let Some(reason) = view.finished(s.id) else {
                continue;
            };
            let id = s.id;
            let fault = match reason {
                FinishReason::Fault(m) if !s.interrupted => Some(m),
                _ => None,
            };
            let standings = view.standings(id);
            tracing::info!(session = %id, ?fault, winner = ?standings.first().map(|r| &r.name), "session finished");
            let conns = self.session_conns(id);
            if !conns.is_empty() {
                self.send(
                    To::Many(conns.clone()),
                    ServerMessage::SessionResults {
                        session_id: id,
                        fault: fault.clone(),
                        standings: standings.clone(),
                    },
                );
            }
            self.out.push_back(Output::World(Effect::SessionEnded {
                session: id,
                standings,
                fault,
            }));
            for c in conns {
                if let Some(p) = self.players.get_mut(&c) {
                    p.session = None;
                }
            }
            let s = &mut self.sessions[k];
            s.roster.clear();
            s.phase = Phase::Finished { at: now };
            self.lobby_dirty = true;
        }
    }

    /// During a shutdown: ends the sessions whose cars all finished the lap they were on (or
    /// every session once the drain time is up).
    fn drain(&mut self, now: u64, view: &dyn RaceView) {
        let Some(deadline) = self.drain_until else {
            return;
        };
        let out_of_time = now >= deadline;
        for s in &mut self.sessions {
            if !matches!(s.phase, Phase::Running { .. }) || s.interrupted {
                continue;
            }
            let lap_done = s.drain_laps.as_ref().is_some_and(|laps| {
                view.laps(s.id)
                    .iter()
                    .zip(laps)
                    .all(|(car, &lap)| car.lap > lap || car.finished)
            });
            if out_of_time || lap_done {
                s.interrupted = true;
                s.ending = true;
                self.out.push_back(Output::World(Effect::EndRace {
                    session: s.id,
                    reason: FinishReason::Fault("server shut down".into()),
                }));
            }
        }
    }

    fn clean_up(&mut self, now: u64) {
        let timeout = self.config.session_timeout_ticks;
        let mut gone = Vec::new();
        self.sessions.retain(|s| match s.phase {
            Phase::Finished { at } if now.saturating_sub(at) >= timeout => {
                gone.push(s.id);
                false
            }
            _ => true,
        });
        for session in gone {
            tracing::info!(%session, "finished session cleaned up");
            self.out
                .push_back(Output::World(Effect::RemoveSession { session }));
            self.lobby_dirty = true;
        }
    }

    fn broadcast(&mut self, now: u64) {
        let due = self
            .last_broadcast
            .is_none_or(|at| now.saturating_sub(at) >= LOBBY_EVERY_TICKS);
        if !self.lobby_dirty || !due || self.drain_until.is_some() {
            return;
        }
        self.lobby_dirty = false;
        self.last_broadcast = Some(now);
        let state = self.lobby_state(now);
        self.send(To::Everyone, state);
    }

    fn lobby_state(&self, now: u64) -> ServerMessage {
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
        let countdown = u64::from(COUNTDOWN_TICKS);
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
                        Phase::Running { started } if now < started + countdown => {
                            SessionState::Countdown
                        }
                        Phase::Running { .. } => SessionState::Racing,
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
}

/// A car's physics as the protocol carries it.
pub fn car_info(car: &CarContent) -> CarInfo {
    CarInfo {
        id: car.id,
        name: car.name.clone(),
        physics: car.spec.to_array(),
    }
}

mod io;

pub use io::{CarLap, Counts, Effect, GridSlot, Output, RaceView, To};

#[cfg(test)]
mod tests;
