//! Files -> documents -> typed, validated resources -> model. A bad document
//! becomes a diagnostic and is left out; the others still load.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::assemble;
use super::cross_check::cross_check;
use super::files::{check_value_bounds, file_error, read_bounded, too_big};
pub use super::files::{collect_files, MAX_FILE_BYTES, STDIN};
use super::ir::PolicyKind;
use super::lower::{self, namespace_of, Issue, Lowered};
use super::resources::{Resource, ResourceKind};
use super::yaml::{self, line_of};
use super::{crd, list, pod};
use super::{Diagnostic, Loaded, Severity, SourceLocation};

/// A document that parsed and validated, with where it came from. Cheap to
/// clone (what it holds is shared): the files datastore keeps every file's
/// documents between loads and hands each load its own list.
#[derive(Clone, Debug)]
pub struct Document {
    pub file: Arc<Path>,
    /// Line of the document's first field.
    pub line: usize,
    pub kind: ResourceKind,
    /// `Kind/namespace/name` or `Kind/name`.
    pub id: Arc<str>,
    pub resource: Arc<Resource>,
    pub lines: Arc<HashMap<String, usize>>,
    /// What the document contributes to the model; None when it has an
    /// error: it is then only kept to report cross-document problems too, and
    /// never reaches the model.
    pub lowered: Option<Arc<Lowered>>,
}

impl Document {
    pub fn is_valid(&self) -> bool {
        self.lowered.is_some()
    }

    pub(super) fn diagnostic(
        &self,
        severity: Severity,
        field: &str,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: line_of(&self.lines, field),
            resource: self.id.to_string(),
            field: field.into(),
            message,
        }
    }

    /// The namespace used in identities (None for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.kind
            .is_namespaced()
            .then(|| namespace_of(self.resource.metadata()))
    }

    pub fn name(&self) -> &str {
        &self.resource.metadata().name
    }

    /// The identity duplicates are checked by.
    pub fn key(&self) -> DocKey<'_> {
        (self.kind, self.namespace(), self.name())
    }
}

/// A document's identity: kind, namespace (namespaced kinds), name.
pub type DocKey<'a> = (ResourceKind, Option<&'a str>, &'a str);

/// The file each identity was loaded from in the last good state.
pub(super) type PreviousFiles<'a> = foldhash::HashMap<DocKey<'a>, &'a Path>;

pub fn resource_id(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// At most this many documents are loaded from one file.
pub const MAX_DOCUMENTS: usize = 50_000;

/// Parses and validates every document of one file's text.
pub fn parse_file(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Vec<Document> {
    if text.len() > MAX_FILE_BYTES {
        diags.push(too_big(file, text.len() as u64));
        return Vec::new();
    }
    let (chunks, over) = yaml::split_documents_bounded(text, MAX_DOCUMENTS);
    if let Some(line) = over {
        diags.push(Diagnostic {
            line,
            ..file_error(
                file,
                format!(
                    "more than {MAX_DOCUMENTS} documents in one file; the documents from this                      line on are not loaded: split the file"
                ),
            )
        });
    }
    let mut docs = Vec::new();
    for (chunk_docs, chunk_diags) in parse_chunks(file, &chunks, crate::cpus::usable()) {
        docs.extend(chunk_docs);
        diags.extend(chunk_diags);
    }
    docs
}

/// Below this much text a file's documents are parsed on the calling thread
/// (a thread costs more than a small file).
const PARALLEL_BYTES: usize = 64 * 1024;

/// The documents and diagnostics of each chunk, in order. A large file's
/// chunks are parsed on up to `threads` threads (the cores), each taking a
/// contiguous run of chunks of about the same size (documents are parsed
/// each on their own, so the result is the same as one after the other).
pub(super) fn parse_chunks(
    file: &Path,
    chunks: &[yaml::Chunk],
    threads: usize,
) -> Vec<(Vec<Document>, Vec<Diagnostic>)> {
    let parse_run = |run: &[yaml::Chunk]| -> Vec<(Vec<Document>, Vec<Diagnostic>)> {
        run.iter()
            .map(|chunk| {
                let (mut docs, mut diags) = (Vec::new(), Vec::new());
                parse_document(file, chunk, &mut docs, &mut diags);
                (docs, diags)
            })
            .collect()
    };
    let bytes: usize = chunks.iter().map(|c| c.text.len()).sum();
    if threads < 2 || chunks.len() < 2 || bytes < PARALLEL_BYTES {
        return parse_run(chunks);
    }
    let runs = split_by_size(chunks, bytes.div_ceil(threads));
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .skip(1)
            .map(|run| scope.spawn(|| parse_run(run)))
            .collect();
        let mut out = parse_run(runs[0]);
        for handle in handles {
            // A panic in a parse is a bug: raise it here as it would be on one thread.
            out.extend(
                handle
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            );
        }
        out
    })
}

