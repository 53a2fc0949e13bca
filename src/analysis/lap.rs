//! The metrics of one lap, from its rows: on the recording's own clock (`lap_time_s`) and
//! distance in metres (`distance_m`), never wall-clock time or lap fractions.
//!
//! Signals are cleaned before anything is detected: a running median removes isolated spikes
//! from the lateral acceleration, moving averages smooth it and the pedals. Braking zones and
//! corners are regions of a cleaned signal found with two thresholds (hysteresis: a region is a
//! run above the lower one that reaches the upper one), merged across short gaps and dropped
//! when shorter than a minimum duration. On a complete lap the line is not an edge: a region
//! running through it (braking into a first corner that starts before the line) is one region.

use apexsim_systems::record::LapColumns;
use serde::Serialize;
use thiserror::Error;

use super::Thresholds;

/// Standard gravity, for lateral acceleration in g.
pub const G: f32 = 9.806_65;

/// Why a lap has no metrics.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum MetricError {
    /// Too few rows to measure anything.
    #[error("lap has {rows} rows; metrics need at least {min}")]
    TooFewRows {
        /// Rows in the lap.
        rows: usize,
        /// Rows needed.
        min: usize,
    },
    /// The time or distance column is not finite, or time runs backwards.
    #[error("column {column} is unusable at row {row}: {problem}")]
    BadColumn {
        /// The column.
        column: &'static str,
        /// The first bad row.
        row: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// The track length is not a positive number.
    #[error("track length {0} m is not positive")]
    BadTrackLength(f32),
}

/// The lap columns the metrics read (the others may be left empty).
pub const METRIC_COLUMNS: [&str; 6] = [
    "lap_time_s",
    "distance_m",
    "speed_mps",
    "throttle",
    "brake",
    "lat_accel_mps2",
];

/// Fewest rows a lap needs for metrics.
pub const MIN_ROWS: usize = 10;

/// Where a lap's sectors start, as fractions of the lap (the first sector starts at 0 and is
/// not listed). Empty means one sector, the lap.
pub type SectorStarts<'a> = &'a [f32];

/// Lap statistics.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LapStats {
    /// Line-to-line time integrated from the samples (the clock at the first and last sample,
    /// extended to the line at the speed there), for complete laps.
    pub lap_time_s: Option<f64>,
    /// Distance covered, metres.
    pub distance_m: f32,
    /// Highest speed, m/s.
    pub top_speed_mps: f32,
    /// Lowest speed, m/s.
    pub min_speed_mps: f32,
    /// Share of the lap's time at full throttle (`full_throttle`).
    pub full_throttle_share: f32,
    /// Share of the lap's time on the brakes (inside braking zones).
    pub braking_share: f32,
    /// Share of the lap's time on neither pedal (`coast_below`).
    pub coasting_share: f32,
}

/// One braking zone.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BrakingZone {
    /// Where the brake went on (the smoothed brake crossing `brake_off` on the way up), m.
    pub start_m: f32,
    /// Speed there, m/s.
    pub start_speed_mps: f32,
    /// Where the brake came off, m (smaller than the start when the zone runs over the line).
    pub end_m: f32,
    /// Lowest speed in the zone, m/s.
    pub min_speed_mps: f32,
    /// Highest brake (0-1, raw).
    pub peak_brake: f32,
    /// Time on the brake, s.
    pub duration_s: f32,
    /// Speed lost per second over the first `initial_decel_window_s`, m/s².
    pub initial_decel_mps2: f32,
    /// Speed lost per second from the start to the lowest speed, m/s².
    pub avg_decel_mps2: f32,
    /// Distance braked while cornering (lateral acceleration above `trail_lat_mps2`), m.
    pub trail_brake_m: f32,
    /// That distance as a share of the zone's length.
    pub trail_brake_share: f32,
}

