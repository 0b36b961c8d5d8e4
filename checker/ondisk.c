/*
 * The refcounts on disk, walked in cluster order one span at a time: a
 * readable refcount block, a range with no block (refcount 0, as QEMU
 * reads it) or a range whose block or table cannot be trusted. The compare
 * pass and the repair planner both read refcounts through this walk, so
 * they agree on what is on disk; they differ only in how a block is read.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctx.h"

/* Where the walk gets refcount block i: a buffer valid until the next call,
 * or NULL with a negative errno in *ret. */
typedef struct block_source {
    const uint8_t *(*get)(void *arg, uint64_t i, int *ret);
    void *arg;
} block_source;

static void visit_range(const qc_check_view *v, void *state, qc_span_visit visit, uint64_t first,
                        uint64_t end, int kind)
{
    if (first >= end)
        return;
    qc_refcount_span span = {first, end - first, kind, UINT64_MAX, NULL};
    visit(v, state, &span);
}

/* The refcount blocks the walk reads. */
static bool block_readable(const qc_check_view *v, uint64_t i)
{
    return v->refblock_state[i] == QC_REFBLOCK_VALID &&
           !qc_extent_conflicted(v, QC_OWN_REFBLOCK, v->reftable[i]);
}

/* Every span of the file; false when a block could not be had (`failed` is
 * told which, and decides whether the walk goes on). *stop ends it early. */
static bool walk(const qc_check_view *v, const bool *stop, block_source *blocks,
                 bool (*failed)(void *arg, uint64_t i, int err), void *state,
                 qc_span_visit visit)
{
    const qc_geometry *g = &v->geo;
    if (!v->reftable_usable) {
        /* No refcount table at all reads as all zero (what QEMU sees); a
         * table we could not read leaves the refcounts unknown. */
        bool missing = v->hdr.refcount_table_clusters == 0 || v->hdr.refcount_table_offset == 0;
        visit_range(v, state, visit, 0, v->file_clusters, missing ? QC_SPAN_ZERO : QC_SPAN_UNKNOWN);
        return true;
    }
    bool ok = true;
    uint64_t covered = 0;
    for (uint64_t i = 0; i < v->reftable_entries && !(stop && *stop); i++) {
        uint64_t first = i * g->refblock_entries;
        uint64_t end = first + g->refblock_entries;
        uint64_t clip = end < v->file_clusters ? end : v->file_clusters;
        covered = end;
        if (v->refblock_state[i] == QC_REFBLOCK_NONE) {
            visit_range(v, state, visit, first, clip, QC_SPAN_ZERO);
            continue;
        }
        if (!block_readable(v, i)) {
            visit_range(v, state, visit, first, clip, QC_SPAN_UNKNOWN);
            continue;
        }
        int ret;
        const uint8_t *block = blocks->get(blocks->arg, i, &ret);
        if (!block) {
            ok = false;
            if (!failed(blocks->arg, i, ret))
                return false;
            continue;
        }
        qc_refcount_span span = {first, g->refblock_entries, QC_SPAN_BLOCK, i, block};
        visit(v, state, &span);
    }
    /* Clusters beyond what the refcount table covers have refcount 0. */
    visit_range(v, state, visit, covered, v->file_clusters, QC_SPAN_ZERO);
    return ok;
}

/* ---- the check's walk: read ahead, failures reported ---- */

typedef struct check_blocks {
    qc_ctx *ctx;
    qc_prefetch *prefetch;
} check_blocks;

static uint64_t block_to_read(void *arg, size_t i)
{
    const qc_ctx *ctx = arg;
    return block_readable(&ctx->view, i) ? ctx->reftable[i] : QC_PREFETCH_SKIP;
}

static const uint8_t *prefetched_block(void *arg, uint64_t i, int *ret)
{
    check_blocks *b = arg;
    const uint8_t *block = qc_prefetch_get(b->prefetch, i, ret);
    return *ret < 0 ? NULL : block;
}

/* A block the check could not read is a finding; the walk goes on. */
static bool report_unreadable(void *arg, uint64_t i, int err)
{
    check_blocks *b = arg;
    char obj[64];
    snprintf(obj, sizeof(obj), "refcount block %llu", (unsigned long long)i);
    qc_report_read_failed(b->ctx, obj, b->ctx->reftable[i], b->ctx->geo.cluster_size, err);
    return true;
}

bool qc_each_refcount_span(qc_ctx *ctx, void *state, qc_span_visit visit)
{
    uint64_t count = ctx->reftable_usable ? ctx->reftable_entries : 0;
    check_blocks b = {ctx, qc_prefetch_start(ctx, count, ctx->geo.cluster_size, block_to_read, ctx)};
    if (!b.prefetch)
        return false;
    block_source source = {prefetched_block, &b};
    bool ok = walk(&ctx->view, &ctx->stop, &source, report_unreadable, state, visit);
    qc_prefetch_stop(b.prefetch);
    return ok;
}

/* ---- a repair's walk: each block read from the view's io ---- */

typedef struct io_blocks {
    const qc_check_view *v;
    qc_io *io;
    uint8_t *buf;
} io_blocks;

static const uint8_t *read_block(void *arg, uint64_t i, int *ret)
{
    io_blocks *b = arg;
    uint64_t off = b->v->reftable[i], len = b->v->geo.cluster_size;
    *ret = qc_range_within(off, len, b->v->file_size)
               ? b->io->read(b->io->opaque, off, b->buf, (size_t)len)
               : -EIO;
    return *ret < 0 ? NULL : b->buf;
}

/* The repair's walk goes on past a block it cannot read (the spans after
 * it are still right), and says so when it ends. */
static bool skip_unreadable(void *arg, uint64_t i, int err)
{
    (void)arg, (void)i, (void)err;
    return true;
}

bool qc_view_each_refcount_span(const qc_check_view *v, qc_io *io, void *state,
                                qc_span_visit visit)
{
    io_blocks b = {v, io, malloc(v->geo.cluster_size)};
    if (!b.buf)
        return false;
    block_source source = {read_block, &b};
    bool ok = walk(v, NULL, &source, skip_unreadable, state, visit);
    free(b.buf);
    return ok;
}
