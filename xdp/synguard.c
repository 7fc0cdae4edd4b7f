//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// synguard's fast path, in two programs built from the same code: an XDP
// program (synguard_xdp) for links whose driver runs XDP natively, and a
// tc ingress program (synguard_tc, attached through tcx) for the others,
// veth among them, where it sees the kernel's skb without the copy
// generic XDP makes. SYNs to protected services in cookie mode are
// answered with a SYN cookie identical to the cookies package's, and ACKs
// that belong to no connection and carry no valid cookie are dropped.
// Everything else passes to the kernel's stack, where the NFQUEUE path
// stays the complete implementation. See package doc and
// docs/architecture.md, "XDP fast path".

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_core_read.h>
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

// Per-service counters, in one entry per service, so that a reader gets
// all of a service's counts with one lookup.
enum counter {
	C_SYN_RECEIVED = 0,
	C_SYNACK_SENT = 1,
	C_AMPLIFICATION_GUARD = 2,
	C_ACK_INVALID = 3, // forged ACKs dropped
	C_ACK_VALID = 4,   // cookie ACKs passed on to the queue
	C_SYN_DENIED = 5,  // SYNs from a denied source, dropped
	C_EARLY_DATA = 6,  // segments of a cookie-validated flow passed on to the queue
	C_SYN_REPLAYED = 7, // cookie ACKs turned into the backend's SYN here (SVC_REPLAY)
	C_COMPLETED = 8,    // backend SYN-ACKs of those answered here: ACK and window update
	C_DEFERRED = 9,     // flows whose client segment came first: left to the queue
	C_TRANSLATED = 10,  // segments of a completed flow translated and sent on here
	C_SACK_DROPPED = 11, // client segments with options (SACK blocks) before the entry: dropped
	NUM_COUNTERS = 12,
};

// What the program did with a packet, at the action's index.
enum action {
	A_PASS = 0,
	A_DROP = 1,
	A_TX = 2,
	A_FORWARD = 3, // sent on toward the backend (bpf_redirect_neigh)
	NUM_ACTIONS = 4,
};

struct svc_counters {
	__u64 n[NUM_COUNTERS];
};

struct action_counts {
	__u64 n[NUM_ACTIONS];
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
	__u8 flags; // SVC_*
	__u16 mss;
	__u16 pad2;
	__u32 replay_ifindex; // SVC_REPLAY: the link the backend is reached through
};

// svc_val flags.
#define SVC_LISTS 1 // the service has allow or deny lists
#define SVC_EARLY 2 // early data: the SYN-ACK opens EARLY_SEGMENTS of window
#define SVC_REPLAY 4 // tc: a pure cookie ACK becomes the backend's SYN here

// engine.EarlySegments, and the MSS a client assumes when the SYN-ACK
// announces none (engine/earlydata.go earlyWindow).
#define EARLY_SEGMENTS 4
#define DEFAULT_MSS4 536
#define DEFAULT_MSS6 1220
// How long a flow whose cookie ACK passed here may send more segments
// before its conntrack entry exists: beyond the engine's give-up time for
// a silent backend (7.75 s).
#define EARLY_FLOW_NS (10ULL * 1000000000ULL)

// A source prefix of one service's allow or deny list: prefixlen counts
// the 32 bits of the service's index, then the address's (IPv4 in the
// first four bytes of addr).
struct src_key {
	__u32 prefixlen;
	__u32 svc;
	__u8 addr[16];
};

// A SYN sampled for the engine's counts by source and the attack's pcap:
// the service's index, the frame's length, how many SYNs it stands for
// and the frame's first bytes.
#define SAMPLE_EVERY 8
#define SAMPLE_BYTES 128
#define SAMPLE_ROOM 256 // a power of two above SAMPLE_BYTES
struct sample {
	__u32 svc;
	__u16 len;
	__u16 weight; // in the length's upper half of an event's layout
	__u8 data[SAMPLE_ROOM];
};

// sample_gap holds the least time between two samples on a CPU, in
// nanoseconds, written at load (xdp.SampleGap): a faster flood gets
// heavier samples, not more, so what reading them costs userspace stops
// growing with the flood.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sample_gap SEC(".maps");

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
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct svc_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct action_counts);
} actions SEC(".maps");

// Allow and deny lists, checked apart so that deny wins whatever the
// prefixes' lengths.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_SERVICES * 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct src_key);
	__type(value, __u8);
} allow_list SEC(".maps"), deny_list SEC(".maps");

// A flow as the MAC binds it.
struct flow {
	__u8 client[16], server[16]; // first: the checksum reads them as words
	__be16 client_port, server_port;
	__u8 family;
};

// Flows whose cookie ACK passed here, while their hand-off is under way:
// the segments of early data behind the ACK carry the cookie but not the
// ISN it binds, so they are known by their flow instead. Least recently
// used flows make way, and then their later segments wait for the window.
struct early_flow {
	__u32 cookie;
	__u32 isn;
	__u64 until_tai;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct flow);
	__type(value, struct early_flow);
} early_flows SEC(".maps");

// The flows whose SYN the tc program replayed (SVC_REPLAY), until the
// engine has made their conntrack entry and deletes them here, or, for a
// flow that ended before it was needed, until the engine forgets the
// flow. See docs/architecture.md, "Handshakes completed at tc".
enum replay_state {
	RS_SYN_SENT = 1, // the replayed SYN is out; the backend has not answered
	RS_DEFERRED = 2, // a client segment came first: the queue completes the flow
	RS_ACKED = 3,    // the backend answered and was ACKed here: segments are translated here
};

struct replay_flow {
	__u32 cookie;         // the ISN the client was given
	__u32 isn;            // the client's
	__u32 server_isn;     // RS_ACKED
	__u32 client_ifindex; // the link the client's ACK came in on
	__u16 client_window;  // the window field of the client's ACK
	__u8 state;           // enum replay_state
	__u8 announced_ws;    // the window scale the client was told; 0xff: none
	// How the flow ended while translated here, as the engine's endings
	// (engine/pending.go): a byte each, so that CPUs never race on one.
	__u8 client_fin, server_fin, rst;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow);
	__type(value, struct replay_flow);
} replay_flows SEC(".maps");