/// One corner.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Corner {
    /// 1 for a left-hander, -1 for a right-hander.
    pub direction: i8,
    /// Turn-in: where the path's radius falls below `corner_off_radius_m`, m.
    pub turn_in_m: f32,
    /// Speed at turn-in, m/s.
    pub turn_in_speed_mps: f32,
    /// Apex: the point of the corner where the path is tightest (largest lateral acceleration
    /// over speed squared), m.
    pub apex_m: f32,
    /// Speed at that point (the apex speed), m/s.
    pub apex_speed_mps: f32,
    /// Lateral acceleration at that point, g.
    pub apex_lat_g: f32,
    /// Exit: where the path's radius grows above `corner_off_radius_m`, m.
    pub exit_m: f32,
    /// Speed at the exit, m/s.
    pub exit_speed_mps: f32,
    /// Time from turn-in to exit, s.
    pub time_s: f32,
    /// Back on the throttle: after the corner's lowest throttle, the first point where it
    /// reaches `throttle_on` again, m (none when the driver never lifted below it in the
    /// corner, or did not get back on it before the exit).
    pub throttle_m: Option<f32>,
    /// Lowest speed in the corner, m/s.
    pub min_speed_mps: f32,
    /// Speed lost from turn-in to apex, m/s.
    pub speed_lost_mps: f32,
    /// Speed gained from apex to exit, m/s.
    pub speed_gained_mps: f32,
}

/// Everything measured on one lap.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LapMetrics {
    /// Lap statistics.
    pub stats: LapStats,
    /// Sector times, s (NaN for a sector the lap does not cover; `null` in JSON).
    #[schema(value_type = Vec<Option<f32>>)]
    pub sector_times_s: Vec<f32>,
    /// Minisector times, s, every `minisector_m` from the line (NaN where not covered; `null`
    /// in JSON).
    #[schema(value_type = Vec<Option<f32>>)]
    pub minisector_times_s: Vec<f32>,
    /// Braking zones, in lap order.
    pub braking: Vec<BrakingZone>,
    /// Corners, in lap order.
    pub corners: Vec<Corner>,
}

/// Time as a function of distance along the lap: the samples where the distance grows, with
/// the line crossings added for a complete lap. Laps are compared and split on it.
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceClock {
    d: Vec<f32>,
    t: Vec<f64>,
    length: f32,
}

impl DistanceClock {
    /// The clock of a lap's rows. A complete lap's clock runs from 0 at the line to its lap
    /// time at `length`; an incomplete lap's covers the distance it has, from its first sample.
    ///
    /// # Errors
    /// As [`lap_metrics`].
    pub fn new(columns: &LapColumns, length: f32, complete: bool) -> Result<Self, MetricError> {
        check(columns, length)?;
        let t = &columns.lap_time_s;
        let d = &columns.distance_m;
        let v = &columns.speed_mps;
        let n = d.len();
        let (start, end) = if complete {
            line_times(t, d, v, length)
        } else {
            (f64::from(t[0]), f64::from(t[n - 1]))
        };
        let mut cd = Vec::with_capacity(n + 2);
        let mut ct = Vec::with_capacity(n + 2);
        if complete {
            cd.push(0.0);
            ct.push(0.0);
        }
        let mut last = if complete { 0.0 } else { f32::NEG_INFINITY };
        for i in 0..n {
            if d[i] > last && d[i] < length {
                cd.push(d[i]);
                ct.push(f64::from(t[i]) - start);
                last = d[i];
            }
        }
        if complete {
            cd.push(length);
            ct.push(end - start);
        }
        Ok(Self {
            d: cd,
            t: ct,
            length,
        })
    }

    /// Seconds from the lap's start (the line, for a complete lap) to `distance`, linearly
    /// interpolated; `None` outside the distance the clock covers.
    pub fn time_at(&self, distance: f32) -> Option<f64> {
        let (first, last) = (*self.d.first()?, *self.d.last()?);
        if !(first..=last).contains(&distance) {
            return None;
        }
        let i = self.d.partition_point(|&x| x < distance);
        if i == 0 || self.d[i] == distance {
            return Some(self.t[i]);
        }
        let (d0, d1) = (self.d[i - 1], self.d[i]);
        let f = f64::from((distance - d0) / (d1 - d0));
        Some(self.t[i - 1] + f * (self.t[i] - self.t[i - 1]))
    }

    /// Time at the end of the distance covered (the lap time, for a complete lap).
    pub fn total(&self) -> f64 {
        self.t.last().copied().unwrap_or(0.0)
    }

