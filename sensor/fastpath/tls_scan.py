"""The TLS handshake facts of reassembled stream prefixes, compiled: the common case of sensor.facts.tls.

A handshake-heavy link (a Front End pool at the morning sign-in peak) spent most of its time walking TLS
records in Python. This kernel walks the record and handshake layers of every prefix of a parse round in one
call and writes each direction's facts as integers (and byte ranges for the session id, SNI and first
certificate). It reads exactly what `sensor.facts.tls.read_direction` reads, and hands a direction back to it
(status FALLBACK) wherever that parser keeps state this one does not: an SSLv2 hello, a handshake message
spanning records, a HelloRetryRequest, a second Certificate, more than MAX_TYPES messages. So the two agree
by construction on what this one takes, and `tests/unit/test_tls_scan.py` holds them equal on real handshakes,
the shared captures and every truncation of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba as nb
import numpy as np
import numpy.typing as npt

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)
from sensor.facts.tls_facts import TlsFacts
from sensor.facts.x509names import cert_names

# Status of one direction.
NOT_TLS, HANDLED, FALLBACK = 0, 1, -1
MAX_TYPES = 24
# Integer facts of one direction (-1: not seen).
(
    T_STATUS,
    T_END,
    T_NTYPES,
    T_CH_SEEN,
    T_REC_VER,
    T_CLI_VER,
    T_SID_OFF,
    T_SID_LEN,
    T_CLIENT_MAX,
    T_SNI_OFF,
    T_SNI_LEN,
    T_CERTS,
    T_CCS,
    T_APP,
    T_ALERT,
    T_SH_SEEN,
    T_SRV_VER,
    T_CIPHER,
    T_CERT1_OFF,
    T_CERT1_LEN,
    T_CERT_REQ,
    T_FLIGHT_DONE,
    T_SHD_WITH_HELLO,
) = range(23)
NT = 23

_MAX_RECORD = (1 << 14) + 2048  # as sensor.facts.tls.MAX_RECORD
_HRR = np.frombuffer(bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"), np.uint8).copy()
_EXT_SNI, _EXT_SV = 0x0000, 0x002B


@nb.njit(cache=True, nogil=True)
def _record_at(d, pos, n):  # type: ignore[no-untyped-def]
    return (
        n >= pos + 5
        and 20 <= d[pos] <= 23
        and d[pos + 1] == 3
        and d[pos + 2] <= 4
        and ((np.int64(d[pos + 3]) << 8) | d[pos + 4]) <= _MAX_RECORD
    )


@nb.njit(cache=True, nogil=True)
def _sslv2_at(d, pos, n):  # type: ignore[no-untyped-def]
    if n < pos + 5 or not (d[pos] & 0x80):
        return False
    kind = d[pos + 2]
    if kind == 4:
        return n >= pos + 7 and d[pos + 5] == 0x00 and d[pos + 6] == 0x02
    return (kind == 1 or kind == 2) and (d[pos + 3] == 0x00 or d[pos + 3] == 3)


@nb.njit(cache=True, nogil=True)
def _u16(d, p):  # type: ignore[no-untyped-def]
    return (np.int64(d[p]) << 8) | np.int64(d[p + 1])


@nb.njit(cache=True, nogil=True)
def _find_ext(d, pos, bend, want, res):  # type: ignore[no-untyped-def]
    """The first extension of type `want` in the block at pos (body ends at bend): res = (offset, length)
    clamped to the body as Python's slicing clamps, or (-1, 0)."""
    res[0] = -1
    res[1] = 0
    if pos + 2 > bend:
        return
    end = pos + 2 + _u16(d, pos)
    if end > bend:
        end = bend
    pos += 2
    while pos + 4 <= end:
        et = _u16(d, pos)
        ln = _u16(d, pos + 2)
        if et == want:
            s = pos + 4
            e = s + ln
            if e > bend:
                e = bend
            res[0] = s
            res[1] = e - s if e > s else 0
            return
        pos += 4 + ln


@nb.njit(cache=True, nogil=True)
def _session_id(d, pos, bend, row):  # type: ignore[no-untyped-def]
    """A hello's session id (length byte at pos, clamped to the body as Python's slicing clamps) into row;
    returns the offset after it as the length byte claims it."""
    sid_len = np.int64(d[pos])
    s = pos + 1
    e = min(s + sid_len, bend)
    row[T_SID_OFF] = s
    row[T_SID_LEN] = e - s if e > s else 0
    return pos + 1 + sid_len


