//! Where the compiler's selector rows should switch from one evaluation per
//! endpoint to one per distinct label set (`DEDUPLICATED_SELECTORS` in
//! `agent/src/compile/peers/owners.rs`).
//!
//! Each compile gives every endpoint a row: which of the policies' rule
//! selectors match its labels. Per endpoint that is `k` evaluations; per label
//! set it is one hash-map lookup of the label set (hashing every key and
//! value, and comparing them on a hit) plus `k` evaluations per distinct set.
//! The map pays when `k` evaluations cost more than a lookup. This runs both
//! loops, shaped as `Owners` runs them (a pre-sized foldhash map keyed by
//! `&Labels`, a row of bit words per evaluation), over 10,000 endpoints with the labels a
//! Calico workload endpoint carries, at 1 to 64 selectors, with every label
//! set distinct (a StatefulSet's pods) and with 20 pods per set (Deployments),
//! and prints ns per endpoint and the smallest `k` where the map is cheaper.
//!
//! `cargo +1.99.0 bench -p agent-tests --bench selector_rows` (release; ~20 s).
use std::hint::black_box;
use std::time::Instant;

use agent::selector::{parse, Labels, Selector};
use foldhash::{HashMap, HashMapExt};

const ENDPOINTS: usize = 10_000;
const SELECTOR_COUNTS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Timed passes per point; the median is kept.
const PASSES: usize = 15;

/// The labels of endpoint `i` when `per_set` endpoints share each set: the
/// pod's own labels plus the ones Calico adds (namespace, orchestrator,
/// service account).
fn labels(i: usize, per_set: usize) -> Labels {
    let set = i / per_set;
    let app = set % 97;
    [
        ("app", format!("app-{app}")),
        (
            "pod-template-hash",
            format!("{:08x}", set.wrapping_mul(2_654_435_761)),
        ),
        ("tier", ["web", "api", "db"][set % 3].to_string()),
        ("version", format!("v{}", set % 4)),
        ("projectcalico.org/namespace", format!("ns-{}", app % 13)),
        ("projectcalico.org/orchestrator", "k8s".to_string()),
        ("projectcalico.org/serviceaccount", format!("sa-{app}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `k` rule selectors of the shapes policies use, cycling through them.
fn selectors(k: usize) -> Vec<Selector> {
    (0..k)
        .map(|j| {
            let text = match j % 4 {
                0 => format!("app == 'app-{}'", j % 97),
                1 => format!("tier in {{'web', 'api'}} && version != 'v{}'", j % 4),
                2 => format!("projectcalico.org/namespace == 'ns-{}' && has(app)", j % 13),
                _ => format!(
                    "app == 'app-{}' || projectcalico.org/serviceaccount == 'sa-{}'",
                    j % 97,
                    j % 89
                ),
            };
            parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"))
        })
        .collect()
}

/// One row of `words` words: the bits of the selectors matching `labels`.
fn evaluate(rows: &mut Vec<u64>, words: usize, selectors: &[Selector], labels: &Labels) -> usize {
    let at = rows.len();
    rows.resize(at + words, 0);
    for (k, s) in selectors.iter().enumerate() {
        if s.evaluate(labels) {
            rows[at + k / 64] |= 1 << (k % 64);
        }
    }
    at
}

fn per_endpoint(endpoints: &[Labels], selectors: &[Selector]) -> Vec<usize> {
    let words = selectors.len().div_ceil(64);
    let mut rows = Vec::new();
    let rows_of: Vec<usize> = endpoints
        .iter()
        .map(|l| evaluate(&mut rows, words, selectors, l))
        .collect();
    black_box(&rows);
    rows_of
}

fn per_label_set(endpoints: &[Labels], selectors: &[Selector]) -> Vec<usize> {
    let words = selectors.len().div_ceil(64);
    let mut rows = Vec::new();
    let mut row_of: HashMap<&Labels, usize> = HashMap::with_capacity(endpoints.len());
    let rows_of: Vec<usize> = endpoints
        .iter()
        .map(|l| {
            *row_of
                .entry(l)
                .or_insert_with(|| evaluate(&mut rows, words, selectors, l))
        })
        .collect();
    black_box(&rows);
    rows_of
}

/// Median ns per endpoint of `f` over [`PASSES`] passes.
fn ns_per_endpoint(endpoints: &[Labels], f: impl Fn() -> Vec<usize>) -> f64 {
    let mut t: Vec<f64> = (0..PASSES)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed().as_nanos() as f64 / endpoints.len() as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[PASSES / 2]
}

fn main() {
    println!("| pods per label set | selectors | per endpoint, ns | per label set, ns | ratio |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for per_set in [1, 20] {
        let endpoints: Vec<Labels> = (0..ENDPOINTS).map(|i| labels(i, per_set)).collect();
        let mut crossover = None;
        for k in SELECTOR_COUNTS {
            let sel = selectors(k);
            // Warm both, then alternate so drift hits both alike.
            per_endpoint(&endpoints, &sel);
            per_label_set(&endpoints, &sel);
            let each = ns_per_endpoint(&endpoints, || per_endpoint(&endpoints, &sel));
            let shared = ns_per_endpoint(&endpoints, || per_label_set(&endpoints, &sel));
            println!(
                "| {per_set} | {k} | {each:.0} | {shared:.0} | {:.2}x |",
                shared / each
            );
            if shared < each && crossover.is_none() {
                crossover = Some(k);
            }
        }
        match crossover {
            Some(k) => {
                println!("\n{per_set} pods per label set: the map is cheaper from {k} selectors\n")
            }
            None => println!(
                "\n{per_set} pods per label set: the map is never cheaper up to 64 selectors\n"
            ),
        }
    }
}
