-- id: R5
-- title: TLS protocol version (no SSL; TLS 1.0/1.1 noted)
-- severity: per-row
-- requirement: "Lync Server 2013 will offer TLS encryption protocols in the following order to clients:
--   TLS 1.2, TLS 1.1, TLS 1.0." "Disabling SSL 3.0 in Lync Server 2013 is a supported option."
--   Disabling TLS 1.0/1.1 is supported for "Lync Server 2013 Edge Role Only".
-- source: [ENC]; [TLS10]; [CS81]
-- description: Every real TLS flow (MS-TURN pseudo-TLS excluded). Violation: SSL 3.0 or SSL 2.0 negotiated.
--   Info: TLS 1.0/1.1 (disabling them is unsupported for Lync 2013 except on the Edge); warning instead
--   when the flow touches an Edge and the site declares require_tls12_on_edge. Info: a client hello that
--   offers at most SSL 3.0, or is in SSLv2 format, while a TLS version was negotiated (fallback risk).
SELECT uid,
       CASE WHEN tls_version IN ('SSLv2', 'SSLv3') THEN 'violation'
            WHEN tls_version IN ('TLSv10', 'TLSv11')
                 AND (is_edge_external(orig_role) OR is_edge_external(resp_role)
                      OR 'edge_internal' IN (orig_role, resp_role))
                 AND (SELECT any_value(require_tls12_on_edge) FROM policy) THEN 'warning'
            ELSE 'info' END AS severity,
       CASE WHEN tls_version IN ('SSLv2', 'SSLv3', 'TLSv10', 'TLSv11')
                THEN format('negotiated {} (client offered up to {})', tls_version, txt(tls_client_max_version))
            ELSE format('client hello offers at most {}{}; negotiated {}', txt(tls_client_max_version),
                        CASE WHEN tls_sslv2_hello THEN ' in SSLv2 format' ELSE '' END, txt(tls_version)) END
           || format(' [{}]', conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE app IN ('tls', 'sslv2') AND NOT coalesce(tls_pseudo, false)
  AND (tls_version IN ('SSLv2', 'SSLv3', 'TLSv10', 'TLSv11')
       OR tls_client_max_version IN ('SSLv2', 'SSLv3')
       OR (coalesce(tls_sslv2_hello, false) AND resp_role <> 'edge_external_av'))
