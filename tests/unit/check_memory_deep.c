/*
 * The deep pass's threads (checker/pass_deep.c): whatever the number of
 * threads decompressing, the findings come out exactly as one thread
 * reports them, each compressed cluster is read once, and a memory limit
 * too small for the pool still completes the check with one thread.
 * With --deep, the unused tail bits of a persistent bitmap are read.
 * White-box: the check runs through qc_ctx_run so that a test can choose
 * the deep pass's threads (ctx.deep_threads).
 */
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "ctx.h"
#include "format.h"
#include "memory_image.h"
#include "qcheck.h"

/* Compressed entries 0..DEEP_ENTRIES-1 of the L2 table, each stream in a
 * sector of its own, laid out in the opposite order to the table's (so
 * that host order and table order differ). Enough for several batches of
 * the pool. */
#define DEEP_ENTRIES 300
/* Which entries are bad, and how: below QC_REPORT_CAP of each kind so
 * that every finding is shown one by one. */
enum { STREAM_GOOD, STREAM_GARBAGE, STREAM_SHORT, STREAM_UNREADABLE };

static int stream_kind(unsigned i)
{
    if (i == 123)
        return STREAM_UNREADABLE;
    if (i % 37 == 5)
        return STREAM_GARBAGE;
    if (i % 41 == 7)
        return STREAM_SHORT;
    return STREAM_GOOD;
}

/* Raw deflate (4 KiB window, as QEMU writes it) of `len` bytes of `fill`
 * into out (at most cap bytes): its length. */
static size_t deflate_fill(uint8_t *out, size_t cap, int fill, size_t len)
{
    uint8_t *in = malloc(len);
    ck_assert_ptr_nonnull(in);
    memset(in, fill, len);
    z_stream s = {0};
    ck_assert_int_eq(deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY),
                     Z_OK);
    s.next_in = in;
    s.avail_in = (uInt)len;
    s.next_out = out;
    s.avail_out = (uInt)cap;
    ck_assert_int_eq(deflate(&s, Z_FINISH), Z_STREAM_END);
    size_t produced = cap - s.avail_out;
    deflateEnd(&s);
    free(in);
    return produced;
}

/* The image: default_params() without data clusters, the compressed
 * streams in clusters appended after the metadata. Returns the offset of
 * the first stream sector. */
static uint64_t build_compressed(img *im)
{
    img_params p = default_params();
    p.data_clusters = 0;
    img_build(im, &p);
    unsigned per_cluster = (unsigned)(im->cs / 512);
    unsigned clusters = (DEEP_ENTRIES + per_cluster - 1) / per_cluster;
    uint64_t first = img_append(im, clusters);
    uint64_t base = cl_off(im, first);
    for (unsigned i = 0; i < DEEP_ENTRIES; i++) {
        uint64_t at = base + (uint64_t)(DEEP_ENTRIES - 1 - i) * 512;
        uint8_t *sector = im->buf + at;
        int kind = stream_kind(i);
        if (kind == STREAM_GARBAGE)
            memset(sector, 0xff, 512); /* an invalid deflate block type */
        else
            ck_assert_uint_le(deflate_fill(sector, 512, 'a' + (int)(i % 26),
                                           kind == STREAM_SHORT ? (size_t)im->cs / 2 : (size_t)im->cs),
                              512);
        img_set_l2(im, i, qc_compressed_encode(&im->g, at, 0));
    }
    for (unsigned c = 0; c < clusters; c++) {
        unsigned in_cluster = DEEP_ENTRIES - c * per_cluster;
        img_set_refcount(im, first + c, in_cluster < per_cluster ? in_cluster : per_cluster);
    }
    return base;
}

/* An io over a memory image that fails reads of one byte and counts the
 * reads touching a range. */
typedef struct counting_io {
    qc_io inner;
    uint64_t bad;                 /* this byte cannot be read */
    uint64_t watch_from, watch_to; /* reads touching [from, to) are counted */
    unsigned watched;
} counting_io;

static int counting_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    counting_io *c = opaque;
    if (off < c->watch_to && off + len > c->watch_from)
        c->watched++;
    if (c->bad >= off && c->bad - off < len)
        return -EIO;
    return c->inner.read(c->inner.opaque, off, buf, len);
}

/* Every finding, in the order it was reported. */
typedef struct finding_log {
    char lines[64][400];
    unsigned n;
} finding_log;

static void log_finding(const qc_finding *f, void *payload)
{
    finding_log *log = payload;
    ck_assert_uint_lt(log->n, 64);
    snprintf(log->lines[log->n++], sizeof(log->lines[0]), "%s %llx %s: %s", f->problem->id,
             (unsigned long long)f->offset, f->object, f->message);
}

