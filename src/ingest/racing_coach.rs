//! Laps recorded by the Racing Coach client: Parquet files in its own schema (one file per
//! `lap_number`, sometimes several parts of one lap), brought into the archive with their
//! official times, validity and the recording's clock (`session_time`, never the wall-clock
//! `timestamp`).
//!
//! The files of one folder are one session. Rows are ordered by `session_time` and split by
//! `lap_number` (the client already cut its laps at the line). A lap is complete when it runs
//! from the line (first sample within 2 % of the lap, on track: an out-lap is not) to
//! the line (last sample within 2 % of it) without its distance going back; it is valid when it is complete and never on pit road
//! or off track (`track_surface` 0). Its official time is the `last_lap_time` shown at the end
//! of the next lap, when that agrees with the samples' time; otherwise the samples' time, which
//! is integrated from the samples to the line. Only complete laps are archived, as in the
//! iRacing ingest. A session already imported (same files, same bytes) is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use apexsim_systems::playback::{OFFICIAL_TOLERANCE_S, RecordedLapTime, reason};
use apexsim_systems::record::LapColumns;
use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit};
use bevy_ecs::entity::Entity;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use uuid::Uuid;

use super::{
    FileOutcome, FileReport, IngestError, IngestReport, LapNumbers, NAMESPACE, RecordingInfo,
    begin_session, slug, submit_lap,
};
use crate::analysis::DistanceClock;
use crate::archive::index::Index;
use crate::archive::wal::WalSync;
use crate::archive::writer::ArchiveWriter;
use crate::archive::{ArchiveError, Source};

/// Share of the lap within which the first and last samples of a complete lap lie.
const LINE_PCT: f64 = 0.02;

/// A backwards step of the lap distance larger than this (metres) is a reset or a tow.
const BACK_JUMP_M: f64 = 50.0;

/// What the user says about laps the files do not describe.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Track name (the archive's `track=` partition is its slug).
    pub track: String,
    /// Car name.
    pub car: String,
    /// Driver name.
    pub driver: String,
    /// Where the track's sectors start, as fractions of the lap (the files do not say).
    pub sectors: Vec<f32>,
}

/// Columns that must be present, and what they are read as.
const REQUIRED: [&str; 6] = [
    "session_time",
    "lap_number",
    "lap_distance_pct",
    "speed",
    "throttle",
    "brake",
];

/// Columns read when present (the rest of the schema, tyre blobs included, is never decoded).
const OPTIONAL: [&str; 13] = [
    "timestamp",
    "lap_distance",
    "last_lap_time",
    "rpm",
    "gear",
    "steering_angle",
    "lateral_acceleration",
    "longitudinal_acceleration",
    "position_x",
    "position_y",
    "yaw",
    "track_surface",
    "on_pit_road",
];

/// The rows of one file, column by column (NaN where a column is absent).
#[derive(Debug, Default)]
struct Rows {
    time: Vec<f64>,
    lap: Vec<i64>,
    pct: Vec<f64>,
    dist: Vec<f64>,
    last_lap: Vec<f64>,
    speed: Vec<f64>,
    throttle: Vec<f64>,
    brake: Vec<f64>,
    rpm: Vec<f64>,
    gear: Vec<f64>,
    steering: Vec<f64>,
    lat: Vec<f64>,
    long: Vec<f64>,
    x: Vec<f64>,
    y: Vec<f64>,
    yaw: Vec<f64>,
    surface: Vec<f64>,
    pit: Vec<bool>,
    /// Wall-clock start, Unix seconds (for the date only).
    started_at: Option<i64>,
}

fn bad(path: &Path, problem: impl Into<String>) -> IngestError {
    IngestError::Archive(ArchiveError::BadLapFile {
        path: path.to_owned(),
        problem: problem.into(),
    })
}

