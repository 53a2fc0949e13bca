//! The index's schema, as migrations applied in order (`PRAGMA user_version` counts them). A
//! migration, once released, is never edited: a change is a new one.

/// Schema migrations, applied in order; the database's `user_version` is how many ran.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE race_templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    track_config_id TEXT NOT NULL,
    allowed_cars TEXT NOT NULL,
    max_players INTEGER NOT NULL,
    default_ai_count INTEGER NOT NULL,
    lap_limit INTEGER NOT NULL,
    start_mode TEXT NOT NULL,
    rotation_weight INTEGER NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    track TEXT NOT NULL,
    car_model TEXT NOT NULL,
    lap_limit INTEGER,
    seed INTEGER,
    started_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX idx_sessions_started ON sessions(started_at);
CREATE TABLE results (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    car INTEGER NOT NULL,
    driver TEXT NOT NULL,
    laps INTEGER NOT NULL,
    total_time_s REAL,
    best_lap_s REAL,
    PRIMARY KEY (session_id, position)
);
CREATE TABLE laps (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    car INTEGER NOT NULL,
    driver TEXT NOT NULL,
    lap INTEGER NOT NULL,
    lap_time_s REAL,
    complete INTEGER NOT NULL,
    valid INTEGER NOT NULL,
    file TEXT NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (session_id, car, lap)
);
"#,
    r#"
-- Where the track's sectors start, as fractions of the lap, comma-separated ('' = one sector).
ALTER TABLE sessions ADD COLUMN sectors TEXT NOT NULL DEFAULT '';
"#,
    r#"
-- Laps to upload to a Racing Coach server (outbox.rs): one row per lap and server,
-- written in the transaction that indexes the lap. No foreign key: a pruned lap's row stays
-- and says why it cannot be sent.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    session_id TEXT NOT NULL,
    car INTEGER NOT NULL,
    lap INTEGER NOT NULL,
    lap_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL DEFAULT 0,
    lease_until_ms INTEGER,
    server_lap_id TEXT,
    maybe_sent INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (url, session_id, car, lap)
);
CREATE INDEX idx_outbox_due ON outbox(state, next_at_ms);
"#,
    r#"
-- What a recording's session info says the session was (iRacing's ids and names), for uploads.
ALTER TABLE sessions ADD COLUMN identity TEXT;
"#,
    r#"
-- Race operations: the template a server session was made from, who ended it early (an
-- operator), and when retention removed its laps (the summary and results stay).
ALTER TABLE sessions ADD COLUMN template_id TEXT;
ALTER TABLE sessions ADD COLUMN ended_by TEXT;
ALTER TABLE sessions ADD COLUMN laps_pruned_at INTEGER;
"#,
];
