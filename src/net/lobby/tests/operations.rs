//! Race operations on the lobby core, with a manual clock (ticks and wall seconds): the
//! rotation's picks and sessions, countdown and scheduled starts, custom sessions from a
//! template, content reloads and the operator's actions.

use super::*;
use crate::content::{RaceTemplate, Schedule};
use crate::net::lobby::admin::{AdminError, AdminReply, AdminRequest};
use crate::net::lobby::rotation::{ANNOUNCE_AHEAD_S, pick_template};

const GT3_SPRINT: &str = "gt3_sprint";
const GT3: &str = "gt3_generic";
const FORMULA: &str = "formula_basic";

fn running_templates() -> LobbyConfig {
    LobbyConfig {
        run_templates: true,
        max_sessions: 4,
        ..config()
    }
}

/// The bundled content with its templates changed by `edit`.
fn content_with(edit: impl Fn(&mut RaceTemplate)) -> Arc<Content> {
    let mut c = (*content()).clone();
    c.templates = c
        .templates
        .iter()
        .map(|t| {
            let mut t = (**t).clone();
            edit(&mut t);
            Arc::new(t)
        })
        .collect();
    Arc::new(c)
}

/// Only the template `slug` runs, changed by `edit`; the others are inactive.
fn only(slug: &'static str, edit: impl Fn(&mut RaceTemplate)) -> Arc<Content> {
    content_with(move |t| {
        if t.slug == slug {
            edit(t);
        } else {
            t.active = false;
        }
    })
}

fn sessions_listed(outs: &[Output], conn: ConnId) -> Option<Vec<SessionSummary>> {
    to(outs, conn).into_iter().rev().find_map(|m| match m {
        ServerMessage::LobbyState {
            available_sessions, ..
        } => Some(available_sessions),
        _ => None,
    })
}

fn car(slug: &str) -> Uuid {
    content().car(slug).map(|c| c.id).unwrap_or_else(Uuid::nil)
}

fn template(slug: &str) -> Arc<RaceTemplate> {
    content().template(slug).cloned().expect("bundled template")
}

#[test]
fn rotation_picks_follow_the_weights_and_skip_inactive_and_scheduled_templates() {
    // The bundled rotation: GT3 Sprint (60) and Oval Open (20); Formula Endurance is scheduled.
    // A disabled copy with the highest weight is never picked.
    let mut templates = content().templates.clone();
    let mut disabled = (*template(GT3_SPRINT)).clone();
    disabled.id = Uuid::from_u128(0xd15a);
    disabled.slug = "disabled".into();
    disabled.rotation_weight = 100;
    disabled.active = false;
    templates.push(Arc::new(disabled));
    let mut rng = SimRng::seeded(2026);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..10_000 {
        let t = pick_template(&templates, &mut rng).expect("a template");
        *counts.entry(t.slug.clone()).or_default() += 1;
    }
    let share = |slug: &str| f64::from(counts.get(slug).copied().unwrap_or(0)) / 100.0;
    assert!((share(GT3_SPRINT) - 75.0).abs() <= 1.0, "{counts:?}");
    assert!((share("oval_open") - 25.0).abs() <= 1.0, "{counts:?}");
    assert_eq!(counts.get("disabled"), None, "inactive: never picked");
    assert_eq!(
        counts.get("formula_endurance"),
        None,
        "scheduled: not in the rotation"
    );
    // The same seed picks the same sequence.
    let picks = |seed| {
        let mut rng = SimRng::seeded(seed);
        (0..50)
            .map(|_| pick_template(&templates, &mut rng).map(|t| t.id))
            .collect::<Vec<_>>()
    };
    assert_eq!(picks(9), picks(9));
    let none: Vec<Arc<RaceTemplate>> = Vec::new();
    assert!(pick_template(&none, &mut rng).is_none());
}

