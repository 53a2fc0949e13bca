//! The archive's SQLite index (`<data>/apexsim.db`, WAL mode): sessions, results, race
//! templates, and one row per archived lap file. Migrations are embedded and applied in order
//! when the database is opened (`PRAGMA user_version` counts them).
//!
//! Many processes share the database: every connection waits up to [`BUSY_TIMEOUT`] for
//! another's write to end (SQLite's busy handler) instead of failing, every write is one short
//! statement or transaction, and migrations run in an immediate transaction that re-reads the
//! schema version, so two processes starting at once migrate once.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

mod migrations;
mod search;

pub use search::{BestLap, DriverLap, DriverLapQuery, Page, Seen, SessionQuery};

use migrations::MIGRATIONS;

use super::{ArchiveError, LapMeta};
use crate::content::{RaceTemplate, StartMode};

/// How long a connection waits for another process's write before reporting the database
/// busy.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether SQLite reported the database busy or locked by another connection.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// WAL mode, pragmas and migrations; `Ok(Err(version))` when the database is newer than this
/// build.
fn setup(conn: &mut Connection) -> Result<Result<(), usize>, rusqlite::Error> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let version = |c: &Connection| -> Result<usize, rusqlite::Error> {
        c.pragma_query_value(None, "user_version", |r| r.get(0))
    };
    let applied = version(conn)?;
    if applied > MIGRATIONS.len() {
        return Ok(Err(applied));
    }
    if applied < MIGRATIONS.len() {
        // One writer at a time; another process may have migrated while we waited.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied = version(&tx)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
    }
    Ok(Ok(()))
}

/// Who and where a recorded session was, as the recording's session info names it (iRacing's
/// ids and display names): what a Racing Coach server groups laps by.
#[derive(
    Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SessionIdentity {
    /// `WeekendInfo.TrackID`.
    pub track_id: i64,
    /// `WeekendInfo.TrackDisplayName`.
    pub track_name: String,
    /// `WeekendInfo.TrackConfigName` (`None` when the track has none).
    pub track_config: Option<String>,
    /// `WeekendInfo.TrackType` ("road course", "short oval"...).
    pub track_type: Option<String>,
    /// `WeekendInfo.SeriesID` (0 outside a series).
    pub series_id: i64,
    /// The driver's car: `DriverInfo.Drivers[].CarID`.
    pub car_id: i64,
    /// `CarScreenName`.
    pub car_name: String,
    /// `CarClassID`.
    pub car_class_id: i64,
    /// The session's `SessionType` ("Offline Testing", "Practice", "Race"...).
    pub session_type: String,
}

/// Stored as JSON text in `sessions.identity`.
impl rusqlite::ToSql for SessionIdentity {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        serde_json::to_string(self)
            .map(rusqlite::types::ToSqlOutput::from)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }
}

impl rusqlite::types::FromSql for SessionIdentity {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

/// A session as the index knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SessionRow {
    /// Session id.
    pub id: Uuid,
    /// "sim" or "iracing".
    pub source: String,
    /// Track slug.
    pub track: String,
    /// Car model.
    pub car_model: String,
    /// Lap limit, for races.
    pub lap_limit: Option<u16>,
    /// Simulation seed, for simulated sessions.
    pub seed: Option<u64>,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once finished.
    pub finished_at: Option<i64>,
    /// Where the track's sectors start, as fractions of the lap (the first, at 0, not
    /// listed); empty for one sector.
    pub sectors: Vec<f32>,
    /// What the recording's session info says the session was; `None` for simulated sessions
    /// and recordings archived before it was kept.
    pub identity: Option<SessionIdentity>,
    /// The race template a server session was made from.
    pub template_id: Option<Uuid>,
    /// Who ended the session early ("ended by admin alice"), when an operator did.
    pub ended_by: Option<String>,
    /// When retention removed the session's laps (Unix seconds); its summary and results stay.
    pub laps_pruned_at: Option<i64>,
}

