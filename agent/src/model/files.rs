//! Which files a load reads (directories expanded, links kept inside), and
//! reading them, and JSON documents, within bounds.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{yaml, Diagnostic, Severity};

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted by path.
///
/// Names starting with `.` are skipped, files and directories alike: that is
/// how Kubernetes lays out a mounted ConfigMap (`..2024_01_01_00_00_00.1/`
/// holding the files, `..data` a symlink to it, and each file a symlink into
/// `..data/`), which would otherwise load every document three times; editors'
/// hidden files (`.#a.yaml`) are not policy either.
///
/// Symlinks are followed inside the directory only: a file or directory that
/// resolves outside it is reported (its changes would not be watched) and not
/// read, and a directory reached twice (a link loop) is read once.
fn walk(
    dir: &Path,
    root: &Path,
    visited: &mut BTreeSet<PathBuf>,
    out: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if !path.is_dir() && !is_yaml {
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue; // A dangling link: nothing to read.
        };
        if !real.starts_with(root) {
            diags.push(file_error(
                &path,
                format!(
                    "links to {}, outside the datastore {}: changes there would not be seen, \
                     so it is not read; copy it in, or point the datastore at a directory \
                     that holds it",
                    real.display(),
                    root.display()
                ),
            ));
        } else if real.is_dir() {
            if visited.insert(real) {
                walk(&path, root, visited, out, diags)?;
            }
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The files named by `paths` (directories expanded), each once, in order.
pub fn collect_files<P: AsRef<Path>>(paths: &[P], diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    for p in paths {
        let p = p.as_ref();
        let mut found = Vec::new();
        if p != Path::new(STDIN) && p.is_dir() {
            let root = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let mut visited = BTreeSet::from([root.clone()]);
            if let Err(e) = walk(p, &root, &mut visited, &mut found, diags) {
                diags.push(file_error(p, format!("cannot read directory: {e}")));
            }
            found.sort();
        } else {
            found.push(p.to_path_buf());
        }
        for f in found {
            if seen.insert(f.clone()) {
                files.push(f);
            }
        }
    }
    files
}

pub(super) fn file_error(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: 1,
        resource: String::new(),
        field: String::new(),
        message,
    }
}

/// At most this many bytes are read from one file (a GlobalNetworkSet of
/// 100,000 nets is ~3 MB).
pub const MAX_FILE_BYTES: usize = 16 << 20;

pub(super) fn too_big(file: &Path, len: u64) -> Diagnostic {
    file_error(
        file,
        format!(
            "the file is {len} bytes; at most {MAX_FILE_BYTES} bytes ({} MiB) are read from \
             one file: split it into several files",
            MAX_FILE_BYTES >> 20
        ),
    )
}

/// The path that names standard input (`agent check -`, `--datastore -`).
pub const STDIN: &str = "-";

/// Reads a file (or standard input, [`STDIN`]) of at most [`MAX_FILE_BYTES`]
/// (without reading more of a larger one).
pub(super) fn read_bounded(file: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let f: Box<dyn Read> = if file == Path::new(STDIN) {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .map_err(|e| file_error(file, format!("cannot read file: {e}")))?,
        )
    };
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(file, format!("cannot read file: {e}")))?;
    if bytes.len() > MAX_FILE_BYTES {
        let len = std::fs::metadata(file).map_or(bytes.len() as u64, |m| m.len());
        return Err(too_big(file, len));
    }
    String::from_utf8(bytes).map_err(|_| {
        file_error(
            file,
            "cannot read file: stream did not contain valid UTF-8".into(),
        )
    })
}

/// Bounds a document given as a JSON value (the Kubernetes datastore's objects)
/// as YAML documents are bounded: at most [`yaml::MAX_DEPTH`] levels and
/// [`yaml::MAX_NODES`] values. Walks with its own stack (never recurses).
pub(super) fn check_value_bounds(value: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value as J;
    let mut stack = vec![(value, 0usize)];
    let mut nodes = 0usize;
    while let Some((v, depth)) = stack.pop() {
        nodes += 1;
        if nodes > yaml::MAX_NODES {
            return Err(format!(
                "the object has more than {} values; split it into several objects",
                yaml::MAX_NODES
            ));
        }
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            J::Array(items) => Box::new(items.iter()),
            J::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > yaml::MAX_DEPTH {
            return Err(format!(
                "arrays and objects nest more than {} levels deep (a resource needs fewer \
                 than 10); flatten the object",
                yaml::MAX_DEPTH
            ));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}
