"""Small checks the text protocol parsers (SIP, HTTP) share."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and other Unicode digits, which int() refuses."""
    return text.isascii() and text.isdigit()
