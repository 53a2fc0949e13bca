//! The durable upload outbox: a table in the archive's SQLite index (`outbox`, migration 3),
//! defined here beside the index with its states; the uploader ([`crate::coach::upload`])
//! drives it.
//!
//! A lap enters it in the transaction that indexes the lap ([`super::index::Index::
//! put_lap_queued`]), so no lap is archived without its upload recorded, whatever happens to
//! the process after. Each row goes `pending` → `lap_sent` (the server accepted the lap) →
//! `done` (and its metrics); a network error or 5xx sets `next_at_ms` by exponential backoff
//! with jitter; any other 4xx sets it `failed` with the server's words, until `apexsim outbox
//! retry`. An uploader claims rows with a lease, so processes sharing the data directory never
//! send the same row at once, and a process that dies leaves its rows to the next after the
//! lease. The lap's id on the server is stable ([`lap_id`]): a retry after a lost response
//! cannot create a second lap.

use std::path::Path;
use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use super::ArchiveError;
use super::index::Index;

/// Namespace of the ids ApexSim gives laps and sessions on a Racing Coach server.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_05e1_7d3b_4c8e_9f21_a7c3_5e0b_d412);

/// The lap's id on the server: the same for every upload of the same lap, so a retry after a
/// lost response updates the lap instead of adding a second one.
pub fn lap_id(session: Uuid, car: u8, lap: u16) -> Uuid {
    let mut name = [0u8; 19];
    name[..16].copy_from_slice(session.as_bytes());
    name[16] = car;
    name[17..].copy_from_slice(&lap.to_be_bytes());
    Uuid::new_v5(&NAMESPACE, &name)
}

/// Where a row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not sent, or sent without an answer.
    Pending,
    /// The server accepted the lap; its metrics are not sent yet.
    LapSent,
    /// Lap and metrics delivered.
    Done,
    /// The server refused it (4xx): kept with the error until retried by hand.
    Failed,
    /// Not sent by choice (an invalid lap, without `--upload-invalid`): kept with the reason;
    /// `apexsim outbox retry ID` sends it.
    Skipped,
}

/// Where complete laps are uploaded, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    /// The server (normalised).
    pub url: String,
    /// Whether invalid laps (a reset, a tow, off track) are sent too; by default they are
    /// recorded as skipped, with the reason.
    pub invalid_laps: bool,
}

/// Why an invalid lap was not sent, as `outbox ls` shows it.
pub const SKIPPED_INVALID: &str =
    "invalid lap: not sent (upload with --upload-invalid, or `apexsim outbox retry ID`)";

impl State {
    /// Name in the table and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::LapSent => "lap_sent",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::LapSent,
            Self::Done,
            Self::Failed,
            Self::Skipped,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

impl rusqlite::ToSql for State {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for State {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        Self::parse(text).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown outbox state {text:?}").into())
        })
    }
}

/// What the outbox does when a session leaves the archive, inside the index's transaction:
/// its delivered uploads are history and go; one still waiting can no longer be sent, and
/// says so in `outbox ls`.
pub(crate) fn session_removed(tx: &Transaction<'_>, session: Uuid) -> rusqlite::Result<()> {
    laps_removed(tx, session, None)
}

/// As [`session_removed`], for the laps of one car of a session (`None`: every car).
pub(crate) fn laps_removed(
    tx: &Transaction<'_>,
    session: Uuid,
    car: Option<u8>,
) -> rusqlite::Result<()> {
    let id = session.to_string();
    tx.execute(
        "DELETE FROM outbox WHERE session_id = ?1 AND (?4 IS NULL OR car = ?4)
         AND state IN (?2, ?3)",
        params![id, State::Done, State::Skipped, car],
    )?;
    tx.execute(
        "UPDATE outbox SET state = ?2, lease_until_ms = NULL,
         last_error = 'pruned from the archive before it was uploaded'
         WHERE session_id = ?1 AND (?3 IS NULL OR car = ?3)",
        params![id, State::Failed, car],
    )?;
    Ok(())
}

