//! What the compiler hands the loader: peer classes, per-endpoint peer groups,
//! source-port classes and decision-table entries, and their encoding into the
//! `PEERS_*` / `SPORTS_*` / `RULES_*` LPM keys and `GROUPS_*` hash keys.
// The install's maps of table entries (tens of thousands per install).
use foldhash::{HashMap, HashMapExt, HashSet};
use std::net::IpAddr;

use agent_common::{direction, table, GroupKey, RuleKey, SourcePortKey, Verdict, PEER_GROUP_ANY};
use ipnet::IpNet;

use crate::model::ir::Direction;

/// Which decision table an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// What packets get.
    Enforced,
    /// What they would get with every staged policy promoted (observe only).
    Pending,
}

/// Which peers an entry covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerMatch {
    /// A peer group of the entry's endpoint and direction (`TableSet::groups`
    /// maps classes to it).
    Group(u32),
    /// The wildcard group: classes without a group entry, and the fallback
    /// probed when the peer's own group has no entry.
    Any,
}

/// Which packets of the entry's protocol(s) it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// Every port (or every ICMP type).
    Any,
    /// Destination ports `first..=last`.
    Range(u16, u16),
    /// ICMP/ICMPv6 type, and code when given.
    Icmp { icmp_type: u8, code: Option<u8> },
}

/// One cell of an endpoint's decision table. Entries may overlap: the most specific
/// one wins (own group over `PeerMatch::Any` — a separate probe —, then within one
/// group the longest prefix: protocol over any protocol, a narrower port prefix over
/// a wider one). The compiler must make every overlap mean "exception to the wider".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    pub endpoint_id: u32,
    pub direction: Direction,
    pub table: Table,
    pub peer: PeerMatch,
    /// IP protocol; `None` = every protocol (then `ports` must be `Any` and
    /// `source_port_class` `None`).
    pub protocol: Option<u8>,
    /// The flow's source-port class (`SourcePortEntry`); `None` = every class
    /// (then `ports` must be `Any`). 0 on endpoints without source-port classes
    /// and for protocols without ports (the kernel's value there).
    pub source_port_class: Option<u8>,
    pub ports: PortMatch,
    pub verdict: Verdict,
}

/// Source ports `first..=last` of `protocol` on this endpoint and direction have
/// source-port class `class`; ports of a classified protocol that no entry covers
/// are class 0, as are all ports of the others. Entries of one (endpoint,
/// direction, protocol) may overlap: the narrower one wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourcePortEntry {
    pub endpoint_id: u32,
    pub direction: Direction,
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
    pub class: u8,
}

/// Peer class `class` is in group `group` for this endpoint and direction (both
/// tables); classes without an entry are in the wildcard group (`PeerMatch::Any`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupEntry {
    pub endpoint_id: u32,
    pub direction: Direction,
    pub class: u32,
    pub group: u32,
}

impl GroupEntry {
    pub fn key(&self) -> GroupKey {
        GroupKey {
            endpoint_id: self.endpoint_id,
            peer_class: self.class,
            direction: direction_code(self.direction),
            _pad: [0; 3],
        }
    }
}

