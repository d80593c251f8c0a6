"""TLS facts per flow from dissected handshake packets: versions, cipher, SNI, MTLS, resumption, pseudo-TLS."""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.facts.dissect import DissectedPacket
from sensor.schema import tls_version_name

# Handshake message types (RFC 5246 §7.4; SSLv2 message types differ and are read from v2 records).
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_CERTIFICATE, HS_SERVER_KEY_EXCHANGE = 1, 2, 11, 12
HS_CERTIFICATE_REQUEST, HS_SERVER_HELLO_DONE, HS_CLIENT_KEY_EXCHANGE = 13, 14, 16
SSL2_CLIENT_MASTER_KEY, SSL2_SERVER_HELLO = 2, 4
SSL2_RECORD = "0x0002"


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v, 0)
    except ValueError:
        return None


def _code(v: str, width: int = 4) -> str:
    return "0x" + format(int(v, 16), f"0{width}X")


def _looks_like_host(name: str) -> bool:
    return "." in name and " " not in name and "@" not in name


@dataclass
class TlsFacts:
    """What the dissected handshake shows for one flow; direction 0 = originator (client)."""

    record_version: str | None = None
    client_version: str | None = None
    client_max: int | None = None
    client_session_id: str | None = None
    sni: str | None = None
    sslv2_client_hello: bool = False
    sslv2_server_hello: bool = False
    server_version: int | None = None
    cipher: str | None = None
    server_session_id: str | None = None
    server_types: list[int] = field(default_factory=list)
    client_types: list[int] = field(default_factory=list)
    server_certs: int | None = None
    client_certs: int | None = None
    cert_requested: bool = False
    alert: str | None = None
    cert_names: list[str] = field(default_factory=list)
    server_hello_done_with_hello: bool = False
    # Filled only by the native stream parser (sensor.facts.tls); they let columns() say "unknown" (null)
    # where the Wireshark path, which sees selected packets only, has to say false.
    native: bool = False
    client_hello_seen: bool = False
    server_hello_seen: bool = False
    server_flight_done: bool = False  # ServerHelloDone, or the flight ended in ChangeCipherSpec (resumption)
    hello_retry: bool = False  # TLS 1.3 HelloRetryRequest
    client_ccs: bool = False
    server_ccs: bool = False
    client_app_data: bool = False
    server_app_data: bool = False

    def observe(self, p: DissectedPacket, direction: int) -> None:
        types = [t for t in (_int(v) for v in p.get("tls.handshake.type")) if t is not None]
        v2 = SSL2_RECORD in p.get("tls.record.version")
        alerts = p.get("tls.alert_message.desc")
        if alerts:
            self.alert = alerts[-1]
        if direction == 0:
            self._client(p, types, v2)
        else:
            self._server(p, types, v2)

    def _client(self, p: DissectedPacket, types: list[int], v2: bool) -> None:
        self.client_types += types
        if HS_CLIENT_HELLO in types and self.client_version is None:
            self.record_version = p.first("tls.record.version")
            hv = p.first("tls.handshake.version")
            self.client_version = hv
            self.sslv2_client_hello = v2 or self.sslv2_client_hello
            offered = [_int(v) for v in p.get("tls.handshake.extensions.supported_version")]
            offered_ok = [v for v in offered if v is not None and v < 0x7F00]
            hv_i = _int(hv)
            self.client_max = max(offered_ok) if offered_ok else hv_i
            self.client_session_id = p.first("tls.handshake.session_id")
            self.sni = p.first("tls.handshake.extensions_server_name")
        if v2 and SSL2_CLIENT_MASTER_KEY in types:
            spec = p.first("tls.handshake.cipherspec")
            if spec:
                self.cipher = _code(spec, 6)
        if HS_CERTIFICATE in types:
            n = _int(p.first("tls.handshake.certificates_length"))
            self.client_certs = n if n is not None else 0

    def _server(self, p: DissectedPacket, types: list[int], v2: bool) -> None:
        self.server_types += types
        if v2 and SSL2_SERVER_HELLO in types:
            self.sslv2_server_hello = True
            self.server_version = 0x0002
            self.server_certs = 1 if p.get("tls.handshake.certificate_length") else 0
            return
        if HS_SERVER_HELLO in types and self.server_version is None:
            selected = [_int(v) for v in p.get("tls.handshake.extensions.supported_version")]
            selected_ok = [v for v in selected if v is not None]
            self.server_version = selected_ok[0] if selected_ok else _int(p.first("tls.handshake.version"))
            suite = p.first("tls.handshake.ciphersuite")
            self.cipher = _code(suite) if suite else None
            self.server_session_id = p.first("tls.handshake.session_id")
            self.server_hello_done_with_hello = HS_SERVER_HELLO_DONE in types
        if HS_CERTIFICATE in types:
            n = _int(p.first("tls.handshake.certificates_length"))
            self.server_certs = n if n is not None else 0
            names = list(p.get("x509ce.dNSName"))
            for key in ("x509sat.uTF8String", "x509sat.printableString", "x509sat.IA5String"):
                names += [v for v in p.get(key) if _looks_like_host(v)]
            for n_ in names:
                if n_ not in self.cert_names:
                    self.cert_names.append(n_)
        if HS_CERTIFICATE_REQUEST in types:
            self.cert_requested = True

    @property
    def pseudo(self) -> bool:
        """MS-TURN pseudo-TLS ([MS-TURN], R14): ServerHello and ServerHelloDone together, nothing else."""
        return (
            self.server_hello_done_with_hello
            and bool(self.server_types)
            and set(self.server_types) == {HS_SERVER_HELLO, HS_SERVER_HELLO_DONE}
        )

    @property
    def resumed(self) -> bool:
        sid = self.client_session_id
        return (
            bool(sid)
            and sid == self.server_session_id
            and HS_CERTIFICATE not in self.server_types
            and self.server_version is not None
            and self.server_version < 0x0304
        )

    def columns(self) -> dict[str, object]:
        cols = self._columns()
        if self.native:
            cols.update(self._native_nulls())
        return cols

    def _native_nulls(self) -> dict[str, object]:
        """Unknown is not false: what the reassembled bytes could not show becomes null."""
        tls13 = self.server_version is not None and self.server_version >= 0x0304 and not self.sslv2_server_hello
        out: dict[str, object] = {}
        # The flight is known whole only from its ServerHello (bytes picked up mid-stream may start later)
        # to its end; TLS 1.3 encrypts Certificate and CertificateRequest.
        flight_seen = self.server_hello_seen and self.server_flight_done and not tls13
        if not self.cert_requested:
            out["tls_cert_requested"] = False if flight_seen else None
        if self.server_certs is None:
            out["tls_server_cert"] = False if flight_seen else None
        if self.client_certs is None and not self.client_hello_seen:
            out["tls_client_cert"] = None  # a ClientKeyExchange without the flight's start proves nothing
        if not self.server_hello_seen and not self.sslv2_server_hello:
            out["tls_resumed"] = None
        if not self.client_hello_seen:
            out["tls_sslv2_hello"] = None
        return out

    def _columns(self) -> dict[str, object]:
        version = tls_version_name(self.server_version) if self.server_version is not None else None
        pseudo = self.pseudo
        client_cert: bool | None = None
        if self.client_certs is not None:
            client_cert = self.client_certs > 0
        elif self.cert_requested and HS_CLIENT_KEY_EXCHANGE in self.client_types:
            client_cert = False  # requested, and the client went on without sending a Certificate
        return {
            "tls_version": None if pseudo else version,
            "tls_record_version": tls_version_name(_int(self.record_version) or -1),
            "tls_client_version": tls_version_name(_int(self.client_version) or -1),
            "tls_client_max_version": tls_version_name(self.client_max) if self.client_max is not None else None,
            "tls_cipher": None if pseudo else self.cipher,
            "tls_sni": self.sni,
            "tls_server_cert": (self.server_certs or 0) > 0 if self.server_certs is not None else False,
            "tls_cert_requested": self.cert_requested,
            "tls_client_cert": client_cert,
            "tls_resumed": self.resumed,
            "tls_sslv2_hello": self.sslv2_client_hello,
            "tls_pseudo": pseudo,
            "tls_cert_names": self.cert_names or None,
            "tls_alert": self.alert,
        }

    @property
    def seen(self) -> bool:
        return bool(self.client_types or self.server_types or self.client_version or self.server_version)
