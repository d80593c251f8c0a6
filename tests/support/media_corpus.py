"""Calibration corpus for the media verdict: real encoder payloads as RTP and SRTP, captured on loopback.

ffmpeg encodes lavfi test signals (sine, noise, speech-like tones, silence; moving test pictures) to Opus,
G.722, PCMU, PCMA, H.264, VP8 and H.263+ and sends them as RTP and as SRTP (AES_CM_128_HMAC_SHA1_80) to
127.0.0.1, while dumpcap captures them on `lo`. What ffmpeg cannot send (comfort noise, telephone-event,
RED, the 32-bit tag, RFC 4571 RTP over TCP) is made here from the captured codec payloads and protected
with this module's own RFC 3711 implementation, checked against ffmpeg's SRTP in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sensor.synth.flow import Packet, TcpFlow, UdpFlow
from sensor.synth.pcapio import PcapWriter, atomic_output

LINKTYPE_ETHERNET = 1
PORT_BASE = 41000  # ffmpeg streams go to 127.0.0.1:PORT_BASE + 10 * k
CAPTURE_FILTER = f"udp portrange {PORT_BASE}-{PORT_BASE + 999}"
# One fixed master key and salt (RFC 4568 inline: 16-byte key then 14-byte salt), so a run is reproducible.
MASTER = bytes(range(1, 31))
MASTER_B64 = base64.b64encode(MASTER).decode()

AUDIO_SIGNALS = {
    "sine": "sine=frequency=440:sample_rate={rate}",
    "noise": "anoisesrc=color=white:amplitude=0.5:sample_rate={rate}",
    # voiced speech stand-in: gliding pitch with harmonics under a syllable envelope
    "speech": "aevalsrc='(0.35*sin(2*PI*(140+25*sin(2*PI*0.45*t))*t)+0.15*sin(4*PI*(140+25*sin(2*PI*0.45*t))*t)"
    "+0.08*sin(6*PI*(140+25*sin(2*PI*0.45*t))*t))*pow(max(sin(2*PI*3.7*t),0),1.5)':s={rate}",
    "silence": "anullsrc=r={rate}:cl=mono",
}
VIDEO_SIGNALS = {
    "testsrc2": "testsrc2=size={size}:rate=25",
    "life": "life=size=176x144:rate=25:mold=10:ratio=0.2:death_color=#C83232:life_color=#00ff00",
}


@dataclass(frozen=True)
class Codec:
    """How ffmpeg makes one codec's RTP: encoder arguments, sample rate or picture size, URL query."""

    name: str
    video: bool
    args: tuple[str, ...]
    rate: int = 8000
    size: str = "320x240"
    query: str = ""


CODECS = (
    Codec("opus", False, ("-c:a", "libopus", "-b:a", "32k", "-application", "voip"), rate=48000),
    # one 20 ms frame (160 bytes) per packet: 12-byte header + 160 (+ the 10-byte tag for SRTP)
    Codec("g722", False, ("-af", "asetnsamples=n=320", "-c:a", "g722"), rate=16000, query="?pkt_size={size}"),
    Codec("pcmu", False, ("-af", "asetnsamples=n=160", "-c:a", "pcm_mulaw"), query="?pkt_size={size}"),
    Codec("pcma", False, ("-af", "asetnsamples=n=160", "-c:a", "pcm_alaw"), query="?pkt_size={size}"),
    Codec("h264", True, ("-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p")),
    Codec("vp8", True, ("-c:v", "libvpx", "-deadline", "realtime", "-b:v", "400k")),
    Codec("h263p", True, ("-c:v", "h263p", "-b:v", "300k"), size="176x144"),
)


@dataclass(frozen=True)
class Stream:
    """One labelled media flow of the corpus: its responder port identifies it in the flow table."""

    name: str
    codec: str
    encrypted: bool
    proto: str
    resp_port: int
    source: str  # 'ffmpeg' (captured) or 'made' (built here from captured payloads)


@dataclass
class Corpus:
    """The capture files, the streams they hold and the RTP packets of the captured ones."""

    captures: list[Path]
    streams: list[Stream]
    rtp: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)  # name -> (time us, datagram)


# --- RFC 3711 SRTP (AES-CM key derivation and encryption, HMAC-SHA1 authentication) -----------------------


def _aes_cm(key: bytes, iv: int, data_len: int) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(16, "big"))).encryptor()
    return enc.update(bytes(data_len)) + enc.finalize()