/// A complete set of tables, written into the inactive copy and switched to at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableSet {
    /// Address prefix -> peer class (longest prefix wins; no match = class 0).
    pub peers: Vec<(IpNet, u32)>,
    pub rules: Vec<RuleEntry>,
    /// Source-port classes (only endpoints flagged `SOURCE_PORTS` have entries).
    pub sports: Vec<SourcePortEntry>,
    /// Peer groups (classes an endpoint treats like its wildcard have none).
    pub groups: Vec<GroupEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("port range {0}..={1} is empty")]
    EmptyRange(u16, u16),
    #[error("a rule entry for every protocol cannot name ports")]
    PortsWithoutProtocol,
    #[error("a rule entry for every protocol cannot name a source-port class")]
    SourcePortClassWithoutProtocol,
    #[error("a rule entry for every source-port class cannot name ports")]
    PortsWithoutSourcePortClass,
    #[error("conflicting source-port classes for the same key: {0:?}")]
    SourcePortConflict(SourcePortKey),
    #[error("conflicting verdicts for the same key: {0:?}")]
    Conflict(Box<RuleKey>),
    #[error("peer prefix {0} is listed twice with different classes")]
    PeerConflict(IpNet),
    #[error("peer class {0} is reserved (u32::MAX is the wildcard)")]
    ReservedClass(u32),
    #[error("peer group {0} is reserved (u32::MAX is the wildcard)")]
    ReservedGroup(u32),
    #[error("conflicting peer groups for the same key: {0:?}")]
    GroupConflict(GroupKey),
    #[error("{what}: {count} entries exceed the map's capacity of {max}")]
    Capacity {
        what: &'static str,
        count: usize,
        max: u32,
    },
}

/// Splits `first..=last` into the fewest (value, prefix bits) pairs that cover it
/// exactly: each pair matches the ports whose top `bits` bits equal `value`'s.
pub fn port_range_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if first > last {
        return out;
    }
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((lo as u16, bits));
        lo += size;
    }
    out
}

/// The LPM key of an address: IPv4 as IPv4-mapped IPv6 (prefix + 96).
pub fn peer_key(net: &IpNet) -> (u32, [u8; 16]) {
    match net {
        IpNet::V4(n) => (
            96 + u32::from(n.prefix_len()),
            n.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(n) => (u32::from(n.prefix_len()), n.network().octets()),
    }
}

/// The address as the kernel stores it in events and conntrack.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

pub fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => direction::INGRESS,
        Direction::Egress => direction::EGRESS,
    }
}

impl RuleEntry {
    /// The (prefix_len, key) pairs this entry is stored as.
    pub fn keys(&self) -> Result<Vec<(u32, RuleKey)>, TableError> {
        let base = RuleKey {
            endpoint_id: self.endpoint_id,
            peer_group: match self.peer {
                PeerMatch::Group(g) if g == PEER_GROUP_ANY => {
                    return Err(TableError::ReservedGroup(g))
                }
                PeerMatch::Group(g) => g,
                PeerMatch::Any => PEER_GROUP_ANY,
            },
            direction: direction_code(self.direction),
            table: match self.table {
                Table::Enforced => table::ENFORCED,
                Table::Pending => table::PENDING,
            },
            protocol: self.protocol.unwrap_or(0),
            source_port_class: self.source_port_class.unwrap_or(0),
            port: [0; 2],
            _pad2: [0; 2],
        };
        let Some(_) = self.protocol else {
            return match (self.ports, self.source_port_class) {
                (PortMatch::Any, None) => Ok(vec![(RuleKey::ANY_PROTOCOL_PREFIX, base)]),
                (_, Some(_)) => Err(TableError::SourcePortClassWithoutProtocol),
                _ => Err(TableError::PortsWithoutProtocol),
            };
        };
        let Some(_) = self.source_port_class else {
            return match self.ports {
                PortMatch::Any => Ok(vec![(RuleKey::PROTOCOL_PREFIX, base)]),
                _ => Err(TableError::PortsWithoutSourcePortClass),
            };
        };
        let with_port = |value: u16, bits: u8| {
            (
                RuleKey::ANY_PORT_PREFIX + u32::from(bits),
                RuleKey {
                    port: value.to_be_bytes(),
                    ..base
                },
            )
        };
        Ok(match self.ports {
            PortMatch::Any => vec![(RuleKey::ANY_PORT_PREFIX, base)],
            PortMatch::Range(first, last) => {
                if first > last {
                    return Err(TableError::EmptyRange(first, last));
                }
                port_range_prefixes(first, last)
                    .into_iter()
                    .map(|(v, b)| with_port(v, b))
                    .collect()
            }
            PortMatch::Icmp { icmp_type, code } => match code {
                Some(c) => vec![with_port(u16::from(icmp_type) << 8 | u16::from(c), 16)],
                None => vec![with_port(u16::from(icmp_type) << 8, 8)],
            },
        })
    }
}

