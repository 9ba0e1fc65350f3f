//! The bench's reference programs (`ebpf/src/bench.rs`) load through the real
//! verifier, and `linear_scan` gives the agent's verdicts on the same rules:
//! otherwise `cargo xtask bench` would compare the agent with a program that
//! does something else. The bench itself (timings) is not run in CI.
#[path = "../benches/setup/mod.rs"]
mod setup;

use agent::dataplane::Hook;
use agent_common::active_flags;
use setup::{port, syn, Family, ScanPrograms};

const RULES: usize = 10;
/// More rules than one chunk of `linear_scan` holds.
const LONG: usize = 2_100;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

#[test]
fn linear_scan_gives_the_agents_verdicts() {
    lab::require_root();
    let mut scan = ScanPrograms::load();
    for family in Family::BOTH {
        let (mut dp, _compiled) = setup::agent_dataplane(family, RULES);
        dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
        scan.set_rules(family, RULES);
        let last = RULES - 1;
        let cases = [
            ("first rule's flow", family.peer(0), port(0), TC_ACT_OK),
            ("last rule's flow", family.peer(last), port(last), TC_ACT_OK),
            (
                "a rule's peer, another rule's port",
                family.peer(0),
                port(last),
                TC_ACT_SHOT,
            ),
            (
                "a port no rule allows",
                family.peer(3),
                port(RULES),
                TC_ACT_SHOT,
            ),
            (
                "a source no rule allows",
                family.stranger(),
                port(0),
                TC_ACT_SHOT,
            ),
        ];
        for (what, src, dport, expected) in cases {
            let frame = syn(family, src, 40_000, dport);
            let agent = setup::test_run(dp.program(Hook::ToEndpoint).unwrap(), &frame, 1).0;
            let (linear, _) = scan.run("linear_scan", &frame, 1);
            assert_eq!(agent, expected, "{family:?} {what}: the agent's verdict");
            assert_eq!(linear, agent, "{family:?} {what}: linear_scan vs the agent");
        }
        // Past the first chunk (1,024 rules): the tail calls carry the flow on.
        scan.set_rules(family, LONG);
        for (what, src, dport, expected) in [
            (
                "the last rule's flow",
                family.peer(LONG - 1),
                port(LONG - 1),
                TC_ACT_OK,
            ),
            (
                "a rule's peer, another rule's port",
                family.peer(LONG - 1),
                port(0),
                TC_ACT_SHOT,
            ),
            (
                "a source no rule allows",
                family.stranger(),
                port(0),
                TC_ACT_SHOT,
            ),
        ] {
            let (linear, _) = scan.run("linear_scan", &syn(family, src, 40_000, dport), 1);
            assert_eq!(linear, expected, "{family:?} {what} at {LONG} rules");
        }
        // What the bench's `conntrack_hit` measures: a tracked flow passes
        // without a rule (here one the rules deny).
        let (src, dport) = (family.stranger(), port(0));
        scan.track(family, src, 40_000, dport);
        let (tracked, _) = scan.run("linear_scan", &syn(family, src, 40_000, dport), 1);
        assert_eq!(tracked, TC_ACT_OK, "{family:?}: a conntrack hit passes");
        let (floor, _) = scan.run("floor", &syn(family, src, 40_001, dport), 1);
        assert_eq!(floor, TC_ACT_OK, "{family:?}: floor passes everything");
    }
}
