"""The Zeek front end: Zeek log records -> flow records of the one flow schema; `ingest-zeek`, `zeek-topology`.

conn.log gives the flow (one record per Zeek connection, interval_seq 0: Zeek logs a connection when it
ends, so a long connection appears then, unlike the pcap front end's per-interval records); ssl.log, x509.log,
sip.log, http.log and the package's lync.log (deploy/zeek/) add facts joined by Zeek's uid. Roles and services
come from the same topology and port catalogue as packets. What Zeek cannot see (RTP vs SRTP, SDP, the
ClientHello's offered versions, STUN) stays null: the rules read null as "not visible".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sensor.config import Config
from sensor.errors import SinkError, SourceError
from sensor.sources.zeek import (
    BAD_VALUE,
    LOGS,
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    PROBLEMS,
    LogStream,
    Position,
    ZeekRecord,
)
from sensor.topology import Topology

if TYPE_CHECKING:  # numpy/pyarrow load on use: `lync-sensor --help` and the other subcommands stay quick
    import pyarrow as pa

    from sensor.catalogue import Catalogue
    from sensor.metrics import SensorMetrics
    from sensor.rules.check import CheckReport

log = logging.getLogger(__name__)

UNKNOWN_CIPHER = "zeek_unknown_cipher"  # a cipher name cipher_suites.csv does not list (tls_cipher stays null)
MEDIA_APPS = ("rtp", "srtp", "rtcp", "srtcp")  # as sensor.analyze: client port ranges name media flows only
# conn.log `service` (Zeek analyzer names) -> the schema's app, for flows without a protocol log line.
SERVICE_APPS = {"ssl": "tls", "dtls": "dtls", "sip": "sip", "http": "http", "stun": "stun"}
# TLS alert description names as Zeek logs them (base/protocols/ssl/consts.zeek alert_descriptions, the
# RFC 5246 §7.2 / RFC 8446 §6 registry) -> the code the schema stores.
ALERT_CODES = {
    "close_notify": 0, "unexpected_message": 10, "bad_record_mac": 20, "decryption_failed": 21,
    "record_overflow": 22, "decompression_failure": 30, "handshake_failure": 40, "no_certificate": 41,
    "bad_certificate": 42, "unsupported_certificate": 43, "certificate_revoked": 44, "certificate_expired": 45,
    "certificate_unknown": 46, "illegal_parameter": 47, "unknown_ca": 48, "access_denied": 49,
    "decode_error": 50, "decrypt_error": 51, "export_restriction": 60, "protocol_version": 70,
    "insufficient_security": 71, "internal_error": 80, "inappropriate_fallback": 86, "user_canceled": 90,
    "no_renegotiation": 100, "missing_extension": 109, "unsupported_extension": 110,
    "certificate_unobtainable": 111, "unrecognized_name": 112, "bad_certificate_status_response": 113,
    "bad_certificate_hash_value": 114, "unknown_psk_identity": 115, "certificate_required": 116,
    "no_application_protocol": 120,
}  # fmt: skip
_UNKNOWN_N = re.compile(r"^unknown-(\d+)$")
# ssl_history letters (base/protocols/ssl/main.zeek): client-sent letters upper case, server-sent lower case.
# Server handshake messages, i.e. without i (ChangeCipherSpec), l (alert), d (data), b (heartbeat), q, ^.
_HS_LETTERS = frozenset("hcsvtxkrnyfwuazopmej")
_NOT_SIP = frozenset({"tls", "sslv2", "dtls", "ms-turn", "http"})
_URI_SAFE = "/:@!$&'()*+,;=?"  # RFC 3986 pchar and the query separator; everything else is %-encoded
_RDN_SPLIT = re.compile(r"(?<!\\),")


def _host_like(name: str) -> bool:
    return "." in name and " " not in name and "@" not in name  # as sensor.tls: a CN that names a host


def _text(value: object) -> str | None:
    """A log string as valid UTF-8 for the lake (bytes Zeek escaped are kept as U+FFFD)."""
    if value is None:
        return None
    s = str(value)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def wire_path(uri: str) -> str:
    """http.log's `uri` is Zeek's unescaped URI; %-encode it again as a client sends it (sensor/http.py sees
    the wire form), so both front ends store the same path: `/printable_😄` -> `/printable_%F0%9F%98%84`."""
    return quote(uri.encode("utf-8", "surrogateescape"), safe=_URI_SAFE)


# --------------------------------------------------------------------------------------------- TLS facts


class CipherNames:
    """IANA code of a cipher suite from the name Zeek logs, via cipher_suites.csv (case-insensitive);
    Zeek's SSL 2.0 names `SSLv20_CK_*` are the table's `SSL_CK_*`, and `unknown-N` carries the code itself."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._codes = {s.name.upper(): s.code for s in catalogue.cipher_suites()}

    def code(self, name: str | None) -> tuple[str | None, bool]:
        """(code or None, known): `known` is False for a name the table does not list."""
        if not name:
            return None, True
        m = _UNKNOWN_N.match(name)
        if m:
            v = int(m.group(1))
            return (f"0x{v:04X}" if v <= 0xFFFF else f"0x{v:06X}"), True
        key = name.upper().replace("SSLV20_CK_", "SSL_CK_")
        code = self._codes.get(key)
        return code, code is not None


