//! Types shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the layout the
//! kernel sees is the layout userspace writes; the tests at the bottom pin sizes
//! and offsets.
#![no_std]

/// Key of the `SLICE_DROP` map: a flow is dropped when its IP protocol and
/// destination port match an entry (the first end-to-end slice).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub protocol: u8,
    pub _pad: u8,
    /// Destination port in host byte order.
    pub port: u16,
}

/// Event emitted on the ring buffer for a dropped packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// Source and destination addresses; IPv4 is stored as an IPv4-mapped IPv6 address.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: [u8; 2],
    /// Interface index the program ran on.
    pub ifindex: u32,
}

/// Per-CPU counters indexed by these constants.
pub mod counter {
    pub const PACKETS: u32 = 0;
    pub const DROPPED: u32 = 1;
    pub const MALFORMED: u32 = 2;
    pub const RINGBUF_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, repr(C), no implicit padding (pinned by the layout tests).
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::DropEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn port_key_layout() {
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(offset_of!(PortKey, port), 2);
    }

    #[test]
    fn drop_event_layout() {
        assert_eq!(size_of::<DropEvent>(), 44);
        assert_eq!(offset_of!(DropEvent, src_port), 32);
        assert_eq!(offset_of!(DropEvent, protocol), 36);
        assert_eq!(offset_of!(DropEvent, ifindex), 40);
    }
}
