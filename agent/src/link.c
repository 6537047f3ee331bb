#include "link.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto.h"

/* While no host is connected, look again this often even without SIGIO. */
#define PORT_PROBE_MS 100
#define VIRTIO_PORTS_DIR "/sys/class/virtio-ports"

/* Forgets everything buffered for the current host. */
static void reset_stream(struct link *l)
{
	buf_clear(&l->in);
	buf_clear(&l->out);
	l->dead = false;
}

static void close_stream(struct link *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	l->host = false;
	reset_stream(l);
}

int link_init_unix(struct link *l, const char *path, int64_t stall_ms)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct stat st;
	int fd;

	memset(l, 0, sizeof(*l));
	l->mode = LINK_UNIX;
	l->unix_path = path;
	l->fd = l->listen_fd = -1;
	l->stall_ms = stall_ms;
	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(addr.sun_path, path);
	/* A socket file left by an earlier run would make bind() fail; anything else is kept. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 8) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	l->listen_fd = fd;
	return 0;
}

void link_init_port(struct link *l, int64_t stall_ms)
{
	memset(l, 0, sizeof(*l));
	l->mode = LINK_PORT;
	l->fd = l->listen_fd = -1;
	l->stall_ms = stall_ms;
}

void link_close(struct link *l)
{
	close_stream(l);
	if (l->listen_fd >= 0) {
		close(l->listen_fd);
		l->listen_fd = -1;
		if (l->unix_path)
			unlink(l->unix_path);
	}
	buf_free(&l->in);
	buf_free(&l->out);
}

/* Finds /dev/vportNpM whose sysfs name is VIRTIO_PORT_NAME. 0 or -1. */
static int port_find(char *dev, size_t size)
{
	DIR *dir = opendir(VIRTIO_PORTS_DIR);
	struct dirent *de;
	int found = -1;

	if (!dir)
		return -1;
	while (found < 0 && (de = readdir(dir)) != NULL) {
		char path[512], name[128];
		ssize_t n;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), VIRTIO_PORTS_DIR "/%s/name", de->d_name);
		n = read_small_file(path, name, sizeof(name));
		if (n <= 0)
			continue;
		while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == ' '))
			name[--n] = '\0';
		if (strcmp(name, VIRTIO_PORT_NAME) == 0 &&
		    snprintf(dev, size, "/dev/%s", de->d_name) < (int)size)
			found = 0;
	}
	closedir(dir);
	return found;
}

static void port_open(struct link *l, int64_t now)
{
	char dev[300];
	int fd;

	l->next_probe = now + PORT_PROBE_MS;
	if (port_find(dev, sizeof(dev)) < 0) {
		if (!l->port_waiting)
			agent_log("waiting for virtio-serial port %s", VIRTIO_PORT_NAME);
		l->port_waiting = true;
		return;
	}
	/* Non-blocking: an absent host must never stall a read or a write. */
	fd = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		if (!l->port_waiting)
			agent_log("cannot open %s: %s (retrying)", dev, strerror(errno));
		l->port_waiting = true;
		return;
	}
	/*
	 * The driver sends SIGIO when the host connects or disconnects (and when data arrives), so
	 * a disconnected port needs no busy polling.
	 */
	if (fcntl(fd, F_SETOWN, getpid()) < 0 ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) < 0)
		agent_log("cannot enable SIGIO on %s: %s", dev, strerror(errno));
	agent_log("opened %s (%s)", dev, VIRTIO_PORT_NAME);
	l->port_waiting = false;
	l->fd = fd;
	l->host = false;
	l->next_probe = now; /* probe for a host right away */
	reset_stream(l);
}

/* The host went away: its partial frames and unsent replies mean nothing to the next one. */
static void host_lost(struct link *l, int64_t now)
{
	if (l->mode == LINK_UNIX) {
		close_stream(l);
		return;
	}
	if (l->host)
		agent_log("host disconnected");
	l->host = false;
	reset_stream(l);
	l->next_probe = now + PORT_PROBE_MS;
}

/*
 * One read into the input buffer. On the port, EOF means "no host connected" (the driver keeps
 * buffered bytes readable until then), and EAGAIN means a host is connected but quiet.
 */
static void read_input(struct link *l, int64_t now)
{
	size_t room = FRAME_HEADER_SIZE + FRAME_MAX_PAYLOAD - buf_pending(&l->in);
	ssize_t n;

	/* A complete frame is always consumed before the next read, so room is never 0. */
	if (room == 0 || buf_reserve(&l->in, room) < 0) {
		agent_log("input buffer: %s", strerror(errno ? errno : ENOBUFS));
		buf_clear(&l->in);
		return;
	}
	n = read(l->fd, l->in.data + l->in.len, room);
	if (n > 0) {
		if (!l->host)
			agent_log("host connected");
		l->host = true;
		l->in.len += (size_t)n;
		l->last_input = now;
		return;
	}
	if (n == 0) {
		host_lost(l, now);
		return;
	}
	if (errno == EINTR)
		return;
	if (errno == EAGAIN) {
		if (l->mode == LINK_PORT && !l->host) {
			agent_log("host connected");
			l->host = true;
		}
		return;
	}
	if (l->mode == LINK_UNIX && (errno == ECONNRESET || errno == EPIPE)) {
		close_stream(l);
		return;
	}
	agent_log("read from host: %s", strerror(errno));
	close_stream(l);
	if (l->mode == LINK_PORT)
		l->next_probe = now + PORT_PROBE_MS; /* reopen, e.g. after hot-unplug (ENODEV) */
}

