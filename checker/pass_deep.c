/*
 * The deep pass (docs/passes.md §3.9, codes 520 and 801), with --deep
 * only: reads what the metadata points at. Every compressed cluster of
 * every distinct L2 table is read and decompressed as QEMU would read it;
 * one that does not yield a whole cluster is compressedStreamInvalid, a
 * corruption the plain check cannot see (qemu-img check passes it; reads
 * fail). Then every other cluster holding guest data is read once, in host
 * order and in runs, so that the file's own read errors surface
 * (readFailed). A host cluster the compressed clusters were read from is
 * not read again.
 *
 * Threads: the check's own thread is the only one that reads (qc_io allows
 * one reader at a time) and the only one that reports. It reads compressed
 * clusters into batches, a small pool of worker threads (one per core, at
 * most DEEP_MAX_THREADS, started with the first full batch and joined
 * before the pass ends) decompresses them, and each batch's findings are
 * reported in the order its clusters were read, so the output is the same
 * whatever the threads. Every buffer is charged to the check's accountant
 * before the workers start (they allocate nothing charged; the decoders'
 * own small state is not charged); when the budget does not allow the
 * pool, the check's thread decompresses each batch itself.
 *
 * Needs: the L2 tables of the mapping pass, and the compressed ranges it
 * validated (inside the file, no high bits: others are reported there and
 * skipped here), the computed refcounts. Produces: findings only. Runs
 * after the comparison (no read-ahead is running then).
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "compressed.h"
#include "ctx.h"

/* At most this many decompressing threads, whatever the cores. */
#define DEEP_MAX_THREADS 8
/* A batch of the pool: compressed clusters up to this many bytes (or two
 * clusters, the most one can take) and this many clusters. */
#define DEEP_BATCH_BYTES (1u << 20)
#define DEEP_BATCH_ITEMS 64
/* The pool takes at most this fraction of the memory the check has left
 * (as the read-ahead does). */
#define DEEP_POOL_SHARE 8
/* The workers only run the decoders: a small stack keeps the address
 * space small (an address-space limit could refuse the default 8 MiB). */
#define DEEP_THREAD_STACK (1u << 20)
/* Runs of host clusters holding guest data are read up to this many bytes
 * at a time. */
#define DEEP_READ_BYTES (4u << 20)

/* One compressed cluster: where it comes from, what reading and
 * decompressing it gave. */
typedef struct deep_item {
    uint64_t entry, host_offset;
    size_t table;      /* index in ctx->l2_tables */
    uint32_t index;    /* of the entry in its table */
    uint32_t len, pos; /* bytes read, and where they are in the batch */
    int read_ret, decode_ret;
    const char *reason; /* the decoder's, static */
} deep_item;

typedef struct deep_batch {
    uint8_t *in; /* the compressed bytes of its items */
    deep_item items[DEEP_BATCH_ITEMS];
    uint32_t nb_items, used;
    bool done; /* decompressed (under the pool's lock while threads run) */
} deep_batch;

typedef struct deep_pool deep_pool;

/* What one decompressing thread owns (the check's thread has one too when
 * no thread runs). */
typedef struct deep_worker {
    deep_pool *pool;
    qc_decompressor *decompressor;
    uint8_t *out; /* one cluster, thrown away */
    pthread_t thread;
} deep_worker;

/* Batches are numbered in the order they are filled; number s lives in
 * batches[s % nb_batches]. The check's thread fills batch `filled`, the
 * workers take them in order from `taken`, and the check's thread reports
 * them in order from `delivered`: delivered <= taken <= filled. */
struct deep_pool {
    qc_ctx *ctx;
    unsigned compression_type;
    uint64_t cluster_size;
    uint32_t batch_bytes;
    size_t nb_batches;
    deep_batch *batches;
    deep_worker *workers;
    unsigned nb_workers; /* allocated: at least one */
    unsigned nb_threads; /* started: 0 when the check's thread decompresses */
    bool threads_tried;  /* started (with the first full batch) or could not be */
    uint64_t filled, taken, delivered;
    bool stopping;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
};

