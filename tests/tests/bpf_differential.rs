//! Differential test: the kernel dataplane loaded with compiled tables against
//! the reference evaluator, on random models and random packets
//! (BPF_PROG_TEST_RUN, conntrack insertion off so every packet is a new flow).
//!
//! Per case: the return code equals the evaluator's enforced verdict; on
//! endpoints with staged policy the flow event carries exactly the enforced and
//! pending verdicts (tier, policy, rule) the evaluator names; deny events on
//! other endpoints carry the enforced one; and a second dataplane loaded with
//! the same model minus its staged policies returns the same code (and, with
//! reporting forced on, reports every enforced verdict, allows included).
//!
//! Models have source-port rules (ranges, notPorts, named ports) and packets
//! varied source ports (rule bounds and their neighbours, random ones); the run
//! asserts that, in both families, some cases' verdicts depend on the source port.
//!
//! Default: 200 models x 100 packets (about 20k cases, a few seconds).
//! `DIFF_SEED=<n>` replays a run; `DIFF_MODELS` / `DIFF_PACKETS` resize it.

use agent::compile::testgen::{
    compile_random, random_model, random_probe, random_source_port, Probe, Rng, Shape, TableModel,
};
use agent::compile::{compile, CompiledEndpoint};
use agent::dataplane::{Dataplane, FlowRecord, Hook};
use agent::eval::{Evaluator, PolicySet};
use agent::model::ir::{Direction, Model};
use agent_common::{action, active_flags, endpoint_flags, Verdict, PEER_GROUP_ANY};
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::Packet;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// BPF_PROG_TEST_RUN runs TC programs on an skb of the loopback device (an
/// `__sk_buff.ifindex` must name an existing device), so each probe registers
/// its endpoint as ifindex 1 before it runs.
const LOOPBACK: u32 = 1;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs the hook's program on `frame` as endpoint `ep` (on the loopback device),
/// with extra `EndpointInfo::flags`.
fn run_as(dp: &mut Dataplane, ep: &CompiledEndpoint, extra: u32, hook: Hook, frame: &[u8]) -> u32 {
    let mut info = ep.info();
    info.flags |= extra;
    dp.set_endpoint(LOOPBACK, info).unwrap();
    dp.program(hook)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

/// The frame of a probe's first packet, and the hook that judges it.
fn frame(p: &Probe, host_endpoint: bool) -> (Hook, Vec<u8>) {
    let (src, dst) = match p.direction {
        Direction::Egress => (p.local, p.peer),
        Direction::Ingress => (p.peer, p.local),
    };
    let hook = Hook::judging(p.direction, host_endpoint);
    let mut packet = match p.protocol {
        1 | 58 => Packet::icmp(src, dst, (p.port >> 8) as u8, p.port as u8),
        _ => {
            let mut t = Packet::tcp(src, p.src_port, dst, p.port);
            t.protocol = p.protocol;
            if p.protocol != 6 {
                t.tcp_flags = 0;
            }
            t
        }
    };
    packet.icmp_id = p.src_port;
    (hook, packet.frame())
}

fn without_staged(model: &Model) -> Model {
    let mut m = model.clone();
    m.policies.retain(|p| !p.id.kind.is_staged());
    m
}

#[test]
fn kernel_verdicts_equal_the_evaluator() {
    let seed = env("DIFF_SEED", 0xd1ff_5eed);
    let models = env("DIFF_MODELS", 200);
    let packets = env("DIFF_PACKETS", 100);
    eprintln!("bpf_differential: DIFF_SEED={seed} ({models} models x {packets} packets)");
    let mut dp = Dataplane::load().expect("load through the verifier (needs root)");
    let mut plain = Dataplane::load().unwrap();
    dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    plain.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    let mut rng = Rng::new(seed);
    let (mut cases, mut unsupported, mut allowed, mut staged_events, mut deny_events) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut pending_differs = 0u64;
    // Cases on endpoints with source-port classes, and (IPv4, IPv6) cases whose
    // enforced verdict another (random) source port changes.
    let (mut sport_cases, mut sport_decides) = (0u64, [0u64; 2]);
    // (endpoint, direction) tables with several peer groups besides the
    // wildcard, and cases whose peer is in a group of its own (not the wildcard).
    let (mut multi_group_tables, mut own_group_cases) = (0u64, 0u64);
    for round in 0..models {
        let model_seed = rng.next_u64();
        let mut mrng = Rng::new(model_seed);
        let model = random_model(&mut mrng, Shape::default());
        let ctx = format!("DIFF_SEED={seed} round {round} (model seed {model_seed:#x})");
        let Some(c) = compile_random(&model).unwrap_or_else(|e| panic!("{ctx}: {e}")) else {
            unsupported += 1;
            continue;
        };
        let plain_model = without_staged(&model);
        let cp = compile(&plain_model).unwrap_or_else(|e| panic!("{ctx}: without staged: {e}"));
        assert_eq!(
            c.endpoints.iter().map(|e| e.id).collect::<Vec<_>>(),
            cp.endpoints.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        assert!(cp.endpoints.iter().all(|e| !e.has_staged));
        dp.install(&c.tables).unwrap();
        plain.install(&cp.tables).unwrap();
        let sim = TableModel::new(&c.tables).unwrap();
        let mut groups: std::collections::HashMap<
            (u32, Direction),
            std::collections::HashSet<u32>,
        > = std::collections::HashMap::new();
        for g in &c.tables.groups {
            groups
                .entry((g.endpoint_id, g.direction))
                .or_default()
                .insert(g.group);
        }
        multi_group_tables += groups.values().filter(|g| g.len() >= 2).count() as u64;
        dp.drain_events();
        plain.drain_events();

        let eval = Evaluator::new(&model);
        let plain_eval = Evaluator::new(&plain_model);
        let eps: Vec<usize> = c
            .endpoints
            .iter()
            .map(|e| e.endpoint_index)
            .filter(|&i| !model.endpoints[i].ips.is_empty())
            .collect();
        if eps.is_empty() {
            continue;
        }
        for _ in 0..packets {
            let p = random_probe(&mut mrng, &model, &eps);
            let ep = c
                .endpoints
                .iter()
                .find(|e| e.endpoint_index == p.endpoint_index)
                .unwrap();
            let ask = |set| c.verdict_of(&p.evaluate(&eval, set));
            let (enforced, pending) = (ask(PolicySet::Enforced), ask(PolicySet::Pending));
            if sim.group(ep.id, p.direction, sim.class(p.peer)) != PEER_GROUP_ANY {
                own_group_cases += 1;
            }
            if ep.source_ports {
                sport_cases += 1;
                let src_port = random_source_port(&mut mrng, &model);
                let end = Probe { src_port, ..p }.evaluate(&eval, PolicySet::Enforced);
                if c.verdict_of(&end) != enforced {
                    sport_decides[usize::from(p.local.is_ipv6())] += 1;
                }
            }
            let (hook, bytes) = frame(&p, ep.host);
            let rc = run_as(&mut dp, ep, 0, hook, &bytes);
            let events: Vec<FlowRecord> = dp.drain_events();
            let want_rc = if enforced.action == action::ALLOW {
                TC_ACT_OK
            } else {
                TC_ACT_SHOT
            };
            let what = || {
                format!(
                    "{ctx}: {p:?}\n  evaluator: enforced {}, pending {}\n  kernel rc {rc}, events {events:?}\n  model: {model:#?}",
                    c.describe(&enforced),
                    c.describe(&pending)
                )
            };
            assert_eq!(rc, want_rc, "return code: {}", what());
            if ep.has_staged {
                assert_eq!(events.len(), 1, "one event per new flow: {}", what());
                let e = &events[0];
                assert_eq!(e.enforced, enforced, "enforced verdict: {}", what());
                assert_eq!(e.pending, Some(pending), "pending verdict: {}", what());
                assert_eq!((e.endpoint_id, e.direction), (ep.id, p.direction));
                assert_eq!(e.ifindex, LOOPBACK);
                staged_events += 1;
                pending_differs += u64::from(pending != enforced);
            } else {
                assert_eq!(enforced, pending, "no staged policy here: {}", what());
                assert!(events.len() <= 1, "{}", what());
                if let Some(e) = events.first() {
                    assert_eq!(e.enforced, enforced, "deny event verdict: {}", what());
                    assert_eq!(e.pending, None);
                    deny_events += 1;
                }
            }
            // Without the staged policies: same code. The HAS_STAGED flag is forced
            // on here (there are no pending entries) so that every flow reports its
            // enforced verdict, allows included.
            let plain_ep = cp.endpoint_by_id(ep.id).unwrap();
            let rc_plain = run_as(
                &mut plain,
                plain_ep,
                endpoint_flags::HAS_STAGED,
                hook,
                &bytes,
            );
            let plain_events = plain.drain_events();
            assert_eq!(
                rc_plain,
                rc,
                "staged policies changed a verdict: {}",
                what()
            );
            let plain_enforced = cp.verdict_of(&p.evaluate(&plain_eval, PolicySet::Enforced));
            assert_eq!(plain_events.len(), 1, "{}", what());
            assert_eq!(plain_events[0].enforced, plain_enforced, "{}", what());
            assert_eq!(
                plain_events[0].pending,
                Some(Verdict::NO_ENTRY),
                "{}",
                what()
            );
            cases += 1;
            allowed += u64::from(rc == TC_ACT_OK);
        }
    }
    eprintln!(
        "bpf_differential: {cases} cases ({allowed} allowed), {staged_events} staged events \
         ({pending_differs} with a different pending verdict), {deny_events} deny events checked, \
         {unsupported} models unsupported; {sport_cases} cases on endpoints with source-port \
         classes, (IPv4, IPv6) {sport_decides:?} decided by the source port; \
         {multi_group_tables} tables with several peer groups, {own_group_cases} cases in a \
         peer group other than the wildcard"
    );
    assert!(
        multi_group_tables > 0 && own_group_cases > cases / 20,
        "peer groups barely exercised: {multi_group_tables} tables, {own_group_cases} cases"
    );
    assert!(cases >= models * packets / 2, "too few cases: {cases}");
    assert!(
        allowed > cases / 10 && allowed < cases * 9 / 10,
        "{allowed} of {cases} allowed"
    );
    assert!(staged_events > 0 && pending_differs > 0);
    assert!(
        sport_decides.iter().all(|&n| n > 0),
        "source ports never decided: {sport_decides:?}"
    );
}
