//! Service flows through the verifier and BPF_PROG_TEST_RUN (design in
//! `ebpf/src/service.rs`): `from_endpoint` defers a new flow to a frontend
//! (mark set, no verdict), the post-DNAT hook (`to_endpoint` tail-calling
//! `post_nat`, or `post_nat` alone as on an uplink) judges the client's egress
//! against the backend, and the client->frontend entry then serves the
//! client's later packets and the reverse-NATed replies, also after a policy
//! change (re-judged against the backend). BPF_PROG_TEST_RUN runs on the
//! loopback device, so client and backend are the same endpoint (ifindex 1).
use std::net::IpAddr;

use agent::dataplane::{Dataplane, Hook, PeerMatch, PortMatch, RuleEntry, Table, TableSet};
use agent::model::ir::Direction;
use agent_common::{action, endpoint_flags, stat, EndpointInfo, Verdict, SERVICE_DEFER_MARK};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use lab::packet::{Packet, ACK, SYN, TCP};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const EP: u32 = 7;
/// `struct __sk_buff`: `mark` at offset 8; 192 bytes in all.
const SKB_SIZE: usize = 192;
const MARK_OFFSET: usize = 8;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn verdict(action: u8, policy: u32) -> Verdict {
    Verdict {
        action,
        flags: 0,
        tier: 1,
        policy,
        rule: 0,
    }
}

fn entry(dir: Direction, peer: PeerMatch, port: u16, v: Verdict) -> RuleEntry {
    RuleEntry {
        endpoint_id: EP,
        direction: dir,
        table: Table::Enforced,
        peer,
        protocol: Some(TCP),
        source_port_class: Some(0),
        ports: PortMatch::Range(port, port),
        verdict: v,
    }
}

/// Egress: TCP 8080 to the backends (class 2, 10.65.1.0/24, fd65:1::/64) only,
/// nothing to the frontends (class 0). Ingress: TCP 8080 from the clients
/// (class 1, 10.65.0.0/24, fd65::/64).
fn tables(backend_allowed: bool) -> TableSet {
    use Direction::*;
    let egress = if backend_allowed {
        action::ALLOW
    } else {
        action::DENY
    };
    TableSet {
        peers: vec![
            ("10.65.0.0/24".parse().unwrap(), 1),
            ("fd65::/64".parse().unwrap(), 1),
            ("10.65.1.0/24".parse().unwrap(), 2),
            ("fd65:1::/64".parse().unwrap(), 2),
        ],
        rules: vec![
            entry(Egress, PeerMatch::Group(2), 8080, verdict(egress, 10)),
            entry(
                Ingress,
                PeerMatch::Group(1),
                8080,
                verdict(action::ALLOW, 20),
            ),
        ],
        sports: vec![],
        groups: vec![],
    }
    .with_identity_groups()
}

fn load() -> Dataplane {
    let mut dp = Dataplane::load().expect("programs through the verifier (needs root)");
    let info = EndpointInfo {
        id: EP,
        flags: endpoint_flags::HAS_STAGED,
    };
    dp.set_endpoint(1, info).unwrap();
    dp.install(&tables(true)).unwrap();
    dp.set_service_nets(&[
        "10.96.0.0/12".parse().unwrap(),
        "fd96::/108".parse().unwrap(),
    ])
    .unwrap();
    dp
}

/// Runs `prog` on `p` with `skb->mark = mark`; (return code, mark after).
fn run_prog(prog: &mut SchedClassifier, p: &Packet, mark: u32) -> (u32, u32) {
    let mut ctx_in = [0u8; SKB_SIZE];
    ctx_in[MARK_OFFSET..MARK_OFFSET + 4].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_SIZE];
    let frame = p.frame();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    let out = u32::from_ne_bytes(ctx_out[MARK_OFFSET..MARK_OFFSET + 4].try_into().unwrap());
    (r.return_value, out)
}

fn run(dp: &mut Dataplane, hook: Hook, p: &Packet, mark: u32) -> (u32, u32) {
    run_prog(dp.program(hook).unwrap(), p, mark)
}

fn count(dp: &Dataplane, index: u32) -> u64 {
    dp.counters().unwrap().get(index)
}

/// Client `client:sport` -> frontend `:80`, DNATed to `backend:8080`.
fn flow(client: &str, sport: u16, frontend: &str, backend: &str) -> (Packet, Packet) {
    let pre = Packet::tcp(ip(client), sport, ip(frontend), 80);
    let post = Packet::tcp(ip(client), sport, ip(backend), 8080);
    (pre, post)
}

