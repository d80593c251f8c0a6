-- id: R12
-- title: Edge external interface inventory (only the documented listeners)
-- severity: per-row
-- requirement: Edge external firewall summary: Access 443 (TLS), 5061 (MTLS), XMPP 5269; Web Conferencing
--   443; A/V 443, 3478/UDP, 50,000-59,999; outbound HTTP 80 (CRL) and DNS 53. UDP 50,000-59,999 is "Required
--   only for federation with partners running Office Communications Server 2007".
-- source: [EDGE]; [EDGE-HLB]; [AVFW]; [FED]
-- description: Flows to or from an Edge external address, judged against the rows of the service that
--   address holds: edge_external_access (in: TCP 443, 5061, 5269; out: TCP 80, 53, 5061, 5269, UDP 53),
--   edge_external_webconf (in: TCP 443), edge_external_av (in: TCP 443, UDP 3478, TCP 50000-59999; out:
--   TCP 443 and UDP 3478 from the media range 50000-59999, TCP 50000-59999). A single shared address
--   (edge_external) holds all three services: the union. Anything else: warning (undocumented listener or
--   destination), whatever the source port. UDP 50000-59999 on the A/V side: info (OCS 2007 federation only).
WITH allowed(service, inbound, proto, port_lo, port_hi, src_lo, src_hi) AS (
    VALUES ('access', true, 'tcp', 443, 443, 0, 65535), ('access', true, 'tcp', 5061, 5061, 0, 65535),
           ('access', true, 'tcp', 5269, 5269, 0, 65535),
           ('access', false, 'tcp', 80, 80, 0, 65535), ('access', false, 'tcp', 53, 53, 0, 65535),
           ('access', false, 'udp', 53, 53, 0, 65535), ('access', false, 'tcp', 5061, 5061, 0, 65535),
           ('access', false, 'tcp', 5269, 5269, 0, 65535),
           ('webconf', true, 'tcp', 443, 443, 0, 65535),
           ('av', true, 'tcp', 443, 443, 0, 65535), ('av', true, 'udp', 3478, 3478, 0, 65535),
           ('av', true, 'tcp', 50000, 59999, 0, 65535),
           -- Edge-to-Edge media and candidate checks go from 50000-59999 to the partner's TCP 443 / UDP 3478
           ('av', false, 'tcp', 443, 443, 50000, 59999), ('av', false, 'udp', 3478, 3478, 50000, 59999),
           ('av', false, 'tcp', 50000, 59999, 0, 65535)
),
e AS (
    SELECT f.*, is_edge_external(f.resp_role) AS inbound,
           CASE WHEN is_edge_external(f.resp_role) THEN f.resp_p ELSE f.orig_p END AS edge_port,
           CASE WHEN is_edge_external(f.resp_role) THEN f.resp_role ELSE f.orig_role END AS edge_role
    FROM flows f
    WHERE is_edge_external(f.resp_role) OR is_edge_external(f.orig_role)
),
judged AS (
    SELECT *,
           CASE edge_role WHEN 'edge_external_access' THEN 'Access Edge'
                          WHEN 'edge_external_webconf' THEN 'Web Conferencing Edge'
                          WHEN 'edge_external_av' THEN 'A/V Edge'
                          ELSE 'Edge (shared address)' END AS edge_service,
           CASE
               WHEN EXISTS (SELECT 1 FROM allowed a
                            WHERE (a.service = CASE edge_role WHEN 'edge_external_access' THEN 'access'
                                                              WHEN 'edge_external_webconf' THEN 'webconf'
                                                              WHEN 'edge_external_av' THEN 'av' END
                                   OR edge_role = 'edge_external')
                              AND a.inbound = e.inbound AND a.proto = e.proto
                              AND e.resp_p BETWEEN a.port_lo AND a.port_hi
                              AND e.orig_p BETWEEN a.src_lo AND a.src_hi) THEN NULL
               WHEN proto = 'udp' AND edge_port BETWEEN 50000 AND 59999
                    AND edge_role IN ('edge_external', 'edge_external_av') THEN 'info'
               ELSE 'warning'
           END AS severity
    FROM e
)
SELECT uid, severity,
       CASE WHEN severity = 'info'
            THEN format('UDP media on the Edge media range port {} (documented only for OCS 2007 federation)', edge_port)
            WHEN inbound THEN format('undocumented listener on the {} external interface: {} {}', edge_service, proto,
                                     resp_p)
            ELSE format('undocumented outbound destination from the {} external interface: {} {} from port {}',
                        edge_service, proto, resp_p, orig_p) END
           || format(' [{}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM judged
WHERE severity IS NOT NULL
