-- id: R15
-- title: The server certificate must name the server the client asked for
-- severity: warning
-- requirement: "the DNS name of the server must match the DNS name on the certificate"
-- source: [TLS-MTLS]
-- description: Full TLS handshakes where the client sent SNI and the server's certificate names (subject CN,
--   DNS SANs) are visible: warning when no name matches the SNI (exact, or a one-label wildcard). SNI may
--   be absent on older clients; such flows are not judged.
SELECT uid,
       format('server certificate names [{}] do not match the requested name {} [{}]',
              array_to_string(tls_cert_names, ', '), tls_sni,
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE tls_sni IS NOT NULL AND len(coalesce(tls_cert_names, [])) > 0 AND NOT coalesce(tls_pseudo, false)
  AND NOT list_bool_or(list_transform(tls_cert_names, lambda n:
        lower(n) = lower(tls_sni)
        OR (starts_with(n, '*.') AND ends_with(lower(tls_sni), lower(substr(n, 2)))
            AND strpos(left(tls_sni, length(tls_sni) - length(n) + 1), '.') = 0)))
