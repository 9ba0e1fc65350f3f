//! Which rules of a policy can match a flow, found without testing them one by
//! one. A rule whose source (or destination) lists `nets` matches only packets
//! whose source (destination) is in one of them, so such rules are indexed by
//! net; every other rule (selectors, notNets, no peer at all) is always a
//! candidate. The candidates, in rule order, are then tested in full by the
//! matcher: the prefilter only skips rules that cannot match, so verdicts and
//! traces are those of the plain scan.
//!
//! Why: the compiler asks the evaluator a question per (endpoint, peer class,
//! port class) cell, and there are about as many peer classes as peer-net
//! rules; scanning every rule for every question made compiling quadratic.
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use crate::model::ir::{Action, EntityRule, Rule};

/// The rules of one policy in one direction, indexed by their peer nets.
#[derive(Debug, Default)]
pub struct RulePrefilter {
    by_source: NetIndex,
    by_destination: NetIndex,
    /// Decisive rules without nets on either side: tested for every flow.
    always: Vec<usize>,
}

impl RulePrefilter {
    pub fn new(rules: &[Rule]) -> Self {
        let mut filter = RulePrefilter::default();
        // Log rules never decide, so they are never candidates.
        for (index, rule) in rules.iter().enumerate() {
            if rule.action == Action::Log {
                continue;
            }
            if !rule.source.nets.is_empty() {
                filter.by_source.insert(&rule.source, index);
            } else if !rule.destination.nets.is_empty() {
                filter.by_destination.insert(&rule.destination, index);
            } else {
                filter.always.push(index);
            }
        }
        filter
    }

    /// The indexes of the rules that may match a packet from `src` to `dst`, in
    /// rule order; None when every rule is a candidate (nothing is indexed).
    pub fn candidates(&self, src: IpAddr, dst: IpAddr) -> Option<Vec<usize>> {
        if self.by_source.is_empty() && self.by_destination.is_empty() {
            return None;
        }
        let mut rules = self.always.clone();
        self.by_source.extend_with_rules_holding(src, &mut rules);
        self.by_destination
            .extend_with_rules_holding(dst, &mut rules);
        rules.sort_unstable();
        // A rule with several nets holding the address is found once per net.
        rules.dedup();
        Some(rules)
    }
}

/// Rules by net: per prefix length in use, the network address to the rules
/// with that net. Nets are prefixes, so an address's candidates are one hash
/// lookup per prefix length (at most 33 + 129), whatever the number of rules.
#[derive(Debug, Default)]
struct NetIndex {
    levels: Vec<Level>,
}

#[derive(Debug)]
struct Level {
    v6: bool,
    prefix_len: u8,
    rules: HashMap<u128, Vec<usize>>,
}

impl NetIndex {
    fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    fn insert(&mut self, entity: &EntityRule, rule: usize) {
        for net in &entity.nets {
            let (v6, address) = address_bits(net.network());
            let prefix_len = net.prefix_len();
            let position = match self
                .levels
                .iter()
                .position(|l| l.v6 == v6 && l.prefix_len == prefix_len)
            {
                Some(position) => position,
                None => {
                    self.levels.push(Level {
                        v6,
                        prefix_len,
                        rules: HashMap::new(),
                    });
                    self.levels.len() - 1
                }
            };
            let key = network_of(v6, address, prefix_len);
            let list = self.levels[position].rules.entry(key).or_default();
            if list.last() != Some(&rule) {
                list.push(rule);
            }
        }
    }

    fn extend_with_rules_holding(&self, ip: IpAddr, out: &mut Vec<usize>) {
        let (v6, address) = address_bits(ip);
        for level in self.levels.iter().filter(|l| l.v6 == v6) {
            if let Some(rules) = level.rules.get(&network_of(v6, address, level.prefix_len)) {
                out.extend_from_slice(rules);
            }
        }
    }
}

/// An address's family and bits (IPv4 in the low 32 bits). As in
/// `IpNet::contains`, an IPv4 net never holds an IPv6 address, mapped or not.
fn address_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// The first `prefix_len` bits of an address of the family's width.
fn network_of(v6: bool, address: u128, prefix_len: u8) -> u128 {
    let width: u32 = if v6 { 128 } else { 32 };
    let host_bits = width - u32::from(prefix_len);
    address
        .checked_shr(host_bits)
        .and_then(|a| a.checked_shl(host_bits))
        .unwrap_or(0)
}

/// Whether `net` holds `ip` by the index's arithmetic (for tests against `IpNet::contains`).
#[cfg(test)]
fn index_holds(net: &ipnet::IpNet, ip: IpAddr) -> bool {
    let (v6, address) = address_bits(ip);
    let (net_v6, network) = address_bits(net.network());
    v6 == net_v6 && network_of(v6, address, net.prefix_len()) == network
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use super::*;

    #[test]
    fn index_arithmetic_agrees_with_ipnet_contains() {
        let nets: Vec<IpNet> = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.2.3/32",
            "10.1.2.0/23",
            "255.255.255.255/32",
            "::/0",
            "::/128",
            "fd00::/64",
            "fd00::1/128",
            "::ffff:10.1.2.3/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let ips: Vec<IpAddr> = [
            "10.1.2.3",
            "10.1.3.255",
            "10.1.4.0",
            "11.0.0.0",
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fd00:0:0:1::",
            "::ffff:10.1.2.3",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for net in &nets {
            for &ip in &ips {
                assert_eq!(index_holds(net, ip), net.contains(&ip), "{net} {ip}");
            }
        }
    }
}
