"""Compiled helpers of the flow table: hashing, new flows, interval records, ending flows, rehashing."""

from __future__ import annotations

import numba as nb
import numpy as np

import sensor.fastpath.jit  # noqa: F401  (numba cache location; before any @njit)
from sensor.fastpath.columns import (
    F_BY,
    F_CUR_IVAL,
    F_ENDED,
    F_FIRST_BYTE,
    F_FIRST_CLS,
    F_FIRST_TS,
    F_FRAME_NEXT,
    F_IPBY,
    F_IPVER,
    F_ISN,
    F_IVAL_FIRST,
    F_IVAL_LAST,
    F_IVAL_SEQ,
    F_LAST_TS,
    F_LIMIT,
    F_PK,
    F_PORT_O,
    F_PORT_R,
    F_PROTO,
    F_RTP_SSRC,
    F_SEEN_CLS,
    F_SEQ0,
    F_SEQ_LAST,
    FRAME_OFF,
    FRAME_UNKNOWN,
    NFS,
    R_BY,
    R_FIRST,
    R_FLOW,
    R_IPBY,
    R_LAST,
    R_PK,
    R_SEQ,
    S_NFLOWS,
    S_NREC,
    U_ORIG_HI,
    U_ORIG_LO,
    U_PT_HI,
    U_PT_LO,
    U_RESP_HI,
    U_RESP_LO,
)


@nb.njit(cache=True, nogil=True, inline="always")
def _mix(x):  # type: ignore[no-untyped-def]
    # splitmix64 finaliser
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _emit(fs, rec, state, f):  # type: ignore[no-untyped-def]
    r = state[S_NREC]
    rec[r, R_FLOW] = f
    rec[r, R_SEQ] = fs[f, F_IVAL_SEQ]
    rec[r, R_FIRST] = fs[f, F_IVAL_FIRST]
    rec[r, R_LAST] = fs[f, F_IVAL_LAST]
    for d in range(2):
        rec[r, R_PK + d] = fs[f, F_PK + d]
        rec[r, R_BY + d] = fs[f, F_BY + d]
        rec[r, R_IPBY + d] = fs[f, F_IPBY + d]
        fs[f, F_PK + d] = 0
        fs[f, F_BY + d] = 0
        fs[f, F_IPBY + d] = 0
    fs[f, F_IVAL_SEQ] += 1
    state[S_NREC] = r + 1


@nb.njit(cache=True, nogil=True)
def _new_flow(fs, fu, nib, state, h_src_first, shi, slo, dhi, dlo, sport, dport, proto, ipver, ts, stream_k):  # type: ignore[no-untyped-def]
    f = state[S_NFLOWS]
    state[S_NFLOWS] = f + 1
    for c in range(NFS):
        fs[f, c] = 0
    for c in range(16):
        nib[f, c] = 0
    if h_src_first:
        fu[f, U_ORIG_HI], fu[f, U_ORIG_LO], fu[f, U_RESP_HI], fu[f, U_RESP_LO] = shi, slo, dhi, dlo
        fs[f, F_PORT_O], fs[f, F_PORT_R] = sport, dport
    else:
        fu[f, U_ORIG_HI], fu[f, U_ORIG_LO], fu[f, U_RESP_HI], fu[f, U_RESP_LO] = dhi, dlo, shi, slo
        fs[f, F_PORT_O], fs[f, F_PORT_R] = dport, sport
    fu[f, U_PT_LO] = 0
    fu[f, U_PT_HI] = 0
    fs[f, F_PROTO] = proto
    fs[f, F_IPVER] = ipver
    fs[f, F_FIRST_TS] = ts
    fs[f, F_LAST_TS] = ts
    fs[f, F_CUR_IVAL] = -1
    for d in range(2):
        fs[f, F_FIRST_BYTE + d] = -1
        fs[f, F_FIRST_CLS + d] = -1
        fs[f, F_RTP_SSRC + d] = -1
        fs[f, F_SEQ_LAST + d] = -1
        fs[f, F_ISN + d] = -1
        fs[f, F_SEQ0 + d] = -1
        fs[f, F_LIMIT + d] = stream_k
        fs[f, F_SEEN_CLS + d] = -1
        fs[f, F_FRAME_NEXT + d] = FRAME_UNKNOWN if proto == 6 else FRAME_OFF
    return f


@nb.njit(cache=True, nogil=True)
def flush_open(fs, rec, state):  # type: ignore[no-untyped-def]
    """Emit the pending interval record of every flow (end of capture)."""
    for f in range(state[S_NFLOWS]):
        if fs[f, F_ENDED] == 0 and fs[f, F_PK] + fs[f, F_PK + 1] > 0:
            _emit(fs, rec, state, f)


@nb.njit(cache=True, nogil=True)
def flush_before(fs, rec, state, iv_now):  # type: ignore[no-untyped-def]
    """Emit the pending record of every open flow whose interval ended before interval iv_now (live mode:
    a flow that went quiet still shows up on time). Returns the records emitted."""
    n = 0
    for f in range(state[S_NFLOWS]):
        if fs[f, F_ENDED] == 0 and fs[f, F_CUR_IVAL] < iv_now and fs[f, F_PK] + fs[f, F_PK + 1] > 0:
            _emit(fs, rec, state, f)
            n += 1
    return n


@nb.njit(cache=True, nogil=True)
def end_flows(fs, rec, state, flows):  # type: ignore[no-untyped-def]
    """End the given flows (idle timeout or eviction): emit their pending record and mark them ended."""
    for j in range(flows.shape[0]):
        f = flows[j]
        if fs[f, F_ENDED] == 0:
            if fs[f, F_PK] + fs[f, F_PK + 1] > 0:
                _emit(fs, rec, state, f)
            fs[f, F_ENDED] = 1


@nb.njit(cache=True, nogil=True)
def _reinsert(ht_keys, ht_vals, keys, vals, fs):  # type: ignore[no-untyped-def]
    mask = np.uint64(ht_keys.shape[0] - 1)
    used = 0
    for j in range(keys.shape[0]):
        if fs[vals[j], F_ENDED] == 1:
            continue
        slot = keys[j] & mask
        while ht_keys[slot] != 0:
            slot = (slot + np.uint64(1)) & mask
        ht_keys[slot] = keys[j]
        ht_vals[slot] = vals[j]
        used += 1
    return used