    /// The track length it was built for, m.
    pub fn length(&self) -> f32 {
        self.length
    }

    /// Times between consecutive boundaries (metres); NaN where the clock does not cover one.
    pub fn splits(&self, boundaries: impl IntoIterator<Item = f32>) -> Vec<f32> {
        let mut out = Vec::new();
        let mut prev: Option<Option<f64>> = None;
        for b in boundaries {
            let now = self.time_at(b);
            if let Some(p) = prev {
                out.push(match (p, now) {
                    (Some(a), Some(b)) => (b - a) as f32,
                    _ => f32::NAN,
                });
            }
            prev = Some(now);
        }
        out
    }
}

/// Minisector boundaries of a lap: every `step` metres from 0, and the line.
pub fn minisector_bounds(length: f32, step: f32) -> impl Iterator<Item = f32> {
    let count = (length / step).ceil().max(1.0) as u32;
    (0..=count).map(move |k| (k as f32 * step).min(length))
}

/// Sector boundaries in metres from the sectors' start fractions.
pub fn sector_bounds(length: f32, starts: SectorStarts<'_>) -> Vec<f32> {
    let mut b = vec![0.0];
    b.extend(
        starts
            .iter()
            .filter(|f| **f > 0.0 && **f < 1.0)
            .map(|f| f * length),
    );
    b.push(length);
    b
}

fn check(columns: &LapColumns, length: f32) -> Result<(), MetricError> {
    if !(length.is_finite() && length > 0.0) {
        return Err(MetricError::BadTrackLength(length));
    }
    let n = columns.lap_time_s.len();
    if n < MIN_ROWS {
        return Err(MetricError::TooFewRows {
            rows: n,
            min: MIN_ROWS,
        });
    }
    let bad = |column, row, problem| {
        Err(MetricError::BadColumn {
            column,
            row,
            problem,
        })
    };
    for (i, w) in columns.lap_time_s.windows(2).enumerate() {
        if !w[1].is_finite() || !w[0].is_finite() {
            return bad(
                "lap_time_s",
                i + usize::from(w[0].is_finite()),
                "not finite",
            );
        }
        if w[1] < w[0] {
            return bad("lap_time_s", i + 1, "runs backwards");
        }
    }
    for (column, values) in [
        ("distance_m", &columns.distance_m),
        ("speed_mps", &columns.speed_mps),
        ("throttle", &columns.throttle),
        ("brake", &columns.brake),
        ("lat_accel_mps2", &columns.lat_accel_mps2),
    ] {
        if values.len() != n {
            return bad(column, values.len().min(n), "missing rows");
        }
        if let Some(row) = values.iter().position(|x| !x.is_finite()) {
            return bad(column, row, "not finite");
        }
    }
    Ok(())
}

/// The clock at the two line crossings of a complete lap: the first and last samples' times
/// extended to the line at their speed (at most 2 % of the lap each way).
fn line_times(t: &[f32], d: &[f32], v: &[f32], length: f32) -> (f64, f64) {
    let n = t.len();
    let reach = 0.02 * length;
    let extend = |gap: f32, speed: f32| {
        if (0.0..=reach).contains(&gap) && speed > 0.5 {
            f64::from(gap / speed)
        } else {
            0.0
        }
    };
    let start = f64::from(t[0]) - extend(d[0], v[0]);
    let end = f64::from(t[n - 1]) + extend(length - d[n - 1], v[n - 1]);
    (start, end)
}

/// The median interval between samples, s.
fn sample_interval(t: &[f32]) -> f32 {
    let mut dts: Vec<f32> = t
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| *d > 0.0)
        .collect();
    if dts.is_empty() {
        return 1.0;
    }
    let mid = dts.len() / 2;
    *dts.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// Centred moving average over `w` samples (prefix sums; the window shrinks at the ends;
/// non-finite samples count as 0).
pub fn moving_average(x: &[f32], w: usize) -> Vec<f32> {
    let half = w / 2;
    if half == 0 {
        return x.to_vec();
    }
    let mut prefix = Vec::with_capacity(x.len() + 1);
    let mut acc = 0.0f64;
    prefix.push(0.0);
    for v in x {
        acc += f64::from(if v.is_finite() { *v } else { 0.0 });
        prefix.push(acc);
    }
    let n = x.len();
    (0..n)
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(n);
            ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32
        })
        .collect()
}