/// `chunks` cut into contiguous runs of at least `target` bytes (the last may
/// be smaller); never empty when `chunks` is not.
fn split_by_size(chunks: &[yaml::Chunk], target: usize) -> Vec<&[yaml::Chunk]> {
    let mut runs = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, chunk) in chunks.iter().enumerate() {
        size += chunk.text.len();
        if size >= target {
            runs.push(&chunks[start..=i]);
            (start, size) = (i + 1, 0);
        }
    }
    if start < chunks.len() {
        runs.push(&chunks[start..]);
    }
    runs
}

/// The documents of one chunk: one, or a List's items.
fn parse_document(
    file: &Path,
    chunk: &yaml::Chunk,
    docs: &mut Vec<Document>,
    diags: &mut Vec<Diagnostic>,
) {
    let node = match yaml::parse_chunk(chunk) {
        Ok(Some(node)) => node,
        Ok(None) => return,
        Err(e) => {
            return diags.push(Diagnostic {
                line: e.line,
                ..file_error(file, e.message)
            })
        }
    };
    let nodes = match list::items(&node) {
        None => vec![node],
        Some(Ok(_)) => list::into_items(node),
        Some(Err(message)) => {
            let line = line_of(&node.line_index(), "items");
            return diags.push(Diagnostic {
                line,
                field: "items".into(),
                ..file_error(file, message)
            });
        }
    };
    for n in nodes {
        let (line, lines) = (n.line, n.line_index());
        match parse_value(file, line, lines, n.into_json(), diags) {
            Ok(Some(doc)) => docs.push(doc),
            Ok(None) => {}
            Err(d) => diags.push(d),
        }
    }
}

