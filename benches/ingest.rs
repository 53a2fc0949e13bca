//! Ingest benchmarks over the real recordings in `tests/fixtures/ibt/`, in records (frames) per
//! second (criterion's elements/s):
//! - end to end: every file read, decoded, played through the ECS world (lap detection and
//!   record), and its laps written to Parquet and indexed in SQLite in a fresh archive;
//! - pitwall's IBT reader alone over the version 2 files (pitwall refuses version 1), next to
//!   ApexSim's own reader and decoder over the same files, in the same run.
//!
//! Real time is 60 records per second: 60,000 records/s is 1,000x real time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use apexsim::ingest::{IngestOptions, collect_files, ibt, ingest};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ibt");
    collect_files(&[dir]).expect("the recordings in tests/fixtures/ibt")
}

fn ingest_benches(c: &mut Criterion) {
    let files = corpus();
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let headers: Vec<ibt::IbtHeader> = bytes
        .iter()
        .map(|b| ibt::IbtHeader::parse(b).expect("header"))
        .collect();
    let records: usize = headers.iter().map(|h| h.records).sum();
    let v2: Vec<usize> = (0..files.len())
        .filter(|&i| headers[i].version == 2)
        .collect();
    let v2_records: usize = v2.iter().map(|&i| headers[i].records).sum();
    eprintln!(
        "{} files, {records} records ({:.0} s of driving); {} version 2 files, {v2_records} records",
        files.len(),
        records as f64 / 60.0,
        v2.len()
    );

    let mut group = c.benchmark_group("ingest");
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(10);
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function("end_to_end/corpus", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |dir| {
                let report = ingest(&files, dir.path(), &IngestOptions::default(), |_, _, _| {})
                    .expect("ingest");
                assert_eq!(report.failed(), 0);
                assert_eq!(report.archive.as_ref().map(|a| a.laps_written), Some(6));
                dir
            },
            criterion::BatchSize::PerIteration,
        )
    });

    group.throughput(Throughput::Elements(v2_records as u64));
    group.bench_function("pitwall_reader/v2_files", |b| {
        b.iter(|| {
            let mut n = 0;
            for &i in &v2 {
                let mut reader = pitwall::IbtReader::from_bytes(&bytes[i]).expect("pitwall");
                while let Some((frame, _, _)) = reader.read_next_frame().expect("frame") {
                    n += frame.len();
                }
            }
            n
        })
    });
    group.bench_function("pitwall_reader_and_decode/v2_files", |b| {
        b.iter(|| {
            v2.iter()
                .map(|&i| {
                    ibt::frames_via_pitwall(&bytes[i], &headers[i])
                        .expect("frames")
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.bench_function("own_reader_and_decode/v2_files", |b| {
        b.iter(|| {
            v2.iter()
                .map(|&i| {
                    ibt::frames_direct(&bytes[i], &headers[i])
                        .expect("frames")
                        .len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, ingest_benches);
criterion_main!(benches);
