//! `apexsim api`: the REST API (`/api/v1`) over an archive alone, without a race server, until
//! SIGINT or SIGTERM.

use anyhow::Context as _;
use apexsim::api::{ApiState, routes};
use apexsim::ingest::posted::{PostedOptions, PostedTelemetry};

use apexsim::net::config::ServerConfig;

use super::print::emit;
use super::{Context, UsageError};

/// Arguments of `apexsim api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9004")]
    pub bind: std::net::SocketAddr,
    /// The server's configuration file, for its `[api.tokens]` (the writers); without it,
    /// `server.toml` in the working directory if present; with neither, writes are refused.
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
}

/// Serves the API over `--data` and `--content` until interrupted; prints where it listens.
pub fn run(args: &ApiArgs, ctx: &Context) -> anyhow::Result<()> {
    let path = args.config.clone().or_else(|| {
        let default = std::path::PathBuf::from("server.toml");
        default.exists().then_some(default)
    });
    let config = ServerConfig::load(path.as_deref(), std::env::vars())
        .map_err(|e| UsageError(e.to_string()))?;
    let content = ctx.content_logged();
    let posted = PostedTelemetry::start(
        ctx.data.clone(),
        PostedOptions {
            wal_sync: ctx.wal_sync,
            idle: std::time::Duration::from_secs_f64(config.api.session_idle_seconds),
            ..PostedOptions::default()
        },
    )
    .context("starting the telemetry recorder")?;
    let state =
        ApiState::fixed(ctx.data.clone(), content, config.api.tokens).with_posted(posted.clone());
    let rt = ctx.runtime()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("binding {}", args.bind))?;
        let at = listener.local_addr()?;
        tracing::info!(http = %at, data = %ctx.data.display(), "serving the API");
        emit(&format!(
            "api on http://{at}/api/v1 (archive {}), documentation http://{at}/api/v1/docs\n",
            ctx.data.display()
        ))?;
        let router: axum::Router = routes(state);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving the API")
    });
    // Posted sessions finish, their laps durable, before the process ends.
    posted.stop();
    served
}

async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
