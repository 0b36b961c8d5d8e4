/*
 * Mapping (docs/passes.md §3.5 and §3.7; codes 5xx, 702, and 802 when the
 * L2 references outgrow their limit). Active and snapshot L1 tables, then
 * every distinct L2 table once, however many L1 entries share it.
 *
 * Checks: L1 entries (reserved bits, offset 0 with other bits set,
 * alignment, inside the file); L2 entries of every kind (standard, zero,
 * compressed, extended L2): reserved bits, the zero flag where it is not
 * allowed, offset 0 with COPIED, alignment, inside the file, compressed
 * descriptors, subcluster bitmaps, host == guest offset with an external
 * data file (and alignment there too), guest data landing on metadata.
 * Needs: header, snapshot, reftable and bitmap passes (all metadata
 * extents except L1/L2 registered).
 * Produces: L1 and L2 extents, computed refcounts of L2 tables and data,
 * COPIED observations of the active tree, allocation statistics, and with
 * an external data file where the data mapped into it end
 * (result->data_file_end, for --chain's dataFileTooShort); for the host
 * map, when asked for, the clusters of compressed data and of guest data
 * on metadata.
 *
 * An L2 table referenced n times contributes n references to each data
 * cluster it maps, exactly as if it were walked n times (QEMU re-reads it
 * per snapshot; the result is the same).
 */
#include <stdio.h>
#include <stdlib.h>

#include "ctx.h"

typedef struct l1_source {
    uint32_t snapshot;
    uint64_t offset;
    uint32_t size;
} l1_source;

static void describe_l1(const qc_ctx *ctx, uint32_t snapshot, char *buf, size_t len)
{
    qc_extent e = {0, 0, snapshot, 0, QC_OWN_L1, false};
    qc_describe_extent(&ctx->view, &e, buf, len);
}

static void collect_l1(qc_ctx *ctx, const l1_source *src)
{
    uint64_t bytes = (uint64_t)src->size * 8;
    uint8_t *l1 = qc_alloc(ctx, bytes, "L1 table");
    char obj[240];
    describe_l1(ctx, src->snapshot, obj, sizeof(obj));
    if (!l1 || !qc_read(ctx, src->offset, l1, bytes, obj)) {
        qc_free(ctx, l1, bytes);
        return;
    }
    for (uint32_t i = 0; i < src->size; i++) {
        uint64_t e = qc_be64(l1 + (uint64_t)i * 8);
        uint64_t off = e & QC_L1_OFFSET_MASK;
        uint64_t at = src->offset + (uint64_t)i * 8;
        qc_finding_ctx fc = {.present = QC_CTX_L1_INDEX | QC_CTX_ENTRY | QC_CTX_HOST_OFFSET,
                             .l1_index = i,
                             .entry = e,
                             .host_offset = off};
        if (src->snapshot != QC_ACTIVE) {
            fc.present |= QC_CTX_SNAPSHOT;
            fc.snapshot = src->snapshot;
        }
        if (e & QC_L1_RESERVED_MASK)
            qc_report(ctx, QC_P_L1_ENTRY_RESERVED_BITS, obj, at, 1, &fc);
        if (off == 0) {
            /* QEMU treats only an all-zero entry as unallocated: any other
             * value sends it to cluster 0, the header, as an L2 table. */
            if (e)
                qc_report(ctx, QC_P_L1_ZERO_OFFSET_FLAGS, obj, at, 1, &fc);
            continue;
        }
        if (!qc_cluster_aligned(&ctx->view, off)) {
            qc_report(ctx, QC_P_L1_ENTRY_UNALIGNED, obj, at, 1, &fc);
            ctx->unfollowed++;
            continue;
        }
        if (!qc_range_within(off, ctx->geo.cluster_size, ctx->file_size)) {
            fc.present |= QC_CTX_FILE_SIZE;
            fc.file_size = ctx->file_size;
            qc_report(ctx, QC_P_L1_ENTRY_PAST_EOF, obj, at, 1, &fc);
            qc_claim_past_eof(ctx, off, ctx->geo.cluster_size, false);
            ctx->unfollowed++;
            continue;
        }
        if (ctx->nb_l2_refs == QC_MAX_L2_REFS) {
            qc_report(ctx, QC_P_MEMORY_LIMIT, "L2 reference list", QC_NO_OFFSET, 1,
                      &(qc_finding_ctx){.present = QC_CTX_EXPECTED,
                                        .variant = 2,
                                        .expected = QC_MAX_L2_REFS});
            ctx->stop = true;
            break;
        }
        qc_l2_ref *refs = qc_grow(ctx, ctx->l2_refs, &ctx->cap_l2_refs, sizeof(qc_l2_ref),
                                  ctx->nb_l2_refs + 1, "L2 reference list");
        if (!refs)
            break;
        ctx->l2_refs = refs;
        refs[ctx->nb_l2_refs++] =
            (qc_l2_ref){off, src->snapshot, i & INT32_MAX, (e & QC_OFLAG_COPIED) != 0};
    }
    qc_free(ctx, l1, bytes);
}

