//! The files datastore: a directory of YAML documents, loaded with
//! [`crate::model::load_paths`] and watched for changes (files added, changed,
//! removed, renamed; editors' atomic saves), with the last good state of a
//! document kept while its new text is rejected.
pub mod kubernetes;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::model::ir::{EndpointKind, Model, PolicyKind};
use crate::model::load::{finish_keeping, parse_paths, resource_id, Document, Parsed};
use crate::model::{Diagnostic, Loaded, Severity};

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

pub struct FileDatastore {
    pub dir: PathBuf,
}

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
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn load(&self) -> Loaded {
        self.load_keeping(&[]).loaded
    }

    /// Loads the directory, keeping the last good state (`previous`: the
    /// documents of the last load that was installed) where files are broken,
    /// and all of it when the directory itself is missing or unreadable (see
    /// [`finish_keeping`]).
    pub fn load_keeping(&self, previous: &[Document]) -> FileLoad {
        let problem = match std::fs::read_dir(&self.dir) {
            Ok(_) if self.dir.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(e) => Some(e.to_string()),
        };
        let parsed = match &problem {
            None => parse_paths(&[&self.dir]),
            Some(e) => Parsed {
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    file: self.dir.clone(),
                    line: 1,
                    resource: String::new(),
                    field: String::new(),
                    message: format!(
                        "cannot read the datastore directory: {e}; the last good state stays enforced"
                    ),
                }],
                ..Parsed::default()
            },
        };
        let (loaded, kept) = finish_keeping(parsed, previous);
        FileLoad {
            loaded,
            kept,
            problem: problem
                .map(|e| format!("directory {}: {e}; last state kept", self.dir.display())),
        }
    }

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

