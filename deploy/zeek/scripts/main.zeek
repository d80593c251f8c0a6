##! Lync Server 2013 protection facts for lync-sensor.
##!
##! Tags conn.log with the Lync role of each end, read with the Input framework from the
##! topology file that ``lync-sensor zeek-topology`` writes from the sensor's own site
##! config, and logs in lync.log what the stock logs do not show: whether the server sent
##! a TLS CertificateRequest, the first payload byte of each direction (a TLS record starts
##! with 0x16), the RTP version bits of UDP flows on the Lync media port ranges, and SIP in
##! clear over TCP (the stock SIP analyzer parses UDP only). ``lync-sensor ingest-zeek``
##! joins lync.log to conn.log and ssl.log by uid.

@load base/frameworks/input
@load base/frameworks/signatures
@load base/protocols/conn
@load base/protocols/ssl

@load-sigs ./lync.sig

module Lync;

export {
	redef enum Log::ID += { LOG };

	## A policy hook for the lync.log stream.
	global log_policy: Log::PolicyHook;

	## The topology file ``lync-sensor zeek-topology --out FILE`` writes: an Input
	## framework TSV of ``cidr``, ``kind`` (``role`` or ``zone``) and ``name``. It is
	## read again whenever it changes.
	const topology_file = "/etc/lync-sensor/zeek-topology.tsv" &redef;

	## UDP port ranges of Lync media, ``[low, high]`` both included: lync-sensor's port
	## catalogue (sensor/data/ports.csv) rows server-audio 49152-57500, server-video
	## 57501-65535 and edge-media 50000-59999. Clients use 1024-65535 unless
	## ClientMediaPortRangeEnabled is set; add a site's client ranges to cover
	## peer-to-peer media as well.
	const media_ranges: set[count, count] = {[49152, 65535]} &redef;

	## The lync.log record: one line per connection that carries a Lync fact.
	type Info: record {
		## Time the connection started.
		ts: time &log;
		## Unique ID of the connection; joins conn.log, ssl.log and sip.log.
		uid: string &log;
		## The connection's 4-tuple of endpoint addresses/ports.
		id: conn_id &log;
		## Transport protocol of the connection.
		proto: transport_proto &log;
		## T if the server sent a TLS CertificateRequest (it asked for mutual TLS);
		## F if a TLS ServerHello was seen without one. TLS 1.3 encrypts the
		## CertificateRequest: only visible up to TLS 1.2.
		cert_request: bool &log &optional;
		## First transport payload byte the originator sent (0x16 starts a TLS record).
		orig_first_byte: count &log &optional;
		## First transport payload byte the responder sent.
		resp_first_byte: count &log &optional;
		## RTP version bits (the top two bits of the originator's first UDP payload
		## byte) on a flow with an end in :zeek:see:`Lync::media_ranges`: 2 for RTP,
		## SRTP and RTCP alike (SRTP encrypts the payload, not the header).
		orig_rtp_version: count &log &optional;
		## RTP version bits of the responder's first UDP payload byte.
		resp_rtp_version: count &log &optional;
		## T if an end of this UDP flow is in :zeek:see:`Lync::media_ranges`.
		media_range: bool &log &optional;
		## T if a SIP request or status line was seen in clear at the start of a TCP
		## stream.
		sip_tcp: bool &log &optional;
	};

	## Event that can be handled to access the lync.log record as it is sent on to
	## the logging framework.
	global log_lync: event(rec: Info);

	## The Lync role of an address: its role in the topology file (longest prefix),
	## else ``client`` inside an internal network, else ``external`` (as lync-sensor's
	## sensor/topology.py).
	global role_of: function(a: addr): string;
}

redef record Conn::Info += {
	## Lync role of the originator (:zeek:see:`Lync::role_of`).
	orig_role: string &log &optional;
	## Lync role of the responder (:zeek:see:`Lync::role_of`).
	resp_role: string &log &optional;
};

redef record connection += {
	lync: Info &optional;
};

# The signatures only hand bytes to this script: no signatures.log, no notices.
redef Signatures::actions += {
	["lync-first-byte-tcp-orig"] = Signatures::SIG_IGNORE,
	["lync-first-byte-tcp-resp"] = Signatures::SIG_IGNORE,
	["lync-first-byte-udp-orig"] = Signatures::SIG_IGNORE,
	["lync-first-byte-udp-resp"] = Signatures::SIG_IGNORE,
	["lync-sip-tcp"] = Signatures::SIG_IGNORE,
};

