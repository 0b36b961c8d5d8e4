/*
 * Per-host-cluster maps: the computed refcounts with their flags, and
 * bitsets. Both are paged (see ctx.h): pages are allocated on first write
 * and charged to the context's memory limit, and the directory of pages is
 * sized by the real file, never by header claims.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

/* Memory for a map: charged to ctx, or (ctx NULL: a repair's set that
 * outlives the checks it is used with) plain zeroed memory. */
static void *map_alloc(qc_ctx *ctx, uint64_t bytes, const char *what)
{
    if (ctx)
        return qc_alloc(ctx, bytes, what);
    return bytes <= SIZE_MAX ? calloc(1, (size_t)bytes) : NULL;
}

static void map_free(qc_ctx *ctx, void *p, uint64_t bytes)
{
    if (ctx)
        qc_free(ctx, p, bytes);
    else
        free(p);
}

static void **alloc_directory(qc_ctx *ctx, uint64_t clusters, uint64_t *nb_pages,
                              const char *what)
{
    *nb_pages = qc_div_round_up(clusters, QC_PAGE_CLUSTERS);
    uint64_t bytes;
    if (!qc_mul_ok(*nb_pages ? *nb_pages : 1, sizeof(void *), &bytes))
        bytes = UINT64_MAX;
    return map_alloc(ctx, bytes, what);
}

bool qc_refmap_init(qc_ctx *ctx, qc_refmap *map, uint64_t clusters)
{
    memset(map, 0, sizeof(*map));
    map->ctx = ctx;
    map->clusters = clusters;
    map->pages = alloc_directory(ctx, clusters, &map->nb_pages, "computed refcount map");
    if (!map->pages)
        return false;
    map->width_log = qc_alloc(ctx, map->nb_pages, "computed refcount map");
    return map->width_log != NULL;
}

static uint64_t page_bytes(unsigned width_log)
{
    return QC_PAGE_CLUSTERS << width_log;
}

void qc_refmap_release(qc_refmap *map)
{
    for (uint64_t p = 0; map->pages && p < map->nb_pages; p++)
        qc_free(map->ctx, map->pages[p], page_bytes(map->width_log[p]));
    qc_free(map->ctx, map->pages, map->nb_pages * sizeof(void *));
    qc_free(map->ctx, map->width_log, map->nb_pages);
    memset(map, 0, sizeof(*map));
}

static void cell_store(void *page, unsigned width_log, uint64_t i, uint64_t v)
{
    switch (width_log) {
    case 0:
        ((uint8_t *)page)[i] = (uint8_t)v;
        break;
    case 1:
        ((uint16_t *)page)[i] = (uint16_t)v;
        break;
    case 2:
        ((uint32_t *)page)[i] = (uint32_t)v;
        break;
    default:
        ((uint64_t *)page)[i] = v;
        break;
    }
}

/* Re-encode page p with cells twice as wide. */
static bool widen_page(qc_refmap *map, uint64_t p)
{
    unsigned from = map->width_log[p], to = from + 1;
    void *wide = qc_alloc(map->ctx, page_bytes(to), "computed refcount map");
    if (!wide)
        return false;
    unsigned to_bits = qc_cell_count_bits(to);
    for (uint64_t i = 0; i < QC_PAGE_CLUSTERS; i++) {
        uint64_t cell = qc_cell_load(map->pages[p], from, i);
        cell_store(wide, to, i,
                   qc_cell_count(cell, from) | (uint64_t)qc_cell_flags(cell, from) << to_bits);
    }
    qc_free(map->ctx, map->pages[p], page_bytes(from));
    map->pages[p] = wide;
    map->width_log[p] = (uint8_t)to;
    return true;
}

/* Store count `count` (saturated to what 8-byte cells hold) and `flags`
 * in the cell of `cluster`, widening its page as needed. */
static bool store_cell(qc_refmap *map, uint64_t cluster, uint64_t count, unsigned flags)
{
    uint64_t p = cluster >> QC_PAGE_SHIFT, i = cluster & (QC_PAGE_CLUSTERS - 1);
    if (!map->pages[p]) {
        if (count == 0 && flags == 0)
            return true;
        map->pages[p] = qc_alloc(map->ctx, page_bytes(0), "computed refcount map");
        if (!map->pages[p])
            return false;
    }
    uint64_t widest = (1ull << qc_cell_count_bits(3)) - 1;
    if (count > widest)
        count = widest;
    while (map->width_log[p] < 3 && count >> qc_cell_count_bits(map->width_log[p]))
        if (!widen_page(map, p))
            return false;
    unsigned bits = qc_cell_count_bits(map->width_log[p]);
    cell_store(map->pages[p], map->width_log[p], i, count | (uint64_t)flags << bits);
    return true;
}

