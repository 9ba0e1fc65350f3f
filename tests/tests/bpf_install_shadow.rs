//! An install diffs against what the agent wrote into each copy of the tables
//! (its shadow), not against a read-back of the kernel's maps: after any
//! sequence of installs both copies hold exactly what the shadow says, and the
//! live copy exactly the installed tables; a write by another agent on the same
//! pinned maps is seen as drift, and an install over it still ends with the
//! right tables (a failed write of the difference reads the copy back).
use std::path::Path;

use agent::compile::compile;
use agent::compile::testgen::{random_model, scale_model, Rng, Shape};
use agent::dataplane::{host::prepare_pin_dir, loader::cleanup, Dataplane, TableSet};

/// Tables of random models (those that compile), with an empty one between.
fn random_tables(seed: u64, count: usize) -> Vec<TableSet> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    while out.len() < count {
        let model = random_model(&mut Rng::new(rng.next_u64()), Shape::default());
        if let Ok(c) = compile(&model) {
            out.push(c.tables);
        }
        if out.len() == count / 2 {
            out.push(TableSet::default());
        }
    }
    out
}

#[test]
fn installs_from_the_shadow_leave_exactly_the_installed_tables() {
    lab::require_root();
    let bpffs = Path::new("/sys/fs/bpf").join(format!("agent-shadow-{}", std::process::id()));
    prepare_pin_dir(&bpffs).unwrap();
    let mut a = Dataplane::load_pinned(&bpffs).unwrap();
    let tables = random_tables(0x5ad0_0001, 12);
    for (k, t) in tables.iter().enumerate() {
        a.install(t).unwrap();
        assert!(a.live_tables_equal(t).unwrap(), "install {k}: live copy");
        assert!(a.shadow_matches_kernel().unwrap(), "install {k}: shadow");
    }
    // Another agent on the same pinned maps (the pin directory's lock keeps
    // this from happening in the daemon) writes the copy `a` would write next
    // but one: `a`'s shadow of it is stale, which the check reports.
    let mut b = Dataplane::load_pinned(&bpffs).unwrap();
    b.install(&scale_model(30, 10, 7).pipe_compile()).unwrap();
    assert!(
        !a.shadow_matches_kernel().unwrap(),
        "the other agent's write is drift"
    );
    drop(b);
    // `a` installs into both copies again: each ends exact (the stale one's
    // deletes of keys it no longer holds fail, and it is read back).
    for t in &tables[..2] {
        a.install(t).unwrap();
        assert!(a.live_tables_equal(t).unwrap());
    }
    assert!(
        a.shadow_matches_kernel().unwrap(),
        "both copies rewritten from the shadow or read back"
    );
    drop(a);
    cleanup(&bpffs).unwrap();
}

trait PipeCompile {
    fn pipe_compile(&self) -> TableSet;
}

impl PipeCompile for agent::model::ir::Model {
    fn pipe_compile(&self) -> TableSet {
        compile(self).expect("compiles").tables
    }
}