static int l1_source_cmp(const void *a, const void *b)
{
    const l1_source *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Order: by L2 offset, then the active L1 first, then snapshots in order. */
static int l2_ref_cmp(const void *a, const void *b)
{
    const qc_l2_ref *x = a, *y = b;
    if (x->l2_offset != y->l2_offset)
        return x->l2_offset < y->l2_offset ? -1 : 1;
    uint32_t sx = x->snapshot + 1, sy = y->snapshot + 1; /* QC_ACTIVE wraps to 0 */
    if (sx != sy)
        return sx < sy ? -1 : 1;
    return x->l1_index < y->l1_index ? -1 : x->l1_index > y->l1_index;
}

void qc_pass_mapping_collect(qc_ctx *ctx)
{
    const qc_header *h = &ctx->hdr;
    uint64_t nb = 1 + (uint64_t)ctx->nb_snapshots;
    l1_source *srcs = qc_alloc(ctx, nb * sizeof(l1_source), "L1 table list");
    if (!srcs)
        return;
    size_t n = 0;
    if (ctx->l1_usable)
        srcs[n++] = (l1_source){QC_ACTIVE, h->l1_table_offset, h->l1_size};
    for (uint32_t i = 0; i < ctx->nb_snapshots; i++)
        if (ctx->snapshots[i].follow)
            srcs[n++] = (l1_source){i, ctx->snapshots[i].entry.l1_table_offset,
                                    ctx->snapshots[i].entry.l1_size};
    for (size_t i = 0; i < n; i++)
        qc_add_extent(ctx, QC_OWN_L1, srcs[i].snapshot, 0, srcs[i].offset,
                      (uint64_t)srcs[i].size * 8, 1);
    /* Read L1 tables in file order. One that overlaps an earlier one is not
     * read (the overlap is reported with the other extents): this keeps
     * the number of L1 entries examined below the file size / 8 however
     * the snapshot table is forged. */
    qsort(srcs, n, sizeof(l1_source), l1_source_cmp);
    uint64_t covered_end = 0;
    for (size_t i = 0; i < n && !ctx->stop; i++) {
        if (srcs[i].offset < covered_end) {
            ctx->unfollowed++;
            continue;
        }
        covered_end = srcs[i].offset + (uint64_t)srcs[i].size * 8;
        collect_l1(ctx, &srcs[i]);
    }
    qc_free(ctx, srcs, nb * sizeof(l1_source));
    if (ctx->stop)
        return;

    if (ctx->nb_l2_refs == 0)
        return;
    qsort(ctx->l2_refs, ctx->nb_l2_refs, sizeof(qc_l2_ref), l2_ref_cmp);
    size_t tables = 0;
    for (size_t i = 0; i < ctx->nb_l2_refs; i++)
        tables += i == 0 || ctx->l2_refs[i].l2_offset != ctx->l2_refs[i - 1].l2_offset;
    ctx->l2_tables = qc_alloc(ctx, (uint64_t)tables * sizeof(qc_l2_table), "L2 table list");
    if (!ctx->l2_tables)
        return;
    for (size_t i = 0; i < ctx->nb_l2_refs; i++) {
        const qc_l2_ref *r = &ctx->l2_refs[i];
        if (i == 0 || r->l2_offset != ctx->l2_refs[i - 1].l2_offset)
            ctx->l2_tables[ctx->nb_l2_tables++] = (qc_l2_table){(uint32_t)i, 0, 0};
        qc_l2_table *t = &ctx->l2_tables[ctx->nb_l2_tables - 1];
        t->refs++;
        t->active_refs += r->snapshot == QC_ACTIVE;
    }
    for (size_t i = 0; i < ctx->nb_l2_tables; i++) {
        const qc_l2_table *t = &ctx->l2_tables[i];
        const qc_l2_ref *first = &ctx->l2_refs[t->first_ref];
        qc_add_extent(ctx, QC_OWN_L2, first->snapshot, first->l1_index, first->l2_offset,
                      ctx->geo.cluster_size, t->refs);
    }
}

/* State while walking one L2 table. */
typedef struct l2_walk {
    const qc_l2_table *table;
    uint64_t offset; /* the table's */
    const qc_l2_ref *first;
    char obj[240]; /* its description, made on first use (most tables need none) */
    /* The active tree's allocation statistics, added to the result after
     * the table (kept here, not in the result, so the walk's fast path
     * can hold them in registers). */
    uint64_t allocated, fragmented;
    uint64_t next_contiguous; /* for the fragmentation statistic */
} l2_walk;

static const char *walk_name(const qc_ctx *ctx, l2_walk *w)
{
    if (!w->obj[0])
        qc_describe_l2_table(&ctx->view, w->table, w->obj, sizeof(w->obj));
    return w->obj;
}

/* The facts of entry i (`entry`) of the L2 table being walked, as the
 * first L1 entry that points to the table sees it. */
static qc_finding_ctx l2_entry_ctx(const qc_ctx *ctx, const l2_walk *w, uint32_t i, uint64_t entry)
{
    const qc_geometry *g = &ctx->geo;
    qc_finding_ctx fc = {
        .present = QC_CTX_L1_INDEX | QC_CTX_L2_INDEX | QC_CTX_GUEST_OFFSET | QC_CTX_ENTRY,
        .l1_index = w->first->l1_index,
        .l2_index = i,
        .guest_offset = ((uint64_t)w->first->l1_index * g->l2_entries + i) << g->cluster_bits,
        .entry = entry,
    };
    if (w->first->snapshot != QC_ACTIVE) {
        fc.present |= QC_CTX_SNAPSHOT;
        fc.snapshot = w->first->snapshot;
    }
    return fc;
}

/* Guest data (a data cluster or part of a compressed range) landing on a
 * cluster some metadata structure owns (`flags`: the cluster's, once
 * counted). */
static void check_data_on_metadata(qc_ctx *ctx, l2_walk *w, uint32_t index, uint64_t cluster,
                                   int flags)
{
    if (flags < 0 || !(flags & QC_CELL_META))
        return;
    qc_map_mark(&ctx->map_overlap, cluster, 1);
    const qc_extent *owner = qc_extent_at(&ctx->view, cluster);
    char what[240] = "metadata";
    if (owner)
        qc_describe_extent(&ctx->view, owner, what, sizeof(what));
    uint64_t at = w->offset + (uint64_t)index * ctx->geo.l2_entry_size;
    qc_finding_ctx fc = l2_entry_ctx(ctx, w, index, 0);
    fc.present &= ~QC_CTX_ENTRY; /* not at hand here */
    fc.present |= QC_CTX_HOST_OFFSET | QC_CTX_CLUSTER | QC_CTX_NAME;
    fc.host_offset = cluster << ctx->geo.cluster_bits;
    fc.cluster = cluster;
    fc.name = what;
    qc_report(ctx, QC_P_DATA_OVERLAPS_METADATA, walk_name(ctx, w), at, 1, &fc);
}

/* Count a data cluster of the table being walked: its `refs` references,
 * and whether the active tree (`active_refs` of them) maps it with COPIED.
 * The counts come as arguments so the walk's loop can keep them in
 * registers. */
static inline void count_data_cluster(qc_ctx *ctx, l2_walk *w, uint32_t index, uint64_t cluster,
                                      uint64_t refs, uint64_t active_refs, bool copied)
{
    unsigned flags = !active_refs ? 0 : copied ? QC_CELL_COPIED : QC_CELL_NOT_COPIED;
    int now = qc_refmap_add(&ctx->refmap, cluster, refs, flags);
    if (now < 0 || (now & QC_CELL_META))
        check_data_on_metadata(ctx, w, index, cluster, now);
}

/* The allocation statistics for a standard cluster at `off`. */
static inline void count_allocated(l2_walk *w, uint64_t active_refs, uint64_t off,
                                   uint64_t cluster_size)
{
    if (active_refs) {
        w->allocated += active_refs;
        if (w->next_contiguous && off != w->next_contiguous)
            w->fragmented += active_refs;
        w->next_contiguous = off + cluster_size;
    }
}

static void walk_compressed(qc_ctx *ctx, l2_walk *w, uint32_t i, uint64_t entry, uint64_t bitmap)
{
    uint64_t at = w->offset + (uint64_t)i * ctx->geo.l2_entry_size;
    qc_finding_ctx fc = l2_entry_ctx(ctx, w, i, entry);
    if (entry & QC_OFLAG_COPIED)
        qc_report(ctx, QC_P_COMPRESSED_COPIED, walk_name(ctx, w), at, 1, &fc);
    if (ctx->has_data_file) {
        /* Nothing a data-file image can read: as in QEMU, nothing else is
         * checked and it is left out of the statistics. */
        qc_report(ctx, QC_P_COMPRESSED_WITH_DATA_FILE, walk_name(ctx, w), at, 1, &fc);
        return;
    }
    if (w->table->active_refs) {
        w->allocated += w->table->active_refs;
        w->fragmented += w->table->active_refs;
        ctx->res->compressed_clusters += w->table->active_refs;
    }
    if (bitmap) {
        qc_finding_ctx with_bitmap = fc;
        with_bitmap.present |= QC_CTX_VALUE;
        with_bitmap.value = bitmap;
        qc_report(ctx, QC_P_COMPRESSED_SUBCLUSTER_BITMAP, walk_name(ctx, w), at, 1, &with_bitmap);
    }
    qc_compressed c;
    qc_compressed_decode(&ctx->geo, entry, &c);
    uint64_t first = c.host_offset >> ctx->geo.cluster_bits;
    uint64_t last = (c.host_offset + c.length - 1) >> ctx->geo.cluster_bits;
    if (c.high_bits || last >= ctx->file_clusters) {
        fc.present |= QC_CTX_HOST_OFFSET | QC_CTX_SIZE;
        fc.variant = c.high_bits ? 1 : 0;
        fc.host_offset = c.host_offset;
        fc.size = c.length;
        qc_report(ctx, QC_P_COMPRESSED_RANGE_INVALID, walk_name(ctx, w), at, 1, &fc);
        ctx->unfollowed++;
        return;
    }
    for (uint64_t cl = first; cl <= last; cl++)
        check_data_on_metadata(ctx, w, i, cl, qc_refmap_add(&ctx->refmap, cl, w->table->refs, 0));
    qc_map_mark(&ctx->map_compressed, first, last - first + 1);
}

/* An entry whose host offset `off` is not cluster aligned: QEMU reports
 * it, data file or not. */
static void report_unaligned(qc_ctx *ctx, l2_walk *w, uint32_t i, uint64_t entry, uint64_t off,
                             uint32_t alloc)
{
    qc_finding_ctx fc = l2_entry_ctx(ctx, w, i, entry);
    fc.present |= QC_CTX_HOST_OFFSET;
    fc.host_offset = off;
    fc.variant = (entry & QC_OFLAG_ZERO) || (ctx->geo.extended_l2 && !alloc); /* preallocated */
    qc_report(ctx, QC_P_L2_ENTRY_UNALIGNED, walk_name(ctx, w),
              w->offset + (uint64_t)i * ctx->geo.l2_entry_size, 1, &fc);
}

/* Where the guest data an entry maps into the external data file end:
 * its whole cluster, or its last allocated subcluster; a zero cluster
 * maps nothing QEMU reads. */
static void note_data_file_end(qc_ctx *ctx, uint64_t entry, uint64_t off, uint32_t alloc)
{
    const qc_geometry *g = &ctx->geo;
    uint64_t used = g->cluster_size;
    if (g->extended_l2) {
        unsigned last = 0;
        for (unsigned s = 0; s < 32; s++)
            if ((alloc >> s) & 1)
                last = s + 1;
        used = (uint64_t)last * (g->cluster_size / 32);
    } else if (entry & QC_OFLAG_ZERO) {
        used = 0;
    }
    uint64_t end;
    if (used && qc_add_ok(off, used, &end) && end > ctx->res->data_file_end)
        ctx->res->data_file_end = end;
}

static void walk_standard(qc_ctx *ctx, l2_walk *w, uint32_t i, uint64_t entry, uint64_t bitmap)
{
    const qc_geometry *g = &ctx->geo;
    uint64_t at = w->offset + (uint64_t)i * g->l2_entry_size;
    uint64_t off = entry & QC_L2_OFFSET_MASK;
    bool copied = entry & QC_OFLAG_COPIED;
    uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);
    /* Findings are the exception: the facts are gathered only for one. */
    qc_finding_ctx fc;

    if (entry & QC_L2_RESERVED_MASK) {
        fc = l2_entry_ctx(ctx, w, i, entry);
        qc_report(ctx, QC_P_L2_ENTRY_RESERVED_BITS, walk_name(ctx, w), at, 1, &fc);
    }
    if ((entry & QC_OFLAG_ZERO) && (ctx->hdr.version < 3 || g->extended_l2)) {
        fc = l2_entry_ctx(ctx, w, i, entry);
        fc.variant = ctx->hdr.version >= 3; /* an extended L2 image */
        qc_report(ctx, QC_P_L2_ZERO_FLAG_INVALID, walk_name(ctx, w), at, 1, &fc);
    }
    if (off == 0 && !(ctx->has_data_file && copied)) {
        /* Unallocated (or a plain zero cluster). */
        if (copied) {
            fc = l2_entry_ctx(ctx, w, i, entry);
            qc_report(ctx, QC_P_L2_ZERO_OFFSET_COPIED, walk_name(ctx, w), at, 1, &fc);
        }
        if (g->extended_l2 && alloc) {
            fc = l2_entry_ctx(ctx, w, i, entry);
            fc.present |= QC_CTX_VALUE;
            fc.value = alloc;
            qc_report(ctx, QC_P_SUBCLUSTER_ALLOC_UNALLOCATED, walk_name(ctx, w), at, 1, &fc);
        }
        return;
    }
    if (g->extended_l2 && (alloc & zero)) {
        fc = l2_entry_ctx(ctx, w, i, entry);
        fc.present |= QC_CTX_VALUE;
        fc.value = alloc & zero;
        qc_report(ctx, QC_P_SUBCLUSTER_ALLOC_AND_ZERO, walk_name(ctx, w), at, 1, &fc);
    }
    count_allocated(w, w->table->active_refs, off, g->cluster_size);
    if (ctx->has_data_file) {
        note_data_file_end(ctx, entry, off, alloc);
        fc = l2_entry_ctx(ctx, w, i, entry);
        if (off != fc.guest_offset) {
            fc.present |= QC_CTX_HOST_OFFSET;
            fc.host_offset = off;
            qc_report(ctx, QC_P_DATA_FILE_OFFSET_MISMATCH, walk_name(ctx, w), at, 1, &fc);
        }
        if (!qc_cluster_aligned(&ctx->view, off))
            report_unaligned(ctx, w, i, entry, off, alloc);
        if (!copied && w->table->active_refs) {
            fc = l2_entry_ctx(ctx, w, i, entry);
            qc_report(ctx, QC_P_DATA_FILE_COPIED_MISSING, walk_name(ctx, w), at, 1, &fc);
        }
        return; /* data clusters live in the data file and are not refcounted */
    }
    if (!qc_cluster_aligned(&ctx->view, off)) {
        report_unaligned(ctx, w, i, entry, off, alloc);
        qc_unfollowed_leaf(ctx, off);
        return;
    }
    uint64_t cluster = off >> g->cluster_bits;
    if (cluster >= ctx->file_clusters) {
        fc = l2_entry_ctx(ctx, w, i, entry);
        fc.present |= QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE;
        fc.host_offset = off;
        fc.file_size = ctx->file_size;
        qc_report(ctx, QC_P_L2_ENTRY_PAST_EOF, walk_name(ctx, w), at, 1, &fc);
        /* Past the end: counted as unfollowed (the cluster it should point
         * to may now look leaked) and as a claim past the end. */
        qc_unfollowed_leaf(ctx, off);
        return;
    }
    count_data_cluster(ctx, w, i, cluster, w->table->refs, w->table->active_refs, copied);
}

