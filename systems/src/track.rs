//! Track geometry: a closed centerline with cumulative distance, curvature and a starting grid,
//! plus the pure kernels that work on it (projection of a position onto the centerline, signed
//! progress deltas across the start line).
//!
//! Coordinates follow seed 003: right-handed 2D, metres, origin at the centre of the start/finish
//! line, +X the track direction at the start, +Y to the left, yaw counter-clockwise from +X.
//! Nothing here runs in the tick by itself; the timing and AI systems call these kernels.

use bevy_ecs::prelude::*;
use thiserror::Error;

/// Fewest centerline points a track may have.
pub const MIN_CENTERLINE_POINTS: usize = 8;

/// Most segments [`TrackGeometry::project_near`] walks from the cached segment.
pub const PROJECTION_WINDOW: usize = 8;

/// Why a centerline cannot become a [`TrackGeometry`].
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum TrackGeometryError {
    /// Fewer than [`MIN_CENTERLINE_POINTS`] points.
    #[error("centerline has {found} points, at least {MIN_CENTERLINE_POINTS} are needed")]
    TooFewPoints {
        /// Points found.
        found: usize,
    },
    /// A coordinate is NaN or infinite.
    #[error("centerline point {index} is not finite")]
    NonFinitePoint {
        /// 0-based point index.
        index: usize,
    },
    /// Two consecutive points coincide (a zero-length segment).
    #[error("centerline points {index} and {next} coincide (zero-length segment)")]
    ZeroLengthSegment {
        /// 0-based index of the first point.
        index: usize,
        /// 0-based index of the second point (0 for the closing segment).
        next: usize,
    },
    /// Width is not a finite number in the accepted range.
    #[error("track width {0} m is outside 3..=60 m")]
    BadWidth(f32),
}

/// One starting grid slot: where a car is placed before the race and which way it faces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSlot {
    /// 1 = pole.
    pub position: u8,
    /// World X in metres.
    pub x_m: f32,
    /// World Y in metres.
    pub y_m: f32,
    /// Facing direction in radians, counter-clockwise from +X.
    pub yaw_rad: f32,
    /// Distance along the centerline in metres (`0..length`).
    pub distance_m: f32,
}

/// Where a position lies relative to the centerline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Index of the segment (from point `segment` to point `segment + 1`, wrapping).
    pub segment: u32,
    /// Distance along the centerline in metres, `0..length`.
    pub distance_m: f32,
    /// Signed distance from the centerline in metres, positive to the left.
    pub lateral_m: f32,
}

/// A closed centerline with everything the systems need precomputed.
///
/// Build it with [`TrackGeometry::new`]; the last point connects back to the first.
#[derive(Debug, Clone, Resource)]
pub struct TrackGeometry {
    points: Vec<[f32; 2]>,
    distance_m: Vec<f32>,
    seg_dir: Vec<[f32; 2]>,
    seg_len_m: Vec<f32>,
    curvature: Vec<f32>,
    length_m: f32,
    width_m: f32,
    grid: Vec<GridSlot>,
    /// First segment of each `LOOKUP_STEP_M` bucket of distance: `segment_at` in O(1).
    lookup: Vec<u32>,
}

/// Bucket size of the distance-to-segment lookup table, in metres.
const LOOKUP_STEP_M: f32 = 1.0;

/// Distance between grid rows in metres.
pub const GRID_ROW_SPACING_M: f32 = 8.0;

