/*
 * Per-host-cluster maps: the computed refcounts with their flags, and
 * bitsets. Both are paged (see clustermap.h): pages are allocated on first write
 * and charged to a memory accountant, and the directory of pages is
 * sized by the real file, never by header claims.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "clustermap.h"

static void **alloc_directory(qc_mem *mem, uint64_t clusters, uint64_t *nb_pages,
                              const char *what)
{
    *nb_pages = qc_div_round_up(clusters, QC_PAGE_CLUSTERS);
    uint64_t bytes;
    if (!qc_mul_ok(*nb_pages ? *nb_pages : 1, sizeof(void *), &bytes))
        bytes = UINT64_MAX;
    return qc_mem_alloc(mem, bytes, what);
}

bool qc_refmap_init(qc_mem *mem, qc_refmap *map, uint64_t clusters)
{
    memset(map, 0, sizeof(*map));
    map->mem = mem;
    map->clusters = clusters;
    map->pages = alloc_directory(mem, clusters, &map->nb_pages, "computed refcount map");
    if (!map->pages)
        return false;
    map->width_log = qc_mem_alloc(mem, map->nb_pages, "computed refcount map");
    return map->width_log != NULL;
}

static uint64_t page_bytes(unsigned width_log)
{
    return QC_PAGE_CLUSTERS << width_log;
}

void qc_refmap_release(qc_refmap *map)
{
    for (uint64_t p = 0; map->pages && p < map->nb_pages; p++)
        qc_mem_free(map->mem, map->pages[p], page_bytes(map->width_log[p]));
    qc_mem_free(map->mem, map->pages, map->nb_pages * sizeof(void *));
    qc_mem_free(map->mem, map->width_log, map->nb_pages);
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
    void *wide = qc_mem_alloc(map->mem, page_bytes(to), "computed refcount map");
    if (!wide)
        return false;
    unsigned to_bits = qc_cell_count_bits(to);
    for (uint64_t i = 0; i < QC_PAGE_CLUSTERS; i++) {
        uint64_t cell = qc_cell_load(map->pages[p], from, i);
        cell_store(wide, to, i,
                   qc_cell_count(cell, from) | (uint64_t)qc_cell_flags(cell, from) << to_bits);
    }
    qc_mem_free(map->mem, map->pages[p], page_bytes(from));
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
        map->pages[p] = qc_mem_alloc(map->mem, page_bytes(0), "computed refcount map");
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

#define BITSET_PAGE_BYTES (QC_PAGE_CLUSTERS / 8)

bool qc_bitset_init(qc_mem *mem, qc_bitset *set, uint64_t bits)
{
    memset(set, 0, sizeof(*set));
    set->mem = mem;
    set->bits = bits;
    set->pages = (uint64_t **)alloc_directory(mem, bits, &set->nb_pages, "cluster bitmap");
    return set->pages != NULL;
}

void qc_bitset_release(qc_bitset *set)
{
    for (uint64_t p = 0; set->pages && p < set->nb_pages; p++)
        qc_mem_free(set->mem, set->pages[p], BITSET_PAGE_BYTES);
    qc_mem_free(set->mem, set->pages, set->nb_pages * sizeof(void *));
    memset(set, 0, sizeof(*set));
}

bool qc_bitset_set(qc_bitset *set, uint64_t i)
{
    uint64_t **page = &set->pages[i >> QC_PAGE_SHIFT];
    if (!*page && !(*page = qc_mem_alloc(set->mem, BITSET_PAGE_BYTES, "cluster bitmap")))
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
