//! The agent's side of the relay (`agent run --relay ADDR`): every record the
//! daemon makes or updates goes into an [`Outbox`] under a new sequence
//! number, and batches of what the relay has not stored are pushed to it.
//!
//! The relay answers each push with the last sequence it stored for this
//! agent run (boot id). A relay that restarted answers less than the agent
//! believed (0), and the agent re-sends everything its outbox still holds
//! from there; a batch sent twice is stored once. While the relay is
//! unreachable the daemon works as without one (its own history, `agent
//! flows` on the node); the outbox is bounded as the flow table is, keeping
//! the latest version of each record.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::TryRecvError};

use super::convert::to_record;
use super::proto::flow_ingest_client::FlowIngestClient;
use super::proto::{PushRequest, SequencedRecord};
use super::store::RecordKey;
use crate::flows::{Flow, View, HISTORY};

/// Records per push at most.
pub const BATCH: usize = 500;
/// Pushes wait this long for more records to gather.
pub const LINGER: Duration = Duration::from_millis(200);
/// An idle agent pushes an empty batch this often, to learn that a restarted
/// relay lost its records (and re-send them) without waiting for traffic.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Retry delays while the relay is unreachable.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where and as whom to push (`agent run --relay --relay-tls-dir --node`).
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// `host:port` of the relay.
    pub addr: String,
    /// `ca.crt`, `tls.crt`, `tls.key` (see [`super::tls`]).
    pub tls_dir: PathBuf,
    pub node: String,
}

/// The latest version of each record, by sequence (oldest first), bounded.
pub struct Outbox {
    seq: u64,
    entries: BTreeMap<u64, Arc<Flow>>,
    by_key: HashMap<RecordKey, u64>,
    bound: usize,
}

impl Outbox {
    pub fn new(bound: usize) -> Outbox {
        Outbox {
            seq: 0,
            entries: BTreeMap::new(),
            by_key: HashMap::new(),
            bound,
        }
    }

