#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agent.h"
#include "proto.h"
#include "util.h"

extern char **environ;

/* At most this much output per stream is read from a finished command's pipes before EXIT. */
#define EXIT_DRAIN_MAX (1024u * 1024u)
/* Most argv and env entries in one EXEC. */
#define EXEC_MAX_STRINGS 16384
#define DEFAULT_CWD "/root"
/* Most streamed input (STDIN frames) queued for one command; more is refused with ENOBUFS. */
#define STDIN_MAX_PENDING (1024u * 1024u)
/* Terminal size when the pty field gives 0. */
#define PTY_DEFAULT_ROWS 24
#define PTY_DEFAULT_COLS 80

static char *const default_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=xterm-256color",
    "USER=root",
};

enum { OUT_STDOUT = 0, OUT_STDERR = 1 };

struct exec_req {
	struct exec_req *next;
	uint32_t id;
	uint32_t session;    /* link session of the host that started it */
	pid_t pid;           /* the main process; it leads process group `pid` */
	int out[2];          /* read ends of the stdout/stderr pipes; -1 once closed */
	int in;              /* write end of the stdin pipe; -1 once closed */
	int status;          /* read end of the exec status pipe */
	int out_pfd[2];      /* indexes in the current poll set, or -1 */
	int in_pfd;
	struct buf stdin_buf; /* input not yet written to `in` */
	bool stdin_eof;      /* close `in` once stdin_buf is written */
	bool stdin_stream;   /* STDIN frames are accepted (stdin_open or pty) */
	/*
	 * With a pty, out[OUT_STDOUT] is the master and `in` a duplicate of it (so closing either
	 * keeps the other usable); out[OUT_STDERR] is -1. Closing both hangs the terminal up.
	 */
	bool pty;
	bool paused;         /* FLOW 0: output is not read until FLOW 1 */
	uint32_t cap;        /* bytes forwarded per stream; 0 = everything */
	uint64_t forwarded[2];
	bool truncated[2];
	bool timed_out;
	int64_t start_ns;
	int64_t deadline_ms; /* 0 = no timeout */
};

/* A parsed EXEC request with NUL-terminated copies of its strings. */
struct exec_spec {
	char **argv; /* argc + 1 entries */
	size_t argc;
	char **env_copies; /* the env fields, owned */
	size_t nenv;
	char **envp; /* defaults then overrides, NULL-terminated; borrows its strings */
	size_t nenvp;
	char *cwd; /* NULL: DEFAULT_CWD, else / */
	const uint8_t *stdin_data; /* borrowed from the frame */
	uint32_t stdin_len;
	bool has_stdin;
	bool stdin_open; /* keep stdin open for STDIN frames */
	bool pty;
	uint16_t rows, cols;
	uint32_t timeout_ms;
	uint32_t cap;
};

/* ---- request table ---- */

static struct exec_req *find_req(const struct agent *a, uint32_t id)
{
	for (struct exec_req *r = a->reqs; r; r = r->next)
		if (r->id == id && r->session == a->link.session)
			return r;
	return NULL;
}

static void remove_req(struct agent *a, struct exec_req *r)
{
	for (struct exec_req **pp = &a->reqs; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			a->nreqs--;
			return;
		}
	}
}

/* Sends a frame about r, unless r belongs to a host that has since been replaced. */
static void req_send(struct agent *a, const struct exec_req *r, uint8_t type, const void *p, size_t n)
{
	if (r->session == a->link.session)
		agent_send(a, type, r->id, p, n);
}

/*
 * Signals r's process group. Right after fork() the child may not have called setsid() yet, so
 * the group does not exist: then signal the child itself (it has the agent's signals blocked
 * until it resets them, so nothing is lost).
 */
static void kill_group(const struct exec_req *r, int sig)
{
	if (kill(-r->pid, sig) < 0 && errno == ESRCH)
		(void)kill(r->pid, sig);
}

/* ---- parsing ---- */

static void spec_free(struct exec_spec *s)
{
	for (size_t i = 0; i < s->argc; i++)
		free(s->argv[i]);
	for (size_t i = 0; i < s->nenv; i++)
		free(s->env_copies[i]);
	free(s->argv);
	free(s->env_copies);
	free(s->envp);
	free(s->cwd);
	memset(s, 0, sizeof(*s));
}

