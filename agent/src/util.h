/*
 * Small helpers shared by the agent's modules: logging, clocks, byte buffers, little-endian
 * encoding and careful file I/O. Nothing here keeps global state.
 */
#ifndef FASTVM_UTIL_H
#define FASTVM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* One line to stderr (the console when the agent is PID 1), prefixed with "fastvm-agent: ". */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* CLOCK_MONOTONIC in milliseconds / nanoseconds. */
int64_t now_ms(void);
int64_t now_ns(void);

/* Sets or clears O_NONBLOCK. Returns 0 or -1 (errno set). */
int set_nonblock(int fd, bool on);

/* Writes all of buf to a blocking fd, retrying on EINTR and partial writes. 0 or -1 (errno). */
int write_all(int fd, const void *buf, size_t len);

/*
 * Reads at most size - 1 bytes of a small file and NUL-terminates them. Returns the length read,
 * or -1 (errno set).
 */
ssize_t read_small_file(const char *path, char *buf, size_t size);

/* Replaces path with data via path.tmp + rename(), so readers never see a half-written file. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/*
 * In a child before exec: restores the default disposition of SIGPIPE, the one signal the agent
 * ignores (SIG_IGN survives exec; caught signals are reset by exec itself, and the agent catches
 * none: it reads signals from a signalfd), and unblocks all signals. A signal the agent starts
 * to ignore must be added here. (It reset all 64 with one sigaction() each: ~0.4 ms under TCG.)
 */
void child_reset_signals(void);

/* mkdir() that treats an existing directory as success. */
int ensure_dir(const char *path, mode_t mode);

/*
 * A growable byte buffer with a read offset: bytes [off, len) are pending. Consuming only moves
 * off; space is reclaimed by compacting before the buffer grows.
 */
struct buf {
	uint8_t *data;
	size_t off;
	size_t len;
	size_t cap;
};

static inline size_t buf_pending(const struct buf *b) { return b->len - b->off; }
static inline uint8_t *buf_head(const struct buf *b) { return b->data + b->off; }

/* Makes room for at least `extra` more bytes after len. 0 or -1 (ENOMEM). */
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *p, size_t n);
void buf_consume(struct buf *b, size_t n);
/* Drops all pending bytes but keeps the allocation. */
void buf_clear(struct buf *b);
void buf_free(struct buf *b);

static inline void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get_u64(const uint8_t *p)
{
	return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

#endif