/* One --deep check with `threads` decompressing (0: one per core) and a
 * memory limit (0: the default). */
static int run_deep(const img *im, counting_io *io, unsigned threads, uint64_t max_mem,
                    finding_log *log, bool deep)
{
    qc_io_open_memory(&io->inner, im->buf, im->len);
    qc_io outer = {.read = counting_read, .opaque = io, .size = im->len};
    qc_options opts = options_default();
    opts.deep = deep;
    opts.max_mem = max_mem;
    opts.on_finding = log_finding;
    opts.payload = log;
    memset(log, 0, sizeof(*log));
    io->watched = 0;
    qc_result *r = result_new();
    qc_ctx ctx = {0};
    ctx.deep_threads = threads;
    qc_ctx_run(&ctx, &outer, &opts, r);
    qc_ctx_release(&ctx);
    int status = qc_exit_status(r);
    result_free(r);
    qc_io_close(&io->inner);
    return status;
}

static bool has_memory_limit(const finding_log *log)
{
    for (unsigned k = 0; k < log->n; k++)
        if (strncmp(log->lines[k], "memoryLimit ", 12) == 0)
            return true;
    return false;
}

static void assert_same_log(const finding_log *a, const finding_log *b, const char *what)
{
    ck_assert_msg(a->n == b->n, "%s: %u findings, one thread %u", what, b->n, a->n);
    for (unsigned k = 0; k < a->n; k++)
        ck_assert_msg(strcmp(a->lines[k], b->lines[k]) == 0, "%s: finding %u is\n  %s\nnot\n  %s",
                      what, k, b->lines[k], a->lines[k]);
}

/* Bad compressed streams (garbage, short) and an unreadable one, spread
 * over several batches: one thread reports them in table order (not host
 * order), and two, four or one per core report exactly the same lines;
 * each compressed sector is read once. */
START_TEST(test_deep_pool_delivers_in_order)
{
    img im;
    uint64_t base = build_compressed(&im);
    counting_io io = {.bad = base + (uint64_t)(DEEP_ENTRIES - 1 - 123) * 512 + 100,
                      .watch_from = base,
                      .watch_to = base + DEEP_ENTRIES * 512};
    finding_log *serial = calloc(1, sizeof(*serial)), *pool = calloc(1, sizeof(*pool));
    ck_assert(serial && pool);

    /* The plain check reads none of it and finds the image clean. */
    ck_assert_int_eq(run_deep(&im, &io, 1, 0, serial, false), 0);
    ck_assert_uint_eq(serial->n, 0);
    ck_assert_uint_eq(io.watched, 0);

    ck_assert_int_eq(run_deep(&im, &io, 1, 0, serial, true), 1); /* the read error */
    ck_assert_uint_eq(io.watched, DEEP_ENTRIES);
    unsigned expected = 0;
    for (unsigned i = 0; i < DEEP_ENTRIES; i++) {
        int kind = stream_kind(i);
        if (kind == STREAM_GOOD)
            continue;
        ck_assert_uint_lt(expected, serial->n);
        const char *line = serial->lines[expected++];
        char want[200];
        if (kind == STREAM_UNREADABLE)
            snprintf(want, sizeof(want), "readFailed %llx compressed cluster",
                     (unsigned long long)(base + (uint64_t)(DEEP_ENTRIES - 1 - i) * 512));
        else
            snprintf(want, sizeof(want), "compressedStreamInvalid %llx ",
                     (unsigned long long)(cl_off(&im, CL_L2) + (uint64_t)i * 8));
        ck_assert_msg(strncmp(line, want, strlen(want)) == 0, "entry %u: %s, want %s...", i,
                      line, want);
        if (kind == STREAM_SHORT)
            ck_assert_msg(strstr(line, "ends before the cluster is full"), "%s", line);
    }
    ck_assert_uint_eq(serial->n, expected);

    static const unsigned threads[] = {2, 4, 0};
    for (size_t t = 0; t < sizeof(threads) / sizeof(threads[0]); t++) {
        ck_assert_int_eq(run_deep(&im, &io, threads[t], 0, pool, true), 1);
        ck_assert_uint_eq(io.watched, DEEP_ENTRIES);
        char what[40];
        snprintf(what, sizeof(what), "%u threads", threads[t]);
        assert_same_log(serial, pool, what);
    }
    free(serial);
    free(pool);
    img_free(&im);
}
END_TEST

/* A memory limit far below what the pool needs: whatever the limit, the
 * check either stops at memoryLimit or reports exactly what the pool
 * reports; a limit a little above the plain check's own need completes. */
