/*
 * The host map (qc_result_map): images built in memory (memory_image.h),
 * checked with opts.map_cells, and the class of particular clusters
 * asserted: the structures where the header and the tables place them,
 * leaks, corruptions, overlaps, and aggregation keeping a lone problem
 * visible.
 */
#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "memory_image.h"
#include "qcheck.h"
#include "runner.h"

typedef struct mapped {
    qc_result *res;
    const qc_map_cell *cells;
    size_t nb_cells;
    uint64_t per_cell, clusters, cluster_size;
} mapped;

static void check_with_map(const img *im, size_t map_cells, size_t options_size, mapped *m)
{
    qc_io io;
    qc_io_open_memory(&io, im->buf, im->len);
    qc_options opts = QC_OPTIONS_INIT;
    opts.size = options_size;
    opts.map_cells = map_cells;
    m->res = qc_result_new();
    ck_assert_ptr_nonnull(m->res);
    ck_assert_int_eq(qc_check(&io, &opts, m->res), 0);
    qc_io_close(&io);
    m->cells = qc_result_map(m->res, &m->nb_cells, &m->per_cell, &m->clusters, &m->cluster_size);
}

/* The class of host cluster c in a map of one cluster per cell. */
static const char *class_at(const mapped *m, uint64_t c)
{
    ck_assert_uint_eq(m->per_cell, 1);
    ck_assert_uint_lt(c, m->nb_cells);
    return qc_map_class_name(m->cells[c].dominant);
}

static void assert_class(const mapped *m, uint64_t c, qc_map_class want)
{
    const char *got = class_at(m, c);
    ck_assert_msg(strcmp(got, qc_map_class_name(want)) == 0, "cluster %llu is %s, not %s",
                  (unsigned long long)c, got, qc_map_class_name(want));
}

/* The classes sum to the file's clusters, and each cell's counts agree
 * with its class set. */
static void assert_totals(const mapped *m)
{
    uint64_t sum = 0;
    for (unsigned k = 0; k < QC_MAP_CLASSES; k++)
        sum += qc_result_map_clusters(m->res, (qc_map_class)k);
    ck_assert_uint_eq(sum, m->clusters);
    for (size_t i = 0; i < m->nb_cells; i++)
        ck_assert(m->cells[i].classes >> m->cells[i].dominant & 1);
}

START_TEST(test_structures_where_the_header_says)
{
    img im;
    img_build(&im, &(img_params){.cluster_bits = 16, .refcount_order = 4, .version = 3,
                                 .data_clusters = 2});
    uint64_t snap_table = img_add_shared_snapshot(&im, 24, "1");
    bitmap_layout b = img_add_bitmap(&im);
    mapped m;
    check_with_map(&im, 4096, sizeof(qc_options), &m);
    ck_assert_int_eq(qc_exit_status(m.res), 0);
    ck_assert_ptr_nonnull(m.cells);
    ck_assert_uint_eq(m.clusters, im.len / im.cs);
    ck_assert_uint_eq(m.nb_cells, m.clusters);
    ck_assert_uint_eq(m.cluster_size, im.cs);
    assert_class(&m, 0, QC_MAP_HEADER);
    assert_class(&m, im.hdr.refcount_table_offset / im.cs, QC_MAP_REFCOUNT_TABLE);
    assert_class(&m, qc_be64(im.buf + im.hdr.refcount_table_offset) / im.cs,
                 QC_MAP_REFCOUNT_BLOCK);
    assert_class(&m, im.hdr.l1_table_offset / im.cs, QC_MAP_L1);
    assert_class(&m, (img_get_l1(&im, 0) & QC_L1_OFFSET_MASK) / im.cs, QC_MAP_L2);
    assert_class(&m, (img_get_l2(&im, 0) & QC_L2_OFFSET_MASK) / im.cs, QC_MAP_DATA);
    assert_class(&m, (img_get_l2(&im, 1) & QC_L2_OFFSET_MASK) / im.cs, QC_MAP_DATA);
    assert_class(&m, im.hdr.snapshots_offset / im.cs, QC_MAP_SNAPSHOT_TABLE);
    assert_class(&m, snap_table + 1, QC_MAP_SNAPSHOT_L1);
    assert_class(&m, b.dir, QC_MAP_BITMAP);
    assert_class(&m, b.table, QC_MAP_BITMAP);
    assert_class(&m, b.data, QC_MAP_BITMAP);
    ck_assert_uint_eq(qc_result_map_clusters(m.res, QC_MAP_DATA), 2);
    ck_assert_uint_eq(qc_result_map_clusters(m.res, QC_MAP_BITMAP), 3);
    for (unsigned k = QC_MAP_FIRST_PROBLEM; k < QC_MAP_CLASSES; k++)
        ck_assert_uint_eq(qc_result_map_clusters(m.res, (qc_map_class)k), 0);
    for (size_t i = 0; i < m.nb_cells; i++)
        ck_assert_uint_eq(m.cells[i].problem, QC_MAP_FREE);
    assert_totals(&m);
    qc_result_free(m.res);
    img_free(&im);
}
END_TEST

