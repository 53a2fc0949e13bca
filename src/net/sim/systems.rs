//! The network's two ECS systems: [`apply_inputs`] reads the players' input datagrams off
//! their transports, polices them (rate limit, malformed and non-finite inputs count as
//! violations) and applies them to their cars' controls in [`SimSystems::Input`], and [`send_telemetry`] builds, encodes and queues each
//! player's snapshot datagram in [`SimSystems::Snapshot`] (each car encoded once per tick, the
//! cars far from a player at [`TelemetryRates`]' lower rate), finding faulted sessions on the way.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use apexsim_systems::prelude::*;
use bevy_ecs::prelude::{Component, Entity, Local, Query, Res, ResMut, Resource};
use tokio::sync::mpsc;

use super::{ConnId, Outgoing};
use crate::net::config::ServerConfig;
use crate::net::connection::{RateLimit, Violations};
use crate::net::link::Link;
use crate::net::metrics::{DropReason, Metrics};
use crate::net::protocol::{
    self, CAR_TELEMETRY_BYTES, CarTelemetry, CloseReason, FLAG_COLLIDING, FLAG_OFF_TRACK,
    MAX_DATAGRAM_BYTES, PlayerInput, SessionState, TelemetryHeader, telemetry_datagram_len,
};

/// A human's car: its connection and what its inputs said last.
#[derive(Component, Debug, Clone, Copy)]
pub struct NetDriver {
    /// The connection.
    pub conn: ConnId,
    /// Highest input `seq` applied.
    pub input_seq: u32,
}

/// How input datagrams are policed, from `[network]` in `server.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputPolicy {
    /// Datagrams accepted per second per connection.
    pub datagram_rate_per_s: u32,
    /// Violations within 60 s that close a connection.
    pub violations_per_minute: u32,
}

impl InputPolicy {
    /// The policy the configuration sets.
    pub fn from_config(config: &ServerConfig) -> Self {
        Self {
            datagram_rate_per_s: config.network.datagram_rate_per_s,
            violations_per_minute: config.network.violations_per_minute,
        }
    }
}

/// Datagrams read off one connection in one tick at most; what is left waits in the
/// transport's buffer (which drops the oldest when full) for the next tick. Above the
/// datagram rate limit of any sane configuration, so it only bounds a tick's work.
const MAX_INPUTS_PER_TICK: usize = 64;

/// How inputs are policed, which car each connection drives, and the connections heard from
/// this tick.
#[derive(Resource)]
pub struct NetInputs {
    pub(super) policy: InputPolicy,
    pub(super) cars: HashMap<ConnId, Entity>,
    pub(super) heard: Vec<ConnId>,
}

/// Where each connection's outgoing queue is.
#[derive(Resource, Default)]
pub struct NetLinks(pub(super) HashMap<ConnId, ClientLink>);

/// How the simulation reaches one connection: frames and closes through its task's queue,
/// telemetry datagrams straight onto its transport (no task woken per datagram; the
/// transport's own buffer drops the oldest when a client falls behind), input datagrams
/// straight off it, under the connection's rate limit and violation count.
#[derive(Debug)]
pub struct ClientLink {
    /// The connection task's queue.
    pub out: mpsc::Sender<Outgoing>,
    /// The transport, for datagrams.
    pub datagrams: Link,
    /// The connection's violations, counted with its task's.
    violations: Arc<Violations>,
    /// Its input datagrams' rate limit.
    rate: RateLimit,
    /// Whether a close was asked for (nothing more is read).
    closing: bool,
}

impl ClientLink {
    /// The link of a connection that just authenticated.
    pub fn new(
        out: mpsc::Sender<Outgoing>,
        datagrams: Link,
        violations: Arc<Violations>,
        policy: &InputPolicy,
    ) -> Self {
        Self {
            out,
            datagrams,
            violations,
            rate: RateLimit::new(policy.datagram_rate_per_s),
            closing: false,
        }
    }