/// Running median over `k` samples (odd); removes spikes narrower than `k / 2 + 1` samples.
pub fn running_median(x: &[f32], k: usize) -> Vec<f32> {
    let n = x.len();
    if k <= 1 || n < k {
        return x.to_vec();
    }
    let half = k / 2;
    let mut out = x.to_vec();
    if k == 5 {
        for i in half..n - half {
            out[i] = median5(&x[i - 2..=i + 2]);
        }
    } else {
        let mut buf = vec![0.0f32; k];
        for i in half..n - half {
            buf.copy_from_slice(&x[i - half..=i + half]);
            out[i] = *buf.select_nth_unstable_by(half, f32::total_cmp).1;
        }
    }
    out
}

/// Median of five by a sorting network (seven compare-exchanges, no branches).
#[inline]
fn median5(p: &[f32]) -> f32 {
    let (mut a, mut b, mut c, mut d, mut e) = (p[0], p[1], p[2], p[3], p[4]);
    let sort = |x: &mut f32, y: &mut f32| {
        let (lo, hi) = (x.min(*y), x.max(*y));
        *x = lo;
        *y = hi;
    };
    sort(&mut a, &mut b);
    sort(&mut d, &mut e);
    sort(&mut a, &mut d);
    sort(&mut b, &mut e);
    sort(&mut b, &mut c);
    sort(&mut c, &mut d);
    sort(&mut b, &mut c);
    c
}

/// A region of a signal: samples `start..=end`, or on a complete lap `start..n` then
/// `0..=end` when it runs over the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First sample.
    pub start: usize,
    /// Last sample.
    pub end: usize,
    /// Whether it runs over the line (`end < start`).
    pub wraps: bool,
}

/// One sample of a region, with the time and distance unrolled over the line.
#[derive(Debug, Clone, Copy)]
struct At {
    i: usize,
    t: f64,
    d: f32,
}

/// The lap's rows with the line times, for walking regions over the line.
struct Lap<'a> {
    t: &'a [f32],
    d: &'a [f32],
    length: f32,
    /// Line-to-line time (complete laps), added to times after the line.
    period: f64,
}

impl Lap<'_> {
    fn walk(&self, r: Region) -> impl Iterator<Item = At> + '_ {
        let n = self.t.len();
        let (first, second) = if r.wraps {
            (r.start..n, 0..r.end + 1)
        } else {
            (r.start..r.end + 1, 0..0)
        };
        let at = |offset: bool| {
            move |i: usize| At {
                i,
                t: f64::from(self.t[i]) + if offset { self.period } else { 0.0 },
                d: self.d[i] + if offset { self.length } else { 0.0 },
            }
        };
        first.map(at(false)).chain(second.map(at(true)))
    }

    /// The region's first sample (a region is never empty).
    fn first(&self, r: Region) -> At {
        At {
            i: r.start,
            t: f64::from(self.t[r.start]),
            d: self.d[r.start],
        }
    }

    fn time_span(&self, r: Region) -> f64 {
        let end = f64::from(self.t[r.end]) + if r.wraps { self.period } else { 0.0 };
        end - f64::from(self.t[r.start])
    }
}

/// How regions of a signal are found by [`regions`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detect {
    /// A region must reach this level.
    pub on: f32,
    /// A region is a run above this level.
    pub off: f32,
    /// Regions shorter than this (seconds) are dropped.
    pub min_duration_s: f32,
    /// Runs closer than this in time (seconds) are one region.
    pub merge_gap_s: f32,
    /// Runs closer than this in distance (metres) are one region.
    pub merge_gap_m: f32,
    /// A region is split at a dip below this share of the lower of the two peaks around it
    /// (two apexes); `None` never splits.
    pub split_ratio: Option<f32>,
}

