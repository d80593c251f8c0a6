-- id: R2
-- title: No plaintext SIP, except the documented exceptions
-- severity: per-row
-- requirement: "All SIP communications between servers occur over MTLS. SIP communications from client to
--   server occur over TLS." Exceptions: "Optionally used ... for static routes to trusted services" (TCP 5060);
--   "TLS is optional but strongly recommended between the Mediation Server and media gateway."
-- source: [TLS-MTLS]; [ENC]; [PORTS]; [GW]
-- description: Any flow carrying a cleartext SIP request or status line, TCP or UDP, any port. Violation,
--   except: E1 Front End/Director <-> a configured trusted application on its port (no finding); E2 every
--   Mediation/SBA (or a Front End with a collocated Mediation Server) <-> gateway leg on a TCP trunk, PSTN
--   and E9-1-1 gateways alike (the gateway_leg macro, the same scope as R8): warning, violation when the
--   gateway is defined with TLS; E3 Front End -> E9-1-1 gateway TCP 5066 is such a leg (reference 8.7:
--   treated as the Mediation <-> gateway rule). SIP over UDP and plaintext SIP crossing the Edge external
--   side are always violations.
WITH s AS (
    SELECT f.*,
           (SELECT any_value(g.transport) FROM gateways g WHERE g.address IN (f.orig_h, f.resp_h)) AS gw_transport,
           EXISTS (SELECT 1 FROM gateways g WHERE g.address IN (f.orig_h, f.resp_h) AND g.e911)
               OR 'e911_gateway' IN (f.orig_role, f.resp_role) AS e911,
           EXISTS (SELECT 1 FROM trusted_apps t
                   WHERE (t.address = f.resp_h AND t.port = f.resp_p) OR (t.address = f.orig_h AND t.port = f.orig_p))
               OR ('trusted_application' IN (f.orig_role, f.resp_role) AND 5060 IN (f.orig_p, f.resp_p))
               AS trusted_app,
           gateway_leg(f.orig_role, f.resp_role) AS gateway_leg
    FROM flows f
    WHERE f.sip_plain
),
judged AS (
    SELECT *,
           CASE
               WHEN proto = 'udp' THEN 'violation'
               WHEN is_edge_external(orig_role) OR is_edge_external(resp_role) OR 'external' IN (orig_role, resp_role)
                   THEN 'violation'
               WHEN trusted_app AND (family(orig_role) IN ('front_end', 'director')
                                     OR family(resp_role) IN ('front_end', 'director')) THEN NULL
               WHEN gateway_leg AND gw_transport = 'tls' THEN 'violation'
               WHEN gateway_leg THEN 'warning'
               ELSE 'violation'
           END AS severity,
           CASE
               WHEN proto = 'udp' THEN 'SIP over UDP (no Lync 2013 document allows it)'
               WHEN is_edge_external(orig_role) OR is_edge_external(resp_role) OR 'external' IN (orig_role, resp_role)
                   THEN 'plaintext SIP crossing the perimeter'
               WHEN gateway_leg AND gw_transport = 'tls' THEN 'plaintext SIP on a gateway trunk defined with TLS'
               WHEN gateway_leg AND e911 AND family(orig_role) = 'front_end' AND resp_p = 5066
                   THEN 'plaintext SIP to the E9-1-1 gateway (E3: protection not stated, reference 8.7)'
               WHEN gateway_leg AND e911
                   THEN format('plaintext SIP on the trunk to the E9-1-1 gateway (E2, reference 8.7; trunk transport {}: TLS strongly recommended)', txt(gw_transport))
               WHEN gateway_leg
                   THEN format('plaintext SIP on the Mediation-gateway trunk (E2, trunk transport {}: TLS strongly recommended)', txt(gw_transport))
               ELSE 'plaintext SIP'
           END AS why
    FROM s
)
SELECT uid, severity,
       format('{}: {} messages, methods {}, status {} [{}]', why, txt(sip_messages),
              txt(array_to_string(sip_methods, ',')), txt(array_to_string(sip_status_codes, ',')),
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM judged
WHERE severity IS NOT NULL
