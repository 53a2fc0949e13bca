//! `apexsim compare`: two complete laps of one track, where time was gained and lost: the time
//! delta over distance, sector by sector, braking zone by braking zone and corner by corner
//! (zones and corners matched within `match_window_m`).

use std::path::{Path, PathBuf};

use apexsim_systems::record::LapColumns;
use serde::Serialize;
use thiserror::Error;

use super::across::{delta_at, delta_by_distance, lap_offset, match_points};
use super::lap::{DistanceClock, MetricError, sector_bounds};
use super::{LapMetrics, Thresholds, lap_metrics};
use crate::archive::index::Index;
use crate::archive::{ArchiveError, LapMeta, read_lap};

/// Why two laps cannot be compared.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CompareError {
    /// A lap name matches no lap, or several.
    #[error("lap {name}: {problem}")]
    Lap {
        /// The name as given.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A lap file could not be read.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A lap has no metrics.
    #[error("{}: {source}", path.display())]
    Metrics {
        /// The lap file.
        path: PathBuf,
        /// Why.
        source: MetricError,
    },
}

/// A lap to compare: its file, identity, rows and metrics.
#[derive(Debug, Clone)]
pub struct Lap {
    /// The lap file.
    pub path: PathBuf,
    /// Its identity.
    pub meta: LapMeta,
    /// Its rows.
    pub columns: LapColumns,
    /// Its metrics.
    pub metrics: LapMetrics,
    /// Time as a function of distance.
    pub clock: DistanceClock,
}

/// Finds a lap by file path, or by `SESSION:CAR:LAP` in the index of the archive under `data`
/// (SESSION: the session id or a unique prefix of it, as `analyze` prints it).
///
/// # Errors
/// [`CompareError::Lap`] when nothing or more than one lap matches.
pub fn resolve(data: &Path, name: &str) -> Result<PathBuf, CompareError> {
    let bad = |problem: &str| CompareError::Lap {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    let path = PathBuf::from(name);
    if path.is_file() {
        return Ok(path);
    }
    let parts: Vec<&str> = name.split(':').collect();
    let [session, car, lap] = parts[..] else {
        return Err(bad("not a lap file, nor SESSION:CAR:LAP"));
    };
    let (Ok(car), Ok(lap)) = (car.parse::<u8>(), lap.parse::<u16>()) else {
        return Err(bad("CAR and LAP must be numbers"));
    };
    let prefix = session.replace('-', "").to_ascii_lowercase();
    if prefix.len() < 4 {
        return Err(bad("give at least 4 characters of the session id"));
    }
    let index = Index::open(data)?;
    let found: Vec<PathBuf> = index
        .laps(None)?
        .into_iter()
        .filter(|l| {
            l.car == car && l.lap == lap && l.session.simple().to_string().starts_with(&prefix)
        })
        .map(|l| data.join(l.file))
        .collect();
    match found.len() {
        0 => Err(bad("no such lap in the archive")),
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        n => Err(bad(&format!("{n} laps match; give more of the session id"))),
    }
}

/// Reads and measures a lap.
///
/// # Errors
/// [`CompareError`] when the file cannot be read, the lap is not complete, or has no metrics.
pub fn load(path: &Path, sectors: &[f32], th: &Thresholds) -> Result<Lap, CompareError> {
    let (meta, columns) = read_lap(path)?;
    if !meta.complete {
        return Err(CompareError::Lap {
            name: path.display().to_string(),
            problem: "not a complete lap (it does not run from line to line)".into(),
        });
    }
    let metrics_err = |source| CompareError::Metrics {
        path: path.to_owned(),
        source,
    };
    let metrics =
        lap_metrics(&columns, meta.track_length_m, true, sectors, th).map_err(metrics_err)?;
    let clock = DistanceClock::new(&columns, meta.track_length_m, true).map_err(metrics_err)?;
    Ok(Lap {
        path: path.to_owned(),
        meta,
        columns,
        metrics,
        clock,
    })
}

/// A lap in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// `SESSION:CAR:LAP`.
    pub name: String,
    /// Driver.
    pub driver: String,
    /// Lap time, s (official when there is one).
    pub lap_time_s: f64,
}

/// One sector's times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectorDelta {
    /// Sector number, from 1.
    pub sector: usize,
    /// Lap A's time, s.
    pub a_s: f32,
    /// Lap B's time, s.
    pub b_s: f32,
    /// B - A, s (negative: B gained).
    pub delta_s: f32,
}

/// A braking zone of both laps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneDelta {
    /// Where A braked, m.
    pub a_start_m: f32,
    /// Where B braked, m.
    pub b_start_m: f32,
    /// B's braking point after A's, m (positive: B braked later).
    pub later_m: f32,
    /// Speeds at the braking points, m/s.
    pub entry_speed_mps: (f32, f32),
    /// Lowest speeds, m/s.
    pub min_speed_mps: (f32, f32),
    /// Time B gained (negative) or lost from the earlier braking point to the later end, s.
    pub delta_s: f32,
}

/// A corner of both laps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CornerDelta {
    /// Lap A's apex, m.
    pub apex_m: f32,
    /// 1 left, -1 right.
    pub direction: i8,
    /// Apex speeds, m/s.
    pub apex_speed_mps: (f32, f32),
    /// Throttle application points, m.
    pub throttle_m: (Option<f32>, Option<f32>),
    /// Time B gained (negative) or lost from the earlier turn-in to the later exit, s.
    pub delta_s: f32,
}

