//! Many `apexsim` processes on one data directory: races, ingests, `archive ls` and `archive
//! prune` run side by side and never lose or damage each other's data; a killed process is
//! recovered by another while a third keeps racing; recovery restores closed laps complete,
//! never overwrites a complete lap file, and quarantines a corrupt write-ahead file.

use std::path::Path;
use std::time::Duration;

use crate::common::{Child, apexsim};
use apexsim::archive::index::{Index, IndexedLap};
use apexsim::archive::wal::{Wal, WalSession, WalSync, recover, wal_path};
use apexsim::archive::{Date, LapMeta, Source, read_lap, read_lap_meta, write_lap};
use apexsim::systems::record::{LapClosed, LapSample, RecordChunk};
use uuid::Uuid;

const RECORDING: &str =
    "tests/fixtures/ibt/iracing_skmodified_langley_2015-05-28_145046_2laps_reset.ibt";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// `race` on the mini oval with 3 cars: at four times real time, or `--fast`.
fn race_args<'a>(
    content: &'a str,
    data: &'a str,
    seed: &'a str,
    laps: &'a str,
    fast: bool,
) -> Vec<&'a str> {
    let mut args = vec![
        "--content",
        content,
        "--data",
        data,
        "race",
        "--track",
        "mini_oval",
        "--cars",
        "3",
        "--laps",
        laps,
        "--seed",
        seed,
        "--format",
        "json",
    ];
    if fast {
        args.push("--fast");
    } else {
        args.extend(["--speed", "4"]);
    }
    args
}

/// What a lap is, without its session id and file name.
fn shape(l: &IndexedLap) -> (u8, u16, bool, bool, Option<i64>, u64) {
    (
        l.car,
        l.lap,
        l.complete,
        l.valid,
        l.lap_time_s.map(|t| (t * 1e6).round() as i64),
        l.rows,
    )
}

/// The laps of the session a race printed, read from the index.
fn race_laps(data: &Path, stdout: &str) -> Vec<(u8, u16, bool, bool, Option<i64>, u64)> {
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json report");
    let session: Uuid = report["session"]
        .as_str()
        .expect("session")
        .parse()
        .expect("uuid");
    let index = Index::open(data).expect("index");
    let laps = index.laps(Some(session)).expect("laps");
    for l in &laps {
        let (_, columns) = read_lap(&data.join(&l.file)).expect("every lap file reads");
        assert_eq!(columns.len() as u64, l.rows);
    }
    let finished = index
        .sessions()
        .expect("sessions")
        .into_iter()
        .find(|x| x.id == session)
        .and_then(|x| x.finished_at);
    assert!(finished.is_some(), "the race's session is finished");
    assert!(
        !wal_path(data, session).exists(),
        "its write-ahead file is gone"
    );
    laps.iter().map(shape).collect()
}

/// The same race alone, as fast as the CPU allows, in a data directory of its own.
fn alone(content: &str, seed: &str, laps: &str) -> Vec<(u8, u16, bool, bool, Option<i64>, u64)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = apexsim(&race_args(content, s(dir.path()), seed, laps, true));
    assert_eq!(code, 0, "{err}");
    race_laps(dir.path(), &out)
}

