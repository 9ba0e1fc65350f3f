use super::*;
use crate::flows::test_flows::tcp_flow;
use crate::flows::{Peer, Reporter};

fn flow(port: u16, count: u64) -> Arc<Flow> {
    let now = unix_now_ns();
    let peer = |ip: &str, port| Peer {
        ip: ip.parse().unwrap(),
        port,
        namespace: Some("shop".into()),
        name: Some("api".into()),
        labels: Default::default(),
    };
    let mut flow = tcp_flow(
        peer("10.0.0.1", port),
        peer("10.0.0.2", 8080),
        "allow",
        now,
        now,
    );
    flow.count = count;
    flow.enforced.trace = "tier default: policy gnp:/x rule 0".into();
    flow.reporter = Reporter {
        endpoint: "shop/api".into(),
        interface: "veth0".into(),
        endpoint_id: 7,
    };
    Arc::new(flow)
}

fn options(dir: &Path, max_bytes: u64, max_age: Duration) -> HistoryOptions {
    HistoryOptions {
        dir: dir.to_path_buf(),
        max_bytes,
        max_age,
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    segments(dir)
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn records_survive_a_restart_with_their_latest_version() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), DEFAULT_MAX_BYTES, DEFAULT_MAX_AGE);
    let w = HistoryWriter::start(&opts, None).unwrap();
    w.record(3, &flow(40000, 1));
    w.record(3, &flow(40000, 2));
    w.record(3, &flow(40001, 1));
    w.close();
    let first = load(tmp.path());
    assert_eq!(first.records.len(), 2, "{first:#?}");
    let counts: Vec<u64> = first.records.iter().map(|(_, f)| f.count).collect();
    assert!(counts.contains(&2) && counts.contains(&1), "{counts:?}");
    assert!(first.records.iter().all(|(ifindex, _)| *ifindex == 3));
    assert!(first.notes.is_empty(), "{:?}", first.notes);
    let from = first.complete_from_ns.unwrap();

    // A second agent: the records are still there, complete from the first
    // agent's start, and the restart is noted.
    let w = HistoryWriter::start(&opts, first.last_ns).unwrap();
    w.record(3, &flow(40000, 5));
    w.close();
    let second = load(tmp.path());
    assert_eq!(second.records.len(), 2);
    assert_eq!(second.complete_from_ns, Some(from));
    assert!(second.records.iter().any(|(_, f)| f.count == 5));
    assert_eq!(second.notes.len(), 1, "{:?}", second.notes);
    assert!(second.notes[0].contains("restarted"), "{:?}", second.notes);
}

#[test]
fn a_truncated_or_damaged_segment_is_skipped_line_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), DEFAULT_MAX_BYTES, DEFAULT_MAX_AGE);
    let w = HistoryWriter::start(&opts, None).unwrap();
    w.record(1, &flow(40000, 1));
    w.record(1, &flow(40001, 1));
    w.close();
    let (_, path) = segments(tmp.path()).unwrap().pop().unwrap();
    // A crash mid-write: the last line is cut in half; garbage in between.
    let text = std::fs::read(&path).unwrap();
    let cut = text.len() - 40;
    let mut damaged = b"{\"flow\": nonsense\n\xff\xfe\n".to_vec();
    damaged.extend_from_slice(&text[..cut]);
    std::fs::write(&path, damaged).unwrap();
    let loaded = load(tmp.path());
    assert_eq!(loaded.records.len(), 1, "{loaded:#?}");
    // A file that is not a segment at all is ignored; so is an empty segment.
    std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
    std::fs::write(tmp.path().join("flows-1.jsonl"), "").unwrap();
    assert_eq!(load(tmp.path()).records.len(), 1);
    // A missing directory is an empty history.
    assert!(load(&tmp.path().join("missing")).records.is_empty());
}

#[test]
fn the_byte_bound_holds_and_the_oldest_records_go_first() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 64 * 1024;
    let opts = options(tmp.path(), max, DEFAULT_MAX_AGE);
    // Segments rotate at max/16 = 4 KiB; write ~20 batches of ~8 KiB.
    let mut store = Store::open(opts.clone()).unwrap();
    let missed = AtomicU64::new(0);
    let mut port = 1000;
    for _ in 0..20 {
        let mut pending = HashMap::new();
        for _ in 0..10 {
            let f = flow(port, 1);
            pending.insert(disk_key(1, &f), (1, f));
            port += 1;
        }
        store.write_batch(&mut pending, &missed).unwrap();
        let bytes = dir_bytes(tmp.path());
        assert!(bytes <= max + 16 * 1024, "{bytes} bytes on disk");
    }
    let loaded = load(tmp.path());
    assert!(loaded.bytes <= max, "{}", loaded.bytes);
    assert!(
        !loaded.records.is_empty() && loaded.records.len() < 200,
        "{}",
        loaded.records.len()
    );
    // The newest record is kept, the oldest is gone; completeness starts
    // after what was pruned.
    let ports: Vec<u16> = loaded.records.iter().map(|(_, f)| f.src.port).collect();
    assert!(
        ports.contains(&(port - 1)) && !ports.contains(&1000),
        "{ports:?}"
    );
    let oldest_kept = segments(tmp.path()).unwrap()[0].0;
    assert_eq!(loaded.complete_from_ns, Some(oldest_kept));
}