#[test]
fn the_rotation_session_is_announced_and_the_next_follows_when_it_finishes() {
    let mut l = Lobby::new(
        only(GT3_SPRINT, |_| {}),
        running_templates(),
        SessionIds::Sequential(0),
    );
    l.connect(0, 1, Uuid::from_u128(1), "p1".into());
    outputs(&mut l);
    let mut world = FakeWorld::default();
    l.tick(0, WALL, &world);
    let outs = outputs(&mut l);
    let first = match effects(&outs).as_slice() {
        [
            Effect::CreateSession {
                session,
                track,
                lap_limit: 5,
            },
        ] => {
            assert_eq!(track.slug, "road_course_a");
            *session
        }
        other => panic!("{other:?}"),
    };
    let listed = sessions_listed(&outs, 1).expect("lobby state");
    let s = &listed[0];
    assert_eq!(s.id, first);
    assert!(s.rotation);
    assert_eq!(s.template_name.as_deref(), Some("GT3 Sprint"));
    assert_eq!(s.template_id, Some(template(GT3_SPRINT).id));
    assert_eq!(s.start_mode, StartMode::Countdown);
    assert_eq!(s.allowed_cars, vec![car(GT3)]);
    assert_eq!((s.lap_limit, s.max_players, s.ai_count), (5, 16, 12));
    assert_eq!(s.host_name, "", "nobody hosts a rotation session");
    // One open rotation session at a time.
    l.tick(1, WALL, &world);
    assert!(effects(&outputs(&mut l)).is_empty());
    // Player 1 joins (its default car is the GT3), the window passes, it starts.
    l.handle(1, 1, ClientMessage::JoinSession { session_id: first });
    outputs(&mut l);
    l.heard(60 * 240, 1);
    l.tick(60 * 240, WALL, &world);
    let outs = outputs(&mut l);
    let starts: Vec<_> = effects(&outs)
        .into_iter()
        .filter(|e| matches!(e, Effect::StartRace { .. }))
        .collect();
    match starts.as_slice() {
        [
            Effect::StartRace {
                session,
                template,
                grid,
                ..
            },
        ] => {
            assert_eq!(*session, first);
            assert_eq!(*template, Some(template_id(GT3_SPRINT)));
            assert_eq!(grid.len(), 13, "the player and 12 AI");
            assert!(grid.iter().all(|g| g.car.id == car(GT3)));
        }
        other => panic!("{other:?}"),
    }
    // Racing is still open: no second session. Then it finishes and the next one appears.
    l.heard(61 * 240, 1);
    l.tick(61 * 240, WALL, &world);
    assert!(
        !effects(&outputs(&mut l))
            .iter()
            .any(|e| matches!(e, Effect::CreateSession { .. }))
    );
    world.finished.insert(first, FinishReason::AllFinished);
    world.laps.insert(
        first,
        vec![
            CarLap {
                lap: 5,
                finished: true
            };
            13
        ],
    );
    l.heard(70 * 240, 1);
    l.tick(70 * 240, WALL, &world);
    let outs = outputs(&mut l);
    let ended = effects(&outs);
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, Effect::SessionEnded { session, .. } if *session == first))
    );
    assert!(
        ended
            .iter()
            .any(|e| matches!(e, Effect::CreateSession { session, .. } if *session != first)),
        "the next rotation session: {ended:?}"
    );
}

fn template_id(slug: &str) -> Uuid {
    template(slug).id
}

/// A lobby running only a countdown GT3 Sprint that waits for `min` humans.
fn countdown_lobby(min: u8) -> (Lobby, Uuid) {
    let mut l = Lobby::new(
        only(GT3_SPRINT, |t| t.min_players = min),
        running_templates(),
        SessionIds::Sequential(0),
    );
    for c in 1..=3 {
        l.connect(0, c, Uuid::from_u128(u128::from(c)), format!("p{c}"));
    }
    l.tick(0, WALL, &FakeWorld::default());
    let id = match effects(&outputs(&mut l)).as_slice() {
        [Effect::CreateSession { session, .. }] => *session,
        other => panic!("{other:?}"),
    };
    (l, id)
}

fn started(l: &mut Lobby, now: u64) -> bool {
    for c in 1..=3 {
        l.heard(now, c);
    }
    l.tick(now, WALL, &FakeWorld::default());
    effects(&outputs(l))
        .iter()
        .any(|e| matches!(e, Effect::StartRace { .. }))
}

#[test]
fn a_countdown_session_waits_for_its_window_and_its_players() {
    let (mut l, id) = countdown_lobby(2);
    let window = 60 * 240;
    assert!(!started(&mut l, window), "nobody in");
    l.handle(window, 1, ClientMessage::JoinSession { session_id: id });
    outputs(&mut l);
    assert!(!started(&mut l, window + 1), "1 of 2 players");
    // The host may not start it by hand either.
    l.handle(window + 1, 1, ClientMessage::StartSession);
    let (code, message) = error_code(&to(&outputs(&mut l), 1)).expect("refused");
    assert_eq!(code, code::CONFLICT);
    assert!(message.contains("starts by itself"), "{message}");

    // Two players in early: it still waits for the window.
    let (mut l, id) = countdown_lobby(2);
    for c in 1..=2 {
        l.handle(10, c, ClientMessage::JoinSession { session_id: id });
    }
    outputs(&mut l);
    assert!(!started(&mut l, window - 1), "the window has not passed");
    assert!(started(&mut l, window), "window passed with 2 players");
}

