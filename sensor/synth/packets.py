"""Byte builders for link, network and transport headers: Ethernet, 802.1Q, Linux SLL, IPv4/6, TCP, UDP."""

from __future__ import annotations

import ipaddress
import struct
import sys
from array import array

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113

# Off-subnet peers are reached through the site router, so their frames carry its MAC.
ROUTER_MAC = bytes.fromhex("020000000001")
_INTERNAL_V4 = ipaddress.ip_network("10.0.0.0/8")

# TCP flag bits.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of data (odd length padded with a zero byte)."""
    if len(data) % 2:
        data += b"\x00"
    words = array("H", data)
    # The one's complement sum is byte-order independent (RFC 1071 2(B)): sum native words, swap once.
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF


def packed(address: str) -> bytes:
    """The 4- or 16-byte wire form of an IPv4 or IPv6 address."""
    return ipaddress.ip_address(address).packed


def mac_for(address: str) -> bytes:
    """A stable, locally administered MAC: internal IPv4 hosts get their own, anything else the router's."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4 and ip in _INTERNAL_V4:
        return b"\x02\x00" + ip.packed
    return ROUTER_MAC


def ethernet(src_mac: bytes, dst_mac: bytes, ethertype: int, payload: bytes) -> bytes:
    """An Ethernet II frame (no FCS, as capture files store it)."""
    return dst_mac + src_mac + struct.pack("!H", ethertype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int, ttl: int = 128) -> bytes:
    """An IPv4 packet with DF set and a correct header checksum."""
    total = 20 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0x4000, ttl, proto, 0, src, dst)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, hop_limit: int = 128) -> bytes:
    """An IPv6 packet without extension headers."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, src, dst) + payload


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram with its checksum over the IPv4/IPv6 pseudo-header."""
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(_pseudo_header(src, dst, IPPROTO_UDP, length) + header + payload) or 0xFFFF
    return header[:6] + struct.pack("!H", csum) + payload


def tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    window: int = 64240,
    options: bytes = b"",
) -> bytes:
    """A TCP segment with its checksum; options must already be padded to a multiple of 4 bytes."""
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0) + options
    csum = checksum(_pseudo_header(src, dst, IPPROTO_TCP, len(header) + len(payload)) + header + payload)
    return header[:16] + struct.pack("!H", csum) + header[18:] + payload


def syn_options(mss: int = 1460) -> bytes:
    """SYN options as Windows sends them: MSS, NOP, window scale 8, NOP, NOP, SACK permitted."""
    return struct.pack("!BBH", 2, 4, mss) + b"\x01\x03\x03\x08\x01\x01\x04\x02"


def to_vlan(frame: bytes, vid: int = 42) -> bytes:
    """Insert one 802.1Q tag (priority 0) after the MAC addresses of an Ethernet frame."""
    return frame[:12] + struct.pack("!HH", ETH_VLAN, vid & 0x0FFF) + frame[12:]


def to_sll(frame: bytes) -> bytes:
    """Rewrite an Ethernet frame as a Linux cooked (SLL) frame, as a promiscuous capture sees it."""
    # Packet type 3 = PACKET_OTHERHOST (unicast between two other hosts); ARPHRD_ETHER = 1.
    return struct.pack("!HHH", 3, 1, 6) + frame[6:12] + b"\x00\x00" + frame[12:]