START_TEST(test_leak_corruption_overlap)
{
    img im;
    img_build(&im, &(img_params){.cluster_bits = 16, .refcount_order = 4, .version = 3,
                                 .data_clusters = 3, .spare_clusters = 2});
    uint64_t leaked = CL_DATA + 3;  /* a spare cluster with a refcount */
    img_set_refcount(&im, leaked, 1);
    img_set_refcount(&im, CL_DATA, 0); /* data in use with refcount 0: a corruption */
    /* Guest data on the refcount block (and its count off by one). */
    img_set_l2(&im, 2, cl_off(&im, CL_REFBLOCK) | QC_OFLAG_COPIED);
    mapped m;
    check_with_map(&im, 4096, sizeof(qc_options), &m);
    ck_assert_int_eq(qc_exit_status(m.res), 2);
    ck_assert_ptr_nonnull(m.cells);
    assert_class(&m, leaked, QC_MAP_LEAKED);
    ck_assert_uint_eq(m.cells[leaked].problem, QC_MAP_LEAKED);
    assert_class(&m, CL_DATA, QC_MAP_CORRUPT);
    assert_class(&m, CL_REFBLOCK, QC_MAP_OVERLAP);
    assert_class(&m, CL_DATA + 1, QC_MAP_DATA);
    assert_class(&m, CL_DATA + 4, QC_MAP_FREE);
    /* What L2 entry 2 mapped before has lost its reference. */
    assert_class(&m, CL_DATA + 2, QC_MAP_LEAKED);
    ck_assert_uint_eq(qc_result_map_clusters(m.res, QC_MAP_LEAKED), 2);
    assert_totals(&m);
    qc_result_free(m.res);
    img_free(&im);
}
END_TEST

/* 3000 clusters of 512 bytes (1-bit refcounts: one block covers them)
 * into at most 3 cells: 1000 clusters each, and the one leaked cluster of
 * the middle cell still shows, though free clusters are most of it. */
START_TEST(test_aggregation_keeps_a_lone_leak)
{
    img im;
    img_build(&im, &(img_params){.cluster_bits = 9, .refcount_order = 0, .version = 3,
                                 .data_clusters = 3, .spare_clusters = 2992});
    ck_assert_uint_eq(im.len / im.cs, 3000);
    img_set_refcount(&im, 1500, 1);
    mapped m;
    check_with_map(&im, 3, sizeof(qc_options), &m);
    ck_assert_int_eq(qc_exit_status(m.res), 3);
    ck_assert_uint_eq(m.nb_cells, 3);
    ck_assert_uint_eq(m.per_cell, 1000);
    ck_assert_uint_eq(m.cells[0].dominant, QC_MAP_FREE);
    ck_assert_uint_eq(m.cells[0].problem, QC_MAP_FREE);
    ck_assert(m.cells[0].classes >> QC_MAP_HEADER & 1);
    ck_assert(m.cells[0].classes >> QC_MAP_DATA & 1);
    ck_assert_uint_eq(m.cells[1].dominant, QC_MAP_FREE);
    ck_assert_uint_eq(m.cells[1].problem, QC_MAP_LEAKED);
    ck_assert_uint_eq(m.cells[1].classes, 1u << QC_MAP_FREE | 1u << QC_MAP_LEAKED);
    ck_assert_uint_eq(m.cells[2].classes, 1u << QC_MAP_FREE);
    ck_assert_uint_eq(qc_result_map_clusters(m.res, QC_MAP_LEAKED), 1);
    ck_assert_uint_eq(qc_result_map_clusters(m.res, QC_MAP_FREE), 3000 - 8 - 1);
    assert_totals(&m);
    /* A cell count that does not divide the clusters: whole cells of
     * ceil(3000 / 7) = 429 clusters, the last one shorter. */
    qc_result_free(m.res);
    check_with_map(&im, 7, sizeof(qc_options), &m);
    ck_assert_uint_eq(m.per_cell, 429);
    ck_assert_uint_eq(m.nb_cells, 7);
    ck_assert_uint_eq(m.cells[1500 / 429].problem, QC_MAP_LEAKED);
    assert_totals(&m);
    qc_result_free(m.res);
    img_free(&im);
}
END_TEST

