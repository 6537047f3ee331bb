/*
 * fastvm-agent: PID 1 of every FastVM guest, and the host's hands inside it.
 *
 * It serves spec/agent-protocol.md over the virtio-serial port "fastvm.agent" (or, for tests on
 * the host, over a unix socket), runs commands, sets the guest's identity, and reaps every child
 * so that orphaned background jobs never linger as zombies.
 *
 * Structure: one thread, one poll() loop over the host stream, the commands' pipes and a
 * signalfd (SIGCHLD, SIGIO, and the termination signals in test mode). Timers (command timeouts,
 * port probing) set the poll timeout. Nothing blocks for long: output to the host is queued, and
 * the loop stops reading command output while the host is not keeping up.
 *
 *   agent.c     main(), the loop, and request dispatch
 *   link.c      the host stream: port/socket, framing buffers, reconnects
 *   exec.c      EXEC, SIGNAL, STDIN, RESIZE, FLOW (commands, pipes and ptys)
 *   identity.c  IDENTITY
 *   netlink.c   IDENTITY's net and route fields over rtnetlink
 *   init.c      PID 1 duties: mounts, loopback, hostname
 *   proto.c     frame and TLV parsing
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "exec.h"
#include "init.h"
#include "proto.h"
#include "util.h"

/* A partial frame that gets no new bytes for this long is dropped (see link_tick()). */
#define DEFAULT_STALL_MS 3000
/* How long SHUTDOWN waits for its OK to reach the host before powering off. */
#define SHUTDOWN_FLUSH_MS 1000

struct options {
	const char *unix_path;
	const char *root;
	const char *ip;
	int64_t stall_ms;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: fastvm-agent                  as PID 1 in a FastVM guest (virtio-serial port %s)\n"
		"       fastvm-agent --unix PATH [--root DIR] [--ip PATH] [--stall-ms N]\n"
		"                                     host test mode: serve one connection at a time on a\n"
		"                                     unix socket; IDENTITY only touches files under DIR\n"
		"                                     and runs net/route with the given ip binary\n"
		"       fastvm-agent --version\n",
		VIRTIO_PORT_NAME);
}

/* ---- replies ---- */

void agent_send(struct agent *a, uint8_t type, uint32_t id, const void *payload, size_t len)
{
	link_send(&a->link, type, id, payload, len, NULL, 0);
}

void agent_error(struct agent *a, uint32_t id, uint32_t code, const char *fmt, ...)
{
	char msg[512];
	uint8_t c[4];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	put_u32(c, code);
	link_send(&a->link, MSG_ERROR, id, c, sizeof(c), msg, (size_t)n);
}

/* ---- termination ---- */

/* Test mode: kill what we started, give it a moment to be reaped, and leave. */
static void __attribute__((noreturn)) test_mode_exit(struct agent *a, int code)
{
	int64_t deadline = now_ms() + 500;

	exec_kill_all(a);
	while (a->nreqs > 0 && now_ms() < deadline) {
		exec_reap(a);
		if (a->nreqs > 0)
			usleep(5000);
	}
	link_close(&a->link);
	exit(code);
}

static void handle_shutdown(struct agent *a, uint32_t id)
{
	agent_send(a, MSG_OK, id, NULL, 0);
	link_flush_sync(&a->link, SHUTDOWN_FLUSH_MS);
	sync();
	if (!a->pid1)
		test_mode_exit(a, 0);
	/* QEMU runs with -no-reboot, so a reboot ends the VM. */
	reboot(RB_AUTOBOOT);
	agent_log("reboot: %s", strerror(errno));
}

/* ---- dispatch ---- */

static void handle_hello(struct agent *a, const struct frame *f)
{
	uint8_t ack[HELLO_NONCE_SIZE + 4];

	if (f->len != HELLO_NONCE_SIZE) {
		agent_error(a, f->id, EINVAL, "hello: want an %u-byte nonce", HELLO_NONCE_SIZE);
		return;
	}
	/* A new host: commands started by the previous one no longer report to this stream. */
	a->link.session++;
	memcpy(ack, f->payload, HELLO_NONCE_SIZE);
	put_u32(ack + HELLO_NONCE_SIZE, PROTOCOL_VERSION);
	link_send(&a->link, MSG_HELLO_ACK, f->id, ack, sizeof(ack), AGENT_VERSION,
		  strlen(AGENT_VERSION));
}

