//! Memory of the Kubernetes datastore's cluster-wide pod view, measured with a
//! counting allocator: 10k synthetic pods (3 labels, 1 IPv4 + 1 IPv6, 1 named
//! port, a service account) reduced to `PodInfo` and kept in a BTreeMap keyed by
//! (namespace, name), as the datastore keeps them. The full Pod objects are dropped.
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use agent::datastore::kubernetes::PodInfo;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use kube::api::ObjectMeta;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn pod(i: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("web-5d8f9c7b6d-{i:05}")),
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

#[test]
fn pod_view_memory_per_pod() {
    const N: usize = 10_000;
    let before = LIVE.load(Ordering::SeqCst);
    let mut view: BTreeMap<(String, String), PodInfo> = BTreeMap::new();
    for i in 0..N {
        let p = pod(i);
        let info = PodInfo::from_pod(&p, "node-1").unwrap();
        let key = (
            p.metadata.namespace.clone().unwrap(),
            p.metadata.name.clone().unwrap(),
        );
        view.insert(key, info);
    }
    let bytes = LIVE.load(Ordering::SeqCst) - before;
    let per_pod = bytes as usize / N;
    println!(
        "pod view: {N} pods use {} KiB of heap, {per_pod} bytes per pod (allocator overhead not included)",
        bytes / 1024
    );
    assert_eq!(view.len(), N);
    assert!(per_pod < 1024, "{per_pod} bytes per pod");
}
