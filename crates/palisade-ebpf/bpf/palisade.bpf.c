// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
//
// palisade-ebpf: NetworkPolicy as two tc programs on the host side of each pod's veth.
//
//   from_pod (tc ingress of the host-side veth): packets FROM the pod -> its egress.
//   to_pod   (tc egress of the host-side veth):  packets TO the pod   -> its ingress.
//
// Per packet a constant number of map lookups, never a loop over rules or peers:
//   config[0]                         -> the active generation (0 or 1)
//   conns (LRU)                       -> established / reply / related of a known flow
//   endpoints {gen, family, addr}     -> class per direction, isolation, counter slot
//   peers (LPM) {gen, fam, class, ip} -> group (the set of rules holding that peer)
//   ports (LPM) {gen, proto, group, port prefix} -> verdict + RuleOrigin id
// Verdict events (default-deny drops, audit-denied and, when asked, allowed new
// connections) go to the ring buffer pal_events, each carrying the 48-bit EventTag hash of
// what decided (palisade_ir::events), rate-limited per endpoint and direction (per rule for
// allows) by a token bucket in pal_limits.
// The layouts below are mirrored byte for byte by src/layout.rs.
//
// This file is compiled by build.rs with clang -target bpf; no object is committed.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define HOOK_FROM_POD 0
#define HOOK_TO_POD 1

#define ACT_ALLOW 1
#define ACT_DENY_RULE 2
#define ACT_DEFAULT_DENY 3
#define ACT_OPEN 4
// Not isolated, but policies in audit mode would deny: passes, counted and reported.
#define ACT_AUDIT 5

#define EV_ALLOWED 1
#define EV_DENIED 2
#define EV_AUDIT_DENIED 3
// Limiter keys: kind << 20 | index (slot * 2 + dir < 2^19, origin ids < 2^18).
#define LIMIT_DENIED 0
#define LIMIT_AUDIT 1
#define LIMIT_ALLOWED 2

// "Not ours to drop": the next program on the hook (TCX_NEXT; for a cls_bpf filter, the
// next filter) decides, and with none the packet passes. TC_ACT_OK would end a TCX chain
// and skip the programs of whoever else (a CNI) is attached after us.
#define PASS TC_ACT_UNSPEC

#define FAM_V4 4
#define FAM_V6 6

#define PROTO_SCTP 132

// ICMP headers, declared here: <linux/icmp.h> pulls in libc headers.
struct icmp_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 seq;
};
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

// Seconds an idle flow stays known.
#define TIMEOUT_TCP_NS (3600ULL * 1000000000ULL)
#define TIMEOUT_OTHER_NS (120ULL * 1000000000ULL)

struct config_val {
	__u32 active;
	__u32 pad;
};

struct ep_key {
	__u8 gen;
	__u8 family;
	__u8 pad[2];
	__u8 addr[16];
};

struct ep_val {
	__u32 class_id[2]; // [DIR_INGRESS], [DIR_EGRESS]; 0 = not filtered
	__u32 slot;        // default-deny and audit counter index = slot * 2 + dir
	__u8 miss[2];      // the action when no rule matches: ACT_DEFAULT_DENY, ACT_AUDIT, ACT_OPEN
	__u8 pad[2];
	__u64 tag[2];      // EventTag hash of that miss (denied or audit-denied); 0: none
};

struct peer_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 family;
	__u8 pad[2];
	__u32 class_id;
	__u8 addr[16];
};

struct port_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 proto; // 0: protocols without ports
	__u8 pad[2];
	__u32 group;
	__u8 port[2]; // network order
	__u8 pad2[2];
};

struct verdict {
	__u32 action;
	__u32 origin;
};

struct conn_key {
	__u32 ifindex;
	__u8 hook;
	__u8 proto;
	__u8 family;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
};

struct conn_val {
	__u64 seen;
};

struct addr_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct count {
	__u64 packets;
	__u64 bytes;
};

struct event_config {
	__u32 enabled;
	__u32 log_allowed;
	__u32 rate;  // events per second per limiter key
	__u32 burst;
};

struct bucket {
	__u64 tat; // theoretical arrival time of the next report (ns)
};

