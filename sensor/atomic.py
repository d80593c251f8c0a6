"""One atomic write for every file the sensor makes: a temporary name in the same directory, then rename or link.

A reader sees the old file or the new one, never half of one. `replace=True` renames over the target (state
and status files, captures); `replace=False` hard-links to a name that must not exist yet and raises
`FileExistsError` if it does, so a writer never takes a name another writer made (the lake's files). The
module imports nothing of the sensor, so `sensor.synth` can use it and stay standalone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

# os.link's errors on a filesystem without hard links (replace=False cannot be honoured there)
NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})

Writer = Callable[[BinaryIO], object]


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], *, replace: bool = True, durable: bool = True, tmp_name: str | None = None
) -> Iterator[BinaryIO]:
    """A buffered binary file that takes `path`'s name only if the `with` body finishes without an error.

    `durable` fsyncs the file before it is named and the directory after; `tmp_name` names the temporary
    file (default `.<name>.<pid>.<random>.tmp`) for writers that sweep their own leftovers.
    """
    target = Path(path)
    tmp = target.with_name(tmp_name or f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb", buffering=1 << 20) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # FileExistsError when the name is taken: the file stays the other writer's
        if durable:
            _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(
    path: str | os.PathLike[str],
    data_or_writer: bytes | str | Writer,
    *,
    replace: bool = True,
    durable: bool = True,
    tmp_name: str | None = None,
) -> Path:
    """Write bytes, UTF-8 text, or whatever `writer(fh)` writes, to `path` atomically; returns `path`."""
    with atomic_open(path, replace=replace, durable=durable, tmp_name=tmp_name) as fh:
        if isinstance(data_or_writer, str):
            fh.write(data_or_writer.encode())
        elif isinstance(data_or_writer, bytes):
            fh.write(data_or_writer)
        else:
            data_or_writer(fh)
    return Path(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
