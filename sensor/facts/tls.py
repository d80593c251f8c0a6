"""TLS and SSLv2 handshake facts from the reassembled bytes of both directions of one TCP stream.

Records span segments and handshake messages span records (RFC 5246 §6.2.1), so each direction is read
as a record stream, and handshake fragments are joined before messages are split. Once a direction sent
ChangeCipherSpec its handshake records are encrypted (Finished) and are not read as messages, as
Wireshark does; TLS 1.3 encrypts everything after ServerHello.
"""

from __future__ import annotations

import struct

from sensor.facts.tls_facts import (
    HS_CERTIFICATE,
    HS_CERTIFICATE_REQUEST,
    HS_CLIENT_HELLO,
    HS_SERVER_HELLO,
    HS_SERVER_HELLO_DONE,
    SSL2_CLIENT_MASTER_KEY,
    SSL2_SERVER_HELLO,
    TlsFacts,
)
from sensor.facts.x509names import cert_names

CT_CCS, CT_ALERT, CT_HANDSHAKE, CT_APPDATA = 20, 21, 22, 23
_HEADER = struct.Struct("!BBBH")
SSL2_CLIENT_HELLO = 1
EXT_SERVER_NAME, EXT_SUPPORTED_VERSIONS = 0x0000, 0x002B
MAX_RECORD = (1 << 14) + 2048  # RFC 5246 §6.2.3: TLSCiphertext.length
GREASE_OR_DRAFT = 0x7F00  # supported_versions at or above this are GREASE (RFC 8701) or drafts
# RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def record_at(data: bytes, pos: int) -> bool:
    """A plausible TLS record header (content type 20..23, version 3.x) at pos."""
    return (
        len(data) >= pos + 5
        and 20 <= data[pos] <= 23
        and data[pos + 1] == 3
        and data[pos + 2] <= 4
        and ((data[pos + 3] << 8) | data[pos + 4]) <= MAX_RECORD
    )


def sslv2_at(data: bytes, pos: int = 0) -> bool:
    """An SSLv2 record with a 2-byte header carrying CLIENT-HELLO, CLIENT-MASTER-KEY or SERVER-HELLO."""
    if len(data) < pos + 5 or not data[pos] & 0x80:
        return False
    kind = data[pos + 2]
    if kind == SSL2_SERVER_HELLO:
        return len(data) >= pos + 7 and data[pos + 5] == 0x00 and data[pos + 6] == 0x02
    return kind in (SSL2_CLIENT_HELLO, SSL2_CLIENT_MASTER_KEY) and (data[pos + 3] == 0x00 or data[pos + 3] == 3)


def starts_tls(data: bytes) -> bool:
    """True if data starts with a TLS record header or an SSLv2 hello."""
    return record_at(data, 0) or sslv2_at(data, 0)