// One verdict event, read by src/events.rs.
struct event {
	__u64 tag;
	__u8 verdict; // EV_*
	__u8 family;
	__u8 proto;
	__u8 dir;
	__u16 sport; // host order; 0 for protocols without ports
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config_val);
} pal_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ep_key);
	__type(value, struct ep_val);
} pal_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4194304);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, __u32);
} pal_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4194304);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct port_key);
	__type(value, struct verdict);
} pal_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct conn_key);
	__type(value, struct conn_val);
} pal_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct addr_key);
	__type(value, __u8);
} pal_local SEC(".maps");

// Counters are shared arrays bumped atomically, not per-CPU arrays: they move once per new
// connection (not per packet), and a per-CPU array of this size would take its memory once
// per CPU (20 MiB each for the three maps: 1.3 GiB on a 64-CPU node).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct count);
} pal_allow_cnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 524288);
	__type(key, __u32);
	__type(value, struct count);
} pal_deny_cnt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 524288);
	__type(key, __u32);
	__type(value, struct count);
} pal_audit_cnt SEC(".maps");

// RuleOrigin id -> EventTag hash of "allowed by that rule" (written only with log_allowed).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, __u64);
} pal_origin_tags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_config);
} pal_event_cfg SEC(".maps");

// Token buckets; LRU so that a burst of new keys can never fail to find room.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct bucket);
} pal_limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} pal_events SEC(".maps");

// Reports the ring buffer had no room for (the reader is behind).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pal_events_lost SEC(".maps");

struct pkt {
	__u8 family;
	__u8 proto;
	__u8 tcp_syn_only;
	__u8 icmp_error; // the embedded tuple below is the offending packet's
	__u8 icmp_echo;  // 1 request, 2 reply
	__u8 ndp;        // ICMPv6 neighbour/router discovery
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	// inner tuple of an ICMP error
	__u8 iproto;
	__u8 isaddr[16];
	__u8 idaddr[16];
	__u16 isport;
	__u16 idport;
};

static __always_inline void zero16(__u8 *a)
{
	__builtin_memset(a, 0, 16);
}

// Ports (or the echo id) of a transport header at `off`. Returns 0 when unreadable.
static __always_inline int load_ports(struct __sk_buff *skb, __u32 off, __u8 proto,
				      __u16 *sport, __u16 *dport)
{
	__u16 ports[2];
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == PROTO_SCTP) {
		if (bpf_skb_load_bytes(skb, off, ports, 4) < 0)
			return -1;
		*sport = bpf_ntohs(ports[0]);
		*dport = bpf_ntohs(ports[1]);
		return 0;
	}
	*sport = 0;
	*dport = 0;
	return 0;
}

// The inner (offending) packet of an ICMP error at `off`.
static __always_inline int parse_inner(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	if (p->family == FAM_V4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		zero16(p->isaddr);
		zero16(p->idaddr);
		__builtin_memcpy(p->isaddr, &ip.saddr, 4);
		__builtin_memcpy(p->idaddr, &ip.daddr, 4);
		p->iproto = ip.protocol;
		return load_ports(skb, off + ip.ihl * 4, ip.protocol, &p->isport, &p->idport);
	}
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
		return -1;
	__builtin_memcpy(p->isaddr, &ip6.saddr, 16);
	__builtin_memcpy(p->idaddr, &ip6.daddr, 16);
	p->iproto = ip6.nexthdr;
	return load_ports(skb, off + sizeof(ip6), ip6.nexthdr, &p->isport, &p->idport);
}