/// Sector starts as stored: comma-separated fractions.
fn sectors_text(sectors: &[f32]) -> String {
    sectors
        .iter()
        .map(f32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Sector starts from their stored text; anything that is not a fraction in (0, 1) is left out.
pub fn parse_sectors(text: &str) -> Vec<f32> {
    text.split(',')
        .filter_map(|x| x.trim().parse::<f32>().ok())
        .filter(|x| *x > 0.0 && *x < 1.0)
        .collect()
}

/// One classified car of a finished session.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ResultEntry {
    /// Position, 1 = winner.
    pub position: u32,
    /// Car index.
    pub car: u8,
    /// Driver.
    pub driver: String,
    /// Laps completed.
    pub laps: u16,
    /// Race time in seconds, if classified.
    pub total_time_s: Option<f64>,
    /// Best valid lap in seconds.
    pub best_lap_s: Option<f64>,
}

/// One archived lap file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct IndexedLap {
    /// Session id.
    pub session: Uuid,
    /// Car index.
    pub car: u8,
    /// Driver.
    pub driver: String,
    /// Lap number.
    pub lap: u16,
    /// Official time in seconds.
    pub lap_time_s: Option<f64>,
    /// Line to line.
    pub complete: bool,
    /// Valid.
    pub valid: bool,
    /// File, relative to the data directory.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// Rows in the file.
    pub rows: u64,
}

/// The `sessions` columns [`session_row`] reads, in its order.
const SESSION_COLUMNS: &str = "id, source, track, car_model, lap_limit, seed, started_at, finished_at, sectors, identity, template_id, ended_by, laps_pruned_at";

/// A `sessions` row, selected as [`SESSION_COLUMNS`] lists its columns.
fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    let id: String = r.get(0)?;
    Ok(SessionRow {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        source: r.get(1)?,
        track: r.get(2)?,
        car_model: r.get(3)?,
        lap_limit: r.get(4)?,
        seed: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
        sectors: parse_sectors(&r.get::<_, String>(8)?),
        identity: r.get(9)?,
        template_id: r
            .get::<_, Option<String>>(10)?
            .and_then(|t| Uuid::parse_str(&t).ok()),
        ended_by: r.get(11)?,
        laps_pruned_at: r.get(12)?,
    })
}

/// The `laps` columns [`lap_row`] reads, in its order.
const LAP_COLUMNS: &str = "session_id, car, driver, lap, lap_time_s, complete, valid, file, rows";

/// A `laps` row, selected as [`LAP_COLUMNS`] lists its columns.
fn lap_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IndexedLap> {
    let id: String = r.get(0)?;
    let file: String = r.get(7)?;
    Ok(IndexedLap {
        session: Uuid::parse_str(&id).unwrap_or_default(),
        car: r.get(1)?,
        driver: r.get(2)?,
        lap: r.get(3)?,
        lap_time_s: r.get(4)?,
        complete: r.get(5)?,
        valid: r.get(6)?,
        file: PathBuf::from(file),
        rows: r.get::<_, i64>(8)? as u64,
    })
}

/// An open index.
pub struct Index {
    conn: Connection,
    path: PathBuf,
}

