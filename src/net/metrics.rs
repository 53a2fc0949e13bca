//! The server's Prometheus metrics (seed 003 section 12, plus dropped and malformed packets),
//! rendered in the text format on `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the server exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Authenticated connections.
    pub connected_players: IntGauge,
    /// Sessions counting down or racing.
    pub active_sessions: IntGauge,
    /// Sessions that exist (any state).
    pub sessions: IntGauge,
    /// Cars in the world.
    pub cars: IntGauge,
    /// Time of one simulation tick (the world's update, lobby work and snapshots), in seconds.
    pub tick_duration_seconds: Histogram,
    /// Ticks that started later than one tick period after their deadline.
    pub ticks_late: IntCounter,
    /// Telemetry datagrams sent.
    pub telemetry_packets_sent: IntCounter,
    /// Bytes of the telemetry datagrams sent (their payload, before QUIC's headers).
    pub telemetry_bytes_sent: IntCounter,
    /// Input datagrams accepted.
    pub input_packets_received: IntCounter,
    /// UDP bytes sent to clients (QUIC's own count, packet headers and encryption included),
    /// added when a connection ends.
    pub udp_sent_bytes: IntCounter,
    /// UDP bytes received from clients, added when a connection ends.
    pub udp_received_bytes: IntCounter,
    /// Each player's round-trip time in ticks, from the server tick its inputs acknowledge.
    pub player_rtt_ticks: Histogram,
    /// Packets dropped, by reason.
    pub packets_dropped: IntCounterVec,
    /// Malformed or oversized frames and datagrams.
    pub malformed_packets: IntCounter,
    /// Connections closed for protocol violations.
    pub violation_disconnects: IntCounter,
    /// Connections refused (limit, shutdown) or failed authentication.
    pub refused_connections: IntCounterVec,
    /// Archive work per flush (write-ahead append, lap assembly, hand-off to the writer), in
    /// seconds.
    pub archive_write_duration_seconds: Histogram,
    /// Sessions ended by a fault.
    pub session_faults: IntCounter,
    /// Process CPU time (user + system) in seconds, read from `/proc/self/stat`: a counter
    /// brought up to the kernel's figure on every scrape.
    pub process_cpu_seconds: prometheus::Counter,
    /// Laps durable in the archive (from the event bus).
    pub laps_archived: IntCounter,
    /// Upload attempts of laps to the Racing Coach server, by outcome (delivered, retry,
    /// refused).
    pub lap_uploads: IntCounterVec,
    /// The host's CPU, load, memory, sensors and this process (`apexsim_host_*`), read on
    /// every scrape; shared with the API's `/api/v1/host`.
    pub host: std::sync::Arc<std::sync::Mutex<crate::host::HostMonitor>>,
    /// The Redis publisher's counters (all zero when `[redis] url` is unset).
    pub redis: crate::publish::PublisherCounters,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(g.clone()));
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(h.clone()));
    h
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(c.clone()));
    c
}