START_TEST(test_deep_small_memory_limit)
{
    img im;
    uint64_t base = build_compressed(&im);
    counting_io io = {.bad = UINT64_MAX, .watch_from = base, .watch_to = base};
    finding_log *full = calloc(1, sizeof(*full)), *limited = calloc(1, sizeof(*limited));
    ck_assert(full && limited);
    ck_assert_int_eq(run_deep(&im, &io, 4, 0, full, true), 2);

    /* The smallest limit the plain check completes with. */
    uint64_t lo = 1, hi = 64u << 20;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        run_deep(&im, &io, 4, mid, limited, false);
        if (has_memory_limit(limited))
            lo = mid + 1;
        else
            hi = mid;
    }
    bool completed = false;
    for (uint64_t limit = lo; limit <= lo + (512u << 10); limit += 16u << 10) {
        int status = run_deep(&im, &io, 4, limit, limited, true);
        if (has_memory_limit(limited)) {
            ck_assert_msg(!completed, "limit %llu stops after a smaller one completed",
                          (unsigned long long)limit);
            ck_assert_int_eq(status, 1);
            continue;
        }
        completed = true;
        ck_assert_int_eq(status, 2);
        assert_same_log(full, limited, "small limit");
    }
    ck_assert_msg(completed, "--deep needs more than 512 KiB above the plain check's %llu bytes",
                  (unsigned long long)lo);
    free(full);
    free(limited);
    img_free(&im);
}
END_TEST

/* The findings of one check whose id is `id`. */
static unsigned count_of(const finding_log *log, const char *id)
{
    unsigned n = 0;
    size_t len = strlen(id);
    for (unsigned k = 0; k < log->n; k++)
        n += strncmp(log->lines[k], id, len) == 0 && log->lines[k][len] == ' ';
    return n;
}

static void set_bit(img *im, uint64_t cluster, uint64_t bit)
{
    im->buf[cl_off(im, cluster) + bit / 8] |= (uint8_t)(1u << (bit % 8));
}

/* A persistent bitmap's bits past the end of the disk (its 64 KiB
 * granules: 8191 bits for a disk one granule short of 512 MiB, the rest
 * of the cluster's 524288 bits unused): set ones are one warning with
 * --deep only (exit 0), counted; the last real bit is not one of them;
 * an in-use bitmap is bitmapInUse alone, its tail unread. */
START_TEST(test_deep_bitmap_tail_bits)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.size -= im.cs;
    img_write_header(&im);
    bitmap_layout b = img_add_bitmap(&im);
    counting_io io = {.bad = UINT64_MAX};
    finding_log *log = calloc(1, sizeof(*log));
    ck_assert_ptr_nonnull(log);

    set_bit(&im, b.data, 0);
    set_bit(&im, b.data, 8190); /* the last bit of the disk */
    ck_assert_int_eq(run_deep(&im, &io, 0, 0, log, true), 0);
    ck_assert_msg(log->n == 0, "%s", log->lines[0]);

    set_bit(&im, b.data, 8191); /* the first bit past it */
    set_bit(&im, b.data, im.cs * 8 - 1);
    ck_assert_int_eq(run_deep(&im, &io, 0, 0, log, false), 0);
    ck_assert_uint_eq(log->n, 0);
    ck_assert_int_eq(run_deep(&im, &io, 0, 0, log, true), 0);
    ck_assert_uint_eq(log->n, 1);
    char want[200];
    snprintf(want, sizeof(want),
             "bitmapTailBitsSet %llx bitmap 0 \"bmp0\": 2 of the %llu bits past the end of the disk",
             (unsigned long long)(cl_off(&im, b.data) + 8191 / 8),
             (unsigned long long)(im.cs * 8 - 8191));
    ck_assert_msg(strncmp(log->lines[0], want, strlen(want)) == 0, "%s\nwant %s", log->lines[0],
                  want);

    uint8_t *flags = im.buf + cl_off(&im, b.dir) + 12;
    qc_put_be32(flags, qc_be32(flags) | QC_BITMAP_FLAG_IN_USE);
    ck_assert_int_eq(run_deep(&im, &io, 0, 0, log, true), 0);
    ck_assert_uint_eq(log->n, 1);
    ck_assert_uint_eq(count_of(log, "bitmapInUse"), 1);
    free(log);
    img_free(&im);
}
END_TEST

void add_deep_tests(TCase *tc)
{
    tcase_add_test(tc, test_deep_bitmap_tail_bits);
    tcase_add_test(tc, test_deep_pool_delivers_in_order);
    tcase_add_test(tc, test_deep_small_memory_limit);
}