impl Detect {
    /// How braking zones are found: the smoothed brake above `brake_on` (reaching it), until
    /// below `brake_off`, gaps under `brake_merge_gap_s` merged, shorter than
    /// `brake_min_duration_s` dropped.
    pub fn braking(th: &Thresholds) -> Self {
        Self {
            on: th.brake_on,
            off: th.brake_off,
            min_duration_s: th.brake_min_duration_s,
            merge_gap_s: th.brake_merge_gap_s,
            merge_gap_m: 0.0,
            split_ratio: None,
        }
    }
}

/// Regions where `signal` is above `off` and reaches `on`, merged across short gaps, split at
/// deep dips between two peaks, and at least `min_duration_s` long. With `circular` (the lap's
/// line-to-line time and length), a region touching the end of the lap and one touching its
/// start (or closer than the merge gap across the line) are one region that wraps.
pub fn regions(
    signal: &[f32],
    t: &[f32],
    d: &[f32],
    p: &Detect,
    circular: Option<(f64, f32)>,
) -> Vec<Region> {
    let n = signal.len().min(t.len()).min(d.len());
    let close = |gap_s: f64, gap_m: f32| gap_s < f64::from(p.merge_gap_s) || gap_m < p.merge_gap_m;
    // Runs above `off`, with their peaks, each split at deep dips, then merged with the next
    // run across short gaps (pieces of one split run stay apart).
    let mut runs: Vec<(usize, usize, f32)> = Vec::new();
    let mut i = 0;
    while i < n {
        if signal[i] > p.off {
            let start = i;
            let mut peak = signal[i];
            while i + 1 < n && signal[i + 1] > p.off {
                i += 1;
                peak = peak.max(signal[i]);
            }
            let pieces = match p.split_ratio {
                Some(ratio) => split(signal, (start, i, peak), p.on, ratio),
                None => vec![(start, i, peak)],
            };
            for (k, piece) in pieces.into_iter().enumerate() {
                match runs.last_mut() {
                    Some(last)
                        if k == 0
                            && close(f64::from(t[start] - t[last.1]), d[start] - d[last.1]) =>
                    {
                        last.1 = piece.1;
                        last.2 = last.2.max(piece.2);
                    }
                    _ => runs.push(piece),
                }
            }
        }
        i += 1;
    }
    let mut wrapped = None;
    if let Some((period, length)) = circular
        && runs.len() >= 2
        && let (Some(first), Some(last)) = (runs.first().copied(), runs.last().copied())
    {
        let gap_s = period - f64::from(t[last.1]) + f64::from(t[first.0]);
        let gap_m = length - d[last.1] + d[first.0];
        let touching = first.0 == 0 && last.1 == n - 1;
        if touching || close(gap_s, gap_m) {
            runs.pop();
            runs.remove(0);
            wrapped = Some((last.0, first.1, first.2.max(last.2)));
        }
    }
    let span = |(s, e, _): (usize, usize, f32), wraps: bool| {
        let end = f64::from(t[e]) + circular.filter(|_| wraps).map_or(0.0, |c| c.0);
        end - f64::from(t[s])
    };
    let keep = |run: (usize, usize, f32), wraps: bool| {
        run.2 > p.on && span(run, wraps) >= f64::from(p.min_duration_s)
    };
    let mut out: Vec<Region> = runs
        .into_iter()
        .filter(|r| keep(*r, false))
        .map(|(start, end, _)| Region {
            start,
            end,
            wraps: false,
        })
        .collect();
    if let Some(r) = wrapped.filter(|r| keep(*r, true)) {
        out.push(Region {
            start: r.0,
            end: r.1,
            wraps: true,
        });
    }
    out
}

/// Splits a run at every dip below `ratio` of the lower of the peaks (each above `on`) on its
/// two sides.
fn split(
    signal: &[f32],
    (start, end, _): (usize, usize, f32),
    on: f32,
    ratio: f32,
) -> Vec<(usize, usize, f32)> {
    let mut out = Vec::new();
    let mut seg_start = start;
    let mut peak = f32::NEG_INFINITY;
    let mut dip = (f32::INFINITY, start);
    for (i, &x) in signal.iter().enumerate().take(end + 1).skip(start) {
        if x >= peak && dip.0 == f32::INFINITY {
            peak = x;
        } else if x < dip.0 {
            dip = (x, i);
        }
        // A second peak: above `on` and high above the dip, after a dip deep below the first.
        if peak > on && x > on && dip.0 < ratio * peak.min(x) && dip.1 < i {
            out.push((seg_start, dip.1, peak));
            seg_start = dip.1 + 1;
            peak = x;
            dip = (f32::INFINITY, i);
        } else if x > peak && dip.0 >= ratio * x {
            // Still the same hump: the dip was shallow.
            peak = x;
            dip = (f32::INFINITY, i);
        }
    }
    out.push((seg_start, end, peak));
    out
}

