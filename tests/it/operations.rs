//! Race operations on a real `apexsim serve` process with a temporary content directory: the
//! rotation's session announced at start, joined by `drive --join next` bots, started by its
//! countdown, finished and followed by the next; a car manifest broken while they race (logged
//! by file and line, quarantined, the race unaffected) and fixed; a template whose track is
//! deleted turning inactive and back; the admin routes with and without the token; retention
//! pruning an old session's laps while a live one races on.

use std::fs;
use std::path::Path;
use std::time::Duration;

use apexsim::net::client::Client;
use apexsim::net::protocol::{ClientMessage, ServerMessage, SessionState};
use tokio::sync::watch;

use crate::common::{apexsim, http_get, http_request, log_field};
use crate::server::{Server, archive_ls, create_and_start, json, keep_alive, next};

const MINI_OVAL: &str = "660e8400-e29b-41d4-a716-4466554400aa";
const GT3: &str = "550e8400-e29b-41d4-a716-446655440000";

/// The rotation holds one template: a 1-lap countdown sprint on the mini oval for the GT3,
/// waiting for 2 humans. Oval Open stays, out of the rotation (weight 0); the scheduled
/// template goes (the test must not depend on the day).
fn rotation_content(content: &Path) {
    let templates = content.join("templates");
    fs::remove_file(templates.join("formula_endurance.toml")).expect("rm");
    fs::remove_file(templates.join("gt3_sprint.toml")).expect("rm");
    let oval = templates.join("oval_open.toml");
    let text = fs::read_to_string(&oval).expect("read");
    fs::write(
        &oval,
        text.replace("rotation_weight = 20", "rotation_weight = 0"),
    )
    .expect("write");
    fs::write(
        templates.join("mini_sprint.toml"),
        format!(
            "id = \"770e8400-e29b-41d4-a716-4466554400ab\"\nname = \"Mini Sprint\"\n\
             track_config_id = \"{MINI_OVAL}\"\nallowed_cars = [\"{GT3}\"]\nmax_players = 4\n\
             default_ai_count = 1\nlap_limit = 1\nstart_mode = \"countdown\"\nmin_players = 2\n\
             rotation_weight = 10\n"
        ),
    )
    .expect("write");
}

/// The lobby as a client keeps seeing it (heartbeats sent), and the other messages.
struct Watcher {
    lobby: watch::Receiver<Option<ServerMessage>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(mut client: Client) -> Self {
        let (tx, lobby) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    msg = client.recv() => match msg {
                        Some(Ok(m @ ServerMessage::LobbyState { .. })) => {
                            tx.send_replace(Some(m));
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = beat.tick() => {
                        let _ = client.send(&ClientMessage::Heartbeat { client_tick: 0 }).await;
                    }
                }
            }
        });
        Self { lobby, task }
    }

    /// Waits (60 s at most) for a lobby state `pred` accepts, and returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        let found = {
            let seen = tokio::time::timeout(
                Duration::from_secs(60),
                self.lobby.wait_for(|m| m.as_ref().is_some_and(&pred)),
            )
            .await;
            match seen {
                Ok(Ok(m)) => m.clone(),
                _ => None,
            }
        };
        found.unwrap_or_else(|| {
            panic!(
                "no lobby state with {what}: last {:?}",
                *self.lobby.borrow()
            )
        })
    }
}

fn rotation_session(m: &ServerMessage) -> Option<(uuid::Uuid, SessionState)> {
    match m {
        ServerMessage::LobbyState {
            available_sessions, ..
        } => available_sessions
            .iter()
            .find(|s| s.rotation && s.state != SessionState::Finished)
            .map(|s| (s.id, s.state)),
        _ => None,
    }
}

fn template_active(m: &ServerMessage, name: &str) -> Option<bool> {
    match m {
        ServerMessage::LobbyState { templates, .. } => {
            templates.iter().find(|t| t.name == name).map(|t| t.active)
        }
        _ => None,
    }
}

