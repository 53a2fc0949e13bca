//! Everything the CLI prints to standard output: result tables and their JSON form. The only
//! module that prints; logs go through `tracing` to standard error.

use std::io::{self, Write};

use serde::Serialize;

use crate::archive::index::{LapRow, SessionRow};
use crate::cli::Format;
use crate::content::Content;
use crate::race::{Board, Gap, Phase, RaceEvent, RaceReport};

/// Formats seconds as `m:ss.mmm` (or `s.mmm` under a minute).
pub fn lap_time(s: f64) -> String {
    let ms = (s * 1000.0).round() as u64;
    let (m, rest) = (ms / 60_000, ms % 60_000);
    if m > 0 {
        format!("{m}:{:02}.{:03}", rest / 1000, rest % 1000)
    } else {
        format!("{}.{:03}", rest / 1000, rest % 1000)
    }
}

/// A table with a header row underlined, columns padded to their widest cell and two spaces
/// apart (comfy-table, without borders); numeric-looking columns are right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    use comfy_table::{CellAlignment, Table, TableComponent, presets};
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_style(TableComponent::HeaderLines, '-')
        .set_style(TableComponent::VerticalLines, ' ')
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row.clone());
    }
    for (c, column) in t.column_iter_mut().enumerate() {
        column.set_padding((u16::from(c > 0), 0));
        let numeric = rows.iter().all(|r| {
            r.get(c).is_none_or(|v| {
                v.starts_with(|ch: char| ch.is_ascii_digit() || ch == '+' || ch == '-')
            })
        });
        if numeric {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn emit_json<T: Serialize>(value: &T) -> io::Result<()> {
    let text = serde_json::to_string(value).map_err(io::Error::other)?;
    emit(&(text + "\n"))
}

/// Prints the results of a race.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_race(report: &RaceReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(report);
    }
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.position.to_string(),
                r.driver.clone(),
                r.car.clone(),
                r.grid.to_string(),
                r.laps.to_string(),
                r.total_time_s.map_or("-".into(), lap_time),
                r.best_lap_s.map_or("-".into(), lap_time),
                gap_text(r.gap),
            ]
        })
        .collect();
    let mut text = format!(
        "{} ({:.0} m), {} laps, seed {}\n\n",
        report.track, report.track_length_m, report.laps, report.seed
    );
    text += &table(
        &[
            "Pos", "Driver", "Car", "Grid", "Laps", "Total", "Best lap", "Gap",
        ],
        &rows,
    );
    text += &format!(
        "\nideal lap {} | {} ticks ({:.1} s simulated) in {:.2} s wall: {:.0} ticks/s ({:.0}x real time)\n",
        lap_time(f64::from(report.ideal_lap_s)),
        report.ticks,
        report.sim_seconds,
        report.wall_seconds,
        report.ticks_per_second,
        report.sim_seconds / report.wall_seconds.max(1e-9),
    );
    if let Some(a) = &report.archive {
        text += &format!(
            "archived {} laps ({} rows), session {}; writer stalls {}, errors {}\n",
            a.laps_written,
            a.rows_written,
            report.session,
            a.stalls,
            a.errors.len()
        );
    }
    emit(&text)
}

fn gap_text(gap: Gap) -> String {
    match gap {
        Gap::Leader => "leader".into(),
        Gap::Seconds(s) => format!("+{s:.3}"),
        Gap::Laps(1) => "+1 lap".into(),
        Gap::Laps(n) => format!("+{n} laps"),
        Gap::Dnf => "DNF".into(),
    }
}

