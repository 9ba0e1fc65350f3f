//! The policy dataplane's flow events and staged (pending) lookups through
//! BPF_PROG_TEST_RUN: staged events carry both verdicts once per flow, the
//! staged lookup never changes a verdict, deny events are rate-limited; and the
//! cost per packet of each path (printed, never asserted).
use agent::dataplane::{
    Dataplane, FlowRecord, Hook, PeerMatch, PortMatch, RuleEntry, Table, TableSet,
};
use agent::model::ir::Direction;
use agent_common::{active_flags, endpoint_flags, stat};
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::{Packet, ACK, SYN, TCP};

#[path = "common/bpf.rs"]
mod bpf;
use bpf::{
    allow, base_tables, count, deny, entry, ip, load, run, run_frame, EP, LOOPBACK, TC_ACT_OK,
    TC_ACT_SHOT,
};

fn staged_tables() -> TableSet {
    use Direction::*;
    use PeerMatch::*;
    let mut t = base_tables();
    // Pending: a staged policy would deny 8000-8049 to class 2 and allow 9000.
    let pending: Vec<RuleEntry> = t
        .rules
        .iter()
        .map(|e| RuleEntry {
            table: Table::Pending,
            ..*e
        })
        .collect();
    t.rules.extend(pending);
    t.rules.push(entry(
        Egress,
        Table::Pending,
        Group(2),
        Some(TCP),
        PortMatch::Range(8000, 8049),
        deny(30, 0),
    ));
    t.rules.push(entry(
        Egress,
        Table::Pending,
        Group(2),
        Some(TCP),
        PortMatch::Range(9000, 9000),
        allow(30, 1),
    ));
    t.with_identity_groups()
}

#[test]
fn staged_event_carries_both_verdicts_once_per_flow() {
    let mut dp = load(endpoint_flags::HAS_STAGED);
    dp.install(&staged_tables()).unwrap();
    let me = ip("10.65.0.10");
    let p = Packet::tcp(me, 40000, ip("10.65.1.5"), 8010);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &p),
        TC_ACT_OK,
        "pending deny changes nothing"
    );
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &p.clone().flags(ACK)),
        TC_ACT_OK
    );
    assert_eq!(
        run(&mut dp, Hook::ToEndpoint, &p.reply().flags(ACK)),
        TC_ACT_OK
    );
    let q = Packet::tcp(me, 40001, ip("10.65.1.5"), 9000);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &q),
        TC_ACT_SHOT,
        "pending allow changes nothing"
    );
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &q), TC_ACT_SHOT);
    let events = dp.drain_events();
    assert_eq!(events.len(), 2, "one event per flow: {events:?}");
    let e: &FlowRecord = &events[0];
    assert_eq!(
        (e.src, e.dst, e.src_port, e.dst_port, e.protocol),
        (me, ip("10.65.1.5"), 40000, 8010, TCP)
    );
    assert_eq!(
        (e.endpoint_id, e.ifindex, e.direction),
        (EP, LOOPBACK, Direction::Egress)
    );
    assert_eq!(e.enforced, allow(10, 0));
    assert_eq!(e.pending, Some(deny(30, 0)));
    assert!(e.timestamp_ns > 0);
    assert_eq!(events[1].enforced, deny(10, -1));
    assert_eq!(events[1].pending, Some(allow(30, 1)));
    assert_eq!(count(&dp, stat::STAGED_LOOKUPS), 2);
}

/// xorshift64*: deterministic random packets without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn random_packet(rng: &mut Rng) -> (Hook, Packet) {
    let v4 = [
        "10.65.0.10",
        "10.65.0.20",
        "10.65.1.5",
        "10.65.1.200",
        "8.8.8.8",
    ];
    let v6 = ["fd65::10", "fd66::5", "fd67::1"];
    let pool = if rng.next().is_multiple_of(3) {
        &v6[..]
    } else {
        &v4[..]
    };
    let (src, dst) = (ip(rng.pick(pool)), ip(rng.pick(pool)));
    let ports = [
        22,
        53,
        443,
        7999,
        8000,
        8049,
        8050,
        8099,
        8100,
        9000,
        (rng.next() % 65536) as u16,
    ];
    let sport = 1024 + (rng.next() % 60000) as u16;
    let mut p = match rng.next() % 4 {
        0 => Packet::udp(src, sport, dst, rng.pick(&ports)),
        1 => Packet::icmp(
            src,
            dst,
            rng.pick(&[0, 3, 8, 128, 129]),
            rng.pick(&[0, 1, 4]),
        ),
        _ => Packet::tcp(src, sport, dst, rng.pick(&ports)).flags(rng.pick(&[SYN, ACK, SYN | ACK])),
    };
    p.icmp_id = (rng.next() % 4) as u16;
    let hook = if rng.next().is_multiple_of(2) {
        Hook::FromEndpoint
    } else {
        Hook::ToEndpoint
    };
    if rng.next().is_multiple_of(4) {
        // Replay the reverse of some flow too.
        return (hook, p.reply());
    }
    (hook, p)
}

