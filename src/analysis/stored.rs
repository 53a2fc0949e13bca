//! The lap metrics the archive writer stores as it goes: a [`WriterHooks`] that measures each
//! lap from its columns on the writer thread (before they are encoded), keeps the metrics until
//! the lap is durable, and stores them as parts of the session's metric tables
//! ([`super::store::write_part`]): every [`PART_LAPS`] laps, once the first waited
//! [`PART_AGE`], and when the session closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apexsim_systems::record::LapColumns;
use uuid::Uuid;

use super::store::{archive_thresholds, write_part};
use super::{LapMetrics, Thresholds, lap_metrics};
use crate::archive::LapMeta;
use crate::archive::index::{Index, SessionRow};
use crate::archive::writer::{DurableLap, WriterHooks};

/// A session's lap metrics are stored as a part once this many laps wait...
pub const PART_LAPS: usize = 64;

/// ...or once the first of them has waited this long (and when the session ends).
pub const PART_AGE: Duration = Duration::from_secs(30);

type LapKey = (Uuid, u8, u16);

fn key(meta: &LapMeta) -> LapKey {
    (meta.session, meta.car, meta.lap)
}

/// Measures and stores the metrics of every lap the writer archives.
pub struct MetricsHook {
    data: PathBuf,
    /// What lap metrics are computed with (the archive's `thresholds.toml`, else defaults).
    thresholds: Thresholds,
    /// Sector starts of each session seen.
    sectors: HashMap<Uuid, Vec<f32>>,
    /// Metrics of laps submitted, not durable yet.
    submitted: HashMap<LapKey, LapMetrics>,
    /// Metrics of durable laps not stored yet, by session, with when the first came.
    parts: HashMap<Uuid, (Instant, Vec<(LapMeta, LapMetrics)>)>,
}

impl MetricsHook {
    /// Measures with the thresholds of the archive under `data` (a bad thresholds file is
    /// logged and the defaults used).
    pub fn new(data: &Path) -> Self {
        Self {
            data: data.to_owned(),
            thresholds: archive_thresholds(data).unwrap_or_else(|e| {
                tracing::error!(error = %e, "bad thresholds file: lap metrics use the defaults");
                Thresholds::default()
            }),
            sectors: HashMap::new(),
            submitted: HashMap::new(),
            parts: HashMap::new(),
        }
    }

    /// The lap is durable: its metrics join the session's next part, after `publish` saw them
    /// (for those who tell others).
    pub fn durable(&mut self, meta: &LapMeta, publish: impl FnOnce(&LapMeta, &LapMetrics)) {
        let Some(m) = self.submitted.remove(&key(meta)) else {
            return;
        };
        publish(meta, &m);
        let session = meta.session;
        let entry = self
            .parts
            .entry(session)
            .or_insert_with(|| (Instant::now(), Vec::new()));
        entry.1.push((meta.clone(), m));
        if entry.1.len() >= PART_LAPS {
            self.store_session(session);
        }
    }

    /// Stores a session's waiting metrics as a part. Derived data: a failure is logged, and
    /// `analyze` measures those laps again.
    fn store(&self, session: Uuid, laps: Vec<(LapMeta, LapMetrics)>) {
        if let Err(e) = write_part(&self.data, &laps) {
            tracing::warn!(error = %e, %session, "lap metrics not stored");
        }
    }

    fn store_session(&mut self, session: Uuid) {
        if let Some((_, laps)) = self.parts.remove(&session) {
            self.store(session, laps);
        }
    }
}

impl WriterHooks for MetricsHook {
    fn session_started(&mut self, _index: &Index, row: &SessionRow) {
        self.sectors.insert(row.id, row.sectors.clone());
    }

    fn lap_submitted(&mut self, index: &Index, meta: &LapMeta, columns: &LapColumns) {
        // A session recovered from its write-ahead file has its sectors in the index only.
        let sectors = self
            .sectors
            .entry(meta.session)
            .or_insert_with(|| index.session_sectors(meta.session).unwrap_or_default());
        match lap_metrics(
            columns,
            meta.track_length_m,
            meta.complete,
            sectors.as_slice(),
            &self.thresholds,
        ) {
            Ok(m) => {
                self.submitted.insert(key(meta), m);
            }
            Err(e) => {
                tracing::warn!(error = %e, lap = meta.lap, car = meta.car, "lap has no metrics");
            }
        }
    }

    fn lap_durable(&mut self, lap: DurableLap<'_>) {
        self.durable(lap.meta, |_, _| {});
    }

    fn session_closed(&mut self, session: Uuid, _finished: bool) {
        self.store_session(session);
        self.submitted.retain(|k, _| k.0 != session);
        self.sectors.remove(&session);
    }

    fn next_wake(&self) -> Option<Instant> {
        self.parts
            .values()
            .map(|(since, _)| *since + PART_AGE)
            .min()
    }

    fn wake(&mut self, now: Instant) {
        let old: Vec<Uuid> = self
            .parts
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= PART_AGE)
            .map(|(s, _)| *s)
            .collect();
        for s in old {
            self.store_session(s);
        }
    }

    fn finish(&mut self) {
        let sessions: Vec<Uuid> = self.parts.keys().copied().collect();
        for s in sessions {
            self.store_session(s);
        }
    }
}
