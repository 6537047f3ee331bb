/*
 * IDENTITY's net and route fields over rtnetlink (a NETLINK_ROUTE socket), so a guest does not
 * run ip(8) for them: under QEMU TCG every exec of that dynamic binary costs 10-100 ms.
 */
#ifndef FASTVM_NETLINK_H
#define FASTVM_NETLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An address with a prefix length, e.g. fd00::2/64. */
struct nl_prefix {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned int len;
};

/* "[-4|-6] default|PREFIX[/LEN] [via GW] [dev IFACE] [metric N]" */
struct nl_route {
	int family;
	bool has_dst; /* false: default */
	struct nl_prefix dst;
	bool has_gw;
	uint8_t gw[16];
	const char *dev; /* NULL if none */
	bool has_metric;
	uint32_t metric;
};

/* An open NETLINK_ROUTE socket. */
struct nl {
	int fd;
	uint32_t seq;
	uint8_t *buf; /* receive buffer */
};

/*
 * Parses "ADDR/LEN", or also a bare "ADDR" (LEN is then the full length) unless need_len. Returns
 * NULL, or why the text is not one (for messages).
 */
const char *nl_parse_prefix(const char *s, bool need_len, struct nl_prefix *p);

/*
 * Parses the tokens of a route line of a form nl_replace_route() handles. False for anything
 * else (other ip(8) options and keywords, mixed families, no gateway and no device).
 */
bool nl_parse_route(char *const *tok, int n, struct nl_route *r);

/* Opens the socket, with a receive timeout. Returns 0 or an errno value. */
int nl_open(struct nl *nl);
void nl_close(struct nl *nl);

/*
 * Gives link ifname the MAC address and brings it up, then replaces its addresses of global scope
 * with addrs. Returns 0, or an errno value with the failing step in what (e.g. "eth0: add
 * fd00::2/64").
 */
int nl_setup_link(struct nl *nl, const char *ifname, const uint8_t mac[6], const struct nl_prefix *addrs,
		  size_t naddrs, char *what, size_t whatlen);

/* "ip route replace" for r: creates or replaces the route in the main table. 0 or an errno value. */
int nl_replace_route(struct nl *nl, const struct nl_route *r);

#endif
