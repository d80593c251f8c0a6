"""The /metrics endpoint: prometheus-client's exposition over HTTP(S), with the exporter-toolkit web config.

TLS and basic auth are read from the web configuration file every Prometheus exporter uses (node_exporter's
`--web.config.file`): `tls_server_config` and `basic_auth_users` with bcrypt hashes. One connection never
holds up another: each is served on its own thread, where its TLS handshake runs under a timeout; the number
of threads is bounded, and connections beyond it wait in the listen backlog.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import socket
import ssl
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

import bcrypt
import yaml
from prometheus_client import CollectorRegistry, make_wsgi_app

from sensor.config import MetricsSettings
from sensor.errors import ConfigError

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
Wsgi = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

LISTEN_BACKLOG = 1024  # connections the kernel queues while every connection thread is busy
MAX_CONNECTIONS = 128  # connection threads at once
HANDSHAKE_TIMEOUT = 5.0  # seconds for a client to complete its TLS handshake
REQUEST_TIMEOUT = 10.0  # seconds for a client to send its request (Prometheus's default scrape timeout)
AUTH_CACHE_SIZE = 100  # verified credentials kept, so a scrape does not pay for bcrypt every time

# exporter-toolkit's names (Go's crypto/tls) -> Python's
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# client_auth_type values that verify the client certificate against client_ca_file. Go's RequestClientCert and
# RequireAnyClientCert accept any certificate unverified; Python's ssl module cannot, so they are refused.
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
# exporter-toolkit keys this exporter does not implement: an error, never silently ignored.
_UNSUPPORTED = {
    "tls_server_config": (
        "cert",
        "key",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
        "client_allowed_sans",
    ),
    "": ("http_server_config", "rate_limit"),
}
_BCRYPT_HASH = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")
# Checked when the user name is unknown, so an unknown user costs as much time as a wrong password.
_DUMMY_HASH = b"$2b$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/6unTYA7MmYWUx3."


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config file: the TLS context (None = plain HTTP) and the users with their bcrypt hashes."""

    source: Path | None = None
    tls: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)


