//! The files datastore: a directory of YAML documents, loaded with
//! [`crate::model::load_paths`] and watched for changes (files added, changed,
//! removed, renamed; editors' atomic saves), with the last good state of a
//! document kept while its new text is rejected.
pub mod calico_api;
pub mod kubernetes;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::model::ir::{EndpointKind, Model, PolicyKind};
use crate::model::load::resource_id;
use crate::model::{load_paths, Loaded, Severity};

/// Quiet time after the last file event before reloading (editors write a temp
/// file, then rename it; `git checkout` touches many files).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

pub struct FileDatastore {
    pub dir: PathBuf,
}

/// Receives one message per burst of changes under the directory.
pub struct Changes {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
}

impl Changes {
    /// Waits for the next change and then for [`DEBOUNCE`] of quiet; `None` when
    /// the watcher is gone.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}

impl FileDatastore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn load(&self) -> Loaded {
        load_paths(&[&self.dir])
    }

    /// Starts watching the directory (recursively).
    pub fn watch(&self) -> notify::Result<Changes> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    if relevant(&ev) {
                        let _ = tx.send(());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "datastore watch error; reloading");
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        Ok(Changes {
            _watcher: watcher,
            rx,
        })
    }
}

fn relevant(ev: &notify::Event) -> bool {
    if matches!(ev.kind, EventKind::Access(_)) {
        return false;
    }
    // Any path: directories can be renamed into place too. Skip editor swap files.
    ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !(name.ends_with(".swp") || name.ends_with('~') || name.starts_with(".#"))
        })
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
}
