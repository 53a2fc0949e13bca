//! The simulation thread of `apexsim serve`: the shell around the [`Lobby`] core and the
//! world. One world holds every session, stepped at 240 Hz by the real clock; the thread never
//! awaits. Connection tasks reach it through bounded channels: control messages ([`ToSim`])
//! are fed to the lobby between ticks, input datagrams are read off the transports and
//! policed by [`apply_inputs`] in [`SimSystems::Input`] (no task woken per input), and [`send_telemetry`] in [`SimSystems::Snapshot`] encodes each
//! session's packet once and queues it to its players. What the lobby returns is delivered
//! here: messages to the connections' queues, effects to the world, sessions to the
//! [`Recorder`] thread, which does the archive work.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use apexsim_systems::prelude::*;
use bevy_ecs::prelude::{Entity, IntoScheduleConfigs};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::config::ServerConfig;
use super::live::{LIVE_EVERY_TICKS, LiveClocks, LiveView, SessionCars};
use super::lobby::admin::{AdminError, AdminReply, AdminRequest};
use super::lobby::{
    CarLap, Effect, GridSlot, Lobby, LobbyConfig, Output, RaceView, SessionIds, To,
};
use super::metrics::{DropReason, Metrics};
use super::protocol::{self, ClientMessage, CloseReason, FaultKind, ServerMessage, Standing};
use crate::archive::index::ResultEntry;
use crate::archive::recorder::{RecordedCar, Recorder, RecorderMsg};
use crate::archive::writer::WriterReport;
use crate::content::{Content, TrackContent};
use crate::runner::{Entry, FLUSH_TICKS, Paced, Pacer, classify, session_row, unix_now};

pub use super::lobby::ConnId;

mod systems;

pub use systems::{
    ClientLink, InputPolicy, NetDriver, NetInputs, NetLinks, NetMetrics, SessionFaults,
    SnapshotScratch, TelemetryRates, apply_inputs, send_telemetry,
};

/// How long a [`FaultKind::Stall`] drill stops the simulation thread: long enough for the
/// health checks that watch it (Agones' pings) to notice.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(6);

/// What the simulation thread sends a connection task.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded control frame.
    Frame(Arc<Vec<u8>>),
    /// Close the connection: the lobby has let it go, or its inputs broke the rules.
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
        /// Where to send it frames (and its close).
        out: mpsc::Sender<Outgoing>,
        /// Its transport: telemetry datagrams out, input datagrams in.
        datagrams: super::link::Link,
        /// Its violation count, shared with its task.
        violations: Arc<super::connection::Violations>,
    },
    /// The rotation's next session is of this template (an Agones allocation asked).
    NextTemplate {
        /// Its slug or name.
        template: String,
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
    /// The content directory was reloaded.
    Content(Arc<Content>),
    /// An operator's request, answered on `reply`.
    Admin {
        /// What to do.
        request: AdminRequest,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Result<AdminReply, AdminError>>,
    },
}

/// A session as the world holds it: its entity and its cars by index, with the driver and car
/// names the classification shows.
struct WorldSession {
    entity: Entity,
    track: Arc<TrackContent>,
    lap_limit: u16,
    cars: Vec<(Entity, String, String)>,
}

impl WorldSession {
    /// Its cars in grid order, as the classification takes them.
    fn entries(&self) -> Vec<Entry<'_>> {
        self.cars
            .iter()
            .map(|(car, driver, model)| Entry {
                car: *car,
                driver: driver.clone(),
                car_name: model,
            })
            .collect()
    }

    fn live(&self, id: Uuid) -> SessionCars<'_> {
        SessionCars {
            id,
            entity: self.entity,
            track: (self.track.id, &self.track.name),
            track_length_m: self.track.geometry.length_m(),
            sector_starts: &self.track.sectors,
            laps: self.lap_limit,
            cars: self.entries(),
        }
    }
}

