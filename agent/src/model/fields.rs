//! Parsing of the small field grammars (protocols, ports, nets, names): each
//! gives the value or the error message [`super::lower`] reports.
use ipnet::IpNet;

use super::ir::{PortMatch, PortRange, Protocol};
use super::resources::IntOrString;

/// What a protocol field accepts, for error messages.
fn accepted_protocols() -> String {
    let names: Vec<&str> = Protocol::names().collect();
    format!("{} or a number 1-255", names.join(", "))
}

/// `TCP UDP ICMP ICMPv6 SCTP UDPLite` (exact case) or 1-255.
pub fn protocol(p: &IntOrString) -> Result<Protocol, String> {
    match p {
        IntOrString::Int(n @ 1..=255) => Ok(Protocol::from_number(*n as u8)),
        IntOrString::Int(n) => Err(format!(
            "protocol number {n} is out of range; accepted: {}",
            accepted_protocols()
        )),
        // Calico accepts a number in a string too ("6").
        IntOrString::Str(s) if s.parse::<i64>().is_ok() => {
            protocol(&IntOrString::Int(s.parse().unwrap_or_default()))
        }
        IntOrString::Str(s) => Protocol::from_name(s).ok_or_else(|| {
            format!(
                "protocol `{s}` is not valid (names are case-sensitive); accepted: {}",
                accepted_protocols()
            )
        }),
    }
}

pub fn supports_ports(protocol: Option<Protocol>) -> bool {
    protocol.is_some_and(Protocol::has_rule_ports)
}

const PORT_ACCEPTED: &str =
    "accepted: a port 1-65535, a range \"min:max\", or a port name of [a-zA-Z0-9_.-]{1,128}";

fn port_number(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("port `{s}` is out of range; {PORT_ACCEPTED}")),
    }
}

/// An integer port, `"min:max"`, or a named port.
pub fn port(p: &IntOrString) -> Result<PortMatch, String> {
    let s = match p {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::Str(s) => s.clone(),
    };
    if let Some((min, max)) = s.split_once(':') {
        let (first, last) = (port_number(min)?, port_number(max)?);
        if first > last {
            return Err(format!(
                "port range `{s}` has its minimum above its maximum; {PORT_ACCEPTED}"
            ));
        }
        return Ok(PortMatch::Range(PortRange { first, last }));
    }
    if s.starts_with('-') || s.chars().all(|c| c.is_ascii_digit()) {
        let n = port_number(&s)?;
        return Ok(PortMatch::Range(PortRange { first: n, last: n }));
    }
    let name_ok = (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name_ok {
        Ok(PortMatch::Named(s))
    } else {
        Err(format!("port `{s}` is not valid; {PORT_ACCEPTED}"))
    }
}

/// A CIDR or a bare IP (a host route), masked to its network.
///
/// As Go's `net.ParseCIDR`/`net.ParseIP` (and so Calico): an IPv4 field with a
/// leading zero (`010.1.2.3`, ambiguous between decimal and octal) is refused.
pub fn net(s: &str) -> Result<IpNet, String> {
    net_as_written(s).map(|n| n.trunc())
}

/// A CIDR or a bare IP, as [`net`] but not masked: the address as written
/// and its prefix (`10.0.0.5/24`), for fields that hold addresses.
pub fn net_as_written(s: &str) -> Result<IpNet, String> {
    let invalid = || {
        format!(
            "`{s}` is not a valid network; accepted: a CIDR like 10.0.0.0/8 or fd00::/64, or an IP"
        )
    };
    if has_leading_zero(s) {
        return Err(format!(
            "`{s}` is not a valid network: an IPv4 field has a leading zero (ambiguous: \
             decimal or octal?); write it without (e.g. 10.65.0.10/32)"
        ));
    }
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(invalid())
}

/// Whether the IPv4 part of an address or CIDR has a field with a leading zero
/// (`010.1.2.3`), which Go's parser (and so Calico and Kubernetes) refuses.
pub fn has_leading_zero(s: &str) -> bool {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    // The dotted-quad part (also the tail of an IPv4-mapped IPv6 address).
    let quad = addr.rsplit(':').next().unwrap_or(addr);
    quad.contains('.')
        && quad
            .split('.')
            .any(|octet| octet.len() > 1 && octet.starts_with('0'))
}

/// A strict CIDR (`a.b.c.d/n` or IPv6), as Kubernetes' ipBlock takes it.
pub fn cidr(s: &str) -> Option<IpNet> {
    if has_leading_zero(s) {
        return None;
    }
    s.parse().ok()
}

pub fn ip_version_of(n: &IpNet) -> u8 {
    match n {
        IpNet::V4(_) => 4,
        IpNet::V6(_) => 6,
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes DNS-1123 subdomain: what Calico accepts for most resource names.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("name is required".into());
    }
    if s.len() <= 253 && s.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "name `{s}` is not valid; accepted: lowercase letters, digits, `-` and `.`, \
             starting and ending with a letter or digit, at most 253 characters"
        ))
    }
}

/// GlobalNetworkPolicy names: a DNS label, optionally `<label>.` prefixed (one dot at most).
pub fn check_global_policy_name(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('.').collect();
    if s.len() <= 253 && parts.len() <= 2 && parts.iter().all(|p| is_dns_label(p)) {
        Ok(())
    } else {
        Err(format!(
            "name `{s}` is not valid; accepted: lowercase letters, digits and `-` \
             (a DNS label), optionally prefixed by one `<label>.`"
        ))
    }
}

