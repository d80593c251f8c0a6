"""Zeek's values in the flow schema's terms: TLS facts from ssl.log/x509.log, cipher codes, alert codes, HTTP
paths in their wire form, and flow records as an Arrow table of FLOW_SCHEMA."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from sensor.catalogue import Catalogue
from sensor.schema import FLOW_SCHEMA, tls_version_name
from sensor.sources.zeek.base import BAD_VALUE

UNKNOWN_CIPHER = "zeek_unknown_cipher"  # a cipher name cipher_suites.csv does not list (tls_cipher stays null)
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
NOT_SIP = frozenset({"tls", "sslv2", "dtls", "ms-turn", "http"})
_URI_SAFE = "/:@!$&'()*+,;=?"  # RFC 3986 pchar and the query separator; everything else is %-encoded
_RDN_SPLIT = re.compile(r"(?<!\\),")


def _host_like(name: str) -> bool:
    return "." in name and " " not in name and "@" not in name  # as sensor.tls: a CN that names a host


def utf8_text(value: object) -> str | None:
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
        return tls_version_name(int(m.group(1))), False
    return (zeek, False) if zeek in ("SSLv2", "SSLv3", "TLSv10", "TLSv11", "TLSv12", "TLSv13") else (None, False)


def alert_code(name: str | None) -> str | None:
    """The numeric TLS alert code (as text) of a Zeek alert name or "unknown-N"; None if unknown."""
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
    return list(dict.fromkeys(utf8_text(n) or "" for n in names))


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
        "tls_sni": utf8_text(ssl.get("server_name")),
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


# --------------------------------------------------------------------------------------------- the Arrow table


def flow_columns() -> tuple[str, ...]:
    """The FLOW_SCHEMA column names, in order."""
    return tuple(f.name for f in FLOW_SCHEMA)


def to_table(rows: Sequence[dict[str, object]], problems: Counter[str] | None = None) -> pa.Table:
    """Flow records -> an Arrow table of FLOW_SCHEMA (ts as UTC microseconds).

    A column converts in one piece; when that fails, its values convert one at a time, and a value that is
    not of the column's type is left null and counted (`zeek_bad_value`): one bad value costs one field.
    Strings holding bytes that are not UTF-8 (surrogate escapes) are stored with U+FFFD for those bytes.
    """
    names = flow_columns()
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
    if isinstance(v, str):
        v = utf8_text(v)
    elif isinstance(v, list):
        v = [utf8_text(e) if isinstance(e, str) else e for e in v]
    try:
        pa.array([v], kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError, TypeError, ValueError):
        if problems is not None:
            problems[BAD_VALUE] += 1
        return None
    return v
