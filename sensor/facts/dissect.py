"""Wireshark's dissectors through pyshark: the only module that imports pyshark.

It reads the small capture of fact packets the fast path selected and turns each dissected packet into
a DissectedPacket: the frame number and every field of the protocols we need, keyed by Wireshark's own
field names ("tls.handshake.type"), so nothing else depends on pyshark objects.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sensor.errors import SourceError

log = logging.getLogger(__name__)

# Top-level protocols whose fields we keep (tshark -J); x509 fields arrive inside "tls".
PROTOCOLS = "frame tls sip sdp http stun classicstun dtls"
DISPLAY_FILTER = "tls or sip or http.request or http.response or stun or classicstun or dtls"
PREFS = {
    # Some TLS server flights arrive out of order in real captures (shared/captures/README.md).
    "tcp.reassemble_out_of_order": "TRUE",
    "tcp.desegment_tcp_streams": "TRUE",
    "tls.desegment_ssl_records": "TRUE",
    "tls.desegment_ssl_application_data": "FALSE",
}
HEURISTICS = ("sip_tcp", "sip_udp", "stun_udp", "stun_tcp", "dtls_udp")


@dataclass(frozen=True)
class DissectedPacket:
    """One packet as Wireshark saw it: frame number (1-based, in the fact capture) and its fields."""

    number: int
    fields: Mapping[str, tuple[str, ...]]

    def get(self, name: str) -> tuple[str, ...]:
        return self.fields.get(name, ())

    def first(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def has(self, prefix: str) -> bool:
        return any(k == prefix or k.startswith(prefix + ".") for k in self.fields)


# Fields whose parts Wireshark reports as separate children; kept joined as "<field>:<value>" so that
# attributes without a value (a=sendrecv) or with parsed sub-fields (a=crypto) cannot shift the pairing.
PAIRS = {
    "sdp.media_attribute.field": ("sdp.media_attribute.value", "sdp.media_attribute"),
    "sdp.session_attr.field": ("sdp.session_attr.value", "sdp.session_attribute"),
}


def _flatten(obj: Any, key: str | None, out: dict[str, list[str]]) -> None:
    if isinstance(obj, dict):
        for pkey, (vkey, joined) in PAIRS.items():
            if pkey in obj:
                out.setdefault(joined, []).append(f"{obj[pkey]}:{obj.get(vkey, '')}")
        for k, v in obj.items():
            _flatten(v, k, out)
    elif isinstance(obj, list):
        for v in obj:
            _flatten(v, key, out)
    elif key is not None and obj is not None:
        out.setdefault(key, []).append(str(obj))


def tshark_path() -> str:
    """The tshark executable on PATH; SourceError when it is not installed."""
    path = shutil.which("tshark")
    if not path:
        raise SourceError("tshark not found on PATH (install the Debian package 'tshark': make setup)")
    return path


def dissect(capture: Path | int, *, decode_as: Iterable[tuple[str, int, str]] = ()) -> Iterator[DissectedPacket]:
    """Dissect every packet of `capture` (a file, or the read end of a pipe carrying pcap/pcapng) that
    carries TLS, SIP, HTTP, STUN or DTLS. A pipe's descriptor is closed when the dissection ends.

    Wireshark's TCP/UDP heuristics for TLS, SIP, HTTP, STUN and DTLS are on by default, so services on
    unusual ports are found without help; decode_as entries ("tcp", 3000, "tls") force a mapping.
    """
    import pyshark  # the one place pyshark is imported
    from pyshark.capture.capture import TSharkCrashException
    from pyshark.capture.pipe_capture import PipeCapture

    params: list[str] = ["-J", PROTOCOLS]
    for h in HEURISTICS:
        params += ["--enable-heuristic", h]
    options: dict[str, Any] = {
        "use_json": True,
        "display_filter": DISPLAY_FILTER,
        "override_prefs": PREFS,
        "decode_as": {f"{t}.port=={p}": proto for t, p, proto in decode_as},
        "custom_parameters": params,
        "tshark_path": tshark_path(),
    }
    if isinstance(capture, int):
        try:
            cap = PipeCapture(capture, **options)  # owns the descriptor from here on
        except BaseException:
            os.close(capture)
            raise
    else:
        cap = pyshark.FileCapture(str(capture), keep_packets=False, **options)
    complete = False
    try:
        for pkt in cap:
            fields: dict[str, list[str]] = {}
            for layer in pkt.layers:
                if layer.layer_name in ("eth", "ip", "ipv6", "tcp", "udp", "sll", "vlan"):
                    continue
                for one in (layer, *getattr(layer, "duplicate_layers", ())):
                    _flatten(getattr(one, "_all_fields", {}), None, fields)
            yield DissectedPacket(int(pkt.frame_info.number), {k: tuple(v) for k, v in fields.items()})
        complete = True
    finally:
        try:
            cap.close()
        except TSharkCrashException as exc:
            # pyshark's own close() stops at the exception before forgetting the process, so its destructor would
            # close (and raise) again, as an "exception ignored" warning: forget it here.
            getattr(cap, "_running_processes", set()).clear()
            # pyshark reads tshark's exit status when it cleans up. Seen now and then under load: status 255 after
            # tshark wrote its whole output (the end of its JSON was read). Said, not fatal; a crash before the
            # end of the output still raises from the iteration above.
            if not complete:
                raise
            log.warning("tshark exited with an error status after its output ended: %s", str(exc).splitlines()[0])


# The fields the fact extractors read (tls.py, sip.py, http.py, stun.py); only these cross the process
# boundary, so certificates' full trees stay in the worker.
KEEP_FIELDS = frozenset(
    {
        "tls.handshake.type",
        "tls.record.version",
        "tls.alert_message.desc",
        "tls.handshake.version",
        "tls.handshake.extensions.supported_version",
        "tls.handshake.session_id",
        "tls.handshake.extensions_server_name",
        "tls.handshake.cipherspec",
        "tls.handshake.certificates_length",
        "tls.handshake.certificate_length",
        "tls.handshake.ciphersuite",
        "x509ce.dNSName",
        "x509sat.uTF8String",
        "x509sat.printableString",
        "x509sat.IA5String",
        "sip.Method",
        "sip.Status-Code",
        "sip.Request-Line",
        "sip.Status-Line",
        "sdp.media.port",
        "sdp.media.proto",
        "sdp.connection_info.address",
        "sdp.media_attribute.field",
        "sdp.media_attribute",
        "sdp.session_attribute",
        "http.request.method",
        "http.request.uri",
        "http.host",
        "stun.type",
        "classicstun.type",
        "stun.att.type",
        "classicstun.att.type",
    }
)
KEEP_PREFIXES = ("stun.att.ms.", "dtls.use_srtp.")


def reduce(p: DissectedPacket) -> dict[str, Any]:
    """The wire form of a packet between the worker and the sensor: frame number and the kept fields."""
    return {
        "n": p.number,
        "f": {k: list(v) for k, v in p.fields.items() if k in KEEP_FIELDS or k.startswith(KEEP_PREFIXES)},
    }


def serve(fd_in: int, out: IO[str]) -> int:
    """Worker body: dissect the pcapng stream on fd_in, write one JSON line per packet to out."""
    n = 0
    for p in dissect(fd_in):
        out.write(json.dumps(reduce(p), separators=(",", ":")) + "\n")
        n += 1
    out.flush()
    return n


class DissectorProcess:
    """Wireshark's dissectors in a worker process fed by a pipe, so that neither tshark nor the parsing of
    its JSON competes with the fast path for this process's interpreter; `on_packet` is called, from a
    reader thread, with each DissectedPacket in frame order."""

    def __init__(self, read_fd: int, on_packet: Callable[[DissectedPacket], None]) -> None:
        tshark_path()  # fail early and clearly when tshark is missing
        self.on_packet = on_packet
        self.error: str | None = None
        self.packets = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sensor.facts.dissect"],
            stdin=read_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1 << 16,
        )
        os.close(read_fd)  # the worker holds it now
        self._stderr: list[str] = []
        self._err_thread = threading.Thread(target=self._read_stderr, name="dissector-stderr", daemon=True)
        self._thread = threading.Thread(target=self._read, name="dissector-reader", daemon=True)
        self._err_thread.start()
        self._thread.start()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip())
            del self._stderr[:-20]

    def _read(self) -> None:
        assert self._proc.stdout is not None
        try:
            for line in self._proc.stdout:
                msg = json.loads(line)
                self.packets += 1
                self.on_packet(DissectedPacket(int(msg["n"]), {k: tuple(v) for k, v in msg["f"].items()}))
        except Exception as exc:  # reported by wait()
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the worker to finish the stream; raise SourceError if it failed."""
        try:
            rc = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
            self.error = self.error or f"no answer within {timeout} s"
        self._thread.join()
        self._err_thread.join()
        if rc != 0 and not self.error:
            tail = next((ln for ln in reversed(self._stderr) if ln.strip()), f"exit code {rc}")
            self.error = tail
        if self.error:
            raise SourceError(f"Wireshark dissectors failed on the fact packets: {self.error}")

    def kill(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._thread.join()
        self._err_thread.join()


def main() -> int:
    """`python -m sensor.facts.dissect`: the worker; reads pcapng on stdin, writes JSON lines on stdout."""
    try:
        serve(os.dup(0), sys.stdout)
    except SourceError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the parent's error message
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
