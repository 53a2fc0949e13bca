//! The race server and its clients over QUIC and WebTransport: the wire protocol, TLS,
//! configuration, the simulation thread that runs every session in one world, the connection
//! tasks, health, metrics and the web pages over HTTP, and the client bots of `apexsim drive`.

pub mod admin;
#[cfg(feature = "agones")]
pub mod agones;
pub mod client;
pub mod config;
pub mod connection;
pub mod drive;
pub mod impair;
pub mod link;
pub mod live;
pub mod lobby;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod sim;
pub mod tls;
pub mod watch;
pub mod web;

pub use server::shutdown_signal;
