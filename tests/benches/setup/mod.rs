//! What the dataplane bench and its CI check (`tests/tests/bpf_linear_scan.rs`)
//! share: one set of N rules, written both as the agent's datastore and as the
//! linear-scan program's rule array, and the programs loaded with them.
//!
//! The rules: the server's ingress policy allows TCP from peer i (a /32 or a
//! /128: Calico rules hold one family) to port 10,000 + i, for i in 0..N, in policies of at most 1,000 rules
//! (Calico's limit per direction is 1,024), the last ending with a Deny.
#![allow(dead_code)] // each includer uses part of it

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use agent::compile::{compile, Compiled};
use agent::dataplane::{Dataplane, BENCH_OBJECT};
use agent::model::load::load_sources;
use agent_common::{endpoint_flags, EndpointInfo};
use aya::maps::{Array, HashMap, MapData, ProgramArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::Ebpf;
use lab::packet::Packet;

/// BPF_PROG_TEST_RUN's ctx carries no ifindex here: the program sees loopback's.
pub const LOOPBACK: u32 = 1;
const RULES_PER_POLICY: usize = 1_000;
const FIRST_PORT: u16 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn server(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(10, 65, 0, 30).into(),
            Family::V6 => Ipv6Addr::new(0xfd65, 0, 0, 0, 0, 0, 0, 0x30).into(),
        }
    }

    /// The source that rule `i` allows.
    pub fn peer(self, i: usize) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(10, 70, (i / 250) as u8, (i % 250) as u8 + 1).into(),
            Family::V6 => Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, i as u16 + 1).into(),
        }
    }

    /// The rules' prefix length: one address.
    pub fn prefix_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// A source no rule allows.
    pub fn stranger(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(10, 99, 0, 1).into(),
            Family::V6 => Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1).into(),
        }
    }
}

/// The destination port that rule `i` allows.
pub fn port(i: usize) -> u16 {
    FIRST_PORT + i as u16
}

/// A TCP SYN from `src`:`sport` to the server's `dport`.
pub fn syn(family: Family, src: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    Packet::tcp(src, sport, family.server(), dport).frame()
}

/// The agent's datastore: the server, its ingress policies with `rules`
/// rules, and a staged lockdown with the same rules but the last (so the
/// staged pass has the same table shape and disagrees on the last rule's flow).
pub fn datastore(family: Family, rules: usize) -> String {
    let mut y = String::from(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {interfaceName: calibench, ipNetworks: [10.65.0.30/32, 'fd65::30/128']}
",
    );
    policies(
        &mut y,
        family,
        "GlobalNetworkPolicy",
        "server-ingress",
        10,
        rules,
    );
    policies(
        &mut y,
        family,
        "StagedGlobalNetworkPolicy",
        "server-lockdown",
        1,
        rules.saturating_sub(1),
    );
    y
}

/// `rules` rules in consecutive policies of `RULES_PER_POLICY`, ordered from
/// `first_order`; the last policy ends with a Deny.
fn policies(
    y: &mut String,
    family: Family,
    kind: &str,
    name: &str,
    first_order: usize,
    rules: usize,
) {
    let count = rules.div_ceil(RULES_PER_POLICY).max(1);
    for p in 0..count {
        y.push_str(&format!(
            "---
apiVersion: projectcalico.org/v3
kind: {kind}
metadata: {{name: {name}-{p}}}
spec:
  order: {}
  selector: app == 'server'
  types: [Ingress]
  ingress:
",
            first_order + p
        ));
        let end = rules.min((p + 1) * RULES_PER_POLICY);
        for i in p * RULES_PER_POLICY..end {
            y.push_str(&format!(
                "  - {{action: Allow, protocol: TCP, source: {{nets: ['{}/{}']}}, destination: {{ports: [{}]}}}}\n",
                family.peer(i),
                family.prefix_len(),
                port(i)
            ));
        }
        if p + 1 == count {
            y.push_str("  - action: Deny\n");
        }
    }
}

/// The agent's program loaded through the verifier with the tables of
/// `rules` rules of `family`, the server on loopback (staged pass off).
pub fn agent_dataplane(family: Family, rules: usize) -> (Dataplane, Compiled) {
    let loaded = load_sources(&[(PathBuf::from("bench.yaml"), datastore(family, rules))]);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let compiled = compile(&loaded.model).expect("compile");
    let mut dp = Dataplane::load().expect("load through the verifier (needs root)");
    let ep = &compiled.endpoints[0];
    assert!(ep.has_staged, "the staged policy selects the server");
    dp.set_endpoint(
        LOOPBACK,
        EndpointInfo {
            id: ep.id,
            flags: ep.info().flags & !endpoint_flags::HAS_STAGED,
        },
    )
    .unwrap();
    dp.install(&compiled.tables).unwrap();
    (dp, compiled)
}

