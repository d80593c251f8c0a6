"""Joining Zeek log records by uid into flow records of the one flow schema.

conn.log gives the flow (one record per Zeek connection, interval_seq 0: Zeek logs a connection when it
ends, so a long connection appears then, unlike the pcap front end's per-interval records); ssl.log, x509.log,
sip.log, http.log and the package's lync.log (deploy/zeek/) add facts joined by Zeek's uid. Roles and services
come from the same topology, port catalogue and naming rule (sensor.services) as packets. What Zeek cannot see
(RTP vs SRTP, SDP, the ClientHello's offered versions, STUN) stays null: the rules read null as "not visible".
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sensor.catalogue import Catalogue
from sensor.config import Config
from sensor.facts.http import redact_path
from sensor.schema import FLOW_COUNTERS
from sensor.services import service_for
from sensor.sources.zeek.base import ZeekRecord
from sensor.sources.zeek.fields import (
    NOT_SIP,
    SERVICE_APPS,
    UNKNOWN_CIPHER,
    CipherNames,
    cert_names,
    flow_columns,
    tls_facts,
    utf8_text,
    wire_path,
)
from sensor.topology import Topology


@dataclass
class ZeekFlow:
    """What the logs said about one Zeek uid so far (the facts are merged over all its log lines)."""

    uid: str
    ids: tuple[str, int, str, int] | None = None
    proto: str | None = None
    first_ts: float | None = None
    conns: list[dict[str, Any]] = field(default_factory=list)
    service: str | None = None
    ssl: dict[str, Any] = field(default_factory=dict)
    lync: dict[str, Any] = field(default_factory=dict)
    sip_requests: set[str] = field(default_factory=set)
    sip_responses: int = 0
    sip_methods: set[str] = field(default_factory=set)
    sip_codes: set[int] = field(default_factory=set)
    http: list[tuple[int, str | None, str | None, str | None]] = field(default_factory=list)

    def see(self, rec: ZeekRecord, proto: str | None) -> None:
        f = rec.fields
        if self.ids is None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.ids = (str(f["id.orig_h"]), int(f["id.orig_p"]), str(f["id.resp_h"]), int(f["id.resp_p"]))
        if proto and self.proto is None:
            self.proto = proto
        if rec.ts is not None and (self.first_ts is None or rec.ts < self.first_ts):
            self.first_ts = rec.ts

    def merge(self, other: ZeekFlow) -> None:
        """Fold later lines of the same uid into this one (conn rows are not kept: they were emitted)."""
        self.ids = self.ids or other.ids
        self.proto = self.proto or other.proto
        if other.first_ts is not None and (self.first_ts is None or other.first_ts < self.first_ts):
            self.first_ts = other.first_ts
        self.service = other.service or self.service
        _merge_fields(self.ssl, other.ssl)
        _merge_fields(self.lync, other.lync)
        self.sip_requests |= other.sip_requests
        self.sip_responses += other.sip_responses
        self.sip_methods |= other.sip_methods
        self.sip_codes |= other.sip_codes
        self.http += other.http


def _merge_fields(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if v is None and k in into:
            continue
        if isinstance(v, list) and isinstance(into.get(k), list):
            into[k] = list(dict.fromkeys([*into[k], *v]))
        elif isinstance(v, bool) and isinstance(into.get(k), bool):
            into[k] = into[k] or v
        else:
            into[k] = v


# --------------------------------------------------------------------------------------------- assembling


class FlowAssembler:
    """Joins Zeek log records by uid into flow records (dicts of FLOW_SCHEMA columns).

    `add` collects; `take` emits a record for every uid touched since the last `take`: its conn.log row(s)
    with every fact known for the uid, or, while no conn.log row has come, the facts alone (counters null).
    A recent-uid memory (bounded) carries facts to later records of the same uid and numbers them
    (interval_seq 1, 2, ...): the lake's `flows` view takes a flow's facts from its latest record.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        topology: Topology | None = None,
        catalogue: Catalogue | None = None,
        problems: Counter[str] | None = None,
        memory: int = 200_000,
    ) -> None:
        self.cfg = cfg
        self.topology = topology or Topology.from_config(cfg)
        self.catalogue = catalogue or load_catalogue(cfg)
        self.ciphers = CipherNames(self.catalogue)
        self._names = flow_columns()
        self.problems = problems if problems is not None else Counter()
        self.memory = memory
        self.records_by_log: Counter[str] = Counter()
        self.dropped_no_ts = 0
        self.conn_packets = 0
        self._pending: dict[str, ZeekFlow] = {}
        self._known: OrderedDict[str, tuple[int, float, ZeekFlow]] = OrderedDict()  # uid -> (seq, ts_end, facts)
        self._x509: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def pending(self) -> int:
        return len(self._pending)

    # ---- collecting ------------------------------------------------------------------------------------------
    def add(self, records: Iterable[ZeekRecord]) -> None:
        for rec in records:
            self.records_by_log[rec.log] += 1
            if rec.log == "x509":
                self._add_x509(rec.fields)
                continue
            uid = rec.fields.get("uid")
            if not isinstance(uid, str) or not uid:
                self.problems["zeek_malformed_line"] += 1
                continue
            flow = self._pending.get(uid)
            if flow is None:
                flow = self._pending[uid] = ZeekFlow(uid)
            handler = getattr(self, f"_add_{rec.log}", None)
            if handler is not None:
                handler(flow, rec)

    def _add_x509(self, f: dict[str, Any]) -> None:
        for key in (f.get("fingerprint"), f.get("id")):
            if isinstance(key, str) and key:
                self._x509[key] = f
                self._x509.move_to_end(key)
        while len(self._x509) > self.memory:
            self._x509.popitem(last=False)

    def _add_conn(self, flow: ZeekFlow, rec: ZeekRecord) -> None:
        proto = rec.fields.get("proto")
        if proto not in ("tcp", "udp"):
            return  # ICMP and unknown transports are not flows of the schema (the pcap front end skips them)
        flow.see(rec, proto)
        flow.conns.append(rec.fields)
        service = rec.fields.get("service")
        if service:
            flow.service = str(service)

    def _add_ssl(self, flow: ZeekFlow, rec: ZeekRecord) -> None:
        version = str(rec.fields.get("version") or "")
        flow.see(rec, "udp" if version.startswith("DTLS") else "tcp")
        _merge_fields(flow.ssl, {k: v for k, v in rec.fields.items() if k not in ("ts", "uid")})
        if not self.ciphers.code(rec.fields.get("cipher"))[1]:
            self.problems[UNKNOWN_CIPHER] += 1

    def _add_sip(self, flow: ZeekFlow, rec: ZeekRecord) -> None:
        # Zeek's SIP analyzer parses UDP only (its DPD signature is `ip-proto == udp`).
        flow.see(rec, "udp")
        f = rec.fields
        method, status = f.get("method"), f.get("status_code")
        if method:
            flow.sip_methods.add(str(method))
            # one request per (Call-ID, CSeq): a line per response repeats its request. Hashed, never stored.
            key = f"{f.get('call_id')}|{f.get('seq')}|{method}"
            flow.sip_requests.add(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest())
        if isinstance(status, int):
            flow.sip_codes.add(status)
            flow.sip_responses += 1

    def _add_http(self, flow: ZeekFlow, rec: ZeekRecord) -> None:
        flow.see(rec, "tcp")
        f = rec.fields
        depth = f.get("trans_depth")
        flow.http.append((depth if isinstance(depth, int) else 1 << 30, f.get("method"), f.get("host"), f.get("uri")))

    def _add_lync(self, flow: ZeekFlow, rec: ZeekRecord) -> None:
        proto = rec.fields.get("proto")
        flow.see(rec, proto if proto in ("tcp", "udp") else None)
        _merge_fields(flow.lync, {k: v for k, v in rec.fields.items() if k not in ("ts", "uid") and v is not None})

    # ---- emitting --------------------------------------------------------------------------------------------
    def take(self) -> list[dict[str, object]]:
        """Flow records for everything added since the last call, sorted by ts."""
        rows: list[dict[str, object]] = []
        for uid, flow in self._pending.items():
            known = self._known.pop(uid, None)
            if known is not None:
                seq, ts_end, facts = known
                facts.merge(flow)
                facts.conns = flow.conns
                seq += 1
            else:
                seq, ts_end, facts = 0, float("-inf"), flow
            if facts.ids is None or facts.proto is None:
                self.problems["zeek_malformed_line"] += 1
                continue
            out = self._emit(facts, seq, ts_end)
            if out is None:
                continue  # an address that is not one (counted as malformed)
            if not out:
                self.dropped_no_ts += 1
                continue
            rows += out
            last = out[-1]
            end = last["ts_end"]
            assert isinstance(end, float)
            facts.conns = []
            self._known[uid] = (int(str(last["interval_seq"])), end, facts)
        self._pending.clear()
        while len(self._known) > self.memory:
            self._known.popitem(last=False)
        rows.sort(key=lambda r: (r["ts"], r["uid"]))
        return rows

    def _emit(self, flow: ZeekFlow, seq: int, prev_end: float) -> list[dict[str, object]] | None:
        base = self._facts(flow)
        if base is None:
            return None
        out: list[dict[str, object]] = []
        for conn in flow.conns:
            ts = conn.get("ts")
            if not isinstance(ts, float):
                continue
            duration = float(conn.get("duration") or 0.0)
            pkts = int(conn.get("orig_pkts") or 0) + int(conn.get("resp_pkts") or 0)
            self.conn_packets += pkts
            row = dict(base)
            row.update(
                ts=ts,
                ts_end=ts + duration,
                flow_start=ts,
                interval_seq=seq,
                duration=duration,
                **{k: conn.get(k) for k in FLOW_COUNTERS},
            )
            out.append(row)
            seq += 1
        if not out:
            # Facts without their conn.log row (yet): a record at the first fact's time, or after the last
            # record of this uid, so that the lake's latest record carries the newest facts.
            ts = flow.first_ts
            if ts is None:
                return []
            ts = max(ts, prev_end)
            row = dict(base)
            row.update(ts=ts, ts_end=ts, flow_start=flow.first_ts, interval_seq=seq, duration=0.0)
            row.update(dict.fromkeys(FLOW_COUNTERS))
            out.append(row)
        return out

    def _facts(self, flow: ZeekFlow) -> dict[str, object] | None:
        assert flow.ids is not None and flow.proto is not None
        try:
            oh = str(ipaddress.ip_address(flow.ids[0]))
            rh = str(ipaddress.ip_address(flow.ids[2]))
        except ValueError:
            self.problems["zeek_malformed_line"] += 1
            return None
        op, rp, proto = flow.ids[1], flow.ids[3], flow.proto
        orole, rrole = self.topology.role_of(oh), self.topology.role_of(rh)
        row: dict[str, object] = dict.fromkeys(self._names)
        row.update(
            uid=flow.uid,
            sensor_id=self.cfg.sensor.id,
            source="zeek",
            orig_h=oh,
            orig_p=op,
            resp_h=rh,
            resp_p=rp,
            proto=proto,
            ip_version=6 if ":" in oh else 4,
            orig_role=orole,
            resp_role=rrole,
        )
        app: str | None = None
        lync = flow.lync
        if flow.ssl:
            tls, app, _ = tls_facts(flow.ssl, lync, self.ciphers)
            row.update(tls)
            fps = flow.ssl.get("cert_chain_fps") or flow.ssl.get("cert_chain_fuids") or []
            names = cert_names(self._x509.get(fps[0])) if fps else []
            row["tls_cert_names"] = names or None
        elif lync.get("cert_request") is not None:
            row["tls_cert_requested"] = bool(lync["cert_request"])
        services = [s for s in (flow.service or "").split(",") if s and not s.startswith("-")]
        sip_seen = bool(flow.sip_methods or flow.sip_codes) or bool(lync.get("sip_tcp")) or "sip" in services
        if sip_seen:
            row["sip_plain"] = True
            if flow.sip_methods or flow.sip_codes:
                row["sip_messages"] = len(flow.sip_requests) + flow.sip_responses
                row["sip_methods"] = sorted(flow.sip_methods) or None
                row["sip_status_codes"] = sorted(flow.sip_codes) or None
            app = app or "sip"
        if flow.http:
            self._http(flow, row)
            app = app or "http"
        for side in ("orig", "resp"):
            b = lync.get(f"{side}_first_byte")
            row[f"{side}_first_byte"] = b if isinstance(b, int) and 0 <= b <= 255 else None
        if (
            app is None
            and proto == "udp"
            and lync.get("media_range")
            and 2
            in (
                lync.get("orig_rtp_version"),
                lync.get("resp_rtp_version"),
            )
        ):
            app = "rtp"  # RTP-shaped (version 2) on a Lync media range; SRTP looks the same: media_encrypted null
        if app is None:
            app = next((SERVICE_APPS[s] for s in services if s in SERVICE_APPS), None)
        if not sip_seen and app in NOT_SIP:
            row["sip_plain"], row["sip_messages"] = False, 0  # Zeek parsed it as another protocol from the start
        row["app"] = app
        row["service"], row["service_source"] = service_for(self.catalogue, proto, op, rp, orole, rrole, app)
        return row

    def _http(self, flow: ZeekFlow, row: dict[str, object]) -> None:
        redact = self.cfg.privacy.redact_http_query
        requests = sorted((r for r in flow.http if r[1]), key=lambda r: r[0])
        paths = [
            redact_path(wire_path(r[3]), redact_query=redact, host=r[2] if isinstance(r[2], str) else None)
            for r in requests
            if isinstance(r[3], str)
        ]
        paths = list(dict.fromkeys(utf8_text(p) or "" for p in paths))
        first = requests[0] if requests else None
        row["http_method"] = utf8_text(first[1]) if first else None
        row["http_host"] = utf8_text(first[2]) if first else None
        row["http_path"] = paths[0] if paths else None
        row["http_paths"] = paths or None
        row["http_requests"] = len(requests)


def load_catalogue(cfg: Config) -> Catalogue:
    """The port catalogue a config names (the built-in one, or the site's `ports` file)."""
    return Catalogue.load(cfg.ports, source=str(cfg.source) if cfg.source else None)
