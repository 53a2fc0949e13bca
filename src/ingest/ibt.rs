//! iRacing disk telemetry (.ibt): the header, the variable headers, the session info and the
//! records, for versions 1 (2015-2016 files) and 2. pitwall 0.1 reads version 2 only; both
//! versions share this layout, so ApexSim reads the file structure itself, checks it against
//! the file's length (a truncated copy is an error, not fewer frames), and decodes records with
//! the same [`pitwall::FrameAdapter`] whichever path read them.
//!
//! Layout (little endian): a 112-byte header (version, status, tick rate, session info
//! length/offset, variable count, variable header offset, buffer count, record length, two
//! padding words, four `{tick, offset}` buffer descriptors), a 32-byte disk header at byte 112
//! (start date, start and end time, lap count, record count), 144-byte variable headers, the
//! session info YAML, then `record count` records of `record length` bytes from the first
//! buffer's offset.

use std::collections::HashMap;
use std::sync::Arc;

use pitwall::{FrameAdapter, VariableInfo, VariableSchema, VariableType};

use super::frame::IbtFrame;
use thiserror::Error;

/// Bytes of the main header plus the disk header.
pub const HEADER_LEN: usize = 144;
const DISK_HEADER_AT: usize = 112;
const VAR_HEADER_LEN: usize = 144;

/// What is wrong with a file that is not a readable recording.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum IbtError {
    /// Shorter than the headers.
    #[error("not an IBT recording: {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// The version field is not 1 or 2.
    #[error("not an IBT recording: header version {version} (expected 1 or 2)")]
    NotIbt {
        /// The version field.
        version: i32,
    },
    /// A header field that cannot be right.
    #[error("corrupt IBT header: {0}")]
    BadHeader(String),
    /// The file ends before the records its header promises.
    #[error(
        "truncated: the header promises {records} records of {record_len} bytes ending at byte \
         {end}, the file has {len} bytes ({whole} whole records)"
    )]
    Truncated {
        /// Records the header promises.
        records: usize,
        /// Bytes per record.
        record_len: usize,
        /// Where they should end.
        end: usize,
        /// File length.
        len: usize,
        /// Whole records present.
        whole: usize,
    },
    /// pitwall refused the file.
    #[error("pitwall: {0}")]
    Pitwall(String),
    /// A channel lap detection cannot do without.
    #[error("channel {0} is missing")]
    MissingChannel(&'static str),
}

/// The recording's headers.
#[derive(Debug, Clone, PartialEq)]
pub struct IbtHeader {
    /// 1 or 2.
    pub version: i32,
    /// Samples per second.
    pub tick_rate: i32,
    /// Session info YAML: offset and length.
    pub session_info: (usize, usize),
    /// Variable headers: offset and count.
    pub vars: (usize, usize),
    /// Bytes per record.
    pub record_len: usize,
    /// Offset of the first record.
    pub records_at: usize,
    /// Unix seconds at which the recording started.
    pub start_date: i64,
    /// Session time of the first and last record, seconds.
    pub session_time: (f64, f64),
    /// Records in the file.
    pub records: usize,
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i32::from_le_bytes)
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, i64::from_le_bytes)
}

fn f64_at(b: &[u8], at: usize) -> f64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(f64::NAN, f64::from_le_bytes)
}

