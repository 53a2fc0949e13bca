//! Archive benchmarks: writing a lap to Parquet (zstd, with the fsync and rename the archive
//! does) next to writing the same column bytes raw to a file with the same fsync and rename
//! (the limit), in the same run; the Parquet encoding alone, in memory; and what the uploader
//! does to a lap before sending it (API frames and JSON), next to that encoding.
//! `Throughput::Bytes` is the lap's column data, so criterion reports MB/s of column data.
//!
//! The lap is real: a 16-car race on the grand circuit, its longest complete lap.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use apexsim::archive::writer::{ArchiveJob, ArchiveWriter};
use apexsim::archive::{Date, LapMeta, Source, encode_lap, write_lap_as};
use apexsim::content::Content;
use apexsim::race::{Race, RaceOptions};
use apexsim_systems::record::LapColumns;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn real_lap() -> LapColumns {
    let report = Content::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("content"));
    let opts = RaceOptions {
        track: "grand_circuit".into(),
        car: "gt3_generic".into(),
        cars: 16,
        laps: 1,
        seed: 3,
        fast: true,
        speed: 1.0,
        time_limit: None,
        session_id: None,
    };
    let mut race = Race::new(&report.content, &opts).expect("race");
    while !race.is_finished() {
        race.step();
    }
    race.laps()
        .iter()
        .filter(|l| l.complete)
        .max_by_key(|l| l.columns.len())
        .expect("a complete lap")
        .columns
        .clone()
}

