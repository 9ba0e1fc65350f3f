//! The conntrack sweep's cost on a full table (as root: it loads the
//! programs' maps). The agent sweeps every 10 s; under a high rate of short
//! connections the table is full of closed flows each time, and the sweep's
//! CPU is taken from the node's traffic.
//!
//! Per table state (every entry live: a sweep that deletes nothing; every
//! entry idle: a sweep that deletes everything), one run of the agent's
//! `sweep_conntrack` (batched reads, one call per idle entry) against the walk
//! aya's typed map offers (`keys()`, then a lookup and a delete per entry:
//! three system calls an entry), in alternation, medians of 5 runs.
//!
//! `cargo +1.99.0 bench -p agent-tests --bench conntrack_sweep` (release, root; ~30 s).
use std::time::{Duration, Instant};

use agent::dataplane::{monotonic_coarse_ns, Dataplane};
use agent_common::{CtKey, CtValue};

/// Entries written; an LRU map's free list is per CPU, so writes from one CPU
/// fill at most its share (131,072 of 262,144 here) and evict beyond it.
const ENTRIES: u32 = 200_000;
const RUNS: usize = 5;

fn fill(dp: &mut Dataplane, last_seen_ns: u64) {
    let mut ct = dp.conntrack().expect("conntrack");
    for i in 0..ENTRIES {
        let mut addr_lo = [0u8; 16];
        addr_lo[..4].copy_from_slice(&(0x0a41_0000 | i).to_be_bytes());
        let key = CtKey {
            addr_lo,
            addr_hi: [10, 66, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port_lo: 40_000,
            port_hi: 8080,
            protocol: 17,
            ..CtKey::default()
        };
        let value = CtValue {
            last_seen_ns,
            ..CtValue::default()
        };
        ct.insert(&key, &value, 0).expect("insert");
    }
}

/// aya's walk: every key, then a lookup and (when idle) a delete per entry.
fn walk_per_entry(dp: &mut Dataplane, now: u64) -> usize {
    let mut ct = dp.conntrack().expect("conntrack");
    let keys: Vec<CtKey> = ct.keys().filter_map(Result::ok).collect();
    let mut removed = 0;
    for key in keys {
        if let Ok(v) = ct.get(&key, 0) {
            if v.is_idle(key.protocol, now) && ct.remove(&key).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut dp = Dataplane::load().expect("loads the dataplane (run as root)");
    let now = monotonic_coarse_ns();
    println!("| table | entries | per entry (aya's walk), ms | batched (the agent's sweep), ms | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (state, last_seen) in [("all live", now), ("all idle", 0)] {
        let (mut walk, mut batched) = (Vec::new(), Vec::new());
        let mut entries = 0;
        for _ in 0..RUNS {
            fill(&mut dp, last_seen);
            let started = Instant::now();
            let removed = walk_per_entry(&mut dp, now);
            walk.push(started.elapsed());
            fill(&mut dp, last_seen);
            let held = dp.conntrack().expect("conntrack").keys().count();
            let started = Instant::now();
            let sweep = dp.sweep_conntrack(now).expect("sweep");
            batched.push(started.elapsed());
            assert_eq!(sweep.removed, removed, "both delete the same entries");
            assert_eq!(
                sweep.live + sweep.removed,
                held,
                "the sweep saw every entry"
            );
            entries = held;
        }
        let (w, b) = (median(walk), median(batched));
        println!(
            "| {state} | {entries} | {:.1} | {:.1} | {:.2}x |",
            w.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            b.as_secs_f64() / w.as_secs_f64()
        );
    }
}
