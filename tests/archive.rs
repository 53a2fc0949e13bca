//! The lap archive: laps from a real simulated race go to Parquet and come back equal, values
//! and metadata; files land in the Hive layout; nothing half-written is ever visible.

use std::path::Path;

use apexsim::archive::{ArchiveError, Date, LapMeta, Source, lap_path, read_lap, write_lap};
use apexsim::content::Content;
use apexsim::race::{Race, RaceOptions};
use apexsim::systems::prelude::*;

fn race_laps() -> Vec<RecordedLap> {
    let report = Content::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("content"));
    let opts = RaceOptions {
        track: "oval_simple".into(),
        car: "gt3_generic".into(),
        cars: 3,
        laps: 2,
        seed: 4,
        fast: true,
        time_limit: None,
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
