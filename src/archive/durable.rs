//! Writing a lap file durably: encoded beside its final name, fsynced, renamed into place and
//! the directory synced, so a reader never sees a half-written file.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use apexsim_systems::record::LapColumns;
use arrow::array::RecordBatch;

use super::encode::*;
use super::format::*;
use super::{ArchiveError, LapMeta};

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a lap into the archive under `data` and returns its path: [`stage_lap`] writes
/// `<name>.tmp` beside the final name, [`StagedLap::commit`] syncs it and renames it into
/// place; an existing file of the same lap is replaced atomically.
///
/// # Errors
/// [`ArchiveError`] when the directory or file cannot be created, written, synced or renamed.
/// No half-written file is left under the final name.
pub fn write_lap(
    data: &Path,
    meta: &LapMeta,
    columns: LapColumns,
) -> Result<PathBuf, ArchiveError> {
    let owner = super::lock::Owner::acquire(data)?;
    write_lap_as(data, &owner, meta, columns)
}

/// [`write_lap`] for a process that already holds an [`Owner`](super::lock::Owner) lock.
///
/// # Errors
/// As [`write_lap`].
pub fn write_lap_as(
    data: &Path,
    owner: &super::lock::Owner,
    meta: &LapMeta,
    columns: LapColumns,
) -> Result<PathBuf, ArchiveError> {
    let rows = columns.len();
    let batch = lap_batch(meta, columns)?;
    stage_lap(data, owner, meta, &batch, rows)?.commit()
}

/// A lap file encoded and written beside its final name, not yet synced or renamed: the
/// archive writer encodes the next lap while this one waits for the disk.
#[derive(Debug)]
pub struct StagedLap {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

/// Encodes `batch` and writes it to `<final name>.<owner>.tmp` (creating the partition
/// directories): the temporary name is the writer's own, so two writers never share one, and
/// the file of a writer that is gone can be recognised and removed
/// ([`super::lock::clean_stray`]).
///
/// # Errors
/// [`ArchiveError`] when a directory or the file cannot be created or written; the temporary
/// file is removed then.
pub fn stage_lap(
    data: &Path,
    owner: &super::lock::Owner,
    meta: &LapMeta,
    batch: &RecordBatch,
    rows: usize,
) -> Result<StagedLap, ArchiveError> {
    let path = lap_path(data, meta);
    let dir = path.parent().unwrap_or(data);
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = owner.tmp_path(&path);
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    match encode_parquet(file, batch, key_values(meta, rows)) {
        Ok(file) => Ok(StagedLap { file, tmp, path }),
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            Err(ArchiveError::Parquet { path: tmp, source })
        }
    }
}

impl StagedLap {
    /// Syncs the file, renames it into place and syncs the directory; returns the final path.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the sync or the rename fails; the temporary file is removed.
    pub fn commit(self) -> Result<PathBuf, ArchiveError> {
        let path = self.sync_and_rename()?;
        if let Some(dir) = path.parent() {
            sync_dir(dir);
        }
        Ok(path)
    }

    /// Syncs the file and renames it into place; the rename is durable once the directory is
    /// synced ([`sync_dir`]), which a writer committing several laps does once for all.
    ///
    /// # Errors
    /// [`ArchiveError::Io`] when the sync or the rename fails; the temporary file is removed.
    pub fn sync_and_rename(self) -> Result<PathBuf, ArchiveError> {
        let Self { file, tmp, path } = self;
        let result = file
            .sync_all()
            .map_err(io_err(&tmp))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err(&path)));
        drop(file);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(path)
    }
}

/// Syncs a directory, making the renames into it durable (best effort: not every file system
/// lets a directory be synced).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
