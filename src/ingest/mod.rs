//! iRacing ingest: recordings (.ibt) become archived laps.
//!
//! Each file is read whole at full speed (pitwall's IBT reader for version 2, ApexSim's own
//! record reader for version 1), its records become [`RecordedSample`]s, and a batch of files
//! plays through one ECS world side by side: one session and one telemetry-driven car per
//! file, one sample per tick. The same timing and record systems as a race detect and record
//! the laps; complete laps are archived (`source=iracing`) with their official time and
//! validity, indexed in SQLite.
//!
//! A file is identified by the hash of its bytes: ingesting it again finds its finished session
//! in the index and skips it, so laps are never duplicated (a session whose ingest was cut short
//! is not finished and is ingested again, replacing what it had). Driver names are replaced by a stable
//! pseudonym unless asked otherwise. A file that cannot be read is reported with its path and
//! what is wrong, and the others go on.

pub mod frame;
pub mod ibt;
pub mod live;
pub mod racing_coach;
pub mod track;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use apexsim_systems::playback::reason;
use apexsim_systems::prelude::*;
use bevy_ecs::entity::Entity;
use thiserror::Error;
use uuid::Uuid;

use crate::archive::index::{Index, SessionRow};
use crate::archive::session::ArchiveSession;
use crate::archive::wal::{LapClosure, WalSync};
use crate::archive::writer::{ArchiveWriter, WriterReport};
use crate::archive::{ArchiveError, Date, LapMeta, Source};
use frame::IbtFrame;
use ibt::{IbtError, IbtHeader};

/// Files played through the world together.
pub const BATCH_FILES: usize = 16;

/// Accelerations beyond this (about 8 g) next to ordinary neighbours are sensor spikes.
pub const SPIKE_MPS2: f32 = 80.0;

/// Namespace of recording and driver ids (uuid v5).
const NAMESPACE: Uuid = Uuid::from_u128(0x6170_6578_7369_6d2d_6962_742d_696e_6765);

/// Why one file was not ingested.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a readable recording.
    #[error("{}: {source}", path.display())]
    Ibt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: IbtError,
    },
    /// The archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// Ingest options.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Store drivers' names instead of pseudonyms.
    pub keep_driver_names: bool,
    /// When live telemetry's write-ahead file is fsynced (recordings need none: the file
    /// itself is the copy to redo from).
    pub wal_sync: WalSync,
    /// What the archive writer is wired to: lap metrics, the bus, uploads.
    pub wiring: crate::events::ArchiveWiring,
}

/// What a recording says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordingInfo {
    /// IBT version (1 or 2).
    pub version: i32,
    /// Samples per second.
    pub hz: f64,
    /// Records in the file.
    pub records: usize,
    /// Track display name.
    pub track_name: String,
    /// Track configuration, if any.
    pub track_config: Option<String>,
    /// Track slug for the archive (from iRacing's track name).
    pub track: String,
    /// Lap length in metres (measured from the lap distance channels, else the session info).
    pub track_length_m: f32,
    /// Car name.
    pub car: String,
    /// Session type (practice, race, offline testing...).
    pub session_type: String,
    /// Driver (pseudonym unless names are kept).
    pub driver: String,
    /// Unix seconds at which the recording started.
    pub started_at: i64,
    /// Where the track's sectors start, as fractions of the lap (the session info's split
    /// points; the first, at 0, not listed).
    pub sectors: Vec<f32>,
}

