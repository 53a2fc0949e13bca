//! Every threshold of the metric engine, named once, with its unit, default and meaning.
//!
//! Read from a TOML file (`--thresholds FILE`, keys as below, unknown keys refused) and
//! overridden one by one on the command line (`--set brake_on=0.15`). A change means the
//! stored metrics are stale: `apexsim analyze --recompute` rebuilds them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why thresholds could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ThresholdError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML is malformed, names an unknown threshold or has a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or the `--set` argument.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its range.
    #[error("threshold {name} = {value}: {problem}")]
    Range {
        /// The threshold.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The rule it breaks.
        problem: &'static str,
    },
}

/// The metric engine's thresholds. Times are on the recording's own clock, distances in metres
/// along the lap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Moving-average window of the brake and throttle signals, in seconds.
    pub pedal_smoothing_s: f32,
    /// Width of the running median that removes isolated spikes from the acceleration
    /// signals, in samples (odd; 1 disables it). Real recordings have single-sample spikes of
    /// 300 m/s².
    pub spike_median_samples: usize,
    /// Moving-average window of the lateral acceleration after the median, in seconds.
    pub accel_smoothing_s: f32,
    /// Brake (0-1) above which a braking zone is entered.
    pub brake_on: f32,
    /// Brake (0-1) below which a braking zone is left (hysteresis: below `brake_on`).
    pub brake_off: f32,
    /// Braking shorter than this, in seconds, is not a zone (a brush of the pedal).
    pub brake_min_duration_s: f32,
    /// Two braking zones closer than this, in seconds, are one (a pumped pedal).
    pub brake_merge_gap_s: f32,
    /// Window after a zone's start over which the initial deceleration is measured, seconds.
    pub initial_decel_window_s: f32,
    /// The car is in a corner when the radius of its path (speed² over the smoothed lateral
    /// acceleration) is below this, in metres.
    pub corner_on_radius_m: f32,
    /// A corner ends when the radius grows above this, in metres; turn-in and exit are where
    /// it crosses this level (hysteresis: above `corner_on_radius_m`).
    pub corner_off_radius_m: f32,
    /// Below this speed (m/s) the path's radius is not measured (a spin, a stop).
    pub corner_min_speed_mps: f32,
    /// Braking counts as trail braking where the lateral acceleration (smoothed) is above this,
    /// in m/s².
    pub trail_lat_mps2: f32,
    /// Cornering shorter than this, in seconds, is not a corner.
    pub corner_min_duration_s: f32,
    /// Two corners in the same direction closer than this, in metres, are one (a spin or a
    /// wobble in the middle of a corner).
    pub corner_merge_gap_m: f32,
    /// A corner with two apexes is two corners when the path between them straightens to
    /// this share of the tighter apex's curvature or less (0-1; 0 never splits).
    pub corner_split_ratio: f32,
    /// Throttle (0-1) counted as full throttle.
    pub full_throttle: f32,
    /// Throttle (0-1) at which it counts as applied after an apex.
    pub throttle_on: f32,
    /// Both pedals below this (0-1) is coasting.
    pub coast_below: f32,
    /// Minisector length in metres.
    pub minisector_m: f32,
    /// Zones and corners of two laps match when their distances differ by at most this, in
    /// metres.
    pub match_window_m: f32,
    /// Spacing of the common distance grid of lap comparisons, in metres.
    pub grid_step_m: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            pedal_smoothing_s: 0.05,
            spike_median_samples: 5,
            accel_smoothing_s: 0.3,
            brake_on: 0.10,
            brake_off: 0.05,
            brake_min_duration_s: 0.25,
            brake_merge_gap_s: 0.30,
            initial_decel_window_s: 0.5,
            corner_on_radius_m: 150.0,
            corner_off_radius_m: 350.0,
            corner_min_speed_mps: 8.0,
            trail_lat_mps2: 4.0,
            corner_min_duration_s: 1.0,
            corner_merge_gap_m: 15.0,
            corner_split_ratio: 0.5,
            full_throttle: 0.98,
            throttle_on: 0.20,
            coast_below: 0.05,
            minisector_m: 50.0,
            match_window_m: 50.0,
            grid_step_m: 1.0,
        }
    }
}

impl Thresholds {
    /// Reads thresholds from a TOML file; missing keys keep their defaults.
    ///
    /// # Errors
    /// [`ThresholdError`] naming the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self, ThresholdError> {
        let text = std::fs::read_to_string(path).map_err(|source| ThresholdError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let t: Self = toml::from_str(&text).map_err(|e| ThresholdError::Parse {
            origin: path.display().to_string(),
            message: e.message().to_owned(),
        })?;
        t.validate()?;
        Ok(t)
    }

    /// Applies `name=value` overrides (as from `--set`).
    ///
    /// # Errors
    /// [`ThresholdError`] naming the argument: not `name=value`, an unknown name, a value of
    /// the wrong type or out of range.
    pub fn with_overrides(self, sets: &[String]) -> Result<Self, ThresholdError> {
        if sets.is_empty() {
            return Ok(self);
        }
        let mut table = toml::Table::try_from(&self).map_err(|e| ThresholdError::Parse {
            origin: "thresholds".into(),
            message: e.to_string(),
        })?;
        for set in sets {
            let parse = |message: String| ThresholdError::Parse {
                origin: format!("--set {set}"),
                message,
            };
            let one: toml::Table = toml::from_str(set)
                .map_err(|e| parse(format!("expected name=value ({})", e.message().trim())))?;
            for (k, v) in one {
                if !table.contains_key(&k) {
                    return Err(parse(format!("unknown threshold {k}")));
                }
                // Integers are accepted where a float is expected.
                let v = match (&table[&k], v) {
                    (toml::Value::Float(_), toml::Value::Integer(i)) => {
                        toml::Value::Float(i as f64)
                    }
                    (_, v) => v,
                };
                table.insert(k, v);
            }
        }
        let t: Self = table
            .try_into()
            .map_err(|e: toml::de::Error| ThresholdError::Parse {
                origin: "--set".into(),
                message: e.message().to_owned(),
            })?;
        t.validate()?;
        Ok(t)
    }