/* A NUL-terminated copy of a TLV string. NULL with errno EINVAL if it holds a NUL byte. */
static char *dup_field(const uint8_t *v, uint32_t n)
{
	char *s;

	if (memchr(v, '\0', n)) {
		errno = EINVAL;
		return NULL;
	}
	s = malloc((size_t)n + 1);
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	memcpy(s, v, n);
	s[n] = '\0';
	return s;
}

/* Adds KEY=VALUE to envp, replacing an earlier entry with the same KEY. */
static void env_set(char **envp, size_t *n, char *entry)
{
	size_t klen = (size_t)(strchr(entry, '=') - entry) + 1;

	for (size_t i = 0; i < *n; i++) {
		if (strncmp(envp[i], entry, klen) == 0) {
			envp[i] = entry;
			return;
		}
	}
	envp[(*n)++] = entry;
}

/* Parses an EXEC payload. Returns 0, or an errno value with a message in err. */
static int spec_parse(struct exec_spec *s, const uint8_t *p, uint32_t len, char *err, size_t errlen)
{
	struct tlv_iter it;
	const uint8_t *v;
	uint32_t n;
	uint8_t tag;
	size_t nargv = 0, nenv = 0;
	int rc;

	memset(s, 0, sizeof(*s));

	/* Pass 1: check the structure and count the repeated fields. */
	tlv_init(&it, p, len);
	while ((rc = tlv_next(&it, &tag, &v, &n)) == 1) {
		if (tag == EXEC_ARGV)
			nargv++;
		else if (tag == EXEC_ENV)
			nenv++;
		else if ((tag == EXEC_TIMEOUT_MS || tag == EXEC_CAP) && n != 4) {
			snprintf(err, errlen, "%s must be a u32", tag == EXEC_CAP ? "cap" : "timeout_ms");
			return EINVAL;
		} else if (tag == EXEC_PTY && n != 4) {
			snprintf(err, errlen, "pty must be rows (u16) then cols (u16)");
			return EINVAL;
		}
	}
	if (rc < 0) {
		snprintf(err, errlen, "malformed TLV payload");
		return EINVAL;
	}
	if (nargv == 0) {
		snprintf(err, errlen, "argv is empty");
		return EINVAL;
	}
	if (nargv > EXEC_MAX_STRINGS || nenv > EXEC_MAX_STRINGS) {
		snprintf(err, errlen, "too many argv/env entries");
		return E2BIG;
	}
	s->argv = calloc(nargv + 1, sizeof(char *));
	s->env_copies = calloc(nenv + 1, sizeof(char *));
	s->envp = calloc(ARRAY_LEN(default_env) + nenv + 1, sizeof(char *));
	if (!s->argv || !s->env_copies || !s->envp)
		goto nomem;
	for (size_t i = 0; i < ARRAY_LEN(default_env); i++)
		s->envp[s->nenvp++] = default_env[i];

	/* Pass 2: copy the fields. */
	tlv_init(&it, p, len);
	while (tlv_next(&it, &tag, &v, &n) == 1) {
		char *str;

		switch (tag) {
		case EXEC_ARGV:
			str = dup_field(v, n);
			if (!str)
				goto bad_string;
			s->argv[s->argc++] = str;
			break;
		case EXEC_ENV:
			str = dup_field(v, n);
			if (!str)
				goto bad_string;
			s->env_copies[s->nenv++] = str;
			if (str[0] == '=' || !strchr(str, '=')) {
				snprintf(err, errlen, "env entry is not KEY=VALUE: '%.64s'", str);
				return EINVAL;
			}
			env_set(s->envp, &s->nenvp, str);
			break;
		case EXEC_CWD:
			str = dup_field(v, n);
			if (!str)
				goto bad_string;
			free(s->cwd);
			s->cwd = str;
			break;
		case EXEC_STDIN:
			s->stdin_data = v;
			s->stdin_len = n;
			s->has_stdin = true;
			break;
		case EXEC_TIMEOUT_MS:
			s->timeout_ms = get_u32(v);
			break;
		case EXEC_CAP:
			s->cap = get_u32(v);
			break;
		case EXEC_PTY:
			s->pty = true;
			s->rows = (uint16_t)(v[0] | v[1] << 8);
			s->cols = (uint16_t)(v[2] | v[3] << 8);
			break;
		case EXEC_STDIN_OPEN:
			s->stdin_open = true;
			break;
		default:
			break; /* unknown tags are ignored */
		}
	}
	if (s->argv[0][0] == '\0') {
		snprintf(err, errlen, "argv[0] is empty");
		return EINVAL;
	}
	if (s->cwd && s->cwd[0] == '\0') {
		snprintf(err, errlen, "cwd is empty");
		return EINVAL;
	}
	return 0;
bad_string:
	if (errno == EINVAL) {
		snprintf(err, errlen, "a string field contains a NUL byte");
		return EINVAL;
	}
nomem:
	snprintf(err, errlen, "out of memory");
	return ENOMEM;
}

