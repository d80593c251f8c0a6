"""Compiled per-packet decoding: link layer, IPv4/IPv6, TCP/UDP, and a first-bytes payload signature."""

from __future__ import annotations

import numba as nb
import numpy as np

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)

# Payload signature classes: what the first bytes of a transport payload look like.
CLS_NONE = 0  # no payload
CLS_OTHER = 1
CLS_TLS_HS = 2  # TLS record, content type 22 (handshake)
CLS_TLS_REC = 3  # TLS record, content type 20/21/23
CLS_SSL2 = 4  # SSLv2-format record header with hello message
CLS_SIP_REQ = 5
CLS_SIP_RESP = 6
CLS_HTTP_REQ = 7
CLS_HTTP_RESP = 8
CLS_STUN = 9  # RFC 5389 STUN (magic cookie)
CLS_STUN_OLD = 10  # RFC 3489 / MS-TURN shaped message without magic cookie
CLS_RTP = 11
CLS_RTCP = 12
CLS_DTLS = 13
NCLS = 16
CLASS_NAMES = (
    "none",
    "other",
    "tls-handshake",
    "tls-record",
    "sslv2-hello",
    "sip-request",
    "sip-response",
    "http-request",
    "http-response",
    "stun",
    "stun-legacy",
    "rtp",
    "rtcp",
    "dtls",
    "",
    "",
)

# Request methods at the start of a first line; both SIP (R2 list) and HTTP methods.
_METHODS = (
    b"INVITE ",
    b"REGISTER ",
    b"SUBSCRIBE ",
    b"NOTIFY ",
    b"MESSAGE ",
    b"INFO ",
    b"OPTIONS ",
    b"BYE ",
    b"CANCEL ",
    b"ACK ",
    b"PRACK ",
    b"UPDATE ",
    b"REFER ",
    b"SERVICE ",
    b"BENOTIFY ",
    b"NEGOTIATE ",
    b"PUBLISH ",
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"PATCH ",
    b"TRACE ",
)
METHOD_TABLE = np.zeros((len(_METHODS), 12), np.uint8)
METHOD_LEN = np.zeros(len(_METHODS), np.int64)
for _i, _m in enumerate(_METHODS):
    METHOD_TABLE[_i, : len(_m)] = np.frombuffer(_m, np.uint8)
    METHOD_LEN[_i] = len(_m)


@nb.njit(cache=True, nogil=True, inline="always")
def be16(buf, p):  # type: ignore[no-untyped-def]
    """The big-endian unsigned 16-bit integer at buf[p]."""
    return (np.int64(buf[p]) << 8) | buf[p + 1]


@nb.njit(cache=True, nogil=True, inline="always")
def be32(buf, p):  # type: ignore[no-untyped-def]
    """The big-endian unsigned 32-bit integer at buf[p]."""
    return (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | buf[p + 3]


@nb.njit(cache=True, nogil=True, inline="always")
def be64(buf, p):  # type: ignore[no-untyped-def]
    """The big-endian unsigned 64-bit integer at buf[p]."""
    return (np.uint64(be32(buf, p)) << np.uint64(32)) | np.uint64(be32(buf, p + 4))


@nb.njit(cache=True, nogil=True, inline="always")
def _undecodable():  # type: ignore[no-untyped-def]
    """decode()'s answer for a packet it cannot take apart (same tuple shape as a decoded one)."""
    return (False, 0, np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0), 0, 0, 0, 0, 0, 0, 0, False, 0, 0, 0)


