/*
 * The QED check: what QEMU's qed_check() verifies, on the images QEMU's
 * open accepts, and the header checks of that open.
 *
 * Checks:
 *   - the header as QEMU's open validates it: cluster size, table size,
 *     header size, image size against the tables' reach, the L1 table's
 *     offset, feature bits (unknown ones: QEMU refuses the image), the
 *     backing file name's bounds; unknown compat and autoclear bits and a
 *     set need-check bit are warnings;
 *   - the L1 table and every L2 table it points to: each table offset
 *     aligned, after the header and with the whole table inside the file;
 *     each data offset aligned, after the header and inside the file;
 *   - every cluster referenced at most once (a second reference names
 *     both); the clusters after the header that nothing references are
 *     leaked (QED has no refcounts).
 * Needs: the io, the file's size; the QED magic was seen.
 * Produces: the result's counters as qemu-img check reports a QED image
 *   (total, allocated and fragmented clusters, corruptions, leaks, check
 *   errors), and findings 1001-1014; the backing file name and its format
 *   (raw, or none: probed) as QEMU's open reads them, in the result's
 *   header names (for --chain; the header is otherwise not qcow2's, so
 *   qc_result_header stays NULL); ctx->qed: the geometry, and for a
 *   repair's check (fix_sink set) every entry a repair may change (invalid
 *   ones, second claims) and where the trailing leaked run starts; when a
 *   host map is asked for, its overlap and corrupt marks and each
 *   cluster's class (ctx->qed.map_class) from what referenced it first.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../layout/qed.h"
#include "ctx.h"
#include "result.h"

/* What first referenced a cluster: the L1 table, an L2 table (by its L1
 * index) or guest data (by its guest cluster, below 2^54 for any
 * geometry, so never one of the codes). */
#define REF_NONE UINT64_MAX
#define REF_L1 (UINT64_MAX - 1)
#define REF_L2 ((uint64_t)1 << 63) /* | L1 index */

typedef struct qed_walk {
    qc_ctx *ctx;
    qc_qed_header h;
    uint64_t cluster_size, table_bytes, entries;
    uint64_t file_end;    /* where QEMU's file ends (qed_file_end) */
    uint64_t header_end;  /* header_size clusters */
    uint64_t nclusters;   /* clusters up to file_end */
    uint64_t *first_ref;  /* per cluster: REF_* or a guest cluster */
    uint8_t *table;       /* one L2 table */
    bool read_failed;
} qed_walk;

/* The end of the file as QEMU's QED driver sees it: the block layer counts
 * a file in 512-byte sectors (its length rounded up), and the driver
 * rounds that down to a cluster. A cluster the last sector completes is
 * in the file; QEMU reads zeros past the real end. */
static uint64_t qed_file_end(uint64_t size, uint64_t cluster_size)
{
    uint64_t sectors = size / 512 + (size % 512 != 0);
    return sectors * 512 / cluster_size * cluster_size;
}

static bool cluster_offset_valid(const qed_walk *w, uint64_t off)
{
    return (off & (w->cluster_size - 1)) == 0 && off >= w->header_end && off < w->file_end;
}

/* As QEMU: the first and last cluster of the table valid. Its overflow
 * test also refuses every offset of a one-cluster table (the last
 * cluster is the first), which QEMU cannot open either. */
static bool table_offset_valid(const qed_walk *w, uint64_t off)
{
    uint64_t last = off + (w->h.table_size - 1) * w->cluster_size;
    return last > off && cluster_offset_valid(w, off) && cluster_offset_valid(w, last);
}

/* The guest offset of guest cluster g (UINT64_MAX past 2^64). */
static uint64_t guest_offset_of(const qed_walk *w, uint64_t g)
{
    uint64_t off;
    return qc_mul_ok(g, w->cluster_size, &off) ? off : UINT64_MAX;
}

static void describe_ref(const qed_walk *w, uint64_t ref, char *buf, size_t len)
{
    if (ref == REF_L1)
        snprintf(buf, len, "the L1 table");
    else if (ref & REF_L2)
        snprintf(buf, len, "the L2 table of L1 entry %" PRIu64, ref & ~REF_L2);
    else
        snprintf(buf, len, "the data at guest offset 0x%" PRIx64, guest_offset_of(w, ref));
}