impl SourcePortEntry {
    /// The (prefix_len, key) pairs this entry is stored as.
    pub fn keys(&self) -> Result<Vec<(u32, SourcePortKey)>, TableError> {
        if self.first > self.last {
            return Err(TableError::EmptyRange(self.first, self.last));
        }
        Ok(port_range_prefixes(self.first, self.last)
            .into_iter()
            .map(|(value, bits)| {
                (
                    SourcePortKey::ANY_PORT_PREFIX + u32::from(bits),
                    SourcePortKey {
                        endpoint_id: self.endpoint_id,
                        direction: direction_code(self.direction),
                        protocol: self.protocol,
                        port: value.to_be_bytes(),
                    },
                )
            })
            .collect())
    }
}

/// The encoded contents of one copy of the tables, checked for conflicts and capacity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoded {
    pub peers: Vec<(u32, [u8; 16], u32)>,
    pub rules: Vec<(u32, RuleKey, Verdict)>,
    pub sports: Vec<(u32, SourcePortKey, u8)>,
    pub groups: Vec<(GroupKey, u32)>,
}

/// What turns a map holding `old` into one holding `new` (both without
/// duplicate keys): the keys to delete (in `old`, not in `new`) and the
/// entries to write (absent from `old`, or with another value there). An
/// install writes only these, so a small policy change costs a few map
/// writes, not a rewrite of every table.
pub fn changes<K, V>(old: &[(K, V)], new: &[(K, V)]) -> (Vec<K>, Vec<(K, V)>)
where
    K: Copy + Eq + std::hash::Hash,
    V: Copy + PartialEq,
{
    let held: HashMap<K, V> = old.iter().copied().collect();
    let wanted: HashSet<K> = new.iter().map(|(k, _)| *k).collect();
    let stale = old
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !wanted.contains(k))
        .collect();
    let write = new
        .iter()
        .filter(|(k, v)| held.get(k) != Some(v))
        .copied()
        .collect();
    (stale, write)
}

impl TableSet {
    /// For hand-written tables: puts every class that a `PeerMatch::Group(g)`
    /// entry names by number (g) into group g of that entry's endpoint and
    /// direction, so that "group g" reads as "class g".
    pub fn with_identity_groups(mut self) -> Self {
        let mut seen: HashSet<GroupEntry> = self.groups.iter().copied().collect();
        for r in &self.rules {
            if let PeerMatch::Group(g) = r.peer {
                let e = GroupEntry {
                    endpoint_id: r.endpoint_id,
                    direction: r.direction,
                    class: g,
                    group: g,
                };
                if seen.insert(e) {
                    self.groups.push(e);
                }
            }
        }
        self
    }