#[test]
fn a_scheduled_template_is_announced_five_minutes_ahead_and_starts_on_time_with_no_humans() {
    let every_hour = Schedule::parse("0 * * * *").expect("cron");
    let at = every_hour.next_at_or_after(WALL + 1).expect("next hour");
    assert_eq!(at, WALL + 3600, "WALL is on the hour");
    let mut l = Lobby::new(
        only("formula_endurance", |t| {
            t.schedule = Some(every_hour.clone())
        }),
        running_templates(),
        SessionIds::Sequential(0),
    );
    l.connect(0, 1, Uuid::from_u128(1), "watcher".into());
    outputs(&mut l);
    let world = FakeWorld::default();
    // The first tick happens just after WALL: the occurrence at WALL + 3600 is next.
    l.tick(0, WALL + 1, &world);
    let mut tick = 0;
    let mut step = |l: &mut Lobby, wall: i64| {
        tick += 240;
        l.heard(tick, 1);
        l.tick(tick, wall, &world);
        outputs(l)
    };
    assert!(
        effects(&step(&mut l, at - ANNOUNCE_AHEAD_S - 1)).is_empty(),
        "too early"
    );
    let outs = step(&mut l, at - ANNOUNCE_AHEAD_S);
    let id = match effects(&outs).as_slice() {
        [
            Effect::CreateSession {
                session,
                track,
                lap_limit: 20,
            },
        ] => {
            assert_eq!(track.slug, "grand_circuit");
            *session
        }
        other => panic!("exactly 5 minutes before: {other:?}"),
    };
    let listed = sessions_listed(&outs, 1).expect("announced");
    assert_eq!(listed[0].starts_at_unix_s, Some(at));
    // A reload finds the schedule's times again; the occurrence is not announced twice.
    let same = l.content.clone();
    l.content_changed(same);
    assert!(effects(&step(&mut l, at - ANNOUNCE_AHEAD_S + 1)).is_empty());
    assert_eq!(listed[0].start_mode, StartMode::Scheduled);
    assert!(!listed[0].rotation);
    // Joinable early; nothing starts before the time.
    assert!(effects(&step(&mut l, at - 1)).is_empty());
    let outs = step(&mut l, at);
    match effects(&outs).as_slice() {
        [Effect::StartRace { session, grid, .. }] => {
            assert_eq!(*session, id);
            assert_eq!(grid.len(), 10, "the AI fills the grid");
            assert!(
                grid.iter()
                    .all(|g| g.driver.is_none() && g.car.id == car(FORMULA))
            );
        }
        other => panic!("starts at its time: {other:?}"),
    }
    // The next occurrence is an hour later, announced 5 minutes before it.
    assert!(effects(&step(&mut l, at + 3600 - ANNOUNCE_AHEAD_S - 1)).is_empty());
    assert!(matches!(
        effects(&step(&mut l, at + 3600 - ANNOUNCE_AHEAD_S)).as_slice(),
        [Effect::CreateSession { .. }]
    ));
}

