//! The integration tests, one module per feature, in one test binary: each binary links the
//! whole dependency tree, so one instead of eleven saves link time on a 2-core machine. The
//! property tests of the decoders stay a binary of their own (`tests/decoders.rs`): they count
//! allocations with a global allocator, which other tests running beside them would disturb.

#[cfg(feature = "agones")]
mod agones;
mod analysis;
mod api;
mod archive;
mod archive_polars;
mod coach;
mod common;
mod concurrency;
mod content;
mod crash;
mod impair;
mod ingest;
mod operations;
mod publisher;
mod race;
mod racing_coach;
mod server;
mod web;
mod webtransport;