type TopologyIdx: record {
	cidr: subnet;
};

type TopologyVal: record {
	kind: string;
	name: string;
};

# Roles and zones by prefix; indexing a table[subnet] with an address gives the longest match.
global roles: table[subnet] of TopologyVal = table();
global zones: table[subnet] of TopologyVal = table();

# Input framework predicates: one file, two tables.
function is_role_row(t: Input::Event, i: TopologyIdx, v: TopologyVal): bool
	{
	return v$kind == "role";
	}

function is_zone_row(t: Input::Event, i: TopologyIdx, v: TopologyVal): bool
	{
	return v$kind == "zone";
	}

event zeek_init() &priority=5
	{
	Log::create_stream(Lync::LOG, [$columns=Info, $ev=log_lync, $path="lync",
	    $policy=log_policy]);

	Input::add_table([$source=topology_file, $name="lync-roles", $idx=TopologyIdx,
	    $val=TopologyVal, $destination=roles, $mode=Input::REREAD,
	    $pred=is_role_row]);
	Input::add_table([$source=topology_file, $name="lync-zones", $idx=TopologyIdx,
	    $val=TopologyVal, $destination=zones, $mode=Input::REREAD,
	    $pred=is_zone_row]);
	}

function role_of(a: addr): string
	{
	if ( a in roles )
		return roles[a]$name;
	if ( a in zones && zones[a]$name == "internal" )
		return "client";
	return "external";
	}

function has_role(a: addr): bool
	{
	local r = role_of(a);
	return r != "client" && r != "external";
	}

function in_media_range(p: port): bool
	{
	local n = port_to_count(p);
	for ( [lo, hi] in media_ranges )
		{
		if ( lo <= n && n <= hi )
			return T;
		}
	return F;
	}

function set_info(c: connection)
	{
	if ( ! c?$lync )
		c$lync = Info($ts=c$start_time, $uid=c$uid, $id=c$id,
		    $proto=get_port_transport_proto(c$id$resp_p));
	}

hook Conn::log_policy(rec: Conn::Info, id: Log::ID, filter: Log::Filter)
	{
	rec$orig_role = role_of(rec$id$orig_h);
	rec$resp_role = role_of(rec$id$resp_h);
	}

event ssl_server_hello(c: connection, version: count, record_version: count,
    possible_ts: time, server_random: string, session_id: string, cipher: count,
    comp_method: count)
	{
	set_info(c);
	if ( ! c$lync?$cert_request )
		c$lync$cert_request = F;
	}

event ssl_certificate_request(c: connection, is_client: bool,
    certificate_types: index_vec,
    supported_signature_algorithms: signature_and_hashalgorithm_vec,
    certificate_authorities: string_vec)
	{
	if ( is_client )
		return;
	set_info(c);
	c$lync$cert_request = T;
	}

event signature_match(state: signature_state, msg: string, data: string)
	{
	local sig = state$sig_id;
	if ( ! starts_with(sig, "lync-") || |data| == 0 )
		return;

	local c = state$conn;
	set_info(c);
	if ( sig == "lync-sip-tcp" )
		{
		c$lync$sip_tcp = T;
		return;
		}

	local b = bytestring_to_count(data[0]);
	if ( state$is_orig && ! c$lync?$orig_first_byte )
		c$lync$orig_first_byte = b;
	else if ( ! state$is_orig && ! c$lync?$resp_first_byte )
		c$lync$resp_first_byte = b;

	if ( c$lync$proto == udp
	    && ( in_media_range(c$id$orig_p) || in_media_range(c$id$resp_p) ) )
		{
		c$lync$media_range = T;
		if ( state$is_orig )
			c$lync$orig_rtp_version = b / 64;
		else
			c$lync$resp_rtp_version = b / 64;
		}
	}

event connection_state_remove(c: connection)
	{
	if ( ! c?$lync )
		return;

	local info = c$lync;
	# Keep lync.log small: only connections with a Lync fact or a Lync end.
	if ( ( info?$cert_request && info$cert_request )
	    || info?$media_range
	    || info?$sip_tcp
	    || has_role(c$id$orig_h)
	    || has_role(c$id$resp_h) )
		Log::write(Lync::LOG, info);
	}