/// Checks one document given as a JSON value (`line` and `lines`: where it and
/// its fields are in the text it came from, if any).
fn parse_value(
    file: &Path,
    line: usize,
    lines: HashMap<String, usize>,
    value: serde_json::Value,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<Document>, Diagnostic> {
    let at = |field: &str, resource: &str, message: String| Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: line_of(&lines, field),
        resource: resource.into(),
        field: field.into(),
        message,
    };
    if !value.is_object() {
        return Err(at(
            "",
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    }
    let value = crd::to_v3(value);
    let value = match pod::document(file, &lines, value, diags)? {
        Some(value) => value,
        None => return Ok(None),
    };
    let text_field = |key: &str| value.get(key).and_then(|n| n.as_str()).unwrap_or("");
    let (api_version, kind_str) = (text_field("apiVersion"), text_field("kind"));
    for (field, value) in [("apiVersion", api_version), ("kind", kind_str)] {
        if value.is_empty() {
            return Err(at(field, "", format!("`{field}` is required (a string)")));
        }
    }
    let kind = ResourceKind::from_type(api_version, kind_str).map_err(|m| at("kind", "", m))?;
    let meta = value.get("metadata");
    let meta_str = |key: &str| meta.and_then(|m| m.get(key)).and_then(|n| n.as_str());
    let name = meta_str("name").unwrap_or("");
    let namespace = kind
        .is_namespaced()
        .then(|| meta_str("namespace").unwrap_or("default"));
    let id = resource_id(kind.name(), namespace, name);
    let resource = kind
        .parse(value)
        .map_err(|e| at(&e.field, &id, e.message))?;
    let (lowered, issues) = lower::lower(&resource);
    let doc = Document {
        file: Arc::from(file),
        line,
        kind,
        id: id.into(),
        resource: Arc::new(resource),
        lines: Arc::new(lines),
        lowered: lowered.map(Arc::new),
    };
    for Issue {
        severity,
        field,
        message,
    } in issues
    {
        diags.push(doc.diagnostic(severity, &field, message));
    }
    Ok(Some(doc))
}

/// Loads in-memory sources (file name, text), as [`super::load_paths`] does files.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Loaded {
    load_with(sources, Vec::new())
}

/// Loads documents that are already JSON values, each named by a "file" (the
/// Kubernetes datastore's objects): the same checks and model as
/// [`load_sources`], without writing and re-parsing text. Diagnostics point at
/// line 1 (there is no text).
/// Documents are taken one at a time, so `sources` may make them lazily.
pub fn load_values(sources: impl IntoIterator<Item = (PathBuf, serde_json::Value)>) -> Loaded {
    let sources = sources.into_iter();
    let mut diagnostics = Vec::new();
    // Sized up front: a document is ~1 KB inline and a Vec that doubles holds
    // both buffers while it grows.
    let mut docs = Vec::with_capacity(sources.size_hint().0);
    let mut files = Vec::with_capacity(sources.size_hint().0);
    for (file, value) in sources {
        if let Err(message) = check_value_bounds(&value) {
            diagnostics.push(file_error(&file, message));
            files.push(file);
            continue;
        }
        match parse_value(&file, 1, HashMap::new(), value, &mut diagnostics) {
            Ok(Some(doc)) => docs.push(doc),
            Ok(None) => {}
            Err(d) => diagnostics.push(d),
        }
        files.push(file);
    }
    finish(
        docs,
        diagnostics,
        &files,
        &PreviousFiles::default(),
        Keep::Nothing,
    )
}

/// Loads `sources` after `diagnostics` already found (e.g. unreadable files).
fn load_with(sources: &[(PathBuf, String)], diagnostics: Vec<Diagnostic>) -> Loaded {
    finish_keeping(parse_sources(sources, diagnostics), &[]).0
}

/// Every document of a set of files, parsed and validated each on its own,
/// before the checks between documents.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// The files in reading order.
    pub files: Vec<PathBuf>,
    /// Valid and invalid documents, in reading order.
    pub docs: Vec<Document>,
    /// Diagnostics so far (unreadable files and directories, parse and
    /// validation errors).
    pub diagnostics: Vec<Diagnostic>,
}

fn parse_sources(sources: &[(PathBuf, String)], mut diagnostics: Vec<Diagnostic>) -> Parsed {
    let mut docs = Vec::new();
    for (file, text) in sources {
        docs.extend(parse_file(file, text, &mut diagnostics));
    }
    Parsed {
        files: sources.iter().map(|(f, _)| f.clone()).collect(),
        docs,
        diagnostics,
    }
}

/// One file read and parsed on its own (no checks between documents): what
/// the files datastore keeps per file between loads.
#[derive(Clone, Debug)]
pub struct ParsedFile {
    /// The file's text, or why it could not be read.
    pub text: Result<String, Diagnostic>,
    /// Its documents, valid and invalid, in order.
    pub docs: Vec<Document>,
    /// What parsing and validating them found.
    pub diagnostics: Vec<Diagnostic>,
}

