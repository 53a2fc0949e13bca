//! `apexsim simulate`: seed 002's telemetry CLI against the REST API. `send` posts one record
//! given by flags; `run` drives a simulated car (an AI driver of the bundled content, the same
//! physics as `race`) for some laps and posts its telemetry as it goes, in batches.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use apexsim::ingest::posted::{Posted, TelemetryRecord};
use apexsim::race::{Race, RaceOptions};
use apexsim_systems::TICK_HZ;
use apexsim_systems::prelude::{Controls, Drivetrain, LapTiming, Motion, Pose, TrackProgress};
use bevy_ecs::entity::Entity;
use bevy_ecs::world::World;

use super::print::{Format, emit, emit_json};
use super::{Context, UsageError};

/// `apexsim simulate`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SimulateCommand {
    /// Post one telemetry record.
    Send(SendArgs),
    /// Drive a simulated car for some laps, posting its telemetry as it goes.
    Run(RunArgs),
}

/// Where the records go.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The API's server (`apexsim api` or `apexsim serve`'s HTTP port).
    #[arg(
        long,
        value_name = "URL",
        env = "SERVER_URL",
        default_value = "http://127.0.0.1:9004"
    )]
    pub server: String,
    /// The writer's token (`[api.tokens]` of the server's configuration).
    #[arg(long, value_name = "TOKEN", env = "APEXSIM_API_TOKEN")]
    pub token: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Arguments of `apexsim simulate send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Driver id.
    #[arg(short = 'd', long)]
    pub driver: String,
    /// The driver's session.
    #[arg(short = 's', long)]
    pub session: String,
    /// Track (slug, id or name of the server's content).
    #[arg(short = 't', long)]
    pub track: String,
    /// Car model.
    #[arg(short = 'c', long)]
    pub car: String,
    /// Session type.
    #[arg(long, default_value = "Practice")]
    pub session_type: String,
    /// Speed, km/h.
    #[arg(long, default_value_t = 0.0)]
    pub speed: f32,
    /// Engine speed, rev/min.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rpm: f32,
    /// Gear.
    #[arg(short = 'g', long, default_value_t = 0, allow_negative_numbers = true)]
    pub gear: i8,
    /// Lap.
    #[arg(short = 'l', long, default_value_t = 1)]
    pub lap: i32,
    /// Fuel, litres.
    #[arg(short = 'f', long)]
    pub fuel: Option<f32>,
    /// Distance along the lap, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    pub lap_pct: f32,
    /// Throttle, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    pub throttle: f32,
    /// Brake, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    pub brake: f32,
    /// The session's clock, seconds (default: now, as Unix seconds, so that successive
    /// sends of one session go forward).
    #[arg(long)]
    pub time: Option<f64>,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `apexsim simulate run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Driver id.
    #[arg(short = 'd', long)]
    pub driver: String,
    /// The driver's session (default: the driver and the start time).
    #[arg(short = 's', long)]
    pub session: Option<String>,
    /// Track (slug, id or name of the bundled content).
    #[arg(short = 't', long, default_value = "oval_simple")]
    pub track: String,
    /// Car (slug, id or name of the bundled content).
    #[arg(short = 'c', long, default_value = "gt3_generic")]
    pub car: String,
    /// Seconds of wall time between two posts.
    #[arg(short = 'i', long, default_value_t = 1.0)]
    pub interval: f64,
    /// Laps to drive.
    #[arg(short = 'l', long, default_value_t = 3)]
    pub laps: u16,
    /// Simulated seconds per wall second (1: real time).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Fuel at the start, litres (burnt at 35 l/100 km).
    #[arg(short = 'f', long, default_value_t = 95.5)]
    pub fuel: f32,
    /// Seed of the driver's pace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub target: Target,
}

/// Runs `apexsim simulate`.
///
/// # Errors
/// Bad arguments (a usage error), the server unreachable or refusing the records.
pub fn run(command: &SimulateCommand, ctx: &Context) -> anyhow::Result<()> {
    match command {
        SimulateCommand::Send(args) => send(args, ctx),
        SimulateCommand::Run(args) => drive(args, ctx),
    }
}

