"""Plaintext HTTP/1.x from raw bytes: request lines, Host, response status; messages split by length.

RFC 9112 §6.3: a body is delimited by Content-Length or chunked coding; a message without either (a
request) has none. Responses' bodies are skipped the same way to reach a pipelined next response."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from sensor.facts.dissect import DissectedPacket
from sensor.facts.text import ascii_digits

REDACTED = "?<redacted>"


def redact_path(uri: str, *, redact_query: bool = True, host: str | None = None) -> str:
    """The path template the rules need; a query string (sign-in names, tokens) becomes '?<redacted>'.

    Lync URLs carry people: a meeting URL names its organiser (`/meet/alice@contoso.com/ABCDE`, or
    `https://meet.<domain>/<user>/<id>` on a simple URL host), dial-in and personal paths carry numbers. So the
    web service's prefix (sensor/data/web_paths.csv, which R9/R10 match) is kept as sent, and every segment
    after it that names a user (e-mail-like, SIP or an organiser's position in a meeting URL), a number or a
    conference or other id becomes a placeholder: `/meet/<user>/<conference-id>`. Words (`handler`,
    `x.ashx`) stay. `redact_query=False` (privacy.redact_http_query = false) keeps the path and query as sent.
    """
    if "://" in uri:  # absolute-form request target (proxies)
        rest = uri.split("://", 1)[1]
        uri = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        host = host or rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not redact_query:
        return uri
    path, query = uri.split("?", 1) if "?" in uri else (uri, None)
    path = path_template(path, host=host)
    return path + REDACTED if query is not None else path


# Placeholders of path_template.
USER, NUMBER, CONFERENCE_ID, ID = "<user>", "<number>", "<conference-id>", "<id>"
_NUMBER = re.compile(r"^(?:tel:)?\+?[0-9][0-9()\-. ]*$", re.I)
_ID = re.compile(r"^[A-Za-z0-9_{}-]{5,}$")
_MEETING_SERVICE = "simple-url-meet"  # /meet/<organiser>/<conference id>, or meet.<domain>/<organiser>/<id>
# A meeting simple URL on its own host: /<organiser>/<conference id>, the id 5-16 upper-case letters and digits
# (Lync Server 2013 generates 8-character alphanumeric conference ids).
_SIMPLE_MEETING = re.compile(r"^/[^/]+/[A-Z0-9]{5,16}/?$")


@functools.cache
def _web_prefixes() -> tuple[tuple[str, str], ...]:
    """(path prefix, service) of web_paths.csv, longest first, as R10 matches them."""
    from sensor.catalogue import Catalogue

    rows = [(w.prefix, w.service) for w in Catalogue.load({}).web_paths() if w.match == "path"]
    return tuple(sorted(rows, key=lambda r: len(r[0]), reverse=True))


@functools.cache
def _meeting_hosts() -> tuple[str, ...]:
    from sensor.catalogue import Catalogue

    return tuple(
        w.prefix for w in Catalogue.load({}).web_paths() if w.match == "host" and w.service == _MEETING_SERVICE
    )


def path_template(path: str, *, host: str | None = None) -> str:
    """A path with its personal segments replaced by placeholders (see redact_path)."""
    lower = path.lower()
    prefix, service = next(((p, s) for p, s in _web_prefixes() if lower.startswith(p)), ("", None))
    if service is None and host and host.lower().startswith(_meeting_hosts()):
        service = _MEETING_SERVICE  # https://meet.<domain>/<organiser>/<conference id>
    if service is None and _SIMPLE_MEETING.match(path):
        service = _MEETING_SERVICE  # the same URL where the Host is not known: its shape
    # the prefix as sent, up to the segment it ends in (`/collabcontent` also matches `/collabcontentx/..`)
    cut = path.find("/", len(prefix)) if prefix and not prefix.endswith("/") else len(prefix)
    cut = len(path) if cut < 0 else cut
    head, tail = path[:cut], path[cut:]
    if not tail:
        return head
    positional = [USER, CONFERENCE_ID] if service == _MEETING_SERVICE else []
    out: list[str] = []
    for seg in tail.split("/"):
        if not seg:
            out.append(seg)
            continue
        out.append(_segment(seg, positional.pop(0) if positional else None))
    return head + "/".join(out)


def _segment(seg: str, position: str | None) -> str:
    text = unquote(seg, errors="replace")
    if "@" in text or text.lower().startswith(("sip:", "sips:")):
        return USER  # e-mail-like: a sign-in name or SIP URI
    if position is not None:
        return position
    digits = sum(c.isdigit() for c in text)
    if digits >= 3 and _NUMBER.match(text):
        return NUMBER
    if digits and _ID.match(text) and any(c.isalpha() for c in text):
        return ID  # a conference id, GUID or token: letters and digits, no dot
    return seg


@dataclass(frozen=True)
class HttpRequest:
    """One request: method, path through redact_path (never the raw query string) and Host."""

    method: str
    path: str
    host: str | None


@dataclass
class HttpFacts:
    """Plaintext HTTP requests seen on one flow."""

    redact_query: bool = True
    requests: int = 0
    method: str | None = None
    host: str | None = None
    paths: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    # Native path: requests of the reassembled TCP prefix (replaced at each re-parse) and the others.
    stream_requests: list[HttpRequest] = field(default_factory=list)
    other_requests: list[HttpRequest] = field(default_factory=list)

    def set_stream(self, requests: list[HttpRequest], statuses: list[int]) -> None:
        """The reassembled prefix was (re-)parsed: its requests replace the previous parse's."""
        self.stream_requests = requests
        self.statuses = statuses
        self._refresh()

    def add_request(self, req: HttpRequest) -> None:
        """One request outside the prefix (a later segment of a long-lived connection)."""
        self.other_requests.append(req)
        self._refresh()

    def _refresh(self) -> None:
        reqs = self.stream_requests + self.other_requests
        self.requests = len(reqs)
        self.method = reqs[0].method if reqs else None
        self.host = reqs[0].host if reqs else None
        self.paths = list(dict.fromkeys(r.path for r in reqs))

    def observe(self, p: DissectedPacket, direction: int) -> None:
        methods = p.get("http.request.method")
        uris = p.get("http.request.uri")
        if not methods:
            return
        self.requests += len(methods)
        if self.method is None:
            self.method = methods[0]
            self.host = p.first("http.host")
        for uri in uris:
            path = redact_path(uri, redact_query=self.redact_query)
            if path not in self.paths:
                self.paths.append(path)

    def columns(self) -> dict[str, object]:
        return {
            "http_method": self.method,
            "http_host": self.host,
            "http_path": self.paths[0] if self.paths else None,
            "http_paths": self.paths or None,
            "http_requests": self.requests,
        }


# Methods Wireshark's HTTP dissector recognises that occur in Lync/Exchange web traffic (RFC 9110 §9,
# WebDAV RFC 4918, RPC over HTTP [MS-RPCH]).
METHODS = frozenset(
    b"GET POST HEAD PUT DELETE OPTIONS CONNECT PATCH TRACE PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK "
    b"SEARCH RPC_IN_DATA RPC_OUT_DATA".split()
)
MAX_HEADER = 65536


def starts_request(data: bytes, pos: int = 0) -> bool:
    """True if data[pos:] starts with an HTTP request line (a known method and a space)."""
    sp = data.find(b" ", pos, pos + 16)
    return sp > pos and data[pos:sp] in METHODS


def starts_response(data: bytes, pos: int = 0) -> bool:
    """True if data[pos:] starts with an HTTP/1.0 or HTTP/1.1 status line."""
    return data.startswith((b"HTTP/1.0 ", b"HTTP/1.1 "), pos)


def _header_block(block: bytes) -> tuple[str, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    out: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return lines[0], out


def _body_end(data: bytes, start: int, headers: dict[str, str], response: bool) -> int:
    """Offset after the body; len(data)+1 when the body runs past the bytes we have."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        end = data.find(b"\r\n0\r\n\r\n", start - 2)
        return end + 7 if end >= 0 else len(data) + 1
    cl = headers.get("content-length", "")
    if ascii_digits(cl):
        return start + int(cl)
    return len(data) + 1 if response else start  # a response without length runs to the close


def parse_requests(data: bytes, *, redact_query: bool) -> list[HttpRequest]:
    """Every request of a reassembled client direction (pipelined or keep-alive)."""
    out: list[HttpRequest] = []
    pos, n = 0, len(data)
    while pos < n and starts_request(data, pos):
        hdr_end = data.find(b"\r\n\r\n", pos, pos + MAX_HEADER)
        if hdr_end < 0:
            break
        start, headers = _header_block(data[pos:hdr_end])
        parts = start.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            break
        out.append(
            HttpRequest(
                parts[0],
                redact_path(parts[1], redact_query=redact_query, host=headers.get("host")),
                headers.get("host"),
            )
        )
        pos = _body_end(data, hdr_end + 4, headers, False)
    return out


def parse_request(data: bytes, *, redact_query: bool) -> HttpRequest | None:
    """The request starting one TCP segment (its headers may be cut; the request line is what counts)."""
    eol = data.find(b"\r\n")
    if eol < 0 or not starts_request(data):
        return None
    parts = data[:eol].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    hdr_end = data.find(b"\r\n\r\n")
    _, headers = _header_block(data[: hdr_end if hdr_end >= 0 else len(data)])
    return HttpRequest(
        parts[0], redact_path(parts[1], redact_query=redact_query, host=headers.get("host")), headers.get("host")
    )


def parse_statuses(data: bytes) -> list[int]:
    """Status codes of the responses of a reassembled server direction."""
    out: list[int] = []
    pos, n = 0, len(data)
    while pos < n and starts_response(data, pos):
        hdr_end = data.find(b"\r\n\r\n", pos, pos + MAX_HEADER)
        if hdr_end < 0:
            break
        start, headers = _header_block(data[pos:hdr_end])
        code = start.split(" ")[1] if start.count(" ") >= 1 else ""
        if not ascii_digits(code):
            break
        out.append(int(code))
        pos = _body_end(data, hdr_end + 4, headers, True)
    return out
