//! How a command wires its archive writer to the layers above the archive: lap metrics
//! measured and stored as laps are archived, sessions and laps published on the bus once
//! durable, and complete laps queued for upload.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use apexsim_systems::record::LapColumns;
use uuid::Uuid;

use super::{ArchivedLap, Event, EventBus, LapMetricsReady, SessionEnded};
use crate::analysis::stored::MetricsHook;
use crate::archive::index::{Index, SessionRow};
use crate::archive::writer::{ArchiveWriter, DurableLap, WriterHooks, WriterOptions};
use crate::archive::{ArchiveError, LapMeta};

/// What an archive writer is wired to. The default measures and stores lap metrics only.
#[derive(Debug, Clone, Default)]
pub struct ArchiveWiring {
    /// Where complete laps are uploaded: each is put in the outbox in the transaction that
    /// indexes it.
    pub upload: Option<crate::archive::outbox::UploadTarget>,
    /// Where sessions, laps and metrics are published once durable.
    pub bus: Option<EventBus>,
}

impl ArchiveWiring {
    /// The writer's options for the archive under `data`.
    pub fn options(&self, data: &Path) -> WriterOptions {
        WriterOptions {
            upload: self.upload.clone(),
            hooks: Box::new(Hooks {
                metrics: MetricsHook::new(data),
                bus: self.bus.clone(),
            }),
        }
    }

    /// Starts a writer on the archive under `data`, wired.
    ///
    /// # Errors
    /// As [`ArchiveWriter::start`].
    pub fn start_writer(&self, data: &Path) -> Result<ArchiveWriter, ArchiveError> {
        ArchiveWriter::start_with(data, self.options(data))
    }
}

/// Lap metrics, then the bus: a lap is published before its metrics, and a session's metrics
/// are stored before its end is published.
struct Hooks {
    metrics: MetricsHook,
    bus: Option<EventBus>,
}

impl WriterHooks for Hooks {
    fn session_started(&mut self, index: &Index, row: &SessionRow) {
        self.metrics.session_started(index, row);
        if let Some(bus) = &self.bus {
            bus.publish(Event::SessionStart(Arc::new(row.clone())));
        }
    }

    fn lap_submitted(&mut self, index: &Index, meta: &LapMeta, columns: &LapColumns) {
        self.metrics.lap_submitted(index, meta, columns);
    }

    fn lap_durable(&mut self, lap: DurableLap<'_>) {
        let Some(bus) = &self.bus else {
            self.metrics.lap_durable(lap);
            return;
        };
        bus.publish(Event::LapArchived(Arc::new(ArchivedLap {
            meta: lap.meta.clone(),
            file: lap.file.to_owned(),
            rows: lap.rows,
            queued_for_upload: lap.queued_for_upload,
        })));
        self.metrics.durable(lap.meta, |meta, metrics| {
            bus.publish(Event::MetricsExtracted(Arc::new(LapMetricsReady {
                meta: meta.clone(),
                metrics: metrics.clone(),
            })));
        });
    }

    fn session_closed(&mut self, session: Uuid, finished: bool) {
        self.metrics.session_closed(session, finished);
        if let Some(bus) = &self.bus {
            bus.publish(Event::SessionEnd(Arc::new(SessionEnded {
                id: session,
                finished,
            })));
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        self.metrics.next_wake()
    }

    fn wake(&mut self, now: Instant) {
        self.metrics.wake(now);
    }

    fn finish(&mut self) {
        self.metrics.finish();
    }
}
