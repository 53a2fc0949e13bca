//! Crash safety: `apexsim race` runs in real time as a child process and is killed with SIGKILL
//! mid-race; the next start recovers its write-ahead file. Every Parquet file must be readable,
//! every lap finalised before the kill must still be there, and each car's rows must run without
//! a gap up to at least the last flush the child reported (so fewer than 60 ticks are lost).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use apexsim::archive::index::Index;
use apexsim::archive::read_lap;

/// Copies the bundled content and adds a 316 m stadium oval (60 m straights, 30 m turns), so a
/// lap takes about 15 s.
fn content_with_mini_oval(dir: &Path) {
    common::copy_dir(&common::bundled_content(), dir);
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

#[test]
fn sigkill_mid_race_loses_less_than_one_flush() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let content = tmp.path().join("content");
    let data = tmp.path().join("data");
    content_with_mini_oval(&content);
    let exe = env!("CARGO_BIN_EXE_apexsim");
    let mut child = Command::new(exe)
        .args(["--content", content.to_str().expect("utf-8")])
        .args(["--data", data.to_str().expect("utf-8")])
        .args([
            "race",
            "--track",
            "mini_oval",
            "--cars",
            "3",
            "--laps",
            "20",
        ])
        .env("RUST_LOG", "apexsim=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    // Read the child's log on a thread, remembering the last flushed tick.
    let reader = std::thread::spawn(move || {
        let mut last = 0u64;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("write-ahead flush")
                && let Some(t) = line.split("tick=").nth(1)
            {
                last = t
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(last);
            }
        }
        last
    });
    // Countdown (5 s), the run to the line, one ~15 s lap and part of the next.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the race ended early"
        );
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let last_flush = reader.join().expect("log reader");
    assert!(
        last_flush > 240 * 20,
        "the child flushed up to tick {last_flush}"
    );
    let wal_files: Vec<_> = fs::read_dir(data.join("wal")).expect("wal dir").collect();
    assert_eq!(
        wal_files.len(),
        1,
        "the killed race left its write-ahead file"
    );

    // Restart: any command that opens the archive recovers.
    let out = Command::new(exe)
        .args(["--data", data.to_str().expect("utf-8"), "archive", "ls"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_dir(data.join("wal")).expect("wal dir").count(), 0);

    let index = Index::open(&data).expect("index");
    let laps = index.laps(None).expect("laps");
    for car in 0..3u8 {
        let mine: Vec<_> = laps.iter().filter(|l| l.car == car).collect();
        assert!(
            mine.iter().any(|l| l.lap == 1 && l.complete && l.valid),
            "car {car}: lap 1, finished before the kill, is archived: {mine:?}"
        );
        assert!(
            mine.iter().any(|l| !l.complete && l.lap >= 2),
            "car {car}: the lap in progress was recovered as partial: {mine:?}"
        );
        let mut ticks = Vec::new();
        for lap in &mine {
            let (_, columns) = read_lap(&data.join(&lap.file)).expect("every file is readable");
            assert_eq!(columns.len() as u64, lap.rows);
            ticks.extend(columns.tick);
        }
        ticks.sort_unstable();
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "car {car}: rows run without a gap"
        );
        let max = *ticks.last().expect("rows");
        assert!(
            max >= last_flush,
            "car {car}: rows up to tick {max}, the last flush before the kill was {last_flush}"
        );
    }
    // Nothing half-written anywhere.
    let mut stack = vec![data.join("laps")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(dir).expect("ls") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert!(
                    p.extension().is_some_and(|e| e == "parquet"),
                    "unexpected file {}",
                    p.display()
                );
            }
        }
    }
}
