//! Flow history on disk: the daemon's flow records in JSON-lines segment
//! files (`flows-<started unix ns>.jsonl`) in one directory, so the records,
//! the staged report's window and `--require-clean` survive restarts.
//!
//! - Writing never blocks the event path: records go through a bounded
//!   channel (`try_send`; a full channel is counted and written down as a gap)
//!   to a writer thread that keeps the latest version of each record and writes
//!   them once per [`FLUSH_EVERY`] (a record updated 100 times in a second is
//!   one line).
//! - A segment is rotated at 1/16 of the byte bound or 1/48 of the age bound;
//!   after each write the oldest segments go while the directory holds more than
//!   the byte bound, and any whose last write is older than the age bound.
//! - Reading keeps the last line of each record (later lines are newer
//!   versions). Records are complete from the start of the oldest segment
//!   kept: the first agent's start, or the rotation after which older segments
//!   were pruned. A line that does not parse (a crash mid-write, a damaged
//!   file) is skipped with a warning, never fatal.
//! - Promotion events (`{"promotion": {..}}`, [`super::promotion`]) are written
//!   beside the records, so `agent flows` still shows why verdicts changed
//!   after the agent restarts (the newest [`super::promotion::KEPT`] are read
//!   back).
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::promotion::{PromotionEvent, KEPT as PROMOTIONS_KEPT};
use super::{unix_now_ns, Flow};

/// How often the writer writes what it received.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Records waiting for the writer; more are counted as missed. Each holds a
/// record the in-memory table may already have dropped: the bound is the
/// queue's memory (65,536 let a flood of denied flows grow the agent by
/// ~200 MB in the soak test).
const CHANNEL: usize = 4_096;
/// Records a live staged report reads back from disk at most (the newest):
/// its memory is bounded; an older window is reported as incomplete.
pub const REPORT_RECORDS: usize = 50_000;
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(48 * 3600);

#[derive(Clone, Debug)]
pub struct HistoryOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// One line of a segment.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// An agent started writing here; `previous_ns`: the last line written
    /// before (the previous agent stopped or died after it).
    Start {
        at_ns: u64,
        previous_ns: Option<u64>,
    },
    /// Records the writer could not take (it fell behind) up to `at_ns`.
    Gap { at_ns: u64, missed: u64 },
    /// A record's latest version; `ifindex` completes its key.
    Flow { ifindex: u32, flow: Box<Flow> },
    /// A step of a commit-confirmed promotion: the flows stream's own line.
    Promotion(PromotionEvent),
}

/// What the directory holds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The latest version of each record (interface index, record), oldest first.
    pub records: Vec<(u32, Flow)>,
    /// Records are complete from here (unix ns): the oldest segment's start.
    pub complete_from_ns: Option<u64>,
    /// The newest line's time.
    pub last_ns: Option<u64>,
    /// Restarts and gaps, for the report's window.
    pub notes: Vec<String>,
    pub bytes: u64,
    /// The newest promotion events, oldest first.
    pub promotions: std::collections::VecDeque<PromotionEvent>,
}

/// Key of a record on disk: the in-memory table's, with the interface.
type DiskKey = (
    u32,
    u32,
    String,
    std::net::IpAddr,
    u16,
    std::net::IpAddr,
    u16,
    u8,
);

fn disk_key(ifindex: u32, f: &Flow) -> DiskKey {
    (
        ifindex,
        f.reporter.endpoint_id,
        f.direction.clone(),
        f.src.ip,
        f.src.port,
        f.dst.ip,
        f.dst.port,
        f.protocol_number,
    )
}

/// The segment files of `dir`, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let started = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("flows-")?.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(started) = started {
            v.push((started, path));
        }
    }
    v.sort();
    Ok(v)
}

/// Reads every segment of `dir` (missing: empty). Unreadable lines and files
/// are skipped with a warning.
pub fn load(dir: &Path) -> Loaded {
    load_newest(dir, usize::MAX)
}

/// As [`load`], keeping at most `max` records (the newest): memory stays
/// bounded however large the history on disk. When older records had to go,
/// the records are complete only from the newest of them on.
pub fn load_newest(dir: &Path, max: usize) -> Loaded {
    let mut out = Loaded::default();
    let files = match segments(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "flow history unreadable; starting without it");
            return out;
        }
    };
    let mut latest = Newest::new(max);
    out.complete_from_ns = files.first().map(|(started, _)| *started);
    for (_, path) in &files {
        read_segment(path, &mut latest, &mut out);
    }
    if let Some(dropped) = latest.dropped_until_ns {
        out.complete_from_ns = out.complete_from_ns.max(Some(dropped));
        out.notes.push(format!(
            "only the newest {max} records on disk were read: complete from {}",
            super::rfc3339(dropped)
        ));
    }
    let mut records: Vec<(u32, Flow)> = latest.map.into_values().map(|(_, r)| r).collect();
    records.sort_by_key(|(_, f)| f.last_seen_ns);
    out.records = records;
    out
}

