/*
 * qc_chain_check() and qc_chain_digest() on chains of small images built in
 * memory and written to a temporary folder: the order of the layer events
 * and findings, the counts of each layer and their sums, the depth limit,
 * the layers' guest read through, and the caller's io left open. The
 * command and its agreement with QEMU are tested in tests/chain/.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memory_image.h"
#include "qcheck.h"
#include "runner.h"

#define EXT_BACKING_FORMAT 0xe2792acau

/* Write image `im` to dir/name, naming `backing` (format qcow2) if given. */
static void write_layer(img *im, const char *dir, const char *name, const char *backing)
{
    if (backing) {
        size_t at = img_add_extension(im, QC_V3_HEADER_LENGTH, EXT_BACKING_FORMAT, "qcow2", 5);
        ck_assert_uint_lt(at + 8 + strlen(backing), 4096);
        memset(im->buf + at, 0, 8); /* the end of the extensions */
        memcpy(im->buf + 1024, backing, strlen(backing));
        qc_put_be64(im->buf + 8, 1024);
        qc_put_be32(im->buf + 16, (uint32_t)strlen(backing));
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, im->buf, im->len), (ssize_t)im->len);
    close(fd);
}

typedef struct trace {
    char log[4096]; /* "B0 f604 E0 B1 E1": events and the findings' codes */
    size_t len;
} trace;

/* Append `tag` and `v` ("B0 ") to the log. */
static void note(trace *t, char tag, unsigned v)
{
    int n = snprintf(t->log + t->len, sizeof(t->log) - t->len, "%c%u ", tag, v);
    if (n > 0 && (size_t)n < sizeof(t->log) - t->len)
        t->len += (size_t)n;
}

static void on_layer(qc_chain_event ev, const qc_chain_layer *l, void *payload)
{
    note(payload, ev == QC_CHAIN_LAYER_BEGIN ? 'B' : 'E', l->depth);
}

static void on_finding(const qc_finding *f, void *payload)
{
    note(payload, 'f', f->problem->code);
}

/* A folder with a chain top.qcow2 -> mid.qcow2 -> base.qcow2 of default
 * images (two data clusters each), `mid` with one leaked cluster (its
 * second L2 entry cleared). */
