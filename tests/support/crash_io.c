/*
 * Crash injection for tests: an io that lets a fixed number of writes
 * through and then behaves as if the process had died (every later write
 * and flush fails). With drop_unflushed it also takes back, at that
 * moment, every write not followed by a flush, as a power failure may:
 * the old bytes are put back and the file is cut to its flushed length.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crash_io.h"
#include "planner.h" /* qc_read_zero_filled */

typedef struct unflushed {
    uint64_t offset;
    size_t length;
    uint8_t *old;
} unflushed;

typedef struct crash_io {
    qc_io *inner;
    uint64_t writes_left;
    bool drop_unflushed, dead;
    uint64_t flushed_size;
    unflushed *pending;
    size_t nb_pending, cap_pending;
} crash_io;

static void forget_pending(crash_io *c)
{
    for (size_t i = 0; i < c->nb_pending; i++)
        free(c->pending[i].old);
    c->nb_pending = 0;
}

static void die(crash_io *c)
{
    c->dead = true;
    if (!c->drop_unflushed)
        return;
    for (size_t i = c->nb_pending; i-- > 0;)
        c->inner->write(c->inner->opaque, c->pending[i].offset, c->pending[i].old,
                        c->pending[i].length);
    if (c->inner->truncate && c->inner->size != c->flushed_size &&
        c->inner->truncate(c->inner->opaque, c->flushed_size) == 0)
        c->inner->size = c->flushed_size;
    forget_pending(c);
}

static int crash_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    crash_io *c = opaque;
    return c->inner->read(c->inner->opaque, off, buf, len);
}

/* Before a change of [off, off + len) lets it through: a dead process
 * changes nothing, and one that dies later may lose it unless flushed. */
static int before_change(crash_io *c, uint64_t off, size_t len)
{
    if (!c->dead && c->writes_left == 0)
        die(c);
    if (c->dead)
        return -EIO;
    if (c->drop_unflushed) {
        if (c->nb_pending == c->cap_pending) {
            size_t cap = c->cap_pending ? c->cap_pending * 2 : 16;
            unflushed *p = realloc(c->pending, cap * sizeof(*p));
            if (!p)
                return -ENOMEM;
            c->pending = p;
            c->cap_pending = cap;
        }
        uint8_t *old = malloc(len ? len : 1);
        if (!old || qc_read_zero_filled(c->inner, off, old, len) < 0) {
            free(old);
            return -EIO;
        }
        c->pending[c->nb_pending++] = (unflushed){off, len, old};
    }
    c->writes_left--;
    return 0;
}

static int crash_write(void *opaque, uint64_t off, const void *buf, size_t len)
{
    crash_io *c = opaque;
    int ret = before_change(c, off, len);
    if (ret == 0)
        ret = c->inner->write(c->inner->opaque, off, buf, len);
    if (ret == 0 && off + len > c->inner->size)
        c->inner->size = off + len;
    return ret;
}

static int crash_flush(void *opaque)
{
    crash_io *c = opaque;
    if (c->dead)
        return -EIO;
    int ret = c->inner->flush(c->inner->opaque);
    if (ret == 0) {
        forget_pending(c);
        c->flushed_size = c->inner->size;
    }
    return ret;
}

/* A truncation counts as a write (a lost one brings the tail back). */
static int crash_truncate(void *opaque, uint64_t size)
{
    crash_io *c = opaque;
    uint64_t gone = c->inner->size > size ? c->inner->size - size : 0;
    int ret = before_change(c, size, (size_t)gone);
    if (ret == 0)
        ret = c->inner->truncate(c->inner->opaque, size);
    if (ret == 0)
        c->inner->size = size;
    return ret;
}

static void crash_close(void *opaque)
{
    crash_io *c = opaque;
    forget_pending(c);
    free(c->pending);
    free(c);
}

int qc_io_open_crash(qc_io *io, qc_io *inner, uint64_t writes_allowed, bool drop_unflushed)
{
    memset(io, 0, sizeof(*io));
    if (!inner->write || !inner->flush)
        return -EINVAL;
    crash_io *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (crash_io){inner, writes_allowed, drop_unflushed, false, inner->size, NULL, 0, 0};
    io->read = crash_read;
    io->write = crash_write;
    io->flush = crash_flush;
    io->truncate = inner->truncate ? crash_truncate : NULL;
    io->close = crash_close;
    io->opaque = c;
    io->size = inner->size;
    return 0;
}
