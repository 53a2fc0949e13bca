//! `server.toml` (seed 003 section 5, adapted to one QUIC port): every key has a default, so
//! the server runs with no file at all. `APEXSIM_<SECTION>_<KEY>` environment variables
//! override the file (`APEXSIM_SERVER_MAX_SESSIONS=16`, `APEXSIM_NETWORK_BIND=0.0.0.0:9100`,
//! `APEXSIM_AUTH_TOKENS='["a", "b"]'`); the command line overrides both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `[server]`
    pub server: ServerSection,
    /// `[network]`
    pub network: NetworkSection,
    /// `[logging]`
    pub logging: LoggingSection,
    /// `[auth]`
    pub auth: AuthSection,
    /// `[content]`
    pub content: ContentSection,
    /// `[admin]`
    pub admin: AdminSection,
    /// `[api]`
    pub api: ApiSection,
    /// `[redis]`
    pub redis: RedisSection,
    /// `[agones]`
    pub agones: AgonesSection,
}

/// `[server]`: sessions and limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Simulation rate; only 240 is supported (the physics is tuned for it).
    pub tick_rate_hz: u32,
    /// Sessions that may exist at once (lobby, racing or finished but not yet cleaned up).
    pub max_sessions: usize,
    /// Connections that may be open at once.
    pub max_connections: usize,
    /// Seconds a finished session stays listed before it is removed.
    pub session_timeout_seconds: u64,
    /// Accept [`crate::net::protocol::ClientMessage::InjectFault`] (chaos drills and tests).
    pub fault_injection: bool,
    /// How long a shutdown waits for racing sessions to finish their current lap, in seconds.
    pub drain_seconds: f64,
    /// Racing Coach server every complete lap of every race is uploaded to, with its metrics
    /// (the device token from `apexsim coach login` on this machine is sent).
    pub upload_url: Option<String>,
    /// Whether invalid laps are uploaded too; by default they are recorded in the outbox as
    /// skipped.
    pub upload_invalid_laps: bool,
    /// Whether the server runs sessions by itself from the templates (seed 003 section 9):
    /// the rotation's open session and the scheduled templates' sessions.
    pub run_templates: bool,
    /// Seconds a countdown session stays open to joiners before it may start.
    pub lobby_window_seconds: u64,
    /// Seed of the rotation's picks and the AI's paces; random when left out.
    pub seed: Option<u64>,
    /// Hours the laps of finished sessions are kept; left out, they are kept for ever. The
    /// sessions' summaries and results stay in the index.
    pub retention_hours: Option<u64>,
    /// When the retention runs: a cron expression in UTC (a sixth, leading field counts
    /// seconds).
    pub retention_schedule: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            tick_rate_hz: 240,
            max_sessions: 8,
            max_connections: 128,
            session_timeout_seconds: 300,
            fault_injection: false,
            drain_seconds: 8.0,
            upload_url: None,
            upload_invalid_laps: false,
            run_templates: true,
            lobby_window_seconds: 60,
            seed: None,
            retention_hours: None,
            retention_schedule: "17 * * * *".into(),
        }
    }
}

/// `[network]`: the QUIC port, the HTTP port and the certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// QUIC (UDP) address.
    pub bind: SocketAddr,
    /// HTTP address for `/health`, `/ready` and `/metrics`.
    pub http_bind: SocketAddr,
    /// PEM certificate; with `tls_key_path`, replaces the self-signed one in `<data>/certs/`.
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key.
    pub tls_key_path: Option<PathBuf>,
    /// How often clients should send a heartbeat, in ms (told to operators; clients send 1 s).
    pub heartbeat_interval_ms: u64,
    /// Silence after which a connection is closed, in ms.
    pub heartbeat_timeout_ms: u64,
    /// Control messages accepted per second per connection.
    pub control_rate_per_s: u32,
    /// Datagrams accepted per second per connection.
    pub datagram_rate_per_s: u32,
    /// Malformed, oversized or rate-limited packets within 60 s that close a connection.
    pub violations_per_minute: u32,
    /// Age at which the browsers' WebTransport certificate (self-signed, valid 13 days) is
    /// replaced by a new one, in seconds; connections open on the old one stay up.
    pub browser_cert_rotate_seconds: u64,
    /// Cars within this distance of a player's car, in metres, go out in its telemetry every
    /// tick (its own always does).
    pub telemetry_full_rate_radius_m: f32,
    /// Ticks between two of a player's datagrams that carry a car farther away (1: every car
    /// every tick; 4: 60 Hz).
    pub telemetry_far_every_ticks: u32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 9000)),
            http_bind: SocketAddr::from(([0, 0, 0, 0], 9002)),
            tls_cert_path: None,
            tls_key_path: None,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            control_rate_per_s: 10,
            datagram_rate_per_s: 300,
            violations_per_minute: 10,
            browser_cert_rotate_seconds: 6 * 24 * 3600,
            telemetry_full_rate_radius_m: 15.0,
            telemetry_far_every_ticks: 4,
        }
    }
}