// replay_slots counts, for each slot a flow hashes to (replay_slot), the
// records replay_flows may hold: a segment whose slot is zero has none,
// and costs no lookup there. A flood's ACKs and the backends' segments of
// established flows, which have none, meet it first. The count goes up
// before a record is added (record_replay) and down after the engine took
// one out (xdp/replay.go), so it is never below the records there are;
// a record the LRU map evicts leaves its slot counted, which costs a
// lookup and nothing else. The engine writes it through mmap.
#define REPLAY_SLOT_BITS 15
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << REPLAY_SLOT_BITS);
	__type(key, __u32);
	__type(value, __u64); // an array's elements are 8 bytes apart in any case
} replay_slots SEC(".maps");

// replay_slot is flow f's count in replay_slots (xdp/replay.go replaySlots.of):
// the client's address (its last four bytes) and both ports, hashed by
// multiplication.
static __always_inline __u64 *replay_slot(const struct flow *f)
{
	__u32 a;
	__builtin_memcpy(&a, &f->client[12], 4);
	__u32 x = a ^ ((__u32)f->client_port << 16 | f->server_port);
	__u32 i = (x * 0x9e3779b1U) >> (32 - REPLAY_SLOT_BITS);
	return bpf_map_lookup_elem(&replay_slots, &i);
}

// replay_record is replay_flows' record of flow f, if its slot says there
// may be one.
static __always_inline struct replay_flow *replay_record(const struct flow *f)
{
	__u64 *n = replay_slot(f);
	if (!n || *n == 0)
		return 0;
	return bpf_map_lookup_elem(&replay_flows, f);
}

// A flow's event for the engine, in the handshakes ring (laid out as a
// sample: the service's index with SAMPLE_EVENT set, the body's length,
// the body): its SYN replayed here, or its backend's answer completed
// here. Either way the engine takes over the flow's retries, and once
// answered makes its conntrack entry, soon (hs_wake_flags): a ring and a
// reader of their own, so that no pause between drains of samples
// delays it.
#define SAMPLE_EVENT 0x80000000
#define EV_REPLAYED 1
#define EV_ANSWERED 2
struct hs_event {
	__u32 svc; // | SAMPLE_EVENT
	__u32 len; // of the rest
	struct flow f;
	__u8 kind;      // EV_*
	__u8 server_ws; // the backend's SYN-ACK's window scale; 0xff: none (EV_ANSWERED)
	__u16 client_window;
	__u32 cookie, isn, server_isn;
};
// For bpf2go, which renders only the types the object's BTF holds.
const struct hs_event *unused_hs_event __attribute__((unused));

// Sampled SYNs, for userspace, and each CPU's count toward the next.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} samples SEC(".maps");

#define HANDSHAKES_BYTES (1 << 18)
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, HANDSHAKES_BYTES);
} handshakes SEC(".maps");

// The reader's wake-up, a moment after a handshake's events rather than
// inside them: they come in softirq, mostly within the client's own
// system call where it runs on this machine, and a reader woken there
// ran before the client did. Each CPU arms a timer at its first event
// not yet read and submits the events without a wake-up; the timer's
// callback, HS_WAKE_NS later, submits a kick that wakes the reader, which
// then reads every event of the interval. Entries come at most that much
// later; the programs translate the flow until then. A ring half full
// wakes the reader at once, and where no timer can be armed the event
// wakes it as before. HS_WAKE_NS is longer than the scheduler tick's
// period (4 ms at HZ=250): a timer due before the next tick becomes the
// CPU's next event, whose programming into the local APIC is a VM exit
// on virtual machines, 5-6 us inside the client's handshake against
// under 1 us for a timer due after it.
#define EV_KICK 3
#define HS_WAKE_NS 5000000
#define CLOCK_MONOTONIC 1 // include/uapi/linux/time.h
struct hs_wake {
	struct bpf_timer timer;
	__u32 armed;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); // one per possible CPU, set at load
	__type(key, __u32);
	__type(value, struct hs_wake);
} hs_wakes SEC(".maps");

// hs_wake_fire is the timer's callback, in softirq on the CPU that armed
// it, never at once with that CPU's programs.
static int hs_wake_fire(void *map, __u32 *key, struct hs_wake *w)
{
	w->armed = 0;
	struct hs_event *e = bpf_ringbuf_reserve(&handshakes, sizeof(*e), 0);
	if (!e)
		return 0; // full: the submit that filled it half woke the reader
	__builtin_memset(e, 0, sizeof(*e));
	e->svc = SAMPLE_EVENT;
	e->len = sizeof(*e) - 8;
	e->kind = EV_KICK;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

// hs_wake_flags returns the submit flags of an event: no wake-up, with
// this CPU's timer armed.
static __always_inline __u64 hs_wake_flags(void)
{
	if (bpf_ringbuf_query(&handshakes, BPF_RB_AVAIL_DATA) >= HANDSHAKES_BYTES / 2)
		return BPF_RB_FORCE_WAKEUP;
	__u32 cpu = bpf_get_smp_processor_id();
	struct hs_wake *w = bpf_map_lookup_elem(&hs_wakes, &cpu);
	if (!w)
		return 0;
	if (w->armed)
		return BPF_RB_NO_WAKEUP;
	bpf_timer_init(&w->timer, &hs_wakes, CLOCK_MONOTONIC); // -EBUSY after the first time
	if (bpf_timer_set_callback(&w->timer, hs_wake_fire) < 0 || bpf_timer_start(&w->timer, HS_WAKE_NS, 0) < 0)
		return 0;
	w->armed = 1;
	return BPF_RB_NO_WAKEUP;
}

// hs_event_submit fills e, reserved in the handshakes ring before the
// work it reports was done (a full ring leaves that work to the queue),
// with flow f's event of kind, and submits it.
static __always_inline void hs_event_submit(struct hs_event *e, const struct flow *f, __u32 svc, __u8 kind,
					    const struct replay_flow *rf, __u8 server_ws)
{
	e->svc = svc | SAMPLE_EVENT;
	e->len = sizeof(*e) - 8;
	__builtin_memcpy(&e->f, f, sizeof(*f));
	e->kind = kind;
	e->server_ws = server_ws;
	e->client_window = rf->client_window;
	e->cookie = rf->cookie;
	e->isn = rf->isn;
	e->server_isn = rf->server_isn;
	bpf_ringbuf_submit(e, hs_wake_flags());
}

// A CPU's way to its next sample: the SYNs it answered or dropped, that
// count at its last sample, and when the next may be taken.
struct sample_tick {
	__u64 syns;
	__u64 sampled_at;
	__u64 next_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sample_tick);
} sample_tick SEC(".maps");

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
extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb_ctx, struct bpf_sock_tuple *bpf_tuple,
					 __u32 len_tuple, struct bpf_ct_opts *opts, __u32 len_opts) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