/// The live timing board as text.
pub fn board_text(board: &Board) -> String {
    let phase = match board.phase {
        Phase::Lobby => "waiting for the start".to_owned(),
        Phase::Countdown { seconds } => format!("start in {seconds} s"),
        Phase::Racing { race_s } => format!("racing {}", lap_time(race_s)),
        Phase::Finished => "finished".to_owned(),
    };
    let rows: Vec<Vec<String>> = board
        .rows
        .iter()
        .map(|r| {
            vec![
                r.position.to_string(),
                r.driver.clone(),
                format!("{}/{}", r.lap, board.laps),
                r.last_lap_s.map_or("-".into(), lap_time),
                r.best_lap_s.map_or("-".into(), lap_time),
                gap_text(r.gap),
            ]
        })
        .collect();
    format!("{} | {phase}\n\n", board.track)
        + &table(&["Pos", "Driver", "Lap", "Last", "Best", "Gap"], &rows)
}

/// Shows a running race: on a terminal a live timing board redrawn in place (and erased at
/// the end, before the results); otherwise one line per completed lap; nothing for JSON.
#[derive(Debug)]
pub struct RaceWatcher {
    mode: WatchMode,
    drawn: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchMode {
    Board,
    Lines,
    Quiet,
}

impl RaceWatcher {
    /// A watcher for results printed in `format`.
    pub fn new(format: Format) -> Self {
        let mode = match format {
            Format::Json => WatchMode::Quiet,
            Format::Table if io::IsTerminal::is_terminal(&io::stdout()) => WatchMode::Board,
            Format::Table => WatchMode::Lines,
        };
        Self { mode, drawn: 0 }
    }

    /// Shows an event. Output errors (a closed pipe) are ignored: the race goes on.
    pub fn event(&mut self, event: RaceEvent<'_>) {
        let text = match (self.mode, event) {
            (WatchMode::Board, RaceEvent::Board(board)) => {
                let text = board_text(board);
                let erase = self.erase();
                self.drawn = text.lines().count();
                erase + &text
            }
            (WatchMode::Lines, RaceEvent::Lap(lap)) => format!(
                "lap {:>3}  {}  {}{}\n",
                lap.lap,
                lap.driver,
                lap_time(lap.time_s),
                if lap.valid { "" } else { "  (invalid)" }
            ),
            _ => return,
        };
        let _ = emit(&text);
    }

    /// Erases the board, if one is drawn.
    pub fn finish(&mut self) {
        let erase = self.erase();
        if !erase.is_empty() {
            let _ = emit(&erase);
        }
    }

    fn erase(&mut self) -> String {
        match std::mem::take(&mut self.drawn) {
            0 => String::new(),
            n => format!("\x1b[{n}A\x1b[J"),
        }
    }
}

/// Prints what a prune removed.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_prune(report: &crate::archive::PruneReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(report);
    }
    let live = match report.live_sessions {
        0 => String::new(),
        n => format!(" ({n} older sessions kept: a live process is writing them)"),
    };
    emit(&format!(
        "pruned {} sessions, {} lap files, {:.1} MB{live}\n",
        report.sessions,
        report.laps,
        report.bytes as f64 / 1e6
    ))
}

/// A session with its status: `finished`, `live` (a process is writing it) or `unfinished`
/// (ended in an error or cut short; its laps so far are archived).
#[derive(Serialize)]
struct SessionListing<'a> {
    #[serde(flatten)]
    session: &'a SessionRow,
    status: &'static str,
}

#[derive(Serialize)]
struct ArchiveListing<'a> {
    sessions: Vec<SessionListing<'a>>,
    laps: &'a [LapRow],
}

