//! Packet fuzzing of the kernel programs (BPF_PROG_TEST_RUN): crafted and
//! mutated frames (truncated at every length, bad IHL and versions, IPv6
//! extension chains long and looping, fragments first, later, alone and
//! overlapping, bad TCP data offsets, ICMP errors quoting broken packets,
//! IPv4-mapped IPv6 addresses, VLAN tags, random bytes) against compiled
//! random models, with conntrack insertion off so every packet is judged.
//!
//! Checked for every frame (docs/fuzzing.md, "Packets"):
//! - the run never fails in the kernel and returns TC_ACT_OK or TC_ACT_SHOT;
//! - a frame whose ethertype is not IPv4/IPv6 passes (counted NON_IP);
//! - a frame with an IP ethertype whose IP header (with its options), any of
//!   the first 7 IPv6 extension headers, or the L4 header the policy reads
//!   (TCP 20 bytes, UDP/SCTP/UDP-Lite ports, ICMP 8 bytes) is cut short or
//!   inconsistent (version, IHL < 5, an 8th extension header, an IPv4-mapped
//!   address in an IPv6 header) is dropped
//!   (counted MALFORMED): fail closed;
//! - every other frame gets exactly the reference evaluator's enforced verdict
//!   for what it carries (a later fragment: its first fragment's protocol and
//!   ports, or port 0; ICMPv6 neighbour discovery/MLD: allowed before policy),
//!   with the endpoint's own address as the local end (the kernel keys on the
//!   endpoint, not on the packet's local address);
//! - a cut-short frame is dropped or judged as the whole frame.
//!
//! `FUZZ_CASES=N` sets the number of generated cases (default 3,000), spread
//! over the models; `PROPTEST_RNG_SEED` replays a run.
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent::compile::testgen::{random_model, random_probe, Probe, Rng, Shape};
use agent::compile::{compile, Compiled, CompiledEndpoint};
use agent::dataplane::{Dataplane, Hook};
use agent::eval::{Evaluator, PolicySet};
use agent::model::ir::{Direction, Model};
use agent_common::{action, active_flags, stat};
use aya::programs::{TestRun, TestRunOptions};
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[path = "common/bpf.rs"]
mod bpf;
#[path = "fuzz_packets/cases.rs"]
mod cases;
#[path = "fuzz_packets/frames.rs"]
mod frames;
#[path = "fuzz_packets/reference.rs"]
mod reference;

use reference::{Decoded, Fragments};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const LOOPBACK: u32 = 1;
/// Models the cases are spread over (each compiled and installed once).
const MODELS: u64 = 6;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What the frames did, for the figures.
#[derive(Debug, Default)]
struct Tally {
    frames: u64,
    not_ip: u64,
    malformed: u64,
    allowed: u64,
    denied: u64,
    /// ICMPv6 ND/MLD passed before policy.
    nd_or_mld: u64,
    /// Later fragments judged with their first fragment's ports.
    later_tracked: u64,
    /// Later fragments without a first fragment (port 0).
    later_alone: u64,
    /// Frames BPF_PROG_TEST_RUN itself refuses (shorter than it accepts).
    refused_by_test_run: u64,
}

/// A model compiled and installed, with its evaluator.
struct Installed<'m> {
    model: &'m Model,
    compiled: Compiled,
    eval: Evaluator<'m>,
    endpoints: Vec<usize>,
    /// The model's IPv4 addresses (endpoints and nets), for IPv4-mapped IPv6.
    v4: Vec<Ipv4Addr>,
}

struct Rig {
    dp: Dataplane,
    fragments: Fragments,
    tally: Tally,
    next_frag_id: u32,
}

impl Rig {
    fn new() -> Rig {
        let mut dp = Dataplane::load().expect("load through the verifier (needs root)");
        dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
        Rig {
            dp,
            fragments: Fragments::default(),
            tally: Tally::default(),
            next_frag_id: 0x1000,
        }
    }

    fn counter(&self, index: u32) -> u64 {
        self.dp.counters().unwrap().get(index)
    }