// The kernel's skb behind a tc program's context, for the checksum state
// struct __sk_buff does not show. Only these fields are read; CO-RE finds
// them in the running kernel's struct sk_buff.
struct sk_buff___sg {
	__u8 ip_summed : 2;
	__u16 csum_start;
	__u16 csum_offset;
	__u16 network_header;
} __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

// skb->ip_summed (include/linux/skbuff.h).
#define CHECKSUM_PARTIAL 3

// tcx verdicts (enum tcx_action_base, Linux 6.6; the build's uapi
// headers may be older). Passing is TCX_NEXT, so that programs and tc
// filters behind this one still see the packet.
#define SG_TCX_NEXT (-1)
#define SG_TCX_DROP 2

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

static __always_inline void count_action(__u32 action)
{
	__u32 zero = 0;
	struct action_counts *a = bpf_map_lookup_elem(&actions, &zero);
	if (a && action < NUM_ACTIONS)
		a->n[action] += 1;
}

// counters_of returns service svc's counters on this CPU, or NULL.
static __always_inline struct svc_counters *counters_of(__u32 svc)
{
	return bpf_map_lookup_elem(&counters, &svc);
}

static __always_inline void count(struct svc_counters *s, __u32 c)
{
	if (s && c < NUM_COUNTERS)
		s->n[c] += 1;
}

// ---- what differs between the hooks ----

// The hook the shared code runs in. Every function below is inlined with
// a constant hook, so each program keeps only its own hook's calls.
enum hook {
	HOOK_XDP,
	HOOK_TC,
};

static __always_inline long load_bytes(void *ctx, enum hook h, __u32 off, void *buf, __u32 n)
{
	if (h == HOOK_TC)
		return bpf_skb_load_bytes(ctx, off, buf, n);
	return bpf_xdp_load_bytes(ctx, off, buf, n);
}

// frame sets data and end to the bytes of the frame the program reads
// directly.
static __always_inline void frame(void *ctx, enum hook h, void **data, void **end)
{
	if (h == HOOK_TC) {
		struct __sk_buff *skb = ctx;
		*data = (void *)(long)skb->data;
		*end = (void *)(long)skb->data_end;
		return;
	}
	struct xdp_md *x = ctx;
	*data = (void *)(long)x->data;
	*end = (void *)(long)x->data_end;
}

static __always_inline struct nf_conn *ct_lookup(void *ctx, enum hook h, struct bpf_sock_tuple *tup,
						 __u32 tup_len, struct bpf_ct_opts *opts)
{
	if (h == HOOK_TC)
		return bpf_skb_ct_lookup(ctx, tup, tup_len, opts, sizeof(*opts));
	return bpf_xdp_ct_lookup(ctx, tup, tup_len, opts, sizeof(*opts));
}

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
static __always_inline int parse_options(void *ctx, enum hook h, __u32 off, __u32 len, struct syn_opts *o)
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
		if (load_bytes(ctx, h, off, w.b, n) < 0)
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
	__u32 out_ifindex; // A_FORWARD: where to
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

// A SYN-ACK frame, built on the stack and written over the SYN in one go.
// The two bytes in front align the IP header, so that its words are
// written where the verifier wants them: on their size.
struct reply {
	__u8 pad[2];
	struct ethhdr eth;
	union {
		struct {
			struct iphdr ip;
			__u32 tcp[8];
		} v4;
		struct {
			struct ipv6hdr ip;
			__u32 tcp[8];
		} v6;
	};
};

// The most the frame of a SYN-ACK takes: Ethernet, IPv6, TCP with three
// options.
#define REPLY_MAX (sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + 32)

// pseudo_sum is the TCP pseudo-header's sum of a segment of tcp_len bytes
// from src to dst (addresses as struct flow holds them).
static __always_inline __u64 pseudo_sum(int ipv6, const __u8 *src, const __u8 *dst, __u32 tcp_len)
{
	__u64 s;
	if (ipv6) {
		s = csum_add(src, 16, 0);
		s = csum_add(dst, 16, s);
		s += bpf_htonl(tcp_len) >> 16;
		s += bpf_htonl(tcp_len) & 0xffff;
		s += bpf_htons(IPPROTO_TCP);
	} else {
		s = csum_add(&src[12], 4, 0);
		s = csum_add(&dst[12], 4, s);
		s += bpf_htons(IPPROTO_TCP);
		s += bpf_htons(tcp_len);
	}
	return s;
}

// put_ip_header writes r's IP header, of a zeroed r, as packet.Build
// does: from src to dst, tcp_len bytes of TCP behind it, TTL 64, DF, ID 0.
static __always_inline void put_ip_header(struct reply *r, int ipv6, const __u8 *src, const __u8 *dst,
					  __u32 tcp_len)
{
	if (ipv6) {
		struct ipv6hdr *h6 = &r->v6.ip;
		h6->version = 6;
		h6->payload_len = bpf_htons(tcp_len);
		h6->nexthdr = IPPROTO_TCP;
		h6->hop_limit = HOP_LIMIT;
		__builtin_memcpy(&h6->saddr, src, 16);
		__builtin_memcpy(&h6->daddr, dst, 16);
	} else {
		struct iphdr *h4 = &r->v4.ip;
		h4->version = 4;
		h4->ihl = 5;
		h4->tot_len = bpf_htons(sizeof(struct iphdr) + tcp_len);
		h4->frag_off = bpf_htons(0x4000); // DF
		h4->ttl = HOP_LIMIT;
		h4->protocol = IPPROTO_TCP;
		__builtin_memcpy(&h4->saddr, &src[12], 4);
		__builtin_memcpy(&h4->daddr, &dst[12], 4);
		h4->check = ~csum_fold(csum_add(h4, sizeof(*h4), 0));
	}
}

