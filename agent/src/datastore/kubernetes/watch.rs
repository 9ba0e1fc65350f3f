//! The watchers: one kube-rs watcher per kind (and one on Pods), each keeping
//! its part of the [`State`], plus the poll that notices local pods' route changes.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::discovery::resolve_calico_api;
use super::names::{document, CalicoApi, CalicoGroup};
use super::pods::PodInfo;
use super::routes::host_routes;
use super::services;
use super::view::{local_interfaces, lock, unsynced, KubeSnapshot, State};
use super::{client, Key};
use crate::model::Loaded;

/// How long the first build waits for every kind's initial list (a kind whose
/// CRD is not installed never lists; the agent then starts without it).
pub const INITIAL_SYNC: Duration = Duration::from_secs(10);
/// How often local pods' interfaces are re-resolved from the routing table.
pub const ROUTE_POLL: Duration = Duration::from_secs(1);
/// Quiet time after the last change before rebuilding.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The first retry delay of a failing watch.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest retry delay of a failing watch: after an API-server outage the
/// view is current again within this (plus a re-list) of the server's return.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Retry delays of a failing watch: [`BACKOFF_MIN`] doubling up to
/// [`BACKOFF_MAX`], each drawn uniformly from [d/2, d) so that the watchers of
/// many nodes do not retry in step (kube-rs' default goes up to 30 s). Reset by
/// the first event after a failure.
///
/// kube-runtime's exponential backoff (backon): its jitter adds up to 100 % to
/// each delay, so the base is half of each step.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN / 2)
        .with_max_delay(BACKOFF_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// This node's name (pods with this `spec.nodeName` are enforced here).
    pub node: String,
    /// Kubeconfig file; `None`: the in-cluster config or `$KUBECONFIG` / ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// Where Calico's resources are read from.
    pub calico_api: CalicoApi,
}

