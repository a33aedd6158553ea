// SPDX-License-Identifier: GPL-2.0
/* govern's socket scan: a BPF iterator over the TCP sockets of the reader's network namespace that writes one
 * fixed 48-byte record per socket on a protected port (TIME_WAIT left out), the fields the observer reads of
 * sock_diag's tcp_info. sock_diag builds a netlink message with the whole tcp_info for each socket (18-20 ms of
 * kernel time a tick at 20k sockets, docs/benchmarks.md); this writes 48 bytes and numpy reads them as they come.
 *
 * The kernel's structures are declared here with only the fields used, for CO-RE: libbpf relocates each access by
 * field name against the running kernel's BTF when the object is loaded, so one build serves every kernel with
 * BTF (/sys/kernel/btf/vmlinux) and the iterator (Linux 5.9+). */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define TCP_TIME_WAIT 6
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

/* The protected ports, one bit each (port p: byte p / 8, bit p % 8); the loader writes them. */
#define PORT_BYTES 8192

struct in6_addr {
	__u8 s6_addr[16];
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct {
		__u32 lrcvtime;
	} icsk_ack;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u64 bytes_received;
	__u32 data_segs_in;
	__u32 data_segs_out;
	__u32 lsndtime;
} __attribute__((preserve_access_index));

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

extern unsigned int CONFIG_HZ __kconfig;

/* One socket. A listener's address is its local one, `recv` its accept queue now and `sent` its backlog; any other
 * socket's is the remote address, `sent` and `recv` are tcp_info's tcpi_last_data_sent and tcpi_last_data_recv
 * (ms ago), and the rest tcpi_bytes_received, tcpi_data_segs_in and tcpi_data_segs_out. Ports in network order, as
 * sock_diag has them. A request socket (SYN_RECV) has no tcp_sock: its counters are 0. */
struct govern_socket {
	__u8 family;
	__u8 state;
	__be16 sport;
	__u32 sent;
	__u8 addr[16];
	__u32 recv;
	__u32 segs_in;
	__u64 bytes_received;
	__u32 segs_out;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[PORT_BYTES]);
} ports SEC(".maps");

static __always_inline __u32 ms_since(__u32 now, __u32 then)
{
	/* jiffies_to_msecs() for the HZ values that divide 1000 (100, 250, 1000: every distribution's), as tcp_info
	 * computes it; 300 is rounded down. */
	return (now - then) * (1000 / CONFIG_HZ);
}

SEC("iter/tcp")
int govern_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct govern_socket r = {};
	__u32 zero = 0;
	__u8 *bits;
	__u16 port;

#ifdef GOVERN_WALK_ONLY
	/* bench/bench_observer.py builds this variant: what the kernel's walk alone costs. */
	return 0;
#endif
	if (!skc)
		return 0;
	r.state = skc->skc_state;
	if (r.state == TCP_TIME_WAIT)
		return 0;
	port = skc->skc_num;
	bits = bpf_map_lookup_elem(&ports, &zero);
	if (!bits || !(bits[(port >> 3) & (PORT_BYTES - 1)] & (1 << (port & 7))))
		return 0;
	r.family = skc->skc_family;
	r.sport = __builtin_bswap16(port);
	if (r.state == TCP_LISTEN) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
		struct sock *sk = (struct sock *)tp;

		if (r.family == AF_INET)
			__builtin_memcpy(r.addr, &skc->skc_rcv_saddr, 4);
		else
			BPF_CORE_READ_INTO(&r.addr, skc, skc_v6_rcv_saddr);
		if (sk) {
			r.recv = sk->sk_ack_backlog;
			r.sent = sk->sk_max_ack_backlog;
		}
	} else {
		if (r.family == AF_INET)
			__builtin_memcpy(r.addr, &skc->skc_daddr, 4);
		else
			BPF_CORE_READ_INTO(&r.addr, skc, skc_v6_daddr);
		if (r.state != TCP_NEW_SYN_RECV) {
			struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);

			if (tp) {
				__u32 now = (__u32)bpf_jiffies64();

				r.sent = ms_since(now, tp->lsndtime);
				r.recv = ms_since(now, tp->inet_conn.icsk_ack.lrcvtime);
				r.bytes_received = tp->bytes_received;
				r.segs_in = tp->data_segs_in;
				r.segs_out = tp->data_segs_out;
			}
		}
	}
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char _license[] SEC("license") = "GPL";
