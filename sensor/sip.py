"""SIP and SDP facts per flow from dissected plaintext SIP: methods, status codes, SDP media and crypto."""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.dissect import DissectedPacket


@dataclass(frozen=True)
class SdpMedia:
    """One SDP m= line with its connection address: where a media stream is announced to arrive."""

    address: str | None
    port: int
    proto: str
    crypto: bool
    encryption: str | None
    is_answer: bool


@dataclass
class SipFacts:
    """Plaintext SIP seen on one flow. URIs and numbers are personal data and are never kept."""

    messages: int = 0
    methods: set[str] = field(default_factory=set)
    status_codes: set[int] = field(default_factory=set)
    media: list[SdpMedia] = field(default_factory=list)

    def observe(self, p: DissectedPacket, direction: int) -> None:
        requests = p.get("sip.Method")
        statuses = p.get("sip.Status-Code")
        self.messages += len(p.get("sip.Request-Line")) + len(p.get("sip.Status-Line"))
        self.methods.update(requests)
        self.status_codes.update(int(s) for s in statuses if s.isdigit())
        ports = p.get("sdp.media.port")
        if not ports:
            return
        protos = p.get("sdp.media.proto")
        addrs = p.get("sdp.connection_info.address")
        attrs = [a.split(":", 1) for a in p.get("sdp.media_attribute") + p.get("sdp.session_attribute")]
        crypto = "crypto" in p.get("sdp.media_attribute.field") or any(a[0] == "crypto" for a in attrs)
        encryption = None
        for a in attrs:
            if a[0] == "encryption" and len(a) == 2:
                encryption = a[1]
        # An SDP in a response (200 OK) is the answer; in a request it is the offer (RFC 3264).
        is_answer = bool(statuses)
        for i, port in enumerate(ports):
            if not port.isdigit():
                continue
            addr = addrs[min(i, len(addrs) - 1)] if addrs else None
            proto = protos[min(i, len(protos) - 1)] if protos else ""
            self.media.append(SdpMedia(addr, int(port), proto, crypto, encryption, is_answer))

    def columns(self) -> dict[str, object]:
        return {
            "sip_methods": sorted(self.methods) or None,
            "sip_status_codes": sorted(self.status_codes) or None,
            "sdp_media_ports": sorted({m.port for m in self.media}) or None,
            "sdp_protos": sorted({m.proto for m in self.media if m.proto}) or None,
            "sdp_crypto": any(m.crypto for m in self.media) if self.media else None,
            "sdp_encryption": next((m.encryption for m in self.media if m.encryption), None),
        }