/// Every metric of one lap.
///
/// `length` is the track length in metres; `complete` says the rows run from line to line
/// (their time is then integrated to the line and regions may run over it); `sectors` are
/// where the sectors start.
///
/// # Errors
/// [`MetricError`] when the lap has too few rows, its time or distance are not finite or its
/// time runs backwards, or the length is not positive.
pub fn lap_metrics(
    columns: &LapColumns,
    length: f32,
    complete: bool,
    sectors: SectorStarts<'_>,
    th: &Thresholds,
) -> Result<LapMetrics, MetricError> {
    let clock = DistanceClock::new(columns, length, complete)?;
    let t = &columns.lap_time_s;
    let d = &columns.distance_m;
    let v = &columns.speed_mps;
    let n = t.len();
    let dt = sample_interval(t);
    let samples = |s: f32| ((s / dt).round() as usize) | 1;
    let brake = moving_average(&columns.brake, samples(th.pedal_smoothing_s));
    let throttle = moving_average(&columns.throttle, samples(th.pedal_smoothing_s));
    let lat = moving_average(
        &running_median(&columns.lat_accel_mps2, th.spike_median_samples),
        samples(th.accel_smoothing_s),
    );
    let period = complete.then(|| clock.total());
    let lap = Lap {
        t,
        d,
        length,
        period: period.unwrap_or(0.0),
    };

    let circular = period.map(|p| (p, length));
    let zones = regions(&brake, t, d, &Detect::braking(th), circular);
    let braking: Vec<BrakingZone> = zones
        .iter()
        .map(|r| braking_zone(&lap, *r, v, &columns.brake, &lat, th))
        .collect();

    // Signed curvature of the path, 1/m (positive left), where the speed makes it measurable.
    let curvature: Vec<f32> = lat
        .iter()
        .zip(v)
        .map(|(a, v)| {
            if *v >= th.corner_min_speed_mps.max(0.1) {
                a / (v * v)
            } else {
                0.0
            }
        })
        .collect();
    let mut corners = Vec::new();
    for direction in [1i8, -1] {
        let side: Vec<f32> = curvature
            .iter()
            .map(|k| (k * f32::from(direction)).max(0.0))
            .collect();
        let detect = Detect {
            on: 1.0 / th.corner_on_radius_m,
            off: 1.0 / th.corner_off_radius_m,
            min_duration_s: th.corner_min_duration_s,
            merge_gap_s: 0.0,
            merge_gap_m: th.corner_merge_gap_m,
            split_ratio: Some(th.corner_split_ratio),
        };
        for r in regions(&side, t, d, &detect, circular) {
            corners.push(corner(&lap, r, direction, v, &lat, &side, &throttle, th));
        }
    }
    corners.sort_by(|a, b| a.turn_in_m.total_cmp(&b.turn_in_m));
    let mut braking = braking;
    braking.sort_by(|a, b| a.start_m.total_cmp(&b.start_m));

    // Time-weighted shares: each sample stands for the time to the next one.
    let (mut total, mut full, mut coast) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n - 1 {
        let w = f64::from(t[i + 1] - t[i]);
        total += w;
        if throttle[i] >= th.full_throttle {
            full += w;
        }
        if throttle[i] < th.coast_below && brake[i] < th.coast_below {
            coast += w;
        }
    }
    let braked = zones.iter().fold(0.0, |acc, r| acc + lap.time_span(*r));
    let share = |x: f64| if total > 0.0 { (x / total) as f32 } else { 0.0 };
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
    let stats = LapStats {
        lap_time_s: complete.then(|| clock.total()),
        distance_m: if complete { length } else { d[n - 1] - d[0] },
        top_speed_mps: hi,
        min_speed_mps: lo,
        full_throttle_share: share(full),
        braking_share: share(braked).min(1.0),
        coasting_share: share(coast),
    };
    Ok(LapMetrics {
        stats,
        sector_times_s: clock.splits(sector_bounds(length, sectors)),
        minisector_times_s: clock.splits(minisector_bounds(length, th.minisector_m)),
        braking,
        corners,
    })
}

