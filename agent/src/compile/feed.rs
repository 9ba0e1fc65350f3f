//! A threat-feed-sized network set for tests and measurements: `n` distinct,
//! non-overlapping nets spread over the address space as a feed's are, a
//! policy denying them, a few endpoints, and an exact membership oracle (so a
//! test can pick addresses just outside listed nets without scanning them).
//! Not used by the agent itself.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Odd, so multiplying by it permutes every `2^k` residue range.
const SPREAD: u64 = 0x9E37_79B1;
/// IPv4 /32s live in 32.0.0.0/3, /24s in 96.0.0.0/3, IPv6 /64s in
/// 2001:db8::/32: away from the endpoints (10.65.0.0/24, fd65::/64).
const HOSTS: u32 = 0x2000_0000;
const NETS24: u32 = 0x6000_0000;
const V6_PREFIX: u128 = 0x2001_0db8 << 96;

/// Net `i` of the feed: 7 in 10 are IPv4 /32s, 2 in 10 IPv4 /24s, 1 in 10 IPv6 /64s.
pub fn net(i: usize) -> IpNet {
    let i = i as u64;
    let spread = |bits: u32| (i.wrapping_mul(SPREAD) & ((1 << bits) - 1)) as u32;
    match i % 10 {
        0..=6 => IpNet::from(IpAddr::V4(Ipv4Addr::from(HOSTS + spread(29)))),
        7 | 8 => IpNet::new(Ipv4Addr::from(NETS24 + (spread(21) << 8)).into(), 24).unwrap(),
        _ => {
            let addr = V6_PREFIX | u128::from(spread(32)) << 64;
            IpNet::new(Ipv6Addr::from(addr).into(), 64).unwrap()
        }
    }
}

/// An address inside net `i` (not its first one, for the /24s and /64s).
pub fn inside(i: usize) -> IpAddr {
    match net(i) {
        IpNet::V4(n) if n.prefix_len() == 32 => n.addr().into(),
        IpNet::V4(n) => Ipv4Addr::from(u32::from(n.network()) + 200).into(),
        IpNet::V6(n) => Ipv6Addr::from(u128::from(n.network()) + 0x1_0002).into(),
    }
}

/// Whether the feed of `n` nets holds `ip` (inverting the spread, not scanning).
pub fn holds(n: usize, ip: IpAddr) -> bool {
    let index = |x: u64, bits: u32| (x.wrapping_mul(inverse(SPREAD)) & ((1 << bits) - 1)) as usize;
    let listed =
        |i: usize, kinds: std::ops::RangeInclusive<usize>| i < n && kinds.contains(&(i % 10));
    match ip {
        IpAddr::V4(a) => match u32::from(a) {
            a @ HOSTS..NETS24 if a < HOSTS + (1 << 29) => {
                listed(index(u64::from(a - HOSTS), 29), 0..=6)
            }
            a @ NETS24.. if a < NETS24 + (1 << 29) => {
                listed(index(u64::from((a - NETS24) >> 8), 21), 7..=8)
            }
            _ => false,
        },
        IpAddr::V6(a) => {
            let a = u128::from(a);
            a >> 96 == V6_PREFIX >> 96 && listed(index(((a >> 64) & 0xffff_ffff) as u64, 32), 9..=9)
        }
    }
}

/// The multiplicative inverse of an odd number modulo 2^64 (Newton's iteration).
fn inverse(odd: u64) -> u64 {
    let mut x = odd;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(x)));
    }
    x
}

/// The endpoints' IPv4 addresses (10.65.0.10..) and IPv6 (fd65::10..).
pub fn endpoint_ip(k: usize, v6: bool) -> IpAddr {
    if v6 {
        Ipv6Addr::from(0xfd65_u128 << 112 | (0x10 + k as u128)).into()
    } else {
        Ipv4Addr::new(10, 65, 0, 10 + k as u8).into()
    }
}

/// A datastore: `endpoints` workloads in namespace `shop` (`web0`.., dual
/// stack, interfaces `web0`..), a network set labelled `feed: threats` with
/// the feed's first `n` nets (a NetworkSet in `shop` when `namespaced`, else a
/// GlobalNetworkSet), and a policy of the same scope selecting every endpoint:
/// ingress and egress rule 0 deny the set, rule 1 allows everything else.
pub fn yaml(n: usize, endpoints: usize, namespaced: bool) -> String {
    let mut y = String::with_capacity(n * 24 + 2048);
    for k in 0..endpoints {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
             metadata: {{name: web{k}, namespace: shop, labels: {{app: web}}}}\n\
             spec: {{interfaceName: web{k}, ipNetworks: [{}/32, {}/128]}}\n---\n",
            endpoint_ip(k, false),
            endpoint_ip(k, true)
        ));
    }
    let (set_kind, policy_kind, namespace) = if namespaced {
        ("NetworkSet", "NetworkPolicy", ", namespace: shop")
    } else {
        ("GlobalNetworkSet", "GlobalNetworkPolicy", "")
    };
    y.push_str(&format!(
        "apiVersion: projectcalico.org/v3\nkind: {policy_kind}\n\
         metadata: {{name: block-feed{namespace}}}\n\
         spec:\n  selector: all()\n  types: [Ingress, Egress]\n\
         \x20 ingress:\n  - {{action: Deny, source: {{selector: feed == 'threats'}}}}\n  - {{action: Allow}}\n\
         \x20 egress:\n  - {{action: Deny, destination: {{selector: feed == 'threats'}}}}\n  - {{action: Allow}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: {set_kind}\n\
         metadata: {{name: threats{namespace}, labels: {{feed: threats}}}}\n\
         spec:\n  nets:\n"
    ));
    for i in 0..n {
        y.push_str(&format!("  - {}\n", net(i)));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_are_distinct_disjoint_and_the_oracle_agrees() {
        let n = 20_000;
        let ranges = crate::eval::NetRanges::new(&(0..n).map(net).collect::<Vec<_>>());
        let mut seen = std::collections::HashSet::new();
        for i in 0..n {
            assert!(seen.insert(net(i)), "net {i} repeats");
            assert!(net(i).contains(&inside(i)));
            assert!(holds(n, inside(i)) && ranges.contains(inside(i)));
            assert!(!holds(i, inside(i)), "net {i} is not among the first {i}");
        }
        for k in 0..4 {
            for v6 in [false, true] {
                assert!(!holds(n, endpoint_ip(k, v6)));
            }
        }
        // The oracle against the ranges, around every 97th net.
        for i in (0..n).step_by(97) {
            let base = match net(i).network() {
                IpAddr::V4(a) => u128::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a),
            };
            for d in [0u128, 1, 255, 256, 1 << 64] {
                for a in [base.wrapping_sub(d), base + d] {
                    let ip = match net(i) {
                        IpNet::V4(_) if a <= u128::from(u32::MAX) => {
                            IpAddr::V4(Ipv4Addr::from(a as u32))
                        }
                        IpNet::V4(_) => continue,
                        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(a)),
                    };
                    assert_eq!(holds(n, ip), ranges.contains(ip), "{ip}");
                }
            }
        }
    }
}