/// One lap found in a recording.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IngestedLap {
    /// The recording's lap counter.
    pub lap: i32,
    /// The lap number it is archived under: the recording's counter where it goes up, else the
    /// next free number (a reset can repeat a counter); `None` when no number is left.
    pub archived_lap: Option<u16>,
    /// First record of the lap.
    pub start_record: u64,
    /// First record after it.
    pub end_record: u64,
    /// Lap time in seconds (official when the recording had one).
    pub time_s: f64,
    /// Whether the time is the recording's own.
    pub official: bool,
    /// Whether the lap is valid.
    pub valid: bool,
    /// Why not, when invalid.
    pub invalid_because: Vec<&'static str>,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileOutcome {
    /// Read and its laps archived.
    Ingested {
        /// Session id (from the file's bytes).
        session: Uuid,
        /// What the file says.
        info: Box<RecordingInfo>,
        /// Complete laps, in order.
        laps: Vec<IngestedLap>,
        /// Acceleration spikes smoothed.
        spikes: usize,
    },
    /// Already in the archive.
    Skipped {
        /// Its session.
        session: Uuid,
    },
    /// Another process is ingesting the same recording right now.
    InProgress {
        /// Its session.
        session: Uuid,
    },
    /// Could not be ingested.
    Failed {
        /// Why.
        error: String,
    },
}

/// One file's line in the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// What happened.
    #[serde(flatten)]
    pub outcome: FileOutcome,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IngestReport {
    /// Every file, in order.
    pub files: Vec<FileReport>,
    /// Records read.
    pub records: u64,
    /// Recorded time, seconds.
    pub recorded_s: f64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// The archive writer's report.
    pub archive: Option<WriterReport>,
}

impl IngestReport {
    /// Files that failed.
    pub fn failed(&self) -> usize {
        self.files
            .iter()
            .filter(|f| matches!(f.outcome, FileOutcome::Failed { .. }))
            .count()
    }

    /// Complete laps found, and how many of them are valid.
    pub fn laps(&self) -> (usize, usize) {
        self.files
            .iter()
            .filter_map(|f| match &f.outcome {
                FileOutcome::Ingested { laps, .. } => Some(laps),
                _ => None,
            })
            .fold((0, 0), |(n, v), laps| {
                (n + laps.len(), v + laps.iter().filter(|l| l.valid).count())
            })
    }
}

/// Lists the .ibt files under the given paths (folders recursively, in name order); a path
/// that is a file is taken as is, whatever its name.
///
/// # Errors
/// [`IngestError::Read`] for a path that does not exist or a folder that cannot be listed.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    collect_files_with(paths, "ibt")
}

/// Lists the files with extension `ext` under the given paths (folders recursively, in name
/// order); a path that is a file is taken as is, whatever its name.
///
/// # Errors
/// As [`collect_files`].
pub fn collect_files_with(paths: &[PathBuf], ext: &str) -> Result<Vec<PathBuf>, IngestError> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<(), IngestError> {
        let read = std::fs::read_dir(dir).map_err(|source| IngestError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut entries: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, ext, out)?;
            } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext)) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| IngestError::Read {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(p, ext, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// A recording read into samples, ready to play.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Session id: a hash of the file's bytes.
    pub session: Uuid,
    /// What the file says.
    pub info: RecordingInfo,
    /// The samples (blank records left out).
    pub samples: Vec<RecordedSample>,
    /// Acceleration spikes smoothed.
    pub spikes: usize,
}

/// Reads a recording's frames: version 2 through pitwall's IBT reader, version 1 directly.
///
/// # Errors
/// [`IbtError`] naming what is wrong with the file.
pub fn read_frames(bytes: &[u8]) -> Result<(IbtHeader, Vec<IbtFrame>), IbtError> {
    let header = IbtHeader::parse(bytes)?;
    let frames = if header.version == 2 {
        ibt::frames_via_pitwall(bytes, &header)?
    } else {
        ibt::frames_direct(bytes, &header)?
    };
    Ok((header, frames))
}

/// Reads a file into a [`Recording`].
///
/// # Errors
/// [`IngestError`] naming the file and what is wrong with it.
pub fn read_recording(path: &Path, opts: &IngestOptions) -> Result<Recording, IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ibt_err = |source| IngestError::Ibt {
        path: path.to_owned(),
        source,
    };
    let (header, frames) = read_frames(&bytes).map_err(ibt_err)?;
    let yaml = header.session_yaml(&bytes);
    let session = Uuid::new_v5(&NAMESPACE, &bytes);
    let mut info = session_info(yaml.as_deref(), &header, opts);
    if let Some(length) = measured_length(frames.iter().map(|f| (f.lap_dist_pct, f.lap_dist_m))) {
        info.track_length_m = length;
    }
    let (samples, spikes) = samples(&frames, &info);
    Ok(Recording {
        session,
        info,
        samples,
        spikes,
    })
}

