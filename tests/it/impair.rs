//! Racing through a bad network: `apexsim relay` in front of the server drops 2 % of the
//! datagrams each way, delays each by 20 ms and jitters them by up to 5 ms more. The race
//! finishes, the bots count the telemetry they lost as the relay dropped it, and the datagrams
//! the jitter reordered as late, not missed.

use std::time::Duration;

use crate::common::Child;
use crate::server::{Server, json, metric};

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

#[test]
fn a_race_through_loss_delay_and_jitter_finishes_and_lost_and_late_telemetry_are_told_apart() {
    let server = Server::start(&[]);
    let listen = format!("127.0.0.1:{}", free_udp_port());
    let quic = server.quic.to_string();
    let mut relay = Child::spawn(&[
        "relay", "--listen", &listen, "--server", &quic, "--loss", "2", "--delay", "20ms",
        "--jitter", "5ms", "--seed", "3", "--format", "json",
    ]);
    relay
        .wait_for(Duration::from_secs(20), |l| l.contains("relaying"))
        .unwrap_or_else(|| panic!("the relay did not start:\n{}", relay.log.join("\n")));
    let bots = crate::common::drive(
        &server.content,
        listen.parse().expect("addr"),
        &server.cert,
        &[
            "--bots",
            "4",
            "--laps",
            "1",
            "--track",
            "mini_oval",
            "--timeout",
            "120",
        ],
    );
    let (code, out, log) = bots.finish();
    assert_eq!(code, 0, "drive failed through the relay:\n{log}\n{out}");
    let telemetry_sent = metric(&server.metrics(), "apexsim_telemetry_packets_sent_total");
    relay.interrupt();
    let (code, relayed, log) = relay.finish();
    assert_eq!(code, 0, "{log}");
    let report = json(&out);
    let stats = json(&relayed);
    assert_eq!(
        report["results"].as_array().map(Vec::len),
        Some(4),
        "{report}"
    );
    assert_eq!(stats["clients"], 4, "a socket per bot: {stats}");

    let lost = report["ticks_missed"].as_f64().expect("lost");
    let late = report["telemetry_late"].as_f64().expect("late");
    // The relay drops packets of every kind (handshake, frames, acknowledgements); the
    // telemetry's share of what the server sent the bots is what it dropped of telemetry.
    let to_client = &stats["to_client"];
    let share = telemetry_sent / to_client["received"].as_f64().expect("received");
    let dropped = to_client["dropped"].as_f64().expect("dropped") * share;
    let reordered = to_client["reordered"].as_f64().expect("reordered");
    eprintln!(
        "through 2% loss, 20 ms delay, 5 ms jitter: coverage {:.2}%, {lost} ticks lost for \
         {dropped:.0} telemetry datagrams the relay dropped ({:.1}% of the packets to the bots are \
         telemetry), {late} late (the relay sent {reordered} packets of every kind behind a later one), {} doubled; latency p50 {:.1} \
         ticks, p99 {:.1} ticks",
        report["telemetry_coverage_pct"]
            .as_f64()
            .unwrap_or(f64::NAN),
        share * 100.0,
        report["telemetry_duplicated"],
        report["latency_p50_ticks"].as_f64().unwrap_or(f64::NAN),
        report["latency_p99_ticks"].as_f64().unwrap_or(f64::NAN),
    );
    assert!(
        (lost - dropped).abs() <= 0.1 * dropped,
        "lost telemetry ({lost}) is what the relay dropped ({dropped}), within 10%"
    );
    assert!(late > 0.0, "reordered datagrams are late: {report}");
    assert!(
        report["telemetry_coverage_pct"].as_f64() > Some(96.0),
        "late ones are not missed: {report}"
    );
    let (code, _, log, _, _dir) = server.stop();
    assert_eq!(code, 0, "{log}");
}
