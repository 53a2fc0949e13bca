//! The lobby core driven in-process with a manual clock: every message of seed 003's set and
//! every error reply, the countdown, AI fill, results, faults, limits, heartbeats and the
//! shutdown's drain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::*;
use crate::net::protocol::Standing;

fn content() -> Arc<Content> {
    static CONTENT: OnceLock<Arc<Content>> = OnceLock::new();
    CONTENT
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("content");
            Arc::new(Content::load(&dir).content)
        })
        .clone()
}

const TIMEOUT: u64 = 5 * 240;

/// The wall clock of tests that do not schedule anything (2026-12-02 00:00 UTC, a Wednesday).
const WALL: i64 = 1_796_169_600;

fn config() -> LobbyConfig {
    LobbyConfig {
        max_sessions: 2,
        session_timeout_ticks: 300 * 240,
        drain_ticks: 8 * 240,
        heartbeat_timeout_ticks: TIMEOUT,
        fault_injection: true,
        lobby_window_ticks: 60 * 240,
        run_templates: false,
        seed: 7,
    }
}

fn lobby() -> Lobby {
    Lobby::new(content(), config(), SessionIds::Sequential(0))
}

/// What the world says, set by each test.
#[derive(Default)]
struct FakeWorld {
    finished: HashMap<Uuid, FinishReason>,
    laps: HashMap<Uuid, Vec<CarLap>>,
}

impl RaceView for FakeWorld {
    fn finished(&self, session: Uuid) -> Option<FinishReason> {
        self.finished.get(&session).cloned()
    }

    fn standings(&self, session: Uuid) -> Vec<Standing> {
        let cars = self.laps.get(&session).map_or(0, Vec::len);
        (0..cars)
            .map(|i| Standing {
                position: i as u8 + 1,
                car_index: i as u8,
                name: format!("car {i}"),
                laps: 3,
                total_time_s: Some(100.0 + i as f64),
                best_lap_s: Some(33.0),
            })
            .collect()
    }

    fn laps(&self, session: Uuid) -> Vec<CarLap> {
        self.laps.get(&session).cloned().unwrap_or_default()
    }
}

fn outputs(l: &mut Lobby) -> Vec<Output> {
    std::iter::from_fn(|| l.poll()).collect()
}

/// The messages among `outs` that reach `conn` (of the players `everyone` names).
fn to(outs: &[Output], conn: ConnId) -> Vec<ServerMessage> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => {
                let reaches = match to {
                    To::One(c) => *c == conn,
                    To::Many(cs) => cs.contains(&conn),
                    To::Everyone => true,
                };
                reaches.then(|| msg.clone())
            }
            _ => None,
        })
        .collect()
}

