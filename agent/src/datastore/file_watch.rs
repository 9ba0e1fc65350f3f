//! Watching the files datastore's directory: files added, changed, removed,
//! renamed (editors' atomic saves), and the directory itself replaced.
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::FileDatastore;

/// Quiet time after the last file event before reloading (editors write a temp
/// file, then rename it; `git checkout` touches many files).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The longest a change waits for quiet: a directory that never goes quiet
/// (a file rewritten every few ms) is still reloaded this long after the first
/// event of a burst.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// How often a datastore directory that is missing is looked for again (besides
/// the watch on its parent, which sees it come back at once).
pub const RETRY: Duration = Duration::from_secs(1);

/// What a file event means for the datastore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// A policy file (or a directory that may hold some) changed.
    Change,
    /// The datastore directory itself was created, removed, renamed or
    /// replaced: its watch must be made again.
    Dir,
}

/// Receives one message per burst of changes under the directory.
pub struct Changes {
    watcher: notify::RecommendedWatcher,
    /// The datastore directory, absolute (as the events name it).
    dir: PathBuf,
    rx: mpsc::UnboundedReceiver<Signal>,
    /// The directory's watch is stale or missing (the directory was renamed
    /// away, removed or replaced): watch it again before the next load.
    rewatch: bool,
}

impl Changes {
    /// Waits for the next change to a policy file, then for [`DEBOUNCE`] of
    /// quiet but at most [`MAX_WAIT`] after that first event; `None` when the
    /// watcher is gone.
    pub async fn next(&mut self) -> Option<()> {
        loop {
            let got = if self.rewatch {
                match timeout(RETRY, self.rx.recv()).await {
                    Ok(got) => got,
                    // Still missing, or back without an event we saw.
                    Err(_) if self.try_rewatch() => return Some(()),
                    Err(_) => continue,
                }
            } else {
                self.rx.recv().await
            };
            self.note(got?);
            break;
        }
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match timeout(DEBOUNCE.min(left), self.rx.recv()).await {
                Ok(Some(sig)) => self.note(sig),
                Ok(None) => return None,
                Err(_) => break,
            }
        }
        if self.rewatch {
            self.try_rewatch();
        }
        Some(())
    }

    fn note(&mut self, sig: Signal) {
        if sig == Signal::Dir {
            self.rewatch = true;
        }
    }

    /// Watches the directory again (after it was renamed, removed, replaced);
    /// false while it is missing.
    fn try_rewatch(&mut self) -> bool {
        let _ = self.watcher.unwatch(&self.dir);
        match self.watcher.watch(&self.dir, RecursiveMode::Recursive) {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "watching the datastore directory again");
                self.rewatch = false;
                true
            }
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "datastore directory not watchable yet");
                false
            }
        }
    }
}

impl FileDatastore {
    /// Starts watching the directory (recursively) and, to see it renamed,
    /// removed or replaced, its parent.
    pub fn watch(&self) -> notify::Result<Changes> {
        let dir = std::path::absolute(&self.dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let events_dir = dir.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if let Some(sig) = signal(&ev, &events_dir) {
                        let _ = tx.send(sig);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "datastore watch error; reloading");
                    let _ = tx.send(Signal::Dir);
                }
            })?;
        watcher.watch(&dir, RecursiveMode::Recursive)?;
        if let Some(parent) = dir.parent() {
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %parent.display(), error = %e, "cannot watch the datastore's parent directory; a replaced datastore directory is found by polling");
            }
        }
        Ok(Changes {
            watcher,
            dir,
            rx,
            rewatch: false,
        })
    }
}

/// Whether `path` is a file the loader reads (see [`crate::model::load::parse_paths`]).
fn is_policy_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    ) && !name.starts_with(".#")
}

/// What an event means: only policy files count (and directories, which may
/// hold some); a log appended next to them does not hold up reloads.
fn signal(ev: &notify::Event, dir: &Path) -> Option<Signal> {
    if matches!(ev.kind, EventKind::Access(_)) {
        return None;
    }
    if ev.paths.is_empty() || ev.need_rescan() || ev.paths.iter().any(|p| p == dir) {
        return Some(Signal::Dir);
    }
    let inside: Vec<&PathBuf> = ev.paths.iter().filter(|p| p.starts_with(dir)).collect();
    if inside.iter().any(|p| is_policy_file(p)) {
        return Some(Signal::Change);
    }
    // A directory renamed or removed may have held policy files (a removed one
    // cannot be told from a file without an extension).
    inside
        .iter()
        .any(|p| p.is_dir() || (p.extension().is_none() && !p.exists()))
        .then_some(Signal::Change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::test_docs::{policy, POLICY};

    fn event(kind: EventKind, paths: &[&Path]) -> notify::Event {
        let mut ev = notify::Event::new(kind);
        for p in paths {
            ev = ev.add_path(p.to_path_buf());
        }
        ev
    }

    #[test]
    fn only_policy_files_and_the_directory_count() {
        use notify::event::{CreateKind, ModifyKind};
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ds");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let modify = EventKind::Modify(ModifyKind::Any);
        for (path, want) in [
            (dir.join("p.yaml"), Some(Signal::Change)),
            (dir.join("sub/p.yml"), Some(Signal::Change)),
            (dir.join("log.txt"), None),
            (dir.join(".p.yaml.swp"), None),
            (dir.join("p.yaml~"), None),
            (dir.join(".#p.yaml"), None),
            (dir.join("sub"), Some(Signal::Change)),
            (dir.join("gone-directory"), Some(Signal::Change)),
            (dir.clone(), Some(Signal::Dir)),
            (base.path().join("agent.log"), None),
            (base.path().join("other.yaml"), None),
        ] {
            assert_eq!(signal(&event(modify, &[&path]), &dir), want, "{path:?}");
        }
        assert_eq!(
            signal(
                &event(
                    EventKind::Access(notify::event::AccessKind::Any),
                    &[&dir.join("p.yaml")]
                ),
                &dir
            ),
            None
        );
        assert_eq!(
            signal(&event(EventKind::Create(CreateKind::Any), &[]), &dir),
            Some(Signal::Dir)
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A file appended every 50 ms does not hold a policy change up, and a
    /// policy file rewritten all the time is still reloaded within `MAX_WAIT`.
    #[test]
    fn a_busy_directory_still_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ds = FileDatastore::new(dir.path());
        runtime().block_on(async {
            let mut changes = ds.watch().unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = {
                let (stop, dir) = (stop.clone(), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut log = std::fs::File::create(dir.join("log.txt")).unwrap();
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        writeln!(log, "line {n}").unwrap();
                        n += 1;
                        // And a policy file rewritten every 10 ms.
                        std::fs::write(dir.join("p.yaml"), policy(&format!("p{}", n % 7), "Deny"))
                            .unwrap();
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            };
            // Reloads keep coming although the directory never goes quiet.
            for _ in 0..3 {
                let got = tokio::time::timeout(Duration::from_secs(10), changes.next()).await;
                assert_eq!(got, Ok(Some(())));
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            writer.join().unwrap();
        });
    }

    #[test]
    fn a_log_file_alone_triggers_no_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ds = FileDatastore::new(dir.path());
        runtime().block_on(async {
            let mut changes = ds.watch().unwrap();
            for n in 0..5 {
                std::fs::write(dir.path().join("log.txt"), format!("{n}\n")).unwrap();
            }
            let got = tokio::time::timeout(Duration::from_millis(1500), changes.next()).await;
            assert!(got.is_err(), "a reload for a non-policy file");
            std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(10), changes.next()).await;
            assert_eq!(got, Ok(Some(())));
        });
    }
}
