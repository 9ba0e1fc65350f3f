//! [`Protocol`]: the IR's IP protocol, where protocol names and numbers meet.
use std::fmt;

use agent_common::ip_proto;

/// An IP protocol (IPv4 protocol, IPv6 next header): what rules, named ports,
/// failsafes, Service backends and packets carry. The one place protocol names
/// and numbers meet: the numbers are the kernel crate's
/// ([`agent_common::ip_proto`]), the names Calico's, and [`Protocol::number`]
/// is the one way back to the kernel's byte.
///
/// Every byte is a protocol, so the number is the representation (no second
/// spelling of TCP can exist); the named ones are the closed set of constants
/// below. It sorts, hashes, prints with `{:?}` and serializes as its number,
/// exactly as the `u8` it replaced did (the compiler's pinned digests and the
/// JSON outputs depend on that).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(u8);

impl Protocol {
    pub const ICMP: Self = Self(ip_proto::ICMP);
    pub const TCP: Self = Self(ip_proto::TCP);
    pub const UDP: Self = Self(ip_proto::UDP);
    pub const ICMPV6: Self = Self(ip_proto::ICMPV6);
    pub const SCTP: Self = Self(ip_proto::SCTP);
    pub const UDPLITE: Self = Self(ip_proto::UDPLITE);

    /// Calico's names, exact case.
    const NAMED: [(Self, &'static str); 6] = [
        (Self::TCP, "TCP"),
        (Self::UDP, "UDP"),
        (Self::ICMP, "ICMP"),
        (Self::ICMPV6, "ICMPv6"),
        (Self::SCTP, "SCTP"),
        (Self::UDPLITE, "UDPLite"),
    ];

    /// The protocol with this number (as packets and the kernel carry it).
    pub const fn from_number(number: u8) -> Self {
        Self(number)
    }

    /// The number packets and the kernel's tables carry.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// A protocol by Calico's name, exact case (`TCP`, `ICMPv6`, `UDPLite`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(p, _)| *p)
    }

    /// A protocol by name in any case (`tcp`, `icmpv6`), as command lines take it.
    pub fn from_name_ignore_case(name: &str) -> Option<Self> {
        Self::NAMED
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }

    /// Calico's names, in the order error messages list them.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::NAMED.iter().map(|(_, n)| *n)
    }

    /// Calico's name, when the protocol has one.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMED
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
    }

    /// Whether Calico rules may match this protocol's ports (TCP, UDP, SCTP).
    pub fn has_rule_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP)
    }

    /// Whether the header starts with a source and a destination port (TCP,
    /// UDP, SCTP, UDPLite): what the kernel parses ports of.
    pub const fn carries_ports(self) -> bool {
        ip_proto::has_ports(self.0)
    }

    /// ICMP or ICMPv6: packets have a type and a code instead of ports.
    pub fn is_icmp(self) -> bool {
        matches!(self, Self::ICMP | Self::ICMPV6)
    }
}

impl fmt::Display for Protocol {
    /// Calico's name, or the number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for Protocol {
    /// The number, as the `u8` this type replaced printed (see the type's docs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl serde::Serialize for Protocol {
    /// The number.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.0)
    }
}
