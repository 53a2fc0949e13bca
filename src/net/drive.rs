//! `apexsim drive`: client bots, each its own QUIC connection, that authenticate, create or
//! join a session and drive it from what the server sends them (the track's centerline on
//! joining, telemetry every tick) with the same pure controller the server's AI uses. They
//! measure what a player would feel: telemetry coverage and gaps, input-to-telemetry latency,
//! round-trip time. It is the server's load generator too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apexsim_systems::ai::{AiDriver, CarAhead, SpeedProfile, drive};
use apexsim_systems::prelude::*;
use apexsim_systems::race::SpeedProfiles;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use uuid::Uuid;

use super::client::{Client, ClientError};
use super::protocol::{
    CarTelemetry, ClientMessage, PlayerInput, ServerMessage, SessionState, Standing, StartMode,
    TrackInfo, code,
};
use super::tls::Trust;

/// What session the bots race in.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The first bot creates a session, the others join it, the first starts it once all are in.
    Create {
        /// Track slug, name or id.
        track: String,
        /// Laps.
        laps: u8,
        /// AI cars to fill the grid with.
        ai: u8,
    },
    /// Every bot joins this session and waits for its host to start it.
    Join(Uuid),
    /// Every bot joins the rotation session the lobby announces (with a car it allows) and
    /// waits for it to start; a manual one is started by the bot that hosts it once all are in.
    JoinNext,
}

/// `apexsim drive` options.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// The server's QUIC address.
    pub server: SocketAddr,
    /// How to trust its certificate.
    pub trust: Trust,
    /// Access token.
    pub token: String,
    /// Bots.
    pub bots: usize,
    /// Create or join.
    pub mode: Mode,
    /// Give up after this long.
    pub timeout: Duration,
    /// The endpoint every bot connects from (one UDP socket for them all, a cheaper load
    /// generator); `None`: one per bot, as players have.
    pub shared: Option<quinn::Endpoint>,
}

/// Why the bots could not race.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DriveError {
    /// A bot's connection failed.
    #[error("bot {bot}: {source}")]
    Client {
        /// Which bot.
        bot: usize,
        /// What failed.
        source: ClientError,
    },
    /// The server answered with an error.
    #[error("bot {bot}: server error {code}: {message}")]
    Server {
        /// Which bot.
        bot: usize,
        /// Error code.
        code: u16,
        /// Message.
        message: String,
    },
    /// No track matches.
    #[error("the server has no track {0:?}")]
    UnknownTrack(String),
    /// Something a bot needed did not arrive.
    #[error("bot {bot}: {what}")]
    Protocol {
        /// Which bot.
        bot: usize,
        /// What was missing.
        what: String,
    },
    /// The race did not end in time.
    #[error("the race did not finish within {0:?}")]
    Timeout(Duration),
}

/// What one bot measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BotStats {
    /// Its name.
    pub name: String,
    /// Telemetry datagrams received.
    pub telemetry_packets: u64,
    /// Server ticks from its first to its last telemetry (countdown and race).
    pub ticks_spanned: u64,
    /// Ticks within that span it received no telemetry for (lost; a late one is not missed).
    pub ticks_missed: u64,
    /// Datagrams that arrived after a newer one (reordered), not driven from.
    pub telemetry_late: u64,
    /// Datagrams of a tick that had already arrived.
    pub telemetry_duplicated: u64,
    /// Inputs sent.
    pub inputs_sent: u64,
    /// Input-to-telemetry latencies in ms (input sent to the first telemetry acknowledging it).
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    /// Seconds of telemetry.
    pub telemetry_seconds: f64,
    /// QUIC's smoothed round-trip time at the end, ms.
    pub quic_rtt_ms: f64,
    /// Heartbeat round trips in ms.
    #[serde(skip)]
    pub heartbeat_rtt_ms: Vec<f64>,
    /// The server's 503 arrived.
    pub got_shutdown: bool,
}

