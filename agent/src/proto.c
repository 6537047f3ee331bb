#include "proto.h"

#include <string.h>

static const uint8_t magic_bytes[4] = {'F', 'V', 'M', '1'};

void frame_header(uint8_t hdr[FRAME_HEADER_SIZE], uint8_t type, uint32_t id, uint32_t len)
{
	put_u32(hdr, FRAME_MAGIC);
	hdr[4] = type;
	hdr[5] = 0;
	hdr[6] = 0;
	hdr[7] = 0;
	put_u32(hdr + 8, id);
	put_u32(hdr + 12, len);
}

/*
 * Offset of the first position in p[0..n) that may start a frame: a full magic, or a proper
 * prefix of it at the very end. Returns n if there is none.
 */
static size_t magic_scan(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t avail = n - i < sizeof(magic_bytes) ? n - i : sizeof(magic_bytes);

		if (memcmp(p + i, magic_bytes, avail) == 0)
			return i;
	}
	return n;
}

int frame_next(struct buf *in, struct frame *f, size_t *discarded)
{
	for (;;) {
		size_t pending = buf_pending(in);
		const uint8_t *p = buf_head(in);
		size_t skip = magic_scan(p, pending);
		uint32_t len;

		if (skip > 0) {
			*discarded += skip;
			buf_consume(in, skip);
			continue;
		}
		if (pending < FRAME_HEADER_SIZE)
			return 0;
		len = get_u32(p + 12);
		if (len > FRAME_MAX_PAYLOAD) {
			/* Not a real header: drop its first byte and look for the next magic. */
			*discarded += 1;
			buf_consume(in, 1);
			continue;
		}
		if (pending < FRAME_HEADER_SIZE + len)
			return 0;
		f->type = p[4];
		f->flags = p[5];
		f->id = get_u32(p + 8);
		f->len = len;
		f->payload = p + FRAME_HEADER_SIZE;
		return 1;
	}
}

void frame_skip_one(struct buf *in)
{
	if (buf_pending(in) > 0)
		buf_consume(in, 1);
}

int tlv_next(struct tlv_iter *it, uint8_t *tag, const uint8_t **val, uint32_t *len)
{
	uint32_t n;

	if (it->left == 0)
		return 0;
	if (it->left < 5)
		return -1;
	n = get_u32(it->p + 1);
	if (n > it->left - 5)
		return -1;
	*tag = it->p[0];
	*len = n;
	*val = it->p + 5;
	it->p += 5 + (size_t)n;
	it->left -= 5 + (size_t)n;
	return 1;
}
