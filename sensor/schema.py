"""The flow schema, defined once: every column's type and meaning; Parquet and SQL rules derive from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import pyarrow as pa

ColumnKind = Literal["key", "counter", "fact"]


@dataclass(frozen=True)
class Column:
    """One column of a lake table: its name, Arrow type, the sentence that documents it, and its kind.

    kind: "key" names the flow and its interval record (addresses, ports, uid, times); "counter" is counted
    per interval record, so a flow's total is the sum over its records; "fact" is what was seen on the flow.
    """

    name: str
    type: pa.DataType
    description: str
    kind: ColumnKind = "fact"


_TS = pa.timestamp("us", tz="UTC")
_STRS = pa.list_(pa.string())

FLOW_COLUMNS: tuple[Column, ...] = (
    Column(
        "ts", _TS, "Start of this interval record: the first packet of the flow seen in the interval (UTC).", kind="key"
    ),
    Column("ts_end", _TS, "Last packet of the flow seen in this interval (UTC).", kind="key"),
    Column(
        "flow_start",
        _TS,
        "First packet of the whole flow (UTC); the same on every interval record of a flow.",
        kind="key",
    ),
    Column(
        "interval_seq",
        pa.int32(),
        "0 for the first interval record of a flow, then 1, 2, ... for long flows.",
        kind="key",
    ),
    Column(
        "uid", pa.string(), "Flow identifier, stable across the interval records of one flow (Zeek-style).", kind="key"
    ),
    Column("sensor_id", pa.string(), "Sensor that observed the flow ([sensor] id in the config).", kind="key"),
    Column("source", pa.string(), "Front end that produced the record: 'pcap', 'live' or 'zeek'.", kind="key"),
    Column(
        "orig_h", pa.string(), "Originator address (the side that sent the first packet or the TCP SYN).", kind="key"
    ),
    Column("orig_p", pa.int32(), "Originator port.", kind="key"),
    Column("resp_h", pa.string(), "Responder address.", kind="key"),
    Column("resp_p", pa.int32(), "Responder port.", kind="key"),
    Column("proto", pa.string(), "Transport protocol: 'tcp' or 'udp'.", kind="key"),
    Column("ip_version", pa.int8(), "4 or 6.", kind="key"),
    Column(
        "service",
        pa.string(),
        "Lync service behind the port, from the port catalogue (null when none matches).",
    ),
    Column(
        "service_source",
        pa.string(),
        "Source tag of the catalogue row that named the service, e.g. '[PORTS]'.",
    ),
    Column(
        "orig_role",
        pa.string(),
        "Lync role of the originator: a role name of the config, 'client' or 'external'.",
    ),
    Column(
        "resp_role",
        pa.string(),
        "Lync role of the responder: a role name of the config, 'client' or 'external'.",
    ),
    Column(
        "app",
        pa.string(),
        "Application protocol seen: tls, sip, http, rtp, srtp, rtcp, srtcp, stun, ms-turn, sslv2, dtls, or null.",
    ),
    Column("duration", pa.float64(), "Seconds between ts and ts_end."),
    Column("orig_pkts", pa.int64(), "Packets from the originator in this interval.", kind="counter"),
    Column("resp_pkts", pa.int64(), "Packets from the responder in this interval.", kind="counter"),
    Column(
        "orig_bytes",
        pa.int64(),
        "Transport payload bytes from the originator in this interval (as Zeek).",
        kind="counter",
    ),
    Column(
        "resp_bytes",
        pa.int64(),
        "Transport payload bytes from the responder in this interval (as Zeek).",
        kind="counter",
    ),
    Column(
        "orig_ip_bytes", pa.int64(), "IP bytes (headers included) from the originator in this interval.", kind="counter"
    ),
    Column(
        "resp_ip_bytes", pa.int64(), "IP bytes (headers included) from the responder in this interval.", kind="counter"
    ),
    Column(
        "orig_first_byte",
        pa.int16(),
        "First transport payload byte the originator sent in the flow (0x16 starts TLS): for TCP the byte at "
        "stream offset 0 whatever order the segments arrived in; null if none, or if offset 0 was not seen.",
    ),
    Column(
        "resp_first_byte",
        pa.int16(),
        "First transport payload byte the responder sent in the flow (TCP: stream offset 0); null if not seen.",
    ),
    Column(
        "tcp_midstream",
        pa.bool_(),
        "TCP only: true when a direction's SYN was not seen (the flow was picked up mid-stream, so stream offset "
        "0 and facts that need it are unknown); false when both directions started at their SYN.",
    ),
    # TLS
    Column(
        "tls_version",
        pa.string(),
        "Negotiated TLS/SSL version (ServerHello, including supported_versions): SSLv2, SSLv3, TLSv10..TLSv13.",
    ),
    Column("tls_record_version", pa.string(), "Record-layer version of the first ClientHello record."),
    Column("tls_client_version", pa.string(), "legacy_version field of the ClientHello."),
    Column(
        "tls_client_max_version",
        pa.string(),
        "Highest version the client offered (ClientHello version or supported_versions extension).",
    ),
    Column("tls_cipher", pa.string(), "Negotiated cipher suite as the IANA code, e.g. '0xC030' (SSLv2: 6 hex)."),
    Column("tls_sni", pa.string(), "Server name indication from the ClientHello."),
    Column("tls_server_cert", pa.bool_(), "A server Certificate message with at least one certificate was seen."),
    Column("tls_cert_requested", pa.bool_(), "The server sent a CertificateRequest (visible only up to TLS 1.2)."),
    Column(
        "tls_client_cert",
        pa.bool_(),
        "The client answered with a non-empty Certificate (mutual TLS); false if empty; null if not visible.",
    ),
    Column("tls_resumed", pa.bool_(), "Abbreviated handshake: ServerHello echoed the client's session id."),
    Column("tls_sslv2_hello", pa.bool_(), "The ClientHello was in SSLv2 record format."),
    Column(
        "tls_pseudo",
        pa.bool_(),
        "MS-TURN pseudo-TLS (R14): SSLv2/TLS hello answered by ServerHello+ServerHelloDone, no Certificate.",
    ),
    Column("tls_cert_names", _STRS, "Subject CN and DNS SAN names of the server certificate, when visible."),
    Column(
        "tls_alert",
        pa.string(),
        "Last TLS alert description code seen in clear, e.g. '40' (handshake_failure).",
    ),
    # SIP / SDP
    Column("sip_plain", pa.bool_(), "Plaintext SIP was seen on this flow (any port, TCP or UDP)."),
    Column("sip_messages", pa.int64(), "Plaintext SIP messages seen in the flow (whole flow)."),
    Column("sip_methods", _STRS, "Distinct SIP request methods seen (URIs are never stored)."),
    Column("sip_status_codes", pa.list_(pa.int32()), "Distinct SIP response status codes seen."),
    Column("sdp_media_ports", pa.list_(pa.int32()), "Media ports announced in SDP m= lines on this flow."),
    Column("sdp_protos", _STRS, "Transport protocols of SDP m= lines, e.g. 'RTP/AVP', 'RTP/SAVP'."),
    Column("sdp_crypto", pa.bool_(), "An SDP a=crypto attribute was seen (SRTP keying)."),
    Column("sdp_encryption", pa.string(), "Value of a=encryption: (required/optional/rejected) when seen."),
    # media
    Column(
        "media_encrypted",
        pa.bool_(),
        "true: SRTP/SRTCP; false: plain RTP/RTCP; null: not media, or media whose protection cannot be told.",
    ),
    Column("media_confidence", pa.float32(), "Confidence of media_encrypted, 0..1 (null when not media)."),
    Column(
        "media_evidence",
        _STRS,
        "The evidence behind media_encrypted, e.g. 'sdp:RTP/SAVP', 'rtcp:srtcp-trailer'.",
    ),
    Column("rtp_payload_types", pa.list_(pa.int32()), "RTP payload types seen on the flow."),
    Column("rtp_ssrcs", pa.int32(), "Distinct RTP SSRCs seen on the flow (lower bound)."),
    Column("rtp_packets", pa.int64(), "RTP-shaped packets on the flow (whole flow)."),
    Column("rtcp_packets", pa.int64(), "RTCP-shaped packets on the flow (whole flow)."),
    # STUN / TURN
    Column("stun_messages", pa.int64(), "STUN/TURN messages seen on the flow."),
    Column(
        "ms_turn",
        pa.bool_(),
        "Microsoft MS-TURN attributes (MS-VERSION, MS-MAGIC-COOKIE ...) or framing seen.",
    ),
    # HTTP
    Column("http_method", pa.string(), "Method of the first plaintext HTTP request."),
    Column("http_host", pa.string(), "Host header of the first plaintext HTTP request."),
    Column(
        "http_path",
        pa.string(),
        "Path template of the first plaintext HTTP request: the web service's prefix as sent, segments naming "
        "a person or a number as placeholders (<user>, <conference-id>, <number>, <id>), query string '?<redacted>'.",
    ),
    Column("http_paths", _STRS, "Distinct plaintext HTTP request path templates on the flow (as http_path)."),
    Column("http_requests", pa.int64(), "Plaintext HTTP requests seen on the flow."),
)

FLOW_SCHEMA: pa.Schema = pa.schema(
    [pa.field(c.name, c.type, metadata={"description": c.description}) for c in FLOW_COLUMNS],
    metadata={"table": "flows", "schema_version": "1"},
)
# The per-interval counters: a flow's totals are their sums over its interval records.
FLOW_COUNTERS: tuple[str, ...] = tuple(c.name for c in FLOW_COLUMNS if c.kind == "counter")

APP_VALUES: tuple[str, ...] = (
    "tls",
    "sip",
    "http",
    "rtp",
    "srtp",
    "rtcp",
    "srtcp",
    "stun",
    "ms-turn",
    "sslv2",
    "dtls",
)
# The one spelling of TLS/SSL versions, as the lake, the rules and the metrics hold them: wire code -> name.
TLS_VERSION_CODES: Mapping[int, str] = MappingProxyType(
    {
        0x0002: "SSLv2",
        0x0300: "SSLv3",
        0x0301: "TLSv10",
        0x0302: "TLSv11",
        0x0303: "TLSv12",
        0x0304: "TLSv13",
    }
)
TLS_VERSIONS: tuple[str, ...] = tuple(TLS_VERSION_CODES.values())


def tls_version_name(code: int) -> str | None:
    """Map a wire version (0x0002, 0x0300 .. 0x0304) to the schema's name (TLSv12); None for unknown codes."""
    return TLS_VERSION_CODES.get(code)


