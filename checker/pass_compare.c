/*
 * Compare computed refcounts with the refcounts on disk, and judge COPIED
 * flags against the computed refcounts (docs/passes.md §3.8; codes 604-611,
 * and 516-517 for COPIED).
 *
 * Checks, per host cluster: leaks (higher on disk), refcounts too low or
 * zero for clusters in use, refcount overflow for narrow widths (also where
 * the refcount block cannot be read: the references alone overflow),
 * non-zero refcounts past the end of the file of clusters no pointer claims
 * there (QEMU counts those as in use), clusters whose refcount cannot be
 * read. Refcounts above the references found are reported as orphans
 * instead of leaks when some structure was not followed or the cluster is
 * what a broken pointer most likely meant (the difference may be theirs).
 * Then COPIED in the active L1 and L2 tables. Consecutive clusters with the
 * same finding are reported as one range, counted per cluster as qemu-img
 * does.
 * Needs: every earlier pass (the computed refcount map is complete).
 * Produces: leak/corruption counts, image end offset.
 */
#include <stdio.h>

#include "ctx.h"

typedef struct run {
    qc_problem_id id;
    uint64_t start, len;
    uint64_t ondisk, computed; /* of the first cluster */
    bool uniform;
    bool active;
} run;

static void run_flush(qc_ctx *ctx, run *r)
{
    if (!r->active)
        return;
    char obj[96];
    if (r->len == 1)
        snprintf(obj, sizeof(obj), "host cluster %llu", (unsigned long long)r->start);
    else
        snprintf(obj, sizeof(obj), "host clusters %llu-%llu", (unsigned long long)r->start,
                 (unsigned long long)(r->start + r->len - 1));
    /* The figures are the first cluster's; variant 1 says so when the
     * run's clusters differ. */
    qc_finding_ctx fc = {.present = QC_CTX_CLUSTER | QC_CTX_CLUSTERS | QC_CTX_REFERENCES,
                         .variant = r->uniform || r->len == 1 ? 0 : 1,
                         .cluster = r->start,
                         .clusters = r->len,
                         .references = r->computed};
    switch (r->id) {
    case QC_P_REFCOUNTS_UNKNOWN: /* no refcount on disk to give */
        break;
    case QC_P_REFCOUNT_OVERFLOW:
        fc.present |= QC_CTX_VALUE | QC_CTX_EXPECTED;
        fc.value = ctx->geo.refcount_bits;
        fc.expected = ctx->geo.refcount_max;
        break;
    case QC_P_L2_COPIED_WRONG: /* the run's "on disk" figure is the COPIED flag */
        fc.present |= QC_CTX_VALUE;
        fc.value = r->ondisk;
        break;
    default:
        fc.present |= QC_CTX_REFCOUNT;
        fc.refcount = r->ondisk;
        break;
    }
    qc_report(ctx, r->id, obj, r->start << ctx->geo.cluster_bits, r->len, &fc);
    r->active = false;
}

static void run_add(qc_ctx *ctx, run *r, qc_problem_id id, uint64_t cluster, uint64_t ondisk,
                    uint64_t computed)
{
    if (r->active && r->id == id && r->start + r->len == cluster) {
        r->len++;
        r->uniform = r->uniform && r->ondisk == ondisk && r->computed == computed;
        return;
    }
    run_flush(ctx, r);
    *r = (run){id, cluster, 1, ondisk, computed, true, true};
}

typedef struct compare_state {
    qc_ctx *ctx;
    run run;
    uint64_t last_used; /* highest cluster with a non-zero refcount, +1 */
} compare_state;

static void compare_cluster(qc_ctx *ctx, compare_state *st, uint64_t c, uint64_t ondisk)
{
    uint64_t computed = qc_refmap_get(&ctx->refmap, c);
    if (ondisk || computed)
        st->last_used = c + 1;
    if (computed > ctx->geo.refcount_max) {
        run_add(ctx, &st->run, QC_P_REFCOUNT_OVERFLOW, c, ondisk, computed);
        computed = ctx->geo.refcount_max;
    }
    if (ondisk == computed)
        return;
    qc_problem_id id;
    if (ondisk > computed)
        qc_bitset_set(&ctx->refcount_above_refs, c);
    if (ondisk > computed && (ctx->unfollowed || qc_bitset_test(&ctx->unfollowed_targets, c))) {
        id = QC_P_REFCOUNT_ORPHAN;
        qc_bitset_set(&ctx->orphans, c);
    } else if (ondisk > computed) {
        id = QC_P_REFCOUNT_LEAK;
    } else {
        id = ondisk == 0 ? QC_P_REFCOUNT_ZERO_IN_USE : QC_P_REFCOUNT_TOO_LOW;
    }
    run_add(ctx, &st->run, id, c, ondisk, computed);
}