// emit puts the frame r holds, len bytes, in place of the packet in ctx.
// tcsum is the TCP checksum and psum the pseudo-header's sum alone, which
// a packet whose checksum the kernel or the NIC is to complete
// (CHECKSUM_PARTIAL: a SYN from a local stack, over veth) must carry
// instead. It returns the action: A_TX, or A_PASS when the packet could
// not be rewritten and is still the SYN.
static __always_inline int emit(void *ctx, enum hook h, struct reply *r, __u32 len, int ipv6, __u16 tcsum,
				__u16 psum)
{
	__u8 *check = ipv6 ? (__u8 *)&r->v6.tcp[4] : (__u8 *)&r->v4.tcp[4];
	__builtin_memcpy(check, &tcsum, 2);
	// The barrier keeps clang from moving the bound away from the
	// register the helper calls read.
	asm volatile("" : "+r"(len));
	if (len > REPLY_MAX || len < sizeof(struct ethhdr) + sizeof(struct iphdr) + 20)
		return A_PASS;

	if (h == HOOK_XDP) {
		struct xdp_md *x = ctx;
		int delta = (int)len - (int)(x->data_end - x->data);
		if (delta != 0 && bpf_xdp_adjust_tail(x, delta) < 0)
			return A_PASS;
		if (bpf_xdp_store_bytes(x, 0, &r->eth, len) < 0)
			return A_DROP; // shortened, and not the SYN any more
		return A_TX;
	}

	struct __sk_buff *skb = ctx;
	struct sk_buff___sg *k = bpf_cast_to_kern_ctx(skb);
	if (BPF_CORE_READ_BITFIELD(k, ip_summed) == CHECKSUM_PARTIAL) {
		// The checksum is completed from csum_start on, into
		// csum_offset: it must be this segment's. The IP header keeps
		// its length, so csum_start stays right.
		__u32 iph = ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
		if (k->csum_start != k->network_header + iph || k->csum_offset != 16)
			return A_PASS;
		__builtin_memcpy(check, &psum, 2);
	}
	// Shortening a CHECKSUM_COMPLETE skb makes it CHECKSUM_NONE
	// (__skb_trim_rcsum); one that keeps its length keeps its sum true
	// through BPF_F_RECOMPUTE_CSUM.
	if (skb->len != len && bpf_skb_change_tail(skb, len, 0) < 0)
		return A_PASS;
	if (bpf_skb_store_bytes(skb, 0, &r->eth, len, BPF_F_RECOMPUTE_CSUM) < 0)
		return A_DROP;
	return A_TX;
}

// Source list verdicts.
#define LIST_NONE 0
#define LIST_DENY 1
#define LIST_ALLOW 2

// list_verdict looks the SYN's source up in the service's lists.
static __always_inline int list_verdict(struct pkt *p, __u32 svc)
{
	struct src_key k = {.svc = svc};
	if (p->f.family == 4) {
		k.prefixlen = 32 + 32;
		__builtin_memcpy(k.addr, &p->f.client[12], 4);
	} else {
		k.prefixlen = 32 + 128;
		__builtin_memcpy(k.addr, p->f.client, 16);
	}
	if (bpf_map_lookup_elem(&deny_list, &k))
		return LIST_DENY;
	if (bpf_map_lookup_elem(&allow_list, &k))
		return LIST_ALLOW;
	return LIST_NONE;
}

// sample_syn hands a SYN this CPU answers or drops to userspace, before
// its bytes are overwritten: the first and every SAMPLE_EVERY-th after
// it, but none sooner than sample_gap holds after the last. The engine
// counts its source, weighing the SYNs since the last sample (this one
// included), and an attack's pcap keeps it. The clock is read only at
// every SAMPLE_EVERY-th SYN.
static __always_inline void sample_syn(void *ctx, enum hook h, struct pkt *p, __u32 svc)
{
	__u32 zero = 0;
	struct sample_tick *tick = bpf_map_lookup_elem(&sample_tick, &zero);
	if (!tick)
		return;
	if (tick->syns++ & (SAMPLE_EVERY - 1))
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now < tick->next_ns)
		return;
	__u64 *gap = bpf_map_lookup_elem(&sample_gap, &zero);
	__u64 weight = tick->syns - tick->sampled_at;
	tick->sampled_at = tick->syns;
	tick->next_ns = now + (gap ? *gap : 0);
	struct sample *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (!s)
		return; // userspace is behind: the sample is lost, not the SYNs
	s->weight = weight > 0xffff ? 0xffff : weight;
	// 64 bits, and a barrier, so that the verifier sees the bound on the
	// very register the helper gets.
	__u64 len = sizeof(struct ethhdr) + (__u64)p->ip_len;
	if (len > SAMPLE_BYTES)
		len = SAMPLE_BYTES;
	barrier_var(len);
	len &= SAMPLE_ROOM - 1;
	if (len < sizeof(struct ethhdr)) {
		bpf_ringbuf_discard(s, 0);
		return;
	}
	s->svc = svc;
	s->len = len;
	if (load_bytes(ctx, h, 0, s->data, len) < 0) {
		bpf_ringbuf_discard(s, 0);
		return;
	}
	bpf_ringbuf_submit(s, 0);
}

