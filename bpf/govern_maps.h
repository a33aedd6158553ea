/* The single source of govern's XDP map names, key and value layouts: included by govern_xdp.c and parsed by
 * govern/xdp/maps.py's test (tests/unit/test_xdp_maps.py), which fails if the Python ctypes structs drift.
 * Keep it in this plain form: one `#define NAME value` or one field per line, fixed-size types only. */
#ifndef GOVERN_MAPS_H
#define GOVERN_MAPS_H

#include <linux/types.h>

#define GOVERN_MAP_ALLOW4 "allow4"
#define GOVERN_MAP_ALLOW6 "allow6"
#define GOVERN_MAP_BLOCK4 "block4"
#define GOVERN_MAP_BLOCK6 "block6"
#define GOVERN_MAP_HOST4 "host4"
#define GOVERN_MAP_HOST6 "host6"
#define GOVERN_MAP_NET6 "net6"
#define GOVERN_MAP_SYNS "syns"
#define GOVERN_MAP_STATS "stats"
#define GOVERN_MAP_PORTS "ports"
#define GOVERN_PROG "govern_xdp"

#define GOVERN_PREFIXES_MAX 262144
#define GOVERN_HOSTS_MAX 2097152
#define GOVERN_SOURCES_MAX 262144
#define GOVERN_PORTS_MAX 64

/* Reasons, the index of the stats map. */
#define GOVERN_PASS_ALLOW 0
#define GOVERN_DROP_BLOCK 1
#define GOVERN_PASS_OTHER 2
#define GOVERN_REASONS 3

/* LPM trie keys: prefixlen first, the address in network order. */
struct govern_lpm4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct govern_lpm6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Blocked hosts (IPv4 /32, IPv6 /128) and IPv6 /64s, most of what govern blocks, go into hash maps keyed by the
 * address (the /64's first 8 bytes), network order: adding one is O(1) whatever the maps hold, and so is the lookup.
 * The LPM tries keep every other prefix length. */
struct govern_host4 {
	__u8 addr[4];
};

struct govern_host6 {
	__u8 addr[16];
};

struct govern_net64 {
	__u8 addr[8];
};

/* A source address (IPv4 in the first 4 bytes, the rest zero); the SYN counter's key. */
struct govern_src {
	__u32 family;
	__u8 addr[16];
};

/* A block's value: when it lapses, in CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns); 0 never. A lapsed block
 * drops nothing, so blocks end by themselves in XDP too if the daemon is gone. */
struct govern_block {
	__u64 expires_ns;
};

/* One per-CPU counter of the stats map. */
struct govern_stat {
	__u64 packets;
	__u64 bytes;
};

#endif
