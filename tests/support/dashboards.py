"""Read the Grafana dashboards of grafana/dashboards: their PromQL, the metrics it names, and runnable forms of it.

Grafana is not part of the sensor; these helpers let tests (and the end-to-end test against a real
Prometheus) check every panel and template-variable query without a Grafana: `panel_queries` lists the
expressions, `metric_names` says which metrics one uses, `substitute` turns Grafana's variables into
values a direct `/api/v1/query` accepts, and `exposed_metric_names` lists what the sensor exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

Dashboard = dict[str, Any]

# Values for a direct Prometheus API query: the rate window fits a 15 s scrape interval (Grafana's
# $__rate_interval is at least four scrape intervals), "all" of a multi-value variable is the regex `.*`.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "site": ".*",
    "sensor": ".*",
    "instance": ".*",
    "rule_id": ".*",
    "severity": ".*",
}

# Grafana's variable syntaxes: ${name}, ${name:format}, $name, [[name]], [[name:format]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")

# Grafana's Prometheus variable-query functions that are not PromQL.
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.*\S)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.S)
_OTHER_VARIABLE_FUNCTION = re.compile(r"^\s*(label_names|metrics)\s*\(", re.S)

_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"|(?P<comment>\#[^\n]*)"
    r"|(?P<var>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])"
    r"|(?P<number>\.?\d[\w.]*)"
    r"|(?P<ident>[A-Za-z_:][\w:]*)"
    r"|(?P<space>\s+)"
    r"|(?P<op>=~|!~|!=|==|<=|>=|.)",
    re.S,
)
# Keywords whose parenthesised argument is a list of label names, not an expression.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _LABEL_LIST_KEYWORDS | {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}


def load_dashboards(directory: str | Path) -> list[tuple[Path, Dashboard]]:
    """Every `*.json` dashboard of a directory, sorted by file name; a file that does not parse raises."""
    out: list[tuple[Path, Dashboard]] = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a dashboard is a JSON object, not {type(data).__name__}")
        out.append((path, data))
    return out


def iter_panels(dashboard: Dashboard) -> Iterator[dict[str, Any]]:
    """All panels of a dashboard in order, rows included, with the panels nested in collapsed rows."""

    def walk(panels: object) -> Iterator[dict[str, Any]]:
        if not isinstance(panels, list):
            return
        for panel in panels:
            if isinstance(panel, dict):
                yield panel
                yield from walk(panel.get("panels"))

    yield from walk(dashboard.get("panels"))


def variable_expr(query: str) -> str | None:
    """The PromQL a Grafana Prometheus variable query runs: `label_values(m, l)` and `query_result(e)` give
    their expression; `label_values(l)`, `label_names()` and `metrics(re)` name no series (None); any other
    text is already PromQL."""
    if m := _LABEL_VALUES.match(query):
        return m.group("expr")
    if m := _QUERY_RESULT.match(query):
        return m.group("expr").strip()
    if _OTHER_VARIABLE_FUNCTION.match(query):
        return None
    return query.strip()


def _variable_query(variable: Mapping[str, Any]) -> str:
    query = variable.get("query")
    if isinstance(query, dict):  # Grafana 10's variable editor stores {"query": ..., "refId": ...}
        query = query.get("query")
    if not query:
        query = variable.get("definition")
    return query if isinstance(query, str) else ""


def panel_queries(dashboard: Dashboard) -> list[tuple[str, str]]:
    """(title, PromQL) of every target of every panel, nested row panels included, then of every query
    template variable (title `variable <name>`, its query as the PromQL it runs, see `variable_expr`).
    Expressions are as written, Grafana variables included: pass them through `substitute` to run them."""
    out: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets") or []:
            if isinstance(target, dict) and isinstance(target.get("expr"), str):
                out.append((str(panel.get("title", "")), target["expr"]))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if isinstance(variable, dict) and variable.get("type") == "query":
            expr = variable_expr(_variable_query(variable))
            if expr:
                out.append((f"variable {variable.get('name', '')}", expr))
    return out


def substitute(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace Grafana's variables (`$name`, `${name}`, `${name:fmt}`, `[[name]]`) with concrete values:
    `variables` over `DEFAULT_VARIABLES`. `$1`-style regex references (label_replace) are kept; an unknown
    variable raises KeyError, so a typo cannot turn into a silently empty selector."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():
            return m.group(0)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana variable query) reads: bare selectors and
    `{__name__="..."}` matchers; function, keyword, label, duration and Grafana-variable tokens are not names."""
    promql = variable_expr(expr)
    if promql is None:
        return set()
    tokens = [(m.lastgroup or "", m.group(0)) for m in _TOKEN.finditer(promql)]
    tokens = [t for t in tokens if t[0] not in ("space", "comment")]
    names: set[str] = set()
    braces = brackets = 0
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "op" and text in "{}[]":
            braces += {"{": 1, "}": -1}.get(text, 0)
            brackets += {"[": 1, "]": -1}.get(text, 0)
        elif braces and kind == "ident" and text == "__name__" and nxt == "=" and i + 2 < len(tokens):
            if tokens[i + 2][0] == "string":
                names.add(tokens[i + 2][1][1:-1])
            i += 2
        elif kind == "ident" and not braces and not brackets:
            word = text.lower()
            if word in _LABEL_LIST_KEYWORDS and nxt == "(":
                depth = 0
                while i < len(tokens):  # skip the label list
                    depth += {"(": 1, ")": -1}.get(tokens[i][1], 0)
                    if depth == 0 and tokens[i][1] == ")":
                        break
                    i += 1
            elif nxt != "(" and nxt.lower() not in ("by", "without") and word not in _KEYWORDS:
                names.add(text)  # not a function call, nor an aggregation written `sum by (l) (...)`
        i += 1
    return names


def exposed_metric_names() -> set[str]:
    """Every metric name `sensor.metrics.SensorMetrics` exposes, read from its exposition on a fresh registry:
    the `# TYPE` names (counters with their `_total`, also before any child exists) and the sample names."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sensor.metrics import SensorMetrics

    registry = CollectorRegistry()
    SensorMetrics(registry)
    names: set[str] = set()
    for line in generate_latest(registry).decode("utf-8").splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