class Srtp:
    """SRTP sender context for one SSRC: session keys from the master key and salt (key derivation rate 0)."""

    def __init__(self, master: bytes, tag_len: int = 10) -> None:
        key, salt = master[:16], int.from_bytes(master[16:30], "big")
        self.tag_len = tag_len
        self.enc_key = self._derive(key, salt, 0, 16)
        self.auth_key = self._derive(key, salt, 1, 20)
        self.salt = int.from_bytes(self._derive(key, salt, 2, 14), "big")
        self.roc: dict[int, tuple[int, int]] = {}  # ssrc -> (rollover counter, last sequence number)

    @staticmethod
    def _derive(key: bytes, salt: int, label: int, n: int) -> bytes:
        # RFC 3711 §4.3.1: x = (label || r) XOR master_salt, r = 0; key = AES-CM(master key, x * 2^16)
        x = (label << 48) ^ salt
        return _aes_cm(key, x << 16, n)

    def _index(self, ssrc: int, seq: int) -> int:
        roc, last = self.roc.get(ssrc, (0, seq))
        if seq < last and last - seq > 0x8000:
            roc += 1
        self.roc[ssrc] = (roc, seq)
        return (roc << 16) | seq

    def _tag(self, authenticated: bytes, roc: int) -> bytes:
        return hmac.new(self.auth_key, authenticated + struct.pack("!I", roc), hashlib.sha1).digest()[: self.tag_len]

    def protect(self, packet: bytes, header_len: int = 12) -> bytes:
        """Encrypt the payload of an RTP packet and append the authentication tag (RFC 3711 §3.1, §4.1.1)."""
        seq, ssrc = struct.unpack("!H", packet[2:4])[0], struct.unpack("!I", packet[8:12])[0]
        index = self._index(ssrc, seq)
        iv = (self.salt << 16) ^ (ssrc << 64) ^ (index << 16)
        body = packet[header_len:]
        keystream = _aes_cm(self.enc_key, iv, len(body))
        out = packet[:header_len] + bytes(a ^ b for a, b in zip(body, keystream, strict=True))
        return out + self._tag(out, index >> 16)

    def tag_ok(self, packet: bytes, roc: int = 0) -> bool:
        """Whether an SRTP packet's tag verifies under this context's keys (rollover counter given)."""
        body, tag = packet[: -self.tag_len], packet[-self.tag_len :]
        return hmac.compare_digest(self._tag(body, roc), tag)


# --- capture --------------------------------------------------------------------------------------------------


def read_pcap(path: Path) -> Iterable[tuple[int, bytes]]:
    """(time in us, frame) of a classic little-endian microsecond pcap (what `dumpcap -P` writes)."""
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack("<IHHiIII", data[:24])
    if magic != 0xA1B2C3D4 or linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: not a microsecond Ethernet pcap")
    off = 24
    while off + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack("<IIII", data[off : off + 16])
        yield sec * 1_000_000 + usec, data[off + 16 : off + 16 + caplen]
        off += 16 + caplen


def udp_datagrams(path: Path) -> dict[int, list[tuple[int, bytes]]]:
    """UDP payloads over IPv4 by destination port."""
    out: dict[int, list[tuple[int, bytes]]] = {}
    for ts, frame in read_pcap(path):
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl :]
        dport, length = struct.unpack("!2xHH", udp[:6])
        out.setdefault(dport, []).append((ts, udp[8:length]))
    return out


def _ffmpeg_jobs(seconds: float) -> list[tuple[str, Codec, str, bool, int, list[str]]]:
    jobs = []
    k = 0
    for codec in CODECS:
        signals = VIDEO_SIGNALS if codec.video else AUDIO_SIGNALS
        for sig, src in signals.items():
            for srtp in (False, True):
                name = f"{codec.name}-{sig}-{'srtp' if srtp else 'rtp'}"
                port = PORT_BASE + 10 * k
                k += 1
                lavfi = src.format(rate=codec.rate, size=codec.size)
                out = ["-t", str(seconds), "-f", "rtp", "-rtpflags", "skip_rtcp"]
                if srtp:
                    out += ["-srtp_out_suite", "AES_CM_128_HMAC_SHA1_80", "-srtp_out_params", MASTER_B64]
                    out.append(f"srtp://127.0.0.1:{port}{codec.query.format(size=186)}")
                else:
                    out.append(f"rtp://127.0.0.1:{port}{codec.query.format(size=172)}")
                argv = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-f", "lavfi", "-i", lavfi]
                jobs.append((name, codec, sig, srtp, port, argv + list(codec.args) + out))
    return jobs