def tls_version(zeek: str | None) -> tuple[str | None, bool]:
    """(schema version name, is DTLS) from ssl.log `version`: TLSv12 -> TLSv12, TLSv13-draft23 -> TLSv13."""
    if not zeek:
        return None, False
    if zeek.startswith("DTLS"):
        return None, True
    if zeek.startswith("TLSv13-draft"):
        return "TLSv13", False
    m = _UNKNOWN_N.match(zeek)
    if m:
        from sensor.schema import tls_version_name

        return tls_version_name(int(m.group(1))), False
    return (zeek, False) if zeek in ("SSLv2", "SSLv3", "TLSv10", "TLSv11", "TLSv12", "TLSv13") else (None, False)


def alert_code(name: str | None) -> str | None:
    if not name:
        return None
    m = _UNKNOWN_N.match(name)
    if m:
        return m.group(1)
    code = ALERT_CODES.get(name)
    return str(code) if code is not None else None


def cert_names(x509: dict[str, Any] | None) -> list[str]:
    """DNS SANs, then the subject CN(s) that name a host, of one x509.log certificate (as sensor.tls)."""
    if not x509:
        return []
    names = [n for n in (x509.get("san.dns") or []) if n]
    for rdn in _RDN_SPLIT.split(str(x509.get("certificate.subject") or "")):
        rdn = rdn.strip()
        if rdn.startswith("CN="):
            cn = rdn[3:].replace("\\,", ",")
            if _host_like(cn):
                names.append(cn)
    return list(dict.fromkeys(_text(n) or "" for n in names))


