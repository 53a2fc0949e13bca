//! Helpers shared by the integration tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bundled content directory.
pub fn bundled_content() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("content")
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// Runs the `apexsim` binary from the repository root: exit code, stdout, stderr.
pub fn apexsim(args: &[&str]) -> (i32, String, String) {
    apexsim_env(args, &[])
}

/// [`apexsim`] with environment variables.
pub fn apexsim_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_apexsim"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run apexsim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies the bundled content and adds a 316 m stadium oval (60 m straights, 30 m turns), so a
/// lap takes about 15 s.
pub fn content_with_mini_oval(dir: &Path) {
    copy_dir(&bundled_content(), dir);
    let track = dir.join("tracks/mini_oval");
    fs::create_dir_all(&track).expect("mkdir");
    fs::write(
        track.join("track.toml"),
        "id = \"660e8400-e29b-41d4-a716-4466554400aa\"\nname = \"Mini Oval\"\nversion = \"1\"\n\
         width_m = 14.0\ngrid_slots = 4\ncenterline_file = \"centerline.csv\"\n",
    )
    .expect("write");
    let (r, half) = (30.0f64, 30.0f64);
    let mut pts = Vec::new();
    let mut d = 0.0;
    let total = 4.0 * half + 2.0 * std::f64::consts::PI * r;
    while d < total - 0.5 {
        let p = if d < half {
            (d, 0.0)
        } else if d < half + std::f64::consts::PI * r {
            let a = (d - half) / r - std::f64::consts::FRAC_PI_2;
            (half + r * a.cos(), r + r * a.sin())
        } else if d < 3.0 * half + std::f64::consts::PI * r {
            (half - (d - half - std::f64::consts::PI * r), 2.0 * r)
        } else if d < 3.0 * half + 2.0 * std::f64::consts::PI * r {
            let a = (d - 3.0 * half - std::f64::consts::PI * r) / r + std::f64::consts::FRAC_PI_2;
            (-half + r * a.cos(), r + r * a.sin())
        } else {
            (d - total, 0.0)
        };
        pts.push(p);
        d += 1.0;
    }
    let mut csv = String::from("x,y,distance_from_start\n");
    let mut run = 0.0;
    for (i, p) in pts.iter().enumerate() {
        if i > 0 {
            run += ((p.0 - pts[i - 1].0).powi(2) + (p.1 - pts[i - 1].1).powi(2)).sqrt();
        }
        csv += &format!("{:.4},{:.4},{:.4}\n", p.0, p.1, run);
    }
    fs::write(track.join("centerline.csv"), csv).expect("write");
}

/// A running `apexsim` child process whose log (stderr, debug level) is read line by line.
pub struct Child {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
    /// Every log line read so far.
    pub log: Vec<String>,
}

