//! A recording read: an .ibt file's frames (pitwall's reader for version 2, ApexSim's own for
//! version 1), what its session info says about it (track, car, driver, sectors), and its
//! records as samples ready to play, with acceleration spikes smoothed.

use std::path::Path;

use apexsim_systems::prelude::*;
use uuid::Uuid;

use super::frame::IbtFrame;
use super::ibt::{self, IbtError, IbtHeader};
use super::{IngestError, IngestOptions, NAMESPACE, SPIKE_MPS2};
use crate::archive::index::SessionIdentity;

/// What a recording says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordingInfo {
    /// IBT version (1 or 2).
    pub version: i32,
    /// Samples per second.
    pub hz: f64,
    /// Records in the file.
    pub records: usize,
    /// Track display name.
    pub track_name: String,
    /// Track configuration, if any.
    pub track_config: Option<String>,
    /// Track slug for the archive (from iRacing's track name).
    pub track: String,
    /// Lap length in metres (measured from the lap distance channels, else the session info).
    pub track_length_m: f32,
    /// Car name.
    pub car: String,
    /// Session type (practice, race, offline testing...).
    pub session_type: String,
    /// Driver (pseudonym unless names are kept).
    pub driver: String,
    /// Unix seconds at which the recording started.
    pub started_at: i64,
    /// Where the track's sectors start, as fractions of the lap (the session info's split
    /// points; the first, at 0, not listed).
    pub sectors: Vec<f32>,
    /// iRacing's ids and names of the track, car and session, as the session info gives them
    /// (`None` for laps from other tools).
    pub identity: Option<SessionIdentity>,
}

/// A recording read into samples, ready to play.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Session id: a hash of the file's bytes.
    pub session: Uuid,
    /// What the file says.
    pub info: RecordingInfo,
    /// The samples (blank records left out).
    pub samples: Vec<RecordedSample>,
    /// Acceleration spikes smoothed.
    pub spikes: usize,
}

/// Reads a recording's frames: version 2 through pitwall's IBT reader, version 1 directly.
///
/// # Errors
/// [`IbtError`] naming what is wrong with the file.
pub fn read_frames(bytes: &[u8]) -> Result<(IbtHeader, Vec<IbtFrame>), IbtError> {
    let header = IbtHeader::parse(bytes)?;
    let frames = if header.version == 2 {
        ibt::frames_via_pitwall(bytes, &header)?
    } else {
        ibt::frames_direct(bytes, &header)?
    };
    Ok((header, frames))
}

/// Reads a file into a [`Recording`].
///
/// # Errors
/// [`IngestError`] naming the file and what is wrong with it.
pub fn read_recording(path: &Path, opts: &IngestOptions) -> Result<Recording, IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ibt_err = |source| IngestError::Ibt {
        path: path.to_owned(),
        source,
    };
    let (header, frames) = read_frames(&bytes).map_err(ibt_err)?;
    let yaml = header.session_yaml(&bytes);
    let session = Uuid::new_v5(&NAMESPACE, &bytes);
    let mut info = session_info(yaml.as_deref(), &header, opts);
    if let Some(length) = measured_length(frames.iter().map(|f| (f.lap_dist_pct, f.lap_dist_m))) {
        info.track_length_m = length;
    }
    let (samples, spikes) = samples(&frames, &info);
    Ok(Recording {
        session,
        info,
        samples,
        spikes,
    })
}

/// Track, car, driver and session type from the session info YAML (pitwall's parser, with a
/// line scan for the track when an old recording's YAML does not fit pitwall's schema).
fn session_info(yaml: Option<&str>, header: &IbtHeader, opts: &IngestOptions) -> RecordingInfo {
    let parsed = yaml.and_then(|y| pitwall::SessionInfo::parse(y).ok());
    let mut info = describe(parsed.as_ref(), yaml, f64::from(header.tick_rate), opts);
    info.version = header.version;
    info.records = header.records;
    info.started_at = header.start_date;
    info
}

/// Where the track's sectors start (`SplitTimeInfo.Sectors[].SectorStartPct`), from pitwall's
/// parsed form or, failing that, the YAML's lines; the start at 0 is left out.
fn sectors(parsed: Option<&pitwall::SessionInfo>, yaml: Option<&str>) -> Vec<f32> {
    let from_parsed: Option<Vec<f64>> = parsed
        .and_then(|p| p.split_time_info.as_ref())
        .and_then(|s| s.sectors.as_ref())
        .map(|s| s.iter().filter_map(|x| x.sector_start_pct).collect());
    let starts = from_parsed.unwrap_or_else(|| {
        yaml.map(|y| {
            y.lines()
                .filter_map(|l| l.trim_start().strip_prefix("SectorStartPct:"))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .collect()
        })
        .unwrap_or_default()
    });
    let mut out: Vec<f32> = starts
        .into_iter()
        .filter(|x| *x > 0.0 && *x < 1.0)
        .map(|x| x as f32)
        .collect();
    out.sort_by(f32::total_cmp);
    out.dedup();
    out
}

