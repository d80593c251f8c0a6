"""Plaintext HTTP/1.1 requests and responses as Lync clients and IIS exchange them."""

from __future__ import annotations

USER_AGENT = "Microsoft Lync 2013 (15.0.4569.1503)"


def request(method: str, target: str, host: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A request line and headers; target is sent exactly as given (path and query)."""
    headers = [("Host", host), ("User-Agent", USER_AGENT), ("Accept", "*/*"), *extra]
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode()


def response(status: int, reason: str, content_type: str, body: bytes) -> bytes:
    """An HTTP/1.1 response as IIS 8.5 sends it, with Content-Type and Content-Length."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Server: Microsoft-IIS/8.5\r\n"
        "X-Powered-By: ASP.NET\r\n"
        "\r\n"
    )
    return head.encode() + body


def redacted(target: str) -> str:
    """The http_path column: the path as sent with any query string replaced by '?<redacted>'."""
    path, sep, _ = target.partition("?")
    return path + "?<redacted>" if sep else path