@nb.njit(cache=True, nogil=True)
def decode(buf, off, caplen, linktype):  # type: ignore[no-untyped-def]
    """Decode one packet to (ok, ipver, src_hi, src_lo, dst_hi, dst_lo, proto, sport, dport,
    payload offset, payload length, tcp flags, ip length, is-fragment, tcp sequence number, fragment offset
    in bytes | more-fragments flag << 32, fragment id).

    IPv4 addresses are returned IPv4-mapped (::ffff:a.b.c.d) so one 128-bit key space holds both. For a
    fragment (IPv4 offset or MF set; an IPv6 Fragment header with offset or M set) nothing past the IP header
    is read: the payload offset and length are the fragment's data, for the stream layer to reassemble.
    """
    end = off + caplen
    p = off
    etype = -1
    if linktype == 1:  # Ethernet, with up to two 802.1Q/802.1ad tags
        if caplen < 14:
            return _undecodable()
        etype = be16(buf, p + 12)
        p += 14
        for _ in range(3):
            if (etype == 0x8100 or etype == 0x88A8 or etype == 0x9100) and p + 4 <= end:
                etype = be16(buf, p + 2)
                p += 4
    elif linktype == 113:  # Linux cooked v1
        if caplen < 16:
            return _undecodable()
        etype = be16(buf, p + 14)
        p += 16
    elif linktype == 276:  # Linux cooked v2
        if caplen < 20:
            return _undecodable()
        etype = be16(buf, p)
        p += 20
    elif linktype == 0:  # BSD loopback: 4-byte address family in host order
        if caplen < 4:
            return _undecodable()
        fam = buf[p] if buf[p] != 0 else buf[p + 3]
        etype = 0x0800 if fam == 2 else 0x86DD
        p += 4
    else:  # raw IP (12, 101, 228, 229): version nibble decides
        if caplen < 1:
            return _undecodable()
        etype = 0x0800 if (buf[p] >> 4) == 4 else 0x86DD
    if etype == 0x0800:
        if p + 20 > end or (buf[p] >> 4) != 4:
            return _undecodable()
        ihl = (buf[p] & 0x0F) * 4
        iplen = be16(buf, p + 2)
        fword = be16(buf, p + 6)
        frag_off = (fword & 0x1FFF) * 8
        frag_mf = (fword >> 13) & 1
        frag_id = be16(buf, p + 4)
        proto = buf[p + 9]
        mapped = np.uint64(0x0000FFFF00000000)
        s_lo = mapped | np.uint64(be32(buf, p + 12))
        d_lo = mapped | np.uint64(be32(buf, p + 16))
        s_hi = np.uint64(0)
        d_hi = np.uint64(0)
        ipver = 4
        l4 = p + ihl
        l4end = p + iplen if iplen >= ihl and p + iplen <= end else end
        is_frag = frag_off != 0 or frag_mf != 0
    elif etype == 0x86DD:
        if p + 40 > end:
            return _undecodable()
        iplen = be16(buf, p + 4) + 40
        proto = buf[p + 6]
        s_hi = be64(buf, p + 8)
        s_lo = be64(buf, p + 16)
        d_hi = be64(buf, p + 24)
        d_lo = be64(buf, p + 32)
        ipver = 6
        l4 = p + 40
        l4end = p + iplen if p + iplen <= end else end
        is_frag = False
        frag_off = 0
        frag_mf = 0
        frag_id = 0
        for _ in range(6):  # walk extension headers
            if proto == 0 or proto == 43 or proto == 60:
                if l4 + 8 > end:
                    break
                proto = buf[l4]
                l4 += (buf[l4 + 1] + 1) * 8
            elif proto == 44:  # fragment header
                if l4 + 8 > end:
                    break
                fword = be16(buf, l4 + 2)
                frag_off = (fword >> 3) * 8
                frag_mf = fword & 1
                frag_id = be32(buf, l4 + 4)
                is_frag = frag_off != 0 or frag_mf != 0
                proto = buf[l4]
                l4 += 8
            else:
                break
    else:
        return _undecodable()
    if is_frag:
        if l4 > l4end:
            return _undecodable()
        fr = frag_off | (frag_mf << 32)
        return (True, ipver, s_hi, s_lo, d_hi, d_lo, proto, 0, 0, l4, l4end - l4, 0, iplen, True, 0, fr, frag_id)
    sport = 0
    dport = 0
    flags = 0
    seq = 0
    poff = l4end
    plen = 0
    if proto == 6 and l4 + 20 <= end:
        sport = be16(buf, l4)
        dport = be16(buf, l4 + 2)
        seq = be32(buf, l4 + 4)
        doff = (buf[l4 + 12] >> 4) * 4
        flags = buf[l4 + 13]
        poff = l4 + doff
        plen = l4end - poff
    elif proto == 17 and l4 + 8 <= end:
        sport = be16(buf, l4)
        dport = be16(buf, l4 + 2)
        poff = l4 + 8
        ulen = be16(buf, l4 + 4) - 8
        plen = l4end - poff
        if 0 <= ulen < plen:
            plen = ulen
    elif proto != 6 and proto != 17:
        return (False, ipver, s_hi, s_lo, d_hi, d_lo, proto, 0, 0, 0, 0, 0, iplen, False, 0, 0, 0)
    if plen < 0:
        plen = 0
    return (True, ipver, s_hi, s_lo, d_hi, d_lo, proto, sport, dport, poff, plen, flags, iplen, False, seq, 0, 0)


@nb.njit(cache=True, nogil=True)
def _line_has(buf, p, n, a, b, c, d):  # type: ignore[no-untyped-def]
    """True when the first line of buf[p:p+n] contains the 4 bytes a b c d ('SIP/' or 'HTTP')."""
    lim = n if n < 512 else 512
    for i in range(lim - 3):
        ch = buf[p + i]
        if ch == 13 or ch == 10:
            return False
        if ch == a and buf[p + i + 1] == b and buf[p + i + 2] == c and buf[p + i + 3] == d:
            return True
    return False


