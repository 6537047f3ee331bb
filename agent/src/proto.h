/*
 * Wire format of spec/agent-protocol.md: frame header, message types, TLV fields, and a frame
 * parser that resynchronises on garbage.
 */
#ifndef FASTVM_PROTO_H
#define FASTVM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PROTOCOL_VERSION 1u
#define FRAME_MAGIC 0x314D5646u /* "FVM1" as little-endian bytes */
#define FRAME_HEADER_SIZE 16u
#define FRAME_MAX_PAYLOAD (1024u * 1024u)
/* Largest STDOUT/STDERR payload and largest PING payload. */
#define FRAME_MAX_CHUNK (64u * 1024u)
#define HELLO_NONCE_SIZE 8u
#define EXIT_PAYLOAD_SIZE 12u

enum msg_type {
	MSG_HELLO = 0x01,
	MSG_PING = 0x02,
	MSG_EXEC = 0x10,
	MSG_SIGNAL = 0x11,
	MSG_STDIN = 0x12,
	MSG_RESIZE = 0x13,
	MSG_FLOW = 0x14,
	MSG_IDENTITY = 0x20,
	MSG_SHUTDOWN = 0x21,

	MSG_HELLO_ACK = 0x81,
	MSG_PONG = 0x82,
	MSG_STARTED = 0x90,
	MSG_STDOUT = 0x91,
	MSG_STDERR = 0x92,
	MSG_EXIT = 0x93,
	MSG_OK = 0xA0,
	MSG_ERROR = 0xAF,
};

enum exec_tag {
	EXEC_ARGV = 1,
	EXEC_ENV = 2,
	EXEC_CWD = 3,
	EXEC_STDIN = 4,
	EXEC_TIMEOUT_MS = 5,
	EXEC_CAP = 6,
	EXEC_PTY = 7,
	EXEC_STDIN_OPEN = 8,
};

enum identity_tag {
	ID_HOSTNAME = 1,
	ID_MACHINE_ID = 2,
	ID_CLOCK_NS = 3,
	ID_ENTROPY = 4,
	ID_NET = 5,
	ID_ROUTE = 6,
};

/* A parsed frame; payload points into the reader's buffer and is valid until it is consumed. */
struct frame {
	uint8_t type;
	uint8_t flags;
	uint32_t id;
	uint32_t len;
	const uint8_t *payload;
};

/* Writes a frame header for a payload of len bytes. */
void frame_header(uint8_t hdr[FRAME_HEADER_SIZE], uint8_t type, uint32_t id, uint32_t len);

/*
 * Looks for one complete frame at the head of `in`. Bytes that cannot start a frame (bad magic,
 * oversized len) are consumed from `in` and counted in *discarded. Returns 1 and fills *f when a
 * frame is complete (the caller consumes FRAME_HEADER_SIZE + f->len bytes once done with it), or 0
 * when more bytes are needed.
 */
int frame_next(struct buf *in, struct frame *f, size_t *discarded);

/* Drops the first byte of `in` and resynchronises: used when a partial frame stalls. */
void frame_skip_one(struct buf *in);

/* Iterates over TLV records: tag (u8), len (u32), value. */
struct tlv_iter {
	const uint8_t *p;
	size_t left;
};

static inline void tlv_init(struct tlv_iter *it, const uint8_t *p, size_t len)
{
	it->p = p;
	it->left = len;
}

/* Returns 1 with the next record, 0 at the end, -1 if the payload is malformed (truncated). */
int tlv_next(struct tlv_iter *it, uint8_t *tag, const uint8_t **val, uint32_t *len);

#endif
