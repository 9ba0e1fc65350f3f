//! The reference evaluator: Calico's policy semantics in plain Rust.