/// Everything the simulation thread owns.
pub struct SimServer {
    sim: Simulation,
    lobby: Lobby,
    metrics: Metrics,
    control: mpsc::Receiver<ToSim>,
    recorder: Recorder,
    /// The tracks registered in the world, each version once.
    tracks: Vec<(Arc<TrackContent>, TrackId)>,
    sessions: HashMap<Uuid, WorldSession>,
    flush_now: bool,
    live: Option<tokio::sync::watch::Sender<Arc<LiveView>>>,
    clocks: LiveClocks,
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
        classify(self.world, &s.entries())
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
    /// Builds the world with the network systems; the lobby's rotation picks from `seed`.
    pub fn new(
        content: Arc<Content>,
        config: ServerConfig,
        metrics: Metrics,
        control: mpsc::Receiver<ToSim>,
        recorder: Recorder,
        seed: u64,
    ) -> Self {
        let mut sim = Simulation::new(SimulationPlugin { seed });
        let app = sim.app_mut();
        app.insert_resource(NetInputs {
            policy: InputPolicy::from_config(&config),
            cars: HashMap::new(),
            heard: Vec::new(),
        })
        .insert_resource(NetLinks::default())
        .insert_resource(NetMetrics(metrics.clone()))
        .insert_resource(TelemetryRates {
            full_rate_radius_m: config.network.telemetry_full_rate_radius_m,
            far_every_ticks: config.network.telemetry_far_every_ticks,
        })
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
        recorder.send(RecorderMsg::Templates(
            content.templates.iter().map(|t| (**t).clone()).collect(),
        ));
        let lobby = Lobby::new(
            content,
            LobbyConfig::from_server(&config, seed),
            SessionIds::Random,
        );
        Self {
            sim,
            lobby,
            metrics,
            control,
            recorder,
            tracks: Vec::new(),
            sessions: HashMap::new(),
            flush_now: false,
            live: None,
            clocks: LiveClocks::default(),
        }
    }

    /// Publishes the live timing on `tx` at 20 Hz.
    pub fn with_live(mut self, tx: tokio::sync::watch::Sender<Arc<LiveView>>) -> Self {
        self.live = Some(tx);
        self
    }

    /// The live clocks' tick, and every [`LIVE_EVERY_TICKS`] the view for the web page.
    fn observe_live(&mut self, tick: u64) {
        let Some(tx) = &self.live else {
            return;
        };
        let world = self.sim.world();
        for s in self.sessions.values() {
            if !s.cars.is_empty() {
                self.clocks.observe(
                    world,
                    tick,
                    s.cars.iter().map(|c| c.0),
                    s.track.geometry.length_m(),
                    &s.track.sectors,
                );
            }
        }
        if !tick.is_multiple_of(LIVE_EVERY_TICKS) || tx.receiver_count() == 0 {
            return;
        }
        let mut ids: Vec<&Uuid> = self.sessions.keys().collect();
        ids.sort();
        let view = LiveView {
            tick,
            tick_hz: TICK_HZ,
            sessions: ids
                .iter()
                .map(|id| {
                    self.clocks
                        .session(world, tick, &self.sessions[*id].live(**id))
                })
                .collect(),
        };
        tx.send_replace(Arc::new(view));
    }

