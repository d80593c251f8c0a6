"""Damaged captures: every damaged field is counted and skipped, never a traceback, never a phantom packet.

The damaged inputs are built here from the bundled example capture and the real shared captures: zeros at
record boundaries, impossible timestamps and resolutions, oversized lengths, unsupported link types.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pytest

from sensor.errors import SourceError
from sensor.sources.pcap import CaptureReader
from tests.conftest import ROOT, capture

EXAMPLE = ROOT / "examples" / "lync-sample.pcap"


@dataclass
class Read:
    """What the reader delivered for one file."""

    packets: int
    ts_ns: list[int]
    wirelen: list[int]
    damaged: list[str]


def read(path: Path, **kw: int) -> Read:
    reader = CaptureReader(path, **kw)
    ts: list[int] = []
    wl: list[int] = []
    for batch in reader:
        ts.extend(batch.ts_ns.tolist())
        wl.extend(batch.wirelen.tolist())
    assert reader.stats.packets == len(ts)
    return Read(len(ts), ts, wl, list(reader.stats.damaged))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor.cli", *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------- building inputs
@dataclass
class Record:
    sec: int
    frac: int
    incl: int
    orig: int
    data: bytes
    offset: int  # of the record header in the file


def pcap_records(data: bytes) -> list[Record]:
    """The records of a little-endian classic pcap file."""
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from("<IIII", data, pos)
        out.append(Record(sec, frac, incl, orig, data[pos + 16 : pos + 16 + incl], pos))
        pos += 16 + incl
    return out


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def shb() -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype: int = 1, tsresol: int | None = None) -> bytes:
    opts = b"" if tsresol is None else struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    return _block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)


def epb(iface: int, ticks: int, data: bytes, orig: int | None = None) -> bytes:
    ticks &= (1 << 64) - 1
    hdr = struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data) if orig is None else orig)
    return _block(6, hdr + data)


def sip_pcap() -> bytes:
    return capture("ndpi__sip.pcap").read_bytes()


def as_pcapng(records: list[Record], *, tsresol: int | None, ticks_per_s: int, linktype: int = 1) -> bytes:
    """The records (microsecond timestamps) as pcapng with one interface of the given if_tsresol byte."""
    out = [shb(), idb(linktype, tsresol)]
    for r in records:
        out.append(epb(0, r.sec * ticks_per_s + r.frac * ticks_per_s // 1_000_000, r.data))
    return b"".join(out)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------- zero bytes
def test_zeros_inside_the_example_capture_lose_almost_nothing(tmp_path: Path) -> None:
    data = EXAMPLE.read_bytes()
    at = int(len(data) * 0.3)
    clean = read(EXAMPLE)
    assert clean.packets == 27_340
    got = read(write(tmp_path, "zeros.pcap", data[:at] + b"\0" * 5000 + data[at:]))
    # the record the zeros land in keeps its header; at most the one record cut by them is lost
    assert clean.packets - 1 <= got.packets <= clean.packets
    assert len(got.damaged) == 1 and "skipped" in got.damaged[0]
    assert min(got.ts_ns) == min(clean.ts_ns)  # no phantom packet at time 0


@pytest.mark.parametrize("block", [1 << 12, 1 << 20])
def test_zeros_at_a_record_boundary_keep_every_packet(tmp_path: Path, block: int) -> None:
    data = sip_pcap()
    recs = pcap_records(data)
    assert len(recs) == 112
    at = recs[40].offset
    got = read(write(tmp_path, "zeros.pcap", data[:at] + b"\0" * 24 + data[at:]), block_bytes=block)
    assert got.packets == 112
    assert got.ts_ns == read(capture("ndpi__sip.pcap")).ts_ns
    assert got.damaged == [f"corrupt data at byte {at}: skipped 24 bytes to the next valid record"]


def test_zeros_appended_add_no_packet_and_warn(tmp_path: Path) -> None:
    got = read(write(tmp_path, "tail.pcap", sip_pcap() + b"\0" * 64))
    assert got.packets == 112
    assert len(got.damaged) == 1 and "skipped 64 bytes" in got.damaged[0]


def test_zeros_in_pcapng_at_any_alignment_keep_the_packets_after_them(tmp_path: Path) -> None:
    data = capture("ndpi__stun_dtls_rtp.pcapng").read_bytes()
    blocks = _pcapng_blocks(data)
    clean = read(capture("ndpi__stun_dtls_rtp.pcapng"))
    at = blocks[len(blocks) // 2]
    for n in (24, 4998):  # a multiple of 4 and not: the blocks after the zeros are found either way
        got = read(write(tmp_path, f"z{n}.pcapng", data[:at] + b"\0" * n + data[at:]))
        assert got.packets == clean.packets, n
        assert got.ts_ns == clean.ts_ns
        assert len(got.damaged) == 1


def _pcapng_blocks(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 12 <= len(data):
        out.append(pos)
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    return out


# --------------------------------------------------------------------------------------------------- timestamps
def test_negative_pcapng_timestamp_is_counted_and_skipped(tmp_path: Path) -> None:
    data = bytearray(capture("ndpi__stun_dtls_rtp.pcapng").read_bytes())
    epbs = [p for p in _pcapng_blocks(bytes(data)) if struct.unpack_from("<I", data, p)[0] == 6]
    struct.pack_into("<I", data, epbs[10] + 12, 0xFFFFFFFF)  # timestamp high word: negative as int64
    struct.pack_into("<I", data, epbs[20] + 12, 0x80000000)
    clean = read(capture("ndpi__stun_dtls_rtp.pcapng"))
    got = read(write(tmp_path, "neg.pcapng", bytes(data)))
    assert got.packets == clean.packets - 2
    assert min(got.ts_ns) >= min(clean.ts_ns) and max(got.ts_ns) <= max(clean.ts_ns)
    assert any("2 packets" in d and "timestamp" in d for d in got.damaged), got.damaged


@pytest.mark.parametrize("tsresol", [0x40, 73, 0x7F, 0xBF, 0xFF])
def test_unusable_if_tsresol_is_counted_and_skipped(tmp_path: Path, tsresol: int) -> None:
    """A resolution finer than int64 nanoseconds can hold (10^-19 and below, 2^-63 and below) is damage: the
    option is skipped and the interface keeps the default resolution (microseconds)."""
    recs = pcap_records(sip_pcap())
    got = read(write(tmp_path, "res.pcapng", as_pcapng(recs, tsresol=tsresol, ticks_per_s=1_000_000)))
    assert got.packets == 112
    assert got.ts_ns == read(capture("ndpi__sip.pcap")).ts_ns
    assert any("if_tsresol" in d for d in got.damaged), got.damaged


@pytest.mark.parametrize(
    ("tsresol", "ticks_per_s"), [(6, 10**6), (9, 10**9), (0, 1), (0x80, 1), (0x8A, 1024), (0x94, 1 << 20)]
)
def test_valid_if_tsresol_gives_the_right_times(tmp_path: Path, tsresol: int, ticks_per_s: int) -> None:
    recs = pcap_records(sip_pcap())
    got = read(write(tmp_path, "res.pcapng", as_pcapng(recs, tsresol=tsresol, ticks_per_s=ticks_per_s)))
    assert got.packets == 112 and got.damaged == []
    tick_ns = 1e9 / ticks_per_s
    for r, t in zip(recs, got.ts_ns, strict=True):
        assert abs(t - (r.sec * 10**9 + r.frac * 1000)) < tick_ns + 1


def test_timestamp_overflowing_the_resolution_is_counted_and_skipped(tmp_path: Path) -> None:
    """Microsecond ticks on an interface declared in seconds (2^0): ticks x 10^9 does not fit int64 ns."""
    recs = pcap_records(sip_pcap())
    blocks = [shb(), idb(1, 6), idb(1, 0x80)]
    for i, r in enumerate(recs):
        blocks.append(epb(0 if i < 50 else 1, r.sec * 10**6 + r.frac, r.data))
    got = read(write(tmp_path, "overflow.pcapng", b"".join(blocks)))
    assert got.packets == 50
    assert got.ts_ns == read(capture("ndpi__sip.pcap")).ts_ns[:50]
    assert any("62 packets" in d and "timestamp" in d for d in got.damaged), got.damaged


def test_timestamps_far_outside_the_capture_are_dropped_with_a_count(tmp_path: Path) -> None:
    data = bytearray(sip_pcap())
    recs = pcap_records(bytes(data))
    struct.pack_into("<I", data, recs[0].offset, 0)  # 1970, and the very first record
    struct.pack_into("<I", data, recs[30].offset, 0)  # 1970
    struct.pack_into("<I", data, recs[60].offset, 0xFFFFFFFF)  # 2106
    struct.pack_into("<I", data, recs[111].offset, 0x7FFFFFFF)  # 2038, and the very last record
    clean = read(capture("ndpi__sip.pcap"))
    got = read(write(tmp_path, "far.pcap", bytes(data)))
    assert got.packets == 108
    assert got.ts_ns == [t for i, t in enumerate(clean.ts_ns) if i not in (0, 30, 60, 111)]
    assert any("4 packets" in d and "time range" in d for d in got.damaged), got.damaged


def test_pcapng_timestamps_of_1677_and_2258_are_dropped(tmp_path: Path) -> None:
    recs = pcap_records(sip_pcap())
    blocks = [shb(), idb(1, 9)]
    for i, r in enumerate(recs):
        ns = r.sec * 10**9 + r.frac * 1000
        if i == 20:
            ns = 9_000_000_000 * 10**9  # year 2255
        elif i == 21:
            ns = -9_000_000_000 * 10**9  # year 1684: negative as int64, an enormous u64 tick count
        blocks.append(epb(0, ns, r.data))
    got = read(write(tmp_path, "far.pcapng", b"".join(blocks)))
    assert got.packets == 110
    first = datetime.fromtimestamp(min(got.ts_ns) / 1e9, UTC)
    last = datetime.fromtimestamp(max(got.ts_ns) / 1e9, UTC)
    assert first.year == last.year == 2005  # ndpi's sip.pcap is from 2005


def test_a_real_clock_step_is_not_damage(tmp_path: Path) -> None:
    """A jump the following packets confirm is the capture's own time, not damage."""
    data = bytearray(sip_pcap())
    recs = pcap_records(bytes(data))
    for r in recs[56:]:
        struct.pack_into("<I", data, r.offset, r.sec + 30 * 86400)
    got = read(write(tmp_path, "step.pcap", bytes(data)))
    assert got.packets == 112 and got.damaged == []


