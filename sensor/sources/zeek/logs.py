"""Zeek log readers: TSV and JSON, plain or gzip, rotated files in time order, followed across rotation.

A log is one Zeek stream in one directory (`<dir>/conn.log` and its rotated files). `LogStream` reads its
rotated files oldest first, then the current file; with `follow` it keeps the current file open, so when Zeek
renames (and compresses) it away and starts a new one, the rest of the old file is read through the open
descriptor before the new file is opened: no line lost, none read twice. `Position` says where a restart
resumes: the file (device, inode and a hash of its first bytes, i.e. the header and first record) and the
byte offset of the first line not yet handed out. Damage is counted by kind (`PROBLEMS`), never fatal.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from sensor.sources.zeek.base import (
    LOST,
    MALFORMED,
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    ROTATED,
    TRUNCATED_FILE,
    TRUNCATED_GZIP,
    Position,
    ZeekRecord,
)
from sensor.sources.zeek.files import Lines, LogFile, discover, identity
from sensor.sources.zeek.parser import LineParser

log = logging.getLogger(__name__)


def read_log(
    path: Path,
    *,
    log_name: str | None = None,
    problems: Counter[str] | None = None,
    ts_substitute: float | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> list[ZeekRecord]:
    """Every record of one file (plain or gzip, TSV or JSON), e.g. a fixture read in place."""
    name = log_name or path.name.split(".", 1)[0]
    counts = problems if problems is not None else Counter()
    parser = LineParser(name, str(path), counts, ts_substitute)
    src = Lines(path, problems=counts, max_line=max_line_bytes, max_bytes=max_file_bytes)
    try:
        out = [r for start, line in src.lines(parser.is_header) if (r := parser.parse(line, start)) is not None]
        tail = src.rest()
        if tail and (r := parser.parse(tail, src.offset)) is not None:
            out.append(r)
        if src.damaged:
            counts[TRUNCATED_GZIP if src.gz else MALFORMED] += 1
    finally:
        src.close()
    return out


class LogStream:
    """One log (e.g. `conn`) in one directory: rotated files oldest first, then the current file, followed.

    `done` holds the identities of files already read completely (kept in the state file), so a restart reads
    neither them nor the part of the current file before `position`. In follow mode the current file's last
    partial line waits for its newline; a rotated file that is still being compressed (modified less than
    `settle_s` ago) waits for the next poll.
    """

    def __init__(
        self,
        directory: Path,
        log_name: str,
        *,
        follow: bool,
        problems: Counter[str],
        position: Position | None = None,
        done: Sequence[str] = (),
        ts_substitute: float | None = None,
        settle_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_file_bytes = max_file_bytes
        self.directory = directory
        self.log = log_name
        self.follow = follow
        self.problems = problems
        self.ts_substitute = ts_substitute
        self.settle_s = settle_s
        self.clock = clock
        self.done: list[str] = list(done)
        self._done_set = set(self.done)
        self._open: Lines | None = None
        self._parser: LineParser | None = None
        self._open_current = False
        self._resume = position
        self._held: ZeekRecord | None = None
        self._held_pos: Position | None = None
        self._last: Position | None = None  # the current file's end, after a one-shot run read it
        self._idents: dict[tuple[str, int, float], str] = {}

    @property
    def current_path(self) -> Path:
        return self.directory / f"{self.log}.log"

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    # ---- positions -------------------------------------------------------------------------------------------
    @property
    def held_ts(self) -> float | None:
        """ts of the record held back by the last `read(horizon)` (the next one this stream hands out)."""
        return self._held.ts if self._held is not None else None

    @property
    def exhausted(self) -> bool:
        """Nothing held back (in a one-shot run after a `read`: everything available was handed out)."""
        return self._held is None

    def position(self) -> Position | None:
        """Where a restart resumes (the first line not handed out)."""
        if self._held_pos is not None:
            return self._held_pos
        if self._open is not None:
            return self._open.position()
        return self._resume or self._last

    def _mark_done(self, ident: str) -> None:
        if ident not in self._done_set:
            self._done_set.add(ident)
            self.done.append(ident)
            del self.done[:-256]  # bounded: only the recent rotated files can still be in the directory

    # ---- opening files ---------------------------------------------------------------------------------------
    def _start(self, path: Path, current: bool, offset: int = 0) -> bool:
        try:
            src = Lines(path, problems=self.problems, max_line=self.max_line_bytes, max_bytes=self.max_file_bytes)
        except OSError as exc:
            log.warning("%s: cannot open: %s", path, exc)
            return False
        parser = LineParser(self.log, str(path), self.problems, self.ts_substitute)
        # Re-read the part before the offset for its header lines (the schema in force at the offset).
        if offset:
            for start, line in src.lines(parser.is_header):
                if line.startswith(b"#"):
                    parser.header(line, count=False)  # counted when it was first read
                if start + len(line) + 1 >= offset:
                    break
            if src.offset != offset:
                log.warning("%s: resume offset %d not at a line end; reading from %d", path, offset, src.offset)
        self._open, self._parser, self._open_current = src, parser, current
        return True

    def _pending_rotated(self) -> list[LogFile]:
        """Rotated files not read yet, oldest first (skipping those still being written)."""
        now = self.clock()
        out = []
        for f in discover(self.directory, self.log):
            if f.current:
                continue
            if self.follow:
                try:
                    if now - f.path.stat().st_mtime < self.settle_s:
                        continue
                except OSError:
                    continue
            if self._file_done(f.path):
                continue
            out.append(f)
        return out

    def _file_done(self, path: Path) -> bool:
        """A rotated file already read: the hash of its header and first record is a known identity."""
        if not self._done_set:
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        key = (str(path), st.st_size, st.st_mtime)
        ident = self._idents.get(key)
        if ident is None:
            src = None
            try:
                src = Lines(path)
                for _ in src.lines(LineParser.is_header_line):
                    if src.ident_done:
                        break
                ident = self._idents[key] = src.ident
            except OSError:
                return False
            finally:
                if src is not None:
                    src.close()
        return ident in self._done_set

    def _restore(self) -> None:
        """Reopen the file of the saved position: the current file (same inode, same first bytes), else the
        rotated file with the same first bytes (renamed or compressed since), else report it lost."""
        pos, self._resume = self._resume, None
        if pos is None:
            return
        cur = self.current_path
        try:
            st = cur.stat()
            same = (st.st_dev, st.st_ino) == (pos.dev, pos.inode)
        except OSError:
            same = False
        if same and identity(cur, pos.ident_len) == pos.ident:
            self._start(cur, True, pos.offset)
            return
        for f in discover(self.directory, self.log):
            if not f.current and identity(f.path, pos.ident_len) == pos.ident:
                self._start(f.path, False, pos.offset)
                return
        self.problems[LOST] += 1
        log.warning(
            "%s: the file being read at the last stop (%s, offset %d) is no longer in %s; lines after it are lost",
            self.log,
            pos.path,
            pos.offset,
            self.directory,
        )

    # ---- reading ---------------------------------------------------------------------------------------------
    def read(self, horizon: float | None = None) -> list[ZeekRecord]:
        """Records available now (up to the first one later than `horizon`, which is held for the next call)."""
        out: list[ZeekRecord] = []
        if self._held is not None:
            if horizon is not None and self._held.ts is not None and self._held.ts > horizon:
                return out
            out.append(self._held)
            self._held, self._held_pos = None, None
        if self._resume is not None:
            self._restore()
        while True:
            if self._open is None and not self._next_file():
                return out
            assert self._open is not None and self._parser is not None
            src, parser = self._open, self._parser
            tailing = self._open_current and self.follow
            # Look for a rotation *before* reading to the end: Zeek closes a file before renaming it, so once
            # it is renamed, reading the descriptor to its end gets every line it will ever have.
            moved = self._rotated_away(src) if tailing else None
            for start, line in src.lines(parser.is_header):
                rec = parser.parse(line, start)
                if rec is None:
                    continue
                if horizon is not None and rec.ts is not None and rec.ts > horizon:
                    self._held = rec
                    self._held_pos = Position(str(src.path), src.dev, src.inode, start, src.ident, src.ident_len)
                    return out
                out.append(rec)
            if tailing and moved is None:
                return out  # still the current file: wait for more lines
            if moved == "truncated":
                self.problems[TRUNCATED_FILE] += 1
                log.warning("%s: truncated in place (copytruncate?); reading it again from the start", src.path)
                self._close_open()
                self._start(self.current_path, True)
                continue
            if moved == "renamed":
                self.problems[ROTATED] += 1
                log.info("%s: rotated while being read; old file read to its end, opening the new one", src.path)
            if self._finish_file(src, parser, out):
                return out

    def _finish_file(self, src: Lines, parser: LineParser, out: list[ZeekRecord]) -> bool:
        """Close a file read to its end, after its last line without a newline; True if this run is done."""
        one_shot_current = self._open_current and not self.follow
        tail = src.rest()
        if tail and one_shot_current:
            # A last line without its newline: Zeek may be writing it. Take it if it parses whole (a file
            # written by other tools), else leave it for the next run.
            probe = Counter[str]()
            rec = LineParser.parse_with(parser, probe, tail, src.offset)
            if rec is not None:
                out.append(rec)
                src.offset += len(tail)
        elif tail.strip():
            self.problems[MALFORMED] += 1
        if src.damaged:
            self.problems[TRUNCATED_GZIP if src.gz else MALFORMED] += 1
        if one_shot_current:
            self._last = src.position()
        else:
            self._mark_done(src.ident)
        self._close_open()
        return one_shot_current

    def _close_open(self) -> None:
        if self._open is not None:
            self._open.close()
        self._open, self._parser = None, None

    def _next_file(self) -> bool:
        pending = self._pending_rotated()
        if pending:
            return self._start(pending[0].path, False)
        if self._last is not None and not self.follow:
            return False  # a one-shot run reads the current file once
        if self.current_path.exists():
            return self._start(self.current_path, True)
        return False

    def _rotated_away(self, src: Lines) -> str | None:
        """None while `src` is still the current file; 'renamed' or 'truncated' otherwise."""
        try:
            st = os.stat(self.current_path)
            cur: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            cur = None
        if cur == (src.dev, src.inode):
            try:
                size = os.fstat(src.fileno()).st_size
            except OSError:
                return None
            return "truncated" if size < src.offset + len(src.buf) else None
        return "renamed"