static void compare_span(const qc_check_view *v, void *state, const qc_refcount_span *span)
{
    (void)v; /* the check's own context is in the state */
    compare_state *st = state;
    qc_ctx *ctx = st->ctx;
    uint64_t end = span->first + span->count;
    qc_progress(ctx, QC_PROGRESS_COMPARE, 1000, span->first, ctx->file_clusters);
    /* Where the on-disk refcounts are not read from a block, only clusters
     * with references can differ: skip the pages that have none. */
    const qc_refmap *map = &ctx->refmap;
    if (span->kind == QC_SPAN_UNKNOWN) {
        for (uint64_t c = qc_refmap_next_page(map, span->first, end); c < end;
             c = qc_refmap_next_page(map, c + 1, end)) {
            uint64_t computed = qc_refmap_get(&ctx->refmap, c);
            if (!computed)
                continue;
            st->last_used = c + 1;
            /* More references than a refcount can hold, whatever the
             * unreadable block says (QEMU reports it too). */
            if (computed > ctx->geo.refcount_max)
                run_add(ctx, &st->run, QC_P_REFCOUNT_OVERFLOW, c, 0, computed);
            run_add(ctx, &st->run, QC_P_REFCOUNTS_UNKNOWN, c, 0, computed);
        }
        return;
    }
    if (span->kind == QC_SPAN_ZERO) {
        for (uint64_t c = qc_refmap_next_page(map, span->first, end); c < end;
             c = qc_refmap_next_page(map, c + 1, end))
            compare_cluster(ctx, st, c, 0);
        return;
    }
    const unsigned bits = ctx->geo.refcount_bits;
    const uint8_t *block = span->block;
    uint64_t in_file = end < ctx->file_clusters ? end : ctx->file_clusters;
    for (uint64_t c = span->first; c < in_file;) {
        /* Equal counts are the rule: decide those here, one map page at a
         * time, with the default 16-bit refcounts and one-byte cells
         * decoded inline. */
        uint64_t page_end = ((c >> QC_PAGE_SHIFT) + 1) << QC_PAGE_SHIFT;
        uint64_t stop = page_end < in_file ? page_end : in_file;
        const uint8_t *cells = map->pages[c >> QC_PAGE_SHIFT];
        bool narrow = bits == 16 && cells && map->width_log[c >> QC_PAGE_SHIFT] == 0;
        for (; c < stop; c++) {
            uint64_t j = c - span->first, ondisk, computed;
            if (narrow) {
                ondisk = qc_be16(block + 2 * j);
                computed = cells[c & (QC_PAGE_CLUSTERS - 1)] & 31u;
            } else {
                ondisk = qc_refblock_get(block, bits, j);
                computed = qc_refmap_get(map, c);
            }
            if (ondisk == computed) {
                if (ondisk)
                    st->last_used = c + 1;
                continue;
            }
            compare_cluster(ctx, st, c, ondisk);
        }
    }
    uint64_t past_eof = 0, past_first = 0;
    for (uint64_t c = in_file > span->first ? in_file : span->first; c < end; c++)
        if (qc_refblock_get(block, bits, c - span->first) && !qc_claimed_past_eof(&ctx->view, c) &&
            !past_eof++)
            past_first = c;
    if (past_eof) {
        char obj[64];
        snprintf(obj, sizeof(obj), "refcount block %llu", (unsigned long long)span->index);
        qc_report(ctx, QC_P_REFCOUNT_PAST_EOF, obj, ctx->reftable[span->index], past_eof,
                  &(qc_finding_ctx){.present = QC_CTX_CLUSTERS | QC_CTX_CLUSTER | QC_CTX_INDEX |
                                               QC_CTX_EXPECTED,
                                    .clusters = past_eof,
                                    .cluster = past_first,
                                    .index = span->index,
                                    .expected = ctx->file_clusters});
    }
}

