//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// synguard's XDP fast path: SYNs to protected services in cookie mode are
// answered at the driver with a SYN cookie identical to the cookies
// package's, and ACKs that belong to no connection and carry no valid
// cookie are dropped. Everything else passes to the kernel's stack, where
// the NFQUEUE path stays the complete implementation. See package doc and
// docs/architecture.md, "XDP fast path".

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char _license[] SEC("license") = "GPL";

// How many services the map holds; the loader refuses more.
#define MAX_SERVICES 256

// A service's mode, as the engine sets it.
enum svc_mode {
	MODE_PASSTHROUGH = 0, // SYNs pass to the half-open accounting
	MODE_COOKIE = 1,      // SYNs are answered here
	MODE_OFF = 2,         // observe only: everything passes
};

// Per-service counters, at service*NUM_COUNTERS + counter.
enum counter {
	C_SYN_RECEIVED = 0,
	C_SYNACK_SENT = 1,
	C_AMPLIFICATION_GUARD = 2,
	C_ACK_INVALID = 3, // forged ACKs dropped
	C_ACK_VALID = 4,   // cookie ACKs passed on to the queue
	NUM_COUNTERS = 5,
};

// What the program did with a packet, at the action's index.
enum action {
	A_PASS = 0,
	A_DROP = 1,
	A_TX = 2,
	NUM_ACTIONS = 3,
};

// A protected service: family (4 or 6), port and address, IPv4 as the
// IPv4-mapped IPv6 address, as cookies.computeMAC writes it.
struct svc_key {
	__u8 family;
	__u8 pad;
	__be16 port;
	__u8 addr[16];
};

// What the engine says of a service: its index in the counters, its mode,
// and the TCP options its backend announces (wscale 0xff: none).
struct svc_val {
	__u32 index;
	__u8 mode;
	__u8 wscale;
	__u8 sack;
	__u8 pad;
	__u16 mss;
	__u16 pad2;
};

// The engine's control block, renewed while the engine is healthy. Keys
// are SipHash keys of epochs epoch_base, +1 and +2; the current epoch is
// found here from the TAI clock and the epochs' bounds, so a rotation
// needs no update in time.
struct engine_control {
	__u64 deadline_tai;  // past it, everything passes
	__s64 epoch_base;    // epoch of keys[0]
	__u64 bounds_tai[3]; // TAI time epochs epoch_base+1, +2 and +3 start
	__u64 keys[3][2];    // k0, k1 of epochs epoch_base..epoch_base+2
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct engine_control);
} control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES *NUM_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NUM_ACTIONS);
	__type(key, __u32);
	__type(value, __u64);
} actions SEC(".maps");

// The conntrack lookup kfunc and its options (struct bpf_ct_opts, 16
// bytes since Linux 6.1). The entry is only tested for NULL and released;
// a struct (not a forward declaration) lets the loader match the kfunc's
// signature against the kernel's.
struct nf_conn {
	int unused;
};
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *xdp_ctx, struct bpf_sock_tuple *bpf_tuple,
					 __u32 len_tuple, struct bpf_ct_opts *opts, __u32 len_opts) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define OPT_EOL 0
#define OPT_NOP 1
#define OPT_MSS 2
#define OPT_WSCALE 3
#define OPT_SACK_PERM 4
#define OPT_SACK 5
#define OPT_TIMESTAMPS 8
#define MAX_WSCALE 14
#define HOP_LIMIT 64

static __always_inline int count_action(int verdict, __u32 action)
{
	__u64 *n = bpf_map_lookup_elem(&actions, &action);
	if (n)
		*n += 1;
	return verdict;
}

static __always_inline void count(__u32 svc, __u32 c)
{
	__u32 k = svc * NUM_COUNTERS + c;
	__u64 *n = bpf_map_lookup_elem(&counters, &k);
	if (n)
		*n += 1;
}

#define PASS() count_action(XDP_PASS, A_PASS)
#define DROP() count_action(XDP_DROP, A_DROP)

