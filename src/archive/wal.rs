//! Write-ahead files: `<data>/wal/<session>.arrows`, an Arrow IPC stream per writing session
//! (the session's identity in the schema metadata). Every flush (60 ticks, 250 ms) appends one
//! record batch: the rows recorded since the last flush, with the car and lap of each row, then
//! one row per lap that closed (its archive lap number, official time, completeness and
//! validity). The file is handed to the operating system at each flush (a killed process loses
//! at most the flush in progress) and fsynced on a schedule ([`WalSync`], by default every
//! second, on a thread of its own), so an operating-system crash loses at most that much more.
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

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use apexsim_systems::record::{LapColumns, RecordChunk};
use arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, RecordBatch, UInt8Array, UInt16Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bevy_ecs::entity::Entity;
use uuid::Uuid;

use super::index::{Index, SessionRow};
use super::lock::{self, Lock, Owner};
use super::{ArchiveError, Date, LapMeta, Source};

/// Schema metadata key holding the session's identity as JSON.
const SESSION_KEY: &str = "apexsim.wal.session";

/// Largest message header (flatbuffer) a write-ahead file may hold; ours are a few KiB.
const MAX_META_LEN: usize = 1 << 20;

/// Bit of `closed_flags`: the lap ran from line to line.
const CLOSED_COMPLETE: u8 = 1;
/// Bit of `closed_flags`: the lap was valid.
const CLOSED_VALID: u8 = 2;

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
    /// At this interval, on a thread of its own.
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

