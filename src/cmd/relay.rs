//! `apexsim relay`: a bad network between clients and a server, on a machine without netem:
//! UDP relayed both ways with loss, delay, jitter and duplication ([`apexsim::net::impair`]).
//! Runs until Ctrl-C (or SIGTERM), then prints what it did.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use apexsim::net::impair::{Impairment, Relay, RelayStats};

use super::print::{Format, emit, emit_json};
use super::{Context, UsageError, parse_duration};

/// `apexsim relay` arguments.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Where clients send (port 0 picks one; the address is logged).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The server's QUIC address.
    #[arg(long, value_name = "ADDR")]
    pub server: SocketAddr,
    /// Datagrams dropped, in percent, each way.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub loss: f64,
    /// Delay added to every datagram.
    #[arg(long, default_value = "0ms", value_parser = parse_duration, value_name = "DURATION")]
    pub delay: Duration,
    /// Further random delay, uniform up to this: datagrams closer together arrive reordered.
    #[arg(long, default_value = "0ms", value_parser = parse_duration, value_name = "DURATION")]
    pub jitter: Duration,
    /// Datagrams sent twice, in percent, each way.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    pub duplicate: f64,
    /// Seed of the relay's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output format of the report.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Runs `apexsim relay`.
///
/// # Errors
/// A percentage out of range, or the socket cannot be bound.
pub fn run(args: &RelayArgs, ctx: &Context) -> anyhow::Result<()> {
    for (name, v) in [("--loss", args.loss), ("--duplicate", args.duplicate)] {
        if !(0.0..=100.0).contains(&v) {
            return Err(UsageError(format!("{name} {v}: a percentage within 0..=100")).into());
        }
    }
    let impairment = Impairment {
        loss: args.loss / 100.0,
        delay: args.delay,
        jitter: args.jitter,
        duplicate: args.duplicate / 100.0,
        seed: args.seed,
    };
    let stats = ctx.runtime()?.block_on(async {
        let relay = Relay::start(args.listen, args.server, impairment)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        tracing::info!(listen = %relay.local_addr(), server = %args.server, "relaying");
        apexsim::net::shutdown_signal().await;
        anyhow::Ok(relay.stop())
    })?;
    print_stats(&stats, args.format).context("writing the report")
}

fn print_stats(stats: &RelayStats, format: Format) -> std::io::Result<()> {
    if format == Format::Json {
        return emit_json(stats);
    }
    let way = |name: &str, d: &apexsim::net::impair::Direction| {
        format!(
            "{name}: {} received, {} dropped, {} doubled, {} forwarded ({} reordered)\n",
            d.received, d.dropped, d.duplicated, d.forwarded, d.reordered
        )
    };
    emit(&format!(
        "{} clients\n{}{}",
        stats.clients,
        way("to the server", &stats.to_server),
        way("to the clients", &stats.to_client)
    ))
}