/// Track, car, driver and session type from the session info YAML (pitwall's parser, with a
/// line scan for the track when an old recording's YAML does not fit pitwall's schema).
fn session_info(yaml: Option<&str>, header: &IbtHeader, opts: &IngestOptions) -> RecordingInfo {
    let parsed = yaml.and_then(|y| pitwall::SessionInfo::parse(y).ok());
    let mut info = describe(parsed.as_ref(), yaml, f64::from(header.tick_rate), opts);
    info.version = header.version;
    info.records = header.records;
    info.started_at = header.start_date;
    info
}

/// What a session info says about the recording, from pitwall's parsed form or, failing that,
/// from a scan of the YAML's lines.
pub(crate) fn describe(
    parsed: Option<&pitwall::SessionInfo>,
    yaml: Option<&str>,
    hz: f64,
    opts: &IngestOptions,
) -> RecordingInfo {
    let line = |key: &str| -> Option<String> {
        yaml?.lines().find_map(|l| {
            let l = l.trim_start();
            let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
            (!v.is_empty()).then(|| v.trim_matches('"').to_owned())
        })
    };
    let (track_name, track_id, track_length, track_config) = match parsed {
        Some(p) => (
            p.weekend_info.track_display_name.clone(),
            p.weekend_info.track_name.clone(),
            p.weekend_info.track_length.clone(),
            p.weekend_info.track_config_name.clone(),
        ),
        None => (
            line("TrackDisplayName").unwrap_or_default(),
            line("TrackName").unwrap_or_default(),
            line("TrackLength").unwrap_or_default(),
            line("TrackConfigName"),
        ),
    };
    let (car, driver, session_type) = parsed
        .map(|p| {
            let me = p.driver_info.as_ref().and_then(|d| {
                let idx = d.driver_car_idx?;
                d.drivers.as_ref()?.iter().find(|x| x.car_idx == idx)
            });
            let session_type = p
                .session_info
                .sessions
                .first()
                .map(|s| s.session_type.clone());
            (
                me.and_then(|m| m.car_screen_name.clone()),
                me.map(|m| m.user_name.clone()),
                session_type,
            )
        })
        .unwrap_or_default();
    let car = car
        .or_else(|| line("CarScreenName"))
        .unwrap_or_else(|| "unknown car".into());
    let driver = driver.or_else(|| line("UserName")).unwrap_or_default();
    let driver = if opts.keep_driver_names {
        driver
    } else {
        pseudonym(&driver)
    };
    let track = slug(if track_id.is_empty() {
        &track_name
    } else {
        &track_id
    });
    RecordingInfo {
        version: 2,
        hz,
        records: 0,
        track_name,
        track_config: track_config.filter(|c| !c.is_empty()),
        track: if track.is_empty() {
            "unknown".into()
        } else {
            track
        },
        track_length_m: parse_km(&track_length).unwrap_or(0.0),
        car,
        session_type: session_type
            .or_else(|| line("SessionType"))
            .unwrap_or_else(|| "unknown".into()),
        driver,
        started_at: 0,
        sectors: sectors(parsed, yaml),
    }
}

