/*
 * EXEC, SIGNAL, STDIN, RESIZE and FLOW: commands run as children of the agent, each in its own
 * session, with piped stdio (or a pty) forwarded to the host as STDOUT/STDERR frames and an EXIT
 * frame once the main process is reaped. All I/O is non-blocking and driven by the agent's poll
 * loop.
 */
#ifndef FASTVM_EXEC_H
#define FASTVM_EXEC_H

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

struct agent;

/* Most commands running at once; more are refused with ERROR EAGAIN. */
#define EXEC_MAX_RUNNING 512
/* Descriptors one command adds to the poll set. */
#define EXEC_POLLFDS_PER_REQ 3

/* Handles an EXEC frame: replies STARTED (then output and EXIT later) or ERROR. */
void exec_start(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len);
/* Handles a SIGNAL frame: signals the process group of request id (no reply). */
void exec_signal(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len);

/* Handles a STDIN frame: queues input for request id (empty = EOF; for a pty, hang up). */
void exec_stdin(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len);
/* Handles a RESIZE frame: sets the window size of request id's pty. */
void exec_resize(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len);
/* Handles a FLOW frame: stops or resumes reading request id's output. */
void exec_flow(struct agent *a, uint32_t id, const uint8_t *payload, uint32_t len);
/* A new host session began: hangs up the ptys of commands started by earlier hosts. */
void exec_session_changed(struct agent *a);

/* Adds the commands' pipes to the poll set; output pipes only when want_output. */
void exec_add_pollfds(struct agent *a, struct pollfd *pfds, int *n, bool want_output);
/* Forwards output and feeds stdin according to poll results. */
void exec_handle(struct agent *a, const struct pollfd *pfds);
/* Reaps every exited child (commands and orphans); finished commands send EXIT. */
void exec_reap(struct agent *a);
/* Milliseconds until the next command timeout, or -1. */
int64_t exec_timeout_ms(const struct agent *a, int64_t now);
/* Kills the process groups of commands whose timeout has passed. */
void exec_check_timeouts(struct agent *a, int64_t now);
/* SIGKILLs every running command's process group (test mode exit). */
void exec_kill_all(struct agent *a);

#endif
