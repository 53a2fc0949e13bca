//! Operating-system file locks that let many `apexsim` processes share one data directory.
//!
//! Two kinds of lock, both exclusive advisory locks taken with the standard library's
//! [`File::try_lock`] (`flock` on Unix, `LockFileEx` on Windows), released by the operating
//! system when the process ends however it ends:
//!
//! - a writing session holds the lock of its write-ahead file for its whole life, so recovery
//!   and prune can tell a live session (the lock is taken) from one whose process is gone;
//! - every process that writes lap files holds an [`Owner`] lock, `<data>/run/<id>.lock`, and
//!   names its temporary files after that id, so the temporary files of writers that are gone
//!   can be told from those of writers still at work, and removed.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::ArchiveError;

/// Whether another process (or another handle in this one) holds the lock of `file`.
pub(crate) enum Lock {
    /// This handle holds the lock now.
    Taken,
    /// Someone else holds it.
    Busy,
}

/// Tries to take the exclusive lock of `file` without waiting.
///
/// # Errors
/// The I/O error when the lock cannot be asked for at all.
pub(crate) fn try_lock(file: &File) -> io::Result<Lock> {
    match file.try_lock() {
        Ok(()) => Ok(Lock::Taken),
        Err(TryLockError::WouldBlock) => Ok(Lock::Busy),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Whether the file at `path` exists and its lock is held by someone.
pub(crate) fn is_locked(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(try_lock(&f), Ok(Lock::Busy)),
        Err(_) => false,
    }
}

/// Whether `file`, locked by us, is still the file at its path: another recoverer may have
/// removed it between our `open` and our lock.
pub(crate) fn still_linked(file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        file.metadata().is_ok_and(|m| m.nlink() > 0)
    }
    #[cfg(not(unix))]
    {
        // Elsewhere an open file cannot be removed.
        let _ = file;
        true
    }
}

/// The lock a process holds while it may leave temporary files in the archive. Dropping it
/// removes the lock file.
#[derive(Debug)]
pub struct Owner {
    id: Uuid,
    path: PathBuf,
    _file: File,
}

fn run_dir(data: &Path) -> PathBuf {
    data.join("run")
}

impl Owner {
    /// Creates and locks `<data>/run/<id>.lock` with a fresh id.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the file cannot be created or locked.
    pub fn acquire(data: &Path) -> Result<Self, ArchiveError> {
        let dir = run_dir(data);
        fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        let id = Uuid::new_v4();
        let path = dir.join(format!("{}.lock", id.simple()));
        // Created under another name and renamed once locked, so that no cleaner ever sees
        // an unlocked lock file of a live owner.
        let new = dir.join(format!("{}.creating", id.simple()));
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| ArchiveError::Io { path: p, source }
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&new)
            .map_err(io(&new))?;
        if let Lock::Busy = try_lock(&file).map_err(io(&new))? {
            return Err(io(&new)(io::Error::other("a fresh lock file is locked")));
        }
        fs::rename(&new, &path).map_err(io(&path))?;
        Ok(Self {
            id,
            path,
            _file: file,
        })
    }

    /// The owner's id, as it appears in its temporary file names.
    pub fn id(&self) -> String {
        self.id.simple().to_string()
    }

    /// The temporary name of `path` for this owner: `<path>.<owner>.tmp`.
    pub fn tmp_path(&self, path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.tmp", self.id()));
        PathBuf::from(name)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether the owner named in a temporary file's name is gone (its lock file is missing or
/// can be locked). Names without an owner are the previous format's: gone.
fn owner_gone(data: &Path, tmp: &Path) -> bool {
    let name = tmp.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let owner = name
        .strip_suffix(".tmp")
        .and_then(|s| s.rsplit_once('.'))
        .map(|(_, id)| id)
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    match owner {
        Some(id) => !is_locked(&run_dir(data).join(format!("{id}.lock"))),
        None => true,
    }
}

/// What [`clean_stray`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cleaned {
    /// Temporary files of writers that are gone.
    pub tmp_files: usize,
    /// Lock files of processes that are gone.
    pub lock_files: usize,
}

/// How old an unlocked temporary write-ahead file must be to be taken for a leftover.
const STALE_WAL_TMP: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files (`*.tmp`) under `laps/` and `wal/` whose writer is gone, and the
/// lock files under `run/` of processes that are gone. Files of live writers are left alone.
pub fn clean_stray(data: &Path) -> Cleaned {
    let mut cleaned = Cleaned::default();
    // A write-ahead file is created under a temporary name, locked at once and linked under
    // its final name once its header is written: one that is unlocked and a minute old
    // belongs to a process that is gone.
    if let Ok(entries) = fs::read_dir(data.join("wal")) {
        for p in entries.flatten().map(|e| e.path()) {
            let stale = p.extension().is_some_and(|x| x == "tmp")
                && fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_WAL_TMP));
            if stale
                && File::open(&p).is_ok_and(|f| matches!(try_lock(&f), Ok(Lock::Taken)))
                && fs::remove_file(&p).is_ok()
            {
                cleaned.tmp_files += 1;
            }
        }
    }
    let mut stack = vec![data.join("laps")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "tmp")
                && owner_gone(data, &p)
                && fs::remove_file(&p).is_ok()
            {
                tracing::info!(file = %p.display(), "removed a temporary file of a writer that is gone");
                cleaned.tmp_files += 1;
            }
        }
    }
    if let Ok(entries) = fs::read_dir(run_dir(data)) {
        for p in entries.flatten().map(|e| e.path()) {
            if p.extension().is_none_or(|x| x != "lock") {
                continue;
            }
            let Ok(f) = File::open(&p) else { continue };
            // Locked by us now: the process is gone. Remove it while we hold it.
            if matches!(try_lock(&f), Ok(Lock::Taken)) && fs::remove_file(&p).is_ok() {
                cleaned.lock_files += 1;
            }
        }
    }
    cleaned
}
