"""`lync-sensor check`: evaluate the rules over a lake window (or an analysis' flows) and store findings."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from sensor.config import Config
from sensor.errors import ConfigError
from sensor.lake import Written
from sensor.lakes import Lake, as_lake
from sensor.rules import context
from sensor.rules.engine import Evaluation, evaluate
from sensor.rules.loader import RuleProblem, default_rules_dir, load_rules
from sensor.rules.loader import lint as lint_rules
from sensor.schema import FLOW_SCHEMA
from sensor.site import Site

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass
class CheckReport:
    """One evaluation: the findings, what was new to the lake, and the files written."""

    evaluation: Evaluation
    fresh: pa.Table
    written: list[Written]
    records: int
    window: context.Window


def rules_dir(cfg: Config) -> Path:
    """The rules directory: sensor.rules if set, else the rules shipped with the package."""
    return Path(cfg.sensor.rules) if cfg.sensor.rules else default_rules_dir()


def parse_since(text: str, now: datetime) -> context.Window:
    """'15m', '2h', '1d' -> the window ending now."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"--since {text!r}: use a number and a unit s, m, h, d or w (e.g. 15m)", key="--since")
    return context.Window(now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}), now)


def parse_time(text: str, flag: str) -> datetime:
    """An ISO 8601 time for flag; a time without a zone is UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: not an ISO 8601 time (e.g. 2026-11-26T10:00:00Z)", key=flag) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_window(since: str | None, start: str | None, end: str | None, now: datetime) -> context.Window:
    """`check`'s window: --since DURATION (ending now), else --from/--to (--to defaults to now), else all time."""
    if since:
        return parse_since(since, now)
    if start or end:
        return context.Window(parse_time(start, "--from") if start else None, parse_time(end, "--to") if end else now)
    return context.Window()


class Checker:
    """Loads the rules once and evaluates them in a DuckDB context holding the site's tables."""

    def __init__(
        self,
        cfg: Config,
        *,
        site: Site | None = None,
        rules: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.site = site or Site.build(cfg)
        self.topology = self.site.topology
        self.catalogue = self.site.catalogue
        self.rules_path = rules or rules_dir(cfg)
        self.rules, self.load_problems = load_rules(self.rules_path)

    @property
    def broken_files(self) -> int:
        """Rule files that could not be loaded (lync_sensor_rule_file_errors)."""
        return len({p.path for p in self.load_problems})

    def _context(self, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
        con = con or context.connect()
        context.register_site(con, self.cfg, self.topology, self.catalogue)
        return con

    def lint(self) -> list[RuleProblem]:
        con = self._context()
        context.register_flows_from_table(con, FLOW_SCHEMA.empty_table())
        context.confine(con, [])
        try:
            return self.load_problems + lint_rules(con, self.rules)
        finally:
            con.close()

    def _run(
        self,
        con: duckdb.DuckDBPyConnection,
        lake: Lake | Path,
        now: datetime,
        records: int,
        window: context.Window,
        store: bool,
        attribute: bool = False,
    ) -> CheckReport:
        ev = evaluate(con, self.rules, sensor_id=self.cfg.sensor.id, evaluated_at=now)
        ev.problems = self.load_problems + ev.problems
        if attribute and ev.findings.num_rows:
            ev.findings = _attribute(con, ev.findings)
        con.close()
        if store:
            fresh, written = as_lake(lake).write_findings(self.cfg.sensor.id, ev.findings)
        else:
            fresh, written = ev.findings, []
        return CheckReport(ev, fresh, written, records, window)

    def check_table(self, flows: pa.Table, lake: Lake | Path, *, now: datetime, store: bool = True) -> CheckReport:
        con = self._context()
        context.register_flows_from_table(con, flows)
        context.confine(con, [])
        return self._run(con, lake, now, flows.num_rows, context.Window(), store)

    def check_lake(
        self,
        lake: Lake | Path,
        window: context.Window,
        *,
        now: datetime,
        store: bool = True,
        sensors: Sequence[str] = (),
        threads: int | None = None,
    ) -> CheckReport:
        """Rules over the lake's records in the window (of the given sensors, if any: a fleet lake holds many);
        each finding names the sensor whose records show it. `threads` caps DuckDB's threads (the live sensor's
        background evaluation leaves a core to the capture)."""
        lk = as_lake(lake)
        con = self._context(lk.context_connection())
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        allowed = lk.register_flows(con, window, sensors)
        row = con.execute("SELECT sum(records) FROM flows").fetchone()
        records = int(row[0] or 0) if row else 0
        context.confine(con, [Path(d) for d in allowed])
        return self._run(con, lk, now, records, window, store, attribute=True)


def _attribute(con: duckdb.DuckDBPyConnection, findings: pa.Table) -> pa.Table:
    """Findings carry the id of the sensor that recorded the flow (a central checker is not that sensor)."""
    con.register("lync_findings", findings.append_column("lync_i", pa.array(range(findings.num_rows))))
    try:
        return (
            con.sql(
                "SELECT f.* EXCLUDE (lync_i) REPLACE (coalesce(fl.sensor_id, f.sensor_id) AS sensor_id) "
                "FROM lync_findings f LEFT JOIN (SELECT uid, any_value(sensor_id) AS sensor_id FROM flows "
                "GROUP BY uid) fl USING (uid) ORDER BY f.lync_i"
            )
            .to_arrow_table()
            .cast(findings.schema)
        )
    finally:
        con.unregister("lync_findings")


def problem_lines(report: CheckReport) -> list[str]:
    """For stderr: one line per rule problem, then what the problems leave out of the result."""
    ev = report.evaluation
    if not ev.problems:
        return []
    lines = [f"rule error: {p}" for p in ev.problems]
    broken = len({p.path for p in ev.problems} - {r.rule.path for r in ev.failed})
    lines.append(
        f"incomplete result: {len(ev.failed)} of {len(ev.results)} rules failed and {broken} rule file(s) could "
        "not be loaded; their findings are missing"
    )
    return lines


def render(report: CheckReport, *, problems: bool = True) -> str:
    """The per-rule table (and, unless problems=False, the rule problems: the CLI sends those to stderr)."""
    ev = report.evaluation
    lines = [
        f"Rules evaluated over {report.records:,} flow records {report.window.describe()}: "
        f"{ev.findings.num_rows:,} findings ({report.fresh.num_rows:,} new)."
    ]
    lines.append(f"  {'rule':<5} {'violation':>9} {'warning':>8} {'info':>6}  title")
    for r in ev.results:
        if not r.ok:
            lines.append(f"  {r.rule.id:<5} {'error':>9} {'':>8} {'':>6}  {r.rule.title}")
            continue
        b = r.by_severity
        lines.append(
            f"  {r.rule.id:<5} {b.get('violation', 0):>9} {b.get('warning', 0):>8} {b.get('info', 0):>6}"
            f"  {r.rule.title}"
        )
    if problems:
        lines += problem_lines(report)
    return "\n".join(lines)