def tls_facts(ssl: dict[str, Any], lync: dict[str, Any], ciphers: CipherNames) -> tuple[dict[str, object], str, bool]:
    """TLS columns of one ssl.log connection (merged rows), the app, and whether the cipher name was unknown.

    Mutual TLS from ssl.log: a non-empty client chain is a client certificate; a client Certificate message
    ('X' in ssl_history) with an empty chain, while the server's chain was recorded, is an empty one (false);
    a CertificateRequest ('r', requested_client_certificate_authorities, or lync.log cert_request) answered
    by a ClientKeyExchange ('G') without 'X' is false too; anything else is not visible (null).
    """
    version, dtls = tls_version(ssl.get("version"))
    history: str | None = ssl.get("ssl_history") or None
    server = {c for c in history or "" if c.islower()}
    client = {c for c in history or "" if c.isupper()}
    server_chain = ssl.get("cert_chain_fps") if "cert_chain_fps" in ssl else ssl.get("cert_chain_fuids")
    client_chain = (
        ssl.get("client_cert_chain_fps") if "client_cert_chain_fps" in ssl else ssl.get("client_cert_chain_fuids")
    )
    requested_cas = "requested_client_certificate_authorities" in ssl
    lync_request = lync.get("cert_request")
    requested: bool | None
    if "r" in server or (requested_cas and ssl["requested_client_certificate_authorities"] is not None):
        requested = True
    elif lync_request is not None:
        requested = bool(lync_request)
    elif history is not None or requested_cas:
        requested = False  # the handshake (or the certificate-request-info script) was visible: none sent
    else:
        requested = None
    server_cert: bool | None = None
    if server_chain or "x" in server:
        server_cert = True
    elif history is not None:
        server_cert = False
    client_cert: bool | None = None
    if client_chain:
        client_cert = True
    elif ("X" in client and server_chain) or (requested and "G" in client and "X" not in client):
        client_cert = False
    elif requested and history is None and client_chain is not None and ssl.get("established"):
        client_cert = False  # no ssl_history (older Zeek): requested, completed, no client chain
    pseudo: bool | None = None
    if history is not None:
        # MS-TURN pseudo-TLS (R14): ServerHello and ServerHelloDone, no Certificate or key exchange.
        pseudo = {c for c in server if c in _HS_LETTERS} == {"s", "n"}
    cipher, known = ciphers.code(ssl.get("cipher"))
    facts: dict[str, object] = {
        "tls_version": None if pseudo else version,
        "tls_cipher": None if pseudo else cipher,
        "tls_sni": _text(ssl.get("server_name")),
        "tls_server_cert": server_cert,
        "tls_cert_requested": requested,
        "tls_client_cert": client_cert,
        "tls_resumed": ssl.get("resumed"),
        "tls_sslv2_hello": True if version == "SSLv2" else None,
        "tls_pseudo": pseudo,
        "tls_alert": alert_code(ssl.get("last_alert")),
    }
    app = "ms-turn" if pseudo else "sslv2" if version == "SSLv2" else "dtls" if dtls else "tls"
    return facts, app, not known


# --------------------------------------------------------------------------------------------- one flow


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
        self.catalogue = catalogue or _catalogue(cfg)
        self.ciphers = CipherNames(self.catalogue)
        self._names = _names()
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
                **{k: conn.get(k) for k in _COUNTERS},
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
            row.update(dict.fromkeys(_COUNTERS))
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
        if not sip_seen and app in _NOT_SIP:
            row["sip_plain"], row["sip_messages"] = False, 0  # Zeek parsed it as another protocol from the start
        row["app"] = app
        row["service"], row["service_source"] = self._service(proto, op, rp, orole, rrole, app)
        return row

    def _http(self, flow: ZeekFlow, row: dict[str, object]) -> None:
        from sensor.http import redact_path

        redact = self.cfg.privacy.redact_http_query
        requests = sorted((r for r in flow.http if r[1]), key=lambda r: r[0])
        paths = [
            redact_path(wire_path(r[3]), redact_query=redact, host=r[2] if isinstance(r[2], str) else None)
            for r in requests
            if isinstance(r[3], str)
        ]
        paths = list(dict.fromkeys(_text(p) or "" for p in paths))
        first = requests[0] if requests else None
        row["http_method"] = _text(first[1]) if first else None
        row["http_host"] = _text(first[2]) if first else None
        row["http_path"] = paths[0] if paths else None
        row["http_paths"] = paths or None
        row["http_requests"] = len(requests)

    def _service(
        self, proto: str, orig_p: int, resp_p: int, orig_role: str, resp_role: str, app: str | None
    ) -> tuple[str | None, str | None]:
        """As sensor.analyze.Analyzer._services: a client-range row names only a media flow (client ranges
        span 1024-65535 by default, [CLIRANGE])."""
        row = self.catalogue.match(proto, orig_p, resp_p, orig_role, resp_role)
        if row is None or (row.role == "client" and row.is_range and app not in MEDIA_APPS):
            return None, None
        return row.service, row.source


_COUNTERS = ("orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes")


def _catalogue(cfg: Config) -> Catalogue:
    from sensor.catalogue import Catalogue

    return Catalogue.load(cfg.ports, source=str(cfg.source) if cfg.source else None)


def _names() -> tuple[str, ...]:
    from sensor.schema import FLOW_SCHEMA

    return tuple(f.name for f in FLOW_SCHEMA)