// Metric names and help texts are constants checked by the tests; a bad one is a bug.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str) -> ! {
    panic!("invalid metric definition {name}")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let tick_buckets = vec![
            25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2e-3, 4.167e-3, 8.333e-3, 16.667e-3,
        ];
        let flush_buckets = vec![
            0.1e-3, 0.25e-3, 0.5e-3, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
        ];
        Self {
            connected_players: gauge(&r, "apexsim_connected_players", "Authenticated connections"),
            active_sessions: gauge(
                &r,
                "apexsim_active_sessions",
                "Sessions counting down or racing",
            ),
            sessions: gauge(&r, "apexsim_sessions", "Sessions in any state"),
            cars: gauge(&r, "apexsim_cars", "Cars in the world"),
            tick_duration_seconds: histogram(
                &r,
                "apexsim_tick_duration_seconds",
                "Time of one simulation tick in seconds",
                tick_buckets,
            ),
            ticks_late: counter(
                &r,
                "apexsim_ticks_late_total",
                "Ticks that started more than one period after their deadline",
            ),
            telemetry_packets_sent: counter(
                &r,
                "apexsim_telemetry_packets_sent_total",
                "Telemetry datagrams sent",
            ),
            telemetry_bytes_sent: counter(
                &r,
                "apexsim_telemetry_bytes_sent_total",
                "Bytes of the telemetry datagrams sent, before QUIC's headers",
            ),
            input_packets_received: counter(
                &r,
                "apexsim_input_packets_received_total",
                "Input datagrams accepted",
            ),
            udp_sent_bytes: counter(
                &r,
                "apexsim_udp_sent_bytes_total",
                "UDP bytes sent to clients, counted when each connection ends",
            ),
            udp_received_bytes: counter(
                &r,
                "apexsim_udp_received_bytes_total",
                "UDP bytes received from clients, counted when each connection ends",
            ),
            player_rtt_ticks: histogram(
                &r,
                "apexsim_player_rtt_ticks",
                "Round-trip time per input, in ticks: the tick it arrived at minus the tick it acknowledges",
                vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0, 48.0, 240.0],
            ),
            packets_dropped: counter_vec(
                &r,
                "apexsim_packets_dropped_total",
                "Packets dropped, by reason",
                "reason",
            ),
            malformed_packets: counter(
                &r,
                "apexsim_malformed_packets_total",
                "Malformed or oversized frames and datagrams",
            ),
            violation_disconnects: counter(
                &r,
                "apexsim_violation_disconnects_total",
                "Connections closed for protocol violations",
            ),
            laps_archived: counter(
                &r,
                "apexsim_laps_archived_total",
                "Laps durable in the archive",
            ),
            lap_uploads: counter_vec(
                &r,
                "apexsim_lap_uploads_total",
                "Lap uploads to the Racing Coach server, by outcome",
                "outcome",
            ),
            host: Default::default(),
            redis: crate::publish::PublisherCounters {
                published: counter(
                    &r,
                    "apexsim_redis_messages_published_total",
                    "Messages Redis took",
                ),
                dropped: counter(
                    &r,
                    "apexsim_redis_messages_dropped_total",
                    "Messages dropped while Redis was unreachable (the buffer was full)",
                ),
                buffered: gauge(
                    &r,
                    "apexsim_redis_messages_buffered",
                    "Messages waiting for Redis",
                ),
                up: gauge(
                    &r,
                    "apexsim_redis_up",
                    "1 while the last push to Redis succeeded (0 when unreachable or not configured)",
                ),
            },
            refused_connections: counter_vec(
                &r,
                "apexsim_refused_connections_total",
                "Connections refused or failing authentication, by reason",
                "reason",
            ),
            archive_write_duration_seconds: histogram(
                &r,
                "apexsim_archive_write_duration_seconds",
                "Archive work per 250 ms flush in seconds",
                flush_buckets,
            ),
            session_faults: counter(
                &r,
                "apexsim_session_faults_total",
                "Sessions ended by a fault",
            ),
            process_cpu_seconds: {
                let g = prometheus::Counter::new(
                    "apexsim_process_cpu_seconds_total",
                    "Process CPU time (user + system) in seconds",
                )
                .unwrap_or_else(|_| unreachable_metric("apexsim_process_cpu_seconds_total"));
                let _ = r.register(Box::new(g.clone()));
                g
            },
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(cpu) = process_cpu_seconds() {
            let behind = cpu - self.process_cpu_seconds.get();
            if behind > 0.0 {
                self.process_cpu_seconds.inc_by(behind);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8_lossy(&out).into_owned();
        if let Ok(mut host) = self.host.lock() {
            text.push_str(&host.render());
        }
        text
    }

    /// Counts a dropped packet.
    pub fn dropped(&self, reason: DropReason) {
        self.packets_dropped
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: Refusal) {
        self.refused_connections
            .with_label_values(&[reason.label()])
            .inc();
    }
}

