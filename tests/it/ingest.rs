//! iRacing ingest over the real recordings in `tests/fixtures/ibt/`: the laps found equal the
//! ground truth in `laps.json`; both record readers agree; bad files are named and the others
//! go on; re-ingesting does not duplicate; drivers are pseudonymised.

use std::path::{Path, PathBuf};

use crate::common::apexsim;
use apexsim::archive::index::Index;
use apexsim::archive::read_lap;
use apexsim::ingest::{IngestOptions, ibt, play, read_recording};
use apexsim::systems::prelude::*;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ibt")
}

fn truth() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(corpus().join("laps.json")).expect("laps.json");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn the_complete_laps_found_in_every_recording_equal_the_ground_truth() {
    let files = truth();
    assert_eq!(files.len(), 5);
    let recordings: Vec<_> = files
        .iter()
        .map(|f| {
            let path = corpus().join(f["dest"].as_str().expect("dest"));
            read_recording(&path, &IngestOptions::default()).expect("readable")
        })
        .collect();
    // All recordings play side by side in one world, as the ingest does.
    let mut sim = Simulation::new(SimulationPlugin::default());
    let found = play(&mut sim, &recordings);
    let tick = 1.0 / 60.0;
    let mut checked = 0;
    for ((f, rec), laps) in files.iter().zip(&recordings).zip(&found) {
        let name = f["dest"].as_str().expect("dest");
        let expected = f["complete_laps"].as_array().expect("laps");
        assert_eq!(rec.info.hz, 60.0, "{name}");
        assert_eq!(
            rec.info.records as u64,
            f["samples"].as_u64().expect("samples"),
            "{name}"
        );
        assert_eq!(laps.len(), expected.len(), "{name}: {laps:?}");
        for ((t, columns), e) in laps.iter().zip(expected) {
            assert_eq!(
                i64::from(t.recorded_lap),
                e["lap"].as_i64().expect("lap"),
                "{name}"
            );
            let (start, end) = (
                e["start"].as_u64().expect("s"),
                e["end"].as_u64().expect("e"),
            );
            assert!(
                t.start_record.abs_diff(start) <= 1,
                "{name}: start {t:?} vs {e}"
            );
            assert!(t.end_record.abs_diff(end) <= 1, "{name}: end {t:?} vs {e}");
            assert_eq!(
                t.valid(),
                e["valid"].as_bool().expect("valid"),
                "{name}: {t:?}"
            );
            // The rows are the lap's records, stamped with their record numbers.
            assert_eq!(columns.tick.first(), Some(&t.start_record), "{name}");
            assert_eq!(columns.tick.last(), Some(&(t.end_record - 1)), "{name}");
            // Every sample of the lap (blank records, as in a reset, are not samples).
            let inside = rec
                .samples
                .iter()
                .filter(|s| (t.start_record..t.end_record).contains(&s.record))
                .count();
            assert_eq!(columns.len(), inside, "{name}");
            assert!(inside as u64 + 2 >= t.end_record - t.start_record, "{name}");
            match e["official"].as_f64() {
                Some(official) => {
                    assert!(
                        t.official_s.is_some(),
                        "{name}: the recording's own time is used"
                    );
                    assert!(
                        (t.time_s() - official).abs() <= tick,
                        "{name}: {t:?} vs {official}"
                    );
                    // The samples alone agree within a tick too.
                    assert!((t.sample_s - official).abs() <= tick, "{name}: {t:?}");
                }
                None => {
                    // The reset lap: never a valid 26.4 s lap.
                    assert!(!t.valid(), "{name}: {t:?}");
                    assert!(name.contains("reset"));
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

/// A lap's frames are every sample of it: its rows are the recording's records between its
/// lines, less the blank records iRacing writes (every channel zero, lap counter 0). The Langley
/// reset lap (186) spans 1,586 records, one of them blank (at the tow): 1,585 frames.
#[test]
fn every_sample_of_a_lap_is_a_row_of_it_and_only_blank_records_are_left_out() {
    let mut blanks_inside = Vec::new();
    for f in truth() {
        let path = corpus().join(f["dest"].as_str().expect("dest"));
        let bytes = std::fs::read(&path).expect("fixture");
        let (_, frames) = apexsim::ingest::read_frames(&bytes).expect("frames");
        let recording = read_recording(&path, &IngestOptions::default()).expect("readable");
        let mut sim = Simulation::new(SimulationPlugin::default());
        let laps = play(&mut sim, std::slice::from_ref(&recording));
        for (time, columns) in &laps[0] {
            let (first, last) = (columns.tick[0], columns.tick[columns.tick.len() - 1]);
            let span = &frames[first as usize..=last as usize];
            let counter = frames[first as usize].lap;
            let samples = span.iter().filter(|f| !f.is_blank()).count();
            assert_eq!(columns.len(), samples, "{path:?} lap {}", time.lap);
            // The span is the recording's lap: every record with its counter, and blanks.
            assert!(
                span.iter().all(|f| f.lap == counter || f.is_blank()),
                "{path:?} lap {}",
                time.lap
            );
            let blanks = span.len() - samples;
            if blanks > 0 {
                blanks_inside.push((counter, span.len(), blanks));
            }
        }
    }
    assert_eq!(
        blanks_inside,
        vec![(186, 1586, 1)],
        "only the reset lap holds a blank record"
    );
}

#[test]
fn pitwall_and_the_own_reader_give_identical_frames_for_version_2_files() {
    let mut compared = 0;
    for f in truth().iter().filter(|f| f["ver"] == 2) {
        let bytes = std::fs::read(corpus().join(f["dest"].as_str().expect("dest"))).expect("read");
        let header = ibt::IbtHeader::parse(&bytes).expect("header");
        let via_pitwall = ibt::frames_via_pitwall(&bytes, &header).expect("pitwall");
        let direct = ibt::frames_direct(&bytes, &header).expect("direct");
        assert_eq!(via_pitwall.len(), header.records);
        assert_eq!(direct.len(), header.records);
        // Debug text compares NaN (absent channels) as equal, and every value bit for bit.
        for (a, b) in via_pitwall.iter().zip(&direct) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
        if f["complete_laps"].as_array().is_some_and(|l| !l.is_empty()) {
            assert!(via_pitwall.iter().any(|fr| fr.speed_mps > 10.0));
        }
        compared += 1;
    }
    assert_eq!(compared, 2);
}

#[test]
fn version_1_files_lack_channels_that_version_2_files_have() {
    let v1 = corpus().join("iracing_skmodified_langley_2015-05-28_144739_1lap.ibt");
    let bytes = std::fs::read(v1).expect("read");
    let err = pitwall::IbtReader::from_bytes(&bytes)
        .err()
        .expect("pitwall refuses v1");
    assert!(err.to_string().contains("expected 2, found 1"), "{err}");
    let (header, frames) = apexsim::ingest::read_frames(&bytes).expect("read v1");
    assert_eq!(header.version, 1);
    assert!(
        frames
            .iter()
            .all(|f| f.yaw_north_rad.is_none() && f.track_surface.is_none())
    );
    // The first record is blank (lap, lap distance and position zero); the ingest leaves it
    // out, and only it.
    assert!(frames[0].is_blank());
    assert!(!frames[1..].iter().any(|f| f.is_blank()));
    let path = corpus().join("iracing_skmodified_langley_2015-05-28_144739_1lap.ibt");
    let rec = read_recording(&path, &IngestOptions::default()).expect("read");
    assert_eq!(rec.samples[0].record, 1);
    assert_eq!(rec.samples.len(), frames.len() - 1);
}

#[test]
fn ingest_archives_laps_skips_known_files_and_names_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    let good = corpus().join("iracing_skmodified_langley_2015-05-28_145046_2laps_reset.ibt");
    let bytes = std::fs::read(&good).expect("read");
    std::fs::write(bad.join("truncated.ibt"), &bytes[..bytes.len() * 2 / 3]).expect("write");
    // Deterministic "random" bytes.
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..10_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(bad.join("noise.ibt"), noise).expect("write");

    let data_arg = data.to_str().expect("utf-8");
    let (code, out, err) = apexsim(&[
        "--data",
        data_arg,
        "ingest",
        "--format",
        "json",
        bad.join("truncated.ibt").to_str().expect("utf-8"),
        good.to_str().expect("utf-8"),
        bad.join("noise.ibt").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1, "a failed file makes the exit code nonzero: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let files = report["files"].as_array().expect("files");
    assert_eq!(files[0]["status"], "failed");
    let truncated = files[0]["error"].as_str().expect("error");
    assert!(
        truncated.contains("truncated.ibt") && truncated.contains("truncated:"),
        "{truncated}"
    );
    assert_eq!(files[2]["status"], "failed");
    let noise = files[2]["error"].as_str().expect("error");
    assert!(
        noise.contains("noise.ibt") && noise.contains("not an IBT recording"),
        "{noise}"
    );
    // The good file between them went on.
    assert_eq!(files[1]["status"], "ingested");
    assert_eq!(files[1]["laps"].as_array().expect("laps").len(), 3);
    assert_eq!(report["archive"]["laps_written"], 3);

    let index = Index::open(&data).expect("index");
    let laps = index.laps(None).expect("laps");
    assert_eq!(laps.len(), 3);
    let valid: Vec<u16> = laps.iter().filter(|l| l.valid).map(|l| l.lap).collect();
    assert_eq!(valid, vec![184, 185]);
    let sessions = index.sessions().expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].source, "iracing");
    assert_eq!(sessions[0].track, "langley");
    // The recording's split points (SplitTimeInfo) are the track's sectors, and the stored
    // lap metrics have one time per sector, adding up to the lap.
    assert_eq!(sessions[0].sectors, vec![0.5]);
    // Finished once its laps were handed over: the recording's start plus its length.
    let (start, end) = (
        sessions[0].started_at,
        sessions[0].finished_at.expect("finished"),
    );
    assert_eq!(
        apexsim::archive::Date::from_unix(start).to_string(),
        "2015-05-28"
    );
    assert!((90..=92).contains(&(end - start)), "{start} {end}");
    for lap in &laps {
        let path = data.join(&lap.file);
        let rel = lap.file.to_string_lossy().into_owned();
        assert!(
            rel.starts_with("laps/source=iracing/track=langley/date=2015-05-28/"),
            "{rel}"
        );
        let (meta, columns) = read_lap(&path).expect("readable lap file");
        assert_eq!(columns.len() as u64, lap.rows);
        assert!(meta.driver.starts_with("driver-") && meta.driver.len() == 15);
        assert_eq!(meta.lap_time_s, lap.lap_time_s);
        // Gear and engine speed come through from the recording.
        assert!(
            columns.gear.iter().all(|g| (-1.0..=8.0).contains(g)),
            "{lap:?}"
        );
        assert!(
            columns.gear.iter().any(|g| *g >= 2.0),
            "the SK Modified laps Langley in 2nd"
        );
        assert!(columns.rpm.iter().any(|r| *r > 3000.0));
        let stored = apexsim::analysis::query::query_laps(
            &data,
            &apexsim::analysis::query::LapFilter::default(),
        )
        .expect("stored metrics");
        let row = stored
            .iter()
            .find(|r| r.lap == i32::from(meta.lap))
            .expect("the lap's metrics");
        assert_eq!(row.sector_times_s.len(), 2, "{lap:?}");
        let sum: f32 = row.sector_times_s.iter().sum();
        assert!(
            (f64::from(sum) - meta.lap_time_s.expect("time")).abs() < 0.05,
            "{sum} {meta:?}"
        );
    }
    let official: Vec<f64> = laps
        .iter()
        .filter(|l| l.valid)
        .filter_map(|l| l.lap_time_s)
        .collect();
    assert!((official[0] - 15.1959).abs() < 1e-3 && (official[1] - 15.2772).abs() < 1e-3);

    // Again: nothing is duplicated.
    let (code, out, _) = apexsim(&[
        "--data",
        data_arg,
        "ingest",
        "--format",
        "json",
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["files"][0]["status"], "skipped");
    assert_eq!(index.laps(None).expect("laps").len(), 3);
}

#[test]
fn drivers_are_pseudonymised_unless_names_are_kept() {
    let file = corpus().join("iracing_formulavee_tsukuba-1k-outer_2025-01-30_2laps.ibt");
    let hidden = read_recording(&file, &IngestOptions::default()).expect("read");
    let again = read_recording(&file, &IngestOptions::default()).expect("read");
    let kept = read_recording(
        &file,
        &IngestOptions {
            keep_driver_names: true,
            ..IngestOptions::default()
        },
    )
    .expect("read");
    assert!(hidden.info.driver.starts_with("driver-"));
    assert_eq!(hidden.info.driver, again.info.driver, "stable");
    // No message: the real name must not be printed.
    assert!(kept.info.driver != hidden.info.driver && !kept.info.driver.is_empty());
    assert_eq!(
        hidden.info.driver,
        apexsim::ingest::pseudonym(&kept.info.driver)
    );
    assert_eq!(hidden.info.track, "tsukuba_1kouter");
    assert_eq!(hidden.info.car, "Formula Vee");
    assert!(
        (hidden.info.track_length_m - 680.0).abs() < 10.0,
        "{}",
        hidden.info.track_length_m
    );
}

#[cfg(not(windows))]
#[test]
fn live_says_it_needs_windows_and_iracing() {
    let (code, out, err) = apexsim(&["live"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("needs Windows with iRacing running"), "{err}");
}

#[test]
fn a_track_built_from_a_recorded_lap_loads_and_the_ai_races_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = dir.path().join("content");
    crate::common::copy_dir(&crate::common::bundled_content(), &content);
    let file = corpus().join("iracing_skmodified_langley_2015-05-28_144739_1lap.ibt");
    let content_arg = content.to_str().expect("utf-8");
    let file_arg = file.to_str().expect("utf-8");

    // `apexsim --content <copy> track from-ibt <file> --lap <lap> --name langley_test ...`
    let from_ibt = |file: &str, lap: &str, more: &[&str]| {
        let mut args = vec![
            "--content",
            content_arg,
            "track",
            "from-ibt",
            file,
            "--lap",
            lap,
            "--name",
            "langley_test",
        ];
        args.extend_from_slice(more);
        apexsim(&args)
    };

    // The reset lap is not clean; a missing lap lists the laps there are.
    let reset = corpus().join("iracing_skmodified_langley_2015-05-28_145046_2laps_reset.ibt");
    let (code, _, err) = from_ibt(reset.to_str().expect("utf-8"), "186", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lap 186 is not clean"), "{err}");
    let (code, _, err) = from_ibt(file_arg, "999", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("complete laps: 177"), "{err}");

    let (code, out, err) = from_ibt(file_arg, "177", &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let built: serde_json::Value = serde_json::from_str(&out).expect("json");
    // The centerline is the driven line, smoothed: within 3 % of the recording's lap distance.
    let (length, recorded) = (
        built["length_m"].as_f64().expect("length"),
        built["recorded_length_m"].as_f64().expect("recorded"),
    );
    assert!(
        (length / recorded - 1.0).abs() < 0.03,
        "{length} vs {recorded}"
    );

    let report = apexsim::content::Content::load(&content);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let opts = apexsim::race::RaceOptions {
        track: "langley_test".into(),
        car: "gt3_generic".into(),
        cars: 4,
        laps: 3,
        seed: 1,
        fast: true,
        speed: 1.0,
        time_limit: None,
        session_id: None,
    };
    let race = apexsim::race::Race::new(&report.content, &opts).expect("race");
    let result = race.run(true).expect("race runs");
    assert_eq!(result.results.len(), 4);
    assert!(
        result.results.iter().all(|r| r.laps == 3),
        "{:?}",
        result.results
    );

    // Building it again is refused: the track exists.
    let (code, _, err) = from_ibt(file_arg, "177", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn live_frames_are_played_and_their_laps_archived_as_they_complete() {
    // A recording's frames as a stream stand in for iRacing's live connection.
    let file = corpus().join("iracing_formulavee_tsukuba-1k-outer_2025-01-30_2laps.ibt");
    let bytes = std::fs::read(&file).expect("read");
    let (header, frames) = apexsim::ingest::read_frames(&bytes).expect("frames");
    let yaml = header.session_yaml(&bytes).expect("session info");
    let session = pitwall::SessionInfo::parse(&yaml).expect("session info parses");
    let dir = tempfile::tempdir().expect("tempdir");
    let report = futures::executor::block_on(apexsim::ingest::live::record_stream(
        futures::stream::iter(frames),
        Some(&session),
        60.0,
        dir.path(),
        &IngestOptions::default(),
        std::future::pending(),
    ))
    .expect("live");
    assert_eq!(report.records, 3429);
    assert_eq!(report.info.car, "Formula Vee");
    let times: Vec<f64> = report.laps.iter().map(|l| l.time_s).collect();
    assert_eq!(times.len(), 2, "{:?}", report.laps);
    assert!(
        (times[0] - 25.9145).abs() < 1e-3 && (times[1] - 23.9797).abs() < 1e-3,
        "{times:?}"
    );
    assert_eq!(report.archive.laps_written, 2);
    let index = Index::open(dir.path()).expect("index");
    assert_eq!(index.laps(Some(report.session)).expect("laps").len(), 2);
}

#[test]
fn the_fixtures_name_no_real_driver() {
    for f in truth() {
        let name = f["dest"].as_str().expect("dest");
        let bytes = std::fs::read(corpus().join(name)).expect("read");
        let header = ibt::IbtHeader::parse(&bytes).expect("header");
        let yaml = header.session_yaml(&bytes).expect("session info");
        let names: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("UserName:"))
            .map(str::trim)
            .collect();
        assert!(!names.is_empty(), "{name}");
        for n in names {
            assert!(
                n.trim_matches('"').starts_with("Driver "),
                "{name}: a driver's name is not scrubbed"
            );
        }
    }
}
