#include "netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "nl_uapi.h"
#include "util.h"

/* No request may keep the agent (one thread) waiting longer than this. */
#define NL_TIMEOUT_S 5
/* Dumps come in datagrams of up to 32 KiB; a shorter buffer would truncate them. */
#define NL_BUF_SIZE (32 * 1024)
/* Addresses deleted per dump when flushing; a dump finds the rest. */
#define FLUSH_BATCH 32
#define FLUSH_ROUNDS 8

/* A request: header, fixed part, attributes. Ours need a fraction of the room. */
struct req {
	union {
		struct nlmsghdr h;
		uint8_t b[512];
	} u;
	bool overflow;
};

typedef int (*reply_cb)(const struct nlmsghdr *h, void *arg);

/* ---- parsing ---- */

static bool parse_u32(const char *s, uint32_t max, uint32_t *out)
{
	uint64_t v = 0;
	size_t n = strlen(s);

	if (n == 0 || n > 10 || strspn(s, "0123456789") != n)
		return false;
	for (size_t i = 0; i < n; i++)
		v = v * 10 + (uint64_t)(s[i] - '0');
	if (v > max)
		return false;
	*out = (uint32_t)v;
	return true;
}

const char *nl_parse_prefix(const char *s, bool need_len, struct nl_prefix *p)
{
	char addr[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	uint32_t max, len;

	memset(p, 0, sizeof(*p));
	if (alen == 0 || alen >= sizeof(addr))
		return "not an IPv4 or IPv6 address";
	memcpy(addr, s, alen);
	addr[alen] = '\0';
	p->family = strchr(addr, ':') ? AF_INET6 : AF_INET;
	if (inet_pton(p->family, addr, p->addr) != 1)
		return "not an IPv4 or IPv6 address";
	max = p->family == AF_INET ? 32 : 128;
	if (!slash) {
		if (need_len)
			return "no /PREFIX";
		p->len = max;
		return NULL;
	}
	if (!parse_u32(slash + 1, max, &len))
		return p->family == AF_INET ? "prefix length must be 0-32" : "prefix length must be 0-128";
	p->len = len;
	return NULL;
}

bool nl_parse_route(char *const *tok, int n, struct nl_route *r)
{
	struct nl_prefix gw = {.family = AF_UNSPEC};
	int i = 0, family = AF_UNSPEC;

	memset(r, 0, sizeof(*r));
	for (; i < n && tok[i][0] == '-'; i++) {
		if (strcmp(tok[i], "-4") == 0)
			family = AF_INET;
		else if (strcmp(tok[i], "-6") == 0)
			family = AF_INET6;
		else
			return false;
	}
	if (i == n)
		return false;
	if (strcmp(tok[i], "default") != 0) {
		if (nl_parse_prefix(tok[i], false, &r->dst))
			return false;
		r->has_dst = true;
	}
	/* KEY VALUE pairs, each key at most once. */
	for (i++; i < n; i += 2) {
		const char *key = tok[i], *val = i + 1 < n ? tok[i + 1] : NULL;

		if (!val)
			return false;
		if (strcmp(key, "via") == 0 && !r->has_gw) {
			if (strchr(val, '/') || nl_parse_prefix(val, false, &gw))
				return false;
			memcpy(r->gw, gw.addr, sizeof(r->gw));
			r->has_gw = true;
		} else if (strcmp(key, "dev") == 0 && !r->dev) {
			if (strlen(val) >= IF_NAMESIZE)
				return false;
			r->dev = val;
		} else if ((strcmp(key, "metric") == 0 || strcmp(key, "priority") == 0 ||
			    strcmp(key, "preference") == 0) && !r->has_metric) {
			if (!parse_u32(val, UINT32_MAX, &r->metric))
				return false;
			r->has_metric = true;
		} else {
			return false;
		}
	}
	/* The family is the one -4/-6, the gateway and the destination agree on; ip(8) says IPv4
	 * when none tells. Mixed families (an IPv4 route via an IPv6 gateway) are left to ip. */
	if (r->has_gw) {
		if (family != AF_UNSPEC && family != gw.family)
			return false;
		family = gw.family;
	}
	if (r->has_dst) {
		if (family != AF_UNSPEC && family != r->dst.family)
			return false;
		family = r->dst.family;
	}
	r->family = family == AF_UNSPEC ? AF_INET : family;
	/* A route with neither is an error ip(8) explains better. */
	return r->has_gw || r->dev;
}

/* ---- messages ---- */

/* Starts a request of type with a zeroed fixed part of body bytes, which it returns. */
static void *req_init(struct req *r, uint16_t type, uint16_t flags, size_t body)
{
	memset(r, 0, sizeof(*r));
	r->u.h.nlmsg_len = NLMSG_HDRLEN + NLMSG_ALIGN((uint32_t)body);
	r->u.h.nlmsg_type = type;
	r->u.h.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags);
	return r->u.b + NLMSG_HDRLEN;
}