/* Keep an entry a repair may change, for a repair's check only. */
static void keep_item(qed_walk *w, qc_qed_item item)
{
    qc_ctx *ctx = w->ctx;
    if (!ctx->fix_sink)
        return;
    qc_qed_item *items = qc_grow(ctx, ctx->qed.items, &ctx->qed.cap_items, sizeof(item),
                                 ctx->qed.nb_items + 1, "QED repair items");
    if (!items) {
        ctx->stop = true;
        return;
    }
    ctx->qed.items = items;
    ctx->qed.items[ctx->qed.nb_items++] = item;
}

/* Keep a leaked run, for a repair's check only. */
static void keep_leak(qed_walk *w, uint64_t first, uint64_t count)
{
    qc_ctx *ctx = w->ctx;
    if (!ctx->fix_sink)
        return;
    qc_cluster_run *runs = qc_grow(ctx, ctx->qed.leaks, &ctx->qed.cap_leaks, sizeof(*runs),
                                   ctx->qed.nb_leaks + 1, "QED leaked runs");
    if (!runs) {
        ctx->stop = true;
        return;
    }
    ctx->qed.leaks = runs;
    ctx->qed.leaks[ctx->qed.nb_leaks++] = (qc_cluster_run){first, first + count};
}

bool qc_qed_leaked(const qc_qed_view *q, uint64_t c)
{
    size_t lo = 0, hi = q->nb_leaks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (q->leaks[mid].end <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < q->nb_leaks && q->leaks[lo].first <= c;
}

/* The guest bytes an entry of L1 index l1 (and L2 index l2, or the whole
 * table when `table`) maps, clipped to the image. */
static qc_qed_item guest_item(const qed_walk *w, uint64_t l1, uint64_t l2, bool table)
{
    uint64_t reach = table ? w->entries * w->cluster_size : w->cluster_size;
    /* The largest geometries reach past 2^64: nothing there is in the image. */
    uint64_t guest = guest_offset_of(w, l1 * w->entries + l2), size = w->h.image_size;
    uint64_t length = guest >= size ? 0 : size - guest < reach ? size - guest : reach;
    return (qc_qed_item){.guest = guest, .guest_length = length, .table = table};
}

/* Mark n clusters from `off` used by `ref`; false (reported) when one of
 * them was used already. `item` is the entry that points there (its
 * entry, target and guest range), kept for a repair on a second claim. */
static bool claim(qed_walk *w, uint64_t off, uint64_t n, uint64_t ref, const char *object,
                  qc_qed_item item)
{
    bool ok = true;
    uint64_t first = off / w->cluster_size;
    for (uint64_t c = first; c < first + n && c < w->nclusters; c++) {
        if (w->first_ref[c] == REF_NONE) {
            w->first_ref[c] = ref;
            continue;
        }
        qc_map_mark(&w->ctx->map_overlap, c, 1);
        char before[96];
        uint64_t first_ref = w->first_ref[c];
        describe_ref(w, first_ref, before, sizeof(before));
        bool data = ref != REF_L1 && !(ref & REF_L2);
        qc_report(w->ctx, QC_P_QED_CLUSTER_REFERENCED_TWICE, object, c * w->cluster_size, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_CLUSTER | QC_CTX_NAME |
                                               (data ? QC_CTX_GUEST_OFFSET : 0),
                                    .host_offset = c * w->cluster_size, .cluster = c,
                                    .guest_offset = item.guest, .name = before});
        if (ok && ref != REF_L1) {
            item.kind = QC_QED_SECOND_CLAIM;
            item.first_l1 = first_ref == REF_L1;
            item.first_l2 = first_ref != REF_L1 && (first_ref & REF_L2);
            item.first_l1_entry = w->h.l1_table_offset + (first_ref & ~REF_L2) * 8;
            item.first_guest = guest_offset_of(w, first_ref);
            keep_item(w, item);
        }
        ok = false;
    }
    return ok;
}

