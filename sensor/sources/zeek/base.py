"""What the Zeek log readers share: the logs read, the problem kinds, the caps, a record and a position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The Zeek logs the sensor reads (lync.log is written by the package in deploy/zeek/).
LOGS: tuple[str, ...] = ("conn", "ssl", "x509", "sip", "http", "lync")

# Problem kinds: the `kind` label of lync_sensor_decode_errors_total.
MALFORMED = "zeek_malformed_line"
HEADER_CHANGE = "zeek_header_change"
TRUNCATED_GZIP = "zeek_truncated_gzip"
ROTATED = "zeek_rotated_while_reading"
BAD_TS = "zeek_unparseable_ts"
LOST = "zeek_rotated_file_lost"
TRUNCATED_FILE = "zeek_truncated_file"
BAD_VALUE = "zeek_bad_value"  # one field not of its type (the field is left unset, the rest of the line kept)
LONG_LINE = "zeek_line_too_long"  # a line longer than the line cap (skipped without being held in memory)
SIZE_CAP = "zeek_file_size_cap"  # a file whose decompressed size passed the per-file cap (the rest not read)
PROBLEMS: tuple[str, ...] = (
    MALFORMED,
    HEADER_CHANGE,
    TRUNCATED_GZIP,
    ROTATED,
    BAD_TS,
    LOST,
    TRUNCATED_FILE,
    BAD_VALUE,
    LONG_LINE,
    SIZE_CAP,
)

# Caps on what one log file may cost (the config keys zeek.max_line_bytes and zeek.max_file_bytes would set
# them; a line of Zeek's own logs is a few KiB, an hour of a busy conn.log a few GiB uncompressed).
MAX_LINE_BYTES = 1 << 20
MAX_FILE_BYTES = 64 << 30


@dataclass(frozen=True)
class ZeekRecord:
    """One log line: its fields by Zeek name (`id.orig_h` ...), with the log it came from and where."""

    log: str
    ts: float | None  # None: unparseable (counted), e.g. the masked XXXXXXXXXX.XXXXXX of Zeek's test baselines
    fields: dict[str, Any]
    source: str
    offset: int


@dataclass(frozen=True)
class Position:
    """Where reading of a log resumes: the file (device, inode, identity hash of its first bytes) and offset."""

    path: str
    dev: int
    inode: int
    offset: int
    ident: str
    ident_len: int

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "dev": self.dev,
            "inode": self.inode,
            "offset": self.offset,
            "ident": self.ident,
            "ident_len": self.ident_len,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Position:
        return cls(
            str(d["path"]), int(d["dev"]), int(d["inode"]), int(d["offset"]), str(d["ident"]), int(d["ident_len"])
        )
