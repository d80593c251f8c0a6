"""Tests for sensor.catalogue(_csv): the data files load, agree with lync-reference.md, the lookups pick right."""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from sensor.catalogue import Catalogue
from sensor.catalogue_csv import CipherSuite, PortRow
from sensor.errors import ConfigError
from sensor.roles import CATALOGUE_ROLES
from sensor.schema import TLS_VERSIONS, tls_version_name

# CI clones main with shared/ beside it, as the work tree is laid out.
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "lync-reference.md"


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.load()


@pytest.fixture(scope="module")
def reference() -> str:
    if not REFERENCE.is_file():
        pytest.skip(f"reference not found at {REFERENCE}")
    return REFERENCE.read_text(encoding="utf-8")


def rows_on(cat: Catalogue, proto: str, lo: int, hi: int | None = None) -> list[PortRow]:
    hi = lo if hi is None else hi
    return [r for r in cat.rows() if r.proto == proto and (r.port_lo, r.port_hi) == (lo, hi)]


def only(rows: list[PortRow]) -> PortRow:
    assert len(rows) == 1, rows
    return rows[0]


def _service(
    cat: Catalogue, proto: str, orig_p: int, resp_p: int, orig_role: str | None, resp_role: str | None
) -> tuple[str | None, str | None]:
    """(service, source tags) of the row `Catalogue.match` picks (what sensor.services names a flow by)."""
    row = cat.match(proto, orig_p, resp_p, orig_role, resp_role)
    return (row.service, row.source) if row is not None else (None, None)


def _suite(cat: Catalogue, code: str) -> CipherSuite | None:
    return {c.code.lower(): c for c in cat.cipher_suites()}.get(code.lower())


# ------------------------------------------------------------------ loading and validation


def test_tables_load_and_validate(cat: Catalogue) -> None:
    assert len(cat.rows()) > 100
    assert len(cat.web_paths()) > 25
    assert len(cat.cipher_suites()) > 50
    assert {r.role for r in cat.rows()} <= CATALOGUE_ROLES
    keys = [(r.id, r.proto) for r in cat.rows()]
    assert len(keys) == len(set(keys))
    assert all(0 <= r.port_lo <= r.port_hi <= 65535 for r in cat.rows())
    sources = [r.source for r in cat.rows()] + [w.source for w in cat.web_paths()]
    assert all(s.startswith("[") for s in sources + [c.source for c in cat.cipher_suites()])


