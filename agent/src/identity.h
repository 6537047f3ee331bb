/*
 * IDENTITY: what a fresh VM or a fork needs to become itself: hostname, machine id, wall clock,
 * entropy, network addresses and routes.
 */
#ifndef FASTVM_IDENTITY_H
#define FASTVM_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct identity_opts {
	/* Prefix for /etc/hostname, /etc/hosts and /etc/machine-id ("" in the guest); NULL: the
	 * files are not touched. */
	const char *root;
	/* The ip(8) binary for net and route; NULL: rtnetlink if kernel is set (ip only for route
	 * lines it cannot parse), and the first of /sbin/ip, /usr/sbin/ip, /bin/ip, /usr/bin/ip
	 * wherever ip is needed; "": net and route fields are validated but not applied. */
	const char *ip;
	/* Apply the machine-wide parts: sethostname(), clock_settime(), RNDADDENTROPY and
	 * RNDRESEEDCRNG. */
	bool kernel;
};

/*
 * Validates every field of an IDENTITY payload, then applies them in tag order (the clock
 * first). Returns 0, or an errno value with a message naming the failing field
 * ("hostname: ...") in err.
 */
int identity_apply(const struct identity_opts *o, const uint8_t *payload, uint32_t len, char *err,
		   size_t errlen);

#endif
