//! The index searched: sessions by track, car, driver, source and time, a driver's laps and
//! best laps, the tracks and cars the archive holds. Every search is one SQL statement with
//! bound parameters and a page (limit and offset) the caller bounds.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use uuid::Uuid;

use super::{Index, LAP_COLUMNS, SESSION_COLUMNS, lap_row, session_row};
use crate::archive::ArchiveError;
use crate::archive::index::{IndexedLap, SessionRow};

/// Which sessions, and which page of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionQuery {
    /// Track slug.
    pub track: Option<String>,
    /// Car model.
    pub car: Option<String>,
    /// A driver with at least one lap or result in the session.
    pub driver: Option<String>,
    /// `sim`, `iracing` or `api`.
    pub source: Option<String>,
    /// Started at or after (Unix seconds).
    pub from: Option<i64>,
    /// Started before (Unix seconds).
    pub to: Option<i64>,
    /// Page size.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u64,
}

/// One page of a search: the rows and how many match in all.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// Rows matching the search, over every page.
    pub total: u64,
    /// The page size asked for.
    pub limit: u32,
    /// Rows skipped before this page.
    pub offset: u64,
    /// The offset of the next page, when there is one.
    pub next_offset: Option<u64>,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, total: u64, limit: u32, offset: u64) -> Self {
        let end = offset.saturating_add(items.len() as u64);
        Self {
            next_offset: (end < total && !items.is_empty()).then_some(end),
            items,
            total,
            limit,
            offset,
        }
    }
}

/// A driver's laps, and which page of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriverLapQuery {
    /// Track slug.
    pub track: Option<String>,
    /// Car model.
    pub car: Option<String>,
    /// Only valid, complete laps.
    pub valid_only: bool,
    /// Page size.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u64,
}

/// A driver's lap with where and in what it was driven.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DriverLap {
    /// The lap as indexed.
    #[serde(flatten)]
    pub lap: IndexedLap,
    /// Track slug.
    pub track: String,
    /// Car model.
    pub car_model: String,
    /// When the session started (Unix seconds).
    pub started_at: i64,
}

/// A driver's best valid lap on a track in a car.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BestLap {
    /// Track slug.
    pub track: String,
    /// Car model.
    pub car_model: String,
    /// The best lap's time, s.
    pub lap_time_s: f64,
    /// Its session.
    pub session: Uuid,
    /// Its car index in the session.
    pub car: u8,
    /// Its lap number.
    pub lap: u16,
    /// Valid complete laps the driver has on this track in this car.
    pub laps: u64,
}

/// A track or car model the archive holds, with how many sessions and laps use it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Seen {
    /// Track slug or car model name.
    pub name: String,
    /// Sessions on it (or in it).
    pub sessions: u64,
    /// Laps archived on it (or in it).
    pub laps: u64,
}

const SESSION_FILTER: &str = "(?1 IS NULL OR s.track = ?1)
       AND (?2 IS NULL OR s.car_model = ?2)
       AND (?3 IS NULL OR EXISTS (SELECT 1 FROM laps l WHERE l.session_id = s.id AND l.driver = ?3)
                       OR EXISTS (SELECT 1 FROM results r WHERE r.session_id = s.id AND r.driver = ?3))
       AND (?4 IS NULL OR s.source = ?4)
       AND (?5 IS NULL OR s.started_at >= ?5)
       AND (?6 IS NULL OR s.started_at < ?6)";

const DRIVER_FILTER: &str = "l.driver = ?1
       AND (?2 IS NULL OR s.track = ?2)
       AND (?3 IS NULL OR s.car_model = ?3)
       AND (?4 = 0 OR (l.valid = 1 AND l.complete = 1))";

/// A column list with each column qualified by a table alias (`s.id, s.track`).
fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn offset(o: u64) -> i64 {
    i64::try_from(o).unwrap_or(i64::MAX)
}

