/*
 * The deep pass (docs/passes.md §3.9, codes 520 and 801), with --deep
 * only: reads what the metadata points at. Every compressed cluster of
 * every distinct L2 table is read and decompressed as QEMU would read it;
 * one that does not yield a whole cluster is compressedStreamInvalid, a
 * corruption the plain check cannot see (qemu-img check passes it; reads
 * fail). Then every cluster holding guest data is read once, in host order
 * and in runs, so that the file's own read errors surface (readFailed).
 *
 * Needs: the L2 tables of the mapping pass, and the compressed ranges it
 * validated (inside the file, no high bits: others are reported there and
 * skipped here). Produces: findings only. Runs after the comparison, on the
 * thread of the check (no read-ahead is running then).
 */
#include <errno.h>
#include <string.h>

#include "compressed.h"
#include "ctx.h"

typedef struct deep_walk {
    uint8_t *table;      /* one L2 table */
    uint8_t *in, *out;   /* compressed bytes (up to two clusters), one cluster */
    qc_decompressor *decompressor;
} deep_walk;

/* Entry i of the table of `ref`, holding compressed descriptor `entry`. */
static void verify_compressed(qc_ctx *ctx, deep_walk *d, const qc_l2_table *table, uint64_t at,
                              uint32_t i, uint64_t entry)
{
    const qc_geometry *g = &ctx->geo;
    qc_compressed c;
    qc_compressed_decode(g, entry, &c);
    uint64_t len = c.length;
    if (c.high_bits || !qc_range_within(c.host_offset, 1, ctx->file_size))
        return; /* compressedRangeInvalid, reported by the mapping walk */
    /* QEMU reads what is there of a descriptor that ends past the file. */
    if (len > ctx->file_size - c.host_offset)
        len = ctx->file_size - c.host_offset;
    if (len > 2 * g->cluster_size)
        len = 2 * g->cluster_size;
    const char *reason;
    int ret = qc_read_quiet(ctx, c.host_offset, d->in, (size_t)len);
    if (ret < 0) {
        qc_report_read_failed(ctx, "compressed cluster", c.host_offset, (size_t)len, ret);
        return;
    }
    ret = qc_decompress_cluster(d->decompressor, ctx->hdr.compression_type, d->in, (size_t)len,
                                d->out, g->cluster_size, &reason);
    if (ret == -ENOMEM) {
        qc_memory_refused(ctx, "decompressing a cluster", g->cluster_size, false);
        return;
    }
    if (ret == 0)
        return;
    const qc_l2_ref *ref = &ctx->l2_refs[table->first_ref];
    char obj[240];
    qc_describe_l2_table(&ctx->view, table, obj, sizeof(obj));
    qc_finding_ctx fc = {
        .present = QC_CTX_L1_INDEX | QC_CTX_L2_INDEX | QC_CTX_GUEST_OFFSET | QC_CTX_ENTRY |
                   QC_CTX_HOST_OFFSET | QC_CTX_SIZE | QC_CTX_NAME,
        .l1_index = ref->l1_index,
        .l2_index = i,
        .guest_offset = ((uint64_t)ref->l1_index * g->l2_entries + i) << g->cluster_bits,
        .entry = entry,
        .host_offset = c.host_offset,
        .size = len,
        .name = reason,
    };
    if (ref->snapshot != QC_ACTIVE) {
        fc.present |= QC_CTX_SNAPSHOT;
        fc.snapshot = ref->snapshot;
    }
    qc_report(ctx, QC_P_COMPRESSED_STREAM_INVALID, obj, at + (uint64_t)i * g->l2_entry_size, 1,
              &fc);
}

/* Runs of host clusters holding guest data, read up to this many bytes
 * at a time. */
#define DEEP_READ_BYTES (4u << 20)

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
 * and not owned by metadata), once, in host order. */
static void read_data_clusters(qc_ctx *ctx)
{
    const qc_refmap *map = &ctx->refmap;
    uint64_t per_read = DEEP_READ_BYTES >> ctx->geo.cluster_bits;
    if (per_read == 0)
        per_read = 1;
    uint8_t *buf = qc_alloc(ctx, per_read << ctx->geo.cluster_bits, "data clusters (deep)");
    uint64_t first = 0, count = 0, end = ctx->file_clusters;
    for (uint64_t c = qc_refmap_next_page(map, 0, end); buf && c < end && !ctx->stop;
         c = qc_refmap_next_page(map, c + 1, end)) {
        unsigned wl;
        uint64_t cell = qc_refmap_cell(map, c, &wl);
        if (!qc_cell_count(cell, wl) || (qc_cell_flags(cell, wl) & QC_CELL_META))
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
    const qc_geometry *g = &ctx->geo;
    if (ctx->has_data_file)
        return; /* compressed clusters are not readable there (reported by the walk) */
    deep_walk d = {
        .table = qc_alloc(ctx, g->cluster_size, "L2 table (deep)"),
        .in = qc_alloc(ctx, 2 * g->cluster_size, "compressed cluster"),
        .out = qc_alloc(ctx, g->cluster_size, "decompressed cluster"),
        .decompressor = qc_decompressor_new(),
    };
    if (!d.decompressor && d.table && d.in && d.out)
        qc_memory_refused(ctx, "decompressor", 0, false);
    for (size_t t = 0; t < ctx->nb_l2_tables && !ctx->stop && d.decompressor && d.out; t++) {
        const qc_l2_table *table = &ctx->l2_tables[t];
        uint64_t at = qc_l2_table_offset(&ctx->view, table);
        if (qc_extent_conflicted(&ctx->view, QC_OWN_L2, at) ||
            !qc_read(ctx, at, d.table, g->cluster_size, "L2 table"))
            continue;
        for (uint32_t i = 0; i < g->l2_entries && !ctx->stop; i++) {
            uint64_t entry = qc_be64(d.table + (uint64_t)i * g->l2_entry_size);
            if (entry & QC_OFLAG_COMPRESSED)
                verify_compressed(ctx, &d, table, at, i, entry);
        }
        qc_progress(ctx, QC_PROGRESS_COMPARE, 1000, t, ctx->nb_l2_tables);
    }
    qc_decompressor_free(d.decompressor);
    qc_free(ctx, d.table, g->cluster_size);
    qc_free(ctx, d.in, 2 * g->cluster_size);
    qc_free(ctx, d.out, g->cluster_size);
    if (!ctx->stop)
        read_data_clusters(ctx);
}
