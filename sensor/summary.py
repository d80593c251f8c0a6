"""What `analyze` prints: its report, and the summary of flows by role pair and app, TLS, plaintext, media."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

if TYPE_CHECKING:  # a type only: analyze does not need this module, and this one runs after it
    from sensor.analyze import RunResult

_FLOWS = """
    SELECT uid, any_value(orig_role) AS orig_role, any_value(resp_role) AS resp_role, any_value(app) AS app,
           any_value(tls_version) AS tls_version, bool_or(sip_plain) AS sip_plain,
           any_value(http_requests) AS http_requests, any_value(media_encrypted) AS media_encrypted,
           sum(orig_pkts + resp_pkts) AS pkts
    FROM flows GROUP BY uid
"""


def summarize(flows: pa.Table) -> dict[str, list[tuple[object, ...]]]:
    """Counts per flow (not per interval record), as rows for printing or tests."""
    con = duckdb.connect()
    con.register("flows", flows)
    con.execute(f"CREATE TEMP VIEW f AS {_FLOWS}")
    q = {
        "role_pairs": "SELECT orig_role, resp_role, coalesce(app, '-') AS app, count(*) AS flows, sum(pkts) "
        "FROM f GROUP BY ALL ORDER BY flows DESC, orig_role, resp_role, app",
        "tls_versions": "SELECT tls_version, count(*) FROM f WHERE tls_version IS NOT NULL "
        "GROUP BY ALL ORDER BY tls_version",
        "plaintext": "SELECT 'plaintext SIP flows', count(*) FROM f WHERE sip_plain "
        "UNION ALL SELECT 'plaintext HTTP flows', count(*) FROM f WHERE http_requests > 0 "
        "UNION ALL SELECT 'unencrypted media flows', count(*) FROM f WHERE media_encrypted = false "
        "UNION ALL SELECT 'encrypted media flows', count(*) FROM f WHERE media_encrypted "
        "UNION ALL SELECT 'media flows, protection unknown', count(*) FROM f "
        "WHERE app IN ('rtp','rtcp') AND media_encrypted IS NULL",
    }
    out = {k: [tuple(r) for r in con.execute(sql).fetchall()] for k, sql in q.items()}
    con.close()
    return out


def render(flows: pa.Table) -> str:
    """The summary of a flow table as text: role pairs and apps, TLS versions, plaintext and media."""
    s = summarize(flows)
    lines = [
        "Flows by role pair and application:",
        f"  {'originator':<16} {'responder':<16} {'app':<8} {'flows':>7} {'packets':>12}",
    ]
    for o, r, a, n, p in s["role_pairs"]:
        lines.append(f"  {o!s:<16} {r!s:<16} {a!s:<8} {n:>7} {int(str(p or 0)):>12,}")
    lines.append("TLS versions negotiated (flows):")
    lines += [f"  {v:<8} {n:>7}" for v, n in s["tls_versions"]] or ["  none"]
    lines.append("Plaintext and media:")
    lines += [f"  {k:<32} {n:>7}" for k, n in s["plaintext"]]
    return "\n".join(lines)


def analysis_json(run: RunResult) -> dict[str, object]:
    """`analyze --json`: packets, flows, files written, the summary, stream events and, with rules, findings."""
    result, report = run.analysis, run.report
    out: dict[str, object] = {
        "packets": result.packets,
        "flows": result.table.num_rows,
        "files": [str(w.path) for w in run.written],
        "summary": summarize(result.table),
        "stream": result.stream,
    }
    if report is not None:
        out["findings"] = {r.rule.id: r.by_severity for r in report.evaluation.results if r.findings}
        out["rule_errors"] = [str(p) for p in report.evaluation.problems]
    return out


def analysis_text(run: RunResult, *, lake: str, dissector: str) -> str:
    """`analyze`'s text report: what was read and how fast, stream events, what was written, then render()."""
    result = run.analysis
    rate = result.packets / result.seconds if result.seconds else 0.0
    lines = [
        f"Analysed {len(result.captures)} capture(s): {result.packets:,} packets in {result.seconds:.1f} s "
        f"({rate:,.0f} packets/s), "
        + (
            f"{result.fact_packets:,} fact packets handed to Wireshark's dissectors."
            if dissector == "wireshark"
            else f"{result.fact_packets:,} streams and datagrams parsed for facts."
        )
    ]
    frag = {k: v for k, v in result.stream.items() if v}
    if frag:
        lines.append("Stream layer: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in frag.items()) + ".")
    lines.append(f"Wrote {result.table.num_rows:,} flow records to {lake}/flows in {len(run.written)} file(s).")
    if run.replaced:
        lines.append(f"Replaced the earlier records of these captures: {run.replaced:,} file(s) removed.")
    lines.append(render(result.table))
    return "\n".join(lines)
