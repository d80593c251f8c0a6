-- id: R6
-- title: Negotiated cipher suite must not be NULL, RC4, DES or EXPORT (FIPS sites: FIPS suites only)
-- severity: per-row
-- requirement: "Lync Server 2013 ... operate with support for Federal Information Processing Standard (FIPS)
--   140-2 algorithms if the Windows Server operating systems are configured to use the FIPS 140-2 algorithms";
--   Schannel lists NULL, RC4 and EXPORT suites as not FIPS / "Only used when application explicitly requests".
-- source: [ENC]; [CSVISTA]; [CS81]
-- description: The ServerHello's cipher suite against sensor/data/cipher_suites.csv. Violation: NULL, RC4,
--   DES, EXPORT or SSLv2 suites; with policy.fips, any suite the table does not mark FIPS (yes or
--   derived), unknown suites included. Warning: 3DES. The exact suite policy is [inference] (Lync publishes no
--   list); the ECDHE curve check of FIPS mode is not made (the curve is not recorded).
WITH c AS (
    SELECT f.*, s.class AS suite_class, s.fips AS suite_fips, s.name AS suite_name,
           (SELECT any_value(fips) FROM policy) AS site_fips
    FROM flows f LEFT JOIN cipher_suites s ON upper(s.code) = upper(f.tls_cipher)
    WHERE f.tls_cipher IS NOT NULL AND NOT coalesce(f.tls_pseudo, false)
),
judged AS (
    SELECT *,
           CASE WHEN suite_class IN ('null', 'rc4', 'des', 'export', 'sslv2') THEN 'violation'
                WHEN site_fips AND (suite_fips = 'no' OR suite_class IS NULL) THEN 'violation'
                WHEN suite_class = '3des' THEN 'warning'
           END AS severity
    FROM c
)
SELECT uid, severity,
       format('cipher suite {} {} (class {}, FIPS {}){} [{}; {}]', tls_cipher, txt(suite_name), txt(suite_class),
              txt(suite_fips), CASE WHEN site_fips THEN '; site runs in FIPS mode' ELSE '' END,
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto), txt(tls_version)) AS evidence
FROM judged
WHERE severity IS NOT NULL
