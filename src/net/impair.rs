//! A network impairment relay: UDP between clients and the server, dropping, delaying,
//! jittering and duplicating datagrams both ways, so a race can be run through a bad network on
//! a machine without netem (`apexsim relay`, and the tests). Each client gets its own socket
//! toward the server, so the server sees one address per client as it would without the relay.
//! The impairment is a function of its seed: the same seed drops the same datagrams of the same
//! traffic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apexsim_systems::sim::SimRng;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the relay does to each datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Share dropped, 0..=1.
    pub loss: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// A further delay, uniform in `0..=jitter`: datagrams closer together than this arrive
    /// out of order.
    pub jitter: Duration,
    /// Share sent twice, 0..=1.
    pub duplicate: f64,
    /// Seed of the relay's generator.
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            seed: 1,
        }
    }
}

/// Datagrams one way.
#[derive(Debug, Default, Serialize)]
pub struct Direction {
    /// Received from the sender.
    pub received: u64,
    /// Dropped.
    pub dropped: u64,
    /// Sent a second time.
    pub duplicated: u64,
    /// Passed on (copies included).
    pub forwarded: u64,
    /// Passed on after a datagram that came in later.
    pub reordered: u64,
}

/// What the relay did, both ways.
#[derive(Debug, Default, Serialize)]
pub struct RelayStats {
    /// Clients seen.
    pub clients: u64,
    /// Client to server.
    pub to_server: Direction,
    /// Server to client.
    pub to_client: Direction,
}

#[derive(Debug, Default)]
struct Counters {
    clients: AtomicU64,
    ways: [[AtomicU64; 5]; 2],
}

const RECEIVED: usize = 0;
const DROPPED: usize = 1;
const DUPLICATED: usize = 2;
const FORWARDED: usize = 3;
const REORDERED: usize = 4;

impl Counters {
    fn add(&self, to_server: bool, what: usize, n: u64) {
        self.ways[usize::from(!to_server)][what].fetch_add(n, Ordering::Relaxed);
    }

    fn stats(&self) -> RelayStats {
        let way = |w: &[AtomicU64; 5]| Direction {
            received: w[RECEIVED].load(Ordering::Relaxed),
            dropped: w[DROPPED].load(Ordering::Relaxed),
            duplicated: w[DUPLICATED].load(Ordering::Relaxed),
            forwarded: w[FORWARDED].load(Ordering::Relaxed),
            reordered: w[REORDERED].load(Ordering::Relaxed),
        };
        RelayStats {
            clients: self.clients.load(Ordering::Relaxed),
            to_server: way(&self.ways[0]),
            to_client: way(&self.ways[1]),
        }
    }
}

/// A datagram on its way: which way, for which client.
#[derive(Clone)]
struct Arrival {
    bytes: Vec<u8>,
    client: SocketAddr,
    to_server: bool,
}

/// A datagram held until it is due; ordered by due time, then arrival.
struct Held {
    due: Instant,
    arrived: u64,
    arrival: Arrival,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.arrived) == (other.due, other.arrived)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.arrived).cmp(&(other.due, other.arrived))
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Listens on `listen` (port 0 picks one) and relays to `server` with `impairment`; runs
    /// on the current tokio runtime until stopped.
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub async fn start(
        listen: SocketAddr,
        server: SocketAddr,
        impairment: Impairment,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_clients(
            front.clone(),
            server,
            tx,
            counters.clone(),
            stopped.clone(),
        ));
        tokio::spawn(schedule(front, rx, impairment, counters.clone(), stopped));
        Ok(Self {
            addr,
            counters,
            stop,
        })
    }

    /// Where clients send.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.stats()
    }

    /// Stops relaying; what it did.
    pub fn stop(self) -> RelayStats {
        let _ = self.stop.send(true);
        self.counters.stats()
    }
}

/// Reads what clients send; makes each new client its socket toward the server, read by a
/// task of its own.
async fn read_clients(
    front: Arc<UdpSocket>,
    server: SocketAddr,
    tx: mpsc::UnboundedSender<(Arrival, Option<Arc<UdpSocket>>)>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = tokio::select! {
            r = front.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "relay: receive failed");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut new = None;
        if let std::collections::hash_map::Entry::Vacant(slot) = backs.entry(client) {
            let unspecified = if server.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let back = match UdpSocket::bind(unspecified).await {
                Ok(b) => Arc::new(b),
                Err(e) => {
                    tracing::warn!(error = %e, "relay: no socket for a new client");
                    continue;
                }
            };
            if let Err(e) = back.connect(server).await {
                tracing::warn!(error = %e, "relay: cannot reach the server");
                continue;
            }
            counters.clients.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(read_server(
                back.clone(),
                client,
                tx.clone(),
                counters.clone(),
                stop.clone(),
            ));
            slot.insert(back.clone());
            new = Some(back);
        }
        counters.add(true, RECEIVED, 1);
        let arrival = Arrival {
            bytes: buf[..n].to_vec(),
            client,
            to_server: true,
        };
        if tx.send((arrival, new)).is_err() {
            return;
        }
    }
}

