/*
 * The sweeps of the in-memory check tests: memory limits from 1 byte up,
 * every truncation, every byte of the metadata changed, random damage to a
 * rich image, and the API's edges (NULL arguments, no callback, progress).
 * Whatever the image, every check must satisfy the invariants run_check
 * asserts (memory_image.c).
 */
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "memory_image.h"
#include "qcheck.h"

#ifndef FUZZ_ROUNDS
#define FUZZ_ROUNDS 3000
#endif

START_TEST(test_memory_limit_sweep)
{
    /* Whatever the limit, an incomplete check reports memoryLimit and
     * nothing spurious; a large enough one gives a clean result. */
    outcome o = {0};
    img im;
    img_params p = default_params();
    p.data_clusters = 8;
    img_build(&im, &p);
    bool saw_limit = false, saw_clean = false;
    for (uint64_t limit = 1; limit <= (1u << 20); limit += limit / 16 + 1) {
        run_check_opts(im.buf, im.len, limit, &o);
        if (n_of(&o, QC_P_MEMORY_LIMIT)) {
            saw_limit = true;
            REQUIRE(o.status == 1, "limit %llu: exit %d", (unsigned long long)limit, o.status);
            REQUIRE(corruptions(o.res) == 0 && leaks(o.res) == 0,
                    "limit %llu: spurious findings:%s", (unsigned long long)limit, describe(&o));
        } else {
            saw_clean = true;
            REQUIRE(o.status == 0 && counter_of(o.res, FINDINGS) == 0, "limit %llu:%s",
                    (unsigned long long)limit, describe(&o));
        }
    }
    ck_assert(saw_limit);
    ck_assert(saw_clean);
    outcome_release(&o);
    img_free(&im);
}
END_TEST

START_TEST(test_truncated_anywhere)
{
    outcome o = {0};
    static const unsigned cbs[] = {9, 12, 16};
    unsigned cb = cbs[_i];
    img im;
    img_params p = default_params();
    p.cluster_bits = cb;
    img_build(&im, &p);
    size_t limit = (size_t)(4 * im.cs);
    for (size_t len = 0; len <= limit; len += 8) {
        /* With 64 KiB clusters, every 8 bytes near the start of each
         * cluster (where the structures are), coarser in between. */
        size_t in_cluster = len & (size_t)(im.cs - 1);
        if (cb > 12 && in_cluster > 1024 && in_cluster < im.cs - 64 && in_cluster % 1024)
            continue;
        check_prefix(im.buf, len, &o);
        /* Never clean: cluster 4 (the L2 table) is always missing. */
        REQUIRE(o.status != 0 && o.status != 3, "cluster_bits %u, %zu bytes: exit %d:%s", cb, len,
                o.status, describe(&o));
        if (len >= 8)
            REQUIRE(other_format(o.res) == NULL, "%zu bytes: other format %s", len,
                    other_format(o.res));
        else
            REQUIRE(o.status == 63, "%zu bytes: exit %d", len, o.status);
    }
    outcome_release(&o);
    img_free(&im);
}
END_TEST

START_TEST(test_truncated_whole_image)
{
    /* Every length of a small image, at byte granularity past 4 clusters. */
    outcome o = {0};
    img im;
    img_params p = small_params();
    img_build(&im, &p);
    for (size_t len = 0; len <= im.len; len++) {
        check_prefix(im.buf, len, &o);
        if (len == im.len)
            assert_clean(&im, &o);
    }
    outcome_release(&o);
    img_free(&im);
}
END_TEST

START_TEST(test_byte_corruption_never_crashes)
{
    /* Every byte of the metadata clusters set to 0xff, then to 0x80, one at
     * a time (512-byte clusters keep this fast). */
    outcome o = {0};
    img im;
    img_params p = small_params();
    img_build(&im, &p);
    static const uint8_t values[] = {0xff, 0x80, 0x01};
    for (size_t v = 0; v < sizeof(values); v++) {
        for (size_t off = 0; off < (size_t)(CL_DATA * im.cs); off++) {
            uint8_t saved = im.buf[off];
            im.buf[off] = values[v];
            check_prefix(im.buf, im.len, &o);
            im.buf[off] = saved;
        }
    }
    outcome_release(&o);
    img_free(&im);
}
END_TEST

/* The same with a snapshot and a persistent bitmap, and random multi-byte
 * damage: every structure the passes decode gets garbage. */
START_TEST(test_rich_image_corruption_never_crashes)
{
    outcome o = {0};
    img im;
    img_build_rich(&im);
    run_check(&im, &o);
    ck_assert_msg(counter_of(o.res, FINDINGS) == 0, "%s", describe(&o));
    const uint64_t meta[] = RICH_METADATA;
    uint8_t *copy = malloc(im.len);
    ck_assert_ptr_nonnull(copy);
    for (size_t k = 0; k < sizeof(meta) / sizeof(meta[0]); k++) {
        for (size_t i = 0; i < (size_t)im.cs; i++) {
            size_t off = (size_t)cl_off(&im, meta[k]) + i;
            uint8_t saved = im.buf[off];
            im.buf[off] = (uint8_t)(saved ^ 0xff);
            check_prefix(im.buf, im.len, &o);
            im.buf[off] = saved;
        }
    }
    uint64_t state = 0x853c49e6748fea9bull + (uint64_t)_i;
    for (int round = 0; round < FUZZ_ROUNDS; round++) {
        memcpy(copy, im.buf, im.len);
        unsigned edits = 1 + (unsigned)(fuzz_next(&state) % 8);
        for (unsigned e = 0; e < edits; e++) {
            uint64_t r = fuzz_next(&state);
            uint64_t cl = meta[r % (sizeof(meta) / sizeof(meta[0]))];
            size_t off = (size_t)(cl_off(&im, cl) + ((r >> 8) % im.cs));
            switch ((r >> 40) % 4) {
            case 0: copy[off] = (uint8_t)(r >> 48); break;
            case 1: /* a whole 8-byte field set to all ones */
                memset(copy + (off & ~(size_t)7), 0xff, 8);
                break;
            case 2: /* a plausible in-file offset */
                qc_put_be64(copy + (off & ~(size_t)7), (r >> 48) % (im.len + 4096));
                break;
            default: /* a 32-bit field set to a small or a huge number */
                qc_put_be32(copy + (off & ~(size_t)3),
                            (r >> 63) ? 0xffffffffu : (uint32_t)(r >> 56));
                break;
            }
        }
        check_prefix(copy, im.len, &o);
    }
    free(copy);
    outcome_release(&o);
    img_free(&im);
}
END_TEST