/// The running watchers and their view of the cluster.
pub struct KubeDatastore {
    node: String,
    group: CalicoGroup,
    state: Arc<Mutex<State>>,
    rx: mpsc::UnboundedReceiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubeDatastore {
    /// Connects, starts every watcher and waits (up to [`INITIAL_SYNC`]) for
    /// their first lists.
    pub async fn start(opts: &KubeOptions) -> anyhow::Result<KubeDatastore> {
        let client = client(opts.kubeconfig.as_deref()).await?;
        let choice = resolve_calico_api(&client, opts.calico_api, INITIAL_SYNC).await?;
        let group = choice.group;
        let state = Arc::new(Mutex::new(State {
            calico_api: choice,
            ..State::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for kind in group.kinds() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
            let k = *kind;
            tasks.push(tokio::spawn(watch(
                api,
                kind.label(),
                state.clone(),
                tx.clone(),
                move |o: DynamicObject| Some(Stored::Doc(document(&k, &o))),
            )));
        }
        let (endpoints, why) = services::endpoints_kind(&client).await;
        tracing::info!(kind = %endpoints.label(), version = endpoints.version, why = %why, "watching Services and their endpoints as {}", endpoints.api_version());
        for kind in [services::SERVICE, endpoints] {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
            lock(&state).extra_kinds.push(kind.label());
            tasks.push(tokio::spawn(watch(
                api,
                kind.label(),
                state.clone(),
                tx.clone(),
                move |o: DynamicObject| Some(Stored::Doc(services::document(&kind, &o))),
            )));
        }
        let node = opts.node.clone();
        let pods: Api<Pod> = Api::all(client.clone());
        tasks.push(tokio::spawn(watch(
            pods,
            "Pod".into(),
            state.clone(),
            tx.clone(),
            move |p: Pod| PodInfo::from_pod(&p, &node).map(Stored::Pod),
        )));
        tasks.push(tokio::spawn(poll_routes(
            state.clone(),
            tx.clone(),
            opts.node.clone(),
        )));
        let ds = KubeDatastore {
            node: opts.node.clone(),
            group,
            state,
            rx,
            tasks,
        };
        ds.wait_initial_sync().await;
        Ok(ds)
    }

    /// Waits up to [`INITIAL_SYNC`] for every kind's first list; warns about
    /// those still missing then (they load when they list).
    async fn wait_initial_sync(&self) {
        let deadline = tokio::time::Instant::now() + INITIAL_SYNC;
        loop {
            let missing = self.unsynced();
            if missing.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return tracing::warn!(
                    kinds = ?missing,
                    "no initial list yet (CRD not installed, no permission or API server \
                     unreachable); starting without them, they load when they list"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kinds (labels) whose first list has not completed.
    pub fn unsynced(&self) -> Vec<String> {
        unsynced(self.group, &self.state)
    }

    pub fn snapshot(&self) -> KubeSnapshot {
        KubeSnapshot {
            node: self.node.clone(),
            group: self.group,
            state: self.state.clone(),
        }
    }

    pub fn load(&self) -> Loaded {
        self.snapshot().load()
    }

    /// Waits for the next change and then for [`DEBOUNCE`] of quiet.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}

impl Drop for KubeDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Routes change without any API event (the CNI adds the veth after the pod
/// object has its IP): signals a rebuild when a local pod's interface would
/// change, checking every [`ROUTE_POLL`].
async fn poll_routes(state: Arc<Mutex<State>>, tx: mpsc::UnboundedSender<()>, node: String) {
    let mut tick = tokio::time::interval(ROUTE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let routes = host_routes();
        let st = lock(&state);
        let now = local_interfaces(&st, &routes);
        if now != st.interfaces {
            tracing::info!(node, "a local pod's host route changed");
            let _ = tx.send(());
        }
    }
}

enum Stored {
    Doc(Value),
    Pod(PodInfo),
}

fn key_of<K: kube::Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn put(st: &mut State, label: &str, key: Key, v: Option<Stored>) {
    match v {
        Some(Stored::Doc(d)) => {
            st.docs.entry(label.to_string()).or_default().insert(key, d);
        }
        Some(Stored::Pod(p)) => {
            st.pods.insert(key, p);
        }
        None => {
            st.docs.entry(label.to_string()).or_default().remove(&key);
            st.pods.remove(&key);
        }
    }
}

/// Runs one kind's watcher forever, keeping its part of the state.
async fn watch<K, F>(
    api: Api<K>,
    label: String,
    state: Arc<Mutex<State>>,
    tx: mpsc::UnboundedSender<()>,
    convert: F,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(K) -> Option<Stored>,
{
    let stream = watcher::watcher(api, watcher::Config::default()).backoff(watch_backoff());
    futures::pin_mut!(stream);
    let mut buffer: Option<Vec<(Key, Stored)>> = None;
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if !failing {
                    tracing::warn!(kind = %label, error = %e, "watch failed; retrying with backoff, the last state stays enforced");
                }
                failing = true;
                lock(&state).failing.insert(label.clone(), e.to_string());
                continue;
            }
        };
        if failing {
            tracing::info!(kind = %label, "watch recovered");
            lock(&state).failing.remove(&label);
            failing = false;
        }
        match ev {
            Event::Init => buffer = Some(Vec::new()),
            Event::InitApply(o) => {
                let key = key_of(&o);
                if let Some(v) = convert(o) {
                    buffer.get_or_insert_with(Vec::new).push((key, v));
                }
            }
            Event::InitDone => {
                let items = buffer.take().unwrap_or_default();
                let mut st = lock(&state);
                if label == "Pod" {
                    st.pods.clear();
                } else {
                    st.docs.insert(label.clone(), BTreeMap::new());
                }
                let n = items.len();
                for (k, v) in items {
                    put(&mut st, &label, k, Some(v));
                }
                let first = st.synced.insert(label.clone());
                drop(st);
                tracing::debug!(kind = %label, objects = n, first, "listed");
                let _ = tx.send(());
            }
            Event::Apply(o) => {
                let key = key_of(&o);
                let v = convert(o);
                put(&mut lock(&state), &label, key, v);
                let _ = tx.send(());
            }
            Event::Delete(o) => {
                let key = key_of(&o);
                put(&mut lock(&state), &label, key, None);
                let _ = tx.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_is_jittered_capped_at_5s_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = watch_backoff();
        let first: Vec<Duration> = b.by_ref().take(12).collect();
        for (i, d) in first.iter().enumerate() {
            let step = (BACKOFF_MIN * 2u32.pow(i as u32)).min(BACKOFF_MAX);
            assert!(
                *d >= step / 2 && *d <= step,
                "{i}: {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        assert!(first.iter().all(|d| *d <= BACKOFF_MAX));
        // Jittered: the capped delays are not all equal.
        assert!(first[6..].windows(2).any(|w| w[0] != w[1]), "{first:?}");
        b.reset();
        assert!(b.next().unwrap() <= BACKOFF_MIN);
    }
}
