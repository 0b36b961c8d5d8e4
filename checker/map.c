/*
 * The host map (qc_result_map): every host cluster of the file put in one
 * class (qc_map_class), aggregated into at most options.map_cells cells.
 *
 * Almost everything comes from what the passes record anyway: the
 * computed refcount map (its META flag and counts), the metadata extents
 * (their owners, and two of them on one cluster), the comparison's sets
 * (refcount_above_refs, orphans). Three facts are recorded for the map
 * alone, only when it is asked for, in paged sets that cost memory only
 * where a mark falls: the clusters of compressed data (the L2 walk), guest
 * data on metadata (the walk's dataOverlapsMetadata) and what corruption
 * findings name (qc_report).
 *
 * One sweep in cluster order after the comparison classifies each cluster
 * and counts it into its cell: memory is the cells, bounded by the
 * caller's map_cells and by the file, charged to the check's accountant.
 *
 * A QED image has no refcounts: its sweep reads the class the QED pass
 * gave each cluster from its first referrer (the L1 table, an L2 table or
 * guest data; nothing after the header is a leak), with the same overlap
 * and corrupt marks, into the same cells.
 */
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

static const char *const class_names[QC_MAP_CLASSES] = {
    [QC_MAP_FREE] = "free",
    [QC_MAP_HEADER] = "header",
    [QC_MAP_L1] = "l1",
    [QC_MAP_L2] = "l2",
    [QC_MAP_REFCOUNT_TABLE] = "refcount-table",
    [QC_MAP_REFCOUNT_BLOCK] = "refcount-block",
    [QC_MAP_SNAPSHOT_TABLE] = "snapshot-table",
    [QC_MAP_SNAPSHOT_L1] = "snapshot-l1",
    [QC_MAP_BITMAP] = "bitmap",
    [QC_MAP_DATA] = "data",
    [QC_MAP_COMPRESSED] = "compressed",
    [QC_MAP_LEAKED] = "leaked",
    [QC_MAP_ORPHANED] = "orphaned",
    [QC_MAP_CORRUPT] = "corrupt",
    [QC_MAP_OVERLAP] = "overlap",
};

const char *qc_map_class_name(qc_map_class cls)
{
    return (unsigned)cls < QC_MAP_CLASSES ? class_names[cls] : NULL;
}

const qc_map_cell *qc_result_map(const qc_result *r, size_t *cells, uint64_t *clusters_per_cell,
                                 uint64_t *clusters, uint64_t *cluster_size)
{
    bool have = r && r->map;
    if (cells)
        *cells = have ? r->map_cells : 0;
    if (clusters_per_cell)
        *clusters_per_cell = have ? r->map_clusters_per_cell : 0;
    if (clusters)
        *clusters = have ? r->map_clusters : 0;
    if (cluster_size)
        *cluster_size = have ? r->map_cluster_size : 0;
    return have ? r->map : NULL;
}

uint64_t qc_result_map_clusters(const qc_result *r, qc_map_class cls)
{
    return r && r->map && (unsigned)cls < QC_MAP_CLASSES ? r->map_class_clusters[cls] : 0;
}

static bool map_wanted(const qc_ctx *ctx)
{
    return ctx->options.map_cells != 0;
}

void qc_map_mark(qc_bitset *set, uint64_t first, uint64_t count)
{
    if (!set->pages)
        return;
    uint64_t end = first + count < first ? UINT64_MAX : first + count;
    if (end > set->bits)
        end = set->bits;
    for (uint64_t c = first; c < end; c++)
        if (!qc_bitset_set(set, c))
            return; /* memory ran out: the check stops, and no map is built */
}

bool qc_map_begin(qc_ctx *ctx, uint64_t clusters, unsigned cluster_bits)
{
    if (!map_wanted(ctx))
        return true;
    ctx->map_clusters = clusters;
    ctx->map_cluster_bits = cluster_bits;
    if (!qc_bitset_init(&ctx->mem, &ctx->map_compressed, clusters) ||
        !qc_bitset_init(&ctx->mem, &ctx->map_corrupt, clusters) ||
        !qc_bitset_init(&ctx->mem, &ctx->map_overlap, clusters))
        return false;
    const unsigned bits = cluster_bits;
    for (unsigned i = 0; i < ctx->nb_map_early; i++) {
        uint64_t first = ctx->map_early[i].start >> bits;
        uint64_t last = (ctx->map_early[i].end - 1) >> bits;
        qc_map_mark(&ctx->map_corrupt, first, last - first + 1);
    }
    return true;
}

void qc_map_release(qc_ctx *ctx)
{
    qc_bitset_release(&ctx->map_compressed);
    qc_bitset_release(&ctx->map_corrupt);
    qc_bitset_release(&ctx->map_overlap);
}

