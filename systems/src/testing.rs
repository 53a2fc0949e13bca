//! Shared fixtures for the unit tests of this crate.

use crate::car::CarSpec;
use crate::track::TrackGeometry;

/// The seed's GT3 car (seed 003 section 10).
pub(crate) fn gt3() -> CarSpec {
    CarSpec::SEED_GT3
}

/// An anticlockwise rectangle starting at the origin heading +X, `length` by `height` metres,
/// with a point every `step` metres.
pub(crate) fn rectangle_track(length: f32, height: f32, step: f32, width: f32) -> TrackGeometry {
    let mut pts = Vec::new();
    let corners = [[0.0, 0.0], [length, 0.0], [length, height], [0.0, height]];
    for k in 0..4 {
        let a: [f32; 2] = corners[k];
        let b: [f32; 2] = corners[(k + 1) % 4];
        let len = (b[0] - a[0]).hypot(b[1] - a[1]);
        let n = (len / step).round() as usize;
        for i in 0..n {
            let t = i as f32 / n as f32;
            pts.push([a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t]);
        }
    }
    TrackGeometry::new(pts, width).expect("valid rectangle")
}

/// A circle of radius `r` with `n` points, starting at the origin heading +X (anticlockwise).
pub(crate) fn circle_track(r: f32, n: usize, width: f32) -> TrackGeometry {
    let pts = (0..n)
        .map(|i| {
            let a = -std::f32::consts::FRAC_PI_2 + i as f32 / n as f32 * std::f32::consts::TAU;
            [r * a.cos(), r * a.sin() + r]
        })
        .collect();
    TrackGeometry::new(pts, width).expect("valid circle")
}
