"""Cross-check: the native fact parsers agree with Wireshark's dissectors on every shared capture and on
the labelled generator.

Native side: each TCP stream's two directions as tshark follows them (`-z follow,tcp,raw`, reassembled
out of order) go through FlowFacts.observe_streams, each UDP payload through observe_datagram. Wireshark
side: sensor.facts.dissect.dissect() on the whole file into FlowFacts.observe. Deliberate differences are
listed in DIFFERENCES with their reasons; everything else must be equal.
"""

from __future__ import annotations

import csv
import functools
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sensor.facts import FlowFacts
from sensor.facts.dissect import dissect
from sensor.synth import build_labelled, write
from tests.conftest import CAPTURES

pytestmark = pytest.mark.tshark

TSHARK = ["tshark", "-o", "tcp.reassemble_out_of_order:TRUE"]


@dataclass
class Stream:
    """One TCP or UDP conversation as tshark numbers it: its originator and what each side sent."""

    proto: str
    originator: tuple[str, int]
    responder: tuple[str, int] = ("", 0)
    client: bytes = b""
    server: bytes = b""
    datagrams: list[tuple[bytes, int, int]] = field(default_factory=list)  # payload, direction, ts_ns
    frames: dict[int, int] = field(default_factory=dict)  # frame number -> direction


