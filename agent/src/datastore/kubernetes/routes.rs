//! This node's host routes (`/proc/net/route`, `/proc/net/ipv6_route`): the
//! interface a local pod's traffic goes through, CNI-neutral.
use std::collections::HashMap;
use std::net::IpAddr;

use super::pods::{calico_interface, PodInfo};
use super::Key;

/// Host routes (`/32`, `/128`) of the main table in this network namespace: IP -> device.
pub fn host_routes() -> HashMap<IpAddr, String> {
    let mut out = HashMap::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[7] != "FFFFFFFF" {
                continue;
            }
            if let Ok(d) = u32::from_str_radix(f[1], 16) {
                // Little-endian hex of the address in network order.
                out.insert(
                    IpAddr::V4(std::net::Ipv4Addr::from(d.to_le_bytes())),
                    f[0].to_string(),
                );
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in t.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[1] != "80" || f[9] == "lo" {
                continue;
            }
            if let Ok(a) = u128::from_str_radix(f[0], 16) {
                out.entry(IpAddr::V6(std::net::Ipv6Addr::from(a)))
                    .or_insert_with(|| f[9].to_string());
            }
        }
    }
    out
}

/// A local pod's interface: the device its host route goes through, else Calico's name.
pub(super) fn pod_interface(key: &Key, pod: &PodInfo, routes: &HashMap<IpAddr, String>) -> String {
    pod.ips
        .iter()
        .find_map(|ip| routes.get(ip).cloned())
        .unwrap_or_else(|| calico_interface(&key.0, &key.1))
}