/// A stable pseudonym for a driver's name: the same name gives the same pseudonym everywhere.
pub fn pseudonym(name: &str) -> String {
    let id = Uuid::new_v5(&NAMESPACE, name.as_bytes());
    format!("driver-{}", &id.simple().to_string()[..8])
}

/// `"tsukuba 1kouter"` -> `"tsukuba_1kouter"`: lowercase letters, digits and single `_`.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

fn parse_km(s: &str) -> Option<f32> {
    let (v, unit) = s.trim().split_once(' ')?;
    let v: f32 = v.parse().ok()?;
    match unit.trim() {
        "km" => Some(v * 1000.0),
        "mi" => Some(v * 1609.344),
        _ => None,
    }
}

/// Frames to samples: blank records dropped, positions in metres east/north of the first
/// located sample, steering normalised to -1 (left) ..= 1 (right), isolated acceleration
/// spikes replaced by their neighbours' mean.
fn samples(frames: &[IbtFrame], info: &RecordingInfo) -> (Vec<RecordedSample>, usize) {
    let origin = frames.iter().find_map(IbtFrame::location);
    let mut out: Vec<RecordedSample> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.is_blank())
        .map(|(i, f)| to_sample(i as u64, f, origin, info.track_length_m))
        .collect();
    let mut spikes = 0;
    for i in 1..out.len().saturating_sub(1) {
        for get in [
            (|s: &mut RecordedSample| &mut s.long_accel_mps2)
                as fn(&mut RecordedSample) -> &mut f32,
            |s: &mut RecordedSample| &mut s.lat_accel_mps2,
        ] {
            let (a, b) = (*get(&mut out[i - 1]), *get(&mut out[i + 1]));
            let v = get(&mut out[i]);
            if v.abs() > SPIKE_MPS2 && a.abs() <= SPIKE_MPS2 && b.abs() <= SPIKE_MPS2 {
                *v = (a + b) * 0.5;
                spikes += 1;
            }
        }
    }
    (out, spikes)
}

/// What a session info says about the recording, from pitwall's parsed form or, failing that,
/// from a scan of the YAML's lines.
pub(crate) fn describe(
    parsed: Option<&pitwall::SessionInfo>,
    yaml: Option<&str>,
    hz: f64,
    opts: &IngestOptions,
) -> RecordingInfo {
    let line = |key: &str| -> Option<String> {
        yaml?.lines().find_map(|l| {
            let l = l.trim_start();
            let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
            (!v.is_empty()).then(|| v.trim_matches('"').to_owned())
        })
    };
    let (track_name, track_id, track_length, track_config) = match parsed {
        Some(p) => (
            p.weekend_info.track_display_name.clone(),
            p.weekend_info.track_name.clone(),
            p.weekend_info.track_length.clone(),
            p.weekend_info.track_config_name.clone(),
        ),
        None => (
            line("TrackDisplayName").unwrap_or_default(),
            line("TrackName").unwrap_or_default(),
            line("TrackLength").unwrap_or_default(),
            line("TrackConfigName"),
        ),
    };
    let me = parsed.and_then(|p| {
        p.driver_info.as_ref().and_then(|d| {
            let idx = d.driver_car_idx?;
            d.drivers.as_ref()?.iter().find(|x| x.car_idx == idx)
        })
    });
    let number = |key: &str| line(key).and_then(|v| v.parse::<i64>().ok());
    let parsed_id = |v: Option<i32>| v.map(i64::from);
    let (car, driver, session_type) = parsed
        .map(|p| {
            let session_type = p
                .session_info
                .sessions
                .first()
                .map(|s| s.session_type.clone());
            (
                me.and_then(|m| m.car_screen_name.clone()),
                me.map(|m| m.user_name.clone()),
                session_type,
            )
        })
        .unwrap_or_default();
    let car = car
        .or_else(|| line("CarScreenName"))
        .unwrap_or_else(|| "unknown car".into());
    let driver = driver.or_else(|| line("UserName")).unwrap_or_default();
    let driver = if opts.keep_driver_names {
        driver
    } else {
        pseudonym(&driver)
    };
    let session_type = session_type
        .or_else(|| line("SessionType"))
        .unwrap_or_else(|| "unknown".into());
    let identity = SessionIdentity {
        track_id: parsed_id(parsed.and_then(|p| p.weekend_info.track_id))
            .or_else(|| number("TrackID"))
            .unwrap_or(0),
        track_name: track_name.clone(),
        track_config: track_config.clone().filter(|c| !c.is_empty()),
        track_type: parsed
            .and_then(|p| p.weekend_info.track_type.clone())
            .or_else(|| line("TrackType")),
        series_id: parsed_id(parsed.and_then(|p| p.weekend_info.series_id))
            .or_else(|| number("SeriesID"))
            .unwrap_or(0),
        car_id: parsed_id(me.and_then(|m| m.car_id))
            .or_else(|| number("CarID"))
            .unwrap_or(0),
        car_name: car.clone(),
        car_class_id: parsed_id(me.and_then(|m| m.car_class_id))
            .or_else(|| number("CarClassID"))
            .unwrap_or(0),
        session_type: session_type.clone(),
    };
    let track = slug(if track_id.is_empty() {
        &track_name
    } else {
        &track_id
    });
    RecordingInfo {
        version: 2,
        hz,
        records: 0,
        track_name,
        track_config: track_config.filter(|c| !c.is_empty()),
        track: if track.is_empty() {
            "unknown".into()
        } else {
            track
        },
        track_length_m: parse_km(&track_length).unwrap_or(0.0),
        car,
        session_type,
        driver,
        started_at: 0,
        sectors: sectors(parsed, yaml),
        identity: Some(identity),
    }
}

