//! The messages the publisher sends (seed 004's schema-versioned JSON): an envelope with the
//! schema version, a kind, the time, the producer and a payload of that kind.
//!
//! Compatibility: a reader of version [`SCHEMA_VERSION`] reads every message of that version
//! and of the versions before it (fields added since are optional, unknown fields are
//! ignored); each released version's messages are kept as fixtures and read back by the tests.
//! A change a reader of an older version could not read (a field removed or changed in type, a
//! new kind) takes a new version.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::host::HostSample;

/// The version of the messages this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The schema version it was written in.
    pub schema_version: u32,
    /// A unique id (the same message published twice after a lost reply has the same id).
    pub id: Uuid,
    /// The producer's sequence number, from 1: a gap is messages dropped while Redis was
    /// unreachable.
    pub seq: u64,
    /// When it was made, RFC 3339 (UTC).
    pub time: String,
    /// Who made it.
    pub producer: Producer,
    /// What it says.
    #[serde(flatten)]
    pub body: Body,
}

/// The process that made a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    /// `apexsim`.
    pub service: String,
    /// Its version.
    pub version: String,
    /// The host's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// A message's kind and payload: `"kind": "lap_summary", "payload": {...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Body {
    /// A lap is durable in the archive.
    LapSummary(LapSummary),
    /// A session finished, with its classification.
    SessionResults(SessionResults),
    /// A reading of the host.
    HostMetrics(HostSample),
}

impl Body {
    /// The kind's name, as in the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::LapSummary(_) => "lap_summary",
            Self::SessionResults(_) => "session_results",
            Self::HostMetrics(_) => "host_metrics",
        }
    }
}

/// A lap in the archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LapSummary {
    /// Session id.
    pub session: Uuid,
    /// `sim`, `iracing` or `api`.
    pub source: String,
    /// Track slug.
    pub track: String,
    /// Car index in the session.
    pub car: u8,
    /// Car model.
    pub car_model: String,
    /// Driver.
    pub driver: String,
    /// Lap number.
    pub lap: u16,
    /// Lap time, seconds (absent for an incomplete lap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lap_time_s: Option<f64>,
    /// Line to line.
    pub complete: bool,
    /// Valid.
    pub valid: bool,
    /// Rows in its file.
    pub rows: u64,
    /// Its file, relative to the data directory.
    pub file: String,
}

/// A finished session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionResults {
    /// Session id.
    pub session: Uuid,
    /// `sim`, `iracing` or `api`.
    pub source: String,
    /// Track slug.
    pub track: String,
    /// Car model.
    pub car_model: String,
    /// Lap limit, for races.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lap_limit: Option<u16>,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Who ended it early, when an operator did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// The classification, winner first (empty for sessions that are not races).
    pub results: Vec<Classified>,
}

/// One classified car.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    /// Position, 1 = winner.
    pub position: u32,
    /// Car index.
    pub car: u8,
    /// Driver.
    pub driver: String,
    /// Laps completed.
    pub laps: u16,
    /// Race time, seconds, if classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time_s: Option<f64>,
    /// Best valid lap, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_lap_s: Option<f64>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not a message of any version.
    #[error("not an ApexSim message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a newer build in a version this one does not know.
    #[error("schema version {found} is newer than this build's {SCHEMA_VERSION}")]
    Newer {
        /// The message's version.
        found: u32,
    },
}

impl Message {
    /// Reads a message of this version or an older one.
    ///
    /// # Errors
    /// [`MessageError`]: not a message, or a newer version.
    pub fn parse(text: &str) -> Result<Self, MessageError> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let Version { schema_version } = serde_json::from_str(text)?;
        if schema_version > SCHEMA_VERSION {
            return Err(MessageError::Newer {
                found: schema_version,
            });
        }
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lap() -> Message {
        Message {
            schema_version: SCHEMA_VERSION,
            id: Uuid::from_u128(7),
            seq: 3,
            time: "2026-12-03T10:00:00Z".into(),
            producer: Producer {
                service: "apexsim".into(),
                version: "0.1.0".into(),
                host: None,
                pid: Some(42),
            },
            body: Body::LapSummary(LapSummary {
                session: Uuid::from_u128(1),
                source: "sim".into(),
                track: "oval_simple".into(),
                car: 0,
                car_model: "GT3".into(),
                driver: "Ada".into(),
                lap: 2,
                lap_time_s: Some(31.25),
                complete: true,
                valid: true,
                rows: 7500,
                file: "laps/x.parquet".into(),
            }),
        }
    }

    #[test]
    fn a_message_reads_back_as_written_with_its_kind_beside_the_payload() {
        let m = lap();
        let text = serde_json::to_string(&m).expect("encodes");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["kind"], "lap_summary");
        assert_eq!(v["payload"]["lap"], 2);
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(Message::parse(&text).expect("reads"), m);
    }

    #[test]
    fn newer_versions_and_non_messages_are_refused_by_name() {
        let mut v: serde_json::Value = serde_json::to_value(lap()).expect("json");
        v["schema_version"] = (SCHEMA_VERSION + 1).into();
        let err = Message::parse(&v.to_string()).expect_err("newer");
        assert!(err.to_string().contains("newer"), "{err}");
        assert!(Message::parse("{\"kind\":1}").is_err());
        assert!(Message::parse("[]").is_err());
    }

    /// Messages as version 1 wrote them, kept as they were released: every build reads them.
    #[test]
    fn every_released_versions_messages_still_read() {
        let v1 = include_str!("../../tests/fixtures/redis/v1.jsonl");
        let kinds: Vec<&str> = v1
            .lines()
            .map(|line| {
                let m = Message::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(m.schema_version, 1);
                m.body.kind()
            })
            .collect();
        assert_eq!(kinds, ["host_metrics", "lap_summary", "session_results"]);
        // What the fields say survives: a missing optional is absent, not zero.
        let host = Message::parse(v1.lines().next().unwrap_or_default()).expect("v1");
        let Body::HostMetrics(h) = host.body else {
            panic!("host metrics");
        };
        assert_eq!(h.cpus[1].frequency_mhz, None);
        assert!(h.temperatures.is_empty());
    }

    #[test]
    fn unknown_fields_of_a_later_compatible_writer_are_ignored() {
        let mut v: serde_json::Value = serde_json::to_value(lap()).expect("json");
        v["region"] = "eu".into();
        v["payload"]["tyre"] = "soft".into();
        assert_eq!(Message::parse(&v.to_string()).expect("reads"), lap());
    }
}
