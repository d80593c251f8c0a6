"""The DuckDB context rules run in: flows of the evaluation window, site policy and catalogue as tables.

Views and tables a rule may use (documented in queries/README.md):
  flow_records  the lake's interval records overlapping the window (the flow schema)
  flows         one row per flow (uid): facts from its latest record, counters summed over the window
  roles, networks, server_roles, gateway_roles, policy, gateways, trusted_apps, xmpp_partners
  ports, web_paths, cipher_suites    the catalogue (sensor/data/*.csv)
and macros is_server(role), is_gateway(role), is_edge_external(role), family(role), gateway_leg(orig_role,
resp_role), plain_media_convicts(confidence, packets), plaintext_start(first_byte, sslv2_hello), txt(x) and
conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sensor.catalogue import Catalogue
from sensor.config import Config
from sensor.lake import files as lake_files
from sensor.lake import sql_glob
from sensor.roles import EDGE_EXTERNAL_ROLES, GATEWAY_PEER_ROLES, GATEWAY_ROLES, ROLE_FAMILY, SERVER_ROLES
from sensor.schema import FLOW_COLUMNS, FLOW_COUNTERS, FLOW_SCHEMA
from sensor.topology import Topology

# The evidence bar for a plain-media violation (R7, R8(a)); documented in queries/README.md.
PLAIN_MEDIA_CONFIDENCE = 0.8
PLAIN_MEDIA_PACKETS = 10


@dataclass(frozen=True)
class Window:
    """The evaluation window [start, end) in UTC; None bounds are open."""

    start: datetime | None = None
    end: datetime | None = None

    def describe(self) -> str:
        s = self.start.isoformat() if self.start else "-inf"
        e = self.end.isoformat() if self.end else "now"
        return f"[{s}, {e})"


def _lit(values: object) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in sorted(values))  # type: ignore[call-overload]


_FACTS = [c.name for c in FLOW_COLUMNS if c.name not in (*FLOW_COUNTERS, "ts", "ts_end", "uid", "duration")]


def _flows_select(source: str) -> str:
    """One row per flow (uid): the counters summed over its interval records, the facts of its latest record."""
    sums = ", ".join(f"sum({c})::BIGINT AS {c}" for c in FLOW_COUNTERS)
    return f"""
        WITH agg AS (
            SELECT uid, min(ts) AS ts, max(ts_end) AS ts_end, {sums}, count(*) AS records
            FROM {source} GROUP BY uid
        ),
        latest AS (
            SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY uid ORDER BY ts DESC) = 1
        )
        SELECT agg.uid, agg.ts, agg.ts_end, epoch(agg.ts_end) - epoch(agg.ts) AS duration,
               {", ".join("agg." + c for c in FLOW_COUNTERS)}, agg.records, {", ".join("latest." + c for c in _FACTS)}
        FROM agg JOIN latest USING (uid)
    """


def _flows_view(con: duckdb.DuckDBPyConnection) -> None:
    """`flows`, one row per flow, in a temporary table (see _flows_select)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE flows AS {_flows_select('flow_records')}")


