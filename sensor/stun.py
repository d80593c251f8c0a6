"""STUN, TURN and MS-TURN facts per flow from dissected packets."""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.dissect import DissectedPacket

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
