/*
 * fastvm-tapfd: opens a VM's tap device for its confined QEMU and hands QEMU the descriptor.
 *
 * A confined QEMU runs as an unprivileged user and cannot open /dev/net/tun where that is
 * root-only; nor should it be able to attach to taps at all. The server (root) runs this helper:
 *
 *   fastvm-tapfd exec UID GID TAP -- QEMU ARGS...
 *     opens TAP as descriptor 3, drops to UID:GID with no supplementary groups and executes QEMU,
 *     which takes the tap with `-netdev tap,fd=3`.
 *
 *   fastvm-tapfd plug SOCKET TAP NETDEV HUB PORT
 *     opens TAP and plugs it into a running QEMU through the QMP monitor listening on SOCKET:
 *     `getfd` (the descriptor travels with it, SCM_RIGHTS), `netdev_add` of a tap netdev NETDEV on
 *     that descriptor, then `netdev_add` of hubport PORT joining NETDEV to hub HUB. A descriptor
 *     named with `getfd` belongs to the monitor that received it, hence a monitor of our own.
 *
 *   fastvm-tapfd serve
 *     plugs and starts QEMUs for as long as standard input is open, so that neither costs the
 *     server a process start (a fork of the server copies its page tables: 3 ms at 44 MiB of
 *     memory, 7 ms at 245 MiB, blocking its event loop). One request per line, fields separated
 *     by tabs; each answer is one write to standard output, "ID ok[ VALUE]" or "ID error MESSAGE":
 *       ID plug SOCKET TAP NETDEV HUB PORT      a plug, in a child of its own
 *       ID spawn LOG UID GID TAP NENV ENV... ARGV...
 *                                               starts ARGV in a new session, stdin /dev/null,
 *                                               stdout and stderr appended to LOG, environment
 *                                               exactly the NENV ENV entries, TAP (or "-") open as
 *                                               descriptor 3, as UID:GID (or "-": as root);
 *                                               answered "ID ok PID" once it has executed. Its
 *                                               parent is this helper, which reaps it.
 *       ID run ARGV...                          runs ARGV (as root, empty environment, stdin
 *                                               /dev/null) and answers when it has exited: "ID ok"
 *                                               for status 0, else "ID error" with the end of
 *                                               what it wrote (e.g. fastvm-memdelta apply).
 *
 * The tap is opened as QEMU opens one itself (IFF_TAP | IFF_NO_PI, plus IFF_VNET_HDR when the
 * kernel has it), so the NIC and its migration state are the same either way. Static, so that the
 * LD_PRELOAD meant for QEMU (the memshim) is not loaded into it. Errors: one line on stderr, exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define TAP_FD 3
#define QMP_TIMEOUT_S 10

/* Set in a child of `serve`: failures are answered on standard output under this id. */
static const char *reply_id;
/* Set in a child that `serve` starts for `spawn`: failures are written here for the helper. */
static int fail_fd = -1;

static void answer(const char *what, const char *msg)
{
	char line[1200];
	int n = snprintf(line, sizeof(line), "%s %s%s%s\n", reply_id, what, msg ? " " : "",
			 msg ? msg : "");

	if (n > (int)sizeof(line) - 1) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(STDOUT_FILENO, line, (size_t)n) < 0) /* one write: answers never interleave */
		_exit(2);
}

static void die(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (fail_fd >= 0) {
		if (write(fail_fd, msg, strlen(msg)) < 0)
			_exit(3);
		_exit(127);
	}
	if (reply_id) {
		answer("error", msg);
		_exit(1);
	}
	fprintf(stderr, "fastvm-tapfd: %s\n", msg);
	exit(1);
}

static int open_tap(const char *name)
{
	struct ifreq ifr;
	unsigned int features = 0;
	char sys[64];
	int fd;

	if (strlen(name) >= IFNAMSIZ)
		die("%s: name too long", name);
	/* Only a tap the server made: TUNSETIFF would create a missing one. */
	snprintf(sys, sizeof(sys), "/sys/class/net/%s", name);
	if (access(sys, F_OK) != 0)
		die("%s: no such device", name);
	fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("/dev/net/tun: %s", strerror(errno));
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	if (ioctl(fd, TUNGETFEATURES, &features) == 0 && (features & IFF_VNET_HDR))
		ifr.ifr_flags |= IFF_VNET_HDR;
	memcpy(ifr.ifr_name, name, strlen(name));
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die("%s: TUNSETIFF: %s", name, strerror(errno));
	return fd;
}

