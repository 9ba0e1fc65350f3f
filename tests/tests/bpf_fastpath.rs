//! The established fast path (`ebpf/src/established.rs`) against the full
//! path: two dataplanes with the same tables, one endpoint on the fast path,
//! the other with `endpoint_flags::FULL_PATH` (every packet through the full
//! parser), run the same packets. Every packet gets the same verdict from
//! both, every counter and every conntrack entry ends the same, and the
//! verdicts are the ones the policy gives (so both cannot be wrong alike).
//!
//! The packets cover what the fast path answers (TCP and UDP of established
//! flows, IPv4 with options, both directions, cached denials) and what it
//! must leave to the full path: sides not judged yet, stale entries after a
//! policy change, idle entries, fragments, IPv6 extension headers, ICMP echo
//! and errors, truncated headers, IPv4-mapped IPv6 addresses (whose key would
//! be an IPv4 flow's).
use agent::dataplane::{Dataplane, Hook};
use agent_common::{endpoint_flags, stat, CtKey, CtValue, EndpointInfo};
use lab::packet::{Packet, ACK, FIN, SYN};

#[path = "common/bpf.rs"]
mod bpf;
use bpf::{base_tables, ip, run_frame, EP, LOOPBACK, TC_ACT_OK, TC_ACT_SHOT};

/// The same endpoint in two dataplanes: on the fast path, and on the full path.
struct Pair {
    fast: Dataplane,
    full: Dataplane,
}

impl Pair {
    fn new() -> Pair {
        let mut pair = Pair {
            fast: Dataplane::load().expect("through the verifier (needs root)"),
            full: Dataplane::load().unwrap(),
        };
        for (dp, flags) in [
            (&mut pair.fast, 0),
            (&mut pair.full, endpoint_flags::FULL_PATH),
        ] {
            dp.set_endpoint(LOOPBACK, EndpointInfo { id: EP, flags })
                .unwrap();
        }
        pair.install();
        pair
    }

    fn install(&mut self) {
        self.fast.install(&base_tables()).unwrap();
        self.full.install(&base_tables()).unwrap();
    }

    /// Runs `frame` in both; asserts the same verdict and the same counters.
    fn frame(&mut self, hook: Hook, frame: &[u8], what: &str) -> u32 {
        let fast = run_frame(&mut self.fast, hook, frame);
        let full = run_frame(&mut self.full, hook, frame);
        assert_eq!(fast, full, "{what}: fast path {fast}, full path {full}");
        let (a, b) = (self.fast.counters().unwrap(), self.full.counters().unwrap());
        for ((name, x), (_, y)) in a.named().zip(b.named()) {
            assert_eq!(x, y, "{what}: counter {name}");
        }
        fast
    }

    fn run(&mut self, hook: Hook, p: &Packet, what: &str) -> u32 {
        self.frame(hook, &p.frame(), what)
    }

    /// The pod's `syn` (allowed), the handshake's other two packets and a
    /// reply: the flow's ACK and reply after it, both allowed.
    fn handshake(&mut self, syn: &Packet) -> (Packet, Packet) {
        let (ack, reply) = (syn.clone().flags(ACK), syn.reply().flags(ACK));
        let synack = syn.reply().flags(SYN | ACK);
        assert_eq!(self.run(Hook::FromEndpoint, syn, "SYN"), TC_ACT_OK);
        assert_eq!(self.run(Hook::ToEndpoint, &synack, "SYN-ACK"), TC_ACT_OK);
        assert_eq!(self.run(Hook::FromEndpoint, &ack, "ACK"), TC_ACT_OK);
        assert_eq!(self.run(Hook::ToEndpoint, &reply, "reply"), TC_ACT_OK);
        (ack, reply)
    }

    /// A policy change in both: TCP 8000-8099 to class 2 no longer allowed.
    fn cut_port_8000(&mut self) {
        let mut t = base_tables();
        t.rules.remove(0);
        for dp in [&mut self.fast, &mut self.full] {
            dp.install(&t.clone().with_identity_groups()).unwrap();
        }
    }

    /// Both conntracks, the clock left out (the coarse clock may tick between
    /// the two runs of a packet).
    fn assert_same_conntrack(&mut self) {
        let entries = |dp: &mut Dataplane| {
            let mut v: Vec<(CtKey, CtValue)> = dp
                .conntrack()
                .unwrap()
                .iter()
                .map(|r| {
                    let (k, mut v) = r.unwrap();
                    v.last_seen_ns = 0;
                    (k, v)
                })
                .collect();
            v.sort_by_key(|(k, _)| (k.addr_lo, k.addr_hi, k.port_lo, k.port_hi, k.protocol));
            v
        };
        let fast = entries(&mut self.fast);
        assert!(!fast.is_empty());
        assert_eq!(fast, entries(&mut self.full));
    }

