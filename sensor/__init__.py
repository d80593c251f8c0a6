"""Passive sensor for Lync Server 2013 protection rules (MTLS, TLS, SRTP, HTTPS)."""

__version__ = "0.1.0"
