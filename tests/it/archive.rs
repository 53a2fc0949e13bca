//! The lap archive: laps from a real simulated race go to Parquet and come back equal, values
//! and metadata; files land in the Hive layout; nothing half-written is ever visible.

use crate::common::{apexsim, bundled_content};
use apexsim::archive::index::Index;
use apexsim::archive::{ArchiveError, Date, LapMeta, Source, lap_path, read_lap, write_lap};
use apexsim::content::Content;
use apexsim::race::{Race, RaceOptions};
use apexsim::systems::prelude::*;

fn race_laps() -> Vec<RecordedLap> {
    let report = Content::load(&bundled_content());
    let opts = RaceOptions {
        track: "oval_simple".into(),
        car: "gt3_generic".into(),
        cars: 3,
        laps: 2,
        seed: 4,
        fast: true,
        speed: 1.0,
        time_limit: None,
        session_id: None,
    };
    let mut race = Race::new(&report.content, &opts).expect("race");
    while !race.is_finished() {
        race.step();
    }
    race.laps().to_vec()
}

fn meta_of(lap: &RecordedLap, car: u8) -> LapMeta {
    LapMeta {
        source: Source::Sim,
        session: uuid::Uuid::from_u64_pair(7, 7),
        car,
        car_model: "GT3 Generic".into(),
        driver: format!("AI {car:02}"),
        track: "oval_simple".into(),
        track_length_m: 1228.3,
        lap: lap.lap,
        lap_time_s: lap.lap_time_s,
        complete: lap.complete,
        valid: lap.valid,
        date: Date::from_unix(1_795_392_000),
    }
}

#[test]
fn laps_round_trip_through_parquet_with_their_metadata() {
    let laps = race_laps();
    // Per car: the grid-to-line run (lap 0), laps 1 and 2, and for the two cars that finished
    // before the last one, their partial cool-down lap 3.
    let shape: Vec<(u16, bool)> = laps.iter().map(|l| (l.lap, l.complete)).collect();
    assert_eq!(shape.iter().filter(|&&(lap, c)| lap == 0 && !c).count(), 3);
    assert_eq!(
        shape
            .iter()
            .filter(|&&(lap, c)| (1..=2).contains(&lap) && c)
            .count(),
        6
    );
    assert_eq!(shape.iter().filter(|&&(lap, c)| lap == 3 && !c).count(), 2);
    assert_eq!(laps.len(), 11);
    let dir = tempfile::tempdir().expect("tempdir");
    for lap in &laps {
        let car = laps.iter().position(|l| l.car == lap.car).expect("car") as u8;
        let meta = meta_of(lap, car);
        let path = write_lap(dir.path(), &meta, lap.columns.clone()).expect("write");
        assert_eq!(path, lap_path(dir.path(), &meta));
        let rel = path.strip_prefix(dir.path()).expect("inside data");
        let rel = rel.to_string_lossy();
        assert!(
            rel.starts_with("laps/source=sim/track=oval_simple/date=2026-11-23/")
                && rel.ends_with(&format!("_{car:02}_lap{:03}.parquet", lap.lap)),
            "{rel}"
        );
        let (back_meta, back) = read_lap(&path).expect("read");
        assert_eq!(back_meta, meta);
        assert_eq!(back, lap.columns, "every value comes back bit for bit");
        // The physics model has no gearbox: gear and rpm are not measured.
        assert!(back.gear.iter().chain(&back.rpm).all(|v| v.is_nan()));
        // The file carries the Arrow schema with the units.
        let file = std::fs::File::open(&path).expect("open");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("pq");
        let schema = reader.schema();
        assert_eq!(schema.fields(), apexsim::archive::lap_schema().fields());
        let speed = schema.field_with_name("speed_mps").expect("speed");
        assert_eq!(
            speed.metadata().get("unit").map(String::as_str),
            Some("m/s")
        );
        assert!(!path.with_extension("parquet.tmp").exists());
    }
}