/// The column bytes of a lap, as the raw baseline writes them.
fn raw_bytes(c: &LapColumns) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(c.tick.iter().flat_map(|v| v.to_le_bytes()));
    for col in [
        &c.lap_time_s,
        &c.distance_m,
        &c.distance_m, // distance_frac has the same size
        &c.lateral_m,
        &c.speed_mps,
        &c.throttle,
        &c.brake,
        &c.steering,
        &c.gear,
        &c.rpm,
        &c.x_m,
        &c.y_m,
        &c.yaw_rad,
        &c.long_accel_mps2,
        &c.lat_accel_mps2,
    ] {
        out.extend(col.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// The identity of the benchmarked lap.
fn lap_meta() -> LapMeta {
    LapMeta {
        source: Source::Sim,
        session: uuid::Uuid::nil(),
        car: 0,
        car_model: "GT3 Generic".into(),
        driver: "AI 01".into(),
        track: "grand_circuit".into(),
        track_length_m: 4666.2,
        lap: 1,
        lap_time_s: Some(110.0),
        complete: true,
        valid: true,
        date: Date::from_unix(0),
    }
}

fn parquet_write(c: &mut Criterion) {
    let lap = real_lap();
    let raw = raw_bytes(&lap);
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = lap_meta();
    let encoded = encode_lap(&meta, lap.clone()).expect("encode");
    eprintln!(
        "lap of {} rows: {} bytes of column data, {} bytes as Parquet (ratio {:.2})",
        lap.len(),
        raw.len(),
        encoded.len(),
        raw.len() as f64 / encoded.len() as f64
    );
    let mut group = c.benchmark_group("archive/write_lap");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(30);
    group.throughput(Throughput::Bytes(raw.len() as u64));
    // A writer holds its owner lock for its life (recovery and the archive writer do).
    let owner = apexsim::archive::lock::Owner::acquire(dir.path()).expect("owner");
    group.bench_function(format!("parquet_zstd/{}_rows", lap.len()), |b| {
        b.iter_batched(
            || lap.clone(),
            |cols| write_lap_as(dir.path(), &owner, &meta, cols).expect("write"),
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function(format!("parquet_zstd_in_memory/{}_rows", lap.len()), |b| {
        b.iter_batched(
            || lap.clone(),
            |cols| encode_lap(&meta, cols).expect("encode"),
            criterion::BatchSize::LargeInput,
        )
    });
    // What the uploader does with the lap before sending it: every row mapped to the Racing
    // Coach API's `TelemetryFrame` and the body encoded as JSON.
    use apexsim::coach::{api, mapping};
    let session = apexsim::archive::index::SessionRow {
        id: meta.session,
        source: "sim".into(),
        track: meta.track.clone(),
        car_model: meta.car_model.clone(),
        lap_limit: Some(1),
        seed: Some(3),
        started_at: 1_764_000_000,
        finished_at: None,
        sectors: Vec::new(),
        identity: None,
        template_id: None,
        ended_by: None,
        laps_pruned_at: None,
    };
    let upload_json = |cols: &LapColumns| {
        let body = api::UploadLapBody {
            lap: api::LapTelemetry {
                frames: mapping::frames(&session, &meta, cols, 0.0, 0.0),
                lap_time: meta.lap_time_s,
            },
            session: mapping::session_frame(&session, &meta),
        };
        serde_json::to_vec(&body).expect("json")
    };
    let json = upload_json(&lap);
    // The field names of every frame, quoted and with their colon.
    let first = mapping::frames(&session, &meta, &lap, 0.0, 0.0).swap_remove(0);
    let names: usize = serde_json::to_value(first)
        .expect("json")
        .as_object()
        .map_or(0, |o| o.keys().map(|k| k.len() + 3).sum::<usize>())
        * lap.len();
    eprintln!(
        "upload: {} bytes of JSON ({:.1}x the Parquet file), {} of them field names",
        json.len(),
        json.len() as f64 / encoded.len() as f64,
        names
    );
    group.bench_function(format!("upload_json/{}_rows", lap.len()), |b| {
        b.iter(|| upload_json(&lap))
    });
    let raw_path = dir.path().join("raw.bin");
    group.bench_function(format!("raw/{}_rows", lap.len()), |b| {
        b.iter(|| {
            let tmp = raw_path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp).expect("create");
            f.write_all(&raw).expect("write");
            f.sync_all().expect("sync");
            std::fs::rename(&tmp, &raw_path).expect("rename");
        })
    });
    group.finish();

    // The archive writer as a race uses it: a stream of laps through its channel, encoded on
    // its thread while the previous lap's file is synced on another; indexed in SQLite. Next
    // to it, the same laps' bytes raw, each with its own fsync and rename.
    const LAPS: u64 = 16;
    let mut group = c.benchmark_group("archive/writer");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(10);
    group.throughput(Throughput::Bytes(LAPS * raw.len() as u64));
    let session = apexsim::archive::index::SessionRow {
        id: meta.session,
        source: "sim".into(),
        track: meta.track.clone(),
        car_model: meta.car_model.clone(),
        lap_limit: None,
        seed: None,
        started_at: 0,
        finished_at: None,
        sectors: Vec::new(),
        identity: None,
        template_id: None,
        ended_by: None,
        laps_pruned_at: None,
    };
    group.bench_function(format!("parquet_zstd/{LAPS}_laps"), |b| {
        b.iter_batched(
            || {
                let data = tempfile::tempdir().expect("tempdir");
                let mut writer = ArchiveWriter::start(data.path()).expect("writer");
                writer.submit(ArchiveJob::Session(session.clone()));
                let laps: Vec<_> = (0..LAPS as u16).map(|_| lap.clone()).collect();
                (data, writer, laps)
            },
            |(data, mut writer, laps)| {
                for (n, columns) in laps.into_iter().enumerate() {
                    let meta = LapMeta {
                        lap: n as u16 + 1,
                        ..meta.clone()
                    };
                    writer.submit(ArchiveJob::Lap {
                        meta: Box::new(meta),
                        columns,
                    });
                }
                let report = writer.finish();
                assert_eq!(report.laps_written, LAPS, "{:?}", report.errors);
                data
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.bench_function(format!("raw/{LAPS}_laps"), |b| {
        b.iter(|| {
            for n in 0..LAPS {
                let path = dir.path().join(format!("raw{n}.bin"));
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp).expect("create");
                f.write_all(&raw).expect("write");
                f.sync_all().expect("sync");
                std::fs::rename(&tmp, &path).expect("rename");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, parquet_write);
criterion_main!(benches);
