/*
 * The agent's state, shared by its modules. There is exactly one, owned by main(); everything
 * reaches it through a pointer rather than through globals.
 */
#ifndef FASTVM_AGENT_H
#define FASTVM_AGENT_H

#include <poll.h>
#include <sys/resource.h>
#include <stdbool.h>
#include <stdint.h>

#include "identity.h"
#include "link.h"

#ifndef AGENT_VERSION
#define AGENT_VERSION "dev"
#endif

struct exec_req;

struct agent {
	bool pid1;                 /* running as init: mounts done, reboot on SHUTDOWN */
	struct link link;          /* the stream to the host */
	int sfd;                   /* signalfd: SIGCHLD, SIGIO, SIGTERM/SIGINT/SIGHUP */
	struct exec_req *reqs;     /* running EXEC requests */
	unsigned nreqs;
	struct identity_opts identity;
	uint8_t *scratch;          /* FRAME_MAX_CHUNK bytes for reading command output */
	struct rlimit nofile;      /* RLIMIT_NOFILE as inherited, restored for commands */
	struct pollfd *pfds;       /* poll set, rebuilt every iteration */
	int pfds_cap;
};

/* Sends a reply frame to the current host (dropped if none is connected). */
void agent_send(struct agent *a, uint8_t type, uint32_t id, const void *payload, size_t len);
/* Sends ERROR: an errno-style code and a message. */
void agent_error(struct agent *a, uint32_t id, uint32_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