def to_table(rows: Sequence[dict[str, object]], problems: Counter[str] | None = None) -> pa.Table:
    """Flow records -> an Arrow table of FLOW_SCHEMA (ts as UTC microseconds).

    A column converts in one piece; when that fails, its values convert one at a time, and a value that is
    not of the column's type is left null and counted (`zeek_bad_value`): one bad value costs one field.
    Strings holding bytes that are not UTF-8 (surrogate escapes) are stored with U+FFFD for those bytes.
    """
    import pyarrow as pa

    from sensor.schema import FLOW_SCHEMA

    names = _names()
    cols: dict[str, list[object]] = {name: [] for name in names}
    for r in rows:
        for name in names:
            v = r.get(name)
            if name in ("ts", "ts_end", "flow_start") and isinstance(v, float):
                v = round(v * 1_000_000) if math.isfinite(v) else None
            cols[name].append(v)
    arrays = []
    for f in FLOW_SCHEMA:
        kind = pa.int64() if pa.types.is_timestamp(f.type) else f.type
        try:
            arr = pa.array(cols[f.name], kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError, TypeError, ValueError):
            arr = pa.array([_one_value(v, kind, problems) for v in cols[f.name]], kind)
        arrays.append(arr.cast(f.type) if kind != f.type else arr)
    return pa.Table.from_arrays(arrays, schema=FLOW_SCHEMA)


def _one_value(v: object, kind: pa.DataType, problems: Counter[str] | None) -> object:
    import pyarrow as pa

    if isinstance(v, str):
        v = _text(v)
    elif isinstance(v, list):
        v = [_text(e) if isinstance(e, str) else e for e in v]
    try:
        pa.array([v], kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError, TypeError, ValueError):
        if problems is not None:
            problems[BAD_VALUE] += 1
        return None
    return v


# --------------------------------------------------------------------------------------------- state file


