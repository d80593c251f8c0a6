-- id: R13
-- title: XMPP federation must negotiate TLS (STARTTLS) before any stanza
-- severity: per-row
-- requirement: New-CsXmppAllowedPartner -TlsNegotiation: "The default value is Required."
-- source: [XMPP]; [EDGE]; [FED]
-- description: TCP 5269 to or from an Edge external address whose stream starts in XML ('<') and never
--   switches to TLS records: the stanzas travel in clear. Violation under the default (Required); warning
--   when the site declares a partner with TlsNegotiation Optional or NotSupported (the sensor cannot tell
--   which partner a flow belongs to, so one such partner downgrades every finding: documented limitation).
SELECT uid,
       CASE WHEN EXISTS (SELECT 1 FROM xmpp_partners WHERE tls_negotiation <> 'Required') THEN 'warning'
            ELSE 'violation' END AS severity,
       format('XMPP stream in clear: starts with ''<'' and no TLS follows (app {}) [{}]', txt(app),
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE proto = 'tcp' AND resp_p = 5269 AND (is_edge_external(resp_role) OR is_edge_external(orig_role))
  AND orig_first_byte = 60 AND coalesce(app, '') <> 'tls'
