"""The /metrics exporter: exporter-toolkit web config (TLS, bcrypt basic auth), and no client stalls another."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from sensor.cli import main
from sensor.config import MetricsSettings
from sensor.errors import ConfigError
from sensor.exporter import MetricsServer, load_web_config
from sensor.metrics import SensorMetrics


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA (P-256)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-new", *ec, "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{d}/{name}.pem", "-extfile", f"{d}/{name}.ext",
        )  # fmt: skip
    return d


def bcrypt_hash(password: str, rounds: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def web_config(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text, encoding="utf-8")
    return path


TLS = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"


@pytest.fixture
def serve(pki: Path) -> Iterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def start(text: str = "", **kwargs: Any) -> MetricsServer:
        path = web_config(pki, text) if text else None
        settings = MetricsSettings(listen="127.0.0.1:0", web_config_file=str(path) if path else "")
        server = MetricsServer(SensorMetrics().registry, settings, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client_context(pki: Path, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


def scrape(server: MetricsServer, ctx: ssl.SSLContext | None = None, auth: bytes | None = None) -> int:
    req = urllib.request.Request(server.url)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            assert b"lync_sensor_build_info" in r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# --- one client never stalls another


def test_idle_connections_do_not_stall_scrapes(serve: Callable[..., MetricsServer], pki: Path) -> None:
    """An idle TCP connection used to hold the TLS handshake inside accept(): every scrape waited behind it."""
    server = serve(TLS)
    idle = [socket.create_connection((server.host, server.port)) for _ in range(20)]
    try:
        started = time.monotonic()
        assert scrape(server, client_context(pki)) == 200
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()


def test_idle_connections_beyond_the_thread_cap_are_dropped_after_the_handshake_timeout(
    serve: Callable[..., MetricsServer], pki: Path
) -> None:
    server = serve(TLS, max_connections=4, handshake_timeout=0.5)
    idle = [socket.create_connection((server.host, server.port)) for _ in range(8)]
    try:
        started = time.monotonic()
        assert scrape(server, client_context(pki)) == 200  # waited in the backlog for a free thread
        assert time.monotonic() - started < 5
        assert server.dropped_connections >= 4
    finally:
        for sock in idle:
            sock.close()


def test_200_concurrent_scrapes_over_tls_with_basic_auth(serve: Callable[..., MetricsServer], pki: Path) -> None:
    """Were 27 s; Prometheus's default scrape timeout is 10 s."""
    server = serve(TLS + f"basic_auth_users:\n  prometheus: {bcrypt_hash('s3cret')}\n")
    ctx = client_context(pki)
    started = time.monotonic()
    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(lambda _: scrape(server, ctx, b"prometheus:s3cret"), range(200)))
    elapsed = time.monotonic() - started
    print(f"200 concurrent TLS + basic auth scrapes: {elapsed:.2f} s")
    assert statuses == [200] * 200
    assert elapsed < 10


def test_clients_hanging_up_print_no_traceback(
    serve: Callable[..., MetricsServer], pki: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    server = serve(TLS)
    # 1. A ClientHello record header with half its body, then hang up.
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40)
    # 2. Not TLS at all.
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        with contextlib.suppress(OSError):  # the server's alert, or a reset
            sock.recv(100)
    # 3. A finished handshake, half a request, then a reset (SO_LINGER 0).
    raw = socket.create_connection((server.host, server.port))
    tls = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"GET /metr")
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()
    deadline = time.monotonic() + 5
    while server.dropped_connections < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.dropped_connections == 3
    assert scrape(server, client_context(pki)) == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "Error" not in err


# --- basic auth


def test_basic_auth_with_bcrypt(serve: Callable[..., MetricsServer]) -> None:
    server = serve(f"basic_auth_users:\n  prom: {bcrypt_hash('s3cret', 4)}\n  jürgen: {bcrypt_hash('pässword', 4)}\n")
    assert server.url.startswith("http://")
    assert scrape(server) == 401
    assert scrape(server, auth=b"prom:wrong") == 401
    assert scrape(server, auth=b"prom") == 401  # no ':'
    assert scrape(server, auth=b"nobody:s3cret") == 401
    assert scrape(server, auth=b"prom:s3cret") == 200
    assert scrape(server, auth=b"prom:s3cret") == 200  # from the cache
    assert scrape(server, auth="jürgen:pässword".encode()) == 200


def test_a_password_guesser_does_not_delay_the_scraper(serve: Callable[..., MetricsServer]) -> None:
    """bcrypt runs one check at a time; a scraper whose credentials were verified before never queues for it."""
    server = serve(f"basic_auth_users:\n  prom: {bcrypt_hash('s3cret', 12)}\n")
    assert scrape(server, auth=b"prom:s3cret") == 200
    stop = threading.Event()

    def guess(n: int) -> None:
        while not stop.is_set():
            assert scrape(server, auth=f"prom:guess{n}".encode()) == 401

    with ThreadPoolExecutor(8) as pool:
        guessers = [pool.submit(guess, n) for n in range(8)]
        try:
            time.sleep(1)  # eight guesses queued behind one another, ~0.25 s of bcrypt each
            started = time.monotonic()
            assert scrape(server, auth=b"prom:s3cret") == 200
            assert time.monotonic() - started < 1
        finally:
            stop.set()
        for future in guessers:
            future.result()


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode("jürgen:x".encode()).decode(),  # was 500: str compare_digest on non-ASCII
        "Basic " + base64.b64encode("prom:s3crét".encode("latin-1")).decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\x80").decode(),
        "Basic jürgen:x",  # not base64, not ASCII
        "Basic ***",
        "Bearer abc",
    ],
)
def test_odd_credentials_get_401_not_500(serve: Callable[..., MetricsServer], header: str) -> None:
    server = serve(f"basic_auth_users:\n  prom: {bcrypt_hash('s3cret', 4)}\n")
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": header})
        assert conn.getresponse().status == 401
    finally:
        conn.close()


