"""DTLS hellos from one UDP datagram: does the ClientHello or ServerHello carry use_srtp (RFC 5764)?

A DTLS record (RFC 6347 §4.1) is type, version (0xFEFF 1.0, 0xFEFD 1.2, 0xFEFC 1.3), epoch, 48-bit
sequence number and length; several records can share a datagram. A handshake message adds a message
sequence number and a fragment offset and length (§4.2.2); only a first fragment is read.
"""

from __future__ import annotations

CT_HANDSHAKE = 22
HS_CLIENT_HELLO, HS_SERVER_HELLO = 1, 2
EXT_USE_SRTP = 0x000E


def is_dtls(data: bytes) -> bool:
    """RFC 7983 demultiplexing: first byte 20..63, then a DTLS version."""
    return len(data) >= 13 and 20 <= data[0] <= 63 and data[1] == 0xFE and data[2] >= 0xFC


def _has_ext(body: bytes, pos: int, ext: int) -> bool:
    if pos + 2 > len(body):
        return False
    end = min(len(body), pos + 2 + int.from_bytes(body[pos : pos + 2], "big"))
    pos += 2
    while pos + 4 <= end:
        if ((body[pos] << 8) | body[pos + 1]) == ext:
            return True
        pos += 4 + ((body[pos + 2] << 8) | body[pos + 3])
    return False


def _hello_uses_srtp(mtype: int, body: bytes) -> bool:
    pos = 34  # version and random
    if pos >= len(body):
        return False
    pos += 1 + body[pos]  # session id
    if mtype == HS_CLIENT_HELLO:
        if pos >= len(body):
            return False
        pos += 1 + body[pos]  # cookie (RFC 6347 §4.2.1)
        if pos + 2 > len(body):
            return False
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
        if pos >= len(body):
            return False
        pos += 1 + body[pos]  # compression methods
    else:
        pos += 3  # cipher suite and compression method
    return _has_ext(body, pos, EXT_USE_SRTP)


def uses_srtp(data: bytes) -> bool:
    """True when a hello in this datagram offers or selects the use_srtp extension."""
    pos, n = 0, len(data)
    while pos + 13 <= n and is_dtls(data[pos : pos + 13]):
        ln = (data[pos + 11] << 8) | data[pos + 12]
        rec = pos + 13
        # the handshake header must be in the datagram, whatever the record length claims (a cut datagram)
        if data[pos] == CT_HANDSHAKE and data[pos + 3 : pos + 5] == b"\x00\x00" and ln >= 12 and rec + 12 <= n:
            mtype = data[rec]
            frag_off = int.from_bytes(data[rec + 6 : rec + 9], "big")
            frag_len = int.from_bytes(data[rec + 9 : rec + 12], "big")
            hello = mtype in (HS_CLIENT_HELLO, HS_SERVER_HELLO) and frag_off == 0
            if hello and _hello_uses_srtp(mtype, data[rec + 12 : rec + 12 + frag_len]):
                return True
        pos = rec + ln
    return False