def _capture_ffmpeg(out_dir: Path, seconds: float) -> tuple[Path, list[Stream], dict[str, list[tuple[int, bytes]]]]:
    path = out_dir / "ffmpeg-lo.pcap"
    jobs = _ffmpeg_jobs(seconds)
    log = (out_dir / "dumpcap.log").open("wb")
    cap = subprocess.Popen(
        ["dumpcap", "-q", "-P", "-i", "lo", "-f", CAPTURE_FILTER, "-w", str(path)], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while not (path.exists() and path.stat().st_size >= 24):
            if cap.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dumpcap did not start: {(out_dir / 'dumpcap.log').read_text()}")
            time.sleep(0.05)
        time.sleep(0.3)

        def run(argv: list[str]) -> None:
            done = subprocess.run(argv, capture_output=True, timeout=60 + 4 * seconds)
            if done.returncode:
                raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")

        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            list(pool.map(run, [j[5] for j in jobs]))
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=10)
        log.close()
    by_port = udp_datagrams(path)
    streams, rtp = [], {}
    for name, codec, _, srtp, port, _ in jobs:
        packets = by_port.get(port, [])
        if len(packets) < 20:
            raise RuntimeError(f"{name}: only {len(packets)} packets captured on port {port}")
        streams.append(Stream(name, codec.name, srtp, "udp", port, "ffmpeg"))
        rtp[name] = packets
    return path, streams, rtp


# --- streams made from captured payloads ------------------------------------------------------------------------


def _rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


@dataclass
class _Sender:
    """One RTP sender: sequence numbers and optional SRTP."""

    ssrc: int
    srtp: Srtp | None
    seq: int = 1000
    packets: list[tuple[int, bytes]] = field(default_factory=list)

    def send(self, t_us: int, pt: int, ts: int, payload: bytes, marker: bool = False) -> None:
        pkt = _rtp(pt, self.seq, ts, self.ssrc, payload, marker)
        self.seq += 1
        self.packets.append((t_us, self.srtp.protect(pkt) if self.srtp else pkt))


def _payloads(packets: list[tuple[int, bytes]]) -> list[bytes]:
    return [d[12:] for _, d in packets]