static void decompress_batch(deep_pool *p, deep_worker *w, deep_batch *b)
{
    for (uint32_t k = 0; k < b->nb_items; k++) {
        deep_item *it = &b->items[k];
        if (it->read_ret == 0)
            it->decode_ret =
                qc_decompress_cluster(w->decompressor, p->compression_type, b->in + it->pos,
                                      it->len, w->out, p->cluster_size, &it->reason);
    }
}

static void *worker_main(void *opaque)
{
    deep_worker *w = opaque;
    deep_pool *p = w->pool;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stopping && p->taken == p->filled)
            pthread_cond_wait(&p->work, &p->lock);
        if (p->stopping)
            break;
        deep_batch *b = &p->batches[p->taken++ % p->nb_batches];
        pthread_mutex_unlock(&p->lock);
        decompress_batch(p, w, b);
        pthread_mutex_lock(&p->lock);
        b->done = true;
        pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* The cores this process may run on (taskset, a container's CPU set). */
static long usable_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        return CPU_COUNT(&set);
    return sysconf(_SC_NPROCESSORS_ONLN);
}

/* Decompressing threads: the test's choice, else one per core. */
static unsigned wanted_threads(const qc_ctx *ctx)
{
    long cores = ctx->deep_threads ? (long)ctx->deep_threads : usable_cores();
    if (cores < 2)
        return 0; /* the check's own thread is enough */
    return cores > DEEP_MAX_THREADS ? DEEP_MAX_THREADS : (unsigned)cores;
}

static uint64_t pool_bytes(size_t nb_batches, uint64_t batch_bytes, unsigned workers,
                           uint64_t cluster_size)
{
    return nb_batches * (batch_bytes + sizeof(deep_batch)) +
           workers * (cluster_size + sizeof(deep_worker));
}

/* Start up to n workers; none started leaves nothing to undo (the check's
 * thread then decompresses). */
static void start_threads(deep_pool *p, unsigned n)
{
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return;
    bool ok = pthread_attr_setstacksize(&attr, DEEP_THREAD_STACK) == 0 &&
              pthread_mutex_init(&p->lock, NULL) == 0;
    if (ok && pthread_cond_init(&p->work, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        ok = false;
    }
    if (ok && pthread_cond_init(&p->done, NULL) != 0) {
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->lock);
        ok = false;
    }
    while (ok && p->nb_threads < n &&
           pthread_create(&p->workers[p->nb_threads].thread, &attr, worker_main,
                          &p->workers[p->nb_threads]) == 0)
        p->nb_threads++;
    if (ok && !p->nb_threads) {
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->lock);
    }
    pthread_attr_destroy(&attr);
}

static void pool_stop(deep_pool *p)
{
    qc_ctx *ctx = p->ctx;
    if (p->nb_threads) {
        pthread_mutex_lock(&p->lock);
        p->stopping = true;
        pthread_cond_broadcast(&p->work);
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < p->nb_threads; i++)
            pthread_join(p->workers[i].thread, NULL);
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->lock);
        p->nb_threads = 0;
    }
    for (unsigned i = 0; p->workers && i < p->nb_workers; i++) {
        qc_decompressor_free(p->workers[i].decompressor);
        qc_free(ctx, p->workers[i].out, p->cluster_size);
    }
    qc_free(ctx, p->workers, p->nb_workers * sizeof(deep_worker));
    for (size_t i = 0; p->batches && i < p->nb_batches; i++)
        qc_free(ctx, p->batches[i].in, p->batch_bytes);
    qc_free(ctx, p->batches, p->nb_batches * sizeof(deep_batch));
}

/* The pool's buffers, for as many threads as the cores and the budget
 * allow (none: one batch of two clusters, decompressed by the check's
 * thread). False when even that cannot be had (reported). */
