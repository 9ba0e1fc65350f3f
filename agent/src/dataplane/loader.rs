//! The policy dataplane: loads `from_endpoint` / `to_endpoint`, attaches them to
//! interfaces, fills the maps (double-buffered tables, one atomic switch per
//! update), reads counters and flow events.
use std::ffi::CString;
use std::net::{IpAddr, Ipv6Addr};

use agent_common::{
    active_flags, event_flags, stat, ActiveTables, CtKey, CtValue, EndpointInfo, FlowEvent,
    RuleKey, Verdict,
};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf,
};

use super::tables::{direction_code, TableSet};
use super::{DataplaneError, EBPF_OBJECT};
use crate::model::ir::Direction;

/// The two programs, by the hook of the endpoint interface's host side they run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress: what the endpoint sends (its egress policy).
    FromEndpoint,
    /// TC egress: what the endpoint receives (its ingress policy).
    ToEndpoint,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::FromEndpoint, Hook::ToEndpoint];

    pub fn program_name(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from_endpoint",
            Hook::ToEndpoint => "to_endpoint",
        }
    }

    pub fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromEndpoint => TcAttachType::Ingress,
            Hook::ToEndpoint => TcAttachType::Egress,
        }
    }

    /// The endpoint policy direction this hook enforces. On a host endpoint's
    /// interface (the host's own) the hooks judge the opposite directions of a
    /// workload's host-side veth: TC ingress carries traffic into the host.
    pub fn direction(self, host_endpoint: bool) -> Direction {
        match (self, host_endpoint) {
            (Hook::FromEndpoint, false) | (Hook::ToEndpoint, true) => Direction::Egress,
            (Hook::ToEndpoint, false) | (Hook::FromEndpoint, true) => Direction::Ingress,
        }
    }

    /// The hook whose packets `direction`'s policy judges.
    pub fn judging(direction: Direction, host_endpoint: bool) -> Hook {
        if Hook::FromEndpoint.direction(host_endpoint) == direction {
            Hook::FromEndpoint
        } else {
            Hook::ToEndpoint
        }
    }
}

/// A flow reported by the kernel (new flow on an endpoint with staged policy, or a
/// denied new flow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    /// Destination port; for ICMP `type << 8 | code`.
    pub dst_port: u16,
    pub protocol: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub direction: Direction,
    pub enforced: Verdict,
    /// The pending (staged) verdict, when the endpoint has staged policy.
    pub pending: Option<Verdict>,
    pub fragment: bool,
    pub timestamp_ns: u64,
}

impl From<&FlowEvent> for FlowRecord {
    fn from(e: &FlowEvent) -> Self {
        let ip = |b: [u8; 16]| {
            let v6 = Ipv6Addr::from(b);
            match (e.ip_version, v6.to_ipv4_mapped()) {
                (4, Some(v4)) => IpAddr::V4(v4),
                _ => IpAddr::V6(v6),
            }
        };
        FlowRecord {
            src: ip(e.src),
            dst: ip(e.dst),
            src_port: e.src_port,
            dst_port: e.dst_port,
            protocol: e.protocol,
            ifindex: e.ifindex,
            endpoint_id: e.endpoint_id,
            direction: if e.direction == direction_code(Direction::Egress) {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            enforced: e.enforced,
            pending: (e.flags & event_flags::HAS_PENDING != 0).then_some(e.pending),
            fragment: e.flags & event_flags::FRAGMENT != 0,
            timestamp_ns: e.timestamp_ns,
        }
    }
}

/// Per-CPU counters summed, indexed by `agent_common::stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; stat::COUNT as usize]);

impl Counters {
    pub fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }
    /// (name, value) pairs in index order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        stat::NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

/// The loaded policy dataplane. Dropping it detaches its links and frees the maps
/// (pinning for restarts is not done yet).
pub struct Dataplane {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn missing(what: &'static str, name: &'static str) -> DataplaneError {
    DataplaneError::Missing { what, name }
}

impl Dataplane {
    /// Loads the object and both programs (through the verifier); attaches nothing.
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
        let events = ebpf
            .take_map("FLOW_EVENTS")
            .ok_or(missing("map", "FLOW_EVENTS"))?;
        let events = RingBuf::try_from(events).map_err(map_err("FLOW_EVENTS"))?;
        let mut this = Dataplane { ebpf, events };
        for hook in Hook::ALL {
            let name = hook.program_name();
            this.program(hook)?
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(this)
    }