#[test]
fn a_race_beside_archive_ls_ingest_and_prune_ends_as_it_does_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let content = tmp.path().join("content");
    let data = tmp.path().join("data");
    crate::common::content_with_mini_oval(&content);
    let (c, d) = (s(&content), s(&data));
    let mut race = Child::spawn(&race_args(c, d, "7", "2", false));
    assert!(
        race.wait_for(Duration::from_secs(60), |l| l.contains("write-ahead flush"))
            .is_some(),
        "the race started writing"
    );
    let mut kept_live = 0;
    let mut rounds = 0;
    while race.running() {
        let (code, out, err) = apexsim(&["--data", d, "archive", "ls", "--format", "json"]);
        assert_eq!(code, 0, "archive ls: {err}");
        if rounds == 0 {
            let listing: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
            let statuses: Vec<&str> = listing["sessions"]
                .as_array()
                .expect("sessions")
                .iter()
                .filter_map(|s| s["status"].as_str())
                .collect();
            assert_eq!(statuses, vec!["live"], "the running race is listed as live");
            let (code, _, err) = apexsim(&["--data", d, "ingest", "--format", "json", RECORDING]);
            assert_eq!(code, 0, "ingest: {err}");
        }
        // Prune everything older than now, but only while the race is surely live (before its
        // first lap closes, a lap before its end): a finished race is fair game for prune.
        let first_lap_done = race
            .poll_log()
            .iter()
            .any(|l| l.contains("lap=1 complete=true"));
        if !first_lap_done {
            let (code, out, err) = apexsim(&[
                "--data",
                d,
                "archive",
                "prune",
                "--older-than",
                "0s",
                "--format",
                "json",
            ]);
            assert_eq!(code, 0, "prune: {err}");
            let pruned: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
            kept_live += pruned["live_sessions"].as_u64().expect("live_sessions");
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rounds >= 3,
        "the commands ran while the race did ({rounds} rounds)"
    );
    assert!(kept_live >= 1, "prune kept the live race");
    let (code, out, log) = race.finish();
    assert_eq!(code, 0, "{log}");
    let laps = race_laps(&data, &out);
    assert_eq!(laps, alone(c, "7", "2"), "the same laps as the race alone");
    assert!(
        laps.iter().filter(|l| l.2).count() == 6,
        "every car's two laps complete"
    );
}

#[test]
fn two_races_at_once_on_one_data_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let content = tmp.path().join("content");
    let data = tmp.path().join("data");
    crate::common::content_with_mini_oval(&content);
    let (c, d) = (s(&content), s(&data));
    let first = Child::spawn(&race_args(c, d, "1", "1", false));
    let second = Child::spawn(&race_args(c, d, "2", "1", false));
    let (code1, out1, log1) = first.finish();
    let (code2, out2, log2) = second.finish();
    assert_eq!(code1, 0, "{log1}");
    assert_eq!(code2, 0, "{log2}");
    assert_eq!(race_laps(&data, &out1), alone(c, "1", "1"));
    assert_eq!(race_laps(&data, &out2), alone(c, "2", "1"));
    assert_eq!(
        Index::open(&data)
            .expect("index")
            .sessions()
            .expect("s")
            .len(),
        2
    );
}

#[test]
fn a_killed_race_is_recovered_by_another_process_while_a_third_races() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let content = tmp.path().join("content");
    let data = tmp.path().join("data");
    crate::common::content_with_mini_oval(&content);
    let (c, d) = (s(&content), s(&data));
    let third = Child::spawn(&race_args(c, d, "3", "3", false));
    let mut victim = Child::spawn(&race_args(c, d, "4", "20", false));
    victim.kill_after_first_laps(3, 1);
    let wal_count = || {
        std::fs::read_dir(data.join("wal"))
            .expect("wal")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "arrows"))
            })
            .count()
    };
    assert_eq!(
        wal_count(),
        2,
        "the victim's and the third race's write-ahead files"
    );

    // A second process recovers the victim, and only the victim.
    let (code, out, err) = apexsim(&["--data", d, "archive", "ls", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("recovered write-ahead files"), "{err}");
    assert_eq!(wal_count(), 1, "the third race's file is left alone");
    let listing: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let mut statuses: Vec<&str> = listing["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["status"].as_str())
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec!["live", "unfinished"],
        "the third race and the victim"
    );
    let laps = listing["laps"].as_array().expect("laps");
    for car in 0..3 {
        let mine: Vec<_> = laps.iter().filter(|l| l["car"] == car).collect();
        assert!(
            mine.iter()
                .any(|l| l["lap"] == 1 && l["complete"] == true && l["valid"] == true),
            "car {car}: the lap that closed before the kill: {mine:?}"
        );
        assert!(
            mine.iter().any(|l| l["lap"] == 2 && l["complete"] == false),
            "car {car}: the lap in progress, partial: {mine:?}"
        );
    }
    let (code, out, log) = third.finish();
    assert_eq!(code, 0, "{log}");
    assert_eq!(race_laps(&data, &out), alone(c, "3", "3"));
}

