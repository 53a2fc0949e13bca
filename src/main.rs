//! The `apexsim` binary: parses the command line, sets up logging, runs the command and maps
//! errors to exit codes (0 ok, 1 failure, 2 bad arguments or content).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::archive::index::Index;
use apexsim::cli::{
    ArchiveCommand, Cli, CoachCommand, Command, ImportCommand, OutboxCommand, TrackCommand,
};
use apexsim::coach::credentials::{self, Credentials, normalize_url};
use apexsim::coach::{CoachClient, Outbox, Pipeline, UploadOptions};
use apexsim::content::Content;
use apexsim::{output, race};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// An error that is the user's: bad arguments or content (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The server sets up its own logging from its configuration.
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn content_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        let local = PathBuf::from("content");
        if local.is_dir() {
            local
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("content")
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = content_dir(cli.content);
    let report = Content::load(&dir);
    match cli.command {
        Command::Race(args) => {
            for e in &report.errors {
                tracing::warn!("content: {e}");
            }
            let opts = args.options().map_err(UsageError)?;
            let mut race = race::Race::new(&report.content, &opts).map_err(|e| {
                if e.is_usage() {
                    anyhow::Error::new(UsageError(e.to_string()))
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            if !args.no_archive {
                let writer = apexsim::events::ArchiveWiring::default()
                    .start_writer(&cli.data)
                    .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
                race.archive_to(writer, cli.wal_sync).with_context(|| {
                    format!("creating the write-ahead file in {}", cli.data.display())
                })?;
            }
            let mut watcher = output::RaceWatcher::new(args.format);
            let result = race.run_watched(opts.fast, |e| watcher.event(e));
            watcher.finish();
            let result = result.context("race failed")?;
            output::print_race(&result, args.format).context("writing the results")?;
            if let Some(archive) = &result.archive
                && !archive.errors.is_empty()
            {
                anyhow::bail!(
                    "{} archive write(s) failed; first: {}",
                    archive.errors.len(),
                    archive.errors[0]
                );
            }
        }
        Command::Content { format } => {
            let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
            output::print_content(&report.content, &errors, format)
                .context("writing the content list")?;
            if !errors.is_empty() {
                return Err(UsageError(format!(
                    "{} problem(s) in {}",
                    errors.len(),
                    dir.display()
                ))
                .into());
            }
        }
        Command::Archive(ArchiveCommand::Ls { session, format }) => {
            let index = Index::open(&cli.data)
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            apexsim::archive::wal::recover_logged(&cli.data, &index)
                .context("recovering write-ahead files")?;
            let sessions = index.sessions().context("listing sessions")?;
            let laps = index.laps(session).context("listing laps")?;
            let live: Vec<uuid::Uuid> = sessions
                .iter()
                .filter(|s| {
                    s.finished_at.is_none() && apexsim::archive::wal::is_live(&cli.data, s.id)
                })
                .map(|s| s.id)
                .collect();
            output::print_archive(&sessions, &live, &laps, session, format)
                .context("writing the archive list")?;
        }
        Command::Archive(ArchiveCommand::Prune { older_than, format }) => {
            let age = apexsim::archive::parse_duration(&older_than).ok_or_else(|| {
                UsageError(format!(
                    "--older-than {older_than:?} is not a duration like 168h, 7d, 90m or 3600s"
                ))
            })?;
            let index = Index::open(&cli.data)
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
            // Sessions of processes that are gone are recovered first, so that what they hold
            // is pruned with them; sessions of live processes are left alone.
            apexsim::archive::wal::recover_logged(&cli.data, &index)
                .context("recovering write-ahead files")?;
            let pruned = apexsim::archive::prune(&cli.data, &index, cutoff).context("pruning")?;
            output::print_prune(&pruned, format).context("writing the prune report")?;
        }
        Command::Ingest(args) => {
            let files = apexsim::ingest::collect_files(&args.paths)
                .map_err(|e| UsageError(e.to_string()))?;
            if files.is_empty() {
                return Err(UsageError("no .ibt files found in the given paths".into()).into());
            }
            let mut opts = apexsim::ingest::IngestOptions {
                keep_driver_names: args.keep_driver_names,
                wal_sync: cli.wal_sync,
                wiring: Default::default(),
            };
            let upload = Upload::start(&cli.data, args.upload.as_deref(), args.upload_wait, true)?;
            if let Some(u) = &upload {
                opts.wiring = u.pipeline.wiring();
            }
            let mut bar = output::Progress::new("ingest");
            let report =
                apexsim::ingest::ingest(&files, &cli.data, &opts, |done, total, records| {
                    bar.update(done, total, records)
                })
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            bar.finish();
            output::print_ingest(&report, args.format).context("writing the ingest report")?;
            if let Some(u) = upload {
                // Recordings archived before are queued too: an upload is idempotent.
                let outbox = Outbox::open(&cli.data).context("opening the outbox")?;
                for f in &report.files {
                    if let apexsim::ingest::FileOutcome::Skipped { session } = f.outcome {
                        outbox
                            .enqueue_session(session, &u.url)
                            .context("queueing archived laps")?;
                    }
                }
                u.finish(args.format)?;
            }
            ingest_outcome(&report)?;
        }
        Command::Analyze(args) => analyze(args, &cli.data)?,
        Command::Compare(args) => compare(args, &cli.data)?,
        Command::Import(ImportCommand::RacingCoach {
            paths,
            track,
            car,
            driver,
            sectors,
            format,
        }) => {
            if sectors.windows(2).any(|w| w[0] >= w[1])
                || sectors.iter().any(|s| !(*s > 0.0 && *s < 1.0))
            {
                return Err(UsageError(
                    "--sectors: fractions of the lap above 0 and below 1, increasing".into(),
                )
                .into());
            }
            let opts = apexsim::ingest::racing_coach::ImportOptions {
                track,
                car,
                driver,
                sectors,
            };
            let report = apexsim::ingest::racing_coach::import(&paths, &cli.data, &opts)
                .map_err(|e| UsageError(e.to_string()))?;
            output::print_ingest(&report, format).context("writing the import report")?;
            ingest_outcome(&report)?;
        }
        Command::Track(TrackCommand::FromIbt {
            file,
            lap,
            name,
            width,
            format,
        }) => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(UsageError(format!(
                    "--name {name:?}: use lowercase letters, digits and _"
                ))
                .into());
            }
            if !(3.0..=60.0).contains(&width) {
                return Err(UsageError(format!("--width {width}: use 3 to 60 metres")).into());
            }
            use apexsim::ingest::track::{TrackBuildError, from_ibt};
            let built = from_ibt(&file, lap, &name, width, &dir).map_err(|e| match e {
                TrackBuildError::NoLap { .. }
                | TrackBuildError::NotClean { .. }
                | TrackBuildError::Exists(_) => anyhow::Error::new(UsageError(e.to_string())),
                other => anyhow::Error::new(other),
            })?;
            // The new track must load like any other content.
            let check = Content::load(&dir);
            let problems: Vec<String> = check
                .errors
                .iter()
                .map(ToString::to_string)
                .filter(|e| e.contains(&name))
                .collect();
            if !problems.is_empty() {
                anyhow::bail!("the new track does not load: {}", problems.join("; "));
            }
            output::print_track_built(&built, format).context("writing the result")?;
        }
        Command::Serve(args) => {
            for e in &report.errors {
                eprintln!("warning: content: {e}");
            }
            serve(args, report.content, &cli.data, cli.wal_sync)?;
        }
        Command::Drive(args) => {
            use apexsim::net::tls::{Trust, parse_fingerprint};
            let trust = match (&args.cert, &args.fingerprint, args.insecure) {
                (Some(path), _, _) => Trust::CertFile(path.clone()),
                (None, Some(hex), _) => Trust::Fingerprint(
                    parse_fingerprint(hex).map_err(|e| UsageError(e.to_string()))?,
                ),
                (None, None, true) => Trust::Insecure,
                (None, None, false) => {
                    return Err(UsageError(
                        "say how to trust the server: --cert FILE, --fingerprint HEX or --insecure"
                            .into(),
                    )
                    .into());
                }
            };
            if args.bots == 0 || args.bots > 16 {
                return Err(UsageError(format!("--bots {}: use 1 to 16", args.bots)).into());
            }
            if !(args.timeout.is_finite() && args.timeout > 0.0) {
                return Err(UsageError(format!(
                    "--timeout {}: use a positive number of seconds",
                    args.timeout
                ))
                .into());
            }
            let opts = apexsim::net::drive::DriveOptions {
                server: args.server,
                trust,
                token: args.token.clone(),
                bots: args.bots,
                mode: match args.join {
                    Some(id) => apexsim::net::drive::Mode::Join(id),
                    None => apexsim::net::drive::Mode::Create {
                        track: args.track.clone(),
                        laps: args.laps,
                        ai: args.ai,
                    },
                },
                timeout: std::time::Duration::from_secs_f64(args.timeout),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let report = runtime.block_on(apexsim::net::drive::run(opts))?;
            output::print_drive(&report, args.format).context("writing the report")?;
            if let Some(fault) = &report.fault {
                anyhow::bail!("the session ended in a fault: {fault}");
            }
            if report.results.is_empty() {
                anyhow::bail!("the race did not finish");
            }
        }
        Command::Live {
            keep_driver_names,
            upload,
        } => {
            let mut opts = apexsim::ingest::IngestOptions {
                keep_driver_names,
                wal_sync: cli.wal_sync,
                wiring: Default::default(),
            };
            // Ctrl-C is how a live session ends: the live loop archives it, then the uploads
            // stop after the lap in flight and the rest waits in the outbox.
            let upload =
                Upload::start(&cli.data, upload.as_deref(), Duration::from_secs(30), false)?;
            if let Some(u) = &upload {
                opts.wiring = u.pipeline.wiring();
            }
            let report = apexsim::ingest::live::run(&cli.data, &opts)?;
            output::print_live(&report).context("writing the live report")?;
            if let Some(u) = upload {
                u.finish(apexsim::cli::Format::Table)?;
            }
        }
        Command::Coach(cmd) => coach(cmd, &cli.data)?,
        Command::Outbox(OutboxCommand::Ls { all, format }) => {
            let outbox = Outbox::open(&cli.data)
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
            let entries = outbox.list(all).context("listing the outbox")?;
            let counts = outbox.counts(None).context("counting the outbox")?;
            output::print_outbox(&entries, &counts, format).context("writing the outbox")?;
        }
        Command::Outbox(OutboxCommand::Retry { id, wait, format }) => {
            let outbox = Outbox::open(&cli.data)
                .with_context(|| format!("opening the archive in {}", cli.data.display()))?;
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
            let runtime = runtime()?;
            let report = runtime.block_on(async {
                let stop = tokio_util::sync::CancellationToken::new();
                let s = stop.clone();
                tokio::spawn(async move {
                    apexsim::net::server::shutdown_signal().await;
                    tracing::warn!(
                        "interrupted: finishing the lap in flight, the rest stays in the outbox"
                    );
                    s.cancel();
                });
                apexsim::coach::upload::drain(&cli.data, opts, stop, wait).await
            })?;
            output::print_upload(&report, reset, format).context("writing the report")?;
            upload_outcome(&report, true)?;
        }
    }
    Ok(())
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The upload pipeline of `ingest --upload` and `live --upload`: runs beside the command on
/// its own runtime. Ctrl-C stops the uploads (the lap in flight gets its grace period); with
/// `exit_on_interrupt`, while the command still archives, the process then exits (the archive
/// recovers what was being written, as after any interrupted ingest).
struct Upload {
    runtime: tokio::runtime::Runtime,
    pipeline: Pipeline,
    url: String,
    archiving: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Upload {
    fn start(
        data: &Path,
        url: Option<&str>,
        drain: Duration,
        exit_on_interrupt: bool,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = url else {
            return Ok(None);
        };
        let opts = upload_options(Some(url))?;
        let url = normalize_url(url);
        let runtime = runtime()?;
        let pipeline = runtime
            .block_on(async { Pipeline::start(data, opts, drain, Vec::new()) })
            .context("starting the uploader")?;
        let archiving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stop, done, flag) = (
            pipeline.stop_token(),
            pipeline.done_token(),
            archiving.clone(),
        );
        runtime.spawn(async move {
            apexsim::net::server::shutdown_signal().await;
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
            url,
            archiving,
        }))
    }

    fn finish(self, format: apexsim::cli::Format) -> anyhow::Result<()> {
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
            output::print_upload(upload, 0, format).context("writing the upload report")?;
            upload_outcome(upload, false)?;
        }
        Ok(())
    }
}

/// Refused laps fail the command; laps still waiting fail it only when delivering them was
/// the command's job (`outbox retry`).
fn upload_outcome(r: &apexsim::coach::UploadReport, all_due: bool) -> anyhow::Result<()> {
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
fn coach(cmd: CoachCommand, data: &Path) -> anyhow::Result<()> {
    let dir = credentials::config_dir()?;
    match cmd {
        CoachCommand::Login {
            server,
            device_name,
        } => {
            let client = CoachClient::new(&server, None, apexsim::coach::client::DEFAULT_TIMEOUT)
                .map_err(|e| UsageError(format!("--server: {e}")))?;
            let name = device_name.unwrap_or_else(credentials::device_name);
            let token = runtime()?
                .block_on(credentials::device_login(&client, &name, |auth| {
                    if let Err(e) = output::print_device_code(auth) {
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
            output::print_logged_in(client.base(), &Credentials::path(&dir))
                .context("writing the result")?;
        }
        CoachCommand::Logout { server } => {
            let mut creds = Credentials::load(&dir)?;
            let removed = match &server {
                Some(s) => usize::from(creds.servers.remove(&normalize_url(s)).is_some()),
                None => std::mem::take(&mut creds.servers).len(),
            };
            creds.save(&dir)?;
            output::print_logged_out(removed).context("writing the result")?;
        }
        CoachCommand::Status { format } => {
            let creds = Credentials::load(&dir)?;
            let runtime = runtime()?;
            let mut servers = Vec::new();
            for (url, c) in &creds.servers {
                let health = match CoachClient::new(url, None, Duration::from_secs(5)) {
                    Ok(client) => match runtime.block_on(client.health()) {
                        Ok(h) => h.status,
                        Err(e) => format!("unreachable: {e}"),
                    },
                    Err(e) => e.to_string(),
                };
                servers.push(output::CoachServer {
                    url: url.clone(),
                    device_name: c.device_name.clone(),
                    token: output::masked(&c.token),
                    saved_at: c.saved_at.clone(),
                    health,
                });
            }
            let counts = Outbox::open(data)
                .and_then(|o| o.counts(None))
                .context("counting the outbox")?;
            output::print_coach_status(&Credentials::path(&dir), &servers, &counts, format)
                .context("writing the status")?;
        }
    }
    Ok(())
}

/// The thresholds of `analyze` and `compare`: `--thresholds FILE`, else the archive's
/// `thresholds.toml`, else the defaults; then each `--set`. A bad one is a usage error.
fn thresholds(
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

/// `apexsim analyze`: thresholds (file, then `--set`), the analysis, the report; exit 1 when a
/// lap file could not be analysed.
fn analyze(args: apexsim::cli::AnalyzeArgs, data: &Path) -> anyhow::Result<()> {
    use apexsim::analysis::query::{LapFilter, analyze_paths};
    let paths = if args.paths.is_empty() {
        vec![data.to_owned()]
    } else {
        args.paths.clone()
    };
    let th = thresholds(args.thresholds.as_deref(), &args.sets, &paths[0])?;
    if args.format == apexsim::cli::TableFormat::Parquet && args.out.is_none() {
        return Err(UsageError("--format parquet needs --out FILE".into()).into());
    }
    let filter = LapFilter {
        track: args.track.clone(),
        car: args.car.clone(),
        session: args.session.clone(),
        driver: args.driver.clone(),
    };
    let recompute = args.recompute || args.thresholds.is_some() || !args.sets.is_empty();
    let report = analyze_paths(&paths, &filter, &th, recompute)?;
    output::print_analysis(&report, args.format, args.out.as_deref())
        .context("writing the analysis")?;
    if !report.errors.is_empty() {
        anyhow::bail!(
            "{} lap file(s) could not be analysed; first: {}",
            report.errors.len(),
            report.errors[0]
        );
    }
    Ok(())
}

/// `apexsim compare`: both laps found, measured and compared; the report, and the plot.
fn compare(args: apexsim::cli::CompareArgs, data: &Path) -> anyhow::Result<()> {
    use apexsim::analysis::compare::{compare, load, resolve};
    let th = thresholds(args.thresholds.as_deref(), &args.sets, data)?;
    let index = apexsim::archive::index::Index::open(data).ok();
    let mut laps = Vec::new();
    for name in [&args.a, &args.b] {
        let path = resolve(data, name).map_err(|e| UsageError(e.to_string()))?;
        let session = apexsim::archive::read_lap_meta(&path)
            .map_err(|e| UsageError(e.to_string()))?
            .0
            .session;
        let sectors = index
            .as_ref()
            .and_then(|i| i.session_sectors(session).ok())
            .unwrap_or_default();
        laps.push((
            load(&path, &sectors, &th).map_err(|e| UsageError(e.to_string()))?,
            sectors,
        ));
    }
    let (b, _) = laps.pop().context("two laps")?;
    let (a, sectors) = laps.pop().context("two laps")?;
    let report = compare(&a, &b, &th).map_err(|e| UsageError(e.to_string()))?;
    if let Some(file) = &args.plot {
        apexsim::analysis::plot::plot(file, &a, &b, &report, &sectors)
            .map_err(|e| UsageError(e.to_string()))?;
    }
    output::print_compare(&report, args.format, args.plot.as_deref())
        .context("writing the comparison")?;
    Ok(())
}

/// The exit status of an ingest or import: an error when a file failed or an archive write did.
fn ingest_outcome(report: &apexsim::ingest::IngestReport) -> anyhow::Result<()> {
    let failed = report.failed();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} file(s) could not be read",
            report.files.len()
        );
    }
    if let Some(archive) = &report.archive
        && !archive.errors.is_empty()
    {
        anyhow::bail!(
            "{} archive write(s) failed; first: {}",
            archive.errors.len(),
            archive.errors[0]
        );
    }
    Ok(())
}

/// `apexsim serve`: configuration (file, environment, flags), logging (console and daily JSON
/// files), then the server until SIGTERM/SIGINT.
fn serve(
    args: apexsim::cli::ServeArgs,
    content: Content,
    data: &Path,
    wal_sync: apexsim::archive::wal::WalSync,
) -> anyhow::Result<()> {
    use apexsim::net::config::ServerConfig;
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
    let _guard = init_server_logging(&config.logging, data)?;
    let format = args.format;
    let report = apexsim::net::server::serve(config, content, data.to_owned(), wal_sync, |l| {
        if let Err(e) = output::print_listening(l, format) {
            tracing::warn!(error = %e, "cannot print the listening line");
        }
    })?;
    output::print_serve(&report, format).context("writing the report")?;
    if !report.sim.archive.errors.is_empty() {
        anyhow::bail!(
            "{} archive write(s) failed; first: {}",
            report.sim.archive.errors.len(),
            report.sim.archive.errors[0]
        );
    }
    Ok(())
}

/// Console logs (human-readable) and daily-rotated JSON-lines files, as configured.
fn init_server_logging(
    logging: &apexsim::net::config::LoggingSection,
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
