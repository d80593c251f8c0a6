"""Numba set-up: a compile cache keyed by the source of every compiled module.

Numba's own cache invalidates a function only when its own file changes, not when a compiled function it
calls in another module does; keying the cache directory by all kernel sources means an edit or an upgrade
never runs stale machine code. Import this module before any module that defines compiled functions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba

KERNEL_MODULES = (
    "fastpath/jit.py",
    "fastpath/packets.py",
    "fastpath/rtp.py",
    "fastpath/stream.py",
    "fastpath/tls_scan.py",
    "fastpath/table_kernels.py",
    "fastpath/packet_facts.py",
    "fastpath/kernel.py",
    "fastpath/flows.py",
    "sources/pcap_index.py",
)


def cache_dir() -> str:
    """The numba cache directory for this numba version and these kernel sources."""
    h = hashlib.sha256(numba.__version__.encode())
    base = Path(__file__).parent.parent  # the sensor package
    for name in KERNEL_MODULES:
        h.update((base / name).read_bytes())
    root = os.environ.get("LYNC_SENSOR_JIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lync-sensor", "numba"
    )
    return os.path.join(root, h.hexdigest()[:16])


numba.config.CACHE_DIR = cache_dir()  # type: ignore[attr-defined]