/// Reads one Racing Coach file: the columns ApexSim uses, as numbers.
///
/// # Errors
/// [`IngestError`] naming the file (`path`, whose bytes these are): not Parquet, lacks a
/// required column, has a column of the wrong type, or has no rows.
fn read_file(path: &Path, file: bytes::Bytes) -> Result<Rows, IngestError> {
    let pq = |source| {
        IngestError::Archive(ArchiveError::Parquet {
            path: path.to_owned(),
            source,
        })
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
    let arrow_schema = builder.schema().clone();
    for name in REQUIRED {
        if arrow_schema.column_with_name(name).is_none() {
            return Err(bad(
                path,
                format!("not a Racing Coach lap file: no column {name}"),
            ));
        }
    }
    let wanted: Vec<usize> = REQUIRED
        .iter()
        .chain(OPTIONAL.iter())
        .filter_map(|n| arrow_schema.index_of(n).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder.with_projection(mask).build().map_err(pq)?;
    let mut rows = Rows::default();
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, format!("arrow: {e}")))?;
        append(path, &batch, &mut rows)?;
    }
    if rows.time.is_empty() {
        return Err(bad(path, "no rows"));
    }
    Ok(rows)
}

/// Reads one Racing Coach file as the import does and returns its row count (for tools and
/// the decoder tests).
///
/// # Errors
/// As the import: the file named with what is wrong.
pub fn read_rows(path: &Path) -> Result<usize, IngestError> {
    read_file(path, read_bytes(path)?).map(|r| r.time.len())
}

fn read_bytes(path: &Path) -> Result<bytes::Bytes, IngestError> {
    std::fs::read(path)
        .map(bytes::Bytes::from)
        .map_err(|source| IngestError::Read {
            path: path.to_owned(),
            source,
        })
}

fn append(path: &Path, batch: &RecordBatch, rows: &mut Rows) -> Result<(), IngestError> {
    let n = batch.num_rows();
    let numbers = |name: &str, required: bool| -> Result<Vec<f64>, IngestError> {
        let Some(col) = batch.column_by_name(name) else {
            return if required {
                Err(bad(path, format!("no column {name}")))
            } else {
                Ok(vec![f64::NAN; n])
            };
        };
        let as_f64 = match col.data_type() {
            DataType::Boolean => {
                cast(col, &DataType::UInt8).and_then(|c| cast(&c, &DataType::Float64))
            }
            _ => cast(col, &DataType::Float64),
        }
        .map_err(|e| bad(path, format!("column {name} is not numeric ({e})")))?;
        let values = as_f64.as_primitive::<Float64Type>();
        Ok((0..n)
            .map(|i| {
                if values.is_null(i) {
                    f64::NAN
                } else {
                    values.value(i)
                }
            })
            .collect())
    };
    if rows.started_at.is_none()
        && let Some(ts) = batch.column_by_name("timestamp")
        && let Ok(secs) = cast(ts, &DataType::Timestamp(TimeUnit::Second, None))
        && let Ok(secs) = cast(&secs, &DataType::Int64)
    {
        let secs = secs.as_primitive::<arrow::datatypes::Int64Type>();
        if !secs.is_empty() && !secs.is_null(0) {
            rows.started_at = Some(secs.value(0));
        }
    }
    rows.time.extend(numbers("session_time", true)?);
    rows.lap.extend(
        numbers("lap_number", true)?
            .iter()
            .map(|l| if l.is_finite() { *l as i64 } else { -1 }),
    );
    rows.pct.extend(numbers("lap_distance_pct", true)?);
    rows.speed.extend(numbers("speed", true)?);
    rows.throttle.extend(numbers("throttle", true)?);
    rows.brake.extend(numbers("brake", true)?);
    rows.dist.extend(numbers("lap_distance", false)?);
    rows.last_lap.extend(numbers("last_lap_time", false)?);
    rows.rpm.extend(numbers("rpm", false)?);
    rows.gear.extend(numbers("gear", false)?);
    rows.steering.extend(numbers("steering_angle", false)?);
    rows.lat.extend(numbers("lateral_acceleration", false)?);
    rows.long
        .extend(numbers("longitudinal_acceleration", false)?);
    rows.x.extend(numbers("position_x", false)?);
    rows.y.extend(numbers("position_y", false)?);
    rows.yaw.extend(numbers("yaw", false)?);
    rows.surface.extend(numbers("track_surface", false)?);
    match batch.column_by_name("on_pit_road") {
        Some(c) => {
            let pit = c
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| bad(path, "column on_pit_road is not boolean"))?;
            rows.pit
                .extend((0..n).map(|i| pit.is_valid(i) && pit.value(i)));
        }
        None => rows.pit.extend(std::iter::repeat_n(false, n)),
    }
    Ok(())
}