/// A load of the files datastore.
pub struct FileLoad {
    pub loaded: Loaded,
    /// Identities of documents kept from the last good state.
    pub kept: Vec<String>,
    /// Why the directory could not be read, if it could not.
    pub problem: Option<String>,
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

/// Keeps the last good state of documents that are now rejected: a policy or
/// endpoint that `previous` had and `loaded` lost because its document has an
/// error (named by the diagnostic's resource, or, for a document that could not
/// be read far enough to name it, by its file) is carried over, so that a
/// broken edit never loosens what is enforced. Returns what was carried over.
pub fn keep_last_good(loaded: &mut Loaded, previous: &Loaded) -> Vec<String> {
    let errors: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if errors.is_empty() {
        return Vec::new();
    }
    let named: HashSet<&str> = errors
        .iter()
        .filter(|d| !d.resource.is_empty())
        .map(|d| d.resource.as_str())
        .collect();
    let unnamed_files: HashSet<&Path> = errors
        .iter()
        .filter(|d| d.resource.is_empty())
        .map(|d| d.file.as_path())
        .collect();
    let mut kept = Vec::new();
    let model: &mut Model = &mut loaded.model;
    for p in &previous.model.policies {
        if model.policies.iter().any(|q| q.id == p.id) {
            continue;
        }
        let ns = p.id.namespace.as_deref();
        let mut ids = vec![resource_id(p.id.kind.as_str(), ns, &p.id.name)];
        if p.id.kind == PolicyKind::KubernetesNetworkPolicy {
            ids.push(resource_id("NetworkPolicy", ns, &p.id.name));
        }
        let by_name = ids.iter().any(|id| named.contains(id.as_str()));
        let by_file = previous
            .policy_sources
            .get(&p.id)
            .is_some_and(|s| unnamed_files.contains(s.file.as_path()));
        if by_name || by_file {
            kept.push(ids[0].clone());
            model.policies.push(p.clone());
            if let Some(src) = previous.policy_sources.get(&p.id) {
                loaded.policy_sources.insert(p.id.clone(), src.clone());
            }
        }
    }
    for e in &previous.model.endpoints {
        let kind = match e.kind {
            EndpointKind::Workload => "WorkloadEndpoint",
            EndpointKind::Host => "HostEndpoint",
        };
        let id = resource_id(kind, e.namespace.as_deref(), &e.name);
        if named.contains(id.as_str())
            && !model
                .endpoints
                .iter()
                .any(|f| f.kind == e.kind && f.key() == e.key())
        {
            kept.push(id);
            model.endpoints.push(e.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny-db\nspec:\n  selector: app == 'db'\n  ingress:\n    - action: Deny\n";

    #[test]
    fn a_rejected_edit_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, POLICY).unwrap();
        let ds = FileDatastore::new(dir.path());
        let good = ds.load();
        assert_eq!(good.model.policies.len(), 1);

        // Named in the diagnostic.
        std::fs::write(&file, POLICY.replace("action: Deny", "action: Nope")).unwrap();
        let mut now = ds.load();
        assert!(now.has_errors());
        assert_eq!(now.model.policies.len(), 0);
        let kept = keep_last_good(&mut now, &good);
        assert_eq!(kept, vec!["GlobalNetworkPolicy/deny-db".to_string()]);
        assert_eq!(now.model.policies, good.model.policies);

        // Not even YAML: carried over by file.
        std::fs::write(&file, "kind: [").unwrap();
        let mut now = ds.load();
        assert!(now.has_errors());
        keep_last_good(&mut now, &good);
        assert_eq!(now.model.policies, good.model.policies);

        // Removed: gone (no error, nothing kept).
        std::fs::remove_file(&file).unwrap();
        let mut now = ds.load();
        assert!(keep_last_good(&mut now, &good).is_empty());
        assert!(now.model.policies.is_empty());
    }

    const ENDPOINT: &str = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: db\n  namespace: prod\n  labels:\n    app: db\nspec:\n  interfaceName: calidb\n  ipNetworks: [10.65.0.30/32]\n";

    fn policy_names(l: &Loaded) -> Vec<String> {
        l.model.policies.iter().map(|p| p.id.name.clone()).collect()
    }

    fn policy(name: &str, action: &str) -> String {
        POLICY
            .replace("deny-db", name)
            .replace("action: Deny", &format!("action: {action}"))
    }

    /// The last good load of `ds` and a new load keeping it.
    fn reload(ds: &FileDatastore, good: &Loaded) -> FileLoad {
        ds.load_keeping(&good.documents)
    }

    #[test]
    fn a_file_cut_short_in_its_metadata_keeps_everything_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let text = format!("{ENDPOINT}---\n{POLICY}");
        std::fs::write(&file, &text).unwrap();
        let ds = FileDatastore::new(dir.path());
        let good = ds.load();
        assert!(!good.has_errors(), "{:?}", good.diagnostics);
        assert_eq!(policy_names(&good), ["deny-db"]);
        // Cut at every point of the policy's metadata: the name is gone, empty
        // or partial (what a crashed editor or a half-copied file leaves).
        let policy_at = text.find("kind: GlobalNetworkPolicy").unwrap();
        let spec_at = text[policy_at..].find("spec:").unwrap() + policy_at;
        let mut broken = 0;
        for cut in policy_at..spec_at + "spec:\n".len() {
            std::fs::write(&file, &text[..cut]).unwrap();
            if !ds.load().has_errors() {
                // e.g. `name: deny-d` and nothing after: a policy without a
                // spec is valid (as in Calico), so that is a valid edit.
                continue;
            }
            broken += 1;
            let now = reload(&ds, &good);
            assert_eq!(policy_names(&now.loaded), ["deny-db"], "cut at {cut}");
            assert_eq!(now.loaded.model.policies, good.model.policies);
            assert_eq!(now.loaded.model.endpoints, good.model.endpoints);
            assert!(
                now.kept
                    .contains(&"GlobalNetworkPolicy/deny-db".to_string()),
                "cut at {cut}: {:?}",
                now.kept
            );
            assert!(now.problem.is_none());
        }
        // Most cuts are broken documents: in `apiVersion`, `kind`, `metadata`, an
        // empty name, `spec:` with nothing.
        assert!(broken >= 40, "{broken} broken cuts");
        // Cut before the policy document's first field: the endpoint is
        // whole and nothing is wrong, so the policy is removed (a valid edit).
        std::fs::write(&file, ENDPOINT).unwrap();
        let now = reload(&ds, &good);
        assert!(now.kept.is_empty());
        assert!(policy_names(&now.loaded).is_empty());
        assert_eq!(now.loaded.model.endpoints, good.model.endpoints);
    }

    #[test]
    fn a_document_removed_from_a_file_that_became_broken_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let a = policy("a", "Deny");
        let b = policy("b", "Deny");
        std::fs::write(&file, format!("{a}---\n{b}")).unwrap();
        let ds = FileDatastore::new(dir.path());
        let good = ds.load();
        assert_eq!(policy_names(&good), ["a", "b"]);
        // `b` gone, and the file is broken elsewhere: `b` is kept too.
        std::fs::write(&file, format!("{a}---\nkind: [\n")).unwrap();
        let now = reload(&ds, &good);
        assert_eq!(policy_names(&now.loaded), ["a", "b"]);
        assert_eq!(now.kept, ["GlobalNetworkPolicy/b"]);
        // A valid document of a broken file takes effect; the broken one keeps
        // its last good version.
        std::fs::write(
            &file,
            format!("{}---\n{}", policy("a", "Log"), policy("b", "Nope")),
        )
        .unwrap();
        let now = reload(&ds, &good);
        assert_eq!(policy_names(&now.loaded), ["a", "b"]);
        let b_now = &now.loaded.model.policies[1];
        assert_eq!(b_now, &good.model.policies[1]);
        assert_ne!(now.loaded.model.policies[0], good.model.policies[0]);
        // A valid edit removing `b`: gone.
        std::fs::write(&file, &a).unwrap();
        let now = reload(&ds, &good);
        assert!(now.kept.is_empty());
        assert_eq!(policy_names(&now.loaded), ["a"]);
    }

