//! What a person watches on a terminal while a command runs: the live timing board of a race
//! (redrawn in place) and the progress bar of long jobs (on standard error).

use std::io;

use apexsim::race::{Board, Gap, Phase, RaceEvent};

use super::print::{Format, emit, lap_time, table};

pub fn gap_text(gap: Gap) -> String {
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
