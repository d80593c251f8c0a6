"""The real public captures of shared/captures through the real pipeline: the facts their manifest states."""

from __future__ import annotations

import pytest

from tests.conftest import analyse, capture, find, flows_by_uid


def flows(name: str) -> list[dict[str, object]]:
    return flows_by_uid(analyse(capture(name)).table)


def test_tls12_rc4_md5() -> None:
    (f,) = flows("zeek__tls1.2.pcap")
    assert (f["app"], f["tls_version"], f["tls_cipher"]) == ("tls", "TLSv12", "0x0004")
    assert f["tls_cert_requested"] is False and f["tls_client_cert"] is None
    assert f["tls_server_cert"] is True
    assert f["orig_pkts"] + f["resp_pkts"] == 22  # type: ignore[operator]


def test_mutual_tls_client_certificate() -> None:
    (f,) = flows("zeek__client-certificate.pcap")
    assert (f["tls_version"], f["tls_client_max_version"], f["tls_cipher"]) == ("TLSv12", "TLSv13", "0xC030")
    assert f["tls_cert_requested"] is True
    assert f["tls_client_cert"] is True


def test_certificate_requested_but_client_sends_empty_certificate_ipv6() -> None:
    (f,) = flows("zeek__certificate-request-failed.pcap")
    assert f["ip_version"] == 6 and f["resp_p"] == 3000
    assert f["tls_version"] == "TLSv12"
    assert f["tls_cert_requested"] is True
    assert f["tls_client_cert"] is False
    assert f["tls_alert"] == "40"  # handshake_failure


def test_sslv3_with_rc4() -> None:
    (f,) = flows("arkime__openssl-ssl3.pcap")
    assert (f["tls_version"], f["tls_cipher"], f["tls_client_max_version"]) == ("SSLv3", "0xC011", "SSLv3")


def test_tls11() -> None:
    (f,) = flows("zeek__tls1_1.pcap")
    assert (f["tls_version"], f["tls_cipher"]) == ("TLSv11", "0xC013")


def test_genuine_sslv2() -> None:
    (f,) = flows("zeek__ssl-v2.pcap")
    assert (f["app"], f["tls_version"], f["tls_cipher"]) == ("sslv2", "SSLv2", "0x0700C0")
    assert f["tls_sslv2_hello"] is True and f["tls_pseudo"] is False


def test_tls13_server_side_only() -> None:
    (f,) = flows("ndpi__tls_1.3_unidirectional_server.pcapng")
    assert (f["tls_version"], f["tls_cipher"]) == ("TLSv13", "0x1301")
    # TLS 1.3 encrypts CertificateRequest and Certificate: mutual TLS cannot be seen
    assert f["tls_client_cert"] is None
    assert f["resp_p"] == 443 and f["orig_pkts"] == 0


def test_sip_over_tcp_with_plain_g711_media() -> None:
    fl = flows("heplify__sip_ipv4_tcp.pcap")
    sip = find(fl, app="sip")
    assert (sip["proto"], sip["resp_p"], sip["sip_plain"], sip["sip_messages"]) == ("tcp", 5060, True, 7)
    assert sip["sip_methods"] == ["ACK", "BYE", "INVITE"]
    assert {100, 180, 200} <= set(sip["sip_status_codes"])  # type: ignore[arg-type]
    assert sip["sdp_protos"] == ["RTP/AVP"] and sip["sdp_crypto"] is False
    media = find(fl, app="rtp")
    assert {media["orig_p"], media["resp_p"]} == {6000, 6050}
    assert media["orig_pkts"] + media["resp_pkts"] == 66  # type: ignore[operator]
    assert media["media_encrypted"] is False
    assert media["media_confidence"] > 0.9  # type: ignore[operator]
    assert "sdp:answer RTP/AVP" in media["media_evidence"]  # type: ignore[operator]
    assert 8 in media["rtp_payload_types"]  # type: ignore[operator]
    rtcp = find(fl, app="rtcp")
    assert rtcp["media_encrypted"] is False and rtcp["orig_pkts"] + rtcp["resp_pkts"] == 2  # type: ignore[operator]


def test_sip_over_udp_and_short_rtp_stream() -> None:
    fl = flows("ndpi__sip.pcap")
    sip = [f for f in fl if f["app"] == "sip"]
    assert all(f["proto"] == "udp" and f["resp_p"] == 5060 for f in sip)
    assert sum(int(f["sip_messages"]) for f in sip) == 81  # type: ignore[call-overload]
    assert {"REGISTER", "INVITE", "CANCEL"} <= {m for f in sip for m in f["sip_methods"]}  # type: ignore[union-attr]
    media = find(fl, app="rtp")
    assert (media["orig_h"], media["orig_p"], media["resp_h"], media["resp_p"]) == (
        "192.168.1.2",
        30000,
        "212.242.33.36",
        40392,
    )
    assert media["orig_pkts"] == 9 and media["media_encrypted"] is False
    rtcp = find(fl, app="rtcp")
    assert rtcp["media_encrypted"] is False


def test_webrtc_stun_dtls_srtp() -> None:
    fl = flows("ndpi__stun_dtls_rtp.pcapng")
    media = find(fl, proto="udp")
    assert media["app"] == "srtp" and media["media_encrypted"] is True
    assert media["stun_messages"] >= 4  # type: ignore[operator]
    assert any("use_srtp" in str(e) for e in media["media_evidence"])  # type: ignore[union-attr]
    turn = find(fl, proto="tcp")
    assert turn["resp_p"] == 3478 and turn["app"] == "stun" and turn["stun_messages"] >= 30  # type: ignore[operator]


def test_classic_stun_and_ms_turn() -> None:
    fl = flows("arkime__stun.pcap")
    assert len([f for f in fl if f["app"] == "stun"]) == 3
    ms = find(fl, app="ms-turn")
    assert ms["ms_turn"] is True and ms["resp_p"] == 3478 and ms["proto"] == "udp"


def test_plain_http_get() -> None:
    (f,) = flows("zeek__http-get.pcap")
    assert (f["app"], f["http_method"], f["http_requests"]) == ("http", "GET", 1)
    assert f["http_path"] == "/download/CHANGES.bro-aux.txt"
    assert f["http_host"] == "bro.org"


def test_compound_rtcp_only() -> None:
    (f,) = flows("ndpi__rtcp_multiple_pkts_in_the_same_datagram.pcap")
    assert (f["app"], f["media_encrypted"]) == ("rtcp", False)
    assert f["rtcp_packets"] == 5


@pytest.mark.parametrize("name", ["zeek__tls1.2.pcap", "heplify__sip_ipv4_tcp.pcap", "ndpi__sip.pcap"])
def test_every_packet_is_accounted(name: str) -> None:
    a = analyse(capture(name))
    total = sum(r["orig_pkts"] + r["resp_pkts"] for r in a.table.to_pylist())
    assert total + a.non_ip == a.packets