    /// Runs `frame` on `hook` as `ep`; the return code, or None when
    /// BPF_PROG_TEST_RUN refuses a frame this short.
    fn run(&mut self, ep: &CompiledEndpoint, hook: Hook, frame: &[u8]) -> Option<u32> {
        self.dp.set_endpoint(LOOPBACK, ep.info()).unwrap();
        let out = self.dp.program(hook).unwrap().test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        });
        match out {
            Ok(o) => Some(o.return_value),
            // The kernel refuses (EINVAL) IPv4 frames shorter than an IPv4
            // header and IPv6 frames shorter than an IPv6 header.
            Err(_) if frame.len() < shortest_accepted(frame) => None,
            Err(e) => panic!(
                "BPF_PROG_TEST_RUN failed on a {}-byte frame {}: {e:?}",
                frame.len(),
                hex(frame)
            ),
        }
    }

    /// Runs `frame` and checks the rules of the module comment; returns the
    /// return code (None: refused by BPF_PROG_TEST_RUN).
    fn check(
        &mut self,
        at: &Installed,
        ep: &CompiledEndpoint,
        direction: Direction,
        frame: &[u8],
    ) -> Result<Option<u32>, String> {
        let hook = Hook::judging(direction, ep.host);
        let (non_ip, malformed) = (self.counter(stat::NON_IP), self.counter(stat::MALFORMED));
        let Some(rc) = self.run(ep, hook, frame) else {
            self.tally.refused_by_test_run += 1;
            return Ok(None);
        };
        self.tally.frames += 1;
        let decoded = reference::decode(frame);
        let what = || format!("{direction:?} frame {} ({decoded:?})", hex(frame));
        if rc != TC_ACT_OK && rc != TC_ACT_SHOT {
            return Err(format!("return code {rc}: {}", what()));
        }
        let non_ip = self.counter(stat::NON_IP) - non_ip;
        let malformed = self.counter(stat::MALFORMED) - malformed;
        let want = match &decoded {
            Decoded::NotIp => {
                self.tally.not_ip += 1;
                if non_ip != 1 {
                    return Err(format!("not counted NON_IP: {}", what()));
                }
                TC_ACT_OK
            }
            Decoded::Malformed(_) => {
                self.tally.malformed += 1;
                if malformed != 1 {
                    return Err(format!("not counted MALFORMED: {}", what()));
                }
                TC_ACT_SHOT
            }
            Decoded::Judged(j) => {
                let mut j = j.clone();
                let was_later = matches!(j.frag, reference::Frag::Later(_));
                if self.fragments.resolve(&mut j).is_none() {
                    return Ok(Some(rc)); // a first fragment too old to be sure of
                }
                if was_later {
                    if j.port == 0 && j.sport == 0 {
                        self.tally.later_alone += 1;
                    } else {
                        self.tally.later_tracked += 1;
                    }
                }
                if malformed != 0 {
                    return Err(format!("counted MALFORMED: {}", what()));
                }
                if j.nd_or_mld {
                    self.tally.nd_or_mld += 1;
                    TC_ACT_OK
                } else {
                    let allowed = evaluate(at, ep, direction, &j);
                    if allowed {
                        self.tally.allowed += 1;
                        TC_ACT_OK
                    } else {
                        self.tally.denied += 1;
                        TC_ACT_SHOT
                    }
                }
            }
        };
        if rc != want {
            return Err(format!("kernel {rc}, expected {want}: {}", what()));
        }
        Ok(Some(rc))
    }
}