// answer_syn turns the SYN in ctx into its cookie SYN-ACK, built as the
// engine builds it (engine/client.go answerSYN, packet.Build), to be sent
// back out the link it came in on.
static __always_inline int answer_syn(void *ctx, enum hook h, struct pkt *p, struct svc_val *svc)
{
	struct syn_opts so;
	if (parse_options(ctx, h, p->l4 + 20, p->tcp_len - 20, &so) < 0)
		return A_PASS; // the engine counts it as malformed
	__s64 epoch;
	int idx;
	struct engine_control *c = control_now(&epoch, &idx);
	if (!c)
		return A_PASS;
	struct svc_counters *cnt = counters_of(svc->index);
	count(cnt, C_SYN_RECEIVED);
	sample_syn(ctx, h, p, svc->index);

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
		count(cnt, C_AMPLIFICATION_GUARD);
		return A_DROP;
	}

	__u8 low = (__u8)((epoch & 1) << 7) | encode_options(&so, p->ipv6);
	__u32 cookie = cookie_mac(c->keys[idx & 3], &p->f, p->seq, low) << 8 | low;

	void *data, *end;
	frame(ctx, h, &data, &end);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return A_PASS;
	struct reply r = {};
	__builtin_memcpy(r.eth.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(r.eth.h_source, eth->h_dest, ETH_ALEN);
	r.eth.h_proto = eth->h_proto;

	// The TCP header, built and summed apart, then put in place.
	__u32 tcp[8] = {};
	__u8 *t = (__u8 *)tcp;
	__builtin_memcpy(&t[0], &p->f.server_port, 2);
	__builtin_memcpy(&t[2], &p->f.client_port, 2);
	tcp[1] = bpf_htonl(cookie);
	tcp[2] = bpf_htonl(p->seq + 1);
	t[12] = (__u8)((20 + optlen) / 4) << 4;
	t[13] = TCP_SYN | TCP_ACK;
	if (svc->flags & SVC_EARLY) {
		__u32 seg = mss ? svc->mss : (p->ipv6 ? DEFAULT_MSS6 : DEFAULT_MSS4);
		__u32 w = seg * EARLY_SEGMENTS;
		if (w > 0xffff)
			w = 0xffff;
		t[14] = w >> 8;
		t[15] = w & 0xff;
	}
	__u32 o = 5;
	if (mss) {
		tcp[o & 7] = bpf_htonl(OPT_MSS << 24 | 4 << 16 | svc->mss);
		o++;
	}
	if (sack) {
		tcp[o & 7] = bpf_htonl(OPT_NOP << 24 | OPT_NOP << 16 | OPT_SACK_PERM << 8 | 2);
		o++;
	}
	if (ws)
		tcp[o & 7] = bpf_htonl(OPT_NOP << 24 | OPT_WSCALE << 16 | 3 << 8 | svc->wscale);

	__u64 pseudo = pseudo_sum(p->ipv6, p->f.server, p->f.client, 20 + optlen);
	__u16 tcsum = ~csum_fold(csum_add(tcp, sizeof(tcp), pseudo));
	__u16 psum = csum_fold(pseudo);

	put_ip_header(&r, p->ipv6, p->f.server, p->f.client, 20 + optlen);
	if (p->ipv6)
		__builtin_memcpy(r.v6.tcp, tcp, sizeof(tcp));
	else
		__builtin_memcpy(r.v4.tcp, tcp, sizeof(tcp));
	int a = emit(ctx, h, &r, sizeof(struct ethhdr) + ip_len, p->ipv6, tcsum, psum);
	if (a == A_TX)
		count(cnt, C_SYNACK_SENT);
	return a;
}

// replay_scratch holds the frame replay_syn builds (a struct reply; as
// bytes, since bpf2go cannot render the uapi headers' anonymous unions):
// on the stack it would take the program past its 512 bytes.
struct reply_buf {
	__u8 b[sizeof(struct reply)];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reply_buf);
} replay_scratch SEC(".maps");

// record_replay adds or replaces flow f's record, counting a new one in
// its slot first.
static __always_inline int record_replay(const struct flow *f, const struct replay_flow *rf)
{
	__u64 *n = replay_slot(f);
	if (!n)
		return -1;
	__sync_fetch_and_add(n, 1);
	if (bpf_map_update_elem(&replay_flows, f, rf, BPF_NOEXIST) == 0)
		return 0;
	__sync_fetch_and_add(n, -1); // one is there: the count has it
	return bpf_map_update_elem(&replay_flows, f, rf, BPF_EXIST);
}

// replay_syn turns a pure cookie ACK (cookie, client ISN isn) into the SYN
// the engine replays to the backend (engine/negotiate.go backendSYN): the
// client's ISN, its window scaled as the backend will read it, and the
// client's options as the cookie carries them, scaling and SACK only where
// the SYN-ACK announced them. The frame keeps its Ethernet header, which
// bpf_redirect_neigh rewrites on the way out of svc->replay_ifindex.
static __always_inline int replay_syn(void *ctx, enum hook h, struct pkt *p, struct svc_val *svc, __u32 cookie,
				      __u32 isn)
{
	__u8 low = cookie & 0xff;
	__u16 mss = p->ipv6 ? mss_table6[(low >> 4) & 7] : mss_table4[(low >> 4) & 7];
	__s8 cws = wscale_table[(low >> 1) & 7];
	int ws = cws >= 0 && svc->wscale != 0xff;
	int sack = (low & 1) && svc->sack;
	__u32 optlen = 4 + (sack ? 4 : 0) + (ws ? 4 : 0);
	__u32 iph = p->ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u32 ip_len = iph + 20 + optlen;

	__be16 wire_window;
	if (load_bytes(ctx, h, p->l4 + 14, &wire_window, 2) < 0)
		return A_PASS;
	__u32 window = bpf_ntohs(wire_window);
	if (ws)
		window <<= (cws & 15);
	if (window > 0xffff)
		window = 0xffff;

	__u32 zero = 0;
	struct reply *r = (struct reply *)bpf_map_lookup_elem(&replay_scratch, &zero);
	if (!r)
		return A_PASS;
	__builtin_memset(r, 0, sizeof(*r));
	void *data, *end;
	frame(ctx, h, &data, &end);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return A_PASS;
	__builtin_memcpy(&r->eth, eth, sizeof(*eth));
	// The engine must hear of the flow, or nobody resends its SYN.
	struct hs_event *ev = bpf_ringbuf_reserve(&handshakes, sizeof(*ev), 0);
	if (!ev)
		return A_PASS; // the ACK goes to the queue

	__u32 *tcp = p->ipv6 ? r->v6.tcp : r->v4.tcp;
	__u8 *t = (__u8 *)tcp;
	__builtin_memcpy(&t[0], &p->f.client_port, 2);
	__builtin_memcpy(&t[2], &p->f.server_port, 2);
	tcp[1] = bpf_htonl(isn);
	t[12] = (__u8)((20 + optlen) / 4) << 4;
	t[13] = TCP_SYN;
	t[14] = window >> 8;
	t[15] = window & 0xff;
	tcp[5] = bpf_htonl(OPT_MSS << 24 | 4 << 16 | mss);
	if (sack)
		tcp[6] = bpf_htonl(OPT_NOP << 24 | OPT_NOP << 16 | OPT_SACK_PERM << 8 | 2);
	if (ws)
		tcp[sack ? 7 : 6] = bpf_htonl(OPT_NOP << 24 | OPT_WSCALE << 16 | 3 << 8 | (__u8)cws);

	__u64 pseudo = pseudo_sum(p->ipv6, p->f.client, p->f.server, 20 + optlen);
	__u16 tcsum = ~csum_fold(csum_add(tcp, 32, pseudo));
	__u16 psum = csum_fold(pseudo);
	put_ip_header(r, p->ipv6, p->f.client, p->f.server, 20 + optlen);
	int a = emit(ctx, h, r, sizeof(struct ethhdr) + ip_len, p->ipv6, tcsum, psum);
	if (a != A_TX) {
		bpf_ringbuf_discard(ev, 0);
		return a; // still the ACK (pass, to the queue), or half rewritten (drop)
	}
	// Recorded before the SYN leaves (after the program returns), so the
	// backend's answer always finds it. A flow on the same ports before
	// it is replaced.
	struct replay_flow rf = {
		.cookie = cookie,
		.isn = isn,
		.client_ifindex = ((struct __sk_buff *)ctx)->ifindex,
		.client_window = bpf_ntohs(wire_window),
		.state = RS_SYN_SENT,
		.announced_ws = ws ? svc->wscale : 0xff,
	};
	if (record_replay(&p->f, &rf) < 0) {
		bpf_ringbuf_discard(ev, 0);
		return A_DROP; // the client's data, or its retransmission, takes the queue
	}
	hs_event_submit(ev, &p->f, svc->index, EV_REPLAYED, &rf, 0xff);
	count(counters_of(svc->index), C_SYN_REPLAYED);
	p->out_ifindex = svc->replay_ifindex;
	return A_FORWARD;
}

