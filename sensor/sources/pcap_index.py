"""Compiled indexing of capture files: pcap and pcapng records to column arrays, and resynchronisation after
damage (numba kernels; the block loop that drives them is sensor.sources.pcap.CaptureReader)."""

from __future__ import annotations

import numba as nb
import numpy as np

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)

# Link types the decoder understands (tcpdump.org/linktypes.html).
SUPPORTED_LINKTYPES = {
    0: "NULL",
    1: "ETHERNET",
    12: "RAW",
    101: "RAW",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}
_LINKTYPE_OK = np.zeros(65536, np.bool_)
_LINKTYPE_OK[list(SUPPORTED_LINKTYPES)] = True

# A record claiming more than this is damage, not a packet (Wireshark's WTAP_MAX_PACKET_SIZE_STANDARD).
MAX_CAPLEN = 262_144
# An original length above this is a damaged field, and the packet counts with its captured length: a passive
# sensor sees wire frames (jumbo frames at most, or offloaded segments of 64 KiB).
MAX_WIRELEN = 262_144
# A packet further than this from the packets before it is damage, unless the packet after it confirms the jump.
TIME_WINDOW_NS = 86_400 * 1_000_000_000
INT64_MAX = (1 << 63) - 1
# if_tsresol is 10^-r or 2^-r seconds; beyond 10^-18 and 2^-62 the tick does not fit int64 arithmetic.
_POW10 = np.array([10**i for i in range(19)], np.int64)


# The reader's state, shared by the kernels and the block loop: byte order (pcapng), interfaces defined in the
# section, time of the last packet (Simple Packet Blocks have none), the reference time (the last packet kept)
# and whether there is one yet.
S_BIG, S_IFACES, S_LAST_TS, S_REF, S_HAS_REF = range(5)
# Damage counters the kernels fill: packets whose timestamp does not fit int64 nanoseconds, packets far outside
# the capture's own time, original lengths beyond MAX_WIRELEN, unusable if_tsresol options, empty pcapng packets
# at time 0, packets on an unsupported link type (one such link type, and a flag for "more than one").
C_BAD_TS, C_FAR_TS, C_ORIG, C_TSRESOL, C_ZERO, C_UNSUP, C_UNSUP_LT, C_UNSUP_MANY = range(8)


@nb.njit(cache=True, nogil=True, inline="always")
def _u32(buf, p, big):  # type: ignore[no-untyped-def]
    if big:
        return (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) | buf[p + 3]
    return (np.int64(buf[p + 3]) << 24) | (np.int64(buf[p + 2]) << 16) | (np.int64(buf[p + 1]) << 8) | buf[p]


@nb.njit(cache=True, nogil=True, inline="always")
def _u16(buf, p, big):  # type: ignore[no-untyped-def]
    if big:
        return (np.int64(buf[p]) << 8) | buf[p + 1]
    return (np.int64(buf[p + 1]) << 8) | buf[p]


@nb.njit(cache=True, nogil=True, inline="always")
def _far(t, ref):  # type: ignore[no-untyped-def]
    return t - ref > TIME_WINDOW_NS or ref - t > TIME_WINDOW_NS


@nb.njit(cache=True, nogil=True, inline="always")
def _ticks_ns(hi, lo, mul, div):  # type: ignore[no-untyped-def]
    """pcapng ticks (64 bits, hi:lo) at resolution mul/div ns as int64 nanoseconds; -1 if they do not fit."""
    if hi >= 0x80000000:
        return np.int64(-1)
    ticks = (hi << 32) | lo
    if div == 1:
        if ticks > INT64_MAX // mul:
            return np.int64(-1)
        return ticks * mul
    if mul == 1:
        return ticks // div
    q = ticks // div
    if q > (INT64_MAX - mul) // mul:
        return np.int64(-1)
    r = ticks % div
    if r <= INT64_MAX // mul:
        return q * mul + (r * mul) // div
    return q * mul + np.int64(np.float64(r) * (np.float64(mul) / np.float64(div)))  # binary 2^-34 and finer