#[test]
fn rewriting_a_lap_replaces_it_whole() {
    let laps = race_laps();
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = meta_of(&laps[1], 0);
    write_lap(dir.path(), &meta, laps[1].columns.clone()).expect("write");
    let mut shorter = laps[1].columns.clone();
    for col in [
        &mut shorter.lap_time_s,
        &mut shorter.distance_m,
        &mut shorter.lateral_m,
        &mut shorter.speed_mps,
        &mut shorter.throttle,
        &mut shorter.brake,
        &mut shorter.steering,
        &mut shorter.gear,
        &mut shorter.rpm,
        &mut shorter.x_m,
        &mut shorter.y_m,
        &mut shorter.yaw_rad,
        &mut shorter.long_accel_mps2,
        &mut shorter.lat_accel_mps2,
    ] {
        col.truncate(100);
    }
    shorter.tick.truncate(100);
    let path = write_lap(dir.path(), &meta, shorter.clone()).expect("rewrite");
    assert_eq!(read_lap(&path).expect("read").1, shorter);
    let files: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("ls")
        .collect();
    assert_eq!(files.len(), 1, "no temporary file left behind");
}

#[test]
fn an_unwritable_data_directory_is_a_clear_error_and_leaves_nothing() {
    let laps = race_laps();
    let dir = tempfile::tempdir().expect("tempdir");
    // `laps` exists as a file, so the partition directories cannot be created.
    std::fs::write(dir.path().join("laps"), b"not a directory").expect("write");
    let meta = meta_of(&laps[1], 0);
    let err = write_lap(dir.path(), &meta, laps[1].columns.clone()).expect_err("must fail");
    assert!(matches!(err, ArchiveError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("laps/source=sim"),
        "names the path: {err}"
    );
}

#[test]
fn a_file_that_is_not_a_lap_is_rejected_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.parquet");
    std::fs::write(&path, b"PAR1 this is not parquet PAR1").expect("write");
    let err = read_lap(&path).expect_err("must fail");
    assert!(err.to_string().contains("junk.parquet"), "{err}");
}

#[test]
fn a_race_is_archived_and_indexed_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let (code, out, err) = apexsim(&[
        "--data",
        data,
        "race",
        "--fast",
        "--track",
        "oval_simple",
        "--cars",
        "3",
        "--laps",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let session = uuid::Uuid::parse_str(report["session"].as_str().expect("id")).expect("uuid");
    let archive = &report["archive"];
    assert_eq!(archive["errors"].as_array().map(Vec::len), Some(0));
    // Grid-to-line, two laps each, two cool-down laps (see the round-trip test).
    assert_eq!(archive["laps_written"], 11);
    assert_eq!(archive["laps_written"], report["recorded_laps"]);

    let index = Index::open(dir.path()).expect("index");
    assert_eq!(index.journal_mode().expect("mode"), "wal");
    let sessions = index.sessions().expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].id, session);
    assert_eq!(sessions[0].track, "oval_simple");
    assert!(sessions[0].finished_at.is_some());
    let results = index.results(session).expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].position, 1);
    assert_eq!(
        results[0].total_time_s,
        report["results"][0]["total_time_s"].as_f64()
    );
    let laps = index.laps(Some(session)).expect("laps");
    assert_eq!(laps.len(), 11);
    let mut rows = 0;
    for lap in &laps {
        let (meta, columns) = read_lap(&dir.path().join(&lap.file)).expect("readable");
        assert_eq!(columns.len() as u64, lap.rows);
        assert_eq!(
            (meta.car, meta.lap, meta.valid),
            (lap.car, lap.lap, lap.valid)
        );
        assert_eq!(meta.lap_time_s, lap.lap_time_s);
        rows += lap.rows;
    }
    assert_eq!(serde_json::json!(rows), report["recorded_rows"]);

    let (code, out, err) = apexsim(&["--data", data, "archive", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&session.to_string()) && out.contains("oval_simple"),
        "{out}"
    );
}

