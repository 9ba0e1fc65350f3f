//! What the files datastore keeps between loads: each file's text and parsed
//! documents (with their diagnostics), so that a change re-reads and re-parses
//! only the files it touched. The checks between documents and the model are
//! made again from every file's documents on each load
//! ([`crate::model::load::finish_keeping`]): only the per-file work is kept.
//!
//! The result of a load is the same as reading every file again: the files
//! are found as [`collect_files`] finds them and put together in the same
//! order ([`parsed_from`]), and a file is taken from the cache only when it
//! cannot have changed (the watcher saw no event for it, or its text is the
//! same).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use crate::model::load::{collect_files, parsed_from, read_file, Parsed, ParsedFile};
use crate::model::Diagnostic;

/// What changed in the directory since the last load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Changed {
    /// Not known (no watcher, or it lost events): every file is found and
    /// read again, and re-parsed when its text changed.
    Unknown,
    /// These paths (relative to the directory) and nothing else.
    Paths(BTreeSet<PathBuf>),
}

/// Each file the last load found, with what it parsed to.
#[derive(Default)]
pub(super) struct FileCache {
    /// By path (the order files are read in: sorted, as [`collect_files`]).
    files: BTreeMap<PathBuf, ParsedFile>,
    /// What finding the files reported (links outside the directory,
    /// unreadable directories).
    found: Vec<Diagnostic>,
    /// Directories the last walk went into (and the directory itself): a new
    /// file anywhere else is in a directory the walk did not see.
    dirs: BTreeSet<PathBuf>,
    /// A file or directory was reached through a symbolic link (a mounted
    /// ConfigMap is all links): a change to the target is seen under the
    /// target's name, not the name read, so every load reads every file.
    links: bool,
    /// The cache holds a complete walk of the directory.
    complete: bool,
    /// Files parsed by the last load (the others came from the cache).
    pub(super) parsed: usize,
}

impl FileCache {
    /// Brings the cache up to date with `dir` and returns every file's
    /// documents, as [`crate::model::load::parse_paths`] would.
    pub(super) fn load(&mut self, dir: &Path, changed: Changed) -> Parsed {
        self.parsed = 0;
        let targeted = match changed {
            Changed::Paths(paths) if self.complete && !self.links => self.update(dir, &paths),
            _ => false,
        };
        if !targeted {
            self.rescan(dir);
        }
        parsed_from(&self.found, self.files.iter())
    }

    /// The directory could not be read: nothing in the cache can be trusted.
    pub(super) fn forget(&mut self) {
        *self = Self::default();
    }

    /// Finds every file again; re-parses those whose text changed.
    fn rescan(&mut self, dir: &Path) {
        let mut found = Vec::new();
        let paths = collect_files(&[dir], &mut found);
        let mut files = BTreeMap::new();
        for path in paths {
            let text = read_file(&path);
            let parsed = match self.files.remove(&path) {
                Some(old) if old.text == text => old,
                _ => {
                    self.parsed += 1;
                    ParsedFile::parse(&path, text)
                }
            };
            files.insert(path, parsed);
        }
        let (dirs, links) = visible_dirs(dir);
        self.links = links;
        // A walk that reported a problem may have stopped early: walk again
        // on every load until it does not.
        self.complete = found.is_empty();
        self.dirs = dirs;
        self.files = files;
        self.found = found;
    }

    /// Re-reads the files at `paths` (relative to `dir`); false when one of
    /// them needs a walk of the directory (a directory, a link, a file in a
    /// directory the last walk did not see).
    fn update(&mut self, dir: &Path, paths: &BTreeSet<PathBuf>) -> bool {
        for rel in paths {
            if is_hidden(rel) {
                // Never read (see `collect_files`), unless through a link:
                // then `links` is set and every load walks.
                continue;
            }
            let path = dir.join(rel);
            let wanted = match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if self.dirs.contains(&path) {
                        return false;
                    }
                    // Gone: the file, and anything under it.
                    self.files.retain(|f, _| !f.starts_with(&path));
                    continue;
                }
                Ok(m) if m.is_file() => is_yaml(&path),
                // A directory, a link, something unreadable.
                _ => return false,
            };
            if !wanted {
                continue;
            }
            if !path.parent().is_some_and(|p| self.dirs.contains(p)) {
                return false;
            }
            let text = read_file(&path);
            if self.files.get(&path).is_some_and(|old| old.text == text) {
                continue;
            }
            self.parsed += 1;
            let parsed = ParsedFile::parse(&path, text);
            self.files.insert(path, parsed);
        }
        true
    }
}

