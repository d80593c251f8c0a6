"""Network-condition cases: real OpenSSL handshakes and long-SDP SIP, reordered, lost, duplicated, fragmented.

Each case is a small capture plus what a sensor must report about it: per flow the facts (null where the bytes
on the wire cannot show them) and the findings (rule id -> severity). The TLS sessions are real: python's ssl
module (OpenSSL) talks to itself over memory BIOs, with a root -> intermediate -> leaf chain of about 6 KB
made with `cryptography` from fixed RSA keys, so only the handshake randoms change from run to run.
The keys and chain are built in `pki`, the sessions and their TCP frames in `tls_capture`, the IP fragments in
`fragments`; this module holds the site, the cases and what each must show.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sensor.synth import packets as pk
from sensor.synth import sip
from sensor.synth.fragments import SDP_ENCRYPTION, SIP_UDP, fragmented_frames, sip_call
from sensor.synth.pcapio import PcapWriter, atomic_output
from sensor.synth.pki import POOL
from sensor.synth.tls_capture import (
    CIPHER_CODE,
    Endpoints,
    Segment,
    handshake_messages,
    record_starts,
    tcp_conversation,
    tcp_frames,
    tls_session,
)

# The example site (tests/conftest.py ISSUE_EXAMPLE_TOML); the IPv6 addresses are added by SITE_V6.
FE1, FE2, MEDIATION = "10.0.1.10", "10.0.1.11", "10.0.1.20"
FE1_V6, MEDIATION_V6 = "fd00:1::10", "fd00:1::20"
EDGE_INT, EDGE_INT_V6 = "10.0.2.10", "fd00:2::10"
SITE_V6 = {"front_end": FE1_V6, "mediation": MEDIATION_V6, "internal": "fd00::/8"}
SIP_TLS, CLIENT_PORT = 5061, 50123
START_US = 1_795_687_200 * 1_000_000  # 2026-11-26T10:00:00Z
GAP_US = 150  # between consecutive captured frames

# TLS handshake types (RFC 5246 §7.4).
_HS_CERTIFICATE, _HS_CERTIFICATE_REQUEST = 11, 13

Facts = dict[str, object]


def _sip_over_tls() -> list[tuple[bytes, bytes]]:
    """Two Front Ends exchanging SIP inside the session: a 3 KB NOTIFY each way is several segments."""
    rng = random.Random("netcond-sip-tls")
    dialog = sip.Dialog(rng, "TLS", (FE2, CLIENT_PORT), (FE1, SIP_TLS), f"sip:{POOL}", f"sip:{POOL}")
    body = (rng.randbytes(1200).hex() + "\r\n").encode()
    notify = dialog.request("NOTIFY", body, extra=(("Event", "registration"),))
    return [(notify, dialog.respond(notify, 200, "OK", body))]


# --- cases -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowExpect:
    """One flow the sensor must report, its facts (None = must be null) and its findings (rule -> severity).

    oriented=False: either end may be the originator (the first datagram of the flow was damaged on purpose)."""

    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    facts: Facts
    findings: dict[str, str]
    oriented: bool = True


@dataclass(frozen=True)
class Case:
    """A small capture, what the sensor must report, and what Wireshark (whole file) must find in it."""

    name: str
    why: str
    frames: tuple[bytes, ...]
    flows: tuple[FlowExpect, ...]
    wireshark: Facts = field(default_factory=dict)


def write_case(case: Case, directory: Path) -> Path:
    """The case as a classic pcap (Ethernet) in directory; frames GAP_US apart in capture order."""
    path = Path(directory) / f"{case.name}.pcap"
    with atomic_output(path) as fh:
        writer = PcapWriter(fh, pk.LINKTYPE_ETHERNET)
        for i, frame in enumerate(case.frames):
            writer.write(START_US + i * GAP_US, frame)
    return path


def tls_facts(
    first_byte: int | None = 0x16,
    version: str | None = "TLSv12",
    cipher: str | None = CIPHER_CODE,
    server_cert: bool | None = True,
    requested: bool | None = True,
    client_cert: bool | None = True,
) -> Facts:
    """The TLS columns a case expects; the defaults are a whole mutual-TLS 1.2 handshake."""
    return {
        "orig_first_byte": first_byte,
        "tls_version": version,
        "tls_cipher": cipher,
        "tls_server_cert": server_cert,
        "tls_cert_requested": requested,
        "tls_client_cert": client_cert,
    }


TLS_ENDS = Endpoints(FE2, CLIENT_PORT, FE1, SIP_TLS)
Transform = Callable[[list[Segment]], list[Segment]]


def _data(segs: Sequence[Segment], side: bool, phase: str = "handshake") -> list[int]:
    """Indexes of the payload-carrying segments of one direction in one phase."""
    return [i for i, s in enumerate(segs) if s.from_orig == side and s.payload and s.phase == phase]


def _reorder(segs: list[Segment]) -> list[Segment]:
    """Per direction, the handshake segments are permuted over their capture slots: a segment that starts in
    the middle of a record comes first (what a sensor reading in capture order takes for the stream's start),
    the stream's first segment comes last, the rest shuffled."""
    out = list(segs)
    rng = random.Random("netcond-reorder")
    for side in (True, False):
        slots = _data(out, side)
        ordered = sorted((out[i] for i in slots), key=lambda seg: seg.offset)
        starts = set(record_starts(b"".join(seg.payload for seg in ordered)))
        first, rest = ordered[0], ordered[1:]
        rng.shuffle(rest)
        lead = next(j for j, seg in enumerate(rest) if seg.offset not in starts)
        rest.insert(0, rest.pop(lead))
        for i, seg in zip(slots, [*rest, first], strict=True):
            out[i] = seg
    return out


def _retransmit(different: bool) -> Transform:
    def apply(segs: list[Segment]) -> list[Segment]:
        """Copies of each direction's first data segment after the client's second flight (first copy wins)."""
        firsts = [segs[_data(segs, side)[0]] for side in (True, False)]
        copies = []
        for s in firsts:
            payload = s.payload
            if different:  # a copy that, read instead of the original, would look like plaintext SIP
                payload = (b"NEGOTIATE sip:" + b"x" * len(payload))[: len(payload)]
            copies.append(Segment(s.from_orig, s.seq, s.ack, s.flags, payload, s.offset, s.phase, s.flight))
        at = _data(segs, True)[-1] + 1
        return segs[:at] + copies + segs[at:]

    return apply


def _drop_certificate_request(segs: list[Segment]) -> list[Segment]:
    """Lose the server segment that carries the start of the CertificateRequest (after the whole Certificate)."""
    flight = b"".join(s.payload for s in segs if not s.from_orig and s.flight == 1)
    msgs = {t: (a, b) for t, a, b in handshake_messages(flight)}
    cert_end, req_start = msgs[_HS_CERTIFICATE][1], msgs[_HS_CERTIFICATE_REQUEST][0]
    for i, s in enumerate(segs):
        if not s.from_orig and s.flight == 1 and s.offset <= req_start < s.offset + len(s.payload):
            if s.offset < cert_end:
                raise ValueError("this MSS puts the Certificate's tail in the lost segment: choose another")
            return segs[:i] + segs[i + 1 :]
    raise ValueError("no CertificateRequest in the server flight")


def _drop_after_handshake(segs: list[Segment]) -> list[Segment]:
    i = _data(segs, True, "data")[1]
    return segs[:i] + segs[i + 1 :]


def _truncate_server_flight(keep: int) -> Transform:
    def apply(segs: list[Segment]) -> list[Segment]:
        """The capture ends after `keep` segments of the server's first flight."""
        return segs[: [i for i in _data(segs, False) if segs[i].flight == 1][keep - 1] + 1]

    return apply


def _midstream(segs: list[Segment]) -> list[Segment]:
    """The capture starts at the client's second flight: no SYN, no hellos, no server certificate flight."""
    return segs[_data(segs, True)[1] :]


def _duplicate(segs: list[Segment]) -> list[Segment]:
    return [s for s in segs for _ in range(2)]


def _tcp_case(
    name: str,
    why: str,
    mss: int,
    transform: Transform | None,
    facts: Facts,
    findings: dict[str, str],
    client_cert: bool = True,
) -> Case:
    session = tls_session(client_cert, _sip_over_tls())
    segs = tcp_conversation(session, mss, f"netcond-{name}")
    if transform is not None:
        segs = transform(segs)
    ends = TLS_ENDS
    flow = FlowExpect(ends.orig_h, ends.orig_p, ends.resp_h, ends.resp_p, "tcp", {"app": "tls", **facts}, findings)
    wireshark = dict(facts)
    if mss <= 256 and facts["tls_server_cert"]:
        # the whole Certificate record is reassembled from at least 20 segments
        wireshark["min_certificate_segments"] = 20
    return Case(name, why, tuple(tcp_frames(TLS_ENDS, segs)), (flow,), wireshark)


def tcp_cases() -> list[Case]:
    """Front End -> Front End SIP over MTLS on 5061 (R1's territory) under each TCP condition."""
    complete, mtls_missing = tls_facts(), {"R1": "violation"}
    empty = tls_facts(client_cert=False)
    return [
        _tcp_case("tcp-in-order", "baseline: every segment once, in order", 1460, None, complete, {}),
        _tcp_case("tcp-reordered", "each direction's first segment arrives last", 536, _reorder, complete, {}),
        _tcp_case("tcp-retransmit-same", "first segments retransmitted, same bytes", 536, _retransmit(False),
                  complete, {}),
        _tcp_case(
            "tcp-retransmit-different", "retransmitted copies carry other bytes: first copy wins", 536,
            _retransmit(True), complete, {},
        ),
        _tcp_case(
            "tcp-hole-in-handshake", "the segment with the CertificateRequest is lost: past the hole is unknown", 512,
            _drop_certificate_request, tls_facts(requested=None), {},
        ),
        _tcp_case("tcp-hole-after-handshake", "a data segment after the handshake is lost", 536,
                  _drop_after_handshake, complete, {}),
        _tcp_case("tcp-long-server-flight", "3-certificate chain over 20+ segments (MSS 256)", 256, None, complete, {}),
        _tcp_case("tcp-empty-client-cert", "CertificateRequest answered by an empty Certificate", 1460, None, empty,
                  mtls_missing, client_cert=False),
        _tcp_case(
            "tcp-empty-client-cert-long-flight", "the same behind a 20+ segment server flight", 256, None, empty,
            mtls_missing, client_cert=False,
        ),
        _tcp_case(
            "tcp-truncated-server-flight", "the capture ends 10 segments into the server flight", 256,
            _truncate_server_flight(10), tls_facts(server_cert=None, requested=None, client_cert=None),
            {"R1": "warning"},
        ),
        _tcp_case(
            "tcp-midstream", "picked up at the client's second flight: no SYN, no hellos", 536, _midstream,
            tls_facts(first_byte=None, version=None, cipher=None, server_cert=None, requested=None), {},
        ),
        _tcp_case("tcp-duplicated", "every packet captured twice", 536, _duplicate, complete, {}),
    ]  # fmt: skip


# --- IP fragments: Front End -> Mediation SIP over UDP with a long SDP ------------------------------------------


def _sdp_facts(ports: Sequence[int]) -> Facts:
    return {
        "sip_plain": True,
        "sdp_protos": ["RTP/AVP"],
        "sdp_crypto": True,
        "sdp_encryption": SDP_ENCRYPTION,
        "sdp_media_ports": sorted(ports),
    }


def fragment_cases() -> list[Case]:
    """Front End -> Mediation SIP over UDP (R2: violation; R17: UDP 5060 is no documented server port), the
    INVITE and the 200 OK each IP-fragmented. Damage (overlap, a lost fragment) is done to the INVITE only:
    the INVITE is then dropped whole (RFC 5722) and the flow holds the 200 OK's answer alone."""
    cases = []
    findings = {"R2": "violation", "R17": "warning"}
    for version, caller, callee, relay in ((4, FE1, MEDIATION, EDGE_INT), (6, FE1_V6, MEDIATION_V6, EDGE_INT_V6)):
        call = sip_call(caller, callee, relay, f"netcond-sip-v{version}")
        for mode in ("in-order", "reversed", "overlap", "incomplete"):
            damaged = mode in ("overlap", "incomplete")
            frames = fragmented_frames(caller, callee, call.invite, 0x3A01, mode)
            frames += fragmented_frames(callee, caller, call.ok, 0x7B02, "in-order" if damaged else mode)
            ports = call.answer_ports if damaged else call.offer_ports + call.answer_ports
            flow = FlowExpect(
                caller,
                SIP_UDP,
                callee,
                SIP_UDP,
                "udp",
                {"app": "sip", **_sdp_facts(ports)},
                findings,
                oriented=not damaged,
            )
            # Wireshark reassembles overlapping fragments (flagging the overlap); it cannot rebuild a lost one.
            seen = call.answer_ports if mode == "incomplete" else call.offer_ports + call.answer_ports
            wireshark = {
                **_sdp_facts(seen),
                "sip_methods": [] if mode == "incomplete" else ["INVITE"],
                "overlap": mode == "overlap",
            }
            why = f"IPv{version} fragments {mode}"
            cases.append(Case(f"frag-v{version}-{mode}", why, tuple(frames), (flow,), wireshark))
    return cases


def all_cases() -> list[Case]:
    """Every network-condition case: TCP conditions, then IP fragments."""
    return tcp_cases() + fragment_cases()