static void check_l2_table(qed_walk *w, uint64_t l1_index, uint64_t table_off)
{
    char object[64];
    snprintf(object, sizeof(object), "L2 table (L1 index %" PRIu64 ")", l1_index);
    uint64_t last = 0;
    for (uint64_t i = 0; i < w->entries; i++) {
        uint64_t off = qc_qed_entry(w->table, i);
        if (off == QC_QED_UNALLOCATED || off == QC_QED_ZERO_CLUSTER)
            continue;
        /* QEMU's statistics count every other entry, valid or not. */
        w->ctx->res->allocated_clusters++;
        if (last && last + w->cluster_size != off)
            w->ctx->res->fragmented_clusters++;
        last = off;
        qc_qed_item item = guest_item(w, l1_index, i, false);
        item.entry = table_off + i * 8;
        item.target = off;
        if (!cluster_offset_valid(w, off)) {
            item.kind = QC_QED_BAD_L2_ENTRY;
            keep_item(w, item);
            qc_report(w->ctx, QC_P_QED_L2_ENTRY_INVALID, object, table_off + i * 8, 1,
                      &(qc_finding_ctx){.present = QC_CTX_L2_INDEX | QC_CTX_HOST_OFFSET |
                                                   QC_CTX_GUEST_OFFSET | QC_CTX_FILE_SIZE,
                                        .l2_index = i, .host_offset = off, .guest_offset = item.guest,
                                        .file_size = w->ctx->file_size});
            continue;
        }
        claim(w, off, 1, l1_index * w->entries + i, object, item);
    }
}

static void walk_tables(qed_walk *w, const uint8_t *l1)
{
    claim(w, w->h.l1_table_offset, w->h.table_size, REF_L1, "L1 table", (qc_qed_item){0});
    for (uint64_t i = 0; i < w->entries && !w->ctx->stop; i++) {
        uint64_t off = qc_qed_entry(l1, i);
        if (off == QC_QED_UNALLOCATED)
            continue;
        qc_qed_item item = guest_item(w, i, 0, true);
        item.entry = w->h.l1_table_offset + i * 8;
        item.target = off;
        if (!table_offset_valid(w, off)) {
            item.kind = QC_QED_BAD_L1_ENTRY;
            keep_item(w, item);
            qc_report(w->ctx, QC_P_QED_L1_ENTRY_INVALID, "L1 table", w->h.l1_table_offset + i * 8,
                      1, &(qc_finding_ctx){.present = QC_CTX_L1_INDEX | QC_CTX_HOST_OFFSET |
                                                      QC_CTX_SIZE | QC_CTX_FILE_SIZE,
                                           .l1_index = i, .host_offset = off,
                                           .size = w->table_bytes,
                                           .file_size = w->ctx->file_size});
            continue;
        }
        char object[64];
        snprintf(object, sizeof(object), "L2 table (L1 index %" PRIu64 ")", i);
        /* A table sharing clusters with something else is not used. */
        if (!claim(w, off, w->h.table_size, REF_L2 | i, object, item))
            continue;
        if (!qc_read(w->ctx, off, w->table, (size_t)w->table_bytes, "L2 table")) {
            w->read_failed = true;
            continue;
        }
        check_l2_table(w, i, off);
        qc_progress(w->ctx, QC_PROGRESS_WALK, QC_PROGRESS_COMPARE, i + 1, w->entries);
    }
}

/* Runs of clusters nothing references, after the header: leaks, counted
 * per cluster as QEMU counts them. */
static void find_leaks(qed_walk *w)
{
    uint64_t first = w->h.header_size;
    for (uint64_t c = first; c < w->nclusters;) {
        if (w->first_ref[c] != REF_NONE) {
            c++;
            continue;
        }
        uint64_t end = c;
        while (end < w->nclusters && w->first_ref[end] == REF_NONE)
            end++;
        qc_report(w->ctx, QC_P_QED_CLUSTER_LEAKED, "host clusters", c * w->cluster_size, end - c,
                  &(qc_finding_ctx){.present = QC_CTX_CLUSTER | QC_CTX_CLUSTERS,
                                    .cluster = c, .clusters = end - c});
        if (end == w->nclusters)
            w->ctx->qed.trailing_leak = c;
        keep_leak(w, c, end - c);
        c = end;
    }
}

