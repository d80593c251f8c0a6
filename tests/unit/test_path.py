"""The packet path in live mode: a flow's facts are on its first interval record, not a later one."""

from __future__ import annotations

import struct

import numpy as np

from sensor.analyze import Analyzer
from sensor.sources.pcap import Batch
from sensor.synth.tls_capture import tls_session
from tests.conftest import default_config, flows_by_uid

CLIENT, SERVER = bytes([10, 7, 0, 10]), bytes([10, 7, 0, 20])
T0 = 1_700_000_000 * 10**9


def ipv4(src: bytes, dst: bytes, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, 6, 0, src, dst) + payload


def tcp(sport: int, dport: int, seq: int, data: bytes = b"", flags: int = 0x18) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0) + data


def batch(packets: list[bytes], t0: int) -> Batch:
    buf = np.frombuffer(b"".join(packets), np.uint8).copy()
    lens = np.array([len(p) for p in packets], np.int32)
    offs = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
    ts = np.array([t0 + i * 1_000_000 for i in range(len(packets))], np.int64)
    return Batch(buf, offs, lens, lens.copy(), ts, np.full(len(packets), 101, np.int16))


def conversation() -> tuple[list[bytes], list[bytes]]:
    """A real OpenSSL TLS 1.2 mutual-TLS handshake on 5061 as packets, then application data both ways."""
    session = tls_session(True, [(b"NOTIFY sip:pool SIP/2.0\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n")])
    seq = {True: 1000, False: 900_000}
    handshake = [ipv4(CLIENT, SERVER, tcp(50123, 5061, seq[True], flags=0x02))]
    handshake.append(ipv4(SERVER, CLIENT, tcp(5061, 50123, seq[False], flags=0x12)))
    seq = {True: 1001, False: 900_001}
    out: list[bytes] = []
    for k, (from_client, data) in enumerate(session.flights):
        src, dst = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        ports = (50123, 5061) if from_client else (5061, 50123)
        for off in range(0, len(data), 1400):
            chunk = data[off : off + 1400]
            pkt = ipv4(src, dst, tcp(*ports, seq[from_client], chunk))
            (handshake if k < session.handshake else out).append(pkt)
            seq[from_client] += len(chunk)
    return handshake, out


def test_a_flow_still_open_has_its_tls_facts_on_its_first_interval_record() -> None:
    analyzer = Analyzer(default_config(), source_name="live")
    path = analyzer.packet_path()
    handshake, data = conversation()
    path.feed(batch(handshake + data, T0))  # no FIN: the flow stays open, its stream prefix is not settled
    table = path.table
    assert table.streams_pending().size == 1
    table.flush_closed(T0 + 120 * 10**9)  # the interval ended: its record is due
    records = path.records(analyzer.records.build, 0, table.nrecords)  # what `run` does at every export
    (flow,) = flows_by_uid(records)
    assert flow["interval_seq"] == 0
    assert (flow["tls_version"], flow["tls_cipher"], flow["tls_cert_requested"], flow["tls_client_cert"]) == (
        "TLSv12",
        "0xC030",
        True,
        True,
    )
    assert flow["orig_first_byte"] == 0x16
    assert table.streams_pending().size == 1  # parsed for the export, kept until it settles


def test_without_parsing_before_the_export_the_first_record_would_lack_the_facts() -> None:
    """The control: the same flow exported without facts_for_export has no TLS facts yet."""
    analyzer = Analyzer(default_config(), source_name="live")
    path = analyzer.packet_path()
    handshake, data = conversation()
    path.feed(batch(handshake + data, T0))
    path.table.flush_closed(T0 + 120 * 10**9)
    records = analyzer.records.build(path.table, path.facts, 0, path.table.nrecords)
    (flow,) = flows_by_uid(records)
    assert flow["tls_version"] is None


def test_a_long_offline_run_exports_finished_flows_in_chunks_with_the_same_records(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Memory follows the open flows: past CHUNK_FLOWS, flows closed or idle are exported and dropped during the
    run; the records are the same as when everything stays in memory (SIP of dropped flows still binds media)."""
    from pathlib import Path

    from sensor import analyze

    example = Path(__file__).resolve().parents[2] / "examples" / "lync-sample.pcap"
    whole = analyze.Analyzer(default_config()).run([example]).table
    chunked_calls: list[int] = []
    original = analyze.Analyzer._export_ended

    def counting(self, path, chunks, exported):  # type: ignore[no-untyped-def]
        out = original(self, path, chunks, exported)
        chunked_calls.append(len(chunks))
        return out

    monkeypatch.setattr(analyze, "CHUNK_FLOWS", 2)
    monkeypatch.setattr(analyze.Analyzer, "_export_ended", counting)
    chunked = analyze.Analyzer(default_config()).run([example]).table
    assert chunked_calls and max(chunked_calls) >= 1, "the run never exported a chunk"
    key = [("uid", "ascending"), ("ts", "ascending")]
    assert chunked.sort_by(key).to_pylist() == whole.sort_by(key).to_pylist()