/// The API's client: posts batches with the writer's token.
struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    fn new(target: &Target) -> anyhow::Result<Self> {
        let base = target.server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UsageError(format!(
                "--server {:?} is not an http:// or https:// URL",
                target.server
            ))
            .into());
        }
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
            url: format!("{base}/api/v1/telemetry"),
            token: target.token.clone(),
        })
    }

    async fn post(&self, records: &[TelemetryRecord]) -> anyhow::Result<Posted> {
        let body = match records {
            [one] => serde_json::to_vec(one),
            many => serde_json::to_vec(many),
        }?;
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("posting to {}", self.url))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            anyhow::bail!("{} answered {status}: {text}", self.url);
        }
        serde_json::from_str(&text).with_context(|| format!("the answer of {}: {text}", self.url))
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn send(args: &SendArgs, ctx: &Context) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let record = TelemetryRecord {
        driver: args.driver.clone(),
        session: args.session.clone(),
        track: args.track.clone(),
        car: args.car.clone(),
        session_type: Some(args.session_type.clone()),
        track_length_m: None,
        time_s: args.time.unwrap_or_else(unix_now),
        lap: args.lap,
        lap_dist_pct: args.lap_pct,
        speed_kph: args.speed,
        rpm: args.rpm,
        gear: args.gear,
        throttle: args.throttle,
        brake: args.brake,
        clutch: None,
        steering: None,
        last_lap_time_s: None,
        fuel_l: args.fuel,
        tire_temps_c: None,
        g_long: None,
        g_lat: None,
        g_vert: None,
        x_m: None,
        y_m: None,
        yaw_rad: None,
        on_pit_road: false,
        off_track: false,
    };
    record
        .check()
        .map_err(|e| UsageError(format!("the record's {e}")))?;
    let posted = ctx.runtime()?.block_on(client.post(&[record]))?;
    match args.target.format {
        Format::Json => emit_json(&posted)?,
        Format::Table => emit(&summary(&posted))?,
    }
    Ok(())
}

fn summary(posted: &Posted) -> String {
    let mut out = String::new();
    for s in &posted.sessions {
        out.push_str(&format!(
            "{} record(s) to session {} ({} / {}): {} record(s), {} lap(s) archived\n",
            s.records, s.session, s.driver, s.name, s.total_records, s.laps_archived
        ));
    }
    if !posted.not_archived.is_empty() {
        out.push_str(&format!(
            "not archived (no column for them): {}\n",
            posted.not_archived.join(", ")
        ));
    }
    out
}

/// What `simulate run` did.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    session: Option<uuid::Uuid>,
    driver: String,
    name: String,
    track: String,
    laps: u16,
    records: u64,
    posts: u64,
    laps_archived: usize,
    sim_seconds: f64,
    wall_seconds: f64,
}

/// Records per simulated second (iRacing's telemetry rate, which the API takes posted
/// records at).
const HZ: u64 = apexsim::ingest::posted::POSTED_HZ as u64;

fn drive(args: &RunArgs, ctx: &Context) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        return Err(UsageError(format!("--interval {} must be over 0 s", args.interval)).into());
    }
    if !(args.time_scale.is_finite() && args.time_scale > 0.0) {
        return Err(UsageError(format!("--time-scale {} must be over 0", args.time_scale)).into());
    }
    let client = Client::new(&args.target)?;
    let content = ctx.content_logged();
    let mut race = Race::new(
        &content,
        &RaceOptions {
            track: args.track.clone(),
            car: args.car.clone(),
            cars: 1,
            laps: args.laps,
            seed: args.seed,
            fast: true,
            ..RaceOptions::default()
        },
    )
    .map_err(|e| UsageError(e.to_string()))?;
    let track = content
        .track(&args.track)
        .map(|t| (t.slug.clone(), t.geometry.length_m()))
        .ok_or_else(|| UsageError(format!("unknown track {:?}", args.track)))?;
    let car_name = content
        .car(&args.car)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| args.car.clone());
    let name = args
        .session
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.driver, unix_now() as u64));
    let base = RecordBase {
        driver: args.driver.clone(),
        session: name.clone(),
        track: track.0.clone(),
        car: car_name,
        length_m: track.1,
        fuel_l: args.fuel,
    };
    let per_post = ((args.interval * args.time_scale * HZ as f64).round() as usize).max(1);
    let every = u64::from(TICK_HZ) / HZ;
    let started = Instant::now();
    let mut report = RunReport {
        session: None,
        driver: args.driver.clone(),
        name,
        track: track.0,
        laps: args.laps,
        records: 0,
        posts: 0,
        laps_archived: 0,
        sim_seconds: 0.0,
        wall_seconds: 0.0,
    };
    let rt = ctx.runtime()?;
    let mut batch = Vec::with_capacity(per_post);
    // Two seconds after the flag, for the last lap's time to be seen.
    let mut after_finish = 2 * u64::from(TICK_HZ);
    let mut distance_m = 0.0f64;
    let mut last_progress = None;
    while after_finish > 0 {
        race.step();
        if race.is_finished() {
            after_finish -= 1;
        }
        let tick = race.sim().tick();
        let Some(&car) = race.cars().first() else {
            break;
        };
        let world = race.sim().world();
        if let Some(p) = world.get::<TrackProgress>(car) {
            if let Some(last) = last_progress {
                let d = f64::from(p.distance_m - last);
                // The line: the distance wraps.
                distance_m += if d < -base.length_m as f64 / 2.0 {
                    d + f64::from(base.length_m)
                } else {
                    d
                }
                .max(0.0);
            }
            last_progress = Some(p.distance_m);
        }
        if !tick.is_multiple_of(every) {
            continue;
        }
        if let Some(r) = base.record(world, car, tick, distance_m) {
            batch.push(r);
        }
        if batch.len() >= per_post || after_finish == 0 {
            if batch.is_empty() {
                continue;
            }
            // Paced: the simulated time reached, scaled, is the wall time to post at.
            let due = Duration::from_secs_f64(tick as f64 / f64::from(TICK_HZ) / args.time_scale);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            let posted = rt.block_on(client.post(&batch))?;
            report.records += batch.len() as u64;
            report.posts += 1;
            if let Some(s) = posted.sessions.first() {
                report.session = Some(s.session);
                if s.laps_archived > report.laps_archived {
                    tracing::info!(laps = s.laps_archived, "laps archived by the server");
                }
                report.laps_archived = s.laps_archived;
            }
            batch.clear();
        }
    }
    report.sim_seconds = race.sim().tick() as f64 / f64::from(TICK_HZ);
    report.wall_seconds = started.elapsed().as_secs_f64();
    match args.target.format {
        Format::Json => emit_json(&report)?,
        Format::Table => emit(&format!(
            "{} lap(s) of {} by {} as session {:?}: {} record(s) in {} post(s), {} lap(s) archived so \
             far (the last closes when the session goes idle), {:.1} s simulated in {:.1} s\n",
            report.laps,
            report.track,
            report.driver,
            report.name,
            report.records,
            report.posts,
            report.laps_archived,
            report.sim_seconds,
            report.wall_seconds
        ))?,
    }
    Ok(())
}