def _copy_data(tmp_path: Path) -> Path:
    for name in ("ports.csv", "web_paths.csv", "cipher_suites.csv"):
        with resources.as_file(resources.files("sensor") / "data" / name) as src:
            shutil.copy(src, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(
    ("old", "new", "column"),
    [
        ("fe-psom-8057,tcp,8057,8057,front_end", "fe-psom-8057,tcp,8057,8057,frontend", "role"),
        ("fe-psom-8057,tcp,8057,8057,", "fe-psom-8057,tcp,8057,70000,", "port_hi"),
        ("fe-psom-8057,tcp,8057,8057,", "fe-psom-8057,tcp,8057,8000,", "port_hi"),
        ("fe-psom-8057,tcp,8057,8057,", "fe-psom-compat-8058,tcp,8058,8058,", "id"),
        ("fe-psom-8057,tcp,8057,8057,", "fe-psom-8057,sctp,8057,8057,", "proto"),
        (",TLS,R1;R9;R5;R6;R15,[PORTS],Web Conferencing service", ",TLS,R1;R9,[PORTS],Web Conf", "note"),
    ],
)
def test_bad_port_rows_are_reported_with_file_line_and_column(tmp_path: Path, old: str, new: str, column: str) -> None:
    data = _copy_data(tmp_path)
    ports = data / "ports.csv"
    text = ports.read_text(encoding="utf-8")
    assert old in text
    ports.write_text(text.replace(old, new, 1), encoding="utf-8")
    line = 1 + text[: text.index(old)].count("\n")
    if column == "note":  # the edit leaves the row valid: loading must still work
        Catalogue.load(data_dir=data)
        return
    with pytest.raises(ConfigError) as err:
        Catalogue.load(data_dir=data)
    assert err.value.source is not None and err.value.source.startswith("ports.csv:")
    if column != "id":  # a duplicate is found on the second of the two rows
        assert err.value.source == f"ports.csv:{line}"
    assert err.value.key == column


def test_bad_cipher_and_web_rows_are_rejected(tmp_path: Path) -> None:
    data = _copy_data(tmp_path)
    web = data / "web_paths.csv"
    web.write_text(web.read_text().replace("path,/abs/,", "path,/ABS/,"), encoding="utf-8")
    with pytest.raises(ConfigError, match="prefix"):
        Catalogue.load(data_dir=data)
    data = _copy_data(tmp_path)
    suites = data / "cipher_suites.csv"
    suites.write_text(suites.read_text().replace("0xC030,", "0xc030,"), encoding="utf-8")
    with pytest.raises(ConfigError, match="code"):
        Catalogue.load(data_dir=data)


# ------------------------------------------------------------------ spot checks against the reference


def test_front_end_5061_is_sip_with_mtls_for_servers(cat: Catalogue) -> None:
    row = only([r for r in rows_on(cat, "tcp", 5061) if r.id == "fe-sip-tls-5061"])
    assert (row.role, row.service, row.doc_label, row.source) == (
        "front_end",
        "sip-tls",
        "TCP (TLS)",
        "[PORTS]",
    )
    assert row.required.split("|")[0] == "MTLS"
    assert "R1" in row.rules and "R3" in row.rules
    assert _service(cat, "tcp", 50123, 5061, "client", "front_end") == ("sip-tls", "[PORTS]")


def test_edge_external_5061_is_mtls_federation(cat: Catalogue) -> None:
    row = only([r for r in rows_on(cat, "tcp", 5061) if r.role == "edge_external_access"])
    assert row.required == "MTLS" and "[EDGE]" in row.source and "R4" in row.rules
    assert row.doc_label == "Access/SIP(MTLS)/TCP/5061"


def test_edge_stun_3478_udp(cat: Catalogue) -> None:
    rows = rows_on(cat, "udp", 3478)
    assert {r.role for r in rows} >= {"edge_external_av", "edge_internal"}
    assert {r.service for r in rows} == {"stun-turn"}
    assert not rows_on(cat, "tcp", 3478)


def test_av_edge_media_range(cat: Catalogue) -> None:
    rows = rows_on(cat, "tcp", 50000, 59999) + rows_on(cat, "udp", 50000, 59999)
    assert {(r.id, r.proto, r.role, r.required) for r in rows} == {
        ("edge-media", "tcp", "edge_external_av", "SRTP"),
        ("edge-media", "udp", "edge_external_av", "SRTP"),
    }


def test_server_media_ranges(cat: Catalogue) -> None:
    audio = rows_on(cat, "udp", 49152, 57500)
    assert [(r.id, r.service) for r in audio] == [("server-audio", "media-audio")]
    assert only(rows_on(cat, "tcp", 57501, 65535)).id == "server-video"
    assert only(rows_on(cat, "tcp", 49152, 65535)).id == "server-appsharing"


def test_psom_mediation_and_reverse_proxy_ports(cat: Catalogue) -> None:
    fe_psom = only([r for r in rows_on(cat, "tcp", 8057) if r.role == "front_end"])
    assert (fe_psom.service, fe_psom.required) == ("psom", "TLS")
    assert _service(cat, "tcp", 50000, 8057, "client", "front_end") == ("psom", "[PORTS]")
    assert _service(cat, "tcp", 50000, 8057, "front_end", "edge_internal")[0] == "psom-mtls"
    gateway = rows_on(cat, "tcp", 5068)
    assert {r.role for r in gateway} == {"front_end", "mediation"}
    assert {(r.service, r.required) for r in gateway} == {("sip-gateway", "TLS-optional")}
    rp = only([r for r in rows_on(cat, "tcp", 4443) if r.source == "[RP]"])
    assert (rp.app_proto, rp.required, rp.service) == ("HTTPS", "HTTPS", "https-external")


# ------------------------------------------------------------------ service_for


def test_service_for_prefers_the_role_specific_row(cat: Catalogue) -> None:
    assert _service(cat, "tcp", 50000, 443, "client", "edge_internal")[0] == "turn-tcp"
    assert _service(cat, "tcp", 50000, 443, "client", "front_end")[0] == "https"
    assert _service(cat, "tcp", 50000, 443, "client", "office_web_apps")[0] == "https-owas"
    assert _service(cat, "tcp", 50000, 444, "client", "edge_external")[0] == "turn-tcp"
    assert _service(cat, "tcp", 50000, 444, "front_end", "front_end")[0] == "https-focus"
    # the Edge external IPs per service, or one consolidated edge_external; Standard Edition = FE ports
    assert _service(cat, "tcp", 50000, 443, "external", "edge_external_av")[0] == "turn-tcp"
    assert _service(cat, "tcp", 50000, 443, "external", "edge_external_webconf")[0] == "psom"
    assert _service(cat, "tcp", 50000, 443, "external", "edge_external_access")[0] == "sip-tls"
    assert _service(cat, "tcp", 50000, 443, "external", "edge_external")[0] == "sip-tls"
    assert _service(cat, "tcp", 50000, 5061, "external", "edge_external")[0] == "sip-mtls"
    assert _service(cat, "udp", 6000, 55000, "external", "edge_external")[0] == "edge-media"
    assert _service(cat, "tcp", 50000, 4443, "reverse_proxy", "standard_edition")[0] == "https-external"
    assert _service(cat, "tcp", 50000, 5060, "front_end", "trusted_application")[1] == "[PORTS]"
    # unknown role: the first row of the port, in file order
    assert _service(cat, "tcp", 50000, 5061, "client", None) == ("sip-tls", "[PORTS]")
    assert _service(cat, "tcp", 50000, 5066, "mediation", "pstn_gateway")[0] == "sip-gateway"
    assert _service(cat, "tcp", 50000, 5066, "front_end", "e911_gateway")[0] == "sip-e911"


def test_media_on_a_server_range_is_matched_from_the_originator(cat: Catalogue) -> None:
    # Mediation sends from its audio range to a gateway's own port: only the originator side is catalogued.
    assert _service(cat, "udp", 49200, 20000, "mediation", "pstn_gateway") == (
        "media-audio",
        "[PORTS];[SRVRANGE]",
    )
    assert _service(cat, "udp", 60000, 6000, "front_end", "external")[0] == "media-video"
    # A/V Edge answering from 3478 to a partner's media port: the single port wins over client ranges.
    assert _service(cat, "udp", 3478, 51000, "edge_external", "external")[0] == "stun-turn"


def test_ranges_on_the_responder(cat: Catalogue) -> None:
    assert _service(cat, "udp", 6000, 50000, "client", "mediation")[0] == "media-audio"
    assert _service(cat, "udp", 6000, 55000, "client", "edge_external")[0] == "edge-media"
    assert _service(cat, "udp", 60000, 6000, "front_end", "client") == ("media-audio", "[PORTS];[CLIRANGE]")
    assert _service(cat, "icmp", 0, 0, None, None) == (None, None)
    assert _service(cat, "tcp", 1000, 1001, "client", "front_end") == (None, None)


def test_undocumented_port_between_servers_has_no_service(cat: Catalogue) -> None:
    # ref §7 R17 / §9: 5069 is in no Lync 2013 port doc; the TCP client port is ephemeral (Windows 49152+).
    assert _service(cat, "tcp", 50123, 5069, "mediation", "front_end") == (None, None)
    assert _service(cat, "tcp", 50123, 7000, "client", "front_end") == (None, None)
    # a client (or an external party) may use any port for media
    assert _service(cat, "udp", 50123, 7000, "front_end", "external")[0] == "media-audio"


def test_server_ports(cat: Catalogue) -> None:
    tcp, udp = cat.server_ports("tcp"), cat.server_ports("udp")
    assert tcp.dtype == np.uint8 and tcp.shape == (65536,)
    assert tcp[5061] == tcp[443] == tcp[8057] == tcp[50001] == 1
    assert tcp[50000] == tcp[49152] == tcp[5069] == 0  # ranges are not listening ports; 5069 is not documented
    assert udp[3478] == udp[1434] == udp[67] == 1
    assert udp[68] == 0  # the DHCP client side
    tcp[5061] = 0
    assert cat.server_ports("tcp")[5061] == 1


# ------------------------------------------------------------------ overrides


def test_override_moves_a_range_for_both_protocols() -> None:
    cat = Catalogue.load({"server-audio": (40000, 40999)}, source="site.toml")
    assert {(r.proto, r.port_lo, r.port_hi) for r in cat.rows() if r.id == "server-audio"} == {
        ("tcp", 40000, 40999),
        ("udp", 40000, 40999),
    }
    assert _service(cat, "udp", 6000, 40500, "client", "mediation")[0] == "media-audio"
    assert _service(cat, "udp", 49200, 20000, "mediation", "pstn_gateway") == (None, None)
    assert _service(cat, "udp", 40100, 20000, "mediation", "pstn_gateway")[0] == "media-audio"


def test_unknown_override_id_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        Catalogue.load({"no-such-range": (1, 2)}, source="site.toml")
    assert err.value.key == "ports.no-such-range"
    assert err.value.source == "site.toml"
    assert "unknown port range id" in str(err.value) and "ports.no-such-range" in str(err.value)


@pytest.mark.parametrize("bad", [(5, 1), (0, 70000), (1,), ("a", "b")])
def test_bad_override_range(bad: tuple[int, int]) -> None:
    with pytest.raises(ConfigError) as err:
        Catalogue.load({"edge-media": bad})
    assert err.value.key == "ports.edge-media"


# ------------------------------------------------------------------ web paths and cipher suites


@pytest.mark.parametrize(
    ("code", "klass", "fips"),
    [
        ("0x0005", "rc4", "no"),
        ("0x0004", "rc4", "no"),
        ("0xC011", "rc4", "no"),
        ("0x000A", "3des", "yes"),
        ("0xC030", "strong", "derived"),
        ("0xc02f", "strong", "derived"),
        ("0xCCA8", "strong", "no"),
        ("0x1303", "strong", "no"),
        ("0x003B", "null", "no"),
        ("0x0064", "export", "no"),
        ("0x0700c0", "sslv2", "no"),
    ],
)
def test_cipher_classes(cat: Catalogue, code: str, klass: str, fips: str) -> None:
    suite = _suite(cat, code)
    assert suite is not None and (suite.class_, suite.fips) == (klass, fips)


def test_cipher_min_versions_use_the_lake_spelling(cat: Catalogue) -> None:
    """One spelling of TLS versions: the cipher data's min_version is a name the lake and the rules hold (TLSv12,
    not TLSv1.2), so a rule can compare it with flows.tls_version."""
    versions = {c.min_version for c in cat.cipher_suites()}
    assert versions <= set(TLS_VERSIONS)
    assert {"TLSv10", "TLSv12", "TLSv13"} <= versions
    assert _suite(cat, "0xC030").min_version == tls_version_name(0x0303) == "TLSv12"  # type: ignore[union-attr]
    assert _suite(cat, "0x1303").min_version == tls_version_name(0x0304) == "TLSv13"  # type: ignore[union-attr]


def test_as_tables(cat: Catalogue) -> None:
    tables = cat.as_tables()
    assert set(tables) == {"ports", "web_paths", "cipher_suites"}
    assert len(tables["ports"]) == len(cat.rows())
    assert tables["cipher_suites"][0].keys() >= {"code", "name", "class", "fips", "schannel_default"}
    assert isinstance(tables["ports"][0]["rules"], list)


# ------------------------------------------------------------------ the reference, parsed


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def _tables(section: str) -> list[list[list[str]]]:
    """Markdown tables of a section as lists of rows of cells (header first, separator dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_PORTS = re.compile(rf"({_NUMBER})(?:\s*[-–]\s*({_NUMBER}))?")


def _port_specs(cell: str) -> list[tuple[int, int]]:
    return [
        (int(lo.replace(",", "")), int((hi or lo).replace(",", "")))
        for lo, hi in _PORTS.findall(cell.replace("/", " "))
    ]


def _protos(cell: str) -> set[str]:
    return {p.lower() for p in re.findall(r"\b(TCP|UDP)\b", cell)}


def test_every_port_of_reference_sections_2_to_4_is_catalogued(cat: Catalogue, reference: str) -> None:
    have = {(r.proto, r.port_lo, r.port_hi) for r in cat.rows()}
    missing: list[str] = []
    checked = 0
    for table in _tables(_section(reference, "## 2. ", "## 5. ")):
        header, body = table[0], table[1:]
        if "Port" in header and "L4" in header:
            port_at, l4_at = header.index("Port"), header.index("L4")
            specs = [(row[port_at], _protos(row[l4_at])) for row in body]
        elif header[0].endswith("Port (doc label)") or header[0].startswith("Reverse proxy"):
            specs = [(row[0], _protos(row[0])) for row in body]
        elif "Resulting range" in header:  # [SRVRANGE]: must lie inside a catalogued range (ref §8.4)
            for row in body:
                ((lo, hi),) = _port_specs(row[header.index("Resulting range")])
                assert any(r.port_lo <= lo and hi <= r.port_hi for r in cat.rows() if r.is_range), row
            continue
        else:
            raise AssertionError(f"unexpected table {header}")
        for cell, protos in specs:
            assert protos, cell
            for lo, hi in _port_specs(cell):
                for proto in protos:
                    checked += 1
                    if (proto, lo, hi) not in have:
                        missing.append(f"{proto}/{lo}-{hi} ({cell})")
    assert checked > 100
    assert not missing, missing


def test_load_balancer_and_director_ports_are_catalogued(cat: Catalogue, reference: str) -> None:
    have = {(r.proto, r.port_lo) for r in cat.rows() if not r.is_range}
    for start, end in (
        ("Hardware load balancer VIP ports", "Director port summary"),
        ("Director port summary", "| Property"),
    ):
        text = re.sub(r"\[[A-Z-]+\]", "", _section(reference, start, end))
        ports = {lo for lo, _ in _port_specs(text)}
        assert len(ports) > 4
        assert {("tcp", p) for p in ports} <= have, sorted(ports)
    vip = [r for r in cat.rows() if "load balancer VIP" in r.note]
    assert {r.port_lo for r in vip if r.id.startswith("fe-vip-")} == {
        5061,
        444,
        135,
        80,
        8080,
        443,
        4443,
        5072,
        5073,
        5075,
        5076,
        5071,
        5080,
        448,
    }


def test_edgecmd_defaults_are_catalogued(cat: Catalogue) -> None:
    assert _service(cat, "tcp", 50000, 5098, "front_end", "edge_internal") == ("xmpp-mtls", "[EDGECMD]")
    assert _service(cat, "tcp", 50000, 23456, "front_end", "edge_internal")[0] == "xmpp-mtls"


def test_r10_prefixes_have_their_severity(cat: Catalogue, reference: str) -> None:
    r10 = _section(reference, "**R10", "**R11")
    v_part, rest = r10.split("→ V", 1)
    w_part, i_part = rest.split("→ W", 1)
    i_part = i_part.split("Edge →", 1)[0]
    expected = {"V": v_part, "W": w_part, "I": i_part}
    for severity, part in expected.items():
        prefixes = [p for p in re.findall(r"`(/[^`]+)`", part)]
        assert prefixes, severity
        for prefix in prefixes:
            # the longest catalogued path prefix the documented prefix starts with
            rows = [w for w in cat.web_paths() if w.match == "path" and prefix.lower().startswith(w.prefix)]
            row = max(rows, key=lambda w: len(w.prefix), default=None)
            assert row is not None and row.severity == severity, (prefix, row)


def test_cipher_suites_of_reference_6e_and_r6(cat: Catalogue, reference: str) -> None:
    section = _section(reference, "### 6e.", "## 7.")
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("0x"):
            suite = _suite(cat, cells[1])
            assert suite is not None and suite.name == cells[0] and suite.schannel_default, cells
            fips = "no" if "Not FIPS" in cells[3] else "derived" if "[derived]" in cells[3] else "yes"
            assert suite.fips == fips, cells
    for code in re.findall(r"\b0x[0-9A-F]{4,6}\b", section):
        assert _suite(cat, code) is not None, code
    r6 = _section(reference, "**R6", "**R7")
    v_set = r6.split("V if in {", 1)[1].split("}", 1)[0]
    for code in re.findall(r"0x[0-9A-F]{4}", v_set):
        suite = _suite(cat, code)
        assert suite is not None and suite.class_ in {"null", "rc4", "des", "export"}, code
    for code in re.findall(r"0x[0-9A-F]{4}", r6.split("W for 3DES", 1)[1]):
        assert _suite(cat, code) is not None and _suite(cat, code).class_ == "3des"  # type: ignore[union-attr]
