//! ApexSim: a data-oriented ECS simulation and analysis engine for sim racing.
//!
//! The simulation itself lives in [`apexsim_systems`] (no I/O). This crate does the I/O around
//! it: the command line, content loading, the offline race runner, the lap archive and the
//! iRacing ingest; the network and analysis build on these.

pub mod analysis;
pub mod archive;
pub mod cli;
pub mod coach;
pub mod content;
pub mod events;
pub mod ingest;
pub mod net;
pub mod output;
pub mod race;
pub mod runner;

pub use apexsim_systems as systems;
