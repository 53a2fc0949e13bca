//! The lobby and session state machine of `apexsim serve` (seed 003 sections 4.3-4.5), as an
//! I/O-free core in the way of quinn-proto: it is driven by the simulation shell
//! ([`super::sim`]) with the tick as its clock, takes what connections said
//! ([`Lobby::connect`], [`Lobby::handle`], [`Lobby::heard`], [`Lobby::disconnect`]) and what the
//! world did ([`Lobby::tick`] reads it through a [`RaceView`]), and queues what is to be done
//! ([`Lobby::poll`]): messages to deliver, connections to close and effects on the world.
//!
//! Every deadline is counted in ticks: the countdown, the heartbeat timeout, the clean-up of
//! finished sessions, the lobby broadcast interval, the countdown sessions' lobby window and
//! the shutdown's drain; scheduled templates read the wall clock the shell passes to
//! [`Lobby::tick`]. There are no sockets, channels, threads or clocks in here, so the whole
//! life of a session is unit-tested in-process with a manual clock.
//!
//! Race operations (seed 003 section 9) live here too: the template rotation and the
//! scheduled sessions ([`rotation`]), custom sessions from a template, content reloaded
//! while sessions run ([`Lobby::content_changed`]) and the operator's actions ([`admin`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use apexsim_systems::SimRng;
use apexsim_systems::prelude::{COUNTDOWN_TICKS, FinishReason, TICK_HZ};
use uuid::Uuid;

use super::config::ServerConfig;
use super::protocol::{
    CarConfigSummary, CarInfo, ClientMessage, CloseReason, FaultKind, GridEntry, LobbyPlayer,
    ServerMessage, SessionState, SessionSummary, StartMode, TemplateSummary, TrackConfigSummary,
    TrackInfo, code,
};
use crate::content::{CarContent, Content, RaceTemplate, TrackContent};

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
    /// How long a countdown session stays open to joiners before it may start.
    pub lobby_window_ticks: u64,
    /// Whether the server runs sessions by itself: the rotation's and the scheduled ones.
    pub run_templates: bool,
    /// Seed of the rotation's picks.
    pub seed: u64,
}

impl LobbyConfig {
    /// The server configuration's limits, with its seconds and milliseconds as ticks; the
    /// rotation picks from `seed`.
    pub fn from_server(config: &ServerConfig, seed: u64) -> Self {
        let hz = f64::from(TICK_HZ);
        Self {
            lobby_window_ticks: config.server.lobby_window_seconds * u64::from(TICK_HZ),
            run_templates: config.server.run_templates,
            seed,
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
    /// The car model selected; `None` for the content's first.
    car: Option<Uuid>,
    session: Option<Uuid>,
    last_heard: u64,
}

/// Where a session came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A player made it (from a track, or from a template).
    Custom,
    /// The rotation made it.
    Rotation,
    /// A scheduled template's occurrence at `at` (Unix seconds).
    Scheduled { at: i64 },
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
    /// The track as it was when the session was made (a reload does not change it).
    track: Arc<TrackContent>,
    /// The player who may start it; rotation and scheduled sessions have none until a human
    /// joins, and only manual ones are started by their host.
    host: Option<ConnId>,
    template: Option<Arc<RaceTemplate>>,
    kind: Kind,
    created: u64,
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
    /// Ended by an operator: who.
    ended_by: Option<String>,
}

impl Session {
    /// How it starts: a custom session (or one without a template) by its host, a rotation or
    /// scheduled one as its template says.
    fn start_mode(&self) -> StartMode {
        match (&self.template, self.kind) {
            (Some(t), Kind::Rotation | Kind::Scheduled { .. }) => t.start_mode,
            _ => StartMode::Manual,
        }
    }

    fn allows(&self, car: Uuid) -> bool {
        self.template.as_ref().is_none_or(|t| t.allows(car))
    }