static unsigned long number(const char *s, const char *what)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end)
		die("bad %s: %s", what, s);
	return v;
}

/* Opens the tap `name` as descriptor TAP_FD, kept open across exec. */
static void tap_as_fd3(const char *name)
{
	int fd = open_tap(name);

	if (fd != TAP_FD) {
		if (dup2(fd, TAP_FD) < 0) /* the copy is not close-on-exec */
			die("dup2: %s", strerror(errno));
		close(fd);
	} else if (fcntl(fd, F_SETFD, 0) < 0) {
		die("fcntl: %s", strerror(errno));
	}
}

/* Drops to uid:gid with no supplementary groups, for good. */
static void drop_to(uid_t uid, gid_t gid)
{
	if (setgroups(0, NULL) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
		die("dropping to %u:%u: %s", (unsigned)uid, (unsigned)gid, strerror(errno));
	if (uid != 0 && setuid(0) == 0)
		die("could not drop root");
}

static int run_exec(int argc, char **argv)
{
	if (argc < 7 || strcmp(argv[5], "--") != 0)
		die("usage: fastvm-tapfd exec UID GID TAP -- QEMU ARGS...");
	tap_as_fd3(argv[4]);
	drop_to((uid_t)number(argv[2], "uid"), (gid_t)number(argv[3], "gid"));
	execvp(argv[6], argv + 6);
	die("%s: %s", argv[6], strerror(errno));
	return 1;
}

/* ---- QMP ---- */

static char inbuf[1 << 16];
static size_t inlen;

/* The next line from QEMU (without its CR LF), read into inbuf; returns its length. */
static size_t read_line(int sock, size_t *consumed)
{
	for (;;) {
		char *nl = memchr(inbuf, '\n', inlen);
		ssize_t n;

		if (nl) {
			size_t len = (size_t)(nl - inbuf);

			*consumed = len + 1;
			if (len > 0 && inbuf[len - 1] == '\r')
				len--;
			inbuf[len] = '\0';
			return len;
		}
		if (inlen == sizeof(inbuf) - 1)
			die("QMP: line too long");
		n = read(sock, inbuf + inlen, sizeof(inbuf) - 1 - inlen);
		if (n == 0)
			die("QMP: connection closed");
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("QMP: read: %s", strerror(errno == EAGAIN ? ETIMEDOUT : errno));
		}
		inlen += (size_t)n;
	}
}

static void drop_line(size_t consumed)
{
	memmove(inbuf, inbuf + consumed, inlen - consumed);
	inlen -= consumed;
}

/* Waits for the answer to the command just sent (events are skipped); dies on an error. */
static void await_return(int sock, const char *what)
{
	for (;;) {
		size_t consumed;

		read_line(sock, &consumed);
		if (strncmp(inbuf, "{\"return\"", 9) == 0) {
			drop_line(consumed);
			return;
		}
		if (strncmp(inbuf, "{\"error\"", 8) == 0)
			die("QMP %s: %s", what, inbuf);
		drop_line(consumed); /* an event */
	}
}

/* Sends one command, with `fd` attached when it is not -1. */
static void send_cmd(int sock, const char *cmd, int fd)
{
	struct iovec iov = { .iov_base = (void *)cmd, .iov_len = strlen(cmd) };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		msg.msg_control = ctl.buf;
		msg.msg_controllen = sizeof(ctl.buf);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) {
		if (errno != EINTR)
			die("QMP: send: %s", strerror(errno));
	}
}