/// Lists the Parquet files under the given paths (folders recursively, in name order), grouped
/// by folder: each folder is one session.
///
/// # Errors
/// [`IngestError::Read`] for a path that does not exist or a folder that cannot be listed.
pub fn collect_sessions(paths: &[PathBuf]) -> Result<BTreeMap<PathBuf, Vec<PathBuf>>, IngestError> {
    let files = super::collect_files_with(paths, "parquet")?;
    let mut groups: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
        groups.entry(dir).or_default().push(f);
    }
    Ok(groups)
}

/// One lap's rows (indices into the session's sorted rows).
struct LapRows {
    recorded: i64,
    rows: Vec<usize>,
}

/// Imports Racing Coach files into the archive under `data`: one session per folder.
///
/// # Errors
/// [`IngestError::Archive`] when the archive cannot be opened; a bad file is reported in the
/// result (with its path and what is wrong) and the other files go on.
pub fn import(
    paths: &[PathBuf],
    data: &Path,
    opts: &ImportOptions,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let sessions = collect_sessions(paths)?;
    let index = Index::open(data)?;
    let mut writer = crate::events::ArchiveWiring::default().start_writer(data)?;
    let mut report = IngestReport::default();
    for (dir, files) in sessions {
        let mut all = Rows::default();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        for path in &files {
            // Read once: the bytes are hashed for the session id and decoded.
            match read_bytes(path).and_then(|bytes| {
                let rows = read_file(path, bytes.clone())?;
                hasher.update(&bytes);
                Ok(rows)
            }) {
                Ok(rows) => merge(&mut all, rows),
                Err(e) => {
                    tracing::error!(error = %e, "Racing Coach file not imported");
                    report.files.push(FileReport {
                        path: path.clone(),
                        outcome: FileOutcome::Failed {
                            error: e.to_string(),
                        },
                    });
                }
            }
        }
        if all.time.is_empty() {
            continue;
        }
        let session = Uuid::new_v5(&NAMESPACE, hasher.finish().as_ref());
        report.records += all.time.len() as u64;
        let (lo, hi) = all
            .time
            .iter()
            .filter(|t| t.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
                (lo.min(*t), hi.max(*t))
            });
        report.recorded_s += (hi - lo).max(0.0);
        let outcome =
            import_session(&mut writer, &index, session, &all, opts).unwrap_or_else(|e| {
                FileOutcome::Failed {
                    error: format!("{}: {e}", dir.display()),
                }
            });
        report.files.push(FileReport { path: dir, outcome });
    }
    report.archive = Some(writer.finish());
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

