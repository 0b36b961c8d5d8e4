/*
 * Unit tests for the paged per-cluster maps (checker/clustermap.c): pages
 * appear on first write only, cells widen without losing counts or flags,
 * counts saturate instead of wrapping, iteration skips empty pages, and
 * every byte is charged to the context and returned on release. And for
 * the read-ahead (checker/prefetch.c): items arrive in order with their
 * own bytes and read status, whatever the item size and whichever items
 * the pass skips.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "runner.h"

typedef struct fixture {
    qc_ctx ctx;
    qc_result res;
} fixture;

static void fixture_init(fixture *f, uint64_t mem_limit)
{
    memset(f, 0, sizeof(*f));
    f->ctx.res = &f->res;
    /* The check's accountant, as qc_ctx_begin sets it up. */
    f->ctx.mem = (qc_mem){.limit = mem_limit,
                          .stopped = &f->ctx.stop,
                          .refused = qc_memory_refused,
                          .owner = &f->ctx};
}

static uint64_t pages_allocated(const qc_refmap *m)
{
    uint64_t n = 0;
    for (uint64_t p = 0; p < m->nb_pages; p++)
        n += m->pages[p] != NULL;
    return n;
}

START_TEST(test_refmap_pages_on_first_write)
{
    fixture f;
    fixture_init(&f, 1ull << 30);
    qc_refmap m;
    /* A file of 2^31 + 5 clusters: the directory only, no page yet. */
    uint64_t clusters = (1ull << 31) + 5;
    ck_assert(qc_refmap_init(&f.ctx.mem, &m, clusters));
    ck_assert_uint_eq(m.nb_pages, (clusters + QC_PAGE_CLUSTERS - 1) / QC_PAGE_CLUSTERS);
    ck_assert_uint_eq(pages_allocated(&m), 0);
    ck_assert_uint_lt(f.ctx.mem.used, 1ull << 20);
    ck_assert_uint_eq(qc_refmap_next_page(&m, 0, clusters), clusters);

    /* Setting 0 (or adding nothing) allocates nothing. */
    ck_assert(qc_refmap_set(&m, 12345, 0));
    ck_assert_int_eq(qc_refmap_add(&m, 12345, 0, 0), 0);
    ck_assert_uint_eq(pages_allocated(&m), 0);

    /* The last cluster, past 2^31: one page. */
    ck_assert_int_eq(qc_refmap_add(&m, clusters - 1, 1, QC_CELL_META), QC_CELL_META);
    ck_assert_uint_eq(pages_allocated(&m), 1);
    ck_assert_uint_eq(qc_refmap_get(&m, clusters - 1), 1);
    ck_assert_uint_eq(qc_refmap_flags(&m, clusters - 1), QC_CELL_META);
    ck_assert_uint_eq(qc_refmap_get(&m, clusters - 2), 0);
    uint64_t last_page = (clusters - 1) / QC_PAGE_CLUSTERS * QC_PAGE_CLUSTERS;
    ck_assert_uint_eq(qc_refmap_next_page(&m, 0, clusters), last_page);
    ck_assert_uint_eq(qc_refmap_next_page(&m, 0, last_page - 1), last_page - 1);
    ck_assert_uint_eq(qc_refmap_next_page(&m, 0, UINT64_MAX), last_page);
    ck_assert_uint_eq(qc_refmap_next_page(&m, last_page + 3, clusters), last_page + 3);

    qc_refmap_release(&m);
    ck_assert_uint_eq(f.ctx.mem.used, 0);
}
END_TEST

