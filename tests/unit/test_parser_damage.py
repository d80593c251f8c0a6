"""Damaged bytes never stop the native fact parsers: real payloads from the shared captures, bytes flipped,
cut and shifted, through every entry point a flow's bytes take (datagram, message, stream prefix)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sensor.facts.flowfacts import FlowFacts
from sensor.sources.pcap import CaptureReader
from tests.conftest import CAPTURES


def _payloads() -> list[bytes]:
    """Every packet of the shared captures from byte 42 on (an Ethernet + IPv4 + UDP header's length): UDP
    payloads as they are, TCP payloads with a little header in front, which is damage too."""
    out = []
    paths = sorted(CAPTURES.glob("*.pcap*"))
    if not paths:
        pytest.skip(f"no shared captures at {CAPTURES}")
    for path in paths:
        for b in CaptureReader(path):
            buf = np.asarray(b.buf)
            for off, cl in zip(b.offset.tolist(), b.caplen.tolist(), strict=True):
                if cl > 60:
                    out.append(bytes(buf[off + 42 : off + cl]))
    return out


def _feed(data: bytes) -> None:
    ff = FlowFacts()
    ff.observe_datagram(data, 0, 1)
    ff.observe_message(data, 0, 1)
    ff.observe_streams(
        data,
        data[::-1],
        client_from_start=True,
        server_from_start=False,
        client_complete=True,
        server_complete=False,
        ts_ns=1,
    )
    for facts in ff.present():
        facts.columns()


def test_damaged_payloads_never_raise() -> None:
    rng = random.Random(3)
    payloads = _payloads()
    for _ in range(4000):
        data = bytearray(rng.choice(payloads))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = bytes(data[: rng.randrange(len(data) + 1)])
        for piece in (bytes(data), cut, cut[rng.randrange(max(1, len(cut))) :]):
            _feed(piece)


@pytest.mark.parametrize(
    "data",
    [
        # numbers in Unicode digits: str.isdigit() says yes, int() says no
        b"INVITE sip:a@b SIP/2.0\r\nCSeq: \xb21 INVITE\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\nContent-Length: \xb2\r\n\r\n",
        b"SIP/2.0 2\xb20 OK\r\nCSeq: 1 INVITE\r\n\r\n",
        b"HTTP/1.1 2\xb20 OK\r\nContent-Length: \xb2\r\n\r\n",
        # a DTLS handshake record whose length runs past the end of the datagram
        bytes.fromhex("16fefd00000000000000000040"),
    ],
)
def test_the_damage_the_fuzzing_found(data: bytes) -> None:
    _feed(data)