/// Reads what the server sends one client.
async fn read_server(
    back: Arc<UdpSocket>,
    client: SocketAddr,
    tx: mpsc::UnboundedSender<(Arrival, Option<Arc<UdpSocket>>)>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tokio::select! {
            r = back.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(_) => continue,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        counters.add(false, RECEIVED, 1);
        let arrival = Arrival {
            bytes: buf[..n].to_vec(),
            client,
            to_server: false,
        };
        if tx.send((arrival, None)).is_err() {
            return;
        }
    }
}

/// Decides each datagram's fate and sends it when it is due.
async fn schedule(
    front: Arc<UdpSocket>,
    mut rx: mpsc::UnboundedReceiver<(Arrival, Option<Arc<UdpSocket>>)>,
    imp: Impairment,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = SimRng::seeded(imp.seed);
    let mut unit = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    // The latest arrival sent, per client and way, to count what goes out behind a later one.
    let mut last_sent: HashMap<(SocketAddr, bool), u64> = HashMap::new();
    let mut arrived = 0u64;
    loop {
        let next = held.peek().map(|Reverse(h)| h.due);
        tokio::select! {
            got = rx.recv() => {
                let Some((arrival, back)) = got else { return };
                if let Some(back) = back {
                    backs.insert(arrival.client, back);
                }
                let way = arrival.to_server;
                if unit() < imp.loss {
                    counters.add(way, DROPPED, 1);
                    continue;
                }
                let copies = if unit() < imp.duplicate {
                    counters.add(way, DUPLICATED, 1);
                    2
                } else {
                    1
                };
                arrived += 1;
                let now = Instant::now();
                for _ in 0..copies {
                    let due = now + imp.delay + imp.jitter.mul_f64(unit());
                    let copy = arrival.clone();
                    held.push(Reverse(Held { due, arrived, arrival: copy }));
                }
            }
            () = sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(h)| h.due <= now) {
            let Some(Reverse(h)) = held.pop() else { break };
            let way = h.arrival.to_server;
            let sent = if way {
                match backs.get(&h.arrival.client) {
                    Some(back) => back.send(&h.arrival.bytes).await.is_ok(),
                    None => false,
                }
            } else {
                front
                    .send_to(&h.arrival.bytes, h.arrival.client)
                    .await
                    .is_ok()
            };
            if sent {
                counters.add(way, FORWARDED, 1);
                let last = last_sent.entry((h.arrival.client, way)).or_default();
                if h.arrived < *last {
                    counters.add(way, REORDERED, 1);
                }
                *last = (*last).max(h.arrived);
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that echoes, and a client sending numbered datagrams through the relay.
    async fn through(imp: Impairment, n: u32) -> (Vec<u32>, RelayStats) {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let server_addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((k, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(&buf[..k], from).await;
            }
        });
        let relay = Relay::start("127.0.0.1:0".parse().expect("addr"), server_addr, imp)
            .await
            .expect("relay");
        let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        client.connect(relay.local_addr()).await.expect("connect");
        // Read while sending: a socket's buffer holds a few hundred small datagrams only.
        let reader = client.clone();
        let read = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(Ok(k)) =
                tokio::time::timeout(Duration::from_millis(500), reader.recv(&mut buf)).await
            {
                if k == 4 {
                    got.push(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            got
        });
        for i in 0..n {
            client.send(&i.to_le_bytes()).await.expect("send");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let got = read.await.expect("reader");
        (got, relay.stop())
    }

    #[tokio::test]
    async fn a_clean_relay_passes_everything_in_order() {
        let (got, stats) = through(Impairment::default(), 200).await;
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert_eq!(stats.clients, 1);
        assert_eq!(stats.to_server.forwarded, 200);
        assert_eq!(stats.to_client.forwarded, 200);
        assert_eq!(stats.to_client.reordered, 0);
    }

    #[tokio::test]
    async fn loss_duplication_and_jitter_are_counted_as_they_happen() {
        let imp = Impairment {
            loss: 0.1,
            jitter: Duration::from_millis(5),
            duplicate: 0.05,
            seed: 7,
            ..Impairment::default()
        };
        let (got, stats) = through(imp, 1000).await;
        let lost = stats.to_server.dropped + stats.to_client.dropped;
        // About 19% lost over the two ways, about 5% doubled each way.
        assert!((120..=260).contains(&lost), "{stats:?}");
        assert!(stats.to_server.duplicated > 10, "{stats:?}");
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() < got.len(), "duplicates arrive");
        assert!(got.windows(2).any(|w| w[1] < w[0]), "jitter reorders");
        assert!(stats.to_client.reordered > 0, "{stats:?}");
        assert_eq!(
            got.len() as u64,
            stats.to_client.forwarded,
            "everything forwarded arrives on loopback"
        );
    }
}
