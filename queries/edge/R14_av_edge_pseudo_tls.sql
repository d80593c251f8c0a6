-- id: R14
-- title: A/V Edge TCP 443 carries MS-TURN pseudo-TLS, not real TLS
-- severity: info
-- requirement: "If the TURN server receives a pseudo-TLS ClientHello message, it MUST respond with a ServerHello
--   followed by a ServerHelloDone message ... sent in the same TLS record."
-- source: [MS-TURN]; [EDGE]
-- description: Classifier rule. Pseudo-TLS flows are tagged app 'ms-turn' (tls_pseudo) by the sensor and kept
--   out of the TLS rules R3/R5/R6; their media is judged by R7. Info: real TLS to an A/V Edge external
--   address (edge_external_av) or to the Edge internal interface on TCP 443, where only MS-TURN is expected.
SELECT uid,
       format('real TLS ({}, server certificate {}) to the A/V Edge on TCP 443, where MS-TURN pseudo-TLS is expected [{}]',
              txt(tls_version), txt(tls_server_cert),
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE proto = 'tcp' AND resp_p = 443 AND resp_role IN ('edge_external_av', 'edge_internal')
  AND app = 'tls' AND NOT coalesce(tls_pseudo, false)
