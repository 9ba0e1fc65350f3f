//! Promotion of a staged policy to its enforced kind. What a promotion does is
//! decided once, for the file and the cluster datastores alike, by
//! [`PromotionPlan::of`] from the `stagedAction`; here it is carried out by
//! editing the YAML text in place: other documents, comments and formatting
//! stay as they were.
//!
//! - [`PromotionPlan::Enforce`] (`Set`, the default, or `Learn`): the staged
//!   document becomes the enforced kind (`kind:` changed, `apiVersion:` too for
//!   Kubernetes policies, the `stagedAction:` line dropped); an enforced
//!   namesake anywhere in the directory is removed, since the promoted policy
//!   replaces it.
//! - [`PromotionPlan::DeleteEnforced`] (`Delete`): the enforced namesake and the
//!   staged document are removed.
//! - `Ignore`: refused; promoting it would change nothing that is enforced.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::ir::PolicyKind;
use super::load::collect_files;
use super::resources::{API_CALICO, API_K8S_NETWORKING};
use super::yaml::{self, Chunk};

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("`{0}` is not a staged kind; accepted: StagedGlobalNetworkPolicy (sgnp), StagedNetworkPolicy (snp), StagedKubernetesNetworkPolicy (sknp)")]
    NotStagedKind(String),
    #[error("{0} not found in {1}")]
    NotFound(String, PathBuf),
    #[error("{0} is defined more than once ({1} and {2})")]
    Ambiguous(String, PathBuf, PathBuf),
    #[error("{0} has stagedAction Ignore: promoting it changes nothing that is enforced; set stagedAction to Set (or Delete) first, or remove it")]
    Ignored(String),
    #[error("{0} has stagedAction `{1}`: not one of Set, Learn, Delete, Ignore; fix it before promoting")]
    BadStagedAction(String, String),
    #[error("{0}: cannot edit `{1}` at line {2}: only block-style `key: value` lines are edited")]
    Unsupported(PathBuf, String, usize),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What promoting a staged policy does to the enforced and staged policies,
/// and so what a revert of it restores: one interpretation of `stagedAction`
/// for the file datastore ([`plan`]) and the cluster
/// (`datastore::kubernetes::promote`, whose pending record names the plan).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotionPlan {
    /// `Set` (the default) or `Learn`: the staged spec, without its
    /// `stagedAction`, becomes the enforced policy and replaces an enforced
    /// namesake; the staged policy goes. A revert puts back the staged policy
    /// and the namesake (or removes the enforced policy when there was none).
    Enforce,
    /// `Delete`: the enforced namesake goes, and the staged policy with it (in
    /// the cluster under `--confirm-within`, once confirmed). A revert puts
    /// back the namesake (and the staged policy).
    DeleteEnforced,
}

impl PromotionPlan {
    /// The plan for a staged policy (`described`, for errors) whose
    /// `stagedAction` is `action`. `Ignore` is refused: promoting it would
    /// change nothing that is enforced; so is a value the loader rejects.
    pub fn of(action: Option<&str>, described: &str) -> Result<PromotionPlan, PromoteError> {
        match action {
            None | Some("Set") | Some("Learn") => Ok(PromotionPlan::Enforce),
            Some("Delete") => Ok(PromotionPlan::DeleteEnforced),
            Some("Ignore") => Err(PromoteError::Ignored(described.into())),
            Some(other) => Err(PromoteError::BadStagedAction(
                described.into(),
                other.into(),
            )),
        }
    }
}

/// What a promotion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromoteReport {
    /// The promoted object (enforced identity), e.g. `GlobalNetworkPolicy/name`.
    pub enforced: String,
    /// Where the staged document was rewritten in place (None for `Delete`).
    pub rewritten: Option<(PathBuf, usize)>,
    /// Where an enforced namesake was removed from.
    pub removed_enforced: Option<PathBuf>,
    /// The staged document was removed (`Delete`).
    pub removed_staged: bool,
}

impl std::fmt::Display for PromoteReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rewritten {
            Some((file, line)) => write!(
                f,
                "promoted to {} in {}:{line}",
                self.enforced,
                file.display()
            )?,
            None => write!(f, "deleted {} (staged Delete)", self.enforced)?,
        }
        if let Some(file) = &self.removed_enforced {
            write!(
                f,
                "; removed the previous {} from {}",
                self.enforced,
                file.display()
            )?;
        }
        if self.removed_staged {
            write!(f, "; removed the staged policy")?;
        }
        Ok(())
    }
}

/// Parses a staged kind name or its trace code.
pub fn staged_kind(s: &str) -> Result<PolicyKind, PromoteError> {
    match s {
        "StagedGlobalNetworkPolicy" | "sgnp" => Ok(PolicyKind::StagedGlobalNetworkPolicy),
        "StagedNetworkPolicy" | "snp" => Ok(PolicyKind::StagedNetworkPolicy),
        "StagedKubernetesNetworkPolicy" | "sknp" => Ok(PolicyKind::StagedKubernetesNetworkPolicy),
        _ => Err(PromoteError::NotStagedKind(s.into())),
    }
}