impl Index {
    /// Sessions matching a query, newest first, one page.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn find_sessions(&self, q: &SessionQuery) -> Result<Page<SessionRow>, ArchiveError> {
        let filter = params![q.track, q.car, q.driver, q.source, q.from, q.to];
        let total: i64 = self
            .conn
            .query_row(
                &format!("SELECT count(*) FROM sessions s WHERE {SESSION_FILTER}"),
                filter,
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        let columns = qualified(SESSION_COLUMNS, "s");
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {columns} FROM sessions s WHERE {SESSION_FILTER}
                 ORDER BY s.started_at DESC, s.id LIMIT ?7 OFFSET ?8"
            ))
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(
                params![
                    q.track,
                    q.car,
                    q.driver,
                    q.source,
                    q.from,
                    q.to,
                    q.limit,
                    offset(q.offset)
                ],
                session_row,
            )
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(Page::new(rows, total as u64, q.limit, q.offset))
    }

    /// One lap of a session.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn lap(
        &self,
        session: Uuid,
        car: u8,
        lap: u16,
    ) -> Result<Option<IndexedLap>, ArchiveError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {LAP_COLUMNS} FROM laps WHERE session_id = ?1 AND car = ?2 AND lap = ?3"
                ),
                params![session.to_string(), car, lap],
                lap_row,
            )
            .optional()
            .map_err(self.sql())
    }

    /// A driver's laps, newest session first, then by car and lap, one page.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn driver_laps(
        &self,
        driver: &str,
        q: &DriverLapQuery,
    ) -> Result<Page<DriverLap>, ArchiveError> {
        let total: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM laps l JOIN sessions s ON s.id = l.session_id
                     WHERE {DRIVER_FILTER}"
                ),
                params![driver, q.track, q.car, q.valid_only],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        let columns = qualified(LAP_COLUMNS, "l");
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {columns}, s.track, s.car_model, s.started_at
                 FROM laps l JOIN sessions s ON s.id = l.session_id
                 WHERE {DRIVER_FILTER}
                 ORDER BY s.started_at DESC, l.session_id, l.car, l.lap LIMIT ?5 OFFSET ?6"
            ))
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(
                params![
                    driver,
                    q.track,
                    q.car,
                    q.valid_only,
                    q.limit,
                    offset(q.offset)
                ],
                |r| {
                    Ok(DriverLap {
                        lap: lap_row(r)?,
                        track: r.get(9)?,
                        car_model: r.get(10)?,
                        started_at: r.get(11)?,
                    })
                },
            )
            .map_err(self.sql())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql())?;
        Ok(Page::new(rows, total as u64, q.limit, q.offset))
    }

    /// A driver's best valid complete lap per track and car model, by track then car.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn best_laps(&self, driver: &str) -> Result<Vec<BestLap>, ArchiveError> {
        // SQLite takes the other columns from the row holding min() (a documented behaviour
        // of bare columns in an aggregate query).
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.track, s.car_model, min(l.lap_time_s), l.session_id, l.car, l.lap, count(*)
                 FROM laps l JOIN sessions s ON s.id = l.session_id
                 WHERE l.driver = ?1 AND l.valid = 1 AND l.complete = 1 AND l.lap_time_s IS NOT NULL
                 GROUP BY s.track, s.car_model ORDER BY s.track, s.car_model",
            )
            .map_err(self.sql())?;
        stmt.query_map(params![driver], |r| {
            let session: String = r.get(3)?;
            Ok(BestLap {
                track: r.get(0)?,
                car_model: r.get(1)?,
                lap_time_s: r.get(2)?,
                session: Uuid::parse_str(&session).unwrap_or_default(),
                car: r.get(4)?,
                lap: r.get(5)?,
                laps: r.get::<_, i64>(6)? as u64,
            })
        })
        .map_err(self.sql())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(self.sql())
    }

    /// The tracks (`by_car` false) or car models (true) of the archived sessions, by name.
    ///
    /// # Errors
    /// [`ArchiveError::Sqlite`].
    pub fn seen(&self, by_car: bool) -> Result<Vec<Seen>, ArchiveError> {
        let column = if by_car { "car_model" } else { "track" };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT s.{column}, count(DISTINCT s.id), count(l.lap)
                 FROM sessions s LEFT JOIN laps l ON l.session_id = s.id
                 GROUP BY s.{column} ORDER BY s.{column}"
            ))
            .map_err(self.sql())?;
        stmt.query_map([], |r| {
            Ok(Seen {
                name: r.get(0)?,
                sessions: r.get::<_, i64>(1)? as u64,
                laps: r.get::<_, i64>(2)? as u64,
            })
        })
        .map_err(self.sql())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(self.sql())
    }
}
