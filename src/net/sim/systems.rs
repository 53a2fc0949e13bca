//! The network's two ECS systems: [`apply_inputs`] drains the players' inputs into their cars'
//! controls in [`SimSystems::Input`], and [`send_telemetry`] builds, encodes and queues each
//! session's snapshot datagram in [`SimSystems::Snapshot`], finding faulted sessions on the way.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use apexsim_systems::prelude::*;
use bevy_ecs::prelude::{Component, Entity, Local, Query, Res, ResMut, Resource};
use tokio::sync::mpsc;

use super::{ConnId, Outgoing};
use crate::net::metrics::{DropReason, Metrics};
use crate::net::protocol::{
    self, CarTelemetry, FLAG_COLLIDING, FLAG_OFF_TRACK, PlayerInput, SessionState, Telemetry,
};

/// A human's car: its connection and what its inputs said last.
#[derive(Component, Debug, Clone, Copy)]
pub struct NetDriver {
    /// The connection.
    pub conn: ConnId,
    /// Highest input `seq` applied.
    pub input_seq: u32,
}

/// Inputs from the connection tasks, which car each connection drives, and the connections
/// heard from this tick.
#[derive(Resource)]
pub struct NetInputs {
    pub(super) rx: mpsc::Receiver<(ConnId, PlayerInput)>,
    pub(super) cars: HashMap<ConnId, Entity>,
    pub(super) heard: Vec<ConnId>,
}

/// Where each connection's outgoing queue is.
#[derive(Resource, Default)]
pub struct NetLinks(pub(super) HashMap<ConnId, ClientLink>);

/// How the simulation reaches one connection: frames and closes through its task's queue,
/// telemetry datagrams straight onto its transport (no task woken per datagram; the
/// transport's own buffer drops the oldest when a client falls behind).
#[derive(Debug)]
pub struct ClientLink {
    /// The connection task's queue.
    pub out: mpsc::Sender<Outgoing>,
    /// The transport, for datagrams.
    pub datagrams: crate::net::link::Link,
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

/// Drains the input channel into the controls of the cars the connections drive: clamped
/// (the connection task already rejected non-finite values), latest wins.
pub fn apply_inputs(
    mut inputs: ResMut<NetInputs>,
    tick: Res<SimTick>,
    metrics: Res<NetMetrics>,
    mut cars: Query<(&mut Controls, &mut NetDriver)>,
) {
    let NetInputs {
        rx,
        cars: by_conn,
        heard,
    } = &mut *inputs;
    while let Ok((conn, input)) = rx.try_recv() {
        heard.push(conn);
        let Some(&car) = by_conn.get(&conn) else {
            metrics.0.dropped(DropReason::InputWithoutCar);
            continue;
        };
        if let Ok((mut controls, mut driver)) = cars.get_mut(car) {
            if input.seq < driver.input_seq {
                metrics.0.dropped(DropReason::InputOutOfOrder);
                continue;
            }
            *controls = Controls::sanitized(input.throttle, input.brake, input.steering);
            driver.input_seq = input.seq;
            metrics.0.input_packets_received.inc();
            let rtt_ticks = (tick.0 as u32).saturating_sub(input.server_tick_ack);
            metrics.0.player_rtt_ticks.observe(f64::from(rtt_ticks));
        }
    }
}

/// Per-tick buffers of [`send_telemetry`].
#[derive(Default)]
pub struct SnapshotScratch {
    sessions: HashMap<Entity, (Vec<CarTelemetry>, Vec<(ConnId, u32)>)>,
    /// The tick's datagrams, split off one by one.
    datagrams: bytes::BytesMut,
}

/// Builds each session's telemetry packet (only sessions with a connected player), encodes it
/// once, patches each player's input acknowledgement and hands it to the player's transport. Also finds the sessions
/// whose cars turned non-finite. A panic in one session's work faults that session only.
// System parameters: bevy systems take what they read.
#[allow(clippy::too_many_arguments)]
pub fn send_telemetry(
    mut scratch: Local<SnapshotScratch>,
    tick: Res<SimTick>,
    tracks: Res<Tracks>,
    links: Res<NetLinks>,
    metrics: Res<NetMetrics>,
    mut faults: ResMut<SessionFaults>,
    mut corrupt: bevy_ecs::message::MessageReader<apexsim_systems::physics::NonFiniteState>,
    states: Query<&RaceState>,
    drivers: Query<(&InSession, &NetDriver)>,
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
    for (list, recipients) in buckets.values_mut() {
        list.clear();
        recipients.clear();
    }
    for (session, driver) in &drivers {
        buckets
            .entry(session.0)
            .or_default()
            .1
            .push((driver.conn, driver.input_seq));
    }
    buckets.retain(|_, (_, recipients)| !recipients.is_empty());
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
        let Some((list, _)) = buckets.get_mut(&session.0) else {
            continue;
        };
        let off = tracks.get(*track).is_some_and(|t| progress.is_off_track(t));
        let flags = if collision.is_colliding {
            FLAG_COLLIDING
        } else {
            0
        } | if off { FLAG_OFF_TRACK } else { 0 };
        list.push(CarTelemetry::quantize(
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
    for (&session, (list, recipients)) in buckets.iter_mut() {
        let (state, countdown_ms) = match states.get(session) {
            Ok(RaceState::Countdown { remaining_ticks }) => (
                SessionState::Countdown,
                Some((u64::from(*remaining_ticks) * 1000 / u64::from(TICK_HZ)) as u16),
            ),
            Ok(RaceState::Racing { .. }) => (SessionState::Racing, None),
            // The race's last tick goes out too: every client sees its own finish, the last
            // car's included.
            Ok(RaceState::Finished { end_tick, .. }) if *end_tick == tick.0 => {
                (SessionState::Finished, None)
            }
            _ => continue,
        };
        let panic_now = faults.panic_next.remove(&session);
        let work = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if panic_now {
                #[allow(clippy::panic)]
                {
                    panic!("injected fault");
                }
            }
            list.sort_unstable_by_key(|c| c.index);
            let telemetry = Telemetry {
                server_tick: tick.0 as u32,
                input_ack: 0,
                session_state: state,
                countdown_ms,
                cars: std::mem::take(list),
            };
            let encoded = protocol::encode_telemetry(&telemetry);
            // The car buffer goes back for the next tick.
            *list = telemetry.cars;
            encoded
        }));
        let bytes = match work {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                faults.faulted.push((session, format!("telemetry: {e}")));
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
        };
        // One buffer for the tick's datagrams of the session: each recipient's copy (its own
        // input ack patched in) is a slice of it, so a tick allocates once per session.
        datagrams.reserve(bytes.len() * recipients.len());
        let mut sent = 0u64;
        for &(conn, ack) in recipients.iter() {
            let Some(link) = links.0.get(&conn) else {
                continue;
            };
            datagrams.extend_from_slice(&bytes);
            let mut datagram = datagrams.split();
            protocol::patch_input_ack(&mut datagram, ack);
            match link.datagrams.send_datagram(datagram.freeze()) {
                Ok(()) => sent += 1,
                Err(_) => metrics.0.dropped(DropReason::DatagramSendFailed),
            }
        }
        metrics.0.telemetry_packets_sent.inc_by(sent);
    }
}
