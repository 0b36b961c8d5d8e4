/*
 * Big-endian field access and overflow-checked offset arithmetic.
 *
 * Every multi-byte field of a qcow2 image is big-endian. Fields are read
 * byte by byte from a buffer whose length the caller has already checked
 * (through qc_cursor below or an explicit bound); nothing here casts file
 * bytes to structs.
 */
#ifndef QC_LAYOUT_BYTES_H
#define QC_LAYOUT_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline uint16_t qc_be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t qc_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t qc_be64(const uint8_t *p)
{
    return (uint64_t)qc_be32(p) << 32 | qc_be32(p + 4);
}

static inline void qc_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void qc_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void qc_put_be64(uint8_t *p, uint64_t v)
{
    qc_put_be32(p, (uint32_t)(v >> 32));
    qc_put_be32(p + 4, (uint32_t)v);
}

/* a + b without wrapping; false when it would overflow. */
static inline bool qc_add_ok(uint64_t a, uint64_t b, uint64_t *sum)
{
    return !__builtin_add_overflow(a, b, sum);
}

static inline bool qc_mul_ok(uint64_t a, uint64_t b, uint64_t *product)
{
    return !__builtin_mul_overflow(a, b, product);
}

/* True when [off, off + len) lies inside [0, limit). */
static inline bool qc_range_within(uint64_t off, uint64_t len, uint64_t limit)
{
    return off <= limit && len <= limit - off;
}

static inline uint64_t qc_div_round_up(uint64_t n, uint64_t d)
{
    return n / d + (n % d != 0);
}

/*
 * A read-only cursor over a byte buffer. Reads past the end do not touch
 * memory: they return zero and latch `overrun`, so a decoder can read a
 * whole structure and test once at the end.
 */
typedef struct qc_cursor {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    bool overrun;
} qc_cursor;

static inline qc_cursor qc_cursor_make(const void *buf, size_t len)
{
    qc_cursor c = {(const uint8_t *)buf, len, 0, false};
    return c;
}

/* Pointer to the next n bytes and advance, or NULL (and overrun) if fewer
 * than n remain. */
static inline const uint8_t *qc_cursor_take(qc_cursor *c, size_t n)
{
    if (c->overrun || n > c->len - c->pos) {
        c->overrun = true;
        return NULL;
    }
    const uint8_t *p = c->buf + c->pos;
    c->pos += n;
    return p;
}

static inline uint8_t qc_cursor_u8(qc_cursor *c)
{
    const uint8_t *p = qc_cursor_take(c, 1);
    return p ? p[0] : 0;
}

static inline uint16_t qc_cursor_be16(qc_cursor *c)
{
    const uint8_t *p = qc_cursor_take(c, 2);
    return p ? qc_be16(p) : 0;
}

static inline uint32_t qc_cursor_be32(qc_cursor *c)
{
    const uint8_t *p = qc_cursor_take(c, 4);
    return p ? qc_be32(p) : 0;
}

static inline uint64_t qc_cursor_be64(qc_cursor *c)
{
    const uint8_t *p = qc_cursor_take(c, 8);
    return p ? qc_be64(p) : 0;
}

static inline size_t qc_cursor_remaining(const qc_cursor *c)
{
    return c->overrun ? 0 : c->len - c->pos;
}

#endif