    /// A new or updated record, under the next sequence number.
    pub fn add(&mut self, flow: Arc<Flow>) {
        self.seq += 1;
        if let Some(old) = self.by_key.insert(RecordKey::of(&flow), self.seq) {
            self.entries.remove(&old);
        }
        self.entries.insert(self.seq, flow);
        while self.entries.len() > self.bound {
            if let Some((seq, gone)) = self.entries.pop_first() {
                let key = RecordKey::of(&gone);
                if self.by_key.get(&key) == Some(&seq) {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// Up to `max` records after sequence `seq`, oldest first.
    pub fn after(&self, seq: u64, max: usize) -> Vec<(u64, Arc<Flow>)> {
        self.entries
            .range(seq + 1..)
            .take(max)
            .map(|(s, f)| (*s, f.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the pusher reads from the daemon.
pub struct Feed {
    /// New and updated records.
    pub rx: broadcast::Receiver<Arc<Flow>>,
    /// The whole kept history (at start, and after falling behind `rx`).
    pub history: Box<dyn Fn() -> Vec<Arc<Flow>> + Send>,
    /// The current view (for the workloads' labels).
    pub view: Box<dyn Fn() -> Arc<View> + Send>,
}

/// A random id for this agent run (sequence numbers restart with it).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), crate::flows::unix_now_ns()))
}

/// Pushes forever (until the daemon stops or its broadcast closes).
pub async fn run(opts: PushOptions, mut feed: Feed) -> anyhow::Result<()> {
    let channel = super::tls::channel(&opts.addr, &opts.tls_dir)?;
    let mut client = FlowIngestClient::new(channel);
    let boot_id = boot_id();
    let mut outbox = Outbox::new(HISTORY);
    for f in (feed.history)() {
        outbox.add(f);
    }
    // The last sequence the relay said it stored, and whether it answered last time.
    let mut acked = 0;
    let mut reachable: Option<bool> = None;
    let mut backoff = BACKOFF_MIN;
    let mut heartbeat_due = false;
    tracing::info!(relay = %opts.addr, node = %opts.node, %boot_id, "pushing flow records to the relay");
    loop {
        if !take_new(&mut feed, &mut outbox) {
            return Ok(());
        }
        let batch = outbox.after(acked, BATCH);
        if batch.is_empty() && !heartbeat_due {
            // Wait for the next record, then let a few more gather.
            match tokio::time::timeout(HEARTBEAT, feed.rx.recv()).await {
                Ok(Ok(f)) => outbox.add(f),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(()),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Err(_) => heartbeat_due = true,
            }
            if !heartbeat_due {
                tokio::time::sleep(LINGER).await;
            }
            continue;
        }
        heartbeat_due = false;
        let view = (feed.view)();
        let labels = |ip| view.labels_of(ip).cloned().unwrap_or_default();
        let request = PushRequest {
            node: opts.node.clone(),
            boot_id: boot_id.clone(),
            after_seq: acked,
            records: batch
                .iter()
                .map(|(seq, f)| SequencedRecord {
                    seq: *seq,
                    record: Some(to_record(f, &opts.node, &labels)),
                })
                .collect(),
        };
        match tokio::time::timeout(Duration::from_secs(10), client.push(request)).await {
            Ok(Ok(reply)) => {
                let last = reply.into_inner().last_seq;
                if reachable != Some(true) {
                    tracing::info!(relay = %opts.addr, stored = last, kept = outbox.len(), "relay reachable");
                }
                if last < acked {
                    tracing::info!(relay = %opts.addr, from = last, "the relay has fewer of our records (it restarted): re-sending what we hold");
                }
                acked = last;
                reachable = Some(true);
                backoff = BACKOFF_MIN;
            }
            failed => {
                if reachable != Some(false) {
                    let why = match failed {
                        Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
                        _ => "no answer in 10s".to_string(),
                    };
                    tracing::warn!(relay = %opts.addr, error = %why, kept = outbox.len(), "relay unreachable; records are kept here and re-sent when it is back");
                }
                reachable = Some(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Moves what the broadcast holds into the outbox; after falling behind it,
/// the whole history. False when the daemon is gone.
fn take_new(feed: &mut Feed, outbox: &mut Outbox) -> bool {
    loop {
        match feed.rx.try_recv() {
            Ok(f) => outbox.add(f),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Closed) => return false,
            Err(TryRecvError::Lagged(n)) => {
                tracing::debug!(
                    missed = n,
                    "relay pusher fell behind; taking the whole history"
                );
                for f in (feed.history)() {
                    outbox.add(f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::store::tests::flow;
    use crate::relay::RelayStore;

    #[test]
    fn the_outbox_keeps_the_latest_version_of_each_record_bounded() {
        let mut outbox = Outbox::new(2);
        outbox.add(Arc::new(flow("10.0.0.1", 1, 10)));
        outbox.add(Arc::new(flow("10.0.0.1", 2, 20)));
        let mut updated = flow("10.0.0.1", 1, 30);
        updated.count = 2;
        outbox.add(Arc::new(updated));
        let seqs: Vec<(u64, u64)> = outbox
            .after(0, 10)
            .iter()
            .map(|(s, f)| (*s, f.last_seen_ns))
            .collect();
        assert_eq!(seqs, [(2, 20), (3, 30)]);
        outbox.add(Arc::new(flow("10.0.0.1", 3, 40)));
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.after(3, 10).len(), 1);
    }

    #[test]
    fn a_restarted_relay_gets_everything_the_outbox_holds() {
        let mut outbox = Outbox::new(100);
        for port in 1..=5 {
            outbox.add(Arc::new(flow("10.0.0.1", port, port as u64)));
        }
        let send = |store: &RelayStore, after: u64, outbox: &Outbox| {
            let batch = outbox
                .after(after, 100)
                .into_iter()
                .map(|(s, f)| (s, Flow::clone(&f)))
                .collect();
            store.push("n1", "boot", after, batch)
        };
        let relay = RelayStore::default();
        let acked = send(&relay, 0, &outbox);
        assert_eq!(acked, 5);
        // The relay restarts: the agent's next push (after 5) is answered with 0 ...
        let relay = RelayStore::default();
        outbox.add(Arc::new(flow("10.0.0.1", 6, 6)));
        let acked = send(&relay, acked, &outbox);
        assert_eq!(acked, 0);
        // ... and the agent re-sends all it holds.
        assert_eq!(send(&relay, acked, &outbox), 6);
        assert_eq!(relay.records(None).len(), 6);
    }
}