/// The evaluator's enforced verdict on what `j` carries, seen from `ep`.
fn evaluate(
    at: &Installed,
    ep: &CompiledEndpoint,
    direction: Direction,
    j: &reference::Judged,
) -> bool {
    let peer = match direction {
        Direction::Egress => j.dst,
        Direction::Ingress => j.src,
    };
    // The kernel keys on the endpoint, not on the packet's local address: a
    // packet is judged as if it used the endpoint's own address of its family
    // (the unspecified address when it has none), as the compiler evaluates.
    let unspecified: IpAddr = if peer.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let local = at.model.endpoints[ep.endpoint_index]
        .ips
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == peer.is_ipv4())
        .unwrap_or(unspecified);
    let probe = Probe {
        endpoint_index: ep.endpoint_index,
        direction,
        local,
        peer,
        protocol: j.protocol,
        src_port: j.sport,
        port: j.port,
    };
    let end = at.eval.evaluate_end(
        PolicySet::Enforced,
        ep.endpoint_index,
        direction,
        peer,
        local,
        &probe.packet(),
    );
    at.compiled.verdict_of(&end).action == action::ALLOW
}

/// The shortest frame BPF_PROG_TEST_RUN accepts with `frame`'s ethertype.
fn shortest_accepted(frame: &[u8]) -> usize {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => 14 + 20,
        Some([0x86, 0xdd]) => 14 + 40,
        _ => 14,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Random models (the differential test's generator) that compile, with
/// endpoints that have addresses.
fn models(count: u64) -> Vec<Model> {
    let mut rng = Rng::new(0xf022_0001);
    let mut out = Vec::new();
    while out.len() < count as usize {
        let model = random_model(&mut Rng::new(rng.next_u64()), Shape::default());
        let usable = compile(&model).is_ok() && model.endpoints.iter().any(|e| !e.ips.is_empty());
        if usable {
            out.push(model);
        }
    }
    out
}

fn install<'m>(dp: &mut Dataplane, model: &'m Model) -> Installed<'m> {
    let compiled = compile(model).unwrap();
    dp.install(&compiled.tables).unwrap();
    let endpoints = compiled
        .endpoints
        .iter()
        .map(|e| e.endpoint_index)
        .filter(|&i| !model.endpoints[i].ips.is_empty())
        .collect();
    let mut v4: Vec<Ipv4Addr> = model
        .endpoints
        .iter()
        .flat_map(|e| &e.ips)
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            _ => None,
        })
        .collect();
    v4.push("8.8.8.8".parse().unwrap());
    Installed {
        model,
        v4,
        eval: Evaluator::new(model),
        compiled,
        endpoints,
    }
}

