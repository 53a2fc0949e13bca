//! `apexsim coach login|logout|status` (this device's Racing Coach account) and `apexsim outbox
//! ls|retry` (the laps waiting for upload), with the upload pipeline `ingest` and `live` run
//! beside them.

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::archive::outbox::{Counts, Entry, Outbox, State, UploadTarget, now_ms};
use apexsim::coach::credentials::{self, Credentials, normalize_url};
use apexsim::coach::{CoachClient, Pipeline, UploadOptions, UploadReport};
use clap::Subcommand;
use serde::Serialize;

use super::print::{Format, emit, emit_json, table};
use super::{Context, UsageError, parse_duration};

/// `apexsim coach ...`
#[derive(Debug, Subcommand)]
pub enum CoachCommand {
    /// Logs this device in: shows a code to confirm in the browser, waits for it, and stores
    /// the device token (readable only by you) for uploads to that server.
    Login {
        /// The Racing Coach server.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The name the device is registered under (default: `apexsim on HOSTNAME`).
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Forgets the token of a server (of every server without `--server`).
    Logout {
        /// The Racing Coach server.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Shows the servers this device is logged in to, each server's health, and the outbox.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `apexsim outbox ...`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Lists the laps waiting for upload or refused, with their last error.
    Ls {
        /// Delivered laps too.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Sends again now: one lap by its outbox id, or every waiting and refused lap.
    Retry {
        /// Outbox id (from `outbox ls`).
        id: Option<i64>,
        /// How long to keep delivering laps that fail again before leaving them in the outbox.
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
        wait: Duration,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// The upload options: the stored device tokens, and `url` (normalised) when the uploader
/// serves one server only. A URL that is not http(s) is a usage error.
fn upload_options(url: Option<&str>) -> anyhow::Result<UploadOptions> {
    if let Some(u) = url {
        CoachClient::new(u, None, apexsim::coach::client::DEFAULT_TIMEOUT)
            .map_err(|e| UsageError(format!("--upload: {e}")))?;
    }
    let tokens = credentials::stored_tokens().context("reading the stored device tokens")?;
    Ok(UploadOptions {
        url: url.map(normalize_url),
        tokens,
        ..UploadOptions::default()
    })
}

/// The upload pipeline of `ingest --upload` and `live --upload`: runs beside the command on
/// its own runtime. Ctrl-C stops the uploads (the lap in flight gets its grace period); with
/// `exit_on_interrupt`, while the command still archives, the process then exits (the archive
/// recovers what was being written, as after any interrupted ingest).
pub struct Upload {
    runtime: tokio::runtime::Handle,
    /// The pipeline: its wiring goes to the archive writer.
    pub pipeline: Pipeline,
    /// The server (normalised), and whether invalid laps go too.
    pub target: UploadTarget,
    archiving: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Upload {
    /// Starts the pipeline for `url` (none without one) on the command's runtime; invalid
    /// laps are sent too with `invalid_laps`.
    ///
    /// # Errors
    /// A usage error for a URL that is not http(s); the outbox cannot be opened.
    pub fn start(
        ctx: &Context,
        url: Option<&str>,
        invalid_laps: bool,
        drain: Duration,
        exit_on_interrupt: bool,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = url else {
            return Ok(None);
        };
        let mut opts = upload_options(Some(url))?;
        opts.invalid_laps = invalid_laps;
        let target = UploadTarget {
            url: normalize_url(url),
            invalid_laps,
        };
        let runtime = ctx.runtime()?.clone();
        let data = ctx.data.clone();
        let pipeline = runtime
            .block_on(async { Pipeline::start(&data, opts, drain, Vec::new()) })
            .context("starting the uploader")?;
        let archiving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stop, done, flag) = (
            pipeline.stop_token(),
            pipeline.done_token(),
            archiving.clone(),
        );
        runtime.spawn(async move {
            apexsim::net::shutdown_signal().await;
            tracing::warn!(
                "interrupted: finishing the upload in flight, the rest stays in the outbox"
            );
            stop.cancel();
            if exit_on_interrupt && flag.load(std::sync::atomic::Ordering::SeqCst) {
                done.cancelled().await;
                std::process::exit(130);
            }
        });
        Ok(Some(Self {
            runtime,
            pipeline,
            target,
            archiving,
        }))
    }

    /// No more laps: delivers what is due within the drain, then reports.
    ///
    /// # Errors
    /// Refused laps.
    pub fn finish(self, format: Format) -> anyhow::Result<()> {
        self.archiving
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let report = self.runtime.block_on(self.pipeline.finish());
        tracing::info!(
            published = report.events.published,
            dropped = report.events.dropped,
            lagged = report.events.lagged,
            handled = report.handled,
            "event bus"
        );
        if let Some(upload) = &report.upload {
            print_upload(upload, 0, format).context("writing the upload report")?;
            upload_outcome(upload, false)?;
        }
        Ok(())
    }
}

/// Refused laps fail the command; laps still waiting fail it only when delivering them was
/// the command's job (`outbox retry`).
fn upload_outcome(r: &UploadReport, all_due: bool) -> anyhow::Result<()> {
    if r.refused > 0 {
        anyhow::bail!(
            "{} lap(s) refused by the server; `apexsim outbox ls` shows why",
            r.refused
        );
    }
    if all_due && r.waiting > 0 {
        anyhow::bail!(
            "{} lap(s) still waiting in the outbox (server unreachable?)",
            r.waiting
        );
    }
    Ok(())
}

/// `apexsim coach login|logout|status`.
/// Runs a coach command.
///
/// # Errors
/// A usage error for a bad server URL; the login's, the credentials file's failures.
pub fn coach(cmd: CoachCommand, ctx: &Context) -> anyhow::Result<()> {
    let data: &Path = &ctx.data;
    let dir = credentials::config_dir()?;
    match cmd {
        CoachCommand::Login {
            server,
            device_name,
        } => {
            let client = CoachClient::new(&server, None, apexsim::coach::client::DEFAULT_TIMEOUT)
                .map_err(|e| UsageError(format!("--server: {e}")))?;
            let name = device_name.unwrap_or_else(credentials::device_name);
            let token = ctx
                .runtime()?
                .block_on(credentials::device_login(&client, &name, |auth| {
                    if let Err(e) = print_device_code(auth) {
                        tracing::warn!(error = %e, "cannot print the code");
                    }
                }))
                .with_context(|| format!("logging in to {}", client.base()))?;
            let mut creds = Credentials::load(&dir)?;
            creds.servers.insert(
                normalize_url(&server),
                credentials::ServerCredentials {
                    token: token.access_token,
                    device_name: token.device_name,
                    saved_at: jiff::Timestamp::now().to_string(),
                },
            );
            creds.save(&dir)?;
            print_logged_in(client.base(), &Credentials::path(&dir))
                .context("writing the result")?;
        }
        CoachCommand::Logout { server } => {
            let mut creds = Credentials::load(&dir)?;
            let removed = match &server {
                Some(s) => usize::from(creds.servers.remove(&normalize_url(s)).is_some()),
                None => std::mem::take(&mut creds.servers).len(),
            };
            creds.save(&dir)?;
            print_logged_out(removed).context("writing the result")?;
        }
        CoachCommand::Status { format } => {
            let creds = Credentials::load(&dir)?;
            let runtime = ctx.runtime()?;
            let mut servers = Vec::new();
            for (url, c) in &creds.servers {
                let health = match CoachClient::new(url, None, Duration::from_secs(5)) {
                    Ok(client) => match runtime.block_on(client.health()) {
                        Ok(h) => h.status,
                        Err(e) => format!("unreachable: {e}"),
                    },
                    Err(e) => e.to_string(),
                };
                servers.push(CoachServer {
                    url: url.clone(),
                    device_name: c.device_name.clone(),
                    token: masked(&c.token),
                    saved_at: c.saved_at.clone(),
                    health,
                });
            }
            let counts = Outbox::open(data)
                .and_then(|o| o.counts(None))
                .context("counting the outbox")?;
            print_coach_status(&Credentials::path(&dir), &servers, &counts, format)
                .context("writing the status")?;
        }
    }
    Ok(())
}

/// Runs an outbox command.
///
/// # Errors
/// A usage error for an unknown id; refused laps, or laps still waiting after a retry.
pub fn outbox(cmd: OutboxCommand, ctx: &Context) -> anyhow::Result<()> {
    let outbox = Outbox::open(&ctx.data)
        .with_context(|| format!("opening the archive in {}", ctx.data.display()))?;
    match cmd {
        OutboxCommand::Ls { all, format } => {
            let entries = outbox.list(all).context("listing the outbox")?;
            let counts = outbox.counts(None).context("counting the outbox")?;
            print_outbox(&entries, &counts, format).context("writing the outbox")
        }
        OutboxCommand::Retry { id, wait, format } => {
            if let Some(id) = id
                && outbox.get(id).context("reading the outbox")?.is_none()
            {
                return Err(
                    UsageError(format!("no outbox entry {id} (see `apexsim outbox ls`)")).into(),
                );
            }
            let reset = outbox.retry(id).context("resetting the outbox")?;
            drop(outbox);
            let opts = upload_options(None)?;
            let report = ctx.runtime()?.block_on(async {
                let stop = tokio_util::sync::CancellationToken::new();
                let s = stop.clone();
                tokio::spawn(async move {
                    apexsim::net::shutdown_signal().await;
                    tracing::warn!(
                        "interrupted: finishing the lap in flight, the rest stays in the outbox"
                    );
                    s.cancel();
                });
                apexsim::coach::upload::drain(&ctx.data, opts, stop, wait).await
            })?;
            print_upload(&report, reset, format).context("writing the report")?;
            upload_outcome(&report, true)
        }
    }
}

/// `ingest --upload` and `outbox retry`: what the uploader did.
pub fn print_upload(
    r: &apexsim::coach::UploadReport,
    reset: usize,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            upload: &'a apexsim::coach::UploadReport,
            reset: usize,
        }
        return emit_json(&Out { upload: r, reset });
    }
    let mut text = format!(
        "upload: {} delivered, {} waiting in the outbox, {} refused",
        r.delivered, r.waiting, r.failed
    );
    if r.retried > 0 {
        text.push_str(&format!(", {} attempts to retry", r.retried));
    }
    if r.interrupted > 0 {
        text.push_str(&format!(", {} interrupted", r.interrupted));
    }
    text.push_str(&format!(" ({:.1} MB sent)\n", r.bytes_sent as f64 / 1e6));
    for e in &r.errors {
        text.push_str(&format!("  {e}\n"));
    }
    emit(&text)
}

/// `apexsim outbox ls`.
pub fn print_outbox(entries: &[Entry], counts: &Counts, format: Format) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            entries: &'a [Entry],
            counts: &'a Counts,
        }
        return emit_json(&Out { entries, counts });
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let next = if matches!(e.state, State::Pending | State::LapSent) && e.next_at_ms > now {
                format!("in {:.0} s", (e.next_at_ms - now) as f64 / 1e3)
            } else {
                String::new()
            };
            vec![
                e.id.to_string(),
                e.state.as_str().into(),
                e.session.to_string()[..8].to_owned(),
                e.car.to_string(),
                e.lap.to_string(),
                e.attempts.to_string(),
                next,
                e.url.clone(),
                e.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "ID",
            "STATE",
            "SESSION",
            "CAR",
            "LAP",
            "ATTEMPTS",
            "NEXT",
            "SERVER",
            "LAST ERROR",
        ],
        &rows,
    );
    text.push_str(&format!(
        "{} pending, {} lap sent, {} being sent, {} delivered, {} refused, {} skipped (invalid)\n",
        counts.pending,
        counts.lap_sent,
        counts.in_flight,
        counts.done,
        counts.failed,
        counts.skipped
    ));
    emit(&text)
}

