/*
 * Metadata extents (overlaps: docs/passes.md §3.6, code 701): every
 * structure that owns host clusters (header, L1 and L2 tables, refcount
 * table and blocks, snapshot table, bitmap directory, tables and data,
 * encryption header).
 *
 * Registering an extent counts its references in the computed refcount
 * map. After all are registered, qc_extents_finish() sorts them, reports
 * any two that share a cluster (the less trusted one is then not
 * followed), and builds a bitset of metadata clusters so the L2 walk can
 * tell in O(1) when a guest data cluster lands on metadata.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

/* Lower ranks are more trusted: when two structures overlap, the one with
 * the higher rank is assumed to be the bad pointer. */
static int owner_rank(const qc_extent *e)
{
    switch (e->owner) {
    case QC_OWN_HEADER:
        return 0;
    case QC_OWN_REFTABLE:
        return 1;
    case QC_OWN_CRYPTO_HEADER:
        return 2;
    case QC_OWN_REFBLOCK:
        return 3;
    case QC_OWN_L1:
        return e->index == QC_ACTIVE ? 4 : 6;
    case QC_OWN_SNAPSHOT_TABLE:
        return 5;
    case QC_OWN_BITMAP_DIRECTORY:
        return 7;
    case QC_OWN_L2:
        return 8;
    case QC_OWN_BITMAP_TABLE:
        return 9;
    case QC_OWN_BITMAP_DATA:
        return 10;
    }
    return 11;
}

void qc_describe_extent(const qc_check_view *v, const qc_extent *e, char *buf, size_t len)
{
    char snap[160];
    switch (e->owner) {
    case QC_OWN_HEADER:
        snprintf(buf, len, "image header");
        return;
    case QC_OWN_L1:
        if (e->index == QC_ACTIVE) {
            snprintf(buf, len, "active L1 table");
        } else {
            qc_describe_snapshot(v, e->index, snap, sizeof(snap));
            snprintf(buf, len, "L1 table of %s", snap);
        }
        return;
    case QC_OWN_L2:
        if (e->index == QC_ACTIVE) {
            snprintf(buf, len, "L2 table (active L1 index %u)", e->index2);
        } else {
            qc_describe_snapshot(v, e->index, snap, sizeof(snap));
            snprintf(buf, len, "L2 table (L1 index %u of %s)", e->index2, snap);
        }
        return;
    case QC_OWN_REFTABLE:
        snprintf(buf, len, "refcount table");
        return;
    case QC_OWN_REFBLOCK:
        snprintf(buf, len, "refcount block %u", e->index);
        return;
    case QC_OWN_SNAPSHOT_TABLE:
        snprintf(buf, len, "snapshot table");
        return;
    case QC_OWN_BITMAP_DIRECTORY:
        snprintf(buf, len, "bitmap directory");
        return;
    case QC_OWN_BITMAP_TABLE:
        snprintf(buf, len, "table of bitmap %u", e->index);
        return;
    case QC_OWN_BITMAP_DATA:
        snprintf(buf, len, "data cluster %u of bitmap %u", e->index2, e->index);
        return;
    case QC_OWN_CRYPTO_HEADER:
        snprintf(buf, len, "encryption header");
        return;
    }
    snprintf(buf, len, "metadata");
}

void qc_describe_l2_table(const qc_check_view *v, const qc_l2_table *t, char *buf, size_t len)
{
    const qc_l2_ref *first = &v->l2_refs[t->first_ref];
    qc_extent e = {.start = first->l2_offset,
                   .length = v->geo.cluster_size,
                   .index = first->snapshot,
                   .index2 = first->l1_index,
                   .owner = QC_OWN_L2};
    qc_describe_extent(v, &e, buf, len);
}

