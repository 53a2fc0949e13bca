//! `apexsim live`: live telemetry from iRacing's shared memory, which exists only on Windows
//! while iRacing runs. Elsewhere the command says so and points to `apexsim ingest`.
//!
//! On Windows, pitwall's live connection streams frames (decoded by the same frame adapter as
//! the recordings); [`record_stream`] plays each frame into a telemetry-driven car, one tick
//! per frame, and archives every complete lap as soon as its time is known, until the stream
//! ends or Ctrl-C. The same loop runs over any stream of frames, which is how it is tested
//! here.

use std::future::Future;
use std::path::Path;

use apexsim_systems::prelude::*;
use futures::{Stream, StreamExt};
use thiserror::Error;
use uuid::Uuid;

use super::frame::IbtFrame;
use super::{IngestOptions, IngestedLap, LapCollector, LapNumbers, RecordingInfo};
use crate::archive::writer::WriterReport;
use crate::archive::{ArchiveError, Source};

/// Why live telemetry cannot be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LiveError {
    /// Not Windows.
    #[error(
        "live telemetry needs Windows with iRacing running (this is {os}); record .ibt files in \
         iRacing and archive them with `apexsim ingest <file-or-folder>`"
    )]
    Unsupported {
        /// This operating system.
        os: &'static str,
    },
    /// iRacing's telemetry could not be opened.
    #[error("could not connect to iRacing: {0}")]
    Connect(String),
    /// The async runtime could not start.
    #[error("could not start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The archive could not be opened.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// What a live session recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveReport {
    /// Session id.
    pub session: Uuid,
    /// Track, car, driver.
    pub info: RecordingInfo,
    /// Frames played.
    pub records: u64,
    /// Complete laps archived, in order.
    pub laps: Vec<IngestedLap>,
    /// The archive writer's report.
    pub archive: WriterReport,
}

/// Records live telemetry into the archive under `data` until iRacing stops or Ctrl-C.
///
/// # Errors
/// [`LiveError::Unsupported`] on anything but Windows; [`LiveError::Connect`] when iRacing's
/// telemetry cannot be opened; [`LiveError::Archive`].
pub fn run(data: &Path, opts: &IngestOptions) -> Result<LiveReport, LiveError> {
    #[cfg(not(windows))]
    {
        let _ = (data, opts);
        Err(LiveError::Unsupported {
            os: std::env::consts::OS,
        })
    }
    #[cfg(windows)]
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LiveError::Runtime)?;
        runtime.block_on(async {
            let conn = pitwall::LiveConnection::connect()
                .await
                .map_err(|e| LiveError::Connect(e.to_string()))?;
            let session = match conn.current_session() {
                Some(s) => Some(s),
                None => Box::pin(conn.session_updates()).next().await,
            };
            let frames = conn.subscribe::<IbtFrame>(pitwall::UpdateRate::Native);
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            record_stream(
                frames,
                session.as_deref(),
                conn.source_hz(),
                data,
                opts,
                stop,
            )
            .await
        })
    }
}

/// Plays a stream of frames into the archive under `data`, one tick per frame, archiving each
/// complete lap as soon as its time is known, until the stream ends or `stop` completes.
///
/// The session has a write-ahead file like a race's: every quarter of a second the frames'
/// rows are appended to it, and each lap's closure before the lap goes to the writer, so a
/// process killed mid-session loses at most the last quarter second and its closed laps are
/// recovered complete.
///
/// # Errors
/// [`LiveError::Archive`] when the archive cannot be opened.
pub async fn record_stream<S, F>(
    frames: S,
    session_info: Option<&pitwall::SessionInfo>,
    hz: f64,
    data: &Path,
    opts: &IngestOptions,
    stop: F,
) -> Result<LiveReport, LiveError>
where
    S: Stream<Item = IbtFrame>,
    F: Future<Output = ()>,
{
    let mut info = super::recording::describe(session_info, None, hz, opts);
    info.started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let session = Uuid::new_v4();
    let mut writer = opts.wiring.start_writer(data)?;
    let mut archive =
        super::begin_session(&mut writer, session, &info, Source::Iracing, opts.wal_sync)?;
    let mut numbers = LapNumbers::default();
    // A quarter of a second of frames between two write-ahead flushes.
    let flush_every = ((hz / 4.0).round() as u64).max(1);
    let mut sim = Simulation::new(SimulationPlugin::default());
    let (_, car) = spawn_fed(
        sim.world_mut(),
        session,
        PlaybackFeed::live(),
        hz,
        info.track_length_m,
    );
    let mut collector = LapCollector::default();
    let mut laps = Vec::new();
    let mut origin = None;
    let mut records = 0u64;
    let mut first_time = None;
    let mut last_time = 0.0;
    let frames = frames.fuse();
    futures::pin_mut!(frames);
    let stop = futures::FutureExt::fuse(stop);
    futures::pin_mut!(stop);
    loop {
        let frame = futures::select! {
            frame = frames.next() => frame,
            () = stop => None,
        };
        let Some(frame) = frame else {
            break;
        };
        let record = records;
        records += 1;
        if frame.is_blank() {
            continue;
        }
        origin = origin.or(frame.location());
        let sample = super::recording::to_sample(record, &frame, origin, info.track_length_m);
        first_time.get_or_insert(sample.time_s);
        last_time = sample.time_s;
        if let Some(mut feed) = sim.world_mut().get_mut::<PlaybackFeed>(car) {
            feed.push(sample);
        }
        sim.step();
        if !records.is_multiple_of(flush_every) {
            continue;
        }
        let chunk = collector.drain(&mut sim);
        archive.record_rows(&chunk, |_| 0);
        for (t, columns) in collector.take_ready() {
            let from = (&info, Source::Iracing);
            let lap = super::submit_lap(&mut writer, &mut archive, from, &mut numbers, t, columns);
            tracing::info!(
                lap = lap.lap,
                time_s = lap.time_s,
                valid = lap.valid,
                "lap archived"
            );
            laps.push(lap);
        }
    }
    // The end: a lap still waiting for its official time keeps the samples'.
    end_feed(sim.world_mut(), car);
    let chunk = collector.drain(&mut sim);
    archive.record_rows(&chunk, |_| 0);
    for (t, columns) in collector.take_ready() {
        laps.push(super::submit_lap(
            &mut writer,
            &mut archive,
            (&info, Source::Iracing),
            &mut numbers,
            t,
            columns,
        ));
    }
    let duration = first_time.map_or(0.0, |f| last_time - f);
    let syncs = archive.wal_syncs();
    let wal_errors = archive.finish(
        &mut writer,
        info.started_at.saturating_add(duration.round() as i64),
        Vec::new(),
    );
    let mut written = writer.finish();
    written.errors.extend(wal_errors);
    written.wal_syncs = syncs;
    Ok(LiveReport {
        session,
        info,
        records,
        laps,
        archive: written,
    })
}