static void req_attr(struct req *r, uint16_t type, const void *data, size_t len)
{
	struct rtattr rta = {.rta_len = (unsigned short)(sizeof(rta) + len), .rta_type = type};
	size_t at = r->u.h.nlmsg_len;

	if (at + RTA_ALIGN(sizeof(rta) + len) > sizeof(r->u.b)) {
		r->overflow = true;
		return;
	}
	memcpy(r->u.b + at, &rta, sizeof(rta));
	memcpy(r->u.b + at + sizeof(rta), data, len);
	r->u.h.nlmsg_len = (uint32_t)(at + RTA_ALIGN(sizeof(rta) + len));
}

static void req_u32(struct req *r, uint16_t type, uint32_t v) { req_attr(r, type, &v, sizeof(v)); }

/* The next attribute of [*p, *p + *left), or NULL at the end. */
static const struct rtattr *next_attr(const uint8_t **p, size_t *left)
{
	const struct rtattr *a = (const void *)*p;
	size_t step;

	if (*left < sizeof(*a) || a->rta_len < sizeof(*a) || a->rta_len > *left)
		return NULL;
	step = RTA_ALIGN((size_t)a->rta_len);
	step = step < *left ? step : *left;
	*p += step;
	*left -= step;
	return a;
}

static const void *attr_data(const struct rtattr *a) { return (const uint8_t *)a + sizeof(*a); }
static size_t attr_len(const struct rtattr *a) { return a->rta_len - sizeof(*a); }

/* The fixed part of message h, or NULL if h is too short to hold size bytes of it. */
static const void *msg_body(const struct nlmsghdr *h, size_t size)
{
	return h->nlmsg_len < NLMSG_HDRLEN + size ? NULL : (const uint8_t *)h + NLMSG_HDRLEN;
}

/* The attributes after a fixed part of size bytes. */
static const uint8_t *msg_attrs(const struct nlmsghdr *h, size_t size, size_t *left)
{
	size_t at = NLMSG_HDRLEN + NLMSG_ALIGN(size);

	*left = h->nlmsg_len > at ? h->nlmsg_len - at : 0;
	return (const uint8_t *)h + at;
}

/*
 * Sends r and reads its replies: a dump's messages up to NLMSG_DONE, or else whatever the request
 * asks for and then the ACK that every request but a dump gets (NLM_F_ACK). cb, if set, sees each
 * message but the last. Returns 0 or an errno value (the kernel's, or ETIMEDOUT).
 */
static int exchange(struct nl *nl, struct req *r, bool dump, reply_cb cb, void *arg)
{
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	uint32_t seq = ++nl->seq;

	if (r->overflow)
		return EMSGSIZE;
	r->u.h.nlmsg_seq = seq;
	if (dump)
		r->u.h.nlmsg_flags |= NLM_F_DUMP;
	else
		r->u.h.nlmsg_flags |= NLM_F_ACK;
	while (sendto(nl->fd, r->u.b, r->u.h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		if (errno != EINTR)
			return errno == EAGAIN ? ETIMEDOUT : errno;
	}
	for (;;) {
		struct sockaddr_nl from;
		socklen_t fromlen = sizeof(from);
		ssize_t n = recvfrom(nl->fd, nl->buf, NL_BUF_SIZE, MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
		size_t left;

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno;
		}
		if ((size_t)n > NL_BUF_SIZE)
			return EMSGSIZE; /* MSG_TRUNC gave the datagram's real length */
		if (fromlen < sizeof(from) || from.nl_pid != 0)
			continue; /* not from the kernel */
		left = (size_t)n;
		for (const uint8_t *p = nl->buf; left >= NLMSG_HDRLEN;) {
			const struct nlmsghdr *h = (const void *)p;
			size_t step = NLMSG_ALIGN((size_t)h->nlmsg_len);

			if (h->nlmsg_len < NLMSG_HDRLEN || h->nlmsg_len > left)
				break;
			p += step < left ? step : left;
			left -= step < left ? step : left;
			if (h->nlmsg_seq != seq)
				continue; /* a late reply to an earlier request */
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = msg_body(h, sizeof(int));

				return e ? -e->error : EPROTO;
			}
			if (h->nlmsg_type == NLMSG_DONE) {
				int status = 0;

				if (h->nlmsg_len >= NLMSG_HDRLEN + sizeof(int))
					memcpy(&status, (const uint8_t *)h + NLMSG_HDRLEN, sizeof(int));
				return status < 0 ? -status : 0;
			}
			if (cb) {
				int rc = cb(h, arg);

				if (rc)
					return rc; /* what is left of a dump is skipped by seq later */
			}
		}
	}
}