@nb.njit(cache=True, nogil=True)
def _client_hello(d, b, bend, rec_ver, row, ext):  # type: ignore[no-untyped-def]
    blen = bend - b
    if row[T_CH_SEEN] == 1 or blen < 35:
        return
    row[T_CH_SEEN] = 1
    row[T_REC_VER] = rec_ver
    hv = _u16(d, b)
    row[T_CLI_VER] = hv
    pos = _session_id(d, b + 34, bend, row)
    if pos + 2 > bend:
        row[T_CLIENT_MAX] = hv
        return
    pos += 2 + _u16(d, pos)  # cipher suites
    if pos < bend:
        pos += 1 + np.int64(d[pos])  # compression methods
    best = np.int64(-1)
    _find_ext(d, pos, bend, _EXT_SV, ext)
    if ext[0] >= 0 and ext[1] > 0:
        sv, svn = ext[0], ext[1]
        top = 1 + np.int64(d[sv])
        if top > svn:
            top = svn
        for i in range(1, top - 1, 2):
            v = _u16(d, sv + i)
            if v < 0x7F00 and v > best:
                best = v
    row[T_CLIENT_MAX] = best if best >= 0 else hv
    _find_ext(d, pos, bend, _EXT_SNI, ext)
    if ext[0] >= 0 and ext[1] >= 5 and d[ext[0] + 2] == 0:
        s = ext[0] + 5
        e = s + _u16(d, ext[0] + 3)
        if e > ext[0] + ext[1]:
            e = ext[0] + ext[1]
        row[T_SNI_OFF] = s
        row[T_SNI_LEN] = e - s if e > s else 0


@nb.njit(cache=True, nogil=True)
def _server_hello(d, b, bend, row, ext):  # type: ignore[no-untyped-def]
    """Returns 1 when the ServerHello selects TLS 1.3, 0 if not, -1 for a HelloRetryRequest (not taken)."""
    if bend - b < 38:
        return 0
    hrr = True
    for i in range(32):
        if d[b + 2 + i] != _HRR[i]:
            hrr = False
            break
    if hrr:
        return -1
    if row[T_SH_SEEN] == 1:
        return 1 if row[T_SRV_VER] >= 0x0304 else 0
    row[T_SH_SEEN] = 1
    version = _u16(d, b)
    pos = _session_id(d, b + 34, bend, row)
    if pos + 2 <= bend:
        row[T_CIPHER] = _u16(d, pos)
    _find_ext(d, pos + 3, bend, _EXT_SV, ext)
    if ext[0] >= 0 and ext[1] >= 2:
        version = _u16(d, ext[0])
    row[T_SRV_VER] = version
    return 1 if version >= 0x0304 else 0


@nb.njit(cache=True, nogil=True)
def _certificate(d, b, bend, server, row):  # type: ignore[no-untyped-def]
    """False when a second Certificate message needs the Python parser (it accumulates names)."""
    if bend - b < 3:
        return True
    if row[T_CERTS] >= 0:
        return False
    total = (np.int64(d[b]) << 16) | (np.int64(d[b + 1]) << 8) | np.int64(d[b + 2])
    row[T_CERTS] = total
    if server and total >= 3 and bend - b >= 6:
        n = (np.int64(d[b + 3]) << 16) | (np.int64(d[b + 4]) << 8) | np.int64(d[b + 5])
        if b + 6 + n <= bend:
            row[T_CERT1_OFF] = b + 6
            row[T_CERT1_LEN] = n
    return True


@nb.njit(cache=True, nogil=True)
def scan_direction(d, start, n, server, row, types, ext):  # type: ignore[no-untyped-def]
    """One direction's bytes d[start:start+n] into row/types (offsets are into d); see the module text."""
    for i in range(NT):
        row[i] = -1
    row[T_NTYPES] = 0
    row[T_CH_SEEN] = 0
    row[T_SH_SEEN] = 0
    row[T_CCS] = 0
    row[T_APP] = 0
    row[T_CERT_REQ] = 0
    row[T_FLIGHT_DONE] = 0
    row[T_SHD_WITH_HELLO] = 0
    row[T_END] = 0
    stop_all = start + n
    if not _record_at(d, start, stop_all):
        if _sslv2_at(d, start, stop_all):
            row[T_STATUS] = FALLBACK
        else:
            row[T_STATUS] = NOT_TLS
        return
    row[T_STATUS] = HANDLED
    pos = start
    encrypted = False
    last_type = np.int64(-1)
    nt = 0
    while pos + 5 <= stop_all:
        ct = np.int64(d[pos])
        minor = d[pos + 2]
        ln = _u16(d, pos + 3)
        if ct < 20 or ct > 23 or d[pos + 1] != 3 or minor > 4 or ln > _MAX_RECORD:
            break
        end = pos + 5 + ln
        if end > stop_all:
            break
        if ct == 22:
            if encrypted and not (not server and ln >= 4 and d[pos + 5] == 1):
                pos = end
                continue
            p = pos + 5
            while p + 4 <= end:
                mlen = (np.int64(d[p + 1]) << 16) | (np.int64(d[p + 2]) << 8) | np.int64(d[p + 3])
                if p + 4 + mlen > end:
                    break
                mtype = np.int64(d[p])
                b = p + 4
                bend = b + mlen
                p = bend
                if nt >= MAX_TYPES:
                    row[T_STATUS] = FALLBACK
                    return
                types[nt] = mtype
                nt += 1
                row[T_NTYPES] = nt
                if server:
                    if mtype == 2:
                        r = _server_hello(d, b, bend, row, ext)
                        if r < 0:
                            row[T_STATUS] = FALLBACK
                            return
                        if r == 1:
                            encrypted = True
                    elif mtype == 11:
                        if not _certificate(d, b, bend, True, row):
                            row[T_STATUS] = FALLBACK
                            return
                    elif mtype == 13:
                        row[T_CERT_REQ] = 1
                    elif mtype == 14:
                        row[T_FLIGHT_DONE] = 1
                        if last_type == 2:
                            row[T_SHD_WITH_HELLO] = 1
                else:
                    if mtype == 1:
                        _client_hello(d, b, bend, _u16(d, pos + 1), row, ext)
                        encrypted = False
                    elif mtype == 11 and not _certificate(d, b, bend, False, row):
                        row[T_STATUS] = FALLBACK
                        return
                last_type = mtype
            if p < end:  # a message continues in the next record: the Python parser joins them
                row[T_STATUS] = FALLBACK
                return
        elif ct == 20:
            encrypted = True
            row[T_CCS] = 1
            if server:
                row[T_FLIGHT_DONE] = 1
        elif ct == 21:
            if not encrypted and ln == 2:
                row[T_ALERT] = np.int64(d[pos + 6])
        else:
            row[T_APP] = 1
            if encrypted:
                row[T_END] = stop_all - start
                return
        pos = end
    row[T_END] = pos - start


