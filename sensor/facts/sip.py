"""SIP messages and their SDP from raw bytes: one UDP datagram, or a TCP stream split by Content-Length.

RFC 3261 §7: a start line, header fields up to an empty line, and a body of Content-Length bytes
(mandatory on TCP, §20.14). Compact header forms (§7.3.3) are accepted. URIs and numbers are never kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sensor.facts.dissect import DissectedPacket
from sensor.facts.text import ascii_digits


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
        self.status_codes.update(int(s) for s in statuses if ascii_digits(s))
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
            if not ascii_digits(port):
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


SIP_VERSION = b"SIP/2.0"
# RFC 3261 §7.3.3 compact forms of the headers read here.
COMPACT = {"i": "call-id", "l": "content-length", "c": "content-type"}
MAX_HEADER = 16384  # a start line plus headers longer than this is not SIP we can read


def _is_token(b: bytes) -> bool:
    return bool(b) and b.isalpha() and b.isupper()


def starts_sip(data: bytes, pos: int = 0) -> bool:
    """A SIP start line at pos: 'SIP/2.0 NNN' or 'METHOD <uri> SIP/2.0'."""
    if data.startswith(SIP_VERSION + b" ", pos):
        return True
    eol = data.find(b"\r\n", pos, pos + 2048)
    line = data[pos : eol if eol >= 0 else min(len(data), pos + 2048)]
    sp = line.find(b" ")
    return sp > 0 and _is_token(line[:sp]) and line.endswith(b" " + SIP_VERSION) and eol >= 0


def _headers(block: bytes) -> tuple[str, dict[str, str]]:
    text = block.decode("latin-1")
    lines = text.split("\r\n")
    out: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:  # folded continuation (RFC 3261 §7.3.1)
            out[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = COMPACT.get(key, key)
        if key not in out:
            out[key] = value.strip()
            last = key
    return lines[0], out


def parse_message(data: bytes, pos: int, ts_ns: int, *, stream: bool) -> tuple[SipMessage | None, int]:
    """The SIP message at data[pos:] and the offset after it; (None, pos) when none is complete there.

    On a stream a message whose body runs past the end of the bytes is still counted, without SDP."""
    hdr_end = data.find(b"\r\n\r\n", pos, pos + MAX_HEADER)
    if hdr_end < 0:
        if stream:
            return None, pos
        hdr_end = len(data)
    start, headers = _headers(data[pos:hdr_end])
    parts = start.split(" ", 2)
    method: str | None = None
    status: int | None = None
    if parts[0] == "SIP/2.0":
        if len(parts) < 2 or not ascii_digits(parts[1]):
            return None, pos
        status = int(parts[1])
    elif len(parts) == 3 and parts[2] == "SIP/2.0":
        method = parts[0]
    else:
        return None, pos
    body_start = min(len(data), hdr_end + 4)
    cl_text = headers.get("content-length")
    length: int | None = int(cl_text) if cl_text and ascii_digits(cl_text) else None
    # Without Content-Length a datagram's body runs to its end; on a stream it is empty (RFC 3261 §18.3).
    body_end = body_start + length if length is not None else (body_start if stream else len(data))
    cseq_num: int | None = None
    cseq_method: str | None = None
    cseq = headers.get("cseq", "").split()
    if cseq and ascii_digits(cseq[0]):
        cseq_num = int(cseq[0])
        cseq_method = cseq[1] if len(cseq) > 1 else None
    ctype = headers.get("content-type")
    call_id = headers.get("call-id")
    media: tuple[SdpMedia, ...] = ()
    if ctype and body_end <= len(data) and body_end > body_start:
        ctx = SdpMedia("", 0, "", False, None, status is not None, call_id, cseq_num, method or cseq_method, status)
        media = sdp_in_body(data[body_start:body_end], ctype, replace(ctx, ts_ns=ts_ns))
    msg = SipMessage(method, status, call_id, cseq_num, cseq_method, ctype, length, media, ts_ns)
    return msg, min(body_end, len(data)) if not stream else body_end


def resync(data: bytes) -> int:
    """Offset of the first SIP start line in bytes picked up mid-stream, or -1. A request line is the only
    line ending in ' SIP/2.0' (Via says 'SIP/2.0/TCP'); a status line is the only one starting 'SIP/2.0 '."""
    best = -1
    for needle, back in ((b" SIP/2.0\r\n", True), (b"\nSIP/2.0 ", False)):
        i = data.find(needle)
        while i >= 0:
            start = data.rfind(b"\n", 0, i) + 1 if back else i + 1
            if (start == 0 or data[start - 1] == 0x0A) and starts_sip(data, start):
                if best < 0 or start < best:
                    best = start
                break
            i = data.find(needle, i + 1)
    return best


def parse_stream(data: bytes, ts_ns: int, times: Callable[[int], int] | None = None) -> list[SipMessage]:
    """Every SIP message of a reassembled TCP direction, split by Content-Length (keep-alive CRLFs skipped).
    `times` gives the capture time of the byte at an offset (messages of one connection belong to different
    calls); without it every message gets ts_ns."""
    out: list[SipMessage] = []
    pos, n = 0, len(data)
    while pos < n:
        while data.startswith(b"\r\n", pos):  # RFC 5626 §3.5.1 keep-alive
            pos += 2
        if pos >= n or not starts_sip(data, pos):
            break
        msg, end = parse_message(data, pos, times(pos) if times is not None else ts_ns, stream=True)
        if msg is None:
            break
        out.append(msg)
        if end > n:
            break
        pos = end
    return out


def sdp_in_body(body: bytes, ctype: str, proto: SdpMedia) -> tuple[SdpMedia, ...]:
    """SDP of an application/sdp body, or of every application/sdp part of a multipart body (Lync sends
    multipart/alternative with one SDP per ICE version)."""
    low = ctype.lower()
    if low.startswith("application/sdp"):
        return parse_sdp(body, proto)
    if not low.startswith("multipart/"):
        return ()
    boundary = ""
    for param in ctype.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip().strip('"')
    if not boundary:
        return ()
    out: list[SdpMedia] = []
    for part in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        head_end = part.find(b"\r\n\r\n")
        if head_end < 0:
            continue
        head = part[:head_end].lower()
        if b"application/sdp" in head:
            out += parse_sdp(part[head_end + 4 :], proto)
    return tuple(out)


class _Media:
    """An m= line being read, with its media-level attributes."""

    __slots__ = ("address", "crypto", "encryption", "media", "port", "proto", "rtcp_address", "rtcp_mux", "rtcp_port")

    def __init__(self, fields: list[str]) -> None:
        self.media = fields[0] if fields else None
        self.port = fields[1].split("/")[0] if len(fields) > 1 else ""
        self.proto = fields[2] if len(fields) > 2 else ""
        self.address: str | None = None
        self.crypto: list[str] = []
        self.encryption: str | None = None
        self.rtcp_port: int | None = None
        self.rtcp_address: str | None = None
        self.rtcp_mux = False


def parse_sdp(body: bytes, proto: SdpMedia) -> tuple[SdpMedia, ...]:
    """One SdpMedia per m= line (RFC 4566): its c= address (media level, else session level), a=crypto
    suites, a=encryption (MS-SDPEXT; media level overrides session level), a=rtcp and a=rtcp-mux."""
    session_addr: str | None = None
    session_enc: str | None = None
    session_crypto: list[str] = []
    current: _Media | None = None
    media: list[_Media] = []
    for raw in body.decode("latin-1").split("\n"):
        line = raw.rstrip("\r")
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            current = _Media(value.split())
            media.append(current)
        elif kind == "c":
            f = value.split()
            addr = f[2].split("/")[0] if len(f) >= 3 else None
            if current is None:
                session_addr = addr
            else:
                current.address = addr
        elif kind == "a":
            name, _, val = value.partition(":")
            if name == "crypto":  # a=crypto:<tag> <suite> inline:<key>: the key is never kept
                f = val.split()
                (session_crypto if current is None else current.crypto).append(f[1] if len(f) > 1 else "")
            elif name == "encryption":
                if current is None:
                    session_enc = val.strip()
                else:
                    current.encryption = val.strip()
            elif name == "rtcp" and current is not None:
                f = val.split()
                if f and ascii_digits(f[0]):
                    current.rtcp_port = int(f[0])
                    current.rtcp_address = f[3] if len(f) >= 4 else None
            elif name == "rtcp-mux" and current is not None:
                current.rtcp_mux = True
    out: list[SdpMedia] = []
    for m in media:
        if not ascii_digits(m.port):
            continue
        suites = tuple(m.crypto or session_crypto)
        out.append(
            SdpMedia(
                address=m.address or session_addr,
                port=int(m.port),
                proto=m.proto,
                crypto=bool(suites),
                encryption=m.encryption or session_enc,
                is_answer=proto.is_answer,
                call_id=proto.call_id,
                cseq=proto.cseq,
                method=proto.method,
                status=proto.status,
                ts_ns=proto.ts_ns,
                rtcp_port=m.rtcp_port,
                rtcp_address=m.rtcp_address,
                rtcp_mux=m.rtcp_mux,
                media=m.media,
                crypto_suites=suites,
            )
        )
    return tuple(out)