@nb.njit(cache=True, nogil=True)
def index_pcap(buf, end, final, big, ns_per_tick, linktype, state, cnt, offs, caplens, wirelens, ts, lts):  # type: ignore[no-untyped-def]
    """Index classic pcap records in buf[0:end]; returns (records, bytes consumed, damage flag).

    A zero-length record at time 0 is damage (zeros, not a packet). A record far from the reference time is
    kept only if the next record confirms its time; with final false, it waits for the next record's header."""
    pos = 0
    n = 0
    cap = offs.shape[0]
    ref = state[S_REF]
    has_ref = state[S_HAS_REF] == 1
    bad = 0
    while n < cap and pos + 16 <= end:
        sec = _u32(buf, pos, big)
        frac = _u32(buf, pos + 4, big)
        incl = _u32(buf, pos + 8, big)
        orig = _u32(buf, pos + 12, big)
        if incl > MAX_CAPLEN or frac >= 1_000_000_000 or (incl == 0 and sec == 0 and frac == 0):
            bad = 1
            break
        nxt = pos + 16 + incl
        if nxt > end:
            break
        t = sec * 1_000_000_000 + frac * ns_per_tick
        if not has_ref or _far(t, ref):
            if nxt + 16 <= end:
                nsec = _u32(buf, nxt, big)
                nfrac = _u32(buf, nxt + 4, big)
                nincl = _u32(buf, nxt + 8, big)
                if nincl > MAX_CAPLEN or nfrac >= 1_000_000_000 or (nincl == 0 and nsec == 0 and nfrac == 0):
                    keep = not has_ref  # no evidence either way: damage follows
                else:
                    keep = not _far(nsec * 1_000_000_000 + nfrac * ns_per_tick, t)
            elif not final:
                break  # judge it when the next header is in the buffer
            else:
                keep = not has_ref  # the last record of the file, far from the rest
            if not keep:
                cnt[C_FAR_TS] += 1
                pos = nxt
                continue
        if orig > MAX_WIRELEN:
            cnt[C_ORIG] += 1
            orig = incl
        offs[n] = pos + 16
        caplens[n] = incl
        wirelens[n] = orig if orig >= incl else incl
        ts[n] = t
        lts[n] = linktype
        ref = t
        has_ref = True
        n += 1
        pos = nxt
    state[S_REF] = ref
    state[S_HAS_REF] = 1 if has_ref else 0
    return n, pos, bad


@nb.njit(cache=True, nogil=True)
def _next_ts_pcapng(buf, p, end, big, nif, if_mul, if_div):  # type: ignore[no-untyped-def]
    """Time of the next Enhanced Packet Block from p: (1, ns), (0, 0) if it is not in the buffer yet, (-1, 0) if
    there is none to judge by (damage, a new section or interface, an unusable timestamp)."""
    for _ in range(16):
        if p + 12 > end:
            return 0, np.int64(0)
        btype = _u32(buf, p, big)
        blen = _u32(buf, p + 4, big)
        if btype == 0x0A0D0D0A or btype == 1 or blen < 12 or blen % 4 != 0 or blen > MAX_CAPLEN + 4096:
            return -1, np.int64(0)
        if p + blen > end:
            return 0, np.int64(0)
        if btype == 6 and blen >= 32:
            iface = _u32(buf, p + 8, big)
            hi = _u32(buf, p + 12, big)
            lo = _u32(buf, p + 16, big)
            if iface >= nif or (hi == 0 and lo == 0):
                return -1, np.int64(0)
            t = _ticks_ns(hi, lo, if_mul[iface], if_div[iface])
            return (1, t) if t >= 0 else (-1, np.int64(0))
        p += blen
    return -1, np.int64(0)


