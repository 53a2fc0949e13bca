//! Real laps: the Racing Coach Algarve session (iRacing Formula 4, Portimão, 15 turns, 4,579 m)
//! imported into the archive, then measured by the metric engine. Ground truth (official times)
//! in `tests/fixtures/README.md`.

use std::path::{Path, PathBuf};

use apexsim::analysis::across::{braking_points, consistency, delta_by_distance, theoretical_best};
use apexsim::analysis::{DistanceClock, LapMetrics, Thresholds, lap_metrics};
use apexsim::archive::index::Index;
use apexsim::archive::{LapMeta, read_lap};
use apexsim::ingest::FileOutcome;
use apexsim::ingest::racing_coach::{ImportOptions, import};
use apexsim::systems::record::LapColumns;

/// Official lap times by Racing Coach lap number (the next lap's `last_lap_time`).
const OFFICIAL: [(u16, f64); 8] = [
    (1, 110.364),
    (2, 108.012),
    (4, 107.074),
    (5, 107.512),
    (7, 106.651),
    (8, 106.559),
    (9, 111.053),
    (11, 106.496),
];

/// Laps that are complete and clean (lap 5 went off track).
const CLEAN: [u16; 7] = [1, 2, 4, 7, 8, 9, 11];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/racing-coach-algarve")
}

fn options() -> ImportOptions {
    ImportOptions {
        track: "Algarve".into(),
        car: "Formula 4".into(),
        driver: "Driver 1".into(),
        sectors: vec![0.3, 0.7],
    }
}

/// Imports the fixtures into a fresh archive and reads every archived lap back.
fn imported() -> (tempfile::TempDir, Vec<(LapMeta, LapColumns)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = import(&[fixtures()], dir.path(), &options()).expect("import");
    assert_eq!(report.failed(), 0, "{:?}", report.files);
    let index = Index::open(dir.path()).expect("index");
    let mut laps: Vec<(LapMeta, LapColumns)> = index
        .laps(None)
        .expect("laps")
        .into_iter()
        .map(|l| read_lap(&dir.path().join(l.file)).expect("lap file"))
        .collect();
    laps.sort_by_key(|(m, _)| m.lap);
    (dir, laps)
}

fn metrics(meta: &LapMeta, columns: &LapColumns) -> LapMetrics {
    lap_metrics(
        columns,
        meta.track_length_m,
        meta.complete,
        &[],
        &Thresholds::default(),
    )
    .expect("metrics")
}

#[test]
fn import_keeps_official_times_validity_and_the_recording_clock() {
    let (dir, laps) = imported();
    let numbers: Vec<u16> = laps.iter().map(|(m, _)| m.lap).collect();
    // Lap 0 leaves the pits, lap 10 is broken by a pit visit, lap 12 is partial.
    assert_eq!(numbers, vec![1, 2, 4, 5, 7, 8, 9, 11], "complete laps only");
    for (meta, columns) in &laps {
        let official = OFFICIAL
            .iter()
            .find(|(n, _)| *n == meta.lap)
            .map(|(_, t)| *t)
            .expect("an official time");
        let time = meta.lap_time_s.expect("lap time");
        assert!((time - official).abs() < 1e-3, "lap {}: {time}", meta.lap);
        assert_eq!(meta.valid, CLEAN.contains(&meta.lap), "lap {}", meta.lap);
        assert!(
            (meta.track_length_m - 4579.0).abs() < 5.0,
            "{}",
            meta.track_length_m
        );
        assert_eq!(meta.track, "algarve");
        // The recording's clock: about 60 Hz, starting at the first sample.
        assert_eq!(columns.lap_time_s[0], 0.0);
        let span = columns.lap_time_s[columns.len() - 1];
        assert!((span - official as f32).abs() < 0.1, "{span}");
    }
    // Importing again finds the session and skips it.
    let again = import(&[fixtures()], dir.path(), &options()).expect("import");
    assert!(
        matches!(again.files[0].outcome, FileOutcome::Skipped { .. }),
        "{:?}",
        again.files
    );
}

