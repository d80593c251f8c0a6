"""Flow records for every front end: uid, roles, service, app, facts and media verdict, as an Arrow table."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

import numpy as np
import pyarrow as pa

from sensor.facts import media
from sensor.facts.calls import CALL_TIMEOUT_NS, CallIndex
from sensor.facts.flowfacts import FlowFacts
from sensor.facts.sip import SdpMedia, SipMessage
from sensor.fastpath import columns as col
from sensor.fastpath import packets as pk
from sensor.fastpath.flows import FlowTable
from sensor.schema import FLOW_SCHEMA
from sensor.services import service_for
from sensor.site import Site


def _addr(hi: int, lo: int) -> str:
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


class RecordBuilder:
    """Turns the flow table and the facts of a run into flow interval records (offline and live alike)."""

    def __init__(self, site: Site, source_name: str = "pcap") -> None:
        self.site = site
        self.cfg = site.cfg
        self.topology = site.topology
        self.catalogue = site.catalogue
        self.source_name = source_name
        # flow uid -> (last packet time, SIP messages, SDP without a Call-ID) of every plaintext SIP flow seen
        self._signalling: dict[str, tuple[int, list[SipMessage], list[SdpMedia]]] = {}

    @staticmethod
    def _media_context(
        i: int,
        ep: tuple[str, int, str, int],
        kind: str,
        calls: CallIndex,
        starts: list[int],
        endpoints: dict[tuple[str, int, str, int, str], int],
        by_endpoint: dict[tuple[str, int], list[int]],
        media_own: dict[int, list[media.Evidence]],
        kinds: dict[int, str],
    ) -> list[media.Evidence]:
        """Evidence from around a media flow: the call's SDP (answer decides), and its companion RTCP (or, for
        RTCP, its RTP) on port +/- 1 in either orientation (RFC 3550 §11) or on the a=rtcp port."""
        oh, op, rh, rp = ep
        ev: list[media.Evidence] = []
        is_rtcp = kind == "rtcp"
        b = calls.binding(((oh, op), (rh, rp)), starts[i], rtcp=is_rtcp)
        if b is not None and b.evidence is not None:
            ev.append(b.evidence)
        step = -1 if is_rtcp else 1
        mates = {
            endpoints.get((oh, op + step, rh, rp + step, "udp")),
            endpoints.get((rh, rp + step, oh, op + step, "udp")),
        }
        if not is_rtcp and b is not None:  # the RTP flow's own binding names its RTCP endpoint (a=rtcp, else +1)
            mates.update(j for j in by_endpoint.get((b.rtcp_address, b.rtcp_port), []) if kinds.get(j) == "rtcp")
        mates.discard(None)
        mates.discard(i)
        for mate in sorted(m for m in mates if m is not None):
            for e in media_own.get(mate, []):
                if e.text.startswith(("rtcp:", "len:", "bytes:", "payload:")):
                    ev.append(media.Evidence(e.encrypted, round(e.confidence * 0.95, 3), "companion " + e.text))
        return ev

    def build(self, table: FlowTable, facts: dict[int, FlowFacts], start: int = 0, end: int | None = None) -> pa.Table:
        """The flow records table[start:end] with every flow column (facts known so far)."""
        n = table.nflows
        fs = table.fs[:n]
        fu = table.fu[:n]
        addr_cache: dict[tuple[int, int], str] = {}

        def addr(hi: int, lo: int) -> str:
            k = (hi, lo)
            v = addr_cache.get(k)
            if v is None:
                v = addr_cache[k] = _addr(hi, lo)
            return v

        orig_h = [addr(int(a), int(b)) for a, b in zip(fu[:, col.U_ORIG_HI], fu[:, col.U_ORIG_LO], strict=True)]
        resp_h = [addr(int(a), int(b)) for a, b in zip(fu[:, col.U_RESP_HI], fu[:, col.U_RESP_LO], strict=True)]
        proto = ["tcp" if p == 6 else "udp" for p in fs[:, col.F_PROTO].tolist()]
        orig_p = fs[:, col.F_PORT_O].tolist()
        resp_p = fs[:, col.F_PORT_R].tolist()
        orig_role = [self.topology.role_of(a) for a in orig_h]
        resp_role = [self.topology.role_of(a) for a in resp_h]
        sid = self.cfg.sensor.id
        first_ns = fs[:, col.F_FIRST_TS].tolist()
        uids = uids_of(
            [
                f"{sid}|{orig_h[i]}|{orig_p[i]}|{resp_h[i]}|{resp_p[i]}|{proto[i]}|{first_ns[i]}".encode()
                for i in range(n)
            ]
        )
        per_flow: dict[str, list[Any]] = {
            "flow_start": (fs[:, col.F_FIRST_TS] // 1000).tolist(),
            "uid": uids,
            "orig_h": orig_h,
            "orig_p": orig_p,
            "resp_h": resp_h,
            "resp_p": resp_p,
            "proto": proto,
            "ip_version": fs[:, col.F_IPVER].tolist(),
            "orig_role": orig_role,
            "resp_role": resp_role,
            "orig_first_byte": [None if v < 0 else v for v in fs[:, col.F_FIRST_BYTE].tolist()],
            "resp_first_byte": [None if v < 0 else v for v in fs[:, col.F_FIRST_BYTE + 1].tolist()],
            "tcp_midstream": _midstream(fs),
        }
        calls = self._calls(facts, uids, fs)
        fact_cols = self._fact_columns(table, facts, calls, orig_h, orig_p, resp_h, resp_p, proto)
        per_flow.update(fact_cols)
        per_flow["service"], per_flow["service_source"] = self._services(
            proto, orig_p, resp_p, orig_role, resp_role, fact_cols["app"]
        )
        rec = table.rec[start : table.nrecords if end is None else end]
        idx = rec[:, col.R_FLOW]
        flow_fields = [f for f in FLOW_SCHEMA if f.name in per_flow]
        flow_tbl = pa.table({f.name: pa.array(per_flow[f.name], type=f.type) for f in flow_fields})
        taken = flow_tbl.take(pa.array(idx)) if idx.size else flow_tbl.slice(0, 0)
        first = rec[:, col.R_FIRST]
        last = rec[:, col.R_LAST]
        cols: dict[str, pa.Array] = {
            "ts": pa.array(first // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "ts_end": pa.array(last // 1000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "interval_seq": pa.array(rec[:, col.R_SEQ], pa.int32()),
            "sensor_id": pa.array([sid] * len(rec), pa.string()),
            "source": pa.array([self.source_name] * len(rec), pa.string()),
            "duration": pa.array((last - first) / 1e9, pa.float64()),
            "orig_pkts": pa.array(rec[:, col.R_PK]),
            "resp_pkts": pa.array(rec[:, col.R_PK + 1]),
            "orig_bytes": pa.array(rec[:, col.R_BY]),
            "resp_bytes": pa.array(rec[:, col.R_BY + 1]),
            "orig_ip_bytes": pa.array(rec[:, col.R_IPBY]),
            "resp_ip_bytes": pa.array(rec[:, col.R_IPBY + 1]),
        }
        arrays = []
        for f in FLOW_SCHEMA:
            if f.name in cols:
                arrays.append(cols[f.name].cast(f.type))
            else:
                arrays.append(taken.column(f.name))
        result = pa.Table.from_arrays(arrays, schema=FLOW_SCHEMA)
        return result.sort_by([("ts", "ascending"), ("uid", "ascending")])

    def _services(
        self,
        proto: list[str],
        orig_p: list[int],
        resp_p: list[int],
        orig_role: list[str],
        resp_role: list[str],
        app: list[object],
    ) -> tuple[list[str | None], list[str | None]]:
        """Service from the port catalogue, per flow, by the rule every front end shares (sensor.services)."""
        services: list[str | None] = []
        sources: list[str | None] = []
        for i in range(len(proto)):
            svc, src = service_for(self.catalogue, proto[i], orig_p[i], resp_p[i], orig_role[i], resp_role[i], app[i])
            services.append(svc)
            sources.append(src)
        return services, sources

    def _calls(self, facts: dict[int, FlowFacts], uids: list[str], fs: np.ndarray) -> CallIndex:
        """The SDP of every plaintext SIP flow seen so far, in this build and earlier ones: a SIP flow exported
        and dropped from memory (live, or a long offline run) still describes the media of its calls."""
        for i, ff in facts.items():
            if not ff.has_sip:
                continue
            msgs = ff.sip.stream_messages + ff.sip.other_messages
            legacy = [m for m in ff.sip.media if m.call_id is None]
            if (msgs or legacy) and i < len(uids):
                self._signalling[uids[i]] = (int(fs[i, col.F_LAST_TS]), msgs, legacy)
        if len(fs):  # forget the signalling of calls that can no longer bind anything
            cutoff = int(fs[:, col.F_LAST_TS].max()) - 2 * CALL_TIMEOUT_NS
            for uid in [u for u, v in self._signalling.items() if v[0] < cutoff]:
                del self._signalling[uid]
        kept = list(self._signalling.values())
        return CallIndex((m for _, msgs, _ in kept for m in msgs), (m for _, _, legacy in kept for m in legacy))

    def _fact_columns(
        self,
        table: FlowTable,
        facts: dict[int, FlowFacts],
        calls: CallIndex,
        orig_h: list[str],
        orig_p: list[int],
        resp_h: list[str],
        resp_p: list[int],
        proto: list[str],
    ) -> dict[str, list[object]]:
        n = table.nflows
        fs = table.fs[:n]
        names = [f.name for f in FLOW_SCHEMA]
        out: dict[str, list[object]] = {
            k: [None] * n
            for k in names
            if k.startswith(("tls_", "sip_", "sdp_", "media_", "rtp_", "rtcp_", "stun_", "http_"))
            or k in ("app", "ms_turn")
        }
        starts = fs[:, col.F_FIRST_TS].tolist()
        endpoints = {(orig_h[i], orig_p[i], resp_h[i], resp_p[i], proto[i]): i for i in range(n)}
        kinds, media_own, by_endpoint = _media_flows(table, out, orig_h, orig_p, resp_h, resp_p, proto)
        cls = fs[:, col.F_CLS :]
        sip_fast_l = (cls[:, pk.CLS_SIP_REQ] + cls[:, pk.CLS_SIP_RESP]).tolist()
        http_fast_l = cls[:, pk.CLS_HTTP_REQ].tolist()
        stun_fast_l = (cls[:, pk.CLS_STUN] + cls[:, pk.CLS_STUN_OLD]).tolist()
        tls_fast_l = (cls[:, pk.CLS_TLS_HS] + cls[:, pk.CLS_TLS_REC] + cls[:, pk.CLS_SSL2]).tolist()
        for i in range(n):
            ff: FlowFacts | None = facts.get(i)
            sip_fast, http_fast, stun_fast, tls_fast = sip_fast_l[i], http_fast_l[i], stun_fast_l[i], tls_fast_l[i]
            pseudo = False
            if ff is not None:
                _copy_facts(out, i, ff)
                pseudo = ff.pseudo_tls
            sip_msgs = max(sip_fast, ff.sip.messages if ff is not None and ff.has_sip else 0)
            out["sip_plain"][i] = sip_msgs > 0
            out["sip_messages"][i] = sip_msgs
            if http_fast and not out["http_requests"][i]:
                out["http_requests"][i] = http_fast
            if stun_fast or out["stun_messages"][i]:
                out["stun_messages"][i] = max(stun_fast, int(out["stun_messages"][i] or 0))  # type: ignore[call-overload]
                if out["ms_turn"][i] is None:
                    out["ms_turn"][i] = False
            if pseudo:
                out["ms_turn"][i] = True  # MS-TURN behind pseudo-TLS ([MS-TURN], R14)
                out["stun_messages"][i] = stun_fast
            kind = kinds.get(i)
            if kind is not None:
                ev = list(media_own.get(i, []))
                ev += self._media_context(
                    i,
                    (orig_h[i], orig_p[i], resp_h[i], resp_p[i]),
                    kind,
                    calls,
                    starts,
                    endpoints,
                    by_endpoint,
                    media_own,
                    kinds,
                )
                if ff is not None and ff.dtls_srtp:
                    ev.append(media.Evidence(True, 0.9, "dtls:use_srtp keying on the same 5-tuple"))
                enc, conf = media.verdict(ev)
                out["media_encrypted"][i] = enc
                out["media_confidence"][i] = conf
                out["media_evidence"][i] = [e.text for e in ev] or None
            out["app"][i] = _app(proto[i], kind, out, i, sip_msgs, tls_fast, ff, pseudo)
        return out


def _media_flows(
    table: FlowTable,
    out: dict[str, list[object]],
    orig_h: list[str],
    orig_p: list[int],
    resp_h: list[str],
    resp_p: list[int],
    proto: list[str],
) -> tuple[dict[int, str], dict[int, list[media.Evidence]], dict[tuple[str, int], list[int]]]:
    """The flows that carry RTP or RTCP: their kind, their own media evidence, and the flows at each endpoint.

    Fills the rtp_/rtcp_ counter columns of those flows in out."""
    fs = table.fs[: table.nflows]
    by_endpoint: dict[tuple[str, int], list[int]] = {}
    media_own: dict[int, list[media.Evidence]] = {}
    kinds: dict[int, str] = {}
    for i in range(table.nflows):
        if proto[i] != "udp" and not fs[i, col.F_FRAMES]:
            continue  # TCP carries media only framed per RFC 4571
        st = media_stats(table, i)
        if media.is_rtp_stream(st):
            kinds[i] = "rtp"
        elif media.is_rtcp_stream(st):
            kinds[i] = "rtcp"
        else:
            continue
        media_own[i] = media.own_evidence(st)
        out["rtp_payload_types"][i] = list(st.payload_types) or None
        out["rtp_packets"][i] = st.rtp_packets
        out["rtcp_packets"][i] = st.rtcp_packets
        out["rtp_ssrcs"][i] = len({int(x) for x in fs[i, col.F_RTP_SSRC : col.F_RTP_SSRC + 2] if x >= 0})
        by_endpoint.setdefault((orig_h[i], orig_p[i]), []).append(i)
        by_endpoint.setdefault((resp_h[i], resp_p[i]), []).append(i)
    return kinds, media_own, by_endpoint


def _copy_facts(out: dict[str, list[object]], i: int, ff: FlowFacts) -> None:
    """Copy the columns of each protocol the parsers saw in flow i into row i of out."""
    for facts in ff.present():
        for k, v in facts.columns().items():
            out[k][i] = v


def _app(
    proto: str,
    kind: str | None,
    out: dict[str, list[object]],
    i: int,
    sip_msgs: int,
    tls_fast: int,
    ff: FlowFacts | None,
    pseudo: bool,
) -> str | None:
    if kind == "rtp":
        return "srtp" if out["media_encrypted"][i] is True else "rtp"
    if kind == "rtcp":
        return "srtcp" if out["media_encrypted"][i] is True else "rtcp"
    if pseudo:
        return "ms-turn"
    if ff is not None and ff.sslv2_server_hello:
        return "sslv2"
    if (ff is not None and ff.has_tls) or (proto == "tcp" and tls_fast):
        return "tls"
    if sip_msgs:
        return "sip"
    if out["http_requests"][i]:
        return "http"
    if out["stun_messages"][i]:
        return "ms-turn" if out["ms_turn"][i] else "stun"
    if ff is not None and ff.dtls_srtp:
        return "dtls"
    return None


def _midstream(fs: np.ndarray) -> list[bool | None]:
    """Per TCP flow: a direction sent payload whose SYN was never seen (stream offset 0 unknown)."""
    tcp = fs[:, col.F_PROTO] == 6
    mid = np.zeros(fs.shape[0], bool)
    for d in (0, 1):
        mid |= (fs[:, col.F_ISN + d] < 0) & (fs[:, col.F_SEQ0 + d] >= 0)
    return [bool(m) if t else None for m, t in zip(mid.tolist(), tcp.tolist(), strict=True)]


_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", np.uint8)
UID_DIGITS = 17


def uids_of(keys: list[bytes]) -> list[str]:
    """Zeek-style flow ids: 'C' and 17 base-62 digits (least significant first) of a 96-bit BLAKE2b hash of each
    key (sensor|orig_h|orig_p|resp_h|resp_p|proto|first packet ns). The hashes one by one, the digits for all
    keys together (long division of three 32-bit limbs by 62, seventeen times)."""
    n = len(keys)
    if n == 0:
        return []
    digest = b"".join(hashlib.blake2b(k, digest_size=12).digest() for k in keys)
    limbs = np.frombuffer(digest, ">u4").reshape(n, 3).astype(np.uint64)
    chars = np.empty((n, 1 + UID_DIGITS), np.uint8)
    chars[:, 0] = ord("C")
    for k in range(UID_DIGITS):
        rem = np.zeros(n, np.uint64)
        for j in range(3):
            cur = (rem << np.uint64(32)) | limbs[:, j]
            limbs[:, j] = cur // np.uint64(62)
            rem = cur % np.uint64(62)
        chars[:, 1 + k] = _B62[rem.astype(np.intp)]
    return chars.view(f"S{1 + UID_DIGITS}").ravel().astype(str).tolist()


def media_stats(table: FlowTable, f: int) -> media.MediaStats:
    """The RTP/RTCP statistics the compiled path kept for flow f."""
    row = table.fs[f]
    cls = row[col.F_CLS :]
    fu = table.fu
    pts = tuple(p for p in range(64) if int(fu[f, col.U_PT_LO]) >> p & 1) + tuple(
        64 + p for p in range(64) if int(fu[f, col.U_PT_HI]) >> p & 1
    )
    udp = row[col.F_PROTO] == 17
    return media.MediaStats(
        rtp_packets=int(cls[pk.CLS_RTP]),
        rtcp_packets=int(cls[pk.CLS_RTCP]),
        # datagrams on UDP; RFC 4571 frames on TCP
        udp_packets=int(row[col.F_TOT_PK] + row[col.F_TOT_PK + 1]) if udp else int(row[col.F_FRAMES]),
        ssrc_same=int(row[col.F_SSRC_SAME]),
        seq_ok=int(row[col.F_SEQ_OK]),
        len_tested=int(row[col.F_LEN_TESTED]),
        len_plain=int(row[col.F_LEN_PLAIN]),
        len_tag=int(row[col.F_LEN_TAG]),
        nib_counts=tuple(int(x) for x in table.nib[f]),
        rtcp_plain=int(row[col.F_RTCP_PLAIN]),
        rtcp_srtcp=int(row[col.F_RTCP_SRTCP]),
        payload_types=pts,
        payload=tuple(int(x) for x in table.pstats[f]),
    )