    #[test]
    fn an_unreadable_file_keeps_what_it_held_and_a_deleted_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let ds = FileDatastore::new(dir.path());
        std::fs::write(dir.path().join("a.yaml"), policy("a", "Deny")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), policy("b", "Deny")).unwrap();
        let good = ds.load();
        // Not UTF-8: cannot be read.
        std::fs::write(dir.path().join("b.yaml"), [0xff, 0xfe, 0x00]).unwrap();
        let now = reload(&ds, &good);
        assert!(now.loaded.has_errors());
        assert_eq!(policy_names(&now.loaded), ["a", "b"]);
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let now = reload(&ds, &good);
        assert!(!now.loaded.has_errors());
        assert_eq!(policy_names(&now.loaded), ["a"]);
    }

    #[test]
    fn a_missing_directory_keeps_the_last_state_and_says_so() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("datastore");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("e.yaml"), ENDPOINT).unwrap();
        std::fs::write(dir.join("sub/p.yaml"), POLICY).unwrap();
        let ds = FileDatastore::new(&dir);
        let good = ds.load();
        assert_eq!(good.model.endpoints.len(), 1);
        assert_eq!(policy_names(&good), ["deny-db"]);
        std::fs::rename(&dir, base.path().join("away")).unwrap();
        let now = reload(&ds, &good);
        assert!(now.problem.as_deref().unwrap().contains("last state kept"));
        assert!(now.loaded.has_errors());
        assert_eq!(now.loaded.model, good.model);
        assert_eq!(now.kept.len(), 2, "{:?}", now.kept);
        // Kept again on the next load while it is still away (from what was kept).
        let again = reload(&ds, &now.loaded);
        assert_eq!(again.loaded.model, good.model);
        std::fs::rename(base.path().join("away"), &dir).unwrap();
        let back = reload(&ds, &now.loaded);
        assert!(back.problem.is_none());
        assert!(back.kept.is_empty());
        assert!(!back.loaded.has_errors());
        assert_eq!(back.loaded.model, good.model);
        // An unreadable subdirectory keeps what it held.
        std::fs::remove_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub"), "not a directory").unwrap();
        let now = reload(&ds, &good);
        assert!(now.loaded.has_errors() || policy_names(&now.loaded).is_empty());
    }

    #[test]
    fn a_duplicate_name_keeps_the_earlier_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let ds = FileDatastore::new(dir.path());
        std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
        let good = ds.load();
        // A new file with the same name that sorts first: the one already
        // enforced stays, the newcomer is the error (its file and line).
        let dup = dir.path().join("0-dup.yaml");
        std::fs::write(&dup, format!("# a comment\n{}", policy("deny-db", "Allow"))).unwrap();
        let now = reload(&ds, &good);
        assert_eq!(now.loaded.model.policies, good.model.policies);
        let d = now
            .loaded
            .diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .unwrap();
        assert_eq!(d.file, dup);
        assert_eq!(d.line, 5, "{d}");
        assert!(d.message.contains("duplicate"), "{d}");
        assert!(d.message.contains("p.yaml:1"), "{d}");
        // Also while the owner's file is broken: its kept version wins.
        std::fs::write(dir.path().join("p.yaml"), "kind: [").unwrap();
        let now = reload(&ds, &good);
        assert_eq!(now.loaded.model.policies, good.model.policies);
        assert!(now
            .loaded
            .diagnostics
            .iter()
            .any(|d| d.file == dup && d.message.contains("duplicate")));
        // Without history, the first read wins (as `agent check` reports it).
        std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
        let fresh = ds.load();
        assert_eq!(fresh.model.policies[0].ingress[0].action, {
            let l = ds.load();
            l.model.policies[0].ingress[0].action
        });
        assert!(fresh
            .diagnostics
            .iter()
            .any(|d| d.file.ends_with("p.yaml") && d.message.contains("0-dup.yaml")));
        // The owner's file validly drops it: the other one takes over.
        std::fs::write(dir.path().join("p.yaml"), policy("other", "Deny")).unwrap();
        let now = reload(&ds, &good);
        assert!(!now.loaded.has_errors(), "{:?}", now.loaded.diagnostics);
        assert_eq!(policy_names(&now.loaded), ["deny-db", "other"]);
    }

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