    pub fn encode(&self) -> Result<Encoded, TableError> {
        use agent_common::limits::{
            MAX_GROUP_ENTRIES, MAX_PEER_PREFIXES, MAX_RULE_ENTRIES, MAX_SOURCE_PORT_ENTRIES,
        };
        let mut peers: HashMap<(u32, [u8; 16]), u32> = HashMap::new();
        let mut out = Encoded::default();
        for (net, class) in &self.peers {
            if *class == u32::MAX {
                return Err(TableError::ReservedClass(*class));
            }
            let net = net.trunc();
            let (len, addr) = peer_key(&net);
            match peers.insert((len, addr), *class) {
                Some(old) if old != *class => return Err(TableError::PeerConflict(net)),
                Some(_) => {}
                None => out.peers.push((len, addr, *class)),
            }
        }
        let mut rules: HashMap<(u32, RuleKey), Verdict> = HashMap::new();
        for entry in &self.rules {
            for (len, key) in entry.keys()? {
                match rules.insert((len, key), entry.verdict) {
                    Some(old) if old != entry.verdict => {
                        return Err(TableError::Conflict(Box::new(key)))
                    }
                    Some(_) => {}
                    None => out.rules.push((len, key, entry.verdict)),
                }
            }
        }
        let mut sports: HashMap<(u32, SourcePortKey), u8> = HashMap::new();
        for entry in &self.sports {
            for (len, key) in entry.keys()? {
                match sports.insert((len, key), entry.class) {
                    Some(old) if old != entry.class => {
                        return Err(TableError::SourcePortConflict(key))
                    }
                    Some(_) => {}
                    None => out.sports.push((len, key, entry.class)),
                }
            }
        }
        let mut groups: HashMap<GroupKey, u32> = HashMap::new();
        for entry in &self.groups {
            if entry.group == PEER_GROUP_ANY {
                return Err(TableError::ReservedGroup(entry.group));
            }
            let key = entry.key();
            match groups.insert(key, entry.group) {
                Some(old) if old != entry.group => return Err(TableError::GroupConflict(key)),
                Some(_) => {}
                None => out.groups.push((key, entry.group)),
            }
        }
        for (what, count, max) in [
            ("peer-group entries", out.groups.len(), MAX_GROUP_ENTRIES),
            (
                "source-port entries",
                out.sports.len(),
                MAX_SOURCE_PORT_ENTRIES,
            ),
            ("peer prefixes", out.peers.len(), MAX_PEER_PREFIXES),
            ("rule entries", out.rules.len(), MAX_RULE_ENTRIES),
        ] {
            if count > max as usize {
                return Err(TableError::Capacity { what, count, max });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covers(prefixes: &[(u16, u8)], port: u16) -> usize {
        prefixes
            .iter()
            .filter(|(v, b)| {
                let mask = if *b == 0 { 0 } else { u16::MAX << (16 - b) };
                port & mask == *v
            })
            .count()
    }

    #[test]
    fn known_splits() {
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(8000, 8003), vec![(8000, 14)]);
        assert_eq!(
            port_range_prefixes(1, 3),
            vec![(1, 16), (2, 15)],
            "1 alone, then 2-3"
        );
        assert_eq!(port_range_prefixes(1024, 65535).len(), 6);
        assert!(port_range_prefixes(5, 4).is_empty());
        assert_eq!(port_range_prefixes(65535, 65535), vec![(65535, 16)]);
    }

    proptest! {
        #[test]
        fn prefixes_cover_exactly(a: u16, b: u16, probe: u16) {
            let (first, last) = (a.min(b), a.max(b));
            let p = port_range_prefixes(first, last);
            prop_assert!(p.len() <= 30);
            for port in [first, last, probe, first.wrapping_sub(1), last.wrapping_add(1)] {
                let inside = (first..=last).contains(&port);
                prop_assert_eq!(covers(&p, port), usize::from(inside), "port {}", port);
            }
            for (v, b) in &p {
                let mask = if *b == 0 { 0 } else { u16::MAX << (16 - b) };
                prop_assert_eq!(v & !mask, 0, "value has bits below its prefix");
            }
        }
    }

    #[test]
    fn ipv4_peer_keys_are_mapped() {
        let (len, addr) = peer_key(&"10.65.0.0/24".parse().unwrap());
        assert_eq!(len, 120);
        assert_eq!(&addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&addr[12..], &[10, 65, 0, 0]);
        assert_eq!(peer_key(&"fd00::/8".parse().unwrap()).0, 8);
    }

    #[test]
    fn icmp_and_protocol_keys() {
        let e = RuleEntry {
            endpoint_id: 7,
            direction: Direction::Ingress,
            table: Table::Enforced,
            peer: PeerMatch::Any,
            protocol: Some(1),
            source_port_class: Some(0),
            ports: PortMatch::Icmp {
                icmp_type: 8,
                code: None,
            },
            verdict: Verdict::default(),
        };
        let k = e.keys().unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].0, 104);
        assert_eq!(k[0].1.port, [8, 0]);
        assert_eq!(k[0].1.peer_group, u32::MAX);
        let any = RuleEntry {
            protocol: None,
            source_port_class: None,
            ports: PortMatch::Any,
            ..e
        };
        assert_eq!(any.keys().unwrap()[0].0, 80);
        let bad = RuleEntry {
            protocol: None,
            source_port_class: None,
            ..e
        };
        assert_eq!(bad.keys(), Err(TableError::PortsWithoutProtocol));
        let bad = RuleEntry {
            protocol: None,
            ports: PortMatch::Any,
            ..e
        };
        assert_eq!(bad.keys(), Err(TableError::SourcePortClassWithoutProtocol));
    }

