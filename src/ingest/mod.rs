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
pub mod posted;
pub mod racing_coach;
pub mod recording;
pub mod track;

pub use recording::{Recording, RecordingInfo, pseudonym, read_frames, read_recording, slug};

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
use ibt::IbtError;

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
                    // Archived by a build that did not keep the session's identity: it is
                    // read from the recording now.
                    if let Some(identity) = &r.info.identity {
                        index.put_identity(r.session, identity)?;
                    }
                    FileOutcome::Skipped { session: r.session }
                }
                Ok(r) => match begin_session(
                    &mut writer,
                    r.session,
                    &r.info,
                    Source::Iracing,
                    WalSync::Off,
                ) {
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
        .map(|(t, columns)| {
            let from = (&info, Source::Iracing);
            submit_lap(writer, &mut session, from, &mut numbers, t, columns)
        })
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

/// Opens the archive session of a recorded session (a file, live or posted telemetry) from
/// `source`, indexed unfinished: it is finished once its laps are durable, so an ingest cut
/// short is redone next time.
///
/// # Errors
/// As [`ArchiveSession::begin`].
pub(crate) fn begin_session(
    writer: &mut ArchiveWriter,
    session: Uuid,
    info: &RecordingInfo,
    source: Source,
    sync: WalSync,
) -> Result<ArchiveSession, ArchiveError> {
    ArchiveSession::begin(
        writer,
        SessionRow {
            id: session,
            source: source.as_str().into(),
            track: info.track.clone(),
            car_model: info.car.clone(),
            lap_limit: None,
            seed: None,
            started_at: info.started_at,
            finished_at: None,
            sectors: info.sectors.clone(),
            identity: info.identity.clone(),
            template_id: None,
            ended_by: None,
            laps_pruned_at: None,
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

/// Hands a complete recorded lap from `source` to the archive writer under its
/// [`LapNumbers`] number.
pub(crate) fn submit_lap(
    writer: &mut ArchiveWriter,
    session: &mut ArchiveSession,
    (info, source): (&RecordingInfo, Source),
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
            source,
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
