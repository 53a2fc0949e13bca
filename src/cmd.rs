//! The commands of the `apexsim` binary, one module each (its arguments, how it runs, what it
//! prints), and what they share: the command's [`Context`], usage errors, thresholds.

pub mod analyze;
pub mod api;
pub mod archive;
pub mod board;
pub mod coach;
pub mod compare;
pub mod content;
pub mod drive;
pub mod ingest;
pub mod print;
pub mod race;
pub mod relay;
pub mod serve;
pub mod simulate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::archive::wal::WalSync;
use apexsim::archive::writer::WriterReport;
use apexsim::content::Content;

/// An error that is the user's: bad arguments or content (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What every command runs with: the global arguments, and the process's one async runtime,
/// built the first time a command needs it.
pub struct Context {
    /// The content directory.
    pub content_dir: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// When writing sessions fsync their write-ahead files.
    pub wal_sync: WalSync,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl Context {
    /// A context; no runtime yet.
    pub fn new(content_dir: PathBuf, data: PathBuf, wal_sync: WalSync) -> Self {
        Self {
            content_dir,
            data,
            wal_sync,
            runtime: OnceLock::new(),
        }
    }

    /// The process's async runtime: one worker per core this process may run on (its CPU
    /// affinity counts, so a server pinned to one core with `taskset` runs one worker rather
    /// than two taking turns on it).
    ///
    /// # Errors
    /// The runtime cannot be started.
    pub fn runtime(&self) -> anyhow::Result<&tokio::runtime::Handle> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt.handle());
        }
        let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .thread_name("apexsim-async")
            .build()
            .context("starting the async runtime")?;
        Ok(self.runtime.get_or_init(|| rt).handle())
    }

    /// The content, each problem passed to `warn` (the good files load all the same).
    pub fn content_loaded(&self, warn: impl Fn(&str)) -> Content {
        let report = Content::load(&self.content_dir);
        for e in &report.errors {
            warn(&e.to_string());
        }
        report.content
    }

    /// The content, problems logged as warnings.
    pub fn content_logged(&self) -> Content {
        self.content_loaded(|e| tracing::warn!("content: {e}"))
    }

    /// Shuts the runtime down (tasks still running get a second).
    pub fn finish(self) {
        if let Some(rt) = self.runtime.into_inner() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The content directory: `--content`, else `content/` in the working directory, else the
/// content shipped with the source.
pub fn content_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        let local = PathBuf::from("content");
        if local.is_dir() {
            local
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("content")
        }
    })
}

/// A command fails when its archive writes did: how many, and the first.
///
/// # Errors
/// When `report` holds errors.
pub fn archive_errors(report: &WriterReport) -> anyhow::Result<()> {
    match report.errors.first() {
        Some(first) => anyhow::bail!(
            "{} archive write(s) failed; first: {first}",
            report.errors.len()
        ),
        None => Ok(()),
    }
}

/// A duration like `30s`, `5m` or `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))
}

/// The thresholds of `analyze` and `compare`: `--thresholds FILE`, else the archive's
/// `thresholds.toml`, else the defaults; then each `--set`. A bad one is a usage error.
///
/// # Errors
/// A usage error naming the bad file or setting.
pub fn thresholds(
    file: Option<&Path>,
    sets: &[String],
    archive: &Path,
) -> anyhow::Result<apexsim::analysis::Thresholds> {
    match file {
        Some(file) => apexsim::analysis::Thresholds::from_file(file),
        None => apexsim::analysis::store::archive_thresholds(archive),
    }
    .and_then(|t| t.with_overrides(sets))
    .map_err(|e| UsageError(e.to_string()).into())
}
