// SPDX-License-Identifier: GPL-2.0
/* govern's XDP fast path: drops packets of blocked sources to the protected TCP ports before the kernel builds a
 * packet buffer. The allowlist wins over every block; other ports and protocols are never touched. SYNs (not
 * SYN-ACKs) to protected ports are counted per source, for the observer's new-connection rates. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "govern_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_PREFIXES_MAX);
	__type(key, struct govern_lpm4);
	__type(value, __u8);
} allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_PREFIXES_MAX);
	__type(key, struct govern_lpm4);
	__type(value, struct govern_block);
} block4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_PREFIXES_MAX);
	__type(key, struct govern_lpm6);
	__type(value, __u8);
} allow6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_PREFIXES_MAX);
	__type(key, struct govern_lpm6);
	__type(value, struct govern_block);
} block6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_HOSTS_MAX);
	__type(key, struct govern_host4);
	__type(value, struct govern_block);
} host4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_HOSTS_MAX);
	__type(key, struct govern_host6);
	__type(value, struct govern_block);
} host6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GOVERN_HOSTS_MAX);
	__type(key, struct govern_net64);
	__type(value, struct govern_block);
} net6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, GOVERN_SOURCES_MAX);
	__type(key, struct govern_src);
	__type(value, __u64);
} syns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GOVERN_REASONS);
	__type(key, __u32);
	__type(value, struct govern_stat);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GOVERN_PORTS_MAX);
	__type(key, __u16); /* host order */
	__type(value, __u8);
} ports SEC(".maps");

static __always_inline int verdict(__u32 reason, __u64 len, int action)
{
	struct govern_stat *s = bpf_map_lookup_elem(&stats, &reason);

	if (s) {
		s->packets++;
		s->bytes += len;
	}
	return action;
}

static __always_inline void count_syn(struct govern_src *src)
{
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&syns, src);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&syns, src, &one, BPF_NOEXIST);
}

/* A block in force: present and not lapsed (0: never lapses). */
static __always_inline int live(struct govern_block *b)
{
	return b && (!b->expires_ns || bpf_ktime_get_ns() < b->expires_ns);
}

SEC("xdp")
int govern_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct govern_src src = {};
	struct tcphdr *tcp;
	__u64 len = end - data;
	__u16 dport;
	int syn;
	void *allow;
	int blocked;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		struct govern_lpm4 k = {.prefixlen = 32};

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return XDP_PASS;
		tcp = (void *)ip + ip->ihl * 4;
		if ((void *)(tcp + 1) > end)
			return XDP_PASS;
		__builtin_memcpy(k.addr, &ip->saddr, 4);
		src.family = 4;
		__builtin_memcpy(src.addr, &ip->saddr, 4);
		dport = bpf_ntohs(tcp->dest);
		/* Read here, where the verifier knows the header is inside the packet. */
		syn = tcp->syn && !tcp->ack;
		if (!bpf_map_lookup_elem(&ports, &dport))
			return XDP_PASS;
		allow = bpf_map_lookup_elem(&allow4, &k);
		blocked = !allow && (live(bpf_map_lookup_elem(&host4, k.addr)) || live(bpf_map_lookup_elem(&block4, &k)));
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct govern_lpm6 k = {.prefixlen = 128};

		/* Extension headers are not walked: a TCP segment behind one passes to the firewall behind us. */
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return XDP_PASS;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return XDP_PASS;
		__builtin_memcpy(k.addr, &ip6->saddr, 16);
		src.family = 6;
		__builtin_memcpy(src.addr, &ip6->saddr, 16);
		dport = bpf_ntohs(tcp->dest);
		/* Read here, where the verifier knows the header is inside the packet. */
		syn = tcp->syn && !tcp->ack;
		if (!bpf_map_lookup_elem(&ports, &dport))
			return XDP_PASS;
		allow = bpf_map_lookup_elem(&allow6, &k);
		blocked = !allow && (live(bpf_map_lookup_elem(&host6, k.addr)) || live(bpf_map_lookup_elem(&net6, k.addr)) ||
				     live(bpf_map_lookup_elem(&block6, &k)));
	} else {
		return XDP_PASS;
	}
	if (allow)
		return verdict(GOVERN_PASS_ALLOW, len, XDP_PASS);
	/* Counted before the drop, as the firewall backends do: a blocked source's rate stays visible. */
	if (syn)
		count_syn(&src);
	if (blocked)
		return verdict(GOVERN_DROP_BLOCK, len, XDP_DROP);
	return verdict(GOVERN_PASS_OTHER, len, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
