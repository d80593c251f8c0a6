-- id: R12
-- title: Edge external interface inventory (only the documented listeners)
-- severity: per-row
-- requirement: Edge external firewall summary: Access 443 (TLS), 5061 (MTLS), XMPP 5269; Web Conferencing
--   443; A/V 443, 3478/UDP, 50,000-59,999; outbound HTTP 80 (CRL) and DNS 53. UDP 50,000-59,999 is "Required
--   only for federation with partners running Office Communications Server 2007".
-- source: [EDGE]; [EDGE-HLB]; [AVFW]; [FED]
-- description: Flows to or from an Edge external address on a port the port summaries do not list: warning
--   (undocumented listener or destination). UDP media on 50000-59999 on the Edge side: info (OCS 2007
--   federation only).
WITH e AS (
    SELECT f.*, is_edge_external(f.resp_role) AS inbound,
           CASE WHEN is_edge_external(f.resp_role) THEN f.resp_p ELSE f.orig_p END AS edge_port
    FROM flows f
    WHERE is_edge_external(f.resp_role) OR is_edge_external(f.orig_role)
),
judged AS (
    SELECT *,
           CASE
               -- Edge-to-Edge media and candidate checks go from 50000-59999 to the partner's TCP 443 / UDP 3478
               WHEN NOT inbound AND ((proto = 'tcp' AND resp_p IN (80, 53, 443, 5061, 5269))
                                     OR (proto = 'udp' AND resp_p IN (53, 3478))) THEN NULL
               WHEN proto = 'udp' AND edge_port BETWEEN 50000 AND 59999 THEN 'info'
               WHEN inbound AND ((proto = 'tcp' AND resp_p IN (443, 5061, 5269)) OR (proto = 'udp' AND resp_p = 3478)
                                 OR (proto = 'tcp' AND resp_p BETWEEN 50000 AND 59999)) THEN NULL
               WHEN NOT inbound AND orig_p BETWEEN 50000 AND 59999 AND proto = 'tcp' THEN NULL
               ELSE 'warning'
           END AS severity
    FROM e
)
SELECT uid, severity,
       CASE WHEN severity = 'info'
            THEN format('UDP media on the Edge media range port {} (documented only for OCS 2007 federation)', edge_port)
            WHEN inbound THEN format('undocumented listener on the Edge external interface: {} {}', proto, resp_p)
            ELSE format('undocumented outbound destination from the Edge external interface: {} {}', proto, resp_p) END
           || format(' [{}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM judged
WHERE severity IS NOT NULL