/* ---- the child ---- */

/*
 * Reports why the command could not start through the status pipe (errno, then a message the
 * agent forwards as STDERR) and exits like a shell would: 126 for permission denied, else 127.
 */
static void __attribute__((noreturn, format(printf, 3, 4)))
child_fail(int status_fd, int err, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	int n;

	put_u32((uint8_t *)msg, (uint32_t)err);
	va_start(ap, fmt);
	n = vsnprintf(msg + 4, sizeof(msg) - 4, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(msg) - 5)
		n = (int)sizeof(msg) - 5;
	/* One write of less than PIPE_BUF bytes: atomic. */
	(void)!write(status_fd, msg, 4 + (size_t)n);
	_exit(err == EACCES ? 126 : 127);
}

/* The command's stdin when EXEC has no stdin field: /dev/null, or an empty pipe without it. */
static int null_stdin(void)
{
	int p[2];
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (fd >= 0)
		return fd;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	close(p[1]);
	return p[0];
}

/*
 * Runs in the forked child. Every descriptor the agent holds is close-on-exec, and dup2() clears
 * that flag on 0, 1 and 2 (the pipe ends are never 0-2: main() keeps those open), so the command
 * gets exactly stdin, stdout and stderr.
 */
static void __attribute__((noreturn))
child_exec(const struct agent *a, const struct exec_spec *s, int in_fd, int out_fd, int err_fd,
	   int status_fd)
{
	setsid();
	/* With a pty, in_fd is its slave: make it the new session's controlling terminal. */
	if (s->pty && ioctl(in_fd, TIOCSCTTY, 0) < 0)
		child_fail(status_fd, errno, "fastvm-agent: cannot set the controlling terminal: %s\n",
			   strerror(errno));
	child_reset_signals();
	if (a->nofile.rlim_cur != RLIM_INFINITY)
		(void)setrlimit(RLIMIT_NOFILE, &a->nofile);
	if (in_fd < 0)
		in_fd = null_stdin();
	if (in_fd < 0 || dup2(in_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
	    dup2(err_fd, STDERR_FILENO) < 0)
		child_fail(status_fd, errno, "fastvm-agent: cannot set up stdio: %s\n", strerror(errno));
	if (s->cwd) {
		if (chdir(s->cwd) < 0)
			child_fail(status_fd, errno, "fastvm-agent: cannot change directory to '%.256s': %s\n",
				   s->cwd, strerror(errno));
	} else if (chdir(DEFAULT_CWD) < 0 && chdir("/") < 0) {
		child_fail(status_fd, errno, "fastvm-agent: cannot change directory to '/': %s\n",
			   strerror(errno));
	}
	/* execvp() searches the PATH of `environ`, so the command's PATH applies. */
	environ = s->envp;
	execvp(s->argv[0], s->argv);
	child_fail(status_fd, errno, "fastvm-agent: cannot run '%.256s': %s\n", s->argv[0],
		   strerror(errno));
}

/*
 * Starts the command the way posix_spawn() does: the child shares the agent's memory
 * (CLONE_VM) on a stack of its own and the agent waits (CLONE_VFORK) until it has called
 * execve() or exited. fork() copied the agent's page tables and then took a copy-on-write fault
 * for every page either side wrote; under TCG that was ~3 ms of each command (a guest fork alone
 * measured 2.9 ms, fork + exec of /bin/true 8.2 ms).
 *
 * Sharing memory has three rules, kept here: the child runs with every signal blocked until
 * child_reset_signals() has set every disposition to the default (no agent handler can run in
 * it); what the child writes in shared memory (`environ`, errno) is put back by the agent after;
 * and the child only makes system calls and writes on its own stack before execve() or _exit().
 */
struct spawn_args {
	const struct agent *a;
	const struct exec_spec *s;
	int in_fd, out_fd, err_fd, status_fd;
};

/* One command starts at a time (the agent waits for each), so one stack serves every child. */
static char spawn_stack[64 * 1024] __attribute__((aligned(16)));

static int spawn_child(void *arg)
{
	const struct spawn_args *c = arg;

	child_exec(c->a, c->s, c->in_fd, c->out_fd, c->err_fd, c->status_fd);
}

static pid_t spawn(const struct agent *a, const struct exec_spec *s, int in_fd, int out_fd,
		   int err_fd, int status_fd)
{
	struct spawn_args c = {a, s, in_fd, out_fd, err_fd, status_fd};
	char **env = environ;
	sigset_t all, old;
	pid_t pid;
	int saved;

	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	pid = clone(spawn_child, spawn_stack + sizeof(spawn_stack), CLONE_VM | CLONE_VFORK | SIGCHLD,
		    &c);
	saved = errno;
	environ = env;
	sigprocmask(SIG_SETMASK, &old, NULL);
	errno = saved;
	return pid;
}

/* ---- I/O ---- */

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static void close_stdin(struct exec_req *r)
{
	close_fd(&r->in);
	buf_free(&r->stdin_buf);
}

/*
 * Feeds stdin as far as the pipe (or pty) takes it now; closes it once everything is written
 * and EOF was asked for, or when the command no longer reads it (EPIPE, EIO).
 */
static void pump_stdin(struct exec_req *r)
{
	while (r->in >= 0) {
		size_t pending = buf_pending(&r->stdin_buf);
		ssize_t n;

		if (pending == 0) {
			if (r->stdin_eof)
				close_stdin(r);
			return;
		}
		n = write(r->in, buf_head(&r->stdin_buf), pending);
		if (n > 0) {
			buf_consume(&r->stdin_buf, (size_t)n);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		close_stdin(r); /* EPIPE: the command closed its stdin */
	}
}

/*
 * Hangs up r's terminal: closes every descriptor of the pty master, so the kernel sends SIGHUP
 * (and SIGCONT) to the session leader and the foreground process group, and the slave reads EOF.
 * What the command writes afterwards is lost.
 */
static void pty_hangup(struct exec_req *r)
{
	close_fd(&r->out[OUT_STDOUT]);
	close_stdin(r);
}

/* Forwards output, honouring the per-stream cap (bytes beyond it are dropped and flagged). */
static void forward(struct agent *a, struct exec_req *r, int stream, const uint8_t *p, size_t n)
{
	size_t keep = n;

	if (r->cap > 0) {
		uint64_t room = r->forwarded[stream] < r->cap ? r->cap - r->forwarded[stream] : 0;

		if (keep > room) {
			keep = (size_t)room;
			r->truncated[stream] = true;
		}
	}
	if (keep == 0)
		return;
	r->forwarded[stream] += keep;
	req_send(a, r, stream == OUT_STDOUT ? MSG_STDOUT : MSG_STDERR, p, keep);
}

/* One read from an output pipe: >0 bytes forwarded, 0 the pipe is closed, -1 nothing to read now. */
static ssize_t pump_output(struct agent *a, struct exec_req *r, int stream)
{
	ssize_t n = read(r->out[stream], a->scratch, FRAME_MAX_CHUNK);

	if (n > 0) {
		forward(a, r, stream, a->scratch, (size_t)n);
		return n;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return -1;
	close_fd(&r->out[stream]); /* EOF: every writer is gone */
	return 0;
}

/*
 * After the main process exits: forward what is in the pipe now and close it. Background
 * processes may keep the pipe open (nohup, tmux) or even keep writing, so this neither waits for
 * EOF nor reads without bound.
 */
static void drain_output(struct agent *a, struct exec_req *r, int stream)
{
	size_t total = 0;

	while (r->out[stream] >= 0 && total < EXIT_DRAIN_MAX) {
		ssize_t n = pump_output(a, r, stream);

		if (n <= 0)
			break;
		total += (size_t)n;
	}
	close_fd(&r->out[stream]);
}

/* ---- lifecycle ---- */

/*
 * Opens a pty pair for a command: the master (non-blocking, for the agent) and the slave (for
 * the child's stdio), both close-on-exec, with the given window size and IUTF8 set (the default
 * locale is UTF-8, so erase works on whole characters). 0 or -1 with errno set.
 */
static int open_pty(const struct exec_spec *s, int *master, int *slave)
{
	struct winsize ws = {
	    .ws_row = s->rows ? s->rows : PTY_DEFAULT_ROWS,
	    .ws_col = s->cols ? s->cols : PTY_DEFAULT_COLS,
	};
	struct termios t;
	char name[64];

	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0)
		return -1;
	if (grantpt(*master) < 0 || unlockpt(*master) < 0 ||
	    ptsname_r(*master, name, sizeof(name)) != 0)
		return -1;
	*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*slave < 0)
		return -1;
	if (ioctl(*master, TIOCSWINSZ, &ws) < 0 || set_nonblock(*master, true) < 0)
		return -1;
	if (tcgetattr(*slave, &t) == 0) {
		t.c_iflag |= IUTF8;
		(void)tcsetattr(*slave, TCSANOW, &t);
	}
	return 0;
}

void exec_start(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct exec_spec s;
	struct exec_req *r = NULL;
	int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1}, st[2] = {-1, -1};
	int master = -1, slave = -1;
	char msg[256];
	uint8_t started[4];
	int rc, saved;
	pid_t pid;

	if (find_req(a, id)) {
		agent_error(a, id, EEXIST, "exec: request %u is already running", id);
		return;
	}
	if (a->nreqs >= EXEC_MAX_RUNNING) {
		agent_error(a, id, EAGAIN, "exec: too many running commands (%d)", EXEC_MAX_RUNNING);
		return;
	}
	rc = spec_parse(&s, payload, len, msg, sizeof(msg));
	if (rc != 0) {
		agent_error(a, id, (uint32_t)rc, "exec: %s", msg);
		spec_free(&s);
		return;
	}

	r = calloc(1, sizeof(*r));
	if (!r)
		goto fail;
	r->out[0] = r->out[1] = r->in = r->status = -1;
	if (s.has_stdin && buf_append(&r->stdin_buf, s.stdin_data, s.stdin_len) < 0)
		goto fail;
	if (pipe2(st, O_CLOEXEC) < 0 || set_nonblock(st[0], true) < 0)
		goto fail;
	if (s.pty) {
		if (open_pty(&s, &master, &slave) < 0)
			goto fail;
		/* The agent writes input through a duplicate of the master (see struct exec_req). */
		in[1] = fcntl(master, F_DUPFD_CLOEXEC, 3);
		if (in[1] < 0)
			goto fail;
	} else {
		if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
		    ((s.has_stdin || s.stdin_open) && pipe2(in, O_CLOEXEC) < 0))
			goto fail;
		if (set_nonblock(out[0], true) < 0 || set_nonblock(err[0], true) < 0 ||
		    (in[1] >= 0 && set_nonblock(in[1], true) < 0))
			goto fail;
	}

	r->start_ns = now_ns();
	pid = s.pty ? spawn(a, &s, slave, slave, slave, st[1])
		    : spawn(a, &s, in[0], out[1], err[1], st[1]);
	if (pid < 0)
		goto fail;

	close(st[1]);
	r->id = id;
	r->session = a->link.session;
	r->pid = pid;
	if (s.pty) {
		close(slave);
		r->out[OUT_STDOUT] = master;
		r->pty = true;
		r->stdin_stream = true;
	} else {
		close(out[1]);
		close(err[1]);
		if (in[0] >= 0)
			close(in[0]);
		r->out[OUT_STDOUT] = out[0];
		r->out[OUT_STDERR] = err[0];
		r->stdin_stream = s.stdin_open;
		/* A fixed stdin (no stdin_open) is closed once written. */
		r->stdin_eof = !s.stdin_open;
	}
	r->in = in[1];
	r->status = st[0];
	r->out_pfd[0] = r->out_pfd[1] = r->in_pfd = -1;
	r->cap = s.cap;
	if (s.timeout_ms > 0)
		r->deadline_ms = r->start_ns / 1000000 + s.timeout_ms;
	r->next = a->reqs;
	a->reqs = r;
	a->nreqs++;
	spec_free(&s);

	put_u32(started, (uint32_t)pid);
	agent_send(a, MSG_STARTED, id, started, sizeof(started));
	pump_stdin(r);
	return;