/* ---- links ---- */

struct link_info {
	bool found;
	int index;
	unsigned int flags;
	bool has_mac;
	uint8_t mac[6];
};

static int on_link(const struct nlmsghdr *h, void *arg)
{
	const struct ifinfomsg *ifi = msg_body(h, sizeof(*ifi));
	struct link_info *li = arg;
	const struct rtattr *a;
	const uint8_t *p;
	size_t left;

	if (h->nlmsg_type != RTM_NEWLINK || !ifi)
		return 0;
	li->found = true;
	li->index = ifi->ifi_index;
	li->flags = ifi->ifi_flags;
	p = msg_attrs(h, sizeof(*ifi), &left);
	while ((a = next_attr(&p, &left))) {
		if (a->rta_type == IFLA_ADDRESS && attr_len(a) == sizeof(li->mac)) {
			memcpy(li->mac, attr_data(a), sizeof(li->mac));
			li->has_mac = true;
		}
	}
	return 0;
}

/* RTM_GETLINK by name: index, flags and MAC address. */
static int get_link(struct nl *nl, const char *ifname, struct link_info *li)
{
	struct req r;
	int rc;

	memset(li, 0, sizeof(*li));
	req_init(&r, RTM_GETLINK, 0, sizeof(struct ifinfomsg));
	req_attr(&r, IFLA_IFNAME, ifname, strlen(ifname) + 1);
	rc = exchange(nl, &r, false, on_link, li);
	if (rc == 0 && (!li->found || li->index <= 0))
		rc = ENODEV;
	return rc;
}

/* Sets IFF_UP as up says and, if mac is set, the MAC address first (the kernel's order). */
static int set_link(struct nl *nl, int index, const uint8_t *mac, bool up)
{
	struct req r;
	struct ifinfomsg *ifi = req_init(&r, RTM_NEWLINK, 0, sizeof(*ifi));

	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = index;
	ifi->ifi_change = IFF_UP;
	ifi->ifi_flags = up ? IFF_UP : 0;
	if (mac)
		req_attr(&r, IFLA_ADDRESS, mac, 6);
	return exchange(nl, &r, false, NULL, NULL);
}

/*
 * Gives the link its MAC address and brings it up. virtio-net changes the address of a running
 * link (IFF_LIVE_ADDR_CHANGE), so that is tried first; a device that answers EBUSY is taken down
 * for it.
 */
static int link_up_with_mac(struct nl *nl, const char *ifname, const struct link_info *li,
			    const uint8_t mac[6], bool *stale_ll, char *what, size_t whatlen)
{
	bool new_mac = !li->has_mac || memcmp(li->mac, mac, 6) != 0;
	bool was_up = (li->flags & IFF_UP) != 0;
	int rc;

	if (!new_mac && was_up)
		return 0;
	if (new_mac)
		snprintf(what, whatlen, "%s: set address %02x:%02x:%02x:%02x:%02x:%02x", ifname, mac[0], mac[1],
			 mac[2], mac[3], mac[4], mac[5]);
	else
		snprintf(what, whatlen, "%s: set up", ifname);
	rc = set_link(nl, li->index, new_mac ? mac : NULL, true);
	if (rc == EBUSY && new_mac) {
		if ((rc = set_link(nl, li->index, NULL, false)) == 0)
			rc = set_link(nl, li->index, mac, true);
		return rc; /* coming up again made a new link-local address */
	}
	/*
	 * The kernel derives the IPv6 link-local address from the MAC only when IPv6 starts on the
	 * link, so after a live change the link keeps the old one, which a fork shares with its
	 * siblings: the caller replaces it.
	 */
	*stale_ll = rc == 0 && new_mac && was_up;
	return rc;
}

/* ---- addresses ---- */

struct flush {
	int index;
	bool link_local; /* IPv6 link-local addresses too */
	bool had_link_local;
	size_t n;
	bool more;
	struct {
		struct ifaddrmsg ifa;
		bool has_local, has_addr;
		uint8_t local[16], addr[16];
	} a[FLUSH_BATCH];
};

