-- id: R7
-- title: Audio, video and desktop-sharing media must be SRTP
-- severity: per-row
-- requirement: "Audio and video and desktop sharing of media - SRTP"; Set-CsMediaConfiguration
--   -EncryptionLevel "RequireEncryption - SRTP must be negotiated. ... Default: RequireEncryption".
-- source: [ENC]; [MEDIA]
-- description: Media-shaped flows (RTP/RTCP found by shape on any UDP port) that the sensor judged
--   unencrypted. Violation when the verdict has confidence >= 0.8 (independent plain-RTP indicators: SDP,
--   RTCP chain, codec frame length, G.711 byte structure) and the flow has at least 10 packets; warning when
--   weaker. Warning instead of violation when the site declares SupportEncryption/DoNotSupportEncryption
--   (X3). Flows with a Mediation Server or a gateway are judged by R8 (X1, media bypass). Media whose
--   protection cannot be told (media_encrypted null) is not judged.
WITH m AS (
    SELECT f.*, (SELECT any_value(media_encryption_level) FROM policy) AS level
    FROM flows f
    WHERE f.media_encrypted = false AND f.app IN ('rtp', 'rtcp')
      AND NOT ('mediation' IN (f.orig_role, f.resp_role) OR is_gateway(f.orig_role) OR is_gateway(f.resp_role))
)
SELECT uid,
       CASE WHEN level <> 'RequireEncryption' THEN 'warning'
            WHEN media_confidence >= 0.8 AND orig_pkts + resp_pkts >= 10 THEN 'violation'
            ELSE 'warning' END AS severity,
       format('unencrypted {} ({} packets, confidence {}); evidence: {}{} [{}]', app, orig_pkts + resp_pkts,
              printf('%.2f', media_confidence), txt(array_to_string(media_evidence, '; ')),
              CASE WHEN level <> 'RequireEncryption'
                   THEN format('; site EncryptionLevel {} is weaker than the default RequireEncryption (X3)', level)
                   ELSE '' END,
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM m