def register_flows_from_table(con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    """Rules over an in-memory flow table (the end of `analyze`).

    A flow with one record (nearly all of an offline run's) is that record, copied into `flows` as it is; only
    flows with several interval records go through the aggregation (its window over every record took ~2 KiB
    of memory a record: +280 MiB of peak memory per 100,000 records, against +55 MiB for the copy)."""
    # one thread: the copy and the rules over one run's records are small work, and each extra DuckDB thread
    # holds its own buffers (threads=2 doubled the copy's memory and was slower)
    con.execute("SET threads = 1")
    counts = pc.value_counts(table.column("uid"))
    multi = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    # a flag column beside the record columns (which are shared, not copied) splits the two kinds of flow
    several = pc.is_in(table.column("uid"), value_set=multi)
    con.register("flow_records_arrow", table.append_column("several_records_", several))
    con.execute("""
        CREATE OR REPLACE TEMP VIEW flow_records AS SELECT * EXCLUDE (several_records_) FROM flow_records_arrow
    """)
    con.execute("""
        CREATE OR REPLACE TEMP VIEW flow_multi AS
        SELECT * EXCLUDE (several_records_) FROM flow_records_arrow WHERE several_records_
    """)
    counters = ", ".join(f"{c}::BIGINT AS {c}" for c in FLOW_COUNTERS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE flows AS
        SELECT uid, ts, ts_end, epoch(ts_end) - epoch(ts) AS duration, {counters}, 1::BIGINT AS records,
               {", ".join(_FACTS)}
        FROM flow_records_arrow WHERE NOT several_records_
    """)
    if len(multi):
        con.execute(f"INSERT INTO flows {_flows_select('flow_multi')}")


def record_filter(window: Window, sensors: Sequence[str] = ()) -> list[str]:
    """The exact bounds of a window (records overlapping it) and the sensor filter, as SQL conditions."""
    where = ["true"]
    if window.start is not None:
        where.append(f"ts_end >= TIMESTAMPTZ '{window.start.isoformat()}'")
    if window.end is not None:
        where.append(f"ts < TIMESTAMPTZ '{window.end.isoformat()}'")
    if sensors:
        where.append(f"sensor_id IN ({_lit(set(sensors))})")
    return where


def register_flows_from_relation(con: duckdb.DuckDBPyConnection, relation: str, where: Sequence[str]) -> int:
    """Rules over the flow records of a table or view another backend attached (a DuckLake's `flows`); returns
    the number of records. Only the flow schema's columns are visible to the rules."""
    cols = ", ".join(c.name for c in FLOW_COLUMNS)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW flow_records AS SELECT {cols} FROM {relation} WHERE {' AND '.join(where)}"
    )
    _flows_view(con)
    row = con.execute("SELECT sum(records) FROM flows").fetchone()
    return int(row[0] or 0) if row else 0


def register_flows_from_lake(
    con: duckdb.DuckDBPyConnection, lake: Path, window: Window, sensors: Sequence[str] = ()
) -> int:
    """Rules over the lake's flow records that overlap the window (and come from the given sensors, if any);
    returns the number of records."""
    if not lake_files(lake, "flows"):
        con.register("flow_records_arrow", FLOW_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TEMP VIEW flow_records AS SELECT * FROM flow_records_arrow")
    else:
        where = ["true"]
        if window.start is not None:
            # partition pruning on the hive keys first, then the exact bound on the records
            d, h = window.start.date().isoformat(), window.start.hour
            where.append(
                f"(CAST(date AS DATE) > DATE '{d}' OR (CAST(date AS DATE) = DATE '{d}' "
                f"AND CAST(hour AS INTEGER) >= {h}))"
            )
            where.append(f"ts_end >= TIMESTAMPTZ '{window.start.isoformat()}'")
        if window.end is not None:
            d, h = window.end.date().isoformat(), window.end.hour
            where.append(
                f"(CAST(date AS DATE) < DATE '{d}' OR (CAST(date AS DATE) = DATE '{d}' "
                f"AND CAST(hour AS INTEGER) <= {h}))"
            )
            where.append(f"ts < TIMESTAMPTZ '{window.end.isoformat()}'")
        if sensors:
            where.append(f"sensor_id IN ({_lit(set(sensors))})")
        glob = sql_glob(lake, "flows")
        con.execute(f"""
            CREATE OR REPLACE TEMP VIEW flow_records AS
            SELECT * EXCLUDE (date, hour) FROM read_parquet('{glob}', hive_partitioning = true,
                                                           union_by_name = true)
            WHERE {" AND ".join(where)}
        """)
    _flows_view(con)
    row = con.execute("SELECT sum(records) FROM flows").fetchone()
    return int(row[0] or 0) if row else 0


def register_site(con: duckdb.DuckDBPyConnection, cfg: Config, topology: Topology, catalogue: Catalogue) -> None:
    """Site topology and policy, and the catalogue, as tables; the macros rules share."""
    p = cfg.policy
    tables: dict[str, pa.Table] = {
        "roles": pa.table(
            {"role": [r for r, _ in topology.roles_table()], "cidr": [c for _, c in topology.roles_table()]}
        ),
        "networks": pa.table(
            {"zone": [z for z, _ in topology.networks_table()], "cidr": [c for _, c in topology.networks_table()]}
        ),
        "server_roles": pa.table({"role": sorted(SERVER_ROLES)}),
        "gateway_roles": pa.table({"role": sorted(GATEWAY_ROLES)}),
        "policy": pa.table(
            {
                "media_encryption_level": [p.media_encryption_level],
                "fips": [p.fips],
                "require_tls12_on_edge": [p.require_tls12_on_edge],
            }
        ),
        "gateways": pa.table(
            {
                "address": list(p.gateways),
                "transport": [g.transport for g in p.gateways.values()],
                "srtp_mode": [g.effective_srtp_mode for g in p.gateways.values()],
                "e911": [g.e911 for g in p.gateways.values()],
            },
            schema=pa.schema(
                [("address", pa.string()), ("transport", pa.string()), ("srtp_mode", pa.string()), ("e911", pa.bool_())]
            ),
        ),
        "trusted_apps": pa.table(
            {"address": list(p.trusted_applications), "port": [t.port for t in p.trusted_applications.values()]},
            schema=pa.schema([("address", pa.string()), ("port", pa.int32())]),
        ),
        "xmpp_partners": pa.table(
            {"domain": list(p.xmpp_partners), "tls_negotiation": [x.tls_negotiation for x in p.xmpp_partners.values()]},
            schema=pa.schema([("domain", pa.string()), ("tls_negotiation", pa.string())]),
        ),
    }
    for name, rows in catalogue.as_tables().items():
        tables[name] = pa.Table.from_pylist(rows)
    for name, tbl in tables.items():
        con.register(f"{name}_arrow", tbl)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
        con.unregister(f"{name}_arrow")
    family = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in ROLE_FAMILY.items())
    con.execute(f"CREATE OR REPLACE TEMP MACRO is_server(r) AS r IN ({_lit(SERVER_ROLES)})")
    con.execute(f"CREATE OR REPLACE TEMP MACRO is_gateway(r) AS r IN ({_lit(GATEWAY_ROLES)})")
    con.execute(f"CREATE OR REPLACE TEMP MACRO is_edge_external(r) AS r IN ({_lit(EDGE_EXTERNAL_ROLES)})")
    con.execute(f"CREATE OR REPLACE TEMP MACRO family(r) AS CASE r {family} ELSE r END")
    # Exception E2's scope, one definition for R2 and R8: a gateway (PSTN or E9-1-1) on one side, a Mediation
    # Server, a branch appliance or a Front End (collocated Mediation Server) on the other.
    peers = _lit(GATEWAY_PEER_ROLES)
    con.execute(
        "CREATE OR REPLACE TEMP MACRO gateway_leg(orole, rrole) AS "
        f"(is_gateway(orole) AND (rrole IN ({peers}) OR family(rrole) = 'front_end')) "
        f"OR (is_gateway(rrole) AND (orole IN ({peers}) OR family(orole) = 'front_end'))"
    )
    # The one evidence bar for convicting plain media (R7, R8(a)): a verdict of confidence >= 0.8 (SDP, the
    # RTCP chain or the codec frame length) over at least 10 packets; anything weaker, or unknown, is a warning.
    con.execute(
        f"CREATE OR REPLACE TEMP MACRO plain_media_convicts(confidence, packets) AS "
        f"coalesce(confidence >= {PLAIN_MEDIA_CONFIDENCE} AND packets >= {PLAIN_MEDIA_PACKETS}, false)"
    )
    # The originator's first payload byte is not a TLS record (0x16) nor an SSLv2-format hello: cleartext.
    con.execute(
        "CREATE OR REPLACE TEMP MACRO plaintext_start(first_byte, sslv2_hello) AS "
        "first_byte IS NOT NULL AND first_byte <> 22 AND NOT coalesce(sslv2_hello, false)"
    )
    # evidence text helpers: NULL-safe text, and "role addr:port -> role addr:port/proto"
    con.execute("CREATE OR REPLACE TEMP MACRO txt(x) AS coalesce(CAST(x AS VARCHAR), '-')")
    con.execute(
        "CREATE OR REPLACE TEMP MACRO conn(orole, oh, op, rrole, rh, rp, pr) AS "
        "format('{} {}:{} -> {} {}:{}/{}', txt(orole), txt(oh), txt(op), txt(rrole), txt(rh), txt(rp), "
        "txt(pr))"
    )


def confine(con: duckdb.DuckDBPyConnection, directories: list[Path]) -> None:
    """From here on the connection reads no file but the given directories (the lake's flows; the site tables
    are in memory already): no other path, no extension install, and these settings cannot be changed back."""
    allowed = ", ".join("'" + (str(d).rstrip("/") + "/").replace("'", "''") + "'" for d in directories)
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def connect() -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB connection whose session time zone is UTC."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    return con


def now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)