fn service_flow_both_families(client: &str, frontend: &str, backend: &str) {
    let mut dp = load();
    let (pre, post) = flow(client, 40000, frontend, backend);
    // 1. from_endpoint defers: passes, sets the mark, judges nothing.
    let (rc, mark) = run(&mut dp, Hook::FromEndpoint, &pre, 0);
    assert_eq!(
        (rc, mark & SERVICE_DEFER_MARK),
        (TC_ACT_OK, SERVICE_DEFER_MARK)
    );
    assert_eq!(count(&dp, stat::SERVICE_DEFERRED), 1);
    assert_eq!(count(&dp, stat::STAGED_LOOKUPS), 0);
    // 2. The backend's to_endpoint (local backend): post_nat judges the
    // client's egress against backend:8080, then the backend's ingress.
    let (rc, mark) = run(&mut dp, Hook::ToEndpoint, &post, SERVICE_DEFER_MARK);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(mark & SERVICE_DEFER_MARK, 0, "mark cleared");
    assert_eq!(count(&dp, stat::SERVICE_JUDGED), 1);
    let events = dp.drain_events();
    let egress = events
        .iter()
        .find(|e| e.direction == Direction::Egress)
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(egress.dst, ip(backend));
    assert_eq!(egress.dst_port, 8080);
    assert_eq!(egress.service, Some((ip(frontend), 80)));
    assert_eq!(egress.enforced.action, action::ALLOW);
    assert!(events.iter().any(|e| e.direction == Direction::Ingress
        && e.dst == ip(backend)
        && e.enforced.action == action::ALLOW));
    // 3. Later packets and replies: conntrack hits on both tuples, nothing deferred.
    let hits = count(&dp, stat::CT_HITS);
    let ack = pre.clone().flags(ACK);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ack, 0), (TC_ACT_OK, 0));
    let synack = pre.reply().flags(SYN | ACK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &synack, 0).0, TC_ACT_OK);
    let backend_reply = post.reply().flags(SYN | ACK);
    assert_eq!(
        run(&mut dp, Hook::FromEndpoint, &backend_reply, 0).0,
        TC_ACT_OK
    );
    assert_eq!(count(&dp, stat::CT_HITS), hits + 3);
    assert_eq!(count(&dp, stat::SERVICE_DEFERRED), 1);
    // 4. A policy change (same tables, new epoch): the client->frontend entry
    // is re-judged against the backend, not the frontend (which no rule allows).
    dp.install(&tables(true)).unwrap();
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &synack, 0).0, TC_ACT_OK);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ack, 0).0, TC_ACT_OK);
    // The backend is no longer allowed: the established flow is cut both ways.
    dp.install(&tables(false)).unwrap();
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ack, 0).0, TC_ACT_SHOT);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &synack, 0).0, TC_ACT_SHOT);

    // 5. A new flow the client's egress denies after DNAT: dropped at the
    // post-DNAT hook (here post_nat alone, as on an uplink), and its
    // retransmissions at from_endpoint by the cached client->frontend verdict.
    let (pre, post) = flow(client, 40001, frontend, backend);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &pre, 0).0, TC_ACT_OK);
    dp.remove_endpoint(1).unwrap(); // an uplink is no endpoint
    let post_nat = dp.post_nat_program().unwrap();
    assert_eq!(run_prog(post_nat, &post, SERVICE_DEFER_MARK).0, TC_ACT_SHOT);
    // Unmarked packets pass post_nat untouched.
    assert_eq!(run_prog(post_nat, &post, 0), (TC_ACT_OK, 0));
    dp.set_endpoint(
        1,
        EndpointInfo {
            id: EP,
            flags: endpoint_flags::HAS_STAGED,
        },
    )
    .unwrap();
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &pre, 0), (TC_ACT_SHOT, 0));
    let denied = dp.drain_events();
    assert!(
        denied.iter().any(|e| e.service == Some((ip(frontend), 80))
            && e.dst == ip(backend)
            && e.enforced.action == action::DENY),
        "{denied:#?}"
    );

    // 6. A reply from a frontend no post-DNAT hook saw (e.g. a backend in the
    // node's own namespace): the client's egress is judged against the
    // frontend there; no rule allows the frontend, so it is dropped.
    dp.install(&tables(true)).unwrap();
    let unseen = Packet::tcp(ip(frontend), 80, ip(client), 40002).flags(SYN | ACK);
    assert_eq!(run(&mut dp, Hook::ToEndpoint, &unseen, 0).0, TC_ACT_SHOT);
    assert_eq!(count(&dp, stat::SERVICE_REPLY_JUDGED), 1);
}

#[test]
fn service_flows_ipv4() {
    service_flow_both_families("10.65.0.10", "10.96.0.10", "10.65.1.5");
}

#[test]
fn service_flows_ipv6() {
    service_flow_both_families("fd65::10", "fd96::10", "fd65:1::5");
}

#[test]
fn flows_to_other_addresses_are_not_deferred() {
    let mut dp = load();
    let p = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8080);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &p, 0), (TC_ACT_OK, 0));
    assert_eq!(count(&dp, stat::SERVICE_DEFERRED), 0);
    // ICMP to a ClusterIP is not load-balanced: judged where it is.
    let ping = Packet::icmp(ip("10.65.0.10"), ip("10.96.0.10"), 8, 0);
    assert_eq!(run(&mut dp, Hook::FromEndpoint, &ping, 0), (TC_ACT_SHOT, 0));
    assert_eq!(count(&dp, stat::SERVICE_DEFERRED), 0);
}