// ---- SipHash-2-4, as cookies.sipHash24 ----

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = ROTL(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = ROTL(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = ROTL(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = ROTL(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = ROTL(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = ROTL(v2, 32);                                                                 \
	} while (0)

// The MAC message (cookies/doc.go): 43 bytes, padded here to six words
// whose last carries the length in its top byte, as SipHash's final block.
#define MSG_LEN 43
struct mac_msg {
	__u8 b[48];
};

// The SipHash state. The MAC message's first four words hold only the
// flow, so an ACK's two checks (ISN seq-1, and seq for a probe) share the
// state after them and differ in the last two words alone.
struct sip_state {
	__u64 v0, v1, v2, v3;
};

// sip_prefix absorbs the message's first four words (the flow).
static __always_inline void sip_prefix(struct sip_state *s, const __u64 *key, const struct mac_msg *m)
{
	__u64 v0 = key[0] ^ 0x736f6d6570736575ULL;
	__u64 v1 = key[1] ^ 0x646f72616e646f6dULL;
	__u64 v2 = key[0] ^ 0x6c7967656e657261ULL;
	__u64 v3 = key[1] ^ 0x7465646279746573ULL;
	const __u64 *w = (const __u64 *)m->b;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u64 x = w[i]; // little-endian, as BPF is on x86 and arm64
		v3 ^= x;
		SIPROUND;
		SIPROUND;
		v0 ^= x;
	}
	s->v0 = v0, s->v1 = v1, s->v2 = v2, s->v3 = v3;
}

// sip_finish absorbs the last two words (ISN, low byte, length) into a
// copy of s and finalises.
static __always_inline __u64 sip_finish(const struct sip_state *s, const struct mac_msg *m)
{
	__u64 v0 = s->v0, v1 = s->v1, v2 = s->v2, v3 = s->v3;
	const __u64 *w = (const __u64 *)m->b;
#pragma unroll
	for (int i = 4; i < 6; i++) {
		__u64 x = w[i];
		v3 ^= x;
		SIPROUND;
		SIPROUND;
		v0 ^= x;
	}
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

// A flow as the MAC binds it.
struct flow {
	__u8 client[16], server[16]; // first: the checksum reads them as words
	__be16 client_port, server_port;
	__u8 family;
};

// mac_message lays out the flow's part of the MAC message in m.
static __always_inline void mac_message(struct mac_msg *m, const struct flow *f, __u8 low)
{
	m->b[0] = f->family;
	m->b[1] = f->family;
	__builtin_memcpy(&m->b[2], f->client, 16);
	__builtin_memcpy(&m->b[18], f->server, 16);
	__builtin_memcpy(&m->b[34], &f->client_port, 2);
	__builtin_memcpy(&m->b[36], &f->server_port, 2);
	m->b[42] = low;
	m->b[47] = MSG_LEN;
}

// mac_for is the cookie MAC of the message in m, from the state after its
// flow words, with isn in place.
static __always_inline __u32 mac_for(const struct sip_state *s, struct mac_msg *m, __u32 isn)
{
	__be32 nisn = bpf_htonl(isn);
	__builtin_memcpy(&m->b[38], &nisn, 4);
	return (__u32)sip_finish(s, m) & 0xffffff;
}

// cookie_mac is the 24-bit MAC of a cookie (cookies.computeMAC).
static __always_inline __u32 cookie_mac(const __u64 *key, const struct flow *f, __u32 isn, __u8 low)
{
	struct mac_msg m = {};
	struct sip_state s;
	mac_message(&m, f, low);
	sip_prefix(&s, key, &m);
	return mac_for(&s, &m, isn);
}

// ---- option tables, as cookies/tables.go ----

static const __u16 mss_table4[8] = {536, 1200, 1300, 1380, 1440, 1452, 1460, 8960};
static const __u16 mss_table6[8] = {1220, 1280, 1360, 1400, 1420, 1432, 1440, 8940};
static const __s8 wscale_table[8] = {-1, 0, 3, 6, 7, 8, 9, 12};

// The client's SYN options that matter here.
struct syn_opts {
	__u16 mss;    // as sent; 0 when absent
	__u8 has_mss;
	__s8 wscale;  // -1: absent; clamped to 14
	__u8 sack;
};

static __always_inline __u8 encode_options(const struct syn_opts *o, int ipv6)
{
	const __u16 *t = ipv6 ? mss_table6 : mss_table4;
	__u8 mi = 0, wi = 0;
#pragma unroll
	for (int i = 7; i > 0; i--) {
		if (o->mss >= t[i]) {
			mi = i;
			break;
		}
	}
	if (o->wscale >= 0) {
		wi = 1;
#pragma unroll
		for (int i = 7; i > 1; i--) {
			if (o->wscale >= wscale_table[i]) {
				wi = i;
				break;
			}
		}
	}
	return mi << 4 | wi << 1 | (o->sack ? 1 : 0);
}

// The state of an option walk, one option per bpf_loop step.
struct opt_walk {
	__u8 b[64]; // the options (40 bytes at most), zero beyond
	__u32 i;    // offset of the next option
	__u32 n;    // length of the option list
	int err;
	struct syn_opts o;
};

// opt_step reads the option at w->i, as packet.Parse's parseOptions
// does: unknown kinds are skipped by their length, a known kind with the
// wrong length is an error. It returns 1 to stop the walk.
static long opt_step(__u64 step, void *ctx)
{
	struct opt_walk *w = ctx;
	__u32 i = w->i;
	if (i >= w->n)
		return 1;
	__u8 kind = w->b[i & 63];
	if (kind == OPT_EOL)
		return 1;
	if (kind == OPT_NOP) {
		w->i = i + 1;
		return 0;
	}
	if (i + 1 >= w->n)
		goto bad;
	__u8 olen = w->b[(i + 1) & 63];
	if (olen < 2 || i + olen > w->n)
		goto bad;
	switch (kind) {
	case OPT_MSS:
		if (olen != 4)
			goto bad;
		w->o.mss = (__u16)w->b[(i + 2) & 63] << 8 | w->b[(i + 3) & 63];
		w->o.has_mss = 1;
		break;
	case OPT_WSCALE:
		if (olen != 3)
			goto bad;
		w->o.wscale = w->b[(i + 2) & 63] > MAX_WSCALE ? MAX_WSCALE : w->b[(i + 2) & 63];
		break;
	case OPT_SACK_PERM:
		if (olen != 2)
			goto bad;
		w->o.sack = 1;
		break;
	case OPT_SACK:
		if ((olen - 2) % 8 != 0 || olen < 10 || olen > 34)
			goto bad;
		break;
	case OPT_TIMESTAMPS:
		if (olen != 10)
			goto bad;
		break;
	}
	w->i = i + olen;
	return 0;
bad:
	w->err = 1;
	return 1;
}

// common_layout reads the two option lists nearly every client sends, as
// they are, without the walk: Linux's (MSS, SACK-permitted, timestamps,
// NOP, window scale) and the one without timestamps (MSS, NOP, window
// scale, NOP, NOP, SACK-permitted). Any other list takes the walk.
static __always_inline int common_layout(const __u8 *b, __u64 n, struct syn_opts *o)
{
	int linux = n == 20 && b[0] == OPT_MSS && b[1] == 4 && b[4] == OPT_SACK_PERM && b[5] == 2 &&
		    b[6] == OPT_TIMESTAMPS && b[7] == 10 && b[16] == OPT_NOP && b[17] == OPT_WSCALE &&
		    b[18] == 3;
	int plain = n == 12 && b[0] == OPT_MSS && b[1] == 4 && b[4] == OPT_NOP && b[5] == OPT_WSCALE &&
		    b[6] == 3 && b[8] == OPT_NOP && b[9] == OPT_NOP && b[10] == OPT_SACK_PERM && b[11] == 2;
	if (!linux && !plain)
		return 0;
	__u8 ws = linux ? b[19] : b[7];
	o->mss = (__u16)b[2] << 8 | b[3];
	o->has_mss = 1;
	o->wscale = ws > MAX_WSCALE ? MAX_WSCALE : ws;
	o->sack = 1;
	return 1;
}

// parse_options reads the TCP options of a SYN the way packet.Parse does.
// It returns -1 for a list packet.Parse rejects: the engine counts such a
// SYN as malformed, so it must pass to the engine. The walk runs under
// bpf_loop, so the verifier checks one step rather than every path
// through forty.
static __always_inline int parse_options(struct xdp_md *ctx, __u32 off, __u32 len, struct syn_opts *o)
{
	struct opt_walk w = {};
	w.o.wscale = -1;
	// The barrier keeps clang from moving the checks away from the
	// register the helper call reads: the verifier needs 1 <= n <= 40
	// there.
	__u64 n = len;
	asm volatile("" : "+r"(n));
	if (n > 40)
		return -1;
	if (n > 0) {
		if (bpf_xdp_load_bytes(ctx, off, w.b, n) < 0)
			return -1;
		if (!common_layout(w.b, n, &w.o)) {
			w.n = n;
			bpf_loop(40, opt_step, &w, 0);
			if (w.err)
				return -1;
		}
	}
	*o = w.o;
	return 0;
}

// ---- checksums ----

static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

// csum_add sums n bytes (even, a constant) at p as 16-bit words in memory
// order: the one's complement sum does not care which byte order it is
// taken in, as long as the result is stored the same way.
static __always_inline __u64 csum_add(const void *p, int n, __u64 acc)
{
	const __u16 *w = p;
#pragma unroll
	for (int i = 0; i < n / 2; i++)
		acc += w[i];
	return acc;
}

// ---- the packet in hand ----

struct pkt {
	struct flow f;      // client = source, server = destination
	int ipv6;
	__u32 ip_len;       // the IP packet's length, as its header says
	__u32 l4;           // offset of the TCP header in the frame
	__u32 tcp_len;      // TCP header length
	__u32 payload;      // TCP payload length
	__u32 seq, ack;
	__u8 flags;
};

// control_now returns the control block while the engine keeps it fresh,
// with the current epoch and the index of its key (1 or 2); NULL when the
// engine has gone quiet or the keys do not cover now.
static __always_inline struct engine_control *control_now(__s64 *epoch, int *idx)
{
	__u32 zero = 0;
	struct engine_control *c = bpf_map_lookup_elem(&control, &zero);
	if (!c)
		return NULL;
	__u64 tai = bpf_ktime_get_tai_ns();
	if (tai > c->deadline_tai || tai < c->bounds_tai[0] || tai >= c->bounds_tai[2])
		return NULL;
	int i = tai < c->bounds_tai[1] ? 1 : 2;
	*epoch = c->epoch_base + i;
	*idx = i;
	return c;
}

// answer_syn turns the SYN in ctx into its cookie SYN-ACK, built as the
// engine builds it (engine/client.go answerSYN, packet.Build), and sends
// it back out the link it came in on.
static __always_inline int answer_syn(struct xdp_md *ctx, struct pkt *p, struct svc_val *svc)
{
	struct syn_opts so;
	if (parse_options(ctx, p->l4 + 20, p->tcp_len - 20, &so) < 0)
		return PASS(); // the engine counts it as malformed
	__s64 epoch;
	int idx;
	struct engine_control *c = control_now(&epoch, &idx);
	if (!c)
		return PASS();
	__u32 svci = svc->index;
	if (svci >= MAX_SERVICES)
		return PASS();
	count(svci, C_SYN_RECEIVED);

	// The options the client is told: the backend's, limited to what
	// the client offered (engine/negotiate.go announce).
	int mss = so.has_mss && svc->mss != 0;
	int ws = so.wscale >= 0 && svc->wscale != 0xff;
	int sack = so.sack && svc->sack;
	__u32 optlen = (mss ? 4 : 0) + (sack ? 4 : 0) + (ws ? 4 : 0);
	__u32 iph = p->ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u32 ip_len = iph + 20 + optlen;
	if (ip_len > p->ip_len) {
		// Never larger than the SYN: a spoofed flood must not be
		// amplified toward its victim.
		count(svci, C_AMPLIFICATION_GUARD);
		return DROP();
	}

	__u8 low = (__u8)((epoch & 1) << 7) | encode_options(&so, p->ipv6);
	__u32 cookie = cookie_mac(c->keys[idx & 3], &p->f, p->seq, low) << 8 | low;

	// The TCP header, built on the stack and summed there.
	__u32 tcp[10] = {};
	__u8 *t = (__u8 *)tcp;
	__builtin_memcpy(&t[0], &p->f.server_port, 2);
	__builtin_memcpy(&t[2], &p->f.client_port, 2);
	tcp[1] = bpf_htonl(cookie);
	tcp[2] = bpf_htonl(p->seq + 1);
	t[12] = (__u8)((20 + optlen) / 4) << 4;
	t[13] = TCP_SYN | TCP_ACK;
	__u32 o = 5;
	if (mss) {
		tcp[o & 15] = bpf_htonl(OPT_MSS << 24 | 4 << 16 | svc->mss);
		o++;
	}
	if (sack) {
		tcp[o & 15] = bpf_htonl(OPT_NOP << 24 | OPT_NOP << 16 | OPT_SACK_PERM << 8 | 2);
		o++;
	}
	if (ws)
		tcp[o & 15] = bpf_htonl(OPT_NOP << 24 | OPT_WSCALE << 16 | 3 << 8 | svc->wscale);

	__u64 sum = csum_add(tcp, sizeof(tcp), 0);
	if (p->ipv6) {
		sum = csum_add(p->f.server, 16, sum);
		sum = csum_add(p->f.client, 16, sum);
		sum += bpf_htonl(20 + optlen) >> 16;
		sum += bpf_htonl(20 + optlen) & 0xffff;
		sum += bpf_htons(IPPROTO_TCP);
	} else {
		sum = csum_add(&p->f.server[12], 4, sum);
		sum = csum_add(&p->f.client[12], 4, sum);
		sum += bpf_htons(IPPROTO_TCP);
		sum += bpf_htons(20 + optlen);
	}
	__u16 tcsum = ~csum_fold(sum);
	__builtin_memcpy(&t[16], &tcsum, 2);

	// Swap the link addresses before the frame shrinks under them.
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return PASS();
	struct ethhdr e = *eth;
	__builtin_memcpy(e.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(e.h_source, eth->h_dest, ETH_ALEN);

	int delta = (int)(sizeof(struct ethhdr) + ip_len) - (int)(end - data);
	if (delta != 0 && bpf_xdp_adjust_tail(ctx, delta) < 0)
		return PASS();
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return DROP();
	*eth = e;

	__u8 *l4;
	if (p->ipv6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return DROP();
		struct ipv6hdr h = {};
		h.version = 6;
		h.payload_len = bpf_htons(20 + optlen);
		h.nexthdr = IPPROTO_TCP;
		h.hop_limit = HOP_LIMIT;
		__builtin_memcpy(&h.saddr, p->f.server, 16);
		__builtin_memcpy(&h.daddr, p->f.client, 16);
		*ip6 = h;
		l4 = (__u8 *)(ip6 + 1);
	} else {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return DROP();
		struct iphdr h = {};
		h.version = 4;
		h.ihl = 5;
		h.tot_len = bpf_htons(ip_len);
		h.frag_off = bpf_htons(0x4000); // DF
		h.ttl = HOP_LIMIT;
		h.protocol = IPPROTO_TCP;
		__builtin_memcpy(&h.saddr, &p->f.server[12], 4);
		__builtin_memcpy(&h.daddr, &p->f.client[12], 4);
		h.check = ~csum_fold(csum_add(&h, sizeof(h), 0));
		*ip = h;
		l4 = (__u8 *)(ip + 1);
	}
	__u32 *dst = (__u32 *)l4;
	__u32 words = (20 + optlen) / 4;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (i >= words)
			break;
		if ((void *)(dst + i + 1) > end)
			return DROP();
		dst[i] = tcp[i];
	}
	count(svci, C_SYNACK_SENT);
	return count_action(XDP_TX, A_TX);
}

// check_ack lets an ACK pass when it belongs to a connection the kernel
// tracks or carries a valid cookie (the NFQUEUE path then completes the
// handshake), and drops it otherwise: a forged ACK never reaches the queue.
static __always_inline int check_ack(struct xdp_md *ctx, struct pkt *p, struct svc_val *svc)
{
	if (svc->index >= MAX_SERVICES)
		return PASS();
	// Established flows first: every data segment of a handed-off flow
	// comes this way, and should cost no more than the lookup.
	struct bpf_sock_tuple tup = {};
	__u32 tup_len;
	if (p->ipv6) {
		__builtin_memcpy(tup.ipv6.saddr, p->f.client, 16);
		__builtin_memcpy(tup.ipv6.daddr, p->f.server, 16);
		tup.ipv6.sport = p->f.client_port;
		tup.ipv6.dport = p->f.server_port;
		tup_len = sizeof(tup.ipv6);
	} else {
		__builtin_memcpy(&tup.ipv4.saddr, &p->f.client[12], 4);
		__builtin_memcpy(&tup.ipv4.daddr, &p->f.server[12], 4);
		tup.ipv4.sport = p->f.client_port;
		tup.ipv4.dport = p->f.server_port;
		tup_len = sizeof(tup.ipv4);
	}
	struct bpf_ct_opts opts = {.netns_id = BPF_F_CURRENT_NETNS, .l4proto = IPPROTO_TCP};
	struct nf_conn *ct = bpf_xdp_ct_lookup(ctx, &tup, tup_len, &opts, sizeof(opts));
	if (ct) {
		bpf_ct_release(ct);
		return PASS();
	}

	__s64 epoch;
	int idx;
	struct engine_control *c = control_now(&epoch, &idx);
	if (!c)
		return PASS();
	__u32 cookie = p->ack - 1;
	__u8 low = cookie & 0xff;
	// The key of whichever of this epoch and the last has the cookie's
	// parity (cookies.Jar.Validate). A zero-window probe (no payload)
	// carries the ISN itself rather than ISN+1.
	int k = ((epoch & 1) == (low >> 7)) ? idx : idx - 1;
	const __u64 *key = c->keys[k & 3];
	__u32 mac = cookie >> 8;
	struct mac_msg m = {};
	struct sip_state s;
	mac_message(&m, &p->f, low);
	sip_prefix(&s, key, &m);
	if (mac_for(&s, &m, p->seq - 1) == mac || (p->payload == 0 && mac_for(&s, &m, p->seq) == mac)) {
		count(svc->index, C_ACK_VALID);
		return PASS();
	}
	count(svc->index, C_ACK_INVALID);
	return DROP();
}

static __always_inline int handle_tcp(struct xdp_md *ctx, struct pkt *p, struct tcphdr *tcp)
{
	struct svc_key key = {};
	key.family = p->f.family;
	key.port = p->f.server_port;
	__builtin_memcpy(key.addr, p->f.server, 16);
	struct svc_val *svc = bpf_map_lookup_elem(&services, &key);
	if (!svc || svc->mode == MODE_OFF)
		return PASS();
	__u8 f = p->flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
	if (f == TCP_SYN) {
		if (svc->mode != MODE_COOKIE)
			return PASS();
		return answer_syn(ctx, p, svc);
	}
	if (f == TCP_ACK)
		return check_ack(ctx, p, svc);
	return PASS();
}

static __always_inline int read_tcp(struct pkt *p, struct tcphdr *tcp, void *end)
{
	if ((void *)(tcp + 1) > end)
		return -1;
	__u32 doff = tcp->doff * 4;
	if (doff < 20 || doff > p->ip_len - (p->l4 - sizeof(struct ethhdr)))
		return -1;
	p->tcp_len = doff;
	p->payload = p->ip_len - (p->l4 - sizeof(struct ethhdr)) - doff;
	p->f.client_port = tcp->source;
	p->f.server_port = tcp->dest;
	p->seq = bpf_ntohl(tcp->seq);
	p->ack = bpf_ntohl(tcp->ack_seq);
	p->flags = ((__u8 *)tcp)[13];
	return 0;
}

SEC("xdp")
int synguard_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return PASS();
	struct pkt p = {};
	struct tcphdr *tcp;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return PASS();
		// IPv4 options, fragments and anything but TCP: the NFQUEUE
		// path's (the kernel reassembles fragments before it).
		if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) ||
		    ip->protocol != IPPROTO_TCP)
			return PASS();
		p.ip_len = bpf_ntohs(ip->tot_len);
		if (p.ip_len < sizeof(*ip) + sizeof(*tcp) || (void *)ip + p.ip_len > end)
			return PASS();
		// A header with a bad checksum is the kernel's to drop, before
		// netfilter sees it; it must not be answered here.
		if (csum_fold(csum_add(ip, sizeof(*ip), 0)) != 0xffff)
			return PASS();
		p.f.family = 4;
		p.f.client[10] = 0xff;
		p.f.client[11] = 0xff;
		p.f.server[10] = 0xff;
		p.f.server[11] = 0xff;
		__builtin_memcpy(&p.f.client[12], &ip->saddr, 4);
		__builtin_memcpy(&p.f.server[12], &ip->daddr, 4);
		tcp = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return PASS();
		// Extension headers are the NFQUEUE path's; so is a jumbogram.
		if (ip6->version != 6 || ip6->nexthdr != IPPROTO_TCP || ip6->payload_len == 0)
			return PASS();
		p.ip_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		if (p.ip_len < sizeof(*ip6) + sizeof(*tcp) || (void *)ip6 + p.ip_len > end)
			return PASS();
		p.ipv6 = 1;
		p.f.family = 6;
		__builtin_memcpy(p.f.client, &ip6->saddr, 16);
		__builtin_memcpy(p.f.server, &ip6->daddr, 16);
		tcp = (void *)(ip6 + 1);
	} else {
		return PASS(); // VLAN tags, ARP, everything else
	}
	p.l4 = (void *)tcp - data;
	if (read_tcp(&p, tcp, end) < 0)
		return PASS();
	return handle_tcp(ctx, &p, tcp);
}
