//! Network-namespace lab: Kubernetes "pods" wired exactly the way Calico wires them,
//! inside a private "node", probed with real traffic.
//!
//! ```text
//!  machine root netns: untouched (no veth, route or sysctl of a lab lives there)
//!
//!  lab<pid>x<n>-node: the Kubernetes host (ip_forward=1, IPv6 forwarding=1)
//!  +-------------------------------------------------------------------------+
//!  | eth0: "uplink" (ifb/dummy), 10.64.0.1/32, fd64::1/128, default routes;  |
//!  |       whatever is unrouted leaves here and is silently dropped          |
//!  | routes: 10.65.0.N/32 dev caliXXX, fd65::N/128 dev caliXXX (per pod)     |
//!  |                                                                         |
//!  | caliXXXXXXXXXXX (one per pod)               eth1 (one per external)     |
//!  |   ee:ee:ee:ee:ee:ee, proxy_arp=1,             10.66.0.1/24, fd66::1/64  |
//!  |   proxy_delay=0, fe80::ecee:eeff:feee:eeee                              |
//!  +---|-----------------------------------------------|---------------------+
//!      | veth                                          | veth
//!  +---|-----------------------------------+     +-----|---------------------+
//!  | eth0: 10.65.0.N/32, fd65::N/128       |     | eth0: 10.66.0.2/24,       |
//!  | 169.254.1.1 dev eth0 scope link       |     |       fd66::2/64          |
//!  | default via 169.254.1.1 dev eth0      |     | default via 10.66.0.1     |
//!  | default via fe80::ecee:eeff:feee:eeee |     | default via fd66::1       |
//!  +---------------------------------------+     +---------------------------+
//!   lab<pid>x<n>-podN                             lab<pid>x<n>-ext0 (optional)
//! ```
//!
//! - Each [`Lab`] has its own node namespace, so every lab uses the same readable
//!   addresses (pods `10.65.0.N` / `fd65::N`, N allocated from 10 upwards or chosen;
//!   N's decimal digits are the IPv6 group, so pod 10 is `10.65.0.10` / `fd65::10`)
//!   and labs run in parallel without seeing each other. Only namespace names are
//!   global: `lab<pid>x<counter>-...`. [`Lab::new`] removes namespaces left by
//!   earlier runs whose process is gone.
//! - The pod side is exactly Calico's: a /32 (/128) on `eth0`, the fake gateway
//!   `169.254.1.1` answered by proxy ARP on the host side, and the IPv6 default route
//!   via the host side's link-local address derived from `ee:ee:ee:ee:ee:ee`.
//! - [`Lab::add_external`] adds a client outside the cluster, connected to the node by
//!   its own veth (`eth1`, `eth2`, ...: the interface of a HostEndpoint).
//! - Every namespace is a [`Netns`]: run closures in it ([`Netns::run`]), run programs
//!   in it ([`Netns::command`], via `nsenter --net`, so `/sys/fs/bpf` stays visible),
//!   and probe from it ([`Netns::tcp_connect`], [`Netns::udp_request`],
//!   [`Netns::ping`], [`Netns::tcp_stream`]) against echo servers
//!   ([`Netns::tcp_listen`], [`Netns::udp_echo`]). [`Pod`] and [`External`]
//!   dereference to their `Netns`.
//! - Probe outcomes: `Connected`/`Replied`, `Refused` (RST, ICMP port unreachable),
//!   `TimedOut` (silently dropped: what a policy drop looks like) and `Unreachable`
//!   (another ICMP error, e.g. an `unreachable` route; reported at once because
//!   probe sockets set `IP_RECVERR`). Unrouted destinations leave the node by its
//!   uplink and time out, like on a real host.
//! - Dropping the lab (also while unwinding from a panic) stops its servers and
//!   deletes its namespaces, which deletes the veths.
//!
//! ```no_run
//! use lab::{Lab, TcpProbe, PROBE_TIMEOUT};
//! lab::require_root();
//! let lab = Lab::new();
//! let front = lab.add_pod("default", "front");
//! let back = lab.add_pod("default", "back");
//! let _srv = back.tcp_listen(8080);
//! assert_eq!(front.tcp_connect(back.ipv4, 8080, PROBE_TIMEOUT), TcpProbe::Connected);
//! ```

