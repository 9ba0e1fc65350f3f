//! Memory of the Kubernetes datastore's cluster-wide view, measured with a
//! counting allocator (heap bytes requested; the allocator's own overhead is not
//! included). Synthetic pods like a real cluster's: 50 namespaces, 3 labels, an
//! IPv4 and an IPv6 address, one named port, a service account; 1% of them on
//! this node.
//!
//! 1. The pod view as the datastore keeps it (Pods reduced to `PodInfo`, in a
//!    BTreeMap keyed by (namespace, name); the Pod objects are dropped) at 10k
//!    and 100k pods.
//! 2. The full rebuild from that view (`KubeSnapshot::load`: every pod becomes a
//!    validated WorkloadEndpoint in the model) at 10k and 100k pods: the model
//!    it returns (which the daemon keeps: the enforced state) and the peak heap
//!    while building it.
//!
//! Measured (debug build on this shared 2-core machine; heap bytes):
//!
//! | pods | view     | view/pod | model     | model/pod | peak while building  | build      |
//! |------|----------|----------|-----------|-----------|----------------------|------------|
//! | 10k  |  4.3 MiB |   448 B  |  12.5 MiB |  1,314 B  |  35 MiB (3.6 KB/pod) | 1.0-1.7 s  |
//! | 100k | 42.6 MiB |   446 B  | 119.2 MiB |  1,250 B  | 343 MiB (3.5 KB/pod) |  10-16 s   |
//!
//! Before the rebuild fixes of this change (documents as JSON values instead of
//! YAML text, made one at a time, cross-checked in place, no copy of every
//! resource for the model) the same rebuild took 5.2 s at 10k and peaked at
//! 454 MiB at 100k. The model is bigger than the view: an endpoint carries its
//! labels plus the five Calico derives (namespace, orchestrator, service account,
//! pcns./pcsa. names) in a BTreeMap. The daemon holds the view, the enforced
//! model (twice: `good` and the flow view) and, while rebuilding, the peak above.
//!
//! Both grow linearly. The assertions are behavioural bounds, not timings: the
//! view under 1 KiB per pod, the model under 2 KiB per pod, the build's peak
//! under 6 KiB per pod, and 100k pods costing less than 12x 10k pods for each.
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use agent::datastore::kubernetes::{KubeSnapshot, PodInfo};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use kube::api::ObjectMeta;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size() as isize, Ordering::Relaxed) + l.size() as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const NODE: &str = "node-1";

fn pod(i: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("web-5d8f9c7b6d-{i:06}")),
            namespace: Some(format!("team-{}", i % 50)),
            labels: Some(
                [
                    ("app".to_string(), "web".to_string()),
                    ("env".to_string(), "prod".to_string()),
                    ("pod-template-hash".to_string(), "5d8f9c7b6d".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(format!("node-{}", i % 100)),
            service_account_name: Some("web".into()),
            containers: vec![Container {
                name: "web".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ips: Some(vec![
                PodIP {
                    ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                },
                PodIP {
                    ip: format!("fd00::{i:x}"),
                },
            ]),
            ..Default::default()
        }),
    }
}

type View = BTreeMap<(String, String), PodInfo>;

/// The view of `n` pods, built as the watcher builds it (one Pod at a time,
/// reduced, the Pod dropped), and its heap bytes.
fn view(n: usize) -> (View, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    let mut view = View::new();
    for i in 0..n {
        let p = pod(i);
        let info = PodInfo::from_pod(&p, NODE).unwrap();
        let key = (
            p.metadata.namespace.clone().unwrap(),
            p.metadata.name.clone().unwrap(),
        );
        view.insert(key, info);
    }
    let bytes = (LIVE.load(Ordering::SeqCst) - before) as usize;
    assert_eq!(view.len(), n);
    (view, bytes)
}

struct Rebuild {
    /// Heap held by the returned model.
    model: usize,
    /// Peak heap above the starting point while building it.
    peak: usize,
}

/// Rebuilds the model from a view of `n` pods (the snapshot's own copy of the
/// view is outside the measurement).
fn rebuild(n: usize) -> Rebuild {
    let (v, _) = view(n);
    let snapshot = KubeSnapshot::from_pods(NODE, v);
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let t = Instant::now();
    let loaded = snapshot.load();
    let took = t.elapsed();
    let peak = (PEAK.load(Ordering::SeqCst) - before) as usize;
    let model = (LIVE.load(Ordering::SeqCst) - before) as usize;
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics.first());
    assert_eq!(loaded.model.endpoints.len(), n);
    let local = loaded
        .model
        .endpoints
        .iter()
        .filter(|e| e.interface.is_some())
        .count();
    assert_eq!(local, n / 100, "only this node's pods get an interface");
    println!(
        "rebuild of {n} pods: model {} KiB ({} B/pod), peak while building {} KiB, {took:.2?}",
        model / 1024,
        model / n,
        peak / 1024
    );
    Rebuild { model, peak }
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// One test: the counting allocator is process-wide, so measurements must not
/// run concurrently.
#[test]
fn cluster_view_memory_at_10k_and_100k_pods() {
    let (small, small_bytes) = view(10_000);
    drop(small);
    let (large, large_bytes) = view(100_000);
    drop(large);
    for (n, b) in [(10_000, small_bytes), (100_000, large_bytes)] {
        println!(
            "pod view: {n} pods use {:.1} MiB of heap, {} B per pod",
            mib(b),
            b / n
        );
        assert!(b / n < 1024, "{} B per pod at {n} pods", b / n);
    }
    assert!(
        large_bytes < 12 * small_bytes,
        "the view grows faster than linearly: 10k {small_bytes} B, 100k {large_bytes} B"
    );

    let small = rebuild(10_000);
    let large = rebuild(100_000);
    for (n, r) in [(10_000, &small), (100_000, &large)] {
        assert!(
            r.model / n < 2048,
            "model: {} B/pod at {n} pods",
            r.model / n
        );
        assert!(
            r.peak / n < 6144,
            "build peak: {} B/pod at {n} pods",
            r.peak / n
        );
    }
    assert!(
        large.model < 12 * small.model && large.peak < 12 * small.peak,
        "the rebuild grows faster than linearly: 10k {} B (peak {} B), 100k {} B (peak {} B)",
        small.model,
        small.peak,
        large.model,
        large.peak
    );
}