#[test]
fn a_custom_session_from_a_template_keeps_to_its_bounds_and_cars() {
    let mut l = with_players(2);
    let gt3_sprint = template_id(GT3_SPRINT);
    let ask = |lap_limit, ai_count| ClientMessage::CreateFromTemplate {
        template_id: gt3_sprint,
        lap_limit,
        ai_count,
    };
    for (msg, named) in [
        (
            ask(Some(30), None),
            "lap_limit = 30: template GT3 Sprint allows 3..=15",
        ),
        (
            ask(Some(2), None),
            "lap_limit = 2: template GT3 Sprint allows 3..=15",
        ),
        (
            ask(None, Some(16)),
            "ai_count = 16: template GT3 Sprint allows 0..=15",
        ),
    ] {
        l.handle(0, 1, msg);
        let (code, message) = error_code(&to(&outputs(&mut l), 1)).expect("refused");
        assert_eq!(code, code::BAD_REQUEST);
        assert_eq!(message, named);
    }
    l.handle(
        0,
        1,
        ClientMessage::CreateFromTemplate {
            template_id: Uuid::from_u128(5),
            lap_limit: None,
            ai_count: None,
        },
    );
    assert_eq!(
        error_code(&to(&outputs(&mut l), 1)).map(|e| e.0),
        Some(code::NOT_FOUND)
    );

    // A car outside `allowed_cars` is refused, naming the allowed ones.
    l.handle(
        0,
        1,
        ClientMessage::SelectCar {
            car_config_id: car(FORMULA),
        },
    );
    l.handle(0, 1, ask(Some(8), Some(3)));
    let (code, message) = error_code(&to(&outputs(&mut l), 1)).expect("refused");
    assert_eq!(code, code::BAD_REQUEST);
    assert!(
        message.contains("Formula Basic") && message.contains("allowed: GT3 Generic"),
        "{message}"
    );

    // With the GT3: made with the overrides, the player hosts it.
    l.handle(
        0,
        1,
        ClientMessage::SelectCar {
            car_config_id: car(GT3),
        },
    );
    l.handle(0, 1, ask(Some(8), Some(3)));
    let outs = outputs(&mut l);
    let id = match effects(&outs).as_slice() {
        [
            Effect::CreateSession {
                session,
                track,
                lap_limit: 8,
            },
        ] => {
            assert_eq!(track.slug, "road_course_a");
            *session
        }
        other => panic!("{other:?}"),
    };
    // Player 2 (formula) may not join; with the GT3 it may, and then may not switch.
    l.handle(
        0,
        2,
        ClientMessage::SelectCar {
            car_config_id: car(FORMULA),
        },
    );
    l.handle(0, 2, ClientMessage::JoinSession { session_id: id });
    let (code, message) = error_code(&to(&outputs(&mut l), 2)).expect("refused");
    assert_eq!(code, code::BAD_REQUEST);
    assert!(message.contains("not allowed"), "{message}");
    l.handle(
        0,
        2,
        ClientMessage::SelectCar {
            car_config_id: car(GT3),
        },
    );
    l.handle(0, 2, ClientMessage::JoinSession { session_id: id });
    assert!(error_code(&to(&outputs(&mut l), 2)).is_none());
    l.handle(
        0,
        2,
        ClientMessage::SelectCar {
            car_config_id: car(FORMULA),
        },
    );
    assert_eq!(
        error_code(&to(&outputs(&mut l), 2)).map(|e| e.0),
        Some(code::BAD_REQUEST)
    );
    // A custom session is started by its host, with the AI count asked for.
    l.handle(1, 1, ClientMessage::StartSession);
    match effects(&outputs(&mut l)).as_slice() {
        [
            Effect::StartRace {
                grid,
                template,
                lap_limit: 8,
                ..
            },
        ] => {
            assert_eq!(grid.len(), 5, "two players and 3 AI");
            assert_eq!(*template, Some(gt3_sprint));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reload_changes_what_comes_next_and_not_what_runs() {
    let mut l = with_players(1);
    let id = created(&mut l);
    l.handle(0, 1, ClientMessage::StartSession);
    let before = match effects(&outputs(&mut l)).as_slice() {
        [Effect::StartRace { grid, .. }] => grid[0].car.clone(),
        other => panic!("{other:?}"),
    };
    // The GT3 gets heavier and the oval narrower.
    let mut changed = (*content()).clone();
    changed.cars = changed
        .cars
        .iter()
        .map(|c| {
            let mut c = (**c).clone();
            c.spec.mass_kg += 100.0;
            Arc::new(c)
        })
        .collect();
    l.content_changed(Arc::new(changed));
    l.tick(1, WALL, &FakeWorld::default());
    let outs = outputs(&mut l);
    assert!(
        sessions_listed(&outs, 1).is_some(),
        "the lobby is told after a reload"
    );
    assert!(
        effects(&outs).is_empty(),
        "the running session is left alone"
    );
    // A new session after the race uses the new spec.
    let mut world = FakeWorld::default();
    world.finished.insert(id, FinishReason::AllFinished);
    world.laps.insert(
        id,
        vec![
            CarLap {
                lap: 3,
                finished: true
            };
            3
        ],
    );
    l.heard(2, 1);
    l.tick(2, WALL, &world);
    outputs(&mut l);
    created(&mut l);
    l.handle(3, 1, ClientMessage::StartSession);
    match effects(&outputs(&mut l)).as_slice() {
        [Effect::StartRace { grid, .. }] => {
            assert_eq!(grid[0].car.id, before.id);
            assert_eq!(grid[0].car.spec.mass_kg, before.spec.mass_kg + 100.0);
        }
        other => panic!("{other:?}"),
    }
    // A player whose car is gone drives the first car.
    let mut l = with_players(1);
    l.handle(
        0,
        1,
        ClientMessage::SelectCar {
            car_config_id: car(FORMULA),
        },
    );
    let mut fewer = (*content()).clone();
    fewer.cars.retain(|c| c.slug != FORMULA);
    l.content_changed(Arc::new(fewer));
    created(&mut l);
    l.handle(0, 1, ClientMessage::StartSession);
    match effects(&outputs(&mut l)).as_slice() {
        [Effect::StartRace { grid, .. }] => assert_eq!(grid[0].car.id, car(GT3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_operator_ends_kicks_and_announces() {
    let mut l = with_players(3);
    let id = created(&mut l);
    l.handle(0, 2, ClientMessage::JoinSession { session_id: id });
    l.handle(0, 1, ClientMessage::StartSession);
    outputs(&mut l);
    // The overview lists the session and its players.
    match l.admin(1, AdminRequest::Overview) {
        Ok(AdminReply::Overview(o)) => {
            assert_eq!(o.sessions.len(), 1);
            assert_eq!(o.sessions[0].players.len(), 2);
            assert_eq!(o.players.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    // An announcement to the session reaches its two players, not the third.
    let reached = l.admin(
        1,
        AdminRequest::Announce {
            session: Some(id),
            message: "last lap for the leaders".into(),
            by: "alice".into(),
        },
    );
    assert_eq!(reached, Ok(AdminReply::Announced { reached: 2 }));
    let outs = outputs(&mut l);
    let announced = |c| {
        to(&outs, c)
            .iter()
            .any(|m| matches!(m, ServerMessage::Announcement { .. }))
    };
    assert!(announced(1) && announced(2) && !announced(3));
    assert_eq!(
        l.admin(
            1,
            AdminRequest::Announce {
                session: None,
                message: "  ".into(),
                by: "alice".into()
            }
        ),
        Err(AdminError::BadMessage)
    );
    // Kicking player 2: told why, closed, its car to the AI.
    let p2 = Uuid::from_u128(1002);
    assert_eq!(
        l.admin(
            2,
            AdminRequest::Kick {
                player: p2,
                reason: "rammed".into(),
                by: "alice".into()
            }
        ),
        Ok(AdminReply::Done { ok: true })
    );
    let outs = outputs(&mut l);
    let (code, message) = error_code(&to(&outs, 2)).expect("told");
    assert_eq!(code, code::FORBIDDEN);
    assert_eq!(message, "kicked by admin alice: rammed");
    assert!(outs.contains(&Output::Close {
        conn: 2,
        reason: CloseReason::Kicked
    }));
    assert!(effects(&outs).contains(&Effect::HandToAi {
        session: id,
        car_index: 1
    }));
    assert_eq!(
        l.admin(
            2,
            AdminRequest::Kick {
                player: p2,
                reason: "again".into(),
                by: "alice".into()
            }
        ),
        Err(AdminError::NoPlayer(p2))
    );
    // Ending the race: the world ends it; its results are not a fault and say who ended it.
    assert_eq!(
        l.admin(
            3,
            AdminRequest::End {
                session: id,
                by: "alice".into()
            }
        ),
        Ok(AdminReply::Done { ok: true })
    );
    assert!(matches!(
        effects(&outputs(&mut l)).as_slice(),
        [Effect::EndRace { session, .. }] if *session == id
    ));
    assert_eq!(
        l.admin(
            3,
            AdminRequest::End {
                session: id,
                by: "bob".into()
            }
        ),
        Err(AdminError::Over(id)),
        "already ending"
    );
    let mut world = FakeWorld::default();
    world
        .finished
        .insert(id, FinishReason::Fault("ended by admin alice".into()));
    world.laps.insert(
        id,
        vec![
            CarLap {
                lap: 1,
                finished: false
            };
            5
        ],
    );
    l.heard(4, 1);
    l.tick(4, WALL, &world);
    let outs = outputs(&mut l);
    assert!(to(&outs, 1).iter().any(|m| matches!(
        m,
        ServerMessage::SessionResults { fault: None, ended_by: Some(by), .. } if by == "ended by admin alice"
    )));
    assert!(effects(&outs).iter().any(|e| matches!(
        e,
        Effect::SessionEnded {
            fault: None,
            ended_by: Some(_),
            ..
        }
    )));
    let nobody = Uuid::from_u128(404);
    assert_eq!(
        l.admin(
            5,
            AdminRequest::End {
                session: nobody,
                by: "alice".into()
            }
        ),
        Err(AdminError::NoSession(nobody))
    );
    // A session still in its lobby is closed and its players sent back.
    let lobby_session = created_by(&mut l, 3, create(0, 4, 1));
    assert_eq!(
        l.admin(
            6,
            AdminRequest::End {
                session: lobby_session,
                by: "alice".into()
            }
        ),
        Ok(AdminReply::Done { ok: true })
    );
    let outs = outputs(&mut l);
    assert!(to(&outs, 3).contains(&ServerMessage::SessionLeft));
    assert!(effects(&outs).contains(&Effect::RemoveSession {
        session: lobby_session
    }));
}
