//! `apexsim serve` over real QUIC on loopback, each test with its own server process, data
//! directory and content: bots race and finish with correct results, archived and indexed; a
//! wrong token is refused; a silent client times out; garbage disconnects its sender while the
//! others race on; a faulted session ends alone; SIGTERM delivers the 503, archives and exits
//! 0 within 10 s; the metrics move.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Child, content_with_mini_oval, http_get};
use apexsim::net::client::{self, Client, ClientError};
use apexsim::net::protocol::{
    self, ClientMessage, FaultKind, PlayerInput, ServerMessage, SessionState, code,
};
use apexsim::net::tls::{Trust, parse_fingerprint};

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) quic: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) cert: PathBuf,
    pub(crate) fingerprint: String,
    pub(crate) content: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start(env: &[(&str, &str)]) -> Self {
        Self::start_prepared(env, |_, _| {})
    }

    /// [`Server::start`] after `prepare` has changed the content and data directories.
    pub(crate) fn start_prepared(env: &[(&str, &str)], prepare: impl FnOnce(&Path, &Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = dir.path().join("content");
        let data = dir.path().join("data");
        content_with_mini_oval(&content);
        prepare(&content, &data);
        let served = crate::common::Served::start(&content, &data, env);
        Self {
            quic: served.quic,
            http: served.http,
            fingerprint: served.fingerprint,
            child: served.child,
            cert: data.join("certs/server.crt"),
            content,
            data,
            _dir: dir,
        }
    }

    /// An authenticated client (no token).
    pub(crate) async fn connect(&self, endpoint: &quinn::Endpoint, name: &str) -> Client {
        Client::connect(endpoint, self.quic, "", name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    pub(crate) fn pinned(&self) -> quinn::Endpoint {
        let fp = parse_fingerprint(&self.fingerprint).expect("fingerprint");
        client::endpoint(&Trust::Fingerprint(fp)).expect("endpoint")
    }

    /// `apexsim drive` against this server, trusting the certificate file.
    pub(crate) fn drive(&self, args: &[&str]) -> Child {
        crate::common::drive(&self.content, self.quic, &self.cert, args)
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(self.http, "/metrics").1
    }

    pub(crate) fn stop(self) -> (i32, String, String, PathBuf, tempfile::TempDir) {
        self.child.terminate();
        let (code, out, log) = self.child.finish();
        (code, out, log, self.data, self._dir)
    }
}

pub(crate) fn metric(text: &str, series: &str) -> f64 {
    apexsim::net::metrics::scrape_value(text, series).unwrap_or(0.0)
}

pub(crate) fn json(out: &str) -> serde_json::Value {
    let line = out.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub(crate) fn archive_ls(data: &Path, session: &str) -> serde_json::Value {
    let (code, out, err) = crate::common::apexsim(&[
        "--data",
        data.to_str().expect("utf-8"),
        "archive",
        "ls",
        "--session",
        session,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    json(&out)
}

/// Prometheus's own linter (`promtool check metrics`, installed by `tools/ci-setup.sh`) finds
/// nothing wrong with an exposition: names in base units, counters ending in `_total`, help
/// on every metric.
fn promtool_accepts(exposition: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tools/ci-setup.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("metrics to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

/// Next control message that is not a lobby update.
pub(crate) async fn next(client: &mut Client) -> ServerMessage {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), client.recv())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("well formed");
        if !matches!(msg, ServerMessage::LobbyState { .. }) {
            return msg;
        }
    }
}

/// Keeps a client's connection talking (inputs at 20 Hz) while a test waits.
pub(crate) fn keep_alive(conn: quinn::Connection) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for seq in 1.. {
            let input = PlayerInput {
                seq,
                server_tick_ack: 0,
                throttle: 0.5,
                brake: 0.0,
                steering: 0.0,
            };
            let bytes = protocol::encode_input(&input).expect("encodes");
            if conn.send_datagram(bytes.into()).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Creates a session on the mini oval with AI cars and starts it; returns its id.
pub(crate) async fn create_and_start(client: &mut Client, ai: u8, laps: u8) -> uuid::Uuid {
    let track = loop {
        if let Some(Ok(ServerMessage::LobbyState { track_configs, .. })) = client.recv().await {
            break track_configs
                .into_iter()
                .find(|t| t.slug == "mini_oval")
                .expect("mini oval listed");
        }
    };
    client
        .send(&ClientMessage::CreateSession {
            track_config_id: track.id,
            max_players: 1 + ai,
            ai_count: ai,
            lap_limit: laps,
        })
        .await
        .expect("send");
    let ServerMessage::SessionJoined {
        session_id, track, ..
    } = next(client).await
    else {
        panic!("not joined");
    };
    assert!(
        track.centerline.len() > 100,
        "the track's geometry comes with the join"
    );
    client
        .send(&ClientMessage::StartSession)
        .await
        .expect("send");
    match next(client).await {
        ServerMessage::SessionStarting {
            countdown_seconds,
            grid,
        } => {
            assert_eq!(countdown_seconds, 5);
            assert_eq!(grid.len(), usize::from(1 + ai));
            assert_eq!(
                grid[0].player_id,
                Some(client.player_id),
                "the human is on pole"
            );
        }
        other => panic!("expected the start, got {other:?}"),
    }
    session_id
}

/// `drive --sessions 3 --shared-socket`: one process creates three sessions, each raced to the
/// finish by its own bots, all six from one UDP socket, and prints a report for each.
#[test]
fn one_drive_process_races_several_sessions_at_once() {
    let server = Server::start(&[]);
    let (code, out, log) = server
        .drive(&[
            "--shared-socket",
            "--sessions",
            "3",
            "--bots",
            "2",
            "--laps",
            "1",
            "--track",
            "mini_oval",
        ])
        .finish();
    assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
    let reports: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(reports.len(), 3, "a report per session: {out}");
    let mut sessions: Vec<&str> = reports
        .iter()
        .map(|r| r["session"].as_str().expect("session"))
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    assert_eq!(sessions.len(), 3, "three distinct sessions: {out}");
    for r in &reports {
        let results = r["results"].as_array().expect("results");
        assert_eq!(results.len(), 2, "each session's own two bots: {r}");
        assert!(results.iter().all(|s| s["laps"] == 1), "{r}");
        assert!(
            r["telemetry_coverage_pct"].as_f64().expect("coverage") >= 98.0,
            "{r}"
        );
    }
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
    let mut remotes: Vec<std::net::SocketAddr> = log
        .lines()
        .filter(|l| l.contains("authenticated"))
        .filter_map(|l| crate::common::log_field(l, "remote"))
        .collect();
    assert_eq!(remotes.len(), 6, "six bots authenticated:\n{log}");
    remotes.dedup();
    assert_eq!(remotes.len(), 1, "from one socket: {remotes:?}");
}

#[test]
fn bots_race_to_the_finish_and_the_session_is_archived() {
    let server = Server::start(&[("APEXSIM_SERVER_SESSION_TIMEOUT_SECONDS", "2")]);
    assert_eq!(http_get(server.http, "/health").0, 200);
    assert_eq!(http_get(server.http, "/ready").0, 200);
    let before = server.metrics();
    let (code, out, log) = server
        .drive(&[
            "--bots",
            "2",
            "--ai",
            "2",
            "--laps",
            "1",
            "--track",
            "mini_oval",
        ])
        .finish();
    assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
    let report = json(&out);
    let results = report["results"].as_array().expect("results");
    assert_eq!(
        results.len(),
        4,
        "2 bots and 2 AI cars classified: {report}"
    );
    for r in results {
        assert_eq!(r["laps"], 1, "{r}");
        assert!(
            r["total_time_s"]
                .as_f64()
                .is_some_and(|t| t > 10.0 && t < 60.0),
            "{r}"
        );
    }
    let positions: Vec<u64> = results
        .iter()
        .map(|r| r["position"].as_u64().expect("pos"))
        .collect();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    let times: Vec<f64> = results
        .iter()
        .map(|r| r["total_time_s"].as_f64().expect("t"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "classified in finishing order: {times:?}"
    );
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"bot-01") && names.contains(&"bot-02"),
        "{names:?}"
    );
    assert!(
        report["telemetry_coverage_pct"].as_f64().expect("coverage") >= 98.0,
        "{report}"
    );
    assert!(
        report["latency_p50_ticks"].as_f64().expect("p50") <= 3.0,
        "{report}"
    );

    let after = server.metrics();
    // A race of about 25 s: 2 bots x 240 packets/s each way, 240 ticks/s, 4 flushes/s.
    for (series, at_least) in [
        ("apexsim_telemetry_packets_sent_total", 5000.0),
        ("apexsim_input_packets_received_total", 5000.0),
        ("apexsim_tick_duration_seconds_count", 3000.0),
        ("apexsim_archive_write_duration_seconds_count", 40.0),
        ("apexsim_player_rtt_ticks_count", 5000.0),
    ] {
        let moved = metric(&after, series) - metric(&before, series);
        assert!(moved >= at_least, "{series} moved by {moved}");
    }
    promtool_accepts(&after);
    let session = report["session"].as_str().expect("session").to_owned();
    // The finished session is listed, then cleaned up after session_timeout_seconds.
    let listed = |server: &Server| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let endpoint = server.pinned();
            let mut c = server.connect(&endpoint, "watcher").await;
            match c.recv().await {
                Some(Ok(ServerMessage::LobbyState {
                    available_sessions, ..
                })) => available_sessions
                    .iter()
                    .map(|s| (s.id.to_string(), s.state))
                    .collect::<Vec<_>>(),
                other => panic!("expected the lobby, got {other:?}"),
            }
        })
    };
    let now = listed(&server);
    assert!(
        now.is_empty() || now == vec![(session.clone(), SessionState::Finished)],
        "{now:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(listed(&server), vec![], "cleaned up after 2 s");
    let (code, out, log, data, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
    assert!(out.contains("sessions finished"), "{out}");
    let listed = archive_ls(&data, &session);
    let laps = listed["laps"].as_array().expect("laps");
    let complete: Vec<_> = laps
        .iter()
        .filter(|l| l["lap"] == 1 && l["complete"] == true)
        .collect();
    assert_eq!(
        complete.len(),
        4,
        "every car's lap 1 is archived complete: {listed}"
    );
    let s = &listed["sessions"][0];
    assert_eq!(s["status"], "finished", "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_version_is_refused_and_a_right_token_accepted() {
    let server = Server::start(&[
        ("APEXSIM_AUTH_REQUIRE_TOKEN", "true"),
        ("APEXSIM_AUTH_TOKENS", "[\"s3cret\"]"),
    ]);
    let endpoint = server.pinned();
    match Client::connect(&endpoint, server.quic, "wrong", "eve").await {
        Err(ClientError::Refused(reason)) => assert_eq!(reason, "invalid token"),
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.player_id)),
    }
    match Client::connect_as(&endpoint, server.quic, "s3cret", "old", 99).await {
        Err(ClientError::Refused(reason)) => {
            assert!(reason.contains("protocol version 99"), "{reason}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.player_id)),
    }
    let ok = Client::connect(&endpoint, server.quic, "s3cret", "alice")
        .await
        .expect("accepted");
    assert!(!ok.player_id.is_nil());
    // A client pinning another fingerprint does not connect at all.
    let wrong = client::endpoint(&Trust::Fingerprint([7; 32])).expect("endpoint");
    assert!(
        Client::connect(&wrong, server.quic, "s3cret", "mallory")
            .await
            .is_err()
    );
    let text = server.metrics();
    assert_eq!(
        metric(&text, "apexsim_refused_connections_total{reason=\"token\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "apexsim_refused_connections_total{reason=\"version\"}"
        ),
        1.0
    );
    drop(ok);
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out() {
    let server = Server::start(&[
        ("APEXSIM_NETWORK_HEARTBEAT_INTERVAL_MS", "500"),
        ("APEXSIM_NETWORK_HEARTBEAT_TIMEOUT_MS", "1500"),
    ]);
    let endpoint = server.pinned();
    let mut chatty = server.connect(&endpoint, "chatty").await;
    let mut silent = server.connect(&endpoint, "silent").await;
    let started = Instant::now();
    let chat = async {
        for _ in 0..8 {
            chatty
                .send(&ClientMessage::Heartbeat { client_tick: 0 })
                .await
                .expect("heartbeat");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    let wait_silent = async {
        while let Some(Ok(_)) = silent.recv().await {}
        started.elapsed()
    };
    let ((), gone_after) = tokio::join!(chat, wait_silent);
    assert!(
        gone_after >= Duration::from_millis(1400) && gone_after < Duration::from_secs(3),
        "{gone_after:?}"
    );
    let reason = silent.conn.closed().await.to_string();
    assert!(reason.contains("heartbeat timeout"), "{reason}");
    assert!(
        chatty.conn.close_reason().is_none(),
        "the talking client stays connected"
    );
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_disconnects_its_sender_while_the_others_race_on() {
    let server = Server::start(&[]);
    let race = server.drive(&[
        "--bots",
        "2",
        "--ai",
        "1",
        "--laps",
        "1",
        "--track",
        "mini_oval",
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let endpoint = server.pinned();
    let before = server.metrics();

    // Malformed datagrams: dropped and counted, the 10th in a minute disconnects.
    let flood = server.connect(&endpoint, "flood").await;
    for i in 0..40u8 {
        let _ = flood.send_datagram(vec![1, i, 2, 3]);
        let _ = flood.send_datagram(vec![9; 1100]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), flood.conn.closed())
        .await
        .expect("closed")
        .to_string();
    assert!(reason.contains("protocol violation"), "{reason}");

    // Non-finite inputs are rejected the same way.
    let nan = server.connect(&endpoint, "nan").await;
    for seq in 0..20 {
        let _ = nan.send_input(&PlayerInput {
            seq,
            server_tick_ack: 0,
            throttle: f32::NAN,
            brake: 0.0,
            steering: f32::INFINITY,
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), nan.conn.closed())
        .await
        .expect("closed")
        .to_string();
    assert!(reason.contains("protocol violation"), "{reason}");

    // Garbage frames on the control stream.
    let mut garbage = server.connect(&endpoint, "garbage").await;
    for _ in 0..12 {
        let _ = garbage.send_raw(&[3, 0, 0, 0, 0xFF, 0xFE, 0xFD]).await;
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), garbage.conn.closed())
        .await
        .expect("closed")
        .to_string();
    assert!(reason.contains("protocol violation"), "{reason}");

    // A frame claiming 4 GB: disconnected at once, nothing allocated.
    let mut huge = server.connect(&endpoint, "huge").await;
    let _ = huge.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF]).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), huge.conn.closed())
        .await
        .expect("closed")
        .to_string();
    assert!(reason.contains("protocol violation"), "{reason}");

    // Control messages over 10/s are dropped and count as violations.
    let mut spam = server.connect(&endpoint, "spam").await;
    for _ in 0..40 {
        if spam
            .send(&ClientMessage::Heartbeat { client_tick: 0 })
            .await
            .is_err()
        {
            break;
        }
    }
    let reason = tokio::time::timeout(Duration::from_secs(5), spam.conn.closed())
        .await
        .expect("closed")
        .to_string();
    assert!(reason.contains("protocol violation"), "{reason}");

    let after = server.metrics();
    assert!(
        metric(&after, "apexsim_malformed_packets_total")
            >= metric(&before, "apexsim_malformed_packets_total") + 30.0
    );
    assert_eq!(
        metric(&after, "apexsim_violation_disconnects_total"),
        5.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "apexsim_packets_dropped_total{reason=\"control_rate_limit\"}"
        ) >= 10.0
    );

    let (code, out, log) = tokio::task::spawn_blocking(move || race.finish())
        .await
        .expect("join");
    assert_eq!(code, 0, "the bots' race went on:\n{log}\n{out}");
    let report = json(&out);
    assert_eq!(
        report["results"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert!(
        report["telemetry_coverage_pct"].as_f64().expect("coverage") >= 98.0,
        "{report}"
    );
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulted_session_ends_alone() {
    let mut server = Server::start(&[("APEXSIM_SERVER_FAULT_INJECTION", "true")]);
    let race = server.drive(&[
        "--bots",
        "2",
        "--ai",
        "1",
        "--laps",
        "1",
        "--track",
        "mini_oval",
    ]);
    let endpoint = server.pinned();
    for kind in [FaultKind::Panic, FaultKind::NonFinite] {
        let mut victim = server.connect(&endpoint, "victim").await;
        let _talk = keep_alive(victim.conn.clone());
        let Ok(session) =
            tokio::time::timeout(Duration::from_secs(15), create_and_start(&mut victim, 1, 3))
                .await
        else {
            panic!(
                "no answer in time; server log:\n{}",
                server.child.poll_log().join("\n")
            );
        };
        // Racing telemetry first, then the fault.
        loop {
            let t = victim.telemetry().await.expect("telemetry");
            assert_eq!(t.cars.len(), 2);
            if t.session_state == SessionState::Racing {
                break;
            }
        }
        victim
            .send(&ClientMessage::InjectFault { kind })
            .await
            .expect("send");
        let Ok(first) = tokio::time::timeout(Duration::from_secs(10), next(&mut victim)).await
        else {
            panic!(
                "no answer in time; server log:\n{}",
                server.child.poll_log().join("\n")
            );
        };
        match first {
            ServerMessage::Error { code: c, message } => {
                assert_eq!(c, code::SESSION_FAULT);
                assert!(message.contains("session fault"), "{message}");
            }
            other => panic!("expected the fault, got {other:?}"),
        }
        match next(&mut victim).await {
            ServerMessage::SessionResults {
                session_id,
                fault,
                standings,
                ..
            } => {
                assert_eq!(session_id, session);
                let fault = fault.expect("a fault result");
                let expected = if kind == FaultKind::Panic {
                    "panic"
                } else {
                    "non-finite"
                };
                assert!(fault.contains(expected), "{fault}");
                assert_eq!(standings.len(), 2);
            }
            other => panic!("expected results, got {other:?}"),
        }
    }
    let text = server.metrics();
    assert_eq!(metric(&text, "apexsim_session_faults_total"), 2.0);
    let (code, out, log) = tokio::task::spawn_blocking(move || race.finish())
        .await
        .expect("join");
    assert_eq!(code, 0, "the other session raced to its end:\n{log}\n{out}");
    let report = json(&out);
    assert!(report["fault"].is_null(), "{report}");
    assert_eq!(report["results"].as_array().map(Vec::len), Some(3));
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(
        code, 0,
        "the process kept serving and stops cleanly:\n{log}"
    );
}

/// With no full-rate radius, a player's telemetry carries its own car every tick and each
/// other car every fourth tick (staggered by index); what the datagrams carry adds up to the
/// whole field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_cars_come_every_fourth_tick_and_ones_own_car_every_tick() {
    let server = Server::start(&[("APEXSIM_NETWORK_TELEMETRY_FULL_RATE_RADIUS_M", "0.0")]);
    let endpoint = server.pinned();
    let mut client = server.connect(&endpoint, "driver").await;
    let _talk = keep_alive(client.conn.clone());
    create_and_start(&mut client, 3, 1).await;
    let mut field = protocol::FieldState::default();
    let mut seen = 0;
    while seen < 480 {
        let t = client.telemetry().await.expect("telemetry");
        if t.session_state == SessionState::Finished {
            break;
        }
        seen += 1;
        assert_eq!(t.session_cars, 4);
        let carried: Vec<u8> = t.cars.iter().map(|c| c.index).collect();
        let expected: Vec<u8> = (0..4u8)
            .filter(|&i| i == 0 || (t.server_tick + u32::from(i)) % 4 == 0)
            .collect();
        assert_eq!(carried, expected, "tick {}", t.server_tick);
        field.update(&t);
    }
    assert_eq!(seen, 480, "the race lasted 2 s at least");
    assert_eq!(field.cars().count(), 4, "every car heard of");
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_503_archives_and_exits_within_10_s() {
    let server = Server::start(&[]);
    let endpoint = server.pinned();
    let mut client = server.connect(&endpoint, "driver").await;
    let session = create_and_start(&mut client, 2, 5).await;
    let _talk = keep_alive(client.conn.clone());
    loop {
        let t = client.telemetry().await.expect("telemetry");
        if t.session_state == SessionState::Racing && t.server_tick % 240 == 0 {
            break;
        }
        // Drive flat out so the car is on a lap, not parked.
        let _ = client.send_input(&PlayerInput {
            seq: t.server_tick,
            server_tick_ack: t.server_tick,
            throttle: 0.6,
            brake: 0.0,
            steering: 0.0,
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = server.http;
    let signalled = Instant::now();
    server.child.terminate();
    match next(&mut client).await {
        ServerMessage::Error { code: c, message } => {
            assert_eq!(c, code::UNAVAILABLE);
            assert_eq!(message, "server shutting down");
        }
        other => panic!("expected the 503, got {other:?}"),
    }
    let (status, _) = http_get(http, "/health");
    assert_eq!(status, 503, "health says the server is going");
    match next(&mut client).await {
        ServerMessage::SessionResults {
            session_id,
            fault,
            standings,
            ..
        } => {
            assert_eq!(session_id, session);
            assert_eq!(fault, None, "an interrupted race is not a fault");
            assert_eq!(standings.len(), 3);
        }
        other => panic!("expected results, got {other:?}"),
    }
    let (code, out, log) = tokio::task::spawn_blocking(move || server.child.finish())
        .await
        .expect("join");
    let took = signalled.elapsed();
    assert_eq!(code, 0, "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(out.contains("1 sessions finished"), "{out}");
    let listed = archive_ls(&server.data, &session.to_string());
    assert_eq!(listed["sessions"][0]["status"], "finished", "{listed}");
    let laps = listed["laps"].as_array().expect("laps");
    assert!(laps.len() >= 3, "every car's laps are archived: {listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_and_connection_limits_are_answered_with_clear_errors() {
    let server = Server::start(&[
        ("APEXSIM_SERVER_MAX_SESSIONS", "1"),
        ("APEXSIM_SERVER_MAX_CONNECTIONS", "2"),
    ]);
    let endpoint = server.pinned();
    let mut host = server.connect(&endpoint, "host").await;
    let mut other = server.connect(&endpoint, "other").await;
    match Client::connect(&endpoint, server.quic, "", "third").await {
        Err(ClientError::Refused(reason)) => {
            assert!(
                reason.contains("503") && reason.contains("2 connections"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {:?}", other.map(|c| c.player_id)),
    }
    let track = loop {
        if let Some(Ok(ServerMessage::LobbyState { track_configs, .. })) = host.recv().await {
            break track_configs[0].id;
        }
    };
    let create = ClientMessage::CreateSession {
        track_config_id: track,
        max_players: 2,
        ai_count: 0,
        lap_limit: 1,
    };
    host.send(&create).await.expect("send");
    let ServerMessage::SessionJoined { session_id, .. } = next(&mut host).await else {
        panic!("not joined");
    };
    other.send(&create).await.expect("send");
    match next(&mut other).await {
        ServerMessage::Error { code: c, message } => {
            assert_eq!(c, code::UNAVAILABLE);
            assert!(message.contains("maximum of 1 sessions"), "{message}");
        }
        m => panic!("expected the limit, got {m:?}"),
    }
    // Only the host starts; a bad lap count is named.
    other
        .send(&ClientMessage::JoinSession { session_id })
        .await
        .expect("send");
    assert!(matches!(
        next(&mut other).await,
        ServerMessage::SessionJoined {
            your_grid_position: 2,
            ..
        }
    ));
    other
        .send(&ClientMessage::StartSession)
        .await
        .expect("send");
    match next(&mut other).await {
        ServerMessage::Error { code: c, .. } => assert_eq!(c, code::FORBIDDEN),
        m => panic!("expected forbidden, got {m:?}"),
    }
    // The host leaves: the other player becomes the host and can start.
    host.send(&ClientMessage::LeaveSession).await.expect("send");
    assert!(matches!(next(&mut host).await, ServerMessage::SessionLeft));
    other
        .send(&ClientMessage::StartSession)
        .await
        .expect("send");
    match next(&mut other).await {
        ServerMessage::SessionStarting { grid, .. } => {
            assert_eq!(grid.len(), 1);
            assert_eq!(grid[0].player_id, Some(other.player_id));
        }
        m => panic!("expected the start, got {m:?}"),
    }
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}