/// Where the track's sectors start (`SplitTimeInfo.Sectors[].SectorStartPct`), from pitwall's
/// parsed form or, failing that, the YAML's lines; the start at 0 is left out.
fn sectors(parsed: Option<&pitwall::SessionInfo>, yaml: Option<&str>) -> Vec<f32> {
    let from_parsed: Option<Vec<f64>> = parsed
        .and_then(|p| p.split_time_info.as_ref())
        .and_then(|s| s.sectors.as_ref())
        .map(|s| s.iter().filter_map(|x| x.sector_start_pct).collect());
    let starts = from_parsed.unwrap_or_else(|| {
        yaml.map(|y| {
            y.lines()
                .filter_map(|l| l.trim_start().strip_prefix("SectorStartPct:"))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .collect()
        })
        .unwrap_or_default()
    });
    let mut out: Vec<f32> = starts
        .into_iter()
        .filter(|x| *x > 0.0 && *x < 1.0)
        .map(|x| x as f32)
        .collect();
    out.sort_by(f32::total_cmp);
    out.dedup();
    out
}

/// A stable pseudonym for a driver's name: the same name gives the same pseudonym everywhere.
pub fn pseudonym(name: &str) -> String {
    let id = Uuid::new_v5(&NAMESPACE, name.as_bytes());
    format!("driver-{}", &id.simple().to_string()[..8])
}

/// `"tsukuba 1kouter"` -> `"tsukuba_1kouter"`: lowercase letters, digits and single `_`.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

fn parse_km(s: &str) -> Option<f32> {
    let (v, unit) = s.trim().split_once(' ')?;
    let v: f32 = v.parse().ok()?;
    match unit.trim() {
        "km" => Some(v * 1000.0),
        "mi" => Some(v * 1609.344),
        _ => None,
    }
}

/// The lap length from `(lap fraction, lap distance in metres)` samples (`LapDistPct`,
/// `LapDist`; the session info rounds it to 10 m): the median ratio over samples well inside
/// the lap, `None` with fewer than 10 of them.
pub(crate) fn measured_length(samples: impl IntoIterator<Item = (f32, f32)>) -> Option<f32> {
    let mut ratios: Vec<f32> = samples
        .into_iter()
        .filter(|(pct, m)| *pct > 0.25 && *pct < 0.95 && *m > 0.0)
        .map(|(pct, m)| m / pct)
        .filter(|r| r.is_finite())
        .collect();
    if ratios.len() < 10 {
        return None;
    }
    let mid = ratios.len() / 2;
    let (_, m, _) = ratios.select_nth_unstable_by(mid, f32::total_cmp);
    Some(*m)
}

/// Frames to samples: blank records dropped, positions in metres east/north of the first
/// located sample, steering normalised to -1 (left) ..= 1 (right), isolated acceleration
/// spikes replaced by their neighbours' mean.
fn samples(frames: &[IbtFrame], info: &RecordingInfo) -> (Vec<RecordedSample>, usize) {
    let origin = frames.iter().find_map(IbtFrame::location);
    let mut out: Vec<RecordedSample> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.is_blank())
        .map(|(i, f)| to_sample(i as u64, f, origin, info.track_length_m))
        .collect();
    let mut spikes = 0;
    for i in 1..out.len().saturating_sub(1) {
        for get in [
            (|s: &mut RecordedSample| &mut s.long_accel_mps2)
                as fn(&mut RecordedSample) -> &mut f32,
            |s: &mut RecordedSample| &mut s.lat_accel_mps2,
        ] {
            let (a, b) = (*get(&mut out[i - 1]), *get(&mut out[i + 1]));
            let v = get(&mut out[i]);
            if v.abs() > SPIKE_MPS2 && a.abs() <= SPIKE_MPS2 && b.abs() <= SPIKE_MPS2 {
                *v = (a + b) * 0.5;
                spikes += 1;
            }
        }
    }
    (out, spikes)
}