fn effects(outs: &[Output]) -> Vec<Effect> {
    outs.iter()
        .filter_map(|o| match o {
            Output::World(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn error_code(msgs: &[ServerMessage]) -> Option<(u16, String)> {
    msgs.iter().find_map(|m| match m {
        ServerMessage::Error { code, message } => Some((*code, message.clone())),
        _ => None,
    })
}

fn oval() -> Uuid {
    content()
        .track("oval_simple")
        .map(|t| t.id)
        .unwrap_or_else(Uuid::nil)
}

fn create(ai: u8, max: u8, laps: u8) -> ClientMessage {
    ClientMessage::CreateSession {
        track_config_id: oval(),
        max_players: max,
        ai_count: ai,
        lap_limit: laps,
    }
}

/// A lobby with players 1..=n connected at tick 0, outputs drained.
fn with_players(n: u64) -> Lobby {
    let mut l = lobby();
    for c in 1..=n {
        l.connect(0, c, Uuid::from_u128(1000 + u128::from(c)), format!("p{c}"));
    }
    outputs(&mut l);
    l
}

/// `conn` creates a session with `msg`; returns its id.
fn created_by(l: &mut Lobby, conn: ConnId, msg: ClientMessage) -> Uuid {
    l.handle(0, conn, msg);
    let outs = outputs(l);
    match effects(&outs).first() {
        Some(Effect::CreateSession { session, .. }) => *session,
        other => panic!("no session created: {other:?}"),
    }
}

/// Player 1 creates a session (2 AI, 4 players, 3 laps); returns its id.
fn created(l: &mut Lobby) -> Uuid {
    created_by(l, 1, create(2, 4, 3))
}

/// A tick at which players 1 to 3 have just been heard from.
fn step(l: &mut Lobby, now: u64, world: &FakeWorld) {
    for c in 1..=3 {
        l.heard(now, c);
    }
    l.tick(now, WALL, world);
}

fn session_state(l: &mut Lobby, now: u64, world: &FakeWorld) -> Option<SessionState> {
    // Something changed so the next broadcast carries the state.
    l.connect(now, 99, Uuid::from_u128(99), "watcher".into());
    step(l, now, world);
    let outs = outputs(l);
    l.disconnect(99);
    outputs(l);
    to(&outs, 99).iter().find_map(|m| match m {
        ServerMessage::LobbyState {
            available_sessions, ..
        } => available_sessions.first().map(|s| s.state),
        _ => None,
    })
}

#[test]
fn a_new_player_gets_the_lobby_and_changes_are_broadcast_at_most_at_4_hz() {
    let mut l = lobby();
    let world = FakeWorld::default();
    l.connect(0, 1, Uuid::from_u128(1), "one".into());
    let outs = outputs(&mut l);
    match to(&outs, 1).as_slice() {
        [
            ServerMessage::LobbyState {
                players_in_lobby,
                car_configs,
                track_configs,
                ..
            },
        ] => {
            assert_eq!(players_in_lobby.len(), 1);
            assert_eq!(car_configs.len(), content().cars.len());
            assert_eq!(track_configs.len(), content().tracks.len());
        }
        other => panic!("{other:?}"),
    }
    l.tick(0, WALL, &world);
    assert_eq!(to(&outputs(&mut l), 1).len(), 1, "the change is broadcast");
    l.connect(10, 2, Uuid::from_u128(2), "two".into());
    outputs(&mut l);
    l.tick(10, WALL, &world);
    assert!(to(&outputs(&mut l), 1).is_empty(), "not within 60 ticks");
    l.tick(LOBBY_EVERY_TICKS, WALL, &world);
    let outs = outputs(&mut l);
    assert!(
        matches!(to(&outs, 1).as_slice(), [ServerMessage::LobbyState { players_in_lobby, .. }] if players_in_lobby.len() == 2)
    );
    l.tick(LOBBY_EVERY_TICKS * 3, WALL, &world);
    assert!(outputs(&mut l).is_empty(), "nothing changed, nothing sent");
}

#[test]
fn a_heartbeat_is_answered_with_the_tick() {
    let mut l = with_players(1);
    l.handle(77, 1, ClientMessage::Heartbeat { client_tick: 5 });
    assert_eq!(
        to(&outputs(&mut l), 1),
        vec![ServerMessage::HeartbeatAck { server_tick: 77 }]
    );
}

#[test]
fn a_car_is_selected_by_id_and_an_unknown_one_is_404() {
    let mut l = with_players(1);
    let car = content().cars[1].id;
    l.handle(0, 1, ClientMessage::SelectCar { car_config_id: car });
    assert!(to(&outputs(&mut l), 1).is_empty());
    let id = created(&mut l);
    assert_ne!(id, Uuid::nil());
    l.handle(0, 1, ClientMessage::StartSession);
    let outs = outputs(&mut l);
    match effects(&outs).as_slice() {
        [Effect::StartRace { grid, .. }] => {
            assert!(
                grid.iter().all(|g| g.car.id == car),
                "AI cars take the host's car"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut l = with_players(1);
    l.handle(
        0,
        1,
        ClientMessage::SelectCar {
            car_config_id: Uuid::from_u128(7),
        },
    );
    let (code, message) = error_code(&to(&outputs(&mut l), 1)).expect("an error");
    assert_eq!(code, code::NOT_FOUND);
    assert!(message.contains("unknown car"), "{message}");
}

#[test]
fn creating_a_session_joins_its_host_with_the_track_and_car() {
    let mut l = with_players(1);
    l.handle(0, 1, create(2, 4, 3));
    let outs = outputs(&mut l);
    let session = match effects(&outs).as_slice() {
        [
            Effect::CreateSession {
                session,
                track,
                lap_limit: 3,
            },
        ] => {
            assert_eq!(track.id, oval());
            *session
        }
        other => panic!("{other:?}"),
    };
    match to(&outs, 1).as_slice() {
        [
            ServerMessage::SessionJoined {
                session_id,
                your_grid_position: 1,
                track,
                car,
            },
        ] => {
            assert_eq!(*session_id, session);
            assert!(track.centerline.len() > 10);
            assert_eq!(car.id, content().cars[0].id);
            assert_eq!(car.physics, content().cars[0].spec.to_array());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_create_requests_are_refused_with_the_reason() {
    let slots = content()
        .track("oval_simple")
        .map_or(0, |t| t.geometry.grid_slots().len().min(16)) as u8;
    let cases = [
        (
            ClientMessage::CreateSession {
                track_config_id: Uuid::from_u128(3),
                max_players: 4,
                ai_count: 0,
                lap_limit: 1,
            },
            code::NOT_FOUND,
            "unknown track",
        ),
        (create(0, 0, 1), code::BAD_REQUEST, "max_players = 0"),
        (create(0, slots + 1, 1), code::BAD_REQUEST, "max_players"),
        (create(0, 4, 0), code::BAD_REQUEST, "lap_limit = 0"),
        (create(0, 4, 100), code::BAD_REQUEST, "lap_limit = 100"),
    ];
    for (msg, want, text) in cases {
        let mut l = with_players(1);
        l.handle(0, 1, msg);
        let outs = outputs(&mut l);
        let (code, message) = error_code(&to(&outs, 1)).expect("an error");
        assert_eq!(code, want, "{message}");
        assert!(message.contains(text), "{message}");
        assert!(effects(&outs).is_empty(), "nothing created");
    }
    // Already in a session, and the session limit.
    let mut l = with_players(3);
    created(&mut l);
    l.handle(0, 1, create(0, 4, 1));
    let (code, _) = error_code(&to(&outputs(&mut l), 1)).expect("an error");
    assert_eq!(code, code::CONFLICT);
    l.handle(0, 2, create(0, 4, 1));
    assert!(error_code(&to(&outputs(&mut l), 2)).is_none());
    l.handle(0, 3, create(0, 4, 1));
    let (code, message) = error_code(&to(&outputs(&mut l), 3)).expect("an error");
    assert_eq!(code, code::UNAVAILABLE);
    assert!(message.contains("maximum of 2 sessions"), "{message}");
}

#[test]
fn players_join_in_grid_order_until_the_session_is_full() {
    let mut l = with_players(4);
    let session = created_by(&mut l, 1, create(0, 2, 1));
    l.handle(
        0,
        2,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    assert!(matches!(
        to(&outputs(&mut l), 2).as_slice(),
        [ServerMessage::SessionJoined {
            your_grid_position: 2,
            ..
        }]
    ));
    l.handle(
        0,
        2,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    assert_eq!(
        error_code(&to(&outputs(&mut l), 2)).map(|e| e.0),
        Some(code::CONFLICT),
        "already in it"
    );
    l.handle(
        0,
        3,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    let (code, message) = error_code(&to(&outputs(&mut l), 3)).expect("an error");
    assert_eq!(code, code::CONFLICT);
    assert!(message.contains("is full (2 players)"), "{message}");
    l.handle(
        0,
        4,
        ClientMessage::JoinSession {
            session_id: Uuid::from_u128(55),
        },
    );
    assert_eq!(
        error_code(&to(&outputs(&mut l), 4)).map(|e| e.0),
        Some(code::NOT_FOUND)
    );
}

#[test]
fn leaving_in_the_lobby_hands_the_host_on_and_the_last_one_out_removes_the_session() {
    let mut l = with_players(3);
    let session = created(&mut l);
    l.handle(
        0,
        2,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    outputs(&mut l);
    l.handle(0, 1, ClientMessage::LeaveSession);
    assert_eq!(to(&outputs(&mut l), 1), vec![ServerMessage::SessionLeft]);
    l.handle(0, 1, ClientMessage::LeaveSession);
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::BAD_REQUEST),
        "not in a session"
    );
    // Player 2 is the host now: it can start, player 1 (back in) cannot.
    l.handle(
        0,
        1,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    l.handle(0, 1, ClientMessage::StartSession);
    let (code, _) = error_code(&to(&outputs(&mut l), 1)).expect("an error");
    assert_eq!(code, code::FORBIDDEN);
    l.handle(0, 1, ClientMessage::LeaveSession);
    l.handle(0, 2, ClientMessage::LeaveSession);
    let outs = outputs(&mut l);
    assert_eq!(
        effects(&outs),
        vec![Effect::RemoveSession { session }],
        "the empty session goes"
    );
    assert_eq!(l.counts().sessions, 0);
}

#[test]
fn the_host_starts_the_race_with_ai_filling_the_grid_and_a_countdown() {
    let mut l = with_players(3);
    let world = FakeWorld::default();
    l.handle(0, 3, ClientMessage::StartSession);
    assert_eq!(
        error_code(&to(&outputs(&mut l), 3)).map(|e| e.0),
        Some(code::BAD_REQUEST),
        "not in a session"
    );
    // 4 places, 3 AI asked, 2 humans: 2 AI fill the grid.
    let session = created_by(&mut l, 1, create(3, 4, 3));
    l.handle(
        0,
        2,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    l.handle(0, 2, ClientMessage::StartSession);
    let (code, message) = error_code(&to(&outputs(&mut l), 2)).expect("an error");
    assert_eq!(code, code::FORBIDDEN, "{message}");
    l.handle(100, 1, ClientMessage::StartSession);
    let outs = outputs(&mut l);
    let grid = match effects(&outs).as_slice() {
        [
            Effect::StartRace {
                session: s,
                lap_limit: 3,
                grid,
                ..
            },
        ] if *s == session => grid.clone(),
        other => panic!("{other:?}"),
    };
    let names: Vec<&str> = grid.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["p1", "p2", "AI 01", "AI 02"]);
    assert_eq!(grid[0].driver.map(|d| d.1), Some(1));
    assert_eq!(grid[1].driver.map(|d| d.1), Some(2));
    assert!(grid[2].driver.is_none() && grid[3].driver.is_none());
    for player in [1, 2] {
        match to(&outs, player).as_slice() {
            [
                ServerMessage::SessionStarting {
                    countdown_seconds: 5,
                    grid,
                },
            ] => {
                assert_eq!(grid.len(), 4);
                assert_eq!(grid[3].car_index, 3);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        to(&outs, 3).is_empty(),
        "the lobby is told by the broadcast"
    );
    l.handle(100, 1, ClientMessage::StartSession);
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::CONFLICT)
    );
    l.handle(
        100,
        3,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    let (code, message) = error_code(&to(&outputs(&mut l), 3)).expect("an error");
    assert_eq!(code, code::CONFLICT);
    assert!(message.contains("has started"), "{message}");
    assert_eq!(l.counts().running, 1);
    assert_eq!(l.counts().cars, 4);
    // The countdown is 5 s of ticks from the start.
    let countdown = u64::from(COUNTDOWN_TICKS);
    assert_eq!(
        session_state(&mut l, 100 + countdown - 1, &world),
        Some(SessionState::Countdown)
    );
    assert_eq!(
        session_state(&mut l, 100 + countdown + 60, &world),
        Some(SessionState::Racing)
    );
}

/// Players 1 and 2 in a started session of 4 cars.
fn racing() -> (Lobby, Uuid, FakeWorld) {
    let mut l = with_players(3);
    let session = created(&mut l);
    l.handle(
        0,
        2,
        ClientMessage::JoinSession {
            session_id: session,
        },
    );
    l.handle(0, 1, ClientMessage::StartSession);
    outputs(&mut l);
    let mut world = FakeWorld::default();
    world.laps.insert(
        session,
        vec![
            CarLap {
                lap: 1,
                finished: false
            };
            4
        ],
    );
    (l, session, world)
}

#[test]
fn a_player_leaving_a_race_hands_its_car_to_the_ai_and_peers_are_told() {
    let (mut l, session, _) = racing();
    l.handle(10, 2, ClientMessage::LeaveSession);
    let outs = outputs(&mut l);
    assert_eq!(
        effects(&outs),
        vec![Effect::HandToAi {
            session,
            car_index: 1
        }]
    );
    l.disconnect(1);
    let outs = outputs(&mut l);
    assert_eq!(
        effects(&outs),
        vec![Effect::HandToAi {
            session,
            car_index: 0
        }]
    );
    assert_eq!(l.counts().players, 2);
    // Player 2 left the session before: it is not told of player 1.
    assert!(to(&outs, 2).is_empty());
}

#[test]
fn a_finished_race_sends_results_ends_the_session_and_is_cleaned_up_after_its_timeout() {
    let (mut l, session, mut world) = racing();
    step(&mut l, 2000, &world);
    assert!(effects(&outputs(&mut l)).is_empty(), "still racing");
    world.finished.insert(session, FinishReason::AllFinished);
    step(&mut l, 3000, &world);
    let outs = outputs(&mut l);
    for player in [1, 2] {
        let results: Vec<_> = to(&outs, player)
            .into_iter()
            .filter(|m| matches!(m, ServerMessage::SessionResults { .. }))
            .collect();
        match results.as_slice() {
            [
                ServerMessage::SessionResults {
                    session_id,
                    fault: None,
                    ended_by: None,
                    standings,
                },
            ] => {
                assert_eq!(*session_id, session);
                assert_eq!(standings.len(), 4);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        effects(&outs).as_slice(),
        [Effect::SessionEnded { fault: None, standings, .. }] if standings.len() == 4
    ));
    assert_eq!(l.counts().running, 0);
    assert_eq!(
        session_state(&mut l, 3001, &world),
        Some(SessionState::Finished)
    );
    // Players are free to create again.
    l.handle(3001, 1, ClientMessage::LeaveSession);
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::BAD_REQUEST)
    );
    step(&mut l, 3000 + 300 * 240 - 1, &world);
    assert!(
        effects(&outputs(&mut l)).is_empty(),
        "listed until the timeout"
    );
    step(&mut l, 3000 + 300 * 240, &world);
    assert_eq!(
        effects(&outputs(&mut l)),
        vec![Effect::RemoveSession { session }]
    );
    assert_eq!(l.counts().sessions, 0);
}

#[test]
fn a_fault_ends_its_session_once_with_a_500_and_the_fault_in_the_results() {
    let (mut l, session, mut world) = racing();
    assert!(l.session_faulted(session, "a car's state became non-finite"));
    let outs = outputs(&mut l);
    assert_eq!(
        effects(&outs),
        vec![Effect::EndRace {
            session,
            reason: FinishReason::Fault("a car's state became non-finite".into())
        }]
    );
    let (code, message) = error_code(&to(&outs, 2)).expect("an error");
    assert_eq!(code, code::SESSION_FAULT);
    assert!(message.contains("non-finite"), "{message}");
    assert!(to(&outs, 3).is_empty(), "players elsewhere are not told");
    assert!(!l.session_faulted(session, "again"), "counted once");
    world.finished.insert(
        session,
        FinishReason::Fault("a car's state became non-finite".into()),
    );
    step(&mut l, 500, &world);
    let outs = outputs(&mut l);
    assert!(matches!(
        effects(&outs).as_slice(),
        [Effect::SessionEnded { fault: Some(f), .. }] if f.contains("non-finite")
    ));
    assert!(!l.session_faulted(session, "after the end"));
}

#[test]
fn fault_injection_is_refused_unless_enabled_and_running() {
    let mut l = Lobby::new(
        content(),
        LobbyConfig {
            fault_injection: false,
            ..config()
        },
        SessionIds::Sequential(0),
    );
    l.connect(0, 1, Uuid::from_u128(1), "one".into());
    outputs(&mut l);
    l.handle(
        0,
        1,
        ClientMessage::InjectFault {
            kind: FaultKind::Panic,
        },
    );
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::FORBIDDEN)
    );
    let mut l = with_players(1);
    created(&mut l);
    l.handle(
        0,
        1,
        ClientMessage::InjectFault {
            kind: FaultKind::Panic,
        },
    );
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::CONFLICT),
        "not running"
    );
    let (mut l, session, _) = racing();
    l.handle(
        9,
        2,
        ClientMessage::InjectFault {
            kind: FaultKind::NonFinite,
        },
    );
    assert_eq!(
        effects(&outputs(&mut l)),
        vec![Effect::InjectFault {
            session,
            kind: FaultKind::NonFinite,
            car_index: Some(1)
        }]
    );
}

#[test]
fn a_silent_connection_is_closed_after_the_heartbeat_timeout() {
    let (mut l, session, world) = racing();
    // Player 1 sends inputs, player 2 heartbeats, player 3 nothing.
    for t in (0..TIMEOUT).step_by(240) {
        l.heard(t, 1);
        l.handle(t, 2, ClientMessage::Heartbeat { client_tick: 0 });
    }
    l.tick(TIMEOUT - 1, WALL, &world);
    assert!(
        !outputs(&mut l)
            .iter()
            .any(|o| matches!(o, Output::Close { .. }))
    );
    l.tick(TIMEOUT, WALL, &world);
    let outs = outputs(&mut l);
    let closed: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![(3, CloseReason::HeartbeatTimeout)]);
    assert_eq!(l.counts().players, 2);
    // Later, player 2 falls silent: its car goes to the AI.
    l.heard(TIMEOUT * 2, 1);
    l.tick(TIMEOUT * 2, WALL, &world);
    let outs = outputs(&mut l);
    assert!(outs.contains(&Output::Close {
        conn: 2,
        reason: CloseReason::HeartbeatTimeout
    }));
    assert!(outs.contains(&Output::World(Effect::HandToAi {
        session,
        car_index: 1
    })));
    assert!(
        to(&outs, 1)
            .iter()
            .any(|m| matches!(m, ServerMessage::PlayerDisconnected { .. })),
        "its peer is told"
    );
}

#[test]
fn a_shutdown_tells_everyone_removes_lobby_sessions_and_drains_racing_ones_to_the_lap_end() {
    let (mut l, racing_session, mut world) = racing();
    // Player 3 holds a session that has not started.
    let waiting = created_by(&mut l, 3, create(0, 4, 1));
    l.shutdown(1000, &world);
    let outs = outputs(&mut l);
    for player in [1, 2, 3] {
        let (code, message) = error_code(&to(&outs, player)).expect("told");
        assert_eq!(code, code::UNAVAILABLE);
        assert_eq!(message, "server shutting down");
    }
    assert_eq!(
        effects(&outs),
        vec![Effect::RemoveSession { session: waiting }]
    );
    assert!(!l.is_drained(), "a race is still on");
    l.handle(1001, 3, create(0, 4, 1));
    assert_eq!(
        error_code(&to(&outputs(&mut l), 3)).map(|e| e.0),
        Some(code::UNAVAILABLE)
    );
    // Three cars finish the lap they were on; the race goes on for the fourth.
    world.laps.insert(
        racing_session,
        vec![
            CarLap {
                lap: 2,
                finished: false,
            },
            CarLap {
                lap: 2,
                finished: false,
            },
            CarLap {
                lap: 1,
                finished: true,
            },
            CarLap {
                lap: 1,
                finished: false,
            },
        ],
    );
    step(&mut l, 1100, &world);
    assert!(effects(&outputs(&mut l)).is_empty());
    if let Some(cars) = world.laps.get_mut(&racing_session) {
        cars[3].lap = 2;
    }
    step(&mut l, 1101, &world);
    assert_eq!(
        effects(&outputs(&mut l)),
        vec![Effect::EndRace {
            session: racing_session,
            reason: FinishReason::Fault("server shut down".into())
        }]
    );
    world.finished.insert(
        racing_session,
        FinishReason::Fault("server shut down".into()),
    );
    step(&mut l, 1102, &world);
    let outs = outputs(&mut l);
    assert!(
        matches!(
            effects(&outs).as_slice(),
            [Effect::SessionEnded { fault: None, .. }]
        ),
        "a drained race is not a fault: {outs:?}"
    );
    assert!(l.is_drained());
    assert!(
        !outs.iter().any(|o| matches!(
            o,
            Output::Send {
                msg: ServerMessage::LobbyState { .. },
                ..
            }
        )),
        "no lobby broadcasts while shutting down"
    );
}

#[test]
fn the_drain_ends_every_race_at_its_deadline() {
    let (mut l, session, world) = racing();
    l.shutdown(1000, &world);
    outputs(&mut l);
    step(&mut l, 1000 + 8 * 240 - 1, &world);
    assert!(effects(&outputs(&mut l)).is_empty());
    step(&mut l, 1000 + 8 * 240, &world);
    assert_eq!(
        effects(&outputs(&mut l)),
        vec![Effect::EndRace {
            session,
            reason: FinishReason::Fault("server shut down".into())
        }]
    );
    step(&mut l, 1000 + 8 * 240 + 1, &world);
    assert!(effects(&outputs(&mut l)).is_empty(), "asked once");
}

#[test]
fn a_shutdown_without_races_is_drained_at_once_and_start_is_refused() {
    let mut l = with_players(1);
    created(&mut l);
    let world = FakeWorld::default();
    l.shutdown(5, &world);
    outputs(&mut l);
    assert!(l.is_drained());
    l.handle(6, 1, ClientMessage::StartSession);
    let (code, _) = error_code(&to(&outputs(&mut l), 1)).expect("an error");
    assert_eq!(code, code::UNAVAILABLE);
    l.handle(6, 1, ClientMessage::LeaveSession);
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::BAD_REQUEST),
        "the waiting session went with the shutdown"
    );
}

#[test]
fn the_config_turns_seconds_into_ticks() {
    let mut server = ServerConfig::default();
    server.server.drain_seconds = 8.0;
    server.server.session_timeout_seconds = 300;
    server.network.heartbeat_timeout_ms = 1500;
    server.server.lobby_window_seconds = 45;
    let c = LobbyConfig::from_server(&server, 3);
    assert_eq!(c.lobby_window_ticks, 45 * 240);
    assert!(c.run_templates, "templates run by default");
    assert_eq!(c.seed, 3);
    assert_eq!(c.drain_ticks, 8 * 240);
    assert_eq!(c.session_timeout_ticks, 300 * 240);
    assert_eq!(c.heartbeat_timeout_ticks, 360);
}

mod operations;

#[test]
fn an_allocated_template_makes_the_rotations_next_session_and_an_unknown_one_changes_nothing() {
    let rotating = |asked: Option<&str>| {
        let mut l = Lobby::new(
            content(),
            LobbyConfig {
                run_templates: true,
                ..config()
            },
            SessionIds::Sequential(0),
        );
        let known = asked.map(|t| l.next_template(t));
        l.connect(0, 1, Uuid::from_u128(1), "watcher".into());
        step(&mut l, 1, &FakeWorld::default());
        let outs = outputs(&mut l);
        let template = to(&outs, 1).iter().find_map(|m| match m {
            ServerMessage::LobbyState {
                available_sessions, ..
            } => available_sessions.first().and_then(|s| s.template_id),
            _ => None,
        });
        (known, template)
    };
    let slug_id = |slug: &str| {
        content()
            .templates
            .iter()
            .find(|t| t.slug == slug)
            .map(|t| t.id)
    };
    // Every rotation template, asked for, is the one made.
    for t in content()
        .templates
        .iter()
        .filter(|t| rotation::in_rotation(t))
    {
        assert_eq!(
            rotating(Some(&t.slug)),
            (Some(true), Some(t.id)),
            "{}",
            t.slug
        );
        assert_eq!(
            rotating(Some(&t.name)),
            (Some(true), Some(t.id)),
            "{}",
            t.name
        );
    }
    // Unknown, or scheduled (it runs at its times only): the seed's pick, as without one.
    let (known, picked) = rotating(Some("no_such_template"));
    assert_eq!(known, Some(false));
    assert_eq!((None, picked), rotating(None));
    assert!(picked.is_some());
    assert!(slug_id("formula_endurance").is_some());
    assert_eq!(rotating(Some("formula_endurance")), (Some(false), picked));
}