// rewrite_seq puts v in place of was in the TCP header at l4, in its
// seq (field 4) or ack (field 8), keeping the checksum right
// incrementally (a CHECKSUM_PARTIAL skb's check field is left alone by
// the helper, as it must be).
static __always_inline int rewrite_seq(struct __sk_buff *skb, __u32 l4, __u32 field, __u32 was, __u32 v)
{
	__be32 old = bpf_htonl(was), new = bpf_htonl(v);
	if (bpf_skb_store_bytes(skb, l4 + field, &new, 4, 0) < 0)
		return -1;
	return bpf_l4_csum_replace(skb, l4 + 16, old, new, 4);
}

// replay_client handles a client segment of flow rf, whose SYN this
// program replayed: in RS_SYN_SENT the flow is left to the queue from
// here on (the engine takes a segment carrying a valid cookie for the
// request riding on the ACK, replays the SYN itself and holds the data);
// in RS_ACKED its acknowledgement is moved into the backend's sequence
// space, as the conntrack entry will, and it goes on toward the backend.
static __always_inline int replay_client(struct __sk_buff *skb, struct pkt *p, struct svc_val *svc,
					 struct replay_flow *rf)
{
	if (rf->state == RS_SYN_SENT) {
		rf->state = RS_DEFERRED;
		count(counters_of(svc->index), C_DEFERRED);
		return A_PASS;
	}
	if (rf->state != RS_ACKED)
		return A_PASS;
	if (p->tcp_len != 20) {
		// Options past the handshake are SACK blocks (no timestamps
		// were negotiated), which the entry translates and this
		// program does not: the segment comes again.
		count(counters_of(svc->index), C_SACK_DROPPED);
		return A_DROP;
	}
	if (rewrite_seq(skb, p->l4, 8, p->ack, p->ack - rf->cookie + rf->server_isn) < 0)
		return A_DROP;
	if (p->flags & TCP_FIN)
		rf->client_fin = 1;
	if (p->flags & TCP_RST)
		rf->rst = 1;
	count(counters_of(svc->index), C_TRANSLATED);
	p->out_ifindex = svc->replay_ifindex;
	return A_FORWARD;
}

// replay_owns says whether a client segment belongs to recorded flow rf
// rather than to a new connection on its ports: it acknowledges the
// cookie, or in RS_ACKED no more than 2^30 bytes past it.
static __always_inline int replay_owns(struct pkt *p, struct replay_flow *rf)
{
	if (!(p->flags & TCP_ACK))
		return 0;
	if (rf->state == RS_ACKED)
		return p->ack - (rf->cookie + 1) < (1U << 30);
	return p->ack == rf->cookie + 1;
}

// check_ack lets an ACK pass when it belongs to a connection the kernel
// tracks or carries a valid cookie (the NFQUEUE path then completes the
// handshake), and drops it otherwise: a forged ACK never reaches the queue.
static __always_inline int check_ack(void *ctx, enum hook h, struct pkt *p, struct svc_val *svc)
{
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
	struct nf_conn *ct = ct_lookup(ctx, h, &tup, tup_len, &opts);
	if (ct) {
		bpf_ct_release(ct);
		return A_PASS;
	}
	// A flow carried to its end here, before an entry was needed: its
	// last segments are its own, but not a new connection from its ports
	// (a valid cookie ACK, below).
	struct replay_flow *ended = 0;
	if (h == HOOK_TC && (svc->flags & SVC_REPLAY)) {
		struct replay_flow *rf = replay_record(&p->f);
		if (rf && replay_owns(p, rf)) {
			if (!rf->rst && !(rf->client_fin && rf->server_fin))
				return replay_client(ctx, p, svc, rf);
			ended = rf;
		}
	}

	__s64 epoch;
	int idx;
	struct engine_control *c = control_now(&epoch, &idx);
	if (!c)
		return ended ? replay_client(ctx, p, svc, ended) : A_PASS;
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
	__u32 isn = p->seq - 1;
	int valid = mac_for(&s, &m, isn) == mac;
	if (!valid && p->payload == 0) {
		isn = p->seq;
		valid = mac_for(&s, &m, isn) == mac;
	}
	if (valid) {
		count(counters_of(svc->index), C_ACK_VALID);
		if (h == HOOK_TC && p->payload == 0 && (svc->flags & SVC_REPLAY) && svc->replay_ifindex) {
			int a = replay_syn(ctx, h, p, svc, cookie, isn);
			if (a != A_PASS)
				return a;
		}
		// The queue takes this ACK: its flow's next segments, which
		// carry the cookie but not the ISN, follow it there. A flow
		// replayed here has its record for them, and no early flow
		// (an LRU insert, a microsecond inside the client's handshake).
		if (svc->flags & SVC_EARLY) {
			struct early_flow ef = {.cookie = cookie, .isn = isn, .until_tai = bpf_ktime_get_tai_ns() + EARLY_FLOW_NS};
			bpf_map_update_elem(&early_flows, &p->f, &ef, BPF_ANY);
		}
		return A_PASS;
	}
	if (ended)
		return replay_client(ctx, p, svc, ended);
	if ((svc->flags & SVC_EARLY) && p->payload != 0) {
		// More of the request behind the cookie ACK: the flow's ACK
		// passed, and this acknowledges the same cookie and starts
		// within an unscaled window of the first byte.
		struct early_flow *ef = bpf_map_lookup_elem(&early_flows, &p->f);
		if (ef && ef->cookie == cookie && p->seq - (ef->isn + 1) <= 0xffff &&
		    bpf_ktime_get_tai_ns() < ef->until_tai) {
			count(counters_of(svc->index), C_EARLY_DATA);
			return A_PASS;
		}
	}
	count(counters_of(svc->index), C_ACK_INVALID);
	return A_DROP;
}

