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
    # Filled by the native parser (sensor.facts.sip), so offer and answer can be paired per call.
    call_id: str | None = None
    cseq: int | None = None
    method: str | None = None  # request method, or the CSeq method of a response
    status: int | None = None
    ts_ns: int = 0
    rtcp_port: int | None = None
    rtcp_address: str | None = None
    rtcp_mux: bool = False
    media: str | None = None  # m= media type: audio, video, application ...
    crypto_suites: tuple[str, ...] = ()  # a=crypto suite names only: the inline key is a secret


@dataclass(frozen=True)
class SipMessage:
    """One SIP message as the native parser read it (no URIs, no numbers)."""

    method: str | None
    status: int | None
    call_id: str | None
    cseq: int | None
    cseq_method: str | None
    content_type: str | None
    content_length: int | None
    media: tuple[SdpMedia, ...]
    ts_ns: int


@dataclass
class SipFacts:
    """Plaintext SIP seen on one flow. URIs and numbers are personal data and are never kept."""

    messages: int = 0
    methods: set[str] = field(default_factory=set)
    status_codes: set[int] = field(default_factory=set)
    media: list[SdpMedia] = field(default_factory=list)
    # Native path: messages of the reassembled TCP prefix (replaced at each re-parse) and the others.
    stream_messages: list[SipMessage] = field(default_factory=list)
    other_messages: list[SipMessage] = field(default_factory=list)

    def set_stream(self, msgs: list[SipMessage]) -> None:
        """The reassembled prefix was (re-)parsed: its messages replace the previous parse's."""
        self.stream_messages = msgs
        self._refresh()

    def add_message(self, msg: SipMessage) -> None:
        """One SIP message outside the prefix: a UDP datagram, or a TCP segment past the prefix."""
        self.other_messages.append(msg)
        self.messages += 1
        if msg.method:
            self.methods.add(msg.method)
        if msg.status is not None:
            self.status_codes.add(msg.status)
        self.media.extend(msg.media)

    def _refresh(self) -> None:
        msgs = self.stream_messages + self.other_messages
        self.messages = len(msgs)
        self.methods = {m.method for m in msgs if m.method}
        self.status_codes = {m.status for m in msgs if m.status is not None}
        self.media = [md for m in msgs for md in m.media]

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