static void check_copied(qc_ctx *ctx)
{
    /* L1 entries of the active table: COPIED iff the L2 table's refcount is 1. */
    for (size_t i = 0; i < ctx->nb_l2_refs; i++) {
        const qc_l2_ref *r = &ctx->l2_refs[i];
        if (r->snapshot != QC_ACTIVE)
            continue;
        uint64_t computed = qc_refmap_get(&ctx->refmap, r->l2_offset >> ctx->geo.cluster_bits);
        if (r->copied == (computed == 1))
            continue;
        /* The other reference may be a skipped snapshot's, and with a
         * higher refcount on disk QEMU wants COPIED clear (see below). */
        if (!r->copied && (ctx->unfollowed ||
                           qc_bitset_test(&ctx->refcount_above_refs, r->l2_offset >> ctx->geo.cluster_bits)))
            continue;
        qc_report(ctx, QC_P_L1_COPIED_WRONG, "active L1 table",
                  ctx->hdr.l1_table_offset + (uint64_t)r->l1_index * 8, 1,
                  &(qc_finding_ctx){.present = QC_CTX_L1_INDEX | QC_CTX_VALUE | QC_CTX_HOST_OFFSET |
                                               QC_CTX_REFERENCES,
                                    .l1_index = r->l1_index,
                                    .value = r->copied,
                                    .host_offset = r->l2_offset,
                                    .references = computed});
    }
    /* Data clusters of the active tree, from the flags the walk recorded. */
    run r = {0};
    const qc_refmap *map = &ctx->refmap;
    for (uint64_t p = 0; p < map->nb_pages; p++) {
        const void *page = map->pages[p];
        if (!page)
            continue;
        unsigned wl = map->width_log[p], bits = qc_cell_count_bits(wl);
        uint64_t first = p << QC_PAGE_SHIFT;
        uint64_t n = map->clusters - first < QC_PAGE_CLUSTERS ? map->clusters - first
                                                              : QC_PAGE_CLUSTERS;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t cell = qc_cell_load(page, wl, i), c = first + i;
            unsigned flags = qc_cell_flags(cell, wl);
            /* Most cells: not active data, or COPIED set with one reference. */
            if (!(flags & (QC_CELL_COPIED | QC_CELL_NOT_COPIED)) ||
                ((cell & ~((uint64_t)QC_CELL_META << bits)) ==
                 (1 | (uint64_t)QC_CELL_COPIED << bits)))
                continue;
            uint64_t computed = qc_cell_count(cell, wl);
            if ((flags & QC_CELL_COPIED) && computed != 1)
                run_add(ctx, &r, QC_P_L2_COPIED_WRONG, c, 1, computed);
            /* COPIED clear with one reference only costs a needless copy on
             * write, the missing reference may belong to a structure that
             * was not followed, and with a higher refcount on disk QEMU
             * wants it clear: judge it only when all were followed and the
             * refcount on disk is 1 too. */
            else if ((flags & QC_CELL_NOT_COPIED) && computed == 1 && !ctx->unfollowed &&
                     !qc_bitset_test(&ctx->unfollowed_targets, c) && !qc_bitset_test(&ctx->refcount_above_refs, c))
                run_add(ctx, &r, QC_P_L2_COPIED_WRONG, c, 0, computed);
        }
    }
    run_flush(ctx, &r);
}

void qc_pass_compare(qc_ctx *ctx)
{
    compare_state st = {.ctx = ctx};
    qc_each_refcount_span(ctx, &st, compare_span);
    run_flush(ctx, &st.run);
    check_copied(ctx);
    ctx->res->image_end_offset = st.last_used << ctx->geo.cluster_bits;
    if (ctx->file_size > ctx->res->image_end_offset + ctx->geo.cluster_size - 1 &&
        ctx->res->image_end_offset)
        qc_report(ctx, QC_P_TRAILING_SPACE, "end of file", ctx->res->image_end_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE,
                                    .host_offset = ctx->res->image_end_offset,
                                    .file_size = ctx->file_size});
}
