/*
 * The refcount table (docs/passes.md §3.3; codes 601-603, the entries of
 * the refcount area, whose other codes the compare pass reports).
 *
 * Checks: every refcount table entry (reserved bits, alignment, inside the
 * file). Refcount block contents are compared in the compare pass.
 * Needs: the header pass (reftable_usable).
 * Produces: ctx->reftable[] (refcount block offset per entry),
 * ctx->refblock_state[] (none, valid or invalid), the refcount table and
 * refcount block extents.
 */
#include <stdio.h>

#include "ctx.h"

void qc_pass_reftable(qc_ctx *ctx)
{
    const qc_header *h = &ctx->hdr;
    if (!ctx->reftable_usable)
        return;
    uint64_t bytes = (uint64_t)h->refcount_table_clusters << ctx->geo.cluster_bits;
    qc_add_extent(ctx, QC_OWN_REFTABLE, 0, 0, h->refcount_table_offset, bytes, 1);
    uint8_t *raw = qc_alloc(ctx, bytes, "refcount table");
    ctx->reftable_entries = bytes / 8;
    ctx->reftable = qc_alloc(ctx, ctx->reftable_entries * 8, "refcount table");
    ctx->refblock_state = qc_alloc(ctx, ctx->reftable_entries, "refcount table");
    if (!raw || !ctx->reftable || !ctx->refblock_state ||
        !qc_read(ctx, h->refcount_table_offset, raw, bytes, "refcount table")) {
        ctx->reftable_usable = false;
        qc_free(ctx, raw, bytes);
        return;
    }
    for (uint64_t i = 0; i < ctx->reftable_entries; i++) {
        uint64_t e = qc_be64(raw + i * 8);
        uint64_t off = e & QC_REFTABLE_OFFSET_MASK;
        uint64_t at = h->refcount_table_offset + i * 8;
        char obj[64];
        snprintf(obj, sizeof(obj), "refcount table entry %llu", (unsigned long long)i);
        ctx->reftable[i] = off;
        if (e == 0)
            continue;
        qc_finding_ctx fc = {.present = QC_CTX_INDEX | QC_CTX_ENTRY | QC_CTX_HOST_OFFSET,
                             .index = i,
                             .entry = e,
                             .host_offset = off};
        if (e & QC_REFTABLE_RESERVED_MASK) {
            qc_report(ctx, QC_P_REFTABLE_ENTRY_RESERVED_BITS, obj, at, 1, &fc);
        } else if (!qc_cluster_aligned(&ctx->view, off)) {
            qc_report(ctx, QC_P_REFTABLE_ENTRY_UNALIGNED, obj, at, 1, &fc);
        } else if (!qc_range_within(off, ctx->geo.cluster_size, ctx->file_size)) {
            fc.present |= QC_CTX_FILE_SIZE;
            fc.file_size = ctx->file_size;
            qc_report(ctx, QC_P_REFTABLE_ENTRY_PAST_EOF, obj, at, 1, &fc);
            qc_claim_past_eof(ctx, off, ctx->geo.cluster_size, true);
        } else {
            ctx->refblock_state[i] = QC_REFBLOCK_VALID;
            qc_add_extent(ctx, QC_OWN_REFBLOCK, (uint32_t)i, 0, off, ctx->geo.cluster_size, 1);
            continue;
        }
        ctx->refblock_state[i] = QC_REFBLOCK_INVALID;
        ctx->unfollowed++;
        ctx->unfollowed_refblocks++;
    }
    qc_free(ctx, raw, bytes);
}