    /// Ages every entry past its idle timeout (last seen at boot), in both.
    fn age_all(&mut self) {
        for dp in [&mut self.fast, &mut self.full] {
            let mut ct = dp.conntrack().unwrap();
            let entries: Vec<_> = ct.iter().map(|r| r.unwrap()).collect();
            for (key, mut value) in entries {
                value.last_seen_ns = 0;
                ct.insert(&key, &value, 0).unwrap();
            }
        }
    }
}

/// `frame` (IPv4) with `words` 4-byte words of IPv4 options (NOPs, then an
/// end of options) after its header.
fn with_ipv4_options(mut frame: Vec<u8>, words: u8) -> Vec<u8> {
    assert_eq!(frame[14], 0x45, "an IPv4 header without options");
    let n = usize::from(words) * 4;
    let mut options = vec![1u8; n];
    options[n - 1] = 0;
    frame.splice(34..34, options);
    frame[14] = 0x40 | (5 + words);
    let total = u16::from_be_bytes([frame[16], frame[17]]) + u16::from(words) * 4;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame
}

#[test]
fn fast_and_full_paths_agree_on_established_ipv4_flows() {
    let (from, to) = (Hook::FromEndpoint, Hook::ToEndpoint);
    let mut p = Pair::new();
    let syn = Packet::tcp(ip("10.65.0.10"), 40000, ip("10.65.1.5"), 8000);
    let (ack, reply) = p.handshake(&syn);
    for words in [1, 10] {
        let what = format!("ACK with {words} words of IPv4 options");
        assert_eq!(
            p.frame(from, &with_ipv4_options(ack.frame(), words), &what),
            TC_ACT_OK
        );
        let what = format!("reply with {words} words of IPv4 options");
        assert_eq!(
            p.frame(to, &with_ipv4_options(reply.frame(), words), &what),
            TC_ACT_OK
        );
    }
    let mut cut = ack.frame();
    cut.truncate(14 + 20 + 10);
    assert_eq!(p.frame(from, &cut, "truncated TCP header"), TC_ACT_SHOT);
    let mut past_end = with_ipv4_options(ack.frame(), 10);
    past_end.truncate(14 + 60 + 10);
    assert_eq!(
        p.frame(from, &past_end, "TCP header cut after options"),
        TC_ACT_SHOT
    );
    // The pod's own flow seen arriving at it: the receiver side, not judged
    // yet (the full path judges it: class 1 may send anything in), then known.
    let inbound = ack.clone();
    assert_eq!(p.run(to, &inbound, "receiver side, first"), TC_ACT_OK);
    assert_eq!(p.run(to, &inbound, "receiver side, known"), TC_ACT_OK);

    // A denied flow (TCP 9000 to class 2): judged once, then a cached denial.
    let denied = Packet::tcp(ip("10.65.0.10"), 40001, ip("10.65.1.5"), 9000);
    assert_eq!(p.run(from, &denied, "denied SYN"), TC_ACT_SHOT);
    assert_eq!(
        p.run(from, &denied.clone().flags(ACK), "denied, cached"),
        TC_ACT_SHOT
    );
    let opts = with_ipv4_options(denied.frame(), 2);
    assert_eq!(p.frame(from, &opts, "denied, options"), TC_ACT_SHOT);

    // UDP 53 and its answer, whole and in fragments.
    let dns = Packet::udp(ip("10.65.0.10"), 5353, ip("8.8.8.8"), 53);
    assert_eq!(p.run(from, &dns, "DNS query"), TC_ACT_OK);
    assert_eq!(p.run(to, &dns.reply(), "DNS answer"), TC_ACT_OK);
    let first = dns.reply().first_fragment(0x0777);
    assert_eq!(p.run(to, &first, "first fragment of an answer"), TC_ACT_OK);
    let later = dns.reply().later_fragment(0x0777, 185, false);
    assert_eq!(p.run(to, &later, "later fragment of an answer"), TC_ACT_OK);
    let stray = dns.reply().later_fragment(0x0888, 185, false);
    assert_eq!(
        p.run(to, &stray, "later fragment, first unseen"),
        TC_ACT_SHOT
    );

    // ICMP: an echo and its reply, and an error quoting the TCP flow.
    let mut echo = Packet::icmp(ip("10.65.0.10"), ip("8.8.8.8"), 8, 0);
    echo.icmp_id = 77;
    assert_eq!(p.run(from, &echo, "echo request"), TC_ACT_OK);
    let mut echo_reply = Packet::icmp(ip("8.8.8.8"), ip("10.65.0.10"), 0, 0);
    echo_reply.icmp_id = 77;
    assert_eq!(p.run(to, &echo_reply, "echo reply"), TC_ACT_OK);
    let unreachable = Packet::icmp_error(ip("10.65.1.5"), ip("10.65.0.10"), 3, 4, &syn);
    assert_eq!(
        p.run(to, &unreachable, "ICMP error quoting the flow"),
        TC_ACT_OK
    );

    // IPv6 carrying IPv4-mapped addresses of the TCP flow: malformed, not a hit.
    let mapped = Packet::tcp(ip("::ffff:10.65.1.5"), 8000, ip("::ffff:10.65.0.10"), 40000);
    assert_eq!(
        p.run(to, &mapped.flags(ACK), "IPv4-mapped IPv6"),
        TC_ACT_SHOT
    );
    assert_eq!(p.fast.counters().unwrap().get(stat::MALFORMED), 3);

    // Policy change: 8000 no longer allowed. The flow is re-judged (in its
    // own orientation, whichever way its next packet goes) and cut.
    p.cut_port_8000();
    let opts = with_ipv4_options(reply.frame(), 3);
    assert_eq!(p.frame(to, &opts, "stale reply with options"), TC_ACT_SHOT);
    assert_eq!(p.run(from, &ack, "stale entry, cut"), TC_ACT_SHOT);
    assert_eq!(p.run(to, &reply, "cut, cached"), TC_ACT_SHOT);
    assert_eq!(p.fast.counters().unwrap().get(stat::CT_STALE), 1);
    p.install();
    assert_eq!(p.run(from, &ack, "allowed again"), TC_ACT_OK);
    assert_eq!(p.run(to, &reply, "its reply"), TC_ACT_OK);
    assert_eq!(p.run(from, &ack.clone().flags(FIN | ACK), "FIN"), TC_ACT_OK);
    assert_eq!(
        p.run(to, &reply.clone().flags(FIN | ACK), "FIN back"),
        TC_ACT_OK
    );
    p.assert_same_conntrack();

    // Idle entries are misses: the answer is then a new flow from the world.
    p.age_all();
    assert_eq!(p.run(to, &dns.reply(), "answer after idle"), TC_ACT_SHOT);
    assert_eq!(p.run(from, &ack, "ACK after idle: picked up"), TC_ACT_OK);
    assert!(p.fast.counters().unwrap().get(stat::CT_HITS) > 10);
    p.assert_same_conntrack();
}