/* The L2 tables in walking order, for the read-ahead thread. */
static uint64_t l2_table_to_read(void *arg, size_t t)
{
    const qc_ctx *ctx = arg;
    uint64_t offset = qc_l2_table_offset(&ctx->view, &ctx->l2_tables[t]);
    return qc_extent_conflicted(&ctx->view, QC_OWN_L2, offset) ? QC_PREFETCH_SKIP : offset;
}

void qc_pass_mapping_walk(qc_ctx *ctx)
{
    const qc_geometry *g = &ctx->geo;
    qc_prefetch *tables =
        qc_prefetch_start(ctx, ctx->nb_l2_tables, g->cluster_size, l2_table_to_read, ctx);
    if (!tables)
        return;
    const uint64_t l2_entries = g->l2_entries, entry_size = g->l2_entry_size;
    const bool extended = g->extended_l2;
    const bool plain_ok = !ctx->has_data_file; /* data-file entries have more checks */
    const unsigned cluster_bits = g->cluster_bits;
    const uint64_t cluster_mask = g->cluster_size - 1, file_clusters = ctx->file_clusters;
    for (size_t t = 0; t < ctx->nb_l2_tables && !ctx->stop; t++) {
        qc_progress(ctx, QC_PROGRESS_WALK, QC_PROGRESS_COMPARE, t, ctx->nb_l2_tables);
        const qc_l2_ref *first = &ctx->l2_refs[ctx->l2_tables[t].first_ref];
        l2_walk w = {&ctx->l2_tables[t], first->l2_offset, first, "", 0, 0, 0};
        if (qc_extent_conflicted(&ctx->view, QC_OWN_L2, w.offset))
            continue; /* reported as an overlap; its contents are not trusted */
        int ret;
        const uint8_t *buf = qc_prefetch_get(tables, t, &ret);
        if (ret < 0) {
            qc_report_read_failed(ctx, walk_name(ctx, &w), w.offset, g->cluster_size, ret);
            continue;
        }
        /* Invariants in locals: the count cells are stored through byte
         * pointers, which could alias anything. */
        const uint64_t refs = w.table->refs, active_refs = w.table->active_refs;
        for (uint32_t i = 0; i < l2_entries; i++) {
            const uint8_t *p = buf + (uint64_t)i * entry_size;
            uint64_t entry = qc_be64(p);
            uint64_t bitmap = extended ? qc_be64(p + 8) : 0;
            if (!(entry | bitmap))
                continue; /* unallocated, nothing to check */
            /* A data cluster inside the file with nothing but its offset
             * and COPIED set passes every check of walk_standard: count it
             * straight away. */
            uint64_t off = entry & QC_L2_OFFSET_MASK, cluster = off >> cluster_bits;
            if (plain_ok && !(entry & ~(QC_L2_OFFSET_MASK | QC_OFLAG_COPIED)) && off &&
                !(off & cluster_mask) && cluster < file_clusters && !(bitmap & bitmap >> 32)) {
                count_allocated(&w, active_refs, off, cluster_mask + 1);
                count_data_cluster(ctx, &w, i, cluster, refs, active_refs,
                                   entry & QC_OFLAG_COPIED);
            } else if (entry & QC_OFLAG_COMPRESSED)
                walk_compressed(ctx, &w, i, entry, bitmap);
            else
                walk_standard(ctx, &w, i, entry, bitmap);
        }
        ctx->res->allocated_clusters += w.allocated;
        ctx->res->fragmented_clusters += w.fragmented;
    }
    qc_prefetch_stop(tables);
}