/// One frame as a sample: positions in metres east/north of `origin`, steering normalised to
/// -1 (left) ..= 1 (right) (NaN without the steering lock), lap distance in metres.
pub(crate) fn to_sample(
    record: u64,
    f: &IbtFrame,
    origin: Option<(f64, f64)>,
    track_length_m: f32,
) -> RecordedSample {
    const EARTH_R_M: f64 = 6_371_000.0;
    let (x, y) = match (origin, f.location()) {
        (Some((lat0, lon0)), Some((lat, lon))) => (
            ((lon - lon0).to_radians() * lat0.to_radians().cos() * EARTH_R_M) as f32,
            ((lat - lat0).to_radians() * EARTH_R_M) as f32,
        ),
        _ => (f32::NAN, f32::NAN),
    };
    let steering = match f.steering_max_rad {
        Some(max) if max > 0.0 => (-f.steering_rad / max).clamp(-1.0, 1.0),
        _ => f32::NAN,
    };
    let lap_dist_m = if f.lap_dist_m.is_finite() {
        f.lap_dist_m
    } else {
        f.lap_dist_pct * track_length_m
    };
    RecordedSample {
        record,
        time_s: f.session_time_s,
        lap: f.lap,
        lap_dist_pct: f.lap_dist_pct,
        lap_dist_m,
        last_lap_time_s: f.last_lap_time_s,
        speed_mps: f.speed_mps,
        throttle: f.throttle,
        brake: f.brake,
        steering,
        gear: f.gear.clamp(-1, 127) as i8,
        rpm: f.rpm,
        x_m: x,
        y_m: y,
        yaw_rad: f.yaw_north_rad.unwrap_or(f.yaw_rad),
        long_accel_mps2: f.long_accel_mps2,
        lat_accel_mps2: f.lat_accel_mps2,
        on_pit_road: f.on_pit_road,
        off_track: f.track_surface == Some(0),
    }
}

/// Collects complete recorded laps from a world: their rows from the record chunks and their
/// times (known a little after the line) from [`RecordedLapTimes`].
#[derive(Debug, Default)]
pub struct LapCollector {
    assembler: LapAssembler,
    rows: HashMap<(Entity, u16), LapColumns>,
    times: Vec<RecordedLapTime>,
}

impl LapCollector {
    /// Takes what the world recorded since the last call, and returns it (for a write-ahead
    /// file).
    pub fn drain(&mut self, sim: &mut Simulation) -> RecordChunk {
        let chunk = sim.world_mut().resource_mut::<RecordChunk>().take();
        for lap in self.assembler.ingest(&chunk) {
            if lap.complete {
                self.rows.insert((lap.car, lap.lap), lap.columns);
            }
        }
        self.times
            .append(&mut sim.world_mut().resource_mut::<RecordedLapTimes>().0);
        chunk
    }

    /// Complete laps whose rows and time are both known, in the order their times came.
    pub fn take_ready(&mut self) -> Vec<(RecordedLapTime, LapColumns)> {
        let mut ready = Vec::new();
        let rows = &mut self.rows;
        self.times.retain(|t| match rows.remove(&(t.car, t.lap)) {
            Some(columns) => {
                ready.push((*t, columns));
                false
            }
            None => true,
        });
        ready
    }
}

/// Plays recordings through an ECS world, side by side, and returns each one's complete laps:
/// the recorded rows and the lap's time and validity, keyed by the recording's position.
pub fn play(
    sim: &mut Simulation,
    recordings: &[Recording],
) -> Vec<Vec<(RecordedLapTime, LapColumns)>> {
    let cars: Vec<(Entity, Entity)> = recordings
        .iter()
        .map(|r| {
            spawn_recording(
                sim.world_mut(),
                r.session,
                r.samples.clone(),
                r.info.hz,
                r.info.track_length_m,
            )
        })
        .collect();
    let longest = recordings
        .iter()
        .map(|r| r.samples.len())
        .max()
        .unwrap_or(0);
    let mut collector = LapCollector::default();
    // One tick per sample, plus one for the cars to leave.
    for n in 0..=longest {
        sim.step();
        if n % 240 == 0 || n == longest {
            collector.drain(sim);
        }
    }
    // Each lap goes to its recording's list, moved, in the order its time came.
    let mut out: Vec<Vec<(RecordedLapTime, LapColumns)>> = vec![Vec::new(); cars.len()];
    for (t, columns) in collector.take_ready() {
        if let Some(i) = cars.iter().position(|&(_, car)| car == t.car) {
            out[i].push((t, columns));
        }
    }
    for (session, _) in cars {
        sim.world_mut().despawn(session);
    }
    out
}

