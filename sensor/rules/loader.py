"""Rule files: `queries/<area>/<RULE-ID>_<slug>.sql` with a `-- key: value` header and one SELECT.

Loading collects problems instead of raising (each with its file and line), so one broken rule never
stops the others; lint() also prepares every query against the flow schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

REQUIRED_KEYS = ("id", "title", "severity", "requirement", "source", "description")
SEVERITIES = ("violation", "warning", "info")
HEADER_SEVERITIES = (*SEVERITIES, "per-row")
OUTPUT_COLUMNS = ("uid", "evidence")
_HEADER = re.compile(r"^--\s*([a-z_]+)\s*:\s*(.*)$")
_CONT = re.compile(r"^--\s{2,}(\S.*)$")
_ID = re.compile(r"^R\d+$")
_DUCK_LINE = re.compile(r"LINE (\d+):")


@dataclass(frozen=True)
class Rule:
    """One loaded rule: its header and its SQL body (body_line = file line of the body's first line)."""

    id: str
    title: str
    severity: str
    requirement: str
    source: str
    description: str
    area: str
    path: Path
    sql: str
    body_line: int
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleProblem:
    """A problem with a rule file, located at a line."""

    path: Path
    line: int
    message: str
    rule_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _code_only(sql: str) -> str:
    """SQL without string literals and comments (for statement counting)."""
    return re.sub(r"'(?:[^']|'')*'|--[^\n]*", "", sql)


def default_rules_dir() -> Path:
    """The rules shipped with the sensor: sensor/queries in an installed package (a wheel maps the repository's
    queries/ there), else the queries/ beside the package in a source checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "queries"
    return installed if installed.is_dir() else package.parent / "queries"


def _read_header(
    path: Path, lines: list[str], problems: list[RuleProblem]
) -> tuple[dict[str, str], dict[str, int], int]:
    """The `-- key: value` header (continuation lines joined), each key's line, and the index of the body's
    first line; a duplicate key is added to problems."""
    header: dict[str, str] = {}
    key_line: dict[str, int] = {}
    last: str | None = None
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        c = _CONT.match(line)
        if c and last is not None and not m:
            header[last] += " " + c.group(1).strip()
            continue
        if m:
            key, value = m.group(1), m.group(2).strip()
            if key in header:
                problems.append(RuleProblem(path, i + 1, f"duplicate header key '{key}'"))
            header[key] = value
            key_line[key] = i + 1
            last = key
            continue
        if line.strip() == "" or line.lstrip().startswith("--"):
            last = None if line.strip() == "" else last
            continue
        return header, key_line, i
    return header, key_line, len(lines)


def _body_problems(path: Path, body: str, body_start: int, nlines: int) -> list[RuleProblem]:
    """The problems of a rule's SQL body: it must be one SELECT (or WITH ... SELECT) statement."""
    if not body:
        return [RuleProblem(path, nlines or 1, "no SELECT after the header")]
    if not re.match(r"(?is)^(select|with)\b", body):
        return [RuleProblem(path, body_start + 1, "the body must be one SELECT (or WITH ... SELECT)")]
    if ";" in _code_only(body).rstrip().rstrip(";"):
        return [RuleProblem(path, body_start + 1, "the body must be a single statement")]
    return []


def parse(path: Path, root: Path) -> tuple[Rule | None, list[RuleProblem]]:
    """Parse one rule file; returns the rule (None if unusable) and the problems found."""
    problems: list[RuleProblem] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [RuleProblem(path, 1, f"cannot read rule file: {exc}")]
    lines = text.splitlines()
    header, key_line, body_start = _read_header(path, lines, problems)
    body = "\n".join(lines[body_start:]).strip()
    for key in REQUIRED_KEYS:
        if not header.get(key):
            problems.append(RuleProblem(path, 1, f"missing header key '{key}'"))
    rid = header.get("id", "")
    if rid and not _ID.match(rid):
        problems.append(RuleProblem(path, key_line.get("id", 1), f"id '{rid}' is not of the form R<number>"))
    if rid and _ID.match(rid) and not path.name.startswith(rid + "_"):
        problems.append(RuleProblem(path, key_line.get("id", 1), f"file name must start with '{rid}_'"))
    sev = header.get("severity", "")
    if sev and sev not in HEADER_SEVERITIES:
        problems.append(
            RuleProblem(
                path, key_line.get("severity", 1), f"severity '{sev}' is not one of {', '.join(HEADER_SEVERITIES)}"
            )
        )
    problems += _body_problems(path, body, body_start, len(lines))
    if problems:
        return None, problems
    area = path.parent.relative_to(root).as_posix() if path.parent != root else ""
    extra = {k: v for k, v in header.items() if k not in REQUIRED_KEYS}
    return Rule(
        rid,
        header["title"],
        sev,
        header["requirement"],
        header["source"],
        header["description"],
        area,
        path,
        body.rstrip().rstrip(";"),
        body_start + 1,
        extra,
    ), []


def load_rules(root: Path) -> tuple[list[Rule], list[RuleProblem]]:
    """Every rule under root (sorted by id); problems of broken files are collected, not raised."""
    if not root.is_dir():
        return [], [RuleProblem(root, 0, "rules directory does not exist")]
    rules: list[Rule] = []
    problems: list[RuleProblem] = []
    seen: dict[str, Path] = {}
    for path in sorted(root.rglob("*.sql")):
        rule, probs = parse(path, root)
        problems += probs
        if rule is None:
            continue
        if rule.id in seen:
            problems.append(RuleProblem(path, 1, f"duplicate rule id {rule.id} (also in {seen[rule.id]})", rule.id))
            continue
        seen[rule.id] = path
        rules.append(rule)
    rules.sort(key=lambda r: int(r.id[1:]))
    return rules, problems


def problem_from_duckdb(rule: Rule, exc: Exception) -> RuleProblem:
    """A DuckDB error on a rule, with its LINE n mapped to the file's line."""
    msg = str(exc).strip().splitlines()
    m = _DUCK_LINE.search(str(exc))
    line = rule.body_line + int(m.group(1)) - 1 if m else rule.body_line
    text = msg[0] if msg else type(exc).__name__
    if isinstance(exc, duckdb.PermissionException):
        text = f"a rule may read only the lake's flows and the site tables: {text}"
    return RuleProblem(rule.path, line, text, rule.id)


_NO_LOCATION = 2**64 - 1


def _constant(expr: dict[str, Any]) -> str | None:
    """The text of a constant in DuckDB's serialized parse tree (None for NULL)."""
    value = expr.get("value")
    if isinstance(value, dict):
        return None if value.get("is_null") else str(value.get("value"))
    literal = expr.get("literal")  # the other layout of the serializer
    if isinstance(literal, dict) and literal.get("kind") != "NULL":
        return str(literal.get("text"))
    return None


def _results(expr: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The constants an expression can evaluate to: itself, CASE branches, CAST and COALESCE operands."""
    cls = expr.get("class")
    if cls == "CONSTANT":
        yield expr
    elif cls == "CASE":
        for check in expr.get("case_checks", []):
            yield from _results(check["then_expr"])
        yield from _results(expr.get("else_expr") or {})
    elif cls == "CAST":
        yield from _results(expr.get("child") or {})
    elif cls == "OPERATOR" and expr.get("type") == "OPERATOR_COALESCE":
        for child in expr.get("children", []):
            yield from _results(child)


def severity_values(con: duckdb.DuckDBPyConnection, rule: Rule) -> list[tuple[str, int]]:
    """The literal severities a rule's query can return, with their file line: every branch of every
    expression named 'severity' (CTEs included). A severity computed from a column is checked at run time."""
    row = con.execute("SELECT json_serialize_sql(?)", [rule.sql]).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error"):
        return []
    found: list[tuple[str, int]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("alias") == "severity" and "class" in node:
                for const in _results(node):
                    text = _constant(const)
                    if text is None:
                        continue
                    loc = int(const.get("query_location", _NO_LOCATION))
                    line = rule.body_line + (rule.sql[:loc].count("\n") if loc != _NO_LOCATION else 0)
                    found.append((text, line))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree.get("statements", []))
    return found


def output_columns(con: duckdb.DuckDBPyConnection, rule: Rule) -> list[str]:
    """The result columns of a rule's query (prepares it without running it)."""
    return [r[0] for r in con.execute(f"DESCRIBE {rule.sql}").fetchall()]


def lint(con: duckdb.DuckDBPyConnection, rules: list[Rule]) -> list[RuleProblem]:
    """Prepare every rule against the context's tables; check the result has the columns findings need."""
    problems: list[RuleProblem] = []
    for rule in rules:
        try:
            cols = output_columns(con, rule)
        except duckdb.Error as exc:
            problems.append(problem_from_duckdb(rule, exc))
            continue
        missing = [c for c in OUTPUT_COLUMNS if c not in cols]
        if missing:
            problems.append(
                RuleProblem(rule.path, rule.body_line, f"the query must return column(s) {', '.join(missing)}", rule.id)
            )
        if rule.severity == "per-row" and "severity" not in cols:
            problems.append(
                RuleProblem(rule.path, rule.body_line, "severity per-row needs a 'severity' result column", rule.id)
            )
        if "severity" in cols:
            for value, line in severity_values(con, rule):
                if value not in SEVERITIES:
                    problems.append(
                        RuleProblem(
                            rule.path, line, f"severity '{value}' is not one of {', '.join(SEVERITIES)}", rule.id
                        )
                    )
    return problems