// service_at looks up the protected service at addr (16 bytes, as struct
// flow holds it) and port, of family.
static __always_inline struct svc_val *service_at(__u8 family, const __u8 *addr, __be16 port)
{
	struct svc_key key = {};
	key.family = family;
	key.port = port;
	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&services, &key);
}

static __always_inline int handle_tcp(void *ctx, enum hook h, struct pkt *p)
{
	struct svc_val *svc = service_at(p->f.family, p->f.server, p->f.server_port);
	if (!svc || svc->mode == MODE_OFF)
		return A_PASS;
	__u8 f = p->flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
	if (f == TCP_SYN) {
		__u32 svci = svc->index;
		if ((svc->flags & SVC_LISTS) && svci < MAX_SERVICES) {
			switch (list_verdict(p, svci)) {
			case LIST_DENY: {
				struct svc_counters *cnt = counters_of(svci);
				count(cnt, C_SYN_RECEIVED);
				count(cnt, C_SYN_DENIED);
				sample_syn(ctx, h, p, svci);
				return A_DROP;
			}
			case LIST_ALLOW:
				return A_PASS; // the engine lets it through, and counts it
			}
		}
		if (svc->mode != MODE_COOKIE)
			return A_PASS;
		return answer_syn(ctx, h, p, svc);
	}
	if (f == TCP_ACK)
		return check_ack(ctx, h, p, svc);
	if (h == HOOK_TC && (svc->flags & SVC_REPLAY) && !(f & TCP_SYN)) {
		// A FIN or RST of a flow completed here, before its entry.
		struct replay_flow *rf = replay_record(&p->f);
		if (rf && replay_owns(p, rf))
			return replay_client(ctx, p, svc, rf);
	}
	return A_PASS;
}

// What parse makes of a frame.
#define PARSED 0
#define NOT_OURS (-1) // to pass

// parse reads the headers of a frame of len bytes, of which data..end can
// be read directly: all of an XDP frame, the linear part of an skb. Drivers
// put an skb's headers there; one that has them elsewhere passes.
static __always_inline int parse(void *data, void *end, __u32 len, struct pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return NOT_OURS;
	struct tcphdr *tcp;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return NOT_OURS;
		// IPv4 options, fragments and anything but TCP: the NFQUEUE
		// path's (the kernel reassembles fragments before it).
		if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) ||
		    ip->protocol != IPPROTO_TCP)
			return NOT_OURS;
		p->ip_len = bpf_ntohs(ip->tot_len);
		if (p->ip_len < sizeof(*ip) + sizeof(*tcp) || sizeof(*eth) + p->ip_len > len)
			return NOT_OURS;
		// A header with a bad checksum is the kernel's to drop, before
		// netfilter sees it; it must not be answered here.
		if (csum_fold(csum_add(ip, sizeof(*ip), 0)) != 0xffff)
			return NOT_OURS;
		p->f.family = 4;
		p->f.client[10] = 0xff;
		p->f.client[11] = 0xff;
		p->f.server[10] = 0xff;
		p->f.server[11] = 0xff;
		__builtin_memcpy(&p->f.client[12], &ip->saddr, 4);
		__builtin_memcpy(&p->f.server[12], &ip->daddr, 4);
		tcp = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return NOT_OURS;
		// Extension headers are the NFQUEUE path's; so is a jumbogram.
		if (ip6->version != 6 || ip6->nexthdr != IPPROTO_TCP || ip6->payload_len == 0)
			return NOT_OURS;
		p->ip_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		if (p->ip_len < sizeof(*ip6) + sizeof(*tcp) || sizeof(*eth) + p->ip_len > len)
			return NOT_OURS;
		p->ipv6 = 1;
		p->f.family = 6;
		__builtin_memcpy(p->f.client, &ip6->saddr, 16);
		__builtin_memcpy(p->f.server, &ip6->daddr, 16);
		tcp = (void *)(ip6 + 1);
	} else {
		return NOT_OURS; // VLAN tags, ARP, everything else
	}
	if ((void *)(tcp + 1) > end)
		return NOT_OURS;
	p->l4 = (void *)tcp - data;
	__u32 l4_len = p->ip_len - (p->l4 - sizeof(struct ethhdr));
	__u32 doff = tcp->doff * 4;
	if (doff < 20 || doff > l4_len)
		return NOT_OURS;
	p->tcp_len = doff;
	p->payload = l4_len - doff;
	p->f.client_port = tcp->source;
	p->f.server_port = tcp->dest;
	p->seq = bpf_ntohl(tcp->seq);
	p->ack = bpf_ntohl(tcp->ack_seq);
	p->flags = ((__u8 *)tcp)[13];
	return PARSED;
}

SEC("xdp")
int synguard_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	int a = A_PASS;
	if (parse(data, end, end - data, &p) == PARSED)
		a = handle_tcp(ctx, HOOK_XDP, &p);
	count_action(a);
	if (a == A_TX)
		return XDP_TX;
	return a == A_DROP ? XDP_DROP : XDP_PASS;
}

// synguard_tc is the same program at tc ingress. It writes the packet only
// through helpers: a program that writes it directly makes the kernel
// unclone every cloned skb before it runs, bulk data included.
SEC("tcx/ingress")
int synguard_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct pkt p = {};
	int a = A_PASS;
	if (parse(data, end, skb->len, &p) == PARSED)
		a = handle_tcp(skb, HOOK_TC, &p);
	count_action(a);
	if (a == A_TX)
		return bpf_redirect(skb->ifindex, 0);
	if (a == A_FORWARD)
		return bpf_redirect_neigh(p.out_ifindex, NULL, 0, 0);
	return a == A_DROP ? SG_TCX_DROP : SG_TCX_NEXT;
}

// ---- the service side: the backend's answers to SYNs replayed here ----