/// (apiVersion, kind) of a policy kind's YAML documents.
fn yaml_type(kind: PolicyKind) -> (&'static str, &'static str) {
    match kind {
        PolicyKind::KubernetesNetworkPolicy => (API_K8S_NETWORKING, "NetworkPolicy"),
        k => (API_CALICO, k.as_str()),
    }
}

pub fn is_namespaced(kind: PolicyKind) -> bool {
    !matches!(
        kind,
        PolicyKind::GlobalNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy
    )
}

/// One document of a file, located.
struct Located {
    file: PathBuf,
    chunk: Chunk,
    lines: std::collections::HashMap<String, usize>,
    staged_action: Option<String>,
}

fn find(
    files: &BTreeMap<PathBuf, String>,
    kind: PolicyKind,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Located>, PromoteError> {
    let (api, kind_str) = yaml_type(kind);
    let mut found: Option<Located> = None;
    for (file, text) in files {
        for chunk in yaml::split_documents(text) {
            let Ok(Some(node)) = yaml::parse_chunk(&chunk) else {
                continue;
            };
            fn s(n: Option<&yaml::Node>) -> &str {
                n.and_then(|n| n.as_str()).unwrap_or("")
            }
            let meta = node.get("metadata");
            let doc_ns = s(meta.and_then(|m| m.get("namespace")));
            let doc_ns = if doc_ns.is_empty() { "default" } else { doc_ns };
            let matches = s(node.get("apiVersion")) == api
                && s(node.get("kind")) == kind_str
                && s(meta.and_then(|m| m.get("name"))) == name
                && namespace.is_none_or(|ns| ns == doc_ns);
            if !matches {
                continue;
            }
            if let Some(prev) = &found {
                return Err(PromoteError::Ambiguous(
                    describe(kind, namespace, name),
                    prev.file.clone(),
                    file.clone(),
                ));
            }
            found = Some(Located {
                file: file.clone(),
                lines: node.line_index(),
                staged_action: node
                    .get("spec")
                    .and_then(|s| s.get("stagedAction"))
                    .and_then(|n| n.as_str())
                    .map(str::to_string),
                chunk,
            });
        }
    }
    Ok(found)
}

fn describe(kind: PolicyKind, namespace: Option<&str>, name: &str) -> String {
    super::load::resource_id(kind.as_str(), namespace, name)
}

fn is_separator(line: &str) -> bool {
    let l = line.trim_end_matches(['\n', '\r']);
    l == "---" || l.starts_with("--- ") || l == "..."
}

/// Line edits per file: replacements and deletions by 0-based line index.
#[derive(Default)]
struct Edits {
    replace: BTreeMap<(PathBuf, usize), String>,
    delete: BTreeSet<(PathBuf, usize)>,
}

impl Edits {
    fn delete_document(&mut self, files: &BTreeMap<PathBuf, String>, doc: &Located) {
        let lines: Vec<&str> = yaml::lines(&files[&doc.file]).collect();
        let range = doc.chunk.line_range.clone();
        for i in range.clone() {
            self.delete.insert((doc.file.clone(), i));
        }
        // Take one neighbouring separator with it, so no empty document is left:
        // the one after it if still there, else the nearest unclaimed one before.
        let file = &doc.file;
        let claimed = |e: &Self, i: usize| e.delete.contains(&(file.clone(), i));
        if range.end < lines.len() && is_separator(lines[range.end]) && !claimed(self, range.end) {
            self.delete.insert((file.clone(), range.end));
            return;
        }
        let mut i = range.start;
        while i > 0 {
            i -= 1;
            if is_separator(lines[i]) && !claimed(self, i) {
                self.delete.insert((file.clone(), i));
                return;
            }
            if !claimed(self, i) {
                return;
            }
        }
    }

    /// Rewrites the value of a top-level-relative `key: value` line.
    fn set_value(
        &mut self,
        files: &BTreeMap<PathBuf, String>,
        doc: &Located,
        field: &str,
        key: &str,
        old: &str,
        new: &str,
    ) -> Result<(), PromoteError> {
        let line_no = doc.lines[field];
        let line = yaml::lines(&files[&doc.file])
            .nth(line_no - 1)
            .unwrap_or("");
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix(&format!("{key}:")) else {
            return Err(PromoteError::Unsupported(
                doc.file.clone(),
                field.into(),
                line_no,
            ));
        };
        if !rest.contains(old) {
            return Err(PromoteError::Unsupported(
                doc.file.clone(),
                field.into(),
                line_no,
            ));
        }
        let indent = &line[..line.len() - trimmed.len()];
        let edited = format!("{indent}{key}:{}", rest.replacen(old, new, 1));
        self.replace.insert((doc.file.clone(), line_no - 1), edited);
        Ok(())
    }

    /// The touched files: (file, text before, text after).
    fn render(self, files: &BTreeMap<PathBuf, String>) -> Vec<FileChange> {
        let touched: BTreeSet<&PathBuf> = self
            .replace
            .keys()
            .map(|(f, _)| f)
            .chain(self.delete.iter().map(|(f, _)| f))
            .collect();
        let mut changes = Vec::new();
        for file in touched {
            let mut out = String::new();
            for (i, line) in yaml::lines(&files[file]).enumerate() {
                let key = (file.clone(), i);
                if self.delete.contains(&key) {
                    continue;
                }
                out.push_str(self.replace.get(&key).map_or(line, String::as_str));
            }
            changes.push(FileChange {
                file: file.clone(),
                before: files[file].clone(),
                after: out,
            });
        }
        changes
    }
}

/// One file a promotion rewrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    pub file: PathBuf,
    pub before: String,
    pub after: String,
}