/// Why a packet was dropped: the `reason` label of `apexsim_packets_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A control message over the connection's rate.
    ControlRateLimit,
    /// A datagram over the connection's rate.
    DatagramRateLimit,
    /// An input with a non-finite control value.
    NonFiniteInput,
    /// An input from a connection that drives no car.
    InputWithoutCar,
    /// An input older than one already applied.
    InputOutOfOrder,
    /// A connection's queue of control frames was full.
    ControlQueueFull,
    /// The transport refused a datagram (the connection is gone, or it is too large); one
    /// that cannot be sent in time is dropped by the transport's buffer, oldest first.
    DatagramSendFailed,
}

impl DropReason {
    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ControlRateLimit => "control_rate_limit",
            Self::DatagramRateLimit => "datagram_rate_limit",
            Self::NonFiniteInput => "non_finite_input",
            Self::InputWithoutCar => "input_without_car",
            Self::InputOutOfOrder => "input_out_of_order",
            Self::ControlQueueFull => "control_queue_full",
            Self::DatagramSendFailed => "datagram_send_failed",
        }
    }
}

/// Why a connection was refused: the `reason` label of `apexsim_refused_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The server is shutting down.
    Shutdown,
    /// The connection limit.
    Limit,
    /// A wrong protocol version.
    Version,
    /// A token not accepted.
    Token,
    /// A player name out of bounds.
    Name,
    /// A first message that was not `Authenticate`.
    Protocol,
}

impl Refusal {
    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Limit => "limit",
            Self::Version => "version",
            Self::Token => "token",
            Self::Name => "name",
            Self::Protocol => "protocol",
        }
    }
}

/// CPU time of this process (user + system) in seconds, from `/proc/self/stat` (Linux; the
/// kernel reports it in USER_HZ = 100 ticks per second). `None` elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Reads one metric's value from a Prometheus text exposition (first sample whose name and
/// labels start with `series`).
pub fn scrape_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Counts archived laps and upload outcomes from the event bus into the server's metrics.
pub struct MetricsHandler(pub Metrics);

#[async_trait::async_trait]
impl crate::events::EventHandler for MetricsHandler {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn kinds(&self) -> &[crate::events::EventKind] {
        use crate::events::EventKind;
        &[
            EventKind::LapArchived,
            EventKind::LapUploadSucceeded,
            EventKind::LapUploadFailed,
        ]
    }

    async fn handle(&self, event: crate::events::Event, _ctx: &crate::events::HandlerContext) {
        use crate::events::Event;
        match event {
            Event::LapArchived(_) => self.0.laps_archived.inc(),
            Event::LapUploadSucceeded(_) => {
                self.0.lap_uploads.with_label_values(&["delivered"]).inc();
            }
            Event::LapUploadFailed(u) => {
                let outcome = if u.will_retry { "retry" } else { "refused" };
                self.0.lap_uploads.with_label_values(&[outcome]).inc();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_metric_is_exported_and_moves() {
        let m = Metrics::new();
        m.telemetry_packets_sent.inc_by(3);
        m.dropped(DropReason::ControlRateLimit);
        m.tick_duration_seconds.observe(12e-6);
        let text = m.render();
        for name in [
            "apexsim_connected_players",
            "apexsim_active_sessions",
            "apexsim_tick_duration_seconds_bucket",
            "apexsim_telemetry_packets_sent_total",
            "apexsim_input_packets_received_total",
            "apexsim_archive_write_duration_seconds_bucket",
            "apexsim_malformed_packets_total",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert_eq!(
            scrape_value(&text, "apexsim_telemetry_packets_sent_total"),
            Some(3.0)
        );
        assert_eq!(
            scrape_value(
                &text,
                "apexsim_packets_dropped_total{reason=\"control_rate_limit\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            scrape_value(&text, "apexsim_tick_duration_seconds_count"),
            Some(1.0)
        );
        assert!(
            process_cpu_seconds().is_some_and(|s| s >= 0.0),
            "Linux reports CPU time"
        );
    }
}
