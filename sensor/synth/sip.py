"""Plaintext SIP messages and SDP bodies: requests, responses echoing their request, one dialog's state."""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

USER_AGENT = "UCCAPI/15.0.4569.1503 OC/15.0.4569.1506 (Microsoft Lync)"
RTPMAP = {
    0: "PCMU/8000",
    8: "PCMA/8000",
    9: "G722/8000",
    101: "telephone-event/8000",
    111: "SIREN/16000",
    114: "x-msrta/16000",
}


def sdp(
    rng: random.Random,
    ip: str,
    port: int,
    proto: str,
    payload_types: Sequence[int],
    crypto: bool = False,
    encryption: str | None = None,
) -> bytes:
    """An SDP offer/answer with one audio m= line (Lync style: a=rtcp, optional a=crypto / a=encryption)."""
    lines = [
        "v=0",
        f"o=- {rng.randrange(10**9)} 0 IN IP4 {ip}",
        "s=session",
        f"c=IN IP4 {ip}",
        "b=CT:99980",
        "t=0 0",
        f"m=audio {port} {proto} {' '.join(str(pt) for pt in payload_types)}",
        f"a=rtcp:{port + 1}",
    ]
    if crypto:
        key = base64.b64encode(rng.randbytes(30)).decode()
        lines.append(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31")
    if encryption:
        lines.append(f"a=encryption:{encryption}")
    lines += [f"a=rtpmap:{pt} {RTPMAP[pt]}" for pt in payload_types]
    if 101 in payload_types:
        lines.append("a=fmtp:101 0-16")
    lines.append("a=ptime:20")
    return ("\r\n".join(lines) + "\r\n").encode()


def _message(start_line: str, headers: Sequence[tuple[str, str]], body: bytes, content_type: str) -> bytes:
    hdrs = list(headers)
    if body:
        hdrs.append(("Content-Type", content_type))
    hdrs.append(("Content-Length", str(len(body))))
    return (start_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs) + "\r\n").encode() + body


def response_to(
    request: bytes,
    code: int,
    reason: str,
    to_tag: str | None,
    body: bytes = b"",
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A response echoing the request's Via, From, To (plus to_tag), Call-ID and CSeq headers."""
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    echoed = []
    for line in head:
        key, _, value = line.partition(": ")
        if key in ("Via", "From", "Call-ID", "CSeq"):
            echoed.append((key, value))
        elif key == "To":
            echoed.append((key, value if ";tag=" in value or not to_tag else f"{value};tag={to_tag}"))
    echoed += [*extra, ("Server", "RTC/5.0")]
    return _message(f"SIP/2.0 {code} {reason}", echoed, body, "application/sdp")


@dataclass
class Dialog:
    """One SIP dialog (or registration) seen from its originator: Call-ID, tags, CSeq, Via transport."""

    rng: random.Random
    transport: str
    local: tuple[str, int]
    remote: tuple[str, int]
    from_uri: str
    to_uri: str
    call_id: str = ""
    from_tag: str = ""
    to_tag: str = ""
    cseq: int = 0
    sent: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.call_id = self.call_id or self.rng.randbytes(16).hex()
        self.from_tag = self.from_tag or self.rng.randbytes(5).hex()
        self.to_tag = self.to_tag or self.rng.randbytes(5).hex()

    def request(
        self,
        method: str,
        body: bytes = b"",
        extra: Sequence[tuple[str, str]] = (),
        in_dialog: bool = True,
        uri: str | None = None,
        same_cseq: bool = False,
    ) -> bytes:
        """A request from the dialog originator; ACK reuses the INVITE's CSeq number (same_cseq)."""
        if not same_cseq:
            self.cseq += 1
        host, port = self.local
        branch = "z9hG4bK" + self.rng.randbytes(6).hex()
        to = f"<{self.to_uri}>" + (f";tag={self.to_tag}" if in_dialog else "")
        headers = [
            ("Via", f"SIP/2.0/{self.transport} {host}:{port};branch={branch}"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.from_uri}>;tag={self.from_tag};epid={self.from_tag[:6]}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} {method}"),
            ("Contact", f"<sip:{host}:{port};transport={self.transport.lower()}>"),
            ("User-Agent", USER_AGENT),
            *extra,
        ]
        msg = _message(f"{method} {uri or self.to_uri} SIP/2.0", headers, body, "application/sdp")
        self.sent.append(msg)
        return msg

    def respond(
        self, request: bytes, code: int, reason: str, body: bytes = b"", extra: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        """The remote side's response to one of our requests (the to-tag is added except on 100)."""
        return response_to(request, code, reason, None if code == 100 else self.to_tag, body, extra)


def ntlm_challenge(server_fqdn: str) -> tuple[str, str]:
    """The WWW-Authenticate header of a Lync NTLM challenge from server_fqdn."""
    return (
        "WWW-Authenticate",
        f'NTLM realm="SIP Communications Service", targetname="{server_fqdn}", version=4',
    )


def ntlm_authorization(rng: random.Random, server_fqdn: str) -> tuple[str, str]:
    """The Authorization header of a Lync NTLM answer (random gssapi-data) to server_fqdn."""
    blob = base64.b64encode(rng.randbytes(48)).decode()
    realm = 'realm="SIP Communications Service"'
    return ("Authorization", f'NTLM qop="auth", {realm}, targetname="{server_fqdn}", gssapi-data="{blob}"')
