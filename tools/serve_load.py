#!/usr/bin/env python3
"""Load test of `apexsim serve` with `apexsim drive` bots (release builds), on this machine.

Starts one server, then SESSIONS sessions at once, each created and raced by its own BOTS bots
(plus AI cars) for LAPS laps, spread over PROCS drive processes (`drive --sessions K`: many
sessions on one runtime; by default one process per load core, the load generator's cost kept
low; `--procs 0` runs a process per session as before). With --pin (the default on a machine with two
cores or more) the server runs on core 0 only and the bots on the others (`taskset`), so the
server's CPU per client is measured without the load generator in its way. Scrapes /metrics before and after and reports,
per run: telemetry coverage and missed ticks, input-to-telemetry latency p50/p99 (in ticks),
late ticks, and the server's CPU time per connected client per second (from the process's
own CPU counter, apexsim_process_cpu_seconds_total) with the clients one core can serve.

    cargo build --release
    python3 tools/serve_load.py --sessions 1 --bots 16
"""
import argparse, json, os, re, resource, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "apexsim")


def scrape(http):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=BIN, help="the apexsim binary (default: the release build)")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--bots", type=int, default=16)
    ap.add_argument("--ai", type=int, default=0)
    ap.add_argument("--laps", type=int, default=1)
    ap.add_argument("--track", default="oval_simple")
    ap.add_argument("--procs", type=int, default=None,
                    help="drive processes (default: one per load core; 0: one per session)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    ap.add_argument("--shared-socket", action="store_true",
                    help="each drive process connects its bots from one UDP socket (drive --shared-socket)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    pin_server = ["taskset", "-c", "0"] if args.pin else []
    pin_load = ["taskset", "-c", f"1-{cores - 1}"] if args.pin else []
    data = tempfile.mkdtemp(prefix="apexsim-load-")
    env = dict(os.environ, RUST_LOG="apexsim=info")
    env["APEXSIM_SERVER_MAX_SESSIONS"] = str(max(8, args.sessions))
    env["APEXSIM_SERVER_MAX_CONNECTIONS"] = str(max(128, args.sessions * args.bots + 16))
    server = subprocess.Popen(
        pin_server + [args.bin, "--data", data, "serve", "--bind", "127.0.0.1:0", "--http-port", "0", "--format", "json"],
        stdout=subprocess.PIPE, stderr=open(os.path.join(data, "server.log"), "w"), env=env, cwd=ROOT, text=True)
    listening = json.loads(server.stdout.readline())
    quic = "127.0.0.1:" + listening["quic"].rsplit(":", 1)[1]
    http = "127.0.0.1:" + listening["http"].rsplit(":", 1)[1]
    before = scrape(http)
    t0 = time.time()
    load_cores = max(1, cores - 1) if args.pin else cores
    procs = args.procs if args.procs is not None else load_cores
    procs = args.sessions if procs <= 0 else min(procs, args.sessions)
    shares = [args.sessions // procs + (1 if i < args.sessions % procs else 0) for i in range(procs)]
    drives = [subprocess.Popen(
        pin_load + [args.bin, "drive", "--server", quic, "--fingerprint", listening["fingerprint"],
         "--sessions", str(share), "--bots", str(args.bots), "--ai", str(args.ai),
         "--laps", str(args.laps), "--track", args.track, "--format", "json"]
        + (["--shared-socket"] if args.shared_socket else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
        for share in shares]
    reports = []
    for d in drives:
        out, err = d.communicate()
        if d.returncode != 0:
            print(err[-2000:], file=sys.stderr)
            print(f"the server's log: {os.path.join(data, 'server.log')}", file=sys.stderr)
            sys.exit(f"drive failed with {d.returncode}")
        # One JSON report per session.
        reports += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(reports) != args.sessions:
        sys.exit(f"{len(reports)} session reports for {args.sessions} sessions")
    wall = time.time() - t0
    # The drive processes' own CPU (the server is not waited for yet, so not counted).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_cpu = usage.ru_utime + usage.ru_stime
    after = scrape(http)
    server.terminate()
    server.wait(timeout=15)
    clients = args.sessions * args.bots
    cpu = after["apexsim_process_cpu_seconds_total"] - before["apexsim_process_cpu_seconds_total"]
    ticks = after["apexsim_tick_duration_seconds_count"] - before["apexsim_tick_duration_seconds_count"]
    tick_us = 1e6 * (after["apexsim_tick_duration_seconds_sum"] - before["apexsim_tick_duration_seconds_sum"]) / max(ticks, 1)
    late = after["apexsim_ticks_late_total"] - before["apexsim_ticks_late_total"]
    # Race time only: the drive reports' telemetry seconds (countdown and race).
    race_s = max(b["telemetry_seconds"] for r in reports for b in r["per_bot"])
    per_client_ms = 1000.0 * cpu / (clients * wall)
    sent = after.get("apexsim_udp_sent_bytes_total", 0) - before.get("apexsim_udp_sent_bytes_total", 0)
    received = after.get("apexsim_udp_received_bytes_total", 0) - before.get("apexsim_udp_received_bytes_total", 0)
    tel_bytes = after.get("apexsim_telemetry_bytes_sent_total", 0) - before.get("apexsim_telemetry_bytes_sent_total", 0)
    tel_packets = after["apexsim_telemetry_packets_sent_total"] - before["apexsim_telemetry_packets_sent_total"]
    summary = {
        "sessions": args.sessions,
        "bots_per_session": args.bots,
        "drive_processes": procs,
        "shared_socket": args.shared_socket,
        "wall_s": round(wall, 1),
        "race_s": round(race_s, 1),
        "coverage_pct_min": min(r["telemetry_coverage_pct"] for r in reports),
        "server_pinned_to_one_core": args.pin,
        "ticks_missed": sum(r["ticks_missed"] for r in reports),
        "telemetry_late": sum(r.get("telemetry_late", 0) for r in reports),
        "telemetry_duplicated": sum(r.get("telemetry_duplicated", 0) for r in reports),
        "latency_p50_ticks_max": max(r["latency_p50_ticks"] for r in reports),
        "latency_p99_ticks_max": max(r["latency_p99_ticks"] for r in reports),
        "server_ticks": int(ticks),
        "server_ticks_late": int(late),
        "server_tick_mean_us": round(tick_us, 1),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_client_per_s": round(per_client_ms, 3),
        "clients_per_core_at_240hz": int(1000.0 / per_client_ms) if per_client_ms > 0 else None,
        # The telemetry datagrams' own bytes (before QUIC), per datagram and per client-second.
        "telemetry_bytes_per_datagram": round(tel_bytes / tel_packets, 1) if tel_packets else None,
        "telemetry_kbit_per_client_s": round(8 * tel_bytes / 1000 / (clients * race_s), 1) if race_s else None,
        # Over the telemetry's seconds (countdown and race), what QUIC put on the wire.
        "udp_sent_kbit_per_client_s": round(8 * sent / 1000 / (clients * race_s), 1) if race_s else None,
        "udp_received_kbit_per_client_s": round(8 * received / 1000 / (clients * race_s), 1) if race_s else None,
        "load_cpu_ms_per_client_per_s": round(1000.0 * load_cpu / (clients * wall), 3),
        "faults": [r["fault"] for r in reports if r["fault"]],
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
