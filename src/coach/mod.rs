//! The coaching pipeline (seed 000): every complete lap, with its metrics, delivered to the
//! driver's Racing Coach server, whether it came from a recording, live telemetry or a race on
//! the server.
//!
//! [`api`] has the server's request and response bodies, [`client`] sends them, [`mapping`]
//! turns an archived lap into them, [`outbox`] keeps what is still to send in the archive's
//! SQLite index, [`upload`] delivers it, and [`credentials`] stores the device token the
//! device login obtains.

pub mod api;
pub mod client;
pub mod credentials;
pub mod mapping;
pub mod outbox;
pub mod pipeline;
pub mod upload;

pub use client::{CoachClient, CoachError};
pub use outbox::Outbox;
pub use pipeline::{Pipeline, PipelineReport};
pub use upload::{RetryPolicy, UploadOptions, UploadReport, Uploader};
