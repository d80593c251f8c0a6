-- id: R17
-- title: Undocumented ports between servers
-- severity: warning
-- requirement: [PORTS] lists "the ports that need to be open on each internal server role" ([inference]: no
--   document forbids other ports).
-- source: [PORTS]; [EDGE]
-- description: TCP/UDP flows between two hosts of the server set on a port the catalogue (reference §2/§3
--   and configured ranges) does not list, e.g. 5069: warning "undocumented port".
SELECT uid,
       format('undocumented port between servers: {} {} (app {}) [{}]', proto, resp_p, txt(app),
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE is_server(orig_role) AND is_server(resp_role) AND service IS NULL