/* Collects the link's addresses of global scope from an RTM_GETADDR dump. */
static int on_addr(const struct nlmsghdr *h, void *arg)
{
	const struct ifaddrmsg *ifa = msg_body(h, sizeof(*ifa));
	struct flush *f = arg;
	const struct rtattr *a;
	const uint8_t *p;
	size_t left, alen;

	if (h->nlmsg_type != RTM_NEWADDR || !ifa || ifa->ifa_index != (uint32_t)f->index ||
	    (ifa->ifa_family != AF_INET && ifa->ifa_family != AF_INET6))
		return 0;
	if (f->link_local && ifa->ifa_family == AF_INET6 && ifa->ifa_scope == RT_SCOPE_LINK)
		f->had_link_local = true;
	else if (ifa->ifa_scope != RT_SCOPE_UNIVERSE)
		return 0;
	if (f->n == FLUSH_BATCH) {
		f->more = true;
		return 0;
	}
	alen = ifa->ifa_family == AF_INET ? 4 : 16;
	f->a[f->n].ifa = *ifa;
	f->a[f->n].has_local = f->a[f->n].has_addr = false;
	p = msg_attrs(h, sizeof(*ifa), &left);
	while ((a = next_attr(&p, &left))) {
		if (attr_len(a) != alen)
			continue;
		if (a->rta_type == IFA_LOCAL) {
			memcpy(f->a[f->n].local, attr_data(a), alen);
			f->a[f->n].has_local = true;
		} else if (a->rta_type == IFA_ADDRESS) {
			memcpy(f->a[f->n].addr, attr_data(a), alen);
			f->a[f->n].has_addr = true;
		}
	}
	f->n++;
	return 0;
}

/*
 * "ip addr flush dev IFACE scope global", both families; with link_local, IPv6 link-local
 * addresses too (*had_link_local says whether there was one).
 */
static int flush_addrs(struct nl *nl, int index, bool link_local, bool *had_link_local)
{
	*had_link_local = false;
	for (int round = 0; round < FLUSH_ROUNDS; round++) {
		struct flush f = {.index = index, .link_local = link_local};
		struct req r;
		struct ifaddrmsg *ifa = req_init(&r, RTM_GETADDR, 0, sizeof(*ifa));
		int rc;

		ifa->ifa_family = AF_UNSPEC;
		if ((rc = exchange(nl, &r, true, on_addr, &f)))
			return rc;
		for (size_t i = 0; i < f.n; i++) {
			size_t alen = f.a[i].ifa.ifa_family == AF_INET ? 4 : 16;

			ifa = req_init(&r, RTM_DELADDR, 0, sizeof(*ifa));
			*ifa = f.a[i].ifa;
			ifa->ifa_flags = 0;
			if (f.a[i].has_local)
				req_attr(&r, IFA_LOCAL, f.a[i].local, alen);
			if (f.a[i].has_addr)
				req_attr(&r, IFA_ADDRESS, f.a[i].addr, alen);
			rc = exchange(nl, &r, false, NULL, NULL);
			/* Deleting a primary IPv4 address can take its secondaries with it. */
			if (rc && rc != EADDRNOTAVAIL)
				return rc;
		}
		*had_link_local |= f.had_link_local;
		if (!f.more)
			break;
	}
	return 0;
}

/* fe80::/64 with the modified EUI-64 interface id of mac: what the kernel makes from it. */
static void link_local_of(const uint8_t mac[6], struct nl_prefix *p)
{
	memset(p, 0, sizeof(*p));
	p->family = AF_INET6;
	p->len = 64;
	p->addr[0] = 0xfe;
	p->addr[1] = 0x80;
	p->addr[8] = mac[0] ^ 0x02;
	p->addr[9] = mac[1];
	p->addr[10] = mac[2];
	p->addr[11] = 0xff;
	p->addr[12] = 0xfe;
	p->addr[13] = mac[3];
	p->addr[14] = mac[4];
	p->addr[15] = mac[5];
}

