"""Plaintext HTTP facts per flow: request method, host and path, with query strings redacted."""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.dissect import DissectedPacket

REDACTED = "?<redacted>"


def redact_path(uri: str, *, redact_query: bool = True) -> str:
    """Path as sent; a query string is personal data (sign-in names, tokens) and becomes '?<redacted>'."""
    if "://" in uri:  # absolute-form request target (proxies)
        rest = uri.split("://", 1)[1]
        uri = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if redact_query and "?" in uri:
        return uri.split("?", 1)[0] + REDACTED
    return uri


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
