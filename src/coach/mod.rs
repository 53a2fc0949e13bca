//! The coaching pipeline (seed 000): every complete lap, with its metrics, delivered to the
//! driver's Racing Coach server, whether it came from a recording, live telemetry or a race on
//! the server.
//!
//! [`api`] has the server's request and response bodies, [`client`] sends them, [`mapping`]
//! turns an archived lap into them, [`Outbox`] (the archive's table) keeps what is still to send in its SQLite
//! index, [`upload`] delivers it, and [`credentials`] stores the device token the
//! device login obtains.

pub mod api;
pub mod client;
pub mod credentials;
pub mod mapping;
pub mod pipeline;
pub mod upload;

pub use crate::archive::outbox::Outbox;
pub use client::{CoachClient, CoachError};
pub use pipeline::{Pipeline, PipelineReport};
pub use upload::{RetryPolicy, UploadOptions, UploadReport, Uploader};
