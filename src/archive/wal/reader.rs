//! Reading a write-ahead file: the framing of every message is checked against the file's
//! length before Arrow decodes the messages that fit, so a hostile file cannot make the reader
//! allocate more than it holds; what is wrong is a [`WalError`].

use super::*;
use apexsim_systems::record::LapColumns;
use arrow::array::{
    Array, Float32Array, Float64Array, RecordBatch, UInt8Array, UInt16Array, UInt64Array,
};
use arrow::ipc::reader::StreamReader;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// What is wrong with a write-ahead file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Nothing in it.
    #[error("empty file (no Arrow IPC header)")]
    Empty,
    /// Bytes, but no whole schema message.
    #[error("not an Arrow IPC stream: no complete schema message")]
    NoSchema,
    /// The first message claims a header larger than any write-ahead file has.
    #[error("not an Arrow IPC stream: first message header of {len} bytes")]
    FirstHeaderTooLarge {
        /// The claimed length.
        len: usize,
    },
    /// A later message claims a header larger than any write-ahead file has.
    #[error("message at byte {at} has a header of {len} bytes")]
    HeaderTooLarge {
        /// Where the message starts.
        at: u64,
        /// The claimed length.
        len: usize,
    },
    /// A message header that is not an Arrow IPC message.
    #[error("message at byte {at}: not an Arrow IPC message header ({reason})")]
    NotAMessage {
        /// Where the message starts.
        at: u64,
        /// The flatbuffer verifier's words.
        reason: String,
    },
    /// A message body of negative length.
    #[error("message at byte {at}: negative body length")]
    NegativeBody {
        /// Where the message starts.
        at: u64,
    },
    /// A compressed body: ApexSim never writes one.
    #[error("message at byte {at}: compressed bodies are not written by ApexSim")]
    Compressed {
        /// Where the message starts.
        at: u64,
    },
    /// More rows than the body can hold (each row holds at least its 8-byte tick).
    #[error("message at byte {at}: {rows} rows in a body of {body} bytes")]
    TooManyRows {
        /// Where the message starts.
        at: u64,
        /// The claimed rows.
        rows: i64,
        /// The body's length.
        body: u64,
    },
    /// A column longer than its batch or a buffer outside the body.
    #[error("message at byte {at}: a column or buffer lies outside its batch")]
    OutsideBatch {
        /// Where the message starts.
        at: u64,
    },
    /// A dictionary: ApexSim never writes one.
    #[error("message at byte {at}: dictionaries are not written by ApexSim")]
    Dictionary {
        /// Where the message starts.
        at: u64,
    },
    /// A second schema message.
    #[error("message at byte {at}: a second schema")]
    SecondSchema {
        /// Where the message starts.
        at: u64,
    },
    /// Arrow's stream reader refused the stream.
    #[error("not an Arrow IPC stream: {0}")]
    NotIpc(String),
    /// Arrow's reader panicked on the file (caught).
    #[error("the Arrow IPC reader failed on this file")]
    ReaderFailed,
    /// A stream without ApexSim's session metadata.
    #[error("not an ApexSim write-ahead file: no session metadata")]
    NoSession,
    /// Session metadata that does not parse.
    #[error("not an ApexSim write-ahead file: bad session metadata")]
    BadSession,
    /// A column the format requires is missing.
    #[error("no column {0}")]
    NoColumn(String),
    /// A column of the wrong type.
    #[error("{name} is not {ty}")]
    WrongType {
        /// The column.
        name: String,
        /// The type it must have.
        ty: &'static str,
    },
}

/// A write-ahead file read into laps.
#[derive(Debug)]
pub struct WalContents {
    /// The session.
    pub session: WalSession,
    /// Rows per (car, row lap).
    pub laps: BTreeMap<(u8, u16), LapColumns>,
    /// Laps that closed, by (car, row lap).
    pub closed: BTreeMap<(u8, u16), LapClosure>,
    /// Whether the last batch was torn.
    pub torn_tail: bool,
}

/// Reads a write-ahead file from its start. A torn tail (the last message cut short) ends the
/// file; anything else that is wrong is an error naming the problem.
///
/// Never panics and never allocates more than the file holds: every message's framing is
/// checked against the file's length before Arrow decodes the messages that fit.
///
/// # Errors
/// What is wrong with the file.
pub fn read_wal(file: &File) -> Result<WalContents, WalError> {
    let mut f = file;
    f.seek(SeekFrom::Start(0))?;
    let len = f.metadata()?.len();
    let (whole, torn) = scan_framing(&mut BufReader::new(f), len)?;
    if whole == 0 {
        return Err(if len == 0 {
            WalError::Empty
        } else {
            WalError::NoSchema
        });
    }
    f.seek(SeekFrom::Start(0))?;
    let reader = BufReader::new(f.take(whole));
    // The framing is sound; Arrow validates the arrays. A panic inside the decoder on a
    // hostile file is still caught and reported as the file's problem.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(reader)));
    let mut contents = decoded.map_err(|_| WalError::ReaderFailed)??;
    contents.torn_tail |= torn;
    Ok(contents)
}

