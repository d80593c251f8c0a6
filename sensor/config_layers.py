"""The layers of a config (file, environment, --set): read, checked against the schema, laid over each other."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sensor.config_fields import Entries, Given, Leaf, Node, Problem, Table, parsed, show, unknown
from sensor.errors import ConfigError

ENV_PREFIX = "LYNC_SENSOR_"
# Read by the CLI (which config file to load), not a config key.
RESERVED_ENV: frozenset[str] = frozenset({"LYNC_SENSOR_CONFIG"})
ENV_SOURCE = "environment"
SET_SOURCE = "--set"


def config_key(parts: Sequence[str]) -> str:
    """A dotted key as TOML writes it; parts that are not bare keys are quoted: policy.gateways."10.0.3.5"."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in parts)


def normalize(node: Node, value: Any, path: tuple[str, ...] = ()) -> Any:
    """Check one layer against the schema; returns it with canonical keys and values (tuples, not lists)."""
    if isinstance(node, Leaf):
        try:
            return node.check(value)
        except Problem as problem:
            raise Problem(problem.message, config_key(path)) from None
    value = parsed(value)  # a whole table from env/--set is an inline table: {transport = "tls"}
    if not isinstance(value, dict):
        raise Problem(f"expected a table, got {show(value)}", config_key(path))
    out: dict[str, Any] = {}
    for name, item in value.items():
        if isinstance(node, Table):
            child = node.fields.get(name)
            if child is None:
                raise Problem(
                    unknown("section" if not path else "key", name, list(node.fields)),
                    config_key((*path, name)),
                )
            out[name] = normalize(child, item, (*path, name))
        else:
            try:
                canonical = node.key(name)
            except Problem as problem:
                raise Problem(problem.message, config_key((*path, name))) from None
            out[canonical] = normalize(node.value, item, (*path, canonical))
    return out


def merge(
    into: dict[str, Any],
    layer: Mapping[str, Any],
    source: str,
    origins: dict[str, str],
    path: tuple[str, ...] = (),
) -> None:
    """Lay one checked layer over the ones before it: tables merge key by key, anything else replaces."""
    for name, value in layer.items():
        where = (*path, name)
        origins[config_key(where)] = source
        if isinstance(value, dict):
            merge(into.setdefault(name, {}), value, source, origins, where)
        else:
            into[name] = value


# --- Layer sources: file, environment, --set. ---------------------------------------------------------------


def read_file(path: Path) -> dict[str, Any]:
    """The TOML file at path as a dict; ConfigError naming the file when it cannot be read or parsed."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", source=str(path)) from None


def _given(text: str) -> Given:
    """Env and --set values are TOML values when they parse as one (true, 30, ["a", "b"]), else strings."""
    if "\n" not in text:
        try:
            return Given(text, tomllib.loads(f"v = {text}")["v"])
        except tomllib.TOMLDecodeError:
            pass
    return Given(text, text)


def _regroup(schema: Table, parts: list[str]) -> list[str]:
    """Re-join unquoted dotted keys inside tables keyed by address or domain:
    policy.gateways.10.0.3.5.transport -> policy, gateways, 10.0.3.5, transport."""
    node: Node = schema
    for i, part in enumerate(parts):
        if isinstance(node, Entries):
            rest = parts[i:]
            fields = node.value.fields if isinstance(node.value, Table) else {}
            if len(rest) >= 2 and rest[-1] in fields:
                return [*parts[:i], ".".join(rest[:-1]), rest[-1]]
            return [*parts[:i], ".".join(rest)]
        if not isinstance(node, Table) or part not in node.fields:
            break
        node = node.fields[part]
    return parts


def _nest(parts: Sequence[str], value: Any) -> dict[str, Any]:
    layer: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        layer = {part: layer}
    return layer


def env_layers(schema: Table, env: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """LYNC_SENSOR_<SECTION>__<KEY>[__<KEY>...], names case-insensitive; whole tables before their keys."""
    names = [n for n in env if n.upper().startswith(ENV_PREFIX) and n.upper() not in RESERVED_ENV]
    for name in sorted(names, key=lambda n: (n.count("__"), n.upper())):
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts):
            raise ConfigError(
                f"{name} does not name a key: use LYNC_SENSOR_<SECTION>__<KEY> (LYNC_SENSOR_SENSOR__LAKE)",
                source=ENV_SOURCE,
            )
        parts = _regroup(schema, parts)
        if len(parts) == 2 and parts[0] == "ports":  # range ids hold '-', which a variable name cannot
            parts[1] = parts[1].replace("_", "-")
        yield name, _nest(parts, _given(env[name]))


_KEY_PART = re.compile(r'\s*(?:"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_:-]+))\s*(\.|$)')


def _split_key(text: str) -> list[str] | None:
    parts, pos = [], 0
    while pos < len(text):
        match = _KEY_PART.match(text, pos)
        if match is None or match.end() == pos:
            return None
        parts.append(next(g for g in match.groups()[:3] if g is not None))
        pos = match.end()
        if match[4] == "." and pos == len(text):
            return None  # trailing dot
    return parts or None


def set_layers(schema: Table, overrides: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """--set key=value, the key dotted as in TOML: policy.fips, policy.gateways."10.0.3.5".transport."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = _split_key(key.strip()) if sep else None
        if not parts:
            raise ConfigError(f"expected key=value like policy.fips=true, got {item!r}", source=SET_SOURCE)
        yield item, _nest(_regroup(schema, parts), _given(value.strip()))
