-- id: R8
-- title: Mediation Server: SRTP to the internal next hop, MTLS when the gateway trunk is TLS
-- severity: per-row
-- requirement: "media flowing in both directions between the Mediation Server and its internal next hop is
--   also encrypted using SRTP." "TLS is optional but strongly recommended between the Mediation Server and
--   media gateway. If TLS is configured on this link, MTLS is required." SRTPMode: "If the gateway is
--   configured with Transmission Control Protocol (TCP) as the transport, SRTPMode is internally set to
--   NotSupported. Default: Required".
-- source: [ENC]; [TRUNK]; [GW]
-- description: (a) Mediation <-> internal next hop (not a gateway): unencrypted media is a violation when
--   the verdict passes the evidence bar R7 uses (plain_media_convicts: confidence >= 0.8 over >= 10
--   packets), else a warning. (b) Mediation/SBA/Front End <-> gateway signaling (the gateway_leg macro, the
--   same scope as R2's E2; PSTN and E9-1-1 gateways) over TLS: a CertificateRequest visibly answered
--   without a client certificate (tls_client_cert = false) is a violation; an answer not captured or no
--   visible certificate exchange a warning (unknown); plaintext SIP on the trunk a warning, a violation on a
--   trunk defined with TLS or over UDP (graded as R2 grades the same flow). (c)/(d) gateway-leg media (and
--   media bypass, client <-> gateway): plain RTP is a warning on a TLS trunk whose SRTPMode is Required,
--   info on a TCP trunk (plain RTP expected).
WITH m AS (
    SELECT f.*,
           is_gateway(f.orig_role) OR is_gateway(f.resp_role) AS gw_leg,
           (SELECT any_value(g.transport) FROM gateways g WHERE g.address IN (f.orig_h, f.resp_h)) AS gw_transport,
           (SELECT any_value(g.srtp_mode) FROM gateways g WHERE g.address IN (f.orig_h, f.resp_h)) AS gw_srtp
    FROM flows f
    WHERE 'mediation' IN (f.orig_role, f.resp_role)
       -- the gateway side of a Mediation role: an SBA, or a Front End with a collocated Mediation Server
       OR gateway_leg(f.orig_role, f.resp_role)
       OR ((is_gateway(f.orig_role) OR is_gateway(f.resp_role)) AND f.app IN ('rtp', 'rtcp', 'srtp', 'srtcp'))
),
judged AS (
    SELECT *,
           CASE
               WHEN NOT gw_leg AND media_encrypted = false
                   THEN CASE WHEN plain_media_convicts(media_confidence, orig_pkts + resp_pkts) THEN 'violation'
                             ELSE 'warning' END
               WHEN gw_leg AND app = 'tls' AND tls_cert_requested AND tls_client_cert = false THEN 'violation'
               WHEN gw_leg AND app = 'tls' AND tls_client_cert IS NOT true THEN 'warning'
               WHEN gw_leg AND sip_plain AND (gw_transport = 'tls' OR proto = 'udp') THEN 'violation'
               WHEN gw_leg AND sip_plain THEN 'warning'
               WHEN gw_leg AND media_encrypted = false AND coalesce(gw_transport, 'tcp') = 'tls'
                    AND coalesce(gw_srtp, 'Required') = 'Required' THEN 'warning'
               WHEN gw_leg AND media_encrypted = false THEN 'info'
           END AS severity,
           CASE
               WHEN NOT gw_leg AND media_encrypted = false
                   THEN format('(a) unencrypted media between the Mediation Server and its internal next hop ({} packets, confidence {}{}); evidence: {}',
                               txt(orig_pkts + resp_pkts), txt(printf('%.2f', media_confidence)),
                               CASE WHEN plain_media_convicts(media_confidence, orig_pkts + resp_pkts) THEN ''
                                    ELSE ': below the evidence bar of 0.8 over 10 packets' END,
                               txt(array_to_string(media_evidence, '; ')))
               WHEN gw_leg AND app = 'tls' AND tls_cert_requested AND tls_client_cert = false
                   THEN '(b) TLS gateway trunk without a client certificate after CertificateRequest (MTLS required)'
               WHEN gw_leg AND app = 'tls' AND tls_cert_requested
                   THEN '(b) TLS gateway trunk: server sent CertificateRequest; the client''s Certificate message was not seen (unknown)'
               WHEN gw_leg AND app = 'tls' THEN '(b) TLS gateway trunk: no certificate exchange visible (unknown)'
               WHEN gw_leg AND sip_plain AND gw_transport = 'tls'
                   THEN '(b) plaintext SIP on a gateway trunk defined with TLS'
               WHEN gw_leg AND sip_plain AND proto = 'udp'
                   THEN '(b) plaintext SIP over UDP on the gateway trunk (no Lync 2013 document allows UDP)'
               WHEN gw_leg AND sip_plain
                   THEN format('(b) plaintext SIP on the gateway trunk (transport {}): TLS strongly recommended', txt(gw_transport))
               ELSE format('(c) plain RTP on the gateway leg (trunk transport {}, SRTPMode {}); evidence: {}',
                           txt(gw_transport), txt(gw_srtp), txt(array_to_string(media_evidence, '; ')))
           END AS why
    FROM m
)
SELECT uid, severity, why || format(' [{}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM judged
WHERE severity IS NOT NULL