/// The latest version of each record, at most `max` of them: the ones
/// updated longest ago go first (lines are written roughly in time order).
struct Newest {
    map: HashMap<DiskKey, (u64, (u32, Flow))>,
    order: std::collections::VecDeque<(u64, DiskKey)>,
    seq: u64,
    max: usize,
    /// The last report of the newest record that had to go.
    dropped_until_ns: Option<u64>,
}

impl Newest {
    fn new(max: usize) -> Newest {
        Newest {
            map: HashMap::new(),
            order: Default::default(),
            seq: 0,
            max: max.max(1),
            dropped_until_ns: None,
        }
    }

    fn insert(&mut self, ifindex: u32, flow: Flow) {
        self.seq += 1;
        let key = disk_key(ifindex, &flow);
        self.order.push_back((self.seq, key.clone()));
        self.map.insert(key, (self.seq, (ifindex, flow)));
        while self.map.len() > self.max {
            let Some((seq, key)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|(s, _)| *s == seq) {
                if let Some((_, (_, gone))) = self.map.remove(&key) {
                    self.dropped_until_ns = self.dropped_until_ns.max(Some(gone.last_seen_ns));
                }
            }
        }
        // Updates of the same records leave stale entries behind: drop them.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(seq, key)| map.get(key).is_some_and(|(s, _)| s == seq));
        }
    }
}

fn read_segment(path: &Path, latest: &mut Newest, out: &mut Loaded) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "flow history segment unreadable; skipped");
            return;
        }
    };
    out.bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bad = 0usize;
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let parsed = line
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_slice::<Line>(&l).map_err(|e| e.to_string()));
        let line = match parsed {
            Ok(l) => l,
            Err(e) => {
                if bad == 0 {
                    tracing::warn!(file = %path.display(), line = n + 1, error = %e, "flow history: unreadable line skipped (a crash mid-write?)");
                }
                bad += 1;
                continue;
            }
        };
        match line {
            Line::Start { at_ns, previous_ns } => {
                if let Some(prev) = previous_ns {
                    out.notes.push(format!(
                        "the agent was restarted at {} (last record written {}): flows in \
                         between are kept as far as the kernel's event ring held them",
                        super::rfc3339(at_ns),
                        super::rfc3339(prev)
                    ));
                }
                out.last_ns = Some(at_ns);
            }
            Line::Gap { at_ns, missed } => out.notes.push(format!(
                "{missed} flow records were not written to the history (the writer fell \
                 behind) until {}",
                super::rfc3339(at_ns)
            )),
            Line::Flow { ifindex, flow } => {
                out.last_ns = out.last_ns.max(Some(flow.last_seen_ns));
                latest.insert(ifindex, *flow);
            }
            Line::Promotion(event) => {
                out.last_ns = out.last_ns.max(Some(event.at_ns));
                out.promotions.push_back(event);
                if out.promotions.len() > PROMOTIONS_KEPT {
                    out.promotions.pop_front();
                }
            }
        }
    }
    if bad > 1 {
        tracing::warn!(file = %path.display(), lines = bad, "flow history: unreadable lines skipped");
    }
}

/// What the writer is handed.
enum Queued {
    /// A record: (interface index, record).
    Flow(u32, Arc<Flow>),
    Promotion(Arc<PromotionEvent>),
}

/// The daemon's side: hands records to the writer thread.
pub struct HistoryWriter {
    /// None once closed. Locked per record: uncontended (the event drain is
    /// the only writer).
    tx: Mutex<Option<SyncSender<Queued>>>,
    missed: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub dir: PathBuf,
}