/// Prints the archived sessions (with lap counts and best laps), and the laps of one session
/// when `session` is given.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_archive(
    sessions: &[SessionRow],
    live: &[uuid::Uuid],
    laps: &[LapRow],
    session: Option<uuid::Uuid>,
    format: Format,
) -> io::Result<()> {
    let shown: Vec<SessionListing<'_>> = sessions
        .iter()
        .filter(|s| session.is_none_or(|id| s.id == id))
        .map(|s| SessionListing {
            session: s,
            status: match (s.finished_at, live.contains(&s.id)) {
                (Some(_), _) => "finished",
                (None, true) => "live",
                (None, false) => "unfinished",
            },
        })
        .collect();
    if format == Format::Json {
        return emit_json(&ArchiveListing {
            sessions: shown,
            laps,
        });
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|listed| {
            let s = listed.session;
            let mine: Vec<&LapRow> = laps.iter().filter(|l| l.session == s.id).collect();
            let best = mine
                .iter()
                .filter(|l| l.valid)
                .filter_map(|l| l.lap_time_s)
                .fold(None, |b: Option<f64>, t| Some(b.map_or(t, |b| b.min(t))));
            vec![
                s.id.to_string(),
                listed.status.to_owned(),
                s.source.clone(),
                s.track.clone(),
                s.car_model.clone(),
                crate::archive::Date::from_unix(s.started_at).to_string(),
                mine.len().to_string(),
                mine.iter().filter(|l| l.complete).count().to_string(),
                best.map_or("-".into(), lap_time),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "Session", "Status", "Source", "Track", "Car", "Date", "Laps", "Complete", "Best lap",
        ],
        &rows,
    );
    if session.is_some() {
        text.push('\n');
        text += &table(
            &[
                "Car", "Driver", "Lap", "Time", "Complete", "Valid", "Rows", "File",
            ],
            &laps
                .iter()
                .map(|l| {
                    vec![
                        l.car.to_string(),
                        l.driver.clone(),
                        l.lap.to_string(),
                        l.lap_time_s.map_or("-".into(), lap_time),
                        l.complete.to_string(),
                        l.valid.to_string(),
                        l.rows.to_string(),
                        l.file.display().to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    emit(&text)
}

/// A progress bar on standard error for long jobs (indicatif), drawn only when standard error
/// is a terminal (logs and pipes stay clean).
pub struct Progress {
    label: &'static str,
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
}

impl Progress {
    /// A bar labelled `label`.
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            bar: None,
            started: std::time::Instant::now(),
        }
    }

    /// Redraws the bar: `done` of `total` files, `records` records read so far.
    pub fn update(&mut self, done: usize, total: usize, records: u64) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = if io::IsTerminal::is_terminal(&io::stderr()) {
                indicatif::ProgressBar::new(total as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} files, {msg} ({elapsed})",
            ) {
                bar.set_style(style.progress_chars("#> "));
            }
            bar.set_prefix(self.label);
            bar
        });
        let rate = records as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        bar.set_length(total as u64);
        bar.set_message(format!("{records} records ({rate:.0}/s)"));
        bar.set_position(done as u64);
    }

    /// Removes the bar: the summary that follows says the same.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Prints what an ingest did: one line per file (laps, valid laps, lap times, or why it
/// failed), then the totals.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_ingest(report: &crate::ingest::IngestReport, format: Format) -> io::Result<()> {
    use crate::ingest::FileOutcome;
    if format == Format::Json {
        return emit_json(report);
    }
    let rows: Vec<Vec<String>> = report
        .files
        .iter()
        .map(|f| {
            let name = f.path.file_name().map_or_else(
                || f.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            match &f.outcome {
                FileOutcome::Ingested { info, laps, .. } => {
                    let times: Vec<String> = laps
                        .iter()
                        .map(|l| {
                            let t = lap_time(l.time_s);
                            if l.valid {
                                t
                            } else {
                                format!("({t} invalid: {})", l.invalid_because.join(", "))
                            }
                        })
                        .collect();
                    vec![
                        name,
                        "ingested".into(),
                        info.track_name.clone(),
                        info.car.clone(),
                        laps.len().to_string(),
                        laps.iter().filter(|l| l.valid).count().to_string(),
                        if times.is_empty() {
                            "-".into()
                        } else {
                            times.join(" ")
                        },
                    ]
                }
                FileOutcome::InProgress { .. } => vec![
                    name,
                    "being ingested by another process".into(),
                    String::new(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ],
                FileOutcome::Skipped { .. } => vec![
                    name,
                    "already archived".into(),
                    String::new(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ],
                FileOutcome::Failed { error } => vec![
                    name,
                    "FAILED".into(),
                    error.clone(),
                    String::new(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ],
            }
        })
        .collect();
    let mut text = table(
        &[
            "File",
            "Status",
            "Track",
            "Car",
            "Laps",
            "Valid",
            "Lap times",
        ],
        &rows,
    );
    let (laps, valid) = report.laps();
    let archived = report.archive.as_ref().map_or(0, |a| a.laps_written);
    text += &format!(
        "\n{} files ({} failed): {laps} complete laps, {valid} valid, {archived} archived; \
         {} records ({:.0} s recorded) in {:.2} s = {:.0} records/s\n",
        report.files.len(),
        report.failed(),
        report.records,
        report.recorded_s,
        report.wall_s,
        report.records as f64 / report.wall_s.max(1e-9),
    );
    emit(&text)
}

/// Prints a track built from a recording.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_track_built(t: &crate::ingest::track::BuiltTrack, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(t);
    }
    emit(&format!(
        "built {} in {}: {} points, {:.1} m (the recording's lap: {:.1} m), from lap {} ({})\n",
        t.name,
        t.dir.display(),
        t.points,
        t.length_m,
        t.recorded_length_m,
        t.lap,
        lap_time(t.lap_time_s)
    ))
}

/// Prints what a live session archived.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_live(r: &crate::ingest::live::LiveReport) -> io::Result<()> {
    let rows: Vec<Vec<String>> = r
        .laps
        .iter()
        .map(|l| {
            vec![
                l.lap.to_string(),
                lap_time(l.time_s),
                if l.valid {
                    "valid".into()
                } else {
                    format!("invalid: {}", l.invalid_because.join(", "))
                },
            ]
        })
        .collect();
    let mut text = table(&["Lap", "Time", "Validity"], &rows);
    text += &format!(
        "\nsession {} at {} in {}: {} frames, {} laps archived\n",
        r.session, r.info.track_name, r.info.car, r.records, r.archive.laps_written
    );
    emit(&text)
}

#[derive(Serialize)]
struct ContentSummary<'a> {
    cars: Vec<(&'a str, &'a str, String)>,
    tracks: Vec<(&'a str, &'a str, f32, usize)>,
    templates: Vec<(&'a str, &'a str, bool)>,
    errors: Vec<String>,
}

/// Prints what a content directory holds and every problem found in it.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_content(content: &Content, errors: &[String], format: Format) -> io::Result<()> {
    let summary = ContentSummary {
        cars: content
            .cars
            .iter()
            .map(|c| (c.slug.as_str(), c.name.as_str(), c.id.to_string()))
            .collect(),
        tracks: content
            .tracks
            .iter()
            .map(|t| {
                (
                    t.slug.as_str(),
                    t.name.as_str(),
                    t.geometry.length_m(),
                    t.geometry.grid_slots().len(),
                )
            })
            .collect(),
        templates: content
            .templates
            .iter()
            .map(|t| (t.slug.as_str(), t.name.as_str(), t.active))
            .collect(),
        errors: errors.to_vec(),
    };
    if format == Format::Json {
        return emit_json(&summary);
    }
    let mut text = table(
        &["Car", "Name", "Id"],
        &summary
            .cars
            .iter()
            .map(|(s, n, i)| vec![(*s).into(), (*n).into(), i.clone()])
            .collect::<Vec<_>>(),
    );
    text.push('\n');
    text += &table(
        &["Track", "Name", "Length (m)", "Grid"],
        &summary
            .tracks
            .iter()
            .map(|(s, n, l, g)| vec![(*s).into(), (*n).into(), format!("{l:.0}"), g.to_string()])
            .collect::<Vec<_>>(),
    );
    text.push('\n');
    text += &table(
        &["Template", "Name", "Active"],
        &summary
            .templates
            .iter()
            .map(|(s, n, a)| vec![(*s).into(), (*n).into(), a.to_string()])
            .collect::<Vec<_>>(),
    );
    for e in errors {
        text += &format!("error: {e}\n");
    }
    emit(&text)
}

