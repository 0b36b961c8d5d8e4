/*
 * Per-host-cluster maps (clustermap.c): the computed refcounts with their
 * flags, and bitsets, paged and charged to a memory accountant.
 */
#ifndef QC_CLUSTERMAP_H
#define QC_CLUSTERMAP_H

#include <stdbool.h>
#include <stdint.h>
#include "../layout/bytes.h"
#include "memory.h"

/* Per-host-cluster maps are paged: a page covers QC_PAGE_CLUSTERS clusters
 * and is allocated on its first write, so a sparse file costs a pointer
 * per page where nothing is, and memory follows the metadata actually
 * present rather than the file's length. */
#define QC_PAGE_SHIFT 15
#define QC_PAGE_CLUSTERS (1ull << QC_PAGE_SHIFT)

/* The computed refcounts, with three flags per cluster. A page's cells
 * start one byte wide (a count up to 31) and are widened to 2, 4 or 8
 * bytes when a count outgrows them, so a typical image costs one byte per
 * cluster and a count above any refcount_max stays visible. The flags
 * live in each cell's top three bits. */
enum {
    QC_CELL_META = 1,       /* some metadata structure owns the cluster */
    QC_CELL_COPIED = 2,     /* an active L2 entry maps it as data with COPIED set */
    QC_CELL_NOT_COPIED = 4, /* ... and with COPIED clear */
};
#define QC_CELL_FLAG_BITS 3

typedef struct qc_refmap {
    qc_mem *mem; /* the accountant its pages are charged to */
    uint64_t clusters;
    uint64_t nb_pages;
    void **pages;       /* NULL: every cell of the page is 0 */
    uint8_t *width_log; /* per page: cells of 1 << width_log bytes */
} qc_refmap;

/* A set of clusters, paged like the refcount map. */
typedef struct qc_bitset {
    qc_mem *mem; /* the accountant its pages are charged to; NULL: none */
    uint64_t bits;
    uint64_t nb_pages;
    uint64_t **pages; /* NULL: no bit of the page is set */
} qc_bitset;

bool qc_refmap_init(qc_mem *mem, qc_refmap *map, uint64_t clusters);
void qc_refmap_release(qc_refmap *map);
/* Add n references to `cluster` and set `flags` on it. Returns the
 * cluster's flags after the change, or -1 when a page could not be
 * allocated (the accountant's owner was told). */
int qc_refmap_add_slow(qc_refmap *map, uint64_t cluster, uint64_t n, unsigned flags);
/* Set the count of `cluster` to `value`, keeping its flags. */
bool qc_refmap_set(qc_refmap *map, uint64_t cluster, uint64_t value);
/* The first cluster in [cluster, limit) whose page is allocated (any
 * cluster skipped has count 0 and no flags), or `limit` if there is none.
 * The work is bounded by the pages up to `limit`. */
uint64_t qc_refmap_next_page(const qc_refmap *map, uint64_t cluster, uint64_t limit);

static inline uint64_t qc_cell_load(const void *page, unsigned width_log, uint64_t i)
{
    switch (width_log) {
    case 0:
        return ((const uint8_t *)page)[i];
    case 1:
        return ((const uint16_t *)page)[i];
    case 2:
        return ((const uint32_t *)page)[i];
    default:
        return ((const uint64_t *)page)[i];
    }
}

static inline unsigned qc_cell_count_bits(unsigned width_log)
{
    return (8u << width_log) - QC_CELL_FLAG_BITS;
}

/* A cell's count and flags, for cells of 1 << width_log bytes. */
static inline uint64_t qc_cell_count(uint64_t cell, unsigned width_log)
{
    return cell & ((1ull << qc_cell_count_bits(width_log)) - 1);
}

static inline unsigned qc_cell_flags(uint64_t cell, unsigned width_log)
{
    return (unsigned)(cell >> qc_cell_count_bits(width_log));
}

static inline int qc_refmap_add(qc_refmap *map, uint64_t cluster, uint64_t n, unsigned flags)
{
    uint8_t *page = map->pages[cluster >> QC_PAGE_SHIFT];
    if (page && map->width_log[cluster >> QC_PAGE_SHIFT] == 0) {
        uint8_t *cell = page + (cluster & (QC_PAGE_CLUSTERS - 1));
        unsigned v = *cell;
        if (n <= 31u - (v & 31u)) {
            v = (unsigned)(v + n) | flags << 5;
            *cell = (uint8_t)v;
            return (int)(v >> 5);
        }
    }
    return qc_refmap_add_slow(map, cluster, n, flags);
}

static inline uint64_t qc_refmap_cell(const qc_refmap *map, uint64_t cluster, unsigned *width_log)
{
    const void *page = map->pages[cluster >> QC_PAGE_SHIFT];
    if (!page) {
        *width_log = 0;
        return 0;
    }
    *width_log = map->width_log[cluster >> QC_PAGE_SHIFT];
    return qc_cell_load(page, *width_log, cluster & (QC_PAGE_CLUSTERS - 1));
}

static inline uint64_t qc_refmap_get(const qc_refmap *map, uint64_t cluster)
{
    unsigned wl;
    uint64_t cell = qc_refmap_cell(map, cluster, &wl);
    return qc_cell_count(cell, wl);
}

static inline unsigned qc_refmap_flags(const qc_refmap *map, uint64_t cluster)
{
    unsigned wl;
    uint64_t cell = qc_refmap_cell(map, cluster, &wl);
    return qc_cell_flags(cell, wl);
}

/* mem NULL: the set's memory is not charged to any check (for a set that
 * outlives the checks it is used with). */
bool qc_bitset_init(qc_mem *mem, qc_bitset *set, uint64_t bits);
void qc_bitset_release(qc_bitset *set);
/* Returns false when a page could not be allocated (memoryLimit was
 * reported, ctx->stop set). */
bool qc_bitset_set(qc_bitset *set, uint64_t i);
static inline bool qc_bitset_test(const qc_bitset *s, uint64_t i)
{
    const uint64_t *page = s->pages[i >> QC_PAGE_SHIFT];
    uint64_t bit = i & (QC_PAGE_CLUSTERS - 1);
    return page && (page[bit / 64] >> (bit % 64)) & 1;
}
/* The first set bit at or after `i`, or set->bits. */
uint64_t qc_bitset_next(const qc_bitset *set, uint64_t i);

#endif
