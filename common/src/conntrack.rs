//! Conntrack entries (`CONNTRACK`): key, value, flags, TCP states and idle
//! timeouts, and the pure functions the kernel's conntrack runs on them (here,
//! so that host tests run the same code the programs do).

use crate::direction;

/// Key of `CONNTRACK`: the 5-tuple normalised so both directions share one entry
/// (`addr_lo` is the numerically lower (address, port) pair). For ICMP echo both
/// ports are the echo identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The key of a packet (`src`, `sport`) -> (`dst`, `dport`): the lower
    /// (address, port) side first, so that both directions share it; and
    /// whether the packet's source is that lower side.
    #[inline(always)]
    pub fn of_packet(
        src: &[u8; 16],
        sport: u16,
        dst: &[u8; 16],
        dport: u16,
        protocol: u8,
    ) -> (CtKey, bool) {
        let src_is_lo = lower_or_equal(src, sport, dst, dport);
        let (addr_lo, port_lo, addr_hi, port_hi) = if src_is_lo {
            (*src, sport, *dst, dport)
        } else {
            (*dst, dport, *src, sport)
        };
        let key = CtKey {
            addr_lo,
            addr_hi,
            port_lo,
            port_hi,
            protocol,
            _pad: [0; 3],
        };
        (key, src_is_lo)
    }
}

/// [`CtKey`] as five 64-bit words holding its bytes in memory order on a
/// little-endian machine (the BPF target): what the established fast path
/// builds in registers and hands to the map lookup as a key, without the
/// byte copies of 16-byte addresses (`CtKey::of_words` is the same key).
pub type CtKeyWords = [u64; 5];

/// A 16-byte address as two words loaded from its bytes (`u64::from_le_bytes`
/// of each half): how the fast path reads addresses from the packet.
pub type AddrWords = [u64; 2];