def load_web_config(path: Path | str) -> WebConfig:
    """Read and check an exporter-toolkit web config file; relative paths in it are relative to its directory.

    Raises ConfigError naming the file and the key."""
    path = Path(path)

    def fail(message: str, key: str | None = None) -> ConfigError:
        return ConfigError(message, key=key, source=str(path))

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read the web config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise fail("the web config file is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise fail(f"YAML syntax error: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail("expected a mapping with tls_server_config and/or basic_auth_users")
    _check_keys(data, ("tls_server_config", "basic_auth_users"), "", fail)
    tls = _tls_context(data.get("tls_server_config"), path.parent, fail)
    users = _users(data.get("basic_auth_users"), fail)
    return WebConfig(source=path, tls=tls, users=users)


def _check_keys(table: Mapping[Any, Any], known: Iterable[str], where: str, fail: Callable[..., ConfigError]) -> None:
    known = tuple(known)
    for key in table:
        name = f"{where}.{key}" if where else str(key)
        if key in _UNSUPPORTED.get(where, ()):
            raise fail("not supported by lync-sensor's exporter; remove it", name)
        if key not in known:
            raise fail(f"unknown key (known: {', '.join(known)})", name)


def _tls_context(table: Any, base: Path, fail: Callable[..., ConfigError]) -> ssl.SSLContext | None:
    where = "tls_server_config"
    if table is None:
        return None
    if not isinstance(table, dict):
        raise fail("expected a mapping", where)
    _check_keys(table, _TLS_KEYS, where, fail)
    for key in table:
        if not isinstance(table[key], str) or not table[key]:
            raise fail(f"expected a non-empty string, got {table[key]!r}", f"{where}.{key}")
    if "cert_file" not in table or "key_file" not in table:
        raise fail("needs both cert_file and key_file", where)

    def file(key: str) -> str:
        return str(base / table[key])

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        value = table.get(key, "TLS12" if key == "min_version" else None)  # exporter-toolkit's default: TLS 1.2
        if value is None:
            continue
        if value not in TLS_VERSIONS:
            raise fail(f"expected one of {', '.join(TLS_VERSIONS)}, got {value!r}", f"{where}.{key}")
        setattr(ctx, attr, TLS_VERSIONS[value])
    verify_mode = _client_auth(table, where, fail)
    try:
        ctx.load_cert_chain(file("cert_file"), file("key_file"))
    except (OSError, ssl.SSLError) as exc:
        raise fail(f"cannot load the certificate and key: {exc}", f"{where}.cert_file") from None
    if "client_ca_file" in table:
        try:
            ctx.load_verify_locations(cafile=file("client_ca_file"))
        except (OSError, ssl.SSLError) as exc:
            raise fail(f"cannot load the client CA: {exc}", f"{where}.client_ca_file") from None
    ctx.verify_mode = verify_mode
    return ctx


def _client_auth(table: Mapping[str, str], where: str, fail: Callable[..., ConfigError]) -> ssl.VerifyMode:
    """The client certificate check of tls_server_config, consistent with whether client_ca_file is set."""
    # exporter-toolkit: a client CA without a client_auth_type means RequireAndVerifyClientCert.
    auth = table.get("client_auth_type", "RequireAndVerifyClientCert" if "client_ca_file" in table else "NoClientCert")
    if auth not in CLIENT_AUTH_TYPES:
        raise fail(f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {auth!r}", f"{where}.client_auth_type")
    if CLIENT_AUTH_TYPES[auth] != ssl.CERT_NONE and "client_ca_file" not in table:
        raise fail(f"{auth} needs client_ca_file", f"{where}.client_auth_type")
    if CLIENT_AUTH_TYPES[auth] == ssl.CERT_NONE and "client_ca_file" in table:
        raise fail("client_ca_file is set but client_auth_type is NoClientCert", f"{where}.client_ca_file")
    return CLIENT_AUTH_TYPES[auth]


def _users(table: Any, fail: Callable[..., ConfigError]) -> dict[str, bytes]:
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise fail("expected a mapping of user name to bcrypt hash", "basic_auth_users")
    users = {}
    for user, hashed in table.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise fail("a user name is a non-empty string without ':'", key)
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            raise fail("expected a bcrypt hash ($2b$...), e.g. from `htpasswd -nBC 12 '' | tr -d ':'`", key)
        users[user] = hashed.encode()
    return users


class BasicAuth:
    """HTTP basic auth against bcrypt hashes, as exporter-toolkit does it: credentials compared as bytes,
    an unknown user costs a bcrypt check too, one bcrypt check at a time, recent successes cached."""

    def __init__(self, app: Wsgi, users: Mapping[str, bytes]) -> None:
        self.app = app
        self.users = [(user.encode(), hashed) for user, hashed in users.items()]
        # Only successes are cached: failed guesses cannot evict the scraper's entry.
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()  # one bcrypt check at a time: a password guesser gets one core

    def _cached(self, key: bytes) -> bool:
        with self._cache_lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return True
            return False

    def verify(self, user: bytes, password: bytes) -> bool:
        hashed, known = _DUMMY_HASH, False
        for name, candidate in self.users:  # every entry compared, in constant time, whatever matches
            if hmac.compare_digest(name, user):
                hashed, known = candidate, True
        key = hashlib.sha256(b"\0".join((user, hashed, password))).digest()  # never the password itself
        if self._cached(key):  # a cached scraper never waits behind the bcrypt queue
            return True
        with self._bcrypt_lock:
            if self._cached(key):  # verified while this request waited
                return True
            ok = bcrypt.checkpw(password, hashed) and known
        if ok:
            with self._cache_lock:
                self._verified[key] = None
                if len(self._verified) > AUTH_CACHE_SIZE:
                    self._verified.popitem(last=False)
        return ok

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        ok = False
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(credentials.strip(), validate=True).partition(b":")
            except ValueError:  # not base64, or not ASCII
                sep = b""
            ok = bool(sep) and self.verify(user, password)
        if not ok:
            start_response(
                "401 Unauthorized", [("WWW-Authenticate", 'Basic realm="lync-sensor"'), ("Content-Type", "text/plain")]
            )
            return [b"Unauthorized\n"]
        return self.app(environ, start_response)


class _ServerHandler(ServerHandler):
    request_handler: _Handler

    def log_exception(self, exc_info: Any) -> None:
        """A client gone mid-response (reset, TLS EOF, timeout) is counted; anything else is a bug: logged."""
        if isinstance(exc_info[1], OSError):
            self.request_handler.server.count_dropped(self.request_handler.client_address, str(exc_info[1]))
        else:
            super().log_exception(exc_info)


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # an idle client is dropped after this, freeing its thread
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def handle(self) -> None:
        """WSGIRequestHandler.handle with a ServerHandler that counts clients that hang up mid-response."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.raw_requestline.endswith(b"\n"):
            # end of stream before the request line ended: the client hung up (or reset) mid-request
            self.server.count_dropped(self.client_address, "client hung up before its request line ended")
            return
        if not self.parse_request():
            return
        wfile: Any = self.wfile
        handler = _ServerHandler(self.rfile, wfile, self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self
        app = self.server.get_app()
        assert app is not None  # set_app() runs before serve_forever()
        handler.run(app)


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per connection (at most `max_connections`), the TLS handshake on that thread."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        tls: ssl.SSLContext | None,
        max_connections: int,
        handshake_timeout: float,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.closing = threading.Event()
        self.dropped = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # When all threads are busy, this waits and the next connections wait in the listen backlog.
        while not self._slots.acquire(timeout=0.5):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.handshake_timeout)
        tls_socket = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            try:
                tls_socket.do_handshake()
            except OSError as exc:  # ssl.SSLError and timeouts included
                self.count_dropped(client_address, f"TLS handshake failed: {exc}")
                return
            super().finish_request(tls_socket, client_address)
        finally:
            tls_socket.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is the client's problem: counted at debug level, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.count_dropped(client_address, str(error) or type(error).__name__)
        else:  # a defect of ours: say so once, with its traceback, in the log
            log.exception("/metrics: serving %s failed", client_address[0])

    def count_dropped(self, client_address: Any, why: str) -> None:
        with self._count_lock:
            self.dropped += 1
            dropped = self.dropped
        log.debug("/metrics client %s: %s (%d connections dropped so far)", client_address[0], why, dropped)


def split_listen(listen: str) -> tuple[str, int]:
    """Split a listen address "host:port" or "[v6]:port" into host and port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """Serves a registry on /metrics in a background thread until stop()."""

    def __init__(
        self,
        registry: CollectorRegistry,
        settings: MetricsSettings,
        *,
        max_connections: int = MAX_CONNECTIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        web = load_web_config(settings.web_config_file) if settings.web_config_file else WebConfig()
        app: Wsgi = make_wsgi_app(registry)
        if web.users:
            app = BasicAuth(app, web.users)
        try:
            self._httpd = _Server(split_listen(settings.listen), web.tls, max_connections, handshake_timeout)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.listen}: {exc.strerror or exc}", key="metrics.listen"
            ) from exc
        self._httpd.set_app(app)
        self.scheme = "https" if web.tls else "http"
        address = self._httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/metrics"

    @property
    def dropped_connections(self) -> int:
        """Connections that ended before a response: failed or stalled TLS handshakes, clients that hung up."""
        return self._httpd.dropped

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
