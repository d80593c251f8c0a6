-- id: R1
-- title: Server-to-server traffic must be mutual TLS
-- severity: per-row
-- requirement: "All server-to-server traffic requires MTLS, regardless of whether the traffic is confined
--   to the internal network or crosses the internal network perimeter." "All SIP communications between
--   servers occur over MTLS."
-- source: [ENC]; [TLS-MTLS]; [PORTS]; [EDGE]
-- description: TCP flows between two hosts of the server set (Front End, Director, Mediation, Edge, ...).
--   Violation: cleartext on the link (the originator's first payload byte is not a TLS record), or the
--   server requested a certificate and the client visibly answered without one (tls_client_cert = false),
--   on a port a doc labels MTLS. Warning: the same on a port the docs label only TCP/HTTPS (MTLS*
--   [inference]); and "unknown" when the certificate exchange is not visible: a CertificateRequest whose
--   answer was not captured (tls_client_cert null: capture loss, a one-way SPAN, a log without the client
--   chain), or no CertificateRequest in an otherwise normal TLS session (reference §8.10: Schannel may ask
--   in an encrypted renegotiation; TLS 1.3 encrypts it). Resumed sessions are info. The exceptions E1 and
--   E2 involve trusted applications and gateways, which are not in the server set.
WITH scope AS (
    SELECT f.*,
           coalesce((SELECT max(CASE WHEN p.required IN ('MTLS', 'MTLS|TLS', 'TLS|MTLS') THEN 2
                                     WHEN p.required LIKE '%MTLS*%' THEN 1 ELSE 0 END)
                     FROM ports p
                     WHERE p.proto = 'tcp' AND p.port_lo = p.port_hi AND p.port_lo = f.resp_p
                       AND (p.role = 'any' OR family(p.role) = family(f.resp_role))), 0) AS mtls_label
    FROM flows f
    WHERE f.proto = 'tcp' AND is_server(f.orig_role) AND is_server(f.resp_role)
      -- documented cleartext protocols between servers are R16 (DCOM, SMB, DNS) and R10 (HTTP)
      AND f.resp_p NOT IN (53, 80, 135, 445, 8080)
)
SELECT uid,
       CASE
           WHEN plaintext_start(orig_first_byte, tls_sslv2_hello) THEN 'violation'
           WHEN tls_cert_requested AND tls_client_cert = false
               THEN CASE WHEN mtls_label = 2 THEN 'violation' ELSE 'warning' END
           WHEN tls_resumed THEN 'info'
           ELSE 'warning'
       END AS severity,
       CASE
           WHEN plaintext_start(orig_first_byte, tls_sslv2_hello)
               THEN format('cleartext on a server-to-server link: first payload byte 0x{}, not a TLS handshake (app {})',
                           printf('%02X', orig_first_byte), txt(app))
           WHEN tls_cert_requested AND tls_client_cert = false
               THEN 'server sent CertificateRequest; the client answered with no certificate (not mutual TLS)'
           WHEN tls_cert_requested
               THEN 'unknown: server sent CertificateRequest; the client''s Certificate message was not seen (capture loss, one-way capture, or a log without the client chain)'
           WHEN tls_version = 'TLSv13' THEN 'unknown: TLS 1.3 encrypts the certificate exchange'
           WHEN tls_resumed THEN 'unknown: resumed session, no certificate exchange on the wire'
           ELSE 'unknown: no CertificateRequest in the visible handshake (it may come in an encrypted renegotiation, reference 8.10)'
       END || format(' [{}; {}; port labelled {}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto),
                     txt(tls_version), CASE mtls_label WHEN 2 THEN 'MTLS' WHEN 1 THEN 'TCP/HTTPS (MTLS*)' ELSE 'nothing' END)
           AS evidence
FROM scope
WHERE plaintext_start(orig_first_byte, tls_sslv2_hello)
   OR (app = 'tls' AND NOT coalesce(tls_pseudo, false) AND tls_client_cert IS DISTINCT FROM true)