fn merge(all: &mut Rows, rows: Rows) {
    macro_rules! cat {
        ($($f:ident),*) => { $(all.$f.extend(rows.$f);)* };
    }
    cat!(
        time, lap, pct, dist, last_lap, speed, throttle, brake, rpm, gear, steering, lat, long, x,
        y, yaw, surface, pit
    );
    all.started_at = match (all.started_at, rows.started_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// The lap length, measured as the iRacing ingest measures it.
fn track_length(rows: &Rows) -> Option<f32> {
    super::recording::measured_length(
        rows.pct
            .iter()
            .zip(&rows.dist)
            .map(|(p, d)| (*p as f32, *d as f32)),
    )
}

fn import_session(
    writer: &mut ArchiveWriter,
    index: &Index,
    session: Uuid,
    all: &Rows,
    opts: &ImportOptions,
) -> Result<FileOutcome, IngestError> {
    if index.has_finished_session(session)? {
        return Ok(FileOutcome::Skipped { session });
    }
    let length = track_length(all).ok_or_else(|| {
        IngestError::Archive(ArchiveError::BadLapFile {
            path: PathBuf::from(&opts.track),
            problem: "no lap_distance with lap_distance_pct to measure the lap length".into(),
        })
    })?;
    let mut order: Vec<usize> = (0..all.time.len())
        .filter(|&i| all.time[i].is_finite())
        .collect();
    order.sort_by(|&a, &b| all.time[a].total_cmp(&all.time[b]));
    let mut laps: Vec<LapRows> = Vec::new();
    for i in order {
        match laps.last_mut() {
            Some(l) if l.recorded == all.lap[i] => l.rows.push(i),
            _ => laps.push(LapRows {
                recorded: all.lap[i],
                rows: vec![i],
            }),
        }
    }
    let info = RecordingInfo {
        version: 0,
        hz: sample_rate(all),
        records: all.time.len(),
        track_name: opts.track.clone(),
        track_config: None,
        track: slug(&opts.track),
        track_length_m: length,
        car: opts.car.clone(),
        session_type: "racing-coach".into(),
        driver: opts.driver.clone(),
        started_at: all.started_at.unwrap_or(0),
        sectors: opts.sectors.clone(),
        identity: None,
    };
    let mut archive = begin_session(writer, session, &info, Source::Iracing, WalSync::Off)?;
    let mut numbers = LapNumbers::default();
    let mut out = Vec::new();
    for (k, lap) in laps.iter().enumerate() {
        let Some((columns, reasons)) = lap_columns(all, &lap.rows, length) else {
            continue;
        };
        let sample_s = DistanceClock::new(&columns, length, true)
            .map(|c| c.total())
            .unwrap_or(f64::NAN);
        let official_s = laps
            .get(k + 1)
            .and_then(|next| {
                next.rows
                    .iter()
                    .rev()
                    .map(|&i| all.last_lap[i])
                    .find(|t| *t > 0.0)
            })
            .filter(|t| (t - sample_s).abs() <= OFFICIAL_TOLERANCE_S)
            .map(|t| t as f32);
        let (first, last) = (lap.rows[0], lap.rows[lap.rows.len() - 1]);
        let t = RecordedLapTime {
            car: Entity::PLACEHOLDER,
            lap: u16::try_from(lap.recorded.max(0)).unwrap_or(u16::MAX),
            recorded_lap: i32::try_from(lap.recorded).unwrap_or(i32::MAX),
            start_record: first as u64,
            end_record: last as u64 + 1,
            sample_s,
            official_s,
            reasons,
        };
        out.push(submit_lap(
            writer,
            &mut archive,
            (&info, Source::Iracing),
            &mut numbers,
            t,
            columns,
        ));
    }
    let duration = all
        .time
        .iter()
        .copied()
        .filter(|t| t.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
            (lo.min(t), hi.max(t))
        });
    let errors = archive.finish(
        writer,
        info.started_at
            .saturating_add((duration.1 - duration.0).max(0.0).round() as i64),
        Vec::new(),
    );
    if !errors.is_empty() {
        return Ok(FileOutcome::Failed {
            error: errors.join("; "),
        });
    }
    Ok(FileOutcome::Ingested {
        session,
        info: Box::new(info),
        laps: out,
        spikes: 0,
    })
}

/// Samples per second: the median step of the clock.
fn sample_rate(rows: &Rows) -> f64 {
    let mut steps: Vec<f64> = rows
        .time
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d > 0.0)
        .collect();
    if steps.is_empty() {
        return 60.0;
    }
    let mid = steps.len() / 2;
    1.0 / *steps.select_nth_unstable_by(mid, f64::total_cmp).1
}