/// Prints where the server listens (one line; JSON with `--format json`, for scripts).
///
/// # Errors
/// Writing to standard output failed.
pub fn print_listening(l: &crate::net::server::Listening, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(l);
    }
    emit(&format!(
        "serving on {} (QUIC, ALPN apexsim/1), http://{} (health, ready, metrics)\ncertificate {} sha256 {}\n",
        l.quic,
        l.http,
        l.cert.display(),
        l.fingerprint
    ))
}

/// Prints what a server run did.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_serve(r: &crate::net::server::ServeReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(r);
    }
    emit(&format!(
        "stopped after {:.1} s: {} ticks, {} connections, {} sessions finished, {} laps archived, CPU {:.2} s, archive errors {}\n",
        r.wall_seconds,
        r.sim.ticks,
        r.connections,
        r.sim.sessions_finished,
        r.sim.archive.laps_written,
        r.cpu_seconds.unwrap_or(f64::NAN),
        r.sim.archive.errors.len()
    ))?;
    match &r.upload {
        Some(u) => print_upload(u, 0, format),
        None => Ok(()),
    }
}

/// Prints what the bots measured.
///
/// # Errors
/// Writing to standard output failed.
pub fn print_drive(r: &crate::net::drive::DriveReport, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(r);
    }
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|s| {
            vec![
                s.position.to_string(),
                s.name.clone(),
                s.laps.to_string(),
                s.total_time_s.map_or("-".into(), lap_time),
                s.best_lap_s.map_or("-".into(), lap_time),
            ]
        })
        .collect();
    let mut text = String::new();
    if let Some(id) = r.session {
        text += &format!("session {id}\n");
    }
    if let Some(f) = &r.fault {
        text += &format!("session ended in a fault: {f}\n");
    }
    text += &table(&["Pos", "Driver", "Laps", "Total", "Best lap"], &rows);
    text += &format!(
        "\n{} bots in {:.1} s: telemetry for {:.3} % of ticks ({} missed), {:.1} packets/s per bot\ninput-to-telemetry latency p50 {:.2} ticks, p99 {:.2} ticks; heartbeat RTT p50 {:.2} ms, QUIC RTT {:.2} ms\n",
        r.bots,
        r.wall_seconds,
        r.telemetry_coverage_pct,
        r.ticks_missed,
        r.telemetry_per_s,
        r.latency_p50_ticks,
        r.latency_p99_ticks,
        r.rtt_p50_ms,
        r.quic_rtt_ms
    );
    emit(&text)
}

