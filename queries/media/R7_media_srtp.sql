-- id: R7
-- title: Audio, video and desktop-sharing media must be SRTP
-- severity: per-row
-- requirement: "Audio and video and desktop sharing of media - SRTP"; Set-CsMediaConfiguration
--   -EncryptionLevel "RequireEncryption - SRTP must be negotiated. ... Default: RequireEncryption".
-- source: [ENC]; [MEDIA]
-- description: Media-shaped flows (RTP/RTCP found by shape on any UDP port) that the sensor judged
--   unencrypted. Violation when the verdict passes the evidence bar R8(a) uses too (plain_media_convicts:
--   confidence >= 0.8 from independent plain-RTP indicators: SDP, RTCP chain, codec frame length, G.711
--   byte structure; and at least 10 packets); warning when weaker or unknown. Warning instead of violation when the site declares SupportEncryption/DoNotSupportEncryption
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
            WHEN plain_media_convicts(media_confidence, orig_pkts + resp_pkts) THEN 'violation'
            ELSE 'warning' END AS severity,
       format('unencrypted {} ({} packets, confidence {}); evidence: {}{} [{}]', app, txt(orig_pkts + resp_pkts),
              txt(printf('%.2f', media_confidence)), txt(array_to_string(media_evidence, '; ')),
              CASE WHEN level <> 'RequireEncryption'
                   THEN format('; site EncryptionLevel {} is weaker than the default RequireEncryption (X3)', level)
                   ELSE '' END,
              conn(orig_role, orig_h, orig_p, resp_role, resp_h, resp_p, proto)) AS evidence
FROM m
