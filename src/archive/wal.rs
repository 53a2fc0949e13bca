//! Write-ahead files: `<data>/wal/<session>.arrows`, an Arrow IPC stream per writing session
//! (the session's identity in the schema metadata). Every flush (60 ticks, 250 ms) appends one
//! record batch: the rows recorded since the last flush, with the car and lap of each row, then
//! one row per lap that closed (its archive lap number, official time, completeness and
//! validity). The file is handed to the operating system at each flush (a killed process loses
//! at most the flush in progress) and fsynced on a schedule ([`WalSync`], by default every
//! second, by one thread for every file of the process), so an operating-system crash loses at most that much more.
//!
//! The session holds an exclusive lock on its file for its whole life ([`super::lock`]). The
//! file is created under a temporary name, locked, given its header and only then linked under
//! its final name, so nobody ever sees an unlocked write-ahead file of a live session.
//!
//! [`recover`] takes only files whose lock it can take (their owner is gone): it reads each up
//! to its last complete batch (a torn tail is ignored), writes the laps that are not already
//! archived (closed laps complete, with their time and validity; the rest partial; a complete
//! lap file already there is indexed, never overwritten) and removes the file. A file that is
//! corrupt, foreign or unreadable is moved to `wal/quarantine/` with the reason beside it, and
//! recovery goes on with the others. The framing of every message is checked against the
//! file's length before Arrow decodes it, so a hostile file cannot make it allocate more than
//! the file holds.
//!
//! By job: the format (here: the session's identity, the schema, the closure flags), the
//! writer ([`writer`]: a session's file; [`schedule`]: the process's fsync schedule), the reader ([`reader`]: framing
//! checked before decoding, typed errors) and recovery ([`recovery`]).

use super::ArchiveError;
use super::lock::{self};
use apexsim_systems::record::LapColumns;
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

pub mod reader;
pub mod recovery;
pub mod schedule;
pub mod writer;

pub use reader::{WalContents, WalError, read_wal};
pub use recovery::{RecoveryReport, recover, recover_logged};
pub use writer::Wal;

/// Schema metadata key holding the session's identity as JSON.
pub(crate) const SESSION_KEY: &str = "apexsim.wal.session";

/// Largest message header (flatbuffer) a write-ahead file may hold; ours are a few KiB.
pub(crate) const MAX_META_LEN: usize = 1 << 20;

/// Bit of `closed_flags`: the lap ran from line to line.
pub(crate) const CLOSED_COMPLETE: u8 = 1;

/// Bit of `closed_flags`: the lap was valid.
pub(crate) const CLOSED_VALID: u8 = 2;

/// What a write-ahead file knows about its session, enough to archive its laps alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WalSession {
    /// Session id.
    pub session: Uuid,
    /// "sim" or "iracing".
    pub source: String,
    /// Track slug.
    pub track: String,
    /// Track length in metres.
    pub track_length_m: f32,
    /// Car model.
    pub car_model: String,
    /// Driver of each car index.
    pub drivers: Vec<String>,
    /// Session date, `YYYY-MM-DD`.
    pub date: String,
    /// Unix seconds at the start.
    pub started_at: i64,
}

/// When the write-ahead file is fsynced (made durable against an operating-system crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// Never: the file survives the process being killed, not the machine going down.
    Off,
    /// After every flush, on the simulation thread (the strongest and the slowest).
    EveryFlush,
    /// At this interval, by the process's schedule for it (one thread for all files).
    Every(Duration),
}

impl Default for WalSync {
    fn default() -> Self {
        Self::Every(Duration::from_secs(1))
    }
}

impl WalSync {
    /// Parses `off`, `0` (every flush) or a duration such as `1s` or `250ms`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "off" | "never" => Some(Self::Off),
            "0" | "flush" => Some(Self::EveryFlush),
            d => match humantime::parse_duration(d).ok()? {
                Duration::ZERO => Some(Self::EveryFlush),
                d => Some(Self::Every(d)),
            },
        }
    }
}

/// A lap that closed, as the write-ahead file records it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LapClosure {
    /// Car index within the session.
    pub car: u8,
    /// The lap number its rows carry in the file.
    pub row_lap: u16,
    /// The lap number it is archived under.
    pub lap: u16,
    /// Line to line.
    pub complete: bool,
    /// Valid.
    pub valid: bool,
    /// Official time in seconds.
    pub lap_time_s: Option<f64>,
}

pub(crate) fn wal_schema(session: &WalSession) -> Result<Schema, ArchiveError> {
    let mut fields = vec![
        Field::new("car", DataType::UInt8, false),
        Field::new("lap", DataType::UInt16, false),
        Field::new("tick", DataType::UInt64, false),
    ];
    fields.extend(
        LapColumns::F32_NAMES
            .iter()
            .map(|n| Field::new(*n, DataType::Float32, false)),
    );
    fields.extend([
        Field::new("closed_lap", DataType::UInt16, true),
        Field::new("closed_time_s", DataType::Float64, true),
        Field::new("closed_flags", DataType::UInt8, true),
    ]);
    let json = serde_json::to_string(session).map_err(|e| ArchiveError::BadLapFile {
        path: PathBuf::from("<wal session>"),
        problem: e.to_string(),
    })?;
    Ok(Schema::new(fields).with_metadata(HashMap::from([(SESSION_KEY.to_owned(), json)])))
}

/// Path of a session's write-ahead file.
pub fn wal_path(data: &Path, session: Uuid) -> PathBuf {
    data.join("wal")
        .join(format!("{}.arrows", session.simple()))
}

/// Whether a live process holds the write-ahead file of `session`.
pub fn is_live(data: &Path, session: Uuid) -> bool {
    lock::is_locked(&wal_path(data, session))
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}
