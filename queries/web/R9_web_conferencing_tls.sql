-- id: R9
-- title: Web conferencing and desktop-sharing signaling (PSOM) must be TLS
-- severity: violation
-- requirement: "Web conferencing - TLS", "Desktop sharing (signaling) - TLS"; "PSOM/MTLS/TCP/8057" on the Edge
--   internal interface; "Web Conferencing/PSOM(TLS)/TCP/443" on the Edge external interface.
-- source: [ENC]; [EDGE]; [PORTS]
-- description: Clients to a Front End on TCP 8057/8058, clients to the Web Conferencing Edge on TCP 443, and
--   Front End to the Edge internal 8057. Violation: the stream does not start with a TLS record (plaintext
--   PSOM or anything else). MS-TURN pseudo-TLS (A/V Edge sharing the address) is excluded (R14).
SELECT uid,
       format('web conferencing (PSOM) not TLS: first payload byte 0x{} (app {}) [{}]',
              printf('%02X', orig_first_byte), txt(app),
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE proto = 'tcp'
  AND ((family(resp_role) = 'front_end' AND resp_p IN (8057, 8058))
       OR (resp_role IN ('edge_external', 'edge_external_webconf') AND resp_p = 443
           AND orig_role IN ('client', 'external'))
       OR (resp_role = 'edge_internal' AND resp_p = 8057))
  AND NOT coalesce(tls_pseudo, false) AND coalesce(app, '') <> 'ms-turn'
  AND plaintext_start(orig_first_byte, tls_sslv2_hello) AND NOT coalesce(sip_plain, false)
