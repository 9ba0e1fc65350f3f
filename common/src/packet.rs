//! Packet facts the kernel's parser, its conntrack and the timeouts share: IP
//! protocol numbers and TCP flag bits.

/// IP protocol numbers (IPv4 protocol, IPv6 upper-layer next header).
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// Protocols whose header starts with a source and a destination port
    /// (what port rules and source-port classes apply to).
    #[inline(always)]
    pub const fn has_ports(protocol: u8) -> bool {
        matches!(protocol, TCP | UDP | SCTP | UDPLITE)
    }
}

/// Bits of the TCP header's flags byte (offset 13) that conntrack follows.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}
