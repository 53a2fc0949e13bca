//! The metric engine on synthetic traces: one test per edge case of each metric.

use apexsim::analysis::across::{
    braking_points, consistency, delta_by_distance, lap_distance, lap_offset, match_points,
    theoretical_best,
};
use apexsim::analysis::lap::{moving_average, running_median};
use apexsim::analysis::{DistanceClock, LapMetrics, MetricError, Thresholds, lap_metrics};
use apexsim::systems::record::LapColumns;

const L: f32 = 2000.0;
const HZ: f32 = 60.0;

/// What the driver does at a distance along the lap.
#[derive(Clone, Copy)]
struct Inputs {
    speed: f32,
    brake: f32,
    throttle: f32,
    lat: f32,
}

/// A lap sampled at 60 Hz: starting `phase` of a sample after the line, speed and inputs as a
/// function of distance. `complete` stops at the last sample before the line.
fn trace(phase: f32, f: impl Fn(f32) -> Inputs) -> LapColumns {
    let mut c = LapColumns::default();
    let dt = 1.0 / f64::from(HZ);
    let mut d = f64::from(phase * f(0.0).speed) * dt;
    let mut t = d / f64::from(f(0.0).speed);
    let mut tick = 0;
    while d < f64::from(L) {
        let i = f(d as f32);
        c.tick.push(tick);
        c.lap_time_s.push(t as f32);
        c.distance_m.push(d as f32);
        c.speed_mps.push(i.speed);
        c.brake.push(i.brake);
        c.throttle.push(i.throttle);
        c.lat_accel_mps2.push(i.lat);
        for col in [
            &mut c.lateral_m,
            &mut c.steering,
            &mut c.gear,
            &mut c.rpm,
            &mut c.x_m,
            &mut c.y_m,
            &mut c.yaw_rad,
            &mut c.long_accel_mps2,
        ] {
            col.push(0.0);
        }
        // Integrate at a fine step so speed and distance agree.
        for _ in 0..10 {
            d += f64::from(f(d as f32).speed) * dt / 10.0;
        }
        t += dt;
        tick += 1;
    }
    c
}

fn cruise(d: f32) -> Inputs {
    let _ = d;
    Inputs {
        speed: 50.0,
        brake: 0.0,
        throttle: 1.0,
        lat: 0.0,
    }
}

/// A braking zone into a left-hander: brake from `at` for 80 m down to 20 m/s, then a corner
/// of 100 m, then throttle.
fn corner_at(at: f32) -> impl Fn(f32) -> Inputs {
    move |d: f32| {
        let x = (d - at).rem_euclid(L);
        if x < 80.0 {
            Inputs {
                speed: 50.0 - 30.0 * x / 80.0,
                brake: 0.8,
                throttle: 0.0,
                lat: if x > 60.0 { 8.0 } else { 0.0 },
            }
        } else if x < 180.0 {
            let y = x - 80.0;
            Inputs {
                speed: 20.0 + 0.1 * (y - 40.0).abs() - 4.0,
                brake: 0.0,
                throttle: if y > 40.0 { 0.5 } else { 0.0 },
                lat: 15.0,
            }
        } else if x < 400.0 {
            Inputs {
                speed: 22.0 + 28.0 * (x - 180.0) / 220.0,
                brake: 0.0,
                throttle: 1.0,
                lat: 0.0,
            }
        } else {
            cruise(d)
        }
    }
}

fn metrics(c: &LapColumns, complete: bool) -> LapMetrics {
    lap_metrics(c, L, complete, &[0.5], &Thresholds::default()).expect("metrics")
}

#[test]
fn lap_time_is_integrated_to_the_line_whatever_the_sample_phase() {
    for phase in [0.0, 0.25, 0.5, 0.99] {
        let m = metrics(&trace(phase, cruise), true);
        let time = m.stats.lap_time_s.expect("complete");
        assert!((time - 40.0).abs() < 1e-3, "phase {phase}: {time}");
        let minis: f64 = m.minisector_times_s.iter().map(|x| f64::from(*x)).sum();
        assert!((minis - time).abs() < 1e-3, "minisectors sum to the lap");
        assert_eq!(m.minisector_times_s.len(), 40, "50 m minisectors");
        assert_eq!(m.sector_times_s.len(), 2);
        assert!((m.sector_times_s[0] - 20.0).abs() < 1e-3);
    }
    let m = metrics(&trace(0.5, cruise), false);
    assert_eq!(
        m.stats.lap_time_s, None,
        "an incomplete lap has no lap time"
    );
}

#[test]
fn no_braking_at_all() {
    let m = metrics(&trace(0.3, cruise), true);
    assert!(m.braking.is_empty());
    assert!(m.corners.is_empty());
    assert_eq!(m.stats.braking_share, 0.0);
    assert!(m.stats.full_throttle_share > 0.99);
    assert_eq!(m.stats.coasting_share, 0.0);
    assert!(consistency([&m, &m], braking_points, 50.0, L).is_empty());
}