START_TEST(test_no_map_unless_asked)
{
    img im;
    img_build(&im, &(img_params){.cluster_bits = 16, .refcount_order = 4, .version = 3,
                                 .data_clusters = 2});
    mapped m;
    check_with_map(&im, 0, sizeof(qc_options), &m);
    ck_assert_ptr_null(m.cells);
    ck_assert_uint_eq(m.nb_cells, 0);
    ck_assert_uint_eq(qc_result_map_clusters(m.res, QC_MAP_DATA), 0);
    qc_result_free(m.res);
    /* A caller built before the field: it is past its size, so zero. */
    check_with_map(&im, 4096, offsetof(qc_options, map_cells), &m);
    ck_assert_ptr_null(m.cells);
    qc_result_free(m.res);
    /* A result checked again keeps no stale map. */
    check_with_map(&im, 4096, sizeof(qc_options), &m);
    ck_assert_ptr_nonnull(m.cells);
    qc_io io;
    qc_io_open_memory(&io, im.buf, im.len);
    qc_options plain = QC_OPTIONS_INIT;
    ck_assert_int_eq(qc_check(&io, &plain, m.res), 0);
    qc_io_close(&io);
    ck_assert_ptr_null(qc_result_map(m.res, NULL, NULL, NULL, NULL));
    qc_result_free(m.res);
    /* Not a qcow2 image: no map. */
    static const uint8_t raw[4096];
    qc_io_open_memory(&io, raw, sizeof(raw));
    qc_options opts = QC_OPTIONS_INIT;
    opts.map_cells = 16;
    qc_result *r = qc_result_new();
    ck_assert_int_eq(qc_check(&io, &opts, r), 0);
    ck_assert_ptr_null(qc_result_map(r, NULL, NULL, NULL, NULL));
    qc_result_free(r);
    qc_io_close(&io);
    img_free(&im);
}
END_TEST

START_TEST(test_class_names)
{
    ck_assert_str_eq(qc_map_class_name(QC_MAP_FREE), "free");
    ck_assert_str_eq(qc_map_class_name(QC_MAP_REFCOUNT_BLOCK), "refcount-block");
    ck_assert_str_eq(qc_map_class_name(QC_MAP_OVERLAP), "overlap");
    ck_assert_ptr_null(qc_map_class_name(QC_MAP_CLASSES));
    for (unsigned a = 0; a < QC_MAP_CLASSES; a++)
        for (unsigned b = a + 1; b < QC_MAP_CLASSES; b++)
            ck_assert_str_ne(qc_map_class_name(a), qc_map_class_name(b));
}
END_TEST

Suite *unit_suite(void)
{
    Suite *s = suite_create("map");
    TCase *tc = tcase_create("map");
    tcase_add_test(tc, test_structures_where_the_header_says);
    tcase_add_test(tc, test_leak_corruption_overlap);
    tcase_add_test(tc, test_aggregation_keeps_a_lone_leak);
    tcase_add_test(tc, test_no_map_unless_asked);
    tcase_add_test(tc, test_class_names);
    suite_add_tcase(s, tc);
    return s;
}