/// What every record of a run shares.
struct RecordBase {
    driver: String,
    session: String,
    track: String,
    car: String,
    length_m: f32,
    fuel_l: f32,
}

/// Litres per metre (35 l/100 km).
const FUEL_L_PER_M: f64 = 35.0 / 100_000.0;

impl RecordBase {
    /// The car's state at `tick` as a record.
    fn record(
        &self,
        world: &World,
        car: Entity,
        tick: u64,
        distance_m: f64,
    ) -> Option<TelemetryRecord> {
        let timing = world.get::<LapTiming>(car)?;
        let progress = world.get::<TrackProgress>(car)?;
        let motion = world.get::<Motion>(car)?;
        let pose = world.get::<Pose>(car)?;
        let controls = world.get::<Controls>(car)?;
        let drive = world.get::<Drivetrain>(car);
        let g = |a: f32| (a / 9.806_65).clamp(-20.0, 20.0);
        let unit = |v: f32| {
            if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        Some(TelemetryRecord {
            driver: self.driver.clone(),
            session: self.session.clone(),
            track: self.track.clone(),
            car: self.car.clone(),
            session_type: Some("Race".into()),
            track_length_m: None,
            time_s: tick as f64 / f64::from(TICK_HZ),
            lap: i32::from(timing.lap),
            lap_dist_pct: (progress.distance_m / self.length_m).clamp(0.0, 1.0),
            speed_kph: (motion.speed_mps * 3.6).clamp(0.0, 1000.0),
            rpm: drive.map_or(0.0, |d| d.rpm.clamp(0.0, 30_000.0)),
            gear: drive.map_or(0, |d| d.gear.clamp(-1, 20)),
            throttle: unit(controls.throttle),
            brake: unit(controls.brake),
            clutch: None,
            steering: controls
                .steering
                .is_finite()
                .then(|| controls.steering.clamp(-1.0, 1.0)),
            last_lap_time_s: timing
                .last_lap_ticks
                .map(|t| (t / f64::from(TICK_HZ)) as f32)
                .filter(|t| *t >= 1.0),
            fuel_l: Some((f64::from(self.fuel_l) - distance_m * FUEL_L_PER_M).max(0.0) as f32),
            tire_temps_c: None,
            g_long: Some(g(motion.long_accel_mps2)),
            g_lat: Some(g(motion.lat_accel_mps2)),
            g_vert: None,
            x_m: Some(pose.x_m.clamp(-1e6, 1e6)),
            y_m: Some(pose.y_m.clamp(-1e6, 1e6)),
            yaw_rad: Some(pose.yaw_rad.clamp(-7.0, 7.0)),
            on_pit_road: false,
            off_track: false,
        })
    }
}