def _cn_stream(snd: _Sender, speech: list[bytes], seconds: float) -> None:
    """G.711 talk spurts of 1 s with comfort noise (PT 13, RFC 3389) every 100 ms in the 1 s silences."""
    t, ts, k = 0, 0, 0
    level = 40
    while t < seconds * 1_000_000:
        talking = (t // 1_000_000) % 2 == 0
        if talking:
            snd.send(t, 0, ts, speech[k % len(speech)], marker=k == 0)
            k += 1
        elif (t // 20_000) % 5 == 0:
            level = 30 + (level + 7) % 50
            # level byte, and on every other update four reflection coefficients (RFC 3389 §3)
            spectral = bytes([level]) + (bytes([120, 97, 131, 140]) if (t // 100_000) % 2 else b"")
            snd.send(t, 13, ts, spectral)
        t += 20_000
        ts += 160


def _dtmf_stream(snd: _Sender, audio: list[bytes], pt_audio: int, step: int, seconds: float) -> None:
    """Audio with an RFC 4733 event every 0.5 s: 8 updates of rising duration, the end packet sent 3 times.
    Every packet of an event carries the event's start timestamp (RFC 4733 §2.5.1.2)."""
    t, ts, k, digit = 0, 0, 0, 0
    while t < seconds * 1_000_000:
        if k and k % 25 == 0:
            for j in range(8):
                end = j == 7
                payload = struct.pack("!BBH", digit % 16, (0x80 if end else 0) | 10, step * (j + 1))
                for _ in range(3 if end else 1):
                    snd.send(t, 101, ts, payload, marker=j == 0)
                    t += 20_000 if not end else 5_000
            ts += 8 * step
            digit += 1
        snd.send(t, pt_audio, ts, audio[k % len(audio)])
        k += 1
        t += 20_000
        ts += step


def _red_stream(snd: _Sender, opus: list[bytes], seconds: float) -> None:
    """Opus (PT 111) for 20 packets, then RED (PT 97, RFC 2198) carrying each frame and the one before it."""
    n = int(seconds * 50)
    prev = b""
    for k in range(n):
        frame = opus[k % len(opus)]
        if k < 20 or not prev:
            snd.send(k * 20_000, 111, k * 960, frame)
        else:
            header = struct.pack(
                "!BBBB", 0x80 | 111, (960 >> 6) & 0xFF, ((960 & 0x3F) << 2) | (len(prev) >> 8), len(prev) & 0xFF
            )
            snd.send(k * 20_000, 97, k * 960, header + bytes([111]) + prev + frame)
        prev = frame


def _made_streams(out_dir: Path, rtp: dict[str, list[tuple[int, bytes]]], seconds: float) -> tuple[Path, list[Stream]]:
    out: list[Packet] = []
    streams: list[Stream] = []
    port = 30000
    opus = _payloads(rtp["opus-speech-rtp"])
    pcmu = _payloads(rtp["pcmu-speech-rtp"])

    def udp(name: str, codec: str, sender: _Sender) -> None:
        nonlocal port
        port += 10
        flow = UdpFlow(out, "10.9.0.1", 20000 + port, "10.9.0.2", port, f"made:{name}")
        for t, d in sender.packets:
            flow.send(1_700_000_000_000_000 + t + port, True, d)
        streams.append(Stream(name, codec, sender.srtp is not None, "udp", port, "made"))

    for srtp in (False, True):
        tag = "srtp" if srtp else "rtp"
        s = _Sender(0x1000 + port, Srtp(MASTER) if srtp else None)
        _cn_stream(s, pcmu, 2 * seconds)
        udp(f"pcmu-cn-{tag}", "pcmu+cn", s)
        s = _Sender(0x2000 + port, Srtp(MASTER) if srtp else None)
        _dtmf_stream(s, opus, 97, 960, 2 * seconds)
        udp(f"opus-dtmf-{tag}", "opus+telephone-event", s)
        s = _Sender(0x3000 + port, Srtp(MASTER) if srtp else None)
        _dtmf_stream(s, pcmu, 0, 160, 2 * seconds)
        udp(f"pcmu-dtmf-{tag}", "pcmu+telephone-event", s)
        s = _Sender(0x4000 + port, Srtp(MASTER) if srtp else None)
        _red_stream(s, opus, seconds)
        udp(f"opus-red-{tag}", "red+opus", s)
    # the 32-bit tag (AES_CM_128_HMAC_SHA1_32) with events: 8-byte SRTP telephone-event packets
    s = _Sender(0x5000, Srtp(MASTER, tag_len=4))
    _dtmf_stream(s, opus, 97, 960, 2 * seconds)
    udp("opus-dtmf-srtp32", "opus+telephone-event", s)
    # RFC 4571: each RTP/SRTP packet framed by a 16-bit length on a TCP connection
    for name in ("opus-speech-rtp", "opus-speech-srtp", "h264-testsrc2-rtp", "h264-testsrc2-srtp"):
        port += 10
        tcp = TcpFlow(out, "10.9.0.3", 20000 + port, "10.9.0.4", port, f"made:{name}:tcp")
        t0 = 1_700_000_100_000_000 + port * 1000
        now = tcp.open(t0)
        first = rtp[name][0][0]
        for ts, d in rtp[name]:
            now = tcp.send(max(now + 1, t0 + 1000 + ts - first), True, struct.pack("!H", len(d)) + d)
        tcp.close(now + 1000)
        codec = name.split("-")[0]
        streams.append(Stream(f"{name}-rfc4571", codec, name.endswith("srtp"), "tcp", port, "made"))
    path = out_dir / "made.pcap"
    with atomic_output(path) as fh:
        writer = PcapWriter(fh, LINKTYPE_ETHERNET)
        for p in sorted(out, key=lambda p: p.ts):
            writer.write(round(p.ts * 1_000_000), p.data)
    return path, streams


def build(out_dir: Path, seconds: float = 2.5) -> Corpus:
    """Encode, send and capture the ffmpeg streams, then make the others; returns the labelled corpus."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env_seconds = os.environ.get("LYNC_SENSOR_CORPUS_SECONDS")
    if env_seconds:
        seconds = float(env_seconds)
    lo, streams, rtp = _capture_ffmpeg(out_dir, seconds)
    made, made_streams = _made_streams(out_dir, rtp, seconds)
    return Corpus([lo, made], streams + made_streams, rtp)