bool qc_add_extent(qc_ctx *ctx, qc_owner owner, uint32_t index, uint32_t index2, uint64_t start,
                   uint64_t length, uint64_t refs)
{
    if (length == 0 || !qc_range_within(start, length, ctx->file_size))
        return false;
    qc_extent *grown = qc_grow(ctx, ctx->extents, &ctx->cap_extents, sizeof(qc_extent),
                               ctx->nb_extents + 1, "metadata extent list");
    if (!grown)
        return false;
    ctx->extents = grown;
    ctx->extents[ctx->nb_extents++] =
        (qc_extent){start, length, index, index2, (uint8_t)owner, false};
    uint64_t first = start >> ctx->geo.cluster_bits;
    uint64_t last = (start + length - 1) >> ctx->geo.cluster_bits;
    for (uint64_t c = first; c <= last; c++)
        if (qc_refmap_add(&ctx->refmap, c, refs, 0) < 0)
            return false;
    return true;
}

static int extent_cmp(const void *a, const void *b)
{
    const qc_extent *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    int rx = owner_rank(x), ry = owner_rank(y);
    return rx < ry ? -1 : rx > ry;
}

static uint64_t extent_end_cluster(const qc_check_view *v, const qc_extent *e)
{
    return (e->start + e->length - 1) >> v->geo.cluster_bits;
}

/* Sort the extents with little extra memory. The L2 tables, registered
 * last and in offset order, are a sorted run at the end of the array that
 * is most of it on a large image; qsort would want a copy of the whole
 * array (glibc's merge sort does), so sort only what comes before the
 * final sorted run, then merge the two with a copy of that part alone. */
static bool sort_extents(qc_ctx *ctx)
{
    qc_extent *e = ctx->extents;
    size_t n = ctx->nb_extents, run = n ? n - 1 : 0;
    while (run > 0 && extent_cmp(&e[run - 1], &e[run]) <= 0)
        run--;
    if (run == 0)
        return true;
    qsort(e, run, sizeof(qc_extent), extent_cmp);
    qc_extent *head = qc_alloc(ctx, (uint64_t)run * sizeof(qc_extent), "metadata extent list");
    if (!head)
        return false;
    memcpy(head, e, run * sizeof(qc_extent));
    /* Merge head[0, run) and e[run, n) into e[0, n): the output never
     * overtakes the unread part of the tail. */
    size_t i = 0, j = run, out = 0;
    while (i < run)
        e[out++] = j < n && extent_cmp(&e[j], &head[i]) < 0 ? e[j++] : head[i++];
    qc_free(ctx, head, (uint64_t)run * sizeof(qc_extent));
    return true;
}

bool qc_extents_finish(qc_ctx *ctx)
{
    if (!sort_extents(ctx))
        return false;
    /* Sweep in start order, remembering the extent reaching furthest so
     * far; two extents conflict when they share a host cluster. */
    size_t reach = SIZE_MAX;
    for (size_t i = 0; i < ctx->nb_extents; i++) {
        qc_extent *e = &ctx->extents[i];
        uint64_t first = e->start >> ctx->geo.cluster_bits;
        if (reach != SIZE_MAX && extent_end_cluster(&ctx->view, &ctx->extents[reach]) >= first) {
            qc_extent *other = &ctx->extents[reach];
            qc_extent *loser = owner_rank(e) >= owner_rank(other) ? e : other;
            if (ctx->l2_over_refblock && (1u << e->owner | 1u << other->owner) ==
                                             (1u << QC_OWN_L2 | 1u << QC_OWN_REFBLOCK))
                loser = e->owner == QC_OWN_REFBLOCK ? e : other;
            qc_extent *winner = loser == e ? other : e;
            char a[200], b[200];
            qc_describe_extent(&ctx->view, loser, a, sizeof(a));
            qc_describe_extent(&ctx->view, winner, b, sizeof(b));
            qc_report(ctx, QC_P_METADATA_OVERLAP, a, loser->start, 1,
                      &(qc_finding_ctx){.present = QC_CTX_SIZE | QC_CTX_NAME | QC_CTX_HOST_OFFSET,
                                        .size = loser->length,
                                        .name = b,
                                        .host_offset = winner->start});
            if (!loser->conflicted) {
                loser->conflicted = true;
                ctx->unfollowed++;
            }
        }
        if (reach == SIZE_MAX ||
            extent_end_cluster(&ctx->view, e) > extent_end_cluster(&ctx->view, &ctx->extents[reach]))
            reach = i;
        for (uint64_t c = first; c <= extent_end_cluster(&ctx->view, e); c++)
            if (qc_refmap_add(&ctx->refmap, c, 0, QC_CELL_META) < 0)
                return false;
    }
    return true;
}

