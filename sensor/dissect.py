"""Wireshark's dissectors through pyshark: the only module that imports pyshark.

It reads the small capture of fact packets the fast path selected and turns each dissected packet into
a DissectedPacket: the frame number and every field of the protocols we need, keyed by Wireshark's own
field names ("tls.handshake.type"), so nothing else depends on pyshark objects.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.errors import SourceError

log = logging.getLogger(__name__)

# Top-level protocols whose fields we keep (tshark -J); x509 fields arrive inside "tls".
PROTOCOLS = "frame tls sip sdp http stun classicstun dtls"
DISPLAY_FILTER = "tls or sip or http.request or http.response or stun or classicstun or dtls"
PREFS = {
    # Some TLS server flights arrive out of order in real captures (shared/captures/README.md).
    "tcp.reassemble_out_of_order": "TRUE",
    "tcp.desegment_tcp_streams": "TRUE",
    "tls.desegment_ssl_records": "TRUE",
    "tls.desegment_ssl_application_data": "FALSE",
}
HEURISTICS = ("sip_tcp", "sip_udp", "stun_udp", "stun_tcp", "dtls_udp")


@dataclass(frozen=True)
class DissectedPacket:
    """One packet as Wireshark saw it: frame number (1-based, in the fact capture) and its fields."""

    number: int
    fields: Mapping[str, tuple[str, ...]]

    def get(self, name: str) -> tuple[str, ...]:
        return self.fields.get(name, ())

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def has(self, prefix: str) -> bool:
        return any(k == prefix or k.startswith(prefix + ".") for k in self.fields)


# Fields whose parts Wireshark reports as separate children; kept joined as "<field>:<value>" so that
# attributes without a value (a=sendrecv) or with parsed sub-fields (a=crypto) cannot shift the pairing.
PAIRS = {
    "sdp.media_attribute.field": ("sdp.media_attribute.value", "sdp.media_attribute"),
    "sdp.session_attr.field": ("sdp.session_attr.value", "sdp.session_attribute"),
}


def _flatten(obj: Any, key: str | None, out: dict[str, list[str]]) -> None:
    if isinstance(obj, dict):
        for pkey, (vkey, joined) in PAIRS.items():
            if pkey in obj:
                out.setdefault(joined, []).append(f"{obj[pkey]}:{obj.get(vkey, '')}")
        for k, v in obj.items():
            _flatten(v, k, out)
    elif isinstance(obj, list):
        for v in obj:
            _flatten(v, key, out)
    elif key is not None and obj is not None:
        out.setdefault(key, []).append(str(obj))


def tshark_path() -> str:
    path = shutil.which("tshark")
    if not path:
        raise SourceError("tshark not found on PATH (install the Debian package 'tshark': make setup)")
    return path


def dissect(capture: Path, *, decode_as: Iterable[tuple[str, int, str]] = ()) -> Iterator[DissectedPacket]:
    """Dissect every packet of `capture` that carries TLS, SIP, HTTP, STUN or DTLS.

    decode_as: (transport, port, protocol) entries, e.g. ("tcp", 3000, "tls"), for services on ports
    Wireshark does not associate with them by default.
    """
    import pyshark  # the one place pyshark is imported

    params: list[str] = ["-J", PROTOCOLS]
    for h in HEURISTICS:
        params += ["--enable-heuristic", h]
    cap = pyshark.FileCapture(
        str(capture),
        use_json=True,
        keep_packets=False,
        display_filter=DISPLAY_FILTER,
        override_prefs=PREFS,
        decode_as={f"{t}.port=={p}": proto for t, p, proto in decode_as},
        custom_parameters=params,
        tshark_path=tshark_path(),
    )
    try:
        for pkt in cap:
            fields: dict[str, list[str]] = {}
            for layer in pkt.layers:
                if layer.layer_name in ("eth", "ip", "ipv6", "tcp", "udp", "sll", "vlan"):
                    continue
                for one in (layer, *getattr(layer, "duplicate_layers", ())):
                    _flatten(getattr(one, "_all_fields", {}), None, fields)
            yield DissectedPacket(int(pkt.frame_info.number), {k: tuple(v) for k, v in fields.items()})
    finally:
        cap.close()