START_TEST(test_refmap_widening_keeps_counts_and_flags)
{
    fixture f;
    fixture_init(&f, 1ull << 30);
    qc_refmap m;
    ck_assert(qc_refmap_init(&f.ctx.mem, &m, 3 * QC_PAGE_CLUSTERS));
    uint64_t base = QC_PAGE_CLUSTERS; /* the second page */
    ck_assert_int_eq(qc_refmap_add(&m, base + 7, 7, QC_CELL_NOT_COPIED), QC_CELL_NOT_COPIED);
    ck_assert_int_eq(qc_refmap_add(&m, base + 5, 31, QC_CELL_META), QC_CELL_META);
    ck_assert_uint_eq(m.width_log[1], 0);

    /* 32 does not fit a one-byte cell: the page becomes two bytes wide. */
    ck_assert_int_eq(qc_refmap_add(&m, base + 5, 1, QC_CELL_COPIED),
                     QC_CELL_META | QC_CELL_COPIED);
    ck_assert_uint_eq(m.width_log[1], 1);
    ck_assert_uint_eq(qc_refmap_get(&m, base + 5), 32);
    ck_assert_uint_eq(qc_refmap_flags(&m, base + 5), QC_CELL_META | QC_CELL_COPIED);
    ck_assert_uint_eq(qc_refmap_get(&m, base + 7), 7);
    ck_assert_uint_eq(qc_refmap_flags(&m, base + 7), QC_CELL_NOT_COPIED);

    /* Straight to eight bytes, and the other pages are untouched. */
    ck_assert(qc_refmap_add(&m, base + 7, 1ull << 40, 0) >= 0);
    ck_assert_uint_eq(m.width_log[1], 3);
    ck_assert_uint_eq(qc_refmap_get(&m, base + 7), (1ull << 40) + 7);
    ck_assert_uint_eq(qc_refmap_flags(&m, base + 7), QC_CELL_NOT_COPIED);
    ck_assert_uint_eq(qc_refmap_get(&m, base + 5), 32);
    ck_assert_ptr_null(m.pages[0]);
    ck_assert_ptr_null(m.pages[2]);

    /* Counts saturate at what eight-byte cells hold, flags survive. */
    uint64_t widest = (1ull << 61) - 1;
    ck_assert(qc_refmap_add(&m, base + 7, UINT64_MAX, 0) >= 0);
    ck_assert_uint_eq(qc_refmap_get(&m, base + 7), widest);
    ck_assert_uint_eq(qc_refmap_flags(&m, base + 7), QC_CELL_NOT_COPIED);

    /* Setting a count keeps the flags. */
    ck_assert(qc_refmap_set(&m, base + 5, 2));
    ck_assert_uint_eq(qc_refmap_get(&m, base + 5), 2);
    ck_assert_uint_eq(qc_refmap_flags(&m, base + 5), QC_CELL_META | QC_CELL_COPIED);

    qc_refmap_release(&m);
    ck_assert_uint_eq(f.ctx.mem.used, 0);
}
END_TEST

START_TEST(test_refmap_memory_limit)
{
    fixture f;
    fixture_init(&f, 64 * 1024);
    qc_refmap m;
    ck_assert(qc_refmap_init(&f.ctx.mem, &m, 8 * QC_PAGE_CLUSTERS));
    ck_assert_int_eq(qc_refmap_add(&m, 0, 1, 0), 0); /* one 32 KiB page fits */
    ck_assert_int_eq(qc_refmap_add(&m, 3 * QC_PAGE_CLUSTERS, 1, 0), -1);
    ck_assert(f.ctx.stop);
    ck_assert_uint_eq(qc_found(&f.res, QC_P_MEMORY_LIMIT), 1);
    ck_assert_uint_eq(f.res.check_errors, 1);
    ck_assert_uint_eq(qc_refmap_get(&m, 0), 1);
    qc_refmap_release(&m);
    ck_assert_uint_eq(f.ctx.mem.used, 0);
}
END_TEST