fail:
	saved = errno;
	for (int i = 0; i < 2; i++) {
		close_fd(&out[i]);
		close_fd(&err[i]);
		close_fd(&in[i]);
		close_fd(&st[i]);
	}
	close_fd(&master);
	close_fd(&slave);
	if (r)
		buf_free(&r->stdin_buf);
	free(r);
	spec_free(&s);
	agent_error(a, id, (uint32_t)saved, "exec: cannot start the command: %s", strerror(saved));
}

/* The main process was reaped: flush its output, report why it could not start if so, send EXIT. */
static void finish(struct agent *a, struct exec_req *r, int status)
{
	uint8_t exitp[EXIT_PAYLOAD_SIZE];
	int64_t duration_ms = (now_ns() - r->start_ns) / 1000000;
	uint8_t why[1024];
	int32_t code = 0;
	int sig = 0;
	ssize_t n;

	drain_output(a, r, OUT_STDOUT);
	drain_output(a, r, OUT_STDERR);
	close_stdin(r);
	/* The child is gone, so its end of the status pipe is closed: this read cannot block. */
	n = read(r->status, why, sizeof(why));
	close_fd(&r->status);
	if (n > 4)
		req_send(a, r, MSG_STDERR, why + 4, (size_t)n - 4);

	if (WIFEXITED(status)) {
		code = WEXITSTATUS(status);
	} else if (WIFSIGNALED(status)) {
		sig = WTERMSIG(status);
		code = 128 + sig;
	}
	put_u32(exitp, (uint32_t)code);
	exitp[4] = r->timed_out;
	exitp[5] = r->truncated[OUT_STDOUT];
	exitp[6] = r->truncated[OUT_STDERR];
	exitp[7] = (uint8_t)sig;
	put_u32(exitp + 8, duration_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)duration_ms);
	req_send(a, r, MSG_EXIT, exitp, sizeof(exitp));

	remove_req(a, r);
	free(r);
}

