//! ApexSim: a data-oriented ECS simulation and analysis engine for sim racing.
//!
//! The simulation itself lives in [`apexsim_systems`] (no I/O). This crate does the I/O around
//! it, in layers, each importing only those below it (`tools/module_graph.py` checks):
//!
//! ```text
//! archive (Parquet, write-ahead files, the SQLite index and outbox), content and host (metrics)
//!   <- analysis (lap metrics, polars queries) <- events (the bus, the writer's wiring)
//!   <- ingest (iRacing, Racing Coach files, posted telemetry) <- coach (uploads)
//!   <- publish (messages to Redis) <- api (the REST API over the archive)
//!   <- runner (what race and serve share) <- race (offline races), net (the server)
//! ```
//!
//! The command line is the binary's (`src/main.rs`, one file per command under `src/cmd/`);
//! the library prints nothing.

pub mod analysis;
pub mod api;
pub mod archive;
pub mod coach;
pub mod content;
pub mod events;
pub mod host;
pub mod ingest;
pub mod net;
pub mod publish;
pub mod race;
pub mod runner;

pub use apexsim_systems as systems;