START_TEST(test_bitset_paged)
{
    fixture f;
    fixture_init(&f, 1ull << 30);
    qc_bitset s;
    uint64_t bits = 4 * QC_PAGE_CLUSTERS + 100;
    ck_assert(qc_bitset_init(&f.ctx.mem, &s, bits));
    ck_assert_uint_eq(qc_bitset_next(&s, 0), bits);
    const uint64_t set[] = {0, 63, 64, QC_PAGE_CLUSTERS + 1, 4 * QC_PAGE_CLUSTERS + 99};
    for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++)
        ck_assert(qc_bitset_set(&s, set[i]));
    ck_assert_ptr_null(s.pages[2]);
    ck_assert_ptr_null(s.pages[3]);
    uint64_t at = 0;
    for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
        at = qc_bitset_next(&s, at);
        ck_assert_uint_eq(at, set[i]);
        ck_assert(qc_bitset_test(&s, at));
        at++;
    }
    ck_assert_uint_eq(qc_bitset_next(&s, at), bits);
    ck_assert(!qc_bitset_test(&s, 65));
    ck_assert(!qc_bitset_test(&s, 3 * QC_PAGE_CLUSTERS)); /* a page never written */
    qc_bitset_release(&s);
    ck_assert_uint_eq(f.ctx.mem.used, 0);

    /* Without a context: plain memory, nothing charged. */
    ck_assert(qc_bitset_init(NULL, &s, bits));
    ck_assert(qc_bitset_set(&s, 5));
    ck_assert(qc_bitset_test(&s, 5));
    qc_bitset_release(&s);
}
END_TEST

/* Item i of the prefetch tests: every third is skipped, every seventh
 * lies past the end of the image. */
typedef struct items {
    size_t len;
    uint64_t image_len;
} items;

static uint64_t item_offset(void *arg, size_t i)
{
    const items *it = arg;
    if (i % 3 == 2)
        return QC_PREFETCH_SKIP;
    return i % 7 == 6 ? it->image_len : (uint64_t)i * it->len;
}

static void check_prefetch(size_t count, size_t len, size_t stride)
{
    uint64_t image_len = (uint64_t)count * len;
    uint8_t *image = malloc(image_len);
    ck_assert_ptr_nonnull(image);
    for (uint64_t b = 0; b < image_len; b++)
        image[b] = (uint8_t)(b / len * 31 + b % 251);
    fixture f;
    fixture_init(&f, 1ull << 30);
    qc_io io;
    qc_io_open_memory(&io, image, image_len);
    f.ctx.io = &io;
    f.ctx.file_size = image_len;
    items it = {len, image_len};
    qc_prefetch *p = qc_prefetch_start(&f.ctx, count, len, item_offset, &it);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < count; i += stride) {
        int ret = 1;
        const uint8_t *buf = qc_prefetch_get(p, i, &ret);
        if (i % 3 == 2) {
            ck_assert_int_eq(ret, 0); /* skipped: not read */
        } else if (i % 7 == 6) {
            ck_assert_int_eq(ret, -EIO);
        } else {
            ck_assert_int_eq(ret, 0);
            ck_assert_mem_eq(buf, image + (uint64_t)i * len, len);
        }
    }
    qc_prefetch_stop(p);
    ck_assert_uint_eq(f.ctx.mem.used, 0);
    qc_io_close(&io);
    free(image);
}

START_TEST(test_prefetch_small_items)
{
    check_prefetch(5000, 512, 1); /* many items per half */
}
END_TEST

START_TEST(test_prefetch_skipping)
{
    check_prefetch(5000, 512, 13); /* the pass asks for one item in 13 */
    check_prefetch(3000, 4096, 1000);
}
END_TEST

START_TEST(test_prefetch_large_items)
{
    check_prefetch(40, 1 << 20, 1); /* one item per half */
    check_prefetch(5, 65536, 1);    /* too few for a thread */
}
END_TEST

Suite *unit_suite(void)
{
    Suite *s = suite_create("clustermap");
    TCase *tc = tcase_create("maps");
    tcase_add_test(tc, test_refmap_pages_on_first_write);
    tcase_add_test(tc, test_refmap_widening_keeps_counts_and_flags);
    tcase_add_test(tc, test_refmap_memory_limit);
    tcase_add_test(tc, test_bitset_paged);
    suite_add_tcase(s, tc);
    tc = tcase_create("prefetch");
    tcase_add_test(tc, test_prefetch_small_items);
    tcase_add_test(tc, test_prefetch_skipping);
    tcase_add_test(tc, test_prefetch_large_items);
    suite_add_tcase(s, tc);
    return s;
}