#[test]
fn a_braking_zone_and_its_corner() {
    let m = metrics(&trace(0.3, corner_at(800.0)), true);
    assert_eq!(m.braking.len(), 1, "{:?}", m.braking);
    let z = &m.braking[0];
    assert!((z.start_m - 800.0).abs() < 2.0, "{z:?}");
    assert!((z.end_m - 880.0).abs() < 2.0, "{z:?}");
    assert!((z.start_speed_mps - 50.0).abs() < 0.5);
    assert!((z.min_speed_mps - 20.0).abs() < 0.6);
    assert_eq!(z.peak_brake, 0.8);
    // 80 m from 50 to 20 m/s, speed falling linearly with distance: 80/30 ln(50/20) = 2.44 s.
    assert!((z.duration_s - 2.44).abs() < 0.1, "{z:?}");
    assert!(z.avg_decel_mps2 > 10.0 && z.avg_decel_mps2 < 16.0, "{z:?}");
    assert!(
        z.initial_decel_mps2 > 15.0,
        "decelerates hardest at speed: {z:?}"
    );
    // Lateral load over the last 20 m of braking (smoothing widens it a little).
    assert!(
        z.trail_brake_m > 10.0 && z.trail_brake_m < 35.0,
        "{}",
        z.trail_brake_m
    );
    assert!((z.trail_brake_share - z.trail_brake_m / 80.0).abs() < 0.05);

    assert_eq!(m.corners.len(), 1, "{:?}", m.corners);
    let c = &m.corners[0];
    assert_eq!(c.direction, 1, "a left-hander");
    assert!((c.turn_in_m - 860.0).abs() < 10.0, "{c:?}");
    assert!((c.exit_m - 980.0).abs() < 10.0, "{c:?}");
    assert!(
        (c.apex_m - 920.0).abs() < 2.0,
        "apex at the lowest speed: {c:?}"
    );
    assert!(
        (c.apex_speed_mps - 16.0).abs() < 0.1,
        "speed at the apex: {c:?}"
    );
    assert!((c.apex_lat_g - 15.0 / 9.806_65).abs() < 0.02, "{c:?}");
    assert!(c.speed_lost_mps > 0.0 && c.speed_gained_mps > 0.0);
    let throttle = c.throttle_m.expect("throttle applied after the apex");
    assert!((throttle - 920.0).abs() < 3.0, "{throttle}");
}

#[test]
fn a_zone_across_the_line_is_one_zone_on_a_complete_lap() {
    let m = metrics(&trace(0.4, corner_at(L - 40.0)), true);
    assert_eq!(m.braking.len(), 1, "{:?}", m.braking);
    let z = &m.braking[0];
    assert!(
        (z.start_m - (L - 40.0)).abs() < 2.0,
        "starts before the line: {z:?}"
    );
    assert!((z.end_m - 40.0).abs() < 2.0, "ends after it: {z:?}");
    assert!((z.duration_s - 2.44).abs() < 0.1, "{z:?}");
    assert!((z.min_speed_mps - 20.0).abs() < 0.6);
    // The corner after it starts after the line, as one corner.
    assert_eq!(m.corners.len(), 1, "{:?}", m.corners);
    // An incomplete lap cannot join its ends: the zone is two pieces, the first too short
    // to be one if it is under the minimum duration.
    let open = metrics(&trace(0.4, corner_at(L - 40.0)), false);
    assert_eq!(open.braking.len(), 2, "{:?}", open.braking);
}

#[test]
fn a_corner_across_the_line_is_one_corner() {
    let m = metrics(&trace(0.2, corner_at(L - 130.0)), true);
    assert_eq!(m.corners.len(), 1, "{:?}", m.corners);
    let c = &m.corners[0];
    assert!(c.turn_in_m > L - 80.0, "turns in before the line: {c:?}");
    assert!(c.exit_m < 60.0, "exits after it: {c:?}");
    assert!((c.apex_m - (L - 10.0)).abs() < 3.0, "{c:?}");
    assert!((c.time_s - 120.0 / 18.0).abs() < 1.0, "{c:?}");
}

#[test]
fn spikes_are_neither_zones_nor_corners() {
    let mut c = trace(0.5, cruise);
    for i in [300, 900, 1500] {
        c.lat_accel_mps2[i] = 300.0;
        c.brake[i] = 1.0;
        c.brake[i + 1] = 1.0;
    }
    c.lat_accel_mps2[1200] = -280.0;
    c.lat_accel_mps2[1201] = -250.0;
    let m = metrics(&c, true);
    assert!(m.braking.is_empty(), "{:?}", m.braking);
    assert!(m.corners.is_empty(), "{:?}", m.corners);
    assert_eq!(
        running_median(&[0.0, 0.0, 9.0, 0.0, 0.0, 1.0, 1.0], 5)[2],
        0.0
    );
    assert_eq!(moving_average(&[0.0, 3.0, 0.0], 3)[1], 1.0);
}