/// Prints an analysis: lap rows and the summary per track and car as tables, CSV (lap rows),
/// JSON (everything), or Parquet (lap rows, into `out`).
pub fn print_analysis(
    a: &crate::analysis::query::Analysis,
    format: crate::cli::TableFormat,
    out: Option<&std::path::Path>,
) -> io::Result<()> {
    use crate::cli::TableFormat;
    let secs = |t: Option<f64>| t.map_or_else(|| "-".to_owned(), lap_time);
    let pct = |x: f32| format!("{:.0}", x * 100.0);
    let sectors = |v: &[f32], sep: &str| {
        v.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(sep)
    };
    match format {
        TableFormat::Json => emit_json(a),
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(io::stdout().lock());
            w.write_record([
                "source",
                "track",
                "date",
                "session",
                "car",
                "car_model",
                "driver",
                "lap",
                "valid",
                "official_lap_time_s",
                "lap_time_s",
                "top_speed_mps",
                "full_throttle_share",
                "braking_share",
                "coasting_share",
                "braking_zones",
                "corners",
                "sector_times_s",
            ])?;
            for r in &a.laps {
                let opt = |t: Option<f64>| t.map_or_else(String::new, |t| format!("{t:.3}"));
                w.write_record([
                    r.source.clone(),
                    r.track.clone(),
                    r.date.clone(),
                    r.session.clone(),
                    r.car.to_string(),
                    r.car_model.clone(),
                    r.driver.clone(),
                    r.lap.to_string(),
                    r.valid.to_string(),
                    opt(r.official_lap_time_s),
                    opt(r.lap_time_s),
                    format!("{:.2}", r.top_speed_mps),
                    format!("{:.4}", r.full_throttle_share),
                    format!("{:.4}", r.braking_share),
                    format!("{:.4}", r.coasting_share),
                    r.braking_zones.to_string(),
                    r.corners.to_string(),
                    sectors(&r.sector_times_s, ";"),
                ])?;
            }
            w.flush()
        }
        TableFormat::Parquet => {
            let path = out.ok_or_else(|| io::Error::other("--format parquet needs --out"))?;
            crate::analysis::store::write_lap_rows(path, &a.laps).map_err(io::Error::other)?;
            emit(&format!(
                "{} lap rows written to {}\n",
                a.laps.len(),
                path.display()
            ))
        }
        TableFormat::Table => {
            let rows: Vec<Vec<String>> = a
                .laps
                .iter()
                .map(|r| {
                    vec![
                        r.track.clone(),
                        r.session.chars().take(8).collect(),
                        r.car.to_string(),
                        r.car_model.clone(),
                        r.driver.clone(),
                        r.lap.to_string(),
                        if r.valid { "yes" } else { "no" }.into(),
                        secs(r.official_lap_time_s),
                        secs(r.lap_time_s),
                        format!("{:.0}", r.top_speed_mps * 3.6),
                        pct(r.full_throttle_share),
                        pct(r.braking_share),
                        pct(r.coasting_share),
                        r.braking_zones.to_string(),
                        r.corners.to_string(),
                        sectors(&r.sector_times_s, " "),
                    ]
                })
                .collect();
            let mut text = table(
                &[
                    "Track",
                    "Session",
                    "#",
                    "Car",
                    "Driver",
                    "Lap",
                    "Valid",
                    "Official",
                    "Measured",
                    "Top km/h",
                    "Full %",
                    "Brake %",
                    "Coast %",
                    "Zones",
                    "Corners",
                    "Sectors (s)",
                ],
                &rows,
            );
            let summary: Vec<Vec<String>> = a
                .summary
                .iter()
                .map(|s| {
                    vec![
                        s.track.clone(),
                        s.car_model.clone(),
                        s.laps.to_string(),
                        s.valid_laps.to_string(),
                        secs(s.best_lap_s),
                        s.best_lap.clone().unwrap_or_else(|| "-".into()),
                        secs(s.mean_lap_s),
                        secs(s.theoretical_best_s),
                        s.braking_point_mad_m
                            .map_or_else(|| "-".into(), |m| format!("{m:.1}")),
                        s.apex_speed_mad_mps
                            .map_or_else(|| "-".into(), |m| format!("{:.1}", m * 3.6)),
                    ]
                })
                .collect();
            text.push('\n');
            text.push_str(&table(
                &[
                    "Track",
                    "Car",
                    "Laps",
                    "Valid",
                    "Best",
                    "Best lap",
                    "Mean",
                    "Theoretical",
                    "Braking MAD m",
                    "Apex MAD km/h",
                ],
                &summary,
            ));
            let rate = if a.compute_s > 0.0 {
                a.computed as f64 / a.compute_s
            } else {
                0.0
            };
            text.push_str(&format!(
                "\n{} laps; {} measured now in {:.2} s ({:.0} laps/s); stored metrics read in {:.3} s; {} error(s)\n",
                a.laps.len(),
                a.computed,
                a.compute_s,
                rate,
                a.query_s,
                a.errors.len()
            ));
            if a.waiting > 0 {
                text.push_str(&format!(
                    "{} lap(s) of live sessions wait for their writer to store their metrics (within 30 s)\n",
                    a.waiting
                ));
            }
            for e in &a.errors {
                text.push_str(&format!("error: {e}\n"));
            }
            emit(&text)
        }
    }
}

