//! `apexsim drive`: client bots that race on a server, and load-test it.

use std::io;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::net::drive::{DriveOptions, DriveReport, Mode};
use apexsim::net::tls::{Trust, parse_fingerprint};

use super::print::{Format, emit, emit_json, lap_time, table};
use super::{Context, UsageError};

/// Arguments of `apexsim drive`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriveArgs {
    /// The server's QUIC address.
    #[arg(long, value_name = "ADDR")]
    pub server: std::net::SocketAddr,
    /// Number of bots, each its own connection (1 to 16).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub bots: u8,
    /// The first bot creates a session (the default).
    #[arg(long, conflicts_with = "join")]
    pub create: bool,
    /// Join this session instead of creating one; `next` joins the rotation session the
    /// lobby announces.
    #[arg(long, value_name = "SESSION_ID|next", value_parser = join_target)]
    pub join: Option<JoinTarget>,
    /// Track of the created session (slug, name or id).
    #[arg(long, default_value = "oval_simple")]
    pub track: String,
    /// Laps of the created session.
    #[arg(long, default_value_t = 1)]
    pub laps: u8,
    /// AI cars filling the created session's grid.
    #[arg(long, default_value_t = 0)]
    pub ai: u8,
    /// Create this many sessions at once, each raced by its own `--bots` bots, all in this
    /// process on one runtime (a load generator cheaper than a process per session). Each
    /// session's report is printed (one JSON line each with `--format json`).
    #[arg(long, default_value_t = 1, conflicts_with = "join",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub sessions: u16,
    /// Trust the server's certificate from this PEM file.
    #[arg(long, value_name = "PEM", conflicts_with_all = ["fingerprint", "insecure"])]
    pub cert: Option<std::path::PathBuf>,
    /// Trust the server's certificate by its SHA-256 (as `serve` prints it).
    #[arg(long, value_name = "HEX", conflicts_with = "insecure", value_parser = fingerprint)]
    pub fingerprint: Option<[u8; 32]>,
    /// Trust any certificate (local tests only).
    #[arg(long)]
    pub insecure: bool,
    /// Connect every bot (of every session) from one UDP socket and QUIC endpoint: a cheaper
    /// load generator (players each have their own; the server tells the connections apart
    /// by their ids).
    #[arg(long)]
    pub shared_socket: bool,
    /// Access token.
    #[arg(long, default_value = "")]
    pub token: String,
    /// Give up after this many seconds.
    #[arg(long, default_value = "600", value_parser = seconds)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// What `--join` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinTarget {
    /// A session by id.
    Session(uuid::Uuid),
    /// The rotation's open session.
    Next,
}

fn join_target(s: &str) -> Result<JoinTarget, String> {
    if s.eq_ignore_ascii_case("next") {
        return Ok(JoinTarget::Next);
    }
    uuid::Uuid::parse_str(s)
        .map(JoinTarget::Session)
        .map_err(|e| format!("{s:?}: a session id or `next` ({e})"))
}

/// A certificate's SHA-256, with or without colons.
fn fingerprint(s: &str) -> Result<[u8; 32], String> {
    parse_fingerprint(s).map_err(|e| e.to_string())
}

/// A positive, finite number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s}: use a positive number of seconds")),
    }
}

/// Runs the bots to the end of their race and prints what they measured.
///
/// # Errors
/// A usage error without a way to trust the server; the bots' failures, a faulted or
/// unfinished race.
pub fn run(args: &DriveArgs, ctx: &Context) -> anyhow::Result<()> {
    let trust = match (&args.cert, &args.fingerprint, args.insecure) {
        (Some(path), _, _) => Trust::CertFile(path.clone()),
        (None, Some(hash), _) => Trust::Fingerprint(*hash),
        (None, None, true) => Trust::Insecure,
        (None, None, false) => {
            return Err(UsageError(
                "say how to trust the server: --cert FILE, --fingerprint HEX or --insecure".into(),
            )
            .into());
        }
    };
    let opts = DriveOptions {
        server: args.server,
        trust,
        token: args.token.clone(),
        bots: usize::from(args.bots),
        mode: match args.join {
            Some(JoinTarget::Session(id)) => Mode::Join(id),
            Some(JoinTarget::Next) => Mode::JoinNext,
            None => Mode::Create {
                track: args.track.clone(),
                laps: args.laps,
                ai: args.ai,
            },
        },
        timeout: args.timeout,
        shared: None,
    };
    let reports = ctx.runtime()?.block_on(async {
        let mut opts = opts;
        if args.shared_socket {
            // Bound inside the runtime: the endpoint's driver is a task of it.
            opts.shared = Some(apexsim::net::client::endpoint(&opts.trust)?);
        }
        let races = (0..args.sessions).map(|_| apexsim::net::drive::run(opts.clone()));
        anyhow::Ok(futures::future::join_all(races).await)
    })?;
    let mut failed = None;
    for (i, report) in reports.into_iter().enumerate() {
        // With several sessions, each error names its session.
        let which = |e: anyhow::Error| {
            if args.sessions > 1 {
                e.context(format!("session {} of {}", i + 1, args.sessions))
            } else {
                e
            }
        };
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                failed.get_or_insert(which(e.into()));
                continue;
            }
        };
        print_drive(&report, args.format).context("writing the report")?;
        if let Some(fault) = &report.fault {
            failed.get_or_insert(which(anyhow::anyhow!(
                "the session ended in a fault: {fault}"
            )));
        } else if report.results.is_empty() {
            failed.get_or_insert(which(anyhow::anyhow!("the race did not finish")));
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Prints what the bots measured.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_drive(r: &DriveReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(r);
    }
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|s| {
            vec![
                s.position.to_string(),
                s.name.clone(),
                s.laps.to_string(),
                s.total_time_s.map_or("-".into(), lap_time),
                s.best_lap_s.map_or("-".into(), lap_time),
            ]
        })
        .collect();
    let mut text = String::new();
    if let Some(id) = r.session {
        text += &format!("session {id}\n");
    }
    if let Some(f) = &r.fault {
        text += &format!("session ended in a fault: {f}\n");
    }
    text += &table(&["Pos", "Driver", "Laps", "Total", "Best lap"], &rows);
    text += &format!(
        "\n{} bots in {:.1} s: telemetry for {:.3} % of ticks ({} lost, {} late, {} doubled), {:.1} packets/s per bot\ninput-to-telemetry latency p50 {:.2} ticks, p99 {:.2} ticks; heartbeat RTT p50 {:.2} ms, QUIC RTT {:.2} ms\n",
        r.bots,
        r.wall_seconds,
        r.telemetry_coverage_pct,
        r.ticks_missed,
        r.telemetry_late,
        r.telemetry_duplicated,
        r.telemetry_per_s,
        r.latency_p50_ticks,
        r.latency_p99_ticks,
        r.rtt_p50_ms,
        r.quic_rtt_ms
    );
    emit(&text)
}
