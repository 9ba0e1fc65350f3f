//! The datastore shape of "10,000 rules" (issue 15), shared by the compile
//! and control-plane benches: 4 workloads, 10 ordered GlobalNetworkPolicies
//! of N/10 rules each (a distinct /32 and a port each), a deny policy.

use std::net::Ipv4Addr;

pub const POLICIES: usize = 10;
pub const ENDPOINTS: usize = 4;

/// The peer of rule `i` (distinct for every rule of the datastore).
pub fn peer(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a46_0000 + i as u32 + 1)
}

/// The datastore of `rules` rules (a multiple of [`POLICIES`]).
pub fn datastore(rules: usize) -> String {
    let mut y = String::with_capacity(rules * 120 + 4096);
    for k in 0..ENDPOINTS {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
             metadata: {{name: server{k}, namespace: bench, labels: {{app: server}}}}\n\
             spec: {{interfaceName: cbench{k}, ipNetworks: [10.65.0.{}/32]}}\n---\n",
            30 + k
        ));
    }
    let per_policy = rules / POLICIES;
    for p in 0..POLICIES {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
             metadata: {{name: allow-{p}}}\n\
             spec:\n  order: {}\n  selector: app == 'server'\n  types: [Ingress]\n  ingress:\n",
            10 * (p + 1)
        ));
        for r in 0..per_policy {
            let i = p * per_policy + r;
            y.push_str(&format!(
                "  - {{action: Allow, protocol: TCP, source: {{nets: [{}/32]}}, destination: {{ports: [{}]}}}}\n",
                peer(i),
                1_000 + r
            ));
        }
        y.push_str("---\n");
    }
    y.push_str(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
         metadata: {name: deny-rest}\n\
         spec:\n  order: 1000\n  selector: app == 'server'\n  types: [Ingress]\n  ingress:\n  - action: Deny\n",
    );
    y
}
