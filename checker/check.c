/*
 * qc_check(): runs the passes in order over one context, builds the host
 * map when the options ask for one, and turns the result into qemu-img
 * check's exit status. The repair planner runs the
 * same passes through qc_ctx_run() and reads the context before release.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

/* Allocate the per-cluster maps once the file's cluster count is known. */
static bool init_maps(qc_ctx *ctx)
{
    return qc_refmap_init(&ctx->mem, &ctx->refmap, ctx->file_clusters) &&
           qc_bitset_init(&ctx->mem, &ctx->unfollowed_targets, ctx->file_clusters) &&
           qc_bitset_init(&ctx->mem, &ctx->bitmap_unfollowed_targets, ctx->file_clusters) &&
           qc_bitset_init(&ctx->mem, &ctx->orphans, ctx->file_clusters) &&
           qc_bitset_init(&ctx->mem, &ctx->refcount_above_refs, ctx->file_clusters) &&
           qc_map_begin(ctx, ctx->file_clusters, ctx->geo.cluster_bits);
}

void qc_ctx_release(qc_ctx *ctx)
{
    /* Sizes are only needed for accounting, which ends here. */
    free(ctx->cluster0);
    free(ctx->feature_names);
    free(ctx->snap_table_buf);
    free(ctx->snapshots);
    free(ctx->reftable);
    free(ctx->refblock_state);
    free(ctx->extents);
    free(ctx->past_eof_claims);
    qc_refmap_release(&ctx->refmap);
    qc_bitset_release(&ctx->unfollowed_targets);
    qc_bitset_release(&ctx->orphans);
    qc_bitset_release(&ctx->bitmap_unfollowed_targets);
    qc_bitset_release(&ctx->refcount_above_refs);
    qc_map_release(ctx);
    free(ctx->l2_refs);
    free(ctx->l2_tables);
    free(ctx->qed.items);
    free(ctx->qed.leaks);
    free(ctx->qed.map_class);
}

bool qc_options_load(qc_options *dst, const qc_options *src)
{
    memset(dst, 0, sizeof(*dst));
    if (!src)
        return true;
    /* A caller built with fewer fields passes a smaller size: the rest
     * stay zero. */
    if (src->size < offsetof(qc_options, max_mem))
        return false;
    memcpy(dst, src, src->size < sizeof(*dst) ? src->size : sizeof(*dst));
    dst->size = sizeof(*dst);
    return true;
}

void qc_ctx_begin(qc_ctx *ctx, qc_io *io, const qc_options *opts, qc_result *result)
{
    memset(result, 0, sizeof(*result));
    ctx->io = io;
    if (!qc_options_load(&ctx->options, opts))
        memset(&ctx->options, 0, sizeof(ctx->options));
    ctx->res = result;
    ctx->file_size = io->size;
    ctx->mem = (qc_mem){.limit = ctx->options.max_mem ? ctx->options.max_mem : QC_DEFAULT_MAX_MEM,
                        .stopped = &ctx->stop,
                        .refused = qc_memory_refused,
                        .owner = ctx};
}

void qc_ctx_run(qc_ctx *ctx, qc_io *io, const qc_options *opts, qc_result *result)
{
    qc_ctx_begin(ctx, io, opts, result);
    qc_pass_header(ctx);
    if (!ctx->stop && init_maps(ctx)) {
        /* Cluster 0 always belongs to the header; the LUKS header region
         * is metadata too. */
        qc_add_extent(ctx, QC_OWN_HEADER, 0, 0, 0, ctx->cluster0_len, 1);
        if (ctx->crypto_length)
            qc_add_extent(ctx, QC_OWN_CRYPTO_HEADER, 0, 0, ctx->crypto_offset, ctx->crypto_length, 1);
        void (*const passes[])(qc_ctx *) = {qc_pass_snapshots, qc_pass_reftable, qc_pass_bitmaps,
                                            qc_pass_mapping_collect};
        /* Progress: the passes before the walk take the first tenth, the
         * L2 walk the next seven, the comparison the rest. */
        size_t nb_passes = sizeof(passes) / sizeof(passes[0]);
        for (size_t i = 0; i < nb_passes && !ctx->stop; i++) {
            passes[i](ctx);
            qc_progress(ctx, 0, QC_PROGRESS_WALK, i + 1, nb_passes);
        }
        if (!ctx->stop && qc_extents_finish(ctx)) {
            qc_pass_mapping_walk(ctx);
            qc_past_eof_claims_finish(ctx);
            if (!ctx->stop) {
                qc_pass_compare(ctx);
                ctx->compared = !ctx->stop;
            }
            if (!ctx->stop && ctx->options.deep)
                qc_pass_deep(ctx);
        }
    }
    qc_report_flush(ctx);
    if (!ctx->stop)
        qc_progress(ctx, 0, 1000, 1, 1);
}

int qc_check(qc_io *io, const qc_options *opts, qc_result *result)
{
    if (!io || !io->read || !result || (opts && opts->size < offsetof(qc_options, max_mem)))
        return -EINVAL;
    qc_ctx ctx = {0};
    qc_result_drop_map(result); /* a result from qc_result_new, or one checked before */
    qc_ctx_run(&ctx, io, opts, result);
    /* Only here, not in qc_ctx_run: a repair's checks have no map. */
    qc_map_build(&ctx);
    qc_ctx_release(&ctx);
    return 0;
}

int qc_exit_status(const qc_result *r)
{
    return r->other_format ? 63 : qc_status_of(r->check_errors, r->corruptions, r->leaks);
}
