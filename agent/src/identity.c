#include "identity.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "netlink.h"
#include "proto.h"
#include "util.h"

/* From <linux/random.h>, which the musl toolchain does not ship. */
#ifndef RNDADDENTROPY
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#endif
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

#define HOSTNAME_MAX 64
#define MACHINE_ID_LEN 32
#define ENTROPY_MAX (64 * 1024)
#define MAX_NET_LINES 16
#define MAX_ROUTE_LINES 64
#define MAX_LINE 512
#define MAX_TOKENS 40
#define IP_TIMEOUT_MS 10000

static const char *const ip_candidates[] = {"/sbin/ip", "/usr/sbin/ip", "/bin/ip", "/usr/bin/ip"};
static char *const ip_env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", NULL};

/* A validated IDENTITY request. */
struct identity {
	bool has_hostname, has_machine_id, has_clock, has_entropy;
	char hostname[HOSTNAME_MAX + 1];
	char machine_id[MACHINE_ID_LEN + 1];
	uint64_t clock_ns;
	const uint8_t *entropy; /* borrowed from the frame */
	uint32_t entropy_len;
	char net[MAX_NET_LINES][MAX_LINE + 1];
	size_t nnet;
	char route[MAX_ROUTE_LINES][MAX_LINE + 1];
	size_t nroute;
};

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return code;
}

/* ---- validation ---- */

/* Copies a TLV string of at most max bytes; false if too long, empty, or not printable ASCII. */
static bool copy_text(char *dst, size_t max, const uint8_t *v, uint32_t n)
{
	if (n == 0 || n > max)
		return false;
	for (uint32_t i = 0; i < n; i++)
		if (v[i] < 0x20 || v[i] > 0x7e)
			return false;
	memcpy(dst, v, n);
	dst[n] = '\0';
	return true;
}

