//! Where policies and endpoints come from: the datastore the daemon was
//! started with ([`DatastoreSpec`]), running ([`Source`]: when to reload) and
//! how a load is made ([`Loader`], in a blocking task).
use std::path::PathBuf;

use anyhow::Context;

use super::state::{lock, Shared};
use crate::datastore::kubernetes::{KubeDatastore, KubeOptions, KubeSnapshot};
use crate::datastore::{Changes, FileDatastore};
use crate::model::Loaded;

/// Where the policies and endpoints come from.
#[derive(Clone, Debug)]
pub enum DatastoreSpec {
    /// A directory of YAML documents, watched, and this node's name
    /// (other nodes' workload endpoints are peers only).
    Dir(PathBuf, String),
    /// The Kubernetes API server (see [`crate::datastore::kubernetes`]).
    Kubernetes(KubeOptions),
}

impl std::fmt::Display for DatastoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d, node) => write!(f, "{} (node {node})", d.display()),
            Self::Kubernetes(k) => write!(f, "kubernetes (node {})", k.node),
        }
    }
}

/// A running datastore: where reloads come from and how a load is made.
pub(super) enum Source {
    Files(FileDatastore, String, Changes),
    Kubernetes(KubeDatastore),
}

/// Makes a load (cheap to clone; runs in a blocking task).
#[derive(Clone)]
pub(super) enum Loader {
    /// The datastore shares what the watcher saw and each file's documents
    /// with [`Source::Files`]: a load re-reads only the files that changed.
    Files(FileDatastore, String),
    Kubernetes(KubeSnapshot),
}

/// A load, with what the datastore kept of the last good state.
pub(super) struct Load {
    pub(super) loaded: Loaded,
    /// Documents kept from their last good version (files: by file).
    pub(super) kept: Vec<String>,
    /// Problems of the datastore itself (files: the directory is missing).
    pub(super) problems: Vec<String>,
}

impl Loader {
    /// A fresh load; `previous`: the documents of the load that is installed.
    pub(super) fn load(&self, previous: &[crate::model::load::Document]) -> Load {
        match self {
            Self::Files(ds, node) => {
                let l = ds.load_for_node(previous, node);
                tracing::debug!(files = l.parsed_files, "datastore files parsed again");
                Load {
                    loaded: l.loaded,
                    kept: l.kept,
                    problems: l.problem.into_iter().collect(),
                }
            }
            Self::Kubernetes(k) => Load {
                loaded: k.load(),
                kept: Vec::new(),
                problems: Vec::new(),
            },
        }
    }

    /// Loads keeping the last good state `shared` has installed.
    pub(super) fn load_for(&self, shared: &Shared) -> Load {
        let previous = std::mem::take(&mut lock(&shared.inner).enforced.good.documents);
        let load = self.load(&previous);
        lock(&shared.inner).enforced.good.documents = previous;
        load
    }
}

impl Source {
    pub(super) async fn start(spec: &DatastoreSpec) -> anyhow::Result<Source> {
        Ok(match spec {
            DatastoreSpec::Dir(dir, node) => {
                let ds = FileDatastore::new(dir);
                // Watch before the first load so no change between the two is missed.
                let changes = ds.watch().context("watching the datastore")?;
                Source::Files(ds, node.clone(), changes)
            }
            DatastoreSpec::Kubernetes(opts) => Source::Kubernetes(
                KubeDatastore::start(opts)
                    .await
                    .context("starting the Kubernetes datastore")?,
            ),
        })
    }

    pub(super) fn loader(&self) -> Loader {
        match self {
            Self::Files(ds, node, _) => Loader::Files(ds.clone(), node.clone()),
            Self::Kubernetes(k) => Loader::Kubernetes(k.snapshot()),
        }
    }

    pub(super) async fn next(&mut self) -> Option<()> {
        match self {
            Self::Files(_, _, c) => c.next().await,
            Self::Kubernetes(k) => k.next().await,
        }
    }
}
