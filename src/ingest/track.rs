//! `apexsim track from-ibt`: a track for `content/tracks/` from a clean lap recorded in a real
//! car. The lap's Lat/Lon positions (already metres east/north in the recording's samples)
//! are resampled every metre along the driven line, the loop is closed (the gap between the
//! lap's last and first sample is spread along the lap), smoothed with a circular moving
//! average, and turned so the start line (the lap's first sample, where the recording's lap
//! distance wrapped) is at the origin heading +X, as the bundled tracks are. The recording
//! holds no track width: it is an argument.

use std::path::{Path, PathBuf};

use apexsim_systems::record::LapColumns;
use apexsim_systems::track::TrackGeometry;
use thiserror::Error;

/// Spacing of the written centerline, metres (as the bundled tracks).
pub const STEP_M: f64 = 2.5;

/// Half-width of the smoothing window, metres.
pub const SMOOTH_HALF_M: usize = 6;

/// Why a track could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrackBuildError {
    /// The lap is not in the recording.
    #[error("{file}: no complete lap {lap}; complete laps: {available}")]
    NoLap {
        /// The recording.
        file: String,
        /// The lap asked for.
        lap: i32,
        /// The laps there are.
        available: String,
    },
    /// The lap is not clean.
    #[error("{file}: lap {lap} is not clean ({why}); a track needs a valid lap")]
    NotClean {
        /// The recording.
        file: String,
        /// The lap.
        lap: i32,
        /// Why.
        why: String,
    },
    /// Positions missing or unusable.
    #[error("lap {lap} has no usable positions (Lat/Lon): {why}")]
    NoPositions {
        /// The lap.
        lap: i32,
        /// Why.
        why: String,
    },
    /// The centerline crosses or nearly touches itself.
    #[error(
        "the centerline passes within {gap_m:.1} m of itself at {at_m:.0} m and {other_m:.0} m \
         from the line: narrower than the {width_m} m track"
    )]
    TooClose {
        /// Closest distance.
        gap_m: f32,
        /// Where.
        at_m: f32,
        /// And where.
        other_m: f32,
        /// Track width.
        width_m: f32,
    },
    /// The track directory exists.
    #[error("{} exists; choose another --name or remove it", .0.display())]
    Exists(PathBuf),
    /// The recording could not be read.
    #[error("{0}")]
    Recording(String),
    /// Writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How much longer than the recorded lap distance a lap's GPS path may be.
pub const MAX_PATH_FACTOR: f64 = 2.0;

/// The longest track anyone races (the Nürburgring's combined layout is about 25 km), with
/// room to spare.
pub const MAX_TRACK_M: f64 = 100_000.0;