# ------------------------------------------------------------------------------------------------------ lengths
def test_orig_len_beyond_int32_is_counted_and_skipped(tmp_path: Path) -> None:
    data = bytearray(sip_pcap())
    recs = pcap_records(bytes(data))
    struct.pack_into("<I", data, recs[5].offset + 12, 0x80000000)
    struct.pack_into("<I", data, recs[6].offset + 12, 0xFFFFFFFF)
    got = read(write(tmp_path, "orig.pcap", bytes(data)))
    assert got.packets == 112
    assert got.wirelen[5] == recs[5].incl and got.wirelen[6] == recs[6].incl
    assert min(got.wirelen) > 0
    assert any("2 packets" in d and "original length" in d for d in got.damaged), got.damaged


def test_orig_len_beyond_int32_in_pcapng(tmp_path: Path) -> None:
    recs = pcap_records(sip_pcap())
    blocks = [shb(), idb(1, 6)]
    for i, r in enumerate(recs):
        blocks.append(epb(0, r.sec * 10**6 + r.frac, r.data, orig=0xFFFFFFF0 if i == 3 else None))
    got = read(write(tmp_path, "orig.pcapng", b"".join(blocks)))
    assert got.packets == 112 and got.wirelen[3] == recs[3].incl
    assert any("1 packet " in d and "original length" in d for d in got.damaged), got.damaged


