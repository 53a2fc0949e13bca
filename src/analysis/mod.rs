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
pub mod plot;
pub mod query;
pub mod store;
pub mod stored;
pub mod thresholds;

pub use lap::{BrakingZone, Corner, DistanceClock, LapMetrics, LapStats, MetricError, lap_metrics};
pub use thresholds::{ThresholdError, Thresholds};
