"""Whole TLS/SSL conversations on a TCP flow (full, mutual, resumed, TLS 1.3, SSLv2, MS-TURN pseudo-TLS).

Each player opens the connection, runs the handshake and some application records, closes it and
returns the protocol facts the sensor must derive (flow schema column names).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sensor.schema import tls_version_name
from sensor.synth import stun
from sensor.synth import tls as t
from sensor.synth.flow import TcpFlow
from sensor.synth.x509 import Certificate, name

SERVER_THINK_US = 300
Played = tuple[int, dict[str, object]]  # (time of the last packet, facts for the label)
CA_NAMES = (name("Contoso Issuing CA 01"), name("Contoso Root CA"))


@dataclass(frozen=True)
class TlsPlan:
    """What one full TLS (SSL 3.0 .. TLS 1.2) handshake negotiates and shows."""

    version: int
    suite: int
    server_chain: list[Certificate]
    server_name: str | None = None
    client_version: int | None = None  # ClientHello legacy_version; defaults to version
    record_version: int = t.TLS10
    offered_versions: tuple[int, ...] = ()  # supported_versions extension, if sent
    offered_suites: tuple[int, ...] = t.SCHANNEL_SUITES
    request_cert: bool = False
    client_chain: list[Certificate] | None = None  # [] answers a request with an empty Certificate
    app_records: int = 6


def cipher_code(suite: int) -> str:
    """The tls_cipher column: IANA code as 0x%04X (SSLv2 3-byte kinds as 0x%06X)."""
    return f"0x{suite:06X}" if suite > 0xFFFF else f"0x{suite:04X}"


def _finish(rng: random.Random, version: int, length: int = 40) -> bytes:
    """ChangeCipherSpec and the (encrypted) Finished that follows it."""
    return t.change_cipher_spec(version) + t.encrypted_finished(rng, version, length)


def exchange_app_data(flow: TcpFlow, ts: int, version: int, records: int) -> int:
    """Send `records` application_data records, the client first; returns the time of the final ACK."""
    for i in range(records):
        from_client = i % 2 == 0
        record = t.application_data(flow.rng, version, flow.rng.randrange(60, 900))
        ts = flow.send(ts + 2_000, from_client, record)
    return flow.ack(ts + 40_000, True)


def negotiate(flow: TcpFlow, ts: int, plan: TlsPlan) -> int:
    """Open the connection and run ClientHello .. server Finished; returns the time the handshake is done."""
    rng, v = flow.rng, plan.version
    client_version = plan.client_version or v
    ts = flow.open(ts)
    hello = t.client_hello(
        rng,
        client_version,
        plan.offered_suites,
        plan.server_name,
        supported_versions=plan.offered_versions,
        extensions=client_version > t.SSL3,
    )
    ts = flow.send(ts + 50, True, t.record(t.HANDSHAKE, plan.record_version, hello))
    ecdhe = plan.suite >> 8 == 0xC0
    flight = t.server_hello(rng, v, plan.suite, rng.randbytes(32), extensions=v > t.SSL3)
    flight += t.certificate([c.der for c in plan.server_chain])
    if ecdhe:
        flight += t.server_key_exchange_ecdhe(rng, v)
    if plan.request_cert:
        flight += t.certificate_request(v, CA_NAMES)
    flight += t.server_hello_done()
    # One record holds the whole server flight; its certificate chain spans several TCP segments.
    ts = flow.send(ts + SERVER_THINK_US, False, t.record(t.HANDSHAKE, v, flight))
    client = b""
    if plan.request_cert:
        client += t.certificate([c.der for c in plan.client_chain or []])
    client += t.client_key_exchange_ecdhe(rng) if ecdhe else t.client_key_exchange_rsa(rng, v)
    if plan.request_cert and plan.client_chain:
        client += t.certificate_verify(rng, v)
    finished_len = 40 if v >= t.TLS12 else 48
    client_flight = t.record(t.HANDSHAKE, v, client) + _finish(rng, v, finished_len)
    ts = flow.send(ts + SERVER_THINK_US, True, client_flight)
    return flow.send(ts + SERVER_THINK_US, False, _finish(rng, v, finished_len))


def plan_facts(plan: TlsPlan) -> dict[str, object]:
    """The TLS columns a full handshake played from this plan must yield."""
    client_version = plan.client_version or plan.version
    return {
        "app": "tls",
        "tls_version": tls_version_name(plan.version),
        "tls_cipher": cipher_code(plan.suite),
        "tls_sni": plan.server_name,
        "tls_record_version": tls_version_name(plan.record_version),
        "tls_client_version": tls_version_name(client_version),
        "tls_client_max_version": tls_version_name(max((client_version, *plan.offered_versions))),
        "tls_server_cert": True,
        "tls_cert_names": plan.server_chain[0].names,
        "tls_cert_requested": plan.request_cert,
        "tls_client_cert": bool(plan.client_chain) if plan.request_cert else None,
        "tls_resumed": False,
        "tls_sslv2_hello": False,
        "tls_pseudo": False,
    }


def full_handshake(flow: TcpFlow, ts: int, plan: TlsPlan) -> Played:
    """Full handshake, application data both ways, then FIN; returns (end time, facts)."""
    ts = negotiate(flow, ts, plan)
    ts = exchange_app_data(flow, ts, plan.version, plan.app_records)
    return flow.close(ts + 5_000), plan_facts(plan)


def resumed_handshake(flow: TcpFlow, ts: int, server_name: str, suite: int = 0xC030) -> Played:
    """TLS 1.2 abbreviated handshake: ServerHello echoes the session id, CCS + Finished both ways."""
    rng, v = flow.rng, t.TLS12
    ts = flow.open(ts)
    session_id = rng.randbytes(32)
    hello = t.client_hello(rng, v, t.SCHANNEL_SUITES, server_name, session_id=session_id)
    ts = flow.send(ts + 50, True, t.record(t.HANDSHAKE, t.TLS10, hello))
    flight = t.record(t.HANDSHAKE, v, t.server_hello(rng, v, suite, session_id))
    ts = flow.send(ts + SERVER_THINK_US, False, flight + _finish(rng, v))
    ts = flow.send(ts + SERVER_THINK_US, True, _finish(rng, v))
    ts = exchange_app_data(flow, ts, v, 4)
    end = flow.close(ts + 5_000)
    return end, {
        "app": "tls",
        "tls_version": "TLSv12",
        "tls_cipher": cipher_code(suite),
        "tls_sni": server_name,
        "tls_record_version": "TLSv10",
        "tls_client_version": "TLSv12",
        "tls_client_max_version": "TLSv12",
        "tls_server_cert": False,
        "tls_cert_requested": False,
        "tls_client_cert": None,
        "tls_resumed": True,
        "tls_sslv2_hello": False,
        "tls_pseudo": False,
    }


def tls13_handshake(flow: TcpFlow, ts: int, server_name: str) -> Played:
    """TLS 1.3 in middlebox-compatibility mode: the session id is echoed, yet nothing is resumed."""
    rng = flow.rng
    ts = flow.open(ts)
    session_id = rng.randbytes(32)
    hello = t.client_hello(
        rng,
        t.TLS12,
        (*t.TLS13_SUITES, *t.SCHANNEL_SUITES),
        server_name,
        session_id=session_id,
        supported_versions=(t.TLS13, t.TLS12),
    )
    ts = flow.send(ts + 50, True, t.record(t.HANDSHAKE, t.TLS10, hello))
    server_hello = t.server_hello(rng, t.TLS12, 0x1301, session_id, selected_version=t.TLS13)
    # EncryptedExtensions, Certificate, CertificateVerify and Finished travel as opaque application_data.
    flight = t.record(t.HANDSHAKE, t.TLS12, server_hello) + t.change_cipher_spec(t.TLS12)
    flight += t.application_data(rng, t.TLS12, 3100) + t.application_data(rng, t.TLS12, 281)
    flight += t.application_data(rng, t.TLS12, 69)
    ts = flow.send(ts + SERVER_THINK_US, False, flight)
    client_finished = t.change_cipher_spec(t.TLS12) + t.application_data(rng, t.TLS12, 53)
    ts = flow.send(ts + SERVER_THINK_US, True, client_finished)
    ts = exchange_app_data(flow, ts, t.TLS12, 6)
    end = flow.close(ts + 5_000)
    return end, {
        "app": "tls",
        "tls_version": "TLSv13",
        "tls_cipher": "0x1301",
        "tls_sni": server_name,
        "tls_record_version": "TLSv10",
        "tls_client_version": "TLSv12",
        "tls_client_max_version": "TLSv13",
        "tls_client_cert": None,
        "tls_resumed": False,
        "tls_sslv2_hello": False,
        "tls_pseudo": False,
    }


def sslv2_handshake(flow: TcpFlow, ts: int, server_cert: Certificate) -> Played:
    """SSL 2.0: CLIENT-HELLO 0x0002, SERVER-HELLO (type 4), CLIENT-MASTER-KEY (3DES), then ciphertext."""
    rng, kind = flow.rng, t.SSL2_DES_192_EDE3_CBC_WITH_MD5
    ts = flow.open(ts)
    ts = flow.send(ts + 50, True, t.ssl2_client_hello(rng, 0x0002, t.SSL2_SUITES))
    ts = flow.send(ts + SERVER_THINK_US, False, t.ssl2_server_hello(rng, server_cert.der, [kind]))
    client_finished = t.ssl2_encrypted(rng, 40)
    ts = flow.send(ts + SERVER_THINK_US, True, t.ssl2_client_master_key(rng, kind) + client_finished)
    ts = flow.send(ts + SERVER_THINK_US, False, t.ssl2_encrypted(rng, 32) + t.ssl2_encrypted(rng, 40))
    for i in range(4):
        ts = flow.send(ts + 3_000, i % 2 == 0, t.ssl2_encrypted(rng, 8 * rng.randrange(8, 60)))
    end = flow.close(flow.ack(ts + 40_000, True) + 5_000)
    return end, {
        "app": "sslv2",
        "tls_version": "SSLv2",
        "tls_cipher": cipher_code(kind),
        "tls_sni": None,
        "tls_client_version": "SSLv2",
        "tls_client_max_version": "SSLv2",
        "tls_resumed": False,
        "tls_sslv2_hello": True,
        "tls_pseudo": False,
    }


def pseudo_tls_turn(flow: TcpFlow, ts: int, relayed: tuple[bytes, int], mapped: tuple[bytes, int]) -> Played:
    """MS-TURN over TCP 443: SSLv2-format hello, ServerHello+ServerHelloDone record, framed TURN in clear."""
    rng = flow.rng
    ts = flow.open(ts)
    ts = flow.send(ts + 50, True, t.pseudo_tls_client_hello(rng))
    ts = flow.send(ts + SERVER_THINK_US, False, t.pseudo_tls_server_hello(rng))
    txid = rng.randbytes(16)
    ts = flow.send(ts + 200, True, stun.tcp_frame(stun.ms_turn_allocate_request(rng, txid)))
    response = stun.ms_turn_allocate_response(rng, txid, relayed, mapped)
    ts = flow.send(ts + SERVER_THINK_US, False, stun.tcp_frame(response))
    end = flow.close(flow.ack(ts + 40_000, True) + 2_000_000)
    return end, {
        "app": "ms-turn",
        "tls_version": None,
        "tls_pseudo": True,
        "tls_sslv2_hello": True,
        "tls_client_version": "TLSv10",
        "tls_server_cert": False,
        "ms_turn": True,
        "stun_messages": 2,
    }
