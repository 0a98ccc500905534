/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The ABI shared by the XDP program and the Go side (maps/). bpf2go generates
 * the Go types from these definitions, so nothing here is mirrored by hand.
 * Fixed-width types only; largest fields first; padding is explicit.
 * Ports are in host byte order. Addresses are 16 bytes, network byte order,
 * IPv4 as v4-mapped IPv6 (::ffff:a.b.c.d). Times are CLOCK_BOOTTIME
 * nanoseconds, so a window keeps running while the machine is suspended.
 */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>

#define KG_MAX_STEPS 8

/*
 * Services: a gate holds up to KG_MAX_SERVICES named services, each with its
 * own protected ports, knock sequence, windows and allow list; a grant is per
 * (source, service). 32 because an SPA key's scope is a 32-bit mask of
 * services; index 0 is always the service "default".
 */
#define KG_MAX_SERVICES 32
#define KG_SERVICE_NAME_LEN 32
/* The port table (config.ports): one byte per port and protocol, 0 for a port
 * no service claims, s + 1 for a port service s protects, KG_PORT_STEP | s
 * for a step of service s's sequence (never protected by s; a packet there
 * that is no knock is judged under the service that protects "all", if one
 * does). */
#define KG_PORT_STEP 0x80
#define KG_PORT_SERVICE 0x7f

/* The knock table is 4-way set-associative: a source's progress may be in
 * any of the 4 slots of the set its address hashes to. */
#define KG_KNOCK_WAYS 4

/* The hint bitmap (hint_bits in knockgate.c): a header of a cache line,
 * whose first 32-bit word says which half is active, then the two halves;
 * each (source, service) has HINT_BITS bits in one word of a half. */
#define HINT_HEADER 64
#define HINT_BITS 4
/* The header's second 32-bit word: the grant cache's epoch, which the Go
 * side bumps after every change that removes or shortens a grant. */
#define HINT_EPOCH 4

/* The grant cache (grant_cache in knockgate.c): lines of KG_CACHE_WAYS
 * entries of 16 bytes, one cache line each. */
#define KG_CACHE_WAYS 4

/* The flow table is 4-way set-associative too (see struct flow). */
#define KG_FLOW_WAYS 4
/* How long a flow lasts once closing (FIN both ways, an RST) or while a
 * connection the host opened has had no answer, whatever the idle timeouts. */
#define KG_FLOW_CLOSING_NS (10ULL * 1000000000)
#define KG_FLOW_UNANSWERED_NS (60ULL * 1000000000)

/* SPA (single-packet authorization): the payload of an SPA datagram, the
 * part its tag covers, and how many keys a gate holds. See spa.h. */
#define KG_SPA_LEN 56
#define KG_SPA_SIGNED 48
#define KG_SPA_VERSION 1
/* Version 2: version 1's fields, then a request for up to KG_SPA_REQUESTS
 * services by the FNV-1a hashes of their names (bytes 48-63, 0: unused),
 * then the tag over bytes 0-63. */
#define KG_SPA_LEN_REQUEST 72
#define KG_SPA_SIGNED_REQUEST 64
#define KG_SPA_VERSION_REQUEST 2
#define KG_SPA_REQUESTS 4
#define KG_SPA_KEYS 1024

/* Per-interface verdict counters are kept in this many slots, indexed by
 * the receiving interface's ifindex masked to the slot count (a power of
 * two): no lookup on the hot path. Two interfaces of one gate whose ifindexes
 * agree in the low bits share a slot; status says so. */
#define KG_IFACE_SLOTS 256

/* Knock and reset events are rate-limited per CPU, so that a flood of
 * spoofed knocks costs neither a flood of events nor the room that open and
 * expire events need: at most KG_EVENT_BURST at once, refilled at
 * KG_EVENT_RATE a second. Past the budget they are counted as suppressed. */
#define KG_EVENT_RATE 100
#define KG_EVENT_BURST 100
/* Knock and reset events are also suppressed while more than this many
 * bytes of the ring buffer wait for the reader, keeping the rest for open
 * and expire events. */
#define KG_EVENT_RING_BYTES (256 * 1024)
#define KG_EVENT_RING_RESERVE (KG_EVENT_RING_BYTES / 2)

