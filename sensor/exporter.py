"""The /metrics endpoint: prometheus-client's exposition over HTTP(S), with optional basic auth."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from sensor.config import MetricsSettings
from sensor.errors import ConfigError

StartResponse = Callable[..., Any]
Wsgi = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def _basic_auth(app: Wsgi, user: str, password_sha256: str) -> Wsgi:
    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        ok = False
        if header.startswith("Basic "):
            try:
                given_user, _, given_pw = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                given_user, given_pw = "", ""
            digest = hashlib.sha256(given_pw.encode()).hexdigest()
            ok = hmac.compare_digest(given_user, user) and hmac.compare_digest(digest, password_sha256)
        if not ok:
            start_response(
                "401 Unauthorized", [("WWW-Authenticate", 'Basic realm="lync-sensor"'), ("Content-Type", "text/plain")]
            )
            return [b"authentication required\n"]
        return app(environ, start_response)

    return guarded


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """Serves a registry on /metrics in a background thread until stop()."""

    def __init__(self, registry: CollectorRegistry, settings: MetricsSettings) -> None:
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file go together", key="metrics.tls_cert_file")
        if bool(settings.basic_auth_user) != bool(settings.basic_auth_password_sha256):
            raise ConfigError(
                "basic_auth_user and basic_auth_password_sha256 go together", key="metrics.basic_auth_user"
            )
        app: Wsgi = make_wsgi_app(registry)
        if settings.basic_auth_user:
            app = _basic_auth(app, settings.basic_auth_user, settings.basic_auth_password_sha256)
        host, port = split_listen(settings.listen)
        try:
            self._httpd = make_server(host, port, app, _Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.listen}: {exc.strerror or exc}", key="metrics.listen"
            ) from exc
        self.scheme = "http"
        if settings.tls_cert_file:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the TLS certificate/key: {exc}", key="metrics.tls_cert_file") from exc
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        address = self._httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
