"""STUN (RFC 5389), classic STUN (RFC 3489) and MS-TURN messages from raw bytes, incl. TCP framing.

A STUN message is a 20-byte header (type, length, magic cookie or the first 4 bytes of an RFC 3489
transaction id, transaction id) and TLV attributes padded to 4 bytes. [MS-TURN] §2.1.4 frames every
message on TCP as type (0x02 control, 0x03 end-to-end data), a reserved 0, and a 2-byte length."""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.facts.dissect import DissectedPacket

# Attributes only Microsoft's MS-TURN uses ([MS-TURN] §2.2.2): MAGIC-COOKIE 0x000F, MS-VERSION 0x8008,
# MS-SEQUENCE-NUMBER 0x8050, MS-SERVICE-QUALITY 0x8055, and the MS bandwidth/alternate attributes 0x8006.
MS_TURN_ATTRIBUTES = frozenset({0x000F, 0x8006, 0x8008, 0x8050, 0x8055, 0x8054, 0x8070})


@dataclass
class StunFacts:
    """STUN/TURN messages seen on one flow, and whether they are Microsoft's MS-TURN dialect."""

    messages: int = 0
    ms_turn: bool = False
    classic: int = 0
    # Native path: (messages, classic, ms_turn) of the reassembled TCP prefix, replaced at each re-parse,
    # and of everything else (UDP datagrams).
    stream: tuple[int, int, bool] = (0, 0, False)
    other: list[int] = field(default_factory=lambda: [0, 0, 0])
    types: set[int] = field(default_factory=set)  # message types seen (native path)
    attributes: set[int] = field(default_factory=set)  # attribute types seen (native path)

    def set_stream(self, messages: int, classic: int, ms_turn: bool) -> None:
        self.stream = (messages, classic, ms_turn)
        self._refresh()

    def add(self, messages: int, classic: int, ms_turn: bool) -> None:
        self.other[0] += messages
        self.other[1] += classic
        self.other[2] |= ms_turn
        self._refresh()

    def _refresh(self) -> None:
        self.messages = self.stream[0] + self.other[0]
        self.classic = self.stream[1] + self.other[1]
        self.ms_turn = self.stream[2] or bool(self.other[2])

    def observe(self, p: DissectedPacket, direction: int) -> None:
        types = p.get("stun.type")
        classic = p.get("classicstun.type")
        self.messages += len(types) + len(classic)
        self.classic += len(classic)
        attrs = set()
        for a in p.get("stun.att.type") + p.get("classicstun.att.type"):
            try:
                attrs.add(int(a, 16))
            except ValueError:
                continue
        if attrs & MS_TURN_ATTRIBUTES or any(k.startswith("stun.att.ms.") for k in p.fields):
            self.ms_turn = True

    def columns(self) -> dict[str, object]:
        return {"stun_messages": self.messages, "ms_turn": self.ms_turn}


MAGIC_COOKIE = b"\x21\x12\xa4\x42"
# RFC 3489 / [MS-TURN] message types: Binding, Shared Secret, Allocate, Send, Data indication, Set Active
# Destination and their answers (the same table the fast path classifies by, sensor/packets.py).
LEGACY_TYPES = frozenset(
    {0x0001, 0x0101, 0x0111, 0x0002, 0x0102, 0x0112, 0x0003, 0x0103, 0x0113, 0x0004, 0x0104, 0x0114}
    | {0x0115, 0x0006, 0x0106, 0x0116, 0x0117}
)
FRAME_CONTROL, FRAME_DATA = 0x02, 0x03


@dataclass
class StunTally:
    """What a run of STUN messages showed."""

    messages: int = 0
    classic: int = 0
    ms_turn: bool = False


def message_at(
    data: bytes, pos: int, end: int, tally: StunTally, types: set[int], attrs: set[int], *, cut_ok: bool = False
) -> int:
    """Read the STUN message at data[pos:end]; returns the offset after it, or -1 when none is there.

    cut_ok: a datagram whose message carries the magic cookie counts even when cut short or when its
    length is not a multiple of 4 (MS-TURN sends such messages; Wireshark dissects them too)."""
    if end - pos < 20 or data[pos] & 0xC0:
        return -1
    mtype = (data[pos] << 8) | data[pos + 1]
    mlen = (data[pos + 2] << 8) | data[pos + 3]
    stop = pos + 20 + mlen
    modern = data[pos + 4 : pos + 8] == MAGIC_COOKIE
    if modern and cut_ok:
        stop = min(stop, end)
    elif stop > end or (modern and mlen & 3):
        return -1
    if not modern and mtype not in LEGACY_TYPES:
        return -1
    a = pos + 20
    seen: list[int] = []
    while a + 4 <= stop:
        at = (data[a] << 8) | data[a + 1]
        alen = (data[a + 2] << 8) | data[a + 3]
        seen.append(at)
        a += 4 + ((alen + 3) & ~3)
    tally.messages += 1
    if not modern:
        tally.classic += 1
    types.add(mtype)
    attrs.update(seen)
    if not MS_TURN_ATTRIBUTES.isdisjoint(seen):
        tally.ms_turn = True
    return stop


def parse_datagram(data: bytes, types: set[int], attrs: set[int]) -> StunTally:
    """One UDP payload: one STUN message filling the datagram (RFC 5389 §7.3; RFC 3489 §11.1)."""
    tally = StunTally()
    n = len(data)
    if n >= 20 and (data[4:8] == MAGIC_COOKIE or 20 + ((data[2] << 8) | data[3]) == n):
        message_at(data, 0, n, tally, types, attrs, cut_ok=True)
    return tally


def starts_stun_stream(data: bytes) -> bool:
    """Framed MS-TURN, or an RFC 5389 message with the cookie, at the start of a TCP direction."""
    if len(data) >= 4 and data[0] in (FRAME_CONTROL, FRAME_DATA) and data[1] == 0:
        return len(data) < 24 or not data[4] & 0xC0
    return len(data) >= 8 and not data[0] & 0xC0 and data[4:8] == MAGIC_COOKIE


def parse_stream(data: bytes, pos: int, types: set[int], attrs: set[int]) -> StunTally:
    """STUN over TCP from pos on: [MS-TURN] framed messages, or RFC 5389/6062 messages and ChannelData."""
    tally = StunTally()
    n = len(data)
    while pos + 4 <= n:
        b0 = data[pos]
        ln = (data[pos + 2] << 8) | data[pos + 3]
        if b0 in (FRAME_CONTROL, FRAME_DATA) and data[pos + 1] == 0:
            # The frame bounds the message: one cut short inside it still counts, as in a datagram.
            end = min(n, pos + 4 + ln)
            read = message_at(data, pos + 4, end, tally, types, attrs, cut_ok=True) if b0 == FRAME_CONTROL else 0
            if read < 0 and pos + 4 + ln <= n:
                break
            pos += 4 + ln
        elif 0x40 <= b0 <= 0x7F:  # TURN ChannelData (RFC 5766 §11.5): padded to 4 bytes over TCP
            pos += 4 + ((ln + 3) & ~3)
        else:
            nxt = message_at(data, pos, n, tally, types, attrs)
            if nxt < 0:
                break
            pos = nxt
    return tally
