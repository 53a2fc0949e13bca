//! The REST API over real HTTP: `apexsim api` over an archive two races wrote, every read
//! route with its filters and pages, Arrow IPC read back by arrow, bad input refused naming
//! the field, the OpenAPI document listing every route; and the same API on `serve`'s port.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::common::{Child, Served, apexsim, bundled_content, http_get, http_request, log_field};

/// `GET path` with extra headers: status, headers and the body's bytes.
fn get_bytes(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    )
    .expect("write");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, all[split + 4..].to_vec())
}

fn json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

fn ok(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = json(addr, path);
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// A 400 whose body names `field`.
fn refused(addr: SocketAddr, path: &str, field: &str) {
    let (status, v) = json(addr, path);
    assert_eq!(status, 400, "{path}: {v}");
    assert_eq!(v["field"], field, "{path}: {v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

fn race(data: &Path, track: &str, cars: &str) -> Value {
    let (code, out, err) = apexsim(&[
        "--data",
        data.to_str().expect("utf-8"),
        "race",
        "--fast",
        "--track",
        track,
        "--cars",
        cars,
        "--laps",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).expect("race report")
}

fn api(data: &Path) -> (Child, SocketAddr) {
    api_with(data, &[])
}

fn api_with(data: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let content = bundled_content();
    let mut args = vec![
        "--content",
        content.to_str().expect("utf-8"),
        "--data",
        data.to_str().expect("utf-8"),
        "api",
        "--bind",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut child = Child::spawn(&args);
    let line = child
        .wait_for(std::time::Duration::from_secs(30), |l| {
            l.contains("serving the API")
        })
        .unwrap_or_else(|| panic!("the API did not start:\n{}", child.log.join("\n")));
    let addr: SocketAddr = log_field(&line, "http").expect("address in the log");
    (child, addr)
}

#[test]
fn every_read_route_over_an_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let oval = race(dir.path(), "oval_simple", "3");
    let road = race(dir.path(), "road_course_a", "2");
    let (_child, at) = api(dir.path());
    let oval_id = oval["session"].as_str().expect("id").to_owned();
    let road_id = road["session"].as_str().expect("id").to_owned();

    // The host: every core, memory, this process; no sensors here, so no temperatures (absent,
    // not zero); a machine with sensors gives real readings.
    let host = ok(at, "/api/v1/host");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(host["cpus"].as_array().map(Vec::len), Some(cores), "{host}");
    assert!(
        host["memory"]["total_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0)
    );
    assert!(
        host["process"]["memory_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0)
    );
    let sensors = std::fs::read_dir("/sys/class/hwmon").map_or(0, |d| d.count());
    match host.get("temperatures") {
        None => {}
        Some(t) => {
            assert!(sensors > 0, "temperatures without sensors: {t}");
            assert!(
                t.as_array().is_some_and(|a| !a.is_empty()
                    && a.iter()
                        .all(|x| x["celsius"].as_f64().is_some_and(|c| c != 0.0))),
                "{t}"
            );
        }
    }
    if cfg!(target_os = "linux") {
        assert!(host["load_average"]["one"].as_f64().is_some(), "{host}");
    }

    let health = ok(at, "/api/v1/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sessions"], 2);

    // Sessions: all, filtered, paged.
    let all = ok(at, "/api/v1/sessions");
    assert_eq!(all["total"], 2);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(all["next_offset"], Value::Null);
    let ids: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains(&oval_id.as_str()) && ids.contains(&road_id.as_str()));
    let by_track = ok(at, "/api/v1/sessions?track=oval_simple");
    assert_eq!(by_track["total"], 1);
    assert_eq!(by_track["items"][0]["id"], oval_id.as_str());
    let first = ok(at, "/api/v1/sessions?limit=1");
    assert_eq!(
        (first["total"].clone(), first["next_offset"].clone()),
        (2.into(), 1.into())
    );
    let second = ok(at, "/api/v1/sessions?limit=1&offset=1");
    assert_eq!(second["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(second["items"][0]["id"], first["items"][0]["id"]);
    assert_eq!(second["next_offset"], Value::Null);
    let driver = oval["results"][0]["driver"]
        .as_str()
        .expect("driver")
        .to_owned();
    let by_driver = ok(
        at,
        &format!("/api/v1/sessions?driver={}", urlencode(&driver)),
    );
    assert!(
        by_driver["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|s| s["id"] == oval_id.as_str()),
        "{by_driver}"
    );
    assert_eq!(ok(at, "/api/v1/sessions?driver=Nobody%20Here")["total"], 0);
    assert_eq!(ok(at, "/api/v1/sessions?source=sim")["total"], 2);
    assert_eq!(ok(at, "/api/v1/sessions?source=iracing")["total"], 0);
    let started = all["items"][0]["started_at"].as_i64().expect("started");
    assert_eq!(
        ok(at, &format!("/api/v1/sessions?from={}", started + 3600))["total"],
        0
    );
    assert_eq!(
        ok(at, &format!("/api/v1/sessions?to={}", started - 3600))["total"],
        0
    );
    assert_eq!(
        ok(
            at,
            &format!(
                "/api/v1/sessions?from={}&to={}",
                started - 3600,
                started + 3600
            )
        )["total"],
        2
    );
    refused(at, "/api/v1/sessions?limit=0", "limit");
    refused(at, "/api/v1/sessions?limit=501", "limit");
    refused(at, "/api/v1/sessions?limit=ten", "limit");
    refused(at, "/api/v1/sessions?offset=-1", "offset");
    refused(at, "/api/v1/sessions?from=yesterday", "from");
    refused(at, "/api/v1/sessions?track=", "track");
    refused(at, "/api/v1/sessions?car=a&car=b", "car");

    // One session.
    let s = ok(at, &format!("/api/v1/sessions/{oval_id}"));
    assert_eq!(s["session"]["track"], "oval_simple");
    assert_eq!(s["results"].as_array().map(Vec::len), Some(3));
    let laps = s["laps"].as_array().expect("laps").clone();
    assert_eq!(
        Some(laps.len() as u64),
        oval["archive"]["laps_written"].as_u64()
    );
    assert!(s["track_name"].as_str().is_some(), "{}", s["track_name"]);
    refused(at, "/api/v1/sessions/not-a-uuid", "id");
    let (status, v) = json(at, &format!("/api/v1/sessions/{}", uuid::Uuid::nil()));
    assert_eq!(status, 404, "{v}");

    // A lap's telemetry: JSON pages, then Arrow IPC.
    let lap = laps
        .iter()
        .find(|l| l["complete"] == true && l["lap"] == 1)
        .expect("a complete lap 1");
    let (car, n, rows) = (
        lap["car"].as_u64().expect("car"),
        lap["lap"].as_u64().expect("lap"),
        lap["rows"].as_u64().expect("rows"),
    );
    let base = format!("/api/v1/sessions/{oval_id}/laps/{car}/{n}");
    let t = ok(
        at,
        &format!("{base}/telemetry?columns=speed_mps,distance_m&limit=100"),
    );
    assert_eq!(t["total_rows"], rows);
    assert_eq!(t["tick"].as_array().map(Vec::len), Some(100));
    assert_eq!(t["next_offset"], 100);
    let names: Vec<&str> = t["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["speed_mps", "distance_m"]);
    assert!(
        t["columns"][0]["unit"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    let next = ok(
        at,
        &format!("{base}/telemetry?columns=speed_mps&offset=100&limit=100"),
    );
    assert_eq!(
        next["tick"][0].as_u64(),
        t["tick"][99].as_u64().map(|x| x + 1),
        "pages follow one another"
    );
    let tail = ok(at, &format!("{base}/telemetry?offset={}", rows - 5));
    assert_eq!(tail["tick"].as_array().map(Vec::len), Some(5));
    assert_eq!(tail["next_offset"], Value::Null);
    let whole = ok(at, &format!("{base}/telemetry?limit=100000"));
    let every = whole["values"].as_object().expect("values");
    assert!(every.len() > 10, "every column: {:?}", every.keys());
    assert!(
        every
            .values()
            .all(|v| v.as_array().map(Vec::len) == Some(rows as usize))
    );
    refused(
        at,
        &format!("{base}/telemetry?columns=speed_mps,warp_factor"),
        "columns",
    );
    refused(at, &format!("{base}/telemetry?limit=100001"), "limit");
    refused(
        at,
        &format!("/api/v1/sessions/{oval_id}/laps/300/1/telemetry"),
        "car",
    );
    refused(
        at,
        &format!("/api/v1/sessions/{oval_id}/laps/0/x/telemetry"),
        "lap",
    );
    let (status, v) = json(
        at,
        &format!("/api/v1/sessions/{oval_id}/laps/{car}/99/telemetry"),
    );
    assert_eq!(status, 404, "{v}");

    let (status, head, bytes) = get_bytes(
        at,
        &format!("{base}/telemetry?columns=speed_mps,distance_m&limit=100"),
        "Accept: application/vnd.apache.arrow.stream\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("application/vnd.apache.arrow.stream"),
        "{head}"
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).expect("ipc");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("batches");
    let batch = &batches[0];
    assert_eq!(batch.num_rows(), 100);
    assert_eq!(batch.schema().field(0).name(), "tick");
    let speed = batch
        .column_by_name("speed_mps")
        .expect("speed")
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .expect("f32");
    for (i, v) in t["values"]["speed_mps"]
        .as_array()
        .expect("speeds")
        .iter()
        .enumerate()
    {
        let json = v.as_f64().expect("finite speed") as f32;
        assert_eq!(speed.value(i), json, "row {i}: Arrow and JSON agree");
    }

    // The lap's metrics.
    let m = ok(at, &format!("{base}/metrics"));
    let lap_time = lap["lap_time_s"].as_f64().expect("lap time");
    let measured = m["stats"]["lap_time_s"].as_f64().expect("measured");
    assert!(
        (measured - lap_time).abs() < 0.05,
        "{measured} against {lap_time}"
    );
    let sectors = s["session"]["sectors"].as_array().map_or(0, Vec::len);
    assert_eq!(
        m["sector_times_s"].as_array().map(Vec::len),
        Some(sectors + 1)
    );
    assert!(m["braking"].is_array() && m["corners"].is_array());

    // A driver's laps and best laps.
    let enc = urlencode(&driver);
    let dl = ok(at, &format!("/api/v1/drivers/{enc}/laps?limit=500"));
    let theirs: Vec<&Value> = laps
        .iter()
        .filter(|l| l["driver"] == driver.as_str())
        .collect();
    let total = dl["total"].as_u64().expect("total");
    assert!(
        total >= theirs.len() as u64,
        "{total} against {}",
        theirs.len()
    );
    assert!(
        dl["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|l| l["driver"] == driver.as_str())
    );
    assert!(dl["items"][0]["track"].is_string() && dl["items"][0]["car_model"].is_string());
    let valid = ok(
        at,
        &format!("/api/v1/drivers/{enc}/laps?valid=true&track=oval_simple"),
    );
    let want = theirs
        .iter()
        .filter(|l| l["valid"] == true && l["complete"] == true)
        .count();
    assert_eq!(valid["total"], want);
    let paged = ok(at, &format!("/api/v1/drivers/{enc}/laps?limit=1&offset=1"));
    assert_eq!(paged["items"][0], dl["items"][1]);
    refused(
        at,
        &format!("/api/v1/drivers/{enc}/laps?valid=maybe"),
        "valid",
    );
    let best = ok(at, &format!("/api/v1/drivers/{enc}/best"));
    let oval_best = best
        .as_array()
        .expect("best")
        .iter()
        .find(|b| b["track"] == "oval_simple")
        .expect("a best lap on the oval");
    let fastest = theirs
        .iter()
        .filter(|l| l["valid"] == true && l["complete"] == true)
        .filter_map(|l| l["lap_time_s"].as_f64())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(oval_best["lap_time_s"].as_f64(), Some(fastest));
    assert_eq!(oval_best["laps"], want);

    // Tracks, cars, templates.
    let tracks = ok(at, "/api/v1/racing/tracks");
    let t = |slug: &str| {
        tracks
            .as_array()
            .expect("tracks")
            .iter()
            .find(|t| t["slug"] == slug)
            .cloned()
            .unwrap_or_else(|| panic!("no {slug} in {tracks}"))
    };
    assert_eq!(t("oval_simple")["sessions"], 1);
    assert_eq!(t("road_course_a")["sessions"], 1);
    assert!(
        t("oval_simple")["length_m"]
            .as_f64()
            .is_some_and(|l| l > 100.0)
    );
    assert_eq!(
        t("oval_simple")["laps"].as_u64(),
        oval["archive"]["laps_written"].as_u64()
    );
    let cars = ok(at, "/api/v1/racing/cars");
    let sessions_in_cars: u64 = cars
        .as_array()
        .expect("cars")
        .iter()
        .filter_map(|c| c["sessions"].as_u64())
        .sum();
    assert_eq!(sessions_in_cars, 2, "{cars}");
    let templates = ok(at, "/api/v1/racing/templates");
    assert!(!templates.as_array().expect("templates").is_empty());
    assert!(templates[0]["start_mode"].is_string());

    // The document lists every route, and the documentation page loads it.
    let doc = ok(at, "/api/v1/openapi.json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/v1/health",
        "/api/v1/host",
        "/api/v1/sessions",
        "/api/v1/sessions/{id}",
        "/api/v1/sessions/{id}/laps/{car}/{lap}/telemetry",
        "/api/v1/sessions/{id}/laps/{car}/{lap}/metrics",
        "/api/v1/drivers/{driver}/laps",
        "/api/v1/drivers/{driver}/best",
        "/api/v1/racing/tracks",
        "/api/v1/racing/cars",
        "/api/v1/racing/templates",
    ] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} in the document"
        );
    }
    let (status, page) = http_get(at, "/api/v1/docs");
    assert_eq!(status, 200);
    assert!(page.contains("/api/v1/openapi.json") && !page.contains("https://"));
}

#[test]
fn the_server_serves_the_api_on_its_http_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    race(dir.path(), "oval_simple", "2");
    let server = Served::start(&bundled_content(), dir.path(), &[]);
    let page = ok(server.http, "/api/v1/sessions?track=oval_simple");
    assert_eq!(page["total"], 1);
    assert!(
        ok(server.http, "/api/v1/racing/tracks")
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    refused(server.http, "/api/v1/sessions?limit=0", "limit");
    // The server's own routes are still there beside it, and /metrics has the host's.
    assert_eq!(http_get(server.http, "/health").0, 200);
    let (status, metrics) = http_get(server.http, "/metrics");
    assert_eq!(status, 200);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per_core = metrics
        .lines()
        .filter(|l| l.starts_with("apexsim_host_cpu_usage_ratio{"))
        .count();
    assert_eq!(per_core, cores, "{metrics}");
    assert!(metrics.contains("apexsim_host_memory_bytes{kind=\"total\"}"));
    assert!(metrics.contains("apexsim_host_process{kind=\"memory_bytes\"}"));
    let host = ok(server.http, "/api/v1/host");
    assert_eq!(
        metrics.contains("apexsim_host_temperature_celsius{"),
        host.get("temperatures").is_some(),
        "a temperature series only for a sensor that reads"
    );
}

const TOKEN: &str = "writer-token-0123456789";

#[test]
fn deleting_a_drivers_old_telemetry_needs_a_token_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = race(dir.path(), "oval_simple", "3");
    let config = dir.path().join("server.toml");
    std::fs::write(&config, format!("[api.tokens]\nwriter = \"{TOKEN}\"\n")).expect("config");
    let (_child, at) = api_with(dir.path(), &["--config", config.to_str().expect("utf-8")]);
    let session = report["session"].as_str().expect("id").to_owned();
    let driver = report["results"][1]["driver"]
        .as_str()
        .expect("driver")
        .to_owned();
    let enc = urlencode(&driver);
    let before = ok(at, &format!("/api/v1/sessions/{session}"));
    let laps = before["laps"].as_array().expect("laps").clone();
    let theirs: Vec<&Value> = laps
        .iter()
        .filter(|l| l["driver"] == driver.as_str())
        .collect();
    assert!(!theirs.is_empty());
    let files: Vec<std::path::PathBuf> = theirs
        .iter()
        .map(|l| dir.path().join(l["file"].as_str().expect("file")))
        .collect();
    assert!(files.iter().all(|f| f.exists()));

    let route = format!("/api/v1/drivers/{enc}/telemetry?older_than=0s");
    for token in [None, Some("not-the-token-at-all-x")] {
        let (status, body) = http_request(at, "DELETE", &route, token, None);
        assert_eq!(status, 401, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["field"], "authorization");
    }
    assert!(
        files.iter().all(|f| f.exists()),
        "a refused delete removes nothing"
    );
    let bad = |path: &str, field: &str| {
        let (status, body) = http_request(at, "DELETE", path, Some(TOKEN), None);
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["field"], field, "{body}");
    };
    bad(&format!("/api/v1/drivers/{enc}/telemetry"), "older_than");
    bad(
        &format!("/api/v1/drivers/{enc}/telemetry?older_than=soon"),
        "older_than",
    );

    // The session is minutes old: a day's cutoff keeps everything.
    let (status, body) = http_request(
        at,
        "DELETE",
        &format!("/api/v1/drivers/{enc}/telemetry?older_than=1d"),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["laps"], 0, "{v}");

    let (status, body) = http_request(at, "DELETE", &route, Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["laps"],
        theirs.len(),
        "{v}; session started at {}",
        before["session"]["started_at"]
    );
    assert_eq!(v["sessions"], 1);
    assert!(v["bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(
        files.iter().all(|f| !f.exists()),
        "the driver's lap files are gone"
    );
    assert_eq!(ok(at, &format!("/api/v1/drivers/{enc}/laps"))["total"], 0);
    let after = ok(at, &format!("/api/v1/sessions/{session}"));
    assert_eq!(
        after["results"].as_array().map(Vec::len),
        Some(3),
        "results stay"
    );
    let left = after["laps"].as_array().expect("laps");
    assert_eq!(
        left.len(),
        laps.len() - theirs.len(),
        "the other drivers' laps stay"
    );
    assert!(left.iter().all(|l| l["driver"] != driver.as_str()));
    assert!(
        left.iter()
            .all(|l| dir.path().join(l["file"].as_str().expect("file")).exists())
    );
    let gone = theirs[0];
    let (status, _) = http_get(
        at,
        &format!(
            "/api/v1/sessions/{session}/laps/{}/{}/telemetry",
            gone["car"], gone["lap"]
        ),
    );
    assert_eq!(status, 404);
    // Analysis measures what is left.
    let (code, out, err) = apexsim(&[
        "--data",
        dir.path().to_str().expect("utf-8"),
        "analyze",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&driver), "analyze no longer lists {driver}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `apexsim api` taking posted telemetry: a writer's token, sessions idle after a second.
fn api_taking_posts(data: &Path) -> (Child, SocketAddr) {
    let config = data.join("server.toml");
    std::fs::write(
        &config,
        format!("[api]\nsession_idle_seconds = 1\n[api.tokens]\nwriter = \"{TOKEN}\"\n"),
    )
    .expect("config");
    api_with(data, &["--config", config.to_str().expect("utf-8")])
}

/// The session's view once it is finished (posted sessions finish when idle).
fn finished_session(at: SocketAddr, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, v) = json(at, &format!("/api/v1/sessions/{id}"));
        if status == 200 && !v["session"]["finished_at"].is_null() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session {id} not finished: {status} {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn simulated_telemetry_posted_to_the_api_is_archived_listed_and_analysed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_child, at) = api_taking_posts(dir.path());
    let server = format!("http://{at}");
    // Two laps of the oval at fifty times real time, posted in batches.
    let (code, out, err) = apexsim(&[
        "--content",
        bundled_content().to_str().expect("utf-8"),
        "simulate",
        "run",
        "-d",
        "driver-001",
        "-s",
        "evening",
        "-t",
        "oval_simple",
        "-l",
        "2",
        "-i",
        "0.05",
        "--time-scale",
        "50",
        "--server",
        &server,
        "--token",
        TOKEN,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("report");
    assert!(report["posts"].as_u64().is_some_and(|p| p > 10), "{report}");
    let id = report["session"].as_str().expect("session").to_owned();
    let session = finished_session(at, &id);
    assert_eq!(session["session"]["source"], "api");
    assert_eq!(session["session"]["track"], "oval_simple");
    let laps = session["laps"].as_array().expect("laps");
    let complete: Vec<&Value> = laps
        .iter()
        .filter(|l| l["complete"] == true && l["valid"] == true)
        .collect();
    assert!(complete.len() >= 2, "two laps driven: {session}");
    for lap in &complete {
        assert_eq!(lap["driver"], "driver-001");
        let t = lap["lap_time_s"].as_f64().expect("time");
        assert!((15.0..120.0).contains(&t), "a lap of the oval: {t}");
        let n = lap["lap"].as_u64().expect("lap");
        let metrics = ok(at, &format!("/api/v1/sessions/{id}/laps/0/{n}/metrics"));
        assert!(
            metrics["stats"]["top_speed_mps"]
                .as_f64()
                .is_some_and(|v| v > 20.0),
            "{metrics}"
        );
    }
    // Listed among the driver's laps and the API's sessions.
    let listed = ok(at, "/api/v1/sessions?source=api");
    assert_eq!(listed["total"], 1, "{listed}");
    let theirs = ok(at, "/api/v1/drivers/driver-001/laps?valid=true");
    assert!(theirs["total"].as_u64().is_some_and(|n| n >= 2), "{theirs}");
    // A finished session takes no more records.
    let record = "{\"driver\":\"driver-001\",\"session\":\"evening\",\"track\":\"oval_simple\",\
                  \"car\":\"GT3\",\"time_s\":99999,\"lap\":9,\"lap_dist_pct\":0.5,\"speed_kph\":100}";
    let (status, body) = http_request(at, "POST", "/api/v1/telemetry", Some(TOKEN), Some(record));
    assert_eq!(status, 409, "{body}");
}

#[test]
fn one_record_is_sent_with_the_seeds_flags_and_bad_records_are_refused_by_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_child, at) = api_taking_posts(dir.path());
    let server = format!("http://{at}");
    let (code, out, err) = apexsim(&[
        "simulate",
        "send",
        "-d",
        "driver-001",
        "-s",
        "session-001",
        "-t",
        "oval_simple",
        "-c",
        "GT3",
        "--session-type",
        "Race",
        "--speed",
        "180.5",
        "-r",
        "7500",
        "-g",
        "4",
        "-l",
        "1",
        "-f",
        "95.5",
        "--time",
        "10",
        "--server",
        &server,
        "--token",
        TOKEN,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let posted: Value = serde_json::from_str(out.trim()).expect("answer");
    assert_eq!(posted["records"], 1);
    assert_eq!(posted["sessions"][0]["began"], true);
    assert_eq!(posted["not_archived"], serde_json::json!(["fuel_l"]));
    let id = posted["sessions"][0]["session"]
        .as_str()
        .expect("id")
        .to_owned();
    // It is in the index at once, live (unfinished).
    let live = ok(at, &format!("/api/v1/sessions/{id}"));
    assert!(live["session"]["finished_at"].is_null(), "{live}");

    let record = |time: f64, extra: &str| {
        format!(
            "{{\"driver\":\"driver-001\",\"session\":\"session-001\",\"track\":\"oval_simple\",\
             \"car\":\"GT3\",\"time_s\":{time},\"lap\":1,\"lap_dist_pct\":0.5,\"speed_kph\":180{extra}}}"
        )
    };
    let post = |body: &str, token: Option<&str>| {
        let (status, text) = http_request(at, "POST", "/api/v1/telemetry", token, Some(body));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    };
    let refused_with = |body: &str, status: u16, field: &str| {
        let (s, v) = post(body, Some(TOKEN));
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    };
    // No token, no write.
    assert_eq!(post(&record(11.0, ""), None).0, 401);
    assert_eq!(post(&record(11.0, ""), Some("not-the-token-at-all")).0, 401);
    // Malformed: the field named.
    refused_with("{\"driver\":\"d\"}", 400, "session");
    refused_with(&record(11.0, ",\"boost\":1"), 400, "boost");
    refused_with(&record(11.0, ",\"gear\":\"fourth\""), 400, "gear");
    refused_with("[]", 400, "body");
    refused_with("nonsense", 400, "body");
    // Out of range, or not fitting the session: 422, and a batch is taken whole or not at all.
    refused_with(&record(11.0, ",\"throttle\":1.5"), 422, "throttle");
    let batch = format!("[{},{}]", record(11.0, ""), record(12.0, ",\"brake\":-0.1"));
    refused_with(&batch, 422, "[1].brake");
    let back = format!("[{},{}]", record(12.0, ""), record(11.5, ""));
    refused_with(&back, 409, "[1].time_s");
    refused_with(&record(9.0, ""), 409, "time_s");
    refused_with(
        &record(11.0, "").replace("oval_simple", "Daytona"),
        422,
        "track",
    );
    // Nothing of the refused batches was kept: the next good record is the session's second.
    let (status, v) = post(
        &format!("[{},{}]", record(11.0, ""), record(12.0, "")),
        Some(TOKEN),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["sessions"][0]["total_records"], 3, "{v}");
    assert_eq!(v["sessions"][0]["began"], false);
    // Another track with its length is taken.
    let other = record(1.0, ",\"track_length_m\":4023")
        .replace("oval_simple", "Daytona")
        .replace("session-001", "daytona-500");
    let (status, v) = post(&other, Some(TOKEN));
    assert_eq!(status, 201, "{v}");
    // Bodies over the bound: 413 with the body named.
    let big = format!("[{}]", vec![record(20.0, ""); 50_000].join(","));
    let (status, text) = http_request(at, "POST", "/api/v1/telemetry", Some(TOKEN), Some(&big));
    assert_eq!(status, 413, "{}", &text[..text.len().min(300)]);
    let v: Value = serde_json::from_str(&text).expect("json error");
    assert_eq!(v["field"], "body");
}