/// The bench-only programs (`ebpf/src/bench.rs`): `floor` and `linear_scan`
/// (with `linear_scan_chunk`, its tail call).
pub struct ScanPrograms {
    ebpf: Ebpf,
    /// Kept open: the kernel empties a program array when its last file
    /// descriptor closes.
    _jump: ProgramArray<MapData>,
}

/// The programs of `ebpf/src/bench.rs` that each run one step of the agent's
/// established path alone.
pub const STEPS: [&str; 3] = ["step_endpoint", "step_clock", "step_counters"];

/// `ScanRule` of `ebpf/src/bench.rs`: address and mask (16 bytes each, in
/// packet order), first and last port, protocol, allow, padding.
type ScanRule = [u8; 40];
/// `ScanCtKey` of `ebpf/src/bench.rs`: source, destination, source and
/// destination ports (native order), protocol, padding.
type ScanCtKey = [u8; 40];

impl ScanPrograms {
    pub fn load() -> ScanPrograms {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).expect("bench object (needs root)");
        for name in ["floor", "linear_scan", "linear_scan_chunk"]
            .into_iter()
            .chain(STEPS)
        {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.load()
                .unwrap_or_else(|e| panic!("{name} through the verifier: {e}"));
        }
        let mut jump = ProgramArray::try_from(ebpf.take_map("SCAN_JUMP").unwrap()).unwrap();
        let chunk: &SchedClassifier = ebpf
            .program("linear_scan_chunk")
            .unwrap()
            .try_into()
            .unwrap();
        jump.set(0, chunk.fd().unwrap(), 0).unwrap();
        let mut endpoints: HashMap<_, u32, u64> =
            HashMap::try_from(ebpf.map_mut("STEP_ENDPOINTS").unwrap()).unwrap();
        endpoints.insert(&LOOPBACK, &1, 0).unwrap();
        ScanPrograms { ebpf, _jump: jump }
    }

    /// Writes the same `rules` rules for `family`, then the Deny.
    pub fn set_rules(&mut self, family: Family, rules: usize) {
        let mut array: Array<_, ScanRule> =
            Array::try_from(self.ebpf.map_mut("SCAN_RULES").unwrap()).unwrap();
        for i in 0..rules {
            let entry = scan_rule(&mapped(family.peer(i)), &[0xff; 16], port(i), 6, true);
            array.set(i as u32, &entry, 0).unwrap();
        }
        array
            .set(rules as u32, &scan_rule(&[0; 16], &[0; 16], 0, 0, false), 0)
            .unwrap();
        let mut len: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("SCAN_LEN").unwrap()).unwrap();
        len.set(0, &(rules as u32 + 1), 0).unwrap();
    }

    /// Enters the TCP flow `src`:`sport` -> server:`dport` in the scan's conntrack.
    pub fn track(&mut self, family: Family, src: IpAddr, sport: u16, dport: u16) {
        let mut ct: HashMap<_, ScanCtKey, u8> =
            HashMap::try_from(self.ebpf.map_mut("SCAN_CONNTRACK").unwrap()).unwrap();
        let mut key = [0u8; 40];
        key[..16].copy_from_slice(&mapped(src));
        key[16..32].copy_from_slice(&mapped(family.server()));
        key[32..34].copy_from_slice(&sport.to_ne_bytes());
        key[34..36].copy_from_slice(&dport.to_ne_bytes());
        key[36] = 6;
        ct.insert(&key, &1, 0).unwrap();
    }

    /// Runs `program` on `frame` `repeat` times: (return value, ns per run).
    pub fn run(&mut self, program: &str, frame: &[u8], repeat: u32) -> (u32, f64) {
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(program).unwrap().try_into().unwrap();
        test_run(prog, frame, repeat)
    }
}

/// BPF_PROG_TEST_RUN: (return value, ns per run).
pub fn test_run(prog: &mut SchedClassifier, frame: &[u8], repeat: u32) -> (u32, f64) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN (needs root)");
    (r.return_value, r.duration.as_nanos() as f64)
}

fn scan_rule(addr: &[u8; 16], mask: &[u8; 16], port: u16, protocol: u8, allow: bool) -> ScanRule {
    let mut r = [0u8; 40];
    r[..16].copy_from_slice(addr);
    r[16..32].copy_from_slice(mask);
    let (first, last) = if protocol == 0 {
        (0, u16::MAX)
    } else {
        (port, port)
    };
    r[32..34].copy_from_slice(&first.to_ne_bytes());
    r[34..36].copy_from_slice(&last.to_ne_bytes());
    r[36] = protocol;
    r[37] = u8::from(allow);
    r
}

/// IPv4 as IPv4-mapped IPv6, as the programs see addresses.
fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}