#[test]
fn staged_pass_never_changes_a_verdict() {
    // Same packet sequence through: no staged flag and no pending entries; the staged
    // flag with pending entries. Verdicts (including conntrack effects) must match.
    let mut plain = load(0);
    plain.install(&base_tables()).unwrap();
    let mut staged = load(endpoint_flags::HAS_STAGED);
    staged.install(&staged_tables()).unwrap();
    let mut flagged_only = load(endpoint_flags::HAS_STAGED);
    flagged_only.install(&base_tables()).unwrap();
    let mut entries_only = load(0);
    entries_only.install(&staged_tables()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut allowed = 0;
    for i in 0..3000 {
        let (hook, p) = random_packet(&mut rng);
        let frame = p.frame();
        let a = run_frame(&mut plain, hook, &frame);
        let b = run_frame(&mut staged, hook, &frame);
        let c = run_frame(&mut flagged_only, hook, &frame);
        let d = run_frame(&mut entries_only, hook, &frame);
        assert_eq!(a, b, "packet {i} {hook:?} {p:?}");
        assert_eq!(a, c, "packet {i} {hook:?} {p:?}");
        assert_eq!(a, d, "packet {i} {hook:?} {p:?}");
        allowed += usize::from(a == TC_ACT_OK);
        if i % 500 == 0 {
            staged.drain_events();
            flagged_only.drain_events();
            plain.drain_events();
            entries_only.drain_events();
        }
    }
    assert!(
        allowed > 300 && allowed < 2700,
        "a mix of verdicts: {allowed} allowed"
    );
    assert!(staged.counters().unwrap().get(stat::STAGED_LOOKUPS) > 0);
    assert_eq!(plain.counters().unwrap().get(stat::STAGED_LOOKUPS), 0);
    assert_eq!(
        entries_only.counters().unwrap().get(stat::STAGED_LOOKUPS),
        0
    );
    // Pending verdicts show up in the events of the staged run, and differ from
    // the enforced ones somewhere.
    let events = staged.drain_events();
    assert!(events.iter().all(|e| e.pending.is_some()));
    assert!(
        events.iter().any(|e| Some(e.enforced) != e.pending),
        "{events:?}"
    );
}

#[test]
fn measure_ns_per_packet() {
    const REPEAT: u32 = 1_000_000;
    let bench = |dp: &mut Dataplane, hook: Hook, p: &Packet| -> u64 {
        let frame = p.frame();
        // One run to create the conntrack entry where that applies.
        run_frame(dp, hook, &frame);
        let r = dp
            .program(hook)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: REPEAT,
                ..Default::default()
            })
            .unwrap();
        r.duration.as_nanos() as u64
    };
    let allowed = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8000);
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    let established = bench(&mut dp, Hook::FromEndpoint, &allowed);
    dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    let fresh = Packet::tcp(ip("10.65.0.10"), 40001, ip("10.65.1.5"), 8000);
    let new_flow = bench(&mut dp, Hook::FromEndpoint, &fresh);
    let wildcard = bench(
        &mut dp,
        Hook::FromEndpoint,
        &Packet::udp(ip("10.65.0.10"), 1, ip("8.8.8.8"), 53),
    );

    let mut none = Dataplane::load().unwrap();
    let not_endpoint = bench(&mut none, Hook::FromEndpoint, &allowed);

    let mut st = load(endpoint_flags::HAS_STAGED);
    st.install(&staged_tables()).unwrap();
    st.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    let staged_new = bench(&mut st, Hook::FromEndpoint, &fresh);
    let c = st.counters().unwrap();
    let mut st2 = load(endpoint_flags::HAS_STAGED);
    st2.install(&staged_tables()).unwrap();
    let staged_established = bench(&mut st2, Hook::FromEndpoint, &allowed);

    eprintln!("ns/packet over {REPEAT} runs (BPF_PROG_TEST_RUN, includes ~35 ns of test harness):");
    eprintln!("  interface not an endpoint (1 hash lookup) {not_endpoint:>5}");
    eprintln!("  established flow (conntrack hit)          {established:>5}");
    eprintln!("  new flow (ct miss, class LPM, rule LPM)   {new_flow:>5}");
    eprintln!("  new flow, wildcard-class probe            {wildcard:>5}");
    eprintln!(
        "  new flow + staged lookup + event attempt  {staged_new:>5}  (events {}, ringbuf full {})",
        c.get(stat::EVENTS),
        c.get(stat::RINGBUF_FULL)
    );
    eprintln!("  established flow, staged endpoint         {staged_established:>5}");
}

#[test]
fn deny_events_are_rate_limited() {
    let mut dp = load(0);
    dp.install(&base_tables()).unwrap();
    const FLOWS: u16 = 2500;
    for i in 0..FLOWS {
        let p = Packet::tcp(ip("10.65.0.10"), 10000 + i, ip("10.65.1.5"), 9000);
        assert_eq!(run(&mut dp, Hook::FromEndpoint, &p), TC_ACT_SHOT);
    }
    let c = dp.counters().unwrap();
    let events = dp.drain_events().len() as u64;
    assert_eq!(events, c.get(stat::EVENTS));
    assert!(c.get(stat::EVENTS_RATE_LIMITED) > 0, "{c:?}");
    assert_eq!(
        c.get(stat::EVENTS) + c.get(stat::EVENTS_RATE_LIMITED) + c.get(stat::RINGBUF_FULL),
        u64::from(FLOWS)
    );
}