/// Ingests files into the archive under `data`. `progress` is called after each batch of
/// files with (files done, files total, records so far).
///
/// Each recording is one [`ArchiveSession`]: it is marked finished only once every one of its
/// laps is durable and indexed, so a recording whose laps could not all be written is ingested
/// again next time; a recording another process is ingesting at the same time is left to it.
///
/// # Errors
/// [`IngestError::Archive`] when the archive cannot be opened; a bad file is reported in the
/// result instead.
pub fn ingest(
    files: &[PathBuf],
    data: &Path,
    opts: &IngestOptions,
    mut progress: impl FnMut(usize, usize, u64),
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let index = Index::open(data)?;
    let mut writer = opts.wiring.start_writer(data)?;
    let mut sim = Simulation::new(SimulationPlugin::default());
    let mut report = IngestReport::default();
    let mut done = 0;
    for batch in files.chunks(BATCH_FILES) {
        let mut recordings = Vec::new();
        let mut slots = Vec::new();
        for path in batch {
            let outcome = match read_recording(path, opts) {
                Ok(r) if index.has_finished_session(r.session)? => {
                    FileOutcome::Skipped { session: r.session }
                }
                Ok(r) => match begin_session(&mut writer, r.session, &r.info, WalSync::Off) {
                    Ok(session) => {
                        slots.push((report.files.len(), session));
                        recordings.push(r);
                        FileOutcome::Failed {
                            error: String::new(),
                        }
                    }
                    Err(ArchiveError::SessionBusy { session, .. }) => {
                        FileOutcome::InProgress { session }
                    }
                    Err(e) => FileOutcome::Failed {
                        error: format!("{}: {e}", path.display()),
                    },
                },
                Err(e) => {
                    tracing::error!(error = %e, "recording not ingested");
                    FileOutcome::Failed {
                        error: e.to_string(),
                    }
                }
            };
            report.files.push(FileReport {
                path: path.clone(),
                outcome,
            });
        }
        let laps = play(&mut sim, &recordings);
        for (((slot, session), rec), laps) in slots.into_iter().zip(recordings).zip(laps) {
            report.records += rec.samples.len() as u64;
            if let (Some(first), Some(last)) = (rec.samples.first(), rec.samples.last()) {
                report.recorded_s += last.time_s - first.time_s;
            }
            report.files[slot].outcome = archive_recording(&mut writer, session, rec, laps);
        }
        done += batch.len();
        progress(done, files.len(), report.records);
    }
    report.archive = Some(writer.finish());
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

fn archive_recording(
    writer: &mut ArchiveWriter,
    mut session: ArchiveSession,
    rec: Recording,
    laps: Vec<(RecordedLapTime, LapColumns)>,
) -> FileOutcome {
    let info = rec.info;
    let duration = rec
        .samples
        .last()
        .zip(rec.samples.first())
        .map_or(0.0, |(l, f)| l.time_s - f.time_s);
    let mut numbers = LapNumbers::default();
    let out = laps
        .into_iter()
        .map(|(t, columns)| submit_lap(writer, &mut session, &info, &mut numbers, t, columns))
        .collect();
    let wal_errors = session.finish(
        writer,
        info.started_at.saturating_add(duration.round() as i64),
        Vec::new(),
    );
    if !wal_errors.is_empty() {
        return FileOutcome::Failed {
            error: wal_errors.join("; "),
        };
    }
    FileOutcome::Ingested {
        session: rec.session,
        info: Box::new(info),
        laps: out,
        spikes: rec.spikes,
    }
}

/// Opens the archive session of a recorded session (a file or live telemetry), indexed
/// unfinished: it is finished once its laps are durable, so an ingest cut short is redone next
/// time.
///
/// # Errors
/// As [`ArchiveSession::begin`].
pub(crate) fn begin_session(
    writer: &mut ArchiveWriter,
    session: Uuid,
    info: &RecordingInfo,
    sync: WalSync,
) -> Result<ArchiveSession, ArchiveError> {
    ArchiveSession::begin(
        writer,
        SessionRow {
            id: session,
            source: Source::Iracing.as_str().into(),
            track: info.track.clone(),
            car_model: info.car.clone(),
            lap_limit: None,
            seed: None,
            started_at: info.started_at,
            finished_at: None,
            sectors: info.sectors.clone(),
        },
        info.track_length_m,
        vec![info.driver.clone()],
        Date::from_unix(info.started_at),
        sync,
    )
}

/// Archive lap numbers of one recording: the recording's own counter where it goes up, else the
/// next free number, so two laps never share a number (and a file) even when a reset repeats
/// the counter. Checked: a counter at the top of the range gives no number rather than a
/// repeated one.
#[derive(Debug, Default, Clone, Copy)]
pub struct LapNumbers {
    last: Option<u16>,
}

impl LapNumbers {
    /// The number of the next lap, whose recorded counter is `recorded`.
    pub fn assign(&mut self, recorded: i32) -> Option<u16> {
        let wanted = u16::try_from(recorded.max(0)).unwrap_or(u16::MAX);
        let n = match self.last {
            Some(last) => wanted.max(last.checked_add(1)?),
            None => wanted,
        };
        self.last = Some(n);
        Some(n)
    }
}

/// Hands a complete recorded lap to the archive writer under its [`LapNumbers`] number.
pub(crate) fn submit_lap(
    writer: &mut ArchiveWriter,
    session: &mut ArchiveSession,
    info: &RecordingInfo,
    numbers: &mut LapNumbers,
    t: RecordedLapTime,
    columns: LapColumns,
) -> IngestedLap {
    let archived_lap = numbers.assign(t.recorded_lap);
    let lap = IngestedLap {
        lap: t.recorded_lap,
        archived_lap,
        start_record: t.start_record,
        end_record: t.end_record,
        time_s: t.time_s(),
        official: t.official_s.is_some(),
        valid: t.valid(),
        invalid_because: reason::names(t.reasons),
    };
    let Some(number) = archived_lap else {
        tracing::error!(
            recorded_lap = t.recorded_lap,
            "lap not archived: no lap number is left after {}",
            u16::MAX
        );
        return lap;
    };
    // The closure is in the write-ahead file before the lap goes to the writer: a lap that
    // closed is recovered complete, with its time, whatever happens next.
    session.close_laps(&[LapClosure {
        car: 0,
        row_lap: t.lap,
        lap: number,
        complete: true,
        valid: lap.valid,
        lap_time_s: Some(lap.time_s),
    }]);
    session.submit_lap(
        writer,
        LapMeta {
            source: Source::Iracing,
            session: session.id(),
            car: 0,
            car_model: info.car.clone(),
            driver: info.driver.clone(),
            track: info.track.clone(),
            track_length_m: info.track_length_m,
            lap: number,
            lap_time_s: Some(lap.time_s),
            complete: true,
            valid: lap.valid,
            date: Date::from_unix(info.started_at),
        },
        columns,
    );
    lap
}

#[cfg(test)]
mod tests {
    use super::LapNumbers;

    #[test]
    fn lap_numbers_never_repeat_and_never_overflow() {
        let mut n = LapNumbers::default();
        assert_eq!(n.assign(184), Some(184));
        // A reset sends the counter back to 0, then to 186 again: each lap keeps a number of
        // its own.
        assert_eq!(n.assign(0), Some(185));
        assert_eq!(n.assign(186), Some(186));
        assert_eq!(n.assign(186), Some(187));
        assert_eq!(n.assign(-1), Some(188));
        let mut top = LapNumbers::default();
        assert_eq!(top.assign(i32::MAX), Some(u16::MAX));
        assert_eq!(top.assign(1), None, "no number is left");
    }
}
