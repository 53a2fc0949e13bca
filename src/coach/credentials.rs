//! Device tokens, stored per server in the user's configuration
//! (`$APEXSIM_CONFIG_DIR`, else `$XDG_CONFIG_HOME/apexsim`, else `~/.config/apexsim`), in
//! `credentials.toml` that only the user can read (0600, in a 0700 directory), replaced
//! atomically. And the device authorization flow that obtains them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::api;
use super::client::{CoachClient, CoachError, TokenPoll};

/// The credentials file's name in the configuration directory.
pub const CREDENTIALS_FILE: &str = "credentials.toml";

/// Why reading or writing credentials, or logging in, failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// No configuration directory: neither `APEXSIM_CONFIG_DIR`, `XDG_CONFIG_HOME` nor `HOME`
    /// is set.
    #[error("no configuration directory: set APEXSIM_CONFIG_DIR or HOME")]
    NoConfigDir,
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of credentials.
    #[error("{}: {problem}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The server refused or failed.
    #[error(transparent)]
    Server(#[from] CoachError),
    /// The user did not confirm the code before it expired.
    #[error("the code expired before it was confirmed; run `apexsim coach login` again")]
    Expired,
}

/// One server's device token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCredentials {
    /// The token sent as `X-Device-Token`.
    pub token: String,
    /// The name the device was registered under.
    pub device_name: String,
    /// When it was stored (RFC 3339).
    pub saved_at: String,
}

/// Every stored token, by server URL (without a trailing slash).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    /// Tokens by server.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerCredentials>,
}

/// The configuration directory.
///
/// # Errors
/// [`CredentialsError::NoConfigDir`].
pub fn config_dir() -> Result<PathBuf, CredentialsError> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("APEXSIM_CONFIG_DIR") {
        return Ok(d);
    }
    if let Some(d) = var("XDG_CONFIG_HOME") {
        return Ok(d.join("apexsim"));
    }
    var("HOME")
        .map(|h| h.join(".config").join("apexsim"))
        .ok_or(CredentialsError::NoConfigDir)
}

/// A server URL as credentials and the outbox key it: trimmed, without a trailing slash.
pub fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

impl Credentials {
    /// The file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CREDENTIALS_FILE)
    }

    /// Reads the credentials in `dir` (none when the file does not exist). A file others can
    /// read is made private again, with a warning.
    ///
    /// # Errors
    /// [`CredentialsError`] when the file cannot be read or parsed.
    pub fn load(dir: &Path) -> Result<Self, CredentialsError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CredentialsError::Io { path, source }),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(m) = std::fs::metadata(&path)
                && m.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(file = %path.display(), "credentials were readable by others; made private");
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            }
        }
        toml::from_str(&text).map_err(|e| CredentialsError::Parse {
            path,
            problem: e.to_string(),
        })
    }

    /// Writes the credentials to `dir`: a private file beside the final one, synced, renamed
    /// into place.
    ///
    /// # Errors
    /// [`CredentialsError::Io`].
    pub fn save(&self, dir: &Path) -> Result<(), CredentialsError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CredentialsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{CREDENTIALS_FILE}.{}", std::process::id()));
        let text = toml::to_string(self).map_err(|e| CredentialsError::Parse {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        {
            use std::io::Write as _;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    /// The token for a server.
    pub fn token(&self, url: &str) -> Option<&str> {
        self.servers
            .get(&normalize_url(url))
            .map(|c| c.token.as_str())
    }

    /// Every token by server, for the uploader.
    pub fn tokens(&self) -> std::collections::HashMap<String, String> {
        self.servers
            .iter()
            .map(|(u, c)| (u.clone(), c.token.clone()))
            .collect()
    }
}

/// The stored device tokens by server, for uploads: none (with a warning) when there is no
/// configuration directory.
///
/// # Errors
/// [`CredentialsError`] when the credentials file cannot be read or parsed.
pub fn stored_tokens() -> Result<std::collections::HashMap<String, String>, CredentialsError> {
    match config_dir() {
        Ok(dir) => Ok(Credentials::load(&dir)?.tokens()),
        Err(e) => {
            tracing::warn!(error = %e, "uploading without a device token");
            Ok(Default::default())
        }
    }
}

/// This machine's name for the device authorization (`apexsim on <hostname>`).
pub fn device_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this computer".into());
    format!("apexsim on {host}")
}

/// The device authorization flow: asks the server for codes, hands them to `show` (the user
/// confirms the user code at the verification URI), then polls at the server's interval
/// (longer on `slow_down`; network errors and 5xx are polled through) until the token comes
/// or the codes expire.
///
/// # Errors
/// [`CredentialsError::Server`] when the server refuses; [`CredentialsError::Expired`].
pub async fn device_login(
    client: &CoachClient,
    device_name: &str,
    show: impl FnOnce(&api::DeviceAuthorizationResponse),
) -> Result<api::DeviceTokenResponse, CredentialsError> {
    let auth = client.authorize_device(device_name).await?;
    show(&auth);
    let mut interval = Duration::from_secs(auth.interval.clamp(1, 60) as u64);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(auth.expires_in.clamp(1, 3600) as u64);
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(CredentialsError::Expired);
        }
        match client.poll_device_token(&auth.device_code).await {
            Ok(TokenPoll::Granted(token)) => return Ok(token),
            Ok(TokenPoll::Pending) => {}
            Ok(TokenPoll::SlowDown) => interval += Duration::from_secs(5),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "polling for the device token; trying again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_privately() -> Result<(), CredentialsError> {
        let dir = tempfile::tempdir().map_err(|source| CredentialsError::Io {
            path: PathBuf::new(),
            source,
        })?;
        let dir = dir.path().join("cfg");
        assert_eq!(Credentials::load(&dir)?, Credentials::default());
        let mut c = Credentials::default();
        c.servers.insert(
            normalize_url("http://coach.local:8000/"),
            ServerCredentials {
                token: "secret".into(),
                device_name: "dev".into(),
                saved_at: "2026-01-01T00:00:00Z".into(),
            },
        );
        c.save(&dir)?;
        assert_eq!(
            Credentials::load(&dir)?.token("http://coach.local:8000"),
            Some("secret")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(Credentials::path(&dir))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        Ok(())
    }
}