/// Builds the centerline (`[x, y]` every [`STEP_M`] metres, from the start line) from a lap's
/// recorded rows.
///
/// # Errors
/// [`TrackBuildError`] when the positions are missing or the result crosses itself within
/// `width_m`.
pub fn centerline(
    lap: i32,
    rows: &LapColumns,
    width_m: f32,
    recorded_length_m: f32,
) -> Result<Vec<[f32; 2]>, TrackBuildError> {
    let raw: Vec<[f64; 2]> = rows
        .x_m
        .iter()
        .zip(&rows.y_m)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(&x, &y)| [f64::from(x), f64::from(y)])
        .collect();
    if raw.len() < rows.len() * 9 / 10 || raw.len() < 50 {
        return Err(TrackBuildError::NoPositions {
            lap,
            why: format!("{} of {} samples have a position", raw.len(), rows.len()),
        });
    }
    // Arc length of the closed loop (the last segment runs back to the first sample).
    let n = raw.len();
    let mut cum = vec![0.0f64; n + 1];
    for i in 0..n {
        let (a, b) = (raw[i], raw[(i + 1) % n]);
        cum[i + 1] = cum[i] + (b[0] - a[0]).hypot(b[1] - a[1]);
    }
    let length = cum[n];
    if length < 100.0 {
        return Err(TrackBuildError::NoPositions {
            lap,
            why: format!("the lap is only {length:.0} m long"),
        });
    }
    // Checked before anything is allocated per metre: a corrupt position (or a jump of the
    // GPS) makes the path far longer than the lap the car drove.
    let limit = (f64::from(recorded_length_m) * MAX_PATH_FACTOR).min(MAX_TRACK_M);
    if !length.is_finite() || length > limit {
        return Err(TrackBuildError::NoPositions {
            lap,
            why: format!(
                "the GPS path is {length:.0} m long, more than {MAX_PATH_FACTOR} times the \
                 recorded lap distance of {recorded_length_m:.0} m (or than {MAX_TRACK_M} m)"
            ),
        });
    }
    // Every metre along the loop.
    let m = length.floor() as usize;
    let mut fine = Vec::with_capacity(m);
    let mut seg = 0;
    for k in 0..m {
        let s = k as f64 * length / m as f64;
        while cum[seg + 1] < s {
            seg += 1;
        }
        let (a, b) = (raw[seg], raw[(seg + 1) % n]);
        let t = (s - cum[seg]) / (cum[seg + 1] - cum[seg]).max(1e-9);
        fine.push([a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t]);
    }
    // Circular moving average, twice (a triangle window).
    for _ in 0..2 {
        let w = SMOOTH_HALF_M;
        let mut out = Vec::with_capacity(m);
        for i in 0..m {
            let mut acc = [0.0, 0.0];
            for j in 0..=2 * w {
                let p = fine[(i + m + j - w) % m];
                acc[0] += p[0];
                acc[1] += p[1];
            }
            let k = (2 * w + 1) as f64;
            out.push([acc[0] / k, acc[1] / k]);
        }
        fine = out;
    }
    // Origin at the start line, heading +X.
    let o = fine[0];
    let ahead = fine[5 % m];
    let heading = (ahead[1] - o[1]).atan2(ahead[0] - o[0]);
    let (sin, cos) = (-heading).sin_cos();
    let turned: Vec<[f64; 2]> = fine
        .iter()
        .map(|p| {
            let (x, y) = (p[0] - o[0], p[1] - o[1]);
            [x * cos - y * sin, x * sin + y * cos]
        })
        .collect();
    // Every STEP_M metres.
    let mut arc = vec![0.0f64; m + 1];
    for i in 0..m {
        let (a, b) = (turned[i], turned[(i + 1) % m]);
        arc[i + 1] = arc[i] + (b[0] - a[0]).hypot(b[1] - a[1]);
    }
    let count = (arc[m] / STEP_M).round().max(8.0) as usize;
    let mut points = Vec::with_capacity(count);
    let mut seg = 0;
    for k in 0..count {
        let s = k as f64 * arc[m] / count as f64;
        while arc[seg + 1] < s {
            seg += 1;
        }
        let (a, b) = (turned[seg], turned[(seg + 1) % m]);
        let t = (s - arc[seg]) / (arc[seg + 1] - arc[seg]).max(1e-9);
        points.push([
            (a[0] + (b[0] - a[0]) * t) as f32,
            (a[1] + (b[1] - a[1]) * t) as f32,
        ]);
    }
    check_clearance(&points, width_m)?;
    Ok(points)
}

/// Points far apart along the track must be at least a track width apart in space (else the
/// track would touch itself and a car could be found on the wrong part).
fn check_clearance(points: &[[f32; 2]], width_m: f32) -> Result<(), TrackBuildError> {
    let n = points.len();
    let step = STEP_M as f32;
    let far = ((3.0 * width_m).max(40.0) / step).ceil() as usize;
    for i in 0..n {
        for j in i + far..n {
            if n - (j - i) < far {
                continue;
            }
            let gap = (points[i][0] - points[j][0]).hypot(points[i][1] - points[j][1]);
            if gap < width_m {
                return Err(TrackBuildError::TooClose {
                    gap_m: gap,
                    at_m: i as f32 * step,
                    other_m: j as f32 * step,
                    width_m,
                });
            }
        }
    }
    Ok(())
}

/// Writes `<tracks>/<name>/track.toml` and `centerline.csv`. Returns the track's directory.
///
/// # Errors
/// [`TrackBuildError::Exists`] when the directory exists; [`TrackBuildError::Io`].
pub fn write_track(
    tracks: &Path,
    name: &str,
    display: &str,
    width_m: f32,
    points: &[[f32; 2]],
) -> Result<PathBuf, TrackBuildError> {
    let dir = tracks.join(name);
    if dir.exists() {
        return Err(TrackBuildError::Exists(dir));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TrackBuildError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("apexsim:track:{name}").as_bytes(),
    );
    let toml = format!(
        "id = \"{id}\"\nname = \"{}\"\nversion = \"1.0.0\"\nwidth_m = {width_m:.1}\n\
         grid_slots = 16\ncenterline_file = \"centerline.csv\"  # x,y,distance_from_start per row\n",
        display.replace('"', "'")
    );
    let mut csv = String::from("x,y,distance_from_start\n");
    let mut s = 0.0f64;
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            let q = points[i - 1];
            s += f64::from((p[0] - q[0]).hypot(p[1] - q[1]));
        }
        csv += &format!("{:.3},{:.3},{s:.3}\n", p[0], p[1]);
    }
    let toml_path = dir.join("track.toml");
    std::fs::write(&toml_path, toml).map_err(io(&toml_path))?;
    let csv_path = dir.join("centerline.csv");
    std::fs::write(&csv_path, csv).map_err(io(&csv_path))?;
    Ok(dir)
}

