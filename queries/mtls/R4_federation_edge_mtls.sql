-- id: R4
-- title: Federation and public IM on the Edge external interface (TCP 5061) must be mutual TLS
-- severity: per-row
-- requirement: "Access/SIP(MTLS)/TCP/5061 ... For federated and public IM connectivity using SIP";
--   "Federated partners however, will initiate communications to the Access Edge service over
--   MTLS/SIP/TCP 5061."
-- source: [EDGE]; [FED]
-- description: TCP 5061 to or from an Edge external address. Violation: cleartext SIP, or a
--   CertificateRequest visibly answered without a client certificate (tls_client_cert = false). Warning
--   (unknown, reference 8.10): a CertificateRequest whose answer was not captured (tls_client_cert null),
--   or no certificate exchange visible.
SELECT uid,
       CASE WHEN plaintext_start(orig_first_byte, tls_sslv2_hello) OR sip_plain THEN 'violation'
            WHEN tls_cert_requested AND tls_client_cert = false THEN 'violation'
            ELSE 'warning' END AS severity,
       CASE WHEN plaintext_start(orig_first_byte, tls_sslv2_hello) OR sip_plain
                THEN format('cleartext SIP on the federation port ({} messages)', txt(sip_messages))
            WHEN tls_cert_requested AND tls_client_cert = false
                THEN 'CertificateRequest answered without a client certificate'
            WHEN tls_cert_requested
                THEN 'unknown: server sent CertificateRequest; the client''s Certificate message was not seen (capture loss, one-way capture, or a log without the client chain)'
            ELSE 'unknown: no certificate exchange visible' END
           || format(' [{}; {}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto), txt(tls_version))
           AS evidence
FROM flows
WHERE proto = 'tcp' AND resp_p = 5061 AND (is_edge_external(resp_role) OR is_edge_external(orig_role))
  AND (plaintext_start(orig_first_byte, tls_sslv2_hello) OR sip_plain
       OR (app = 'tls' AND tls_client_cert IS DISTINCT FROM true))