/// `[logging]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    /// `trace`, `debug`, `info`, `warn` or `error` (or a full `RUST_LOG` filter).
    pub level: String,
    /// Human-readable logs on standard error.
    pub console_enabled: bool,
    /// JSON-lines files, rotated daily.
    pub file_enabled: bool,
    /// Directory of the log files; relative to the data directory unless absolute.
    pub dir: PathBuf,
    /// Daily files kept.
    pub file_retention_days: usize,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            console_enabled: true,
            file_enabled: true,
            dir: PathBuf::from("logs"),
            file_retention_days: 7,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Refuse clients whose token is not in `tokens`.
    pub require_token: bool,
    /// Accepted tokens.
    pub tokens: Vec<String>,
}

/// `[content]`: hot reload of the content directory (seed 003 section 10).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentSection {
    /// Watch the content directory and reload what changes.
    pub watch: bool,
    /// Quiet time after the last change before a reload, in ms (editors write in bursts).
    pub debounce_ms: u64,
}

impl Default for ContentSection {
    fn default() -> Self {
        Self {
            watch: true,
            debounce_ms: 300,
        }
    }
}

/// `[admin]`: operators of the admin routes, by name, with their tokens
/// (`[admin.tokens]` `alice = "…"`), sent as `Authorization: Bearer …`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Operator name to token; empty, the admin routes refuse everyone.
    pub tokens: std::collections::BTreeMap<String, String>,
}

/// `[api]`: the REST API's writers (`[api.tokens]` `collector = "…"`), sent as
/// `Authorization: Bearer …` to the routes that write or delete, and how long a posted
/// telemetry session may go without a record before it is finished.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Writer name to token; empty, the writing routes refuse everyone.
    pub tokens: std::collections::BTreeMap<String, String>,
    /// A session of posted telemetry without a record for this many seconds is finished
    /// (within 1..=86400; 300).
    pub session_idle_seconds: f64,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            tokens: Default::default(),
            session_idle_seconds: 300.0,
        }
    }
}

/// `[redis]`: the publisher of lap summaries, session results and host metrics (seed 004);
/// off without a `url`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port/db`; unset, nothing is published.
    pub url: Option<String>,
    /// The list lap summaries are pushed to.
    pub laps_list: String,
    /// The list session results are pushed to.
    pub sessions_list: String,
    /// The list host metrics are pushed to.
    pub host_list: String,
    /// Seconds between two host metrics messages (0: none).
    pub host_every_seconds: f64,
    /// Messages held while Redis is unreachable (the oldest dropped past it).
    pub buffer: usize,
    /// The longest wait between two attempts, seconds (the waits double from 0.1 s, with
    /// jitter).
    pub retry_max_seconds: f64,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            laps_list: "apexsim:laps".into(),
            sessions_list: "apexsim:sessions".into(),
            host_list: "apexsim:host".into(),
            host_every_seconds: 10.0,
            buffer: 10_000,
            retry_max_seconds: 5.0,
        }
    }
}