#[test]
fn segments_older_than_the_age_bound_go() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), DEFAULT_MAX_BYTES, Duration::from_millis(200));
    let mut store = Store::open(opts.clone()).unwrap();
    let missed = AtomicU64::new(3);
    let mut pending = HashMap::new();
    let f = flow(1, 1);
    pending.insert(disk_key(1, &f), (1, f));
    store.write_batch(&mut pending, &missed).unwrap();
    // The gap (3 records missed) is written down.
    assert!(load(tmp.path())
        .notes
        .iter()
        .any(|n| n.contains("3 flow records")));
    std::thread::sleep(Duration::from_millis(300));
    // The segment rotated (its age bound is 200/48 ms) and, now too old, goes.
    store.write_batch(&mut HashMap::new(), &missed).unwrap();
    let left = segments(tmp.path()).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(load(tmp.path()).records.is_empty());
}

#[test]
fn reading_back_keeps_the_newest_records_within_a_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), DEFAULT_MAX_BYTES, DEFAULT_MAX_AGE);
    let w = HistoryWriter::start(&opts, None).unwrap();
    let flows: Vec<Arc<Flow>> = (0..30).map(|i| flow(40000 + i, 1)).collect();
    for f in &flows {
        w.record(3, f);
    }
    // An update of an old record makes it one of the newest.
    let again = flow(40000, 2);
    w.record(3, &again);
    w.close();
    assert_eq!(load(tmp.path()).records.len(), 30);
    let bounded = load_newest(tmp.path(), 10);
    let mut ports: Vec<u16> = bounded.records.iter().map(|(_, f)| f.src.port).collect();
    ports.sort();
    let mut want: Vec<u16> = (40021..40030).collect();
    want.insert(0, 40000);
    assert_eq!(ports, want, "{bounded:#?}");
    // Complete only from the newest record that had to go (port 40020).
    assert!(bounded.complete_from_ns >= Some(flows[20].last_seen_ns));
    assert!(
        bounded
            .notes
            .iter()
            .any(|n| n.contains("only the newest 10")),
        "{:?}",
        bounded.notes
    );
}

#[test]
fn promotion_events_survive_a_restart_beside_the_records() {
    use crate::flows::promotion::{PromotionEvent, KEPT};
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), DEFAULT_MAX_BYTES, DEFAULT_MAX_AGE);
    let w = HistoryWriter::start(&opts, None).unwrap();
    let event = |at_ns: u64, what: &str| {
        Arc::new(PromotionEvent::new(
            at_ns,
            "sgnp/x",
            what,
            format!("why {at_ns}"),
        ))
    };
    w.promotion(&event(1_000, "pending"));
    w.record(3, &flow(40000, 1));
    w.promotion(&event(2_000, "reverted"));
    w.close();
    let first = load(tmp.path());
    assert_eq!(first.records.len(), 1, "{first:#?}");
    let seen: Vec<(&str, u64)> = first
        .promotions
        .iter()
        .map(|e| (e.event.as_str(), e.at_ns))
        .collect();
    assert_eq!(seen, [("pending", 1_000), ("reverted", 2_000)]);
    assert_eq!(first.promotions[1].reason, "why 2000");

    // More than KEPT across two agents: the newest are read back, in order.
    let w = HistoryWriter::start(&opts, first.last_ns).unwrap();
    for i in 0..KEPT as u64 {
        w.promotion(&event(10_000 + i, "pending"));
    }
    w.close();
    let second = load(tmp.path());
    assert_eq!(second.promotions.len(), KEPT);
    assert_eq!(second.promotions.front().unwrap().at_ns, 10_000);
    assert_eq!(
        second.promotions.back().unwrap().at_ns,
        10_000 + KEPT as u64 - 1
    );
    assert_eq!(second.records.len(), 1, "records are unaffected");
}
