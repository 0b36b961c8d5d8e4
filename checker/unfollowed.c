/*
 * Pointers that were reported and not followed, and the orphan policy: a
 * cluster whose on-disk refcount exceeds the references found is an orphan
 * rather than a leak when such a pointer may own it, and a repair keeps its
 * refcount while that may still be so (see unfollowed.h).
 */
#include <stddef.h>
#include <stdlib.h>

#include "ctx.h"

void qc_unfollowed_leaf(qc_ctx *ctx, uint64_t host_offset)
{
    uint64_t cluster = host_offset >> ctx->geo.cluster_bits;
    if (cluster < ctx->file_clusters) {
        qc_bitset_set(&ctx->unfollowed_targets, cluster);
    } else {
        ctx->unfollowed++;
        qc_claim_past_eof(ctx, host_offset, ctx->geo.cluster_size, false);
    }
}

void qc_claim_past_eof(qc_ctx *ctx, uint64_t start, uint64_t length, bool refcount_structure)
{
    uint64_t end;
    if (!qc_add_ok(start, length, &end))
        end = UINT64_MAX;
    uint64_t *highest = refcount_structure ? &ctx->past_eof_end_refcounts : &ctx->past_eof_end;
    if (end > *highest)
        *highest = end;
    qc_note_past_eof(ctx, start, length);
}

void qc_note_past_eof(qc_ctx *ctx, uint64_t start, uint64_t length)
{
    if (!length)
        return;
    uint64_t end, cs = ctx->geo.cluster_size;
    if (qc_add_ok(start, length, &end) && end > ctx->file_size && end - ctx->file_size < cs) {
        uint64_t last = qc_div_round_up(end, cs) * cs;
        if (!ctx->short_past_eof_end || start < ctx->short_past_eof_start)
            ctx->short_past_eof_start = start;
        if (last > ctx->short_past_eof_end)
            ctx->short_past_eof_end = last;
    }
    uint64_t last_byte;
    if (!qc_add_ok(start, length - 1, &last_byte))
        last_byte = UINT64_MAX;
    qc_cluster_run run = {start >> ctx->geo.cluster_bits, (last_byte >> ctx->geo.cluster_bits) + 1};
    if (run.end == 0) /* the last cluster of the 64-bit space */
        run.end = UINT64_MAX;
    if (run.end > ctx->past_eof_claims_end)
        ctx->past_eof_claims_end = run.end;
    ctx->past_eof_claims_sorted = false;
    if (ctx->past_eof_claims_lost)
        return;
    /* Claims mostly come in order (an L2 table's data clusters): extend
     * the last run when this one touches it. */
    qc_cluster_run *last =
        ctx->nb_past_eof_claims ? &ctx->past_eof_claims[ctx->nb_past_eof_claims - 1] : NULL;
    if (last && run.first <= last->end && run.end >= last->first) {
        last->first = run.first < last->first ? run.first : last->first;
        last->end = run.end > last->end ? run.end : last->end;
        return;
    }
    qc_cluster_run *grown = NULL;
    if (ctx->nb_past_eof_claims < QC_MAX_PAST_EOF_CLAIMS)
        grown = qc_grow(ctx, ctx->past_eof_claims, &ctx->cap_past_eof_claims, sizeof(run),
                        ctx->nb_past_eof_claims + 1, "clusters claimed past the end of the file");
    if (!grown) {
        ctx->past_eof_claims_lost = true;
        return;
    }
    ctx->past_eof_claims = grown;
    ctx->past_eof_claims[ctx->nb_past_eof_claims++] = run;
}

static int compare_runs(const void *a, const void *b)
{
    const qc_cluster_run *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

void qc_past_eof_claims_finish(qc_ctx *ctx)
{
    if (ctx->nb_past_eof_claims)
        qsort(ctx->past_eof_claims, ctx->nb_past_eof_claims, sizeof(qc_cluster_run), compare_runs);
    size_t n = 0;
    for (size_t i = 0; i < ctx->nb_past_eof_claims; i++) {
        qc_cluster_run run = ctx->past_eof_claims[i];
        if (n && run.first <= ctx->past_eof_claims[n - 1].end) {
            if (run.end > ctx->past_eof_claims[n - 1].end)
                ctx->past_eof_claims[n - 1].end = run.end;
        } else {
            ctx->past_eof_claims[n++] = run;
        }
    }
    ctx->nb_past_eof_claims = n;
    ctx->past_eof_claims_sorted = true;
}

bool qc_claimed_past_eof(const qc_check_view *v, uint64_t cluster)
{
    if (cluster >= v->past_eof_claims_end)
        return false;
    if (v->past_eof_claims_lost || !v->past_eof_claims_sorted)
        return true;
    size_t i = qc_lower_bound(v->past_eof_claims, v->nb_past_eof_claims,
                              sizeof(qc_cluster_run), offsetof(qc_cluster_run, first), cluster + 1);
    return i > 0 && cluster < v->past_eof_claims[i - 1].end;
}

void qc_unfollowed_bitmap_leaf(qc_ctx *ctx, uint64_t host_offset)
{
    uint64_t cluster = host_offset >> ctx->geo.cluster_bits;
    if (cluster < ctx->file_clusters) {
        qc_bitset_set(&ctx->unfollowed_targets, cluster);
        qc_bitset_set(&ctx->bitmap_unfollowed_targets, cluster);
    } else {
        ctx->unfollowed++;
        ctx->unfollowed_bitmaps++;
        qc_note_past_eof(ctx, host_offset, ctx->geo.cluster_size);
    }
}

bool qc_orphan_binds(const qc_check_view *v, bool rebuilds_refcounts, bool drops_bitmaps,
                     uint64_t cluster)
{
    if (!qc_bitset_test(&v->orphans, cluster))
        return false;
    uint64_t others = v->unfollowed - (rebuilds_refcounts ? v->unfollowed_refblocks : 0) -
                      (drops_bitmaps ? v->unfollowed_bitmaps : 0);
    return others > 0 || (qc_bitset_test(&v->unfollowed_targets, cluster) &&
                          !(drops_bitmaps && qc_bitset_test(&v->bitmap_unfollowed_targets, cluster)));
}
