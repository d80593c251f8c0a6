"""The layout of the flow table's arrays: per-flow columns, record columns, kernel counters and statuses."""

from __future__ import annotations

from sensor.fastpath import packets as pk

# Per-flow int64 columns (FS matrix). Pairs are [originator, responder].
F_PORT_O, F_PORT_R, F_PROTO, F_IPVER, F_FIRST_TS, F_LAST_TS, F_CUR_IVAL, F_IVAL_SEQ = range(8)
F_IVAL_FIRST, F_IVAL_LAST = 8, 9
F_PK, F_BY, F_IPBY, F_TOT_PK, F_TOT_BY = 10, 12, 14, 16, 18
F_FIRST_BYTE, F_FIRST_CLS, F_DATA_PKTS = 20, 22, 24
F_FACTS, F_SIP_FACTS, F_FLAGS = 26, 27, 28
F_RTP_SSRC, F_SSRC_SAME, F_SEQ_LAST, F_SEQ_OK = 29, 31, 32, 34
F_LEN_TESTED, F_LEN_PLAIN, F_LEN_TAG, F_RTCP_PLAIN, F_RTCP_SRTCP, F_NIB_PKTS, F_ENDED = (
    35,
    36,
    37,
    38,
    39,
    40,
    41,
)
F_CLS = 42
# Stream layer, per direction [originator, responder]: initial sequence number + 1 (-1: SYN not seen), first
# payload sequence number seen, relative offset past which nothing is kept, bytes kept, kept bytes capped.
F_ISN = F_CLS + pk.NCLS
F_SEQ0, F_LIMIT, F_STORED, F_CAPPED, F_SEEN_CLS, F_DG = (F_ISN + 2 * k for k in range(1, 7))
F_STREAM_DONE, F_SEG_TS, F_HAS_SEGS = F_ISN + 14, F_ISN + 15, F_ISN + 16
# RFC 4571 framing per direction: stream offset of the next frame header (FRAME_UNKNOWN before the first
# payload, FRAME_OFF when the direction is not framed media), and the frames followed.
F_FRAME_NEXT, F_FRAMES = F_ISN + 17, F_ISN + 19
NFS = F_ISN + 20
FRAME_UNKNOWN, FRAME_OFF = -1, -2
# Per-flow uint64 columns: addresses (128-bit as hi/lo) and the RTP payload-type bitmap.
U_ORIG_HI, U_ORIG_LO, U_RESP_HI, U_RESP_LO, U_PT_LO, U_PT_HI = range(6)
NFU = 6
# Interval record columns.
R_FLOW, R_SEQ, R_FIRST, R_LAST, R_PK, R_BY, R_IPBY = 0, 1, 2, 3, 4, 6, 8
NREC = 10

FL_SYN, FL_FIN, FL_RST = 1, 2, 4
ST_DONE, ST_NEED_RECORDS, ST_NEED_FLOWS, ST_NEED_TABLE, ST_NEED_SEGS, ST_NEED_ARENA, ST_NEED_REASM = range(7)
# kernel counters (the `state` array)
S_NFLOWS, S_NREC, S_HTUSED, S_NONIP, S_FRAGS, S_NSEG, S_ARENA, S_NDG, S_DGARENA, S_NREASM, S_RBYTES = range(11)
NSTATE = 11
# Fact datagrams for the native parsers: flow, direction, time, arena offset, length, kind.
DG_FLOW, DG_DIR, DG_TS, DG_OFF, DG_LEN, DG_KIND = range(6)
NDGC = 6
DG_DATAGRAM, DG_MESSAGE = 0, 1  # a UDP payload; a SIP/HTTP message in a TCP segment past the stream prefix
# A TCP stream whose offset 0 is no protocol with handshake facts keeps only this much (R1 reads its first byte).
SHORT_PREFIX = 256
