//! Flow events (`FLOW_EVENTS`) and their rate limit (`EVENT_BUDGET`).

use crate::Verdict;

/// Ring-buffer record for a new flow on an endpoint with staged policy (both
/// verdicts) or a denied new flow (rate-limited). Addresses and ports are those
/// of the flow as judged (initiator -> responder).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    /// For ICMP: type << 8 | code.
    pub dst_port: u16,
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// [`direction`](crate::direction) of the endpoint's policy that was evaluated.
    pub direction: u8,
    /// [`event_flags`].
    pub flags: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub enforced: Verdict,
    /// Meaningful when `flags & HAS_PENDING`.
    pub pending: Verdict,
    /// `bpf_ktime_get_ns`.
    pub timestamp_ns: u64,
    /// With `event_flags::SERVICE`: the Service frontend the client addressed
    /// (`dst`/`dst_port` are then the backend the node's DNAT chose).
    pub service: [u8; 16],
    pub service_port: u16,
    pub _pad: [u8; 6],
}

impl FlowEvent {
    /// Size of the record before `service` was added (programs of an older
    /// agent still attached during an upgrade write these).
    pub const V1_SIZE: usize = 80;
}

pub mod event_flags {
    pub const HAS_PENDING: u8 = 1;
    /// Packet was a non-first fragment judged with port 0 (its first fragment
    /// was not seen: see `FRAGMENTS`).
    pub const FRAGMENT: u8 = 2;
    /// The flow was addressed to a Service frontend (`FlowEvent::service`).
    pub const SERVICE: u8 = 4;
}

/// Per-CPU token bucket limiting deny events (`EVENT_BUDGET[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

impl TokenBucket {
    /// Nanoseconds per token.
    const INTERVAL: u64 = 1_000_000_000 / DENY_EVENTS_PER_SEC;

    /// Takes a token at `now` (ns) if there is one, after adding the tokens
    /// earned since `last_ns` (whole intervals; at most [`DENY_EVENTS_BURST`]).
    #[inline(always)]
    pub fn take(&mut self, now: u64) -> bool {
        let refill = now.saturating_sub(self.last_ns) / Self::INTERVAL;
        if refill > 0 {
            if refill >= DENY_EVENTS_BURST {
                self.tokens = DENY_EVENTS_BURST;
                self.last_ns = now;
            } else {
                self.tokens = core::cmp::min(self.tokens + refill, DENY_EVENTS_BURST);
                self.last_ns += refill * Self::INTERVAL;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Deny events per second per CPU, and the burst.
pub const DENY_EVENTS_PER_SEC: u64 = 1000;
pub const DENY_EVENTS_BURST: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: u64 = 1_000_000_000 / DENY_EVENTS_PER_SEC;

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_interval() {
        let now = 5_000_000_000;
        let mut b = TokenBucket {
            tokens: DENY_EVENTS_BURST,
            last_ns: now,
        };
        for _ in 0..DENY_EVENTS_BURST {
            assert!(b.take(now));
        }
        assert!(!b.take(now));
        assert!(!b.take(now + INTERVAL - 1));
        assert!(b.take(now + INTERVAL));
        assert!(!b.take(now + INTERVAL));
        // Partial intervals carry over: the clock advances by whole intervals.
        assert_eq!(b.last_ns, now + INTERVAL);
        assert!(b.take(now + 2 * INTERVAL + INTERVAL / 2));
        assert_eq!(b.last_ns, now + 2 * INTERVAL);
    }

    #[test]
    fn a_refill_never_exceeds_the_burst() {
        let mut b = TokenBucket {
            tokens: DENY_EVENTS_BURST - 1,
            last_ns: 0,
        };
        assert!(b.take(10 * INTERVAL));
        assert_eq!(b.tokens, DENY_EVENTS_BURST - 1);
        // An idle bucket (also the first use: zeroed) is full, from now on.
        let mut b = TokenBucket::default();
        let now = 3600 * 1_000_000_000;
        assert!(b.take(now));
        assert_eq!((b.tokens, b.last_ns), (DENY_EVENTS_BURST - 1, now));
        // A clock behind the bucket's: no refill, no underflow.
        let mut b = TokenBucket {
            tokens: 0,
            last_ns: now,
        };
        assert!(!b.take(now - INTERVAL));
    }
}
