//! `apexsim live`: live telemetry comes from iRacing's shared memory, which exists only on
//! Windows while iRacing runs. Elsewhere the command says so and points to `apexsim ingest`.

use std::path::Path;

use thiserror::Error;

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
    /// Windows, but live ingest is not built yet.
    #[error(
        "live ingest on Windows is not available in this version; record .ibt files in iRacing \
         and archive them with `apexsim ingest <file-or-folder>`"
    )]
    NotYet,
}

/// Runs live ingest into the archive under `data`.
///
/// # Errors
/// [`LiveError`] saying why live telemetry cannot be read here.
pub fn run(_data: &Path, _keep_driver_names: bool) -> Result<(), LiveError> {
    if cfg!(windows) {
        Err(LiveError::NotYet)
    } else {
        Err(LiveError::Unsupported {
            os: std::env::consts::OS,
        })
    }
}
