"""Plaintext HTTP/1.x from raw bytes: request lines, Host, response status; messages split by length.

RFC 9112 §6.3: a body is delimited by Content-Length or chunked coding; a message without either (a
request) has none. Responses' bodies are skipped the same way to reach a pipelined next response.
"""

from __future__ import annotations

from sensor.http import HttpRequest, redact_path

# Methods Wireshark's HTTP dissector recognises that occur in Lync/Exchange web traffic (RFC 9110 §9,
# WebDAV RFC 4918, RPC over HTTP [MS-RPCH]).
METHODS = frozenset(
    b"GET POST HEAD PUT DELETE OPTIONS CONNECT PATCH TRACE PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK "
    b"SEARCH RPC_IN_DATA RPC_OUT_DATA".split()
)
MAX_HEADER = 65536


def starts_request(data: bytes, pos: int = 0) -> bool:
    sp = data.find(b" ", pos, pos + 16)
    return sp > pos and data[pos:sp] in METHODS


def starts_response(data: bytes, pos: int = 0) -> bool:
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
    if cl.isdigit():
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
        if not code.isdigit():
            break
        out.append(int(code))
        pos = _body_end(data, hdr_end + 4, headers, True)
    return out
