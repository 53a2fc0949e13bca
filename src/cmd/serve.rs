//! `apexsim serve`: the race server, configured from its file, the environment and the flags,
//! logging to the console and to daily JSON-lines files, until SIGTERM or SIGINT.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use apexsim::net::config::{LoggingSection, ServerConfig};
use apexsim::net::server::{self, Listening, ServeReport, Setup};
use tracing_subscriber::EnvFilter;

use super::coach::print_upload;
use super::print::{Format, emit, emit_json};
use super::{Context, UsageError, archive_errors};

/// Arguments of `apexsim serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The configuration file; without it, `server.toml` in the working directory if present,
    /// else the defaults.
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Log level (trace, debug, info, warn, error), overriding `logging.level`.
    #[arg(short = 'l', long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// QUIC address to bind, overriding `network.bind` (the seed's TCP and UDP ports are one
    /// QUIC port).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<std::net::SocketAddr>,
    /// QUIC port, overriding the port of `network.bind` (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// HTTP port for /health, /ready and /metrics, overriding `network.http_bind`.
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// Run under Agones (`agones.enabled`): Ready, health pings, counters, allocations and
    /// Shutdown through the GameServer's SDK sidecar. Builds with the `agones` feature.
    #[arg(long)]
    pub agones: bool,
    /// Output format of the start line and the final report.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `apexsim serve`: configuration (file, environment, flags), logging (console and daily JSON
/// files), then the server until SIGTERM/SIGINT.
pub fn run(args: &ServeArgs, ctx: &Context) -> anyhow::Result<()> {
    let data: &Path = &ctx.data;
    let path = args.config.clone().or_else(|| {
        let default = PathBuf::from("server.toml");
        default.exists().then_some(default)
    });
    let mut config = ServerConfig::load(path.as_deref(), std::env::vars())
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(bind) = args.bind {
        config.network.bind = bind;
    }
    if let Some(port) = args.port {
        config.network.bind.set_port(port);
    }
    if let Some(port) = args.http_port {
        config.network.http_bind.set_port(port);
    }
    if let Some(level) = &args.log_level {
        config.logging.level = level.clone();
    }
    if args.agones {
        if !cfg!(feature = "agones") {
            return Err(UsageError(
                "--agones: this apexsim was built without the `agones` feature (cargo build --features agones)".into(),
            )
            .into());
        }
        config.agones.enabled = true;
    }
    let _guard = init_server_logging(&config.logging, data)?;
    let format = args.format;
    let content = ctx.content_loaded(|e| eprintln!("warning: content: {e}"));
    let setup = Setup {
        config,
        content,
        content_dir: Some(ctx.content_dir.clone()),
        data: data.to_owned(),
        wal_sync: ctx.wal_sync,
    };
    let report = ctx.runtime()?.block_on(async {
        let bound = server::bind(&setup.config, data).await?;
        if let Err(e) = print_listening(&bound.listening, format) {
            tracing::warn!(error = %e, "cannot print the listening line");
        }
        server::run(bound, setup, apexsim::net::shutdown_signal()).await
    })?;
    print_serve(&report, format).context("writing the report")?;
    archive_errors(&report.sim.archive)
}

/// Console logs (human-readable) and daily-rotated JSON-lines files, as configured.
fn init_server_logging(
    logging: &LoggingSection,
    data: &Path,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&logging.level))
            .map_err(|e| UsageError(format!("logging.level {:?}: {e}", logging.level)))
    };
    let console = logging.console_enabled.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let (file, guard) = if logging.file_enabled {
        let dir = if logging.dir.is_absolute() {
            logging.dir.clone()
        } else {
            data.join(&logging.dir)
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("apexsim")
            .filename_suffix("jsonl")
            .max_log_files(logging.file_retention_days.max(1))
            .build(&dir)
            .with_context(|| format!("opening the log directory {}", dir.display()))?;
        let (writer, guard) = tracing_appender::non_blocking(appender);
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .with_filter(filter()?);
        (Some(layer), Some(guard))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(console.map(|c| c.with_filter(filter().unwrap_or_else(|_| EnvFilter::new("info")))))
        .with(file)
        .init();
    Ok(guard)
}

/// Prints where the server listens (one line; JSON with `--format json`, for scripts).
///
/// # Errors
/// Writing to standard output failed.
pub fn print_listening(l: &Listening, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(l);
    }
    emit(&format!(
        "serving on {} (QUIC, ALPN apexsim/1), http://{} (health, ready, metrics)\ncertificate {} sha256 {}\n",
        l.quic,
        l.http,
        l.cert.display(),
        l.fingerprint
    ))
}

/// Prints what a server run did.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_serve(r: &ServeReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(r);
    }
    emit(&format!(
        "stopped after {:.1} s: {} ticks, {} connections, {} sessions finished, {} laps archived, CPU {:.2} s, archive errors {}\n",
        r.wall_seconds,
        r.sim.ticks,
        r.connections,
        r.sim.sessions_finished,
        r.sim.archive.laps_written,
        r.cpu_seconds.unwrap_or(f64::NAN),
        r.sim.archive.errors.len()
    ))?;
    match &r.upload {
        Some(u) => print_upload(u, 0, format),
        None => Ok(()),
    }
}
