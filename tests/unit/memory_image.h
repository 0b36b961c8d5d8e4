/*
 * Images built in memory with the layout encoders, and qc_check() run on
 * them, for the tests of tests/unit/test_check_memory.c and its companions.
 *
 *   cluster 0  header (v2: 72 bytes, v3: 112 bytes), no extensions
 *   cluster 1  refcount table (one cluster), entry 0 -> cluster 2
 *   cluster 2  the only refcount block
 *   cluster 3  active L1 table (one entry, COPIED)
 *   cluster 4  L2 table
 *   cluster 5+ data clusters, mapped by L2 entries 0..n-1 (COPIED)
 *   then       optional spare clusters (refcount 0, referenced by nothing)
 *
 * Every used cluster has refcount 1. The virtual size is exactly what one
 * L2 table maps, so l1_size is 1.
 */
#ifndef QC_TESTS_UNIT_MEMORY_IMAGE_H
#define QC_TESTS_UNIT_MEMORY_IMAGE_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "qcheck.h"
#include "results.h"

/* Check's ck_assert records every passing assertion (a write to the parent
 * process in fork mode); loops over thousands of checks use this instead,
 * which costs nothing unless it fails. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

/* ---- the image builder ---------------------------------------------------- */

enum { CL_HEADER, CL_REFTABLE, CL_REFBLOCK, CL_L1, CL_L2, CL_DATA };

typedef struct img_params {
    unsigned cluster_bits;
    unsigned refcount_order;
    unsigned version;
    bool extended_l2;
    unsigned data_clusters;  /* mapped by L2 entries 0..n-1 */
    unsigned spare_clusters; /* appended, unreferenced, refcount 0 */
} img_params;

typedef struct img {
    img_params p;
    qc_geometry g;
    qc_header hdr;
    uint64_t cs;
    uint8_t *buf;
    size_t len;
} img;

/* 64 KiB clusters, 16-bit refcounts, version 3, two data clusters. */
img_params default_params(void);
/* The same with 512-byte clusters and three data clusters: the sweeps'
 * image, small enough to damage at every byte. */
img_params small_params(void);
void img_build(img *im, const img_params *p);
void img_free(img *im);
uint64_t cl_off(const img *im, uint64_t cluster);
uint64_t img_clusters(const img *im);
void img_write_header(img *im);
void img_set_refcount(img *im, uint64_t cluster, uint64_t value);
uint64_t img_get_refcount(const img *im, uint64_t cluster);
void img_set_l1(img *im, unsigned index, uint64_t entry);
uint64_t img_get_l1(const img *im, unsigned index);
void img_set_l2(img *im, unsigned index, uint64_t entry);
uint64_t img_get_l2(const img *im, unsigned index);
void img_set_l2_bitmap(img *im, unsigned index, uint64_t bitmap);
/* Append n zeroed clusters; returns the index of the first. */
uint64_t img_append(img *im, unsigned n);
/* Write a header extension at byte `at` of cluster 0; returns where the
 * next one goes. */
size_t img_add_extension(img *im, size_t at, uint32_t magic, const void *data, uint32_t len);
/* One snapshot sharing the active L2 table, with `extra` bytes of extra
 * data, the image left clean; returns the cluster of the snapshot table
 * (the snapshot L1 table follows it). */
uint64_t img_add_shared_snapshot(img *im, unsigned extra, const char *id);
/* A LUKS header as QEMU lays it out (slot 0 enabled) in appended clusters,
 * the encryption extension pointing to it; returns its offset. */
uint64_t img_add_luks(img *im);

typedef struct bitmap_layout {
    uint64_t dir, table, data;
    size_t ext_at; /* offset of the bitmaps extension in cluster 0 */
} bitmap_layout;

/* One clean persistent bitmap: directory, one-entry table, one data cluster. */
bitmap_layout img_add_bitmap(img *im);
/* An external data file: L2 entries 0, 1 and 100 map guest == host offset. */
void img_make_data_file(img *im);

/* The rich image of the random-damage sweeps: small_params(), a snapshot
 * sharing the active L2 table and a persistent bitmap, clean. RICH_METADATA
 * lists the clusters the passes interpret: 0-4, the snapshot table and L1,
 * the bitmap directory and table (not the data clusters 5-7, nor the
 * bitmap's data). */
void img_build_rich(img *im);
#define RICH_METADATA                                                                              \
    {                                                                                              \
        0, 1, 2, 3, 4, 8, 9, 10, 11                                                                \
    }

/* ---- running a check -------------------------------------------------------- */

typedef struct recorder {
    unsigned calls;
    unsigned bad; /* callbacks with NULL or unprintable strings, or a bad problem */
    unsigned shown[PROBLEM_ROWS]; /* by problem_row() */
    uint64_t counted[PROBLEM_ROWS]; /* sum of finding->count */
    char first_message[PROBLEM_ROWS][160];
} recorder;

/* One check: qc_check's return value, the exit status, the result and
 * what the callback saw. Start from {0}; outcome_release frees it. */
typedef struct outcome {
    int ret;
    int status;
    qc_result *res;
    recorder rec;
} outcome;

/* Check buf (max_mem 0: the default) and assert the invariants every
 * check must satisfy, whatever the image. */
void run_check_opts(const void *buf, size_t len, uint64_t max_mem, outcome *o);
void run_check(const img *im, outcome *o);
/* The same on a copy of the first len bytes in its own allocation, so that
 * any read past len is caught by AddressSanitizer. */
void check_prefix(const uint8_t *buf, size_t len, outcome *o);
void outcome_release(outcome *o);
uint64_t n_of(const outcome *o, qc_problem_id id);
/* Everything the check reported, for failure messages. */
const char *describe(const outcome *o);
/* A clean image: no findings, every counter and header field as built. */
void assert_clean(const img *im, const outcome *o);

/* xorshift64*: the random damage of the sweeps. */
uint64_t fuzz_next(uint64_t *state);

/* The tests of check_memory_sweeps.c (memory limits, truncation, random
 * damage, the API's edges) and check_memory_repairs.c, added to the TCases
 * of test_check_memory.c. */
void add_sweep_tests(TCase *tc);
void add_repair_tests(TCase *tc);
/* The deep pass's threads and memory (check_memory_deep.c). */
void add_deep_tests(TCase *tc);

#endif
