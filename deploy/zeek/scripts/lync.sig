# Signatures of the lync-sensor package (main.zeek handles their matches; Signatures::actions ignores them,
# so they write neither signatures.log nor notices).
#
# Zeek reports a signature at most once per connection, so each "first byte" signature fires once per
# direction, on the first payload of that direction: the sampling lync.log needs, done in the signature
# engine rather than by a script event per packet. main.zeek keeps the byte only for connections with an
# end in a Lync role or in the Lync media port ranges.

signature lync-first-byte-tcp-orig {
  ip-proto == tcp
  tcp-state originator
  payload /^[\x00-\xff]/
  event "lync: first payload byte"
}

signature lync-first-byte-tcp-resp {
  ip-proto == tcp
  tcp-state responder
  payload /^[\x00-\xff]/
  event "lync: first payload byte"
}

signature lync-first-byte-udp-orig {
  ip-proto == udp
  udp-state originator
  payload /^[\x00-\xff]/
  event "lync: first payload byte"
}

signature lync-first-byte-udp-resp {
  ip-proto == udp
  udp-state responder
  payload /^[\x00-\xff]/
  event "lync: first payload byte"
}

# A SIP request line or status line at the start of a TCP stream: SIP in clear. Zeek's SIP analyzer parses
# UDP only (its DPD signature is `ip-proto == udp`), and Lync's plaintext SIP (gateways, trusted
# applications on TCP 5060/5068) is TCP. Methods: RFC 3261 and extensions, and Lync's SERVICE, BENOTIFY and
# NEGOTIATE ([MS-SIPRE]).
signature lync-sip-tcp {
  ip-proto == tcp
  payload /^((REGISTER|INVITE|ACK|BYE|CANCEL|OPTIONS|SUBSCRIBE|NOTIFY|MESSAGE|INFO|PRACK|UPDATE|REFER|PUBLISH|SERVICE|BENOTIFY|NEGOTIATE) [^ ]+ SIP\/2\.0\x0d\x0a|SIP\/2\.0 [1-6][0-9][0-9] )/
  event "lync: SIP in clear on TCP"
}
