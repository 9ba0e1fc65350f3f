//! The first end-to-end slice: drop flows whose (protocol, destination port)
//! userspace lists in `SLICE_DROP`, and read the drop events.
use std::ffi::CString;
use std::net::{IpAddr, Ipv6Addr};

use agent_common::{counter, DropEvent, PortKey};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf,
};

use super::{DataplaneError, EBPF_OBJECT};

pub const PROGRAM: &str = "slice_drop";

/// A loaded slice program. Links are detached when it is dropped.
pub struct SliceDropper {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

/// A drop reported by the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub ifindex: u32,
}

impl From<&DropEvent> for Drop {
    fn from(e: &DropEvent) -> Self {
        let ip = |b: [u8; 16]| {
            let v6 = Ipv6Addr::from(b);
            if e.ip_version == 4 {
                IpAddr::V4(
                    v6.to_ipv4_mapped()
                        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                )
            } else {
                IpAddr::V6(v6)
            }
        };
        Drop {
            src: ip(e.src),
            dst: ip(e.dst),
            src_port: e.src_port,
            dst_port: e.dst_port,
            protocol: e.protocol,
            ifindex: e.ifindex,
        }
    }
}

impl SliceDropper {
    /// Loads the object and the program (through the verifier); attaches nothing yet.
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
        let events = ebpf.take_map("EVENTS").ok_or(DataplaneError::Missing {
            what: "map",
            name: "EVENTS",
        })?;
        let events = RingBuf::try_from(events).map_err(|source| DataplaneError::Map {
            name: "EVENTS",
            source,
        })?;
        let mut this = SliceDropper { ebpf, events };
        this.program()?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: PROGRAM,
                source,
            })?;
        Ok(this)
    }

    pub fn program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        let missing = DataplaneError::Missing {
            what: "program",
            name: PROGRAM,
        };
        let program = self.ebpf.program_mut(PROGRAM).ok_or(missing)?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program {
                name: PROGRAM,
                source,
            })
    }

    /// Attaches (TCX) to `interface` in the calling thread's network namespace.
    pub fn attach(&mut self, interface: &str, hook: TcAttachType) -> Result<(), DataplaneError> {
        let name =
            CString::new(interface).map_err(|_| DataplaneError::NoInterface(interface.into()))?;
        self.program()?
            .attach(name.as_c_str(), hook)
            .map_err(|source| DataplaneError::Program {
                name: PROGRAM,
                source,
            })?;
        Ok(())
    }

    /// Drops new packets of `protocol` to destination `port` from now on.
    pub fn drop_port(&mut self, protocol: u8, port: u16) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("SLICE_DROP")
            .ok_or(DataplaneError::Missing {
                what: "map",
                name: "SLICE_DROP",
            })?;
        let mut map: HashMap<_, PortKey, u8> =
            HashMap::try_from(map).map_err(|source| DataplaneError::Map {
                name: "SLICE_DROP",
                source,
            })?;
        let key = PortKey {
            protocol,
            _pad: 0,
            port,
        };
        map.insert(&key, &1, 0)
            .map_err(|source| DataplaneError::Map {
                name: "SLICE_DROP",
                source,
            })
    }

    /// Drop events waiting on the ring buffer (non-blocking).
    pub fn drain_events(&mut self) -> Vec<Drop> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<DropEvent>() {
                // SAFETY: the kernel wrote a DropEvent; read_unaligned copes with any alignment.
                let event = unsafe { (item.as_ptr() as *const DropEvent).read_unaligned() };
                out.push(Drop::from(&event));
            }
        }
        out
    }

    /// Sum over CPUs of one of the `agent_common::counter` slots.
    pub fn counter(&self, index: u32) -> Result<u64, DataplaneError> {
        let map = self.ebpf.map("COUNTERS").ok_or(DataplaneError::Missing {
            what: "map",
            name: "COUNTERS",
        })?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map {
                name: "COUNTERS",
                source,
            })?;
        let values = array.get(&index, 0).map_err(|source| DataplaneError::Map {
            name: "COUNTERS",
            source,
        })?;
        Ok(values.iter().sum())
    }

    pub fn dropped(&self) -> Result<u64, DataplaneError> {
        self.counter(counter::DROPPED)
    }
}