START_TEST(test_null_arguments)
{
    qc_result *r = result_new();
    ck_assert_int_lt(qc_check(NULL, NULL, r), 0);
    qc_io io;
    uint8_t b[8] = {0};
    qc_io_open_memory(&io, b, sizeof(b));
    ck_assert_int_lt(qc_check(&io, NULL, NULL), 0);
    /* No options at all: runs with defaults, nothing to call back. */
    ck_assert_int_eq(qc_check(&io, NULL, r), 0);
    ck_assert_str_eq(other_format(r), "raw");
    qc_io_close(&io);
    ck_assert_ptr_null(io.read);
    result_free(r);
}
END_TEST

START_TEST(test_no_callback)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_refcount(&im, CL_DATA, 0);
    qc_io io;
    qc_io_open_memory(&io, im.buf, im.len);
    qc_options opts = options_default();
    qc_result *r = result_new();
    ck_assert_int_eq(qc_check(&io, &opts, r), 0);
    ck_assert_uint_eq(problem_count(r, QC_P_REFCOUNT_ZERO_IN_USE), 1);
    ck_assert_int_eq(qc_exit_status(r), 2);
    result_free(r);
    qc_io_close(&io);
    img_free(&im);
}
END_TEST

/* A memory image whose bytes [bad, bad + 1) cannot be read. */
typedef struct failing_io {
    qc_io inner;
    uint64_t bad;
} failing_io;

static int failing_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    failing_io *f = opaque;
    if (f->bad >= off && f->bad - off < len)
        return -EIO;
    return f->inner.read(f->inner.opaque, off, buf, len);
}

/* --deep reads every cluster holding guest data: a data cluster the file
 * cannot deliver is a check error (readFailed, exit 1) naming its offset;
 * the plain check, which does not read data, finds the image clean. */
START_TEST(test_deep_reads_data_clusters)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    failing_io f = {.bad = cl_off(&im, CL_DATA) + 100};
    qc_io_open_memory(&f.inner, im.buf, im.len);
    qc_io io = {.read = failing_read, .opaque = &f, .size = im.len};
    qc_options opts = options_default();
    qc_result *r = result_new();
    ck_assert_int_eq(qc_check(&io, &opts, r), 0);
    ck_assert_int_eq(qc_exit_status(r), 0);
    opts.deep = true;
    ck_assert_int_eq(qc_check(&io, &opts, r), 0);
    ck_assert_uint_eq(problem_count(r, QC_P_READ_FAILED), 1);
    ck_assert_int_eq(qc_exit_status(r), 1);
    /* The same image readable throughout: --deep finds nothing. */
    f.bad = UINT64_MAX;
    ck_assert_int_eq(qc_check(&io, &opts, r), 0);
    ck_assert_int_eq(qc_exit_status(r), 0);
    result_free(r);
    qc_io_close(&f.inner);
    img_free(&im);
}
END_TEST

typedef struct progress_log {
    unsigned calls, last;
    bool increasing;
} progress_log;

static void log_progress(unsigned permille, void *payload)
{
    progress_log *log = payload;
    if (log->calls++ && permille <= log->last)
        log->increasing = false;
    log->last = permille;
}

START_TEST(test_progress)
{
    /* Progress only grows, at most 1000 calls, and ends at 1000. */
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    qc_io io;
    qc_io_open_memory(&io, im.buf, im.len);
    progress_log log = {0, 0, true};
    qc_options opts = options_default();
    opts.payload = &log;
    opts.on_progress = log_progress;
    qc_result *r = result_new();
    ck_assert_int_eq(qc_check(&io, &opts, r), 0);
    ck_assert_int_eq(qc_exit_status(r), 0);
    result_free(r);
    ck_assert(log.increasing);
    ck_assert_uint_gt(log.calls, 3);
    ck_assert_uint_le(log.calls, 1000);
    ck_assert_uint_eq(log.last, 1000);
    qc_io_close(&io);
    img_free(&im);
}
END_TEST

void add_sweep_tests(TCase *tc)
{
    /* The corruption sweeps check thousands of images under the sanitizers. */
    tcase_add_test(tc, test_memory_limit_sweep);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_no_callback);
    tcase_add_test(tc, test_progress);
    tcase_add_test(tc, test_deep_reads_data_clusters);
    tcase_add_loop_test(tc, test_truncated_anywhere, 0, 3);
    tcase_add_test(tc, test_truncated_whole_image);
    tcase_add_test(tc, test_byte_corruption_never_crashes);
    tcase_add_test(tc, test_rich_image_corruption_never_crashes);
}
