/*
 * Read-ahead for the long ordered reads of a check (every L2 table, every
 * refcount block): a second thread reads the next items into one half of
 * a double buffer while the pass works through the other, so copying out
 * of the page cache (a large part of the time on a large image) overlaps
 * the pass's own work and the check uses both cores. Items are delivered in order
 * and each is read exactly as a plain read would read it, so results do
 * not depend on the thread. io->read is only ever called by one thread at
 * a time: while a prefetch runs, the pass reads nothing else.
 */
#include <pthread.h>
#include <stdlib.h>

#include "ctx.h"

/* Two halves: the thread fills one while the pass reads the other, and
 * they meet once per half, not once per item (L2 tables of 512-byte
 * clusters are tiny). */
#define HALF_BYTES (512u << 10)
#define MIN_ITEMS 8 /* fewer: not worth a thread */
/* The thread only calls io->read: a small stack keeps its address space
 * small too (an address-space limit would otherwise refuse the default
 * 8 MiB and leave the check without read-ahead). */
#define THREAD_STACK (256u << 10)

typedef struct half {
    uint8_t *bufs; /* per_half items of len bytes */
    int *rets;     /* their read status */
    size_t chunk;  /* which chunk it holds, once ready */
    bool ready;
} half;

struct qc_prefetch {
    qc_ctx *ctx;
    size_t count, len;
    qc_prefetch_offset offset_of;
    void *arg;
    size_t per_half; /* items per chunk; chunk k is items [k * per_half, (k + 1) * per_half) */
    half halves[2];
    size_t reading; /* the chunk the pass reads now (shared, under the lock) */
    size_t have;    /* the chunk the pass last saw ready, +1 (0: none; the pass's own) */
    bool threaded, stopping;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
};

static int read_item(qc_prefetch *p, size_t item, uint8_t *buf)
{
    uint64_t off = p->offset_of(p->arg, item);
    return off == QC_PREFETCH_SKIP ? 0 : qc_read_quiet(p->ctx, off, buf, p->len);
}

static void read_chunk(qc_prefetch *p, size_t chunk, half *h)
{
    size_t first = chunk * p->per_half;
    for (size_t i = 0; i < p->per_half && first + i < p->count; i++)
        h->rets[i] = read_item(p, first + i, h->bufs + i * p->len);
}

static void *reader(void *opaque)
{
    qc_prefetch *p = opaque;
    size_t chunks = (p->count + p->per_half - 1) / p->per_half;
    for (size_t chunk = 0; chunk < chunks; chunk++) {
        half *h = &p->halves[chunk % 2];
        pthread_mutex_lock(&p->lock);
        /* The half is free once the pass has moved past the chunk it held. */
        while (!p->stopping && chunk >= p->reading + 2)
            pthread_cond_wait(&p->changed, &p->lock);
        bool stop = p->stopping;
        pthread_mutex_unlock(&p->lock);
        if (stop)
            break;
        read_chunk(p, chunk, h);
        pthread_mutex_lock(&p->lock);
        h->chunk = chunk;
        h->ready = true;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

/* Start the reading thread; false, with nothing left to undo, when it
 * cannot start (items are then read when asked). */
static bool start_thread(qc_prefetch *p)
{
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return false;
    bool ok = pthread_attr_setstacksize(&attr, THREAD_STACK) == 0 &&
              pthread_mutex_init(&p->lock, NULL) == 0;
    if (ok && pthread_cond_init(&p->changed, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        ok = false;
    }
    if (ok && pthread_create(&p->thread, &attr, reader, p) != 0) {
        pthread_cond_destroy(&p->changed);
        pthread_mutex_destroy(&p->lock);
        ok = false;
    }
    pthread_attr_destroy(&attr);
    return ok;
}

qc_prefetch *qc_prefetch_start(qc_ctx *ctx, size_t count, size_t len, qc_prefetch_offset offset_of,
                               void *arg)
{
    qc_prefetch *p = qc_alloc(ctx, sizeof(*p), "read-ahead");
    if (!p)
        return NULL;
    *p = (qc_prefetch){.ctx = ctx, .count = count, .len = len, .offset_of = offset_of, .arg = arg};
    /* Halves of up to HALF_BYTES, at least eight chunks in all, and never
     * more than an eighth of the memory the check has left. */
    uint64_t budget = (ctx->mem.limit - ctx->mem.used) / 8;
    size_t per_half = len && len < HALF_BYTES ? HALF_BYTES / len : 1;
    if (per_half > count / 8)
        per_half = count / 8 ? count / 8 : 1;
    while (per_half > 1 && 2 * (uint64_t)per_half * len > budget)
        per_half /= 2;
    /* Items skipped cost no read: only those to be read earn a thread
     * (a small image's refcount table is mostly empty entries). */
    size_t to_read = 0;
    for (size_t i = 0; i < count && to_read < MIN_ITEMS; i++)
        to_read += offset_of(arg, i) != QC_PREFETCH_SKIP;
    bool thread = to_read >= MIN_ITEMS && 2 * (uint64_t)len <= budget;
    p->per_half = thread ? per_half : 1;
    for (int i = 0; i < (thread ? 2 : 1); i++) {
        half *h = &p->halves[i];
        h->bufs = qc_alloc(ctx, (uint64_t)p->per_half * len, "read-ahead buffer");
        h->rets = h->bufs ? qc_alloc(ctx, p->per_half * sizeof(int), "read-ahead buffer") : NULL;
        if (!h->rets) {
            qc_prefetch_stop(p);
            return NULL;
        }
    }
    p->threaded = thread && start_thread(p);
    return p;
}

const uint8_t *qc_prefetch_get(qc_prefetch *p, size_t item, int *ret)
{
    if (!p->threaded) {
        /* No thread (too few items, or it could not start): read when asked. */
        *ret = read_item(p, item, p->halves[0].bufs);
        return p->halves[0].bufs;
    }
    size_t chunk = item / p->per_half, at = item % p->per_half;
    half *h = &p->halves[chunk % 2];
    if (p->have != chunk + 1) {
        pthread_mutex_lock(&p->lock);
        if (chunk > p->reading) {
            /* Done with the chunks before: their half may be refilled. */
            p->reading = chunk;
            pthread_cond_broadcast(&p->changed);
        }
        while (!(h->ready && h->chunk == chunk))
            pthread_cond_wait(&p->changed, &p->lock);
        pthread_mutex_unlock(&p->lock);
        p->have = chunk + 1;
    }
    *ret = h->rets[at];
    return h->bufs + at * p->len;
}

void qc_prefetch_stop(qc_prefetch *p)
{
    if (!p)
        return;
    if (p->threaded) {
        pthread_mutex_lock(&p->lock);
        p->stopping = true;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
        pthread_cond_destroy(&p->changed);
        pthread_mutex_destroy(&p->lock);
    }
    for (int i = 0; i < 2; i++) {
        qc_free(p->ctx, p->halves[i].bufs, (uint64_t)p->per_half * p->len);
        qc_free(p->ctx, p->halves[i].rets, p->per_half * sizeof(int));
    }
    qc_free(p->ctx, p, sizeof(*p));
}