#[test]
fn fast_and_full_paths_agree_on_established_ipv6_flows() {
    let (from, to) = (Hook::FromEndpoint, Hook::ToEndpoint);
    let mut p = Pair::new();
    let syn = Packet::tcp(ip("fd65::10"), 40000, ip("fd66::5"), 8000);
    let (ack, reply) = p.handshake(&syn);
    for ext in [vec![0], vec![60], vec![0, 43, 60], vec![44]] {
        let what = format!("ACK after extension headers {ext:?}");
        assert_eq!(
            p.run(from, &ack.clone().with_ipv6_ext(&ext), &what),
            TC_ACT_OK
        );
        let what = format!("reply after extension headers {ext:?}");
        assert_eq!(
            p.run(to, &reply.clone().with_ipv6_ext(&ext), &what),
            TC_ACT_OK
        );
    }
    let many = ack
        .clone()
        .with_ipv6_ext(&[0, 60, 60, 60, 60, 60, 60, 60, 60]);
    assert_eq!(p.run(from, &many, "nine extension headers"), TC_ACT_SHOT);
    let mut cut = reply.frame();
    cut.truncate(14 + 40 + 12);
    assert_eq!(p.frame(to, &cut, "truncated TCP header"), TC_ACT_SHOT);
    // TCP 9000 to class 2: denied, then a cached denial.
    let denied = Packet::tcp(ip("fd65::10"), 40001, ip("fd66::5"), 9000);
    assert_eq!(p.run(from, &denied, "denied SYN"), TC_ACT_SHOT);
    assert_eq!(
        p.run(from, &denied.flags(ACK), "denied, cached"),
        TC_ACT_SHOT
    );
    // UDP 53 and its fragmented answer.
    let dns = Packet::udp(ip("fd65::10"), 5353, ip("fd67::53"), 53);
    assert_eq!(p.run(from, &dns, "DNS query"), TC_ACT_OK);
    assert_eq!(p.run(to, &dns.reply(), "DNS answer"), TC_ACT_OK);
    let first = dns.reply().with_ipv6_ext(&[44]).first_fragment(0x0777);
    assert_eq!(p.run(to, &first, "first fragment of an answer"), TC_ACT_OK);
    let later = dns
        .reply()
        .with_ipv6_ext(&[44])
        .later_fragment(0x0777, 185, false);
    assert_eq!(p.run(to, &later, "later fragment of an answer"), TC_ACT_OK);
    // A policy change cuts the TCP flow both ways.
    p.cut_port_8000();
    assert_eq!(p.run(to, &reply, "stale reply"), TC_ACT_SHOT);
    assert_eq!(p.run(from, &ack, "cut"), TC_ACT_SHOT);
    assert_eq!(p.fast.counters().unwrap().get(stat::MALFORMED), 2);
    assert!(p.fast.counters().unwrap().get(stat::CT_HITS) > 8);
    p.assert_same_conntrack();
}