/* Index of the first extent starting at or after byte `pos`. */
static size_t first_starting_at(const qc_check_view *v, uint64_t pos)
{
    return qc_lower_bound(v->extents, v->nb_extents, sizeof(qc_extent),
                          offsetof(qc_extent, start), pos);
}

/* The extents covering a cluster, one after the other: scan back from the
 * last extent starting before the cluster's end over extents that may
 * still cover it. */
typedef struct covering_scan {
    uint64_t cluster;
    size_t lo, i;
} covering_scan;

static covering_scan covering_begin(const qc_check_view *v, uint64_t cluster)
{
    size_t lo = first_starting_at(v, (cluster + 1) << v->geo.cluster_bits);
    return (covering_scan){cluster, lo, lo};
}

static const qc_extent *covering_next(const qc_check_view *v, covering_scan *s)
{
    while (s->i-- > 0 && s->lo - s->i <= 64) { /* metadata extents do not nest deeply */
        const qc_extent *e = &v->extents[s->i];
        if (extent_end_cluster(v, e) >= s->cluster &&
            (e->start >> v->geo.cluster_bits) <= s->cluster)
            return e;
    }
    s->i = 0;
    return NULL;
}

/* The extent covering `cluster` that is not `skip` (may be NULL), or NULL. */
static const qc_extent *extent_covering(const qc_check_view *v, uint64_t cluster, const qc_extent *skip)
{
    covering_scan s = covering_begin(v, cluster);
    const qc_extent *e;
    while ((e = covering_next(v, &s)) && e == skip)
        ;
    return e;
}

const qc_extent *qc_extent_at(const qc_check_view *v, uint64_t cluster)
{
    return extent_covering(v, cluster, NULL);
}

/* The extent of `owner` starting at `offset`, or NULL. */
static const qc_extent *extent_of(const qc_check_view *v, qc_owner owner, uint64_t offset)
{
    for (size_t i = first_starting_at(v, offset);
         i < v->nb_extents && v->extents[i].start == offset; i++)
        if (v->extents[i].owner == owner)
            return &v->extents[i];
    return NULL;
}

bool qc_extent_conflicted(const qc_check_view *v, qc_owner owner, uint64_t offset)
{
    const qc_extent *e = extent_of(v, owner, offset);
    return e && e->conflicted;
}

bool qc_extent_shared(const qc_check_view *v, qc_owner owner, uint64_t offset)
{
    const qc_extent *e = extent_of(v, owner, offset);
    return e && extent_covering(v, offset >> v->geo.cluster_bits, e) != NULL;
}

uint32_t qc_cluster_owners(const qc_check_view *v, uint64_t cluster)
{
    uint32_t owners = 0;
    covering_scan s = covering_begin(v, cluster);
    for (const qc_extent *e; (e = covering_next(v, &s));)
        owners |= 1u << e->owner;
    return owners;
}

bool qc_cluster_shared(const qc_check_view *v, uint64_t cluster, const qc_extent *pair[2])
{
    const qc_extent *a = extent_covering(v, cluster, NULL);
    const qc_extent *b = a ? extent_covering(v, cluster, a) : NULL;
    if (pair) {
        pair[0] = a;
        pair[1] = b;
    }
    return b != NULL;
}