void qc_map_note_finding(qc_ctx *ctx, const qc_problem *p, uint64_t offset,
                         const qc_finding_ctx *fc)
{
    if (!map_wanted(ctx) || p->severity != QC_SEV_CORRUPTION)
        return;
    bool range = fc && (fc->present & QC_CTX_CLUSTER);
    if (!ctx->map_corrupt.pages) {
        /* Before the sets exist (the header pass): only byte offsets can
         * be kept, the cluster size is not known yet. */
        if (!range && offset != QC_NO_OFFSET && offset < ctx->file_size &&
            ctx->nb_map_early < sizeof(ctx->map_early) / sizeof(ctx->map_early[0]))
            ctx->map_early[ctx->nb_map_early++] = (qc_byte_range){offset, offset + 1};
        return;
    }
    if (range)
        qc_map_mark(&ctx->map_corrupt, fc->cluster,
                    (fc->present & QC_CTX_CLUSTERS) && fc->clusters ? fc->clusters : 1);
    else if (offset != QC_NO_OFFSET && offset < ctx->file_size)
        qc_map_mark(&ctx->map_corrupt, offset >> ctx->map_cluster_bits, 1);
}

/* ---- the sweep ---- */

typedef struct map_build {
    qc_map_cell *cells;
    uint64_t per_cell;
    size_t cell;      /* the cell being filled */
    uint64_t in_cell; /* clusters counted into it so far */
    uint64_t counts[QC_MAP_CLASSES]; /* of the cell being filled */
    uint64_t *totals;
    /* The run of equal classes not yet counted. */
    unsigned run_class;
    uint64_t run_len;
} map_build;

static void close_cell(map_build *b)
{
    qc_map_cell *cell = &b->cells[b->cell++];
    unsigned dominant = 0;
    uint32_t classes = 0;
    for (unsigned k = 0; k < QC_MAP_CLASSES; k++) {
        if (!b->counts[k])
            continue;
        classes |= 1u << k;
        if (b->counts[k] > b->counts[dominant])
            dominant = k;
        if (k >= QC_MAP_FIRST_PROBLEM)
            cell->problem = (uint8_t)k; /* the classes go up in severity */
        b->totals[k] += b->counts[k];
    }
    cell->dominant = (uint8_t)dominant;
    cell->classes = classes;
    memset(b->counts, 0, sizeof(b->counts));
    b->in_cell = 0;
}

static void count_run(map_build *b, unsigned cls, uint64_t n)
{
    while (n) {
        uint64_t take = b->per_cell - b->in_cell < n ? b->per_cell - b->in_cell : n;
        b->counts[cls] += take;
        b->in_cell += take;
        n -= take;
        if (b->in_cell == b->per_cell)
            close_cell(b);
    }
}

static inline void add(map_build *b, unsigned cls, uint64_t n)
{
    if (cls == b->run_class) {
        b->run_len += n;
        return;
    }
    count_run(b, b->run_class, b->run_len);
    b->run_class = cls;
    b->run_len = n;
}

static unsigned owner_class(const qc_extent *e)
{
    switch (e->owner) {
    case QC_OWN_HEADER:
    case QC_OWN_CRYPTO_HEADER:
        return QC_MAP_HEADER;
    case QC_OWN_L1:
        return e->index == QC_ACTIVE ? QC_MAP_L1 : QC_MAP_SNAPSHOT_L1;
    case QC_OWN_L2:
        /* An L2 table's extent is named after its first reference, the
         * active ones first: a snapshot's only when no active L1 entry
         * references the table. */
        return e->index == QC_ACTIVE ? QC_MAP_L2 : QC_MAP_SNAPSHOT_L1;
    case QC_OWN_REFTABLE:
        return QC_MAP_REFCOUNT_TABLE;
    case QC_OWN_REFBLOCK:
        return QC_MAP_REFCOUNT_BLOCK;
    case QC_OWN_SNAPSHOT_TABLE:
        return QC_MAP_SNAPSHOT_TABLE;
    case QC_OWN_BITMAP_DIRECTORY:
    case QC_OWN_BITMAP_TABLE:
    case QC_OWN_BITMAP_DATA:
        return QC_MAP_BITMAP;
    }
    return QC_MAP_OVERLAP;
}

/* A cluster flagged META: the class of the structure owning it, or
 * overlap when two claim it (or none is found, which only happens when
 * many structures overlap there). */
static unsigned metadata_class(const qc_check_view *v, uint64_t cluster)
{
    const qc_extent *pair[2];
    if (qc_cluster_shared(v, cluster, pair) || !pair[0])
        return QC_MAP_OVERLAP;
    return owner_class(pair[0]);
}

static inline bool page_test(const uint64_t *page, uint64_t i)
{
    return page && (page[i / 64] >> (i % 64)) & 1;
}

/* The common page: one-byte cells, nothing on disk above the references,
 * no mark. Equal bytes are clusters of one class (but metadata, whose
 * class is its owner's): count them by runs, eight bytes at a time. */
static void sweep_plain_page(const qc_ctx *ctx, map_build *b, const uint8_t *cells,
                             uint64_t first, uint64_t n)
{
    const uint8_t meta = QC_CELL_META << (8 - QC_CELL_FLAG_BITS);
    for (uint64_t i = 0; i < n;) {
        uint8_t v = cells[i];
        if (v & meta) {
            add(b, metadata_class(&ctx->view, first + i), 1);
            i++;
            continue;
        }
        uint64_t j = i + 1, word = v * 0x0101010101010101ull, w;
        while (j + 8 <= n && (memcpy(&w, cells + j, 8), w == word))
            j += 8;
        while (j < n && cells[j] == v)
            j++;
        add(b, qc_cell_count(v, 0) ? QC_MAP_DATA : QC_MAP_FREE, j - i);
        i = j;
    }
}