fn nonneg(v: i32, what: &str) -> Result<usize, IbtError> {
    usize::try_from(v).map_err(|_| IbtError::BadHeader(format!("{what} is {v}")))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl IbtHeader {
    /// Reads and checks the headers against the file's bytes.
    ///
    /// # Errors
    /// [`IbtError`] naming what is wrong: too short, not version 1 or 2, impossible offsets or
    /// lengths, or fewer records than the header promises.
    pub fn parse(b: &[u8]) -> Result<Self, IbtError> {
        if b.len() < HEADER_LEN {
            return Err(IbtError::TooShort { len: b.len() });
        }
        let version = i32_at(b, 0);
        if !(1..=2).contains(&version) {
            return Err(IbtError::NotIbt { version });
        }
        let tick_rate = i32_at(b, 8);
        if !(1..=10_000).contains(&tick_rate) {
            return Err(IbtError::BadHeader(format!("tick rate is {tick_rate}")));
        }
        let session_info = (
            nonneg(i32_at(b, 20), "session info offset")?,
            nonneg(i32_at(b, 16), "session info length")?,
        );
        let vars = (
            nonneg(i32_at(b, 28), "variable header offset")?,
            nonneg(i32_at(b, 24), "variable count")?,
        );
        let record_len = nonneg(i32_at(b, 36), "record length")?;
        let records_at = nonneg(i32_at(b, 52), "record offset")?;
        if record_len == 0 || record_len > 1 << 24 {
            return Err(IbtError::BadHeader(format!(
                "record length is {record_len}"
            )));
        }
        let vars_end = vars.0.saturating_add(vars.1.saturating_mul(VAR_HEADER_LEN));
        if vars.1 == 0 || vars.1 > 10_000 || vars_end > b.len() {
            return Err(IbtError::BadHeader(format!(
                "{} variable headers at byte {} do not fit in {} bytes",
                vars.1,
                vars.0,
                b.len()
            )));
        }
        if session_info.0.saturating_add(session_info.1) > b.len() {
            return Err(IbtError::BadHeader(format!(
                "session info at byte {} ({} bytes) is past the end of the file ({} bytes)",
                session_info.0,
                session_info.1,
                b.len()
            )));
        }
        if records_at < vars_end.max(HEADER_LEN) || records_at > b.len() {
            return Err(IbtError::BadHeader(format!(
                "records start at byte {records_at}, inside the headers or past the end"
            )));
        }
        let d = DISK_HEADER_AT;
        let promised = i32_at(b, d + 28);
        let whole = (b.len() - records_at) / record_len;
        let records = if promised > 0 {
            promised as usize
        } else {
            whole
        };
        let end = records_at.saturating_add(records.saturating_mul(record_len));
        if end > b.len() || (promised <= 0 && !(b.len() - records_at).is_multiple_of(record_len)) {
            return Err(IbtError::Truncated {
                records,
                record_len,
                end,
                len: b.len(),
                whole,
            });
        }
        Ok(Self {
            version,
            tick_rate,
            session_info,
            vars,
            record_len,
            records_at,
            start_date: i64_at(b, d),
            session_time: (f64_at(b, d + 8), f64_at(b, d + 16)),
            records,
        })
    }

    /// The variable headers as pitwall's schema (types mapped as pitwall maps them).
    ///
    /// # Errors
    /// [`IbtError::BadHeader`] when a variable lies outside the record.
    pub fn schema(&self, b: &[u8]) -> Result<VariableSchema, IbtError> {
        let mut variables = HashMap::with_capacity(self.vars.1);
        for i in 0..self.vars.1 {
            let at = self.vars.0 + i * VAR_HEADER_LEN;
            let h = &b[at..at + VAR_HEADER_LEN];
            let (ty, offset, count) = (i32_at(h, 0), i32_at(h, 4), i32_at(h, 8));
            let name = c_string(&h[16..48]);
            if name.is_empty() || offset < 0 || count <= 0 {
                continue;
            }
            let data_type = match ty {
                0 => VariableType::Int8,
                1 => VariableType::Bool,
                2 | 3 => VariableType::Int32,
                4 => VariableType::Float32,
                5 => VariableType::Float64,
                _ => continue,
            };
            let (offset, count) = (offset as usize, count as usize);
            let size: usize = match data_type {
                VariableType::Float64 => 8,
                VariableType::Int8 | VariableType::Bool => 1,
                _ => 4,
            };
            if size
                .checked_mul(count)
                .and_then(|n| n.checked_add(offset))
                .is_none_or(|end| end > self.record_len)
            {
                return Err(IbtError::BadHeader(format!(
                    "variable {name} at byte {offset} lies outside the {}-byte record",
                    self.record_len
                )));
            }
            variables.insert(
                name.clone(),
                VariableInfo {
                    name,
                    data_type,
                    offset,
                    count,
                    count_as_time: h[12] != 0,
                    units: c_string(&h[112..144]),
                    description: c_string(&h[48..112]),
                },
            );
        }
        VariableSchema::new(variables, self.record_len)
            .map_err(|e| IbtError::Pitwall(e.to_string()))
    }

    /// The session info YAML, cleaned of the control characters iRacing leaves in it.
    pub fn session_yaml(&self, b: &[u8]) -> Option<String> {
        let (at, len) = self.session_info;
        let raw = b.get(at..at + len)?;
        let raw = &raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())];
        let text: String = String::from_utf8_lossy(raw)
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
            .collect();
        (!text.trim().is_empty()).then_some(text)
    }

    /// The records, read by ApexSim (any version).
    pub fn records<'a>(&self, b: &'a [u8]) -> impl ExactSizeIterator<Item = &'a [u8]> + use<'a> {
        let start = self.records_at;
        let end = start + self.records * self.record_len;
        b[start..end].chunks_exact(self.record_len)
    }
}

/// Reads every record of a version 2 file through pitwall's IBT reader and decodes it with
/// [`IbtFrame`]'s [`FrameAdapter`].
///
/// # Errors
/// [`IbtError::Pitwall`] with pitwall's message (it refuses version 1), or
/// [`IbtError::MissingChannel`].
pub fn frames_via_pitwall(bytes: &[u8], header: &IbtHeader) -> Result<Vec<IbtFrame>, IbtError> {
    let mut reader =
        pitwall::IbtReader::from_bytes(bytes).map_err(|e| IbtError::Pitwall(e.to_string()))?;
    let schema = Arc::new(reader.variables().clone());
    let plan = IbtFrame::validate_schema(&schema).map_err(missing_channel)?;
    let mut frames = Vec::with_capacity(header.records);
    while frames.len() < header.records
        && let Some((data, tick, version)) = reader
            .read_next_frame()
            .map_err(|e| IbtError::Pitwall(e.to_string()))?
    {
        let packet = pitwall::FramePacket::new(data, tick, version, Arc::clone(&schema));
        frames.push(IbtFrame::adapt(&packet, &plan));
    }
    Ok(frames)
}

/// Reads every record itself (version 1 or 2) and decodes it with the same plan pitwall's path
/// uses.
///
/// # Errors
/// [`IbtError::BadHeader`] for variables outside the record, [`IbtError::MissingChannel`].
pub fn frames_direct(bytes: &[u8], header: &IbtHeader) -> Result<Vec<IbtFrame>, IbtError> {
    let schema = header.schema(bytes)?;
    let plan = IbtFrame::validate_schema(&schema).map_err(missing_channel)?;
    Ok(header
        .records(bytes)
        .map(|record| IbtFrame::decode(record, &plan.extraction_plan))
        .collect())
}

fn missing_channel(e: pitwall::TelemetryError) -> IbtError {
    match e {
        pitwall::TelemetryError::FieldNotFound { field } => IbtError::MissingChannel(
            super::frame::REQUIRED
                .iter()
                .copied()
                .find(|r| *r == field)
                .unwrap_or("?"),
        ),
        other => IbtError::Pitwall(other.to_string()),
    }
}