@nb.njit(cache=True, nogil=True)
def scan_groups(d, meta, gdir, rows, types):  # type: ignore[no-untyped-def]
    """Every reassembled group (one flow direction; meta[g] = (offset, contiguous length, ...) as from
    stream.assemble; gdir[g] = 1 for the responder) into rows[g] and types[g]."""
    ext = np.zeros(2, np.int64)
    for g in range(meta.shape[0]):
        scan_direction(d, meta[g, 0], meta[g, 1], gdir[g] == 1, rows[g], types[g], ext)


def facts_from(
    data: npt.NDArray[np.uint8] | bytes,
    client: Sequence[int] | None,
    ctypes: list[int],
    server: Sequence[int] | None,
    stypes: list[int],
) -> TlsFacts:
    """TlsFacts from the scanned rows of a flow's directions (None: no bytes that way), as parse_streams; `data`
    is what the rows' offsets point into."""
    f = TlsFacts(native=True)
    client_alert: str | None = None
    if client is not None and client[T_STATUS] == HANDLED:
        f.client_types = ctypes
        if client[T_CH_SEEN] == 1:
            f.client_hello_seen = True
            f.record_version = f"0x{int(client[T_REC_VER]):04x}"
            f.client_version = f"0x{int(client[T_CLI_VER]):04x}"
            s = int(client[T_SID_OFF])
            f.client_session_id = bytes(data[s : s + int(client[T_SID_LEN])]).hex() or None
            f.client_max = int(client[T_CLIENT_MAX])
            if client[T_SNI_OFF] >= 0:
                s = int(client[T_SNI_OFF])
                f.sni = bytes(data[s : s + int(client[T_SNI_LEN])]).decode("ascii", "replace") or None
        if client[T_CERTS] >= 0:
            f.client_certs = int(client[T_CERTS])
        f.client_ccs = bool(client[T_CCS])
        f.client_app_data = bool(client[T_APP])
        if client[T_ALERT] >= 0:
            client_alert = str(int(client[T_ALERT]))
    if server is not None and server[T_STATUS] == HANDLED:
        f.server_types = stypes
        if server[T_SH_SEEN] == 1:
            f.server_hello_seen = True
            f.server_version = int(server[T_SRV_VER])
            s = int(server[T_SID_OFF])
            f.server_session_id = bytes(data[s : s + int(server[T_SID_LEN])]).hex() or None
            if server[T_CIPHER] >= 0:
                f.cipher = "0x" + format(int(server[T_CIPHER]), "04X")
        if server[T_CERTS] >= 0:
            f.server_certs = int(server[T_CERTS])
            if server[T_CERT1_OFF] >= 0:
                s = int(server[T_CERT1_OFF])
                for name in cert_names(bytes(data[s : s + int(server[T_CERT1_LEN])])):
                    if name not in f.cert_names:
                        f.cert_names.append(name)
        f.cert_requested = bool(server[T_CERT_REQ])
        f.server_flight_done = bool(server[T_FLIGHT_DONE])
        f.server_hello_done_with_hello = bool(server[T_SHD_WITH_HELLO])
        f.server_ccs = bool(server[T_CCS])
        f.server_app_data = bool(server[T_APP])
        if server[T_ALERT] >= 0:
            f.alert = str(int(server[T_ALERT]))
    f.alert = f.alert or client_alert
    return f