impl Index {
    /// Opens (creating if needed) `<data>/apexsim.db`, in WAL mode, and applies pending
    /// migrations.
    ///
    /// # Errors
    /// [`ArchiveError`] when the directory or database cannot be created or migrated.
    pub fn open(data: &Path) -> Result<Self, ArchiveError> {
        std::fs::create_dir_all(data).map_err(|source| ArchiveError::Io {
            path: data.to_owned(),
            source,
        })?;
        let path = data.join("apexsim.db");
        let sql = |source| ArchiveError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        // Switching a new database to WAL mode takes a lock that SQLite's busy handler does
        // not wait for: two processes opening a fresh archive at once retry the setup.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mut wait = std::time::Duration::from_millis(5);
        loop {
            match setup(&mut conn) {
                Ok(Ok(())) => break,
                Ok(Err(applied)) => {
                    return Err(ArchiveError::BadLapFile {
                        path,
                        problem: format!(
                            "database schema version {applied} is newer than this build ({})",
                            MIGRATIONS.len()
                        ),
                    });
                }
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_millis(250));
                }
                Err(e) => return Err(sql(e)),
            }
        }
        Ok(Self { conn, path })
    }

    /// Maps SQLite's errors to the archive's, naming the database.
    pub(crate) fn sql(&self) -> impl Fn(rusqlite::Error) -> ArchiveError + '_ {
        |source| ArchiveError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Records a session; a session already recorded gets this `finished_at`.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn put_session(&self, s: &SessionRow) -> Result<(), ArchiveError> {
        self.insert_session(
            s,
            "ON CONFLICT(id) DO UPDATE SET finished_at = excluded.finished_at",
        )
    }

    /// Records what a recording says its session was, for a session archived before the
    /// index kept it (a recording ingested again); a known identity is left as it is.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn put_identity(&self, id: Uuid, identity: &SessionIdentity) -> Result<(), ArchiveError> {
        self.conn
            .execute(
                "UPDATE sessions SET identity = ?2 WHERE id = ?1 AND identity IS NULL",
                params![id.to_string(), identity],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Records a session unless it is already known (recovery uses this).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn ensure_session(&self, s: &SessionRow) -> Result<(), ArchiveError> {
        self.insert_session(s, "ON CONFLICT(id) DO NOTHING")
    }

    fn insert_session(&self, s: &SessionRow, on_conflict: &str) -> Result<(), ArchiveError> {
        self.conn
            .execute(
                &format!(
                    "INSERT INTO sessions (id, source, track, car_model, lap_limit, seed, started_at, finished_at, sectors, identity, template_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) {on_conflict}"
                ),
                params![
                    s.id.to_string(),
                    s.source,
                    s.track,
                    s.car_model,
                    s.lap_limit,
                    s.seed.map(|v| v as i64),
                    s.started_at,
                    s.finished_at,
                    sectors_text(&s.sectors),
                    s.identity,
                    s.template_id.map(|t| t.to_string())
                ],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Whether a session is in the index and finished (all its laps were handed over).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn has_finished_session(&self, id: Uuid) -> Result<bool, ArchiveError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = ?1 AND finished_at IS NOT NULL)",
                params![id.to_string()],
                |r| r.get(0),
            )
            .map_err(self.sql())
    }

    /// Whether a lap of `session`'s car is indexed.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn has_lap(&self, session: Uuid, car: u8, lap: u16) -> Result<bool, ArchiveError> {
        self.conn
            .query_row(
                "SELECT 1 FROM laps WHERE session_id = ?1 AND car = ?2 AND lap = ?3",
                params![session.to_string(), car, lap],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.sql())
    }

    /// Marks a session finished and stores its classification.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn finish_session(
        &mut self,
        id: Uuid,
        finished_at: i64,
        results: &[ResultEntry],
        ended_by: Option<&str>,
    ) -> Result<(), ArchiveError> {
        let path = self.path.clone();
        let sql = |source| ArchiveError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "UPDATE sessions SET finished_at = ?2, ended_by = ?3 WHERE id = ?1",
            params![id.to_string(), finished_at, ended_by],
        )
        .map_err(sql)?;
        tx.execute(
            "DELETE FROM results WHERE session_id = ?1",
            params![id.to_string()],
        )
        .map_err(sql)?;
        for r in results {
            tx.execute(
                "INSERT INTO results (session_id, position, car, driver, laps, total_time_s, best_lap_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id.to_string(),
                    r.position,
                    r.car,
                    r.driver,
                    r.laps,
                    r.total_time_s,
                    r.best_lap_s
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Indexes an archived lap file (replacing an earlier entry for the same lap).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn put_lap(&self, meta: &LapMeta, file: &Path, rows: usize) -> Result<(), ArchiveError> {
        self.put_lap_queued(meta, file, rows, None).map(|_| ())
    }

    /// Indexes an archived lap file and, when `upload` names a Racing Coach server and the lap
    /// is complete, puts it in the upload outbox, in one transaction: a lap is never indexed
    /// without its upload recorded (an invalid lap the target does not want is recorded as
    /// skipped). Returns whether it was queued to be sent (now or before).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn put_lap_queued(
        &self,
        meta: &LapMeta,
        file: &Path,
        rows: usize,
        upload: Option<&super::outbox::UploadTarget>,
    ) -> Result<bool, ArchiveError> {
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        tx.execute(
                "INSERT OR REPLACE INTO laps (session_id, car, driver, lap, lap_time_s, complete, valid, file, rows)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    meta.session.to_string(),
                    meta.car,
                    meta.driver,
                    meta.lap,
                    meta.lap_time_s,
                    meta.complete,
                    meta.valid,
                    file.to_string_lossy(),
                    rows as i64
                ],
            )
            .map_err(self.sql())?;
        let queued = match upload {
            Some(target) if meta.complete => {
                super::outbox::enqueue(&tx, target, meta.session, meta.car, meta.lap, meta.valid)
                    .map_err(self.sql())?;
                meta.valid || target.invalid_laps
            }
            _ => false,
        };
        tx.commit().map_err(self.sql())?;
        Ok(queued)
    }

    /// The connection, for the outbox's queries.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One session.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn session(&self, id: Uuid) -> Result<Option<SessionRow>, ArchiveError> {
        Ok(self.query_sessions(Some(id))?.pop())
    }

    /// Every session, newest first.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn sessions(&self) -> Result<Vec<SessionRow>, ArchiveError> {
        self.query_sessions(None)
    }

    fn query_sessions(&self, id: Option<Uuid>) -> Result<Vec<SessionRow>, ArchiveError> {
        let mut stmt = self
            .conn
            .prepare(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE ?1 IS NULL OR id = ?1 ORDER BY started_at DESC, id"
                ),
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![id.map(|s| s.to_string())], session_row)
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Where a session's track sectors start (empty when one sector or unknown).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn session_sectors(&self, id: Uuid) -> Result<Vec<f32>, ArchiveError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT sectors FROM sessions WHERE id = ?1",
                params![id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(text.as_deref().map(parse_sectors).unwrap_or_default())
    }

    /// The laps of a session, or of every session, in session, car and lap order.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn laps(&self, session: Option<Uuid>) -> Result<Vec<IndexedLap>, ArchiveError> {
        let mut stmt = self
            .conn
            .prepare(
                &format!(
                    "SELECT {LAP_COLUMNS} FROM laps WHERE ?1 IS NULL OR session_id = ?1 ORDER BY session_id, car, lap"
                ),
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![session.map(|s| s.to_string())], lap_row)
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The classification of a session.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn results(&self, session: Uuid) -> Result<Vec<ResultEntry>, ArchiveError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT position, car, driver, laps, total_time_s, best_lap_s
                 FROM results WHERE session_id = ?1 ORDER BY position",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![session.to_string()], |r| {
                Ok(ResultEntry {
                    position: r.get(0)?,
                    car: r.get(1)?,
                    driver: r.get(2)?,
                    laps: r.get(3)?,
                    total_time_s: r.get(4)?,
                    best_lap_s: r.get(5)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Stores the content's race templates (seed 003 section 9), replacing earlier versions of
    /// the same ids; `created_at` is kept from the first time a template was stored.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn put_templates(
        &mut self,
        templates: &[RaceTemplate],
        now: i64,
    ) -> Result<(), ArchiveError> {
        let path = self.path.clone();
        let sql = |source| ArchiveError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        for t in templates {
            let cars: Vec<String> = t.allowed_cars.iter().map(Uuid::to_string).collect();
            let mode = match t.start_mode {
                StartMode::Manual => "manual",
                StartMode::Countdown => "countdown",
                StartMode::Scheduled => "scheduled",
            };
            tx.execute(
                "INSERT INTO race_templates (id, name, track_config_id, allowed_cars, max_players,
                     default_ai_count, lap_limit, start_mode, rotation_weight, active, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name,
                     track_config_id = excluded.track_config_id, allowed_cars = excluded.allowed_cars,
                     max_players = excluded.max_players, default_ai_count = excluded.default_ai_count,
                     lap_limit = excluded.lap_limit, start_mode = excluded.start_mode,
                     rotation_weight = excluded.rotation_weight, active = excluded.active,
                     updated_at = excluded.updated_at",
                params![
                    t.id.to_string(),
                    t.name,
                    t.track_id.to_string(),
                    serde_json::to_string(&cars).unwrap_or_else(|_| "[]".into()),
                    t.max_players,
                    t.default_ai_count,
                    t.lap_limit,
                    mode,
                    t.rotation_weight,
                    t.active,
                    now
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Ids and names of the stored templates, by name.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn templates(&self) -> Result<Vec<(Uuid, String, bool)>, ArchiveError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, active FROM race_templates ORDER BY name")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                let id: String = r.get(0)?;
                Ok((
                    Uuid::parse_str(&id).unwrap_or_default(),
                    r.get(1)?,
                    r.get(2)?,
                ))
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Removes a session with its results and lap rows (not its files).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn delete_session(&self, id: Uuid) -> Result<(), ArchiveError> {
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        tx.execute(
            "DELETE FROM sessions WHERE id = ?1",
            params![id.to_string()],
        )
        .map_err(self.sql())?;
        super::outbox::session_removed(&tx, id).map_err(self.sql())?;
        tx.commit().map_err(self.sql())
    }

    /// Removes a driver's laps of a session from the index (their uploads still waiting
    /// marked failed, as [`Index::delete_laps`] does); the session, its results and the other
    /// drivers' laps stay. Returns the lap rows removed.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn delete_driver_laps(&self, id: Uuid, driver: &str) -> Result<usize, ArchiveError> {
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        let cars: Vec<u8> = {
            let mut stmt = tx
                .prepare("SELECT DISTINCT car FROM laps WHERE session_id = ?1 AND driver = ?2")
                .map_err(self.sql())?;
            stmt.query_map(params![id.to_string(), driver], |r| r.get(0))
                .map_err(self.sql())?
                .collect::<Result<_, _>>()
                .map_err(self.sql())?
        };
        let removed = tx
            .execute(
                "DELETE FROM laps WHERE session_id = ?1 AND driver = ?2",
                params![id.to_string(), driver],
            )
            .map_err(self.sql())?;
        for car in cars {
            super::outbox::laps_removed(&tx, id, Some(car)).map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        Ok(removed)
    }

    /// Removes a session's lap rows (not its files), keeping its summary and results, and
    /// marks when (`laps_pruned_at`); uploads still queued for its laps fail as pruned.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn delete_laps(&self, id: Uuid, at: i64) -> Result<(), ArchiveError> {
        let tx = self.conn.unchecked_transaction().map_err(self.sql())?;
        tx.execute(
            "DELETE FROM laps WHERE session_id = ?1",
            params![id.to_string()],
        )
        .map_err(self.sql())?;
        tx.execute(
            "UPDATE sessions SET laps_pruned_at = ?2 WHERE id = ?1",
            params![id.to_string(), at],
        )
        .map_err(self.sql())?;
        super::outbox::session_removed(&tx, id).map_err(self.sql())?;
        tx.commit().map_err(self.sql())
    }

    /// The journal mode in effect (`"wal"` once opened).
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn journal_mode(&self) -> Result<String, ArchiveError> {
        self.conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .optional()
            .map_err(self.sql())
            .map(Option::unwrap_or_default)
    }
}
