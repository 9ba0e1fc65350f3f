//! Watching the files datastore's directory: files added, changed, removed,
//! renamed (editors' atomic saves), and the directory itself replaced. The
//! paths the events name are noted for the next load ([`Seen`]), which then
//! re-reads only those files.
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::file_cache::Changed;
use super::files::lock;
use super::FileDatastore;

/// Quiet time after the last file event before reloading, with no policy
/// file still open for writing.
///
/// Why this is safe although short: a file is never read half-written on
/// purpose. A file created or written is waited for until its writer closes
/// it (inotify's close-after-write; at most [`MAX_WAIT`]), and an editor's
/// atomic save (a temporary file renamed over the old one) is complete at the
/// rename. So the quiet time only has to bridge the gap between the files of
/// one change made in several steps: `git checkout`, `tar`/`kubectl cp` and
/// `rsync` write the next file right after closing the last (well under a
/// millisecond apart), and vim's backup-by-rename creates the new file right
/// after renaming the old one away. 30 ms also covers the writer losing its
/// core for a scheduling period on a loaded machine (a few ms; 12 ms on this
/// 2-core VM under load is common). Should a writer still pause longer in
/// the middle of a change, the load sees each file either old or new (both
/// valid input; a broken file keeps its last good documents), and the
/// writer's next file is another event and another load a moment later.
/// The former 200 ms was most of the time from a file change to the new
/// verdict (docs/benchmarks.md, "Control plane").
pub const DEBOUNCE: Duration = Duration::from_millis(30);

/// The longest a change waits for quiet: a directory that never goes quiet
/// (a file rewritten every few ms) or a file kept open for writing is still
/// reloaded this long after the first event of a burst.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// How often a datastore directory that is missing is looked for again (besides
/// the watch on its parent, which sees it come back at once).
pub const RETRY: Duration = Duration::from_secs(1);

/// What a file event means for the datastore.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Signal {
    /// A policy file (or a directory that may hold some) changed.
    Change(Write),
    /// The datastore directory itself was created, removed, renamed or
    /// replaced, or events were lost: its watch must be made again (and
    /// every file read again).
    Dir,
}

/// Whether a policy file is being written.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Write {
    /// Created or written: open for writing until closed.
    Open(PathBuf),
    /// Closed after writing, removed or renamed: complete (or gone).
    Done(Vec<PathBuf>),
    /// Neither (attributes, a directory).
    Other,
}

/// The paths (relative to the datastore directory) the watcher saw change
/// since the last load took them.
#[derive(Debug, Default)]
pub(super) struct Seen {
    paths: BTreeSet<PathBuf>,
    /// Events were lost or the directory was replaced: read everything.
    all: bool,
}

impl Seen {
    /// What changed since the last call; from now on nothing.
    pub(super) fn take(&mut self) -> Changed {
        let seen = std::mem::take(self);
        if seen.all {
            Changed::Unknown
        } else {
            Changed::Paths(seen.paths)
        }
    }

    /// Notes what an event changed, before it is signalled (so a load that
    /// follows the signal reads it).
    fn note(&mut self, sig: &Signal, ev: &notify::Event, dir: &Path) {
        match sig {
            Signal::Dir => self.all = true,
            Signal::Change(_) => self.paths.extend(
                ev.paths
                    .iter()
                    .filter_map(|p| p.strip_prefix(dir).ok())
                    .map(Path::to_path_buf),
            ),
        }
    }
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
    /// Policy files created or written and not closed yet in this burst.
    writing: HashSet<PathBuf>,
    /// Shared with the datastore's loads.
    seen: Arc<Mutex<Option<Seen>>>,
}