@nb.njit(cache=True, nogil=True)
def index_pcapng(buf, end, final, state, if_link, if_mul, if_div, if_ok, cnt, offs, caplens, wirelens, ts, lts):  # type: ignore[no-untyped-def]
    """Index pcapng blocks in buf[0:end]; returns (packets, bytes consumed, damage flag).

    Interface description blocks update if_* in place. Packets with a damaged field are counted in cnt and
    skipped; the block structure (lengths at both ends) stays intact, so reading goes on with the next block."""
    pos = 0
    n = 0
    cap = offs.shape[0]
    ref = state[S_REF]
    has_ref = state[S_HAS_REF] == 1
    bad = 0
    while n < cap and pos + 12 <= end:
        big = state[S_BIG] == 1
        btype = _u32(buf, pos, big)
        if btype == 0x0A0D0D0A:
            bom = _u32(buf, pos + 8, False)
            if bom == 0x1A2B3C4D:
                state[S_BIG] = 0
            elif bom == 0x4D3C2B1A:
                state[S_BIG] = 1
            else:
                bad = 1
                break
            big = state[S_BIG] == 1
            state[S_IFACES] = 0
        blen = _u32(buf, pos + 4, big)
        if blen < 12 or blen % 4 != 0 or blen > MAX_CAPLEN + 4096:
            bad = 1
            break
        if pos + blen > end:
            break
        if btype == 1:  # Interface Description Block
            k = state[S_IFACES]
            if k < if_link.shape[0]:
                lt = _u16(buf, pos + 8, big)
                if_link[k] = lt
                if_ok[k] = _LINKTYPE_OK[lt]
                if_mul[k] = 1000
                if_div[k] = 1
                op = pos + 16
                while op + 4 <= pos + blen - 4:
                    code = _u16(buf, op, big)
                    olen = _u16(buf, op + 2, big)
                    if code == 0:
                        break
                    if code == 9 and olen >= 1:
                        r = np.int64(buf[op + 4])
                        if r <= 9:
                            if_mul[k] = _POW10[9 - r]
                        elif r <= 18:
                            if_mul[k] = 1
                            if_div[k] = _POW10[r - 9]
                        elif r >= 0x80 and r - 0x80 <= 62:  # binary resolution 2^-e: ticks * 1e9 / 2^e
                            if_mul[k] = 1_000_000_000
                            if_div[k] = np.int64(1) << (r - 0x80)
                        else:
                            cnt[C_TSRESOL] += 1  # the default (microseconds) stays
                    op += 4 + ((olen + 3) // 4) * 4
            state[S_IFACES] = k + 1
        elif btype == 6 or btype == 2:  # Enhanced Packet Block (or obsolete Packet Block)
            if blen < 32:
                bad = 1
                break
            iface = _u32(buf, pos + 8, big) if btype == 6 else _u16(buf, pos + 8, big)
            hi = _u32(buf, pos + 12, big)
            lo = _u32(buf, pos + 16, big)
            incl = _u32(buf, pos + 20, big)
            orig = _u32(buf, pos + 24, big)
            if incl > blen - 32 or iface >= state[S_IFACES] or iface >= if_link.shape[0]:
                bad = 1
                break
            if incl == 0 and hi == 0 and lo == 0:
                cnt[C_ZERO] += 1
                pos += blen
                continue
            if not if_ok[iface]:
                if cnt[C_UNSUP] and cnt[C_UNSUP_LT] != if_link[iface]:
                    cnt[C_UNSUP_MANY] = 1
                cnt[C_UNSUP] += 1
                cnt[C_UNSUP_LT] = if_link[iface]
                pos += blen
                continue
            t = _ticks_ns(hi, lo, if_mul[iface], if_div[iface])
            if t < 0:
                cnt[C_BAD_TS] += 1
                pos += blen
                continue
            if not has_ref or _far(t, ref):
                found, tn = _next_ts_pcapng(buf, pos + blen, end, big, state[S_IFACES], if_mul, if_div)
                if found == 0 and not final:
                    break  # judge it when the next packet is in the buffer
                keep = (not _far(tn, t)) if found == 1 else not has_ref
                if not keep:
                    cnt[C_FAR_TS] += 1
                    pos += blen
                    continue
            if orig > MAX_WIRELEN:
                cnt[C_ORIG] += 1
                orig = incl
            offs[n] = pos + 28
            caplens[n] = incl
            wirelens[n] = orig if orig >= incl else incl
            ts[n] = t
            lts[n] = if_link[iface]
            ref = t
            has_ref = True
            state[S_LAST_TS] = t
            n += 1
        elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
            orig = _u32(buf, pos + 8, big)
            incl = blen - 16
            if orig < incl:
                incl = orig
            if state[S_IFACES] < 1:
                bad = 1
                break
            if not if_ok[0]:
                cnt[C_UNSUP] += 1
                cnt[C_UNSUP_LT] = if_link[0]
            else:
                if orig > MAX_WIRELEN:
                    cnt[C_ORIG] += 1
                    orig = incl
                offs[n] = pos + 12
                caplens[n] = incl
                wirelens[n] = orig
                ts[n] = state[S_LAST_TS]
                lts[n] = if_link[0]
                n += 1
        pos += blen
    state[S_REF] = ref
    state[S_HAS_REF] = 1 if has_ref else 0
    return n, pos, bad


@nb.njit(cache=True, nogil=True)
def _plausible(buf, q, end, big, last_sec):  # type: ignore[no-untyped-def]
    sec = _u32(buf, q, big)
    incl = _u32(buf, q + 8, big)
    orig = _u32(buf, q + 12, big)
    if _u32(buf, q + 4, big) >= 1_000_000_000 or incl > MAX_CAPLEN or orig < incl or orig > MAX_WIRELEN or incl < 14:
        return False
    return last_sec < 0 or abs(sec - last_sec) <= TIME_WINDOW_NS // 1_000_000_000


@nb.njit(cache=True, nogil=True)
def resync_pcap(buf, start, end, big, last_sec):  # type: ignore[no-untyped-def]
    """First offset >= start where two consecutive plausible pcap record headers begin (or one that ends the
    data exactly); -1 if none. Used to skip garbage in a damaged capture; last_sec is the time of the last good
    record (-1: none yet), so zeros or garbage never move the time the records after them are judged by."""
    for q in range(start, end - 16):
        if _plausible(buf, q, end, big, last_sec):
            nxt = q + 16 + _u32(buf, q + 8, big)
            if nxt == end or (nxt + 16 <= end and _plausible(buf, nxt, end, big, last_sec)):
                return q
    return -1


@nb.njit(cache=True, nogil=True)
def resync_pcapng(buf, start, end, big, nif):  # type: ignore[no-untyped-def]
    """First offset >= start (at any alignment: the damage may have any length) of an Enhanced Packet Block of
    a known interface whose leading and trailing lengths agree; -1 if none."""
    q = start
    while q + 32 <= end:
        if _u32(buf, q, big) == 6:
            blen = _u32(buf, q + 4, big)
            if (
                32 <= blen <= MAX_CAPLEN + 4096
                and blen % 4 == 0
                and q + blen <= end
                and _u32(buf, q + blen - 4, big) == blen
                and _u32(buf, q + 8, big) < nif
            ):
                return q
        q += 1
    return -1
