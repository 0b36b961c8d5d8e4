/*
 * The refcounts on disk, walked in cluster order one span at a time: a
 * readable refcount block, a range with no block (refcount 0, as QEMU
 * reads it) or a range whose block or table cannot be trusted. The compare
 * pass and the repair planner both read refcounts through this walk, so
 * they agree on what is on disk.
 */
#include <stdio.h>

#include "ctx.h"

static void visit_range(qc_ctx *ctx, void *state, qc_span_visit visit, uint64_t first,
                        uint64_t end, int kind)
{
    if (first >= end)
        return;
    qc_refcount_span span = {first, end - first, kind, UINT64_MAX, NULL};
    visit(ctx, state, &span);
}

/* The refcount blocks the walk below reads, for the read-ahead thread. */
static bool block_readable(const qc_ctx *ctx, uint64_t i)
{
    return ctx->refblock_state[i] == QC_REFBLOCK_VALID &&
           !qc_extent_conflicted(ctx, QC_OWN_REFBLOCK, ctx->reftable[i]);
}

static uint64_t block_to_read(void *arg, size_t i)
{
    const qc_ctx *ctx = arg;
    return block_readable(ctx, i) ? ctx->reftable[i] : QC_PREFETCH_SKIP;
}

bool qc_each_refcount_span(qc_ctx *ctx, void *state, qc_span_visit visit, bool read_ahead)
{
    const qc_geometry *g = &ctx->geo;
    if (!ctx->reftable_usable) {
        /* No refcount table at all reads as all zero (what QEMU sees); a
         * table we could not read leaves the refcounts unknown. */
        bool missing = ctx->hdr.refcount_table_clusters == 0 || ctx->hdr.refcount_table_offset == 0;
        visit_range(ctx, state, visit, 0, ctx->file_clusters,
                    missing ? QC_SPAN_ZERO : QC_SPAN_UNKNOWN);
        return true;
    }
    /* Without read-ahead (count 0): each block is read when its turn comes. */
    qc_prefetch *blocks = qc_prefetch_start(ctx, read_ahead ? ctx->reftable_entries : 0,
                                            g->cluster_size, block_to_read, ctx);
    if (!blocks)
        return false;
    bool ok = true;
    uint64_t covered = 0;
    for (uint64_t i = 0; i < ctx->reftable_entries && !ctx->stop; i++) {
        uint64_t first = i * g->refblock_entries;
        uint64_t end = first + g->refblock_entries;
        uint64_t clip = end < ctx->file_clusters ? end : ctx->file_clusters;
        covered = end;
        if (ctx->refblock_state[i] == QC_REFBLOCK_NONE) {
            visit_range(ctx, state, visit, first, clip, QC_SPAN_ZERO);
            continue;
        }
        if (!block_readable(ctx, i)) {
            visit_range(ctx, state, visit, first, clip, QC_SPAN_UNKNOWN);
            continue;
        }
        int ret;
        const uint8_t *block = qc_prefetch_get(blocks, i, &ret);
        if (ret < 0) {
            char obj[64];
            snprintf(obj, sizeof(obj), "refcount block %llu", (unsigned long long)i);
            qc_report_read_failed(ctx, obj, ctx->reftable[i], g->cluster_size, ret);
            ok = false;
            continue;
        }
        qc_refcount_span span = {first, g->refblock_entries, QC_SPAN_BLOCK, i, block};
        visit(ctx, state, &span);
    }
    /* Clusters beyond what the refcount table covers have refcount 0. */
    visit_range(ctx, state, visit, covered, ctx->file_clusters, QC_SPAN_ZERO);
    qc_prefetch_stop(blocks);
    return ok;
}
