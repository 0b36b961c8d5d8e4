/*
 * Per-host-cluster maps: computed refcounts (saturating dense counters) and
 * bitsets. Sized by the real file, never by header claims, and charged to
 * the context's memory limit.
 */
#include "ctx.h"

bool qc_refmap_init(qc_ctx *ctx, qc_refmap *map, uint64_t clusters, unsigned refcount_bits)
{
    map->clusters = clusters;
    /* Counters must be able to exceed refcount_max so overflow shows. */
    map->width = refcount_bits < 16 ? 2 : 4;
    uint64_t bytes;
    if (!qc_mul_ok(clusters, map->width, &bytes))
        bytes = UINT64_MAX;
    map->counts = qc_alloc(ctx, bytes, "computed refcount map");
    return map->counts != NULL;
}

static uint64_t refmap_saturation(const qc_refmap *map)
{
    return map->width == 2 ? UINT16_MAX : UINT32_MAX;
}

void qc_refmap_add(qc_refmap *map, uint64_t cluster, uint64_t n)
{
    uint64_t max = refmap_saturation(map);
    if (map->width == 2) {
        uint16_t *c = (uint16_t *)map->counts + cluster;
        *c = (uint16_t)(n >= max - *c ? max : *c + n);
    } else {
        uint32_t *c = (uint32_t *)map->counts + cluster;
        *c = (uint32_t)(n >= max - *c ? max : *c + n);
    }
}

void qc_refmap_set(qc_refmap *map, uint64_t cluster, uint64_t value)
{
    uint64_t max = refmap_saturation(map);
    if (value > max)
        value = max;
    if (map->width == 2)
        ((uint16_t *)map->counts)[cluster] = (uint16_t)value;
    else
        ((uint32_t *)map->counts)[cluster] = (uint32_t)value;
}

uint64_t qc_refmap_get(const qc_refmap *map, uint64_t cluster)
{
    return map->width == 2 ? ((const uint16_t *)map->counts)[cluster]
                           : ((const uint32_t *)map->counts)[cluster];
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

bool qc_bitset_init(qc_ctx *ctx, qc_bitset *set, uint64_t bits)
{
    set->bits = bits;
    set->words = qc_alloc(ctx, qc_div_round_up(bits, 64) * 8, "cluster bitmap");
    return set->words != NULL;
}
