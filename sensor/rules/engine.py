"""Evaluates rules over the context's flows: one findings table, a result per rule, no duplicate findings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sensor.lake import LakeWriter, Written, sql_glob
from sensor.lake import files as lake_files
from sensor.rules.loader import SEVERITIES, Rule, RuleProblem, output_columns, problem_from_duckdb
from sensor.schema import FINDING_SCHEMA


@dataclass
class RuleResult:
    """How one rule's evaluation went."""

    rule: Rule
    seconds: float = 0.0
    findings: int = 0
    by_severity: dict[str, int] = field(default_factory=dict)
    problem: RuleProblem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class Evaluation:
    """All findings of one evaluation and the per-rule results."""

    findings: pa.Table
    results: list[RuleResult]
    problems: list[RuleProblem]

    @property
    def violations(self) -> int:
        return sum(r.by_severity.get("violation", 0) for r in self.results)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if not r.ok]


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _finding_sql(rule: Rule, has_severity: bool, sensor_id: str, evaluated_at: datetime) -> str:
    sev = "r.severity" if has_severity else _quote(rule.severity)
    # one finding per flow and severity; several result rows for it (e.g. several paths) join their evidence
    return f"""
        WITH r AS ({rule.sql}),
        g AS (SELECT r.uid, {sev} AS severity,
                     string_agg(DISTINCT CAST(r.evidence AS VARCHAR), '; ') AS evidence
              FROM r GROUP BY ALL)
        SELECT md5({_quote(rule.id)} || '|' || g.uid || '|' || g.severity) AS finding_id,
               f.ts, f.ts_end, {_quote(rule.id)} AS rule_id, g.severity, {_quote(rule.title)} AS title,
               g.uid, f.orig_h, f.orig_p, f.resp_h, f.resp_p, f.proto, f.service, f.orig_role, f.resp_role,
               f.app, g.evidence, {_quote(rule.requirement)} AS requirement,
               {_quote(rule.source)} AS source, {_quote(sensor_id)} AS sensor_id,
               TIMESTAMPTZ {_quote(evaluated_at.isoformat())} AS evaluated_at
        FROM g JOIN flows f USING (uid)
        ORDER BY f.ts, g.uid
    """


def evaluate(
    con: duckdb.DuckDBPyConnection, rules: list[Rule], *, sensor_id: str, evaluated_at: datetime
) -> Evaluation:
    """Run every rule; a rule that fails (SQL error, bad severity value) is reported and the rest go on."""
    parts: list[pa.Table] = []
    results: list[RuleResult] = []
    for rule in rules:
        res = RuleResult(rule)
        started = time.perf_counter()
        try:
            cols = output_columns(con, rule)
            sql = _finding_sql(rule, "severity" in cols, sensor_id, evaluated_at)
            tbl = con.sql(sql).to_arrow_table().cast(FINDING_SCHEMA)
            bad = set(pc.unique(tbl.column("severity")).to_pylist()) - set(SEVERITIES)
            if bad:
                raise ValueError(f"severity value(s) {sorted(map(str, bad))} not in {', '.join(SEVERITIES)}")
            res.findings = tbl.num_rows
            for sev in SEVERITIES:
                n = int(pc.sum(pc.equal(tbl.column("severity"), sev)).as_py() or 0)
                if n:
                    res.by_severity[sev] = n
            parts.append(tbl)
        except (duckdb.Error, ValueError, pa.ArrowInvalid) as exc:
            res.problem = problem_from_duckdb(rule, exc)
        res.seconds = time.perf_counter() - started
        results.append(res)
    findings = pa.concat_tables(parts) if parts else FINDING_SCHEMA.empty_table()
    problems = [r.problem for r in results if r.problem is not None]
    return Evaluation(findings, results, problems)


def new_findings(lake: Path, findings: pa.Table) -> pa.Table:
    """The findings not already in the lake (re-running a window adds nothing twice)."""
    if findings.num_rows == 0:
        return findings
    if not lake_files(lake, "findings"):
        return findings
    con = duckdb.connect()
    con.register("candidate", findings.select(["finding_id"]))
    glob = sql_glob(lake, "findings")
    seen = con.sql(f"""
        SELECT DISTINCT finding_id FROM read_parquet('{glob}', hive_partitioning = true)
        WHERE finding_id IN (SELECT finding_id FROM candidate)
    """).to_arrow_table()
    con.close()
    if seen.num_rows == 0:
        return findings
    return findings.filter(pc.invert(pc.is_in(findings.column("finding_id"), value_set=seen.column(0))))


def write_findings(lake: Path, sensor_id: str, findings: pa.Table) -> tuple[pa.Table, list[Written]]:
    """Write the findings not already in the lake; returns them and the files written."""
    fresh = new_findings(lake, findings)
    return fresh, LakeWriter(lake, sensor_id).write("findings", fresh)