static void dispatch(struct agent *a, const struct frame *f)
{
	char err[512];
	int rc;

	switch (f->type) {
	case MSG_HELLO:
		handle_hello(a, f);
		break;
	case MSG_PING:
		if (f->len > FRAME_MAX_CHUNK)
			agent_error(a, f->id, EINVAL, "ping: payload over %u bytes", FRAME_MAX_CHUNK);
		else
			agent_send(a, MSG_PONG, f->id, f->payload, f->len);
		break;
	case MSG_EXEC:
		exec_start(a, f->id, f->payload, f->len);
		break;
	case MSG_SIGNAL:
		exec_signal(a, f->id, f->payload, f->len);
		break;
	case MSG_STDIN:
		exec_stdin(a, f->id, f->payload, f->len);
		break;
	case MSG_RESIZE:
		exec_resize(a, f->id, f->payload, f->len);
		break;
	case MSG_FLOW:
		exec_flow(a, f->id, f->payload, f->len);
		break;
	case MSG_IDENTITY:
		rc = identity_apply(&a->identity, f->payload, f->len, err, sizeof(err));
		if (rc == 0)
			agent_send(a, MSG_OK, f->id, NULL, 0);
		else
			agent_error(a, f->id, (uint32_t)rc, "%s", err);
		break;
	case MSG_SHUTDOWN:
		handle_shutdown(a, f->id);
		break;
	default:
		agent_error(a, f->id, EINVAL, "unknown message type 0x%02x", f->type);
		break;
	}
}

/* Dispatches every complete frame in the input buffer. */
static void process_input(struct agent *a)
{
	struct link *l = &a->link;
	size_t discarded = 0;
	struct frame f;

	while (l->fd >= 0 && !l->dead && frame_next(&l->in, &f, &discarded)) {
		dispatch(a, &f);
		buf_consume(&l->in, FRAME_HEADER_SIZE + f.len);
	}
	if (discarded > 0)
		agent_log("skipped %zu bytes that are not a frame", discarded);
}

/* ---- signals ---- */

static int make_signalfd(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGIO);
	/*
	 * Blocked and read from the signalfd rather than set to SIG_IGN, so that a command
	 * signalled between fork() and its own signal reset still gets the signal. As PID 1 they
	 * are read and ignored; in test mode they end the agent cleanly.
	 */
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

static void read_signals(struct agent *a)
{
	struct signalfd_siginfo si;

	while (read(a->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			break; /* the loop reaps on every iteration */
		case SIGIO:
			link_sigio(&a->link);
			break;
		case SIGTERM:
		case SIGINT:
		case SIGHUP:
			if (!a->pid1)
				test_mode_exit(a, 0);
			break;
		default:
			break;
		}
	}
}

/* ---- the loop ---- */

static int grow_pollfds(struct agent *a, int need)
{
	struct pollfd *p;

	if (need <= a->pfds_cap)
		return 0;
	p = realloc(a->pfds, (size_t)need * sizeof(*p));
	if (!p)
		return -1;
	a->pfds = p;
	a->pfds_cap = need;
	return 0;
}

