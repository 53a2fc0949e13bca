//! Racing from a browser: the page at `/drive` in headless Chromium opens a WebTransport
//! session on the QUIC port (ALPN `h3`, the server's rotating browser certificate by its hash),
//! joins a rotation session with three `apexsim drive` bots and is driven to the finish by
//! scripted key presses (`tools/browser/drive_page.py`). A second tab floods malformed
//! datagrams and is disconnected; the first races on. The test reports the page's
//! input-to-telemetry latency next to the bots', and the server's network CPU per browser
//! client next to a QUIC bot's, from a race of four bots on the same server just before.

use std::time::{Duration, Instant};

use apexsim::net::impair::{Impairment, Relay};

use crate::common::http_get;
use crate::server::{Server, archive_ls, json, metric};
use crate::web::{browser, screenshots};

/// A rotation template on the mini oval that starts once four players are in.
const BROWSER_CUP: &str = r#"id = "770e8400-e29b-41d4-a716-4466554400bb"
name = "Browser Cup"
track_config_id = "660e8400-e29b-41d4-a716-4466554400aa"
allowed_cars = []
max_players = 4
default_ai_count = 0
lap_limit = 2
start_mode = "countdown"
min_players = 4
rotation_weight = 1
active = true
"#;

fn browser_hash(server: &Server) -> String {
    let (status, body) = http_get(server.http, "/api/webtransport");
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["port"], server.quic.port(), "{info}");
    assert_eq!(info["path"], "/apexsim");
    info["certificate_hashes"][0]
        .as_str()
        .unwrap_or_else(|| panic!("a hash: {info}"))
        .to_owned()
}

/// Runs `bots` to the end of their race; the network threads' CPU seconds and the wall
/// seconds it took.
fn race_cpu(
    server: &Server,
    run: impl FnOnce() -> serde_json::Value,
) -> (serde_json::Value, f64, f64) {
    let (_, net0) = server.child.thread_cpu_seconds();
    let t0 = Instant::now();
    let out = run();
    let (_, net1) = server.child.thread_cpu_seconds();
    (out, net1 - net0, t0.elapsed().as_secs_f64())
}