mod netns;
pub mod packet;
mod probe;
mod servers;
pub mod traffic;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

pub use netns::Netns;
pub use probe::{PingProbe, TcpProbe, UdpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};
pub use servers::Server;

use servers::Servers;

pub(crate) const NETNS_DIR: &str = "/run/netns";

/// MAC address of every host-side pod interface (Calico's).
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The pods' IPv4 gateway, answered by proxy ARP (Calico's).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The host side's link-local address, the pods' IPv6 gateway (from [`HOST_MAC`]).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The node's own address (on its dummy uplink `eth0`).
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
/// The node's own IPv6 address (on its dummy uplink `eth0`).
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);

/// The IPv4 address of pod number `n`: `10.65.0.n`.
pub fn pod_ipv4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 65, 0, n)
}

/// The IPv6 address of pod number `n`: `fd65::n` with n's decimal digits read as
/// hex, so that it reads like the IPv4 one (`10.65.0.10` and `fd65::10`).
pub fn pod_ipv6(n: u8) -> Ipv6Addr {
    let group = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0xfd65, 0, 0, 0, 0, 0, 0, group)
}

/// Calico-style host interface name for a pod: `cali` + 11 hex digits of a hash of
/// `namespace/name` (15 characters).
pub fn host_if_name(namespace: &str, name: &str) -> String {
    // FNV-1a 64: stable across runs and Rust versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain(*b"/").chain(name.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("cali{:011x}", h >> 20)
}

/// Panics with a clear message unless this process is root and can create network
/// namespaces (and has `ip` and `nsenter`). Call it first in every lab test.
pub fn require_root() {
    const MSG: &str = "lab tests need root and network namespaces; run as root";
    if !nix::unistd::geteuid().is_root() {
        panic!("{MSG} (effective uid is {})", nix::unistd::geteuid());
    }
    let probe = std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
        .join()
        .expect("unshare probe thread");
    if let Err(e) = probe {
        panic!("{MSG} (cannot create a network namespace: {e})");
    }
    for tool in ["ip", "nsenter", "ping"] {
        let found = std::process::Command::new(tool)
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !found {
            panic!("{MSG} (the `{tool}` program is missing)");
        }
    }
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A pod: a network namespace wired like a Calico workload. Dereferences to its
/// [`Netns`] for probes and servers.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// N: the pod's addresses are `10.65.0.N` and `fd65::N`.
    pub n: u8,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Host-side interface name (in the node namespace), e.g. `cali1234567890a`.
    pub host_if: String,
    /// Its ifindex in the node namespace.
    pub host_ifindex: u32,
    netns: Netns,
}

impl Pod {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Both addresses, IPv4 first: `for dst in pod.ips() { ... }`.
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }
}

impl Deref for Pod {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.netns
    }
}

/// A client outside the cluster, connected to the node by a veth. Dereferences to its
/// [`Netns`].
#[derive(Debug, Clone)]
pub struct External {
    pub name: String,
    /// Its addresses: `10.66.K.2`, `fd66:0:0:K::2` (K = 0 for the first external).
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node's addresses on that link: `10.66.K.1`, `fd66:0:0:K::1`.
    pub node_ipv4: Ipv4Addr,
    pub node_ipv6: Ipv6Addr,
    /// Node-side interface name (`eth1` for the first external): a HostEndpoint's
    /// `interfaceName`.
    pub node_if: String,
    /// Its ifindex in the node namespace.
    pub node_ifindex: u32,
    netns: Netns,
}

impl External {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Both addresses of the external, IPv4 first.
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }

    /// Both addresses of the node on the external's link, IPv4 first.
    pub fn node_ips(&self) -> [IpAddr; 2] {
        [self.node_ipv4.into(), self.node_ipv6.into()]
    }
}

impl Deref for External {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.netns
    }
}

#[derive(Default)]
struct LabState {
    /// Namespaces to delete on drop (pods and externals; the node is deleted last).
    namespaces: Vec<String>,
    used_n: BTreeSet<u8>,
    host_ifs: BTreeSet<String>,
    externals: u8,
}

