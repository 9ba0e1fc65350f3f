//! The files datastore: a directory of YAML documents, loaded with
//! [`crate::model::load_paths`] and watched for changes (files added, changed,
//! removed, renamed; editors' atomic saves), with the last good state of a
//! document kept while its new text is rejected.
//!
//! Files: `files` (loading), `file_cache` (each file's documents kept
//! between loads), `file_watch` (watching), `keep_last_good`;
//! [`kubernetes`]: the Kubernetes datastore.
mod file_cache;
mod file_watch;
mod files;
mod keep_last_good;
pub mod kubernetes;
#[cfg(test)]
mod test_docs;

pub use file_watch::{Changes, DEBOUNCE, MAX_WAIT, RETRY};
pub use files::{FileDatastore, FileLoad};
pub use keep_last_good::keep_last_good;
