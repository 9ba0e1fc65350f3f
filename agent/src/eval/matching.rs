//! Does a rule match a packet? Calico's rule semantics (app-policy/checker,
//! felix/rules): every present field must match, list entries OR together,
//! `not*` fields mean "none of these".
use std::net::IpAddr;

use foldhash::HashMap;
use ipnet::IpNet;

use crate::model::ir::{
    BackendSet, EndpointKind, EntityRule, FailsafePort, IcmpMatch, Model, PortMatch, Rule,
};
use crate::selector::Selector;

use super::Packet;

/// Which endpoints own which IPs, and each network set's nets as ranges, built
/// once per model.
#[derive(Clone, Debug, Default)]
pub struct IpIndex {
    /// By address: the range of `owner_list` holding its owners.
    owners: HashMap<IpAddr, (usize, usize)>,
    /// Endpoint indexes, grouped by address, each group in model order.
    owner_list: Vec<usize>,
    /// Per `model.network_sets` entry.
    sets: Vec<NetRanges>,
}

/// Nets as sorted, disjoint address ranges (both families in one `u128` space,
/// IPv4 below 2^32 and tagged apart), so that "is this IP in one of the nets" is
/// a binary search: network sets hold up to hundreds of thousands of nets, and
/// the evaluator asks this for every selector rule it checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetRanges {
    /// `(v6, first, last)`, sorted, non-overlapping, non-adjacent.
    ranges: Vec<(bool, u128, u128)>,
}

impl NetRanges {
    pub fn new<'n>(nets: impl IntoIterator<Item = &'n IpNet>) -> Self {
        let mut all: Vec<(bool, u128, u128)> = nets.into_iter().map(range_of).collect();
        all.sort_unstable();
        let mut ranges: Vec<(bool, u128, u128)> = Vec::with_capacity(all.len());
        for (v6, first, last) in all {
            match ranges.last_mut() {
                Some(r) if r.0 == v6 && r.2.checked_add(1).is_none_or(|next| first <= next) => {
                    r.2 = r.2.max(last);
                }
                _ => ranges.push((v6, first, last)),
            }
        }
        NetRanges { ranges }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v6, value) = match ip {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        // The last range starting at or before the address.
        let after = self
            .ranges
            .partition_point(|&(f, first, _)| (f, first) <= (v6, value));
        after > 0 && {
            let (f, _, last) = self.ranges[after - 1];
            f == v6 && value <= last
        }
    }
}