void exec_reap(struct agent *a)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid < 0 && errno == EINTR)
			continue;
		if (pid <= 0)
			return; /* nothing exited (0) or no children (ECHILD) */
		for (struct exec_req *r = a->reqs; r; r = r->next) {
			if (r->pid == pid) {
				finish(a, r, status);
				break;
			}
		}
		/* Otherwise an orphan (a background job reparented to us): reaping it is all. */
	}
}

void exec_signal(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct exec_req *r;
	uint32_t sig;

	if (len != 4) {
		agent_error(a, id, EINVAL, "signal: payload must be a u32 signal number");
		return;
	}
	sig = get_u32(payload);
	if (sig < 1 || sig >= 65) {
		agent_error(a, id, EINVAL, "signal: bad signal number %u", sig);
		return;
	}
	r = find_req(a, id);
	if (r)
		kill_group(r, (int)sig);
	/* An unknown id has finished already (its EXIT is on the way): nothing to do. */
}

void exec_stdin(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct exec_req *r = find_req(a, id);

	if (!r)
		return; /* finished (its EXIT is on the way) or unknown */
	if (!r->stdin_stream) {
		agent_error(a, id, EBADF, "stdin: request %u was started without stdin_open or pty", id);
		return;
	}
	if (r->in < 0 || r->stdin_eof)
		return; /* the command closed its stdin, or EOF was sent already: dropped */
	if (len == 0) {
		r->stdin_eof = true;
		pump_stdin(r);
		if (r->pty)
			pty_hangup(r);
		return;
	}
	if (buf_pending(&r->stdin_buf) + len > STDIN_MAX_PENDING) {
		agent_error(a, id, ENOBUFS, "stdin: over %u bytes queued; %u bytes dropped",
			    STDIN_MAX_PENDING, len);
		return;
	}
	if (buf_append(&r->stdin_buf, payload, len) < 0) {
		agent_error(a, id, ENOMEM, "stdin: out of memory; %u bytes dropped", len);
		return;
	}
	pump_stdin(r);
}

