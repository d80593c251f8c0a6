"""Media verdict from the payload itself (issue 11 parts 3 and 4): each kind of evidence, and the verdict on
real encoder output (ffmpeg RTP and SRTP captured on loopback), the labelled generator and the shared captures."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from sensor.analyze import Analyzer
from sensor.facts import media
from sensor.fastpath import rtp
from sensor.synth import build_labelled, write
from sensor.synth.pcapio import PcapWriter, atomic_output
from tests.conftest import CAPTURES, default_config, flows_by_uid
from tests.support import media_corpus as mc

pytestmark = pytest.mark.media

# --- each kind of evidence, from packets run through the compiled per-packet code --------------------------------


def _stats(packets: Iterable[bytes]) -> list[int]:
    ps = np.zeros((1, rtp.NPS), np.int64)
    for pkt in packets:
        buf = np.frombuffer(pkt, np.uint8)
        hl = rtp.rtp_header_len(buf, 0, len(pkt))
        rtp.observe_payload(buf, 0, len(pkt), hl, buf[1] & 0x7F, 0, ps, 0)
    return [int(x) for x in ps[0]]


def _kinds(packets: Iterable[bytes]) -> dict[str, bool]:
    return {e.text.split()[0]: e.encrypted for e in media.payload_evidence(_stats(packets))}


def _rtp(pt: int, seq: int, ts: int, payload: bytes, ssrc: int = 0x1234ABCD) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def _opus_like(n: int, rng: random.Random, ts_step: int = 960, pt: int = 111) -> list[bytes]:
    """Opus-shaped plain packets: a constant TOC byte (SILK WB 20 ms, mono) and range-coded bytes after it."""
    return [_rtp(pt, k, k * ts_step, bytes([0x48]) + rng.randbytes(60)) for k in range(n)]


def _video_like(n: int, rng: random.Random) -> list[bytes]:
    """Frames of four packets sharing a 90 kHz timestamp (H.264 FU-A: indicator 0x7C, header 0x85/0x05/0x45)."""
    return [
        _rtp(96, k, (k // 4) * 3600, bytes([0x7C, (0x85, 0x05, 0x05, 0x45)[k % 4]]) + rng.randbytes(900))
        for k in range(n)
    ]


def _protect(packets: list[bytes], tag_len: int = 10) -> list[bytes]:
    srtp = mc.Srtp(mc.MASTER, tag_len)
    return [srtp.protect(p) for p in packets]


def test_positional_structure_fires_on_plain_and_not_on_srtp() -> None:
    plain = _opus_like(64, random.Random(1))
    assert _kinds(plain) == {"payload:structure": False}
    assert "payload:structure" not in _kinds(_protect(plain))


def test_positional_uniform_fires_only_where_plain_would_show_structure() -> None:
    rng = random.Random(2)
    assert _kinds(_protect(_opus_like(64, rng))) == {"payload:uniform": True}  # 48 kHz Opus steps
    assert _kinds(_protect(_video_like(64, rng))) == {"payload:uniform": True}  # packets sharing frame timestamps
    # the same keystream over an 8 kHz or 16 kHz clock (SILK, Siren, G.722 may look random in the clear): nothing
    assert _kinds(_protect(_opus_like(64, rng, ts_step=320, pt=111))) == {}
    assert _kinds(_protect(_opus_like(64, rng, ts_step=160, pt=9))) == {}


def test_positional_needs_enough_packets() -> None:
    rng = random.Random(3)
    assert _kinds(_opus_like(rtp.POS_MIN_PACKETS - 1, rng)) == {}
    assert _kinds(_protect(_opus_like(rtp.POS_MIN_PACKETS - 1, rng))) == {}
    # payloads too short to hold 4 bytes before an SRTP tag are not sampled
    assert _kinds([_rtp(111, k, k * 960, bytes([0x48]) + bytes(12)) for k in range(64)]) == {}


def _cn(levels: list[int], spectral: bytes = b"") -> list[bytes]:
    return [_rtp(13, k, k * 160, bytes([lv]) + spectral) for k, lv in enumerate(levels)]


def test_comfort_noise_plain_and_tagged() -> None:
    plain = _cn([40, 52, 61, 45, 70, 38]) + _cn([50, 55], bytes([120, 97, 131, 140]))
    assert _kinds(plain) == {"payload:cn-plain": False}
    assert _kinds(_protect(plain)) == {"payload:cn-tag": True}
    assert _kinds(_protect(plain, tag_len=4)) == {"payload:cn-tag": True}
    assert _kinds(plain[:2]) == {}  # too few
    # a plain level byte is 0..127 (-dBov): a high bit among 1-byte CN payloads is not plain comfort noise
    assert _kinds(_cn([40, 200, 41, 42])) == {}


def _events(digits: Iterable[int], bad_r_bit: bool = False) -> list[bytes]:
    out, seq = [], 0
    for e, digit in enumerate(digits):
        for j in range(6):
            end = j == 5
            flags = (0x80 if end else 0) | (0x40 if bad_r_bit else 0) | 10
            out.append(_rtp(101, seq, e * 8000, struct.pack("!BBH", digit, flags, 160 * (j + 1))))
            seq += 1
    return out


def test_telephone_event_plain_and_tagged() -> None:
    plain = _events([1, 2, 3])
    assert _kinds(plain) == {"payload:telephone-event": False}
    assert _kinds(_protect(plain)) == {"payload:telephone-event+tag": True}
    assert _kinds(_protect(plain, tag_len=4)) == {"payload:telephone-event+tag": True}
    assert _kinds(_events([200, 201, 202])) == {}  # no DTMF event number
    assert _kinds(_events([1, 2, 3], bad_r_bit=True)) == {}  # reserved bit set
    falling = [_rtp(101, k, 0, struct.pack("!BBH", 5, 10, 1000 - 100 * k)) for k in range(6)]
    assert _kinds(falling) == {}  # duration must rise within an event


def test_red_headers_name_a_payload_type() -> None:
    rng = random.Random(4)
    frames = [bytes([0x48]) + rng.randbytes(40) for _ in range(40)]
    packets = [_rtp(111, k, k * 960, frames[k]) for k in range(5)]
    for k in range(5, 40):
        head = struct.pack("!BBBB", 0x80 | 111, 960 >> 6, (960 & 0x3F) << 2, len(frames[k - 1]))
        packets.append(_rtp(97, k, k * 960, head + bytes([111]) + frames[k - 1] + frames[k]))
    kinds = _kinds(packets)
    assert kinds["payload:red-headers"] is False
    ev = [e for e in media.payload_evidence(_stats(packets)) if e.text.startswith("payload:red")]
    assert "35 (35 naming a type of the stream)" in ev[0].text
    assert "payload:red-headers" not in _kinds(_protect(packets))
    noise = [_rtp(97, k, k * 960, bytes([0x80 | rng.randrange(128)]) + rng.randbytes(80)) for k in range(200)]
    assert "payload:red-headers" not in _kinds(noise)


# --- the calibration corpus ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> mc.Corpus:
    return mc.build(tmp_path_factory.mktemp("media-corpus"))


def _analyse(paths: list[Path]) -> dict[tuple[str, int], dict[str, object]]:
    flows = flows_by_uid(Analyzer(default_config()).run(paths).table)
    return {(str(f["proto"]), int(f["resp_p"])): f for f in flows}  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def corpus_flows(corpus: mc.Corpus) -> dict[tuple[str, int], dict[str, object]]:
    return _analyse(corpus.captures)


def test_own_srtp_matches_ffmpeg(corpus: mc.Corpus) -> None:
    """The corpus's own SRTP (for what ffmpeg cannot send) derives the same keys as ffmpeg's libavformat."""
    ctx = mc.Srtp(mc.MASTER)
    packets = [d for _, d in corpus.rtp["opus-speech-srtp"][:20]]
    assert all(ctx.tag_ok(p) for p in packets)
    assert not mc.Srtp(bytes(30)).tag_ok(packets[0])


def _score(
    streams: Iterable[mc.Stream], flows: dict[tuple[str, int], dict[str, object]]
) -> tuple[int, int, list[str], list[str], list[str]]:
    """Streams of >= 50 packets decided right, and how many; every plain stream called encrypted; the streams
    of >= 50 packets decided the wrong way; those left undecided (name and evidence)."""
    right = total = 0
    plain_called_encrypted, wrong, undecided = [], [], []
    for s in streams:
        f = flows[(s.proto, s.resp_port)]
        if s.encrypted is False and f["media_encrypted"] is True:
            plain_called_encrypted.append(s.name)
        if int(f["rtp_packets"] or 0) >= 50:  # type: ignore[call-overload]
            total += 1
            right += f["media_encrypted"] is s.encrypted
            if f["media_encrypted"] is None:
                undecided.append(f"{s.name}: {f['media_evidence']}")
            elif f["media_encrypted"] is not s.encrypted:
                wrong.append(s.name)
    return right, total, plain_called_encrypted, wrong, undecided


# A verdict may stay unknown (None) where the evidence falls short; it is never the wrong way. One stream of a
# corpus build may be left undecided: vp8-life-srtp was, in 2 of 14 runs of this file (on the commit that
# calibrated the evidence as well as later; perhaps ffmpeg's real-time VP8 encoder, which adapts to the load),
# and in none of 25 corpus builds since. The assertion messages carry the evidence of an undecided stream.
UNDECIDED_ALLOWED = 1


def test_corpus_streams_decided_right(
    corpus: mc.Corpus, corpus_flows: dict[tuple[str, int], dict[str, object]]
) -> None:
    right, total, wrong_way, wrong, undecided = _score(corpus.streams, corpus_flows)
    assert wrong_way == []
    assert wrong == []
    assert total >= 50
    assert len(undecided) <= UNDECIDED_ALLOWED, undecided
    assert right >= total - UNDECIDED_ALLOWED, f"{right}/{total} streams of >= 50 packets decided right"


def test_rfc4571_rtp_over_tcp_is_found_and_decided(
    corpus: mc.Corpus, corpus_flows: dict[tuple[str, int], dict[str, object]]
) -> None:
    """RTP framed on TCP (RFC 4571): each frame is followed in stream order and judged like a datagram."""
    tcp = [s for s in corpus.streams if s.proto == "tcp"]
    assert len(tcp) == 4
    for s in tcp:
        f = corpus_flows[(s.proto, s.resp_port)]
        assert f["app"] in ("rtp", "srtp"), s.name
        assert int(f["rtp_packets"] or 0) >= 50, s.name  # type: ignore[call-overload]
        assert f["media_encrypted"] is s.encrypted, (s.name, f["media_evidence"])


def _first_packets(src: Path, dst: Path, keep: int) -> None:
    seen: dict[bytes, int] = {}
    with atomic_output(dst) as fh:
        w = PcapWriter(fh, mc.LINKTYPE_ETHERNET)
        for ts, frame in mc.read_pcap(src):
            key = frame[26:38]  # IPv4 addresses and ports: one flow of the capture
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= keep:
                w.write(ts, frame)


def test_verdict_within_first_100_packets(
    corpus: mc.Corpus, corpus_flows: dict[tuple[str, int], dict[str, object]], tmp_path: Path
) -> None:
    cut = tmp_path / "first100.pcap"
    _first_packets(corpus.captures[0], cut, 100)
    early = _analyse([cut])
    ffmpeg = [s for s in corpus.streams if s.source == "ffmpeg"]
    undecided = []
    for s in ffmpeg:
        key = (s.proto, s.resp_port)
        got = early[key]["media_encrypted"]
        if got is None:
            undecided.append((s.name, early[key]["media_evidence"]))
            continue
        assert got is s.encrypted, (s.name, early[key]["media_evidence"])
        assert corpus_flows[key]["media_encrypted"] in (got, None)
    assert len(undecided) <= UNDECIDED_ALLOWED, undecided


ENCRYPTED_KINDS = ("payload:uniform", "payload:cn-tag", "payload:telephone-event+tag")


def _evidence_errors(
    streams: Iterable[tuple[bool, list[str] | None]],
) -> dict[str, list[int]]:
    """Per evidence kind: [fired on plain, wrong on plain, fired on SRTP, wrong on SRTP]."""
    kinds: dict[str, list[int]] = {}
    for encrypted, evidence in streams:
        for text in evidence or []:
            if not text.startswith("payload:"):
                continue
            kind = text.split()[0]
            says = kind in ENCRYPTED_KINDS
            row = kinds.setdefault(kind, [0, 0, 0, 0])
            base = 2 if encrypted else 0
            row[base] += 1
            row[base + 1] += says is not encrypted
    return kinds


def test_each_payload_evidence_kind_is_right_on_the_corpus(
    corpus: mc.Corpus, corpus_flows: dict[tuple[str, int], dict[str, object]]
) -> None:
    pairs = [(s.encrypted, corpus_flows[(s.proto, s.resp_port)]["media_evidence"]) for s in corpus.streams]
    kinds = _evidence_errors(pairs)  # type: ignore[arg-type]
    for kind in ("payload:structure", "payload:uniform", "payload:cn-plain", "payload:cn-tag"):
        assert kind in kinds, kinds
    for kind in ("payload:telephone-event", "payload:telephone-event+tag", "payload:red-headers"):
        assert kind in kinds, kinds
    assert {k: (v[1], v[3]) for k, v in kinds.items() if v[1] or v[3]} == {}


# --- the labelled generator and the shared captures ----------------------------------------------------------


def test_generator_streams_decided_right(tmp_path_factory: pytest.TempPathFactory) -> None:
    cap = tmp_path_factory.mktemp("labelled") / "labelled.pcap"
    scenario = build_labelled(7)
    write(scenario, cap)
    flows = _analyse([cap])
    right = total = 0
    for label in scenario.labels:
        enc = label.expect.get("media_encrypted")
        if enc is None:
            continue
        f = flows[(label.proto, label.resp_p)]
        assert not (enc is False and f["media_encrypted"] is True), label.name
        evidence = cast(list[str], f["media_evidence"] or [])
        says_encrypted = [t for t in evidence if t.split()[0] in ENCRYPTED_KINDS]
        assert enc or not says_encrypted, (label.name, says_encrypted)
        if int(label.expect.get("rtp_packets") or 0) >= 50:  # type: ignore[call-overload]
            total += 1
            right += f["media_encrypted"] is enc
    assert total >= 5
    assert right >= 0.99 * total


def test_shared_captures_never_call_plain_media_encrypted() -> None:
    """Every shared capture holds plain media only, except the WebRTC call (DTLS-SRTP) of ndpi__stun_dtls_rtp."""
    paths = sorted(p for p in CAPTURES.glob("*.pcap*") if "stun_dtls_rtp" not in p.name)
    if not paths:
        pytest.skip(f"no shared captures at {CAPTURES}")
    for path in paths:
        for f in flows_by_uid(Analyzer(default_config()).run([path]).table):
            assert f["media_encrypted"] is not True, (path.name, f["media_evidence"])