impl TrackGeometry {
    /// Builds a track from centerline points (x, y in metres) and a uniform width.
    ///
    /// The points are used as given: translation into the start-line frame is the loader's job.
    /// Curvature is computed per point and smoothed over about 10 m so that corner detection
    /// and the AI's speed targets do not react to the noise of a digitised centerline.
    ///
    /// # Errors
    /// [`TrackGeometryError`] when there are too few points, a point is not finite, two
    /// consecutive points coincide, or the width is out of range.
    pub fn new(points: Vec<[f32; 2]>, width_m: f32) -> Result<Self, TrackGeometryError> {
        if points.len() < MIN_CENTERLINE_POINTS {
            return Err(TrackGeometryError::TooFewPoints {
                found: points.len(),
            });
        }
        if !(width_m.is_finite() && (3.0..=60.0).contains(&width_m)) {
            return Err(TrackGeometryError::BadWidth(width_m));
        }
        if let Some(index) = points
            .iter()
            .position(|p| !(p[0].is_finite() && p[1].is_finite()))
        {
            return Err(TrackGeometryError::NonFinitePoint { index });
        }
        let n = points.len();
        let mut seg_dir = Vec::with_capacity(n);
        let mut seg_len_m = Vec::with_capacity(n);
        let mut distance_m = Vec::with_capacity(n);
        let mut total = 0.0f64;
        for i in 0..n {
            let j = (i + 1) % n;
            let dx = points[j][0] - points[i][0];
            let dy = points[j][1] - points[i][1];
            let len = (dx * dx + dy * dy).sqrt();
            if len < 1e-3 {
                return Err(TrackGeometryError::ZeroLengthSegment { index: i, next: j });
            }
            distance_m.push(total as f32);
            total += f64::from(len);
            seg_len_m.push(len);
            seg_dir.push([dx / len, dy / len]);
        }
        let length_m = total as f32;
        let raw = menger_curvature(&points);
        let curvature = smooth_closed(&raw, &seg_len_m, 10.0);
        let buckets = (length_m / LOOKUP_STEP_M).ceil() as usize + 1;
        let mut lookup = Vec::with_capacity(buckets);
        let mut seg = 0usize;
        for b in 0..buckets {
            let d = b as f32 * LOOKUP_STEP_M;
            while seg + 1 < n && distance_m[seg + 1] <= d {
                seg += 1;
            }
            lookup.push(seg as u32);
        }
        Ok(Self {
            points,
            distance_m,
            seg_dir,
            seg_len_m,
            curvature,
            length_m,
            width_m,
            grid: Vec::new(),
            lookup,
        })
    }

    /// Gives the track a starting grid of `slots` slots (see [`TrackGeometry::build_grid`]).
    pub fn with_grid(mut self, slots: usize) -> Self {
        self.grid = self.build_grid(slots, GRID_ROW_SPACING_M);
        self
    }

    /// The starting grid, pole first.
    pub fn grid_slots(&self) -> &[GridSlot] {
        &self.grid
    }

    /// Centerline points in metres.
    pub fn points(&self) -> &[[f32; 2]] {
        &self.points
    }

    /// Number of centerline points (and of segments: the loop is closed).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Always false: a track has at least [`MIN_CENTERLINE_POINTS`] points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Lap length in metres.
    pub fn length_m(&self) -> f32 {
        self.length_m
    }

    /// Track width in metres.
    pub fn width_m(&self) -> f32 {
        self.width_m
    }

    /// Cumulative distance of each point from the first, in metres.
    pub fn distances_m(&self) -> &[f32] {
        &self.distance_m
    }

    /// Smoothed signed curvature at each point in 1/m (positive = turning left).
    pub fn curvatures(&self) -> &[f32] {
        &self.curvature
    }

    /// Index of the segment containing distance `d` (metres, any value; wrapped into the lap).
    #[inline]
    pub fn segment_at(&self, d: f32) -> usize {
        let d = d.rem_euclid(self.length_m);
        let bucket = ((d / LOOKUP_STEP_M) as usize).min(self.lookup.len() - 1);
        let mut i = self.lookup[bucket] as usize;
        let n = self.distance_m.len();
        while i + 1 < n && self.distance_m[i + 1] <= d {
            i += 1;
        }
        i
    }

    /// Point on the centerline at distance `d` (wrapped), and the segment's unit direction.
    pub fn point_at(&self, d: f32) -> ([f32; 2], [f32; 2]) {
        let d = d.rem_euclid(self.length_m);
        let i = self.segment_at(d);
        let t = (d - self.distance_m[i]).clamp(0.0, self.seg_len_m[i]);
        let p = self.points[i];
        let dir = self.seg_dir[i];
        ([p[0] + dir[0] * t, p[1] + dir[1] * t], dir)
    }

    /// Curvature at distance `d` (wrapped), linearly interpolated between points.
    pub fn curvature_at(&self, d: f32) -> f32 {
        let d = d.rem_euclid(self.length_m);
        let i = self.segment_at(d);
        let j = (i + 1) % self.len();
        let t = ((d - self.distance_m[i]) / self.seg_len_m[i]).clamp(0.0, 1.0);
        self.curvature[i] + (self.curvature[j] - self.curvature[i]) * t
    }