int qc_refmap_add_slow(qc_refmap *map, uint64_t cluster, uint64_t n, unsigned flags)
{
    unsigned wl;
    uint64_t cell = qc_refmap_cell(map, cluster, &wl);
    uint64_t count = qc_cell_count(cell, wl);
    count = n > UINT64_MAX - count ? UINT64_MAX : count + n;
    flags |= qc_cell_flags(cell, wl);
    return store_cell(map, cluster, count, flags) ? (int)flags : -1;
}

bool qc_refmap_set(qc_refmap *map, uint64_t cluster, uint64_t value)
{
    return store_cell(map, cluster, value, qc_refmap_flags(map, cluster));
}

uint64_t qc_refmap_next_page(const qc_refmap *map, uint64_t cluster, uint64_t limit)
{
    if (limit > map->clusters)
        limit = map->clusters;
    for (uint64_t p = cluster >> QC_PAGE_SHIFT; p < map->nb_pages; p++) {
        uint64_t start = p == cluster >> QC_PAGE_SHIFT ? cluster : p << QC_PAGE_SHIFT;
        if (start >= limit)
            break;
        if (map->pages[p])
            return start;
    }
    return limit;
}

void qc_unfollowed_leaf(qc_ctx *ctx, uint64_t host_offset)
{
    uint64_t cluster = host_offset >> ctx->geo.cluster_bits;
    if (cluster < ctx->file_clusters) {
        qc_bitset_set(&ctx->suspect, cluster);
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

bool qc_claimed_past_eof(const qc_ctx *ctx, uint64_t cluster)
{
    if (cluster >= ctx->past_eof_claims_end)
        return false;
    if (ctx->past_eof_claims_lost || !ctx->past_eof_claims_sorted)
        return true;
    size_t i = qc_lower_bound(ctx->past_eof_claims, ctx->nb_past_eof_claims,
                              sizeof(qc_cluster_run), offsetof(qc_cluster_run, first), cluster + 1);
    return i > 0 && cluster < ctx->past_eof_claims[i - 1].end;
}

void qc_unfollowed_bitmap_leaf(qc_ctx *ctx, uint64_t host_offset)
{
    uint64_t cluster = host_offset >> ctx->geo.cluster_bits;
    if (cluster < ctx->file_clusters) {
        qc_bitset_set(&ctx->suspect, cluster);
        qc_bitset_set(&ctx->bitmap_suspect, cluster);
    } else {
        ctx->unfollowed++;
        ctx->unfollowed_bitmaps++;
        qc_note_past_eof(ctx, host_offset, ctx->geo.cluster_size);
    }
}

bool qc_orphan_binds(const qc_ctx *ctx, bool rebuilds_refcounts, bool drops_bitmaps,
                     uint64_t cluster)
{
    if (!qc_bitset_test(&ctx->orphans, cluster))
        return false;
    uint64_t others = ctx->unfollowed - (rebuilds_refcounts ? ctx->unfollowed_refblocks : 0) -
                      (drops_bitmaps ? ctx->unfollowed_bitmaps : 0);
    return others > 0 || (qc_bitset_test(&ctx->suspect, cluster) &&
                          !(drops_bitmaps && qc_bitset_test(&ctx->bitmap_suspect, cluster)));
}

#define BITSET_PAGE_BYTES (QC_PAGE_CLUSTERS / 8)

bool qc_bitset_init(qc_ctx *ctx, qc_bitset *set, uint64_t bits)
{
    memset(set, 0, sizeof(*set));
    set->ctx = ctx;
    set->bits = bits;
    set->pages = (uint64_t **)alloc_directory(ctx, bits, &set->nb_pages, "cluster bitmap");
    return set->pages != NULL;
}

void qc_bitset_release(qc_bitset *set)
{
    for (uint64_t p = 0; set->pages && p < set->nb_pages; p++)
        map_free(set->ctx, set->pages[p], BITSET_PAGE_BYTES);
    map_free(set->ctx, set->pages, set->nb_pages * sizeof(void *));
    memset(set, 0, sizeof(*set));
}

bool qc_bitset_set(qc_bitset *set, uint64_t i)
{
    uint64_t **page = &set->pages[i >> QC_PAGE_SHIFT];
    if (!*page && !(*page = map_alloc(set->ctx, BITSET_PAGE_BYTES, "cluster bitmap")))
        return false;
    uint64_t bit = i & (QC_PAGE_CLUSTERS - 1);
    (*page)[bit / 64] |= 1ull << (bit % 64);
    return true;
}

uint64_t qc_bitset_next(const qc_bitset *set, uint64_t i)
{
    while (i < set->bits) {
        const uint64_t *page = set->pages[i >> QC_PAGE_SHIFT];
        if (!page) {
            i = ((i >> QC_PAGE_SHIFT) + 1) << QC_PAGE_SHIFT;
            continue;
        }
        uint64_t bit = i & (QC_PAGE_CLUSTERS - 1);
        uint64_t word = page[bit / 64] >> (bit % 64);
        if (word) {
            uint64_t at = i + (uint64_t)__builtin_ctzll(word);
            return at < set->bits ? at : set->bits;
        }
        i += 64 - bit % 64;
    }
    return set->bits;
}