static bool pool_start(qc_ctx *ctx, deep_pool *p)
{
    const qc_geometry *g = &ctx->geo;
    *p = (deep_pool){.ctx = ctx,
                     .compression_type = ctx->hdr.compression_type,
                     .cluster_size = g->cluster_size,
                     .batch_bytes = (uint32_t)(2 * g->cluster_size),
                     .nb_batches = 1,
                     .nb_workers = 1};
    unsigned threads = wanted_threads(ctx);
    uint64_t batch_bytes = DEEP_BATCH_BYTES > 2 * g->cluster_size ? DEEP_BATCH_BYTES
                                                                  : 2 * g->cluster_size;
    /* Two batches per thread keep each busy while the check's thread reads
     * the next one and reports the oldest. */
    if (threads && pool_bytes(2 * threads + 1, batch_bytes, threads, g->cluster_size) <=
                       (ctx->mem.limit - ctx->mem.used) / DEEP_POOL_SHARE) {
        p->batch_bytes = (uint32_t)batch_bytes;
        p->nb_batches = 2 * threads + 1;
        p->nb_workers = threads;
    }
    p->batches = qc_alloc(ctx, p->nb_batches * sizeof(deep_batch), "compressed clusters (deep)");
    p->workers = qc_alloc(ctx, p->nb_workers * sizeof(deep_worker), "decompressors (deep)");
    bool ok = p->batches && p->workers;
    for (size_t i = 0; ok && i < p->nb_batches; i++) {
        p->batches[i].in = qc_alloc(ctx, p->batch_bytes, "compressed clusters (deep)");
        ok = p->batches[i].in != NULL;
    }
    for (unsigned i = 0; ok && i < p->nb_workers; i++) {
        deep_worker *w = &p->workers[i];
        w->pool = p;
        w->out = qc_alloc(ctx, g->cluster_size, "decompressed cluster");
        ok = w->out != NULL;
        if (ok && !(w->decompressor = qc_decompressor_new())) {
            qc_memory_refused(ctx, "decompressor", 0, false);
            ok = false;
        }
    }
    if (!ok)
        pool_stop(p);
    return ok;
}

static void report_stream_invalid(qc_ctx *ctx, const deep_item *it)
{
    const qc_geometry *g = &ctx->geo;
    const qc_l2_table *table = &ctx->l2_tables[it->table];
    const qc_l2_ref *ref = &ctx->l2_refs[table->first_ref];
    char obj[240];
    qc_describe_l2_table(&ctx->view, table, obj, sizeof(obj));
    qc_finding_ctx fc = {
        .present = QC_CTX_L1_INDEX | QC_CTX_L2_INDEX | QC_CTX_GUEST_OFFSET | QC_CTX_ENTRY |
                   QC_CTX_HOST_OFFSET | QC_CTX_SIZE | QC_CTX_NAME,
        .l1_index = ref->l1_index,
        .l2_index = it->index,
        .guest_offset = ((uint64_t)ref->l1_index * g->l2_entries + it->index) << g->cluster_bits,
        .entry = it->entry,
        .host_offset = it->host_offset,
        .size = it->len,
        .name = it->reason,
    };
    if (ref->snapshot != QC_ACTIVE) {
        fc.present |= QC_CTX_SNAPSHOT;
        fc.snapshot = ref->snapshot;
    }
    uint64_t at = qc_l2_table_offset(&ctx->view, table);
    qc_report(ctx, QC_P_COMPRESSED_STREAM_INVALID, obj, at + (uint64_t)it->index * g->l2_entry_size,
              1, &fc);
}

/* Report the oldest batch not yet reported (waiting for its workers), and
 * note the host clusters it read, so that the data reads skip them. */
