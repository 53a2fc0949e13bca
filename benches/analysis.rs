//! Analysis benchmarks, on real simulated laps.
//!
//! - `analysis/lap/*`: one lap of the grand circuit (16-car race, its longest complete lap,
//!   about 24,000 rows at 240 Hz): every metric (`lap_metrics`), the engine's braking-zone
//!   detection alone (moving average, then `regions`), and a plain single-pass Rust loop doing
//!   the same detection (running-sum smoothing, hysteresis, gap merging and minimum duration
//!   in one pass), checked to find the same zones, in the same run.
//! - `analysis/archive/*`: an archive of 1,008 laps (a 16-car, 62-lap race on the oval, about
//!   8,700 rows a lap): every lap read and measured and its metrics stored (`--recompute`),
//!   and the stored metrics read back and summarised with polars (what `analyze` does on an
//!   archive whose metrics are up to date). Throughput is laps per second.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use apexsim::analysis::lap::{Detect, moving_average, regions};
use apexsim::analysis::measure::ensure_metrics;
use apexsim::analysis::query::{LapFilter, query_laps, summarize};
use apexsim::analysis::{Thresholds, lap_metrics};
use apexsim::archive::wal::WalSync;
use apexsim::content::Content;
use apexsim::events::ArchiveWiring;
use apexsim::race::{Race, RaceOptions};
use apexsim_systems::record::LapColumns;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn race(track: &str, cars: usize, laps: u16) -> Race {
    let report = Content::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("content"));
    let opts = RaceOptions {
        track: track.into(),
        car: "gt3_generic".into(),
        cars,
        laps,
        seed: 3,
        fast: true,
        speed: 1.0,
        time_limit: None,
        session_id: None,
    };
    Race::new(&report.content, &opts).expect("race")
}

fn real_lap() -> (LapColumns, f32) {
    let mut race = race("grand_circuit", 16, 1);
    while !race.is_finished() {
        race.step();
    }
    let length = race.report(Duration::ZERO).track_length_m;
    let lap = race
        .laps()
        .iter()
        .filter(|l| l.complete)
        .max_by_key(|l| l.columns.len())
        .expect("a complete lap")
        .columns
        .clone();
    (lap, length)
}

/// The engine's braking-zone detection, written as one plain pass: a running-sum moving
/// average of the brake, hysteresis, merging across short gaps and a minimum duration.
/// Returns `(first, last)` sample of each zone (no zone runs over the line here).
fn single_pass_braking(
    brake: &[f32],
    t: &[f32],
    th: &Thresholds,
    window: usize,
) -> Vec<(usize, usize)> {
    let n = brake.len();
    let half = window / 2;
    let mut zones: Vec<(usize, usize, f32)> = Vec::new();
    // Running sum over [i - half, i + half], clipped at the ends.
    let mut sum = 0.0f64;
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut run: Option<(usize, f32)> = None;
    for i in 0..=n {
        let above = if i < n {
            let (want_lo, want_hi) = (i.saturating_sub(half), (i + half + 1).min(n));
            while hi < want_hi {
                sum += f64::from(brake[hi]);
                hi += 1;
            }
            while lo < want_lo {
                sum -= f64::from(brake[lo]);
                lo += 1;
            }
            let s = (sum / (hi - lo) as f64) as f32;
            (s > th.brake_off).then_some(s)
        } else {
            None
        };
        match (above, run) {
            (Some(s), Some((start, peak))) => run = Some((start, peak.max(s))),
            (Some(s), None) => run = Some((i, s)),
            (None, Some((start, peak))) => {
                let end = i - 1;
                match zones.last_mut() {
                    Some(last) if t[start] - t[last.1] < th.brake_merge_gap_s => {
                        last.1 = end;
                        last.2 = last.2.max(peak);
                    }
                    _ => zones.push((start, end, peak)),
                }
                run = None;
            }
            (None, None) => {}
        }
    }
    zones
        .into_iter()
        .filter(|&(s, e, peak)| peak > th.brake_on && t[e] - t[s] >= th.brake_min_duration_s)
        .map(|(s, e, _)| (s, e))
        .collect()
}

fn per_lap(c: &mut Criterion) {
    let (lap, length) = real_lap();
    let th = Thresholds::default();
    let dt = (lap.lap_time_s[lap.len() - 1] - lap.lap_time_s[0]) / (lap.len() - 1) as f32;
    let window = ((th.pedal_smoothing_s / dt).round() as usize) | 1;
    let detect = Detect::braking(&th);
    let engine = |lap: &LapColumns| {
        let smooth = moving_average(&lap.brake, window);
        regions(&smooth, &lap.lap_time_s, &lap.distance_m, &detect, None)
    };
    let zones: Vec<(usize, usize)> = engine(&lap).iter().map(|r| (r.start, r.end)).collect();
    let plain = single_pass_braking(&lap.brake, &lap.lap_time_s, &th, window);
    assert_eq!(zones, plain, "the single pass finds the engine's zones");
    let metrics = lap_metrics(&lap, length, true, &[0.333, 0.667], &th).expect("metrics");
    eprintln!(
        "lap of {} rows: {} braking zones, {} corners",
        lap.len(),
        metrics.braking.len(),
        metrics.corners.len()
    );
    let mut group = c.benchmark_group("analysis/lap");
    group.throughput(Throughput::Elements(1));
    group.bench_function("every_metric", |b| {
        b.iter(|| lap_metrics(black_box(&lap), length, true, &[0.333, 0.667], &th))
    });
    group.bench_function("braking_zones_engine", |b| {
        b.iter(|| engine(black_box(&lap)))
    });
    group.bench_function("braking_zones_single_pass", |b| {
        b.iter(|| single_pass_braking(black_box(&lap.brake), &lap.lap_time_s, &th, window))
    });
    group.finish();
}

fn archive(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let mut race = race("oval_simple", 16, 62);
    race.archive_to(
        ArchiveWiring::default().start_writer(data).expect("writer"),
        WalSync::Off,
    )
    .expect("archive");
    let report = race.run(true).expect("race");
    let laps = report.archive.expect("archived").laps_written;
    assert!(laps >= 1000, "{laps} laps");
    let th = Thresholds::default();
    let filter = LapFilter::default();
    let mut group = c.benchmark_group("analysis/archive");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(laps));
    group.bench_function(format!("recompute_{laps}_laps"), |b| {
        b.iter(|| {
            let done = ensure_metrics(data, None, &th, true);
            assert!(done.errors.is_empty() && done.computed as u64 == laps);
        })
    });
    group.bench_function(format!("stored_{laps}_laps"), |b| {
        b.iter(|| {
            let rows = query_laps(data, &filter).expect("query");
            let summary = summarize(data, &filter, &rows, &th).expect("summary");
            assert_eq!(rows.len() as u64, laps);
            summary
        })
    });
    group.finish();
}

criterion_group!(benches, per_lap, archive);
criterion_main!(benches);