impl Child {
    /// Starts `apexsim <args>` from the repository root with `RUST_LOG=apexsim=debug`.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_env(args, &[])
    }

    /// [`spawn`](Self::spawn) with environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader, Read};
        let mut child = Command::new(env!("CARGO_BIN_EXE_apexsim"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "apexsim=debug")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn apexsim");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        Self {
            child,
            lines,
            stdout: Some(stdout),
            log: Vec::new(),
        }
    }

    /// Reads the log until a line satisfies `pred` (returning it) or `timeout` passes.
    pub fn wait_for(
        &mut self,
        timeout: std::time::Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.log.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// Takes the log lines written so far, without waiting.
    pub fn poll_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Kills a race (SIGKILL on Unix) when its log shows `flushes` write-ahead flushes after
    /// every one of its `cars` closed lap 1; returns the tick of the last flush logged. Panics
    /// with the log if that never comes.
    pub fn kill_after_first_laps(&mut self, cars: usize, flushes: usize) -> u64 {
        let mut closed = vec![false; cars];
        let mut flushes_after = 0;
        let mut last_flush = 0u64;
        let seen = self.wait_for(std::time::Duration::from_secs(120), |line| {
            if line.contains("lap closed")
                && line.contains("lap=1 complete=true")
                && let Some(car) = log_field::<usize>(line, "car")
                && car < cars
            {
                closed[car] = true;
            }
            if line.contains("write-ahead flush") {
                last_flush = log_field(line, "tick").unwrap_or(last_flush);
                if closed.iter().all(|&c| c) {
                    flushes_after += 1;
                }
            }
            flushes_after == flushes
        });
        assert!(
            seen.is_some(),
            "no such flush logged:\n{}",
            self.log.join("\n")
        );
        self.kill();
        last_flush
    }

    /// CPU seconds the process's threads have used so far (Linux `/proc`), by thread name:
    /// `(the simulation thread, apexsim-sim; the async runtime's, apexsim-async, and the main
    /// thread: connections, QUIC, HTTP)`. Archive, log and watcher threads are in neither.
    pub fn thread_cpu_seconds(&self) -> (f64, f64) {
        let tasks = format!("/proc/{}/task", self.child.id());
        let (mut sim, mut network) = (0.0, 0.0);
        for task in fs::read_dir(&tasks).expect("/proc tasks").flatten() {
            let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            // After the name: state (3), ..., utime (14) and stime (15), in USER_HZ (100).
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let ticks: f64 =
                fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
            match name {
                "apexsim-sim" => sim += ticks / 100.0,
                "apexsim-async" | "apexsim" => network += ticks / 100.0,
                _ => {}
            }
        }
        (sim, network)
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Kills the process (SIGKILL on Unix) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// Waits for the process to exit: exit code, stdout, and the whole log.
    pub fn finish(mut self) -> (i32, String, String) {
        let status = self.child.wait().expect("wait");
        while let Ok(line) = self.lines.recv() {
            self.log.push(line);
        }
        let out = self
            .stdout
            .take()
            .map(|t| t.join().expect("stdout"))
            .unwrap_or_default();
        (status.code().unwrap_or(-1), out, self.log.join("\n"))
    }
}

/// A test that fails leaves no process behind to slow the tests after it.
impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `key=` in a log line.
pub fn log_field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    line.split(&format!("{key}="))
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `apexsim serve` on loopback ports the system picks, over `content` and `data`.
pub struct Served {
    /// The server process.
    pub child: Child,
    /// Its QUIC address.
    pub quic: std::net::SocketAddr,
    /// Its HTTP address.
    pub http: std::net::SocketAddr,
    /// Its certificate's SHA-256 fingerprint.
    pub fingerprint: String,
}

impl Served {
    /// Starts the server and waits (30 s at most) until it logs that it serves. The server runs
    /// no session by itself (`server.run_templates` off) unless `env` turns it on, so a test
    /// owns the sessions it counts.
    pub fn start(content: &Path, data: &Path, env: &[(&str, &str)]) -> Self {
        let mut env = env.to_vec();
        if !env
            .iter()
            .any(|(k, _)| *k == "APEXSIM_SERVER_RUN_TEMPLATES")
        {
            env.push(("APEXSIM_SERVER_RUN_TEMPLATES", "false"));
        }
        let env = env.as_slice();
        let mut child = Child::spawn_env(
            &[
                "--content",
                content.to_str().expect("utf-8"),
                "--data",
                data.to_str().expect("utf-8"),
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--http-port",
                "0",
            ],
            env,
        );
        let line = child
            .wait_for(std::time::Duration::from_secs(30), |l| {
                l.contains(" serving ")
            })
            .unwrap_or_else(|| panic!("the server did not start:\n{}", child.log.join("\n")));
        let port = |key: &str| {
            let addr: std::net::SocketAddr = log_field(&line, key).expect("address in the log");
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        };
        Self {
            quic: port("quic"),
            http: port("http"),
            fingerprint: log_field(&line, "fingerprint").expect("fingerprint"),
            child,
        }
    }
}

/// `GET path` over plain HTTP/1.1: status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None, None)
}

/// `apexsim drive` against a server at `quic`, trusting its certificate file, with JSON output.
pub fn drive(content: &Path, quic: std::net::SocketAddr, cert: &Path, args: &[&str]) -> Child {
    let server = quic.to_string();
    let mut all = vec![
        "--content",
        content.to_str().expect("utf-8"),
        "drive",
        "--server",
        &server,
        "--cert",
        cert.to_str().expect("utf-8"),
        "--format",
        "json",
    ];
    all.extend_from_slice(args);
    Child::spawn(&all)
}

/// `method path` over plain HTTP/1.1 with an optional bearer token and JSON body: status and
/// body.
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let kind = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_owned()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}{kind}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}