fn wrap(d: f32, length: f32) -> f32 {
    if d >= length { d - length } else { d }
}

fn braking_zone(
    lap: &Lap<'_>,
    r: Region,
    v: &[f32],
    raw_brake: &[f32],
    lat: &[f32],
    th: &Thresholds,
) -> BrakingZone {
    let first = lap.first(r);
    let (mut min_v, mut min_t, mut peak) = (v[first.i], first.t, 0.0f32);
    let mut last = first;
    let mut trail = 0.0f32;
    let mut window_v = None;
    for at in lap.walk(r) {
        if v[at.i] < min_v {
            min_v = v[at.i];
            min_t = at.t;
        }
        peak = peak.max(raw_brake[at.i]);
        if at.i != first.i && lat[last.i].abs() > th.trail_lat_mps2 {
            trail += (at.d - last.d).max(0.0);
        }
        if window_v.is_none() && at.t - first.t >= f64::from(th.initial_decel_window_s) {
            window_v = Some((v[at.i], at.t));
        }
        last = at;
    }
    let length = (last.d - first.d).max(0.0);
    let duration = (last.t - first.t) as f32;
    let (wv, wt) = window_v.unwrap_or((v[last.i], last.t));
    let rate = |dv: f32, dt: f64| if dt > 0.0 { dv / dt as f32 } else { 0.0 };
    BrakingZone {
        start_m: wrap(first.d, lap.length),
        start_speed_mps: v[first.i],
        end_m: wrap(last.d, lap.length),
        min_speed_mps: min_v,
        peak_brake: peak,
        duration_s: duration,
        initial_decel_mps2: rate(v[first.i] - wv, wt - first.t),
        avg_decel_mps2: rate(v[first.i] - min_v, min_t - first.t),
        trail_brake_m: trail,
        trail_brake_share: if length > 0.0 { trail / length } else { 0.0 },
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the lap's cleaned signals, passed once"
)]
fn corner(
    lap: &Lap<'_>,
    r: Region,
    direction: i8,
    v: &[f32],
    lat: &[f32],
    curvature: &[f32],
    throttle: &[f32],
    th: &Thresholds,
) -> Corner {
    let first = lap.first(r);
    let mut apex = first;
    let mut last = first;
    let mut min_v = v[first.i];
    for at in lap.walk(r) {
        if curvature[at.i] > curvature[apex.i] {
            apex = at;
        }
        min_v = min_v.min(v[at.i]);
        last = at;
    }
    // Back on the throttle: after the corner's lowest throttle, where it reaches
    // `throttle_on` again. A corner taken without lifting below it has no such point.
    let lowest = lap
        .walk(r)
        .fold(None::<At>, |low, at| match low {
            Some(l) if throttle[l.i] <= throttle[at.i] => Some(l),
            _ => Some(at),
        })
        .filter(|l| throttle[l.i] < th.throttle_on);
    let throttle_m = lowest.and_then(|low| {
        lap.walk(r)
            .skip_while(|at| at.i != low.i)
            .find(|at| throttle[at.i] >= th.throttle_on)
            .map(|at| wrap(at.d, lap.length))
    });
    Corner {
        direction,
        turn_in_m: wrap(first.d, lap.length),
        turn_in_speed_mps: v[first.i],
        apex_m: wrap(apex.d, lap.length),
        apex_speed_mps: v[apex.i],
        apex_lat_g: lat[apex.i].abs() / G,
        exit_m: wrap(last.d, lap.length),
        exit_speed_mps: v[last.i],
        time_s: (last.t - first.t) as f32,
        throttle_m,
        min_speed_mps: min_v,
        speed_lost_mps: v[first.i] - v[apex.i],
        speed_gained_mps: v[last.i] - v[apex.i],
    }
}