/// The lap length from `(lap fraction, lap distance in metres)` samples (`LapDistPct`,
/// `LapDist`; the session info rounds it to 10 m): the median ratio over samples well inside
/// the lap, `None` with fewer than 10 of them.
pub(crate) fn measured_length(samples: impl IntoIterator<Item = (f32, f32)>) -> Option<f32> {
    let mut ratios: Vec<f32> = samples
        .into_iter()
        .filter(|(pct, m)| *pct > 0.25 && *pct < 0.95 && *m > 0.0)
        .map(|(pct, m)| m / pct)
        .filter(|r| r.is_finite())
        .collect();
    if ratios.len() < 10 {
        return None;
    }
    let mid = ratios.len() / 2;
    let (_, m, _) = ratios.select_nth_unstable_by(mid, f32::total_cmp);
    Some(*m)
}

/// One frame as a sample: positions in metres east/north of `origin`, steering normalised to
/// -1 (left) ..= 1 (right) (NaN without the steering lock), lap distance in metres.
pub(crate) fn to_sample(
    record: u64,
    f: &IbtFrame,
    origin: Option<(f64, f64)>,
    track_length_m: f32,
) -> RecordedSample {
    const EARTH_R_M: f64 = 6_371_000.0;
    let (x, y) = match (origin, f.location()) {
        (Some((lat0, lon0)), Some((lat, lon))) => (
            ((lon - lon0).to_radians() * lat0.to_radians().cos() * EARTH_R_M) as f32,
            ((lat - lat0).to_radians() * EARTH_R_M) as f32,
        ),
        _ => (f32::NAN, f32::NAN),
    };
    let steering = match f.steering_max_rad {
        Some(max) if max > 0.0 => (-f.steering_rad / max).clamp(-1.0, 1.0),
        _ => f32::NAN,
    };
    let lap_dist_m = if f.lap_dist_m.is_finite() {
        f.lap_dist_m
    } else {
        f.lap_dist_pct * track_length_m
    };
    RecordedSample {
        record,
        time_s: f.session_time_s,
        lap: f.lap,
        lap_dist_pct: f.lap_dist_pct,
        lap_dist_m,
        last_lap_time_s: f.last_lap_time_s,
        speed_mps: f.speed_mps,
        throttle: f.throttle,
        brake: f.brake,
        steering,
        gear: f.gear.clamp(-1, 127) as i8,
        rpm: f.rpm,
        x_m: x,
        y_m: y,
        yaw_rad: f.yaw_north_rad.unwrap_or(f.yaw_rad),
        long_accel_mps2: f.long_accel_mps2,
        lat_accel_mps2: f.lat_accel_mps2,
        on_pit_road: f.on_pit_road,
        off_track: f.track_surface == Some(0),
    }
}