#[test]
fn a_browser_drives_a_race_over_webtransport_with_three_bots_and_a_flooding_tab_is_cut_off() {
    let server = Server::start_prepared(
        &[
            ("APEXSIM_SERVER_RUN_TEMPLATES", "true"),
            ("APEXSIM_SERVER_LOBBY_WINDOW_SECONDS", "2"),
            ("APEXSIM_SERVER_SESSION_TIMEOUT_SECONDS", "5"),
            // Rotated several times during the race: open connections stay up.
            ("APEXSIM_NETWORK_BROWSER_CERT_ROTATE_SECONDS", "5"),
        ],
        |content, _| {
            let templates = content.join("templates");
            std::fs::remove_dir_all(&templates).expect("remove the templates");
            std::fs::create_dir_all(&templates).expect("templates");
            std::fs::write(templates.join("browser_cup.toml"), BROWSER_CUP).expect("write");
        },
    );
    let first_hash = browser_hash(&server);
    let (status, page) = http_get(server.http, "/drive");
    assert_eq!(status, 200);
    assert!(
        page.contains("new WebTransport(") && !page.contains("https://cdn"),
        "the page is whole"
    );

    // The baseline from the same server: four QUIC bots race the Browser Cup.
    let (quic, quic_cpu, quic_wall) = race_cpu(&server, || {
        let bots = server.drive(&["--bots", "4", "--join", "next", "--timeout", "180"]);
        let (code, out, log) = bots.finish();
        assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
        json(&out)
    });
    assert_eq!(quic["results"].as_array().map(Vec::len), Some(4), "{quic}");

    // Then three bots and the browser: the next rotation session waits for the fourth.
    let shot = screenshots().join("drive.png");
    let addr = format!("127.0.0.1:{}", server.http.port());
    let (mixed, mixed_cpu, mixed_wall) = race_cpu(&server, || {
        let bots = server.drive(&["--bots", "3", "--join", "next", "--timeout", "240"]);
        let seen = browser("drive_page.py", &[&addr, shot.to_str().expect("utf-8")]);
        let (code, out, log) = bots.finish();
        assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
        serde_json::json!({ "page": seen, "bots": json(&out) })
    });
    let (seen, bots) = (&mixed["page"], &mixed["bots"]);
    eprintln!("drive page: {}", shot.display());
    assert_eq!(seen["page_errors"], serde_json::json!([]), "{seen}");
    assert!(
        seen["connected"].as_bool() == Some(true),
        "still connected: {seen}"
    );
    assert_eq!(seen["visibility"], "visible");

    // Classified, with its laps timed.
    let standings = seen["results"]["standings"].as_array().expect("results");
    assert_eq!(standings.len(), 4, "{seen}");
    let me = standings
        .iter()
        .find(|s| s["name"] == "Browser Driver")
        .unwrap_or_else(|| panic!("the browser is classified: {seen}"));
    assert_eq!(me["laps"], 2, "{me}");
    let best = me["best_lap_s"].as_f64().expect("a best lap");
    assert!(best > 10.0 && best < 40.0, "{me}");
    let laps = seen["laps"].as_array().expect("laps");
    assert_eq!(laps.len(), 2, "the page timed both laps: {seen}");
    let page_best = seen["best"].as_f64().expect("best");
    assert!(
        (page_best - best).abs() < 0.05,
        "the page's lap time is the server's: {page_best} vs {best}"
    );
    assert!(seen["inputs_sent"].as_u64() > Some(2000), "{seen}");

    // The flooding tab was disconnected for its protocol violations, the driver was not.
    let flood = &seen["flood"];
    assert!(
        flood["closed"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("protocol violation")),
        "{seen}"
    );
    assert_eq!(flood["driver_connected"], true, "{seen}");
    let metrics = server.metrics();
    assert!(
        metric(&metrics, "apexsim_violation_disconnects_total") >= 1.0,
        "{metrics}"
    );

    // The browser's laps are archived under its name.
    let session = seen["results"]["session_id"].as_str().expect("session");
    let mut archived = serde_json::Value::Null;
    for _ in 0..50 {
        archived = archive_ls(&server.data, session);
        if archived["laps"].as_array().is_some_and(|l| {
            l.iter()
                .filter(|lap| lap["driver"] == "Browser Driver")
                .count()
                >= 2
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mine: Vec<_> = archived["laps"]
        .as_array()
        .expect("laps")
        .iter()
        .filter(|lap| lap["driver"] == "Browser Driver")
        .collect();
    assert!(mine.len() >= 2, "{archived}");

    // The certificate rotated while the browser raced, and a page opened now gets the new one.
    let last_hash = browser_hash(&server);
    assert_ne!(first_hash, last_hash, "the browsers' certificate rotated");
    assert_eq!(seen["late_connect"], true, "{seen}");

    let latency = &seen["latency"];
    eprintln!(
        "browser client: input-to-telemetry latency p50 {:.1} ticks, p99 {:.1} ticks ({} samples), \
         RTT {:.1} ms, loss {:.2}% (the QUIC bots of the same race: p50 {:.1}, p99 {:.1} ticks)",
        latency["p50_ticks"].as_f64().unwrap_or(f64::NAN),
        latency["p99_ticks"].as_f64().unwrap_or(f64::NAN),
        latency["samples"],
        seen["rtt_ms"].as_f64().unwrap_or(f64::NAN),
        seen["loss"].as_f64().unwrap_or(f64::NAN) * 100.0,
        bots["latency_p50_ticks"].as_f64().unwrap_or(f64::NAN),
        bots["latency_p99_ticks"].as_f64().unwrap_or(f64::NAN),
    );
    let per_bot = quic_cpu / quic_wall / 4.0;
    let per_browser = mixed_cpu / mixed_wall - 3.0 * per_bot;
    eprintln!(
        "server network CPU per client: browser (WebTransport) {:.1}% of a core, QUIC bot {:.1}% \
         (four bots: {quic_cpu:.2} s over {quic_wall:.1} s; three bots and the browser: \
         {mixed_cpu:.2} s over {mixed_wall:.1} s)",
        per_browser * 100.0,
        per_bot * 100.0
    );
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}

#[test]
fn the_browser_client_drives_smoothly_through_a_jittery_network_ignoring_late_datagrams() {
    let server = Server::start(&[]);
    // 0-5 ms of jitter each way: at 240 Hz (a datagram every 4.2 ms) many arrive out of order.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let impairment = Impairment {
        jitter: Duration::from_millis(5),
        ..Impairment::default()
    };
    let relay = runtime
        .block_on(Relay::start(
            "127.0.0.1:0".parse().expect("addr"),
            server.quic,
            impairment,
        ))
        .expect("relay");
    let shot = screenshots().join("drive_jitter.png");
    let addr = format!("127.0.0.1:{}", server.http.port());
    let port = relay.local_addr().port().to_string();
    // The page makes a one-lap session with three AI cars and starts it.
    let seen = browser(
        "drive_page.py",
        &[
            &addr,
            shot.to_str().expect("utf-8"),
            "--no-flood",
            "--port",
            &port,
            "--create",
            "1,3",
        ],
    );
    assert_eq!(seen["page_errors"], serde_json::json!([]), "{seen}");
    let standings = seen["results"]["standings"].as_array().expect("results");
    assert_eq!(standings.len(), 4, "{seen}");
    let me = standings
        .iter()
        .find(|s| s["name"] == "Browser Driver")
        .unwrap_or_else(|| panic!("classified: {seen}"));
    assert_eq!(me["laps"], 1, "{me}");
    assert_eq!(seen["laps"].as_array().map(Vec::len), Some(1), "{seen}");
    let (received, ignored) = (
        seen["received"].as_u64().expect("received"),
        seen["ignored"].as_u64().expect("ignored"),
    );
    assert!(
        ignored > 0 && received > 1000,
        "reordered datagrams arrive and are ignored: {seen}"
    );
    let latency = &seen["latency"];
    eprintln!(
        "through 0-5 ms of jitter each way: {ignored} of {} telemetry datagrams arrived after a \
         newer one and were ignored; loss {:.2}%, latency p50 {:.1} ticks, p99 {:.1} ticks, \
         {} reordered by the relay",
        received + ignored,
        seen["loss"].as_f64().unwrap_or(f64::NAN) * 100.0,
        latency["p50_ticks"].as_f64().unwrap_or(f64::NAN),
        latency["p99_ticks"].as_f64().unwrap_or(f64::NAN),
        relay.stats().to_client.reordered,
    );
    relay.stop();
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}