impl Changes {
    /// Waits for the next change to a policy file, then for [`DEBOUNCE`] of
    /// quiet with no policy file open for writing, but at most [`MAX_WAIT`]
    /// after that first event; `None` when the watcher is gone.
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
            let quiet = if self.writing.is_empty() {
                DEBOUNCE.min(left)
            } else {
                left
            };
            match timeout(quiet, self.rx.recv()).await {
                Ok(Some(sig)) => self.note(sig),
                Ok(None) => return None,
                Err(_) => break,
            }
        }
        // A writer that never closes (or a hard link, created without a
        // write) holds up this burst only: its next write is seen again.
        self.writing.clear();
        if self.rewatch {
            self.try_rewatch();
        }
        Some(())
    }

    fn note(&mut self, sig: Signal) {
        match sig {
            Signal::Dir => {
                self.rewatch = true;
                self.writing.clear();
            }
            Signal::Change(Write::Open(p)) => {
                self.writing.insert(p);
            }
            Signal::Change(Write::Done(paths)) => {
                for p in paths {
                    self.writing.remove(&p);
                }
            }
            Signal::Change(Write::Other) => {}
        }
    }

    /// Watches the directory again (after it was renamed, removed, replaced);
    /// false while it is missing. The next load reads every file.
    fn try_rewatch(&mut self) -> bool {
        let _ = self.watcher.unwatch(&self.dir);
        if let Some(seen) = lock(&self.seen).as_mut() {
            seen.all = true;
        }
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
    /// removed or replaced, its parent. From now on a load re-reads only the
    /// files events named (every file after lost events).
    pub fn watch(&self) -> notify::Result<Changes> {
        let dir = std::path::absolute(&self.dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let events_dir = dir.clone();
        *lock(&self.seen) = Some(Seen {
            all: true,
            ..Seen::default()
        });
        let seen = self.seen.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let sig = match res {
                    Ok(ev) => {
                        let Some(sig) = signal(&ev, &events_dir) else {
                            return;
                        };
                        if let Some(seen) = lock(&seen).as_mut() {
                            seen.note(&sig, &ev, &events_dir);
                        }
                        sig
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "datastore watch error; reloading");
                        if let Some(seen) = lock(&seen).as_mut() {
                            seen.all = true;
                        }
                        Signal::Dir
                    }
                };
                let _ = tx.send(sig);
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
            writing: HashSet::new(),
            seen: self.seen.clone(),
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
    let closed = matches!(
        ev.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    if matches!(ev.kind, EventKind::Access(_)) && !closed {
        return None;
    }
    if ev.paths.is_empty() || ev.need_rescan() || ev.paths.iter().any(|p| p == dir) {
        return Some(Signal::Dir);
    }
    let inside: Vec<&PathBuf> = ev.paths.iter().filter(|p| p.starts_with(dir)).collect();
    if let Some(file) = inside.iter().find(|p| is_policy_file(p)) {
        return Some(Signal::Change(match ev.kind {
            EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                Write::Open(file.to_path_buf())
            }
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                Write::Done(inside.iter().map(|p| p.to_path_buf()).collect())
            }
            _ if closed => Write::Done(vec![file.to_path_buf()]),
            _ => Write::Other,
        }));
    }
    if closed {
        return None;
    }
    // A directory renamed or removed may have held policy files (a removed one
    // cannot be told from a file without an extension).
    inside
        .iter()
        .any(|p| p.is_dir() || (p.extension().is_none() && !p.exists()))
        .then_some(Signal::Change(Write::Other))
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
            (dir.join("p.yaml"), Some(Signal::Change(Write::Other))),
            (dir.join("sub/p.yml"), Some(Signal::Change(Write::Other))),
            (dir.join("log.txt"), None),
            (dir.join(".p.yaml.swp"), None),
            (dir.join("p.yaml~"), None),
            (dir.join(".#p.yaml"), None),
            (dir.join("sub"), Some(Signal::Change(Write::Other))),
            (
                dir.join("gone-directory"),
                Some(Signal::Change(Write::Other)),
            ),
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

    pub(super) fn runtime() -> tokio::runtime::Runtime {
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

/// Loads through the watcher against full loads of the same directory.
#[cfg(test)]
mod load_tests {
    use super::tests::runtime;
    use super::*;
    use crate::datastore::test_docs::{policy, ENDPOINT};
    use crate::datastore::FileLoad;
    use crate::model::load::Document;

    /// What a load gives, to compare with another.
    fn summary(l: &FileLoad) -> String {
        let docs: Vec<_> = l
            .loaded
            .documents
            .iter()
            .map(|d| (&d.file, d.line, &d.id))
            .collect();
        format!(
            "{:#?}\n{:#?}\n{docs:?}\n{:?}",
            l.loaded.model, l.loaded.diagnostics, l.kept
        )
    }

    /// Waits for the watcher's reload signal, then until the directory has
    /// been quiet for a while (every event of the edit noted).
    async fn settle(changes: &mut Changes) {
        let got = tokio::time::timeout(Duration::from_secs(10), changes.next()).await;
        assert_eq!(got, Ok(Some(())), "no reload signalled");
        while tokio::time::timeout(Duration::from_millis(300), changes.next())
            .await
            .is_ok()
        {}
    }

    /// Each edit as editors, `git` and `kubectl cp` make them; after each,
    /// the watched datastore parses only what changed and loads what a full
    /// load of the directory loads.
    #[test]
    fn a_watched_load_reads_what_changed_and_equals_a_full_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ds");
        std::fs::create_dir(&dir).unwrap();
        for i in 0..10 {
            std::fs::write(
                dir.join(format!("p{i}.yaml")),
                policy(&format!("p{i}"), "Deny"),
            )
            .unwrap();
        }
        let ds = FileDatastore::new(&dir);
        type EditFn = Box<dyn Fn(&Path)>;
        let edits: Vec<(&str, usize, EditFn)> = vec![
            (
                "written in place",
                1,
                Box::new(|d| std::fs::write(d.join("p1.yaml"), policy("p1", "Allow")).unwrap()),
            ),
            (
                "atomic save (temporary file renamed over)",
                1,
                Box::new(|d| {
                    std::fs::write(d.join(".p2.yaml.tmp"), policy("p2", "Log")).unwrap();
                    std::fs::rename(d.join(".p2.yaml.tmp"), d.join("p2.yaml")).unwrap();
                }),
            ),
            (
                "backup by rename, then written",
                1,
                Box::new(|d| {
                    std::fs::rename(d.join("p3.yaml"), d.join("p3.yaml~")).unwrap();
                    std::fs::write(d.join("p3.yaml"), policy("p3", "Allow")).unwrap();
                    std::fs::remove_file(d.join("p3.yaml~")).unwrap();
                }),
            ),
            (
                "broken",
                1,
                Box::new(|d| std::fs::write(d.join("p4.yaml"), "kind: [").unwrap()),
            ),
            (
                "a document moved to another file",
                1,
                Box::new(|d| {
                    std::fs::remove_file(d.join("p5.yaml")).unwrap();
                    std::fs::write(
                        d.join("p6.yaml"),
                        format!("{}---\n{}", policy("p5", "Deny"), policy("p6", "Deny")),
                    )
                    .unwrap();
                }),
            ),
            (
                "a duplicate in a new file",
                1,
                Box::new(|d| std::fs::write(d.join("0-dup.yaml"), policy("p7", "Allow")).unwrap()),
            ),
            (
                "a new directory with files (kubectl cp -r)",
                2,
                Box::new(|d| {
                    std::fs::create_dir_all(d.join("more/deep")).unwrap();
                    std::fs::write(d.join("more/e.yaml"), ENDPOINT).unwrap();
                    std::fs::write(d.join("more/deep/q.yaml"), policy("q", "Deny")).unwrap();
                }),
            ),
            (
                "a directory renamed",
                2,
                Box::new(|d| std::fs::rename(d.join("more"), d.join("moved")).unwrap()),
            ),
            (
                "a directory removed",
                0,
                Box::new(|d| std::fs::remove_dir_all(d.join("moved")).unwrap()),
            ),
            (
                "a file deleted",
                0,
                Box::new(|d| std::fs::remove_file(d.join("p8.yaml")).unwrap()),
            ),
        ];
        runtime().block_on(async {
            let mut changes = ds.watch().unwrap();
            let mut previous: Vec<Document> = ds.load_keeping(&[]).loaded.documents;
            for (what, parsed, edit) in edits {
                edit(&dir);
                settle(&mut changes).await;
                let now = ds.load_keeping(&previous);
                let full = FileDatastore::new(&dir).load_keeping(&previous);
                assert_eq!(summary(&now), summary(&full), "{what}");
                assert_eq!(now.parsed_files, parsed, "{what}");
                previous = now.loaded.documents;
            }
        });
    }
}
