//! Content hot reload (seed 003 section 10): the content directory is watched with `notify`;
//! after a burst of changes has been quiet for the debounce time, the directory is loaded
//! again over the previous content ([`Content::reload`]) and handed to the simulation thread,
//! which gives it to the lobby (new sessions use it; sessions already made keep theirs). A
//! file that no longer loads is logged with its file and line and quarantined: its previous
//! version stays. What is quarantined is kept for `/ready` and written to
//! `<data>/content_status.json` for `apexsim content`.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::sim::ToSim;
use crate::content::{Content, Quarantined};

/// The file the server writes its content status to, under the data directory.
pub const STATUS_FILE: &str = "content_status.json";

/// What the server's content looks like now, for `/ready` and `apexsim content`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContentStatus {
    /// Reloads done since the start.
    pub reloads: u64,
    /// Unix seconds of the last load.
    pub loaded_at: i64,
    /// Cars loaded.
    pub cars: usize,
    /// Tracks loaded.
    pub tracks: usize,
    /// Templates loaded, active or not.
    pub templates: usize,
    /// Templates inactive (disabled, or a track or car missing), by slug.
    pub inactive_templates: Vec<String>,
    /// Entries whose file does not load: the previous version is in use.
    pub quarantined: Vec<QuarantinedEntry>,
}

/// A quarantined entry, as reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuarantinedEntry {
    /// "car", "track" or "template".
    pub kind: String,
    /// The entry kept.
    pub slug: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with the line.
    pub error: String,
}

impl ContentStatus {
    /// The status of `content`.
    pub fn of(content: &Content, reloads: u64) -> Self {
        Self {
            reloads,
            loaded_at: crate::runner::unix_now(),
            cars: content.cars.len(),
            tracks: content.tracks.len(),
            templates: content.templates.len(),
            inactive_templates: content
                .templates
                .iter()
                .filter(|t| !t.active)
                .map(|t| t.slug.clone())
                .collect(),
            quarantined: content
                .quarantined
                .iter()
                .map(|q: &Quarantined| QuarantinedEntry {
                    kind: q.kind.to_owned(),
                    slug: q.slug.clone(),
                    path: q.path.clone(),
                    error: q.error.clone(),
                })
                .collect(),
        }
    }

    /// Writes the status to `<data>/content_status.json` (through a temporary file, so a
    /// reader never sees half of it).
    ///
    /// # Errors
    /// The I/O error.
    pub fn write(&self, data: &Path) -> std::io::Result<()> {
        let path = data.join(STATUS_FILE);
        let tmp = data.join(format!("{STATUS_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }

    /// Reads what a server wrote under `data`, if it did.
    pub fn read(data: &Path) -> Option<Self> {
        let text = std::fs::read(data.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// The content the server has now, with its status: shared by the watcher (which replaces it
/// on each reload) and the HTTP side (`/ready`, the track maps of the live page).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The content.
    pub content: Arc<Content>,
    /// What it looks like.
    pub status: ContentStatus,
}

impl Loaded {
    /// The content as first loaded.
    pub fn new(content: Arc<Content>) -> Self {
        let status = ContentStatus::of(&content, 0);
        Self { content, status }
    }
}

/// Watches a content directory until dropped.
pub struct ContentWatcher {
    _watcher: notify::RecommendedWatcher,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<std_mpsc::Sender<()>>,
}

impl Drop for ContentWatcher {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a file-system event can change what loads (reads and attribute changes cannot).
fn changes_content(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    ) && !matches!(
        kind,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_))
    )
}

/// Starts watching `dir`: reloads go to the simulation through `to_sim`, the content and its
/// status to `loaded` and `<data>/content_status.json`.
///
/// # Errors
/// What `notify` says when the directory cannot be watched.
pub fn watch(
    dir: &Path,
    data: &Path,
    initial: Arc<Content>,
    debounce: Duration,
    to_sim: mpsc::Sender<ToSim>,
    loaded: Arc<Mutex<Loaded>>,
) -> notify::Result<ContentWatcher> {
    let (events_tx, events) = std_mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && changes_content(&event.kind)
        {
            let _ = events_tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let (stop_tx, stop) = std_mpsc::channel::<()>();
    let (dir, data) = (dir.to_owned(), data.to_owned());
    let thread = std::thread::Builder::new()
        .name("apexsim-content".into())
        .spawn(move || {
            let mut current = initial;
            let mut reloads = 0;
            loop {
                // Wait for a change, checking now and then whether to stop.
                match events.recv_timeout(Duration::from_millis(200)) {
                    Ok(()) => {}
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        if matches!(
                            stop.try_recv(),
                            Err(std_mpsc::TryRecvError::Disconnected)
                        ) {
                            return;
                        }
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
                // Then for the burst to be over.
                while events.recv_timeout(debounce).is_ok() {}
                let report = Content::reload(&dir, &current);
                for e in &report.errors {
                    tracing::warn!(error = %e, "content: a file does not load");
                }
                for q in &report.content.quarantined {
                    tracing::warn!(kind = q.kind, slug = %q.slug, path = %q.path.display(), "content: quarantined, the previous version stays");
                }
                reloads += 1;
                current = Arc::new(report.content);
                tracing::info!(
                    cars = current.cars.len(),
                    tracks = current.tracks.len(),
                    templates = current.templates.len(),
                    quarantined = current.quarantined.len(),
                    "content reloaded"
                );
                let s = ContentStatus::of(&current, reloads);
                if let Err(e) = s.write(&data) {
                    tracing::warn!(error = %e, "cannot write the content status");
                }
                if let Ok(mut shared) = loaded.lock() {
                    *shared = Loaded {
                        content: current.clone(),
                        status: s,
                    };
                }
                if to_sim.blocking_send(ToSim::Content(current.clone())).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(ContentWatcher {
        _watcher: watcher,
        thread: Some(thread),
        stop: Some(stop_tx),
    })
}