/// The comparison of lap B against lap A.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The reference lap.
    pub a: Side,
    /// The lap compared with it.
    pub b: Side,
    /// Track slug.
    pub track: String,
    /// The delta at the line: B's lap time minus A's, s.
    pub delta_s: f32,
    /// Sector by sector.
    pub sectors: Vec<SectorDelta>,
    /// Zone by zone (matched).
    pub zones: Vec<ZoneDelta>,
    /// Corner by corner (matched).
    pub corners: Vec<CornerDelta>,
    /// Zones and corners of either lap without a match.
    pub unmatched: usize,
    /// The delta on the common grid: (distance m, B - A s).
    #[serde(skip)]
    pub grid: Vec<(f32, f32)>,
}

fn name(m: &LapMeta) -> String {
    format!(
        "{}:{}:{}",
        &m.session.simple().to_string()[..8],
        m.car,
        m.lap
    )
}

/// Compares lap B with lap A.
///
/// # Errors
/// [`CompareError::Lap`] when the laps are not of one track.
pub fn compare(a: &Lap, b: &Lap, th: &Thresholds) -> Result<Comparison, CompareError> {
    let (la, lb) = (a.meta.track_length_m, b.meta.track_length_m);
    if a.meta.track != b.meta.track || (la - lb).abs() > 0.01 * la.max(lb) {
        return Err(CompareError::Lap {
            name: name(&b.meta),
            problem: format!(
                "is on {} ({lb:.0} m), lap {} on {} ({la:.0} m): compare laps of one track",
                b.meta.track,
                name(&a.meta),
                a.meta.track
            ),
        });
    }
    let grid = delta_by_distance(&a.clock, &b.clock, th.grid_step_m);
    let at = |d: f32| delta_at(&grid, d);
    // The change of the delta over a stretch of the lap, over the line when it wraps.
    let over = |from: f32, to: f32| -> f32 {
        if to >= from {
            at(to) - at(from)
        } else {
            at(la) - at(from) + at(to) - at(0.0)
        }
    };
    let side = |l: &Lap| Side {
        name: name(&l.meta),
        driver: l.meta.driver.clone(),
        lap_time_s: l
            .meta
            .lap_time_s
            .or(l.metrics.stats.lap_time_s)
            .unwrap_or(f64::NAN),
    };
    let sectors = a
        .metrics
        .sector_times_s
        .iter()
        .zip(&b.metrics.sector_times_s)
        .enumerate()
        .map(|(i, (x, y))| SectorDelta {
            sector: i + 1,
            a_s: *x,
            b_s: *y,
            delta_s: y - x,
        })
        .collect();
    let (za, zb) = (&a.metrics.braking, &b.metrics.braking);
    let zone_pairs = match_points(
        &za.iter().map(|z| z.start_m).collect::<Vec<_>>(),
        &zb.iter().map(|z| z.start_m).collect::<Vec<_>>(),
        th.match_window_m,
        la,
    );
    let zones: Vec<ZoneDelta> = zone_pairs
        .iter()
        .map(|&(i, j)| {
            let (x, y) = (&za[i], &zb[j]);
            let later = lap_offset(x.start_m, y.start_m, la);
            let from = if later >= 0.0 { x.start_m } else { y.start_m };
            // The end further on from the earlier braking point (ends may be past the line).
            let to = if (x.end_m - from).rem_euclid(la) >= (y.end_m - from).rem_euclid(la) {
                x.end_m
            } else {
                y.end_m
            };
            ZoneDelta {
                a_start_m: x.start_m,
                b_start_m: y.start_m,
                later_m: later,
                entry_speed_mps: (x.start_speed_mps, y.start_speed_mps),
                min_speed_mps: (x.min_speed_mps, y.min_speed_mps),
                delta_s: over(from, to),
            }
        })
        .collect();
    let (ca, cb) = (&a.metrics.corners, &b.metrics.corners);
    let corner_pairs = match_points(
        &ca.iter().map(|c| c.apex_m).collect::<Vec<_>>(),
        &cb.iter().map(|c| c.apex_m).collect::<Vec<_>>(),
        th.match_window_m,
        la,
    );
    let corners: Vec<CornerDelta> = corner_pairs
        .iter()
        .filter(|&&(i, j)| ca[i].direction == cb[j].direction)
        .map(|&(i, j)| {
            let (x, y) = (&ca[i], &cb[j]);
            CornerDelta {
                apex_m: x.apex_m,
                direction: x.direction,
                apex_speed_mps: (x.apex_speed_mps, y.apex_speed_mps),
                throttle_m: (x.throttle_m, y.throttle_m),
                delta_s: over(x.turn_in_m.min(y.turn_in_m), x.exit_m.max(y.exit_m)),
            }
        })
        .collect();
    let unmatched = za.len() + zb.len() - 2 * zones.len() + ca.len() + cb.len() - 2 * corners.len();
    Ok(Comparison {
        a: side(a),
        b: side(b),
        track: a.meta.track.clone(),
        delta_s: grid.last().map_or(f32::NAN, |g| g.1),
        sectors,
        zones,
        corners,
        unmatched,
        grid,
    })
}

/// The sector boundaries of a lap, for plots.
pub fn sector_marks(length: f32, starts: &[f32]) -> Vec<f32> {
    let b = sector_bounds(length, starts);
    b[1..b.len().saturating_sub(1)].to_vec()
}