    /// Runs until a shutdown has drained every session, paced at 240 Hz.
    pub fn run(mut self) -> SimReport {
        let mut pacer = Pacer::new(1.0);
        let mut finished = 0u64;
        loop {
            self.handle_control();
            finished += self.deliver();
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
            // Drained in place: the buffer keeps its capacity from tick to tick.
            let mut inputs = self.sim.world_mut().resource_mut::<NetInputs>();
            for conn in inputs.heard.drain(..) {
                self.lobby.heard(tick, conn);
            }
            let view = WorldView {
                world: self.sim.world(),
                sessions: &self.sessions,
            };
            self.lobby.tick(tick, unix_now(), &view);
            self.observe_live(tick);
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
                    datagrams,
                    violations,
                } => {
                    let world = self.sim.world_mut();
                    let policy = world.resource::<NetInputs>().policy;
                    let link = ClientLink::new(out, datagrams, violations, &policy);
                    world.resource_mut::<NetLinks>().0.insert(conn, link);
                    self.lobby.connect(now, conn, player, name);
                }
                ToSim::Message { conn, msg } => self.lobby.handle(now, conn, msg),
                ToSim::NextTemplate { template } => {
                    self.lobby.next_template(&template);
                }
                ToSim::Disconnected { conn } => {
                    self.lobby.disconnect(conn);
                    self.forget(conn);
                }
                ToSim::Shutdown => {
                    let view = WorldView {
                        world: self.sim.world(),
                        sessions: &self.sessions,
                    };
                    self.lobby.shutdown(now, &view);
                }
                ToSim::Content(content) => {
                    self.store_templates(&content);
                    self.lobby.content_changed(content);
                }
                ToSim::Admin { request, reply } => {
                    let _ = reply.send(self.lobby.admin(now, request));
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
                    if let Some(link) = self.sim.world().resource::<NetLinks>().0.get(&conn) {
                        let _ = link.out.try_send(Outgoing::Close(reason));
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
        let mut deliver = |link: &ClientLink| {
            if link.out.try_send(Outgoing::Frame(frame.clone())).is_err() {
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
                let track_id = self.track_id(&track);
                let entity = spawn_session(
                    self.sim.world_mut(),
                    SessionConfig {
                        id: session,
                        track: track_id,
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
                        track,
                        lap_limit,
                        cars: Vec::new(),
                    },
                );
            }
            Effect::RemoveSession { session } => {
                if let Some(s) = self.sessions.remove(&session) {
                    self.clocks.forget(s.cars.iter().map(|c| c.0));
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
                template,
                grid,
            } => self.start_race(session, &track, lap_limit, template, &grid),
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
                    FaultKind::Stall => {
                        tracing::warn!(
                            seconds = STALL.as_secs_f64(),
                            "fault injected: the simulation thread stalls"
                        );
                        std::thread::sleep(STALL);
                    }
                }
            }
            Effect::SessionEnded {
                session,
                standings,
                fault,
                ended_by,
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
                    ended_by,
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

    /// The templates go to the index (seed 003 section 9: `race_templates`).
    fn store_templates(&self, content: &Content) {
        let templates = content.templates.iter().map(|t| (**t).clone()).collect();
        self.recorder.send(RecorderMsg::Templates(templates));
    }

    /// The world's id of this version of a track, registered on first use (a reloaded track
    /// is another version; sessions made before keep theirs).
    fn track_id(&mut self, track: &Arc<TrackContent>) -> TrackId {
        if let Some((_, id)) = self
            .tracks
            .iter()
            .find(|(t, _)| Arc::ptr_eq(t, track) || **t == **track)
        {
            return *id;
        }
        let id = self
            .sim
            .world_mut()
            .resource_mut::<Tracks>()
            .add(track.geometry.clone());
        self.tracks.push((track.clone(), id));
        id
    }

    /// Places the grid, starts the countdown and begins the session's recording.
    fn start_race(
        &mut self,
        session: Uuid,
        track: &TrackContent,
        lap_limit: u16,
        template: Option<Uuid>,
        grid: &[GridSlot],
    ) {
        let Some(entity) = self.sessions.get(&session).map(|s| s.entity) else {
            return;
        };
        let _span = tracing::info_span!("session", id = %session).entered();
        let mut cars = Vec::with_capacity(grid.len());
        for slot in grid {
            let world = self.sim.world_mut();
            let spec = slot.car.spec;
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
                    cars.push((car, slot.name.clone(), slot.car.name.clone()));
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
                car_model: model.clone(),
            })
            .collect();
        let mut row = session_row(session, track, lap_limit, None, &recorded);
        row.template_id = template;
        self.recorder.send(RecorderMsg::Begin {
            row,
            track_length_m: track.geometry.length_m(),
            cars: recorded,
            ack: None,
        });
        if let Some(s) = self.sessions.get_mut(&session) {
            s.cars = cars;
        }
    }
}
