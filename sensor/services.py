"""The service-naming rule every front end shares: which port-catalogue row names a flow."""

from __future__ import annotations

from sensor.catalogue import Catalogue

# Apps that are media: only they may take their service from a client port range.
MEDIA_APPS = ("rtp", "srtp", "rtcp", "srtcp")


def service_for(
    catalogue: Catalogue,
    proto: str,
    orig_p: int,
    resp_p: int,
    orig_role: str,
    resp_role: str,
    app: object,
) -> tuple[str | None, str | None]:
    """(service, source) of a flow from the port catalogue, or (None, None).

    Client media ranges span 1024-65535 ([CLIRANGE] defaults), so a client-range row names a flow only when
    the flow is media-shaped (its app is one of MEDIA_APPS).
    """
    row = catalogue.match(proto, orig_p, resp_p, orig_role, resp_role)
    if row is None or (row.role == "client" and row.is_range and app not in MEDIA_APPS):
        return None, None
    return row.service, row.source
