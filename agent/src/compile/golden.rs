//! The compiler's output is pinned: digests of the tables and endpoints that
//! the compiler of commit b448707 (before the sparse rows and the incremental
//! cache) produced for fixed random models. An optimization must give the
//! same tables byte for byte, not just tables that agree with the evaluator.
//! The random models' digests were pinned again when the generator gained
//! `services` matches: the compiler of h-svcobj (b448707 plus the service port
//! cuts, before the sparse rows) gave the same digests as the optimized one.
//!
//! After an intended change of the output, regenerate the digests with
//! `GOLDEN_PRINT=1 cargo test -p agent --lib compile::golden -- --nocapture`
//! and say why in the commit.
use sha1::{Digest, Sha1};

use super::testgen::{per_pod_label_model, random_model, scale_model, Rng, Shape};
use super::{compile, Compiled};
use crate::model::ir::Model;

/// A stable digest of everything the compiler hands the loader.
fn digest(c: &Compiled) -> String {
    let mut h = Sha1::new();
    h.update(format!("{:?}", c.tables).as_bytes());
    h.update(format!("{:?}", c.endpoints).as_bytes());
    h.update(format!("{:?} {:?} {:?}", c.policies, c.tiers, c.profiles).as_bytes());
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// The digest of a batch of models (a compile error counts as its message).
fn batch_digest(models: impl Iterator<Item = Model>) -> (String, usize) {
    let mut h = Sha1::new();
    let mut n = 0;
    for model in models {
        n += 1;
        match compile(&model) {
            Ok(c) => h.update(digest(&c).as_bytes()),
            Err(e) => h.update(e.to_string().as_bytes()),
        }
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (hex, n)
}

fn random_models(seed: u64, count: usize, shape: Shape) -> impl Iterator<Item = Model> {
    let mut rng = Rng::new(seed);
    (0..count).map(move |_| random_model(&mut Rng::new(rng.next_u64()), shape))
}

fn check(name: &str, models: impl Iterator<Item = Model>, want: &str) {
    let (got, n) = batch_digest(models);
    if std::env::var_os("GOLDEN_PRINT").is_some() {
        eprintln!("{name}: {got} ({n} models)");
        return;
    }
    assert_eq!(
        got, want,
        "{name}: the compiled tables changed ({n} models)"
    );
}

#[test]
fn random_models_compile_to_the_pinned_tables() {
    check(
        "random",
        random_models(0x901d_0001, 200, Shape::default()),
        "aac3acbb58e97a1ffdbed031fce618677d52a0c3",
    );
    let many_source_ports = Shape {
        source_ports: 70,
        two_addresses: 0,
    };
    check(
        "random, source ports",
        random_models(0x901d_0002, 100, many_source_ports),
        "fb773a6d046fc8c762d6bf6042296d3d4e36a4d9",
    );
}

#[test]
fn scale_models_compile_to_the_pinned_tables() {
    let models = [(24, 12, 1), (40, 30, 2)]
        .into_iter()
        .map(|(e, p, s)| scale_model(e, p, s))
        .chain([per_pod_label_model(40, 20, 3)]);
    check("scale", models, "2126a74cc2c24faaeb1aced51c693a1b99454d3b");
}