    /// Projects `(x, y)` onto one segment.
    #[inline]
    fn project_segment(&self, i: usize, x: f32, y: f32) -> (f32, f32, f32) {
        let p = self.points[i];
        let dir = self.seg_dir[i];
        let rx = x - p[0];
        let ry = y - p[1];
        let along = (rx * dir[0] + ry * dir[1]).clamp(0.0, self.seg_len_m[i]);
        let lateral = dir[0] * ry - dir[1] * rx;
        let cx = rx - dir[0] * along;
        let cy = ry - dir[1] * along;
        (cx * cx + cy * cy, along, lateral)
    }

    fn finish_projection(&self, i: usize, along: f32, lateral: f32) -> Projection {
        let mut distance_m = self.distance_m[i] + along;
        if distance_m >= self.length_m {
            distance_m -= self.length_m;
        }
        Projection {
            segment: i as u32,
            distance_m,
            lateral_m: lateral,
        }
    }

    /// Projects `(x, y)` onto the nearest segment found by walking at most [`PROJECTION_WINDOW`]
    /// segments from `hint`, the segment found on the previous tick. Searching from the hint
    /// keeps a car on its own part of the track where the circuit passes close to itself
    /// (hairpins) and costs two or three segments instead of the whole centerline. When the
    /// segment found is more than a track width away, the car has jumped, and the whole
    /// centerline is searched.
    pub fn project_near(&self, x: f32, y: f32, hint: u32) -> Projection {
        let n = self.len();
        let mut i = (hint as usize) % n;
        let mut best = self.project_segment(i, x, y);
        // Walk from the cached segment towards the nearer neighbour while it gets nearer: the
        // nearest segment of this part of the track, in two or three checks for a car that
        // moved less than a segment since the last tick.
        let next = self.project_segment((i + 1) % n, x, y);
        let prev = self.project_segment((i + n - 1) % n, x, y);
        let (step, mut cand) = if next.0 < prev.0 {
            (1, next)
        } else {
            (n - 1, prev)
        };
        for _ in 0..PROJECTION_WINDOW {
            if cand.0 >= best.0 {
                break;
            }
            i = (i + step) % n;
            best = cand;
            cand = self.project_segment((i + step) % n, x, y);
        }
        // Nothing within a track width near the cached segment: the car was moved (reset,
        // tow, a jump in recorded data). Find it again on the whole track.
        if best.0 > self.width_m * self.width_m {
            return self.project(x, y);
        }
        self.finish_projection(i, best.1, best.2)
    }

    /// Projects `(x, y)` onto the nearest segment of the whole centerline. Use it to place a car
    /// that has no cached segment yet (spawn, reset); it costs O(points).
    pub fn project(&self, x: f32, y: f32) -> Projection {
        let mut best = (f32::INFINITY, 0.0, 0.0, 0);
        for i in 0..self.len() {
            let (d2, along, lateral) = self.project_segment(i, x, y);
            if d2 < best.0 {
                best = (d2, along, lateral, i);
            }
        }
        self.finish_projection(best.3, best.1, best.2)
    }

    /// Signed progress from distance `from_m` to `to_m` in metres, taking the short way round
    /// the loop: the result lies in `(-length/2, length/2]`. Crossing the start line forwards
    /// gives a small positive number, not `-length`.
    pub fn progress_delta(&self, from_m: f32, to_m: f32) -> f32 {
        wrap_delta(to_m - from_m, self.length_m)
    }

    /// Builds `count` staggered grid slots behind the start line: two columns a quarter of the
    /// width either side of the centerline, `row_spacing_m` between rows, the first row 6 m
    /// behind the line, pole on the left.
    pub fn build_grid(&self, count: usize, row_spacing_m: f32) -> Vec<GridSlot> {
        (0..count)
            .map(|i| {
                let row = (i / 2) as f32;
                // Each column is staggered by half a row, like a real 2-wide grid.
                let back = 6.0 + row * row_spacing_m + (i % 2) as f32 * row_spacing_m * 0.5;
                let d = (self.length_m - back).rem_euclid(self.length_m);
                let (p, dir) = self.point_at(d);
                let side = if i % 2 == 0 { 1.0 } else { -1.0 } * self.width_m * 0.25;
                GridSlot {
                    position: (i + 1) as u8,
                    x_m: p[0] - dir[1] * side,
                    y_m: p[1] + dir[0] * side,
                    yaw_rad: dir[1].atan2(dir[0]),
                    distance_m: d,
                }
            })
            .collect()
    }
}