/* Names passed into JSON: netdev ids and the like, never anything to escape. */
static const char *plain(const char *s, const char *what)
{
	for (const char *p = s; *p; p++)
		if (!(*p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
		      (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
			die("bad %s: %s", what, s);
	return s;
}

static int run_plug(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = QMP_TIMEOUT_S };
	const char *netdev, *port;
	unsigned long hub;
	char cmd[768];
	size_t consumed;
	int sock, fd;

	if (argc != 7)
		die("usage: fastvm-tapfd plug SOCKET TAP NETDEV HUB PORT");
	netdev = plain(argv[4], "netdev id");
	hub = number(argv[5], "hub id");
	port = plain(argv[6], "port id");
	if (strlen(argv[2]) >= sizeof(addr.sun_path))
		die("%s: path too long", argv[2]);
	fd = open_tap(plain(argv[3], "tap"));
	memcpy(addr.sun_path, argv[2], strlen(argv[2]));
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		die("socket: %s", strerror(errno));
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("%s: %s", argv[2], strerror(errno));
	/*
	 * All four at once, the descriptor with them: one round trip. QEMU queues a monitor's
	 * requests and runs them in order, the first (qmp_capabilities) before the others are
	 * looked at; the descriptor waits on the monitor for `getfd`.
	 */
	snprintf(cmd, sizeof(cmd),
		 "{\"execute\":\"qmp_capabilities\"}\n"
		 "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"tapfd\"}}\n"
		 "{\"execute\":\"netdev_add\",\"arguments\":{\"type\":\"tap\",\"id\":\"%s\",\"fd\":\"tapfd\"}}\n"
		 "{\"execute\":\"netdev_add\",\"arguments\":{\"type\":\"hubport\",\"id\":\"%s\",\"hubid\":%lu,\"netdev\":\"%s\"}}\n",
		 netdev, port, hub, netdev);
	send_cmd(sock, cmd, fd);
	read_line(sock, &consumed); /* the greeting */
	drop_line(consumed);
	await_return(sock, "qmp_capabilities");
	await_return(sock, "getfd");
	await_return(sock, "netdev_add tap");
	await_return(sock, "netdev_add hubport");
	return 0;
}

/*
 * A request's fields after its id, split at tabs (empty ones kept), as the command line of the
 * same mode would have them: "fastvm-tapfd", the verb, its fields, NULL. Pointers into `rest`;
 * NULL when out of memory.
 */
static char **split_request(char *rest, int *argc)
{
	char **argv = NULL, **grown, *field;
	int cap = 0;

	*argc = 1;
	while ((field = strsep(&rest, "\t"))) {
		if (*argc + 1 >= cap) {
			cap = cap ? cap * 2 : 64;
			grown = realloc(argv, (size_t)cap * sizeof(*argv));
			if (!grown) {
				free(argv);
				return NULL;
			}
			argv = grown;
		}
		argv[(*argc)++] = field;
	}
	argv[0] = "fastvm-tapfd";
	argv[*argc] = NULL;
	return argv;
}

/*
 * The child of a `spawn` request (f: its fields after "spawn"; n of them): sets itself up and
 * executes ARGV. Every failure goes to `fail` (close-on-exec: the helper reads EOF on success).
 */
static void spawn_child(char **f, int n, int fail)
{
	sigset_t none;
	int nenv, fd;
	char **env;

	fail_fd = fcntl(fail, F_DUPFD_CLOEXEC, 10); /* out of the way of descriptors 0-3 */
	close(fail);
	if (fail_fd < 0)
		_exit(127);
	reply_id = NULL;
	/* What the helper set for itself is not QEMU's: signal dispositions and mask, session. */
	signal(SIGCHLD, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (setsid() < 0)
		die("setsid: %s", strerror(errno));
	if (n < 6)
		die("spawn: too few fields");
	nenv = (int)number(f[4], "environment size");
	if (nenv < 0 || 5 + nenv >= n)
		die("spawn: no command");
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || dup2(fd, STDIN_FILENO) < 0)
		die("/dev/null: %s", strerror(errno));
	fd = open(f[0], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0)
		die("%s: %s", f[0], strerror(errno));
	if (strcmp(f[3], "-") != 0)
		tap_as_fd3(f[3]);
	if (strcmp(f[1], "-") != 0)
		drop_to((uid_t)number(f[1], "uid"), (gid_t)number(f[2], "gid"));
	env = calloc((size_t)nenv + 1, sizeof(*env));
	if (!env)
		die("out of memory");
	memcpy(env, f + 5, (size_t)nenv * sizeof(*env));
	environ = env; /* execvp looks ARGV[0] up in this PATH */
	execvp(f[5 + nenv], f + 5 + nenv);
	die("%s: %s", f[5 + nenv], strerror(errno));
}

/* A `spawn` request (f: its n fields): starts the child; answers with its pid once executed. */
static void serve_spawn(const char *id, char **f, int n)
{
	char msg[1024], pidstr[24];
	int p[2];
	ssize_t got, r;
	pid_t pid;

	reply_id = id;
	if (pipe2(p, O_CLOEXEC) < 0) {
		answer("error", strerror(errno));
		goto out;
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		spawn_child(f, n, p[1]);
	}
	close(p[1]);
	if (pid < 0) {
		answer("error", strerror(errno));
		close(p[0]);
		goto out;
	}
	for (got = 0; got < (ssize_t)sizeof(msg) - 1; got += r) {
		r = read(p[0], msg + got, sizeof(msg) - 1 - (size_t)got);
		if (r < 0 && errno == EINTR) {
			r = 0;
			continue;
		}
		if (r <= 0)
			break;
	}
	close(p[0]);
	msg[got] = '\0';
	if (got > 0) {
		answer("error", msg);
	} else {
		snprintf(pidstr, sizeof(pidstr), "%d", (int)pid);
		answer("ok", pidstr);
	}
out:
	reply_id = NULL;
}

/*
 * A `run` request, in a child of `serve` (which reaps its children itself, so this one waits
 * for its own): runs ARGV with its output in a pipe and answers with the verdict.
 */
static void serve_run(char **argv)
{
	char out[900], msg[1000];
	size_t got = 0;
	int p[2], status = 0;
	ssize_t r;
	pid_t pid;

	signal(SIGCHLD, SIG_DFL);
	if (!argv[0])
		die("run: no command");
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

		if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(p[1], STDOUT_FILENO) < 0 ||
		    dup2(p[1], STDERR_FILENO) < 0)
			_exit(126);
		execv(argv[0], argv);
		fprintf(stderr, "%s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(p[1]);
	/* Keeps the end of what it wrote (the error is last). */
	for (;;) {
		char chunk[512];

		r = read(p[0], chunk, sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (got + (size_t)r > sizeof(out) - 1) { /* (chunk is smaller than out) */
			size_t drop = got + (size_t)r - (sizeof(out) - 1);

			memmove(out, out + drop, got - drop);
			got -= drop;
		}
		memcpy(out + got, chunk, (size_t)r);
		got += (size_t)r;
	}
	close(p[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	out[got] = '\0';
	for (size_t i = 0; i < got; i++) /* one line */
		if (out[i] == '\n' || out[i] == '\t')
			out[i] = ' ';
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		answer("ok", NULL);
		return;
	}
	if (WIFEXITED(status))
		snprintf(msg, sizeof(msg), "exit %d: %s", WEXITSTATUS(status), out);
	else
		snprintf(msg, sizeof(msg), "signal %d: %s", WTERMSIG(status), out);
	answer("error", msg);
}

static int run_serve(void)
{
	char *line = NULL;
	size_t size = 0;
	struct sigaction sa = { .sa_handler = SIG_IGN, .sa_flags = SA_NOCLDWAIT };

	sigaction(SIGCHLD, &sa, NULL); /* children are reaped by the kernel */
	while (getline(&line, &size, stdin) > 0) {
		char **argv, *rest = line, *id;
		int argc;
		pid_t pid;

		line[strcspn(line, "\n")] = '\0';
		if (!*line)
			continue;
		id = strsep(&rest, "\t");
		argv = split_request(rest ? rest : (char *)"", &argc);
		if (!argv) {
			reply_id = id;
			answer("error", "out of memory");
			reply_id = NULL;
			continue;
		}
		if (strcmp(argv[1], "spawn") == 0) {
			/* Not in a child: the helper is the parent of what it starts, and reaps it. */
			serve_spawn(id, argv + 2, argc - 2);
			free(argv);
			continue;
		}
		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			reply_id = id;
			if (strcmp(argv[1], "run") == 0) {
				serve_run(argv + 2);
			} else if (strcmp(argv[1], "plug") == 0) {
				run_plug(argc, argv);
				answer("ok", NULL);
			} else {
				die("unknown request");
			}
			_exit(0);
		}
		if (pid < 0) {
			reply_id = id;
			answer("error", strerror(errno));
			reply_id = NULL;
		}
		free(argv);
	}
	free(line);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "exec") == 0)
		return run_exec(argc, argv);
	if (argc > 1 && strcmp(argv[1], "plug") == 0)
		return run_plug(argc, argv);
	if (argc == 2 && strcmp(argv[1], "serve") == 0)
		return run_serve();
	die("usage: fastvm-tapfd exec UID GID TAP -- QEMU ARGS... | plug SOCKET TAP NETDEV HUB PORT | serve");
	return 1;
}
