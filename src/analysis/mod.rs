//! Lap analysis: the metric engine ([`lap`]: statistics, sectors, minisectors, braking zones
//! and corners of one lap), comparisons across laps ([`across`]), and the thresholds they
//! share ([`Thresholds`]), the metric tables stored beside the laps ([`store`]) and the hook
//! that fills them as the archive writer goes ([`stored`]).
//!
//! Everything is computed from a lap's own clock and its distance in metres. The engine is
//! plain Rust over the lap's columns (one pass per signal); the archive-wide queries over its
//! results run in polars.

pub mod across;
pub mod compare;
pub mod lap;
pub mod measure;
pub mod plot;
pub mod query;
pub mod store;
pub mod stored;
pub mod thresholds;

pub use lap::{BrakingZone, Corner, DistanceClock, LapMetrics, LapStats, MetricError, lap_metrics};
pub use thresholds::{ThresholdError, Thresholds};

/// Formats seconds as `m:ss.mmm` (or `s.mmm` under a minute), as lap times are shown.
pub fn format_lap_time(s: f64) -> String {
    let ms = (s * 1000.0).round() as u64;
    let (m, rest) = (ms / 60_000, ms % 60_000);
    if m > 0 {
        format!("{m}:{:02}.{:03}", rest / 1000, rest % 1000)
    } else {
        format!("{}.{:03}", rest / 1000, rest % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lap_times_format_as_minutes_seconds_millis() {
        assert_eq!(format_lap_time(83.4567), "1:23.457");
        assert_eq!(format_lap_time(59.9994), "59.999");
        assert_eq!(format_lap_time(120.0), "2:00.000");
    }
}