@nb.njit(cache=True, nogil=True, inline="always")
def _legacy_stun_type(t):  # type: ignore[no-untyped-def]
    """RFC 3489 / [MS-TURN] message types (Binding, Allocate, Send, Data indication ... and their answers):
    MS-TURN messages carry no RFC 5389 magic cookie, so the type is what identifies them."""
    return t in (0x0001, 0x0101, 0x0111, 0x0003, 0x0103, 0x0113, 0x0004, 0x0104, 0x0114, 0x0115, 0x0116, 0x0117)


@nb.njit(cache=True, nogil=True)
def classify(buf, p, n, proto, table, lens):  # type: ignore[no-untyped-def]
    """Signature of a transport payload from its first bytes (see CLS_*)."""
    if n <= 0:
        return CLS_NONE
    b0 = buf[p]
    if n >= 5 and buf[p + 1] == 3 and buf[p + 2] <= 4 and (b0 == 22 or b0 == 20 or b0 == 21 or b0 == 23):
        return CLS_TLS_HS if b0 == 22 else CLS_TLS_REC
    if proto == 17 and n >= 13 and 20 <= b0 <= 25 and buf[p + 1] == 0xFE and buf[p + 2] >= 0xFD:
        return CLS_DTLS
    if proto == 6 and n >= 5 and (b0 & 0x80) and (buf[p + 2] == 1 or buf[p + 2] == 4):
        # SSLv2 record: 2-byte length with MSB set, then CLIENT-HELLO (1) or SERVER-HELLO (4) and a version
        ln = ((b0 & 0x7F) << 8) | buf[p + 1]
        ver = be16(buf, p + 3)
        if ln >= 9 and (ver == 0x0002 or (ver >> 8) == 3):
            return CLS_SSL2
    if 65 <= b0 <= 90:  # ASCII upper case: SIP or HTTP first line
        if (
            n >= 8
            and b0 == 83
            and buf[p + 1] == 73
            and buf[p + 2] == 80
            and buf[p + 3] == 47
            and buf[p + 4] == 50
            and buf[p + 5] == 46
            and buf[p + 6] == 48
            and buf[p + 7] == 32
        ):
            return CLS_SIP_RESP  # 'SIP/2.0 '
        if (
            n >= 8
            and b0 == 72
            and buf[p + 1] == 84
            and buf[p + 2] == 84
            and buf[p + 3] == 80
            and buf[p + 4] == 47
            and buf[p + 5] == 49
        ):
            return CLS_HTTP_RESP  # 'HTTP/1'
        for m in range(table.shape[0]):
            ml = lens[m]
            if n < ml + 8:
                continue
            ok = True
            for j in range(ml):
                if buf[p + j] != table[m, j]:
                    ok = False
                    break
            if ok:
                if _line_has(buf, p, n, 83, 73, 80, 47):
                    return CLS_SIP_REQ
                if _line_has(buf, p, n, 72, 84, 84, 80):
                    return CLS_HTTP_REQ
                return CLS_OTHER
        return CLS_OTHER
    if proto == 6 and (b0 == 2 or b0 == 3) and buf[p + 1] == 0 and n >= 24:
        # [MS-TURN] TCP framing: type (2 control, 3 end-to-end data), reserved, 16-bit length, then the message
        inner = be16(buf, p + 4)
        if b0 == 3 or _legacy_stun_type(inner):
            return CLS_STUN_OLD
    if (b0 & 0xC0) == 0 and n >= 20:
        mlen = be16(buf, p + 2)
        if mlen <= 4096:  # MS-TURN lengths need not be multiples of 4
            if be32(buf, p + 4) == 0x2112A442:
                return CLS_STUN
            # RFC 3489 / MS-TURN messages carry no magic cookie; accept the known message types only.
            # The length may exceed a truncated capture, so it is not required to fit.
            mtype = be16(buf, p)
            if _legacy_stun_type(mtype):
                return CLS_STUN_OLD
        return CLS_OTHER
    if (b0 & 0xC0) == 0x80 and n >= 8 and proto == 17:
        b1 = buf[p + 1]
        # RFC 5761 §4: RTCP packet types 192-223 collide with RTP payload types 64-95 plus the marker bit,
        # which is why those payload types are not used when RTP and RTCP share a port.
        if 192 <= b1 <= 223:
            return CLS_RTCP
        if n >= 12:
            return CLS_RTP
    return CLS_OTHER