/// `[agones]`: running under Agones, the game-server orchestrator for Kubernetes (builds with
/// the `agones` feature): `Ready` once the endpoint listens, `Health` pings while the
/// simulation thread ticks, the players and sessions on the GameServer's counters, an
/// allocation's template for the next rotation session, `Shutdown` after the drain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgonesSection {
    /// Whether to talk to the Agones SDK server (its sidecar; `AGONES_SDK_GRPC_HOST` and
    /// `AGONES_SDK_GRPC_PORT` say where, `http://localhost:9357` by default).
    pub enabled: bool,
    /// Milliseconds between two health pings (the fleet's `health.periodSeconds` must be
    /// longer).
    pub health_every_ms: u64,
    /// The GameServer counter that holds the connected players (declared in the fleet's
    /// `counters`; empty: not reported).
    pub players_counter: String,
    /// The GameServer counter that holds the open sessions (empty: not reported).
    pub sessions_counter: String,
    /// The allocation annotation naming the template the next rotation session uses.
    pub template_annotation: String,
}

impl Default for AgonesSection {
    fn default() -> Self {
        Self {
            enabled: false,
            health_every_ms: 2000,
            players_counter: "players".into(),
            sessions_counter: "sessions".into(),
            template_annotation: "apexsim.dev/template".into(),
        }
    }
}

/// Why the configuration is not usable.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file or an override is not valid.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file, or `environment`.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

const SECTIONS: [&str; 9] = [
    "server", "network", "logging", "auth", "content", "admin", "api", "redis", "agones",
];

impl ServerConfig {
    /// Loads `path` (defaults when `None`, or when `path` is `server.toml` and does not exist)
    /// and applies the `APEXSIM_` variables of `env`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or variable and the key that is wrong.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                        origin: p.display().to_string(),
                        message: e.to_string(),
                    })?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_owned()),
        };
        let mut overridden = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("APEXSIM_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                rest.strip_prefix(s)
                    .and_then(|k| k.strip_prefix('_'))
                    .map(|k| (*s, k.to_owned()))
            }) else {
                continue;
            };
            // A TOML value when it parses as one (numbers, booleans, arrays), else a string.
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()));
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                t.insert(key, value);
            }
            overridden.push(name);
        }
        let origin = if overridden.is_empty() {
            origin
        } else {
            format!("{origin} with {}", overridden.join(", "))
        };
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        config
            .validate()
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.server.tick_rate_hz != apexsim_systems::TICK_HZ {
            return Err(format!(
                "server.tick_rate_hz = {}: only {} is supported",
                self.server.tick_rate_hz,
                apexsim_systems::TICK_HZ
            ));
        }
        if self.server.max_sessions == 0 || self.server.max_connections == 0 {
            return Err("server.max_sessions and server.max_connections must be at least 1".into());
        }
        if self.agones.enabled && !cfg!(feature = "agones") {
            return Err(
                "agones.enabled = true, but this apexsim was built without the `agones` feature (cargo build --features agones)".into(),
            );
        }
        if self.agones.health_every_ms == 0 {
            return Err("agones.health_every_ms must be at least 1".into());
        }
        if self.network.heartbeat_timeout_ms < self.network.heartbeat_interval_ms {
            return Err("network.heartbeat_timeout_ms is shorter than the interval".into());
        }
        let validity = super::tls::BROWSER_CERT_VALIDITY.as_secs();
        if !(1..validity).contains(&self.network.browser_cert_rotate_seconds) {
            return Err(format!(
                "network.browser_cert_rotate_seconds = {}: must be within 1..{validity} (the certificate's validity)",
                self.network.browser_cert_rotate_seconds
            ));
        }
        let radius = self.network.telemetry_full_rate_radius_m;
        if !(radius.is_finite() && radius >= 0.0) {
            return Err(format!(
                "network.telemetry_full_rate_radius_m = {radius}: must be a distance of 0 m or more"
            ));
        }
        if !(1..=240).contains(&self.network.telemetry_far_every_ticks) {
            return Err(format!(
                "network.telemetry_far_every_ticks = {}: must be within 1..=240 (at least once a second)",
                self.network.telemetry_far_every_ticks
            ));
        }
        if !(self.server.drain_seconds.is_finite()
            && (0.0..=60.0).contains(&self.server.drain_seconds))
        {
            return Err("server.drain_seconds must be within 0..=60".into());
        }
        if let Some(url) = &self.server.upload_url {
            crate::coach::CoachClient::new(url, None, crate::coach::client::DEFAULT_TIMEOUT)
                .map_err(|e| format!("server.upload_url: {e}"))?;
        }
        if let Err(e) = crate::content::Schedule::parse(&self.server.retention_schedule) {
            return Err(format!("server.retention_schedule: {e}"));
        }
        let r = &self.redis;
        if let Some(url) = &r.url
            && let Err(e) = redis::Client::open(url.as_str())
        {
            return Err(format!("redis.url = {url:?}: {e}"));
        }
        if !(r.host_every_seconds.is_finite() && (0.0..=86_400.0).contains(&r.host_every_seconds)) {
            return Err("redis.host_every_seconds must be within 0..=86400".into());
        }
        if !(1..=10_000_000).contains(&r.buffer) {
            return Err("redis.buffer must be within 1..=10000000".into());
        }
        if !(r.retry_max_seconds.is_finite() && (0.1..=3600.0).contains(&r.retry_max_seconds)) {
            return Err("redis.retry_max_seconds must be within 0.1..=3600".into());
        }
        for (key, list) in [
            ("laps_list", &r.laps_list),
            ("sessions_list", &r.sessions_list),
            ("host_list", &r.host_list),
        ] {
            if list.is_empty() {
                return Err(format!("redis.{key} must not be empty"));
            }
        }
        let idle = self.api.session_idle_seconds;
        if !(idle.is_finite() && (1.0..=86_400.0).contains(&idle)) {
            return Err(format!(
                "api.session_idle_seconds = {idle}: must be within 1..=86400"
            ));
        }
        for (section, tokens) in [("admin", &self.admin.tokens), ("api", &self.api.tokens)] {
            if let Some((name, _)) = tokens.iter().find(|(_, t)| t.len() < 16) {
                return Err(format!(
                    "{section}.tokens.{name}: a token must be at least 16 characters"
                ));
            }
        }
        if self.auth.require_token && self.auth.tokens.iter().all(String::is_empty) {
            return Err("auth.require_token is set but auth.tokens is empty".into());
        }
        Ok(())
    }

    /// Whether `token` is accepted: always when tokens are not required; otherwise it must
    /// equal a configured token, compared in constant time.
    pub fn token_accepted(&self, token: &str) -> bool {
        if !self.auth.require_token {
            return true;
        }
        // Every configured token is compared, so the time does not say which one matched.
        self.auth
            .tokens
            .iter()
            .filter(|t| !t.is_empty())
            .fold(false, |found, t| same_secret(t, token) | found)
    }
}

