-- id: R16
-- title: Documented cleartext non-Lync protocols between Lync hosts (logged, not violations)
-- severity: info
-- requirement: [PORTS] lists DCOM/RPC 135, CMS replication 445, SQL Browser 1434/UDP, DHCP 67/68 and DNS 53;
--   they are outside the [ENC] traffic protection table.
-- source: [PORTS]; [ENC]
-- description: Flows between two hosts that hold Lync roles on those ports: info, for the inventory.
SELECT uid,
       format('documented cleartext {} on {} {} [{}]', coalesce(service, 'protocol'), proto, resp_p,
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM flows
WHERE orig_role NOT IN ('client', 'external') AND resp_role NOT IN ('client', 'external')
  AND ((proto = 'tcp' AND resp_p IN (135, 445, 53)) OR (proto = 'udp' AND resp_p IN (1434, 53, 67, 68)))