/// Walks the IPC stream's messages (continuation, length, flatbuffer header, body) and returns
/// the length of the prefix made of whole messages, and whether something followed it.
pub(crate) fn scan_framing(r: &mut impl Read, len: u64) -> Result<(u64, bool), WalError> {
    let mut at = 0u64;
    loop {
        let mut word = [0u8; 4];
        if !read_full(r, &mut word)? {
            return Ok((at, at < len));
        }
        let mut header = 4u64;
        let mut meta_len = u32::from_le_bytes(word);
        if meta_len == 0xFFFF_FFFF {
            if !read_full(r, &mut word)? {
                return Ok((at, true));
            }
            header = 8;
            meta_len = u32::from_le_bytes(word);
        }
        if meta_len == 0 {
            // End of stream.
            return Ok((at + header, false));
        }
        let meta_len = meta_len as usize;
        if meta_len > MAX_META_LEN {
            if at == 0 {
                return Err(WalError::FirstHeaderTooLarge { len: meta_len });
            }
            return Err(WalError::HeaderTooLarge { at, len: meta_len });
        }
        if at + header + meta_len as u64 > len {
            return Ok((at, true));
        }
        let mut meta = vec![0u8; meta_len];
        if !read_full(r, &mut meta)? {
            return Ok((at, true));
        }
        let message = arrow::ipc::root_as_message(&meta).map_err(|e| WalError::NotAMessage {
            at,
            reason: e.to_string(),
        })?;
        let body =
            u64::try_from(message.bodyLength()).map_err(|_| WalError::NegativeBody { at })?;
        if let Some(batch) = message.header_as_record_batch() {
            if batch.compression().is_some() {
                return Err(WalError::Compressed { at });
            }
            // Every row holds at least the 8-byte tick: more rows than that is a lie.
            let rows = u64::try_from(batch.length()).unwrap_or(u64::MAX);
            if rows > body / 8 + 1 {
                return Err(WalError::TooManyRows {
                    at,
                    rows: batch.length(),
                    body,
                });
            }
            // Columns no longer than the batch, buffers inside the body: Arrow then neither
            // allocates for nor slices past what the file holds.
            let nodes_ok = batch.nodes().is_none_or(|nodes| {
                nodes.iter().all(|n| {
                    u64::try_from(n.length()).is_ok_and(|l| l <= rows)
                        && u64::try_from(n.null_count()).is_ok_and(|c| c <= rows)
                })
            });
            let buffers_ok = batch.buffers().is_none_or(|buffers| {
                buffers.iter().all(|b| {
                    let (o, l) = (u64::try_from(b.offset()), u64::try_from(b.length()));
                    matches!((o, l), (Ok(o), Ok(l)) if o.checked_add(l).is_some_and(|e| e <= body))
                })
            });
            if !nodes_ok || !buffers_ok {
                return Err(WalError::OutsideBatch { at });
            }
        } else if message.header_as_dictionary_batch().is_some() {
            return Err(WalError::Dictionary { at });
        } else if at > 0 {
            return Err(WalError::SecondSchema { at });
        }
        let end = at + header + meta_len as u64 + body;
        if end > len {
            return Ok((at, true));
        }
        std::io::copy(&mut r.take(body), &mut std::io::sink())?;
        at = end;
    }
}

/// Fills `buf`; `false` at a clean or torn end of the input.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, WalError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

pub(crate) fn decode(reader: impl Read) -> Result<WalContents, WalError> {
    let reader =
        StreamReader::try_new(reader, None).map_err(|e| WalError::NotIpc(e.to_string()))?;
    let session: WalSession = reader
        .schema()
        .metadata()
        .get(SESSION_KEY)
        .ok_or(WalError::NoSession)
        .and_then(|j| serde_json::from_str(j).map_err(|_| WalError::BadSession))?;
    let mut contents = WalContents {
        session,
        laps: BTreeMap::new(),
        closed: BTreeMap::new(),
        torn_tail: false,
    };
    for batch in reader {
        let Ok(batch) = batch else {
            contents.torn_tail = true;
            break;
        };
        append_rows(&batch, &mut contents)?;
    }
    Ok(contents)
}

pub(crate) fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    ty: &'static str,
) -> Result<&'a T, WalError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| WalError::NoColumn(name.to_owned()))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| WalError::WrongType {
            name: name.to_owned(),
            ty,
        })
}

pub(crate) fn append_rows(batch: &RecordBatch, out: &mut WalContents) -> Result<(), WalError> {
    let cars = column::<UInt8Array>(batch, "car", "UInt8")?;
    let lap_numbers = column::<UInt16Array>(batch, "lap", "UInt16")?;
    let ticks = column::<UInt64Array>(batch, "tick", "UInt64")?;
    // Files of the first format have no closures.
    let closed = match batch.column_by_name("closed_flags") {
        Some(_) => Some((
            column::<UInt8Array>(batch, "closed_flags", "UInt8")?,
            column::<UInt16Array>(batch, "closed_lap", "UInt16")?,
            column::<Float64Array>(batch, "closed_time_s", "Float64")?,
        )),
        None => None,
    };
    // A column an older build did not write (gear, rpm) reads as NaN.
    let mut floats = Vec::new();
    for name in LapColumns::F32_NAMES {
        floats.push(match batch.column_by_name(name) {
            Some(_) => Some(column::<Float32Array>(batch, name, "Float32")?.values()),
            None => None,
        });
    }
    for i in 0..batch.num_rows() {
        let key = (cars.value(i), lap_numbers.value(i));
        if let Some((flags, lap, time)) = closed
            && flags.is_valid(i)
        {
            let f = flags.value(i);
            out.closed.insert(
                key,
                LapClosure {
                    car: key.0,
                    row_lap: key.1,
                    lap: if lap.is_valid(i) { lap.value(i) } else { key.1 },
                    complete: f & CLOSED_COMPLETE != 0,
                    valid: f & CLOSED_VALID != 0,
                    lap_time_s: time.is_valid(i).then(|| time.value(i)),
                },
            );
            continue;
        }
        let lap = out.laps.entry(key).or_default();
        lap.tick.push(ticks.value(i));
        for (col, values) in lap.f32_columns_mut().into_iter().zip(&floats) {
            col.push(values.as_ref().map_or(f32::NAN, |v| v[i]));
        }
    }
    Ok(())
}
