//! The web pages of `apexsim serve` in headless Chromium (Debian's, driven by Playwright from
//! `tools/browser/`): the live timing page during a bot race (every car in the table and on the
//! map where its position says, positions and laps moving), the results page of the finished
//! race, and the results exports. Screenshots are kept under `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::http_get;
use crate::server::{Server, json};

pub(crate) fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Runs a browser check and parses the JSON it prints.
pub(crate) fn browser(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/browser/run.sh"))
        .arg(script)
        .args(args)
        .output()
        .expect("tools/browser/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Bytes the live stream sends one viewer in `secs` seconds.
fn live_bytes(server: &Server, secs: u64) -> usize {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(server.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    write!(s, "GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write");
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut total, mut buf) = (0, [0u8; 65536]);
    while Instant::now() < until {
        if let Ok(n) = s.read(&mut buf) {
            total += n;
        }
    }
    total
}

#[test]
fn the_live_page_shows_a_bot_race_and_the_results_page_and_exports_follow() {
    // The mini oval in three sectors, so the page and the export have sector times.
    let server = Server::start_prepared(
        &[("APEXSIM_SERVER_SESSION_TIMEOUT_SECONDS", "60")],
        |content, _| {
            let manifest = content.join("tracks/mini_oval/track.toml");
            let text = std::fs::read_to_string(&manifest).expect("read");
            std::fs::write(&manifest, format!("{text}sectors = [0.3, 0.7]\n")).expect("write");
        },
    );
    let (status, page) = http_get(server.http, "/");
    assert_eq!(status, 200);
    assert!(
        page.contains("ApexSim live timing")
            && !page.contains("http://")
            && !page.contains("https://"),
        "the page is whole, with nothing from elsewhere"
    );
    let bots = server.drive(&[
        "--bots",
        "2",
        "--ai",
        "2",
        "--laps",
        "2",
        "--track",
        "mini_oval",
        "--timeout",
        "180",
    ]);
    let url = format!("http://127.0.0.1:{}/", server.http.port());
    let shot = screenshots().join("live_timing.png");
    let seen = browser("live_page.py", &[&url, shot.to_str().expect("utf-8"), "4"]);
    assert!(
        seen["errors"].as_array().is_some_and(Vec::is_empty),
        "{seen}"
    );
    let (first, second) = (&seen["first"], &seen["second"]);
    assert_eq!(
        first.as_array().map(Vec::len),
        Some(4),
        "every car in the table: {seen}"
    );
    let drivers: Vec<&str> = first
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["driver"].as_str())
        .collect();
    assert!(
        drivers.contains(&"bot-01") && drivers.contains(&"bot-02"),
        "{drivers:?}"
    );
    let positions: Vec<u64> = first
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["position"].as_u64())
        .collect();
    assert_eq!(positions, vec![1, 2, 3, 4], "{seen}");
    assert!(
        first != second || seen["phase"][0] != seen["phase"][1],
        "the page moves: {seen}"
    );
    let map = seen["map"].as_array().expect("map");
    assert_eq!(map.len(), 4, "every car on the map: {seen}");
    // Within a frame's interpolation of its newest position, in its colour (or, where dots
    // overlap on the same bit of track, another car's, or the anti-aliased edge between two).
    let rgb = |v: &serde_json::Value| -> [f64; 3] {
        let c: Vec<f64> = v
            .as_array()
            .expect("rgb")
            .iter()
            .map(|x| x.as_f64().expect("channel"))
            .collect();
        [c[0], c[1], c[2]]
    };
    let colours: Vec<[f64; 3]> = map.iter().map(|c| rgb(&c["colour"])).collect();
    let between = |p: [f64; 3], a: [f64; 3], b: [f64; 3]| {
        (0..=100).any(|k| {
            let w = f64::from(k) / 100.0;
            (0..3).all(|i| (p[i] - (w * a[i] + (1.0 - w) * b[i])).abs() <= 4.0)
        })
    };
    for car in map {
        let offset = car["offset"].as_f64().expect("offset");
        assert!(
            offset < 30.0,
            "drawn where its newest position projects: {car}"
        );
        let pixel = rgb(&car["pixel"]);
        assert!(
            colours
                .iter()
                .any(|a| colours.iter().any(|b| between(pixel, *a, *b))),
            "a car's colour where it is drawn: {car}"
        );
    }
    assert!(
        map.iter().any(|c| c["pixel"] == c["colour"]),
        "cars in their own colours: {seen}"
    );
    eprintln!("live page: {}", shot.display());
    let bytes = live_bytes(&server, 3);
    // Next to it, from the same race: what a driver's QUIC connection receives (a telemetry
    // datagram of 4 cars every tick).
    let quic = apexsim::net::protocol::telemetry_datagram_len(4) * 240;
    eprintln!(
        "live stream: {:.1} kB/s per viewer for one 4-car session at 20 updates/s \
         (a driver's telemetry: {:.1} kB/s at 240 Hz)",
        bytes as f64 / 3.0 / 1000.0,
        quic as f64 / 1000.0
    );

    let (code, out, log) = bots.finish();
    assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
    let report = json(&out);
    let session = report["session"].as_str().expect("session").to_owned();
    // The race is archived: its results page and exports.
    let mut indexed = serde_json::Value::Null;
    for _ in 0..50 {
        let (status, body) = http_get(server.http, &format!("/api/sessions/{session}"));
        if status == 200 {
            indexed = serde_json::from_str(&body).expect("json");
            if indexed["results"].as_array().is_some_and(|r| r.len() == 4) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        indexed["results"].as_array().map(Vec::len),
        Some(4),
        "{indexed}"
    );
    let (status, body) = http_get(
        server.http,
        &format!("/api/sessions/{session}/simresults.json"),
    );
    assert_eq!(status, 200);
    let ac: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ac["TrackName"], "mini_oval");
    assert_eq!(ac["Type"], "RACE");
    let cars = ac["Cars"].as_array().expect("Cars");
    assert_eq!(cars.len(), 4);
    assert!(
        cars.iter()
            .all(|c| c["Driver"]["Name"].is_string() && c["Driver"]["Guid"].is_string())
    );
    let result = ac["Result"].as_array().expect("Result");
    assert_eq!(result.len(), 4);
    let winner = &result[0];
    let total = winner["TotalTime"].as_i64().expect("ms");
    let reported = report["results"][0]["total_time_s"].as_f64().expect("s");
    assert_eq!(
        total,
        (reported * 1000.0).round() as i64,
        "TotalTime in ms: {winner}"
    );
    let laps = ac["Laps"].as_array().expect("Laps");
    assert!(laps.len() >= 8, "two laps of four cars: {}", laps.len());
    for lap in laps {
        let t = lap["LapTime"].as_i64().expect("ms");
        assert!(t > 5_000 && t < 60_000, "{lap}");
        // The measured sectors add up to the lap, within what integrating the samples gives.
        let sectors: i64 = lap["Sectors"]
            .as_array()
            .expect("Sectors")
            .iter()
            .filter_map(|x| x.as_i64())
            .sum();
        assert!((sectors - t).abs() <= 20, "{lap}");
        assert_eq!(lap["Sectors"].as_array().map(Vec::len), Some(3), "{lap}");
    }
    assert!(ac["Events"].is_array());

    let url = format!("http://127.0.0.1:{}/results/{session}", server.http.port());
    let shot = screenshots().join("results.png");
    let shown = browser("results_page.py", &[&url, shot.to_str().expect("utf-8")]);
    assert!(
        shown["errors"].as_array().is_some_and(Vec::is_empty),
        "{shown}"
    );
    let rows = shown["classification"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{shown}");
    assert_eq!(rows[0][0], "1");
    assert_eq!(
        shown["chart_lines"], 4,
        "a line per car in the lap chart: {shown}"
    );
    assert!(shown["fastest"].as_u64() >= Some(4), "{shown}");
    eprintln!("results page: {}", shot.display());

    // The browser client's controls: keys ramp, the gamepad is analog.
    let url = format!("http://127.0.0.1:{}/drive", server.http.port());
    let controls = browser("controls_page.py", &[&url]);
    assert_eq!(controls["errors"], serde_json::json!([]), "{controls}");
    let input = |when: &str, what: &str| controls[when][what].as_f64().expect("an input");
    let early = input("held_200ms", "steering");
    let held_s = input("held_200ms", "held_s");
    assert!(
        early > 0.3 && early <= 2.5 * held_s + 0.05 && (early < 0.999 || held_s > 0.38),
        "steering ramps at 2.5/s, not to full lock at once (held {held_s:.3} s): {controls}"
    );
    assert!(
        (input("held_600ms", "steering") - 1.0).abs() < 1e-9,
        "{controls}"
    );
    let throttle = input("held_200ms", "throttle");
    assert!(
        throttle <= 3.0 * held_s + 0.05
            && (throttle < 0.999 || held_s > 0.36)
            && input("held_600ms", "throttle") == 1.0,
        "the throttle ramps at 3/s (held {held_s:.3} s): {controls}"
    );
    assert_eq!(input("released", "steering"), 0.0, "{controls}");
    assert_eq!(input("released", "throttle"), 0.0, "{controls}");
    assert!(
        (input("gamepad", "steering") + 0.5).abs() < 1e-6,
        "{controls}"
    );
    assert!(
        (input("gamepad", "throttle") - 0.8).abs() < 1e-6,
        "{controls}"
    );
    assert!((input("gamepad", "brake") - 0.1).abs() < 1e-6, "{controls}");

    // The browsers' codec holds to the golden bytes of the Rust encoder.
    let golden = golden::path();
    let checked = browser(
        "protocol_golden.py",
        &[
            &format!("http://127.0.0.1:{}/", server.http.port()),
            golden.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(checked["failures"], serde_json::json!([]), "{checked}");
    assert!(checked["checked"].as_u64() >= Some(20), "{checked}");
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}

mod golden {
    //! Bytes the Rust encoder writes for a set of messages covering every kind of field, kept
    //! in `tests/fixtures/protocol_golden.json` with the values they carry. This test holds
    //! Rust to them (`APEXSIM_BLESS=1` rewrites the file after a deliberate protocol change);
    //! the browser test holds `src/net/web/protocol.js` to the same file.

    use std::path::PathBuf;

    use apexsim::net::protocol::{
        self, CarConfigSummary, CarInfo, CarTelemetry, ClientMessage, FaultKind, GridEntry,
        LobbyPlayer, PlayerInput, ServerMessage, SessionState, SessionSummary, Standing, StartMode,
        Telemetry, TemplateSummary, TrackConfigSummary, TrackInfo,
    };
    use uuid::Uuid;

    pub(super) fn path() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocol_golden.json")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x0123_4567_89ab_cdef_0000_0000_0000_0000 + n)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn server() -> Vec<(&'static str, ServerMessage)> {
        let session = SessionSummary {
            id: id(1),
            track_name: "Mini Oval".into(),
            host_name: "Ærø".into(),
            player_count: 2,
            max_players: 16,
            ai_count: 3,
            lap_limit: 99,
            state: SessionState::Countdown,
            template_id: Some(id(2)),
            template_name: Some("GT3 Sprint".into()),
            rotation: true,
            start_mode: StartMode::Scheduled,
            starts_at_unix_s: Some(1_796_500_800),
            allowed_cars: vec![id(3), id(4)],
        };
        vec![
            (
                "auth_success",
                ServerMessage::AuthSuccess {
                    player_id: id(9),
                    server_version: 100,
                    protocol_version: protocol::PROTOCOL_VERSION,
                },
            ),
            (
                "auth_failure",
                ServerMessage::AuthFailure {
                    reason: "wrong token ✗".into(),
                },
            ),
            (
                "heartbeat_ack",
                ServerMessage::HeartbeatAck {
                    server_tick: 70_000,
                },
            ),
            (
                "lobby_state",
                ServerMessage::LobbyState {
                    players_in_lobby: vec![
                        LobbyPlayer {
                            id: id(5),
                            name: "p1".into(),
                            selected_car: Some(id(3)),
                            in_session: None,
                        },
                        LobbyPlayer {
                            id: id(6),
                            name: "p2".into(),
                            selected_car: None,
                            in_session: Some(id(1)),
                        },
                    ],
                    available_sessions: vec![session],
                    car_configs: vec![CarConfigSummary {
                        id: id(3),
                        slug: "gt3_generic".into(),
                        name: "GT3 Generic".into(),
                    }],
                    track_configs: vec![TrackConfigSummary {
                        id: id(7),
                        slug: "mini_oval".into(),
                        name: "Mini Oval".into(),
                    }],
                    templates: vec![TemplateSummary {
                        id: id(2),
                        name: "GT3 Sprint".into(),
                        track_id: id(7),
                        active: false,
                        start_mode: StartMode::Countdown,
                        max_players: 16,
                        lap_limit: 5,
                        lap_limit_range: (3, 15),
                        ai_count_range: (0, 15),
                        allowed_cars: vec![],
                    }],
                },
            ),
            (
                "session_joined",
                ServerMessage::SessionJoined {
                    session_id: id(1),
                    your_grid_position: 2,
                    track: TrackInfo {
                        id: id(7),
                        name: "Mini Oval".into(),
                        width_m: 14.5,
                        centerline: vec![[0.0, 0.0], [30.25, -1.5], [-300.125, 1e5]],
                    },
                    car: CarInfo {
                        id: id(3),
                        name: "GT3 Generic".into(),
                        physics: [
                            1300.0, 4.5, 2.0, 8000.0, 15000.0, 0.375, 1.0, 0.5, 2.75, 500.0,
                        ],
                    },
                },
            ),
            ("session_left", ServerMessage::SessionLeft),
            (
                "session_starting",
                ServerMessage::SessionStarting {
                    countdown_seconds: 5,
                    grid: vec![
                        GridEntry {
                            car_index: 0,
                            name: "p1".into(),
                            player_id: Some(id(5)),
                        },
                        GridEntry {
                            car_index: 1,
                            name: "AI 01".into(),
                            player_id: None,
                        },
                    ],
                },
            ),
            (
                "session_results",
                ServerMessage::SessionResults {
                    session_id: id(1),
                    fault: None,
                    ended_by: Some("ended by admin alice".into()),
                    standings: vec![
                        Standing {
                            position: 1,
                            car_index: 1,
                            name: "AI 01".into(),
                            laps: 300,
                            total_time_s: Some(93.125),
                            best_lap_s: Some(30.5),
                        },
                        Standing {
                            position: 2,
                            car_index: 0,
                            name: "p1".into(),
                            laps: 2,
                            total_time_s: None,
                            best_lap_s: None,
                        },
                    ],
                },
            ),
            (
                "error",
                ServerMessage::Error {
                    code: 409,
                    message: "session is full".into(),
                },
            ),
            (
                "player_disconnected",
                ServerMessage::PlayerDisconnected { player_id: id(6) },
            ),
            (
                "announcement_all",
                ServerMessage::Announcement {
                    session_id: None,
                    message: "hello".into(),
                },
            ),
            (
                "announcement_session",
                ServerMessage::Announcement {
                    session_id: Some(id(1)),
                    message: "last lap".into(),
                },
            ),
        ]
    }

    fn client() -> Vec<(&'static str, ClientMessage)> {
        vec![
            (
                "authenticate",
                ClientMessage::Authenticate {
                    protocol_version: protocol::PROTOCOL_VERSION,
                    token: "tøken".into(),
                    player_name: "Browser Driver".into(),
                },
            ),
            (
                "heartbeat",
                ClientMessage::Heartbeat {
                    client_tick: 70_000,
                },
            ),
            (
                "select_car",
                ClientMessage::SelectCar {
                    car_config_id: id(3),
                },
            ),
            (
                "create_session",
                ClientMessage::CreateSession {
                    track_config_id: id(7),
                    max_players: 4,
                    ai_count: 3,
                    lap_limit: 2,
                },
            ),
            (
                "create_from_template",
                ClientMessage::CreateFromTemplate {
                    template_id: id(2),
                    lap_limit: Some(8),
                    ai_count: None,
                },
            ),
            (
                "join_session",
                ClientMessage::JoinSession { session_id: id(1) },
            ),
            ("leave_session", ClientMessage::LeaveSession),
            ("start_session", ClientMessage::StartSession),
            ("disconnect", ClientMessage::Disconnect),
            (
                "inject_fault",
                ClientMessage::InjectFault {
                    kind: FaultKind::NonFinite,
                },
            ),
        ]
    }

    fn telemetry() -> Telemetry {
        let car = |index: u8, x_cm: i32, steering: i8| CarTelemetry {
            index,
            x_cm,
            y_cm: -x_cm / 3,
            yaw: 65_535,
            speed_cmps: 6_000,
            throttle: 255,
            brake: 0,
            steering,
            lap: 2,
            progress_cm: 31_600,
            finish_position: 0,
            flags: 3,
        };
        Telemetry {
            server_tick: 123_456,
            input_ack: 77,
            session_state: SessionState::Racing,
            countdown_ms: None,
            session_cars: 3,
            cars: vec![car(0, -1_234_567, -127), car(1, 89, 64)],
        }
    }

    /// Every case, as the fixture holds it.
    pub(super) fn cases() -> serde_json::Value {
        let mut out = Vec::new();
        for (name, m) in server() {
            let frame = protocol::encode_frame(&m).expect("encodes");
            out.push(serde_json::json!({
                "name": name, "kind": "server", "hex": hex(&frame[4..]),
                "value": serde_json::to_value(&m).expect("json"),
            }));
        }
        for (name, m) in client() {
            let frame = protocol::encode_frame(&m).expect("encodes");
            out.push(serde_json::json!({
                "name": name, "kind": "client", "hex": hex(&frame),
                "value": serde_json::to_value(&m).expect("json"),
            }));
        }
        let racing = telemetry();
        let counting = Telemetry {
            session_state: SessionState::Countdown,
            countdown_ms: Some(2_500),
            ..telemetry()
        };
        for (name, t) in [("telemetry", racing), ("telemetry_countdown", counting)] {
            out.push(serde_json::json!({
                "name": name, "kind": "telemetry",
                "hex": hex(&protocol::encode_telemetry(&t).expect("encodes")),
                "value": serde_json::to_value(&t).expect("json"),
            }));
        }
        let input = PlayerInput {
            seq: 70_000,
            server_tick_ack: 123_456,
            throttle: 0.75,
            brake: 0.0,
            steering: -0.5,
        };
        out.push(serde_json::json!({
            "name": "input", "kind": "input",
            "hex": hex(&protocol::encode_input(&input).expect("encodes")),
            "value": serde_json::to_value(input).expect("json"),
        }));
        serde_json::Value::Array(out)
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn the_golden_protocol_bytes_are_what_rust_writes_and_reads() {
        let made = cases();
        if std::env::var_os("APEXSIM_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&made).expect("json");
            std::fs::write(path(), text + "\n").expect("write the golden file");
        }
        let stored: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path()).expect("golden file"))
                .expect("json");
        assert_eq!(
            stored, made,
            "the encoder changed: bless the file only for a deliberate protocol change"
        );
        for case in stored.as_array().expect("cases") {
            let bytes = unhex(case["hex"].as_str().expect("hex"));
            let decoded = match case["kind"].as_str().expect("kind") {
                "server" => serde_json::to_value(
                    protocol::decode_payload::<ServerMessage>(&bytes).expect("decodes"),
                ),
                "client" => serde_json::to_value(
                    protocol::decode_payload::<ClientMessage>(&bytes[4..]).expect("decodes"),
                ),
                "telemetry" => {
                    serde_json::to_value(protocol::decode_telemetry(&bytes).expect("decodes"))
                }
                _ => serde_json::to_value(protocol::decode_input(&bytes).expect("decodes")),
            }
            .expect("json");
            assert_eq!(decoded, case["value"], "{}", case["name"]);
        }
    }
}