/* Each cluster's class in the host map (map.c adds the overlap and corrupt
 * marks): the header's, then by what referenced it first; nothing: leaked. */
static void classify_clusters(qed_walk *w)
{
    qc_ctx *ctx = w->ctx;
    uint8_t *cls = qc_alloc(ctx, w->nclusters ? w->nclusters : 1, "QED host map classes");
    if (!cls)
        return;
    for (uint64_t c = 0; c < w->nclusters; c++) {
        uint64_t ref = w->first_ref[c];
        cls[c] = c < w->h.header_size ? QC_MAP_HEADER
               : ref == REF_NONE      ? QC_MAP_LEAKED
               : ref == REF_L1        ? QC_MAP_L1
               : ref & REF_L2         ? QC_MAP_L2
                                      : QC_MAP_DATA;
    }
    ctx->qed.map_class = cls;
}

/* The backing file QEMU's open reads from the header it accepted: the name
 * (a C string up to its first NUL; bytes past the end of the file read as
 * zeros), and raw as its format when the header says not to probe it. A
 * name as long as QEMU's buffer or longer fails QEMU's open, and an empty
 * one opens no backing file: none. */
static void record_backing(qc_ctx *ctx, const qc_qed_header *h)
{
    qc_result *r = ctx->res;
    if (!(h->features & QC_QED_F_BACKING_FILE))
        return;
    uint64_t off = h->backing_filename_offset;
    uint64_t have = off < ctx->file_size ? ctx->file_size - off : 0;
    size_t n = have < h->backing_filename_size ? (size_t)have : h->backing_filename_size;
    memset(r->backing_file, 0, sizeof(r->backing_file));
    if (!n || !qc_read(ctx, off, r->backing_file, n, "QED backing file name") ||
        !r->backing_file[0])
        return;
    r->header.backing_file = r->backing_file;
    if (h->features & QC_QED_F_BACKING_FORMAT_NO_PROBE) {
        snprintf(r->backing_format, sizeof(r->backing_format), "raw");
        r->header.backing_format = r->backing_format;
    }
}

/* The header as QEMU's open judges it. False: QEMU would not open the
 * image (reported), nothing else can be checked. */
static bool check_header(qc_ctx *ctx, const qc_qed_header *h)
{
    const char *obj = "QED header";
    uint64_t unknown = h->features & ~QC_QED_FEATURES_KNOWN;
    if (unknown) {
        qc_report(ctx, QC_P_QED_UNKNOWN_FEATURE, obj, 16, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = unknown});
        return false;
    }
    if (h->cluster_size < QC_QED_MIN_CLUSTER_SIZE || h->cluster_size > QC_QED_MAX_CLUSTER_SIZE ||
        (h->cluster_size & (h->cluster_size - 1))) {
        qc_report(ctx, QC_P_QED_CLUSTER_SIZE_INVALID, obj, 4, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->cluster_size});
        return false;
    }
    if (h->table_size < QC_QED_MIN_TABLE_SIZE || h->table_size > QC_QED_MAX_TABLE_SIZE ||
        (h->table_size & (h->table_size - 1))) {
        qc_report(ctx, QC_P_QED_TABLE_SIZE_INVALID, obj, 8, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->table_size});
        return false;
    }
    if (h->image_size % 512 || h->image_size > qc_qed_max_image_size(h)) {
        qc_report(ctx, QC_P_QED_IMAGE_SIZE_INVALID, obj, 48, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED,
                                    .value = h->image_size, .expected = qc_qed_max_image_size(h)});
        return false;
    }
    return true;
}

