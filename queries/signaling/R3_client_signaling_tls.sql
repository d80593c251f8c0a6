-- id: R3
-- title: Client-to-server signaling must be TLS
-- severity: violation
-- requirement: "SIP communications from client to server occur over TLS." "Clients initiate communication
--   with the Access Edge service over TLS/SIP/TCP 443."
-- source: [TLS-MTLS]; [ENC]; [FED]; [PORTS]
-- description: Clients (internal or external) to a Front End/Director on TCP 5061, and to the Access Edge
--   on TCP 443. Violation: cleartext (plaintext SIP or a first byte that is not a TLS record) or SSL 2.0/3.0
--   negotiated. A client certificate is not required (TLS, not MTLS). MS-TURN pseudo-TLS on the A/V Edge
--   443 is excluded (R14).
SELECT uid,
       CASE WHEN tls_version IN ('SSLv2', 'SSLv3') THEN format('client signaling negotiated {}', tls_version)
            WHEN sip_plain THEN format('plaintext SIP from a client ({} messages)', txt(sip_messages))
            ELSE format('client signaling not TLS: first payload byte 0x{}', printf('%02X', orig_first_byte)) END
           || format(' [{}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE proto = 'tcp' AND orig_role IN ('client', 'external')
  AND ((family(resp_role) IN ('front_end', 'director') AND resp_p = 5061)
       OR (resp_role IN ('edge_external', 'edge_external_access') AND resp_p = 443))
  AND NOT coalesce(tls_pseudo, false) AND coalesce(app, '') <> 'ms-turn'
  AND (plaintext_start(orig_first_byte, tls_sslv2_hello) OR sip_plain OR tls_version IN ('SSLv2', 'SSLv3'))