/*
 * A flow the host sends on, as the host sees it: the key of a slot of the
 * flow table. Learned only from the host's own packets (the tc egress
 * program), never from an inbound one; an inbound packet passes when its
 * reverse is a live flow. Addresses as everywhere (16 bytes, v4-mapped).
 */
struct flow_key {
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port; /* host byte order */
	__u16 remote_port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP; 0: the slot is free */
	__u8 pad[3];
};

enum flow_flag {
	FLOW_ANSWERED = 1, /* an inbound packet of the flow was seen */
	FLOW_FIN_OUT = 2, /* the host sent a FIN */
	FLOW_FIN_IN = 4, /* the peer sent a FIN */
	FLOW_RST_IN = 8, /* the peer sent an RST since the host last sent */
};

/* A slot of the flow table. The key changes only under the lock; flags
 * change by atomic OR (AND to clear), last_ns by plain 64-bit stores. */
struct flow {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 flags; /* enum flow_flag; 64 bits for the atomics BPF has */
	__u64 last_ns; /* CLOCK_BOOTTIME of the host's last packet of the flow */
	struct flow_key key;
};

/*
 * An SPA key: the value of the spa_keys map, whose key is the key's 32-bit
 * id (host byte order). Rewritten whole by the Go side when the key file
 * changes; the replay state lives apart (spa_last), so a rewrite never
 * loses it.
 */
struct spa_key {
	__u64 k[2]; /* SipHash key: k0 = bytes 0-7, k1 = bytes 8-15, little-endian */
	__u64 open_ns; /* the grant's window; 0: each service's own */
	__u32 flags; /* enum spa_key_flag */
	__u32 services; /* bit s: the key may open service s */
	__u8 name[32]; /* NUL-padded, for status and events only */
};

enum spa_key_flag {
	/* The packet may name another address than its source (clients behind
	 * NAT that know their public address; fwknop's -a). */
	SPA_KEY_ANY_ADDRESS = 1,
};

/* A source address. */
struct source {
	__u8 addr[16];
};

/* The key of the grants map: a grant is per source and service. */
struct grant_key {
	__u8 addr[16];
	__u8 service; /* index into config.services */
	__u8 pad[3];
};

