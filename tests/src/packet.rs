//! Crafted Ethernet frames for BPF_PROG_TEST_RUN: IPv4/IPv6 with TCP, UDP,
//! SCTP or ICMP headers. Checksums are left zero: the programs under test
//! parse headers, they do not verify checksums.
use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

/// TCP flag bits.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// ICMP type and code (for ICMP/ICMPv6).
    pub icmp: (u8, u8),
    /// ICMP echo identifier.
    pub icmp_id: u16,
    /// ICMP body after the 8-byte header (an error's quoted packet).
    pub icmp_body: Vec<u8>,
    /// IPv6 extension headers inserted before the L4 header, by next-header
    /// value: 0 hop-by-hop, 43 routing, 60 destination options (8 bytes each),
    /// 44 fragment (offset `fragment_offset`).
    pub ipv6_ext: Vec<u8>,
    /// Fragment offset in 8-byte units (IPv4 header; IPv6 fragment header). A
    /// non-zero offset makes a non-first fragment: no L4 header is written.
    pub fragment_offset: u16,
    /// The more-fragments flag (IPv4 MF; the IPv6 fragment header's M).
    pub more_fragments: bool,
    /// IPv4 identification (low 16 bits) or the IPv6 fragment header's.
    pub frag_id: u32,
}

impl Packet {
    pub fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Packet {
            src,
            dst,
            protocol: TCP,
            src_port,
            dst_port,
            tcp_flags: SYN,
            icmp: (0, 0),
            icmp_id: 1,
            icmp_body: Vec::new(),
            ipv6_ext: Vec::new(),
            fragment_offset: 0,
            more_fragments: false,
            frag_id: 1,
        }
    }
    pub fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Packet {
            protocol: UDP,
            tcp_flags: 0,
            ..Self::tcp(src, src_port, dst, dst_port)
        }
    }
    /// An ICMP (v4) or ICMPv6 message, by the address family.
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, code: u8) -> Self {
        Packet {
            protocol: if src.is_ipv4() { ICMP } else { ICMPV6 },
            tcp_flags: 0,
            icmp: (icmp_type, code),
            ..Self::tcp(src, 0, dst, 0)
        }
    }
    /// An ICMP (v4) or ICMPv6 error quoting `quoted` (its whole IP packet; the
    /// RFCs ask for at least the IP header and 8 bytes of L4).
    pub fn icmp_error(src: IpAddr, dst: IpAddr, icmp_type: u8, code: u8, quoted: &Packet) -> Self {
        Packet {
            icmp_body: quoted.frame()[14..].to_vec(),
            ..Self::icmp(src, dst, icmp_type, code)
        }
    }
    pub fn flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }
    /// Same flow, other way round (ports and addresses swapped).
    pub fn reply(&self) -> Self {
        let mut r = self.clone();
        std::mem::swap(&mut r.src, &mut r.dst);
        std::mem::swap(&mut r.src_port, &mut r.dst_port);
        r
    }
    pub fn with_ipv6_ext(mut self, ext: &[u8]) -> Self {
        self.ipv6_ext = ext.to_vec();
        self
    }
    pub fn fragment(mut self, offset: u16) -> Self {
        self.fragment_offset = offset;
        self
    }
    /// The first fragment (offset 0, more fragments) of datagram `id`.
    pub fn first_fragment(mut self, id: u32) -> Self {
        self.fragment_offset = 0;
        self.more_fragments = true;
        self.frag_id = id;
        self
    }
    /// A later fragment (at `offset`, more fragments or not) of datagram `id`.
    pub fn later_fragment(mut self, id: u32, offset: u16, more: bool) -> Self {
        self.fragment_offset = offset;
        self.more_fragments = more;
        self.frag_id = id;
        self
    }

    /// The frame as it would appear on the wire (Ethernet II).
    pub fn frame(&self) -> Vec<u8> {
        let mut l4 = if self.fragment_offset != 0 {
            vec![0xee; 16] // payload of a later fragment
        } else {
            self.l4()
        };
        let mut next = self.protocol;
        if self.src.is_ipv6() {
            // Build the extension chain back to front.
            for &kind in self.ipv6_ext.iter().rev() {
                let mut h = vec![next, 0];
                if kind == 44 {
                    let more = u16::from(self.more_fragments);
                    h.extend_from_slice(&(self.fragment_offset << 3 | more).to_be_bytes());
                    h.extend_from_slice(&self.frag_id.to_be_bytes());
                } else if kind == 43 {
                    h.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // type 0, segments left 0
                } else {
                    h.extend_from_slice(&[1, 4, 0, 0, 0, 0]); // PadN option
                }
                h.extend_from_slice(&l4);
                l4 = h;
                next = kind;
            }
        }
        let mut f = Vec::with_capacity(14 + 40 + l4.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // dst MAC
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // src MAC
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let total = (20 + l4.len()) as u16;
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&total.to_be_bytes());
                let frag = if self.fragment_offset != 0 || self.more_fragments {
                    self.fragment_offset | if self.more_fragments { 0x2000 } else { 0 }
                } else {
                    0x4000 // DF
                };
                f.extend_from_slice(&(self.frag_id as u16).to_be_bytes());
                f.extend_from_slice(&frag.to_be_bytes());
                f.extend_from_slice(&[64, self.protocol, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[next, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("source and destination must be the same IP family"),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn l4(&self) -> Vec<u8> {
        let ports = [self.src_port.to_be_bytes(), self.dst_port.to_be_bytes()].concat();
        match self.protocol {
            TCP => {
                let mut h = ports;
                h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                h.extend_from_slice(&[0x50, self.tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
                h
            }
            UDP => {
                let mut h = ports;
                h.extend_from_slice(&[0, 8, 0, 0]);
                h
            }
            SCTP => {
                let mut h = ports;
                h.extend_from_slice(&[0; 8]); // verification tag, checksum
                h
            }
            ICMP | ICMPV6 => {
                let mut h = vec![self.icmp.0, self.icmp.1, 0, 0];
                h.extend_from_slice(&self.icmp_id.to_be_bytes());
                h.extend_from_slice(&[0, 1]);
                h.extend_from_slice(&self.icmp_body);
                h
            }
            _ => Vec::new(),
        }
    }
}
