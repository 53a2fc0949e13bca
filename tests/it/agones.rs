//! `serve` under Agones (the `agones` feature), against a stand-in for the SDK sidecar built
//! from the SDK's own proto files (`tools/agones/fake_sdk.py`, grpcio): the server calls
//! Ready once it serves, pings Health every period while the simulation thread ticks and not
//! while it is stalled (the fault-injection drill), keeps the players counter, follows an
//! allocation's template annotation, and calls Shutdown after the drain that SIGTERM starts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apexsim::net::protocol::{ClientMessage, FaultKind, SessionState};
use serde_json::Value;

use crate::server::{Server, create_and_start, keep_alive};

/// The `proto/` folder of the `agones` crate this build uses, from `cargo metadata`.
fn agones_protos() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--all-features",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("json");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "agones")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("the agones package");
    Path::new(manifest)
        .parent()
        .expect("its directory")
        .join("proto")
}

struct FakeSdk {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    port: u16,
    calls: PathBuf,
}

impl FakeSdk {
    fn start(dir: &Path) -> Self {
        let calls = dir.join("calls.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/agones/run.sh");
        let mut child = Command::new(script)
            .arg("fake_sdk.py")
            .arg(agones_protos())
            .arg(&calls)
            .args(["--counter", "players=16", "--counter", "sessions=8"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tools/agones/run.sh");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("a port: {line:?}"));
        Self {
            child,
            stdin,
            port,
            calls,
        }
    }

    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a call"))
            .collect()
    }

    /// Waits (`within`) until a call satisfies `f`.
    async fn wait_for(&self, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + within;
        loop {
            if let Some(c) = self.calls().into_iter().find(|c| f(c)) {
                return c;
            }
            assert!(Instant::now() < until, "no such call: {:#?}", self.calls());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for FakeSdk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn health_times(calls: &[Value]) -> Vec<f64> {
    calls
        .iter()
        .filter(|c| c["call"] == "Health")
        .map(|c| c["t"].as_f64().expect("t"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_health_counters_allocation_and_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sdk = FakeSdk::start(dir.path());
    let port = sdk.port.to_string();
    let mut server = Server::start(&[
        ("APEXSIM_AGONES_ENABLED", "true"),
        ("APEXSIM_AGONES_HEALTH_EVERY_MS", "250"),
        ("APEXSIM_SERVER_FAULT_INJECTION", "true"),
        ("AGONES_SDK_GRPC_HOST", "http://127.0.0.1"),
        ("AGONES_SDK_GRPC_PORT", &port),
    ]);

    // Ready, then pings at the period.
    let ready = sdk
        .wait_for(Duration::from_secs(10), |c| c["call"] == "Ready")
        .await["t"]
        .as_f64()
        .expect("t");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pings: Vec<f64> = health_times(&sdk.calls())
        .into_iter()
        .filter(|&t| t > ready)
        .collect();
    assert!(
        (5..=10).contains(&pings.len()),
        "about 8 pings in 2 s at 250 ms: {pings:?}"
    );

    // A player: the counter moves.
    let endpoint = server.pinned();
    let mut client = server.connect(&endpoint, "driver").await;
    let _talk = keep_alive(client.conn.clone());
    sdk.wait_for(Duration::from_secs(5), |c| {
        c["call"] == "UpdateCounter" && c["name"] == "players" && c["count"] == 1
    })
    .await;

    // An allocation asking for a template: the next rotation session is of it.
    writeln!(sdk.stdin, "allocate apexsim.dev/template=gt3_sprint").expect("allocate");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .child
        .poll_log()
        .iter()
        .any(|l| l.contains("the next session is of the allocated template"))
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            server.child.poll_log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The simulation thread stalled on purpose: no pings while it is, pings once it ticks.
    create_and_start(&mut client, 1, 5).await;
    while client.telemetry().await.expect("telemetry").session_state != SessionState::Racing {}
    client
        .send(&ClientMessage::InjectFault {
            kind: FaultKind::Stall,
        })
        .await
        .expect("send");
    tokio::time::sleep(apexsim::net::sim::STALL + Duration::from_secs(2)).await;
    let times = health_times(&sdk.calls());
    let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    let stall = apexsim::net::sim::STALL.as_secs_f64();
    assert!(
        longest >= stall - 1.0,
        "the pings stop while the tick is stalled ({stall} s): longest gap {longest} s"
    );
    let last = *times.last().expect("pings");
    let now = sdk.calls().last().expect("calls")["t"].as_f64().expect("t");
    assert!(now - last < 1.0, "and resume after it: {times:?}");

    // SIGTERM: the drain, then Shutdown, the last call.
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
    let calls = sdk.calls();
    let last = calls.last().expect("calls");
    assert_eq!(last["call"], "Shutdown", "{calls:#?}");
    assert!(log.contains("agones: shutdown"), "{log}");
}