/// One lap to upload.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// Row id (`apexsim outbox retry ID`).
    pub id: i64,
    /// The server.
    pub url: String,
    /// Session.
    pub session: Uuid,
    /// Car index.
    pub car: u8,
    /// Lap number.
    pub lap: u16,
    /// The lap's id on the server.
    pub lap_id: Uuid,
    /// Where it stands.
    pub state: State,
    /// Attempts since it was queued or last retried by hand.
    pub attempts: u32,
    /// Unix milliseconds before which it is not tried again.
    pub next_at_ms: i64,
    /// The id the server gave the lap, once accepted.
    pub server_lap_id: Option<String>,
    /// Whether an attempt may have reached the server without its answer reaching us (a
    /// timeout, a dropped connection, a 5xx): the lap is looked up before it is sent again.
    pub maybe_sent: bool,
    /// The last failure.
    pub last_error: Option<String>,
    /// Unix milliseconds it was queued.
    pub created_at_ms: i64,
}

/// Rows by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counts {
    /// Waiting to be sent (or retried).
    pub pending: u64,
    /// Lap accepted, metrics waiting.
    pub lap_sent: u64,
    /// Being sent by an uploader (its lease has not ended), not counted as waiting.
    pub in_flight: u64,
    /// Delivered.
    pub done: u64,
    /// Refused, kept for `outbox retry`.
    pub failed: u64,
    /// Not sent by choice (invalid laps).
    pub skipped: u64,
}

impl Counts {
    /// Rows still to deliver by themselves.
    pub fn waiting(&self) -> u64 {
        self.pending + self.lap_sent
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Queues a lap for `target` inside the caller's transaction; a lap already queued for that
/// server is left as it is. An invalid lap the target does not want is recorded as skipped,
/// with the reason. Returns whether a lap to send was queued now.
///
/// # Errors
/// SQLite's.
pub(crate) fn enqueue(
    tx: &Transaction<'_>,
    target: &UploadTarget,
    session: Uuid,
    car: u8,
    lap: u16,
    valid: bool,
) -> Result<bool, rusqlite::Error> {
    let now = now_ms();
    let (state, reason) = if valid || target.invalid_laps {
        (State::Pending, None)
    } else {
        (State::Skipped, Some(SKIPPED_INVALID))
    };
    let n = tx.execute(
        "INSERT OR IGNORE INTO outbox
         (url, session_id, car, lap, lap_id, state, last_error, created_at_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?8, ?6, ?6)",
        params![
            target.url,
            session.to_string(),
            car,
            lap,
            lap_id(session, car, lap).to_string(),
            now,
            state,
            reason
        ],
    )?;
    Ok(n > 0 && state == State::Pending)
}

const COLUMNS: &str = "id, url, session_id, car, lap, lap_id, state, attempts, next_at_ms, \
                       server_lap_id, last_error, created_at_ms, maybe_sent";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let uuid = |s: String| Uuid::parse_str(&s).unwrap_or_default();
    Ok(Entry {
        id: r.get(0)?,
        url: r.get(1)?,
        session: uuid(r.get(2)?),
        car: r.get(3)?,
        lap: r.get(4)?,
        lap_id: uuid(r.get(5)?),
        state: r.get(6)?,
        attempts: r.get(7)?,
        next_at_ms: r.get(8)?,
        server_lap_id: r.get(9)?,
        last_error: r.get(10)?,
        created_at_ms: r.get(11)?,
        maybe_sent: r.get(12)?,
    })
}

/// The outbox of one data directory.
pub struct Outbox {
    index: Index,
}

impl Outbox {
    /// Opens the archive's index (creating and migrating it as needed).
    ///
    /// # Errors
    /// [`ArchiveError`] when the index cannot be opened.
    pub fn open(data: &Path) -> Result<Self, ArchiveError> {
        Ok(Self {
            index: Index::open(data)?,
        })
    }