/// One isolated lab: a node namespace with pods and externals. Deletes everything on
/// drop.
pub struct Lab {
    id: String,
    node: Netns,
    servers: Arc<Servers>,
    state: Mutex<LabState>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("id", &self.id).finish()
    }
}

/// Sysctls for every lab namespace: no DAD delay, no ICMP rate limit (so that many
/// probes to closed ports all see Refused).
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_ra", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    ("net/ipv4/icmp_ratelimit", "0"),
    ("net/ipv6/icmp/ratelimit", "0"),
    // The namespace's budget of ICMP errors (v4 and v6 together; 50 at once and
    // 1,000 a second by default): a burst of probes to closed ports must all be
    // answered. Set in the lab's namespaces only (per namespace, like the two
    // above; the host's own stay as they are).
    ("net/ipv4/icmp_msgs_burst", "10000"),
    ("net/ipv4/icmp_msgs_per_sec", "100000"),
];

impl Lab {
    /// Creates a lab (its node namespace), after removing namespaces of earlier labs
    /// whose process is gone. Panics on failure.
    pub fn new() -> Lab {
        Lab::try_new().unwrap_or_else(|e| panic!("creating a lab: {e:#}"))
    }

    pub fn try_new() -> Result<Lab> {
        remove_stale_namespaces();
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("lab{}x{}", std::process::id(), n);
        let servers = Arc::new(Servers::default());
        let node = Netns::new(format!("{id}-node"), servers.clone());
        let lab = Lab {
            id,
            node,
            servers,
            state: Mutex::new(LabState::default()),
        };
        add_netns(lab.node.name())?;
        let mut sysctls = COMMON_SYSCTLS.to_vec();
        sysctls.extend([
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv6/conf/default/forwarding", "1"),
        ]);
        lab.node.try_set_sysctls(&sysctls)?;
        // The uplink drops everything sent to it: a dummy, or an ifb (which drops
        // what was not redirected to it) where the kernel has no dummy driver.
        if lab.node.try_ip("link add eth0 type ifb").is_err() {
            lab.node.try_ip("link add eth0 type dummy")?;
        }
        lab.node.ip_batch(&[
            "link set lo up".into(),
            format!("addr add {NODE_IPV4}/32 dev eth0"),
            format!("addr add {NODE_IPV6}/128 dev eth0 nodad"),
            "link set eth0 up".into(),
            "route add default dev eth0".into(),
            "route add ::/0 dev eth0".into(),
        ])?;
        Ok(lab)
    }

    /// The lab's id, the prefix of all its namespace names (`lab<pid>x<n>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node (Kubernetes host) namespace.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Names of all namespaces of this lab (node first).
    pub fn namespace_names(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::once(self.node.name().to_string())
            .chain(state.namespaces.iter().cloned())
            .collect()
    }

    /// Adds a pod with the next free N (from 10 upwards) and host interface
    /// [`host_if_name`]`(namespace, name)`.
    pub fn add_pod(&self, namespace: &str, name: &str) -> Pod {
        self.try_add_pod(namespace, name, None, None)
            .unwrap_or_else(|e| panic!("adding pod {namespace}/{name}: {e:#}"))
    }

    /// Adds a pod with addresses `10.65.0.n`/`fd65::n` and host-side interface
    /// `host_if` (e.g. `calidemofront`, at most 15 characters; unique in this lab).
    pub fn add_pod_at(&self, namespace: &str, name: &str, n: u8, host_if: &str) -> Pod {
        self.try_add_pod(namespace, name, Some(n), Some(host_if))
            .unwrap_or_else(|e| panic!("adding pod {namespace}/{name}: {e:#}"))
    }