static bool valid_hostname(const char *h)
{
	if (h[0] == '-' || h[0] == '.')
		return false;
	for (const char *p = h; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
			return false;
	return true;
}

/* Splits line (in place) on blanks. Returns the token count, or -1 if there are too many. */
static int split(char *line, char **tok, int max)
{
	char *save = NULL;
	int n = 0;

	for (char *t = strtok_r(line, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
		if (n == max)
			return -1;
		tok[n++] = t;
	}
	return n;
}

static bool all_of(const char *s, const char *allowed)
{
	return s[0] != '\0' && strspn(s, allowed) == strlen(s);
}

static bool valid_mac(const char *m)
{
	if (strlen(m) != 17)
		return false;
	for (int i = 0; i < 17; i++) {
		if (i % 3 == 2 ? m[i] != ':' : !isxdigit((unsigned char)m[i]))
			return false;
	}
	return true;
}

/* "IFACE MAC [ADDR/PREFIX ...]" */
static int check_net_line(const char *line, char *err, size_t errlen)
{
	char copy[MAX_LINE + 1], *tok[MAX_TOKENS];
	int n;

	strcpy(copy, line);
	n = split(copy, tok, MAX_TOKENS);
	if (n < 2)
		return fail(err, errlen, EINVAL, "net: expected 'IFACE MAC [ADDR/PREFIX ...]': '%s'", line);
	if (strlen(tok[0]) > 15 || !all_of(tok[0], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"))
		return fail(err, errlen, EINVAL, "net: bad interface name '%s'", tok[0]);
	if (!valid_mac(tok[1]))
		return fail(err, errlen, EINVAL, "net: bad MAC address '%s'", tok[1]);
	for (int i = 2; i < n; i++) {
		struct nl_prefix p;
		const char *why = nl_parse_prefix(tok[i], true, &p);

		if (why)
			return fail(err, errlen, EINVAL, "net: bad address '%s' (want ADDR/PREFIX): %s", tok[i], why);
	}
	return 0;
}

static int parse(struct identity *id, const uint8_t *p, uint32_t len, char *err, size_t errlen)
{
	struct tlv_iter it;
	const uint8_t *v;
	uint32_t n;
	uint8_t tag;
	int rc;

	tlv_init(&it, p, len);
	while ((rc = tlv_next(&it, &tag, &v, &n)) == 1) {
		switch (tag) {
		case ID_HOSTNAME:
			if (!copy_text(id->hostname, HOSTNAME_MAX, v, n) || !valid_hostname(id->hostname))
				return fail(err, errlen, EINVAL, "hostname: invalid hostname");
			id->has_hostname = true;
			break;
		case ID_MACHINE_ID:
			if (!copy_text(id->machine_id, MACHINE_ID_LEN, v, n) || n != MACHINE_ID_LEN ||
			    !all_of(id->machine_id, "0123456789abcdefABCDEF"))
				return fail(err, errlen, EINVAL, "machine_id: want 32 hex characters");
			for (char *c = id->machine_id; *c; c++)
				*c = (char)tolower((unsigned char)*c);
			id->has_machine_id = true;
			break;
		case ID_CLOCK_NS:
			if (n != 8)
				return fail(err, errlen, EINVAL, "clock_ns: want a u64");
			id->clock_ns = get_u64(v);
			id->has_clock = true;
			break;
		case ID_ENTROPY:
			if (n == 0 || n > ENTROPY_MAX)
				return fail(err, errlen, EINVAL, "entropy: want 1 to %d bytes", ENTROPY_MAX);
			id->entropy = v;
			id->entropy_len = n;
			id->has_entropy = true;
			break;
		case ID_NET:
			if (id->nnet == MAX_NET_LINES)
				return fail(err, errlen, E2BIG, "net: more than %d lines", MAX_NET_LINES);
			if (!copy_text(id->net[id->nnet], MAX_LINE, v, n))
				return fail(err, errlen, EINVAL, "net: bad line");
			rc = check_net_line(id->net[id->nnet], err, errlen);
			if (rc)
				return rc;
			id->nnet++;
			break;
		case ID_ROUTE: {
			char copy[MAX_LINE + 1], *tok[MAX_TOKENS];

			if (id->nroute == MAX_ROUTE_LINES)
				return fail(err, errlen, E2BIG, "route: more than %d lines", MAX_ROUTE_LINES);
			if (!copy_text(id->route[id->nroute], MAX_LINE, v, n))
				return fail(err, errlen, EINVAL, "route: bad line");
			strcpy(copy, id->route[id->nroute]);
			if (split(copy, tok, MAX_TOKENS) < 1)
				return fail(err, errlen, EINVAL, "route: bad line '%s'", id->route[id->nroute]);
			id->nroute++;
			break;
		}
		default:
			break; /* unknown tags are ignored */
		}
	}
	if (rc < 0)
		return fail(err, errlen, EINVAL, "malformed TLV payload");
	return 0;
}

/* ---- files ---- */

/* Appends "127.0.1.1\tNAME\n". Returns 0 or -1 (ENOMEM). */
static int append_hosts_line(struct buf *out, const char *name)
{
	if (buf_append(out, "127.0.1.1\t", 10) < 0 || buf_append(out, name, strlen(name)) < 0 ||
	    buf_append(out, "\n", 1) < 0)
		return -1;
	return 0;
}

/* Points 127.0.1.1 at the new hostname in /etc/hosts. Best effort: failures are only logged. */
static void update_hosts(const char *root, const char *name)
{
	char path[PATH_MAX], old[16384];
	struct buf out = {0};
	bool found = false;
	int rc = 0;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/etc/hosts", root);
	n = read_small_file(path, old, sizeof(old));
	if (n < 0 && errno != ENOENT) {
		agent_log("/etc/hosts: %s", strerror(errno));
		return;
	}
	if (n == (ssize_t)sizeof(old) - 1) {
		agent_log("/etc/hosts is too large to update");
		return;
	}
	if (n < 0)
		old[0] = '\0';
	for (char *line = old; *line && rc == 0;) {
		char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);

		if (ll >= 9 && strncmp(line, "127.0.1.1", 9) == 0 &&
		    (ll == 9 || line[9] == ' ' || line[9] == '\t')) {
			if (!found)
				rc = append_hosts_line(&out, name);
			found = true; /* later duplicates are dropped */
		} else if (buf_append(&out, line, ll) < 0 || buf_append(&out, "\n", 1) < 0) {
			rc = -1;
		}
		line += ll + (nl ? 1 : 0);
	}
	if (rc == 0 && !found)
		rc = append_hosts_line(&out, name);
	if (rc < 0 || write_file_atomic(path, out.data, out.len, 0644) < 0)
		agent_log("/etc/hosts: %s", strerror(errno));
	buf_free(&out);
}

static int write_etc(const char *root, const char *file, const char *value, mode_t mode)
{
	char path[PATH_MAX], content[128];
	int n = snprintf(content, sizeof(content), "%s\n", value);

	snprintf(path, sizeof(path), "%s/etc/%s", root, file);
	return write_file_atomic(path, content, (size_t)n, mode);
}

/* ---- kernel ---- */

static int add_entropy(const uint8_t *p, uint32_t n)
{
	struct {
		int entropy_count; /* bits credited */
		int buf_size;
		uint8_t buf[];
	} *info = malloc(sizeof(*info) + n);
	int fd, rc, saved;

	if (!info) {
		errno = ENOMEM;
		return -1;
	}
	info->entropy_count = (int)(8 * n);
	info->buf_size = (int)n;
	memcpy(info->buf, p, n);
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		free(info);
		return -1;
	}
	rc = ioctl(fd, RNDADDENTROPY, info);
	saved = errno;
	close(fd);
	free(info);
	errno = saved;
	return rc;
}

/*
 * Makes the CRNG rekey from the input pool now. Crediting entropy reseeds it only on the way to
 * "ready"; after that (always, in a restored VM) the kernel reseeds once a minute at most, so
 * forks of one snapshot would keep generating the same /dev/urandom and getrandom() bytes.
 */
static int reseed_crng(void)
{
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC), rc, saved;

	if (fd < 0)
		return -1;
	rc = ioctl(fd, RNDRESEEDCRNG);
	saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

/* ---- ip(8) ---- */

static const char *find_ip(void)
{
	for (size_t i = 0; i < ARRAY_LEN(ip_candidates); i++)
		if (access(ip_candidates[i], X_OK) == 0)
			return ip_candidates[i];
	return NULL;
}

/* Joins argv for messages. */
static void join_args(char *const *argv, char *dst, size_t size)
{
	size_t used = 0;

	dst[0] = '\0';
	for (int i = 0; argv[i] && used + 1 < size; i++)
		used += (size_t)snprintf(dst + used, size - used, "%s%s", i ? " " : "", argv[i]);
}

/*
 * Runs ip with argv (argv[0] is "ip") and waits for it. Its output is captured for the error
 * message. Waiting here blocks the agent's loop for a few milliseconds, which IDENTITY can afford;
 * other children's SIGCHLD stays pending and is handled afterwards.
 */
static int run_ip(const char *ip, char *const *argv, const char *field, char *err, size_t errlen)
{
	char out[400], cmd[300], scratch[512];
	size_t got = 0;
	int64_t deadline = now_ms() + IP_TIMEOUT_MS;
	bool timed_out = false;
	int p[2], status = 0;
	pid_t pid;

	join_args(argv, cmd, sizeof(cmd));
	if (pipe2(p, O_CLOEXEC) < 0)
		return fail(err, errlen, errno, "%s: %s: pipe: %s", field, cmd, strerror(errno));
	pid = fork();
	if (pid < 0) {
		int saved = errno;
		close(p[0]);
		close(p[1]);
		return fail(err, errlen, saved, "%s: %s: fork: %s", field, cmd, strerror(saved));
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

		child_reset_signals();
		if (null >= 0)
			dup2(null, STDIN_FILENO);
		dup2(p[1], STDOUT_FILENO);
		dup2(p[1], STDERR_FILENO);
		execve(ip, argv, ip_env);
		_exit(127);
	}
	close(p[1]);
	for (;;) {
		int64_t left = deadline - now_ms();
		struct pollfd pf = {.fd = p[0], .events = POLLIN};
		ssize_t n;

		if (left <= 0) {
			kill(pid, SIGKILL);
			timed_out = true;
			break;
		}
		if (poll(&pf, 1, (int)left) <= 0)
			continue; /* EINTR or timeout: the deadline check decides */
		n = read(p[0], scratch, sizeof(scratch));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (got < sizeof(out) - 1) {
			size_t take = (size_t)n < sizeof(out) - 1 - got ? (size_t)n : sizeof(out) - 1 - got;
			memcpy(out + got, scratch, take);
			got += take;
		}
	}
	close(p[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (timed_out)
		return fail(err, errlen, ETIMEDOUT, "%s: %s: timed out", field, cmd);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	while (got > 0 && (out[got - 1] == '\n' || out[got - 1] == ' '))
		got--;
	out[got] = '\0';
	for (char *c = out; *c; c++)
		if (*c == '\n')
			*c = ' ';
	if (got > 0)
		return fail(err, errlen, EIO, "%s: %s: %s", field, cmd, out);
	return fail(err, errlen, EIO, "%s: %s: exit status %d", field, cmd,
		    WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

/* Link down, set the MAC, link up, flush global addresses, add the new ones. */
static int apply_net(const char *ip, const char *line, char *err, size_t errlen)
{
	char copy[MAX_LINE + 1], *tok[MAX_TOKENS];
	int n, rc;

	strcpy(copy, line);
	n = split(copy, tok, MAX_TOKENS);
	{
		char *down[] = {"ip", "link", "set", tok[0], "down", NULL};
		char *mac[] = {"ip", "link", "set", tok[0], "address", tok[1], NULL};
		char *up[] = {"ip", "link", "set", tok[0], "up", NULL};
		char *flush[] = {"ip", "addr", "flush", "dev", tok[0], "scope", "global", NULL};

		if ((rc = run_ip(ip, down, "net", err, errlen)) || (rc = run_ip(ip, mac, "net", err, errlen)) ||
		    (rc = run_ip(ip, up, "net", err, errlen)) || (rc = run_ip(ip, flush, "net", err, errlen)))
			return rc;
	}
	for (int i = 2; i < n; i++) {
		/* IPv6: skip duplicate address detection, so the address is usable at once. */
		char *add[] = {"ip", "addr", "add", tok[i], "dev", tok[0], strchr(tok[i], ':') ? "nodad" : NULL, NULL};

		if ((rc = run_ip(ip, add, "net", err, errlen)))
			return rc;
	}
	return 0;
}

/* "ip route replace ARGS"; leading "-X" tokens are ip options and go before "route". */
static int apply_route(const char *ip, const char *line, char *err, size_t errlen)
{
	char copy[MAX_LINE + 1], *tok[MAX_TOKENS], *argv[MAX_TOKENS + 4];
	int n, i = 0, k = 0;

	strcpy(copy, line);
	n = split(copy, tok, MAX_TOKENS);
	argv[k++] = "ip";
	while (i < n && tok[i][0] == '-')
		argv[k++] = tok[i++];
	argv[k++] = "route";
	argv[k++] = "replace";
	while (i < n)
		argv[k++] = tok[i++];
	argv[k] = NULL;
	return run_ip(ip, argv, "route", err, errlen);
}

/* ---- rtnetlink (in a guest) ---- */

/* The same as apply_net(), over rtnetlink. */
static int apply_net_nl(struct nl *nl, const char *line, char *err, size_t errlen)
{
	char copy[MAX_LINE + 1], *tok[MAX_TOKENS], what[128];
	struct nl_prefix addrs[MAX_TOKENS];
	uint8_t mac[6];
	int n, rc;

	strcpy(copy, line);
	n = split(copy, tok, MAX_TOKENS);
	for (int i = 0; i < 6; i++)
		mac[i] = (uint8_t)strtoul(tok[1] + 3 * i, NULL, 16);
	for (int i = 2; i < n; i++)
		nl_parse_prefix(tok[i], true, &addrs[i - 2]); /* check_net_line() accepted it */
	rc = nl_setup_link(nl, tok[0], mac, addrs, (size_t)(n - 2), what, sizeof(what));
	return rc ? fail(err, errlen, rc, "net: %s: %s", what, strerror(rc)) : 0;
}

/*
 * net and route over one NETLINK_ROUTE socket. Route lines of a shape nl_parse_route() does not
 * know still go to ip(8).
 */
static int apply_nl(const struct identity *id, char *err, size_t errlen)
{
	const char *ip = NULL;
	struct nl nl;
	int rc = nl_open(&nl);

	if (rc)
		return fail(err, errlen, rc, "%s: netlink socket: %s", id->nnet ? "net" : "route", strerror(rc));
	for (size_t i = 0; i < id->nnet && rc == 0; i++)
		rc = apply_net_nl(&nl, id->net[i], err, errlen);
	for (size_t i = 0; i < id->nroute && rc == 0; i++) {
		char copy[MAX_LINE + 1], *tok[MAX_TOKENS];
		struct nl_route r;
		int n;

		strcpy(copy, id->route[i]);
		n = split(copy, tok, MAX_TOKENS);
		if (nl_parse_route(tok, n, &r)) {
			if ((rc = nl_replace_route(&nl, &r)))
				fail(err, errlen, rc, "route: %s: %s", id->route[i], strerror(rc));
		} else if (!ip && !(ip = find_ip())) {
			rc = fail(err, errlen, ENOENT, "route: ip(8) not found");
		} else {
			rc = apply_route(ip, id->route[i], err, errlen);
		}
	}
	nl_close(&nl);
	return rc;
}

/* ---- entry point ---- */

int identity_apply(const struct identity_opts *o, const uint8_t *payload, uint32_t len, char *err,
		   size_t errlen)
{
	struct identity *id = calloc(1, sizeof(*id));
	const char *ip = NULL;
	int rc;

	if (!id)
		return fail(err, errlen, ENOMEM, "out of memory");
	rc = parse(id, payload, len, err, errlen);
	if (rc)
		goto out;

	/* The clock goes first: every step before it would add to the time the value is late by. */
	if (id->has_clock && o->kernel) {
		struct timespec ts = {
		    .tv_sec = (time_t)(id->clock_ns / 1000000000u),
		    .tv_nsec = (long)(id->clock_ns % 1000000000u),
		};
		if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
			rc = fail(err, errlen, errno, "clock_ns: clock_settime: %s", strerror(errno));
			goto out;
		}
	}
	if (id->has_hostname) {
		if (o->kernel && sethostname(id->hostname, strlen(id->hostname)) < 0) {
			rc = fail(err, errlen, errno, "hostname: sethostname: %s", strerror(errno));
			goto out;
		}
		if (o->root) {
			if (write_etc(o->root, "hostname", id->hostname, 0644) < 0) {
				rc = fail(err, errlen, errno, "hostname: /etc/hostname: %s", strerror(errno));
				goto out;
			}
			update_hosts(o->root, id->hostname);
		}
	}
	if (id->has_machine_id && o->root &&
	    write_etc(o->root, "machine-id", id->machine_id, 0444) < 0) {
		rc = fail(err, errlen, errno, "machine_id: /etc/machine-id: %s", strerror(errno));
		goto out;
	}
	if (id->has_entropy && o->kernel && add_entropy(id->entropy, id->entropy_len) < 0) {
		rc = fail(err, errlen, errno, "entropy: RNDADDENTROPY: %s", strerror(errno));
		goto out;
	}
	if (id->has_entropy && o->kernel && reseed_crng() < 0) {
		rc = fail(err, errlen, errno, "entropy: RNDRESEEDCRNG: %s", strerror(errno));
		goto out;
	}
	if ((id->nnet == 0 && id->nroute == 0) || (o->ip && o->ip[0] == '\0'))
		goto out; /* nothing to apply, or only validation wanted */
	if (o->kernel && !o->ip) {
		rc = apply_nl(id, err, errlen);
		goto out;
	}
	ip = o->ip ? o->ip : find_ip();
	if (!ip) {
		rc = fail(err, errlen, ENOENT, "%s: ip(8) not found", id->nnet ? "net" : "route");
		goto out;
	}
	for (size_t i = 0; i < id->nnet; i++)
		if ((rc = apply_net(ip, id->net[i], err, errlen)))
			goto out;
	for (size_t i = 0; i < id->nroute; i++)
		if ((rc = apply_route(ip, id->route[i], err, errlen)))
			goto out;
out:
	free(id);
	return rc;
}