/// Index of a track in [`Tracks`]. As a component it says which track a car or session is on.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u32);

/// Every track geometry the world can race on, addressed by [`TrackId`]. Append-only: a track
/// that is replaced by a content reload gets a new id, and running sessions keep the old one.
#[derive(Resource, Debug, Default)]
pub struct Tracks(Vec<TrackGeometry>);

impl Tracks {
    /// Adds a track and returns its id.
    pub fn add(&mut self, track: TrackGeometry) -> TrackId {
        let id = TrackId(self.0.len() as u32);
        self.0.push(track);
        id
    }

    /// The track with this id, if any.
    #[inline]
    pub fn get(&self, id: TrackId) -> Option<&TrackGeometry> {
        self.0.get(id.0 as usize)
    }
}

/// Wraps a distance difference into `(-length/2, length/2]`.
#[inline]
pub fn wrap_delta(delta: f32, length: f32) -> f32 {
    let half = length * 0.5;
    if delta > half {
        delta - length
    } else if delta <= -half {
        delta + length
    } else {
        delta
    }
}

/// Signed Menger curvature (1/R through three consecutive points) at every point of a loop.
fn menger_curvature(points: &[[f32; 2]]) -> Vec<f32> {
    let n = points.len();
    (0..n)
        .map(|i| {
            let a = points[(i + n - 1) % n];
            let b = points[i];
            let c = points[(i + 1) % n];
            let abx = b[0] - a[0];
            let aby = b[1] - a[1];
            let bcx = c[0] - b[0];
            let bcy = c[1] - b[1];
            let acx = c[0] - a[0];
            let acy = c[1] - a[1];
            let cross = abx * bcy - aby * bcx;
            let denom = (abx.hypot(aby)) * (bcx.hypot(bcy)) * (acx.hypot(acy));
            if denom > 1e-9 {
                2.0 * cross / denom
            } else {
                0.0
            }
        })
        .collect()
}

