"""Native fact parsers: TLS, SIP/SDP, HTTP, STUN/MS-TURN and DTLS facts from reassembled bytes."""

from sensor.facts.flowfacts import FlowFacts

__all__ = ["FlowFacts"]