fn session(id: Uuid) -> WalSession {
    WalSession {
        session: id,
        source: "sim".into(),
        track: "oval_simple".into(),
        track_length_m: 1228.3,
        car_model: "GT3 Generic".into(),
        drivers: vec!["AI 01".into()],
        date: "2026-11-25".into(),
        started_at: 1_795_000_000,
    }
}

/// A chunk with `n` rows of car 0 on `lap`, from `tick`, closing `closes` if given.
fn chunk(lap: u16, tick: u64, n: u64, closes: Option<(u16, f64)>) -> RecordChunk {
    let car = bevy_ecs::entity::Entity::PLACEHOLDER;
    let mut c = RecordChunk::default();
    for t in tick..tick + n {
        c.car.push(car);
        c.lap.push(lap);
        c.columns.push(&LapSample {
            tick: t,
            speed_mps: 40.0,
            ..LapSample::default()
        });
    }
    if let Some((lap, time)) = closes {
        c.closed.push(LapClosed {
            car,
            session: car,
            lap,
            complete: true,
            valid: true,
            lap_time_s: Some(time),
        });
    }
    c
}

#[test]
fn a_lap_that_closed_but_was_not_indexed_is_recovered_complete_and_a_complete_file_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let (a, b) = (Uuid::from_u64_pair(1, 1), Uuid::from_u64_pair(2, 2));
    for id in [a, b] {
        let mut wal = Wal::create(data, &session(id), WalSync::EveryFlush).expect("wal");
        wal.append(&chunk(1, 0, 60, None), |_| 0).expect("append");
        // Lap 1 closes at the first row of lap 2, with its official time.
        wal.append(&chunk(2, 60, 30, Some((1, 15.123_456_789))), |_| 0)
            .expect("append");
        drop(wal); // killed before the writer indexed anything
    }
    // Session b's lap 1 file was written (complete) but not indexed; it holds 10 rows only.
    let meta = LapMeta {
        source: Source::Sim,
        session: b,
        car: 0,
        car_model: "GT3 Generic".into(),
        driver: "AI 01".into(),
        track: "oval_simple".into(),
        track_length_m: 1228.3,
        lap: 1,
        lap_time_s: Some(15.123_456_789),
        complete: true,
        valid: true,
        date: Date::parse("2026-11-25").expect("date"),
    };
    let mut ten = apexsim::systems::record::LapColumns::default();
    for t in 0..10 {
        ten.push(&LapSample {
            tick: t,
            ..LapSample::default()
        });
    }
    let existing = write_lap(data, &meta, ten.clone()).expect("write");
    let before = std::fs::read(&existing).expect("read");

    let index = Index::open(data).expect("index");
    let report = recover(data, &index).expect("recover");
    assert_eq!(report.files, 2, "{report:?}");
    assert!(
        report.quarantined.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    let laps = index.laps(Some(a)).expect("laps");
    assert_eq!(laps.len(), 2);
    assert!(
        laps[0].lap == 1 && laps[0].complete && laps[0].valid,
        "{laps:?}"
    );
    assert_eq!(
        laps[0].lap_time_s,
        Some(15.123_456_789),
        "the official time, exactly"
    );
    assert_eq!(laps[0].rows, 60);
    assert!(
        laps[1].lap == 2 && !laps[1].complete,
        "the lap in progress is partial"
    );
    let (meta_a, _) = read_lap_meta(&data.join(&laps[0].file)).expect("meta");
    assert!(meta_a.complete && meta_a.valid);

    let laps_b = index.laps(Some(b)).expect("laps");
    assert!(
        laps_b[0].complete && laps_b[0].rows == 10,
        "indexed as it is: {laps_b:?}"
    );
    assert_eq!(
        std::fs::read(&existing).expect("read"),
        before,
        "never overwritten"
    );
}