def _streams(path: Path) -> dict[tuple[str, int], Stream]:
    fields = ["frame.number", "frame.time_epoch", "tcp.stream", "udp.stream", "ip.src", "ipv6.src"]
    fields += ["tcp.srcport", "udp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport", "udp.dstport", "udp.payload"]
    cmd = [*TSHARK, "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    streams: dict[tuple[str, int], Stream] = {}
    for line in out.splitlines():
        row = dict(zip(fields, line.split("\t"), strict=False))
        proto = "tcp" if row.get("tcp.stream") else "udp" if row.get("udp.stream") else ""
        if not proto:
            continue
        key = (proto, int(row[f"{proto}.stream"]))
        src = (row["ip.src"] or row["ipv6.src"], int(row[f"{proto}.srcport"]))
        dst = (row["ip.dst"] or row["ipv6.dst"], int(row[f"{proto}.dstport"]))
        s = streams.get(key)
        if s is None:
            s = streams[key] = Stream(proto, src, dst)
        direction = 0 if src == s.originator else 1
        s.frames[int(row["frame.number"])] = direction
        if proto == "udp" and row.get("udp.payload"):
            ts_ns = int(float(row["frame.time_epoch"]) * 1e9)
            s.datagrams.append((bytes.fromhex(row["udp.payload"]), direction, ts_ns))
    tcp = [n for p, n in streams if p == "tcp"]
    if tcp:
        cmd = [*TSHARK, "-r", str(path), "-q"]
        for n in tcp:
            cmd += ["-z", f"follow,tcp,raw,{n}"]
        _read_follow(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout, streams)
    return streams


def _read_follow(text: str, streams: dict[tuple[str, int], Stream]) -> None:
    """tshark's follow,tcp,raw: 'Filter: tcp.stream eq N', 'Node 0: addr:port', then hex lines; a leading
    tab marks node 1's data."""
    cur: Stream | None = None
    node0: tuple[str, int] | None = None
    parts: list[list[str]] = [[], []]

    def flush() -> None:
        if cur is None or node0 is None:
            return
        a, b = bytes.fromhex("".join(parts[0])), bytes.fromhex("".join(parts[1]))
        cur.client, cur.server = (a, b) if node0 == cur.originator else (b, a)

    for line in text.splitlines():
        if line.startswith("Filter: tcp.stream eq "):
            flush()
            cur, node0, parts = streams[("tcp", int(line.rsplit(" ", 1)[1]))], None, [[], []]
        elif line.startswith("Node 0: "):
            host, _, port = line[8:].rpartition(":")
            node0 = (host.strip("[]"), int(port))
        elif cur is not None and line and not line.startswith(("=", "Follow:", "Node 1:")):
            parts[1 if line.startswith("\t") else 0].append(line.strip())
    flush()


def native_facts(s: Stream) -> FlowFacts:
    ff = FlowFacts()
    if s.proto == "tcp":
        ff.observe_streams(
            s.client,
            s.server,
            client_from_start=True,
            server_from_start=True,
            client_complete=True,
            server_complete=True,
            ts_ns=0,
        )
    for payload, direction, ts_ns in s.datagrams:
        ff.observe_datagram(payload, direction, ts_ns)
    return ff


@functools.cache
def compared(path: Path) -> tuple[dict[tuple[str, int], Stream], dict[tuple[str, int], tuple[FlowFacts, FlowFacts]]]:
    streams = _streams(path)
    by_frame = {n: (key, d) for key, s in streams.items() for n, d in s.frames.items()}
    wire: dict[tuple[str, int], FlowFacts] = {}
    for p in dissect(path):
        hit = by_frame.get(p.number)
        if hit is not None:
            wire.setdefault(hit[0], FlowFacts()).observe(p, hit[1])
    return streams, {k: (native_facts(s), wire.get(k, FlowFacts())) for k, s in streams.items()}


def columns(ff: FlowFacts) -> dict[str, object]:
    """The flow columns FlowFacts answers for, as sensor/analyze.py fills them."""
    out: dict[str, object] = {}
    if ff.tls.seen:
        out.update(ff.tls.columns())
        out["tls_pseudo"] = ff.tls.pseudo
        out["sslv2_server_hello"] = ff.tls.sslv2_server_hello
    if ff.sip.messages or ff.sip.media:
        out.update(ff.sip.columns())
        out["sip_messages"] = ff.sip.messages
        out["sdp_addresses"] = sorted({m.address for m in ff.sip.media if m.address}) or None
    if ff.http.requests:
        out.update(ff.http.columns())
    if ff.stun.messages:
        out.update(ff.stun.columns())
        out["stun_classic"] = ff.stun.classic
    out["dtls_srtp"] = ff.dtls_srtp
    return out


def _unknown_not_false(native: object, wire: object) -> bool:
    return native is None and wire is False


# Deliberate differences: column -> (accepts(native, wireshark), reason).
DIFFERENCES: dict[str, tuple[Callable[[object, object], bool], str]] = {
    "tls_cert_names": (
        lambda n, w: n is None or (isinstance(n, list) and isinstance(w, list) and set(n) <= set(w)),
        "native names come from the leaf certificate only (R15 judges the server's own certificate); "
        "Wireshark's x509 fields also carry host-like names of the intermediate and root CAs",
    ),
    "tls_cert_requested": (
        _unknown_not_false,
        "unknown is not false: null until the server's flight is visibly complete (ServerHelloDone or "
        "ChangeCipherSpec), and under TLS 1.3, which encrypts CertificateRequest",
    ),
    "tls_server_cert": (
        _unknown_not_false,
        "unknown is not false: null when the server flight stops before its Certificate, or is TLS 1.3",
    ),
    "tls_resumed": (_unknown_not_false, "unknown is not false: null when no ServerHello was seen"),
    "tls_sslv2_hello": (_unknown_not_false, "unknown is not false: null when no ClientHello was seen"),
}


STUN_COLUMNS = ("stun_messages", "stun_classic", "ms_turn")
PSEUDO_TLS_STUN = (
    "after MS-TURN pseudo-TLS hellos the framed TURN messages travel in clear; the native parser reads "
    "them, Wireshark takes them for TLS continuation data (analyze counts them from the fast path)"
)


def mismatches(native: FlowFacts, wire: FlowFacts) -> list[str]:
    a, b = columns(native), columns(wire)
    out = []
    for k in sorted(set(a) | set(b)):
        n, w = a.get(k), b.get(k)
        if k in STUN_COLUMNS and native.tls.pseudo and w is None:
            continue  # PSEUDO_TLS_STUN
        if isinstance(n, list) and isinstance(w, list):
            n, w = sorted(map(str, n)), sorted(map(str, w))
        if n == w:
            continue
        accept = DIFFERENCES.get(k)
        if accept is not None and accept[0](n, w):
            continue
        out.append(f"{k}: native {n!r}, wireshark {w!r}")
    return out


def manifest() -> list[str]:
    path = CAPTURES / "MANIFEST.tsv"
    if not path.exists():
        return []
    with path.open() as fh:
        return [row["file"] for row in csv.DictReader(fh, delimiter="\t")]


@pytest.mark.parametrize("name", manifest())
def test_native_parsers_agree_with_wireshark(name: str) -> None:
    streams, facts = compared(CAPTURES / name)
    problems = []
    for key, (native, wire) in sorted(facts.items()):
        s = streams[key]
        problems += [f"{key} {s.originator}->{s.responder}: {m}" for m in mismatches(native, wire)]
    assert not problems, "\n".join(problems)


def test_crosscheck_sees_the_facts_it_compares() -> None:
    """The comparison is not vacuous: the native side found what the manifest says each capture holds."""
    if not manifest():
        pytest.skip("shared captures not present")
    seen: dict[str, set[str]] = {}
    for name in manifest():
        for native, _ in compared(CAPTURES / name)[1].values():
            cols = columns(native)
            seen.setdefault(name, set()).update(k for k, v in cols.items() if v not in (None, False, 0))
    assert {"tls_version", "tls_cipher", "tls_cert_names", "tls_server_cert"} <= seen["zeek__tls1.2.pcap"]
    assert {"tls_cert_requested", "tls_client_cert", "tls_sni"} <= seen["zeek__client-certificate.pcap"]
    assert "tls_cert_requested" in seen["zeek__certificate-request-failed.pcap"]
    assert {"tls_version", "sslv2_server_hello", "tls_sslv2_hello"} <= seen["zeek__ssl-v2.pcap"]
    assert {"sip_methods", "sip_status_codes", "sdp_media_ports", "sdp_protos"} <= seen["ndpi__sip.pcap"]
    assert {"sip_methods", "sdp_addresses"} <= seen["heplify__sip_ipv4_tcp.pcap"]
    assert {"stun_messages", "ms_turn", "stun_classic"} <= seen["arkime__stun.pcap"]
    assert {"stun_messages", "dtls_srtp"} <= seen["ndpi__stun_dtls_rtp.pcapng"]
    assert {"http_method", "http_host", "http_path"} <= seen["zeek__http-get.pcap"]


LABEL_PREFIXES = ("tls_", "sip_methods", "sip_status_codes", "sdp_", "http_method", "http_host", "http_path")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labelled") / "labelled.pcap"
    write(build_labelled(7), path, fmt="pcap", link="ethernet")
    return path


def test_labelled_generator_native_equals_wireshark(labelled: Path) -> None:
    streams, facts = compared(labelled)
    problems = []
    for key, (native, wire) in sorted(facts.items()):
        problems += [f"{key} {streams[key].originator}: {m}" for m in mismatches(native, wire)]
    assert not problems, "\n".join(problems)


def test_labelled_generator_native_equals_labels(labelled: Path) -> None:
    """Every TLS, SIP/SDP and HTTP fact the generator labels, from the native parsers alone."""
    streams, facts = compared(labelled)
    by_tuple = {(s.proto, *s.originator, *s.responder): facts[k][0] for k, s in streams.items()}
    problems = []
    checked = 0
    for label in build_labelled(7).labels:
        native = by_tuple.get((label.proto, label.orig_h, label.orig_p, label.resp_h, label.resp_p))
        if native is None:
            continue
        cols = columns(native)
        for k, want in label.expect.items():
            if not k.startswith(LABEL_PREFIXES) or (k not in cols and want is None):
                continue
            have = cols.get(k)
            if isinstance(want, list) and isinstance(have, list):
                want, have = sorted(map(str, want)), sorted(map(str, have))
            checked += 1
            if have != want:
                problems.append(f"{label.name}: {k} = {have!r}, want {want!r}")
    assert not problems, "\n".join(problems)
    assert checked > 100