    /// The input datagrams waiting on the transport, policed at `now` (the tick's clock): each
    /// good input passed to `apply`. Over the violation limit, the connection's task is told
    /// to close it.
    fn read_inputs(
        &mut self,
        now: Instant,
        policy: &InputPolicy,
        metrics: &Metrics,
        mut apply: impl FnMut(PlayerInput),
    ) {
        use futures::FutureExt;
        if self.closing {
            return;
        }
        for _ in 0..MAX_INPUTS_PER_TICK {
            // An error is the connection's end, which its task sees and reports.
            let Some(Ok(bytes)) = self.datagrams.read_datagram().now_or_never() else {
                return;
            };
            let violation = if !self.rate.take(now) {
                metrics.dropped(DropReason::DatagramRateLimit);
                true
            } else {
                match protocol::decode_input(&bytes) {
                    Ok(input)
                        if [input.throttle, input.brake, input.steering]
                            .iter()
                            .all(|v| v.is_finite()) =>
                    {
                        apply(input);
                        false
                    }
                    Ok(_) => {
                        metrics.malformed_packets.inc();
                        metrics.dropped(DropReason::NonFiniteInput);
                        true
                    }
                    Err(e) => {
                        metrics.malformed_packets.inc();
                        tracing::debug!(error = %e, "malformed datagram dropped");
                        true
                    }
                }
            };
            if violation && self.violations.add(now, policy.violations_per_minute) {
                self.closing = true;
                // A full queue means the task is behind; it closes on its own violations
                // soon enough, and this link reads nothing more.
                let _ = self
                    .out
                    .try_send(Outgoing::Close(CloseReason::ProtocolViolation));
                return;
            }
        }
    }
}

/// Which cars each player's telemetry carries: its own car and every car within
/// `full_rate_radius_m` of it every tick, the others every `far_every_ticks` ticks (staggered
/// by car index, so each datagram carries a share of them), and every car on the race's last
/// tick. `[network] telemetry_full_rate_radius_m` and `telemetry_far_every_ticks` in
/// `server.toml`.
#[derive(Resource, Debug, Clone, Copy, PartialEq)]
pub struct TelemetryRates {
    /// Distance within which a car goes out every tick, in metres.
    pub full_rate_radius_m: f32,
    /// Ticks between two datagrams carrying a car farther away (1: every car every tick).
    pub far_every_ticks: u32,
}

impl TelemetryRates {
    /// Whether a car `distance_sq_cm` (squared, in cm²) from the receiver's car goes out at
    /// `tick`.
    fn carries(&self, tick: u64, index: u8, distance_sq_cm: i64) -> bool {
        let radius_cm = f64::from(self.full_rate_radius_m) * 100.0;
        distance_sq_cm as f64 <= radius_cm * radius_cm
            || (tick + u64::from(index)).is_multiple_of(u64::from(self.far_every_ticks.max(1)))
    }
}

/// The metrics, for the systems.
#[derive(Resource, Clone)]
pub struct NetMetrics(pub Metrics);

/// Sessions the snapshot found faulted this tick, and sessions a drill asked to panic.
#[derive(Resource, Default)]
pub struct SessionFaults {
    /// Session entity and what happened.
    pub faulted: Vec<(Entity, String)>,
    /// Sessions whose next per-tick work panics (fault injection).
    pub panic_next: HashSet<Entity>,
}

/// Reads each connection's input datagrams ([`ClientLink`] polices them) into the controls
/// of the car it drives: clamped, latest wins.
pub fn apply_inputs(
    mut inputs: ResMut<NetInputs>,
    mut links: ResMut<NetLinks>,
    tick: Res<SimTick>,
    metrics: Res<NetMetrics>,
    mut cars: Query<(&mut Controls, &mut NetDriver)>,
) {
    let NetInputs {
        policy,
        cars: by_conn,
        heard,
    } = &mut *inputs;
    let metrics = &metrics.0;
    // One clock reading per tick serves every connection's rate limit.
    let now = Instant::now();
    for (&conn, link) in &mut links.0 {
        let car = by_conn.get(&conn).copied();
        link.read_inputs(now, policy, metrics, |input| {
            heard.push(conn);
            let Some(car) = car else {
                metrics.dropped(DropReason::InputWithoutCar);
                return;
            };
            if let Ok((mut controls, mut driver)) = cars.get_mut(car) {
                if input.seq < driver.input_seq {
                    metrics.dropped(DropReason::InputOutOfOrder);
                    return;
                }
                *controls = Controls::sanitized(input.throttle, input.brake, input.steering);
                driver.input_seq = input.seq;
                metrics.input_packets_received.inc();
                let rtt_ticks = (tick.0 as u32).saturating_sub(input.server_tick_ack);
                metrics.player_rtt_ticks.observe(f64::from(rtt_ticks));
            }
        });
    }
}

