/*
 * The byte stream to the host: the virtio-serial port "fastvm.agent" inside a VM, or a listening
 * unix socket in host test mode (one connection at a time; a new one replaces the old).
 *
 * Input is read into a buffer the caller parses with frame_next(). Output is queued and written
 * without blocking as the stream drains, so a slow or absent host never stalls the agent (which
 * keeps reaping and enforcing timeouts); callers stop producing output while link_backlogged().
 * Frames sent while no host is connected are dropped: a new host only wants frames after its
 * HELLO_ACK anyway.
 */
#ifndef FASTVM_LINK_H
#define FASTVM_LINK_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

#define VIRTIO_PORT_NAME "fastvm.agent"
/* Stop reading command output and requests while this much output is queued. */
#define LINK_OUT_HIGH_WATER (1024u * 1024u)

enum link_mode { LINK_PORT, LINK_UNIX };

struct link {
	enum link_mode mode;
	const char *unix_path; /* LINK_UNIX */
	int listen_fd;         /* LINK_UNIX */
	int fd;                /* port or accepted connection; -1 if none */
	bool host;             /* a host is connected (the port does not read EOF) */
	bool dead;             /* a write failed: the stream is closed at the next link_tick() */
	bool port_waiting;     /* LINK_PORT: "waiting for the port" was logged */
	uint32_t session;      /* bumped for every new host (new connection, HELLO) */
	struct buf in;
	struct buf out;
	int64_t stall_ms;      /* drop a partial input frame that makes no progress this long */
	int64_t last_input;    /* when input last made progress (or stopped being read) */
	int64_t next_probe;    /* LINK_PORT: when to next look for the port / probe for a host */
	int pfd;               /* index of fd in the current pollfd array, or -1 */
	int listen_pfd;        /* index of listen_fd, or -1 */
};

/* Host test mode: listen on a unix socket at path (replacing a stale socket file). 0 or -1. */
int link_init_unix(struct link *l, const char *path, int64_t stall_ms);
/* Guest mode: the port is opened by link_tick() once it appears. */
void link_init_port(struct link *l, int64_t stall_ms);

/* Appends the link's descriptors to pfds. want_input is false while output is backlogged. */
void link_add_pollfds(struct link *l, struct pollfd *pfds, int *n, bool want_input, int64_t now);
/* Milliseconds until link_tick() has work to do, or -1. */
int64_t link_timeout_ms(const struct link *l, int64_t now);
/* Handles poll results: accepts connections, reads input, writes queued output. */
void link_handle(struct link *l, const struct pollfd *pfds, int64_t now);
/* SIGIO from the port: the host connected or disconnected; probe at the next tick. */
void link_sigio(struct link *l);
/*
 * Timers: opens the port when it appears, probes for a host while disconnected, closes a dead
 * stream, and drops a stalled partial frame. Returns true when buffered input should be parsed
 * again.
 */
bool link_tick(struct link *l, int64_t now);

static inline bool link_can_send(const struct link *l) { return l->fd >= 0 && l->host && !l->dead; }
static inline bool link_backlogged(const struct link *l)
{
	return buf_pending(&l->out) >= LINK_OUT_HIGH_WATER;
}

/* Queues one frame (payload = a then b, either may be empty) and starts writing it. */
void link_send(struct link *l, uint8_t type, uint32_t id, const void *a, size_t alen, const void *b,
	       size_t blen);
/* Blocks until queued output is written or timeout_ms passes (used before power-off). */
void link_flush_sync(struct link *l, int timeout_ms);
/* Closes every descriptor (test mode exit). */
void link_close(struct link *l);

#endif