/* Writes queued output until the stream would block. A failed stream is closed at the next tick. */
static void flush_output(struct link *l)
{
	while (buf_pending(&l->out) > 0 && l->fd >= 0 && !l->dead) {
		ssize_t n = write(l->fd, buf_head(&l->out), buf_pending(&l->out));

		if (n > 0) {
			buf_consume(&l->out, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return; /* poll for POLLOUT */
		if (!(l->mode == LINK_UNIX && n < 0 && (errno == EPIPE || errno == ECONNRESET)))
			agent_log("write to host: %s", n < 0 ? strerror(errno) : "no progress");
		l->dead = true;
		buf_clear(&l->out);
	}
}

/* Accepts pending connections; the newest one wins. Returns true if the stream was replaced. */
static bool accept_connections(struct link *l, int64_t now)
{
	bool replaced = false;

	for (;;) {
		int fd = accept4(l->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				agent_log("accept: %s", strerror(errno));
			return replaced;
		}
		/* A new connection is a new host: it replaces the old one (as after a restore). */
		close_stream(l);
		l->fd = fd;
		l->host = true;
		l->session++;
		l->last_input = now;
		replaced = true;
	}
}

void link_add_pollfds(struct link *l, struct pollfd *pfds, int *n, bool want_input, int64_t now)
{
	l->pfd = l->listen_pfd = -1;
	if (!want_input)
		l->last_input = now; /* a frame does not stall while we are not reading */
	if (l->listen_fd >= 0) {
		l->listen_pfd = *n;
		pfds[(*n)++] = (struct pollfd){.fd = l->listen_fd, .events = POLLIN};
	}
	/* A disconnected port reports POLLIN|POLLHUP forever: wait for SIGIO instead. */
	if (l->fd < 0 || !l->host || l->dead)
		return;
	l->pfd = *n;
	pfds[(*n)++] = (struct pollfd){
	    .fd = l->fd,
	    .events = (short)((want_input ? POLLIN : 0) | (buf_pending(&l->out) ? POLLOUT : 0)),
	};
}

void link_handle(struct link *l, const struct pollfd *pfds, int64_t now)
{
	bool replaced = false;

	if (l->listen_pfd >= 0 && (pfds[l->listen_pfd].revents & POLLIN))
		replaced = accept_connections(l, now);
	/* A replaced stream's revents belong to the closed connection (even if the fd number was reused). */
	if (!replaced && l->pfd >= 0 && l->fd >= 0) {
		short re = pfds[l->pfd].revents;

		if (re & POLLOUT)
			flush_output(l);
		if (re & (POLLIN | POLLHUP | POLLERR))
			read_input(l, now);
	}
}

void link_sigio(struct link *l) { l->next_probe = 0; }

int64_t link_timeout_ms(const struct link *l, int64_t now)
{
	int64_t t = -1;

	if (l->mode == LINK_PORT && (l->fd < 0 || !l->host))
		t = l->next_probe > now ? l->next_probe - now : 0;
	if (l->dead)
		t = 0;
	if (l->stall_ms > 0 && l->fd >= 0 && buf_pending(&l->in) > 0) {
		int64_t s = l->last_input + l->stall_ms - now;

		if (s < 0)
			s = 0;
		if (t < 0 || s < t)
			t = s;
	}
	return t;
}

bool link_tick(struct link *l, int64_t now)
{
	if (l->dead) {
		if (l->mode == LINK_UNIX) {
			close_stream(l);
		} else {
			/* A port write error other than EAGAIN means the device is gone: reopen. */
			close_stream(l);
			l->next_probe = now + PORT_PROBE_MS;
		}
	}
	if (l->mode == LINK_PORT && now >= l->next_probe) {
		if (l->fd < 0)
			port_open(l, now);
		if (l->fd >= 0 && !l->host) {
			l->next_probe = now + PORT_PROBE_MS;
			read_input(l, now);
			if (buf_pending(&l->in) > 0)
				return true;
		}
	}
	/*
	 * A partial frame that stops growing is stale: the rest was lost with an old host (e.g.
	 * the guest was snapshotted while receiving it). Skipping one byte makes the parser
	 * resynchronise on the next magic, such as the new host's HELLO.
	 */
	if (l->stall_ms > 0 && l->fd >= 0 && buf_pending(&l->in) > 0 &&
	    now - l->last_input >= l->stall_ms) {
		agent_log("dropping a stalled partial frame (%zu bytes buffered)", buf_pending(&l->in));
		frame_skip_one(&l->in);
		l->last_input = now;
		return true;
	}
	return false;
}

void link_send(struct link *l, uint8_t type, uint32_t id, const void *a, size_t alen, const void *b,
	       size_t blen)
{
	uint8_t hdr[FRAME_HEADER_SIZE];
	bool idle = buf_pending(&l->out) == 0;

	if (!link_can_send(l))
		return;
	frame_header(hdr, type, id, (uint32_t)(alen + blen));
	if (buf_reserve(&l->out, sizeof(hdr) + alen + blen) < 0) {
		/* Dropping one frame would leave a request hanging: drop the host instead. */
		agent_log("output queue: %s", strerror(errno));
		l->dead = true;
		buf_clear(&l->out);
		return;
	}
	buf_append(&l->out, hdr, sizeof(hdr));
	buf_append(&l->out, a, alen);
	buf_append(&l->out, b, blen);
	if (idle)
		flush_output(l); /* otherwise already waiting for POLLOUT */
}

void link_flush_sync(struct link *l, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;

	flush_output(l);
	while (buf_pending(&l->out) > 0 && l->fd >= 0 && !l->dead) {
		int64_t left = deadline - now_ms();
		struct pollfd p = {.fd = l->fd, .events = POLLOUT};

		if (left <= 0)
			return;
		if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
			return;
		if (p.revents & (POLLHUP | POLLERR) && !(p.revents & POLLOUT))
			return;
		flush_output(l);
	}
}