/// Moving average over a window of about `window_m` metres centred on each point of a loop.
fn smooth_closed(values: &[f32], seg_len_m: &[f32], window_m: f32) -> Vec<f32> {
    let n = values.len();
    let mean_seg = seg_len_m.iter().sum::<f32>() / n as f32;
    let half = ((window_m / mean_seg / 2.0).round() as usize).clamp(0, n / 4);
    let count = (2 * half + 1) as f32;
    (0..n)
        .map(|i| {
            (0..=2 * half)
                .map(|k| values[(i + n + k - half) % n])
                .sum::<f32>()
                / count
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(r: f32, n: usize) -> TrackGeometry {
        crate::testing::circle_track(r, n, 12.0)
    }

    #[test]
    fn circle_length_and_curvature() {
        let t = circle(100.0, 400);
        let expect = std::f32::consts::TAU * 100.0;
        assert!((t.length_m() - expect).abs() < 0.1, "{}", t.length_m());
        for k in t.curvatures() {
            assert!((k - 0.01).abs() < 1e-4, "curvature {k}");
        }
    }

    #[test]
    fn projection_gives_distance_and_signed_lateral() {
        let t = circle(100.0, 400);
        // A quarter lap round, 5 m inside (to the left of an anticlockwise loop).
        let p = t.project(95.0, 100.0);
        assert!((p.distance_m - t.length_m() / 4.0).abs() < 0.5, "{p:?}");
        assert!((p.lateral_m - 5.0).abs() < 0.05, "{p:?}");
        // The point projects onto a vertex: either neighbouring segment is right.
        let near = t.project_near(95.0, 100.0, p.segment + 3);
        assert!(
            (near.distance_m - p.distance_m).abs() < 0.2,
            "{near:?} {p:?}"
        );
        let outside = t.project(0.0, -3.0);
        assert!((outside.lateral_m + 3.0).abs() < 0.05, "{outside:?}");
    }

    #[test]
    fn project_near_agrees_with_the_full_search_from_a_stale_hint() {
        let t = circle(100.0, 400);
        for k in 0..400u32 {
            let d = k as f32 * t.length_m() / 400.0 + 0.3;
            let (p, dir) = t.point_at(d);
            // 4 m to the left, hint up to 6 segments behind or ahead.
            let (x, y) = (p[0] - dir[1] * 4.0, p[1] + dir[0] * 4.0);
            let hint = (k + 400 + (k % 13) - 6) % 400;
            let near = t.project_near(x, y, hint);
            let full = t.project(x, y);
            assert_eq!(near.segment, full.segment, "k {k} hint {hint}");
            assert!((near.lateral_m - 4.0).abs() < 0.01);
        }
    }

    #[test]
    fn project_near_stays_on_its_own_part_of_the_track() {
        // A hairpin: two parallel legs 8 m apart. The nearest segment overall is on the other
        // leg, but the cached segment keeps the car on its own leg.
        let mut pts = Vec::new();
        for i in 0..50 {
            pts.push([i as f32 * 4.0, 0.0]);
        }
        for i in (0..50).rev() {
            pts.push([i as f32 * 4.0, 8.0]);
        }
        let t = TrackGeometry::new(pts, 6.0).expect("valid");
        let p = t.project_near(100.0, 4.5, 25);
        assert!(p.segment < 50, "jumped to the other leg: {p:?}");
        let global = t.project(100.0, 4.5);
        assert!(global.segment >= 50);
    }

    #[test]
    fn segment_lookup_agrees_with_a_linear_search() {
        // Uneven spacing: short and long segments.
        let pts: Vec<[f32; 2]> = (0..60)
            .map(|i| {
                let a = i as f32 / 60.0 * std::f32::consts::TAU;
                let r = 80.0 + 30.0 * (3.0 * a).sin();
                [r * a.cos(), r * a.sin()]
            })
            .collect();
        let t = TrackGeometry::new(pts, 10.0).expect("valid");
        let mut d = -50.0f32;
        while d < t.length_m() * 2.0 {
            let w = d.rem_euclid(t.length_m());
            let linear = t.distances_m().iter().rposition(|&x| x <= w).unwrap_or(0);
            assert_eq!(t.segment_at(d), linear, "at {d}");
            d += 0.37;
        }
    }

    #[test]
    fn progress_delta_wraps_across_the_line() {
        let t = circle(100.0, 400);
        let l = t.length_m();
        assert!((t.progress_delta(l - 1.0, 0.5) - 1.5).abs() < 1e-3);
        assert!((t.progress_delta(0.5, l - 1.0) + 1.5).abs() < 1e-3);
        assert!((t.progress_delta(10.0, 20.0) - 10.0).abs() < 1e-4);
    }

    #[test]
    fn bad_centerlines_are_rejected() {
        assert_eq!(
            TrackGeometry::new(vec![[0.0, 0.0]; 3], 10.0).err(),
            Some(TrackGeometryError::TooFewPoints { found: 3 })
        );
        let mut pts: Vec<[f32; 2]> = (0..10).map(|i| [i as f32, (i * i) as f32]).collect();
        pts[4][1] = f32::NAN;
        assert_eq!(
            TrackGeometry::new(pts.clone(), 10.0).err(),
            Some(TrackGeometryError::NonFinitePoint { index: 4 })
        );
        pts[4] = pts[3];
        assert_eq!(
            TrackGeometry::new(pts.clone(), 10.0).err(),
            Some(TrackGeometryError::ZeroLengthSegment { index: 3, next: 4 })
        );
        pts[4] = [4.0, 16.0];
        assert!(matches!(
            TrackGeometry::new(pts, f32::INFINITY).err(),
            Some(TrackGeometryError::BadWidth(_))
        ));
    }

    #[test]
    fn grid_slots_are_behind_the_line_and_staggered() {
        let t = circle(100.0, 400);
        let grid = t.build_grid(4, 8.0);
        assert_eq!(grid.len(), 4);
        for slot in &grid {
            let back = t.length_m() - slot.distance_m;
            assert!(back > 5.0 && back < 30.0, "{slot:?}");
            let p = t.project(slot.x_m, slot.y_m);
            assert!((p.lateral_m.abs() - 3.0).abs() < 0.1, "{p:?}");
        }
        assert!(grid[0].distance_m > grid[1].distance_m);
        assert!(grid[1].distance_m > grid[2].distance_m);
        assert!(
            t.project(grid[0].x_m, grid[0].y_m).lateral_m > 0.0,
            "pole on the left"
        );
    }
}
