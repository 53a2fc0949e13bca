//! One fsync schedule for every write-ahead file of the process that syncs at the same
//! interval: a single thread wakes once per interval and fsyncs each registered file that was
//! written since its last sync. A thousand recording sessions cost one thread, not a thousand,
//! and an idle file (a live session between laps) is not synced at all.
//!
//! A file registers with [`register`] and stays on the schedule as long as its [`Scheduled`]
//! handle lives; dropping the handle takes it off (and syncs it one last time when it was
//! written since the last round).

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A file on the schedule.
#[derive(Debug)]
struct Entry {
    file: File,
    dirty: AtomicBool,
    syncs: AtomicU64,
}

impl Entry {
    fn sync_if_dirty(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            match self.file.sync_data() {
                Ok(()) => {
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(error = %e, "write-ahead fsync failed"),
            }
        }
    }
}

/// The files of one interval, synced by one thread.
#[derive(Debug, Default)]
struct Schedule {
    files: Mutex<Vec<Weak<Entry>>>,
}

impl Schedule {
    fn run(self: Arc<Self>, every: Duration) {
        let mut next = Instant::now() + every;
        loop {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            // A round longer than the interval starts the next one at once, never a burst.
            next = (next + every).max(Instant::now());
            let live: Vec<Arc<Entry>> = match self.files.lock() {
                Ok(mut files) => {
                    files.retain(|f| f.strong_count() > 0);
                    files.iter().filter_map(Weak::upgrade).collect()
                }
                Err(_) => return,
            };
            for entry in live {
                entry.sync_if_dirty();
            }
        }
    }
}

/// The running schedules, by interval (started on first use, for the life of the process).
fn schedules() -> &'static Mutex<HashMap<Duration, Arc<Schedule>>> {
    static SCHEDULES: OnceLock<Mutex<HashMap<Duration, Arc<Schedule>>>> = OnceLock::new();
    SCHEDULES.get_or_init(Default::default)
}

/// A file's place on its schedule. Dropping it takes the file off.
#[derive(Debug)]
pub struct Scheduled {
    entry: Arc<Entry>,
}

impl Scheduled {
    /// Marks the file written: the next round syncs it.
    pub fn written(&self) {
        self.entry.dirty.store(true, Ordering::Release);
    }

    /// How many times the schedule synced the file.
    pub fn syncs(&self) -> u64 {
        self.entry.syncs.load(Ordering::Relaxed)
    }

    /// Takes the file off the schedule without a last sync (it is being removed).
    pub fn forget(self) {
        self.entry.dirty.store(false, Ordering::Release);
    }
}

impl Drop for Scheduled {
    fn drop(&mut self) {
        self.entry.sync_if_dirty();
    }
}

/// Puts `file` (a handle of its own, from `try_clone`) on the schedule for `every`, starting
/// that schedule's thread if it is the first.
///
/// # Errors
/// When the schedule's thread cannot be spawned.
pub fn register(file: File, every: Duration) -> std::io::Result<Scheduled> {
    let entry = Arc::new(Entry {
        file,
        dirty: AtomicBool::new(false),
        syncs: AtomicU64::new(0),
    });
    let mut all = schedules()
        .lock()
        .map_err(|_| std::io::Error::other("the fsync schedule is poisoned"))?;
    let schedule = match all.get(&every) {
        Some(s) => Arc::clone(s),
        None => {
            let s = Arc::new(Schedule::default());
            let runner = Arc::clone(&s);
            std::thread::Builder::new()
                .name("apexsim-wal-sync".into())
                .spawn(move || runner.run(every))?;
            all.insert(every, Arc::clone(&s));
            s
        }
    };
    drop(all);
    if let Ok(mut files) = schedule.files.lock() {
        files.push(Arc::downgrade(&entry));
    }
    Ok(Scheduled { entry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_written_files_are_synced_and_one_thread_serves_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let every = Duration::from_millis(30);
        let mut files = Vec::new();
        let mut handles = Vec::new();
        for i in 0..50 {
            let mut f = File::create(dir.path().join(format!("{i}"))).expect("file");
            f.write_all(b"x").expect("write");
            handles.push(register(f.try_clone().expect("clone"), every).expect("register"));
            files.push(f);
        }
        for h in handles.iter().step_by(2) {
            h.written();
        }
        std::thread::sleep(every * 4);
        for (i, h) in handles.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(h.syncs(), 1, "written once, synced once");
            } else {
                assert_eq!(h.syncs(), 0, "never written, never synced");
            }
        }
        let threads = std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "apexsim-wal-sync")
                    })
                    .count()
            })
            .unwrap_or(1);
        assert!(threads < 10, "{threads} sync threads for 50 files");
        // Taken off when dropped, synced one last time if written.
        let last = handles.pop().expect("a handle");
        last.written();
        let entry = Arc::downgrade(&last.entry);
        drop(last);
        assert!(entry.upgrade().is_none());
    }
}
