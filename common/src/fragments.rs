//! Fragment tracking (`FRAGMENTS`): what a datagram's first fragment carried.

/// Key of `FRAGMENTS`: one fragmented IP datagram, as its fragments identify it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// IPv4 is stored IPv4-mapped, as everywhere.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification (16 bits), or the IPv6 fragment header's.
    pub id: u32,
    /// IPv4 protocol, or the IPv6 fragment header's next header.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Value of `FRAGMENTS`: what the datagram's first fragment (offset 0, more
/// fragments) carried, for its later fragments, which have no L4 header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragValue {
    /// Conntrack ports and table-lookup port, as parsed from the first fragment.
    pub ct_sport: u16,
    pub ct_dport: u16,
    pub judge_port: u16,
    /// Upper-layer protocol (IPv6: after the extension headers of the first fragment).
    pub protocol: u8,
    /// 1 when the datagram is tracked in conntrack (not: ICMP other than echo).
    pub track: u8,
    /// `bpf_ktime_get_coarse_ns` when the first fragment was seen.
    pub seen_ns: u64,
}