#[test]
fn hysteresis_and_gap_merging_keep_one_zone() {
    // The pedal hovers around the entry threshold, and lifts for 0.1 s mid-zone.
    let wobbly = |d: f32| {
        let mut i = corner_at(800.0)(d);
        if (800.0..880.0).contains(&d) {
            i.brake = if ((d - 800.0) / 3.0) as i32 % 2 == 0 {
                0.12
            } else {
                0.07
            };
            if (840.0..843.0).contains(&d) {
                i.brake = 0.0;
            }
        }
        i
    };
    let m = metrics(&trace(0.1, wobbly), true);
    assert_eq!(m.braking.len(), 1, "{:?}", m.braking);
    // Without merging, the lift splits it.
    let strict = Thresholds {
        brake_merge_gap_s: 0.0,
        pedal_smoothing_s: 0.0,
        ..Thresholds::default()
    };
    let split = lap_metrics(&trace(0.1, wobbly), L, true, &[], &strict).expect("metrics");
    assert_eq!(split.braking.len(), 2, "{:?}", split.braking);
}

#[test]
fn comparisons_across_laps() {
    let slow = trace(0.3, corner_at(800.0));
    let fast = trace(0.7, |d| {
        let mut i = corner_at(810.0)(d);
        i.speed *= 1.02;
        i
    });
    let (ms, mf) = (metrics(&slow, true), metrics(&fast, true));
    let (ts, tf) = (
        ms.stats.lap_time_s.expect("complete"),
        mf.stats.lap_time_s.expect("complete"),
    );
    assert!(tf < ts);
    let a = DistanceClock::new(&slow, L, true).expect("clock");
    let b = DistanceClock::new(&fast, L, true).expect("clock");
    let delta = delta_by_distance(&a, &b, 1.0);
    assert_eq!(delta.len(), 2001);
    assert_eq!(delta[0], (0.0, 0.0));
    let at_line = delta.last().expect("delta").1;
    assert!(
        (f64::from(at_line) - (tf - ts)).abs() < 1e-3,
        "{at_line} vs {}",
        tf - ts
    );
    let best = theoretical_best([&ms, &mf].map(|m| m.minisector_times_s.as_slice())).expect("best");
    assert!(best <= tf + 1e-4, "{best} vs {tf}");
    let pairs = match_points(
        &ms.braking.iter().map(|z| z.start_m).collect::<Vec<_>>(),
        &mf.braking.iter().map(|z| z.start_m).collect::<Vec<_>>(),
        50.0,
        L,
    );
    assert_eq!(pairs, vec![(0, 0)]);
    let spread = consistency([&ms, &mf], braking_points, 50.0, L);
    assert_eq!(spread.len(), 1);
    assert!((spread[0].position_mad_m - 5.0).abs() < 1.0, "{spread:?}");
    assert!((lap_distance(5.0, L - 5.0, L) - 10.0).abs() < 1e-3);
    // Signed, the short way round: just past the line is after just before it.
    assert!((lap_offset(L - 5.0, 5.0, L) - 10.0).abs() < 1e-3);
    assert!((lap_offset(5.0, L - 5.0, L) + 10.0).abs() < 1e-3);
    assert!((lap_offset(100.0, 130.0, L) - 30.0).abs() < 1e-3);
    assert!(match_points(&[5.0], &[L - 5.0], 50.0, L) == vec![(0, 0)]);
}

#[test]
fn bad_laps_are_named_errors() {
    let c = trace(0.0, cruise);
    let mut few = LapColumns::default();
    few.extend_from(&c, &[0, 1, 2]);
    assert_eq!(
        lap_metrics(&few, L, true, &[], &Thresholds::default()),
        Err(MetricError::TooFewRows { rows: 3, min: 10 })
    );
    let mut back = c.clone();
    back.lap_time_s[20] = 0.0;
    let e = lap_metrics(&back, L, true, &[], &Thresholds::default()).expect_err("backwards");
    assert_eq!(
        e.to_string(),
        "column lap_time_s is unusable at row 20: runs backwards"
    );
    let mut nan = c.clone();
    nan.distance_m[7] = f32::NAN;
    let e = lap_metrics(&nan, L, true, &[], &Thresholds::default()).expect_err("nan");
    assert!(e.to_string().contains("distance_m"), "{e}");
    assert!(lap_metrics(&c, 0.0, true, &[], &Thresholds::default()).is_err());
}

#[test]
fn a_corner_taken_flat_has_no_throttle_point() {
    let flat = |d: f32| {
        let mut i = corner_at(800.0)(d);
        i.throttle = 1.0;
        i.brake = 0.0;
        i
    };
    let m = metrics(&trace(0.5, flat), true);
    assert_eq!(m.corners.len(), 1, "{:?}", m.corners);
    assert_eq!(m.corners[0].throttle_m, None, "never lifted");
    assert!(m.braking.is_empty());
    // The lifted corner's throttle point is where the driver got back on it.
    let lifted = metrics(&trace(0.5, corner_at(800.0)), true);
    let back = lifted.corners[0].throttle_m.expect("back on throttle");
    assert!((back - 920.0).abs() < 3.0, "{back}");
}