void exec_resize(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct exec_req *r;
	struct winsize ws = {0};
	int fd;

	if (len != 4) {
		agent_error(a, id, EINVAL, "resize: payload must be rows (u16) then cols (u16)");
		return;
	}
	r = find_req(a, id);
	if (!r)
		return;
	if (!r->pty) {
		agent_error(a, id, ENOTTY, "resize: request %u has no pty", id);
		return;
	}
	fd = r->out[OUT_STDOUT] >= 0 ? r->out[OUT_STDOUT] : r->in;
	if (fd < 0)
		return; /* hung up */
	ws.ws_row = (unsigned short)(payload[0] | payload[1] << 8);
	ws.ws_col = (unsigned short)(payload[2] | payload[3] << 8);
	/* The kernel sends SIGWINCH to the terminal's foreground process group. */
	if (ioctl(fd, TIOCSWINSZ, &ws) < 0)
		agent_error(a, id, (uint32_t)errno, "resize: %s", strerror(errno));
}

void exec_flow(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len)
{
	struct exec_req *r;

	if (len != 1 || payload[0] > 1) {
		agent_error(a, id, EINVAL, "flow: payload must be one byte, 0 (stop) or 1 (go)");
		return;
	}
	r = find_req(a, id);
	if (r)
		r->paused = payload[0] == 0;
}