static void deliver_oldest(deep_pool *p, qc_bitset *read)
{
    qc_ctx *ctx = p->ctx;
    deep_batch *b = &p->batches[p->delivered % p->nb_batches];
    if (p->nb_threads) {
        pthread_mutex_lock(&p->lock);
        while (!b->done)
            pthread_cond_wait(&p->done, &p->lock);
        pthread_mutex_unlock(&p->lock);
    }
    for (uint32_t k = 0; k < b->nb_items && !ctx->stop; k++) {
        const deep_item *it = &b->items[k];
        uint64_t first = it->host_offset >> ctx->geo.cluster_bits;
        uint64_t last = (it->host_offset + it->len - 1) >> ctx->geo.cluster_bits;
        for (uint64_t c = first; c <= last && !ctx->stop; c++)
            qc_bitset_set(read, c);
        if (it->read_ret < 0)
            qc_report_read_failed(ctx, "compressed cluster", it->host_offset, it->len,
                                  it->read_ret);
        else if (it->decode_ret == -ENOMEM)
            qc_memory_refused(ctx, "decompressing a cluster", ctx->geo.cluster_size, false);
        else if (it->decode_ret < 0)
            report_stream_invalid(ctx, it);
    }
    b->nb_items = 0;
    b->used = 0;
    b->done = false;
    p->delivered++;
}

/* Hand the batch being filled to the workers (or decompress it here), and
 * report batches until one is free to fill. The workers start with the
 * first full batch: an image with fewer compressed clusters than that
 * (and every small one) is decompressed on the check's thread. */
static void submit(deep_pool *p, qc_bitset *read, bool full)
{
    deep_batch *b = &p->batches[p->filled % p->nb_batches];
    if (full && !p->threads_tried && p->nb_workers > 1) {
        p->threads_tried = true;
        start_threads(p, p->nb_workers);
    }
    if (!p->nb_threads) {
        decompress_batch(p, &p->workers[0], b);
        b->done = true;
        p->filled++;
    } else {
        pthread_mutex_lock(&p->lock);
        p->filled++;
        pthread_cond_signal(&p->work);
        pthread_mutex_unlock(&p->lock);
    }
    while (p->filled - p->delivered >= p->nb_batches)
        deliver_oldest(p, read);
}

/* Submit what is being filled and report everything submitted. */
static void drain(deep_pool *p, qc_bitset *read)
{
    if (p->batches[p->filled % p->nb_batches].nb_items)
        submit(p, read, false);
    while (p->delivered < p->filled)
        deliver_oldest(p, read);
}

/* Entry `index` of table `t`, holding compressed descriptor `entry`: read
 * its bytes into the batch being filled. */
static void add_compressed(deep_pool *p, qc_bitset *read, size_t t, uint32_t index,
                           uint64_t entry)
{
    qc_ctx *ctx = p->ctx;
    qc_compressed c;
    qc_compressed_decode(&ctx->geo, entry, &c);
    uint64_t len = c.length;
    if (c.high_bits || !qc_range_within(c.host_offset, 1, ctx->file_size))
        return; /* compressedRangeInvalid, reported by the mapping walk */
    /* QEMU reads what is there of a descriptor that ends past the file. */
    if (len > ctx->file_size - c.host_offset)
        len = ctx->file_size - c.host_offset;
    if (len > 2 * p->cluster_size)
        len = 2 * p->cluster_size;
    deep_batch *b = &p->batches[p->filled % p->nb_batches];
    if (b->nb_items == DEEP_BATCH_ITEMS || len > p->batch_bytes - b->used) {
        submit(p, read, true);
        b = &p->batches[p->filled % p->nb_batches];
    }
    deep_item *it = &b->items[b->nb_items++];
    *it = (deep_item){.entry = entry,
                      .host_offset = c.host_offset,
                      .table = t,
                      .index = index,
                      .len = (uint32_t)len,
                      .pos = b->used};
    it->read_ret = qc_read_quiet(ctx, c.host_offset, b->in + b->used, (size_t)len);
    b->used += (uint32_t)len;
}

/* Every compressed cluster of every followed L2 table, decompressed; the
 * host clusters read are added to `read`. */