impl CtKey {
    /// [`CtKey::of_packet`] on addresses in words: the key's words (see
    /// [`CtKeyWords`]) and whether the source is the lower side. The same key
    /// and the same order, checked against `of_packet` in the tests below.
    #[inline(always)]
    pub fn words_of_packet(
        src: &AddrWords,
        sport: u16,
        dst: &AddrWords,
        dport: u16,
        protocol: u8,
    ) -> (CtKeyWords, bool) {
        // The address bytes as big-endian numbers: the order of `of_packet`.
        let numeric = |a: &AddrWords| (a[0].swap_bytes(), a[1].swap_bytes());
        let (s0, s1) = numeric(src);
        let (d0, d1) = numeric(dst);
        let src_is_lo = if s0 != d0 {
            s0 < d0
        } else if s1 != d1 {
            s1 < d1
        } else {
            sport <= dport
        };
        let (lo, port_lo, hi, port_hi) = if src_is_lo {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        // Bytes 32..40: port_lo, port_hi (native order), protocol, padding.
        let tail = u64::from(port_lo) | u64::from(port_hi) << 16 | u64::from(protocol) << 32;
        ([lo[0], lo[1], hi[0], hi[1], tail], src_is_lo)
    }
}

/// True when `(a, ap) <= (b, bp)` (addresses compared as big-endian numbers,
/// in two 64-bit halves: cheaper for the verifier than 16 byte compares).
#[inline(always)]
fn lower_or_equal(a: &[u8; 16], ap: u16, b: &[u8; 16], bp: u16) -> bool {
    let (a0, a1) = halves(a);
    let (b0, b1) = halves(b);
    if a0 != b0 {
        return a0 < b0;
    }
    if a1 != b1 {
        return a1 < b1;
    }
    ap <= bp
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Value of `CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtValue {
    /// `ActiveTables::epoch` the approvals below were decided in.
    pub epoch: u32,
    /// [`ct_flags`] bits (approvals, denials, reported, initiator side).
    pub flags: u16,
    /// [`tcp_state`].
    pub tcp_state: u8,
    pub _pad: u8,
    /// Destination port (or ICMP type<<8|code) of the initiator's packets, host order:
    /// what a stale entry is re-judged with, whichever direction its next packet goes.
    pub judged_port: u16,
    pub _pad2: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last packet.
    pub last_seen_ns: u64,
}

impl CtValue {
    /// Whether the entry has been idle longer than its timeout at `now` (the
    /// kernel then treats it as a miss, the agent's sweep deletes it).
    #[inline(always)]
    pub const fn is_idle(&self, protocol: u8, now: u64) -> bool {
        now.saturating_sub(self.last_seen_ns) > ct_timeout::idle(protocol, self.tcp_state)
    }

    /// Whether a packet whose source is the key's lower side when `src_is_lo`
    /// goes the flow's way (initiator -> responder).
    #[inline(always)]
    pub const fn is_forward(&self, src_is_lo: bool) -> bool {
        (self.flags & ct_flags::INITIATOR_LO != 0) == src_is_lo
    }
}

/// [`CtValue::flags`]. The "sender side" is the hook where the initiator's packets
/// leave their endpoint (`from_endpoint` of the initiator, its egress policy); the
/// "receiver side" is `to_endpoint` of the responder (its ingress policy).
pub mod ct_flags {
    pub const SENDER_ALLOWED: u16 = 1 << 0;
    pub const RECEIVER_ALLOWED: u16 = 1 << 1;
    pub const SENDER_DENIED: u16 = 1 << 2;
    pub const RECEIVER_DENIED: u16 = 1 << 3;
    pub const SENDER_REPORTED: u16 = 1 << 4;
    pub const RECEIVER_REPORTED: u16 = 1 << 5;
    /// The initiator is `addr_lo`/`port_lo` (else `addr_hi`/`port_hi`).
    pub const INITIATOR_LO: u16 = 1 << 8;
    /// A client->Service-frontend entry: the responder is a frontend that the
    /// node's DNAT replaced; its sender side (the client's egress policy) is
    /// judged against the backend recorded in `SERVICE_FLOWS`, never the frontend.
    pub const SERVICE: u16 = 1 << 9;
}

/// The side of a flow a hook judges, and the [`ct_flags`] bits recording it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtSide {
    pub allowed: u16,
    pub denied: u16,
    pub reported: u16,
    /// [`direction`] of the endpoint policy that judges this side (sender:
    /// egress, receiver: ingress).
    pub policy_dir: u8,
}

impl CtSide {
    pub const SENDER: CtSide = CtSide {
        allowed: ct_flags::SENDER_ALLOWED,
        denied: ct_flags::SENDER_DENIED,
        reported: ct_flags::SENDER_REPORTED,
        policy_dir: direction::EGRESS,
    };
    pub const RECEIVER: CtSide = CtSide {
        allowed: ct_flags::RECEIVER_ALLOWED,
        denied: ct_flags::RECEIVER_DENIED,
        reported: ct_flags::RECEIVER_REPORTED,
        policy_dir: direction::INGRESS,
    };

    #[inline(always)]
    pub const fn of(sender: bool) -> CtSide {
        if sender {
            CtSide::SENDER
        } else {
            CtSide::RECEIVER
        }
    }

    /// The side a hook of policy direction `hook_dir` judges for a packet going
    /// the flow's way (`forward`) or back: the initiator's endpoint sending, or
    /// receiving replies, is the sender side.
    #[inline(always)]
    pub const fn at_hook(hook_dir: u8, forward: bool) -> CtSide {
        CtSide::of((hook_dir == direction::EGRESS) == forward)
    }

    #[inline(always)]
    pub const fn is_sender(&self) -> bool {
        self.policy_dir == direction::EGRESS
    }

    /// The bits recording this side's verdict (and that it was reported).
    #[inline(always)]
    pub const fn flags(&self, allow: bool, reported: bool) -> u16 {
        let verdict = if allow { self.allowed } else { self.denied };
        if reported {
            verdict | self.reported
        } else {
            verdict
        }
    }

    /// This side's verdict recorded in `flags`: allowed, denied, or not judged.
    #[inline(always)]
    pub const fn recorded(&self, flags: u16) -> Option<bool> {
        if flags & self.allowed != 0 {
            Some(true)
        } else if flags & self.denied != 0 {
            Some(false)
        } else {
            None
        }
    }
}

/// TCP states conntrack follows (enough to pick an idle timeout).
pub mod tcp_state {
    use crate::packet::{ip_proto, tcp_flags};

    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const FIN: u8 = 3;
    pub const RST: u8 = 4;

    /// The state after a packet with TCP `flags` going the flow's way
    /// (`forward`) or back: RST ends it, a FIN (once seen, for good) closes it,
    /// a reply to a SYN establishes it.
    #[inline(always)]
    pub const fn next(state: u8, flags: u8, forward: bool) -> u8 {
        if flags & tcp_flags::RST != 0 {
            RST
        } else if flags & tcp_flags::FIN != 0 || state == FIN {
            FIN
        } else if state == SYN_SENT && !forward {
            ESTABLISHED
        } else {
            state
        }
    }

    /// The state of a flow whose first packet seen is of `protocol` with TCP
    /// `flags`: a SYN without ACK opens a handshake; any other TCP packet is a
    /// flow picked up mid-way (established, or closing by its flags); other
    /// protocols have none.
    #[inline(always)]
    pub const fn initial(protocol: u8, flags: u8) -> u8 {
        if protocol != ip_proto::TCP {
            NONE
        } else if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
            SYN_SENT
        } else {
            next(ESTABLISHED, flags, true)
        }
    }
}

/// Conntrack idle timeouts in ns; an entry idle longer is treated as a miss.
pub mod ct_timeout {
    use crate::packet::ip_proto;

    const S: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 30 * S;
    pub const TCP_ESTABLISHED: u64 = 3600 * S;
    pub const TCP_FIN: u64 = 30 * S;
    pub const TCP_RST: u64 = 10 * S;
    pub const UDP: u64 = 60 * S;
    pub const ICMP: u64 = 30 * S;
    pub const OTHER: u64 = 600 * S;

    /// Idle timeout of an entry of `protocol` in TCP `state` (used by the kernel
    /// to treat an idle entry as a miss, and by the agent's sweep to delete it).
    #[inline(always)]
    pub const fn idle(protocol: u8, state: u8) -> u64 {
        match protocol {
            ip_proto::TCP => match state {
                super::tcp_state::SYN_SENT => TCP_SYN,
                super::tcp_state::FIN => TCP_FIN,
                super::tcp_state::RST => TCP_RST,
                _ => TCP_ESTABLISHED,
            },
            ip_proto::UDP | ip_proto::UDPLITE => UDP,
            ip_proto::ICMP | ip_proto::ICMPV6 => ICMP,
            _ => OTHER,
        }
    }

    /// A `FRAGMENTS` entry older than this is ignored (Linux's `ipfrag_time`).
    pub const FRAGMENT: u64 = 30 * S;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{ip_proto, tcp_flags};

    const S: u64 = 1_000_000_000;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&[a, b, c, d]);
        addr
    }

    fn v6(first: u8, last: u8) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[0] = first;
        addr[15] = last;
        addr
    }

    #[test]
    fn both_directions_of_a_flow_share_one_key() {
        let (a, b) = (v4(10, 0, 0, 1), v4(10, 0, 0, 2));
        let (there, a_is_lo) = CtKey::of_packet(&a, 40000, &b, 80, ip_proto::TCP);
        let (back, b_is_lo) = CtKey::of_packet(&b, 80, &a, 40000, ip_proto::TCP);
        assert_eq!(there, back);
        assert!(a_is_lo);
        assert!(!b_is_lo);
        assert_eq!(there.addr_lo, a);
        assert_eq!(there.port_lo, 40000);
        assert_eq!(there.addr_hi, b);
        assert_eq!(there.port_hi, 80);
        assert_eq!(there.protocol, ip_proto::TCP);
    }

    #[test]
    fn key_orders_addresses_as_numbers_then_ports() {
        // Differs only in the low half: the low half decides.
        let (k, lo) = CtKey::of_packet(&v6(1, 9), 1, &v6(1, 2), 2, ip_proto::UDP);
        assert!(!lo);
        assert_eq!(k.addr_lo, v6(1, 2));
        // The high half decides before the low one.
        let (k, lo) = CtKey::of_packet(&v6(1, 255), 1, &v6(2, 0), 2, ip_proto::UDP);
        assert!(lo);
        assert_eq!(k.addr_lo, v6(1, 255));
        // Same address (a flow to itself): the lower port first; equal is "lower".
        let a = v4(127, 0, 0, 1);
        let (k, lo) = CtKey::of_packet(&a, 9000, &a, 53, ip_proto::UDP);
        assert!(!lo);
        assert_eq!((k.port_lo, k.port_hi), (53, 9000));
        let (_, lo) = CtKey::of_packet(&a, 7, &a, 7, ip_proto::ICMP);
        assert!(lo);
        // Protocols do not share keys.
        let (tcp, _) = CtKey::of_packet(&a, 1, &a, 2, ip_proto::TCP);
        let (udp, _) = CtKey::of_packet(&a, 1, &a, 2, ip_proto::UDP);
        assert_ne!(tcp, udp);
    }

    /// The key's bytes from its words, as the kernel reads them.
    fn key_bytes(words: &CtKeyWords) -> [u8; 40] {
        let mut bytes = [0; 40];
        for (chunk, w) in bytes.chunks_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        bytes
    }

    fn addr_words(a: &[u8; 16]) -> AddrWords {
        let half = |i: usize| u64::from_le_bytes(a[i..i + 8].try_into().unwrap());
        [half(0), half(8)]
    }

    #[test]
    fn key_words_are_the_key_of_packet() {
        assert_eq!(size_of::<CtKey>(), size_of::<CtKeyWords>());
        // Addresses that tie on one half or the other, or on both.
        let addrs = [
            v4(10, 0, 0, 1),
            v4(10, 0, 0, 2),
            v4(9, 255, 255, 255),
            v4(255, 0, 0, 0),
            v6(1, 2),
            v6(1, 9),
            v6(2, 0),
            v6(0xfd, 0xff),
            [0xff; 16],
            [0; 16],
        ];
        let ports = [0, 1, 80, 255, 256, 40000, 65535];
        for a in &addrs {
            for b in &addrs {
                for (ap, bp) in ports.iter().flat_map(|&p| ports.map(|q| (p, q))) {
                    for protocol in [ip_proto::TCP, ip_proto::UDPLITE] {
                        let (key, a_is_lo) = CtKey::of_packet(a, ap, b, bp, protocol);
                        let (words, w_is_lo) = CtKey::words_of_packet(
                            &addr_words(a),
                            ap,
                            &addr_words(b),
                            bp,
                            protocol,
                        );
                        assert_eq!(w_is_lo, a_is_lo, "{a:?}:{ap} {b:?}:{bp}");
                        // SAFETY: CtKey is repr(C), 40 bytes of integers, no padding bytes
                        // left uninitialised (`_pad` is a field).
                        let bytes: [u8; 40] = unsafe { core::mem::transmute(key) };
                        assert_eq!(key_bytes(&words), bytes, "{a:?}:{ap} {b:?}:{bp}");
                    }
                }
            }
        }
    }

    #[test]
    fn forward_follows_the_initiator_flag() {
        let mut v = CtValue::default();
        assert!(!v.is_forward(true));
        assert!(v.is_forward(false));
        v.flags = ct_flags::INITIATOR_LO;
        assert!(v.is_forward(true));
        assert!(!v.is_forward(false));
    }

    #[test]
    fn tcp_state_transitions() {
        use tcp_flags::{ACK, FIN, RST, SYN};
        use tcp_state::{next, ESTABLISHED, FIN as CLOSING, NONE, RST as RESET, SYN_SENT};
        // (state, flags, forward) -> state
        let cases = [
            (SYN_SENT, SYN, true, SYN_SENT),
            (SYN_SENT, SYN | ACK, false, ESTABLISHED),
            (SYN_SENT, ACK, false, ESTABLISHED),
            (SYN_SENT, ACK, true, SYN_SENT),
            (ESTABLISHED, ACK, true, ESTABLISHED),
            (ESTABLISHED, ACK, false, ESTABLISHED),
            (ESTABLISHED, FIN | ACK, true, CLOSING),
            (ESTABLISHED, FIN | ACK, false, CLOSING),
            (CLOSING, ACK, false, CLOSING),
            (CLOSING, SYN, true, CLOSING),
            (ESTABLISHED, RST, false, RESET),
            (SYN_SENT, RST | ACK, false, RESET),
            (CLOSING, RST, true, RESET),
            (ESTABLISHED, RST | FIN, true, RESET),
            (RESET, ACK, true, RESET),
            (NONE, ACK, true, NONE),
        ];
        for (state, flags, forward, want) in cases {
            assert_eq!(
                next(state, flags, forward),
                want,
                "{state} {flags:#x} {forward}"
            );
        }
    }

    #[test]
    fn initial_tcp_state_of_a_new_flow() {
        use tcp_flags::{ACK, FIN, RST, SYN};
        use tcp_state::{initial, ESTABLISHED, FIN as CLOSING, NONE, RST as RESET, SYN_SENT};
        assert_eq!(initial(ip_proto::TCP, SYN), SYN_SENT);
        // Picked up mid-way.
        assert_eq!(initial(ip_proto::TCP, SYN | ACK), ESTABLISHED);
        assert_eq!(initial(ip_proto::TCP, ACK), ESTABLISHED);
        assert_eq!(initial(ip_proto::TCP, 0), ESTABLISHED);
        assert_eq!(initial(ip_proto::TCP, FIN | ACK), CLOSING);
        assert_eq!(initial(ip_proto::TCP, RST), RESET);
        for p in [ip_proto::UDP, ip_proto::ICMP, ip_proto::SCTP] {
            assert_eq!(initial(p, SYN), NONE);
        }
    }

    #[test]
    fn idle_timeout_per_protocol_and_state() {
        use tcp_state::{ESTABLISHED, FIN, NONE, RST, SYN_SENT};
        let cases = [
            (ip_proto::TCP, SYN_SENT, 30 * S),
            (ip_proto::TCP, ESTABLISHED, 3600 * S),
            (ip_proto::TCP, NONE, 3600 * S),
            (ip_proto::TCP, FIN, 30 * S),
            (ip_proto::TCP, RST, 10 * S),
            (ip_proto::UDP, NONE, 60 * S),
            (ip_proto::UDPLITE, NONE, 60 * S),
            (ip_proto::ICMP, NONE, 30 * S),
            (ip_proto::ICMPV6, NONE, 30 * S),
            (ip_proto::SCTP, NONE, 600 * S),
            (47, NONE, 600 * S),
            // A TCP state means nothing to other protocols.
            (ip_proto::UDP, RST, 60 * S),
        ];
        for (protocol, state, want) in cases {
            assert_eq!(
                ct_timeout::idle(protocol, state),
                want,
                "{protocol} {state}"
            );
        }
    }

    #[test]
    fn an_entry_is_idle_only_past_its_timeout() {
        let v = CtValue {
            tcp_state: tcp_state::RST,
            last_seen_ns: 100 * S,
            ..CtValue::default()
        };
        assert!(!v.is_idle(ip_proto::TCP, 110 * S));
        assert!(v.is_idle(ip_proto::TCP, 110 * S + 1));
        // The same entry read as UDP: 60 s.
        assert!(!v.is_idle(ip_proto::UDP, 160 * S));
        assert!(v.is_idle(ip_proto::UDP, 160 * S + 1));
        // A clock behind the entry (another CPU's coarse clock): not idle.
        assert!(!v.is_idle(ip_proto::TCP, 0));
    }

    #[test]
    fn sides_record_their_own_bits() {
        let (s, r) = (CtSide::SENDER, CtSide::RECEIVER);
        assert!(s.is_sender() && !r.is_sender());
        assert_eq!(s.policy_dir, direction::EGRESS);
        assert_eq!(r.policy_dir, direction::INGRESS);
        assert_eq!(CtSide::of(true), s);
        assert_eq!(CtSide::of(false), r);
        let all = [
            s.allowed, s.denied, s.reported, r.allowed, r.denied, r.reported,
        ];
        for (i, bit) in all.iter().enumerate() {
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(bit & (ct_flags::INITIATOR_LO | ct_flags::SERVICE), 0);
            assert!(!all[..i].contains(bit));
        }
        assert_eq!(s.flags(true, false), ct_flags::SENDER_ALLOWED);
        assert_eq!(
            r.flags(false, true),
            ct_flags::RECEIVER_DENIED | ct_flags::RECEIVER_REPORTED
        );
        assert_eq!(s.recorded(0), None);
        assert_eq!(s.recorded(r.flags(true, true)), None);
        assert_eq!(s.recorded(s.flags(true, false)), Some(true));
        assert_eq!(s.recorded(s.flags(false, true)), Some(false));
    }

    #[test]
    fn the_initiators_hooks_judge_the_sender_side() {
        // Initiator's from_endpoint (egress) sending, and its to_endpoint
        // (ingress) receiving the replies: sender. The responder's hooks: receiver.
        assert_eq!(CtSide::at_hook(direction::EGRESS, true), CtSide::SENDER);
        assert_eq!(CtSide::at_hook(direction::INGRESS, false), CtSide::SENDER);
        assert_eq!(CtSide::at_hook(direction::INGRESS, true), CtSide::RECEIVER);
        assert_eq!(CtSide::at_hook(direction::EGRESS, false), CtSide::RECEIVER);
    }
}