    /// The index it lives in.
    pub fn index(&self) -> &Index {
        &self.index
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> ArchiveError + '_ {
        self.index.sql()
    }

    /// Queues every complete lap of a session already in the archive for `url` (a recording
    /// ingested before without `--upload`). Returns how many were new to the outbox.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn enqueue_session(
        &self,
        session: Uuid,
        target: &UploadTarget,
    ) -> Result<usize, ArchiveError> {
        let laps = self.index.laps(Some(session))?;
        let tx = self
            .index
            .conn()
            .unchecked_transaction()
            .map_err(self.sql())?;
        let mut added = 0;
        for l in laps.iter().filter(|l| l.complete) {
            if enqueue(&tx, target, l.session, l.car, l.lap, l.valid).map_err(self.sql())? {
                added += 1;
            }
        }
        tx.commit().map_err(self.sql())?;
        Ok(added)
    }

    /// Claims up to `limit` rows that are due (for `url`, or any server with `None`), in the
    /// order they were queued, leasing them for `lease`: no other uploader takes them until
    /// the lease ends or they are settled.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn claim(
        &self,
        url: Option<&str>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Entry>, ArchiveError> {
        let now = now_ms();
        let conn = self.index.conn();
        // IMMEDIATE: the select and the lease are one write, so two processes cannot claim the
        // same row.
        let tx =
            Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(self.sql())?;
        let claimed = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM outbox
                     WHERE state IN (?4, ?5) AND next_at_ms <= ?1
                       AND (lease_until_ms IS NULL OR lease_until_ms <= ?1)
                       AND (?2 IS NULL OR url = ?2)
                     ORDER BY id LIMIT ?3"
                ))
                .map_err(self.sql())?;
            let rows = stmt
                .query_map(
                    params![now, url, limit as i64, State::Pending, State::LapSent],
                    entry,
                )
                .map_err(self.sql())?;
            rows.collect::<Result<Vec<_>, _>>().map_err(self.sql())?
        };
        let until = now + lease.as_millis() as i64;
        for e in &claimed {
            tx.execute(
                "UPDATE outbox SET lease_until_ms = ?2 WHERE id = ?1",
                params![e.id, until],
            )
            .map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        Ok(claimed)
    }

    /// The server accepted the lap (as `server_lap_id`): only its metrics are left.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn lap_sent(&self, id: i64, server_lap_id: &str) -> Result<(), ArchiveError> {
        self.update(
            "UPDATE outbox SET state = ?4, server_lap_id = ?2, last_error = NULL,
             maybe_sent = 0, updated_at_ms = ?3 WHERE id = ?1",
            params![id, server_lap_id, now_ms(), State::LapSent],
        )
    }

    /// Lap and metrics delivered; `note` says what was left out, if anything.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn done(&self, id: i64, note: Option<&str>) -> Result<(), ArchiveError> {
        self.update(
            "UPDATE outbox SET state = ?4, lease_until_ms = NULL, last_error = ?2,
             updated_at_ms = ?3 WHERE id = ?1",
            params![id, note, now_ms(), State::Done],
        )
    }

    /// A transient failure: tried again at `next_at_ms`. A lap not accepted yet may have
    /// reached the server all the same: it is looked up before it is sent again.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn retry_later(
        &self,
        id: i64,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), ArchiveError> {
        self.update(
            "UPDATE outbox SET attempts = ?2, next_at_ms = ?3, lease_until_ms = NULL,
             last_error = ?4, updated_at_ms = ?5, maybe_sent = maybe_sent OR state = ?6
             WHERE id = ?1",
            params![id, attempts, next_at_ms, error, now_ms(), State::Pending],
        )
    }

    /// Refused: set aside with the error until retried by hand.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn fail(&self, id: i64, attempts: u32, error: &str) -> Result<(), ArchiveError> {
        self.update(
            "UPDATE outbox SET state = ?5, attempts = ?2, lease_until_ms = NULL,
             last_error = ?3, updated_at_ms = ?4 WHERE id = ?1",
            params![id, attempts, error, now_ms(), State::Failed],
        )
    }

    /// Gives back a claimed row whose delivery was cut short (a stop past the grace period):
    /// a lap not yet accepted may have reached the server, so it is looked up before it is
    /// sent again.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn release(&self, id: i64) -> Result<(), ArchiveError> {
        self.update(
            "UPDATE outbox SET lease_until_ms = NULL,
             maybe_sent = maybe_sent OR state = ?2 WHERE id = ?1",
            params![id, State::Pending],
        )
    }

    fn update(&self, sql: &str, p: impl rusqlite::Params) -> Result<(), ArchiveError> {
        self.index.conn().execute(sql, p).map_err(self.sql())?;
        Ok(())
    }

    /// Makes rows due now with their attempts reset: one row by id, or every failed and
    /// waiting row. Returns how many; a delivered row is not sent again. Retrying every row
    /// leaves the rows another uploader is sending to it; a row named by id is taken back at
    /// once (its lap id makes a second send harmless).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn retry(&self, id: Option<i64>) -> Result<usize, ArchiveError> {
        self.index
            .conn()
            .execute(
                "UPDATE outbox SET
                    state = CASE WHEN server_lap_id IS NULL THEN ?3 ELSE ?4 END,
                    attempts = 0, next_at_ms = 0, updated_at_ms = ?2,
                    lease_until_ms = CASE WHEN ?1 IS NULL THEN lease_until_ms END
                 WHERE state != ?5 AND (?1 IS NULL OR id = ?1)
                   AND (state != ?6 OR ?1 IS NOT NULL)",
                params![
                    id,
                    now_ms(),
                    State::Pending,
                    State::LapSent,
                    State::Done,
                    State::Skipped
                ],
            )
            .map_err(self.sql())
    }

    /// One row.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn get(&self, id: i64) -> Result<Option<Entry>, ArchiveError> {
        self.index
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM outbox WHERE id = ?1"),
                params![id],
                entry,
            )
            .optional()
            .map_err(self.sql())
    }

    /// Rows in the order they were queued; with `all`, delivered ones too.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn list(&self, all: bool) -> Result<Vec<Entry>, ArchiveError> {
        let mut stmt = self
            .index
            .conn()
            .prepare(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE ?1 OR state != ?2 ORDER BY id"
            ))
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![all, State::Done], entry)
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Rows by state (for `url`, or every server).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn counts(&self, url: Option<&str>) -> Result<Counts, ArchiveError> {
        let mut stmt = self
            .index
            .conn()
            .prepare(
                "SELECT state, COALESCE(lease_until_ms, 0) > ?2 AS leased, COUNT(*) FROM outbox
                 WHERE ?1 IS NULL OR url = ?1 GROUP BY state, leased",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![url, now_ms()], |r| {
                Ok((
                    r.get::<_, State>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.sql())?;
        let mut c = Counts::default();
        for row in rows {
            let (state, leased, n) = row.map_err(self.sql())?;
            let n = n as u64;
            match state {
                State::Pending | State::LapSent if leased => c.in_flight += n,
                State::Pending => c.pending += n,
                State::LapSent => c.lap_sent += n,
                State::Done => c.done += n,
                State::Failed => c.failed += n,
                State::Skipped => c.skipped += n,
            }
        }
        Ok(c)
    }

    /// When the next waiting row (for `url`) is due, in Unix milliseconds.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn next_due(&self, url: Option<&str>) -> Result<Option<i64>, ArchiveError> {
        self.index
            .conn()
            .query_row(
                "SELECT MIN(MAX(next_at_ms, COALESCE(lease_until_ms, 0))) FROM outbox
                 WHERE state IN (?2, ?3) AND (?1 IS NULL OR url = ?1)",
                params![url, State::Pending, State::LapSent],
                |r| r.get(0),
            )
            .map_err(self.sql())
    }
}
