//! The lap archive: one Parquet file (zstd) per lap, in a Hive-partitioned layout that polars,
//! DuckDB, Spark and DataFusion read directly:
//!
//! ```text
//! <data>/laps/source=sim|iracing/track=<slug>/date=YYYY-MM-DD/<session>_<car>_lap<N>.parquet
//! ```
//!
//! One Arrow schema ([`lap_schema`]) for simulated and recorded laps, with units in the field
//! metadata; the lap's identity (session, car, driver, track, lap number, lap time, validity,
//! schema version) in the file's key-value metadata. A file is written beside its final name and
//! renamed into place after an fsync, so a reader never sees a half-written Parquet file.
//!
//! This runs on the archive's own thread, never inside a tick.
//!
//! By job: [`format`](mod@format) (the schema, the layout, the file metadata), [`encode`] (columns to a
//! record batch and Parquet bytes), [`durable`] (writing beside the final name, fsync, rename),
//! [`read`] (lap files back to columns), [`retention`] (pruning sessions and what derives from
//! them); the write-ahead files ([`wal`]), the index and outbox ([`index`], [`outbox`]), the
//! writer thread ([`writer`]) and the recorder ([`recorder`]) above them.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use uuid::Uuid;

pub mod durable;
pub mod encode;
pub mod format;
pub mod index;
pub mod lock;
pub mod outbox;
pub mod read;
pub mod recorder;
pub mod retention;
pub mod session;
pub mod wal;
pub mod writer;

pub use durable::{StagedLap, stage_lap, sync_dir, write_lap, write_lap_as};
pub use encode::{encode_lap, lap_batch};
pub use format::{lap_path, lap_schema};
pub use read::{read_lap, read_lap_columns, read_lap_meta};
pub use retention::{DERIVED_DIR, PruneReport, parse_duration, prune, prune_laps};

/// Version of the lap schema and metadata; readers check it. Version 3 added the lap's
/// identity as columns ([`IDENTITY_COLUMNS`]); version 2 gear and rpm.
pub const SCHEMA_VERSION: u32 = 3;

/// The lap's identity as columns at the end of every lap file (schema version 3), so any engine
/// can group rows by lap without parsing file names: constant within a file, so dictionary and
/// run-length encoded to a few bytes. The Hive partitions add `source`, `track` and `date`.
pub const IDENTITY_COLUMNS: [&str; 4] = ["session", "car", "driver", "lap"];

/// zstd level of lap files: one of zstd's fast levels. Telemetry floats compress little
/// whatever the level; this keeps encoding near disk speed (see `benches/archive.rs`).
pub const ZSTD_LEVEL: i32 = -3;

/// Key-value metadata prefix of every ApexSim key.
const META: &str = "apexsim.";

/// Why an archive operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file or directory could not be created, written, renamed or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Parquet encoding or decoding failed.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The error.
        source: parquet::errors::ParquetError,
    },
    /// The SQLite index failed.
    #[error("{}: sqlite: {source}", path.display())]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// Arrow could not assemble the columns.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The session already has a write-ahead file: another process is writing it, or it
    /// waits for recovery.
    #[error(
        "session {session} is being written by another process (or its write-ahead file {} \
         waits for recovery)", path.display()
    )]
    SessionBusy {
        /// The session.
        session: Uuid,
        /// Its write-ahead file.
        path: PathBuf,
    },
    /// A file is not an ApexSim lap file, or its metadata is unusable.
    #[error("{}: {problem}", path.display())]
    BadLapFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Where a lap came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Simulated by ApexSim.
    Sim,
    /// Recorded in iRacing.
    Iracing,
    /// Posted to the REST API (`POST /api/v1/telemetry`) by another tool.
    Api,
}

impl Source {
    /// Name in paths and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::Iracing => "iracing",
            Self::Api => "api",
        }
    }

    /// The source named `s` ([`Self::as_str`]'s names).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sim" => Some(Self::Sim),
            "iracing" => Some(Self::Iracing),
            "api" => Some(Self::Api),
            _ => None,
        }
    }
}

/// A calendar date (UTC), for the `date=` partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u32,
    /// Day, 1..=31.
    pub day: u32,
}

impl Date {
    /// The UTC date of a Unix time in seconds (clamped to the calendar jiff supports, years
    /// -9999 to 9999, for times beyond it).
    pub fn from_unix(secs: i64) -> Self {
        let ts = jiff::Timestamp::from_second(secs).unwrap_or(if secs < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        });
        Self::from(jiff::tz::Offset::UTC.to_datetime(ts).date())
    }

    /// Today, in UTC.
    pub fn today() -> Self {
        Self::from(
            jiff::tz::Offset::UTC
                .to_datetime(jiff::Timestamp::now())
                .date(),
        )
    }

    /// Parses `YYYY-MM-DD` (a real calendar date).
    pub fn parse(s: &str) -> Option<Self> {
        s.trim().parse::<jiff::civil::Date>().ok().map(Self::from)
    }
}

impl From<jiff::civil::Date> for Date {
    fn from(d: jiff::civil::Date) -> Self {
        Self {
            year: i32::from(d.year()),
            month: u32::from(d.month().unsigned_abs()),
            day: u32::from(d.day().unsigned_abs()),
        }
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Who drove which lap where: everything in a lap file besides its rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LapMeta {
    /// Simulated or recorded.
    pub source: Source,
    /// Session id.
    pub session: Uuid,
    /// Car index within the session.
    pub car: u8,
    /// Car model name.
    pub car_model: String,
    /// Driver name (or pseudonym).
    pub driver: String,
    /// Track slug.
    pub track: String,
    /// Track length in metres.
    pub track_length_m: f32,
    /// Lap number (0 = out-lap / grid to line).
    pub lap: u16,
    /// Official lap time in seconds, for complete laps.
    pub lap_time_s: Option<f64>,
    /// Whether the lap ran from line to line.
    pub complete: bool,
    /// Whether the lap was valid.
    pub valid: bool,
    /// Date of the session (partition key).
    pub date: Date,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("168h"),
            Some(std::time::Duration::from_secs(168 * 3600))
        );
        assert_eq!(
            parse_duration("7d"),
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        assert_eq!(
            parse_duration("90m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("15s"),
            Some(std::time::Duration::from_secs(15))
        );
        assert_eq!(parse_duration("7"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(
            parse_duration("1h 30m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("week"), None);
    }

    #[test]
    fn dates_from_unix_time() {
        assert_eq!(Date::from_unix(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_unix(951_782_400).to_string(), "2000-02-29");
        assert_eq!(Date::from_unix(1_795_392_000).to_string(), "2026-11-23");
        assert_eq!(Date::from_unix(-86_400).to_string(), "1969-12-31");
        assert_eq!(
            Date::parse("2026-11-23"),
            Some(Date::from_unix(1_795_392_000))
        );
        assert_eq!(Date::parse("2026-13-01"), None);
        assert_eq!(Date::parse("2026-02-30"), None, "a real calendar date");
        assert_eq!(Date::from_unix(i64::MAX).year, 9999);
    }
}
