"""Synthetic captures: byte-stable, read by tshark in every variant, labels matching what tshark sees."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from sensor.synth import FlowLabel, Scenario, build_labelled, media, write
from sensor.synth.__main__ import main
from sensor.synth.bulk import write_bench_capture
from sensor.synth.http import redacted

pytestmark = pytest.mark.tshark

FIELDS = [
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.len",
    "udp.length",
    "_ws.expert.severity",
    "tls.record.version",
    "tls.handshake.type",
    "tls.handshake.version",
    "tls.handshake.ciphersuite",
    "tls.handshake.cipherspec",
    "tls.handshake.certificates_length",
    "tls.handshake.extensions.supported_version",
    "tls.handshake.extensions_server_name",
    "tls.handshake.session_id",
    "sip.Method",
    "sip.Status-Code",
    "sdp.media.proto",
    "sdp.media.port",
    "sdp.media_attr",
    "http.request.method",
    "http.request.uri",
    "http.host",
    "stun.type",
    "stun.att.type",
    "classicstun.type",
    "classicstun.att.type",
]
WIRE_VERSION = {
    "SSLv2": "0x0002",
    "SSLv3": "0x0300",
    "TLSv10": "0x0301",
    "TLSv12": "0x0303",
    "TLSv13": "0x0304",
}
PI_ERROR = 0x00800000


def udp_payloads(scenario: Scenario, src: str, sport: int) -> list[bytes]:
    """UDP payloads an IPv4 endpoint sent, straight from the generated frames."""
    key = bytes(map(int, src.split(".")))
    return [
        p.data[42:]
        for p in scenario.packets
        if p.data[12:14] == b"\x08\x00" and p.data[23] == 17 and p.data[26:30] == key
        and p.data[34:36] == sport.to_bytes(2, "big")
    ]  # fmt: skip


def tcp_payloads(scenario: Scenario, port: int) -> list[bytes]:
    """Non-empty TCP payloads of the IPv4 connection that uses this port, in capture order."""
    out = []
    for p in scenario.packets:
        if (
            p.data[12:14] == b"\x08\x00"
            and p.data[23] == 6
            and port.to_bytes(2, "big") in (p.data[34:36], p.data[36:38])
        ):
            payload = p.data[34 + (p.data[46] >> 4) * 4 :]
            if payload:
                out.append(payload)
    return out


def tshark(path: Path, *args: str) -> list[str]:
    cmd = ["tshark", "-r", str(path), "-o", "tcp.reassemble_out_of_order:TRUE", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()


@dataclass
class Frame:
    """One tshark row: its 5-tuple and the multi-valued fields (';'-separated occurrences)."""

    values: dict[str, list[str]]

    def one(self, name: str) -> str:
        return self.values[name][0] if self.values[name] else ""

    @property
    def key(self) -> tuple[str, int, str, int, str]:
        proto = "tcp" if self.values["tcp.srcport"] else "udp"
        src = self.one("ip.src") or self.one("ipv6.src")
        dst = self.one("ip.dst") or self.one("ipv6.dst")
        return src, int(self.one(f"{proto}.srcport")), dst, int(self.one(f"{proto}.dstport")), proto

    @property
    def payload(self) -> int:
        return int(self.one("tcp.len")) if self.values["tcp.len"] else int(self.one("udp.length")) - 8


def read_frames(path: Path) -> list[Frame]:
    args = ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=;"]
    for name in FIELDS:
        args += ["-e", name]
    rows = [line.split("\t") for line in tshark(path, *args)]
    return [Frame({n: [v for v in c.split(";") if v] for n, c in zip(FIELDS, r, strict=True)}) for r in rows]


@dataclass
class Conversation:
    """A label and the frames tshark showed for its 5-tuple, split by direction."""

    label: FlowLabel
    orig: list[Frame] = field(default_factory=list)
    resp: list[Frame] = field(default_factory=list)

    def values(self, name: str, side: str = "both") -> list[str]:
        frames = self.orig if side == "orig" else self.resp if side == "resp" else self.orig + self.resp
        return [v for f in frames for v in f.values[name]]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_labelled(7)


@pytest.fixture(scope="module")
def labelled_pcap(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "labelled.pcap"
    write(scenario, path)
    return path


@pytest.fixture(scope="module")
def frames(labelled_pcap: Path) -> list[Frame]:
    return read_frames(labelled_pcap)


@pytest.fixture(scope="module")
def conversations(scenario: Scenario, frames: list[Frame]) -> dict[str, Conversation]:
    by_key = {(x.orig_h, x.orig_p, x.resp_h, x.resp_p, x.proto): Conversation(x) for x in scenario.labels}
    for f in frames:
        src, sport, dst, dport, proto = f.key
        if (conv := by_key.get((src, sport, dst, dport, proto))) is not None:
            conv.orig.append(f)
        elif (conv := by_key.get((dst, dport, src, sport, proto))) is not None:
            conv.resp.append(f)
        else:
            raise AssertionError(f"frame of unlabelled flow {f.key}")
    return {c.label.name: c for c in by_key.values()}


def of_app(conversations: dict[str, Conversation], *apps: str) -> Iterator[Conversation]:
    return (c for c in conversations.values() if c.label.expect["app"] in apps)


def test_same_seed_gives_identical_bytes(scenario: Scenario, labelled_pcap: Path, tmp_path: Path) -> None:
    again = build_labelled(7)
    write(again, tmp_path / "again.pcap")
    assert (tmp_path / "again.pcap").read_bytes() == labelled_pcap.read_bytes()
    assert again.labels == scenario.labels
    write(scenario, tmp_path / "a.pcapng", "pcapng", "vlan")
    write(again, tmp_path / "b.pcapng", "pcapng", "vlan")
    assert (tmp_path / "a.pcapng").read_bytes() == (tmp_path / "b.pcapng").read_bytes()


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("link", ["ethernet", "vlan", "sll"])
def test_every_variant_is_read_by_tshark(scenario: Scenario, tmp_path: Path, fmt: str, link: str) -> None:
    path = tmp_path / f"labelled-{link}.{fmt}"
    write(scenario, path, fmt, link)
    fields = ("frame.time_epoch", "vlan.id", "sll.pkttype", "sip.Method")
    rows = [r.split("\t") for r in tshark(path, "-T", "fields", *(a for f in fields for a in ("-e", f)))]
    assert len(rows) == len(scenario.packets)
    stamps = [r[0].split(".") for r in rows]
    micros = [int(s) * 1_000_000 + int(ns[:6]) for s, ns in stamps]
    assert micros == [round(p.ts * 1e6) for p in scenario.packets]
    assert {ns[6:] for _, ns in stamps} == {"000"}
    assert {r[1] for r in rows} == ({"42"} if link == "vlan" else {""})
    assert {r[2] for r in rows} == ({"3"} if link == "sll" else {""})
    assert Counter(r[3] for r in rows if r[3])["INVITE"] == 3
    if fmt == "pcap":
        assert path.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")


def test_label_counts_match_the_packets_of_each_5tuple(conversations: dict[str, Conversation]) -> None:
    for conv in conversations.values():
        e = conv.label.expect
        assert (len(conv.orig), len(conv.resp)) == (e["orig_pkts"], e["resp_pkts"]), conv.label.name
        assert sum(f.payload for f in conv.orig) == e["orig_bytes"], conv.label.name
        assert sum(f.payload for f in conv.resp) == e["resp_bytes"], conv.label.name
        minutes = {int(f.one("frame.time_epoch").split(".")[0]) // 60 for f in conv.orig + conv.resp}
        assert len(minutes) == conv.label.intervals == max(minutes) - min(minutes) + 1, conv.label.name


def test_capture_has_no_dissection_errors(frames: list[Frame]) -> None:
    assert max(int(s) for f in frames for s in f.values["_ws.expert.severity"]) < PI_ERROR


def test_tls_handshakes_match_labels(conversations: dict[str, Conversation]) -> None:
    for conv in of_app(conversations, "tls", "sslv2"):
        e, name = conv.label.expect, conv.label.name
        client_types, server_types = (
            conv.values("tls.handshake.type", "orig"),
            conv.values("tls.handshake.type", "resp"),
        )
        hello = next(f for f in conv.resp if {"2", "4"} & set(f.values["tls.handshake.type"]))
        wire = WIRE_VERSION[str(e["tls_version"])]
        assert hello.one("tls.handshake.version") == ("0x0303" if wire == "0x0304" else wire), name
        cipher = hello.one("tls.handshake.cipherspec" if e["app"] == "sslv2" else "tls.handshake.ciphersuite")
        assert int(cipher, 16) == int(str(e["tls_cipher"]), 16), name
        if wire == "0x0304":
            assert hello.values["tls.handshake.extensions.supported_version"] == ["0x0304"], name
        sni = conv.values("tls.handshake.extensions_server_name", "orig")
        assert sni == ([e["tls_sni"]] if e["tls_sni"] else []), name
        offered = conv.values("tls.handshake.extensions.supported_version", "orig")
        assert ("0x0304" in offered) == (e["tls_client_max_version"] == "TLSv13"), name
        if "tls_cert_requested" in e:
            assert ("13" in server_types) == e["tls_cert_requested"], name
        client_cert_lengths = [int(n) for n in conv.values("tls.handshake.certificates_length", "orig")]
        if e.get("tls_client_cert") is True:
            assert client_cert_lengths and client_cert_lengths[0] > 0, name
        elif e.get("tls_client_cert") is False:
            assert client_cert_lengths == [0], name
        elif "tls_client_cert" in e:
            assert "11" not in client_types, name
        if "tls_server_cert" in e:
            server_cert_lengths = [int(n) for n in conv.values("tls.handshake.certificates_length", "resp")]
            assert bool(server_cert_lengths and server_cert_lengths[0] > 0) == e["tls_server_cert"], name
        if e["tls_resumed"]:
            ids = conv.values("tls.handshake.session_id")
            assert len(ids) == 2 and ids[0] == ids[1], name
    mtls = conversations["fe-fe-mtls"]
    assert set(mtls.values("tls.handshake.type")) >= {"1", "2", "11", "12", "13", "14", "15", "16"}
    # The server's flight (3 certificates) fills at least one full 1460-byte segment.
    assert int(mtls.values("tls.handshake.certificates_length", "resp")[0]) > 1460
    assert any(f.payload == 1460 for f in mtls.resp)
    assert conversations["client-ext-sslv2"].values("tls.handshake.type", "resp") == ["4"]


def test_pseudo_tls_is_sslv2_hello_answered_by_hello_and_done_in_one_record(
    conversations: dict[str, Conversation], scenario: Scenario
) -> None:
    conv = conversations["ext-edge-pseudo-tls"]
    hello = next(f for f in conv.orig if f.values["tls.handshake.type"])
    assert hello.values["tls.handshake.version"] == ["0x0301"]
    assert hello.values["tls.record.version"] == ["0x0002"]
    answer = next(f for f in conv.resp if f.values["tls.handshake.type"])
    assert answer.values["tls.handshake.type"] == ["2", "14"]
    assert answer.values["tls.record.version"] == ["0x0301"]
    assert "11" not in conv.values("tls.handshake.type")
    payloads = tcp_payloads(scenario, conv.label.orig_p)
    assert payloads[0][:5] == bytes.fromhex("8046010301")
    assert payloads[1][:9] == bytes.fromhex("160301004a02000042")
    assert payloads[1][-4:] == bytes.fromhex("0e000000")
    assert len(payloads[1]) == 5 + 0x4A
    # MS-TURN TCP framing (type 0x02 control, 0, length), then an Allocate request / response in clear.
    for framed, msg_type in ((payloads[2], 0x0003), (payloads[3], 0x0103)):
        assert framed[:2] == b"\x02\x00" and int.from_bytes(framed[2:4], "big") == len(framed) - 4
        assert int.from_bytes(framed[4:6], "big") == msg_type


def test_sip_and_sdp_match_labels(conversations: dict[str, Conversation]) -> None:
    sip_convs = list(of_app(conversations, "sip"))
    assert len(sip_convs) == 3
    for conv in sip_convs:
        e = conv.label.expect
        messages = [f for f in conv.orig + conv.resp if f.values["sip.Method"] or f.values["sip.Status-Code"]]
        assert len(messages) == e["sip_messages"], conv.label.name
        assert sorted(set(conv.values("sip.Method"))) == e["sip_methods"]
        assert sorted({int(c) for c in conv.values("sip.Status-Code")}) == e["sip_status_codes"]
        assert sorted(set(conv.values("sdp.media.proto"))) == e["sdp_protos"]
        assert sorted({int(p) for p in conv.values("sdp.media.port")}) == e["sdp_media_ports"]
        attrs = conv.values("sdp.media_attr")
        assert any(a.startswith("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:") for a in attrs) == e["sdp_crypto"]
        assert ("encryption:required" in attrs) == (e["sdp_encryption"] == "required")


def test_http_requests_match_labels(conversations: dict[str, Conversation]) -> None:
    uris = []
    for conv in of_app(conversations, "http"):
        e = conv.label.expect
        assert conv.values("http.request.method") == [e["http_method"]]
        assert conv.values("http.host") == [e["http_host"]]
        uri = conv.values("http.request.uri")
        assert len(uri) == e["http_requests"] and redacted(uri[0]) == e["http_path"]
        uris += uri
    assert sorted(uris) == [
        "/abs/handler/D-0e2a-0e2b.lsabs?sig=abc",
        "/autodiscover/autodiscoverservice.svc/root?originalDomain=contoso.com",
    ]


def test_stun_and_ms_turn_match_labels(conversations: dict[str, Conversation]) -> None:
    stun = conversations["client-edge-stun"]
    assert stun.values("stun.type") == ["0x0001", "0x0101"] and "0x0020" in stun.values("stun.att.type")
    turn = conversations["client-edge-msturn-udp"]
    assert turn.values("classicstun.type") == ["0x0003", "0x0103"]
    for side in ("orig", "resp"):
        attrs = turn.values("classicstun.att.type", side)
        assert attrs[0] == "0x000f" and "0x8008" in attrs  # Magic Cookie first, then MS-VERSION
    for conv in (stun, turn):
        assert len(conv.orig) + len(conv.resp) == conv.label.expect["stun_messages"]


def test_media_payloads_show_their_protection(scenario: Scenario) -> None:
    assert {len(p) for p in udp_payloads(scenario, "10.0.5.31", 21000)} == {12 + 160 + 10}  # SRTP G.722 + tag
    assert {len(p) for p in udp_payloads(scenario, "10.0.5.42", 24000)} == {12 + 160}  # plain G.722
    assert {len(p) for p in udp_payloads(scenario, "10.0.5.40", 22000)} <= set(range(12 + 50, 12 + 131))
    pcmu = b"".join(p[12:] for p in udp_payloads(scenario, "10.0.5.30", 20000)[:500])
    top = {b for b, _ in Counter(pcmu).most_common(4)}
    assert top <= {0xFF, 0x7F, 0xFE, 0x7E, 0xFD, 0x7D}, "mu-law of a quiet signal clusters near 0xFF/0x7F"
    srtcp = udp_payloads(scenario, "10.0.5.31", 21001)[0]
    rtcp = udp_payloads(scenario, "10.0.5.30", 20001)[0]
    assert srtcp[1] == 200 and srtcp[-14] & 0x80 and len(srtcp) == len(rtcp) + 14
    sr_len = (int.from_bytes(rtcp[2:4], "big") + 1) * 4
    assert sr_len + (int.from_bytes(rtcp[sr_len + 2 : sr_len + 4], "big") + 1) * 4 == len(rtcp)


def test_g711_encoders() -> None:
    pcm = np.array([0, -1, 1000, -1000, 32767, -32768], dtype=np.int16)
    assert media.mulaw(pcm).tolist() == [0xFF, 0x7E, 0xCE, 0x4E, 0x80, 0x00]
    assert media.alaw(pcm).tolist() == [0xD5, 0x55, 0xFA, 0x7A, 0xAA, 0x2A]


def test_bulk_writes_the_requested_packets(tmp_path: Path) -> None:
    path = tmp_path / "bench.pcap"
    stats = write_bench_capture(path, 20_000, seed=3)
    assert stats.packets == 20_000
    capinfos = subprocess.run(["capinfos", "-M", "-c", str(path)], check=True, capture_output=True, text=True)
    assert "Number of packets:   20000" in capinfos.stdout
    fields = ["ip.src", "ip.dst", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport"]
    fields += ["_ws.expert.severity", "frame.time_epoch"]
    rows = [r.split("\t") for r in tshark(path, "-T", "fields", *(a for f in fields for a in ("-e", f)))]
    assert len(rows) == 20_000
    flows = {(*sorted([(r[0], r[2] or r[4]), (r[1], r[3] or r[5])]), bool(r[2])) for r in rows}
    assert len(flows) == stats.flows
    assert all(int(s) < PI_ERROR for r in rows for s in r[6].split(",") if s)
    stamps = [float(r[7]) for r in rows]
    assert stamps == sorted(stamps) and stats.duration == pytest.approx(stamps[-1] - stamps[0], abs=1e-6)
    again = tmp_path / "again.pcap"
    write_bench_capture(again, 20_000, seed=3)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_cli_writes_labels_and_bulk(tmp_path: Path, scenario: Scenario) -> None:
    assert main(["labels", str(tmp_path / "labels.json")]) == 0
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert [lab["name"] for lab in labels] == [lab.name for lab in scenario.labels]
    assert labels[0]["expect"]["orig_pkts"] == scenario.labels[0].expect["orig_pkts"]
    assert main(["bulk", str(tmp_path / "b.pcap"), "--packets", "1000"]) == 0
    assert len(tshark(tmp_path / "b.pcap", "-T", "fields", "-e", "frame.number")) == 1000
