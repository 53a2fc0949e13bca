//! The web pages of `apexsim serve` in headless Chromium (Debian's, driven by Playwright from
//! `tools/browser/`): the live timing page during a bot race (every car in the table and on the
//! map where its position says, positions and laps moving), the results page of the finished
//! race, and the results exports. Screenshots are kept under `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::http_get;
use crate::server::{Server, json};

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Runs a browser check and parses the JSON it prints.
fn browser(script: &str, args: &[&str]) -> serde_json::Value {
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
    // overlap on the same bit of track, another car's).
    let colours: Vec<&serde_json::Value> = map.iter().map(|c| &c["colour"]).collect();
    for car in map {
        let offset = car["offset"].as_f64().expect("offset");
        assert!(
            offset < 30.0,
            "drawn where its newest position projects: {car}"
        );
        assert!(
            colours.contains(&&car["pixel"]),
            "a car's colour where it is drawn: {car}"
        );
    }
    assert!(
        map.iter().any(|c| c["pixel"] == c["colour"]),
        "cars in their own colours: {seen}"
    );
    eprintln!("live page: {}", shot.display());
    let bytes = live_bytes(&server, 3);
    eprintln!(
        "live stream: {:.1} kB/s per viewer for one 4-car session at 20 updates/s",
        bytes as f64 / 3.0 / 1000.0
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
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}