void qc_pass_qed(qc_ctx *ctx, const uint8_t *raw, size_t raw_len)
{
    qed_walk w = {.ctx = ctx};
    qc_qed_header_decode(raw, raw_len, &w.h);
    ctx->res->qed = true;
    ctx->qed.h = w.h;
    if (!check_header(ctx, &w.h))
        return;
    const qc_qed_header *h = &w.h;
    w.cluster_size = h->cluster_size;
    w.entries = qc_qed_table_entries(h);
    w.table_bytes = (uint64_t)h->table_size * h->cluster_size;
    w.file_end = qed_file_end(ctx->file_size, w.cluster_size);
    w.nclusters = w.file_end / w.cluster_size;
    ctx->res->total_clusters = qc_div_round_up(h->image_size, w.cluster_size);
    ctx->qed = (qc_qed_view){.h = w.h, .cluster_size = w.cluster_size, .entries = w.entries,
                             .file_end = w.file_end, .nclusters = w.nclusters,
                             .trailing_leak = w.nclusters};
    const char *obj = "QED header";
    /* In QEMU's order: the L1 table against the header (in 64 bits), then
     * the header's size in bytes against 32 bits. */
    w.header_end = (uint64_t)h->header_size * w.cluster_size;
    if (!table_offset_valid(&w, h->l1_table_offset)) {
        qc_report(ctx, QC_P_QED_L1_OFFSET_INVALID, obj, 40, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_SIZE | QC_CTX_FILE_SIZE,
                                    .host_offset = h->l1_table_offset, .size = w.table_bytes,
                                    .file_size = ctx->file_size});
        return;
    }
    if (h->header_size > UINT32_MAX / h->cluster_size) {
        qc_report(ctx, QC_P_QED_HEADER_SIZE_INVALID, obj, 12, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->header_size});
        return;
    }
    if ((h->features & QC_QED_F_BACKING_FILE) &&
        (uint64_t)h->backing_filename_offset + h->backing_filename_size > w.header_end) {
        qc_report(ctx, QC_P_QED_BACKING_NAME_INVALID, obj, 56, 1,
                  &(qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_SIZE | QC_CTX_EXPECTED,
                                    .host_offset = h->backing_filename_offset,
                                    .size = h->backing_filename_size, .expected = w.header_end});
        return;
    }
    /* QEMU reads the name into a PATH_MAX buffer with its NUL, and fails
     * the open for a longer one. */
    if ((h->features & QC_QED_F_BACKING_FILE) && h->backing_filename_size > QC_NAME_MAX) {
        qc_report(ctx, QC_P_QED_BACKING_NAME_INVALID, obj, 60, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_EXPECTED, .variant = 1,
                                    .size = h->backing_filename_size, .expected = QC_NAME_MAX});
        return;
    }
    record_backing(ctx, h);
    if (!qc_map_begin(ctx, qc_div_round_up(ctx->file_size, w.cluster_size),
                      (unsigned)__builtin_ctzll(w.cluster_size)))
        return;
    if (h->features & QC_QED_F_NEED_CHECK)
        qc_report(ctx, QC_P_QED_NEED_CHECK, obj, 16, 1, &(qc_finding_ctx){0});
    if (h->compat_features)
        qc_report(ctx, QC_P_QED_UNKNOWN_COMPAT_FEATURE, obj, 24, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->compat_features});
    if (h->autoclear_features)
        qc_report(ctx, QC_P_QED_UNKNOWN_AUTOCLEAR_FEATURE, obj, 32, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->autoclear_features});

    /* Memory follows the file: a reference per cluster it has, and two
     * tables. */
    uint8_t *l1 = qc_alloc(ctx, w.table_bytes, "QED L1 table");
    w.table = l1 ? qc_alloc(ctx, w.table_bytes, "QED L2 table") : NULL;
    w.first_ref = w.table ? qc_alloc(ctx, (w.nclusters ? w.nclusters : 1) * 8,
                                     "QED cluster references")
                          : NULL;
    if (w.first_ref) {
        for (uint64_t c = 0; c < w.nclusters; c++)
            w.first_ref[c] = REF_NONE;
        if (qc_read(ctx, h->l1_table_offset, l1, (size_t)w.table_bytes, "L1 table")) {
            walk_tables(&w, l1);
            /* As QEMU: leaks only when every table could be read. */
            if (!w.read_failed && !ctx->stop) {
                find_leaks(&w);
                ctx->qed.walked = !ctx->stop;
            }
        }
    }
    if (ctx->qed.walked && ctx->options.map_cells)
        classify_clusters(&w);
    free(w.first_ref);
    free(w.table);
    free(l1);
}