#[test]
fn fuzzed_packets_fail_closed_and_match_the_evaluator() {
    let cases = env("FUZZ_CASES", 3000);
    let started = std::time::Instant::now();
    let rig = RefCell::new(Rig::new());
    let models = models(MODELS);
    for model in &models {
        let installed = install(&mut rig.borrow_mut().dp, model);
        let mut runner = TestRunner::new(Config {
            cases: (cases / MODELS).max(1) as u32,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&cases::case(), |case| {
            let mut rig = rig.borrow_mut();
            rig.dp.drain_events();
            let mut rng = Rng::new(case.probe_seed);
            let probe = random_probe(&mut rng, installed.model, &installed.endpoints);
            let ep = installed
                .compiled
                .endpoints
                .iter()
                .find(|e| e.endpoint_index == probe.endpoint_index)
                .unwrap()
                .clone();
            rig.next_frag_id += 1;
            let frames = cases::frames(&case, &probe, rig.next_frag_id, &installed.v4);
            let mut rcs = Vec::new();
            for f in &frames {
                let rc = rig.check(&installed, &ep, probe.direction, f);
                rcs.push(rc.map_err(TestCaseError::fail)?);
            }
            // A cut-short frame is dropped or judged as the whole one.
            let (whole, whole_rc) = (frames.last().unwrap(), *rcs.last().unwrap());
            for (f, rc) in frames.iter().zip(&rcs) {
                let cut = whole.starts_with(f);
                if cut && rc.is_some() && *rc != Some(TC_ACT_SHOT) && *rc != whole_rc {
                    return Err(TestCaseError::fail(format!(
                        "a {}-byte prefix got {rc:?}, the whole frame {whole_rc:?}",
                        f.len()
                    )));
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
    let t = &rig.borrow().tally;
    eprintln!(
        "bpf_fuzz: {cases} cases, {} frames in {:.1?}: {t:?}; 0 kernel errors, 0 disagreements",
        t.frames,
        started.elapsed()
    );
    assert!(
        t.malformed > t.frames / 20,
        "too few malformed frames: {t:?}"
    );
    assert!(t.allowed > 0 && t.denied > 0 && t.not_ip > 0, "{t:?}");
}

/// The checked-in corpus (`tests/fuzz-packets/corpus.txt`, written by
/// `make_corpus.py`): each frame is of the class the file says, and follows
/// the rules in both directions.
#[test]
fn corpus_frames_follow_the_rules() {
    let text = include_str!("../fuzz-packets/corpus.txt");
    let mut rig = Rig::new();
    let models = models(1);
    let installed = install(&mut rig.dp, &models[0]);
    let ep = installed
        .compiled
        .endpoints
        .iter()
        .find(|e| installed.endpoints.contains(&e.endpoint_index))
        .unwrap()
        .clone();
    let mut frames = 0;
    for line in text.lines() {
        let [class, name, hex] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("corpus line is not `class name hex`: {line}");
        };
        let frame: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let got = match reference::decode(&frame) {
            Decoded::NotIp => "not-ip",
            Decoded::Malformed(_) => "malformed",
            Decoded::Judged(_) => "judged",
        };
        assert_eq!(got, class, "{name}");
        for direction in [Direction::Egress, Direction::Ingress] {
            let rc = rig.check(&installed, &ep, direction, &frame);
            let rc = rc.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(rc.is_some(), "{name}: refused by BPF_PROG_TEST_RUN");
            frames += 1;
        }
    }
    assert!(frames >= 60, "{frames}");
    eprintln!("bpf_fuzz corpus: {frames} runs, {:?}", rig.tally);
}

/// Regression (found by the fuzzer): IPv4 addresses are keyed IPv4-mapped, so
/// an IPv6 packet from `::ffff:10.65.0.5` was judged as the IPv4 peer
/// 10.65.0.5 (allowed by class 1's rule) where the evaluator judges an IPv6
/// address no rule allows. Such headers are malformed now.
#[test]
fn ipv4_mapped_addresses_in_ipv6_headers_are_dropped() {
    use lab::packet::Packet;
    let mut dp = bpf::load(0);
    dp.install(&bpf::base_tables()).unwrap();
    let ip = bpf::ip;
    let cases = [
        // Ingress from class 1 (10.65.0.0/24) is allowed for IPv4.
        (
            Hook::ToEndpoint,
            Packet::udp(ip("::ffff:10.65.0.5"), 1, ip("fd65::10"), 9),
        ),
        // Egress to class 2 on TCP 8000 is allowed for IPv4.
        (
            Hook::FromEndpoint,
            Packet::tcp(ip("fd65::10"), 1, ip("::ffff:10.65.1.5"), 8000),
        ),
    ];
    for (i, (hook, p)) in cases.iter().enumerate() {
        let mut v4 = p.clone();
        let unmap = |a: std::net::IpAddr| match a {
            std::net::IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(a), std::net::IpAddr::V4),
            a => a,
        };
        (v4.src, v4.dst) = (unmap(p.src), unmap(p.dst));
        if v4.src.is_ipv6() != v4.dst.is_ipv6() {
            // The IPv4 twin of the packet (both ends IPv4) shows the rule allows it.
            (v4.src, v4.dst) = match hook {
                Hook::ToEndpoint => (v4.src, ip("10.65.0.10")),
                Hook::FromEndpoint => (ip("10.65.0.10"), v4.dst),
            };
        }
        assert_eq!(bpf::run(&mut dp, *hook, &v4), bpf::TC_ACT_OK, "{v4:?}");
        assert_eq!(bpf::run(&mut dp, *hook, p), bpf::TC_ACT_SHOT, "{p:?}");
        assert_eq!(bpf::count(&dp, stat::MALFORMED), i as u64 + 1);
    }
}