/// Blocks the test's worker (the watcher runs on the other) until the server logs a line.
fn wait_log(server: &mut Server, what: &str, pred: impl FnMut(&str) -> bool) -> String {
    tokio::task::block_in_place(|| {
        server
            .child
            .wait_for(Duration::from_secs(60), pred)
            .unwrap_or_else(|| panic!("no log line: {what}\n{}", server.child.log.join("\n")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotation_runs_itself_and_content_reloads_while_sessions_race() {
    let mut server = Server::start_prepared(
        &[
            ("APEXSIM_SERVER_RUN_TEMPLATES", "true"),
            ("APEXSIM_SERVER_LOBBY_WINDOW_SECONDS", "3"),
            ("APEXSIM_SERVER_SEED", "5"),
            ("APEXSIM_CONTENT_DEBOUNCE_MS", "200"),
        ],
        |content, _| rotation_content(content),
    );
    let endpoint = server.pinned();
    let mut watcher = Watcher::start(server.connect(&endpoint, "watcher").await);

    // At start the rotation's session is announced with its template.
    let first = watcher
        .until("the rotation session", |m| rotation_session(m).is_some())
        .await;
    let (first_id, _) = rotation_session(&first).expect("rotation session");
    let ServerMessage::LobbyState {
        available_sessions, ..
    } = &first
    else {
        unreachable!()
    };
    let s = available_sessions
        .iter()
        .find(|s| s.id == first_id)
        .expect("listed");
    assert_eq!(s.template_name.as_deref(), Some("Mini Sprint"));
    assert_eq!(s.track_name, "Mini Oval");
    assert_eq!(s.lap_limit, 1);
    assert_eq!(
        s.allowed_cars,
        vec![GT3.parse::<uuid::Uuid>().expect("uuid")]
    );
    assert_eq!(s.start_mode, apexsim::net::protocol::StartMode::Countdown);

    // Two bots join it; its countdown starts it once both are in and the window passed.
    let bots = server.drive(&["--join", "next", "--bots", "2", "--timeout", "120"]);
    wait_log(&mut server, "the countdown", |l| {
        l.contains("countdown started")
    });

    // While they race, the GT3's manifest is broken: logged by file and line, quarantined.
    let car = server.content.join("cars/gt3_generic/car.toml");
    let good = fs::read_to_string(&car).expect("read");
    fs::write(&car, good.replacen("mass_kg = ", "mass_kg = = ", 1)).expect("write");
    let warned = wait_log(&mut server, "the broken file", |l| {
        l.contains("a file does not load") && l.contains("gt3_generic/car.toml:")
    });
    let line: usize = warned
        .split("car.toml:")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("a line number");
    assert_eq!(line, 8, "{warned}");
    let (_, ready) = http_get(server.http, "/ready");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, ready_after) = http_get(server.http, "/ready");
    assert_eq!(status, 200);
    assert!(
        ready_after.contains("quarantined car gt3_generic"),
        "{ready}\n{ready_after}"
    );
    let (code, out, _) = apexsim(&[
        "--content",
        server.content.to_str().expect("utf-8"),
        "--data",
        server.data.to_str().expect("utf-8"),
        "content",
    ]);
    assert_eq!(code, 2, "the content has a problem: {out}");
    assert!(
        out.contains("quarantined car gt3_generic (the previous version is in use)"),
        "{out}"
    );

    // The race finishes as it began: both bots and the AI classified.
    let (code, out, log) = tokio::task::block_in_place(|| bots.finish());
    assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
    let report = json(&out);
    assert_eq!(report["session"], first_id.to_string());
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{report}");
    assert!(results.iter().all(|r| r["laps"] == 1), "{report}");

    // The next rotation session appears; the old GT3 is still listed.
    let next_state = watcher
        .until("the next rotation session", |m| {
            rotation_session(m).is_some_and(|(id, _)| id != first_id)
        })
        .await;
    let ServerMessage::LobbyState { car_configs, .. } = &next_state else {
        unreachable!()
    };
    assert!(car_configs.iter().any(|c| c.slug == "gt3_generic"));

    // Fixed, the file is picked up.
    fs::write(&car, good).expect("write");
    wait_log(&mut server, "the fixed reload", |l| {
        l.contains("content reloaded") && l.contains("quarantined=0")
    });

    // A template whose track is deleted turns inactive, and comes back with it.
    let oval = server.content.join("tracks/oval_simple");
    let aside = server.content.join("oval_simple.aside");
    fs::rename(&oval, &aside).expect("move the track away");
    watcher
        .until("Oval Open inactive", |m| {
            template_active(m, "Oval Open") == Some(false)
        })
        .await;
    assert!(
        http_get(server.http, "/ready")
            .1
            .contains("inactive template: oval_open")
    );
    fs::rename(&aside, &oval).expect("move it back");
    watcher
        .until("Oval Open active again", |m| {
            template_active(m, "Oval Open") == Some(true)
        })
        .await;

    watcher.task.abort();
    let (code, _, log, data, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
    // The rotation session's results record its template.
    let index = rusqlite::Connection::open(data.join("apexsim.db")).expect("index");
    let template: Option<String> = index
        .query_row(
            "SELECT template_id FROM sessions WHERE id = ?1",
            [first_id.to_string()],
            |r| r.get(0),
        )
        .expect("the session is indexed");
    assert_eq!(
        template.as_deref(),
        Some("770e8400-e29b-41d4-a716-4466554400ab")
    );
    // The templates as last loaded are stored in the index.
    let stored: Vec<String> = index
        .prepare("SELECT name FROM race_templates ORDER BY name")
        .expect("query")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("names");
    assert_eq!(stored, vec!["Mini Sprint", "Oval Open"]);
}

const TOKEN: &str = "alice-secret-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ends_kicks_and_announces_with_the_token_and_nothing_without_it() {
    let server = Server::start(&[(
        "APEXSIM_ADMIN_TOKENS",
        &format!("{{ alice = \"{TOKEN}\" }}"),
    )]);
    let endpoint = server.pinned();
    let mut host = server.connect(&endpoint, "host").await;
    let session = create_and_start(&mut host, 2, 50).await;
    let alive = keep_alive(host.conn.clone());
    let mut other = server.connect(&endpoint, "other").await;
    let other_id = other.player_id;

    // Without the token (or with a wrong one): 401, and nothing happens.
    let end = format!("/admin/sessions/{session}/end");
    let kick = format!("/admin/players/{other_id}/kick");
    for token in [None, Some("wrong-token-but-long-enough")] {
        assert_eq!(
            http_request(server.http, "GET", "/admin/sessions", token, None).0,
            401
        );
        assert_eq!(http_request(server.http, "POST", &end, token, None).0, 401);
        let (status, body) =
            http_request(server.http, "POST", &kick, token, Some(r#"{"reason":"x"}"#));
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("admin token"), "{body}");
    }

    // With it: the sessions and players are listed.
    let (status, body) = http_request(server.http, "GET", "/admin/sessions", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(listed["sessions"][0]["id"], session.to_string(), "{listed}");
    let state = &listed["sessions"][0]["state"];
    assert!(state == "Countdown" || state == "Racing", "{listed}");
    assert_eq!(
        listed["players"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    // An announcement reaches everyone.
    let (status, body) = http_request(
        server.http,
        "POST",
        "/admin/announce",
        Some(TOKEN),
        Some(r#"{"message":"race control: green flag"}"#),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"reached":2}"#));
    for client in [&mut host, &mut other] {
        match next(client).await {
            ServerMessage::Announcement {
                session_id: None,
                message,
            } => assert_eq!(message, "race control: green flag"),
            m => panic!("expected the announcement, got {m:?}"),
        }
    }

    // A kick tells the player why and closes the connection.
    let (status, body) = http_request(
        server.http,
        "POST",
        &kick,
        Some(TOKEN),
        Some(r#"{"reason":"testing"}"#),
    );
    assert_eq!(status, 200, "{body}");
    match next(&mut other).await {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, 403);
            assert_eq!(message, "kicked by admin alice: testing");
        }
        m => panic!("expected the reason, got {m:?}"),
    }
    match tokio::time::timeout(Duration::from_secs(10), other.conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(&c.reason[..], b"kicked by an operator");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(
        http_request(
            server.http,
            "POST",
            &kick,
            Some(TOKEN),
            Some(r#"{"reason":"x"}"#)
        )
        .0,
        404,
        "gone"
    );

    // Ending the race: classified, the results say who ended it.
    let (status, body) = http_request(server.http, "POST", &end, Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    match next(&mut host).await {
        ServerMessage::SessionResults {
            session_id,
            fault,
            ended_by,
            standings,
        } => {
            assert_eq!(session_id, session);
            assert_eq!(fault, None);
            assert_eq!(ended_by.as_deref(), Some("ended by admin alice"));
            assert_eq!(standings.len(), 3);
        }
        m => panic!("expected the results, got {m:?}"),
    }
    assert_eq!(
        http_request(server.http, "POST", &end, Some(TOKEN), None).0,
        409
    );
    alive.abort();

    let (code, _, log, data, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
    for action in [
        "admin: announcement",
        "admin: player kicked",
        "admin: session ended",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(action) && l.contains("operator=alice")),
            "{action} logged with its operator:\n{log}"
        );
    }
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("admin: refused a request without a valid token"))
            .count(),
        6
    );
    let listed = archive_ls(&data, &session.to_string());
    assert_eq!(listed["sessions"][0]["status"], "finished", "{listed}");
    let index = rusqlite::Connection::open(data.join("apexsim.db")).expect("index");
    let (ended_by, results): (Option<String>, i64) = index
        .query_row(
            "SELECT ended_by, (SELECT COUNT(*) FROM results WHERE session_id = ?1)
             FROM sessions WHERE id = ?1",
            [session.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("indexed");
    assert_eq!(ended_by.as_deref(), Some("ended by admin alice"));
    assert_eq!(results, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_an_old_sessions_laps_and_leaves_a_live_one() {
    let mut old = String::new();
    let mut server = Server::start_prepared(
        &[
            // Everything that started before now is old enough; the live session is protected
            // only by being live.
            ("APEXSIM_SERVER_RETENTION_HOURS", "0"),
            ("APEXSIM_SERVER_RETENTION_SCHEDULE", "*/2 * * * * *"),
        ],
        |content, data| {
            let (code, out, err) = apexsim(&[
                "--content",
                content.to_str().expect("utf-8"),
                "--data",
                data.to_str().expect("utf-8"),
                "race",
                "--fast",
                "--track",
                "mini_oval",
                "--cars",
                "2",
                "--laps",
                "1",
                "--format",
                "json",
            ]);
            assert_eq!(code, 0, "{err}");
            old = json(&out)["session"].as_str().expect("session").to_owned();
        },
    );
    let before = archive_ls(&server.data, &old);
    let files: Vec<std::path::PathBuf> = before["laps"]
        .as_array()
        .expect("laps")
        .iter()
        .map(|l| server.data.join(l["file"].as_str().expect("file")))
        .collect();
    assert!(
        !files.is_empty() && files.iter().all(|f| f.exists()),
        "{before}"
    );

    let endpoint = server.pinned();
    let mut host = server.connect(&endpoint, "host").await;
    let live = create_and_start(&mut host, 1, 30).await;
    let alive = keep_alive(host.conn.clone());
    // A run prunes the old session (before or after the live one began).
    wait_log(&mut server, "the old session pruned", |l| {
        l.contains("retention: laps pruned") && log_field::<u64>(l, "sessions") >= Some(1)
    });
    assert!(files.iter().all(|f| !f.exists()), "the old laps are gone");
    let after = archive_ls(&server.data, &old);
    assert_eq!(after["laps"].as_array().map(Vec::len), Some(0), "{after}");
    assert_eq!(
        after["sessions"][0]["status"], "finished",
        "the summary stays: {after}"
    );
    let index = rusqlite::Connection::open(server.data.join("apexsim.db")).expect("index");
    let (pruned_at, results): (Option<i64>, i64) = index
        .query_row(
            "SELECT laps_pruned_at, (SELECT COUNT(*) FROM results WHERE session_id = ?1)
             FROM sessions WHERE id = ?1",
            [old.clone()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("indexed");
    assert!(pruned_at.is_some());
    assert_eq!(results, 2, "the results stay");
    // Once the live session has archived laps, later runs still leave it alone.
    let mut live_laps = Vec::new();
    for _ in 0..120 {
        live_laps = archive_ls(&server.data, &live.to_string())["laps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !live_laps.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!live_laps.is_empty(), "the live session archives laps");
    wait_log(&mut server, "a later retention run", |l| {
        l.contains("retention:") && log_field::<u64>(l, "live_left") == Some(1)
    });
    let kept = archive_ls(&server.data, &live.to_string());
    let kept_laps = kept["laps"].as_array().expect("laps");
    assert!(kept_laps.len() >= live_laps.len(), "{kept}");
    for lap in kept_laps {
        let file = server.data.join(lap["file"].as_str().expect("file"));
        assert!(file.exists(), "{} is kept", file.display());
    }
    alive.abort();
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}