# --------------------------------------------------------------------------------------------------- link types
UNSUPPORTED = 147  # LINKTYPE_USER0


def test_unsupported_link_type_fails_the_same_in_pcap_and_pcapng(tmp_path: Path) -> None:
    data = bytearray(sip_pcap())
    struct.pack_into("<I", data, 20, UNSUPPORTED)
    classic = write(tmp_path, "user0.pcap", bytes(data))
    ng = write(
        tmp_path, "user0.pcapng", as_pcapng(pcap_records(sip_pcap()), tsresol=6, ticks_per_s=10**6, linktype=147)
    )
    for path in (classic, ng):
        with pytest.raises(SourceError, match="unsupported link type 147"):
            CaptureReader(path)
        r = run("analyze", str(path), "--lake", str(tmp_path / "lake"), "--no-progress")
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "unsupported link type 147" in r.stderr


def test_pcapng_with_one_unsupported_interface_warns_and_counts(tmp_path: Path) -> None:
    recs = pcap_records(sip_pcap())
    blocks = [shb(), idb(1, 6), idb(UNSUPPORTED, 6)]
    for i, r in enumerate(recs):
        blocks.append(epb(i % 2, r.sec * 10**6 + r.frac, r.data))
    got = read(write(tmp_path, "mixed.pcapng", b"".join(blocks)))
    assert got.packets == 56
    assert any("56 packets" in d and "unsupported link type 147" in d for d in got.damaged), got.damaged


