#!/usr/bin/env python3
"""Writes corpus.txt: hand-crafted frames for tests/tests/bpf_fuzz.rs, one a
line as `<expected class> <name> <hex>` (class: judged, malformed, not-ip).
Run from this directory: python3 make_corpus.py > corpus.txt"""
import ipaddress
import struct

MACS = bytes.fromhex("020000000002020000000001")
POD4, WEB4, OUT4 = "10.65.0.10", "10.65.1.5", "8.8.8.8"
POD6, WEB6 = "fd65::10", "fd66::5"


def a(s):
    return ipaddress.ip_address(s).packed


def eth(ethertype, payload, tags=()):
    t = b"".join(struct.pack("!HH", tpid, 100 + i) for i, tpid in enumerate(tags))
    return MACS + t + struct.pack("!H", ethertype) + payload


def tcp(sport=40000, dport=8000, doff=5, flags=0x02):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, 0xFFFF, 0, 0)


def udp(sport=40000, dport=53):
    return struct.pack("!HHHH", sport, dport, 8, 0)


def icmp(t, c, body=b"", ident=7):
    return struct.pack("!BBHHH", t, c, 0, ident, 1) + body


def v4(proto, l4, src=POD4, dst=WEB4, ihl=5, version=4, frag=0x4000, ident=1, options=b""):
    total = 20 + len(options) + len(l4)
    h = struct.pack("!BBHHHBBH", version << 4 | ihl, 0, total, ident, frag, 64, proto, 0)
    return h + a(src) + a(dst) + options + l4


def v6(next_header, rest, src=POD6, dst=WEB6, version=6):
    h = struct.pack("!IHBB", version << 28, len(rest), next_header, 64)
    return h + a(src) + a(dst) + rest


def opts(next_header, length=0):
    """Hop-by-hop / destination options / routing-sized header of (length+1)*8 bytes."""
    size = (length + 1) * 8
    return bytes([next_header, length, 1, size - 4]) + bytes(size - 4)


def frag6(next_header, offset=0, more=False, ident=0x1234):
    return struct.pack("!BBHI", next_header, 0, offset << 3 | int(more), ident)


def chain(kinds, last, l4):
    """IPv6 extension headers of `kinds` (8 bytes each), then `last` with `l4`."""
    out = l4
    nxt = last
    for k in reversed(kinds):
        out = opts(nxt) + out
        nxt = k
    return nxt, out


C = []


def add(cls, name, frame):
    C.append(f"{cls} {name} {frame.hex()}")


