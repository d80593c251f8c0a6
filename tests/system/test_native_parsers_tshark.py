"""Native fact parsers on SIP, SDP, HTTP, STUN, DTLS and SSLv2 bytes that tshark cuts from the shared captures
(TCP streams followed, UDP payloads by display filter); the in-process TLS handshakes are in tests/unit."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from sensor.facts import FlowFacts
from sensor.facts import sip as native_sip
from sensor.facts.http import REDACTED
from tests.conftest import capture

pytestmark = pytest.mark.tshark


def test_sslv2_and_mid_stream_bytes() -> None:
    path = capture("zeek__ssl-v2.pcap")
    client, server = follow(path, 0)
    ff = FlowFacts()
    ff.observe_streams(
        client,
        server,
        client_from_start=True,
        server_from_start=True,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    cols = ff.tls.columns()
    assert ff.tls.sslv2_server_hello and ff.tls.sslv2_client_hello
    assert cols["tls_version"] == "SSLv2" and cols["tls_record_version"] == "SSLv2"
    assert cols["tls_cipher"] == "0x0700C0"  # CLIENT-MASTER-KEY: SSL_CK_DES_192_EDE3_CBC_WITH_MD5
    assert cols["tls_server_cert"] is True
    # Picked up mid-stream at a byte that starts no record: no facts rather than wrong ones.
    late = FlowFacts()
    late.observe_streams(
        client[7:],
        server[3:],
        client_from_start=False,
        server_from_start=False,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    assert not late.tls.seen and not late.sip.messages and not late.stun.messages


# ---- SIP, SDP, HTTP, STUN and DTLS from the shared captures ----------------------------------------


def follow(path: Path, stream: int) -> tuple[bytes, bytes]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-q", "-o", "tcp.reassemble_out_of_order:TRUE", "-z", f"follow,tcp,raw,{stream}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parts: list[list[str]] = [[], []]
    for line in out.splitlines():
        if line and all(c in "0123456789abcdef\t" for c in line):
            parts[1 if line.startswith("\t") else 0].append(line.strip())
    return bytes.fromhex("".join(parts[0])), bytes.fromhex("".join(parts[1]))


def udp_payloads(path: Path, display_filter: str) -> list[bytes]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "udp.payload"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [bytes.fromhex(x) for x in out.split()]


def test_sip_invite_with_sdp_over_udp() -> None:
    invite = udp_payloads(capture("ndpi__sip.pcap"), 'sip.Method == "INVITE" and sdp')[0]
    ff = FlowFacts()
    ff.observe_datagram(invite, 0, 123)
    (msg,) = ff.sip.other_messages
    assert (msg.method, msg.status, msg.cseq, msg.cseq_method) == ("INVITE", None, 1, "INVITE")
    assert msg.call_id == "105090259-446faf7a@192.168.1.2"
    assert (msg.content_type, msg.content_length) == ("application/sdp", 272)
    (m,) = ff.sip.media
    assert (m.address, m.port, m.proto, m.media) == ("192.168.1.2", 30000, "RTP/AVP", "audio")
    assert (m.crypto, m.encryption, m.rtcp_port, m.rtcp_mux, m.is_answer) == (False, None, None, False, False)
    assert (m.call_id, m.cseq, m.method, m.status, m.ts_ns) == (msg.call_id, 1, "INVITE", None, 123)
    assert ff.sip.columns() == {
        "sip_methods": ["INVITE"],
        "sip_status_codes": None,
        "sdp_media_ports": [30000],
        "sdp_protos": ["RTP/AVP"],
        "sdp_crypto": False,
        "sdp_encryption": None,
    }
    text = repr(ff.sip)
    assert "97239287044" not in text and "816666" not in text  # numbers and URIs are never kept


# Lync 2013's SDP shape ([MS-SDPEXT] §3.1.5.x examples): session c=, SRTP with a=crypto, a=encryption,
# a=rtcp with address, a second m= line with its own c= and rtcp-mux.
LYNC_SDP = (
    b"v=0\r\no=- 0 0 IN IP4 10.0.5.21\r\ns=session\r\nc=IN IP4 10.0.5.21\r\nb=CT:99980\r\nt=0 0\r\n"
    b"m=audio 50020 RTP/SAVP 114 9 8 0 101\r\na=ice-ufrag:abcd\r\na=rtcp:50021 IN IP4 10.0.5.21\r\n"
    b"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5|2^31|1:1\r\n"
    b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V6|2^31\r\n"
    b"a=encryption:required\r\na=rtpmap:114 x-msrta/16000\r\n"
    b"m=video 50030 RTP/AVP 121\r\nc=IN IP4 10.0.5.99\r\na=rtcp-mux\r\na=encryption:rejected\r\n"
)


def test_sip_200_ok_with_lync_sdp_over_tcp_stream() -> None:
    """The capture's 200 OK over TCP with its body replaced by a Lync-shaped SDP (the shared captures hold
    no SRTP SDP); the stream also carries the capture's other messages, split by Content-Length."""
    client, server = follow(capture("heplify__sip_ipv4_tcp.pcap"), 0)
    # The callee hangs up: its side of the connection carries the BYE, the caller's the 200 OK to it.
    assert [m.method or m.status for m in native_sip.parse_stream(client, 0)] == ["INVITE", "ACK", 200]
    assert [m.method or m.status for m in native_sip.parse_stream(server, 0)] == [100, 180, 200, "BYE"]
    ok_at = server.index(b"SIP/2.0 200")
    head, _, _ = server[ok_at:].partition(b"\r\n\r\n")
    head_lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith((b"content-length", b"content-type"))]
    lync = b"\r\n".join([*head_lines, b"Content-Type: application/sdp", b"Content-Length: %d" % len(LYNC_SDP)])
    stream = lync + b"\r\n\r\n" + LYNC_SDP + b"\r\n" + lync + b"\r\n\r\n" + LYNC_SDP
    ff = FlowFacts()
    ff.observe_streams(
        b"",
        stream,
        client_from_start=True,
        server_from_start=True,
        client_complete=True,
        server_complete=True,
        ts_ns=5,
    )
    assert ff.sip.messages == 2 and ff.sip.status_codes == {200}
    audio, video = ff.sip.media[:2]
    assert (audio.address, audio.port, audio.proto, audio.media) == ("10.0.5.21", 50020, "RTP/SAVP", "audio")
    assert audio.crypto and audio.crypto_suites == ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_80")
    assert (audio.encryption, audio.rtcp_port, audio.rtcp_address, audio.rtcp_mux) == (
        "required",
        50021,
        "10.0.5.21",
        False,
    )
    assert audio.is_answer and audio.status == 200 and audio.method == "INVITE" and audio.cseq is not None
    assert (video.address, video.port, video.proto, video.crypto) == ("10.0.5.99", 50030, "RTP/AVP", False)
    assert (video.encryption, video.rtcp_mux, video.rtcp_port) == ("rejected", True, None)
    assert "c2VjcmV0" not in repr(ff.sip)  # SRTP master keys are never kept
    # re-parsing the same stream does not count twice; a later segment adds one message
    ff.observe_streams(
        b"",
        stream,
        client_from_start=True,
        server_from_start=True,
        client_complete=True,
        server_complete=True,
        ts_ns=6,
    )
    assert ff.sip.messages == 2
    ff.observe_message(lync[:60], 1, 7)  # cut inside its headers: the start line still counts
    assert ff.sip.messages == 3 and len(ff.sip.media) == 4
    cols = ff.sip.columns()
    assert cols["sdp_crypto"] is True and cols["sdp_protos"] == ["RTP/AVP", "RTP/SAVP"]