def _extensions(body: bytes, pos: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    if pos + 2 > len(body):
        return out
    end = min(len(body), pos + 2 + int.from_bytes(body[pos : pos + 2], "big"))
    pos += 2
    while pos + 4 <= end:
        et = (body[pos] << 8) | body[pos + 1]
        ln = (body[pos + 2] << 8) | body[pos + 3]
        out.setdefault(et, body[pos + 4 : pos + 4 + ln])
        pos += 4 + ln
    return out


def _client_hello(f: TlsFacts, body: bytes, record_version: str) -> None:
    if f.client_hello_seen or len(body) < 35:
        return
    f.client_hello_seen = True
    f.record_version = record_version
    f.client_version = _hex(body[0:2])
    hv = (body[0] << 8) | body[1]
    pos = 34
    sid_len = body[pos]
    sid = body[pos + 1 : pos + 1 + sid_len]
    f.client_session_id = sid.hex() or None
    pos += 1 + sid_len
    if pos + 2 > len(body):
        f.client_max = hv
        return
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher suites
    if pos < len(body):
        pos += 1 + body[pos]  # compression methods
    ext = _extensions(body, pos)
    offered: list[int] = []
    sv = ext.get(EXT_SUPPORTED_VERSIONS)
    if sv:
        for i in range(1, min(len(sv), 1 + sv[0]) - 1, 2):
            v = (sv[i] << 8) | sv[i + 1]
            if v < GREASE_OR_DRAFT:
                offered.append(v)
    f.client_max = max(offered) if offered else hv
    sni = ext.get(EXT_SERVER_NAME)
    if sni and len(sni) >= 5 and sni[2] == 0:
        n = (sni[3] << 8) | sni[4]
        f.sni = sni[5 : 5 + n].decode("ascii", "replace") or None


def _server_hello(f: TlsFacts, body: bytes) -> bool:
    """Read a ServerHello; True when it selects TLS 1.3 (everything after it is encrypted)."""
    if len(body) < 38:
        return False
    if body[2:34] == HRR_RANDOM:
        f.hello_retry = True
    if f.server_hello_seen:
        return f.server_version is not None and f.server_version >= 0x0304
    f.server_hello_seen = True
    version = (body[0] << 8) | body[1]
    pos = 34
    sid_len = body[pos]
    f.server_session_id = body[pos + 1 : pos + 1 + sid_len].hex() or None
    pos += 1 + sid_len
    if pos + 2 <= len(body):
        f.cipher = "0x" + format((body[pos] << 8) | body[pos + 1], "04X")
    ext = _extensions(body, pos + 3)
    sv = ext.get(EXT_SUPPORTED_VERSIONS)
    if sv and len(sv) >= 2:
        version = (sv[0] << 8) | sv[1]
    f.server_version = version
    return version >= 0x0304


def _certificate(f: TlsFacts, body: bytes, server: bool) -> None:
    if len(body) < 3:
        return
    total = int.from_bytes(body[0:3], "big")
    if server:
        f.server_certs = total
        if total >= 3 and len(body) >= 6:
            n = int.from_bytes(body[3:6], "big")
            if 6 + n <= len(body):
                for name in cert_names(bytes(body[6 : 6 + n])):
                    if name not in f.cert_names:
                        f.cert_names.append(name)
    else:
        f.client_certs = total


def _ssl2(f: TlsFacts, data: bytes, server: bool) -> int:
    """SSLv2 records (2-byte headers): the hellos and CLIENT-MASTER-KEY are clear; the rest is encrypted."""
    pos, n = 0, len(data)
    types = f.server_types if server else f.client_types
    clear = True
    while pos + 2 <= n and data[pos] & 0x80:
        ln = ((data[pos] & 0x7F) << 8) | data[pos + 1]
        end = pos + 2 + ln
        if end > n or ln == 0:
            break
        body = data[pos + 2 : end]
        kind = body[0]
        if clear and not server and kind == SSL2_CLIENT_HELLO and not f.client_hello_seen and ln >= 9:
            types.append(kind)
            f.client_hello_seen = True
            f.sslv2_client_hello = True
            f.record_version = "0x0002"
            f.client_version = _hex(body[1:3])
            f.client_max = (body[1] << 8) | body[2]
        elif clear and not server and kind == SSL2_CLIENT_MASTER_KEY and ln >= 4:
            types.append(kind)
            f.cipher = "0x" + body[1:4].hex().upper()
            clear = False
        elif clear and server and kind == SSL2_SERVER_HELLO and ln >= 11:
            types.append(kind)
            f.sslv2_server_hello = True
            f.server_hello_seen = True
            f.server_version = 0x0002
            f.server_certs = 1 if (body[5] << 8) | body[6] else 0
            clear = False
        else:
            clear = False
        pos = end
    return pos


def read_direction(f: TlsFacts, data: bytes, server: bool) -> int:  # noqa: C901 - one TLS record-layer state machine
    """Read one direction's records into f; returns the offset where the TLS records end."""
    if not data:
        return 0
    if not record_at(data, 0):
        if sslv2_at(data, 0):
            # A client's SSLv2-format hello may be answered in TLS records (MS-TURN pseudo-TLS does so).
            end = _ssl2(f, data, server)
            if server or not record_at(data, end):
                return end
            data = data[end:]
            base = end
        else:
            return 0
    else:
        base = 0
    pos, n = 0, len(data)
    types = f.server_types if server else f.client_types
    pending = b""
    encrypted = False
    last_type = -1
    unpack = _HEADER.unpack_from
    while pos + 5 <= n:
        ct, major, minor, ln = unpack(data, pos)
        if ct < CT_CCS or ct > CT_APPDATA or major != 3 or minor > 4 or ln > MAX_RECORD:
            break
        end = pos + 5 + ln
        if end > n:
            break
        if ct == CT_HANDSHAKE:
            if encrypted and not (not server and ln >= 4 and data[pos + 5] == HS_CLIENT_HELLO and not pending):
                pos = end  # Finished (or TLS 1.3 traffic) under the new keys
                continue
            # Messages are read in place; only a message spanning records is joined in `pending`.
            if pending:
                buf, p, stop = pending + data[pos + 5 : end], 0, len(pending) + ln
            else:
                buf, p, stop = data, pos + 5, end
            while p + 4 <= stop:
                mlen = (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
                if p + 4 + mlen > stop:
                    break
                mtype = buf[p]
                body = buf[p + 4 : p + 4 + mlen]
                p += 4 + mlen
                types.append(mtype)
                if server:
                    if mtype == HS_SERVER_HELLO:
                        if _server_hello(f, body) and body[2:34] != HRR_RANDOM:
                            encrypted = True  # TLS 1.3: everything after the real ServerHello
                    elif mtype == HS_CERTIFICATE:
                        _certificate(f, body, True)
                    elif mtype == HS_CERTIFICATE_REQUEST:
                        f.cert_requested = True
                    elif mtype == HS_SERVER_HELLO_DONE:
                        f.server_flight_done = True
                        if last_type == HS_SERVER_HELLO:
                            f.server_hello_done_with_hello = True
                else:
                    if mtype == HS_CLIENT_HELLO:
                        _client_hello(f, body, _hex(data[pos + 1 : pos + 3]))
                        encrypted = False
                    elif mtype == HS_CERTIFICATE:
                        _certificate(f, body, False)
                last_type = mtype
            pending = buf[p:stop]
        elif ct == CT_CCS:
            # After a HelloRetryRequest the server's compatibility CCS comes before its real ServerHello,
            # which is still in clear (RFC 8446 §D.4).
            encrypted = not (server and f.hello_retry and types.count(HS_SERVER_HELLO) == 1)
            if server:
                f.server_ccs = True
                f.server_flight_done = True  # resumption: the flight ends in ChangeCipherSpec
            else:
                f.client_ccs = True
        elif ct == CT_ALERT:
            if not encrypted and ln == 2:
                f.alert = str(data[pos + 6])
        elif ct == CT_APPDATA:
            if server:
                f.server_app_data = True
            else:
                f.client_app_data = True
            if encrypted:
                return base + n  # nothing in clear follows; the rest need not be walked
        pos = end
    return base + pos


def parse_streams(client: bytes, server: bytes) -> tuple[TlsFacts, int, int]:
    """TlsFacts from both directions, and where each direction's TLS records end (0: not TLS)."""
    f = TlsFacts(native=True)
    c_end = read_direction(f, client, False)
    client_alert, f.alert = f.alert, None
    s_end = read_direction(f, server, True)
    # Streams carry no time across directions: a plaintext alert is rare on both sides; the server's wins.
    f.alert = f.alert or client_alert
    return f, c_end, s_end