    #[test]
    fn source_port_class_keys() {
        let e = RuleEntry {
            endpoint_id: 7,
            direction: Direction::Ingress,
            table: Table::Enforced,
            peer: PeerMatch::Group(2),
            protocol: Some(17),
            source_port_class: Some(3),
            ports: PortMatch::Range(53, 53),
            verdict: Verdict::default(),
        };
        let k = e.keys().unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].0, k[0].1.source_port_class), (112, 3));
        let any_port = RuleEntry {
            ports: PortMatch::Any,
            ..e
        };
        assert_eq!(any_port.keys().unwrap()[0].0, 96);
        let every_class = RuleEntry {
            source_port_class: None,
            ports: PortMatch::Any,
            ..e
        };
        let k = every_class.keys().unwrap();
        assert_eq!((k[0].0, k[0].1.source_port_class), (88, 0));
        let bad = RuleEntry {
            source_port_class: None,
            ..e
        };
        assert_eq!(bad.keys(), Err(TableError::PortsWithoutSourcePortClass));
        let s = SourcePortEntry {
            endpoint_id: 7,
            direction: Direction::Egress,
            protocol: 6,
            first: 1024,
            last: 65535,
            class: 1,
        };
        let k = s.keys().unwrap();
        assert_eq!(k.len(), 6);
        assert_eq!(k[0].0, 48 + 6);
        assert_eq!(k[0].1.port, 1024u16.to_be_bytes());
        assert_eq!((k[0].1.direction, k[0].1.protocol), (1, 6));
        let all = SourcePortEntry {
            first: 0,
            last: 65535,
            ..s
        };
        assert_eq!(all.keys().unwrap()[0].0, 48);
        let t = TableSet {
            sports: vec![s, SourcePortEntry { class: 2, ..s }],
            ..TableSet::default()
        };
        assert!(matches!(t.encode(), Err(TableError::SourcePortConflict(_))));
    }

    #[test]
    fn changes_delete_stale_keys_and_write_only_new_or_changed_entries() {
        let old = [(1, 'a'), (2, 'b'), (3, 'c')];
        let new = [(2, 'b'), (3, 'x'), (4, 'd')];
        let (stale, write) = changes(&old, &new);
        assert_eq!(stale, vec![1]);
        assert_eq!(write, vec![(3, 'x'), (4, 'd')]);
        let (stale, write) = changes(&new, &new);
        assert!(stale.is_empty() && write.is_empty());
        let (stale, write) = changes(&[], &new);
        assert!(stale.is_empty());
        assert_eq!(write, new.to_vec());
    }

    #[test]
    fn conflicts_are_errors() {
        let e = RuleEntry {
            endpoint_id: 1,
            direction: Direction::Egress,
            table: Table::Enforced,
            peer: PeerMatch::Group(3),
            protocol: Some(6),
            source_port_class: Some(0),
            ports: PortMatch::Range(80, 80),
            verdict: Verdict::default(),
        };
        let mut other = e;
        other.verdict.action = 9;
        let t = TableSet {
            rules: vec![e, e, other],
            ..TableSet::default()
        };
        assert!(matches!(t.encode(), Err(TableError::Conflict(_))));
    }
}