/* One step of the knock sequence. */
struct step {
	__u16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* One service of a configuration. */
struct service {
	__u64 step_timeout_ns;
	__u64 open_ns;
	struct step steps[KG_MAX_STEPS];
	/* FNV-1a of the name: what an SPA request names the service by
	 * (unique in a configuration, never 0). */
	__u32 name_hash;
	/* Entries of the allow trie for this service alone; 0 skips the
	 * lookup. */
	__u32 allow_count;
	__u8 nsteps; /* 0: no sequence (SPA and the operator open it) */
	__u8 live; /* 1: the service exists */
	__u8 pad[6];
	__u8 name[KG_SERVICE_NAME_LEN]; /* NUL-padded, for the Go side */
};

/*
 * The whole runtime configuration, one value so that a change is a single
 * slot flip (see the configs and config_slot maps): a packet sees either the
 * old or the new configuration, never a mix.
 */
struct config {
	/* Key of the hash that places a source in the knock table: random,
	 * made with the gate and kept by every change, so nobody outside can
	 * pick addresses that land on a given client's slot. */
	__u64 slot_key[2];
	/* Idle timeouts of flows (see struct flow). */
	__u64 flow_idle_tcp_ns;
	__u64 flow_idle_udp_ns;
	/* Safe mode: 0, or the CLOCK_BOOTTIME instant after which, unless a
	 * confirmation has replaced this configuration by then, the other slot
	 * (the configuration before this one) rules again. The rollback needs no
	 * process: the program itself falls back. */
	__u64 confirm_by_ns;
	/* Unix time for SPA: CLOCK_TAI (bpf_ktime_get_tai_ns) less the kernel's
	 * TAI offset (adjtimex), as read when this configuration was written. */
	__s64 tai_offset_ns;
	/* An SPA timestamp may be this far from the gate's Unix time, either
	 * way (milliseconds). */
	__u64 spa_window_ms;
	__u32 generation; /* bumped on every change; older progress is void */
	__u32 allow_count; /* entries of the allow trie for every service; 0 skips the lookup */
	__u16 spa_port; /* UDP port of SPA datagrams; 0: no SPA */
	__u8 flags; /* enum config_flag */
	/* The service that protects every port no other claims, plus one; 0:
	 * none. */
	__u8 all_service;
	/* Bit s: services[s] is live. */
	__u32 live_services;
	/* The allow trie's entries of this configuration are those under this
	 * epoch: a copy of a configuration (a confirmation, a clock refresh)
	 * keeps its entries, and the configuration before a change keeps its
	 * own for a rollback, which the program itself may make. */
	__u8 allow_epoch;
	__u8 pad[7];
	struct service services[KG_MAX_SERVICES];
	/* The port table, TCP then UDP: see KG_PORT_STEP. */
	__u8 ports[2][65536];
};

enum config_flag {
	/* Flows are learned on egress and their replies pass. */
	CONFIG_FLOWS = 1,
	/* Some service protects all; the host's DHCP and DHCPv6 client ports
	 * take their servers' replies. */
	CONFIG_PROTECT_ALL = 2,
	/* Some service has a knock sequence: SYNs and datagrams are looked at
	 * as knocks. */
	CONFIG_KNOCKS = 4,
};

/*
 * A slot of the knock-progress table, which is set-associative: a source's
 * progress lives in one of the KG_KNOCK_WAYS slots of the set its address
 * hashes to (keyed: see slot_key); a first knock into a full set takes the
 * slot whose progress is oldest (earliest deadline), so progress lives as
 * long as in an LRU of the set's size, and nothing is evicted unseen: the
 * table itself answers "does this source have progress". addr all zero: free.
 * Changed only under the lock; read without it only to compare addr (a torn
 * read can only make a source look like another, and is checked again under
 * the lock).
 */
struct knock_slot {
	struct bpf_spin_lock lock;
	/* The low 16 bits of the config generation this progress was made
	 * under: progress outlives its step timeout by nothing, and no 65536
	 * changes of the configuration fit in a step timeout. */
	__u16 generation;
	__u8 stage; /* steps completed so far, 1..nsteps-1 */
	__u8 service; /* whose sequence: a source follows one at a time */
	__u64 deadline_ns; /* the next step must arrive before this */
	__u8 addr[16]; /* the source */
};

/* A granted source and service, in a map of its own so knock floods cannot
 * evict it. */
struct grant {
	__u64 expires_ns;
	/* Set once the expire event went out; never read for a verdict. */
	__u8 expiry_reported;
	__u8 pad[7];
};

/*
 * A line of the grant cache: a set of KG_CACHE_WAYS entries, entry i in
 * w[2i] (its check) and w[2i+1] (the grant's expiry): a live grant of a
 * (source, service) as the grants map held it in the epoch (HINT_EPOCH)
 * the entry was made in, valid while its check is the fingerprint of
 * (source, service, epoch) xor the expiry times CACHE_MIX (see cache_find).
 */
struct grant_cache_line {
	__u64 w[2 * KG_CACHE_WAYS];
};

/* Key of the allow LPM trie: an entry of the configurations of one allow
 * epoch (see config.allow_epoch), for one service or for every service
 * (service KG_ALLOW_ANY); prefixlen counts the epoch's and the service's 8
 * bits each, then bits of addr (v4 is +96). */
struct allow_key {
	__u32 prefixlen;
	__u8 epoch;
	__u8 service;
	__u8 addr[16];
	__u8 pad[2];
};

#define KG_ALLOW_ANY 0xff

/* What happened to a packet: each packet bumps exactly one verdict counter,
 * in the slot of the interface it arrived on (see KG_IFACE_SLOTS). */
enum verdict {
	VERDICT_PASSED = 0, /* not a protected port, not a knock */
	VERDICT_PASSED_GRANTED, /* protected port, live grant */
	VERDICT_PASSED_ALLOWED, /* protected port, source in the allow list */
	VERDICT_PASSED_FLOW, /* protected port, a reply in a live flow of the host's */
	VERDICT_DROPPED_PROTECTED, /* protected port, no grant */
	VERDICT_DROPPED_KNOCK, /* a knock: always dropped, so knock ports look filtered */
	VERDICT_DROPPED_MALFORMED, /* IP packet we cannot parse safely */
	VERDICT_DROPPED_SPA, /* a datagram to the SPA port: always dropped, valid or not */
	VERDICT_MAX,
};

/* Per-CPU counters of state changes and events, for the whole gate. */
enum counter {
	COUNTER_KNOCK_ADVANCED = 0, /* a step accepted (the first one included) */
	COUNTER_KNOCK_REPEATED, /* a completed step seen again: ignored */
	COUNTER_KNOCK_RESET, /* a wrong SYN/datagram mid-sequence */
	COUNTER_KNOCK_WHILE_GRANTED, /* first step from a granted source: ignored */
	COUNTER_GRANTED, /* sequence completed */
	COUNTER_GRANT_EXPIRED, /* an expired grant found (counted once per grant) */
	COUNTER_GRANT_FAILED, /* the grants map refused an entry */
	COUNTER_EVENTS_LOST, /* ring buffer full: event dropped, verdict unchanged */
	COUNTER_EVENTS_SUPPRESSED, /* knock or reset event over the budget: not sent */
	COUNTER_FLOWS_LEARNED, /* a flow of the host's recorded (egress) */
	COUNTER_FLOWS_FULL, /* no slot of its set was free or expired: not recorded */
	COUNTER_FLOWS_ENDED, /* a flow ended by the host's RST (egress) */
	/* SPA datagrams, by outcome: each is counted under exactly one, the
	 * first check it failed, in the order they are made (see spa.h). */
	COUNTER_SPA_ACCEPTED, /* granted */
	COUNTER_SPA_BAD_LENGTH, /* payload not exactly KG_SPA_LEN bytes */
	COUNTER_SPA_BAD_VERSION, /* version not 1, or flags or reserved not 0 */
	COUNTER_SPA_UNKNOWN_KEY, /* no such key id */
	COUNTER_SPA_BAD_TAG, /* the MAC does not match: forged or corrupt */
	COUNTER_SPA_CLOCK, /* timestamp outside the window of the gate's clock */
	COUNTER_SPA_BAD_ADDRESS, /* names another address, and the key may not */
	COUNTER_SPA_BAD_SERVICE, /* asks for a service the key may not open, or none the gate has */
	COUNTER_SPA_REPLAY, /* timestamp not newer than the key's last accepted */
	/* fwknop datagrams (fwknop.h): what the program made of each, then
	 * what run made of those it handed over. */
	COUNTER_FWKNOP_PASSED, /* HMAC verified under a key: handed to run */
	COUNTER_FWKNOP_BAD_HMAC, /* no key's HMAC matches: forged, corrupt, or not fwknop's */
	COUNTER_FWKNOP_GPG, /* KG_FWKNOP_GPG_LEN bytes or more: GnuPG-encrypted, not taken */
	COUNTER_FWKNOP_REPLAY, /* its HMAC was seen before: a replay */
	COUNTER_FWKNOP_REPLAY_FULL, /* no room to remember it: refused */
	COUNTER_FWKNOP_LOST, /* the ring to run was full: never decided */
	COUNTER_FWKNOP_ACCEPTED, /* run: granted */
	COUNTER_FWKNOP_NO_STANZA, /* run: no stanza holds its source with that key */
	COUNTER_FWKNOP_UNDECRYPTABLE, /* run: no such stanza's key decrypts it to a message */
	COUNTER_FWKNOP_CLOCK, /* run: timestamp outside the window */
	COUNTER_FWKNOP_SOURCE_REQUIRED, /* run: 0.0.0.0 (fwknop -s) under REQUIRE_SOURCE_ADDRESS */
	COUNTER_FWKNOP_USERNAME, /* run: not REQUIRE_USERNAME's user */
	COUNTER_FWKNOP_UNSUPPORTED, /* run: a command or NAT message */
	COUNTER_FWKNOP_PORTS, /* run: a port asked for is outside the stanza's */
	COUNTER_FWKNOP_NO_SERVICE, /* run: no port asked for is protected by a service */
	COUNTER_MAX,
};

/* Per-CPU counters of each service: index service * SERVICE_COUNTER_MAX +
 * counter. */
enum service_counter {
	SERVICE_GRANTED = 0, /* grants made (a sequence, an SPA packet) */
	SERVICE_GRANT_EXPIRED, /* an expired grant found (once per grant) */
	SERVICE_COUNTER_MAX,
};

enum event_type {
	EVENT_KNOCK = 1, /* a step accepted; stage = steps completed */
	EVENT_RESET = 2, /* progress voided by a wrong knock; stage = stage it had */
	EVENT_OPEN = 3, /* sequence completed: source granted until expires_ns */
	EVENT_EXPIRE = 4, /* a grant found expired (once per grant) */
};

struct event {
	__u64 time_ns;
	__u64 expires_ns; /* deadline of the next step, or the grant's expiry */
	__u8 addr[16]; /* the source; for an open by SPA, the address opened */
	__u32 key_id; /* an open by SPA: the key's id (never 0); else 0 */
	__u16 port;
	__u8 proto;
	__u8 type; /* enum event_type */
	__u8 stage;
	__u8 service; /* the service granted, or whose sequence is knocked */
	/* 1: an open by an fwknop datagram, and key_id is the number of the
	 * access.conf stanza that accepted it (fwknopd's "stanza #N"). */
	__u8 fwknop;
	__u8 pad[5];
};

/*
 * fwknop's clients (fwknop.h): datagrams to the SPA port of fwknop's form,
 * base64 text of KG_FWKNOP_MIN_LEN to KG_FWKNOP_MAX_LEN bytes (knockgate's
 * own are KG_SPA_LEN or KG_SPA_LEN_REQUEST binary bytes). Those of
 * KG_FWKNOP_GPG_LEN bytes or more are GnuPG's by fwknop's rule. The last
 * KG_FWKNOP_TAG_LEN characters are the HMAC-SHA256, in base64, of
 * "U2FsdGVkX1" (KG_FWKNOP_PREFIX_LEN characters) and the rest.
 */
#define KG_FWKNOP_MIN_LEN 140
#define KG_FWKNOP_MAX_LEN 1500
#define KG_FWKNOP_GPG_LEN 400
#define KG_FWKNOP_TAG_LEN 43
#define KG_FWKNOP_PREFIX_LEN 10
#define KG_FWKNOP_MAX_BODY (KG_FWKNOP_GPG_LEN - 1 - KG_FWKNOP_TAG_LEN)
/* SHA-256 blocks of the longest message the HMAC covers, padded. */
#define KG_FWKNOP_BLOCKS 6
/* Distinct HMAC keys the program tries, in turn. */
#define KG_FWKNOP_KEYS 64
/* HMACs of datagrams handed over, remembered against replays (fwknop_replay). */
#define KG_FWKNOP_SEEN 16384
#define KG_FWKNOP_RING_BYTES (64 * 1024)

/* An HMAC key, as SHA-256 states after its first block: the key never
 * needs reading per packet. Words in host order. */
struct fwknop_key {
	__u32 inner[8]; /* after key ^ ipad */
	__u32 outer[8]; /* after key ^ opad */
	__u8 name[32]; /* the stanzas that use it ("1,3"), NUL-padded: for status */
};

/* A datagram's HMAC: the key of the fwknop_replay map. */
struct fwknop_digest {
	__u8 b[32];
};

/* What the replay map remembers of a datagram handed over. */
struct fwknop_seen {
	__u64 seen_ns; /* CLOCK_BOOTTIME when it came (0: learned from a fleet) */
	/* Unix seconds after which run forgets it: once run decided it, its
	 * timestamp's window and a minute (no window can take a copy then);
	 * 0 until run decided it. */
	__s64 keep_until;
};

/* A verified datagram, handed to run on the fwknop_ring ring buffer. */
struct fwknop_record {
	__u64 time_ns; /* CLOCK_BOOTTIME */
	__u8 src[16]; /* addresses as everywhere (v4-mapped) */
	__u8 dst[16];
	__u32 ifindex;
	__u16 len; /* bytes of data */
	__u16 key; /* index of the HMAC key that verified it */
	__u8 data[KG_FWKNOP_GPG_LEN];
};

/* What run asks the fwknop_grant program for (its BPF_PROG_TEST_RUN
 * frame): grant addr each service of services (bit s: service s) for
 * open_ns, as an SPA packet would, with an open event naming the stanza;
 * refused whole unless the configuration in force is generation. The
 * program writes back how many it granted. */
struct fwknop_grant_req {
	__u64 open_ns;
	__u8 addr[16];
	__u32 stanza;
	__u32 services;
	__u32 generation;
	__u32 granted; /* out */
	__u16 port[KG_MAX_SERVICES]; /* each service's port asked for, for its event */
	__u8 proto[KG_MAX_SERVICES];
};