#[test]
fn a_corrupt_write_ahead_file_is_quarantined_and_the_others_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let good = Uuid::from_u64_pair(3, 3);
    let mut wal = Wal::create(data, &session(good), WalSync::Off).expect("wal");
    wal.append(&chunk(1, 0, 60, None), |_| 0).expect("append");
    drop(wal);
    let bad = data
        .join("wal")
        .join(format!("{}.arrows", Uuid::from_u64_pair(4, 4).simple()));
    std::fs::write(
        &bad,
        b"this is not an Arrow stream at all, but it is long enough",
    )
    .expect("write");
    let foreign = data
        .join("wal")
        .join(format!("{}.arrows", Uuid::from_u64_pair(5, 5).simple()));
    std::fs::write(&foreign, b"").expect("write");

    let (code, out, err) = apexsim(&["--data", s(data), "archive", "ls", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("quarantined") && err.contains("00000000000000040000000000000004"),
        "{err}"
    );
    let listing: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        listing["laps"].as_array().expect("laps").len(),
        1,
        "the good file recovered"
    );
    let q = data.join("wal/quarantine");
    let mut names: Vec<String> = std::fs::read_dir(&q)
        .expect("quarantine")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}");
    let reason = std::fs::read_to_string(q.join(format!(
        "{}.arrows.reason",
        Uuid::from_u64_pair(5, 5).simple()
    )))
    .expect("reason");
    assert!(reason.contains("empty"), "{reason}");
    assert_eq!(
        std::fs::read_dir(data.join("wal")).expect("wal").count(),
        1,
        "only quarantine/"
    );
}

#[test]
fn an_ingest_whose_writes_fail_stays_unfinished_and_the_next_ingest_completes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    // The partition directory cannot be created: a file stands in its way.
    std::fs::create_dir_all(data.join("laps")).expect("mkdir");
    std::fs::write(data.join("laps/source=iracing"), b"in the way").expect("write");
    let (code, out, err) = apexsim(&["--data", s(data), "ingest", "--format", "json", RECORDING]);
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("archive write(s) failed"), "{err}");
    let index = Index::open(data).expect("index");
    let sessions = index.sessions().expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].finished_at, None,
        "not finished: its laps are not durable"
    );
    assert!(index.laps(None).expect("laps").is_empty());

    std::fs::remove_file(data.join("laps/source=iracing")).expect("rm");
    let (code, out, err) = apexsim(&["--data", s(data), "ingest", "--format", "json", RECORDING]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        report["files"][0]["status"], "ingested",
        "redone, not skipped"
    );
    let laps = index.laps(None).expect("laps");
    assert_eq!(
        laps.iter().map(|l| l.lap).collect::<Vec<_>>(),
        vec![184, 185, 186]
    );
    assert!(index.sessions().expect("s")[0].finished_at.is_some());
}

