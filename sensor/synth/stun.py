"""STUN (RFC 5389) and MS-TURN messages: binding, allocate, attributes, and the MS-TURN TCP framing."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Sequence

MAGIC_COOKIE = 0x2112A442
# [MS-TURN] 2.2.2.8: the Magic Cookie attribute (type 0x000F) carries this value and comes first.
MS_TURN_MAGIC_COOKIE = 0x72C64BC6

BINDING_REQUEST, BINDING_RESPONSE = 0x0001, 0x0101
ALLOCATE_REQUEST, ALLOCATE_RESPONSE = 0x0003, 0x0103

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_LIFETIME = 0x000D
ATTR_MAGIC_COOKIE = 0x000F
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_MS_VERSION = 0x8008  # [MS-TURN] 2.2.2.17
ATTR_MS_XOR_MAPPED_ADDRESS = 0x8020  # [MS-TURN] 2.2.2.16
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_MS_SEQUENCE_NUMBER = 0x8050  # [MS-TURN] 2.2.2.21

# [MS-TURN] 2.1.4: over TCP every TURN message is framed: type (0x02 control, 0x03 data), 0, length.
TCP_FRAME_CONTROL, TCP_FRAME_DATA = 0x02, 0x03


def attribute(attr_type: int, value: bytes) -> bytes:
    """One TLV attribute, value padded to a multiple of 4 bytes (length field excludes the padding)."""
    return struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)


def _address(ip: bytes, port: int) -> bytes:
    return struct.pack("!BBH", 0, 1, port) + ip


def xor_address(ip: bytes, port: int) -> bytes:
    """IPv4 X-address: port and address XOR-ed with the RFC 5389 magic cookie."""
    x_ip = (int.from_bytes(ip, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
    return struct.pack("!BBH", 0, 1, port ^ (MAGIC_COOKIE >> 16)) + x_ip


def message(msg_type: int, txid: bytes, attrs: Sequence[bytes], fingerprint: bool = True) -> bytes:
    """An RFC 5389 message (magic cookie, 96-bit transaction id), optionally closed by a FINGERPRINT."""
    body = b"".join(attrs)
    if fingerprint:
        head = struct.pack("!HHI", msg_type, len(body) + 8, MAGIC_COOKIE) + txid
        crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attribute(ATTR_FINGERPRINT, struct.pack("!I", crc))
    return struct.pack("!HHI", msg_type, len(body), MAGIC_COOKIE) + txid + body


def binding_request(txid: bytes) -> bytes:
    """An RFC 5389 Binding request with Lync's SOFTWARE attribute."""
    return message(BINDING_REQUEST, txid, [attribute(ATTR_SOFTWARE, b"Microsoft Lync 2013")])


def binding_response(txid: bytes, mapped_ip: bytes, mapped_port: int) -> bytes:
    """An RFC 5389 Binding success response carrying the XOR-MAPPED-ADDRESS."""
    mapped = attribute(ATTR_XOR_MAPPED_ADDRESS, xor_address(mapped_ip, mapped_port))
    return message(BINDING_RESPONSE, txid, [mapped])


def ms_turn_message(msg_type: int, txid: bytes, attrs: Sequence[bytes]) -> bytes:
    """An MS-TURN message: draft-STUN-02 header (128-bit transaction id), Magic Cookie attribute first."""
    body = attribute(ATTR_MAGIC_COOKIE, struct.pack("!I", MS_TURN_MAGIC_COOKIE)) + b"".join(attrs)
    return struct.pack("!HH", msg_type, len(body)) + txid + body


def ms_turn_allocate_request(rng: random.Random, txid: bytes, ms_version: int = 6) -> bytes:
    """Authenticated Allocate request: MS-VERSION, USERNAME (opaque token), MESSAGE-INTEGRITY."""
    return ms_turn_message(
        ALLOCATE_REQUEST,
        txid,
        [
            attribute(ATTR_MS_VERSION, struct.pack("!I", ms_version)),
            attribute(ATTR_USERNAME, rng.randbytes(56)),
            attribute(ATTR_MESSAGE_INTEGRITY, rng.randbytes(20)),
        ],
    )


def ms_turn_allocate_response(
    rng: random.Random,
    txid: bytes,
    relayed: tuple[bytes, int],
    mapped: tuple[bytes, int],
    ms_version: int = 6,
) -> bytes:
    """Allocate response: relayed address, XOR mapped address, lifetime, MS-VERSION, MESSAGE-INTEGRITY."""
    return ms_turn_message(
        ALLOCATE_RESPONSE,
        txid,
        [
            attribute(ATTR_MAPPED_ADDRESS, _address(*relayed)),
            attribute(ATTR_MS_XOR_MAPPED_ADDRESS, xor_address(*mapped)),
            attribute(ATTR_LIFETIME, struct.pack("!I", 480)),
            attribute(ATTR_MS_VERSION, struct.pack("!I", ms_version)),
            attribute(ATTR_MS_SEQUENCE_NUMBER, rng.randbytes(20) + struct.pack("!I", 1)),
            attribute(ATTR_MESSAGE_INTEGRITY, rng.randbytes(20)),
        ],
    )


def tcp_frame(msg: bytes, kind: int = TCP_FRAME_CONTROL) -> bytes:
    """MS-TURN TCP framing header in front of one message."""
    return struct.pack("!BBH", kind, 0, len(msg)) + msg