    /// Checks every value's range.
    ///
    /// # Errors
    /// [`ThresholdError::Range`] for the first value out of range.
    pub fn validate(&self) -> Result<(), ThresholdError> {
        let range = |name, value: f32, ok: bool, problem| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(ThresholdError::Range {
                    name,
                    value: f64::from(value),
                    problem,
                })
            }
        };
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        range(
            "pedal_smoothing_s",
            self.pedal_smoothing_s,
            self.pedal_smoothing_s >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "accel_smoothing_s",
            self.accel_smoothing_s,
            self.accel_smoothing_s >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "spike_median_samples",
            self.spike_median_samples as f32,
            self.spike_median_samples % 2 == 1 && self.spike_median_samples <= 99,
            "must be odd, 1 to 99",
        )?;
        range(
            "brake_on",
            self.brake_on,
            unit(self.brake_on) && self.brake_on > 0.0,
            "must be in (0, 1]",
        )?;
        range(
            "brake_off",
            self.brake_off,
            unit(self.brake_off) && self.brake_off <= self.brake_on,
            "must be in [0, brake_on]",
        )?;
        range(
            "brake_min_duration_s",
            self.brake_min_duration_s,
            self.brake_min_duration_s >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "brake_merge_gap_s",
            self.brake_merge_gap_s,
            self.brake_merge_gap_s >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "initial_decel_window_s",
            self.initial_decel_window_s,
            self.initial_decel_window_s > 0.0,
            "must be more than 0",
        )?;
        range(
            "corner_on_radius_m",
            self.corner_on_radius_m,
            self.corner_on_radius_m > 0.0,
            "must be more than 0",
        )?;
        range(
            "corner_off_radius_m",
            self.corner_off_radius_m,
            self.corner_off_radius_m >= self.corner_on_radius_m,
            "must be at least corner_on_radius_m",
        )?;
        range(
            "corner_min_speed_mps",
            self.corner_min_speed_mps,
            self.corner_min_speed_mps >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "trail_lat_mps2",
            self.trail_lat_mps2,
            self.trail_lat_mps2 >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "corner_min_duration_s",
            self.corner_min_duration_s,
            self.corner_min_duration_s >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "corner_merge_gap_m",
            self.corner_merge_gap_m,
            self.corner_merge_gap_m >= 0.0,
            "must be 0 or more",
        )?;
        range(
            "corner_split_ratio",
            self.corner_split_ratio,
            unit(self.corner_split_ratio),
            "must be in [0, 1]",
        )?;
        range(
            "full_throttle",
            self.full_throttle,
            unit(self.full_throttle),
            "must be in [0, 1]",
        )?;
        range(
            "throttle_on",
            self.throttle_on,
            unit(self.throttle_on),
            "must be in [0, 1]",
        )?;
        range(
            "coast_below",
            self.coast_below,
            unit(self.coast_below),
            "must be in [0, 1]",
        )?;
        range(
            "minisector_m",
            self.minisector_m,
            self.minisector_m >= 1.0,
            "must be 1 m or more",
        )?;
        range(
            "match_window_m",
            self.match_window_m,
            self.match_window_m > 0.0,
            "must be more than 0",
        )?;
        range(
            "grid_step_m",
            self.grid_step_m,
            self.grid_step_m >= 0.1,
            "must be 0.1 m or more",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_name_the_bad_argument() {
        let t = Thresholds::default()
            .with_overrides(&["brake_on=0.2".into(), "minisector_m=25".into()])
            .expect("valid overrides");
        assert_eq!(t.brake_on, 0.2);
        assert_eq!(t.minisector_m, 25.0);
        let e = Thresholds::default()
            .with_overrides(&["brake_onn=0.2".into()])
            .expect_err("unknown");
        assert!(e.to_string().contains("unknown threshold brake_onn"), "{e}");
        let e = Thresholds::default()
            .with_overrides(&["brake_off=0.5".into()])
            .expect_err("off above on");
        assert!(e.to_string().contains("brake_off"), "{e}");
        let e = Thresholds::default()
            .with_overrides(&["brake_on".into()])
            .expect_err("no value");
        assert!(e.to_string().contains("--set brake_on"), "{e}");
        let e = Thresholds::default()
            .with_overrides(&["spike_median_samples=4".into()])
            .expect_err("even");
        assert!(e.to_string().contains("odd"), "{e}");
    }

    #[test]
    fn file_keeps_defaults_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "corner_on_radius_m = 150.0\n").expect("write");
        let t = Thresholds::from_file(&path).expect("read");
        assert_eq!(t.corner_on_radius_m, 150.0);
        assert_eq!(t.brake_on, Thresholds::default().brake_on);
        std::fs::write(&path, "corner_onn = 6.0\n").expect("write");
        let e = Thresholds::from_file(&path).expect_err("unknown key");
        assert!(e.to_string().contains("t.toml"), "{e}");
        assert!(e.to_string().contains("corner_onn"), "{e}");
    }
}
