"""Everything known about one flow's handshakes and signalling: from Wireshark's dissected packets, or
from the native parsers over reassembled TCP bytes and UDP datagrams."""

from __future__ import annotations

from collections.abc import Callable

from sensor.facts import dtls, http, sip, stun, tls
from sensor.facts.dissect import DissectedPacket
from sensor.facts.http import HttpFacts
from sensor.facts.sip import SipFacts
from sensor.facts.stun import StunFacts
from sensor.facts.tls_facts import TlsFacts


class FlowFacts:
    """Everything the dissectors (Wireshark's, or the native parsers) told us about one flow.

    Most flows carry one protocol, so each protocol's facts are made when first written (a TLS flow never
    builds SIP, HTTP and STUN records); `has_*` reads without making them."""

    __slots__ = ("_http", "_sip", "_stun", "_tls", "dtls_srtp", "redact_query")

    def __init__(self, *, redact_query: bool = True) -> None:
        self._tls: TlsFacts | None = None
        self._sip: SipFacts | None = None
        self._http: HttpFacts | None = None
        self._stun: StunFacts | None = None
        self.dtls_srtp = False
        self.redact_query = redact_query

    @property
    def tls(self) -> TlsFacts:
        if self._tls is None:
            self._tls = TlsFacts()
        return self._tls

    @tls.setter
    def tls(self, value: TlsFacts) -> None:
        self._tls = value

    @property
    def sip(self) -> SipFacts:
        if self._sip is None:
            self._sip = SipFacts()
        return self._sip

    @property
    def http(self) -> HttpFacts:
        if self._http is None:
            self._http = HttpFacts(redact_query=self.redact_query)
        return self._http

    @property
    def stun(self) -> StunFacts:
        if self._stun is None:
            self._stun = StunFacts()
        return self._stun

    @property
    def has_tls(self) -> bool:
        """TLS facts were written (and show a handshake)."""
        return self._tls is not None and self._tls.seen

    @property
    def has_sip(self) -> bool:
        return self._sip is not None

    @property
    def pseudo_tls(self) -> bool:
        """MS-TURN pseudo-TLS (see TlsFacts.pseudo)."""
        return self._tls is not None and self._tls.pseudo

    @property
    def sslv2_server_hello(self) -> bool:
        return self._tls is not None and self._tls.sslv2_server_hello

    def present(self) -> list[TlsFacts | SipFacts | HttpFacts | StunFacts]:
        """The protocol facts that hold something, for the record columns."""
        out: list[TlsFacts | SipFacts | HttpFacts | StunFacts] = []
        if self.has_tls:
            out.append(self.tls)
        if self._sip is not None and (self._sip.messages or self._sip.media):
            out.append(self._sip)
        if self._http is not None and self._http.requests:
            out.append(self._http)
        if self._stun is not None and self._stun.messages:
            out.append(self._stun)
        return out

    # ---- Wireshark path (--dissector wireshark) --------------------------------------------------
    def observe(self, p: DissectedPacket, direction: int) -> None:
        if p.has("tls"):
            self.tls.observe(p, direction)
        if p.has("sip"):
            self.sip.observe(p, direction)
        if p.has("http"):
            self.http.observe(p, direction)
        if p.has("stun") or p.has("classicstun"):
            self.stun.observe(p, direction)
        if any("use_srtp" in k for k in p.fields):
            self.dtls_srtp = True

    # ---- native path -----------------------------------------------------------------------------
    def observe_streams(
        self,
        client: bytes,
        server: bytes,
        *,
        client_from_start: bool,
        server_from_start: bool,
        client_complete: bool,
        server_complete: bool,
        ts_ns: int,
        client_times: Callable[[int], int] | None = None,
        server_times: Callable[[int], int] | None = None,
    ) -> None:
        """A TCP flow's reassembled prefix per direction (client = originator). Called again with longer
        bytes, it recomputes every stream-derived fact, so nothing is counted twice.

        A prefix picked up mid-stream is read only when a record or message starts at its first byte;
        facts that need bytes past a hole or the cap stay unknown (the parsers conclude "absent" only
        from bytes they saw, so completeness needs no test of its own here)."""
        if tls.starts_tls(client) or tls.starts_tls(server):
            facts, c_end, s_end = tls.parse_streams(client, server)
            self.tls = facts
            if facts.pseudo:  # MS-TURN continues in clear after the pseudo-TLS hellos ([MS-TURN] §2.1.1)
                self._stun_stream(client, c_end, server, s_end)
            return
        sip_c, sip_s = _sip_part(client, client_from_start), _sip_part(server, server_from_start)
        if sip.starts_sip(sip_c) or sip.starts_sip(sip_s):
            self.sip.set_stream(
                sip.parse_stream(sip_c, ts_ns, _shifted(client_times, len(client) - len(sip_c)))
                + sip.parse_stream(sip_s, ts_ns, _shifted(server_times, len(server) - len(sip_s)))
            )
            return
        if http.starts_request(client) or http.starts_response(server):
            rq = self.redact_query
            self.http.set_stream(http.parse_requests(client, redact_query=rq), http.parse_statuses(server))
            return
        if stun.starts_stun_stream(client) or stun.starts_stun_stream(server):
            self._stun_stream(client, 0, server, 0)

    def _stun_stream(self, client: bytes, c_pos: int, server: bytes, s_pos: int) -> None:
        a = stun.parse_stream(client, c_pos, self.stun.types, self.stun.attributes)
        b = stun.parse_stream(server, s_pos, self.stun.types, self.stun.attributes)
        self.stun.set_stream(a.messages + b.messages, a.classic + b.classic, a.ms_turn or b.ms_turn)

    def observe_datagram(self, payload: bytes, direction: int, ts_ns: int) -> None:
        """One UDP payload (IP-reassembled): STUN / classic STUN / MS-TURN, DTLS, or one SIP message."""
        if not payload:
            return
        b0 = payload[0]
        if b0 < 4:
            t = stun.parse_datagram(payload, self.stun.types, self.stun.attributes)
            if t.messages:
                self.stun.add(t.messages, t.classic, t.ms_turn)
            return
        if 20 <= b0 <= 63:
            if dtls.is_dtls(payload) and dtls.uses_srtp(payload):
                self.dtls_srtp = True
            return
        if sip.starts_sip(payload):
            msg, _ = sip.parse_message(payload, 0, ts_ns, stream=False)
            if msg is not None:
                self.sip.add_message(msg)

    def observe_message(self, payload: bytes, direction: int, ts_ns: int) -> None:
        """A TCP segment past the reassembled prefix that starts with a SIP or HTTP first line."""
        if sip.starts_sip(payload):
            msgs = sip.parse_stream(payload, ts_ns)
            if not msgs:  # headers cut by the segment's end: the start line still counts
                one, _ = sip.parse_message(payload, 0, ts_ns, stream=False)
                msgs = [one] if one is not None else []
            for msg in msgs:
                self.sip.add_message(msg)
        elif direction == 0 and http.starts_request(payload):
            req = http.parse_request(payload, redact_query=self.redact_query)
            if req is not None:
                self.http.add_request(req)


def _shifted(times: Callable[[int], int] | None, shift: int) -> Callable[[int], int] | None:
    """Capture times for offsets into a suffix of the stream that starts `shift` bytes in."""
    if times is None or shift == 0:
        return times
    return lambda offset: times(offset + shift)


def _sip_part(data: bytes, from_start: bool) -> bytes:
    """The bytes from the first SIP start line on: all of them from offset 0; mid-stream, from the first
    start line found (a long-lived SIP/TCP connection picked up inside a message)."""
    if from_start or sip.starts_sip(data):
        return data
    at = sip.resync(data)
    return data[at:] if at >= 0 else b""
