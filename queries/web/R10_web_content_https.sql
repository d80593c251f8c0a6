-- id: R10
-- title: Address book, distribution group expansion and meeting content must be HTTPS
-- severity: per-row
-- requirement: "Meeting content download, address book download, distribution group expansion - HTTPS";
--   "All simple URLs must start with the https:// prefix."
-- source: [ENC]; [WS]; [IIS]; [SURL]; [AUTOD]; [AUTOD-DNS]
-- description: Every plaintext HTTP request path (and Host) against sensor/data/web_paths.csv, longest
--   prefix first. Violation: paths that must be HTTPS per the [ENC] table (/abs/, /groupexpansion/,
--   /collabcontent, /etc/place/, /datacollabweb/). Warning: paths documented as HTTPS but outside the [ENC]
--   table (/meet, /dialin, /reach, /webticket/, /ucwa/, /mcx ...). Info: documented HTTP (/autodiscover/,
--   anonymous /certprov/, device and client update files). On TLS only the SNI is visible: no path rule.
WITH req AS (
    SELECT uid, http_host, unnest(http_paths) AS path, orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto
    FROM flows
    WHERE http_requests > 0 AND http_paths IS NOT NULL
),
matched AS (
    SELECT r.*, w.severity AS level, w.prefix, w.service AS web_service, w.match AS matched_on
    FROM req r JOIN web_paths w
      ON (w.match = 'path' AND starts_with(lower(r.path), w.prefix))
      OR (w.match = 'host' AND starts_with(lower(coalesce(r.http_host, '')), w.prefix))
    QUALIFY row_number() OVER (PARTITION BY r.uid, r.path
                               ORDER BY (w.match = 'path') DESC, length(w.prefix) DESC) = 1
)
SELECT uid,
       CASE level WHEN 'V' THEN 'violation' WHEN 'W' THEN 'warning' ELSE 'info' END AS severity,
       format('plaintext HTTP {} (Host {}) is {} ({} prefix {}) [{}]', path, txt(http_host), web_service, matched_on,
              prefix, conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM matched