// put_ack builds in r a bare ACK (no options) from src to dst, both
// 16-byte addresses as struct flow holds them, and emits it in place of
// the packet in skb.
static __always_inline int put_ack(struct __sk_buff *skb, struct reply *r, int ipv6, const __u8 *src,
				   const __u8 *dst, __be16 sport, __be16 dport, __u32 seq, __u32 ack, __u32 window)
{
	__u32 iph = ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__builtin_memset(&r->v6, 0, sizeof(r->v6)); // the larger of the union: a frame built before is gone
	__u32 *tcp = ipv6 ? r->v6.tcp : r->v4.tcp;
	__u8 *t = (__u8 *)tcp;
	__builtin_memcpy(&t[0], &sport, 2);
	__builtin_memcpy(&t[2], &dport, 2);
	tcp[1] = bpf_htonl(seq);
	tcp[2] = bpf_htonl(ack);
	t[12] = 5 << 4;
	t[13] = TCP_ACK;
	t[14] = window >> 8;
	t[15] = window & 0xff;
	__u64 pseudo = pseudo_sum(ipv6, src, dst, 20);
	put_ip_header(r, ipv6, src, dst, 20);
	__u16 tcsum = ~csum_fold(csum_add(tcp, 20, pseudo));
	return emit(skb, HOOK_TC, r, sizeof(struct ethhdr) + iph + 20, ipv6, tcsum, csum_fold(pseudo));
}

// backend_ack_and_update answers the backend's SYN-ACK (its window and
// whether it scales, as it sent them) to a SYN this program replayed: the
// backend's ACK (pendingFlow.backendACK) goes back out the link it came
// in on, a clone; the packet itself becomes the client's window update
// (the engine's handedOff), for the client's link. In p, "client" is the
// packet's source: here the backend.
static __always_inline int backend_ack_and_update(struct __sk_buff *skb, struct pkt *p, struct replay_flow *rf,
						  __u16 server_window, int server_scales)
{
	__u32 zero = 0;
	struct reply *r = (struct reply *)bpf_map_lookup_elem(&replay_scratch, &zero);
	if (!r)
		return A_PASS;
	void *data, *end;
	frame(skb, HOOK_TC, &data, &end);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return A_PASS;
	__builtin_memset(r, 0, sizeof(*r));
	__builtin_memcpy(r->eth.h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(r->eth.h_source, eth->h_dest, ETH_ALEN);
	r->eth.h_proto = eth->h_proto;
	int a = put_ack(skb, r, p->ipv6, p->f.server, p->f.client, p->f.server_port, p->f.client_port, rf->isn + 1,
			rf->server_isn + 1, rf->client_window);
	if (a != A_TX)
		return a;
	if (bpf_clone_redirect(skb, skb->ifindex, 0) < 0)
		return A_DROP; // the backend sends its SYN-ACK again, and meets RS_ACKED

	// The window update's window: the SYN-ACK's, which is never scaled,
	// in the scale the client was told, when both sides scale.
	__u32 update = server_window;
	if (rf->announced_ws != 0xff && server_scales) {
		update >>= (rf->announced_ws & 15);
		if (update == 0 && server_window != 0)
			update = 1;
	}
	// The Ethernet header stays: bpf_redirect_neigh rewrites it.
	if (put_ack(skb, r, p->ipv6, p->f.client, p->f.server, p->f.client_port, p->f.server_port, rf->cookie + 1,
		    rf->isn + 1, update) != A_TX)
		return A_DROP;
	p->out_ifindex = rf->client_ifindex;
	return A_FORWARD;
}

// synguard_tc_backend runs at tc ingress of the links services are
// reached through, for the flows synguard_tc replayed the SYN of: it
// completes the backend's handshake when its SYN-ACK comes, and until the
// engine has made the flow's conntrack entry moves the backend's sequence
// numbers into the client's space, as the entry will. Everything else
// goes on to the stack.
SEC("tcx/ingress")
int synguard_tc_backend(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct pkt p = {};
	if (parse(data, end, skb->len, &p) != PARSED)
		return SG_TCX_NEXT;
	// The packet's source is the service.
	struct svc_val *svc = service_at(p.f.family, p.f.client, p.f.client_port);
	if (!svc || !(svc->flags & SVC_REPLAY))
		return SG_TCX_NEXT;
	struct flow k = {};
	__builtin_memcpy(k.client, p.f.server, 16);
	__builtin_memcpy(k.server, p.f.client, 16);
	k.client_port = p.f.server_port;
	k.server_port = p.f.client_port;
	k.family = p.f.family;
	struct replay_flow *rf = replay_record(&k);
	if (!rf)
		return SG_TCX_NEXT;

	int a = A_PASS;
	__u8 f = p.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
	if (rf->state == RS_SYN_SENT && f == (TCP_SYN | TCP_ACK) && p.ack == rf->isn + 1) {
		struct syn_opts so;
		__be16 wire_window;
		if (parse_options(skb, HOOK_TC, p.l4 + 20, p.tcp_len - 20, &so) < 0 ||
		    load_bytes(skb, HOOK_TC, p.l4 + 14, &wire_window, 2) < 0)
			return SG_TCX_NEXT;
		// The engine must hear of the answer, or the flow never gets its
		// entry: without room, the queue completes it.
		struct hs_event *ev = bpf_ringbuf_reserve(&handshakes, sizeof(*ev), 0);
		if (!ev) {
			rf->state = RS_DEFERRED;
			count(counters_of(svc->index), C_DEFERRED);
		} else {
			// State first: the clone leaves inside bpf_clone_redirect.
			rf->server_isn = p.seq;
			rf->state = RS_ACKED;
			a = backend_ack_and_update(skb, &p, rf, bpf_ntohs(wire_window), so.wscale >= 0);
			if (a == A_FORWARD) {
				hs_event_submit(ev, &k, svc->index, EV_ANSWERED, rf,
						so.wscale >= 0 ? (__u8)so.wscale : 0xff);
				count(counters_of(svc->index), C_COMPLETED);
			} else {
				bpf_ringbuf_discard(ev, 0);
				rf->state = RS_SYN_SENT; // passed or dropped: the backend sends it again
			}
		}
	} else if (rf->state == RS_ACKED && !(f & TCP_SYN)) {
		if (rewrite_seq(skb, p.l4, 4, p.seq, p.seq + rf->cookie - rf->server_isn) < 0) {
			a = A_DROP;
		} else {
			if (f & TCP_FIN)
				rf->server_fin = 1;
			if (f & TCP_RST)
				rf->rst = 1;
			count(counters_of(svc->index), C_TRANSLATED);
			p.out_ifindex = rf->client_ifindex;
			a = A_FORWARD;
		}
	}
	count_action(a);
	if (a == A_FORWARD)
		return bpf_redirect_neigh(p.out_ifindex, NULL, 0, 0);
	return a == A_DROP ? SG_TCX_DROP : SG_TCX_NEXT;
}