add("judged", "v4-tcp-syn", eth(0x0800, v4(6, tcp())))
add("malformed", "v4-ihl-4", eth(0x0800, v4(6, tcp(), ihl=4)))
add("malformed", "v4-ihl-15-options-cut-short", eth(0x0800, v4(6, b"", ihl=15) + bytes(8)))
add("judged", "v4-ihl-15-with-options", eth(0x0800, v4(6, tcp(), ihl=15, options=b"\x01" * 39 + b"\x00")))
add("malformed", "v4-version-6", eth(0x0800, v4(6, tcp(), version=6)))
add("malformed", "v4-tcp-header-19-bytes", eth(0x0800, v4(6, tcp()[:19])))
add("judged", "v4-tcp-data-offset-0", eth(0x0800, v4(6, tcp(doff=0))))
add("judged", "v4-tcp-data-offset-15-past-the-end", eth(0x0800, v4(6, tcp(doff=15))))
add("malformed", "v4-tiny-first-fragment-8-bytes-of-tcp", eth(0x0800, v4(6, tcp()[:8], frag=0x2000, ident=77)))
add("judged", "v4-later-fragment-offset-1-overlapping-tcp-flags", eth(0x0800, v4(6, tcp()[8:], frag=0x2001, ident=77)))
add("judged", "v4-later-fragment-max-offset", eth(0x0800, v4(17, bytes(16), frag=0x1FFF, ident=78)))
add("judged", "v4-protocol-253-no-payload", eth(0x0800, v4(253, b"")))
add("malformed", "v4-icmp-header-7-bytes", eth(0x0800, v4(1, icmp(8, 0)[:7], dst=OUT4)))
add("judged", "v4-icmp-error-quoting-10-bytes", eth(0x0800, v4(1, icmp(3, 4, v4(6, tcp(), src=WEB4, dst=POD4)[:10]), src=OUT4)))
add("judged", "v4-icmp-error-quoting-ihl-3", eth(0x0800, v4(1, icmp(3, 4, v4(6, tcp(), src=WEB4, dst=POD4, ihl=3)), src=OUT4)))
add("judged", "v4-icmp-error-quoting-an-icmp-error", eth(0x0800, v4(1, icmp(11, 0, v4(1, icmp(3, 1, v4(17, udp()))[:28])), src=OUT4)))
add("malformed", "v6-udp-ports-cut-short", eth(0x86DD, v6(17, udp()[:2])))
# The parser takes 8 steps to reach the upper layer: at most 7 extension headers.
nh, rest = chain([60] * 7, 17, udp())
add("judged", "v6-7-destination-options-then-udp", eth(0x86DD, v6(nh, rest)))
nh, rest = chain([60] * 8, 17, udp())
add("malformed", "v6-8-destination-options", eth(0x86DD, v6(nh, rest)))
nh, rest = chain([0] * 12, 0, b"")
add("malformed", "v6-hop-by-hop-loop", eth(0x86DD, v6(nh, rest)))
add("malformed", "v6-routing-length-255-past-the-end", eth(0x86DD, v6(43, bytes([17, 255, 0, 0, 0, 0, 0, 0]) + udp())))
add("judged", "v6-authentication-header-then-tcp", eth(0x86DD, v6(51, bytes([6, 1]) + bytes(10) + tcp())))
add("judged", "v6-atomic-fragment-udp", eth(0x86DD, v6(44, frag6(17) + udp())))
add("judged", "v6-later-fragment-alone", eth(0x86DD, v6(44, frag6(17, offset=100, ident=0xDEAD) + bytes(16))))
add("judged", "v6-first-then-later-fragment-header", eth(0x86DD, v6(44, frag6(44, more=True) + frag6(17, offset=3) + bytes(16))))
add("malformed", "v6-fragment-header-cut-short", eth(0x86DD, v6(44, frag6(17)[:7])))
add("malformed", "v6-ipv4-mapped-source", eth(0x86DD, v6(17, udp(), src="::ffff:10.65.0.10")))
add("malformed", "v6-ipv4-mapped-destination", eth(0x86DD, v6(6, tcp(dport=443), dst="::ffff:10.65.1.200")))
add("malformed", "v6-version-4", eth(0x86DD, v6(17, udp(), version=4)))
add("judged", "v6-neighbour-solicitation", eth(0x86DD, v6(58, icmp(135, 0, bytes(16)))))
nh, rest = chain([60] * 9, 17, udp())
add("judged", "v6-icmpv6-error-quoting-9-extension-headers", eth(0x86DD, v6(58, icmp(1, 4, v6(nh, rest, src=WEB6, dst=POD6)), src="fd67::1")))
add("judged", "v6-icmpv6-error-quoting-ipv4-mapped", eth(0x86DD, v6(58, icmp(1, 4, v6(17, udp(), src=POD6, dst="::ffff:8.8.8.8")), src="fd67::1")))
add("not-ip", "vlan-802.1q-ipv4", eth(0x0800, v4(6, tcp()), tags=(0x8100,)))
add("not-ip", "qinq-802.1ad-802.1q-ipv6", eth(0x86DD, v6(17, udp()), tags=(0x88A8, 0x8100)))
add("not-ip", "arp", eth(0x0806, bytes(28)))
print("\n".join(C))