static void make_chain(char *dir)
{
    strcpy(dir, "/tmp/qc-unit-chain-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    img_params p = default_params();
    img base, mid, top;
    img_build(&base, &p);
    img_build(&mid, &p);
    img_build(&top, &p);
    img_set_l2(&mid, 1, 0);
    write_layer(&base, dir, "base.qcow2", NULL);
    write_layer(&mid, dir, "mid.qcow2", "base.qcow2");
    write_layer(&top, dir, "top.qcow2", "mid.qcow2");
    img_free(&base);
    img_free(&mid);
    img_free(&top);
}

static void remove_chain(const char *dir)
{
    static const char *const names[] = {"top.qcow2", "mid.qcow2", "base.qcow2"};
    char path[512];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static int run_chain(const char *dir, unsigned max_depth, trace *t, qc_io *io, qc_chain **ch)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/top.qcow2", dir);
    ck_assert_int_eq(qc_io_open_file(io, path), 0);
    qc_options o = QC_OPTIONS_INIT;
    o.on_finding = on_finding;
    o.payload = t;
    qc_chain_options co = QC_CHAIN_OPTIONS_INIT;
    co.backing = true;
    co.max_depth = max_depth;
    co.on_layer = on_layer;
    co.payload = t;
    return qc_chain_check(io, path, &o, &co, ch);
}

START_TEST(test_chain_layers_in_order)
{
    char dir[64];
    make_chain(dir);
    trace t = {0};
    qc_io io;
    qc_chain *ch;
    ck_assert_int_eq(run_chain(dir, 0, &t, &io, &ch), 0);
    /* Each layer's findings between its two events; the leak is mid's. */
    ck_assert_str_eq(t.log, "B0 E0 B1 f604 E1 B2 E2 ");
    ck_assert_uint_eq(qc_chain_layers(ch), 3);
    const qc_chain_layer *mid = qc_chain_layer_at(ch, 1);
    ck_assert_uint_eq(mid->depth, 1);
    ck_assert_str_eq(mid->format, "qcow2");
    ck_assert(!mid->probed);
    ck_assert_ptr_nonnull(strstr(mid->path, "/mid.qcow2"));
    ck_assert_uint_eq(qc_result_count(mid->result, QC_COUNT_LEAKS), 1);
    ck_assert_uint_eq(qc_result_count(qc_chain_layer_at(ch, 0)->result, QC_COUNT_LEAKS), 0);
    ck_assert_uint_eq(qc_chain_count(ch, QC_COUNT_LEAKS), 1);
    ck_assert_int_eq(qc_chain_exit_status(ch), 3);
    ck_assert_ptr_null(qc_chain_layer_at(ch, 3));
    qc_chain_free(ch);
    /* The caller's io is still open and still the caller's. */
    uint8_t magic[4];
    ck_assert_int_eq(io.read(io.opaque, 0, magic, 4), 0);
    ck_assert_int_eq(memcmp(magic, "QFI\xfb", 4), 0);
    qc_io_close(&io);
    remove_chain(dir);
}
END_TEST

START_TEST(test_chain_depth_limit)
{
    char dir[64];
    make_chain(dir);
    trace t = {0};
    qc_io io;
    qc_chain *ch;
    ck_assert_int_eq(run_chain(dir, 1, &t, &io, &ch), 0);
    /* mid is layer 1, the last allowed: naming base is chainTooDeep,
     * counted on mid, and the chain stops there. */
    ck_assert_str_eq(t.log, "B0 E0 B1 f604 f907 E1 ");
    ck_assert_uint_eq(qc_chain_layers(ch), 2);
    ck_assert_uint_eq(
        qc_result_problem_count(qc_chain_layer_at(ch, 1)->result, QC_P_CHAIN_TOO_DEEP), 1);
    ck_assert_int_eq(qc_chain_exit_status(ch), 1);
    /* The digest needs every layer the guest reads. */
    uint8_t d[QC_DIGEST_MAX];
    size_t n;
    char why[200];
    ck_assert_int_eq(qc_chain_digest(ch, QC_DIGEST_SHA256, d, &n, why, sizeof(why)), -ENOTSUP);
    ck_assert_ptr_nonnull(strstr(why, "backing file"));
    qc_chain_free(ch);
    qc_io_close(&io);
    remove_chain(dir);
}
END_TEST

START_TEST(test_chain_digest_reads_through)
{
    /* top maps nothing of its own (both L2 entries cleared and their
     * clusters left leaked), so its guest is base's: the digests agree. */
    char dir[64] = "/tmp/qc-unit-chain-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    img_params p = default_params();
    img base, top;
    img_build(&base, &p);
    img_build(&top, &p);
    img_set_l2(&top, 0, 0);
    img_set_l2(&top, 1, 0);
    memset(base.buf + cl_off(&base, CL_DATA), 0x5a, 100);
    write_layer(&base, dir, "base.qcow2", NULL);
    write_layer(&top, dir, "mid.qcow2", "base.qcow2"); /* reuses remove_chain's names */
    write_layer(&top, dir, "top.qcow2", "mid.qcow2");
    trace t = {0};
    qc_io io, base_io;
    qc_chain *ch;
    ck_assert_int_eq(run_chain(dir, 0, &t, &io, &ch), 0);
    ck_assert_uint_eq(qc_chain_layers(ch), 3);
    uint8_t through[QC_DIGEST_MAX], direct[QC_DIGEST_MAX];
    size_t n1, n2;
    ck_assert_int_eq(qc_chain_digest(ch, QC_DIGEST_XXH128, through, &n1, NULL, 0), 0);
    char path[512];
    snprintf(path, sizeof(path), "%s/base.qcow2", dir);
    ck_assert_int_eq(qc_io_open_file(&base_io, path), 0);
    ck_assert_int_eq(qc_digest(&base_io, QC_DIGEST_XXH128, false, direct, &n2, NULL, 0), 0);
    ck_assert_uint_eq(n1, n2);
    ck_assert_int_eq(memcmp(through, direct, n1), 0);
    /* And differs from the top image's own (empty) guest. */
    img_set_l1(&top, 0, 0);
    qc_io empty;
    qc_io_open_memory(&empty, top.buf, top.len);
    memset(top.buf + 8, 0, 12); /* no backing file */
    ck_assert_int_eq(qc_digest(&empty, QC_DIGEST_XXH128, false, direct, &n2, NULL, 0), 0);
    ck_assert_int_ne(memcmp(through, direct, n1), 0);
    qc_io_close(&empty);
    qc_io_close(&base_io);
    qc_chain_free(ch);
    qc_io_close(&io);
    img_free(&base);
    img_free(&top);
    remove_chain(dir);
}
END_TEST

Suite *unit_suite(void)
{
    Suite *s = suite_create("chain");
    TCase *tc = tcase_create("chain");
    tcase_add_test(tc, test_chain_layers_in_order);
    tcase_add_test(tc, test_chain_depth_limit);
    tcase_add_test(tc, test_chain_digest_reads_through);
    suite_add_tcase(s, tc);
    return s;
}