def describe(column: str) -> str:
    """The documented meaning of a flow column."""
    for c in FLOW_COLUMNS:
        if c.name == column:
            return c.description
    raise KeyError(column)


FINDING_COLUMNS: tuple[Column, ...] = (
    Column("finding_id", pa.string(), "Stable id of the finding: hash of rule, flow and severity (no duplicates)."),
    Column("ts", _TS, "Start of the flow (within the evaluation window) the finding is about (UTC)."),
    Column("ts_end", _TS, "Last packet of that flow within the window (UTC)."),
    Column("rule_id", pa.string(), "Rule that fired, e.g. 'R1' (queries/<area>/<RULE-ID>_<slug>.sql)."),
    Column("severity", pa.string(), "violation, warning or info (the reference's V/W/I)."),
    Column("title", pa.string(), "Title of the rule."),
    Column("uid", pa.string(), "The flow (uid of the flows table)."),
    Column("orig_h", pa.string(), "Originator address of the flow."),
    Column("orig_p", pa.int32(), "Originator port."),
    Column("resp_h", pa.string(), "Responder address."),
    Column("resp_p", pa.int32(), "Responder port."),
    Column("proto", pa.string(), "tcp or udp."),
    Column("service", pa.string(), "Lync service behind the port (port catalogue)."),
    Column("orig_role", pa.string(), "Lync role of the originator."),
    Column("resp_role", pa.string(), "Lync role of the responder."),
    Column("app", pa.string(), "Application protocol of the flow."),
    Column("evidence", pa.string(), "The facts that convict, in words."),
    Column("requirement", pa.string(), "The documented sentence the rule checks, quoted."),
    Column("source", pa.string(), "Source tag(s) of the requirement in lync-reference.md, e.g. '[ENC]'."),
    Column("sensor_id", pa.string(), "Sensor whose flows were evaluated."),
    Column("evaluated_at", _TS, "When the rule ran (UTC)."),
)

FINDING_SCHEMA: pa.Schema = pa.schema(
    [pa.field(c.name, c.type, metadata={"description": c.description}) for c in FINDING_COLUMNS],
    metadata={"table": "findings", "schema_version": "1"},
)