impl HistoryWriter {
    /// Starts the writer on `opts.dir` (created if missing); `previous_ns`:
    /// the newest line already there.
    pub fn start(opts: &HistoryOptions, previous_ns: Option<u64>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&opts.dir)?;
        let mut store = Store::open(opts.clone())?;
        store.write(&Line::Start {
            at_ns: unix_now_ns(),
            previous_ns,
        })?;
        store.flush()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
        let missed = Arc::new(AtomicU64::new(0));
        let counter = missed.clone();
        let thread = std::thread::Builder::new()
            .name("flow-history".into())
            .spawn(move || store.run(rx, &counter))?;
        Ok(HistoryWriter {
            tx: Mutex::new(Some(tx)),
            missed,
            thread: Mutex::new(Some(thread)),
            dir: opts.dir.clone(),
        })
    }

    /// Queues a record; never blocks (a full queue is counted as missed).
    pub fn record(&self, ifindex: u32, flow: &Arc<Flow>) {
        self.send(Queued::Flow(ifindex, flow.clone()));
    }

    /// Queues a promotion event; never blocks. Events are rare, but a full
    /// queue (the disk stalled) is counted as missed like records.
    pub fn promotion(&self, event: &Arc<PromotionEvent>) {
        self.send(Queued::Promotion(event.clone()));
    }

    /// Hands `q` to the writer unless closed; a full queue is counted as missed.
    fn send(&self, q: Queued) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(q) {
            self.missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes what is queued and stops the writer (a clean stop).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The writer thread's state: the current segment and the bounds.
struct Store {
    opts: HistoryOptions,
    file: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
    /// Promotion events received since the last write, in order.
    promotions: Vec<Arc<PromotionEvent>>,
}

impl Store {
    fn open(opts: HistoryOptions) -> std::io::Result<Store> {
        let path = opts.dir.join(format!("flows-{:020}.jsonl", unix_now_ns()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Store {
            opts,
            file: BufWriter::new(file),
            path,
            bytes: 0,
            opened: Instant::now(),
            promotions: Vec::new(),
        })
    }

    fn write(&mut self, line: &Line) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.file.write_all(&text)?;
        self.bytes += text.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// Until the daemon's side is dropped: collect for [`FLUSH_EVERY`], write.
    fn run(mut self, rx: Receiver<Queued>, missed: &AtomicU64) {
        let mut pending: HashMap<DiskKey, (u32, Arc<Flow>)> = HashMap::new();
        let mut last_flush = Instant::now();
        loop {
            let wait = FLUSH_EVERY.saturating_sub(last_flush.elapsed());
            let closed = match rx.recv_timeout(wait) {
                Ok(Queued::Flow(ifindex, flow)) => {
                    pending.insert(disk_key(ifindex, &flow), (ifindex, flow));
                    false
                }
                Ok(Queued::Promotion(event)) => {
                    self.promotions.push(event);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if closed || last_flush.elapsed() >= FLUSH_EVERY {
                if let Err(e) = self.write_batch(&mut pending, missed) {
                    tracing::error!(dir = %self.opts.dir.display(), error = %e, "writing the flow history");
                }
                last_flush = Instant::now();
            }
            if closed {
                return;
            }
        }
    }

    /// Writes the batch, then rotates and prunes as the bounds say.
    fn write_batch(
        &mut self,
        pending: &mut HashMap<DiskKey, (u32, Arc<Flow>)>,
        missed: &AtomicU64,
    ) -> std::io::Result<()> {
        let lost = missed.swap(0, Ordering::Relaxed);
        if lost > 0 {
            self.write(&Line::Gap {
                at_ns: unix_now_ns(),
                missed: lost,
            })?;
        }
        for event in std::mem::take(&mut self.promotions) {
            self.write(&Line::Promotion(PromotionEvent::clone(&event)))?;
        }
        let mut batch: Vec<(u32, Arc<Flow>)> = pending.drain().map(|(_, v)| v).collect();
        batch.sort_by_key(|(_, f)| f.last_seen_ns);
        for (ifindex, flow) in batch {
            self.write(&Line::Flow {
                ifindex,
                flow: Box::new(Flow::clone(&flow)),
            })?;
        }
        self.flush()?;
        let segment_bytes = (self.opts.max_bytes / 16).max(4096);
        let segment_age = self.opts.max_age / 48;
        if self.bytes >= segment_bytes || self.opened.elapsed() >= segment_age {
            *self = Store::open(self.opts.clone())?;
        }
        prune(&self.opts, &self.path)
    }
}

/// Removes the oldest segments (never `current`) beyond the byte bound, and
/// those last written longer ago than the age bound.
fn prune(opts: &HistoryOptions, current: &Path) -> std::io::Result<()> {
    let files = segments(&opts.dir)?;
    let sizes: Vec<(PathBuf, u64, Option<SystemTime>)> = files
        .into_iter()
        .filter_map(|(_, p)| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.len(), m.modified().ok()))
        })
        .collect();
    let mut total: u64 = sizes.iter().map(|(_, len, _)| len).sum();
    for (path, len, modified) in &sizes {
        if path == current {
            break;
        }
        let too_old = modified
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > opts.max_age);
        if total > opts.max_bytes || too_old {
            std::fs::remove_file(path)?;
            total -= len;
            tracing::debug!(file = %path.display(), "flow history segment pruned");
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