#[test]
fn many_connections_opening_a_fresh_index_at_once_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_owned();
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let data = data.clone();
            std::thread::spawn(move || {
                let index = Index::open(&data).expect("open");
                index
                    .put_session(&apexsim::archive::index::SessionRow {
                        id: Uuid::from_u64_pair(7, i),
                        source: "sim".into(),
                        track: "oval_simple".into(),
                        car_model: "GT3 Generic".into(),
                        lap_limit: Some(1),
                        seed: Some(i),
                        started_at: 0,
                        finished_at: None,
                        sectors: Vec::new(),
                        identity: None,
                        template_id: None,
                        ended_by: None,
                        laps_pruned_at: None,
                    })
                    .expect("write");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let index = Index::open(&data).expect("open");
    assert_eq!(index.sessions().expect("sessions").len(), 8);
    assert_eq!(index.journal_mode().expect("mode"), "wal");
}

#[test]
fn stray_temporary_files_of_writers_that_are_gone_are_removed_and_live_ones_kept() {
    use apexsim::archive::lock::{Owner, clean_stray};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let part = data.join("laps/source=sim/track=oval_simple/date=2026-11-25");
    std::fs::create_dir_all(&part).expect("mkdir");
    let live = Owner::acquire(data).expect("owner");
    let gone = Owner::acquire(data).expect("owner");
    let lap = part.join("x_00_lap001.parquet");
    let mine = live.tmp_path(&lap);
    let theirs = gone.tmp_path(&part.join("y_00_lap001.parquet"));
    let old_format = part.join("z_00_lap001.parquet.tmp");
    for f in [&mine, &theirs, &old_format] {
        std::fs::write(f, b"half a lap").expect("write");
    }
    drop(gone); // its process is gone: lock released, lock file removed
    // A lock file left by a killed process (never unlocked by a drop).
    let killed = data.join("run/0123456789abcdef0123456789abcdef.lock");
    std::fs::write(&killed, b"").expect("write");

    let cleaned = clean_stray(data);
    assert_eq!(
        (cleaned.tmp_files, cleaned.lock_files),
        (2, 1),
        "{cleaned:?}"
    );
    assert!(mine.exists(), "a live writer's file is kept");
    assert!(!theirs.exists() && !old_format.exists() && !killed.exists());
}

/// Rows of the stored `laps` metrics of the archive, by (session, car, lap), read with the
/// same query `analyze` uses.
fn stored_metric_laps(data: &Path) -> Vec<(String, i32, i32)> {
    let mut rows: Vec<(String, i32, i32)> =
        apexsim::analysis::query::query_laps(data, &apexsim::analysis::query::LapFilter::default())
            .expect("stored metrics")
            .into_iter()
            .map(|r| (r.session, r.car, r.lap))
            .collect();
    rows.sort();
    rows
}

#[test]
fn analyze_beside_a_live_race_leaves_its_laps_to_the_writer_and_lists_each_lap_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let content = tmp.path().join("content");
    let data = tmp.path().join("data");
    crate::common::content_with_mini_oval(&content);
    let (c, d) = (s(&content), s(&data));
    let mut race = Child::spawn(&race_args(c, d, "5", "3", false));
    assert!(
        race.wait_for(Duration::from_secs(60), |l| l
            .contains("lap=1 complete=true"))
            .is_some(),
        "a lap closed"
    );
    // While the race runs: its laps are not measured here (its writer stores them), nothing
    // is compacted, and no lap is listed twice.
    let mut rounds = 0;
    let mut waited = 0;
    while race.running() {
        let (code, out, err) =
            apexsim(&["--data", d, "analyze", "--recompute", "--format", "json"]);
        assert_eq!(code, 0, "analyze: {err}");
        let a: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        if !race.running() {
            // The race ended while analyze ran: a finished session's laps are analyze's to
            // recompute, so this round says nothing about a live one.
            break;
        }
        waited += a["waiting"].as_u64().expect("waiting");
        assert_eq!(a["computed"], 0, "a live session is left to its writer");
        let rows = stored_metric_laps(&data);
        let mut unique = rows.clone();
        unique.dedup();
        assert_eq!(rows, unique, "each lap listed once");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        rounds >= 2 && waited > 0,
        "{rounds} rounds, {waited} laps waiting"
    );
    let (code, _, log) = race.finish();
    assert_eq!(code, 0, "{log}");
    // The finished race: its writer stored every lap's metrics once.
    let laps = Index::open(&data).expect("index").laps(None).expect("laps");
    assert_eq!(stored_metric_laps(&data).len(), laps.len());
    let (code, out, err) = apexsim(&["--data", d, "analyze", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let a: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (a["computed"].as_u64(), a["waiting"].as_u64()),
        (Some(0), Some(0))
    );
    // Now it may be rewritten as one file per table, still once per lap.
    let (code, out, err) = apexsim(&["--data", d, "analyze", "--recompute", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let a: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(a["computed"].as_u64(), Some(laps.len() as u64));
    let rows = stored_metric_laps(&data);
    assert_eq!(rows.len(), laps.len());
    let session = laps[0].session.simple().to_string();
    let partition = data.join("metrics/laps/source=sim/track=mini_oval");
    let date = std::fs::read_dir(&partition)
        .expect("partition")
        .flatten()
        .next()
        .expect("date")
        .path();
    let names: Vec<String> = std::fs::read_dir(date)
        .expect("files")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![format!("{session}.parquet")]);
}