/// Prints a lap comparison: the laps and the delta at the line, then sector, braking-zone and
/// corner tables (negative deltas: lap B gained), or all of it as JSON.
pub fn print_compare(
    c: &crate::analysis::compare::Comparison,
    format: Format,
    plot: Option<&std::path::Path>,
) -> io::Result<()> {
    if format == Format::Json {
        return emit_json(c);
    }
    let kmh = |v: f32| format!("{:.0}", v * 3.6);
    let signed = |d: f32| format!("{d:+.3}");
    let mut text = format!(
        "{}: lap B {} ({}, {}) against lap A {} ({}, {}): {:+.3} s at the line\n\n",
        c.track,
        c.b.name,
        c.b.driver,
        lap_time(c.b.lap_time_s),
        c.a.name,
        c.a.driver,
        lap_time(c.a.lap_time_s),
        c.delta_s
    );
    let sectors: Vec<Vec<String>> = c
        .sectors
        .iter()
        .map(|s| {
            vec![
                s.sector.to_string(),
                format!("{:.3}", s.a_s),
                format!("{:.3}", s.b_s),
                signed(s.delta_s),
            ]
        })
        .collect();
    text.push_str(&table(&["Sector", "A (s)", "B (s)", "B - A"], &sectors));
    let zones: Vec<Vec<String>> = c
        .zones
        .iter()
        .map(|z| {
            vec![
                format!("{:.0}", z.a_start_m),
                format!("{:+.0}", z.later_m),
                format!(
                    "{} / {}",
                    kmh(z.entry_speed_mps.0),
                    kmh(z.entry_speed_mps.1)
                ),
                format!("{} / {}", kmh(z.min_speed_mps.0), kmh(z.min_speed_mps.1)),
                signed(z.delta_s),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &[
            "Braking at (m)",
            "B later (m)",
            "Entry km/h A / B",
            "Min km/h A / B",
            "B - A (s)",
        ],
        &zones,
    ));
    let corners: Vec<Vec<String>> = c
        .corners
        .iter()
        .map(|k| {
            let m = |x: Option<f32>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"));
            vec![
                format!("{:.0}", k.apex_m),
                if k.direction > 0 { "left" } else { "right" }.into(),
                format!("{} / {}", kmh(k.apex_speed_mps.0), kmh(k.apex_speed_mps.1)),
                format!("{} / {}", m(k.throttle_m.0), m(k.throttle_m.1)),
                signed(k.delta_s),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &[
            "Apex (m)",
            "Turn",
            "Apex km/h A / B",
            "Throttle at (m) A / B",
            "B - A (s)",
        ],
        &corners,
    ));
    text.push_str(&format!(
        "\n{} zone(s) and corner(s) without a match within the window\n",
        c.unmatched
    ));
    if let Some(p) = plot {
        text.push_str(&format!("plot: {}\n", p.display()));
    }
    emit(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lap_times_format_as_minutes_seconds_millis() {
        assert_eq!(lap_time(83.4567), "1:23.457");
        assert_eq!(lap_time(59.9994), "59.999");
        assert_eq!(lap_time(120.0), "2:00.000");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["Pos", "Name"],
            &[
                vec!["1".into(), "Ann".into()],
                vec!["10".into(), "Bo".into()],
            ],
        );
        assert_eq!(t, "Pos  Name\n--- -----\n  1  Ann\n 10  Bo\n");
    }
}

/// `ingest --upload` and `outbox retry`: what the uploader did.
pub fn print_upload(
    r: &crate::coach::UploadReport,
    reset: usize,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            upload: &'a crate::coach::UploadReport,
            reset: usize,
        }
        return emit_json(&Out { upload: r, reset });
    }
    let mut text = format!(
        "upload: {} delivered, {} waiting in the outbox, {} refused",
        r.delivered, r.waiting, r.failed
    );
    if r.retried > 0 {
        text.push_str(&format!(", {} attempts to retry", r.retried));
    }
    if r.interrupted > 0 {
        text.push_str(&format!(", {} interrupted", r.interrupted));
    }
    text.push_str(&format!(" ({:.1} MB sent)\n", r.bytes_sent as f64 / 1e6));
    for e in &r.errors {
        text.push_str(&format!("  {e}\n"));
    }
    emit(&text)
}