    fn state(&self, now: u64) -> SessionState {
        match self.phase {
            Phase::Lobby => SessionState::Lobby,
            Phase::Running { started } if now < started + u64::from(COUNTDOWN_TICKS) => {
                SessionState::Countdown
            }
            Phase::Running { .. } => SessionState::Racing,
            Phase::Finished { .. } => SessionState::Finished,
        }
    }
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
    rng: SimRng,
    /// The wall clock of the last tick, Unix seconds.
    wall_s: i64,
    /// Each scheduled template's next start, Unix seconds.
    schedule: BTreeMap<Uuid, i64>,
    /// The template the rotation's next session is of, asked for by an allocation.
    next_template: Option<Arc<RaceTemplate>>,
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
            players: BTreeMap::new(),
            sessions: Vec::new(),
            out: VecDeque::new(),
            lobby_dirty: false,
            last_broadcast: None,
            drain_until: None,
            ids,
            rng: SimRng::seeded(config.seed),
            config,
            wall_s: 0,
            schedule: BTreeMap::new(),
            next_template: None,
        }
    }

    /// The content was reloaded: new sessions and grids use it, sessions already made keep
    /// their track, running ones their cars; players whose car is gone get the first one.
    pub fn content_changed(&mut self, content: Arc<Content>) {
        for p in self.players.values_mut() {
            if p.car.is_some_and(|id| content.car_by_id(id).is_none()) {
                p.car = None;
            }
        }
        // Schedules may have changed: the next times are found again (an occurrence already
        // announced is not announced twice).
        self.schedule.clear();
        self.content = content;
        self.lobby_dirty = true;
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
                car: None,
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
                let session = player.session;
                if self.content.car_by_id(car_config_id).is_none() {
                    return self.error(
                        conn,
                        code::NOT_FOUND,
                        format!("unknown car {car_config_id}"),
                    );
                }
                let refused = session
                    .and_then(|id| self.sessions.iter().find(|s| s.id == id))
                    .filter(|s| s.phase == Phase::Lobby)
                    .and_then(|s| s.template.as_ref())
                    .filter(|t| !t.allows(car_config_id))
                    .map(|t| self.not_allowed(t, car_config_id));
                if let Some(message) = refused {
                    return self.error(conn, code::BAD_REQUEST, message);
                }
                if let Some(p) = self.players.get_mut(&conn) {
                    p.car = Some(car_config_id);
                }
                self.lobby_dirty = true;
            }
            ClientMessage::CreateSession {
                track_config_id,
                max_players,
                ai_count,
                lap_limit,
            } => self.create(now, conn, track_config_id, max_players, ai_count, lap_limit),
            ClientMessage::CreateFromTemplate {
                template_id,
                lap_limit,
                ai_count,
            } => self.create_from_template(now, conn, template_id, lap_limit, ai_count),
            ClientMessage::JoinSession { session_id } => self.join(conn, session_id),
            ClientMessage::LeaveSession => match player.session {
                Some(session) => {
                    self.leave(conn, session);
                    self.send(To::One(conn), ServerMessage::SessionLeft);
                }
                None => self.error(conn, code::BAD_REQUEST, "not in a session"),
            },
            ClientMessage::StartSession => self.host_start(now, conn),
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
    ///
    /// Then, unless the server is shutting down, the race operations: scheduled templates'
    /// sessions are announced [`rotation::ANNOUNCE_AHEAD_S`] before their time (`wall_s`, the
    /// wall clock in Unix seconds) and started at it, the rotation's next session is made when
    /// none is open, and countdown sessions start once their window has passed with enough
    /// players.
    pub fn tick(&mut self, now: u64, wall_s: i64, view: &dyn RaceView) {
        self.wall_s = wall_s;
        self.close_silent(now);
        self.finish_ended(now, view);
        self.drain(now, view);
        self.clean_up(now);
        if self.drain_until.is_none() {
            if self.config.run_templates {
                self.run_schedule(now);
                self.rotate(now);
            }
            self.auto_start(now);
        }
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

    /// Why `conn` may not make a session now, if it may not.
    fn refuse_create(&self, conn: ConnId) -> Option<(u16, String)> {
        if self.drain_until.is_some() {
            return Some((code::UNAVAILABLE, "server shutting down".into()));
        }
        if self.session_of(conn).is_some() {
            return Some((
                code::CONFLICT,
                "already in a session: leave it first".into(),
            ));
        }
        if self.sessions.len() >= self.config.max_sessions {
            let max = self.config.max_sessions;
            return Some((
                code::UNAVAILABLE,
                format!("the server holds its maximum of {max} sessions"),
            ));
        }
        None
    }

    fn create(
        &mut self,
        now: u64,
        conn: ConnId,
        track_id: Uuid,
        max_players: u8,
        ai_count: u8,
        lap_limit: u8,
    ) {
        if let Some((code, message)) = self.refuse_create(conn) {
            return self.error(conn, code, message);
        }
        let Some(t) = self.content.track_by_id(track_id).cloned() else {
            return self.error(conn, code::NOT_FOUND, format!("unknown track {track_id}"));
        };
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
        let id = self.new_session(NewSession {
            now,
            kind: Kind::Custom,
            track: t,
            template: None,
            host: Some(conn),
            max_players,
            ai_count,
            lap_limit,
        });
        self.join(conn, id);
    }

    /// Makes a session (in its lobby) and the world's entity for it; returns its id.
    fn new_session(&mut self, n: NewSession) -> Uuid {
        let id = self.ids.next();
        tracing::info!(
            session = %id,
            track = %n.track.slug,
            template = n.template.as_ref().map(|t| t.name.as_str()),
            kind = ?n.kind,
            max_players = n.max_players,
            ai_count = n.ai_count,
            lap_limit = n.lap_limit,
            "session created"
        );
        self.out.push_back(Output::World(Effect::CreateSession {
            session: id,
            track: n.track.clone(),
            lap_limit: u16::from(n.lap_limit),
        }));
        self.sessions.push(Session {
            id,
            track: n.track,
            host: n.host,
            template: n.template,
            kind: n.kind,
            created: n.now,
            max_players: n.max_players,
            ai_count: n.ai_count.min(n.max_players),
            lap_limit: n.lap_limit,
            roster: Vec::new(),
            grid: Vec::new(),
            phase: Phase::Lobby,
            ending: false,
            drain_laps: None,
            interrupted: false,
            ended_by: None,
        });
        self.lobby_dirty = true;
        id
    }

    /// What refusing `car` in a session of `template` says: the cars it allows.
    fn not_allowed(&self, template: &RaceTemplate, car: Uuid) -> String {
        let name = |id: &Uuid| {
            self.content
                .car_by_id(*id)
                .map_or_else(|| id.to_string(), |c| format!("{} ({})", c.name, c.id))
        };
        let allowed: Vec<String> = template.allowed_cars.iter().map(name).collect();
        format!(
            "car {} is not allowed in this session; allowed: {}",
            name(&car),
            allowed.join(", ")
        )
    }

    /// The car `conn`'s player drives next: the one selected, else the content's first.
    fn car_of(&self, conn: ConnId) -> Option<Arc<CarContent>> {
        let p = self.players.get(&conn)?;
        p.car
            .and_then(|id| self.content.car_by_id(id))
            .or_else(|| self.content.cars.first())
            .cloned()
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
        let Some(k) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        // A player who chose no car gets the first the session allows.
        let chose = self.players.get(&conn).and_then(|p| p.car);
        let first_allowed = self.sessions[k].template.as_ref().and_then(|t| {
            t.allowed_cars
                .iter()
                .find(|id| self.content.car_by_id(**id).is_some())
                .copied()
        });
        if let (None, Some(allowed), Some(p)) = (chose, first_allowed, self.players.get_mut(&conn))
        {
            p.car = Some(allowed);
        }
        let Some(car) = self.car_of(conn) else {
            return self.error(conn, code::NOT_FOUND, "the server has no car");
        };
        if let Some(t) = self.sessions[k]
            .template
            .as_ref()
            .filter(|t| !t.allows(car.id))
        {
            let message = self.not_allowed(t, car.id);
            return self.error(conn, code::BAD_REQUEST, message);
        }
        let s = &mut self.sessions[k];
        s.roster.push(conn);
        if s.host.is_none() {
            s.host = Some(conn);
        }
        let position = s.roster.len() as u8;
        let track = s.track.clone();
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
            car: car_info(&car),
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
        if s.host == Some(conn) {
            s.host = s.roster.first().copied();
            match s.host {
                Some(next) => tracing::info!(session = %id, conn = next, "host handed on"),
                None if s.kind != Kind::Custom => {}
                None => s.host = Some(conn),
            }
        }
        match s.phase {
            Phase::Lobby if s.roster.is_empty() && s.kind == Kind::Custom => {
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

    fn host_start(&mut self, now: u64, conn: ConnId) {
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
        if s.host != Some(conn) {
            return self.error(conn, code::FORBIDDEN, "only the host can start the session");
        }
        if s.phase != Phase::Lobby {
            return self.error(conn, code::CONFLICT, "the session has already started");
        }
        if s.start_mode() != StartMode::Manual {
            let how = match s.start_mode() {
                StartMode::Countdown => "once enough players joined and its lobby window passed",
                _ => "at its scheduled time",
            };
            return self.error(
                conn,
                code::CONFLICT,
                format!("this session starts by itself, {how}"),
            );
        }
        self.begin(now, k);
    }

    /// Builds session `k`'s grid (its humans in the order they joined, then the AI on the
    /// free places) and starts the countdown.
    fn begin(&mut self, now: u64, k: usize) {
        let s = &self.sessions[k];
        let id = s.id;
        let ai = usize::from(s.ai_count).min(usize::from(s.max_players) - s.roster.len());
        // The AI drives the host's car, else the first car the session allows.
        let ai_car = s
            .host
            .and_then(|h| self.car_of(h))
            .filter(|c| s.allows(c.id))
            .or_else(|| self.content.cars.iter().find(|c| s.allows(c.id)).cloned());
        let humans: Vec<(String, Arc<CarContent>, Option<(Uuid, ConnId)>)> = s
            .roster
            .iter()
            .filter_map(|&c| {
                let p = self.players.get(&c)?;
                Some((p.name.clone(), self.car_of(c)?, Some((p.id, c))))
            })
            .collect();
        let ai_cars = ai_car.as_ref().map_or(0, |_| ai);
        let grid: Vec<GridSlot> = humans
            .into_iter()
            .chain(
                (0..ai_cars)
                    .filter_map(|i| Some((crate::runner::driver_name(i), ai_car.clone()?, None))),
            )
            .enumerate()
            .map(|(i, (name, car, driver))| GridSlot {
                car_index: i as u8,
                name,
                car,
                driver,
            })
            .collect();
        if grid.is_empty() {
            tracing::warn!(session = %id, "no car to put on the grid: the session waits");
            return;
        }
        let roster = s.roster.clone();
        let (track, lap_limit) = (s.track.clone(), u16::from(s.lap_limit));
        let template = s.template.as_ref().map(|t| t.id);
        tracing::info!(session = %id, cars = grid.len(), humans = roster.len(), "countdown started");
        self.out.push_back(Output::World(Effect::StartRace {
            session: id,
            track,
            lap_limit,
            template,
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
        if !roster.is_empty() {
            self.send(
                To::Many(roster),
                ServerMessage::SessionStarting {
                    countdown_seconds: (COUNTDOWN_TICKS / TICK_HZ) as u8,
                    grid: entries,
                },
            );
        }
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
            let ended_by = s.ended_by.clone();
            let fault = match reason {
                FinishReason::Fault(m) if !s.interrupted && ended_by.is_none() => Some(m),
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
                        ended_by: ended_by.clone(),
                        standings: standings.clone(),
                    },
                );
            }
            self.out.push_back(Output::World(Effect::SessionEnded {
                session: id,
                standings,
                fault,
                ended_by,
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
                selected_car: p.car.or_else(|| self.content.cars.first().map(|c| c.id)),
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
                    track_name: s.track.name.clone(),
                    host_name: s.host.as_ref().map_or_else(String::new, name_of),
                    player_count: s.roster.len() as u8,
                    max_players: s.max_players,
                    ai_count: s.ai_count,
                    lap_limit: s.lap_limit,
                    state: s.state(now),
                    template_id: s.template.as_ref().map(|t| t.id),
                    template_name: s.template.as_ref().map(|t| t.name.clone()),
                    rotation: s.kind == Kind::Rotation,
                    start_mode: s.start_mode(),
                    starts_at_unix_s: match s.kind {
                        Kind::Scheduled { at } => Some(at),
                        _ => None,
                    },
                    allowed_cars: s
                        .template
                        .as_ref()
                        .map(|t| t.allowed_cars.clone())
                        .unwrap_or_default(),
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
            templates: self
                .content
                .templates
                .iter()
                .map(|t| TemplateSummary {
                    id: t.id,
                    name: t.name.clone(),
                    track_id: t.track_id,
                    active: t.active,
                    start_mode: t.start_mode,
                    max_players: t.max_players,
                    lap_limit: t.lap_limit,
                    lap_limit_range: t.lap_limit_bounds,
                    ai_count_range: t.ai_count_bounds,
                    allowed_cars: t.allowed_cars.clone(),
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

/// What [`Lobby::new_session`] makes.
struct NewSession {
    now: u64,
    kind: Kind,
    track: Arc<TrackContent>,
    template: Option<Arc<RaceTemplate>>,
    host: Option<ConnId>,
    max_players: u8,
    ai_count: u8,
    lap_limit: u8,
}

pub mod admin;
mod io;
pub mod rotation;

pub use io::{CarLap, Counts, Effect, GridSlot, Output, RaceView, To};

#[cfg(test)]
mod tests;
