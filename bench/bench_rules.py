"""Benchmark of the rule engine: a day of a busy pool (>= 10 M flow interval records) in a lake, then all
rules over the last hour and over the whole day, with the lake's size on disk.

Usage: python bench/bench_rules.py [--rows 10000000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from sensor.config import load_config
from sensor.lake import LakeWriter
from sensor.rules.check import Checker
from sensor.rules.context import Window
from sensor.schema import FLOW_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
DAY = datetime(2026, 11, 25, tzinfo=UTC)
# (weight, proto, resp_p, app, orig_role, resp_role, tls_version, cipher, media_encrypted, sip_plain)
MIX = [
    (0.50, "udp", 50020, "srtp", "client", "front_end", None, None, True, False),
    (0.12, "udp", 50021, "srtcp", "client", "front_end", None, None, True, False),
    (0.04, "udp", 20000, "rtp", "pstn_gateway", "mediation", None, None, False, False),
    (0.01, "udp", 50030, "rtp", "client", "client", None, None, False, False),
    (0.18, "tcp", 5061, "tls", "client", "front_end", "TLSv12", "0xC030", None, False),
    (0.05, "tcp", 5061, "tls", "front_end", "front_end", "TLSv12", "0xC030", None, False),
    (0.03, "tcp", 443, "tls", "client", "front_end", "TLSv10", "0xC014", None, False),
    (0.01, "tcp", 5068, "sip", "pstn_gateway", "mediation", None, None, None, True),
    (0.02, "tcp", 80, "http", "client", "front_end", None, None, None, False),
    (0.04, "udp", 3478, "stun", "client", "edge_external", None, None, None, False),
]


def hour_table(hour: int, rows: int, rng: np.random.Generator) -> pa.Table:
    weights = np.array([m[0] for m in MIX])
    kind = rng.choice(len(MIX), size=rows, p=weights / weights.sum())
    start = DAY + timedelta(hours=hour)
    minute = rng.integers(0, 60, rows)
    ts = np.array([int((start + timedelta(minutes=0)).timestamp() * 1e6)], dtype=np.int64) + minute * 60_000_000
    # a flow spans several interval records: 8 records share one uid on average
    flow_no = np.arange(rows) // 8
    uid = np.char.add(f"H{hour:02d}-", flow_no.astype(str))
    cols: dict[str, object] = {}
    pick = np.array(MIX, dtype=object)[kind]
    n = rows
    orig_host = rng.integers(1, 250, n)
    cols["ts"] = pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    cols["ts_end"] = pa.array(ts + 59_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    cols["flow_start"] = cols["ts"]
    cols["interval_seq"] = pa.array(np.arange(n) % 8, pa.int32())
    cols["uid"] = pa.array(uid)
    cols["sensor_id"] = pa.array(["sensor-a"] * n)
    cols["source"] = pa.array(["pcap"] * n)
    cols["orig_h"] = pa.array(np.char.add("10.0.5.", orig_host.astype(str)))
    cols["orig_p"] = pa.array(rng.integers(1024, 65535, n), pa.int32())
    cols["resp_h"] = pa.array(np.where(pick[:, 5] == "mediation", "10.0.1.20", "10.0.1.10").astype(str))
    cols["resp_p"] = pa.array(pick[:, 2].astype(np.int32), pa.int32())
    cols["proto"] = pa.array(pick[:, 1].astype(str))
    cols["ip_version"] = pa.array(np.full(n, 4, np.int8))
    cols["orig_role"] = pa.array(pick[:, 4].astype(str))
    cols["resp_role"] = pa.array(pick[:, 5].astype(str))
    cols["app"] = pa.array(pick[:, 3].astype(str))
    cols["duration"] = pa.array(np.full(n, 59.0))
    for c in ("orig_pkts", "resp_pkts"):
        cols[c] = pa.array(rng.integers(1, 3000, n), pa.int64())
    for c in ("orig_bytes", "resp_bytes", "orig_ip_bytes", "resp_ip_bytes"):
        cols[c] = pa.array(rng.integers(100, 500_000, n), pa.int64())
    cols["orig_first_byte"] = pa.array(np.where(pick[:, 3] == "tls", 22, 128).astype(np.int16))
    cols["tls_version"] = pa.array(list(pick[:, 6]), pa.string())
    cols["tls_cipher"] = pa.array(list(pick[:, 7]), pa.string())
    is_tls = pick[:, 3] == "tls"
    cols["tls_cert_requested"] = pa.array(np.where(is_tls, pick[:, 4] == "front_end", None).tolist(), pa.bool_())
    cols["tls_client_cert"] = pa.array(np.where(is_tls & (pick[:, 4] == "front_end"), True, None).tolist(), pa.bool_())
    cols["sip_plain"] = pa.array(pick[:, 9].astype(bool))
    cols["sip_messages"] = pa.array(np.where(pick[:, 9].astype(bool), 7, 0).astype(np.int64))
    cols["media_encrypted"] = pa.array(list(pick[:, 8]), pa.bool_())
    media = np.isin(pick[:, 3], ["rtp", "srtp", "srtcp"])
    cols["media_confidence"] = pa.array(np.where(media, 0.9, np.nan).astype(np.float32), from_pandas=True)
    cols["media_evidence"] = pa.array([["len:codec-frame"] if m else None for m in media], pa.list_(pa.string()))
    http = pick[:, 3] == "http"
    cols["http_requests"] = pa.array(http.astype(np.int64))
    cols["http_paths"] = pa.array([["/abs/handler/x?<redacted>"] if h else None for h in http], pa.list_(pa.string()))
    arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in FLOW_SCHEMA]
    return pa.Table.from_arrays(
        [a.cast(f.type) for a, f in zip(arrays, FLOW_SCHEMA, strict=True)],  # type: ignore[attr-defined]
        schema=FLOW_SCHEMA,
    )


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.parquet"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    lake = args.out / "rules-lake"
    if lake.exists():
        shutil.rmtree(lake)
    rng = np.random.default_rng(7)
    t = time.monotonic()
    writer = LakeWriter(lake, "sensor-a")
    per_hour = args.rows // 24
    for hour in range(24):
        writer.write("flows", hour_table(hour, per_hour, rng))
    build_s = time.monotonic() - t
    cfg = load_config(ROOT / "deploy" / "lync-sensor.example.toml", env={})
    checker = Checker(cfg)
    now = DAY + timedelta(days=1)
    results = []
    for label, window in (("last hour", Window(now - timedelta(hours=1), now)), ("whole day", Window(DAY, now))):
        t = time.monotonic()
        report = checker.check_lake(lake, window, now=now, store=False)
        secs = time.monotonic() - t
        failed = [r.rule.id for r in report.evaluation.failed]
        if failed:
            print(f"rules failed: {failed}", file=sys.stderr)
            return 2
        results.append((label, report.records, report.evaluation.findings.num_rows, secs))
    lines = [
        f"Lake: {per_hour * 24:,} flow records over 24 h, {du(lake) / 1e6:,.0f} MB on disk (zstd Parquet), "
        f"written in {build_s:.0f} s",
        "",
        "| window | flow records | findings | seconds (all 17 rules) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b:,} | {c:,} | {d:.1f} |" for a, b, c, d in results]
    text = "\n".join(lines)
    print(text)
    (args.out / "rules-results.md").write_text(text + "\n")
    shutil.rmtree(lake)
    return 0


if __name__ == "__main__":
    sys.exit(main())