// Returns 0 for a packet to judge, 1 for one that passes untouched (not IP).
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = ETH_HLEN;
	__u32 l4;
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		p->family = FAM_V4;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		p->proto = ip.protocol;
		l4 = off + ip.ihl * 4;
		// Non-first fragments carry no transport header: judged on the protocol alone.
		if (ip.frag_off & bpf_htons(0x1fff)) {
			p->proto = 0xff;
			return 0;
		}
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		p->family = FAM_V6;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->proto = ip6.nexthdr;
		l4 = off + sizeof(ip6);
	} else {
		return 1;
	}
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr th;
		if (bpf_skb_load_bytes(skb, l4, &th, sizeof(th)) < 0)
			return -1;
		p->sport = bpf_ntohs(th.source);
		p->dport = bpf_ntohs(th.dest);
		p->tcp_syn_only = th.syn && !th.ack;
		return 0;
	}
	if (p->proto == IPPROTO_UDP || p->proto == PROTO_SCTP)
		return load_ports(skb, l4, p->proto, &p->sport, &p->dport);
	if (p->proto == IPPROTO_ICMP && p->family == FAM_V4) {
		struct icmp_hdr ih;
		if (bpf_skb_load_bytes(skb, l4, &ih, sizeof(ih)) < 0)
			return -1;
		if (ih.type == ICMP_ECHO || ih.type == ICMP_ECHOREPLY) {
			p->icmp_echo = ih.type == ICMP_ECHO ? 1 : 2;
			__u16 id = bpf_ntohs(ih.id);
			p->sport = p->icmp_echo == 1 ? id : 0;
			p->dport = p->icmp_echo == 1 ? 0 : id;
		} else if (ih.type == ICMP_DEST_UNREACH || ih.type == ICMP_TIME_EXCEEDED ||
			   ih.type == ICMP_PARAMETERPROB) {
			p->icmp_error = 1;
			return parse_inner(skb, l4 + sizeof(ih), p);
		}
		return 0;
	}
	if (p->proto == IPPROTO_ICMPV6 && p->family == FAM_V6) {
		struct icmp_hdr ih;
		if (bpf_skb_load_bytes(skb, l4, &ih, sizeof(ih)) < 0)
			return -1;
		if (ih.type == ICMPV6_ECHO_REQUEST || ih.type == ICMPV6_ECHO_REPLY) {
			p->icmp_echo = ih.type == ICMPV6_ECHO_REQUEST ? 1 : 2;
			__u16 id = bpf_ntohs(ih.id);
			p->sport = p->icmp_echo == 1 ? id : 0;
			p->dport = p->icmp_echo == 1 ? 0 : id;
		} else if (ih.type >= 133 && ih.type <= 137) {
			p->ndp = 1;
		} else if (ih.type >= 1 && ih.type <= 4) {
			p->icmp_error = 1;
			return parse_inner(skb, l4 + sizeof(ih), p);
		}
		return 0;
	}
	return 0;
}

static __always_inline void count(void *map, __u32 index, __u32 len)
{
	struct count *c = bpf_map_lookup_elem(map, &index);
	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, len);
	}
}

static __always_inline int conn_known(struct conn_key *k, __u64 now)
{
	struct conn_val *v = bpf_map_lookup_elem(&pal_conns, k);
	if (!v)
		return 0;
	__u64 timeout = k->proto == IPPROTO_TCP ? TIMEOUT_TCP_NS : TIMEOUT_OTHER_NS;
	if (now - v->seen > timeout)
		return 0;
	v->seen = now;
	return 1;
}

static __always_inline void fill_conn(struct conn_key *k, __u32 ifindex, __u8 hook, __u8 proto,
				      __u8 family, const __u8 *s, const __u8 *d, __u16 sp,
				      __u16 dp)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->ifindex = ifindex;
	k->hook = hook;
	k->proto = proto;
	k->family = family;
	__builtin_memcpy(k->saddr, s, 16);
	__builtin_memcpy(k->daddr, d, 16);
	k->sport = sp;
	k->dport = dp;
}

// The rate limit of `key` as a GCRA (the token bucket's equivalent, one timestamp): a report
// is due when the theoretical arrival time is at most `burst - 1` intervals ahead of now.
// The timestamp moves by compare-and-swap, so CPUs racing on one key can lose a report but
// never exceed the limit; no lock on the packet path.
static __always_inline int take_token(__u32 key, __u64 now, const struct event_config *cfg)
{
	if (cfg->rate == 0 || cfg->burst == 0)
		return 0;
	__u64 interval = 1000000000ULL / cfg->rate;
	__u64 tolerance = (cfg->burst - 1) * interval;
	struct bucket *b = bpf_map_lookup_elem(&pal_limits, &key);
	if (!b) {
		struct bucket nb = { .tat = now + interval };
		// Another CPU may have made it meanwhile: then this one is not reported.
		return bpf_map_update_elem(&pal_limits, &key, &nb, BPF_NOEXIST) == 0;
	}
	__u64 old = b->tat;
	__u64 start = old > now ? old : now;
	if (start - now > tolerance)
		return 0;
	return __sync_val_compare_and_swap(&b->tat, old, start + interval) == old;
}