/// What the bots report.
#[derive(Debug, Clone, Serialize)]
pub struct DriveReport {
    /// Bots that raced.
    pub bots: usize,
    /// The session.
    pub session: Option<Uuid>,
    /// Classification the server sent, winner first.
    pub results: Vec<Standing>,
    /// The fault that ended the session, if one did.
    pub fault: Option<String>,
    /// Share of the ticks for which telemetry arrived, over every bot, in percent.
    pub telemetry_coverage_pct: f64,
    /// Ticks missed (lost), summed over the bots.
    pub ticks_missed: u64,
    /// Telemetry datagrams that arrived late (after a newer one), summed over the bots.
    pub telemetry_late: u64,
    /// Telemetry datagrams that arrived twice, summed over the bots.
    pub telemetry_duplicated: u64,
    /// Telemetry datagrams per second per bot (mean).
    pub telemetry_per_s: f64,
    /// Input-to-telemetry latency p50 in ticks (1 tick = 4.17 ms).
    pub latency_p50_ticks: f64,
    /// p99 in ticks.
    pub latency_p99_ticks: f64,
    /// Heartbeat round-trip time p50 in ms.
    pub rtt_p50_ms: f64,
    /// QUIC's round-trip estimate, mean over the bots, ms.
    pub quic_rtt_ms: f64,
    /// Per bot.
    pub per_bot: Vec<BotStats>,
    /// Wall seconds.
    pub wall_seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

const TICK_MS: f64 = 1000.0 / TICK_HZ as f64;

mod ledger;
pub use ledger::{Arrival, TickLedger};

/// Runs the bots to the end of their race.
///
/// # Errors
/// [`DriveError`] when a bot cannot connect, the server refuses, or the race times out.
pub async fn run(opts: DriveOptions) -> Result<DriveReport, DriveError> {
    let started = Instant::now();
    // One endpoint (one UDP socket, one address) per bot, as players have, unless shared.
    let endpoints = (0..opts.bots)
        .map(|bot| match &opts.shared {
            Some(endpoint) => Ok(endpoint.clone()),
            None => super::client::endpoint(&opts.trust)
                .map_err(|source| DriveError::Client { bot, source }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (session_tx, session_rx) = watch::channel(match &opts.mode {
        Mode::Join(id) => Some(*id),
        Mode::Create { .. } | Mode::JoinNext => None,
    });
    let session_tx = Arc::new(session_tx);
    let mut tasks = tokio::task::JoinSet::new();
    for (bot, endpoint) in endpoints.iter().enumerate() {
        let endpoint = endpoint.clone();
        let opts = opts.clone();
        let session_tx = session_tx.clone();
        let session_rx = session_rx.clone();
        tasks.spawn(async move {
            let outcome = tokio::time::timeout(
                opts.timeout,
                run_bot(bot, &endpoint, &opts, &session_tx, session_rx),
            )
            .await
            .unwrap_or(Err(DriveError::Timeout(opts.timeout)));
            (bot, outcome)
        });
    }
    // The first bot to fail ends the run (the others would wait on a session whose host is
    // gone until the timeout); the rest are stopped when `tasks` is dropped.
    let mut outcomes: Vec<Option<BotOutcome>> = (0..opts.bots).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((bot, outcome)) => {
                let outcome = outcome?;
                if let Some(slot) = outcomes.get_mut(bot) {
                    *slot = Some(outcome);
                }
            }
            Err(e) => {
                return Err(DriveError::Protocol {
                    bot: 0,
                    what: format!("bot task failed: {e}"),
                });
            }
        }
    }
    let outcomes: Vec<BotOutcome> = outcomes.into_iter().flatten().collect();
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
    let session = *session_rx.borrow();
    let (results, fault) = outcomes
        .iter()
        .find_map(|o| o.results.clone())
        .unwrap_or_default();
    let per_bot: Vec<BotStats> = outcomes.into_iter().map(|o| o.stats).collect();
    let spanned: u64 = per_bot.iter().map(|b| b.ticks_spanned).sum();
    let missed: u64 = per_bot.iter().map(|b| b.ticks_missed).sum();
    let mut lat: Vec<f64> = per_bot
        .iter()
        .flat_map(|b| b.latencies_ms.iter().copied())
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut rtt: Vec<f64> = per_bot
        .iter()
        .flat_map(|b| b.heartbeat_rtt_ms.iter().copied())
        .collect();
    rtt.sort_by(f64::total_cmp);
    let n = per_bot.len().max(1) as f64;
    Ok(DriveReport {
        bots: per_bot.len(),
        session,
        results,
        fault,
        telemetry_coverage_pct: if spanned == 0 {
            0.0
        } else {
            100.0 * (spanned - missed) as f64 / spanned as f64
        },
        ticks_missed: missed,
        telemetry_late: per_bot.iter().map(|b| b.telemetry_late).sum(),
        telemetry_duplicated: per_bot.iter().map(|b| b.telemetry_duplicated).sum(),
        telemetry_per_s: per_bot
            .iter()
            .map(|b| b.telemetry_packets as f64 / b.telemetry_seconds.max(1e-9))
            .sum::<f64>()
            / n,
        latency_p50_ticks: percentile(&lat, 0.5) / TICK_MS,
        latency_p99_ticks: percentile(&lat, 0.99) / TICK_MS,
        rtt_p50_ms: percentile(&rtt, 0.5),
        quic_rtt_ms: per_bot.iter().map(|b| b.quic_rtt_ms).sum::<f64>() / n,
        per_bot,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

struct BotOutcome {
    stats: BotStats,
    results: Option<(Vec<Standing>, Option<String>)>,
}

/// What a bot drives with: the track and car from the server, and the AI controller.
struct Driver {
    track: TrackGeometry,
    spec: CarSpec,
    ai: AiDriver,
}

impl Driver {
    fn new(track: &TrackInfo, car: &super::protocol::CarInfo) -> Option<Self> {
        let geometry = TrackGeometry::new(track.centerline.clone(), track.width_m).ok()?;
        let spec = CarSpec::from_array(car.physics);
        let profile = SpeedProfile::new(
            &geometry,
            &spec,
            SpeedProfiles::GRIP_SHARE,
            SpeedProfiles::BRAKE_SHARE,
        );
        Some(Self {
            track: geometry,
            spec,
            ai: AiDriver::new(Arc::new(profile), 0.97),
        })
    }

    fn controls(&self, me: &CarTelemetry, cars: &[CarTelemetry]) -> Controls {
        let length = self.track.length_m();
        let ahead = cars
            .iter()
            .filter(|c| c.index != me.index)
            .filter_map(|c| {
                let gap = (c.progress_m() - me.progress_m()).rem_euclid(length);
                (gap > 0.0 && gap < 60.0).then_some(CarAhead {
                    gap_m: gap,
                    speed_mps: c.speed_mps(),
                    lateral_offset_m: 0.0,
                })
            })
            .min_by(|a, b| a.gap_m.total_cmp(&b.gap_m));
        let pose = Pose {
            x_m: me.x_m(),
            y_m: me.y_m(),
            yaw_rad: me.yaw_rad(),
        };
        let motion = Motion {
            speed_mps: me.speed_mps(),
            ..Motion::default()
        };
        let progress = TrackProgress {
            distance_m: me.progress_m(),
            lateral_m: 0.0,
            segment: 0,
            race_distance_m: 0.0,
        };
        drive(
            &self.ai,
            &self.spec,
            &self.track,
            &pose,
            &motion,
            &progress,
            ahead,
        )
    }
}

async fn next_msg(bot: usize, client: &mut Client) -> Result<ServerMessage, DriveError> {
    match client.recv().await {
        Some(Ok(ServerMessage::Error { code, message })) if code != code::UNAVAILABLE => {
            Err(DriveError::Server { bot, code, message })
        }
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(DriveError::Client {
            bot,
            source: e.into(),
        }),
        None => Err(DriveError::Protocol {
            bot,
            what: "the server closed the control stream".into(),
        }),
    }
}

/// A bot's heartbeat: one a second from connecting to the end of the race, as a real client
/// sends them (the lobby closes a connection that stays silent for its heartbeat timeout, and a
/// bot may wait that long for the rest of its grid).
struct Beat {
    interval: tokio::time::Interval,
    sent: std::collections::VecDeque<Instant>,
}

impl Beat {
    fn new() -> Self {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            interval,
            sent: Default::default(),
        }
    }

    async fn send(&mut self, client: &mut Client, tick: u32) {
        if client
            .send(&ClientMessage::Heartbeat { client_tick: tick })
            .await
            .is_ok()
        {
            self.sent.push_back(Instant::now());
        }
    }

    /// A `HeartbeatAck` arrived: the round trip of the oldest heartbeat unanswered.
    fn acked(&mut self, stats: &mut BotStats) {
        if let Some(sent) = self.sent.pop_front() {
            stats
                .heartbeat_rtt_ms
                .push(sent.elapsed().as_secs_f64() * 1e3);
        }
    }
}

/// The next message, with heartbeats sent while waiting for it.
async fn next_msg_alive(
    bot: usize,
    client: &mut Client,
    beat: &mut Beat,
    stats: &mut BotStats,
) -> Result<ServerMessage, DriveError> {
    loop {
        tokio::select! {
            msg = next_msg(bot, client) => {
                let msg = msg?;
                if matches!(msg, ServerMessage::HeartbeatAck { .. }) {
                    beat.acked(stats);
                }
                return Ok(msg);
            }
            _ = beat.interval.tick() => beat.send(client, 0).await,
        }
    }
}

async fn run_bot(
    bot: usize,
    endpoint: &quinn::Endpoint,
    opts: &DriveOptions,
    session_tx: &watch::Sender<Option<Uuid>>,
    mut session_rx: watch::Receiver<Option<Uuid>>,
) -> Result<BotOutcome, DriveError> {
    let name = format!("bot-{:02}", bot + 1);
    let client_err = |source| DriveError::Client { bot, source };
    let mut client = Client::connect(endpoint, opts.server, &opts.token, &name)
        .await
        .map_err(client_err)?;
    let mut stats = BotStats {
        name,
        ..BotStats::default()
    };
    let mut beat = Beat::new();
    // The lobby arrives first.
    let (tracks, mut sessions) = loop {
        if let ServerMessage::LobbyState {
            track_configs,
            available_sessions,
            ..
        } = next_msg_alive(bot, &mut client, &mut beat, &mut stats).await?
        {
            break (track_configs, available_sessions);
        }
    };
    let host = bot == 0 && matches!(opts.mode, Mode::Create { .. });
    if let (true, Mode::Create { track, laps, ai }) = (host, &opts.mode) {
        let wanted = track.to_lowercase();
        let track = tracks
            .iter()
            .find(|t| {
                t.slug == wanted || t.name.to_lowercase() == wanted || t.id.to_string() == wanted
            })
            .ok_or_else(|| DriveError::UnknownTrack(track.clone()))?;
        let max_players = (opts.bots + usize::from(*ai)).min(16) as u8;
        client
            .send(&ClientMessage::CreateSession {
                track_config_id: track.id,
                max_players,
                ai_count: *ai,
                lap_limit: *laps,
            })
            .await
            .map_err(client_err)?;
    } else if matches!(opts.mode, Mode::JoinNext) {
        // The rotation's open session, once the lobby lists one.
        let next = loop {
            if let Some(s) = sessions
                .iter()
                .find(|s| s.rotation && s.state == SessionState::Lobby)
            {
                break s.clone();
            }
            if let ServerMessage::LobbyState {
                available_sessions, ..
            } = next_msg_alive(bot, &mut client, &mut beat, &mut stats).await?
            {
                sessions = available_sessions;
            }
        };
        if let Some(&car) = next.allowed_cars.first() {
            client
                .send(&ClientMessage::SelectCar { car_config_id: car })
                .await
                .map_err(client_err)?;
        }
        client
            .send(&ClientMessage::JoinSession {
                session_id: next.id,
            })
            .await
            .map_err(client_err)?;
    } else {
        let id = loop {
            if let Some(id) = *session_rx.borrow_and_update() {
                break id;
            }
            if session_rx.changed().await.is_err() {
                return Err(DriveError::Protocol {
                    bot,
                    what: "no session to join".into(),
                });
            }
        };
        client
            .send(&ClientMessage::JoinSession { session_id: id })
            .await
            .map_err(client_err)?;
    }
    let (session, driver) = loop {
        if let ServerMessage::SessionJoined {
            session_id,
            track,
            car,
            ..
        } = next_msg_alive(bot, &mut client, &mut beat, &mut stats).await?
        {
            let driver = Driver::new(&track, &car).ok_or_else(|| DriveError::Protocol {
                bot,
                what: "the server's track geometry is not usable".into(),
            })?;
            break (session_id, driver);
        }
    };
    if host || matches!(opts.mode, Mode::JoinNext) {
        session_tx.send_replace(Some(session));
    }
    // The host starts once every bot is in; everyone waits for the grid.
    let mut my_index = None;
    while my_index.is_none() {
        match next_msg_alive(bot, &mut client, &mut beat, &mut stats).await? {
            ServerMessage::LobbyState {
                available_sessions, ..
            } => {
                // The creator starts its session; in a rotation session, the bot the lobby
                // made host starts a manual one (the others start by themselves).
                let all_in = available_sessions.iter().any(|s| {
                    s.id == session
                        && s.state == SessionState::Lobby
                        && usize::from(s.player_count) >= opts.bots
                        && (host
                            || (s.rotation
                                && s.start_mode == StartMode::Manual
                                && s.host_name == stats.name))
                });
                if all_in {
                    client
                        .send(&ClientMessage::StartSession)
                        .await
                        .map_err(client_err)?;
                }
            }
            ServerMessage::SessionStarting { grid, .. } => {
                my_index = grid
                    .iter()
                    .find(|g| g.player_id == Some(client.player_id))
                    .map(|g| g.car_index);
                if my_index.is_none() {
                    return Err(DriveError::Protocol {
                        bot,
                        what: "not on the grid".into(),
                    });
                }
            }
            ServerMessage::Error { code, message } => {
                return Err(DriveError::Server { bot, code, message });
            }
            _ => {}
        }
    }
    let me = my_index.unwrap_or(0);
    let mut seq = 0u32;
    let mut pending: std::collections::VecDeque<(u32, Instant)> = Default::default();
    let mut ledger = TickLedger::default();
    let mut field = super::protocol::FieldState::default();
    let mut known: Vec<CarTelemetry> = Vec::new();
    let (mut first, mut last): (Option<(u32, Instant)>, Option<(u32, Instant)>) = (None, None);
    let conn = client.conn.clone();
    let results = loop {
        tokio::select! {
            datagram = conn.read_datagram() => {
                let Ok(bytes) = datagram else { break None };
                let now = Instant::now();
                // What else has arrived is read now too, and the bot acts once, on the newest
                // state: after a stall it neither drives from old states nor bursts inputs.
                // A late or doubled datagram is only counted.
                let mut newest = None;
                let mut next = Some(bytes);
                for _ in 0..256 {
                    let Some(bytes) = next.take() else { break };
                    if let Ok(t) = super::protocol::decode_telemetry(&bytes) {
                        stats.telemetry_packets += 1;
                        // Far cars come at a lower rate: the bot drives from each car's newest
                        // state, a late datagram's included where it is newer.
                        field.update(&t);
                        if ledger.observe(t.server_tick) == Arrival::Newest {
                            newest = Some(t);
                        }
                    }
                    next = futures::FutureExt::now_or_never(conn.read_datagram()).and_then(Result::ok);
                }
                let Some(t) = newest else { continue };
                if first.is_none() {
                    first = Some((t.server_tick, now));
                }
                last = Some((t.server_tick, now));
                while pending.front().is_some_and(|(s, _)| *s <= t.input_ack) {
                    if let Some((_, sent)) = pending.pop_front() {
                        stats.latencies_ms.push(now.duration_since(sent).as_secs_f64() * 1e3);
                    }
                }
                let Some((_, mine)) = field.car(me) else { continue };
                known.clear();
                known.extend(field.cars().copied());
                let controls = driver.controls(mine, &known);
                seq += 1;
                let input = PlayerInput {
                    seq,
                    server_tick_ack: t.server_tick,
                    throttle: controls.throttle,
                    brake: controls.brake,
                    steering: controls.steering,
                };
                let sent = super::protocol::encode_input(&input)
                    .ok()
                    .is_some_and(|b| conn.send_datagram(bytes::Bytes::from(b)).is_ok());
                if sent {
                    stats.inputs_sent += 1;
                    pending.push_back((seq, now));
                    if pending.len() > 4096 {
                        pending.pop_front();
                    }
                }
            }
            msg = client.recv() => {
                match msg {
                    Some(Ok(ServerMessage::SessionResults { standings, fault, .. })) => {
                        break Some((standings, fault));
                    }
                    Some(Ok(ServerMessage::HeartbeatAck { .. })) => beat.acked(&mut stats),
                    Some(Ok(ServerMessage::Error { code: code::UNAVAILABLE, .. })) => {
                        stats.got_shutdown = true;
                    }
                    Some(Ok(ServerMessage::Error { code, message })) => {
                        tracing::warn!(bot, code, %message, "server error");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            }
            _ = beat.interval.tick() => beat.send(&mut client, last.map_or(0, |(t, _)| t)).await,
        }
    };
    if let (Some((_, w0)), Some((_, w1))) = (first, last) {
        stats.telemetry_seconds = w1.duration_since(w0).as_secs_f64();
    }
    stats.ticks_spanned = ledger.spanned();
    stats.ticks_missed = ledger.lost();
    stats.telemetry_late = ledger.late;
    stats.telemetry_duplicated = ledger.duplicated;
    stats.quic_rtt_ms = client.conn.rtt().as_secs_f64() * 1e3;
    let _ = client.send(&ClientMessage::Disconnect).await;
    client.conn.close(quinn::VarInt::from_u32(0), b"done");
    Ok(BotOutcome { stats, results })
}