/// `apexsim outbox ls`.
pub fn print_outbox(
    entries: &[crate::archive::outbox::Entry],
    counts: &crate::archive::outbox::Counts,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            entries: &'a [crate::archive::outbox::Entry],
            counts: &'a crate::archive::outbox::Counts,
        }
        return emit_json(&Out { entries, counts });
    }
    let now = crate::archive::outbox::now_ms();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let next = if matches!(
                e.state,
                crate::archive::outbox::State::Pending | crate::archive::outbox::State::LapSent
            ) && e.next_at_ms > now
            {
                format!("in {:.0} s", (e.next_at_ms - now) as f64 / 1e3)
            } else {
                String::new()
            };
            vec![
                e.id.to_string(),
                e.state.as_str().into(),
                e.session.to_string()[..8].to_owned(),
                e.car.to_string(),
                e.lap.to_string(),
                e.attempts.to_string(),
                next,
                e.url.clone(),
                e.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "ID",
            "STATE",
            "SESSION",
            "CAR",
            "LAP",
            "ATTEMPTS",
            "NEXT",
            "SERVER",
            "LAST ERROR",
        ],
        &rows,
    );
    text.push_str(&format!(
        "{} pending, {} lap sent, {} being sent, {} delivered, {} refused\n",
        counts.pending, counts.lap_sent, counts.in_flight, counts.done, counts.failed
    ));
    emit(&text)
}

