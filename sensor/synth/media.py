"""RTP/SRTP and RTCP/SRTCP packets, G.711 encoders and a speech-like test signal."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SRTP_TAG_LEN = 10  # AES_CM_128_HMAC_SHA1_80: 80-bit authentication tag
PTIME_US = 20_000
NTP_UNIX_OFFSET = 2_208_988_800
RTCP_SR, RTCP_SDES = 200, 202
Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Codec:
    """An audio codec as it shows on the wire: payload type, RTP clock step per 20 ms, payload size."""

    name: str
    pt: int
    ts_step: int
    min_len: int
    max_len: int
    encoding: str  # 'mulaw', 'alaw' (real G.711 of the test signal) or 'opaque' (random-looking bytes)


PCMU = Codec("PCMU", 0, 160, 160, 160, "mulaw")
PCMA = Codec("PCMA", 8, 160, 160, 160, "alaw")
G722 = Codec("G722", 9, 160, 160, 160, "opaque")  # RFC 3551: G.722 keeps an 8000 Hz RTP clock
SIREN = Codec("SIREN", 111, 320, 40, 120, "opaque")
RTAUDIO = Codec("x-msrta", 114, 320, 40, 120, "opaque")


def speech(rng: np.random.Generator, seconds: float, rate: int = 8000, level: float = 1400.0) -> Pcm:
    """Low-level voiced signal: gliding pitch with harmonics, syllable envelope, talk spurts, noise floor."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 135.0 + 25.0 * np.sin(2 * np.pi * 0.45 * t) + 10.0 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    # Harmonics with a falling, rippled spectrum stand in for vocal-tract formants.
    weights = [(0.9**k) * (1.0 + 0.6 * np.sin(2 * np.pi * k / 7.0)) for k in range(1, 12)]
    voiced = sum(w * np.sin(k * phase) for k, w in enumerate(weights, start=1))
    syllables = np.clip(np.sin(2 * np.pi * 3.7 * t + rng.uniform(0, 6)), 0.0, None) ** 1.5
    spurts = (np.sin(2 * np.pi * 0.23 * t + rng.uniform(0, 6)) > -0.35).astype(float)
    noise = rng.normal(0.0, 6.0, n)
    signal = level * voiced * syllables * spurts / 3.0 + noise
    pcm: npt.NDArray[np.int16] = np.clip(signal, -32768, 32767).astype(np.int16)
    return pcm


def mulaw(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """ITU-T G.711 mu-law (silence encodes as 0xFF/0x7F)."""
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag, side="left")
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    encoded: npt.NDArray[np.uint8] = (uval ^ mask).astype(np.uint8)
    return encoded


def alaw(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """ITU-T G.711 A-law (silence encodes as 0xD5/0x55)."""
    x = pcm.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), mag, side="left")
    aval = np.where(seg < 2, (mag >> 1) & 0x0F, (mag >> np.maximum(seg, 1)) & 0x0F) | (seg << 4)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


def encoded_speech(rng: np.random.Generator, codec: Codec, seconds: float) -> bytes:
    """The G.711 byte stream of the test signal for mu-law or A-law codecs."""
    pcm = speech(rng, seconds)
    return bytes(mulaw(pcm) if codec.encoding == "mulaw" else alaw(pcm))


def rtp_header(pt: int, seq: int, ts: int, ssrc: int, marker: bool = False) -> bytes:
    """RTP fixed header: V=2, no padding, extension or CSRCs."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def ntp(ts_us: int) -> tuple[int, int]:
    """64-bit NTP timestamp (seconds, fraction) of an epoch time in microseconds."""
    sec, usec = divmod(ts_us, 1_000_000)
    return sec + NTP_UNIX_OFFSET, (usec << 32) // 1_000_000


def rtcp_sr(ssrc: int, ts_us: int, rtp_ts: int, packets: int, octets: int, peer_ssrc: int | None) -> bytes:
    """Sender report, with one reception report block about the peer when it is known."""
    ntp_sec, ntp_frac = ntp(ts_us)
    body = struct.pack("!IIIIII", ssrc, ntp_sec, ntp_frac, rtp_ts & 0xFFFFFFFF, packets, octets)
    count = 0
    if peer_ssrc is not None:
        count = 1
        # fraction lost 0, cumulative lost 0, highest seq, jitter, LSR, DLSR
        body += struct.pack("!IIIIII", peer_ssrc, 0, 0x00010000 | (packets & 0xFFFF), 12, 0, 0)
    return struct.pack("!BBH", 0x80 | count, RTCP_SR, (4 + len(body)) // 4 - 1) + body


def rtcp_sdes(ssrc: int, cname: str) -> bytes:
    """SDES with one chunk (CNAME), END and padding to a 32-bit boundary."""
    text = cname.encode()
    chunk = struct.pack("!IBB", ssrc, 1, len(text)) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, RTCP_SDES, (4 + len(chunk)) // 4 - 1) + chunk


def srtcp(compound: bytes, index: int, rng: random.Random) -> bytes:
    """SRTCP as RFC 3711 lays it out: 8 bytes clear, the rest encrypted, E-flag|31-bit index, 10-byte tag."""
    encrypted = rng.randbytes(len(compound) - 8)
    return compound[:8] + encrypted + struct.pack("!I", 0x80000000 | index) + rng.randbytes(SRTP_TAG_LEN)