    pub fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DataplaneError> {
        let name = hook.program_name();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(missing("program", name))?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Attaches both programs (TCX) to `interface`, the host side of an endpoint's
    /// interface, in the calling thread's network namespace.
    pub fn attach(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let cname =
            CString::new(interface).map_err(|_| DataplaneError::NoInterface(interface.into()))?;
        for hook in Hook::ALL {
            let name = hook.program_name();
            self.program(hook)?
                .attach(cname.as_c_str(), hook.attach_type())
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(())
    }

    /// Polices the interface `ifindex` as endpoint `info` (replaces an earlier entry).
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("ENDPOINTS")
            .ok_or(missing("map", "ENDPOINTS"))?;
        let mut map: HashMap<_, u32, EndpointInfo> =
            HashMap::try_from(map).map_err(map_err("ENDPOINTS"))?;
        map.insert(&ifindex, &info, 0).map_err(map_err("ENDPOINTS"))
    }

    /// Stops policing `ifindex` (its packets pass untouched).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("ENDPOINTS")
            .ok_or(missing("map", "ENDPOINTS"))?;
        let mut map: HashMap<_, u32, EndpointInfo> =
            HashMap::try_from(map).map_err(map_err("ENDPOINTS"))?;
        match map.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("ENDPOINTS")(e)),
        }
    }

    /// The live generation and epoch.
    pub fn active(&self) -> Result<ActiveTables, DataplaneError> {
        let map = self.ebpf.map("ACTIVE").ok_or(missing("map", "ACTIVE"))?;
        let array: Array<_, ActiveTables> = Array::try_from(map).map_err(map_err("ACTIVE"))?;
        array.get(&0, 0).map_err(map_err("ACTIVE"))
    }

    fn set_active(&mut self, value: ActiveTables) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("ACTIVE")
            .ok_or(missing("map", "ACTIVE"))?;
        let mut array: Array<_, ActiveTables> = Array::try_from(map).map_err(map_err("ACTIVE"))?;
        array.set(0, &value, 0).map_err(map_err("ACTIVE"))
    }

    /// Benchmark/test knob: `agent_common::active_flags` (e.g. `NO_CT_INSERT`).
    pub fn set_active_flags(&mut self, flags: u32) -> Result<(), DataplaneError> {
        let mut active = self.active()?;
        active.flags = flags & active_flags::NO_CT_INSERT;
        self.set_active(active)
    }

    /// Writes `tables` into the inactive copy (cleared first), then switches to it
    /// and bumps the epoch in one map write. Returns the new live state. On an error
    /// the live copy is untouched.
    pub fn install(&mut self, tables: &TableSet) -> Result<ActiveTables, DataplaneError> {
        let encoded = tables.encode()?;
        let active = self.active()?;
        let next = active.generation ^ 1;
        let (peers_name, rules_name) = if next == 0 {
            ("PEERS_0", "RULES_0")
        } else {
            ("PEERS_1", "RULES_1")
        };
        {
            let map = self
                .ebpf
                .map_mut(peers_name)
                .ok_or(missing("map", peers_name))?;
            let mut peers: LpmTrie<_, [u8; 16], u32> =
                LpmTrie::try_from(map).map_err(map_err(peers_name))?;
            let old: Vec<Key<[u8; 16]>> = peers
                .keys()
                .collect::<Result<_, _>>()
                .map_err(map_err(peers_name))?;
            for k in &old {
                peers.remove(k).map_err(map_err(peers_name))?;
            }
            for (len, addr, class) in &encoded.peers {
                peers
                    .insert(&Key::new(*len, *addr), class, 0)
                    .map_err(map_err(peers_name))?;
            }
        }
        {
            let map = self
                .ebpf
                .map_mut(rules_name)
                .ok_or(missing("map", rules_name))?;
            let mut rules: LpmTrie<_, RuleKey, Verdict> =
                LpmTrie::try_from(map).map_err(map_err(rules_name))?;
            let old: Vec<Key<RuleKey>> = rules
                .keys()
                .collect::<Result<_, _>>()
                .map_err(map_err(rules_name))?;
            for k in &old {
                rules.remove(k).map_err(map_err(rules_name))?;
            }
            for (len, key, verdict) in &encoded.rules {
                rules
                    .insert(&Key::new(*len, *key), verdict, 0)
                    .map_err(map_err(rules_name))?;
            }
        }
        let live = ActiveTables {
            generation: next,
            epoch: active.epoch.wrapping_add(1),
            ..active
        };
        self.set_active(live)?;
        Ok(live)
    }

    /// The conntrack table (LRU hash), for inspection, flushing and tests.
    pub fn conntrack(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut("CONNTRACK")
            .ok_or(missing("map", "CONNTRACK"))?;
        HashMap::try_from(map).map_err(map_err("CONNTRACK"))
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let map = self
            .ebpf
            .map("DP_COUNTERS")
            .ok_or(missing("map", "DP_COUNTERS"))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err("DP_COUNTERS"))?;
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = array.get(&(i as u32), 0).map_err(map_err("DP_COUNTERS"))?;
            *slot = values.iter().sum();
        }
        Ok(Counters(out))
    }

    /// Flow events waiting on the ring buffer (non-blocking).
    pub fn drain_events(&mut self) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the kernel wrote a FlowEvent; read_unaligned copes with any alignment.
                let event = unsafe { (item.as_ptr() as *const FlowEvent).read_unaligned() };
                out.push(FlowRecord::from(&event));
            }
        }
        out
    }
}
