//! Helpers of the BPF dataplane tests (`bpf_*.rs`): the dataplane loaded with the
//! endpoint under test on loopback (ifindex 1, where BPF_PROG_TEST_RUN runs TC
//! programs), packet runs, counters, verdicts and table entries, the base tables,
//! and veth pairs for runs on other interfaces.
#![allow(dead_code)] // each test file uses part of it
use std::net::IpAddr;

use agent::dataplane::{Dataplane, Hook, PeerMatch, PortMatch, RuleEntry, Table, TableSet};
use agent::model::ir::Direction;
use agent_common::{action, EndpointInfo, Verdict};
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::{Packet, ICMP, ICMPV6, TCP, UDP};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const LOOPBACK: u32 = 1;
pub const EP: u32 = 7;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn allow(policy: u32, rule: i32) -> Verdict {
    Verdict {
        action: action::ALLOW,
        flags: 0,
        tier: 1,
        policy,
        rule,
    }
}

pub fn deny(policy: u32, rule: i32) -> Verdict {
    Verdict {
        action: action::DENY,
        ..allow(policy, rule)
    }
}

pub fn entry(
    dir: Direction,
    table: Table,
    peer: PeerMatch,
    protocol: Option<u8>,
    ports: PortMatch,
    verdict: Verdict,
) -> RuleEntry {
    RuleEntry {
        endpoint_id: EP,
        direction: dir,
        table,
        peer,
        protocol,
        source_port_class: protocol.map(|_| 0),
        ports,
        verdict,
    }
}

pub fn load(flags: u32) -> Dataplane {
    let mut dp = Dataplane::load().expect("both programs through the verifier (needs root)");
    dp.set_endpoint(LOOPBACK, EndpointInfo { id: EP, flags })
        .unwrap();
    dp
}

pub fn run(dp: &mut Dataplane, hook: Hook, p: &Packet) -> u32 {
    run_frame(dp, hook, &p.frame())
}

pub fn run_frame(dp: &mut Dataplane, hook: Hook, frame: &[u8]) -> u32 {
    dp.program(hook)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

pub fn count(dp: &Dataplane, index: u32) -> u64 {
    dp.counters().unwrap().get(index)
}

/// Pod 10.65.0.10 (class 1 peers: 10.65.0.0/24, fd65::/64), web at 10.65.1.0/24 (class 2).
pub fn base_tables() -> TableSet {
    use Direction::*;
    use PeerMatch::*;
    use Table::*;
    TableSet {
        peers: vec![
            ("10.65.0.0/24".parse().unwrap(), 1),
            ("10.65.1.0/24".parse().unwrap(), 2),
            ("10.65.1.128/25".parse().unwrap(), 3),
            ("fd65::/64".parse().unwrap(), 1),
            ("fd66::/48".parse().unwrap(), 2),
        ],
        rules: vec![
            // Egress: to class 2 on TCP 8000-8099 allowed, other TCP to class 2 denied.
            entry(
                Egress,
                Enforced,
                Group(2),
                Some(TCP),
                PortMatch::Range(8000, 8099),
                allow(10, 0),
            ),
            entry(
                Egress,
                Enforced,
                Group(2),
                Some(TCP),
                PortMatch::Any,
                deny(10, -1),
            ),
            // Class 3 (inside class 2's /24 by LPM) only on 443.
            entry(
                Egress,
                Enforced,
                Group(3),
                Some(TCP),
                PortMatch::Range(443, 443),
                allow(11, 0),
            ),
            // UDP 53 to anyone.
            entry(
                Egress,
                Enforced,
                Any,
                Some(UDP),
                PortMatch::Range(53, 53),
                allow(12, 0),
            ),
            // ICMP echo request (type 8, any code) to anyone; ICMP 3/4 only.
            entry(
                Egress,
                Enforced,
                Any,
                Some(ICMP),
                PortMatch::Icmp {
                    icmp_type: 8,
                    code: None,
                },
                allow(13, 0),
            ),
            entry(
                Egress,
                Enforced,
                Any,
                Some(ICMP),
                PortMatch::Icmp {
                    icmp_type: 3,
                    code: Some(4),
                },
                allow(13, 1),
            ),
            entry(
                Egress,
                Enforced,
                Any,
                Some(ICMPV6),
                PortMatch::Icmp {
                    icmp_type: 128,
                    code: Some(0),
                },
                allow(13, 2),
            ),
            // Ingress: everything from class 1, TCP 22 from anyone.
            entry(
                Ingress,
                Enforced,
                Group(1),
                None,
                PortMatch::Any,
                allow(20, 0),
            ),
            entry(
                Ingress,
                Enforced,
                Any,
                Some(TCP),
                PortMatch::Range(22, 22),
                allow(21, 0),
            ),
        ],
        sports: vec![],
        groups: vec![],
    }
    // Hand-written: group n is class n.
    .with_identity_groups()
}

/// A veth pair (the kernel here has no dummy driver) in a network namespace of
/// its own, for runs with ifindexes other than loopback's. The host's
/// interfaces are never touched: BPF_PROG_TEST_RUN and TCX attach find an
/// interface in the caller's namespace, so both go through [`VethPair::run`].
/// The namespace, and the pair with it, go on drop.
pub struct VethPair {
    lab: lab::Lab,
    pub name: String,
    pub ifindex: [u32; 2],
}

impl VethPair {
    pub fn new() -> VethPair {
        let lab = lab::Lab::new();
        let (name, peer) = ("dpt0", "dpt0p");
        lab.node()
            .ip(&format!("link add {name} type veth peer name {peer}"));
        VethPair {
            ifindex: [lab.node().ifindex(name), lab.node().ifindex(peer)],
            name: name.to_owned(),
            lab,
        }
    }

    /// Runs `f` inside the pair's namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.lab.node().run(f)
    }

    /// Runs `p` with `__sk_buff.ifindex` set (the only non-zero field), inside
    /// the pair's namespace, so the program sees the packet on that interface.
    pub fn run_on(&self, dp: &mut Dataplane, hook: Hook, ifindex: u32, p: &Packet) -> u32 {
        let frame = p.frame();
        self.run(|| {
            let mut ctx = [0u8; 44]; // __sk_buff up to and including ifindex (offset 40)
            ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
            dp.program(hook)
                .unwrap()
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&ctx),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN with an __sk_buff")
                .return_value
        })
    }
}