/// A complete lap's columns and why it is invalid ([`reason`] bits); `None` when the lap does
/// not run from line to line.
fn lap_columns(all: &Rows, rows: &[usize], length: f32) -> Option<(LapColumns, u8)> {
    let (&first, &last) = (rows.first()?, rows.last()?);
    // An out-lap starts on pit road or in the garage (`track_surface` -1, not in the world):
    // it is not a lap from the line.
    if rows.len() < crate::analysis::lap::MIN_ROWS
        || all.pit[first]
        || all.surface[first] < 0.0
        || all.pct[first] > LINE_PCT
        || all.pct[last] < 1.0 - LINE_PCT
    {
        return None;
    }
    let dist = |i: usize| {
        if all.dist[i].is_finite() {
            all.dist[i]
        } else {
            all.pct[i] * f64::from(length)
        }
    };
    let mut reasons = 0u8;
    let mut c = LapColumns::default();
    let t0 = all.time[first];
    let mut prev: Option<f64> = None;
    for &i in rows {
        let d = dist(i);
        if let Some(p) = prev
            && d < p - BACK_JUMP_M
        {
            return None;
        }
        prev = Some(d);
        if all.pit[i] {
            reasons |= reason::PIT_ROAD;
        }
        if all.surface[i] == 0.0 {
            reasons |= reason::OFF_TRACK;
        }
        let f = |x: f64| x as f32;
        c.tick.push(i as u64);
        c.lap_time_s.push(f(all.time[i] - t0));
        c.distance_m.push(f(d));
        c.lateral_m.push(f32::NAN);
        c.speed_mps.push(f(all.speed[i]));
        c.throttle.push(f(all.throttle[i]));
        c.brake.push(f(all.brake[i]));
        // The steering lock is not recorded: the wheel angle cannot be normalised.
        c.steering.push(f32::NAN);
        c.gear.push(f(all.gear[i]));
        c.rpm.push(f(all.rpm[i]));
        c.yaw_rad.push(f(all.yaw[i]));
        c.long_accel_mps2.push(f(all.long[i]));
        c.lat_accel_mps2.push(f(all.lat[i]));
    }
    (c.x_m, c.y_m) = dead_reckon(&c.distance_m, &c.yaw_rad, length);
    Some((c, reasons))
}

/// The car's path in metres from the line, dead-reckoned: each step of lap distance along the
/// heading (`yaw`, counter-clockwise). The files' `position_x/y/z` are body-frame velocities,
/// not positions. The gap left between the end of the lap and its start (the heading's drift)
/// is spread along the lap, so the path closes. NaN without headings.
fn dead_reckon(d: &[f32], yaw: &[f32], length: f32) -> (Vec<f32>, Vec<f32>) {
    let n = d.len();
    if n == 0 || yaw.iter().all(|h| !h.is_finite()) {
        return (vec![f32::NAN; n], vec![f32::NAN; n]);
    }
    let (mut x, mut y) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut px, mut py) = (0.0f64, 0.0f64);
    let mut heading = yaw.iter().copied().find(|h| h.is_finite()).unwrap_or(0.0);
    for k in 0..n {
        if yaw[k].is_finite() {
            heading = yaw[k];
        }
        if k > 0 {
            let step = f64::from((d[k] - d[k - 1]).clamp(0.0, BACK_JUMP_M as f32));
            px += step * f64::from(heading).cos();
            py += step * f64::from(heading).sin();
        }
        x.push(px);
        y.push(py);
    }
    // To the line at the last heading, then close the loop.
    let rest = f64::from((length - d[n - 1]).max(0.0) + d[0].max(0.0));
    let (ex, ey) = (
        px + rest * f64::from(heading).cos(),
        py + rest * f64::from(heading).sin(),
    );
    let span = f64::from(length.max(1.0));
    let share = |k: usize| f64::from(d[k] - d[0]) / span;
    (
        (0..n).map(|k| (x[k] - ex * share(k)) as f32).collect(),
        (0..n).map(|k| (y[k] - ey * share(k)) as f32).collect(),
    )
}