@dataclass
class State:
    """Where each log was left (`Position`) and which rotated files were read completely, per dir|log."""

    positions: dict[str, Position] = field(default_factory=dict)
    done: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> State:
        if path is None or not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            positions = {k: Position.from_dict(v) for k, v in data.get("positions", {}).items()}
            done = {k: [str(x) for x in v] for k, v in data.get("done", {}).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"state file {path}: unreadable ({exc}); move it away to start from scratch") from exc
        return cls(positions, done)

    def save(self, path: Path) -> None:
        """Write to a temporary name in the same directory, fsync, rename: a crash leaves the old state."""
        data = {
            "version": 1,
            "positions": {k: p.to_dict() for k, p in sorted(self.positions.items())},
            "done": dict(sorted(self.done.items())),
        }
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise SinkError(f"state file {path}: cannot write: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------- ingesting


@dataclass
class IngestResult:
    """What one `ingest-zeek` run did."""

    table: pa.Table  # the flow records written by this run (the latest `keep_rows` in follow mode)
    written: list[Any]
    report: CheckReport | None
    problems: Counter[str]
    records_by_log: Counter[str]
    dropped_no_ts: int
    violations_seen: bool
    seconds: float


class ZeekIngest:
    """Reads the Zeek logs of some directories into the lake: flow records, rules, findings, metrics.

    One-shot (default): every log up to its end, in time order, then the rules over everything written.
    `follow`: keeps reading the current logs, flushing every `sensor.interval` seconds (records, rules,
    metrics, then the state file), until `stop` is set; then a final flush. `ts_substitute` is for tests only.
    """

    def __init__(
        self,
        cfg: Config,
        directories: Sequence[Path],
        *,
        follow: bool = False,
        state_path: Path | None = None,
        rules: bool = True,
        metrics: SensorMetrics | None = None,
        ts_substitute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.5,
        settle_s: float = 2.0,
        chunk_flows: int = 100_000,
        keep_rows: int = 1_000_000,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        seen: dict[Path, None] = {}
        for d in directories:
            if not d.is_dir():
                raise SourceError(f"{d}: not a directory of Zeek logs")
            seen[d.resolve()] = None
        self.cfg = cfg
        self.directories = list(seen)
        self.follow = follow
        self.state_path = state_path
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.poll_s = poll_s
        self.chunk_flows = chunk_flows
        self.keep_rows = keep_rows
        self.problems: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self.state = State.load(state_path)
        self.topology = Topology.from_config(cfg)
        self.catalogue = _catalogue(cfg)
        self.assembler = FlowAssembler(cfg, topology=self.topology, catalogue=self.catalogue, problems=self.problems)
        self.streams: dict[str, LogStream] = {}
        for d in self.directories:
            for name in LOGS:
                key = f"{d}|{name}"
                self.streams[key] = LogStream(
                    d,
                    name,
                    follow=follow,
                    problems=self.problems,
                    position=self.state.positions.get(key),
                    done=self.state.done.get(key, ()),
                    ts_substitute=ts_substitute,
                    settle_s=settle_s,
                    max_line_bytes=max_line_bytes,
                    max_file_bytes=max_file_bytes,
                )
        if not follow and not any(any(d.glob(f"{n}*.log*")) for d in self.directories for n in LOGS):
            names = ", ".join(LOGS)
            raise SourceError(f"no Zeek logs ({names}) in {', '.join(map(str, self.directories))}")
        self._checker: Any = None
        self._tables: list[pa.Table] = []
        self._written: list[Any] = []
        self._violations = False
        if metrics is not None:
            for kind in (*PROBLEMS, UNKNOWN_CIPHER):
                metrics.decode_errors.labels(kind)

    # ---- running ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> IngestResult:
        started = time.monotonic()
        stop = stop or threading.Event()
        try:
            if self.follow:
                self._follow(stop)
            else:
                self._one_shot()
        finally:
            for s in self.streams.values():
                s.close()
        report = self._final_report()
        return IngestResult(
            table=self._kept(),
            written=self._written,
            report=report,
            problems=self.problems,
            records_by_log=self.assembler.records_by_log,
            dropped_no_ts=self.assembler.dropped_no_ts,
            violations_seen=self._violations or bool(report is not None and report.evaluation.violations),
            seconds=time.monotonic() - started,
        )

    def _one_shot(self) -> None:
        """Every log to its end, interleaved by time (rounds of `step` seconds), so that a connection's conn.log
        and ssl.log lines are joined in the same flush even when many flows are flushed in chunks."""
        step = float(max(self.cfg.sensor.interval, 60) * 10)
        streams = list(self.streams.values())
        for s in streams:
            self.assembler.add(s.read(float("-inf")))  # hold each log's first record: where time starts
        while True:
            heads = [s.held_ts for s in streams if not s.exhausted and s.held_ts is not None]
            if not heads:
                break
            horizon = min(heads) + step
            for s in streams:
                self.assembler.add(s.read(horizon))
            if self.assembler.pending() >= self.chunk_flows:
                self._flush(evaluate=False)
        for s in streams:
            self.assembler.add(s.read(None))
        self._flush(evaluate=False)
        self._save_state()

    def _follow(self, stop: threading.Event) -> None:
        interval = float(self.cfg.sensor.interval)
        last = self.clock()
        while not stop.is_set():
            for s in self.streams.values():
                self.assembler.add(s.read(None))
            if self.clock() - last >= interval:
                self._flush(evaluate=self.rules)
                self._save_state()
                last = self.clock()
            stop.wait(self.poll_s)
        for s in self.streams.values():  # what arrived before the stop
            self.assembler.add(s.read(None))
        self._flush(evaluate=self.rules)
        self._save_state()

    def poll(self) -> int:
        """Read what is available now without flushing (tests drive follow mode step by step); records read."""
        before = sum(self.assembler.records_by_log.values())
        for s in self.streams.values():
            self.assembler.add(s.read(None))
        return sum(self.assembler.records_by_log.values()) - before

    def flush(self) -> pa.Table:
        """Write what was read, evaluate the rules over it (follow mode), save the state; the records written."""
        table = self._flush(evaluate=self.rules and self.follow)
        self._save_state()
        return table

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

    # ---- flushing --------------------------------------------------------------------------------------------
    def _flush(self, *, evaluate: bool) -> pa.Table:
        from sensor.lakes import open_lake

        rows = self.assembler.take()
        table = to_table(rows, self.problems)
        if table.num_rows:
            lake = open_lake(self.cfg, metrics=self.metrics)
            try:
                self._written += lake.write("flows", table, sensor_id=self.cfg.sensor.id)
            finally:
                lake.close()
            self._keep(table)
        m = self.metrics
        if m is not None:
            m.capture_packets.labels("zeek").inc(self.assembler.conn_packets)
            self.assembler.conn_packets = 0
            m.observe_flows(table)
            m.last_flush.set(time.time())
        self._count_problems()
        if evaluate and table.num_rows:
            report = self._check(table)
            self._violations = self._violations or bool(report.evaluation.violations)
        return table

    def _count_problems(self) -> None:
        if self.metrics is None:
            return
        for kind, n in self.problems.items():
            delta = n - self._reported[kind]
            if delta > 0:
                self.metrics.decode_errors.labels(kind).inc(delta)
                self._reported[kind] = n

    def _check(self, table: pa.Table) -> CheckReport:
        from sensor.rules.check import Checker

        if self._checker is None:
            self._checker = Checker(self.cfg, topology=self.topology, catalogue=self.catalogue)
        from sensor.lakes import open_lake

        lake = open_lake(self.cfg, metrics=self.metrics)
        try:
            report: CheckReport = self._checker.check_table(table, lake, now=datetime.now(UTC))
        finally:
            lake.close()
        if self.metrics is not None:
            self.metrics.observe_evaluation(
                report.evaluation.results,
                report.fresh,
                self._checker.broken_files,
                time.time(),
            )
        return report

    def _keep(self, table: pa.Table) -> None:
        self._tables.append(table)
        if self.follow:
            while len(self._tables) > 1 and sum(t.num_rows for t in self._tables) > self.keep_rows:
                self._tables.pop(0)

    def _kept(self) -> pa.Table:
        import pyarrow as pa

        from sensor.schema import FLOW_SCHEMA

        return pa.concat_tables(self._tables) if self._tables else FLOW_SCHEMA.empty_table()

    def _final_report(self) -> CheckReport | None:
        if not self.rules:
            return None
        return self._check(self._kept())

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        for key, s in self.streams.items():
            pos = s.position()
            if pos is not None:
                self.state.positions[key] = pos
            else:
                self.state.positions.pop(key, None)
            if s.done:
                self.state.done[key] = list(s.done)
        self.state.save(self.state_path)


# --------------------------------------------------------------------------------------------- topology file


def topology_tsv(cfg: Config) -> str:
    """The site topology for the Zeek package (deploy/zeek/): a Zeek Input-framework TSV of cidr, kind, name.

    kind `role`: a Lync role's address or CIDR; kind `zone`: an `internal` or `perimeter` network. Zeek looks
    an address up by longest prefix in each, as sensor.topology does: a role first, else `client` inside an
    internal network, else `external`. For a prefix listed twice the first role (KNOWN_ROLES order) or zone
    (perimeter first) wins, as in sensor.topology.
    """
    topo = Topology.from_config(cfg)
    lines = ["#separator \\x09", "#fields\tcidr\tkind\tname"]
    for kind, rows in (("role", topo.roles_table()), ("zone", topo.networks_table())):
        seen: set[str] = set()
        for name, cidr in rows:
            if cidr not in seen:
                seen.add(cidr)
                lines.append(f"{cidr}\t{kind}\t{name}")
    return "\n".join(lines) + "\n"


def write_topology(cfg: Config, out: Path | None) -> str:
    text = topology_tsv(cfg)
    if out is None:
        sys.stdout.write(text)
        return text
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)  # Zeek re-reads the file (Input::REREAD) when it changes: never half a file
    except OSError as exc:
        raise SinkError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    return text


# --------------------------------------------------------------------------------------------- command line


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `ingest-zeek` and `zeek-topology` on the lync-sensor subparsers."""
    z = sub.add_parser("ingest-zeek", help="read Zeek logs (conn, ssl, x509, sip, http, lync) into the lake")
    z.add_argument("directories", nargs="+", type=Path, metavar="DIR")
    common(z)
    z.add_argument("--lake", type=Path, default=None, help="lake directory (overrides sensor.lake)")
    z.add_argument("--follow", action="store_true", help="keep following the current logs until SIGTERM/SIGINT")
    z.add_argument(
        "--state",
        type=Path,
        default=None,
        help="state file (where each log was left); default with --follow: <lake>/_state/zeek-<sensor id>.json",
    )
    z.add_argument("--no-rules", action="store_true", help="do not evaluate the rules")
    z.add_argument("--serve", action="store_true", help="serve /metrics (metrics.listen) while running")
    t = sub.add_parser("zeek-topology", help="write the site topology as a TSV for the Zeek package")
    common(t)
    t.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")


_PROBLEM_TEXT = {
    "zeek_malformed_line": "malformed line(s) skipped",
    "zeek_header_change": "header change(s) mid-file (schema switched)",
    "zeek_truncated_gzip": "truncated gzip file(s) (lines before the damage kept)",
    "zeek_rotated_while_reading": "log rotation(s) while reading (old file read to its end)",
    "zeek_unparseable_ts": "line(s) with an unparseable ts (facts kept, joined by uid)",
    "zeek_rotated_file_lost": "file(s) being read at the last stop no longer found",
    "zeek_truncated_file": "file(s) truncated in place (read again from the start)",
    "zeek_bad_value": "value(s) not of their field's type (left unset, the rest of the line kept)",
    "zeek_line_too_long": "line(s) longer than the line cap skipped",
    "zeek_file_size_cap": "file(s) cut at the decompressed size cap",
    UNKNOWN_CIPHER: "cipher name(s) not in cipher_suites.csv (tls_cipher left null)",
}


def problem_lines(result: IngestResult) -> list[str]:
    out = [f"{n:,} {_PROBLEM_TEXT.get(k, k)}" for k, n in sorted(result.problems.items()) if n]
    if result.dropped_no_ts:
        out.append(f"{result.dropped_no_ts:,} flow(s) without any usable ts dropped")
    return out


def run_command(args: argparse.Namespace, cfg: Config) -> int:
    """The `ingest-zeek` and `zeek-topology` subcommands (exit 0/1/2 as `analyze`)."""
    if args.command == "zeek-topology":
        write_topology(cfg, args.out)
        if args.out is not None:
            print(f"Wrote the topology for Zeek to {args.out}", file=sys.stderr)
        return 0
    return _ingest(args, cfg)


def _ingest(args: argparse.Namespace, cfg: Config) -> int:
    import signal

    from sensor.metrics import SensorMetrics
    from sensor.summary import render

    lake = Path(cfg.sensor.lake)
    state = args.state
    if state is None and args.follow:
        state = lake / "_state" / f"zeek-{cfg.sensor.id}.json"
    metrics = SensorMetrics()
    server = None
    if args.serve:
        from sensor.exporter import MetricsServer

        server = MetricsServer(metrics.registry, cfg.metrics).start()
        print(f"Serving {server.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    if args.follow:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"Following Zeek logs in {', '.join(map(str, args.directories))}; state {state}", file=sys.stderr)
    try:
        ingest = ZeekIngest(cfg, args.directories, follow=args.follow, state_path=state, rules=not args.no_rules,
                            metrics=metrics)  # fmt: skip
        result = ingest.run(stop)
    finally:
        if server is not None:
            server.stop()
    problems = problem_lines(result)
    if problems:
        print("warning: zeek logs: " + "; ".join(problems), file=sys.stderr)
    by_log = ", ".join(f"{k} {v:,}" for k, v in sorted(result.records_by_log.items())) or "none"
    n = len(ingest.directories)
    print(
        f"Read Zeek logs from {n} {'directory' if n == 1 else 'directories'}: "
        f"{sum(result.records_by_log.values()):,} lines ({by_log}) in {result.seconds:.1f} s."
    )
    total = sum(w.rows for w in result.written)
    print(f"Wrote {total:,} flow records to {lake}/flows in {len(result.written)} file(s).")
    print(render(result.table))
    code = 0
    if result.report is not None:
        from sensor.rules.check import problem_lines as rule_problem_lines
        from sensor.rules.check import render as render_findings

        print(render_findings(result.report, problems=False))
        for line in rule_problem_lines(result.report):
            print(line, file=sys.stderr)
        # as analyze: an incomplete result (a rule could not run) is exit 2, whatever the other rules found
        if result.report.evaluation.problems:
            code = 2
        elif result.violations_seen:
            code = 1
    return code