static void verify_compressed(qc_ctx *ctx, qc_bitset *read)
{
    const qc_geometry *g = &ctx->geo;
    uint8_t *table = qc_alloc(ctx, g->cluster_size, "L2 table (deep)");
    deep_pool p;
    if (!table || !pool_start(ctx, &p)) {
        qc_free(ctx, table, g->cluster_size);
        return;
    }
    for (size_t t = 0; t < ctx->nb_l2_tables && !ctx->stop; t++) {
        uint64_t at = qc_l2_table_offset(&ctx->view, &ctx->l2_tables[t]);
        if (qc_extent_conflicted(&ctx->view, QC_OWN_L2, at))
            continue;
        int ret = qc_read_quiet(ctx, at, table, g->cluster_size);
        if (ret < 0) {
            /* After the findings of the clusters before it. */
            drain(&p, read);
            if (!ctx->stop)
                qc_report_read_failed(ctx, "L2 table", at, g->cluster_size, ret);
            continue;
        }
        for (uint32_t i = 0; i < g->l2_entries && !ctx->stop; i++) {
            uint64_t entry = qc_be64(table + (uint64_t)i * g->l2_entry_size);
            if (entry & QC_OFLAG_COMPRESSED)
                add_compressed(&p, read, t, i, entry);
        }
        qc_progress(ctx, QC_PROGRESS_COMPARE, 1000, t, ctx->nb_l2_tables);
    }
    if (!ctx->stop)
        drain(&p, read);
    pool_stop(&p);
    qc_free(ctx, table, g->cluster_size);
}

static void read_run(qc_ctx *ctx, uint8_t *buf, uint64_t first, uint64_t count)
{
    uint64_t off = first << ctx->geo.cluster_bits, len = count << ctx->geo.cluster_bits;
    if (off + len > ctx->file_size) /* the last cluster of the file may be short */
        len = ctx->file_size - off;
    int ret = qc_read_quiet(ctx, off, buf, (size_t)len);
    if (ret < 0)
        qc_report_read_failed(ctx, count == 1 ? "data cluster" : "data clusters", off, (size_t)len,
                              ret);
}

/* Every host cluster the computed refcounts count as guest data (counted
 * and not owned by metadata) and not in `read`, once, in host order, in
 * runs as long as DEEP_READ_BYTES and the budget allow (at least one
 * cluster). */
static void read_data_clusters(qc_ctx *ctx, const qc_bitset *read)
{
    const qc_refmap *map = &ctx->refmap;
    uint64_t per_read = DEEP_READ_BYTES >> ctx->geo.cluster_bits;
    uint64_t affordable = ((ctx->mem.limit - ctx->mem.used) / DEEP_POOL_SHARE) >>
                          ctx->geo.cluster_bits;
    if (per_read > affordable)
        per_read = affordable;
    if (per_read == 0)
        per_read = 1;
    uint8_t *buf = qc_alloc(ctx, per_read << ctx->geo.cluster_bits, "data clusters (deep)");
    uint64_t first = 0, count = 0, end = ctx->file_clusters;
    for (uint64_t c = qc_refmap_next_page(map, 0, end); buf && c < end && !ctx->stop;
         c = qc_refmap_next_page(map, c + 1, end)) {
        unsigned wl;
        uint64_t cell = qc_refmap_cell(map, c, &wl);
        if (!qc_cell_count(cell, wl) || (qc_cell_flags(cell, wl) & QC_CELL_META) ||
            qc_bitset_test(read, c))
            continue;
        if (count && c == first + count && count < per_read) {
            count++;
            continue;
        }
        if (count)
            read_run(ctx, buf, first, count);
        first = c;
        count = 1;
        qc_progress(ctx, QC_PROGRESS_COMPARE, 1000, c, end);
    }
    if (buf && count && !ctx->stop)
        read_run(ctx, buf, first, count);
    qc_free(ctx, buf, per_read << ctx->geo.cluster_bits);
}

void qc_pass_deep(qc_ctx *ctx)
{
    if (ctx->has_data_file)
        return; /* compressed clusters are not readable there (reported by the walk) */
    qc_bitset read; /* the host clusters the compressed clusters were read from */
    if (!qc_bitset_init(&ctx->mem, &read, ctx->file_clusters))
        return;
    verify_compressed(ctx, &read);
    if (!ctx->stop)
        read_data_clusters(ctx, &read);
    qc_bitset_release(&read);
}