/// Syncs the file on a schedule until stopped.
struct Syncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(file: File, every: Duration, syncs: Arc<AtomicU64>) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("apexsim-wal-sync".into())
            .spawn(move || {
                let (lock, cvar) = &*flag;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    match cvar.wait_timeout(stopped, every) {
                        Ok((guard, _)) => stopped = guard,
                        Err(_) => return,
                    }
                    if !*stopped {
                        match file.sync_data() {
                            Ok(()) => {
                                syncs.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => tracing::error!(error = %e, "write-ahead fsync failed"),
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Ok(mut stopped) = self.stop.0.lock() {
            *stopped = true;
            self.stop.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An open, locked write-ahead file.
pub struct Wal {
    writer: StreamWriter<File>,
    schema: Arc<Schema>,
    path: PathBuf,
    sync: WalSync,
    syncs: Arc<AtomicU64>,
    syncer: Option<Syncer>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("path", &self.path).finish()
    }
}

fn wal_schema(session: &WalSession) -> Result<Schema, ArchiveError> {
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

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Wal {
    /// Creates and locks the session's write-ahead file (its schema header is written at
    /// once) and, for [`WalSync::Every`], starts its sync thread.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the file cannot be created, and [`ArchiveError::SessionBusy`]
    /// when the session already has a write-ahead file (another process is writing it, or it
    /// waits for recovery).
    pub fn create(data: &Path, session: &WalSession, sync: WalSync) -> Result<Self, ArchiveError> {
        let path = wal_path(data, session.session);
        let dir = path.parent().unwrap_or(data);
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let tmp = dir.join(format!(
            "{}.{}.tmp",
            session.session.simple(),
            Uuid::new_v4().simple()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let created = (|| {
            if let Lock::Busy = lock::try_lock(&file).map_err(io_at(&tmp))? {
                return Err(io_at(&tmp)(std::io::Error::other(
                    "a new file is locked by someone else",
                )));
            }
            let schema = Arc::new(wal_schema(session)?);
            let mut writer =
                StreamWriter::try_new(file.try_clone().map_err(io_at(&tmp))?, &schema)?;
            writer.flush()?;
            // Linking fails if the final name exists: never two writers of one session.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok((writer, schema)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ArchiveError::SessionBusy {
                        session: session.session,
                        path: path.clone(),
                    })
                }
                // A file system without hard links: rename, after a check (not atomic, but the
                // session ids of races and live sessions are random).
                Err(_) if !path.exists() => match fs::rename(&tmp, &path) {
                    Ok(()) => Ok((writer, schema)),
                    Err(e) => Err(io_at(&path)(e)),
                },
                Err(_) => Err(ArchiveError::SessionBusy {
                    session: session.session,
                    path: path.clone(),
                }),
            }
        })();
        let _ = fs::remove_file(&tmp);
        let (writer, schema) = created?;
        let syncs = Arc::new(AtomicU64::new(0));
        let syncer = match sync {
            WalSync::Every(every) => Some(
                Syncer::start(
                    file.try_clone().map_err(io_at(&path))?,
                    every,
                    Arc::clone(&syncs),
                )
                .map_err(io_at(&path))?,
            ),
            WalSync::Off | WalSync::EveryFlush => None,
        };
        Ok(Self {
            writer,
            schema,
            path,
            sync,
            syncs,
            syncer,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the file was fsynced so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Appends a chunk's rows and the laps it closed as one batch and hands them to the
    /// operating system (they survive the process being killed). `car_index` maps a car
    /// entity to its index in the session.
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn append(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
    ) -> Result<(), ArchiveError> {
        let closures: Vec<LapClosure> = chunk
            .closed
            .iter()
            .map(|c| LapClosure {
                car: car_index(c.car),
                row_lap: c.lap,
                lap: c.lap,
                complete: c.complete,
                valid: c.valid,
                lap_time_s: c.lap_time_s,
            })
            .collect();
        self.write_batch(chunk, car_index, &closures)
    }

    /// Appends a chunk's rows only, not the laps it closed.
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn append_rows(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
    ) -> Result<(), ArchiveError> {
        self.write_batch(chunk, car_index, &[])
    }

    /// Records laps that closed (for feeds whose lap times are known after their rows).
    ///
    /// # Errors
    /// [`ArchiveError`] when the write fails.
    pub fn close_laps(&mut self, closures: &[LapClosure]) -> Result<(), ArchiveError> {
        self.write_batch(&RecordChunk::default(), |_| 0, closures)
    }

    fn write_batch(
        &mut self,
        chunk: &RecordChunk,
        car_index: impl Fn(Entity) -> u8,
        closures: &[LapClosure],
    ) -> Result<(), ArchiveError> {
        if chunk.is_empty() && closures.is_empty() {
            return Ok(());
        }
        let k = closures.len();
        let n = chunk.len();
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(UInt8Array::from_iter_values(
                chunk
                    .car
                    .iter()
                    .map(|&e| car_index(e))
                    .chain(closures.iter().map(|c| c.car)),
            )),
            Arc::new(UInt16Array::from_iter_values(
                chunk
                    .lap
                    .iter()
                    .copied()
                    .chain(closures.iter().map(|c| c.row_lap)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                chunk
                    .columns
                    .tick
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, k)),
            )),
        ];
        arrays.extend(chunk.columns.f32_columns().into_iter().map(|v| {
            Arc::new(Float32Array::from_iter_values(
                v.iter().copied().chain(std::iter::repeat_n(f32::NAN, k)),
            )) as ArrayRef
        }));
        arrays.push(Arc::new(UInt16Array::from_iter(
            std::iter::repeat_n(None, n).chain(closures.iter().map(|c| Some(c.lap))),
        )));
        arrays.push(Arc::new(Float64Array::from_iter(
            std::iter::repeat_n(None, n).chain(closures.iter().map(|c| c.lap_time_s)),
        )));
        arrays.push(Arc::new(UInt8Array::from_iter(
            std::iter::repeat_n(None, n).chain(closures.iter().map(|c| {
                Some(u8::from(c.complete) * CLOSED_COMPLETE + u8::from(c.valid) * CLOSED_VALID)
            })),
        )));
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        self.writer.flush()?;
        if self.sync == WalSync::EveryFlush {
            self.writer
                .get_ref()
                .sync_data()
                .map_err(io_at(&self.path))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes the file: every lap of the session is archived. The lock is held until the
    /// file is gone.
    ///
    /// # Errors
    /// [`ArchiveError`] when the file cannot be removed.
    pub fn remove(mut self) -> Result<(), ArchiveError> {
        self.syncer = None;
        fs::remove_file(&self.path).map_err(io_at(&self.path))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Kept for recovery: make what it holds durable before the lock goes.
        if self.syncer.take().is_some() || self.sync == WalSync::EveryFlush {
            let _ = self.writer.get_ref().sync_data();
        }
    }
}

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct RecoveryReport {
    /// Write-ahead files recovered (their owner was gone).
    pub files: usize,
    /// Write-ahead files left alone because a live process holds them.
    pub live: usize,
    /// Laps written from them (closed laps complete, the rest partial).
    pub laps: usize,
    /// Of those, laps that had closed and were restored complete.
    pub closed_laps: usize,
    /// Rows in those laps.
    pub rows: usize,
    /// Batches lost to a torn tail (0 or 1 per file).
    pub torn_tails: usize,
    /// Files moved to `wal/quarantine/`, with why.
    pub quarantined: Vec<String>,
    /// Files that could not be recovered now (the archive could not be written); they stay.
    pub errors: Vec<String>,
}

/// Recovers every write-ahead file under `data` whose owner is gone into archived laps and
/// removes it; files held by a live process are left alone. A corrupt or foreign file is
/// moved to `wal/quarantine/`; a file whose laps cannot be written now stays for the next
/// attempt. Neither stops the others.
///
/// # Errors
/// [`ArchiveError`] when no owner lock can be taken for the temporary files.
pub fn recover(data: &Path, index: &Index) -> Result<RecoveryReport, ArchiveError> {
    let mut report = RecoveryReport::default();
    let dir = data.join("wal");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(report);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "arrows"))
        .collect();
    if files.is_empty() {
        return Ok(report);
    }
    files.sort();
    let owner = Owner::acquire(data)?;
    for path in files {
        let Ok(file) = File::open(&path) else {
            continue; // recovered by someone else meanwhile
        };
        match lock::try_lock(&file) {
            Ok(Lock::Taken) if lock::still_linked(&file) => {}
            Ok(Lock::Taken) => continue,
            Ok(Lock::Busy) => {
                report.live += 1;
                continue;
            }
            Err(e) => {
                report.errors.push(format!("{}: lock: {e}", path.display()));
                continue;
            }
        }
        match read_wal(&file) {
            Ok(wal) => match archive_wal(data, index, &owner, wal, &mut report) {
                Ok(()) => {
                    report.files += 1;
                    if let Err(e) = fs::remove_file(&path) {
                        report.errors.push(format!("{}: {e}", path.display()));
                    }
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "write-ahead file not recovered; it stays for the next attempt");
                    report.errors.push(e.to_string());
                }
            },
            Err(problem) => {
                tracing::error!(file = %path.display(), %problem, "write-ahead file quarantined");
                match quarantine(&path, &problem) {
                    Ok(to) => report
                        .quarantined
                        .push(format!("{}: {problem}", to.display())),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        drop(file);
    }
    Ok(report)
}

/// Moves a write-ahead file to `wal/quarantine/` with a `.reason` file beside it.
fn quarantine(path: &Path, problem: &str) -> Result<PathBuf, ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new(".")).join("quarantine");
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let name = path.file_name().unwrap_or_default();
    let to = dir.join(name);
    fs::rename(path, &to).map_err(io_at(&to))?;
    let mut reason = to.as_os_str().to_owned();
    reason.push(".reason");
    let _ = fs::write(PathBuf::from(reason), format!("{problem}\n"));
    Ok(to)
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
pub fn read_wal(file: &File) -> Result<WalContents, String> {
    let mut f = file;
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let (whole, torn) = scan_framing(&mut BufReader::new(f), len)?;
    if whole == 0 {
        return Err(if len == 0 {
            "empty file (no Arrow IPC header)".into()
        } else {
            "not an Arrow IPC stream: no complete schema message".into()
        });
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let reader = BufReader::new(f.take(whole));
    // The framing is sound; Arrow validates the arrays. A panic inside the decoder on a
    // hostile file is still caught and reported as the file's problem.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(reader)));
    let mut contents =
        decoded.map_err(|_| "the Arrow IPC reader failed on this file".to_owned())??;
    contents.torn_tail |= torn;
    Ok(contents)
}

/// Walks the IPC stream's messages (continuation, length, flatbuffer header, body) and returns
/// the length of the prefix made of whole messages, and whether something followed it.
fn scan_framing(r: &mut impl Read, len: u64) -> Result<(u64, bool), String> {
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
                return Err(format!(
                    "not an Arrow IPC stream: first message header of {meta_len} bytes"
                ));
            }
            return Err(format!(
                "message at byte {at} has a header of {meta_len} bytes"
            ));
        }
        if at + header + meta_len as u64 > len {
            return Ok((at, true));
        }
        let mut meta = vec![0u8; meta_len];
        if !read_full(r, &mut meta)? {
            return Ok((at, true));
        }
        let message = arrow::ipc::root_as_message(&meta)
            .map_err(|e| format!("message at byte {at}: not an Arrow IPC message header ({e})"))?;
        let body = u64::try_from(message.bodyLength())
            .map_err(|_| format!("message at byte {at}: negative body length"))?;
        if let Some(batch) = message.header_as_record_batch() {
            if batch.compression().is_some() {
                return Err(format!(
                    "message at byte {at}: compressed bodies are not written by ApexSim"
                ));
            }
            // Every row holds at least the 8-byte tick: more rows than that is a lie.
            let rows = u64::try_from(batch.length()).unwrap_or(u64::MAX);
            if rows > body / 8 + 1 {
                return Err(format!(
                    "message at byte {at}: {} rows in a body of {body} bytes",
                    batch.length()
                ));
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
                return Err(format!(
                    "message at byte {at}: a column or buffer lies outside its batch"
                ));
            }
        } else if message.header_as_dictionary_batch().is_some() {
            return Err(format!(
                "message at byte {at}: dictionaries are not written by ApexSim"
            ));
        } else if at > 0 {
            return Err(format!("message at byte {at}: a second schema"));
        }
        let end = at + header + meta_len as u64 + body;
        if end > len {
            return Ok((at, true));
        }
        std::io::copy(&mut r.take(body), &mut std::io::sink()).map_err(|e| e.to_string())?;
        at = end;
    }
}

/// Fills `buf`; `false` at a clean or torn end of the input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(true)
}

fn decode(reader: impl Read) -> Result<WalContents, String> {
    let reader =
        StreamReader::try_new(reader, None).map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
    let session: WalSession = reader
        .schema()
        .metadata()
        .get(SESSION_KEY)
        .ok_or("not an ApexSim write-ahead file: no session metadata")
        .and_then(|j| {
            serde_json::from_str(j)
                .map_err(|_| "not an ApexSim write-ahead file: bad session metadata")
        })?;
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

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, ty: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .ok_or(format!("no column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or(format!("{name} is not {ty}"))
}

fn append_rows(batch: &RecordBatch, out: &mut WalContents) -> Result<(), String> {
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

/// Archives what a write-ahead file holds: each lap not yet indexed, complete if it closed.
fn archive_wal(
    data: &Path,
    index: &Index,
    owner: &Owner,
    wal: WalContents,
    report: &mut RecoveryReport,
) -> Result<(), ArchiveError> {
    let session = wal.session;
    if wal.torn_tail {
        report.torn_tails += 1;
    }
    let source = if session.source == "iracing" {
        Source::Iracing
    } else {
        Source::Sim
    };
    index.ensure_session(&SessionRow {
        id: session.session,
        source: session.source.clone(),
        track: session.track.clone(),
        car_model: session.car_model.clone(),
        lap_limit: None,
        seed: None,
        started_at: session.started_at,
        finished_at: None,
        sectors: Vec::new(),
    })?;
    let date = Date::parse(&session.date).unwrap_or_else(Date::today);
    for ((car, row_lap), columns) in wal.laps {
        let closure = wal.closed.get(&(car, row_lap));
        let lap = closure.map_or(row_lap, |c| c.lap);
        if index.has_lap(session.session, car, lap)? {
            continue; // archived before the stop
        }
        let meta = LapMeta {
            source,
            session: session.session,
            car,
            car_model: session.car_model.clone(),
            driver: session
                .drivers
                .get(usize::from(car))
                .cloned()
                .unwrap_or_default(),
            track: session.track.clone(),
            track_length_m: session.track_length_m,
            lap,
            lap_time_s: closure.and_then(|c| c.lap_time_s),
            complete: closure.is_some_and(|c| c.complete),
            valid: closure.is_some_and(|c| c.valid),
            date,
        };
        // A complete file of this lap is already in place (written, not yet indexed): index
        // it as it is, never overwrite it.
        let path = super::lap_path(data, &meta);
        if let Ok((existing, rows)) = super::read_lap_meta(&path)
            && existing.complete
        {
            index.put_lap(&existing, path.strip_prefix(data).unwrap_or(&path), rows)?;
            continue;
        }
        let rows = columns.len();
        let file = super::write_lap_as(data, owner, &meta, columns)?;
        index.put_lap(&meta, file.strip_prefix(data).unwrap_or(&file), rows)?;
        report.laps += 1;
        report.closed_laps += usize::from(meta.complete);
        report.rows += rows;
    }
    Ok(())
}

/// [`recover`], with what it did logged: recovered files as a warning, quarantined files and
/// files that could not be recovered as errors.
///
/// # Errors
/// As [`recover`].
pub fn recover_logged(data: &Path, index: &Index) -> Result<RecoveryReport, ArchiveError> {
    let report = recover(data, index)?;
    if report.files > 0 {
        tracing::warn!(
            files = report.files,
            laps = report.laps,
            closed_laps = report.closed_laps,
            torn_tails = report.torn_tails,
            "recovered write-ahead files of processes that are gone"
        );
    }
    for q in &report.quarantined {
        tracing::error!("quarantined write-ahead file {q}");
    }
    for e in &report.errors {
        tracing::error!("write-ahead file not recovered: {e}");
    }
    Ok(report)
}