/// Checks a centerline the way the content loader will (points, segments, width).
///
/// # Errors
/// The geometry's complaint, as text.
pub fn check_geometry(points: &[[f32; 2]], width_m: f32) -> Result<f32, String> {
    TrackGeometry::new(points.to_vec(), width_m)
        .map(|g| g.length_m())
        .map_err(|e| e.to_string())
}

/// A track built from a recording.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BuiltTrack {
    /// Its directory.
    pub dir: PathBuf,
    /// Display name.
    pub name: String,
    /// Centerline length, metres.
    pub length_m: f32,
    /// The recording's lap distance for the same lap, metres.
    pub recorded_length_m: f32,
    /// Centerline points.
    pub points: usize,
    /// The lap it came from, and its time.
    pub lap: i32,
    /// Lap time, seconds.
    pub lap_time_s: f64,
}

/// Builds `<content>/tracks/<name>/` from lap `lap` of the recording `file`.
///
/// # Errors
/// [`TrackBuildError`]: the file cannot be read, the lap is missing or not clean, the
/// positions are unusable, the centerline touches itself, or the track exists.
pub fn from_ibt(
    file: &Path,
    lap: i32,
    name: &str,
    width_m: f32,
    content: &Path,
) -> Result<BuiltTrack, TrackBuildError> {
    let rec = super::read_recording(file, &super::IngestOptions::default())
        .map_err(|e| TrackBuildError::Recording(e.to_string()))?;
    let mut sim = apexsim_systems::Simulation::new(apexsim_systems::SimulationPlugin::default());
    let laps = super::play(&mut sim, std::slice::from_ref(&rec))
        .pop()
        .unwrap_or_default();
    let file_name = file.display().to_string();
    let Some((t, rows)) = laps.iter().find(|(t, _)| t.recorded_lap == lap) else {
        let available: Vec<String> = laps
            .iter()
            .map(|(t, _)| {
                let v = if t.valid() { "" } else { " (invalid)" };
                format!("{}{v}", t.recorded_lap)
            })
            .collect();
        return Err(TrackBuildError::NoLap {
            file: file_name,
            lap,
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        });
    };
    if !t.valid() {
        return Err(TrackBuildError::NotClean {
            file: file_name,
            lap,
            why: apexsim_systems::playback::reason::names(t.reasons).join(", "),
        });
    }
    let points = centerline(lap, rows, width_m, rec.info.track_length_m)?;
    let length_m = check_geometry(&points, width_m)
        .map_err(|why| TrackBuildError::NoPositions { lap, why })?;
    let display = format!("{} (recorded)", rec.info.track_name);
    let dir = write_track(&content.join("tracks"), name, &display, width_m, &points)?;
    Ok(BuiltTrack {
        dir,
        name: display,
        length_m,
        recorded_length_m: rec.info.track_length_m,
        points: points.len(),
        lap,
        lap_time_s: t.time_s(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(radius: f32, points: usize) -> LapColumns {
        let mut rows = LapColumns::default();
        for i in 0..points {
            let a = i as f32 / points as f32 * std::f32::consts::TAU;
            rows.x_m.push(radius * a.cos());
            rows.y_m.push(radius * a.sin());
            rows.tick.push(i as u64);
        }
        rows
    }

    #[test]
    fn a_gps_path_far_longer_than_the_recorded_lap_is_refused_before_allocating() {
        let rows = circle(100.0, 400);
        assert!(centerline(1, &rows, 12.0, 628.0).is_ok());
        // One corrupt position a thousand kilometres away.
        let mut bad = rows.clone();
        bad.x_m[200] = 1.0e9;
        let err = centerline(1, &bad, 12.0, 628.0).expect_err("refused");
        assert!(err.to_string().contains("the GPS path is"), "{err}");
        // Positions at the edge of f32: an infinite path.
        bad.x_m[100] = f32::MAX;
        bad.x_m[101] = -f32::MAX;
        assert!(centerline(1, &bad, 12.0, f32::MAX).is_err());
    }
}