/* Classify the clusters of refmap page p, [first, first + n). */
static void sweep_page(const qc_ctx *ctx, map_build *b, uint64_t p, uint64_t first, uint64_t n)
{
    const qc_refmap *map = &ctx->refmap;
    const void *cells = map->pages[p];
    const uint64_t *above = ctx->refcount_above_refs.pages[p];
    const uint64_t *orphan = ctx->orphans.pages[p];
    const uint64_t *corrupt = ctx->map_corrupt.pages[p];
    const uint64_t *overlap = ctx->map_overlap.pages[p];
    const uint64_t *compressed = ctx->map_compressed.pages[p];
    if (!cells && !above && !corrupt && !overlap) {
        add(b, QC_MAP_FREE, n); /* nothing counted, nothing on disk above it */
        return;
    }
    const unsigned wl = cells ? map->width_log[p] : 0;
    if (cells && wl == 0 && !above && !corrupt && !overlap && !compressed) {
        sweep_plain_page(ctx, b, cells, first, n);
        return;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t cell = cells ? qc_cell_load(cells, wl, i) : 0;
        unsigned cls;
        if (page_test(overlap, i))
            cls = QC_MAP_OVERLAP;
        else if (page_test(corrupt, i))
            cls = QC_MAP_CORRUPT;
        else if (page_test(above, i))
            cls = page_test(orphan, i) ? QC_MAP_ORPHANED : QC_MAP_LEAKED;
        else if (qc_cell_flags(cell, wl) & QC_CELL_META)
            cls = metadata_class(&ctx->view, first + i);
        else if (qc_cell_count(cell, wl))
            cls = page_test(compressed, i) ? QC_MAP_COMPRESSED : QC_MAP_DATA;
        else
            cls = QC_MAP_FREE;
        add(b, cls, 1);
    }
}

/* A QED image's clusters: the class the QED pass gave each, unless a mark
 * says overlap or corrupt (the partial cluster that may end the file is
 * not one QEMU uses: free). */
static void sweep_qed(const qc_ctx *ctx, map_build *b)
{
    const qc_qed_view *q = &ctx->qed;
    for (uint64_t c = 0; c < ctx->map_clusters; c++) {
        unsigned cls;
        if (qc_bitset_test(&ctx->map_overlap, c))
            cls = QC_MAP_OVERLAP;
        else if (qc_bitset_test(&ctx->map_corrupt, c))
            cls = QC_MAP_CORRUPT;
        else
            cls = c < q->nclusters ? q->map_class[c] : QC_MAP_FREE;
        add(b, cls, 1);
    }
}

/* Every pass the map reads from ran to its end. */
static bool map_complete(const qc_ctx *ctx)
{
    if (ctx->res->qed)
        return ctx->qed.walked && ctx->qed.map_class;
    return ctx->compared && !ctx->stop;
}

void qc_map_build(qc_ctx *ctx)
{
    qc_result *r = ctx->res;
    qc_result_drop_map(r);
    uint64_t clusters = ctx->map_clusters;
    if (!map_wanted(ctx) || !map_complete(ctx) || clusters == 0)
        return;
    uint64_t per_cell = qc_div_round_up(clusters, ctx->options.map_cells);
    uint64_t nb_cells = qc_div_round_up(clusters, per_cell);
    /* Charged to the accountant, but a map that does not fit is left out
     * rather than reported: the check itself is complete. */
    qc_mem quiet = ctx->mem;
    quiet.refused = NULL;
    quiet.stopped = NULL; /* a QED check ends stopped: nothing of qcow2's runs */
    qc_map_cell *cells = qc_mem_alloc(&quiet, nb_cells * sizeof(qc_map_cell), "host map");
    if (!cells)
        return;
    ctx->mem.used = quiet.used;
    map_build b = {.cells = cells, .per_cell = per_cell, .totals = r->map_class_clusters};
    memset(r->map_class_clusters, 0, sizeof(r->map_class_clusters));
    if (r->qed) {
        sweep_qed(ctx, &b);
    } else {
        for (uint64_t p = 0; p < ctx->refmap.nb_pages; p++) {
            uint64_t first = p << QC_PAGE_SHIFT;
            uint64_t n = clusters - first < QC_PAGE_CLUSTERS ? clusters - first
                                                             : QC_PAGE_CLUSTERS;
            sweep_page(ctx, &b, p, first, n);
        }
    }
    count_run(&b, b.run_class, b.run_len);
    if (b.in_cell)
        close_cell(&b);
    r->map = cells;
    r->map_cells = (size_t)nb_cells;
    r->map_clusters_per_cell = per_cell;
    r->map_clusters = clusters;
    r->map_cluster_size = (uint64_t)1 << ctx->map_cluster_bits;
}
