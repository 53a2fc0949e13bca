//! Metrics across laps: the time delta by distance on a common grid, zones and corners matched
//! within a window in metres, the theoretical best from the best minisectors, and the spread of
//! braking points and apex speeds.

use serde::Serialize;

use super::lap::{DistanceClock, LapMetrics};

/// Distance between two points of a lap of `length` metres, the short way round (a point just
/// before the line is close to one just after it).
pub fn lap_distance(a: f32, b: f32, length: f32) -> f32 {
    lap_offset(a, b, length).abs()
}

/// How far `to` lies past `from` on a lap of `length` metres, the short way round: negative
/// when `to` comes before `from` (a point just past the line is a little after one just
/// before it).
pub fn lap_offset(from: f32, to: f32, length: f32) -> f32 {
    let d = (to - from).rem_euclid(length);
    if d > length / 2.0 { d - length } else { d }
}

/// The time delta of lap `b` against lap `a` on a common distance grid (every `step` metres
/// from the line): `(distance, b's time there - a's time there)`, over the distance both
/// cover. At the line of two complete laps the delta is their lap-time difference.
pub fn delta_by_distance(a: &DistanceClock, b: &DistanceClock, step: f32) -> Vec<(f32, f32)> {
    let length = a.length().min(b.length());
    let count = (length / step).floor() as u32;
    let mut grid: Vec<f32> = (0..=count).map(|k| k as f32 * step).collect();
    if grid.last().is_some_and(|d| *d < length) {
        grid.push(length);
    }
    grid.into_iter()
        .filter_map(|d| Some((d, (b.time_at(d)? - a.time_at(d)?) as f32)))
        .collect()
}

/// Pairs of points of two laps (indices into `a` and `b`) that are within `window` metres of
/// each other, nearest first; each point is paired at most once. Points are distances along a
/// lap of `length` metres.
pub fn match_points(a: &[f32], b: &[f32], window: f32, length: f32) -> Vec<(usize, usize)> {
    let mut candidates: Vec<(f32, usize, usize)> = Vec::new();
    for (i, x) in a.iter().enumerate() {
        for (j, y) in b.iter().enumerate() {
            let gap = lap_distance(*x, *y, length);
            if gap <= window {
                candidates.push((gap, i, j));
            }
        }
    }
    candidates.sort_by(|p, q| p.0.total_cmp(&q.0));
    let (mut used_a, mut used_b) = (vec![false; a.len()], vec![false; b.len()]);
    let mut pairs = Vec::new();
    for (_, i, j) in candidates {
        if !used_a[i] && !used_b[j] {
            used_a[i] = true;
            used_b[j] = true;
            pairs.push((i, j));
        }
    }
    pairs.sort_unstable();
    pairs
}

/// The theoretical best lap: the sum of each minisector's best time over the laps (their
/// minisector times) that cover every minisector. `None` when no lap does.
pub fn theoretical_best<'a>(laps: impl IntoIterator<Item = &'a [f32]>) -> Option<f64> {
    let mut best: Option<Vec<f32>> = None;
    for m in laps {
        if m.is_empty() || m.iter().any(|x| !x.is_finite()) {
            continue;
        }
        match &mut best {
            Some(b) if b.len() == m.len() => {
                for (b, x) in b.iter_mut().zip(m) {
                    *b = b.min(*x);
                }
            }
            Some(_) => {}
            None => best = Some(m.to_vec()),
        }
    }
    best.map(|b| b.iter().map(|x| f64::from(*x)).sum())
}

/// How one point of the lap (a braking point, an apex) varies across laps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    /// Median position, m.
    pub distance_m: f32,
    /// Laps in which it was found.
    pub laps: usize,
    /// Median absolute deviation of the position, m.
    pub position_mad_m: f32,
    /// Median of the value measured there (the speed at the braking point, the apex speed), m/s.
    pub value_median: f32,
    /// Median absolute deviation of that value.
    pub value_mad: f32,
}