    /// Adds a pod; `None` picks the defaults of [`Lab::add_pod`].
    pub fn try_add_pod(
        &self,
        namespace: &str,
        name: &str,
        n: Option<u8>,
        host_if: Option<&str>,
    ) -> Result<Pod> {
        let host_if = host_if
            .map(str::to_string)
            .unwrap_or_else(|| host_if_name(namespace, name));
        check_ifname(&host_if)?;
        if host_if == "eth0" || host_if.starts_with("eth") && host_if[3..].parse::<u32>().is_ok() {
            bail!("host interface name {host_if} is reserved for the node's uplink and externals");
        }
        let n = self.reserve_pod(n, &host_if)?;
        let netns = Netns::new(format!("{}-pod{n}", self.id), self.servers.clone());
        let (ipv4, ipv6) = (pod_ipv4(n), pod_ipv6(n));
        self.wire_pod(&netns, &host_if, ipv4, ipv6)?;
        let host_ifindex = self.node.try_ifindex(&host_if)?;
        Ok(Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            n,
            ipv4,
            ipv6,
            host_if,
            host_ifindex,
            netns,
        })
    }

    /// Reserves pod number `n` (or the first free one) and the host interface
    /// name in this lab, so that parallel additions never collide.
    fn reserve_pod(&self, n: Option<u8>, host_if: &str) -> Result<u8> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = match n {
            Some(n) => {
                if n == 0 || n == 255 {
                    bail!("pod number {n} out of range 1..=254");
                }
                if st.used_n.contains(&n) {
                    bail!("pod number {n} (10.65.0.{n}) is already used in this lab");
                }
                n
            }
            None => (10..=254)
                .find(|n| !st.used_n.contains(n))
                .context("no free pod address left (10.65.0.10-254)")?,
        };
        if st.host_ifs.contains(host_if) {
            bail!("host interface {host_if} already exists in this lab");
        }
        st.used_n.insert(n);
        st.host_ifs.insert(host_if.to_string());
        st.namespaces.push(format!("{}-pod{n}", self.id));
        Ok(n)
    }

    /// Calico's wiring of a pod: a veth whose host side (`host_if`, in the
    /// node) answers ARP for everything (proxy ARP) and holds the pod's /32 and
    /// /128 routes; the pod side is `eth0` with a default route via 169.254.1.1.
    fn wire_pod(&self, netns: &Netns, host_if: &str, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Result<()> {
        add_netns(netns.name())?;
        netns.try_set_sysctls(COMMON_SYSCTLS)?;
        // Host side: created in the node, the peer goes straight into the pod as eth0.
        self.node.ip_batch(&[
            format!(
                "link add {host_if} address {HOST_MAC} type veth peer name eth0 netns {}",
                netns.name()
            ),
            format!("addr add {GATEWAY_V6}/64 dev {host_if} nodad"),
            format!("link set {host_if} up"),
            format!("route add {ipv4}/32 dev {host_if}"),
            format!("route add {ipv6}/128 dev {host_if}"),
        ])?;
        self.node.try_set_sysctls(&[
            (&format!("net/ipv4/conf/{host_if}/proxy_arp"), "1"),
            (&format!("net/ipv4/neigh/{host_if}/proxy_delay"), "0"),
            (&format!("net/ipv4/conf/{host_if}/forwarding"), "1"),
            (&format!("net/ipv6/conf/{host_if}/accept_dad"), "0"),
            (&format!("net/ipv6/conf/{host_if}/forwarding"), "1"),
        ])?;
        netns.ip_batch(&[
            "link set lo up".into(),
            format!("addr add {ipv4}/32 dev eth0"),
            format!("addr add {ipv6}/128 dev eth0 nodad"),
            "link set eth0 up".into(),
            format!("route add {GATEWAY_V4} dev eth0 scope link"),
            format!("route add default via {GATEWAY_V4} dev eth0"),
            format!("route add ::/0 via {GATEWAY_V6} dev eth0"),
        ])?;
        Ok(())
    }

    /// Adds an external client: a namespace connected to the node by a veth
    /// (`eth1` in the node for the first, `eth2` for the second, ...), addresses
    /// `10.66.K.2/24` and `fd66:0:0:K::2/64` (the node has `.1`/`::1`), default routes
    /// via the node. K = 0 for the first external.
    pub fn add_external(&self, name: &str) -> External {
        self.try_add_external(name)
            .unwrap_or_else(|e| panic!("adding external {name}: {e:#}"))
    }

    pub fn try_add_external(&self, name: &str) -> Result<External> {
        let k = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let k = st.externals;
            if k == 255 {
                bail!("too many externals");
            }
            st.externals += 1;
            st.namespaces.push(format!("{}-ext{k}", self.id));
            k
        };
        let netns = Netns::new(format!("{}-ext{k}", self.id), self.servers.clone());
        let node_if = format!("eth{}", k as u32 + 1);
        let ipv4 = Ipv4Addr::new(10, 66, k, 2);
        let node_ipv4 = Ipv4Addr::new(10, 66, k, 1);
        let ipv6 = Ipv6Addr::new(0xfd66, 0, 0, k as u16, 0, 0, 0, 2);
        let node_ipv6 = Ipv6Addr::new(0xfd66, 0, 0, k as u16, 0, 0, 0, 1);

        add_netns(netns.name())?;
        netns.try_set_sysctls(COMMON_SYSCTLS)?;
        self.node.ip_batch(&[
            format!(
                "link add {node_if} type veth peer name eth0 netns {}",
                netns.name()
            ),
            format!("addr add {node_ipv4}/24 dev {node_if}"),
            format!("addr add {node_ipv6}/64 dev {node_if} nodad"),
            format!("link set {node_if} up"),
        ])?;
        netns.ip_batch(&[
            "link set lo up".into(),
            format!("addr add {ipv4}/24 dev eth0"),
            format!("addr add {ipv6}/64 dev eth0 nodad"),
            "link set eth0 up".into(),
            format!("route add default via {node_ipv4} dev eth0"),
            format!("route add ::/0 via {node_ipv6} dev eth0"),
        ])?;
        let node_ifindex = self.node.try_ifindex(&node_if)?;
        Ok(External {
            name: name.to_string(),
            ipv4,
            ipv6,
            node_ipv4,
            node_ipv6,
            node_if,
            node_ifindex,
            netns,
        })
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.stop_all();
        let namespaces = std::mem::take(
            &mut self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .namespaces,
        );
        for name in namespaces
            .iter()
            .rev()
            .chain([&self.node.name().to_string()])
        {
            if let Err(e) = delete_netns(name) {
                // Never panic in drop (it may run during an unwind).
                eprintln!("lab {}: {e:#}", self.id);
            }
        }
    }
}

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        bail!("bad interface name {name:?} (1-15 characters of [A-Za-z0-9_-])");
    }
    Ok(())
}