# --- TLS


def test_mutual_tls(serve: Callable[..., MetricsServer], pki: Path) -> None:
    server = serve(TLS + "  client_ca_file: ca.pem\n")  # a client CA alone means RequireAndVerifyClientCert
    assert scrape(server, client_context(pki, cert=True)) == 200
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        scrape(server, client_context(pki))


def test_min_version(serve: Callable[..., MetricsServer], pki: Path) -> None:
    server = serve(TLS + "  min_version: TLS13\n")
    old = client_context(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        scrape(server, old)
    assert scrape(server, client_context(pki)) == 200


# --- the web config file


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("tls_server_config: [1]\n", "tls_server_config", "expected a mapping"),
        ("tls_server_config:\n  cert_file: server.pem\n", "tls_server_config", "needs both cert_file and key_file"),
        (TLS + "  certfile: x\n", "tls_server_config.certfile", "unknown key"),
        (TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "tls_server_config.cipher_suites", "not supported"),
        (TLS + "  min_version: TLS1.2\n", "tls_server_config.min_version", "TLS10, TLS11, TLS12, TLS13"),
        (TLS + "  client_auth_type: RequireAnyClientCert\n", "tls_server_config.client_auth_type", "expected one"),
        (TLS + "  client_auth_type: VerifyClientCertIfGiven\n", "tls_server_config.client_auth_type", "needs client"),
        (
            "tls_server_config:\n  cert_file: nope.pem\n  key_file: server.key\n",
            "tls_server_config.cert_file",
            "cannot",
        ),
        (TLS + "  client_ca_file: server.key\n", "tls_server_config.client_ca_file", "cannot load the client CA"),
        ("basic_auth_users:\n  prom: 2bd806c97f0e00af1a1fc3328fa763a9\n", "basic_auth_users.prom", "bcrypt hash"),
        ("basic_auth_users: prom\n", "basic_auth_users", "expected a mapping"),
        ("http_server_config:\n  http2: false\n", "http_server_config", "not supported"),
        ("basic_auth_user:\n  prom: x\n", "basic_auth_user", "unknown key"),
        ("tls_server_config: {\n", None, "YAML syntax error"),
        ("- a\n", None, "expected a mapping"),
    ],
)
def test_web_config_errors_name_the_file_and_key(pki: Path, text: str, key: str | None, words: str) -> None:
    path = web_config(pki, text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert caught.value.key == key
    assert words in message


def test_missing_web_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yml: cannot read the web config file: No such file"):
        load_web_config(tmp_path / "nope.yml")


def test_empty_web_config_is_plain_http(pki: Path) -> None:
    web = load_web_config(web_config(pki, "# nothing\n"))
    assert web.tls is None and dict(web.users) == {}


def test_config_check_reads_the_web_config(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = web_config(pki, TLS + f"basic_auth_users:\n  prom: {bcrypt_hash('s3cret', 4)}\n")
    toml = tmp_path / "s.toml"
    toml.write_text(f"[metrics]\nweb_config_file = '{good}'\n")
    monkeypatch.delenv("LYNC_SENSOR_CONFIG", raising=False)
    assert main(["config", "check", "--config", str(toml)]) == 0
    assert main(["config", "show", "--config", str(toml)]) == 0
    shown = capsys.readouterr().out
    assert str(good) in shown and "$2b$" not in shown  # the hashes stay in the web config file
    bad = web_config(tmp_path, "basic_auth_users:\n  prom: plain\n")
    toml.write_text(f"[metrics]\nweb_config_file = '{bad}'\n")
    assert main(["config", "check", "--config", str(toml)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}: basic_auth_users.prom: expected a bcrypt hash" in err


def test_cannot_listen_twice() -> None:
    busy = MetricsServer(SensorMetrics().registry, MetricsSettings(listen="127.0.0.1:0")).start()
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            MetricsServer(SensorMetrics().registry, MetricsSettings(listen=f"127.0.0.1:{busy.port}"))
    finally:
        busy.stop()


def test_stop_returns_while_every_thread_is_busy(pki: Path) -> None:
    path = web_config(pki, TLS)
    settings = MetricsSettings(listen="127.0.0.1:0", web_config_file=str(path))
    server = MetricsServer(SensorMetrics().registry, settings, max_connections=1, handshake_timeout=30).start()
    idle = [socket.create_connection((server.host, server.port)) for _ in range(3)]
    time.sleep(0.2)
    stopper = threading.Thread(target=server.stop)
    started = time.monotonic()
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive() and time.monotonic() - started < 5
    for sock in idle:
        sock.close()