/// A name starting with `.` somewhere on the path: `collect_files` skips it.
fn is_hidden(rel: &Path) -> bool {
    rel.components().any(|c| match c {
        Component::Normal(n) => n.as_encoded_bytes().starts_with(b"."),
        _ => false,
    })
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Every directory under `dir` (and itself) a walk goes into, without
/// following links, and whether there is a link anywhere the walk looks (a
/// dangling one too: its target may appear). Names starting with `.` are
/// skipped as `collect_files` skips them. Reads directory entries only (their
/// type comes with them), no file.
fn visible_dirs(dir: &Path) -> (BTreeSet<PathBuf>, bool) {
    let mut dirs = BTreeSet::from([dir.to_path_buf()]);
    let mut links = false;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue; // `collect_files` reports it, and every load walks.
        };
        for entry in entries.flatten() {
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_symlink() => links = true,
                Ok(t) if t.is_dir() => {
                    dirs.insert(entry.path());
                    todo.push(entry.path());
                }
                Ok(_) => {}
                Err(_) => links = true, // Unknown: do not trust events alone.
            }
        }
    }
    (dirs, links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::test_docs::{policy, ENDPOINT};
    use crate::model::assemble;
    use crate::model::load::{finish_keeping, finish_keeping_cached, parse_paths, Document};
    use crate::model::Loaded;
    use proptest::prelude::*;

    /// Files edits touch: some in subdirectories (made on the way), one
    /// hidden and one not YAML (never read).
    const FILES: &[&str] = &[
        "a.yaml",
        "b.yml",
        "sub/c.yaml",
        "sub/deep/d.yaml",
        ".hidden.yaml",
        "notes.txt",
    ];

    /// What an edit writes: documents moving between files (the same names
    /// in several), duplicates, broken files, references between files.
    fn content(i: usize) -> Vec<u8> {
        let tiered = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: tiered\nspec:\n  tier: extra\n  selector: all()\n";
        let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: extra\nspec:\n  order: 10\n";
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n";
        let profile = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: extra\nspec:\n  labelsToApply:\n    team: a\n";
        match i {
            0 => policy("p1", "Deny").into_bytes(),
            1 => policy("p1", "Allow").into_bytes(),
            2 => format!("{}---\n{ENDPOINT}", policy("p2", "Deny")).into_bytes(),
            3 => format!("{}---\nkind: [\n", policy("p3", "Log")).into_bytes(),
            4 => tiered.as_bytes().to_vec(),
            5 => tier.as_bytes().to_vec(),
            6 => vec![0xff, 0xfe, 0x00],
            7 => Vec::new(),
            8 => policy("p2", "Nope").into_bytes(),
            // The endpoint's labels come from its namespace and profiles:
            // the model made again from the last one must see them change.
            9 => format!("{ns}  labels:\n    env: prod\n---\n{ENDPOINT}").into_bytes(),
            10 => ns.as_bytes().to_vec(),
            11 => format!("{ENDPOINT}  profiles: [kns.prod, extra]\n---\n{profile}").into_bytes(),
            _ => format!("{}---\n{}", policy("p1", "Log"), policy("p3", "Deny")).into_bytes(),
        }
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Write(usize, usize),
        Remove(usize),
        RemoveSub,
        RenameSub,
        Link(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let file = 0..FILES.len();
        prop_oneof![
            6 => (file.clone(), 0..13usize).prop_map(|(f, c)| Edit::Write(f, c)),
            2 => file.clone().prop_map(Edit::Remove),
            1 => Just(Edit::RemoveSub),
            1 => Just(Edit::RenameSub),
            1 => file.prop_map(Edit::Link),
        ]
    }

    /// Makes the edit; returns the paths the watcher names at the least (a
    /// directory made or removed, not each file in it).
    fn apply(dir: &Path, e: &Edit) -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        match e {
            Edit::Write(f, c) => {
                let rel = Path::new(FILES[*f]);
                let new_dir = rel
                    .ancestors()
                    .skip(1)
                    .filter(|a| !a.as_os_str().is_empty() && !dir.join(a).exists())
                    .last();
                seen.insert(new_dir.unwrap_or(rel).to_path_buf());
                std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
                std::fs::write(dir.join(rel), content(*c)).unwrap();
            }
            Edit::Remove(f) => {
                if std::fs::remove_file(dir.join(FILES[*f])).is_ok() {
                    seen.insert(FILES[*f].into());
                }
            }
            Edit::RemoveSub => {
                if std::fs::remove_dir_all(dir.join("sub")).is_ok() {
                    seen.insert("sub".into());
                }
            }
            Edit::RenameSub => {
                let (from, to) = if dir.join("sub").exists() {
                    ("sub", "moved")
                } else {
                    ("moved", "sub")
                };
                if std::fs::rename(dir.join(from), dir.join(to)).is_ok() {
                    seen.extend([from.into(), to.into()]);
                }
            }
            Edit::Link(f) => {
                let link = dir.join("link.yaml");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(dir.join(FILES[*f]), &link).unwrap();
                seen.insert("link.yaml".into());
            }
        }
        seen
    }

    /// What two loads must agree on.
    fn summary(l: &Loaded, kept: &[String]) -> String {
        let docs: Vec<(&Path, usize, &str)> = l
            .documents
            .iter()
            .map(|d| (&*d.file, d.line, &*d.id))
            .collect();
        let mut sources: Vec<_> = l.policy_sources.iter().collect();
        sources.sort_by_key(|(id, _)| format!("{id:?}"));
        format!(
            "{:#?}\n{:#?}\n{sources:?}\n{docs:?}\n{kept:?}",
            l.model, l.diagnostics
        )
    }

    fn full_load(dir: &Path, previous: &[Document]) -> String {
        let (l, kept) = finish_keeping(parse_paths(&[dir]), previous);
        summary(&l, &kept)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// After every edit, a load that re-reads only the paths the watcher
        /// named is the load of every file, the last good state kept alike.
        #[test]
        fn an_incremental_load_is_a_full_load(edits in proptest::collection::vec(edit(), 1..25)) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let mut cache = FileCache::default();
            // The model assembled from the last one's endpoints where it can.
            let mut assembled = assemble::Cache::default();
            let parsed = cache.load(dir, Changed::Unknown);
            let (first, _) = finish_keeping_cached(parsed, &[], &mut assembled);
            let mut previous = first.documents;
            for (i, e) in edits.iter().enumerate() {
                let seen = apply(dir, e);
                let parsed = cache.load(dir, Changed::Paths(seen));
                let (now, kept) = finish_keeping_cached(parsed, &previous, &mut assembled);
                prop_assert_eq!(
                    summary(&now, &kept),
                    full_load(dir, &previous),
                    "after edit {} ({:?}) of {:?}", i, e, edits
                );
                previous = now.documents;
            }
        }
    }

    #[test]
    fn only_changed_files_are_parsed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for i in 0..20 {
            std::fs::write(
                dir.join(format!("p{i}.yaml")),
                policy(&format!("p{i}"), "Deny"),
            )
            .unwrap();
        }
        let mut cache = FileCache::default();
        cache.load(dir, Changed::Unknown);
        assert_eq!(cache.parsed, 20);
        std::fs::write(dir.join("p3.yaml"), policy("p3", "Allow")).unwrap();
        let parsed = cache.load(dir, Changed::Paths(["p3.yaml".into()].into()));
        assert_eq!(cache.parsed, 1);
        assert_eq!(parsed.docs.len(), 20);
        // Without the watcher's word, every file is read, and only the
        // changed one parsed.
        std::fs::write(dir.join("p4.yaml"), policy("p4", "Allow")).unwrap();
        cache.load(dir, Changed::Unknown);
        assert_eq!(cache.parsed, 1);
        // Named but unchanged: read, not parsed.
        cache.load(dir, Changed::Paths(["p5.yaml".into()].into()));
        assert_eq!(cache.parsed, 0);
        // A link anywhere: every load reads every file (a change to the
        // target is named by the target).
        std::os::unix::fs::symlink(dir.join("p6.yaml"), dir.join("link.yaml")).unwrap();
        cache.load(dir, Changed::Paths(["link.yaml".into()].into()));
        std::fs::write(dir.join("p6.yaml"), policy("p6", "Allow")).unwrap();
        let parsed = cache.load(dir, Changed::Paths(BTreeSet::new()));
        assert_eq!(cache.parsed, 2, "p6.yaml and the link to it");
        assert_eq!(parsed.docs.len(), 21);
    }
}