static int64_t min_timeout(int64_t a, int64_t b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

/* Serves until something unrecoverable happens (then the caller sets things up again). */
static void serve(struct agent *a)
{
	uint32_t session = a->link.session;

	for (;;) {
		int64_t now = now_ms();
		bool backlog = link_backlogged(&a->link);
		int need = 3 + EXEC_POLLFDS_PER_REQ * (int)a->nreqs;
		int n = 0, rc;
		int64_t timeout;

		if (grow_pollfds(a, need) < 0) {
			agent_log("poll set: out of memory");
			return;
		}
		a->pfds[n++] = (struct pollfd){.fd = a->sfd, .events = POLLIN};
		link_add_pollfds(&a->link, a->pfds, &n, !backlog, now);
		exec_add_pollfds(a, a->pfds, &n, !backlog);
		timeout = min_timeout(link_timeout_ms(&a->link, now), exec_timeout_ms(a, now));
		if (timeout > 60000)
			timeout = 60000;

		rc = poll(a->pfds, (nfds_t)n, (int)timeout);
		if (rc < 0 && errno != EINTR) {
			agent_log("poll: %s", strerror(errno));
			return;
		}
		now = now_ms();
		if (rc > 0 && (a->pfds[0].revents & POLLIN))
			read_signals(a);
		if (rc > 0) {
			link_handle(&a->link, a->pfds, now);
			process_input(a);
			exec_handle(a, a->pfds);
		}
		exec_reap(a);
		exec_check_timeouts(a, now);
		if (link_tick(&a->link, now))
			process_input(a);
		if (a->link.session != session) {
			session = a->link.session;
			exec_session_changed(a);
		}
	}
}

static void parse_args(int argc, char **argv, struct options *o)
{
	/* As init, the kernel passes unknown boot parameters as arguments: never exit over them. */
	bool init = getpid() == 1;

	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(arg, "--unix") == 0 && val) {
			o->unix_path = argv[++i];
		} else if (strcmp(arg, "--root") == 0 && val) {
			o->root = argv[++i];
		} else if (strcmp(arg, "--ip") == 0 && val) {
			o->ip = argv[++i];
		} else if (strcmp(arg, "--stall-ms") == 0 && val) {
			o->stall_ms = strtoll(argv[++i], NULL, 10);
		} else if (init) {
			continue;
		} else if (strcmp(arg, "--version") == 0) {
			printf("fastvm-agent %s (protocol %u)\n", AGENT_VERSION, PROTOCOL_VERSION);
			exit(0);
		} else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
			usage(stdout);
			exit(0);
		} else {
			usage(stderr);
			exit(2);
		}
	}
}

int main(int argc, char **argv)
{
	struct options opts = {.stall_ms = DEFAULT_STALL_MS};
	struct agent a;
	struct rlimit rl;

	memset(&a, 0, sizeof(a));
	parse_args(argc, argv, &opts);
	a.pid1 = getpid() == 1 && !opts.unix_path;
	a.sfd = -1;

	if (a.pid1) {
		init_system();
		/* Ctrl-Alt-Del then only signals init (which ignores it). */
		reboot(RB_DISABLE_CAD);
	} else {
		ensure_std_fds();
	}
	/* Writes to a closed socket must fail with EPIPE, not kill the agent. */
	signal(SIGPIPE, SIG_IGN);
	/* Room for many commands' pipes (commands get the inherited limit back). */
	if (getrlimit(RLIMIT_NOFILE, &a.nofile) == 0 && a.nofile.rlim_cur < a.nofile.rlim_max) {
		rl = a.nofile;
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	} else {
		a.nofile.rlim_cur = RLIM_INFINITY; /* nothing to restore */
	}

	if (opts.unix_path) {
		/* Test mode: orphans of our commands come to us (as they would to PID 1). */
		prctl(PR_SET_CHILD_SUBREAPER, 1);
		a.identity = (struct identity_opts){.root = opts.root, .ip = opts.ip ? opts.ip : "", .kernel = false};
		if (link_init_unix(&a.link, opts.unix_path, opts.stall_ms) < 0) {
			agent_log("cannot listen on %s: %s", opts.unix_path, strerror(errno));
			return 1;
		}
	} else {
		a.identity = (struct identity_opts){.root = opts.root ? opts.root : "", .ip = opts.ip, .kernel = true};
		link_init_port(&a.link, opts.stall_ms);
	}

	/* As PID 1 there is no way out: whatever fails, log it and set up again. */
	for (;;) {
		if (!a.scratch)
			a.scratch = malloc(FRAME_MAX_CHUNK);
		if (a.sfd < 0)
			a.sfd = make_signalfd();
		if (a.scratch && a.sfd >= 0) {
			serve(&a);
			agent_log("main loop failed; restarting it");
			close(a.sfd);
			a.sfd = -1;
		} else {
			agent_log("setup failed: %s", strerror(errno));
			if (!a.pid1 && !opts.unix_path)
				return 1;
		}
		exec_reap(&a);
		sleep(1);
	}
}