/* "ip addr replace ADDR/LEN dev IFACE", IPv6 with nodad so the address is usable at once. */
static int add_addr(struct nl *nl, int index, const struct nl_prefix *a)
{
	struct req r;
	struct ifaddrmsg *ifa = req_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, sizeof(*ifa));

	ifa->ifa_family = (uint8_t)a->family;
	ifa->ifa_prefixlen = (uint8_t)a->len;
	ifa->ifa_index = (uint32_t)index;
	if (a->family == AF_INET) {
		/* ip(8)'s default scope: host for 127/8 */
		ifa->ifa_scope = a->addr[0] == 127 ? RT_SCOPE_HOST : RT_SCOPE_UNIVERSE;
		req_attr(&r, IFA_LOCAL, a->addr, 4);
		req_attr(&r, IFA_ADDRESS, a->addr, 4);
	} else {
		/* ifa_flags is only 8 bits; IFA_FLAGS is what newer kernels read. */
		ifa->ifa_flags = IFA_F_NODAD;
		req_attr(&r, IFA_ADDRESS, a->addr, 16);
		req_u32(&r, IFA_FLAGS, IFA_F_NODAD);
	}
	return exchange(nl, &r, false, NULL, NULL);
}

/* ---- entry points ---- */

int nl_open(struct nl *nl)
{
	struct timeval tv = {.tv_sec = NL_TIMEOUT_S};
	int saved;

	nl->fd = -1;
	nl->seq = 0;
	nl->buf = malloc(NL_BUF_SIZE);
	if (!nl->buf)
		return ENOMEM;
	nl->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (nl->fd >= 0 && setsockopt(nl->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0 &&
	    setsockopt(nl->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0)
		return 0;
	saved = errno;
	nl_close(nl);
	return saved;
}

void nl_close(struct nl *nl)
{
	if (nl->fd >= 0)
		close(nl->fd);
	nl->fd = -1;
	free(nl->buf);
	nl->buf = NULL;
}

int nl_setup_link(struct nl *nl, const char *ifname, const uint8_t mac[6], const struct nl_prefix *addrs,
		  size_t naddrs, char *what, size_t whatlen)
{
	struct link_info li;
	bool stale_ll = false, had_ll = false;
	int rc;

	snprintf(what, whatlen, "%s", ifname);
	if ((rc = get_link(nl, ifname, &li)) ||
	    (rc = link_up_with_mac(nl, ifname, &li, mac, &stale_ll, what, whatlen)))
		return rc;
	snprintf(what, whatlen, "%s: flush addresses", ifname);
	if ((rc = flush_addrs(nl, li.index, stale_ll, &had_ll)))
		return rc;
	if (had_ll) {
		/*
		 * Replacing the address is much less guest work than restarting IPv6 on the link (which
		 * tears down and rebuilds all of its IPv6 state), and under TCG guest work is time.
		 */
		struct nl_prefix ll;

		link_local_of(mac, &ll);
		snprintf(what, whatlen, "%s: add link-local address", ifname);
		if ((rc = add_addr(nl, li.index, &ll)))
			return rc;
	}
	for (size_t i = 0; i < naddrs; i++) {
		char text[INET6_ADDRSTRLEN];

		inet_ntop(addrs[i].family, addrs[i].addr, text, sizeof(text));
		snprintf(what, whatlen, "%s: add %s/%u", ifname, text, addrs[i].len);
		if ((rc = add_addr(nl, li.index, &addrs[i])))
			return rc;
	}
	return 0;
}

int nl_replace_route(struct nl *nl, const struct nl_route *rt)
{
	size_t alen = rt->family == AF_INET ? 4 : 16;
	struct link_info li = {.index = 0};
	struct req r;
	struct rtmsg *rtm;
	int rc;

	if (rt->dev && (rc = get_link(nl, rt->dev, &li)))
		return rc;
	rtm = req_init(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, sizeof(*rtm));
	rtm->rtm_family = (unsigned char)rt->family;
	rtm->rtm_dst_len = (unsigned char)(rt->has_dst ? rt->dst.len : 0);
	rtm->rtm_table = RT_TABLE_MAIN;
	rtm->rtm_protocol = RTPROT_BOOT;
	/* As ip(8): an IPv4 route with no gateway is on the link. */
	rtm->rtm_scope = rt->has_gw || rt->family == AF_INET6 ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
	rtm->rtm_type = RTN_UNICAST;
	if (rt->has_dst)
		req_attr(&r, RTA_DST, rt->dst.addr, alen);
	if (rt->has_gw)
		req_attr(&r, RTA_GATEWAY, rt->gw, alen);
	if (rt->dev)
		req_u32(&r, RTA_OIF, (uint32_t)li.index);
	if (rt->has_metric)
		req_u32(&r, RTA_PRIORITY, rt->metric);
	return exchange(nl, &r, false, NULL, NULL);
}
