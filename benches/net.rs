//! Network benchmarks: one tick's telemetry to N clients on loopback (16, 256, 1,024), each next
//! to the physical reference in the same run.
//!
//! - `net/telemetry/quic`: a datagram of a full 16-car telemetry packet's size (every car in it)
//!   handed to each
//!   of N QUIC connections' transports the way the simulation thread does
//!   (`Link::send_datagram`, from one buffer), until every client has received its copy.
//! - `net/telemetry/udp`: the same bytes from one plain UDP socket to N peer sockets, until
//!   every peer has received them.
//!
//! The clients (QUIC endpoints or UDP sockets, one task each) run on a runtime of their own.
//! `Throughput::Elements` is datagrams, so the inverse of criterion's elements/s is the cost of
//! one datagram, both ends on this machine included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use apexsim::net::link::Link;
use apexsim::net::tls::{self, Certificates, Trust};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 3] = [16, 256, 1024];
const DATAGRAM: usize = apexsim::net::protocol::telemetry_datagram_len(16);

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until `counter` reaches `target`.
fn wait_for(counter: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::Acquire) < target {
        assert!(Instant::now() < deadline, "datagrams lost on loopback");
        std::thread::yield_now();
    }
}

/// A server endpoint with `n` accepted connections, and `n` clients counting datagrams.
struct Quic {
    links: Vec<Link>,
    received: Arc<AtomicU64>,
    _endpoints: Vec<quinn::Endpoint>,
    _dir: tempfile::TempDir,
}

fn quic(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    n: usize,
) -> Quic {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = tls::server_identity(dir.path(), None, None).expect("identity");
    let certs = Arc::new(Certificates::new(&identity, SystemTime::now()).expect("certs"));
    let config = tls::quic_server_config(certs, Duration::from_secs(60)).expect("config");
    let _guard = server_rt.enter();
    let server = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("server endpoint");
    let addr = server.local_addr().expect("addr");
    let received = Arc::new(AtomicU64::new(0));
    let mut endpoints = vec![server.clone()];
    let mut links = Vec::with_capacity(n);
    for _ in 0..n {
        let client = {
            let _c = client_rt.enter();
            apexsim::net::client::endpoint(&Trust::Insecure).expect("client endpoint")
        };
        let connecting = client.connect(addr, "localhost").expect("connect");
        let received = received.clone();
        client_rt.spawn(async move {
            let Ok(conn) = connecting.await else { return };
            while conn.read_datagram().await.is_ok() {
                received.fetch_add(1, Ordering::Release);
            }
        });
        let incoming = server_rt
            .block_on(server.accept())
            .expect("an incoming connection");
        let conn = server_rt
            .block_on(incoming.accept().expect("accepted"))
            .expect("handshake");
        links.push(
            server_rt
                .block_on(Link::accept(conn, Duration::from_secs(5)))
                .expect("link"),
        );
        endpoints.push(client);
    }
    Quic {
        links,
        received,
        _endpoints: endpoints,
        _dir: dir,
    }
}

/// `n` UDP peers counting datagrams, and the socket that sends to them.
fn udp(
    client_rt: &tokio::runtime::Runtime,
    n: usize,
) -> (std::net::UdpSocket, Vec<SocketAddr>, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        peers.push(socket.local_addr().expect("addr"));
        let received = received.clone();
        client_rt.spawn(async move {
            let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
            let mut buf = [0u8; 2048];
            while socket.recv(&mut buf).await.is_ok() {
                received.fetch_add(1, Ordering::Release);
            }
        });
    }
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    (sender, peers, received)
}

fn telemetry(c: &mut Criterion) {
    let server_rt = runtime(1);
    let client_rt = runtime(1);
    let payload = vec![0x5au8; DATAGRAM];
    let mut g = c.benchmark_group("net/telemetry");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for n in SIZES {
        g.throughput(Throughput::Elements(n as u64));
        let setup = quic(&server_rt, &client_rt, n);
        let mut buffer = bytes::BytesMut::new();
        let mut expected = setup.received.load(Ordering::Acquire);
        g.bench_with_input(BenchmarkId::new("quic", n), &n, |b, _| {
            b.iter(|| {
                buffer.reserve(DATAGRAM * n);
                for link in &setup.links {
                    buffer.extend_from_slice(&payload);
                    link.send_datagram(buffer.split().freeze())
                        .expect("datagram");
                }
                expected += n as u64;
                wait_for(&setup.received, expected);
            });
        });
        let (sender, peers, received) = udp(&client_rt, n);
        let mut expected = 0;
        let payload = Bytes::from(payload.clone());
        g.bench_with_input(BenchmarkId::new("udp", n), &n, |b, _| {
            b.iter(|| {
                for peer in &peers {
                    sender.send_to(&payload, peer).expect("send");
                }
                expected += n as u64;
                wait_for(&received, expected);
            });
        });
    }
    g.finish();
}

criterion_group!(benches, telemetry);
criterion_main!(benches);