impl ServerConfig {
    /// The operator whose token `bearer` is, compared in constant time with every configured
    /// token; `None` when it is nobody's.
    pub fn admin_operator(&self, bearer: &str) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.admin.tokens {
            if same_secret(token, bearer) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_file_gives_the_seed_defaults() {
        let c = ServerConfig::load(None, env(&[])).expect("defaults");
        assert_eq!(c.server.max_sessions, 8);
        assert_eq!(c.network.bind.port(), 9000);
        assert_eq!(c.network.http_bind.port(), 9002);
        assert_eq!(c.network.heartbeat_timeout_ms, 5000);
        assert!(!c.auth.require_token);
    }

    #[test]
    fn the_environment_overrides_the_file_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "[server]\nmax_sessions = 4\n[auth]\nrequire_token = true\ntokens = [\"x\"]\n",
        )
        .expect("write");
        let c = ServerConfig::load(
            Some(&path),
            env(&[
                ("APEXSIM_SERVER_MAX_SESSIONS", "16"),
                ("APEXSIM_NETWORK_BIND", "127.0.0.1:9100"),
                ("APEXSIM_AUTH_TOKENS", "[\"a\", \"b\"]"),
                ("HOME", "/root"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.server.max_sessions, 16);
        assert_eq!(c.network.bind, "127.0.0.1:9100".parse().expect("addr"));
        assert!(c.token_accepted("b") && !c.token_accepted("x") && !c.token_accepted(""));

        std::fs::write(&path, "[server]\nmax_sesions = 4\n").expect("write");
        let err = ServerConfig::load(Some(&path), env(&[])).expect_err("typo");
        assert!(err.to_string().contains("max_sesions"), "{err}");
        let err = ServerConfig::load(None, env(&[("APEXSIM_SERVER_TICK_RATE_HZ", "60")]))
            .expect_err("60 Hz");
        assert!(
            err.to_string().contains("APEXSIM_SERVER_TICK_RATE_HZ"),
            "{err}"
        );
    }
}