/// One receiver of a session's telemetry: its connection, the input it sent last and its car.
#[derive(Debug, Clone, Copy)]
struct Recipient {
    conn: ConnId,
    ack: u32,
    index: u8,
}

/// A session's cars this tick: their states by index and each one's wire record.
#[derive(Default)]
struct SessionSnapshot {
    cars: Vec<CarTelemetry>,
    records: Vec<u8>,
    recipients: Vec<Recipient>,
}

/// Per-tick buffers of [`send_telemetry`].
#[derive(Default)]
pub struct SnapshotScratch {
    sessions: HashMap<Entity, SessionSnapshot>,
    /// The tick's datagrams, split off one by one.
    datagrams: bytes::BytesMut,
}

/// Builds each player's telemetry datagram (only sessions with a connected player): the
/// session's cars encoded once, each player's datagram its header (its own input
/// acknowledgement) and the records of the cars [`TelemetryRates`] gives it this tick, handed
/// to the player's transport. Also finds the sessions whose cars turned non-finite. A panic in
/// one session's work faults that session only.
// System parameters: bevy systems take what they read.
#[allow(clippy::too_many_arguments)]
pub fn send_telemetry(
    mut scratch: Local<SnapshotScratch>,
    tick: Res<SimTick>,
    tracks: Res<Tracks>,
    links: Res<NetLinks>,
    metrics: Res<NetMetrics>,
    rates: Res<TelemetryRates>,
    mut faults: ResMut<SessionFaults>,
    mut corrupt: bevy_ecs::message::MessageReader<apexsim_systems::physics::NonFiniteState>,
    states: Query<&RaceState>,
    drivers: Query<(&InSession, &NetDriver, &CarIndex)>,
    cars: Query<(
        &InSession,
        &CarIndex,
        &TrackId,
        &Pose,
        &Motion,
        &Controls,
        &LapTiming,
        &TrackProgress,
        &Finish,
        &CollisionState,
    )>,
) {
    // Buffers are kept from tick to tick; sessions nobody listens to any more are dropped.
    let SnapshotScratch {
        sessions: buckets,
        datagrams,
    } = &mut *scratch;
    for snapshot in buckets.values_mut() {
        snapshot.cars.clear();
        snapshot.records.clear();
        snapshot.recipients.clear();
    }
    for (session, driver, index) in &drivers {
        buckets
            .entry(session.0)
            .or_default()
            .recipients
            .push(Recipient {
                conn: driver.conn,
                ack: driver.input_seq,
                index: index.0,
            });
    }
    buckets.retain(|_, s| !s.recipients.is_empty());
    let mut bad: Vec<Entity> = corrupt.read().map(|c| c.session).collect();
    for (session, index, track, pose, motion, controls, timing, progress, finish, collision) in
        &cars
    {
        let finite = pose.x_m.is_finite()
            && pose.y_m.is_finite()
            && pose.yaw_rad.is_finite()
            && motion.speed_mps.is_finite()
            && motion.yaw_rate_rad_s.is_finite();
        if !finite && !bad.contains(&session.0) {
            bad.push(session.0);
        }
        let Some(snapshot) = buckets.get_mut(&session.0) else {
            continue;
        };
        let off = tracks.get(*track).is_some_and(|t| progress.is_off_track(t));
        let flags = if collision.is_colliding {
            FLAG_COLLIDING
        } else {
            0
        } | if off { FLAG_OFF_TRACK } else { 0 };
        snapshot.cars.push(CarTelemetry::quantize(
            index.0,
            pose.x_m,
            pose.y_m,
            pose.yaw_rad,
            motion.speed_mps,
            [controls.throttle, controls.brake, controls.steering],
            timing.lap,
            progress.distance_m,
            finish.position,
            flags,
        ));
    }
    for session in bad {
        if matches!(
            states.get(session),
            Ok(RaceState::Countdown { .. } | RaceState::Racing { .. })
        ) {
            faults
                .faulted
                .push((session, "a car's state became non-finite".into()));
        }
    }
    for (&session, snapshot) in buckets.iter_mut() {
        let (state, countdown_ms) = match states.get(session) {
            Ok(RaceState::Countdown { remaining_ticks }) => (
                SessionState::Countdown,
                Some((u64::from(*remaining_ticks) * 1000 / u64::from(TICK_HZ)) as u16),
            ),
            Ok(RaceState::Racing { .. }) => (SessionState::Racing, None),
            // The race's last tick goes out too, with every car: every client sees its own
            // finish and everyone's, the last car's included.
            Ok(RaceState::Finished { end_tick, .. }) if *end_tick == tick.0 => {
                (SessionState::Finished, None)
            }
            _ => continue,
        };
        // The last tick carries every car.
        let last_tick = state == SessionState::Finished;
        let panic_now = faults.panic_next.remove(&session);
        let work = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if panic_now {
                #[allow(clippy::panic)]
                {
                    panic!("injected fault");
                }
            }
            let SessionSnapshot { cars, records, .. } = &mut *snapshot;
            cars.sort_unstable_by_key(|c| c.index);
            let len = telemetry_datagram_len(cars.len()) + 2;
            if len > MAX_DATAGRAM_BYTES || cars.len() > usize::from(u8::MAX) {
                return Err(format!(
                    "telemetry: {} cars need {len} bytes, over the {MAX_DATAGRAM_BYTES}-byte datagram",
                    cars.len()
                ));
            }
            for car in cars.iter() {
                car.write(records);
            }
            Ok(())
        }));
        match work {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                faults.faulted.push((session, e));
                continue;
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                faults
                    .faulted
                    .push((session, format!("panic in session work: {what}")));
                continue;
            }
        }
        let SessionSnapshot {
            cars,
            records,
            recipients,
        } = &*snapshot;
        let mut header = TelemetryHeader {
            server_tick: tick.0 as u32,
            input_ack: 0,
            session_state: state,
            countdown_ms,
            session_cars: cars.len() as u8,
        };
        // One buffer for the tick's datagrams of the session, each recipient's a slice of it,
        // so a tick allocates once per session.
        datagrams.reserve((telemetry_datagram_len(cars.len()) + 2) * recipients.len());
        let (mut sent, mut bytes) = (0u64, 0u64);
        for r in recipients.iter() {
            let Some(link) = links.0.get(&r.conn) else {
                continue;
            };
            let own = cars
                .binary_search_by_key(&r.index, |c| c.index)
                .ok()
                .map(|i| &cars[i]);
            let carried = |car: &CarTelemetry| {
                last_tick
                    || own.is_none_or(|me| {
                        let dx = i64::from(car.x_cm) - i64::from(me.x_cm);
                        let dy = i64::from(car.y_cm) - i64::from(me.y_cm);
                        car.index == me.index || rates.carries(tick.0, car.index, dx * dx + dy * dy)
                    })
            };
            header.input_ack = r.ack;
            // The header's last byte is the count of cars that follow, set once they are in.
            header.write(datagrams, 0);
            let count_at = datagrams.len() - 1;
            let mut count = 0u8;
            for (car, record) in cars.iter().zip(records.chunks_exact(CAR_TELEMETRY_BYTES)) {
                if carried(car) {
                    datagrams.extend_from_slice(record);
                    count += 1;
                }
            }
            datagrams[count_at] = count;
            let datagram = datagrams.split().freeze();
            let len = datagram.len() as u64;
            match link.datagrams.send_datagram(datagram) {
                Ok(()) => {
                    sent += 1;
                    bytes += len;
                }
                Err(_) => metrics.0.dropped(DropReason::DatagramSendFailed),
            }
        }
        metrics.0.telemetry_packets_sent.inc_by(sent);
        metrics.0.telemetry_bytes_sent.inc_by(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::TelemetryRates;

    #[test]
    fn near_cars_go_every_tick_and_far_ones_on_their_share_of_ticks() {
        let rates = TelemetryRates {
            full_rate_radius_m: 15.0,
            far_every_ticks: 4,
        };
        let at = |m: i64| (m * 100) * (m * 100);
        for tick in 0..8 {
            assert!(rates.carries(tick, 3, at(15)), "15 m is within the radius");
            assert_eq!(rates.carries(tick, 3, at(16)), (tick + 3) % 4 == 0);
        }
        // Over any four ticks each far car goes out once, and the cars share the ticks.
        let carried: Vec<usize> = (0..4u64)
            .map(|tick| {
                (0..8u8)
                    .filter(|&i| rates.carries(tick, i, at(500)))
                    .count()
            })
            .collect();
        assert_eq!(carried, vec![2, 2, 2, 2]);
        let every = TelemetryRates {
            far_every_ticks: 1,
            ..rates
        };
        assert!((0..8).all(|tick| every.carries(tick, 5, at(10_000))));
    }
}
