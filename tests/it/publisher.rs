//! The Redis publisher against a real `redis-server` (Debian's, started on a free port per
//! test by `tools/redis/run.sh`): a race's lap summaries, its results and the host's metrics
//! arrive in order with their schema version; Redis shut down and started again mid-race: what
//! was published meanwhile arrives afterwards within the buffer bound, the excess is counted as
//! dropped (exactly the gaps in the messages' sequence), and the race is unaffected.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apexsim::publish::message::{Body, Message, SCHEMA_VERSION};

use crate::common::http_get;
use crate::server::{Server, json, metric};

/// A `redis-server` of the test's own, on a free port, its snapshot in `dir`.
struct Redis {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(dir, port)
    }

    fn start_on(dir: &Path, port: u16) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/redis/run.sh");
        let child = std::process::Command::new(script)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("redis-server (tools/redis/run.sh installs it)");
        let redis = Self {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while redis.connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn connection(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// The messages of a list, oldest first (the order `RPOP` takes them).
    fn messages(&self, list: &str) -> Vec<Message> {
        let mut c = self.connection().expect("redis");
        let mut raw: Vec<String> = redis::cmd("LRANGE")
            .arg(list)
            .arg(0)
            .arg(-1)
            .query(&mut c)
            .expect("LRANGE");
        raw.reverse();
        raw.iter()
            .map(|m| Message::parse(m).unwrap_or_else(|e| panic!("{e}: {m}")))
            .collect()
    }

    /// `SHUTDOWN SAVE`: the lists are written to the snapshot, the server exits.
    fn shutdown_saving(mut self) -> (PathBuf, u16) {
        if let Some(mut c) = self.connection() {
            let _ = redis::cmd("SHUTDOWN").arg("SAVE").query::<()>(&mut c);
        }
        let _ = self.child.wait();
        (self.dir.clone(), self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_publishing_to(redis: &Redis, extra: &[(&str, &str)]) -> Server {
    let url = redis.url();
    let mut env = vec![
        ("APEXSIM_REDIS_URL", url.as_str()),
        ("APEXSIM_SERVER_SESSION_TIMEOUT_SECONDS", "2"),
    ];
    env.extend_from_slice(extra);
    Server::start(&env)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each message once (a push whose reply was lost is sent again with the same id), and the
/// sequence numbers increasing in the list's order.
fn distinct_in_order(list: &[Message]) -> Vec<&Message> {
    let mut seen = HashSet::new();
    let out: Vec<&Message> = list.iter().filter(|m| seen.insert(m.id)).collect();
    for pair in out.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "out of order: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }
    out
}

#[test]
fn a_races_laps_results_and_the_hosts_metrics_arrive_in_order_with_their_schema_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path());
    let server = server_publishing_to(&redis, &[("APEXSIM_REDIS_HOST_EVERY_SECONDS", "0.2")]);
    let (code, out, log) = server
        .drive(&[
            "--bots",
            "2",
            "--ai",
            "1",
            "--laps",
            "2",
            "--track",
            "mini_oval",
        ])
        .finish();
    assert_eq!(code, 0, "drive failed:\n{log}\n{out}");
    let report = json(&out);
    let session = report["session"].as_str().expect("session").to_owned();
    wait_until("the session's results", Duration::from_secs(30), || {
        !redis.messages("apexsim:sessions").is_empty()
    });

    let laps = redis.messages("apexsim:laps");
    let sessions = redis.messages("apexsim:sessions");
    let host = redis.messages("apexsim:host");
    let mut all = BTreeSet::new();
    for list in [&laps, &sessions, &host] {
        for m in distinct_in_order(list) {
            assert_eq!(m.schema_version, SCHEMA_VERSION);
            assert_eq!(m.producer.service, "apexsim");
            assert!(all.insert(m.seq), "seq {} twice", m.seq);
        }
    }
    // Nothing was dropped: the sequence has no gap.
    let max = *all.last().expect("messages");
    assert_eq!(all.len() as u64, max, "every message from 1 to {max}");

    // One lap summary per archived lap of the race, complete laps with their times.
    let archived = crate::server::archive_ls(&server.data, &session);
    let files = archived["laps"].as_array().map_or(0, Vec::len);
    let summaries: Vec<_> = laps
        .iter()
        .filter_map(|m| match &m.body {
            Body::LapSummary(l) if l.session.to_string() == session => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.len(), files, "{archived}");
    let complete = summaries.iter().filter(|l| l.complete).count();
    assert_eq!(complete, 3 * 2, "three cars, two laps each");
    assert!(
        summaries
            .iter()
            .filter(|l| l.complete)
            .all(|l| l.lap_time_s.is_some_and(|t| t > 5.0))
    );

    // The results, as the race classified them.
    let Body::SessionResults(results) = &sessions[0].body else {
        panic!("not results: {:?}", sessions[0]);
    };
    assert_eq!(results.session.to_string(), session);
    let drivers: Vec<&str> = results.results.iter().map(|r| r.driver.as_str()).collect();
    let expected: Vec<&str> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(drivers, expected);

    // Host metrics every 0.2 s: every core, and no temperature without a sensor.
    assert!(host.len() >= 3, "{} host messages", host.len());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (_, api_host) = http_get(server.http, "/api/v1/host");
    let sensors = serde_json::from_str::<serde_json::Value>(&api_host)
        .expect("host")
        .get("temperatures")
        .is_some();
    for m in &host {
        let Body::HostMetrics(h) = &m.body else {
            panic!("not host metrics: {m:?}");
        };
        assert_eq!(h.cpus.len(), cores);
        assert_eq!(
            !h.temperatures.is_empty(),
            sensors,
            "temperatures only from sensors"
        );
    }
    let metrics = server.metrics();
    assert_eq!(
        metric(&metrics, "apexsim_redis_messages_dropped_total"),
        0.0
    );
    assert!(metric(&metrics, "apexsim_redis_messages_published_total") >= max as f64);
    assert_eq!(metric(&metrics, "apexsim_redis_up"), 1.0);
}

#[test]
fn redis_stopped_mid_race_loses_only_what_the_buffer_could_not_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path());
    let server = server_publishing_to(
        &redis,
        &[
            ("APEXSIM_REDIS_HOST_EVERY_SECONDS", "0.05"),
            ("APEXSIM_REDIS_BUFFER", "20"),
            ("APEXSIM_REDIS_RETRY_MAX_SECONDS", "0.3"),
        ],
    );
    let race = server.drive(&["--bots", "2", "--laps", "2", "--track", "mini_oval"]);
    wait_until("the first host metrics", Duration::from_secs(10), || {
        redis.messages("apexsim:host").len() >= 5
    });
    // Redis goes away for three seconds (sixty host messages, three times the buffer).
    let (snapshot, port) = redis.shutdown_saving();
    let outage = Instant::now();
    wait_until("/ready to tell", Duration::from_secs(5), || {
        http_get(server.http, "/ready")
            .1
            .contains("redis: unreachable")
    });
    assert_eq!(
        http_get(server.http, "/ready").0,
        200,
        "Redis does not make the server unready"
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed()));
    let during = server.metrics();
    assert!(metric(&during, "apexsim_redis_messages_buffered") <= 20.0);
    assert_eq!(metric(&during, "apexsim_redis_up"), 0.0);
    let redis = Redis::start_on(&snapshot, port);

    let (code, out, log) = race.finish();
    assert_eq!(code, 0, "the race is unaffected:\n{log}\n{out}");
    wait_until("the session's results", Duration::from_secs(30), || {
        !redis.messages("apexsim:sessions").is_empty()
            && metric(&server.metrics(), "apexsim_redis_messages_buffered") == 0.0
    });
    let metrics = server.metrics();
    let dropped = metric(&metrics, "apexsim_redis_messages_dropped_total") as u64;
    assert!(dropped >= 20, "about forty dropped: {dropped}");
    assert_eq!(metric(&metrics, "apexsim_redis_up"), 1.0);

    // Every message is there once, in order, but for exactly the ones counted as dropped.
    let mut seqs = BTreeSet::new();
    for list in ["apexsim:laps", "apexsim:sessions", "apexsim:host"] {
        let messages = redis.messages(list);
        for m in distinct_in_order(&messages) {
            assert!(seqs.insert(m.seq));
        }
    }
    let max = *seqs.last().expect("messages");
    let missing = (1..=max).filter(|s| !seqs.contains(s)).count() as u64;
    assert_eq!(missing, dropped, "the gaps are the drops");
    // The laps of the race all arrived: lap summaries are few beside the host's stream, but
    // any of them could have been dropped with it; the race's results could not (published
    // after the outage).
    let sessions = redis.messages("apexsim:sessions");
    assert!(matches!(sessions[0].body, Body::SessionResults(_)));
}