/// The device login's code, for the user to confirm.
pub fn print_device_code(a: &apexsim::coach::api::DeviceAuthorizationResponse) -> io::Result<()> {
    emit(&format!(
        "To log this device in, open {}\nand enter the code {} (valid {} minutes). Waiting...\n",
        a.verification_uri,
        a.user_code,
        (a.expires_in + 59) / 60
    ))
}

/// `coach login` succeeded.
pub fn print_logged_in(server: &str, file: &std::path::Path) -> io::Result<()> {
    emit(&format!(
        "Logged in to {server}; the device token is in {} (readable only by you).\n",
        file.display()
    ))
}

/// `coach logout`.
pub fn print_logged_out(removed: usize) -> io::Result<()> {
    emit(&format!("Removed {removed} stored device token(s).\n"))
}

/// A server in `coach status`.
#[derive(Debug, Clone, Serialize)]
pub struct CoachServer {
    /// Its URL.
    pub url: String,
    /// The device's name there.
    pub device_name: String,
    /// The token, masked.
    pub token: String,
    /// When it was stored.
    pub saved_at: String,
    /// What its health endpoint said.
    pub health: String,
}

/// A token shown without giving it away: its first four characters.
pub fn masked(token: &str) -> String {
    let head: String = token.chars().take(4).collect();
    format!("{head}…")
}

/// `apexsim coach status`.
pub fn print_coach_status(
    file: &std::path::Path,
    servers: &[CoachServer],
    counts: &Counts,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            credentials: &'a std::path::Path,
            servers: &'a [CoachServer],
            outbox: &'a Counts,
        }
        return emit_json(&Out {
            credentials: file,
            servers,
            outbox: counts,
        });
    }
    let mut text = if servers.is_empty() {
        format!(
            "Not logged in to any Racing Coach server ({}).\n",
            file.display()
        )
    } else {
        let rows: Vec<Vec<String>> = servers
            .iter()
            .map(|s| {
                vec![
                    s.url.clone(),
                    s.device_name.clone(),
                    s.token.clone(),
                    s.saved_at.clone(),
                    s.health.clone(),
                ]
            })
            .collect();
        table(&["SERVER", "DEVICE", "TOKEN", "SINCE", "HEALTH"], &rows)
    };
    text.push_str(&format!(
        "outbox: {} pending, {} lap sent, {} delivered, {} refused, {} skipped (invalid)\n",
        counts.pending, counts.lap_sent, counts.done, counts.failed, counts.skipped
    ));
    emit(&text)
}