/// The device login's code, for the user to confirm.
pub fn print_device_code(a: &crate::coach::api::DeviceAuthorizationResponse) -> io::Result<()> {
    emit(&format!(
        "To log this device in, open {}\nand enter the code {} (valid {} minutes). Waiting...\n",
        a.verification_uri,
        a.user_code,
        (a.expires_in + 59) / 60
    ))
}

/// `coach login` succeeded.
pub fn print_logged_in(server: &str, file: &std::path::Path) -> io::Result<()> {
    emit(&format!(
        "Logged in to {server}; the device token is in {} (readable only by you).\n",
        file.display()
    ))
}

/// `coach logout`.
pub fn print_logged_out(removed: usize) -> io::Result<()> {
    emit(&format!("Removed {removed} stored device token(s).\n"))
}

/// A server in `coach status`.
#[derive(Debug, Clone, Serialize)]
pub struct CoachServer {
    /// Its URL.
    pub url: String,
    /// The device's name there.
    pub device_name: String,
    /// The token, masked.
    pub token: String,
    /// When it was stored.
    pub saved_at: String,
    /// What its health endpoint said.
    pub health: String,
}

/// A token shown without giving it away: its first four characters.
pub fn masked(token: &str) -> String {
    let head: String = token.chars().take(4).collect();
    format!("{head}…")
}

/// `apexsim coach status`.
pub fn print_coach_status(
    file: &std::path::Path,
    servers: &[CoachServer],
    counts: &crate::archive::outbox::Counts,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct Out<'a> {
            credentials: &'a std::path::Path,
            servers: &'a [CoachServer],
            outbox: &'a crate::archive::outbox::Counts,
        }
        return emit_json(&Out {
            credentials: file,
            servers,
            outbox: counts,
        });
    }
    let mut text = if servers.is_empty() {
        format!(
            "Not logged in to any Racing Coach server ({}).\n",
            file.display()
        )
    } else {
        let rows: Vec<Vec<String>> = servers
            .iter()
            .map(|s| {
                vec![
                    s.url.clone(),
                    s.device_name.clone(),
                    s.token.clone(),
                    s.saved_at.clone(),
                    s.health.clone(),
                ]
            })
            .collect();
        table(&["SERVER", "DEVICE", "TOKEN", "SINCE", "HEALTH"], &rows)
    };
    text.push_str(&format!(
        "outbox: {} pending, {} lap sent, {} delivered, {} refused\n",
        counts.pending, counts.lap_sent, counts.done, counts.failed
    ));
    emit(&text)
}