def test_sip_over_tcp_picked_up_mid_message() -> None:
    client, server = follow(capture("heplify__sip_ipv4_tcp.pcap"), 0)
    ff = FlowFacts()
    ff.observe_streams(
        client[40:],  # inside the INVITE's request line: the ACK is the first whole message
        server[server.index(b"SIP/2.0 180") - 7 :],  # inside the 100 Trying's body end
        client_from_start=False,
        server_from_start=False,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    assert ff.sip.methods == {"ACK", "BYE"} and ff.sip.status_codes == {180, 200}
    assert ff.sip.messages == 5


def test_http_request_host_path_and_status() -> None:
    client, server = follow(capture("zeek__http-get.pcap"), 0)
    ff = FlowFacts()
    ff.observe_streams(
        client,
        server,
        client_from_start=True,
        server_from_start=True,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    cols = ff.http.columns()
    assert cols["http_method"] == "GET" and cols["http_host"] == "bro.org"
    assert cols["http_requests"] == 1 and cols["http_path"] == "/download/CHANGES.bro-aux.txt"
    assert ff.http.statuses == [200]
    # pipelined second request with a query string: counted once, its query redacted
    second = b"GET /abs/path?user=alice HTTP/1.1\r\nHost: lyncweb.contoso.com\r\n\r\n"
    ff.observe_streams(
        client + second,
        server,
        client_from_start=True,
        server_from_start=True,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    assert ff.http.requests == 2 and ff.http.paths[1] == "/abs/path" + REDACTED
    assert "alice" not in repr(ff.http)
    ff.observe_message(second, 0, 1)
    assert ff.http.requests == 3


def test_stun_classic_ms_turn_and_dtls_srtp() -> None:
    path = capture("arkime__stun.pcap")
    ff = FlowFacts()
    for p in udp_payloads(path, "classicstun"):
        ff.observe_datagram(p, 0, 0)
    assert (ff.stun.messages, ff.stun.classic, ff.stun.ms_turn) == (3, 3, False)
    assert ff.stun.types == {0x0001}
    ms = FlowFacts()
    (allocate,) = udp_payloads(path, "stun")
    ms.observe_datagram(allocate, 0, 0)
    assert (ms.stun.messages, ms.stun.classic, ms.stun.ms_turn) == (1, 0, True)
    assert ms.stun.types == {0x0003} and {0x000F, 0x8008, 0x8055} <= ms.stun.attributes
    # the same message framed for TCP ([MS-TURN] §2.1.4), twice, with a data frame between
    framed = b"\x02\x00" + struct.pack("!H", len(allocate)) + allocate
    tcp = FlowFacts()
    stream = framed + b"\x03\x00\x00\x04abcd" + framed
    tcp.observe_streams(
        stream,
        b"",
        client_from_start=True,
        server_from_start=True,
        client_complete=True,
        server_complete=True,
        ts_ns=0,
    )
    assert (tcp.stun.messages, tcp.stun.ms_turn) == (2, True)
    dtls = capture("ndpi__stun_dtls_rtp.pcapng")
    hellos = udp_payloads(dtls, "dtls.handshake.type == 1 or dtls.handshake.type == 2")
    assert hellos
    for h in hellos:
        one = FlowFacts()
        one.observe_datagram(h, 0, 0)
        assert one.dtls_srtp
    plain = FlowFacts()
    for p in udp_payloads(dtls, "dtls and not dtls.handshake.type == 1 and not dtls.handshake.type == 2"):
        plain.observe_datagram(p, 0, 0)
    assert not plain.dtls_srtp
    for p in udp_payloads(dtls, "stun"):
        plain.observe_datagram(p, 0, 0)
    assert plain.stun.messages > 0 and not plain.stun.ms_turn


def test_sip_multipart_alternative_sdp_over_udp() -> None:
    """Lync offers one SDP per ICE version in a multipart/alternative body; each part's media counts."""
    invite = udp_payloads(capture("ndpi__sip.pcap"), 'sip.Method == "INVITE" and sdp')[0]
    head = invite[: invite.index(b"\r\n\r\n")]
    head = b"\r\n".join(ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-"))
    body = (
        b"--bnd\r\nContent-Type: application/sdp\r\n\r\n" + LYNC_SDP + b"\r\n"
        b"--bnd\r\nContent-Type: application/sdp\r\n\r\n" + LYNC_SDP.replace(b"50020", b"50040") + b"\r\n--bnd--\r\n"
    )
    msg = head + b'\r\nc: multipart/alternative; boundary="bnd"\r\nl: %d\r\n\r\n' % len(body) + body
    ff = FlowFacts()
    ff.observe_datagram(msg, 0, 9)
    assert ff.sip.methods == {"INVITE"}
    assert [m.port for m in ff.sip.media] == [50020, 50030, 50040, 50030]
    assert ff.sip.columns()["sdp_encryption"] == "required"
    (parsed,) = ff.sip.other_messages
    assert parsed.content_type == 'multipart/alternative; boundary="bnd"'  # compact forms c= and l=
    assert parsed.content_length == len(body)