#[test]
fn metrics_on_real_laps_hold_to_the_ground_truth() {
    let (_dir, laps) = imported();
    let all: Vec<(&LapMeta, LapMetrics)> = laps.iter().map(|(m, c)| (m, metrics(m, c))).collect();
    for (meta, m) in &all {
        let official = meta.lap_time_s.expect("lap time");
        let integrated = m.stats.lap_time_s.expect("complete");
        assert!(
            (integrated - official).abs() < 0.05,
            "lap {}: integrated {integrated} vs official {official}",
            meta.lap
        );
        eprintln!(
            "lap {:2}: {:.3} corners {:2} zones {:2} top {:.1} full {:.2} brake {:.2} coast {:.2}",
            meta.lap,
            integrated,
            m.corners.len(),
            m.braking.len(),
            m.stats.top_speed_mps,
            m.stats.full_throttle_share,
            m.stats.braking_share,
            m.stats.coasting_share
        );
    }
    let clean: Vec<&LapMetrics> = all
        .iter()
        .filter(|(meta, _)| meta.valid)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(clean.len(), CLEAN.len());
    let corners: Vec<usize> = clean.iter().map(|m| m.corners.len()).collect();
    let zones: Vec<usize> = clean.iter().map(|m| m.braking.len()).collect();
    let spread = |v: &[usize]| v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0);
    assert!(spread(&corners) <= 1, "corners per clean lap: {corners:?}");
    assert!(
        corners.iter().all(|c| (10..=18).contains(c)),
        "corners per clean lap: {corners:?}"
    );
    assert!(
        spread(&zones) <= 1,
        "braking zones per clean lap: {zones:?}"
    );

    let length = laps[0].0.track_length_m;
    let consistency = consistency(clean.iter().copied(), braking_points, 50.0, length);
    assert!(consistency.len() >= zones.iter().copied().min().unwrap_or(0).saturating_sub(1));
    for place in &consistency {
        assert!(
            place.position_mad_m < 15.0,
            "braking point at {:.0} m varies by {:.1} m (MAD)",
            place.distance_m,
            place.position_mad_m
        );
    }

    let best_lap = all
        .iter()
        .filter_map(|(_, m)| m.stats.lap_time_s)
        .fold(f64::INFINITY, f64::min);
    let best = theoretical_best(all.iter().map(|(_, m)| m.minisector_times_s.as_slice()))
        .expect("theoretical best");
    assert!(
        best <= best_lap + 1e-6,
        "theoretical {best} vs best lap {best_lap}"
    );
    assert!(
        best > best_lap - 3.0,
        "theoretical {best} vs best lap {best_lap}"
    );
}

#[test]
fn compare_delta_at_the_line_is_the_lap_time_difference() {
    let (_dir, laps) = imported();
    let clock = |i: usize| {
        let (meta, columns) = &laps[i];
        DistanceClock::new(columns, meta.track_length_m, true).expect("clock")
    };
    for (a, b) in [(0, 7), (1, 4), (6, 5)] {
        let delta = delta_by_distance(&clock(a), &clock(b), 1.0);
        let at_line = f64::from(delta.last().expect("delta").1);
        let official = laps[b].0.lap_time_s.expect("b") - laps[a].0.lap_time_s.expect("a");
        assert!(
            (at_line - official).abs() < 0.05,
            "laps {} and {}: delta {at_line} vs {official}",
            laps[a].0.lap,
            laps[b].0.lap
        );
    }
}

#[test]
fn bad_files_are_named_and_the_rest_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("session");
    std::fs::create_dir_all(&src).expect("mkdir");
    for lap in ["lap01", "lap02", "lap04"] {
        std::fs::copy(
            fixtures().join(format!("{lap}.parquet")),
            src.join(format!("{lap}.parquet")),
        )
        .expect("copy");
    }
    std::fs::write(src.join("notes.parquet"), b"not parquet at all").expect("write");
    std::fs::write(src.join("empty.parquet"), b"").expect("write");
    let data = dir.path().join("data");
    let report = import(&[src], &data, &options()).expect("import");
    assert_eq!(report.failed(), 2, "{:?}", report.files);
    let errors: Vec<String> = report
        .files
        .iter()
        .filter_map(|f| match &f.outcome {
            FileOutcome::Failed { error } => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("notes.parquet")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("empty.parquet")),
        "{errors:?}"
    );
    let ingested = report
        .files
        .iter()
        .find_map(|f| match &f.outcome {
            FileOutcome::Ingested { laps, .. } => Some(laps.len()),
            _ => None,
        })
        .expect("the good files");
    // Laps 1 and 2 are complete; lap 4 has no next lap to show its time but is archived with
    // the samples' time.
    assert_eq!(ingested, 3);
}