#[test]
fn no_archive_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (code, _, err) = apexsim(&[
        "--data",
        data.to_str().expect("utf-8"),
        "race",
        "--fast",
        "--no-archive",
        "--track",
        "oval_simple",
        "--cars",
        "2",
        "--laps",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!data.exists());
}

#[test]
fn an_unusable_data_directory_fails_before_racing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let (code, out, err) = apexsim(&[
        "--data",
        file.to_str().expect("utf-8"),
        "race",
        "--fast",
        "--cars",
        "2",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("opening the archive in") && err.contains("not-a-dir"),
        "{err}"
    );
    assert!(out.is_empty());
}

#[test]
fn a_torn_write_ahead_tail_is_recovered_up_to_its_last_complete_batch() {
    use apexsim::archive::wal::{Wal, WalSession, recover, wal_path};
    use apexsim::systems::record::{LapSample, RecordChunk};
    let dir = tempfile::tempdir().expect("tempdir");
    let session = uuid::Uuid::from_u64_pair(9, 9);
    let mut wal = Wal::create(
        dir.path(),
        &WalSession {
            session,
            source: "sim".into(),
            track: "oval_simple".into(),
            track_length_m: 1228.3,
            car_model: "GT3 Generic".into(),
            drivers: vec!["AI 01".into()],
            date: "2026-11-23".into(),
            started_at: 0,
        },
        apexsim::archive::wal::WalSync::Off,
    )
    .expect("wal");
    let car = bevy_ecs::entity::Entity::PLACEHOLDER;
    // Three flushes of 60 ticks each, lap 1.
    for flush in 0..3u64 {
        let mut chunk = RecordChunk::default();
        for t in 0..60 {
            chunk.car.push(car);
            chunk.lap.push(1);
            chunk.columns.push(&LapSample {
                tick: flush * 60 + t,
                speed_mps: t as f32,
                ..LapSample::default()
            });
        }
        wal.append(&chunk, |_| 0).expect("append");
    }
    drop(wal);
    // Tear the last batch: cut 100 bytes off the end, as a kill in mid-write would.
    let path = wal_path(dir.path(), session);
    let len = std::fs::metadata(&path).expect("meta").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len - 100).expect("truncate");

    let index = Index::open(dir.path()).expect("index");
    let report = recover(dir.path(), &index).expect("recover");
    assert_eq!(
        (report.files, report.laps, report.rows, report.torn_tails),
        (1, 1, 120, 1)
    );
    assert!(
        !path.exists(),
        "the write-ahead file is gone once recovered"
    );
    let laps = index.laps(Some(session)).expect("laps");
    assert_eq!(laps.len(), 1);
    assert!(
        !laps[0].complete && !laps[0].valid,
        "a recovered lap is partial"
    );
    let (_, columns) = read_lap(&dir.path().join(&laps[0].file)).expect("readable");
    assert_eq!(columns.tick, (0..120).collect::<Vec<u64>>());
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn prune_removes_sessions_older_than_the_retention_and_their_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let (code, _, err) = apexsim(&[
        "--data",
        data,
        "race",
        "--fast",
        "--track",
        "oval_simple",
        "--cars",
        "2",
        "--laps",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !walk(&dir.path().join("metrics")).is_empty(),
        "the race stored its lap metrics"
    );
    // analyze's lap table names the car model under "Car", beside the car's index.
    let (code, out, err) = apexsim(&["--data", data, "analyze"]);
    assert_eq!(code, 0, "{err}");
    let header = out
        .lines()
        .find(|l| l.contains("Driver"))
        .expect("a header");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        &columns[..5],
        ["Track", "Session", "#", "Car", "Driver"],
        "{out}"
    );
    let first = out
        .lines()
        .find(|l| l.contains("AI 01"))
        .expect("a lap of AI 01");
    assert!(first.contains("GT3 Generic"), "{first}");
    // The default retention (168 h) keeps a race that just ran.
    let (code, out, err) = apexsim(&["--data", data, "archive", "prune", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let kept: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(kept["sessions"], 0);
    assert_eq!(
        Index::open(dir.path())
            .expect("index")
            .laps(None)
            .expect("laps")
            .len(),
        5
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, out, err) = apexsim(&[
        "--data",
        data,
        "archive",
        "prune",
        "--older-than",
        "0s",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let pruned: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (pruned["sessions"].clone(), pruned["laps"].clone()),
        (1.into(), 5.into())
    );
    assert!(pruned["bytes"].as_u64().expect("bytes") > 10_000);
    let index = Index::open(dir.path()).expect("index");
    assert!(index.sessions().expect("sessions").is_empty());
    assert!(index.laps(None).expect("laps").is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("laps"))
            .expect("laps dir")
            .count(),
        0,
        "empty partitions are removed"
    );
    // The session's lap metrics went with its laps: no file is left, analyze lists nothing.
    let metric_files: Vec<_> = walk(&dir.path().join("metrics"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(metric_files.is_empty(), "{metric_files:?}");
    let (code, out, err) = apexsim(&["--data", data, "analyze", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let analysis: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(analysis["laps"].as_array().map(Vec::len), Some(0), "{out}");
    let (code, _, err) = apexsim(&["--data", data, "archive", "prune", "--older-than", "week"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a duration"), "{err}");
}

#[test]
fn a_lap_that_cannot_be_written_stays_in_memory_and_is_written_once_the_disk_is_back() {
    use apexsim::archive::writer::{ArchiveJob, ArchiveWriter};
    let laps = race_laps();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = ArchiveWriter::start(dir.path()).expect("writer");
    writer.submit(session_of_meta_of());
    // The index opened; now `laps` becomes a file, so no lap directory can be created.
    std::fs::write(dir.path().join("laps"), b"in the way").expect("write");
    let metas: Vec<LapMeta> = laps
        .iter()
        .take(3)
        .enumerate()
        .map(|(car, l)| meta_of(l, car as u8))
        .collect();
    for (lap, meta) in laps.iter().zip(&metas) {
        writer.submit(ArchiveJob::Lap {
            meta: Box::new(meta.clone()),
            columns: lap.columns.clone(),
        });
    }
    // Long enough for the first attempts and at least one retry to fail.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let index = Index::open(dir.path()).expect("index");
    assert!(index.laps(None).expect("laps").is_empty());
    std::fs::remove_file(dir.path().join("laps")).expect("remove");
    let report = writer.finish();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.retries >= 3,
        "each lap failed at least once: {report:?}"
    );
    assert_eq!(report.laps_written, 3);
    let indexed = index.laps(None).expect("laps");
    assert_eq!(indexed.len(), 3);
    for (lap, meta) in laps.iter().zip(&metas) {
        let (read_meta, columns) = read_lap(&lap_path(dir.path(), meta)).expect("read");
        assert_eq!(&read_meta, meta);
        assert_eq!(columns, lap.columns);
    }
}

#[test]
fn a_lap_that_never_can_be_written_is_reported_not_dropped_silently() {
    use apexsim::archive::writer::{ArchiveJob, ArchiveWriter};
    let laps = race_laps();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer = ArchiveWriter::start(dir.path()).expect("writer");
    writer.submit(session_of_meta_of());
    std::fs::write(dir.path().join("laps"), b"in the way").expect("write");
    writer.submit(ArchiveJob::Lap {
        meta: Box::new(meta_of(&laps[0], 1)),
        columns: laps[0].columns.clone(),
    });
    let report = writer.finish();
    assert_eq!(report.laps_written, 0);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        report.errors[0].contains("laps/source=sim") && report.errors[0].contains("write-ahead"),
        "names the path and where the data is: {}",
        report.errors[0]
    );
}

/// The session row `meta_of` laps belong to.
fn session_of_meta_of() -> apexsim::archive::writer::ArchiveJob {
    apexsim::archive::writer::ArchiveJob::Session(apexsim::archive::index::SessionRow {
        id: uuid::Uuid::from_u64_pair(7, 7),
        source: "sim".into(),
        track: "oval_simple".into(),
        car_model: "GT3 Generic".into(),
        lap_limit: Some(2),
        seed: Some(4),
        started_at: 1_795_392_000,
        finished_at: None,
        sectors: Vec::new(),
        identity: None,
        template_id: None,
        ended_by: None,
        laps_pruned_at: None,
    })
}

#[test]
fn a_race_that_ends_in_an_error_still_writes_its_laps_and_keeps_its_write_ahead_file() {
    use apexsim::archive::wal::{WalSync, recover, wal_path};
    use apexsim::archive::writer::ArchiveWriter;
    use apexsim::race::RaceError;
    let content = Content::load(&bundled_content()).content;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RaceOptions {
        track: "oval_simple".into(),
        cars: 2,
        laps: 3,
        fast: true,
        session_id: Some(uuid::Uuid::from_u64_pair(6, 6)),
        ..RaceOptions::default()
    };
    // Stopped by its safety cap 100 s in: lap 1 is done, lap 2 is under way.
    let mut race = Race::new(&content, &opts)
        .expect("race")
        .with_tick_cap(1200 + 240 * 100);
    race.archive_to(
        ArchiveWriter::start(dir.path()).expect("writer"),
        WalSync::Off,
    )
    .expect("archive");
    let err = race.run(true).expect_err("the cap stops it");
    assert!(matches!(err, RaceError::DidNotFinish(_)), "{err}");
    let session = opts.session_id.expect("id");
    let index = Index::open(dir.path()).expect("index");
    let laps = index.laps(Some(session)).expect("laps");
    // Every lap that closed before the error is written and indexed.
    for car in 0..2u8 {
        assert!(
            laps.iter()
                .any(|l| l.car == car && l.lap == 1 && l.complete),
            "{laps:?}"
        );
    }
    let row = index.sessions().expect("sessions");
    assert_eq!(row[0].finished_at, None, "the session is not finished");
    assert!(
        wal_path(dir.path(), session).exists(),
        "its write-ahead file is kept"
    );
    // The next process recovers the laps in progress as partial laps.
    let report = recover(dir.path(), &index).expect("recover");
    assert_eq!(report.files, 1);
    assert!(report.laps >= 2, "{report:?}");
    let laps = index.laps(Some(session)).expect("laps");
    assert!(laps.iter().any(|l| l.lap >= 2 && !l.complete), "{laps:?}");
}

#[test]
fn the_write_ahead_file_is_fsynced_on_its_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    // About 2.5 s of wall time at twenty times real time.
    let race = |sync: &str| {
        let (code, out, err) = apexsim(&[
            "--data",
            data,
            "--wal-sync",
            sync,
            "race",
            "--speed",
            "20",
            "--track",
            "oval_simple",
            "--cars",
            "2",
            "--laps",
            "1",
            "--format",
            "json",
        ]);
        assert_eq!(code, 0, "{err}");
        let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        let wall = report["wall_seconds"].as_f64().expect("wall");
        let syncs = report["archive"]["wal_syncs"].as_u64().expect("wal_syncs");
        (wall, syncs)
    };
    let (wall, syncs) = race("250ms");
    assert!(
        syncs as f64 >= (wall / 0.25).floor() - 1.0 && syncs > 4,
        "{syncs} syncs in {wall:.2} s"
    );
    let (_, none) = race("off");
    assert_eq!(none, 0);
    let (_, every) = race("0");
    assert!(every > syncs, "every flush: {every}");
    let (code, _, err) = apexsim(&["--wal-sync", "often", "race", "--fast"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a duration"), "{err}");
}
