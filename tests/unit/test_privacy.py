"""HTTP paths in the lake: the web service's prefix the rules need, never the people in a Lync URL.

Both front ends: the native HTTP parser over a real capture the test writes (a Lync client's plaintext
requests), and Zeek's http.log (the real JSON log, its URIs replaced by Lync meeting, dial-in and personal URLs).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import pytest

from sensor import ingest_zeek
from sensor.analyze import Analyzer
from sensor.config import load_config
from sensor.facts.http import redact_path
from sensor.synth import http as synth_http
from sensor.synth.flow import Packet, TcpFlow
from sensor.synth.packets import LINKTYPE_ETHERNET
from sensor.synth.pcapio import PcapWriter
from tests.conftest import ZEEK_LOGS

T0 = 1_795_687_200_000_000  # 2026-11-26T10:00:00Z in microseconds
FE = "10.0.1.10"

# (request target, Host) -> what the lake stores
CASES: list[tuple[str, str, str]] = [
    ("/meet/alice@contoso.com/ABCDE", "lyncweb.contoso.com", "/meet/<user>/<conference-id>"),
    ("/meet/alice/FGHJ7K2L", "lyncweb.contoso.com", "/meet/<user>/<conference-id>"),
    ("/alice/FGHJ7K2L?sl=1", "meet.contoso.com", "/<user>/<conference-id>?<redacted>"),
    ("http://meet.contoso.com/bob.smith/XY12Z", "meet.contoso.com", "/<user>/<conference-id>"),
    ("/dialin/+1%20425%20555%200100", "dialin.contoso.com", "/dialin/<number>"),
    ("/phoneconferencing/int/tel:+14255550100", "lyncweb.contoso.com", "/phoneconferencing/int/<number>"),
    (
        "/ucwa/oauth/v1/applications/103453/people/sip:alice@contoso.com/presence",
        "lyncweb.contoso.com",
        "/ucwa/oauth/v1/applications/<number>/people/<user>/presence",
    ),
    ("/Meet/Alice%40Contoso.com/ABC", "lyncweb.contoso.com", "/Meet/<user>/<conference-id>"),
    (
        "/collabcontent/3f2504e0-4f89-11d3-9a0c-0305e82c3301/deck.pptx",
        "lyncweb.contoso.com",
        "/collabcontent/<id>/deck.pptx",
    ),
    # what the rules need stays as sent: the prefix and the words after it
    ("/abs/handler/D-0e2a-0e2b.lsabs?sig=abc", "lyncpool.contoso.com", "/abs/handler/D-0e2a-0e2b.lsabs?<redacted>"),
    ("/groupexpansion/service.svc", "lyncpool.contoso.com", "/groupexpansion/service.svc"),
    (
        "/autodiscover/autodiscoverservice.svc/root",
        "lyncdiscover.contoso.com",
        "/autodiscover/autodiscoverservice.svc/root",
    ),
    ("/", "lyncweb.contoso.com", "/"),
]
PERSONAL = ("alice", "Alice", "bob", "ABCDE", "FGHJ7K2L", "XY12Z", "425", "4255550100", "103453", "3f2504e0")


@pytest.mark.parametrize(("target", "host", "stored"), CASES)
def test_path_template(target: str, host: str, stored: str) -> None:
    assert redact_path(target, host=host) == stored


def test_clear_paths_only_when_the_config_says_so() -> None:
    assert redact_path("/meet/alice@contoso.com/ABCDE?x=1", redact_query=False) == "/meet/alice@contoso.com/ABCDE?x=1"


def _capture(path: Path) -> None:
    """One plaintext HTTP connection per case, from Lync clients to the Front End's web services (port 80)."""
    out: list[Packet] = []
    for n, (target, host, _) in enumerate(CASES):
        flow = TcpFlow(out, f"10.0.5.{50 + n}", 53000 + n, FE, 80, f"privacy-{n}")
        start = T0 + n * 1_000_000
        ts = flow.send(flow.open(start) + 50, True, synth_http.request("GET", target, host))
        ts = flow.send(ts + 2_000, False, synth_http.response(200, "OK", "text/html", b"<html></html>"))
        flow.close(flow.ack(ts + 100, True) + 50_000)
    out.sort(key=lambda p: p.ts)
    with path.open("wb") as fh:
        w = PcapWriter(fh, LINKTYPE_ETHERNET)
        for p in out:
            w.write(round(p.ts * 1e6), p.data)


def test_native_http_path_stores_templates(tmp_path: Path) -> None:
    pcap = tmp_path / "lync-web.pcap"
    _capture(pcap)
    cfg = load_config(None, env={}, overrides=[f'sensor.lake="{tmp_path / "lake"}"'])
    table = Analyzer(cfg).run([pcap]).table
    got = {r["orig_p"] - 53000: r for r in table.to_pylist() if r["http_requests"]}
    assert sorted(got) == list(range(len(CASES)))
    for n, (_, _, stored) in enumerate(CASES):
        assert got[n]["http_path"] == stored and got[n]["http_paths"] == [stored]
    text = json.dumps([r["http_paths"] for r in got.values()])
    assert not [p for p in PERSONAL if p in text]


def test_zeek_http_log_path_stores_templates(tmp_path: Path) -> None:
    real = ZEEK_LOGS / "http-json-and-tsv" / "http.log.json"
    if not real.exists():
        pytest.skip(f"shared Zeek logs not present at {ZEEK_LOGS}")
    base = json.loads(next(ln for ln in real.read_text().splitlines() if ln.startswith("{")).replace(
        "XXXXXXXXXX.XXXXXX", "1795687200.0"
    ))  # fmt: skip
    lines = []
    for n, (target, host, _) in enumerate(CASES):
        rec = dict(base, uid=f"CPrivacy{n:010d}", host=host, uri=unquote(target))  # Zeek logs the URI unescaped
        rec["id.orig_p"], rec["id.resp_h"], rec["id.resp_p"] = 53000 + n, FE, 80
        lines.append(json.dumps(rec))
    d = tmp_path / "logs"
    d.mkdir()
    (d / "http.log").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, env={}, overrides=[f'sensor.lake="{tmp_path / "lake"}"'])
    result = ingest_zeek.ZeekIngest(cfg, [d], rules=False).run()
    got = {r["orig_p"] - 53000: r for r in result.table.to_pylist()}
    for n, (_, _, stored) in enumerate(CASES):
        assert got[n]["http_path"] == stored, (n, got[n]["http_path"])
    text = json.dumps([r["http_paths"] for r in got.values()])
    assert not [p for p in PERSONAL if p in text]