void exec_session_changed(struct agent *a)
{
	for (struct exec_req *r = a->reqs; r; r = r->next) {
		if (r->pty && r->session != a->link.session &&
		    (r->out[OUT_STDOUT] >= 0 || r->in >= 0))
			pty_hangup(r);
	}
}

void exec_add_pollfds(struct agent *a, struct pollfd *pfds, int *n, bool want_output)
{
	for (struct exec_req *r = a->reqs; r; r = r->next) {
		for (int s = 0; s < 2; s++) {
			r->out_pfd[s] = -1;
			if (want_output && !r->paused && r->out[s] >= 0) {
				r->out_pfd[s] = *n;
				pfds[(*n)++] = (struct pollfd){.fd = r->out[s], .events = POLLIN};
			}
		}
		r->in_pfd = -1;
		if (r->in >= 0 && buf_pending(&r->stdin_buf) > 0) {
			r->in_pfd = *n;
			pfds[(*n)++] = (struct pollfd){.fd = r->in, .events = POLLOUT};
		}
	}
}

void exec_handle(struct agent *a, const struct pollfd *pfds)
{
	for (struct exec_req *r = a->reqs; r; r = r->next) {
		for (int s = 0; s < 2; s++) {
			if (r->out_pfd[s] >= 0 && r->out[s] >= 0 &&
			    (pfds[r->out_pfd[s]].revents & (POLLIN | POLLHUP | POLLERR)))
				(void)pump_output(a, r, s);
		}
		if (r->in_pfd >= 0 && r->in >= 0 &&
		    (pfds[r->in_pfd].revents & (POLLOUT | POLLHUP | POLLERR)))
			pump_stdin(r);
	}
}

int64_t exec_timeout_ms(const struct agent *a, int64_t now)
{
	int64_t t = -1;

	for (const struct exec_req *r = a->reqs; r; r = r->next) {
		if (r->deadline_ms > 0 && !r->timed_out) {
			int64_t left = r->deadline_ms > now ? r->deadline_ms - now : 0;

			if (t < 0 || left < t)
				t = left;
		}
	}
	return t;
}

void exec_check_timeouts(struct agent *a, int64_t now)
{
	for (struct exec_req *r = a->reqs; r; r = r->next) {
		if (r->deadline_ms > 0 && !r->timed_out && now >= r->deadline_ms) {
			r->timed_out = true;
			kill_group(r, SIGKILL); /* EXIT follows once the main process is reaped */
		}
	}
}

void exec_kill_all(struct agent *a)
{
	for (struct exec_req *r = a->reqs; r; r = r->next)
		kill_group(r, SIGKILL);
}