/// NetworkPolicy names: like a global policy's, or `knp.default.`/`ossg.default.`
/// followed by a DNS subdomain (Calico's networkPolicyNameRegex).
pub fn check_namespaced_policy_name(s: &str) -> Result<(), String> {
    for prefix in ["knp.default.", "ossg.default."] {
        if let Some(rest) = s.strip_prefix(prefix) {
            if s.len() <= 253 && !rest.is_empty() && rest.split('.').all(is_dns_label) {
                return Ok(());
            }
        }
    }
    check_global_policy_name(s)
}

/// Interface names as Calico accepts them (`[a-zA-Z0-9_.-]{1,15}`).
pub fn check_interface(s: &str) -> Result<(), String> {
    if (1..=15).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "interface name `{s}` is not valid; accepted: 1-15 of [a-zA-Z0-9_.-]"
        ))
    }
}

/// DNS-1123 label: namespaces and tiers (a tier name cannot contain `.`).
pub fn check_label_name(what: &str, s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(format!(
            "{what} `{s}` is not valid; accepted: lowercase letters, digits and `-`, \
             starting and ending with a letter or digit, at most 63 characters"
        ))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes label key (`[prefix/]name`) and value rules.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    if !prefix_ok || !is_qualified_name_part(name) {
        return Err(format!(
            "label key `{key}` is not valid; accepted: an optional DNS-subdomain prefix and `/`, \
             then 1-63 of [A-Za-z0-9-_.] starting and ending alphanumeric"
        ));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        return Err(format!(
            "label value `{value}` of `{key}` is not valid; accepted: empty, or 1-63 of \
             [A-Za-z0-9-_.] starting and ending alphanumeric"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::Str(v.into())
    }

    #[test]
    fn protocols_are_exact_case_or_numbers() {
        let number = |p: Result<Protocol, String>| p.map(Protocol::number);
        assert_eq!(number(protocol(&s("TCP"))), Ok(6));
        assert_eq!(number(protocol(&s("ICMPv6"))), Ok(58));
        assert_eq!(number(protocol(&s("UDPLite"))), Ok(136));
        assert_eq!(number(protocol(&IntOrString::Int(255))), Ok(255));
        assert!(protocol(&s("tcp")).is_err());
        assert!(protocol(&IntOrString::Int(0)).is_err());
        assert!(protocol(&IntOrString::Int(256)).is_err());
    }

    #[test]
    fn protocol_names_and_numbers_map_both_ways() {
        for n in 0..=255u8 {
            let p = Protocol::from_number(n);
            match p.name() {
                Some(name) => {
                    assert_eq!(Protocol::from_name(name), Some(p));
                    let lower = name.to_ascii_lowercase();
                    assert_eq!(Protocol::from_name_ignore_case(&lower), Some(p));
                    assert_eq!(p.to_string(), name);
                }
                None => assert_eq!(p.to_string(), n.to_string()),
            }
        }
        assert_eq!(Protocol::from_name("tcp"), None);
        assert_eq!(Protocol::from_name("ICMPv6"), Some(Protocol::ICMPV6));
        assert!(Protocol::SCTP.has_rule_ports() && !Protocol::UDPLITE.has_rule_ports());
    }

    #[test]
    fn ports_ranges_and_names() {
        let r = |a, b| PortMatch::Range(PortRange { first: a, last: b });
        assert_eq!(port(&IntOrString::Int(80)), Ok(r(80, 80)));
        assert_eq!(port(&s("80")), Ok(r(80, 80)));
        assert_eq!(port(&s("1:65535")), Ok(r(1, 65535)));
        assert_eq!(
            port(&s("http-alt.1_x")),
            Ok(PortMatch::Named("http-alt.1_x".into()))
        );
        assert!(port(&s("90:80")).is_err());
        assert!(port(&s("0")).is_err());
        assert!(port(&IntOrString::Int(65536)).is_err());
        assert!(port(&s("a:b")).is_err());
        assert!(port(&s("bad name")).is_err());
        assert!(port(&s(&"a".repeat(129))).is_err());
    }

    #[test]
    fn nets_accept_cidrs_and_ips() {
        assert_eq!(net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(net("10.0.0.0/33").is_err());
        assert!(net("nope").is_err());
    }

    #[test]
    fn nets_with_leading_zeros_are_refused_as_calico_does() {
        for bad in [
            "010.065.000.010/32",
            "010.065.000.010",
            "10.0.0.01/32",
            "00.0.0.0/0",
            "::ffff:010.1.2.3",
        ] {
            let err = net(bad).unwrap_err();
            assert!(err.contains("leading zero"), "{bad}: {err}");
        }
        assert_eq!(net("10.65.0.10/32").unwrap().to_string(), "10.65.0.10/32");
        assert_eq!(net("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(net("10.0.100.0/24").unwrap().to_string(), "10.0.100.0/24");
        assert_eq!(
            net("::ffff:10.1.2.3").unwrap().to_string(),
            "::ffff:10.1.2.3/128"
        );
    }

    #[test]
    fn names_and_labels() {
        assert!(check_name("knp.default.x").is_ok());
        assert!(check_name("Upper").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_label_name("tier", "a.b").is_err());
        assert!(check_label("app.kubernetes.io/name", "web").is_ok());
        assert!(check_label("projectcalico.org/namespace", "prod").is_ok());
        assert!(check_label("bad key", "x").is_err());
        assert!(check_label("k", "-bad").is_err());
    }
}
