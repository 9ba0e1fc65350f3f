//! The files datastore: a directory of YAML documents, loaded with the last
//! good state of a document kept while its new text is rejected.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::file_cache::{Changed, FileCache};
use super::file_watch::Seen;
use crate::model::assemble;
use crate::model::load::{finish_keeping_cached, Document, Parsed};
use crate::model::{Diagnostic, Loaded, Severity};

/// A directory of YAML documents. Clones share what is kept between loads
/// (each file's parsed documents) and what the watcher saw change.
#[derive(Clone)]
pub struct FileDatastore {
    pub dir: PathBuf,
    cache: Arc<Mutex<FileCache>>,
    /// The last model's workload endpoints, for the next model to reuse
    /// where their documents and context did not change.
    assembled: Arc<Mutex<assemble::Cache>>,
    /// What changed since the last load, from [`FileDatastore::watch`]'s
    /// events; None until watched (then every load reads every file).
    pub(super) seen: Arc<Mutex<Option<Seen>>>,
}

/// A lock that a panic elsewhere does not poison for good (what is behind it
/// is rebuilt on the next load when in doubt).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileDatastore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cache: Arc::default(),
            assembled: Arc::default(),
            seen: Arc::default(),
        }
    }

    pub fn load(&self) -> Loaded {
        self.load_keeping(&[]).loaded
    }

    /// Loads the directory, keeping the last good state (`previous`: the
    /// documents of the last load that was installed) where files are broken,
    /// and all of it when the directory itself is missing or unreadable (see
    /// [`crate::model::load::finish_keeping`]). Re-parses only the files that changed since the
    /// last load (all files are read again unless watched).
    pub fn load_keeping(&self, previous: &[Document]) -> FileLoad {
        self.load_keeping_on(previous, None)
    }

    /// [`Self::load_keeping`], the endpoints made for `node` (see
    /// [`crate::model::assemble::Cache::on_node`]).
    fn load_keeping_on(&self, previous: &[Document], node: Option<&str>) -> FileLoad {
        let problem = match std::fs::read_dir(&self.dir) {
            Ok(_) if self.dir.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(e) => Some(e.to_string()),
        };
        let mut cache = lock(&self.cache);
        let parsed = match &problem {
            None => {
                let changed = lock(&self.seen)
                    .as_mut()
                    .map_or(Changed::Unknown, Seen::take);
                cache.load(&self.dir, changed)
            }
            Some(e) => {
                cache.forget();
                Parsed {
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
                }
            }
        };
        let parsed_files = cache.parsed;
        drop(cache);
        let (loaded, kept) = {
            let mut assembled = lock(&self.assembled);
            assembled.on_node(node);
            finish_keeping_cached(parsed, previous, &mut assembled)
        };
        FileLoad {
            loaded,
            kept,
            problem: problem
                .map(|e| format!("directory {}: {e}; last state kept", self.dir.display())),
            parsed_files,
        }
    }

    /// A load as the daemon makes it: keeping the last good state
    /// ([`Self::load_keeping`]), with the interfaces of `node`'s workload
    /// endpoints only (the others are peers).
    pub fn load_for_node(&self, previous: &[Document], node: &str) -> FileLoad {
        let mut l = self.load_keeping_on(previous, Some(node));
        crate::model::node::keep_this_node(&mut l.loaded, node);
        l
    }
}

/// A load of the files datastore.
pub struct FileLoad {
    pub loaded: Loaded,
    /// Identities of documents kept from the last good state.
    pub kept: Vec<String>,
    /// Why the directory could not be read, if it could not.
    pub problem: Option<String>,
    /// Files read and parsed again (the others' documents were kept from the
    /// last load).
    pub parsed_files: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::keep_last_good;
    use crate::datastore::test_docs::{policy, policy_names, reload, ENDPOINT, POLICY};

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

    /// The datastore's cache makes other nodes' endpoints as peers for the
    /// node it loads for: the model is the one an uncached load gives, and
    /// loading for another node (or for none) makes them again.
    #[test]
    fn a_load_for_a_node_is_the_uncached_load_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let on = |node: &str, name: &str, ip: &str| {
            ENDPOINT
                .replace("name: db", &format!("name: {name}"))
                .replace("calidb", &format!("cali{name}"))
                .replace("10.65.0.30", ip)
                .replace("spec:\n", &format!("spec:\n  node: {node}\n"))
        };
        std::fs::write(dir.path().join("a.yaml"), on("node-a", "a", "10.65.0.1")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), on("node-b", "b", "10.65.0.2")).unwrap();
        std::fs::write(dir.path().join("p.yaml"), POLICY).unwrap();
        let uncached = |node: &str| {
            let mut l = FileDatastore::new(dir.path()).load_keeping(&[]);
            crate::model::node::keep_this_node(&mut l.loaded, node);
            l.loaded.model
        };
        let local = |model: &crate::model::ir::Model| -> Vec<String> {
            let with_interface = model.endpoints.iter().filter(|e| e.interface.is_some());
            with_interface.map(|e| e.name.clone()).collect()
        };
        let ds = FileDatastore::new(dir.path());
        let first = ds.load_for_node(&[], "node-a");
        assert_eq!(local(&first.loaded.model), ["a"]);
        assert_eq!(first.loaded.model, uncached("node-a"));
        // Again from the cache, after a change elsewhere.
        std::fs::write(dir.path().join("p.yaml"), policy("deny-db", "Allow")).unwrap();
        let again = ds.load_for_node(&first.loaded.documents, "node-a");
        assert_eq!(again.loaded.model, uncached("node-a"));
        assert!(Arc::ptr_eq(
            &first.loaded.model.endpoints[1],
            &again.loaded.model.endpoints[1]
        ));
        // Another node, then none: made again for it.
        let b = ds.load_for_node(&again.loaded.documents, "node-b");
        assert_eq!(local(&b.loaded.model), ["b"]);
        assert_eq!(b.loaded.model, uncached("node-b"));
        let none = ds.load_keeping(&b.loaded.documents);
        assert_eq!(local(&none.loaded.model), ["a", "b"]);
    }
}
