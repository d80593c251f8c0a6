-- id: R11
-- title: Edge internal interface carries only its documented, protected services
-- severity: violation
-- requirement: Edge internal interface rows are all ".../MTLS/...", "HTTPS/TCP/4443", "STUN/MSTURN/...";
--   "All server-to-server traffic requires MTLS".
-- source: [EDGE]; [ENC]; [AVFW]
-- description: Flows to or from an Edge internal address. Allowed: inbound TCP 5061, 5062 (SIP MTLS), 8057
--   (PSOM MTLS), 23456 and 5098 (XMPP MTLS), 50001-50003 (CLS MTLS), 4443 (CMS replication HTTPS), 443
--   (MS-TURN), UDP 3478 (STUN/MS-TURN); outbound TCP 5061 to the pool and TCP 443 ("STUN/MSTURN/TCP/443
--   Any <-> Edge internal"). Relayed media and ICE checks (SRTP,
--   STUN) are judged by R7, not here; so is UDP whose media protection is not visible (RTP of undecided
--   protection, or no payload fact at all, as from Zeek logs). Violation: anything else, and any plaintext SIP
--   or HTTP. Whether the allowed ports are mutual TLS is R1's test.
WITH e AS (
    SELECT f.*, f.resp_role = 'edge_internal' AS inbound
    FROM flows f
    WHERE 'edge_internal' IN (f.orig_role, f.resp_role)
)
SELECT uid,
       CASE WHEN sip_plain THEN 'plaintext SIP on the Edge internal interface'
            WHEN http_requests > 0 THEN format('plaintext HTTP on the Edge internal interface ({})', txt(http_path))
            ELSE format('undocumented service on the Edge internal interface: {} {} port {} (app {})', proto,
                        CASE WHEN inbound THEN 'inbound' ELSE 'outbound' END, resp_p, txt(app)) END
           || format(' [{}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM e
WHERE coalesce(sip_plain, false) OR coalesce(http_requests, 0) > 0
   OR NOT (
        (inbound AND proto = 'tcp' AND (resp_p IN (5061, 5062, 8057, 23456, 5098, 4443, 443)
                                        OR resp_p BETWEEN 50001 AND 50003))
        OR (inbound AND proto = 'udp' AND resp_p = 3478)
        OR (NOT inbound AND proto = 'tcp' AND resp_p IN (5061, 443))
        OR coalesce(app, '') IN ('srtp', 'srtcp', 'stun', 'ms-turn')
        OR (proto = 'udp' AND media_encrypted IS NULL
            AND (coalesce(app, '') IN ('rtp', 'rtcp')
                 OR (app IS NULL AND orig_first_byte IS NULL AND resp_first_byte IS NULL)))
   )