static __always_inline void report(const struct pkt *p, __u8 verdict, __u32 dir, __u64 tag,
				   __u32 limit_key, __u64 now, const struct event_config *cfg)
{
	if (!take_token(limit_key, now, cfg))
		return;
	struct event *e = bpf_ringbuf_reserve(&pal_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&pal_events_lost, &zero);
		if (lost)
			__sync_fetch_and_add(lost, 1);
		return;
	}
	e->tag = tag;
	e->verdict = verdict;
	e->family = p->family;
	e->proto = p->proto;
	e->dir = dir;
	int ported = p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == PROTO_SCTP;
	e->sport = ported ? p->sport : 0;
	e->dport = ported ? p->dport : 0;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int judge(struct __sk_buff *skb, __u8 hook)
{
	struct pkt p;
	int r = parse(skb, &p);
	if (r == 1)
		return PASS;
	if (r < 0)
		return TC_ACT_SHOT; // a truncated IP header: nothing to judge, never fail open
	// The node's own traffic to its pods (kubelet probes) is never filtered: packets
	// the node sends are not forwarded, they have no input interface.
	if (hook == HOOK_TO_POD && skb->ingress_ifindex == 0)
		return PASS;
	// A pod's traffic to the node itself (its input path) is not filtered either.
	if (hook == HOOK_FROM_POD) {
		struct addr_key ak;
		__builtin_memset(&ak, 0, sizeof(ak));
		ak.family = p.family;
		__builtin_memcpy(ak.addr, p.daddr, 16);
		if (bpf_map_lookup_elem(&pal_local, &ak))
			return PASS;
	}
	// Neighbour discovery, link-local and multicast destinations are never forwarded:
	// no policy sees them (nor does nft's forward hook).
	if (p.family == FAM_V6) {
		if (p.daddr[0] == 0xff || (p.daddr[0] == 0xfe && (p.daddr[1] & 0xc0) == 0x80))
			return PASS;
		if (p.proto == IPPROTO_ICMPV6 && p.ndp)
			return PASS;
	} else if (p.daddr[0] >= 224) {
		return PASS;
	}
	__u32 ifindex = skb->ifindex;
	__u64 now = bpf_ktime_get_ns();
	struct conn_key ck;
	// Related: an ICMP error about a flow this interface knows (either side).
	if (p.icmp_error) {
		fill_conn(&ck, ifindex, hook ^ 1, p.iproto, p.family, p.isaddr, p.idaddr,
			  p.isport, p.idport);
		if (conn_known(&ck, now))
			return PASS;
		fill_conn(&ck, ifindex, hook, p.iproto, p.family, p.idaddr, p.isaddr,
			  p.idport, p.isport);
		if (conn_known(&ck, now))
			return PASS;
		return TC_ACT_SHOT; // conntrack calls an unrelated ICMP error invalid
	}
	// Established: the flow seen on this interface in this direction, or its reply. A
	// TCP SYN always opens a new connection and is judged.
	if (!p.tcp_syn_only) {
		// (An echo reply carries the request's id in the dport slot: its reversed
		// tuple is the request's.)
		fill_conn(&ck, ifindex, hook, p.proto, p.family, p.saddr, p.daddr, p.sport,
			  p.dport);
		if (p.icmp_echo != 2 && conn_known(&ck, now))
			return PASS;
		fill_conn(&ck, ifindex, hook ^ 1, p.proto, p.family, p.daddr, p.saddr, p.dport,
			  p.sport);
		if (conn_known(&ck, now))
			return PASS;
	}
	// A new connection: the endpoint's direction decides.
	__u32 zero = 0;
	struct config_val *cfg = bpf_map_lookup_elem(&pal_config, &zero);
	if (!cfg)
		return TC_ACT_SHOT;
	__u8 gen = cfg->active & 1;
	__u32 dir = hook == HOOK_FROM_POD ? DIR_EGRESS : DIR_INGRESS;
	struct ep_key ek;
	__builtin_memset(&ek, 0, sizeof(ek));
	ek.gen = gen;
	ek.family = p.family;
	__builtin_memcpy(ek.addr, dir == DIR_EGRESS ? p.saddr : p.daddr, 16);
	struct ep_val *ep = bpf_map_lookup_elem(&pal_endpoints, &ek);
	__u32 action = ACT_OPEN;
	__u32 origin = 0;
	if (ep) {
		__u32 class_id = dir == DIR_EGRESS ? ep->class_id[1] : ep->class_id[0];
		__u8 miss = dir == DIR_EGRESS ? ep->miss[1] : ep->miss[0];
		if (class_id != 0) {
			action = miss;
			struct peer_key pk;
			__builtin_memset(&pk, 0, sizeof(pk));
			pk.prefixlen = 64 + (p.family == FAM_V4 ? 32 : 128);
			pk.gen = gen;
			pk.family = p.family;
			pk.class_id = class_id;
			__builtin_memcpy(pk.addr, dir == DIR_EGRESS ? p.daddr : p.saddr, 16);
			__u32 *group = bpf_map_lookup_elem(&pal_peers, &pk);
			if (group) {
				struct port_key tk;
				__builtin_memset(&tk, 0, sizeof(tk));
				tk.gen = gen;
				tk.group = *group;
				if (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP ||
				    p.proto == PROTO_SCTP) {
					tk.prefixlen = 64 + 16;
					tk.proto = p.proto;
					tk.port[0] = p.dport >> 8;
					tk.port[1] = p.dport & 0xff;
				} else {
					tk.prefixlen = 64;
				}
				struct verdict *v = bpf_map_lookup_elem(&pal_ports, &tk);
				if (v) {
					action = v->action;
					origin = v->origin;
				}
			}
		}
	}
	struct event_config *ev = bpf_map_lookup_elem(&pal_event_cfg, &zero);
	int events = ev && ev->enabled;
	if (action == ACT_ALLOW) {
		count(&pal_allow_cnt, origin, skb->len);
		if (events && ev->log_allowed) {
			__u64 *tag = bpf_map_lookup_elem(&pal_origin_tags, &origin);
			if (tag && *tag)
				report(&p, EV_ALLOWED, dir, *tag, (LIMIT_ALLOWED << 20) | origin, now,
				       ev);
		}
	}
	if (ep && (action == ACT_DEFAULT_DENY || action == ACT_AUDIT)) {
		__u32 index = ep->slot * 2 + dir;
		__u64 tag = dir == DIR_EGRESS ? ep->tag[1] : ep->tag[0];
		if (action == ACT_DEFAULT_DENY) {
			count(&pal_deny_cnt, index, skb->len);
			if (events && tag)
				report(&p, EV_DENIED, dir, tag, (LIMIT_DENIED << 20) | index, now, ev);
		} else {
			count(&pal_audit_cnt, index, skb->len);
			if (events && tag)
				report(&p, EV_AUDIT_DENIED, dir, tag, (LIMIT_AUDIT << 20) | index, now,
				       ev);
			action = ACT_OPEN;
		}
	}
	if (action != ACT_ALLOW && action != ACT_OPEN)
		return TC_ACT_SHOT;
	if (p.icmp_echo != 2) {
		struct conn_val cv = { .seen = now };
		fill_conn(&ck, ifindex, hook, p.proto, p.family, p.saddr, p.daddr, p.sport,
			  p.dport);
		bpf_map_update_elem(&pal_conns, &ck, &cv, BPF_ANY);
	}
	return PASS;
}

SEC("tc")
int palisade_from_pod(struct __sk_buff *skb)
{
	return judge(skb, HOOK_FROM_POD);
}

SEC("tc")
int palisade_to_pod(struct __sk_buff *skb)
{
	return judge(skb, HOOK_TO_POD);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