# ------------------------------------------------------------------------------------------------ end to end
def test_damaged_capture_end_to_end_exits_0_with_warnings_and_clean_partitions(tmp_path: Path) -> None:
    data = bytearray(sip_pcap())
    recs = pcap_records(bytes(data))
    struct.pack_into("<I", data, recs[30].offset, 0)  # 1970
    struct.pack_into("<I", data, recs[60].offset, 0xFFFFFFFF)  # 2106
    struct.pack_into("<I", data, recs[70].offset + 12, 0x80000000)  # orig_len beyond int32
    path = write(tmp_path, "damaged.pcap", bytes(data) + b"\0" * 64)
    lake = tmp_path / "lake"
    r = run("analyze", str(path), "--lake", str(lake), "--no-progress", "--no-rules")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, r.stderr  # the two far timestamps, the length, the zeros at the end
    dates = {p.name for p in (lake / "flows").glob("date=*")}
    clean = {f"date={datetime.fromtimestamp(t / 1e9, UTC):%Y-%m-%d}" for t in read(capture("ndpi__sip.pcap")).ts_ns}
    assert dates and dates <= clean, dates  # no 1970 or 2106 partition


def test_reader_arrays_hold_no_impossible_values(tmp_path: Path) -> None:
    """Whatever the damage, what the reader hands on fits the columns it fills."""
    data = bytearray(EXAMPLE.read_bytes())
    recs = pcap_records(bytes(data[: 1 << 20]))
    rng = np.random.default_rng(12)
    for i in rng.choice(len(recs) - 1, 200, replace=False).tolist():
        field = int(rng.integers(0, 4))
        struct.pack_into("<I", data, recs[i].offset + 4 * field, int(rng.integers(0, 1 << 32)))
    reader = CaptureReader(write(tmp_path, "fuzz.pcap", bytes(data)))
    n = 0
    for b in reader:
        n += len(b)
        assert (b.ts_ns >= 0).all() and (b.caplen >= 0).all() and (b.wirelen >= b.caplen).all()
    assert 27_340 - 400 < n <= 27_340
    assert reader.stats.damaged


@pytest.mark.parametrize("dissector", ["native", pytest.param("wireshark", marks=pytest.mark.tshark)])
def test_orig_len_beyond_int32_on_a_fact_packet_end_to_end(tmp_path: Path, dissector: str) -> None:
    """The SIP INVITE's orig_len set to 2^31: once a struct.error in the fact stream to Wireshark, and exit 1."""
    data = bytearray(capture("heplify__sip_ipv4_tcp.pcap").read_bytes())
    invite = next(r for r in pcap_records(bytes(data)) if r.data.find(b"INVITE sip:") >= 0)
    struct.pack_into("<I", data, invite.offset + 12, 0x80000000)
    path = write(tmp_path, "invite.pcap", bytes(data))
    lake = tmp_path / "lake"
    r = run(
        "analyze",
        str(path),
        "--lake",
        str(lake),
        "--no-progress",
        "--no-rules",
        "--set",
        f"sensor.dissector={dissector!r}".replace("'", '"'),
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"warning: {path}: 1 packet with an impossible original length"), r.stderr
    assert r.stderr.count("\n") == 1
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT sum(orig_pkts + resp_pkts), count(*) FILTER (WHERE app = 'sip') "
        f"FROM read_parquet('{lake}/flows/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert rows == [(84, 1)]


def test_damaged_packets_are_counted_by_kind_for_the_metrics(tmp_path: Path) -> None:
    """The reader's per-kind damage counts reach lync_sensor_decode_errors_total{kind} (pipeline, live)."""
    from prometheus_client import CollectorRegistry

    from sensor.analyze import analyze_to_lake
    from sensor.metrics import SensorMetrics
    from sensor.sources.pcap import CaptureReader
    from tests.conftest import default_config

    data = bytearray(sip_pcap())
    recs = pcap_records(bytes(data))
    for k in (30, 60):
        struct.pack_into("<I", data, recs[k].offset, 0)  # 1970 in the middle of 2019
    path = write(tmp_path, "far.pcap", bytes(data))
    reader = CaptureReader(path)
    for _ in reader:
        pass
    assert reader.stats.damaged_packets == {"far_timestamp": 2}
    metrics = SensorMetrics(CollectorRegistry())
    cfg = default_config()
    analyze_to_lake(
        dataclasses.replace(cfg, sensor=dataclasses.replace(cfg.sensor, lake=str(tmp_path / "lake"))),
        [path],
        metrics=metrics,
        rules=False,
    )
    values = [
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "lync_sensor_decode_errors_total" and s.labels.get("kind") == "far_timestamp"
    ]
    assert values == [2]