/// Median of a slice (reordered); NaN when empty.
pub fn median(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NAN;
    }
    let mid = x.len() / 2;
    let upper = *x.select_nth_unstable_by(mid, f32::total_cmp).1;
    if x.len() % 2 == 1 {
        upper
    } else {
        let lower = x[..mid].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (lower + upper) / 2.0
    }
}

/// Median absolute deviation around the median; NaN when empty.
pub fn mad(x: &[f32]) -> f32 {
    let mut v = x.to_vec();
    let m = median(&mut v);
    let mut dev: Vec<f32> = x.iter().map(|y| (y - m).abs()).collect();
    median(&mut dev)
}

/// Groups points `(distance, value)` from many laps into places on the lap (consecutive points
/// closer than `window` metres, the short way round) and gives each place's spread. Places
/// found in fewer than `min_laps` laps are left out.
pub fn spreads(points: &[(f32, f32)], window: f32, length: f32, min_laps: usize) -> Vec<Spread> {
    let mut sorted: Vec<(f32, f32)> = points
        .iter()
        .copied()
        .filter(|(d, v)| d.is_finite() && v.is_finite())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups: Vec<Vec<(f32, f32)>> = Vec::new();
    for p in sorted {
        match groups.last_mut() {
            Some(g) if g.last().is_some_and(|q| p.0 - q.0 <= window) => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    // A place around the line is split in two by the sort: join its ends.
    if groups.len() >= 2
        && let (Some(first), Some(last)) = (groups.first(), groups.last())
        && let (Some(f), Some(l)) = (first.first(), last.last())
        && lap_distance(f.0, l.0, length) <= window
    {
        let mut tail = groups.pop().unwrap_or_default();
        for p in &mut tail {
            p.0 -= length;
        }
        tail.append(&mut groups[0]);
        groups[0] = tail;
    }
    groups
        .into_iter()
        .filter(|g| g.len() >= min_laps)
        .map(|g| {
            let d: Vec<f32> = g.iter().map(|p| p.0).collect();
            let v: Vec<f32> = g.iter().map(|p| p.1).collect();
            let mut dm = d.clone();
            let mut vm = v.clone();
            let centre = median(&mut dm);
            Spread {
                distance_m: if centre < 0.0 {
                    centre + length
                } else {
                    centre
                },
                laps: g.len(),
                position_mad_m: mad(&d),
                value_median: median(&mut vm),
                value_mad: mad(&v),
            }
        })
        .collect()
}

/// Laps a place must appear in to count in a spread: half of them.
pub fn places_need(laps: usize) -> usize {
    laps.div_ceil(2).max(1)
}

/// Consistency across laps of one kind of point (`points` picks them from a lap's metrics:
/// braking points with the speed there, apexes with the apex speed): each place's spread of
/// position and value. A place must appear in at least half the laps.
pub fn consistency<'a, P: IntoIterator<Item = (f32, f32)>>(
    laps: impl IntoIterator<Item = &'a LapMetrics>,
    points: impl Fn(&'a LapMetrics) -> P,
    window: f32,
    length: f32,
) -> Vec<Spread> {
    let mut count = 0;
    let mut all = Vec::new();
    for lap in laps {
        count += 1;
        all.extend(points(lap));
    }
    spreads(&all, window, length, places_need(count))
}

/// Braking points of a lap with the speed there, for [`consistency`].
pub fn braking_points(m: &LapMetrics) -> impl Iterator<Item = (f32, f32)> + '_ {
    m.braking.iter().map(|z| (z.start_m, z.start_speed_mps))
}

/// The time delta on a grid from [`delta_by_distance`] at `distance` (the first grid point at
/// or after it; 0 on an empty grid).
pub fn delta_at(grid: &[(f32, f32)], distance: f32) -> f32 {
    let i = grid
        .partition_point(|(x, _)| *x < distance)
        .min(grid.len().saturating_sub(1));
    grid.get(i).map_or(0.0, |g| g.1)
}