fn add_netns(name: &str) -> Result<()> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "add", name]);
    netns::output(cmd).map(drop)
}

/// Deletes a named network namespace like `ip netns del`: unmount and remove the
/// file. The namespace itself goes away with its last user (its veths with it).
fn delete_netns(name: &str) -> Result<()> {
    let path = std::path::Path::new(NETNS_DIR).join(name);
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("unmounting {}: {e}", path.display()),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The pid in a lab namespace name `lab<pid>x<n>-...`.
fn lab_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("lab")?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, _) = rest.split_once('-')?;
    counter.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes namespaces of labs whose process no longer exists (crashed runs).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = lab_pid(&name) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Races with another process cleaning the same name are harmless.
        let _ = delete_netns(&name);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn host_if_names_are_calico_like() {
        let a = host_if_name("default", "front");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("cali"));
        assert_eq!(a, host_if_name("default", "front"));
        assert_ne!(a, host_if_name("default", "back"));
        assert_ne!(host_if_name("a.b", "c"), host_if_name("a", "b.c"));
        check_ifname(&a).unwrap();
    }

    #[test]
    fn lab_pid_parses_only_lab_names() {
        assert_eq!(lab_pid("lab123x4-node"), Some(123));
        assert_eq!(lab_pid("lab123x4-pod10"), Some(123));
        assert_eq!(lab_pid("lab123-node"), None);
        assert_eq!(lab_pid("labx4-node"), None);
        assert_eq!(lab_pid("other"), None);
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Lab>();
        check::<Pod>();
        check::<External>();
        check::<Netns>();
        check::<Server>();
    }

    #[test]
    fn addresses() {
        assert_eq!(pod_ipv4(10).to_string(), "10.65.0.10");
        assert_eq!(pod_ipv6(10).to_string(), "fd65::10");
        assert_eq!(pod_ipv6(254).to_string(), "fd65::254");
        assert_eq!(GATEWAY_V6.to_string(), "fe80::ecee:eeff:feee:eeee");
    }
}