/// `apexsim import racing-coach` of the fixtures into `data` (Formula 4, sectors at 30 % and
/// 70 % of the lap), which must succeed.
fn import_fixtures(data: &Path) {
    let fx = fixtures();
    let args = [
        "import",
        "racing-coach",
        fx.to_str().expect("utf-8"),
        "--track",
        "Algarve",
        "--car",
        "Formula 4",
        "--sectors",
        "0.3,0.7",
    ];
    let out = apexsim(data, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn apexsim(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_apexsim"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run apexsim")
}

#[test]
fn analyze_reads_stored_metrics_filters_and_names_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    import_fixtures(&data);
    // The import stored the metrics beside the laps: analyze measures nothing.
    for table in ["laps", "braking_zones", "corners"] {
        assert!(
            data.join("metrics")
                .join(table)
                .join("source=iracing/track=algarve")
                .is_dir()
        );
    }
    let out = apexsim(&data, &["analyze", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(a["computed"], 0, "metrics were stored at import");
    assert_eq!(a["laps"].as_array().expect("laps").len(), 8);
    // Three sectors, from the import's split points, adding up to the lap.
    for lap in a["laps"].as_array().expect("laps") {
        let sectors: Vec<f64> = lap["sector_times_s"]
            .as_array()
            .expect("sectors")
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        assert_eq!(sectors.len(), 3, "{lap}");
        let time = lap["lap_time_s"].as_f64().expect("time");
        assert!((sectors.iter().sum::<f64>() - time).abs() < 0.01, "{lap}");
    }
    let s = &a["summary"][0];
    assert_eq!(s["valid_laps"], 7);
    assert!(
        (s["best_lap_s"].as_f64().expect("best") - 106.496).abs() < 1e-3,
        "{s}"
    );
    let theoretical = s["theoretical_best_s"].as_f64().expect("theoretical");
    assert!(
        theoretical <= 106.496 && theoretical > 100.0,
        "{theoretical}"
    );
    assert!(
        s["braking_point_mad_m"].as_f64().expect("mad") < 15.0,
        "{s}"
    );
    let apex = s["apex_speed_mad_mps"].as_f64().expect("apex spread");
    assert!(apex > 0.0 && apex < 3.0, "{s}");

    // Partition and column filters.
    let out = apexsim(
        &data,
        &["analyze", "--format", "json", "--track", "nowhere"],
    );
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(a["laps"].as_array().expect("laps").is_empty());
    let out = apexsim(
        &data,
        &["analyze", "--format", "csv", "--driver", "unknown"],
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(
        csv.lines().nth(1).expect("row").contains(",algarve,"),
        "{csv}"
    );

    // A threshold change recomputes every lap: fewer, longer zones with a high brake_on.
    let out = apexsim(
        &data,
        &["analyze", "--format", "json", "--set", "brake_on=0.9"],
    );
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(a["computed"], 8);
    let zones = a["laps"][0]["braking_zones"].as_i64().expect("zones");
    assert!(zones < 7, "{zones}");
    // The finished session was stored compacted: one file per table, the per-lap files gone.
    for table in ["laps", "braking_zones", "corners"] {
        let partition = std::fs::read_dir(
            data.join("metrics")
                .join(table)
                .join("source=iracing/track=algarve"),
        )
        .expect("partition")
        .flatten()
        .next()
        .expect("a date")
        .path();
        let names: Vec<String> = std::fs::read_dir(&partition)
            .expect("files")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(names[0].len(), 32 + ".parquet".len(), "{names:?}");
    }
    let out = apexsim(&data, &["analyze", "--format", "json"]);
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(a["computed"], 0, "the compacted file covers every lap");
    assert_eq!(a["laps"].as_array().expect("laps").len(), 8);
    assert!(
        a["laps"][0]["braking_zones"].as_i64().expect("zones") < 7,
        "kept the new thresholds"
    );
    let out = apexsim(&data, &["analyze", "--set", "brake_onn=0.9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown threshold brake_onn"));

    // Loose lap files: a bad one is named, the others are analysed, the exit code says so.
    let loose = dir.path().join("loose");
    std::fs::create_dir_all(&loose).expect("mkdir");
    let lap = std::fs::read_dir(data.join("laps/source=iracing/track=algarve"))
        .expect("partition")
        .flatten()
        .next()
        .expect("a date")
        .path();
    for (i, f) in std::fs::read_dir(&lap)
        .expect("laps")
        .flatten()
        .take(2)
        .enumerate()
    {
        std::fs::copy(f.path(), loose.join(format!("lap{i}.parquet"))).expect("copy");
    }
    std::fs::write(loose.join("broken.parquet"), b"PAR1 not really").expect("write");
    let out = apexsim(
        &data,
        &[
            "analyze",
            "--format",
            "json",
            loose.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(a["laps"].as_array().expect("laps").len(), 2);
    assert!(
        a["errors"][0]
            .as_str()
            .expect("error")
            .contains("broken.parquet"),
        "{a}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be analysed"));

    // Parquet output.
    let file = dir.path().join("laps.parquet");
    let out = apexsim(
        &data,
        &[
            "analyze",
            "--format",
            "parquet",
            "--out",
            file.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, _) = parquet_rows(&file);
    assert_eq!(rows, 8);
}

fn parquet_rows(path: &Path) -> (i64, usize) {
    let file = std::fs::File::open(path).expect("open");
    let reader = parquet::file::reader::SerializedFileReader::new(file).expect("parquet");
    use parquet::file::reader::FileReader;
    let meta = reader.metadata().file_metadata();
    (meta.num_rows(), meta.schema_descr().num_columns())
}

#[test]
fn compare_reports_zones_corners_and_draws_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    import_fixtures(&data);
    let out = apexsim(&data, &["analyze", "--format", "json"]);
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let session = a["laps"][0]["session"].as_str().expect("session")[..8].to_owned();
    let (fast, slow) = (format!("{session}:0:11"), format!("{session}:0:1"));
    let svg = dir.path().join("cmp.svg");
    let out = apexsim(
        &data,
        &[
            "compare",
            &fast,
            &slow,
            "--format",
            "json",
            "--plot",
            svg.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let delta = c["delta_s"].as_f64().expect("delta");
    assert!((delta - (110.364 - 106.496)).abs() < 0.05, "{delta}");
    // Sector deltas add up to the delta at the line; zones and corners are matched.
    let sectors: f64 = c["sectors"]
        .as_array()
        .expect("sectors")
        .iter()
        .map(|s| s["delta_s"].as_f64().expect("sector delta"))
        .sum();
    assert!((sectors - delta).abs() < 0.01, "{sectors} vs {delta}");
    assert_eq!(c["zones"].as_array().expect("zones").len(), 7);
    assert!(c["corners"].as_array().expect("corners").len() >= 10);
    // Zone and corner deltas account for most of the time lost (the straights for the rest).
    let parts: f64 = c["zones"]
        .as_array()
        .expect("zones")
        .iter()
        .map(|z| z["delta_s"].as_f64().expect("zone delta"))
        .sum();
    assert!(parts > 1.0 && parts < delta + 0.5, "{parts} of {delta}");
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(
        text.starts_with("<svg") && text.contains("track map"),
        "an SVG with its panels"
    );

    let png = dir.path().join("cmp.png");
    let out = apexsim(
        &data,
        &[
            "compare",
            &fast,
            &slow,
            "--plot",
            png.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("png");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 50_000, "{} bytes", bytes.len());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("Braking at (m)") && report.contains("Apex (m)"),
        "{report}"
    );

    // Bad names and formats are usage errors naming what is wrong.
    let out = apexsim(&data, &["compare", &fast, &format!("{session}:0:99")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such lap"));
    let out = apexsim(&data, &["compare", &fast, &slow, "--plot", "x.jpg"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".svg or .png"));
}

/// Writes the archive `.ci/run` runs the notebooks against (`notebooks/run.sh`): the Algarve
/// session imported and a short AI race, under `target/tmp/notebook-archive`.
#[test]
fn notebook_archive() {
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("notebook-archive");
    let _ = std::fs::remove_dir_all(&data);
    import_fixtures(&data);
    let out = apexsim(
        &data,
        &[
            "race",
            "--fast",
            "--track",
            "oval_simple",
            "--cars",
            "3",
            "--laps",
            "2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = apexsim(&data, &["analyze", "--format", "json"]);
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(a["summary"].as_array().expect("summary").len(), 2);
}