/// A net as `(v6, first address, last address)`.
fn range_of(net: &IpNet) -> (bool, u128, u128) {
    match net.trunc() {
        IpNet::V4(n) => (
            false,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

impl IpIndex {
    pub fn new(model: &Model) -> Self {
        let mut by_ip: Vec<(IpAddr, usize)> = model
            .endpoints
            .iter()
            .enumerate()
            .flat_map(|(index, e)| e.ips.iter().map(move |ip| (*ip, index)))
            .collect();
        by_ip.sort_unstable();
        by_ip.dedup();
        let owner_list: Vec<usize> = by_ip.iter().map(|&(_, index)| index).collect();
        let mut owners: HashMap<IpAddr, (usize, usize)> = Default::default();
        let mut start = 0;
        for run in by_ip.chunk_by(|a, b| a.0 == b.0) {
            owners.insert(run[0].0, (start, start + run.len()));
            start += run.len();
        }
        let sets = model
            .network_sets
            .iter()
            .map(|s| NetRanges::new(&s.nets))
            .collect();
        IpIndex {
            owners,
            owner_list,
            sets,
        }
    }

    /// Whether network set `set` (index into `model.network_sets`) holds `ip`.
    pub fn set_contains(&self, set: usize, ip: IpAddr) -> bool {
        self.sets[set].contains(ip)
    }

    /// Every endpoint that has this IP, in model order.
    pub fn owners(&self, ip: IpAddr) -> &[usize] {
        self.owners
            .get(&ip)
            .map_or(&[], |&(start, end)| &self.owner_list[start..end])
    }

    /// The endpoint a flow's IP belongs to: a workload if one has it, else a host endpoint.
    pub fn endpoint_for(&self, model: &Model, ip: IpAddr) -> Option<usize> {
        let owners = self.owners(ip);
        owners
            .iter()
            .copied()
            .find(|&i| model.endpoints[i].kind == EndpointKind::Workload)
            .or_else(|| owners.first().copied())
    }
}

/// Everything a rule is matched against: the packet, and its source and
/// destination IPs (for ingress the peer is the source, for egress the destination).
pub struct RuleMatcher<'a> {
    pub model: &'a Model,
    pub ips: &'a IpIndex,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub packet: &'a Packet,
}

impl RuleMatcher<'_> {
    pub fn matches(&self, rule: &Rule) -> bool {
        self.ip_version_matches(rule)
            && self.protocol_matches(rule)
            && self.icmp_matches(rule)
            && self.entity_matches(&rule.source, self.src, self.packet.src_port)
            && self.entity_matches(&rule.destination, self.dst, self.packet.dst_port)
    }

    /// A rule with an ipVersion does not exist for the other family.
    fn ip_version_matches(&self, rule: &Rule) -> bool {
        match rule.ip_version {
            Some(4) => self.dst.is_ipv4(),
            Some(6) => self.dst.is_ipv6(),
            _ => true,
        }
    }

    fn protocol_matches(&self, rule: &Rule) -> bool {
        rule.protocol.is_none_or(|p| p == self.packet.protocol)
            && rule.not_protocol.is_none_or(|p| p != self.packet.protocol)
    }

    fn icmp_matches(&self, rule: &Rule) -> bool {
        rule.icmp.is_none_or(|m| self.icmp_is(m)) && rule.not_icmp.is_none_or(|m| !self.icmp_is(m))
    }

    /// Type must match; code only when the rule names one.
    fn icmp_is(&self, m: IcmpMatch) -> bool {
        self.packet.icmp_type == Some(m.icmp_type)
            && m.code
                .is_none_or(|code| self.packet.icmp_code == Some(code))
    }

    fn entity_matches(&self, entity: &EntityRule, ip: IpAddr, port: Option<u16>) -> bool {
        let in_nets = |nets: &[ipnet::IpNet]| nets.iter().any(|n| n.contains(&ip));
        (entity.nets.is_empty() || in_nets(&entity.nets))
            && !in_nets(&entity.not_nets)
            && entity
                .selector
                .as_ref()
                .is_none_or(|s| self.ip_in_selected_set(ip, s))
            && entity
                .not_selector
                .as_ref()
                .is_none_or(|s| !self.ip_in_selected_set(ip, s))
            && (entity.ports.is_empty() || self.port_in(&entity.ports, ip, port))
            && !self.port_in(&entity.not_ports, ip, port)
            && entity
                .service_ports
                .as_ref()
                .is_none_or(|sets| self.reaches_backend(sets, ip, port))
    }

    /// A destination `services` match: the packet goes to one of the
    /// Service's backends on one of its ports (felix's `ip,proto:port` set).
    fn reaches_backend(&self, sets: &[BackendSet], ip: IpAddr, port: Option<u16>) -> bool {
        port.is_some_and(|port| {
            sets.iter()
                .any(|s| s.serves(ip, self.packet.protocol, port))
        })
    }

    /// Calico matches selectors through IP sets: the IPs of every endpoint and
    /// the CIDRs of every network set whose labels match.
    fn ip_in_selected_set(&self, ip: IpAddr, selector: &Selector) -> bool {
        let endpoint_match = self
            .ips
            .owners(ip)
            .iter()
            .any(|&i| selector.evaluate(&self.model.endpoints[i].labels));
        endpoint_match
            || self
                .model
                .network_sets
                .iter()
                .enumerate()
                .any(|(k, set)| selector.evaluate(&set.labels) && self.ips.set_contains(k, ip))
    }

    /// A packet without ports (ICMP, other protocols) is in no port list.
    fn port_in(&self, list: &[PortMatch], ip: IpAddr, port: Option<u16>) -> bool {
        let Some(port) = port else { return false };
        list.iter().any(|m| match m {
            PortMatch::Range(range) => range.contains(port),
            PortMatch::Named(name) => self.named_port_is(ip, name, port),
        })
    }

    /// A named port resolves against the endpoint owning the IP on that side of
    /// the rule, for the packet's protocol; a name nobody defines matches nothing.
    fn named_port_is(&self, ip: IpAddr, name: &str, port: u16) -> bool {
        self.ips.owners(ip).iter().any(|&i| {
            self.model.endpoints[i]
                .named_ports
                .iter()
                .any(|np| np.name == name && np.protocol == self.packet.protocol && np.port == port)
        })
    }
}

/// The failsafe entry that lets this packet through, if any. Failsafe ports
/// are destination ports; `net`, when set, must contain the remote side.
pub fn failsafe_match<'f>(
    failsafes: &'f [FailsafePort],
    packet: &Packet,
    remote: IpAddr,
) -> Option<&'f FailsafePort> {
    failsafes.iter().find(|f| {
        f.protocol == packet.protocol
            && packet.dst_port == Some(f.port)
            && f.net.is_none_or(|net| net.contains(&remote))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_ranges_merge_nested_and_adjacent_nets_per_family() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/25",
            "10.0.0.128/25",
            "10.0.0.7/32",
            "10.0.2.0/24",
            "0.0.0.0/32",
            "255.255.255.255/32",
            "::/128",
            "fd00::/64",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let r = NetRanges::new(&nets);
        assert_eq!(r.ranges.len(), 6, "{:?}", r.ranges);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (a, want) in [
            ("10.0.0.0", true),
            ("10.0.0.255", true),
            ("10.0.1.0", false),
            ("10.0.2.77", true),
            ("9.255.255.255", false),
            ("0.0.0.0", true),
            ("0.0.0.1", false),
            ("255.255.255.255", true),
            ("::", true),
            ("::1", false),
            ("::a00:1", false), // 10.0.0.1's bits, but IPv6
            ("fd00::ffff", true),
            ("fd00:0:0:1::", false),
        ] {
            assert_eq!(r.contains(ip(a)), want, "{a}");
        }
        assert!(!NetRanges::default().contains(ip("10.0.0.1")));
    }
}