/// Replaces the contents of `file` atomically, as an editor that saves in place
/// would: through a symlink (the link stays, its target is rewritten) and
/// keeping the file's mode and owner (a 0600 file stays 0600). The new text is
/// written to a hidden sibling of the real file, then renamed over it, so a
/// crash never leaves half a file.
pub(crate) fn replace_file(file: &Path, contents: &[u8]) -> Result<(), PromoteError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| PromoteError::Io(p, e)
    };
    let target = std::fs::canonicalize(file).map_err(io(file))?;
    let meta = std::fs::metadata(&target).map_err(io(&target))?;
    let mode = meta.permissions().mode() & 0o7777;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden (dot) name: the loader and watchers skip it while it exists.
    let tmp = target.with_file_name(format!(".{name}.promote.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let written = (|| {
        f.write_all(contents)?;
        // The umask may have narrowed the mode; the owner is kept where we may.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(PromoteError::Io(target, e));
    }
    Ok(())
}

/// Promotes the staged policy `kind`/`name` (in `namespace`, default `default`,
/// for namespaced kinds) found among the YAML files under `datastore`.
pub fn promote(
    datastore: &Path,
    kind: PolicyKind,
    name: &str,
    namespace: Option<&str>,
) -> Result<PromoteReport, PromoteError> {
    let (report, changes) = plan(datastore, kind, name, namespace)?;
    for c in &changes {
        replace_file(&c.file, c.after.as_bytes())?;
    }
    Ok(report)
}

/// What [`promote`] would write, without writing it (`agent promote --dry-run`).
pub fn plan(
    datastore: &Path,
    kind: PolicyKind,
    name: &str,
    namespace: Option<&str>,
) -> Result<(PromoteReport, Vec<FileChange>), PromoteError> {
    if !kind.is_staged() {
        return Err(PromoteError::NotStagedKind(kind.as_str().into()));
    }
    let namespace = is_namespaced(kind).then(|| namespace.unwrap_or("default"));
    let mut diags = Vec::new();
    let mut files = BTreeMap::new();
    for f in collect_files(&[datastore], &mut diags) {
        let text = std::fs::read_to_string(&f).map_err(|e| PromoteError::Io(f.clone(), e))?;
        files.insert(f, text);
    }
    if let Some(d) = diags.into_iter().next() {
        return Err(PromoteError::Io(d.file, std::io::Error::other(d.message)));
    }
    let staged = find(&files, kind, namespace, name)?
        .ok_or_else(|| PromoteError::NotFound(describe(kind, namespace, name), datastore.into()))?;
    let enforced_kind = kind.enforced();
    let enforced_id = describe(enforced_kind, namespace, name);
    let namesake = find(&files, enforced_kind, namespace, name)?;

    let mut edits = Edits::default();
    let mut report = PromoteReport {
        enforced: enforced_id.clone(),
        rewritten: None,
        removed_enforced: namesake.as_ref().map(|n| n.file.clone()),
        removed_staged: false,
    };
    if let Some(n) = &namesake {
        edits.delete_document(&files, n);
    }
    let described = describe(kind, namespace, name);
    match PromotionPlan::of(staged.staged_action.as_deref(), &described)? {
        PromotionPlan::DeleteEnforced => {
            edits.delete_document(&files, &staged);
            report.removed_staged = true;
        }
        PromotionPlan::Enforce => {
            let (old_api, old_kind) = yaml_type(kind);
            let (new_api, new_kind) = yaml_type(enforced_kind);
            edits.set_value(&files, &staged, "kind", "kind", old_kind, new_kind)?;
            if old_api != new_api {
                edits.set_value(
                    &files,
                    &staged,
                    "apiVersion",
                    "apiVersion",
                    old_api,
                    new_api,
                )?;
            }
            if let Some(line_no) = staged.lines.get("spec.stagedAction") {
                let line = yaml::lines(&files[&staged.file])
                    .nth(line_no - 1)
                    .unwrap_or("");
                if !line.trim_start().starts_with("stagedAction:") {
                    return Err(PromoteError::Unsupported(
                        staged.file.clone(),
                        "spec.stagedAction".into(),
                        *line_no,
                    ));
                }
                edits.delete.insert((staged.file.clone(), line_no - 1));
            }
            report.rewritten = Some((staged.file.clone(), staged.lines["kind"]));
        }
    }
    Ok((report, edits.render(&files)))
}

#[cfg(test)]
#[path = "promote_tests.rs"]
mod tests;