impl ParsedFile {
    /// Parses what reading `file` gave ([`read_file`]).
    pub fn parse(file: &Path, text: Result<String, Diagnostic>) -> Self {
        let mut diagnostics = Vec::new();
        let docs = match &text {
            Ok(text) => parse_file(file, text, &mut diagnostics),
            Err(_) => Vec::new(),
        };
        Self {
            text,
            docs,
            diagnostics,
        }
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`] that must be UTF-8.
pub fn read_file(file: &Path) -> Result<String, Diagnostic> {
    read_bounded(file)
}

/// The files of a load, each read and parsed on its own, put together in
/// reading order (`files`: sorted as [`collect_files`] gives them) after the
/// diagnostics of finding them (`found`): what [`parse_paths`] gives for the
/// same files.
pub fn parsed_from<'a>(
    found: &[Diagnostic],
    files: impl Iterator<Item = (&'a PathBuf, &'a ParsedFile)> + Clone,
) -> Parsed {
    let mut diagnostics = found.to_vec();
    diagnostics.extend(
        files
            .clone()
            .filter_map(|(_, f)| f.text.as_ref().err().cloned()),
    );
    let mut parsed = Parsed::default();
    for (path, file) in files.filter(|(_, f)| f.text.is_ok()) {
        parsed.files.push(path.clone());
        parsed.docs.extend(file.docs.iter().cloned());
        diagnostics.extend(file.diagnostics.iter().cloned());
    }
    parsed.diagnostics = diagnostics;
    parsed
}

/// Reads and parses every `.yaml`/`.yml` file named by `paths` (directories expanded).
pub fn parse_paths<P: AsRef<Path>>(paths: &[P]) -> Parsed {
    let mut found = Vec::new();
    let files: Vec<(PathBuf, ParsedFile)> = collect_files(paths, &mut found)
        .into_iter()
        .map(|f| {
            let parsed = ParsedFile::parse(&f, read_file(&f));
            (f, parsed)
        })
        .collect();
    parsed_from(&found, files.iter().map(|(p, f)| (p, f)))
}

/// Finishes a load (checks between documents, the model), keeping the last
/// good state where the new one is broken. `previous` are the documents of the
/// last good load ([`Loaded::documents`]):
/// - every file (or directory) with an error (unreadable, not YAML, a document
///   that fails to parse or validate) keeps each document it held in
///   `previous` that it no longer holds as a valid document: a document cut
///   short, made invalid, or gone from a file that is now broken keeps its last
///   good version. Matched by file, so a name cut short or changed by the
///   damage does not matter. (A file that is validly edited or deleted loses
///   what it no longer holds: that is an intended change.)
/// - of documents with the same identity, the one in the file that held it in
///   `previous` wins (a new document with a name already in use is the
///   duplicate, reported with its file and line), else the first one read.
///
/// Returns the load and the identities of the documents kept from `previous`.
pub fn finish_keeping(parsed: Parsed, previous: &[Document]) -> (Loaded, Vec<String>) {
    finish_keeping_with(parsed, previous, None)
}

/// [`finish_keeping`], the model assembled with `cache` (kept between the
/// loads of one datastore: see [`assemble::Cache`]); the same load.
pub fn finish_keeping_cached(
    parsed: Parsed,
    previous: &[Document],
    cache: &mut assemble::Cache,
) -> (Loaded, Vec<String>) {
    finish_keeping_with(parsed, previous, Some(cache))
}

fn finish_keeping_with(
    parsed: Parsed,
    previous: &[Document],
    cache: Option<&mut assemble::Cache>,
) -> (Loaded, Vec<String>) {
    let Parsed {
        files,
        mut docs,
        diagnostics,
    } = parsed;
    let failed: BTreeSet<&Path> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.file.as_path())
        .collect();
    let mut kept = Vec::new();
    let mut kept_docs = Vec::new();
    // What the failed files still hold as valid documents.
    let held: std::collections::HashSet<(&Path, DocKey)> = if failed.is_empty() {
        Default::default()
    } else {
        docs.iter()
            .filter(|d| d.is_valid() && failed.iter().any(|f| d.file.starts_with(f)))
            .map(|d| (&*d.file, d.key()))
            .collect()
    };
    for p in previous {
        if !failed.iter().any(|f| p.file.starts_with(f)) {
            continue;
        }
        if !held.contains(&(&*p.file, p.key())) {
            kept.push(p.id.to_string());
            kept_docs.push(p.clone());
        }
    }
    if !kept_docs.is_empty() {
        docs.extend(kept_docs);
        // Back in reading order (one directory: by path), so duplicates and
        // the model's order are as if the kept documents had been read.
        let order: HashMap<&Path, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_path(), i))
            .collect();
        let mut indexed: Vec<(usize, Document)> = docs
            .into_iter()
            .map(|d| (order.get(&*d.file).copied().unwrap_or(usize::MAX), d))
            .collect();
        indexed.sort_by(|(a, x), (b, y)| (a, &x.file, x.line).cmp(&(b, &y.file, y.line)));
        docs = indexed.into_iter().map(|(_, d)| d).collect();
    }
    let previous_files: PreviousFiles = previous.iter().map(|d| (d.key(), &*d.file)).collect();
    let loaded = finish(
        docs,
        diagnostics,
        &files,
        &previous_files,
        Keep::Documents(cache),
    );
    (loaded, kept)
}

/// How a load keeps what it was made from: not at all (the Kubernetes
/// datastore's objects), or its documents (files: what the next load keeps
/// where a file is broken), the model assembled with a cache or without.
enum Keep<'c> {
    Nothing,
    Documents(Option<&'c mut assemble::Cache>),
}

/// Cross-document checks and the model; `files` in reading order.
fn finish(
    docs: Vec<Document>,
    mut diagnostics: Vec<Diagnostic>,
    files: &[PathBuf],
    previous_files: &PreviousFiles,
    keep: Keep,
) -> Loaded {
    let docs = cross_check(docs, &mut diagnostics, previous_files);
    // Report in reading order: by file (as given), then line.
    if !diagnostics.is_empty() {
        let file_order: HashMap<&Path, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_path(), i))
            .collect();
        diagnostics.sort_by_key(|d| (file_order.get(&*d.file).copied().unwrap_or(0), d.line));
    }
    // Where each policy came from, in document order (as the model lists them).
    let locations: Vec<SourceLocation> = docs
        .iter()
        .filter(|d| policy_kind(d.kind).is_some())
        .map(|d| SourceLocation {
            file: d.file.to_path_buf(),
            line: d.line,
        })
        .collect();
    let lowered = docs.iter().filter_map(|d| d.lowered.as_ref());
    let (model, documents) = match keep {
        Keep::Nothing => (assemble::to_model(lowered.map(|l| &**l)), Vec::new()),
        Keep::Documents(None) => (assemble::to_model(lowered.map(|l| &**l)), docs),
        Keep::Documents(Some(cache)) => (assemble::to_model_cached(lowered, cache), docs),
    };
    let policy_sources = model
        .policies
        .iter()
        .map(|p| p.id.clone())
        .zip(locations)
        .collect();
    Loaded {
        model,
        diagnostics,
        policy_sources,
        documents,
    }
}

pub fn policy_kind(kind: ResourceKind) -> Option<PolicyKind> {
    Some(match kind {
        ResourceKind::GlobalNetworkPolicy => PolicyKind::GlobalNetworkPolicy,
        ResourceKind::StagedGlobalNetworkPolicy => PolicyKind::StagedGlobalNetworkPolicy,
        ResourceKind::NetworkPolicy => PolicyKind::NetworkPolicy,
        ResourceKind::StagedNetworkPolicy => PolicyKind::StagedNetworkPolicy,
        ResourceKind::KubernetesNetworkPolicy => PolicyKind::KubernetesNetworkPolicy,
        ResourceKind::StagedKubernetesNetworkPolicy => PolicyKind::StagedKubernetesNetworkPolicy,
        _ => return None,
    })
}

pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    finish_keeping(parse_paths(paths), &[]).0
}
