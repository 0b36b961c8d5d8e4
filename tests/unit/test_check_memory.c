/*
 * End-to-end tests of qc_check() through the in-memory backend.
 *
 * Images are built here, in C, with the layout encoders:
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
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "qcheck.h"
#include "repair_run.h"
#include "runner.h"

#ifndef FUZZ_ROUNDS
#define FUZZ_ROUNDS 3000
#endif

/* Check's ck_assert records every passing assertion (a write to the parent
 * process in fork mode); loops over thousands of checks use this instead,
 * which costs nothing unless it fails. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

/* ---- the image builder -------------------------------------------------- */

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

static img_params default_params(void)
{
    img_params p = {16, 4, 3, false, 2, 0};
    return p;
}

static uint64_t cl_off(const img *im, uint64_t cluster)
{
    return cluster * im->cs;
}

static void img_write_header(img *im)
{
    qc_header_encode(&im->hdr, im->buf);
}

static void img_set_refcount(img *im, uint64_t cluster, uint64_t value)
{
    REQUIRE(cluster < im->g.refblock_entries, "cluster %llu has no refcount",
            (unsigned long long)cluster);
    qc_refblock_set(im->buf + cl_off(im, CL_REFBLOCK), im->g.refcount_bits, cluster, value);
}

static uint64_t img_get_refcount(const img *im, uint64_t cluster)
{
    return qc_refblock_get(im->buf + cl_off(im, CL_REFBLOCK), im->g.refcount_bits, cluster);
}

static void img_set_l1(img *im, unsigned index, uint64_t entry)
{
    REQUIRE((uint64_t)index * 8 < im->cs, "L1 index %u", index);
    qc_put_be64(im->buf + cl_off(im, CL_L1) + (uint64_t)index * 8, entry);
}

static uint64_t img_get_l1(const img *im, unsigned index)
{
    return qc_be64(im->buf + cl_off(im, CL_L1) + (uint64_t)index * 8);
}

static void img_set_l2(img *im, unsigned index, uint64_t entry)
{
    REQUIRE(index < im->g.l2_entries, "L2 index %u", index);
    qc_put_be64(im->buf + cl_off(im, CL_L2) + (uint64_t)index * im->g.l2_entry_size, entry);
}

static uint64_t img_get_l2(const img *im, unsigned index)
{
    return qc_be64(im->buf + cl_off(im, CL_L2) + (uint64_t)index * im->g.l2_entry_size);
}

static void img_set_l2_bitmap(img *im, unsigned index, uint64_t bitmap)
{
    REQUIRE(im->g.extended_l2, "not an extended L2 image");
    qc_put_be64(im->buf + cl_off(im, CL_L2) + (uint64_t)index * 16 + 8, bitmap);
}

static uint64_t img_clusters(const img *im)
{
    return CL_DATA + im->p.data_clusters + im->p.spare_clusters;
}

static void img_build(img *im, const img_params *p)
{
    memset(im, 0, sizeof(*im));
    im->p = *p;
    ck_assert(p->version == 2 || p->version == 3);
    ck_assert(p->version == 3 || (p->refcount_order == 4 && !p->extended_l2));
    qc_geometry_init(&im->g, p->cluster_bits, p->refcount_order, p->extended_l2);
    im->cs = im->g.cluster_size;
    uint64_t clusters = img_clusters(im);
    ck_assert_uint_le(clusters, im->g.refblock_entries);
    ck_assert_uint_le(p->data_clusters, im->g.l2_entries);
    im->len = (size_t)(clusters * im->cs);
    im->buf = calloc(1, im->len);
    ck_assert_ptr_nonnull(im->buf);

    qc_header *h = &im->hdr;
    h->magic = QC_MAGIC;
    h->version = p->version;
    h->cluster_bits = p->cluster_bits;
    h->size = im->g.l2_entries * im->cs;
    h->l1_size = 1;
    h->l1_table_offset = cl_off(im, CL_L1);
    h->refcount_table_offset = cl_off(im, CL_REFTABLE);
    h->refcount_table_clusters = 1;
    h->refcount_order = p->version == 3 ? p->refcount_order : 4;
    h->header_length = p->version == 3 ? QC_V3_HEADER_LENGTH : QC_V2_HEADER_LENGTH;
    h->incompatible_features = p->extended_l2 ? QC_INCOMPAT_EXTL2 : 0;
    img_write_header(im);

    qc_put_be64(im->buf + cl_off(im, CL_REFTABLE), cl_off(im, CL_REFBLOCK));
    for (uint64_t c = 0; c < CL_DATA + p->data_clusters; c++)
        img_set_refcount(im, c, 1);
    img_set_l1(im, 0, cl_off(im, CL_L2) | QC_OFLAG_COPIED);
    for (unsigned i = 0; i < p->data_clusters; i++) {
        img_set_l2(im, i, cl_off(im, CL_DATA + i) | QC_OFLAG_COPIED);
        if (p->extended_l2)
            img_set_l2_bitmap(im, i, 0xffffffffull); /* all subclusters allocated */
        memset(im->buf + cl_off(im, CL_DATA + i), 0x40 + (int)i, (size_t)im->cs);
    }
}

static void img_free(img *im)
{
    free(im->buf);
    im->buf = NULL;
}

/* Append n zeroed clusters; returns the index of the first. */
static uint64_t img_append(img *im, unsigned n)
{
    uint64_t first = im->len / im->cs;
    size_t len = im->len + (size_t)(n * im->cs);
    uint8_t *grown = realloc(im->buf, len);
    REQUIRE(grown != NULL, "out of memory");
    memset(grown + im->len, 0, len - im->len);
    im->buf = grown;
    im->len = len;
    return first;
}

/* Header extensions are written from byte 112 on, each padded to 8; the
 * rest of cluster 0 is zero, which reads as the end marker. */
static size_t img_add_extension(img *im, size_t at, uint32_t magic, const void *data,
                                uint32_t len)
{
    REQUIRE(at + 8 + len + 8 <= im->cs, "extension does not fit");
    qc_put_be32(im->buf + at, magic);
    qc_put_be32(im->buf + at + 4, len);
    memcpy(im->buf + at + 8, data, len);
    return at + 8 + (len + 7u) / 8 * 8;
}

/* One snapshot sharing the active L2 table: appends the snapshot table and
 * the snapshot's L1 table, and fixes every refcount and COPIED flag so
 * that the image is clean. Returns the cluster of the snapshot table (the
 * snapshot L1 table follows it). */
static uint64_t img_add_shared_snapshot(img *im, unsigned extra, const char *id)
{
    uint64_t table = img_append(im, 2);
    uint64_t l1 = table + 1;
    qc_snapshot_entry e;
    memset(&e, 0, sizeof(e));
    e.l1_table_offset = cl_off(im, l1);
    e.l1_size = 1;
    e.id_str_size = (uint16_t)strlen(id);
    e.id = (const uint8_t *)id;
    e.name_size = 4;
    e.name = (const uint8_t *)"snap";
    e.date_sec = 1700000000u;
    e.has_vm_state_size_large = extra >= 8;
    e.has_disk_size = extra >= 16;
    e.has_icount = extra >= 24;
    e.disk_size = im->hdr.size;
    e.icount = UINT64_MAX;
    size_t size = qc_snapshot_encode(&e, im->buf + cl_off(im, table), (size_t)im->cs);
    REQUIRE(size != 0, "snapshot entry does not fit");
    im->hdr.nb_snapshots = 1;
    im->hdr.snapshots_offset = cl_off(im, table);
    img_write_header(im);
    qc_put_be64(im->buf + cl_off(im, l1), cl_off(im, CL_L2));
    img_set_l1(im, 0, cl_off(im, CL_L2)); /* shared now: COPIED clear */
    img_set_refcount(im, CL_L2, 2);
    for (unsigned i = 0; i < im->p.data_clusters; i++) {
        img_set_l2(im, i, img_get_l2(im, i) & ~QC_OFLAG_COPIED);
        img_set_refcount(im, CL_DATA + i, 2);
    }
    img_set_refcount(im, table, 1);
    img_set_refcount(im, l1, 1);
    return table;
}

/* ---- running a check ------------------------------------------------------- */

typedef struct recorder {
    unsigned calls;
    unsigned bad; /* callbacks with NULL or unprintable strings, or a bad problem */
    unsigned shown[QC_P_COUNT];
    uint64_t counted[QC_P_COUNT]; /* sum of finding->count */
    char first_message[QC_P_COUNT][160];
} recorder;

static bool printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

static void record(const qc_finding *f, void *payload)
{
    recorder *r = payload;
    r->calls++;
    if (!f || !f->problem || !f->object || !f->message || !printable(f->object) ||
        !printable(f->message) || f->count == 0) {
        r->bad++;
        return;
    }
    unsigned i = f->problem->index;
    if (i >= QC_P_COUNT || qc_problem_get((qc_problem_id)i) != f->problem) {
        r->bad++;
        return;
    }
    if (!r->shown[i])
        snprintf(r->first_message[i], sizeof(r->first_message[i]), "%s: %s", f->object,
                 f->message);
    r->shown[i]++;
    r->counted[i] += f->count;
}

typedef struct outcome {
    int ret;
    int status;
    qc_result res;
    recorder rec;
} outcome;

/* Invariants every check must satisfy, whatever the image. */
static void assert_consistent(const outcome *o)
{
    REQUIRE(o->ret == 0, "qc_check returned %d", o->ret);
    REQUIRE(o->rec.bad == 0, "%u findings with NULL/unprintable strings or a bad problem",
            o->rec.bad);
    const qc_result *r = &o->res;
    int st = o->status;
    REQUIRE(st == 0 || st == 1 || st == 2 || st == 3 || st == 63, "exit status %d", st);
    uint64_t errors = 0, corruptions = 0, leaks = 0;
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
        /* What the callback saw adds up to the counters. */
        REQUIRE(o->rec.counted[i] == r->per_problem[i], "%s: callback counted %llu, result %llu",
                p->id, (unsigned long long)o->rec.counted[i],
                (unsigned long long)r->per_problem[i]);
        if (p->severity == QC_SEV_ERROR)
            errors += r->per_problem[i];
        else if (p->severity == QC_SEV_CORRUPTION)
            corruptions += r->per_problem[i];
        else if (p->severity == QC_SEV_LEAK)
            leaks += r->per_problem[i];
    }
    REQUIRE(r->check_errors == errors, "check_errors %llu, error findings %llu",
            (unsigned long long)r->check_errors, (unsigned long long)errors);
    REQUIRE(r->corruptions == corruptions, "corruptions %llu, corruption findings %llu",
            (unsigned long long)r->corruptions, (unsigned long long)corruptions);
    REQUIRE(r->leaks == leaks, "leaks %llu, leak findings %llu", (unsigned long long)r->leaks,
            (unsigned long long)leaks);
    if (r->other_format) {
        REQUIRE(st == 63, "other format \"%s\" but exit %d", r->other_format, st);
        REQUIRE(r->findings == 0, "other format with %llu findings",
                (unsigned long long)r->findings);
    } else {
        int want = r->check_errors ? 1 : r->corruptions ? 2 : r->leaks ? 3 : 0;
        REQUIRE(st == want, "exit %d, counters say %d", st, want);
    }
}

static void run_check_opts(const void *buf, size_t len, uint64_t max_mem, outcome *o)
{
    memset(o, 0, sizeof(*o));
    qc_io io;
    qc_io_open_memory(&io, buf, len);
    REQUIRE(io.read != NULL && io.size == len, "qc_io_open_memory failed");
    qc_options opts = {.on_finding = record, .payload = &o->rec, .max_mem = max_mem};
    o->ret = qc_check(&io, &opts, &o->res);
    o->status = qc_exit_status(&o->res);
    qc_io_close(&io);
    assert_consistent(o);
}

static void run_check(const img *im, outcome *o)
{
    run_check_opts(im->buf, im->len, 0, o);
}

static uint64_t n_of(const outcome *o, qc_problem_id id)
{
    return o->res.per_problem[id];
}

/* Everything the check reported, for failure messages. */
static const char *describe(const outcome *o)
{
    static char text[4096];
    size_t off = 0;
    text[0] = '\0';
    for (unsigned i = 0; i < QC_P_COUNT && off + 200 < sizeof(text); i++)
        if (o->res.per_problem[i])
            off += (size_t)snprintf(text + off, sizeof(text) - off, " [%s x%llu: %s]",
                                    qc_problem_get((qc_problem_id)i)->id,
                                    (unsigned long long)o->res.per_problem[i],
                                    o->rec.first_message[i]);
    return text;
}

#define ASSERT_FOUND(o, pid, n)                                                                    \
    ck_assert_msg(n_of(o, pid) == (n), "%s: expected %llu, got %llu;%s",                           \
                  qc_problem_get(pid)->id, (unsigned long long)(n),                                \
                  (unsigned long long)n_of(o, pid), describe(o))

#define ASSERT_PRESENT(o, pid)                                                                     \
    ck_assert_msg(n_of(o, pid) > 0, "%s not reported;%s", qc_problem_get(pid)->id, describe(o))

/* The only problems reported are those in `allowed` (QC_P_COUNT ends it). */
static void assert_only(const outcome *o, const qc_problem_id *allowed)
{
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        if (!o->res.per_problem[i])
            continue;
        bool ok = false;
        for (const qc_problem_id *a = allowed; *a != QC_P_COUNT; a++)
            ok |= *a == i;
        ck_assert_msg(ok, "unexpected %s;%s", qc_problem_get((qc_problem_id)i)->id, describe(o));
    }
}

#define ASSERT_ONLY(o, ...)                                                                        \
    do {                                                                                           \
        const qc_problem_id allowed_[] = {__VA_ARGS__, QC_P_COUNT};                                \
        assert_only(o, allowed_);                                                                  \
    } while (0)

static void assert_clean(const img *im, const outcome *o)
{
    ck_assert_msg(o->res.findings == 0, "clean image has findings:%s", describe(o));
    ck_assert_uint_eq(o->rec.calls, 0);
    ck_assert_int_eq(o->status, 0);
    ck_assert_ptr_null(o->res.other_format);
    ck_assert(o->res.header_valid);
    ck_assert_uint_eq(o->res.corruptions, 0);
    ck_assert_uint_eq(o->res.leaks, 0);
    ck_assert_uint_eq(o->res.check_errors, 0);
    ck_assert_uint_eq(o->res.warnings, 0);
    ck_assert_uint_eq(o->res.allocated_clusters, im->p.data_clusters);
    ck_assert_uint_eq(o->res.total_clusters, im->g.l2_entries);
    ck_assert_uint_eq(o->res.compressed_clusters, 0);
    ck_assert_uint_eq(o->res.fragmented_clusters, 0);
    ck_assert_uint_eq(o->res.image_end_offset, (CL_DATA + im->p.data_clusters) * im->cs);
    const qc_header_info *h = &o->res.header;
    ck_assert_uint_eq(h->version, im->p.version);
    ck_assert_uint_eq(h->cluster_bits, im->p.cluster_bits);
    ck_assert_uint_eq(h->virtual_size, im->hdr.size);
    ck_assert_uint_eq(h->refcount_bits, im->g.refcount_bits);
    ck_assert(h->extended_l2 == im->p.extended_l2);
    ck_assert(!h->dirty && !h->corrupt && !h->external_data_file);
    ck_assert_uint_eq(h->nb_snapshots, 0);
    ck_assert(!h->has_backing_file && !h->has_bitmaps);
}

/* ---- clean images ---------------------------------------------------------- */

START_TEST(test_clean_default)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    assert_clean(&im, &o);
    ck_assert_uint_eq(o.res.image_end_offset, 7 * 65536);
    ck_assert_uint_eq(o.res.allocated_clusters, 2);
    ck_assert_uint_eq(o.res.total_clusters, 8192);
    ck_assert_uint_eq(o.res.header.refcount_bits, 16);
    img_free(&im);
}
END_TEST

START_TEST(test_clean_v2)
{
    img im;
    img_params p = default_params();
    p.version = 2;
    p.data_clusters = 5;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    assert_clean(&im, &o);
    ck_assert_uint_eq(o.res.header.version, 2);
    ck_assert_uint_eq(o.res.header.refcount_bits, 16);
    img_free(&im);
}
END_TEST

START_TEST(test_clean_cluster_bits)
{
    img im;
    img_params p = default_params();
    p.cluster_bits = (unsigned)_i;
    p.data_clusters = 3;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    assert_clean(&im, &o);
    img_free(&im);
    /* Also as version 2. */
    p.version = 2;
    img_build(&im, &p);
    run_check(&im, &o);
    assert_clean(&im, &o);
    img_free(&im);
}
END_TEST

START_TEST(test_clean_extended_l2)
{
    img im;
    img_params p = default_params();
    p.cluster_bits = (unsigned)_i;
    p.extended_l2 = true;
    p.data_clusters = 4;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    assert_clean(&im, &o);
    ck_assert(o.res.header.extended_l2);
    img_free(&im);
}
END_TEST

START_TEST(test_clean_empty_l2)
{
    /* No data at all: only metadata in use. */
    img im;
    img_params p = default_params();
    p.data_clusters = 0;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    assert_clean(&im, &o);
    ck_assert_uint_eq(o.res.image_end_offset, 5 * 65536);
    img_free(&im);
}
END_TEST

START_TEST(test_trailing_space_is_info)
{
    img im;
    img_params p = default_params();
    p.spare_clusters = 3;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    ck_assert_int_eq(o.status, 0);
    ASSERT_FOUND(&o, QC_P_TRAILING_SPACE, 1);
    ASSERT_ONLY(&o, QC_P_TRAILING_SPACE);
    ck_assert_uint_eq(o.res.image_end_offset, 7 * 65536);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_fragmentation_counted)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 4;
    img_build(&im, &p);
    /* Map the data clusters out of order: 5, 7, 6, 8. */
    img_set_l2(&im, 1, cl_off(&im, CL_DATA + 2) | QC_OFLAG_COPIED);
    img_set_l2(&im, 2, cl_off(&im, CL_DATA + 1) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ck_assert_int_eq(o.status, 0);
    ck_assert_uint_eq(o.res.findings, 0);
    ck_assert_uint_eq(o.res.allocated_clusters, 4);
    ck_assert_uint_eq(o.res.fragmented_clusters, 3);
    img_free(&im);
}
END_TEST

/* ---- refcount widths ------------------------------------------------------- */

START_TEST(test_width_clean)
{
    img im;
    img_params p = default_params();
    p.refcount_order = (unsigned)_i;
    p.cluster_bits = 9; /* 64-bit refcounts: 64 entries per block, plenty */
    p.data_clusters = 6;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    assert_clean(&im, &o);
    ck_assert_uint_eq(o.res.header.refcount_bits, 1u << _i);
    img_free(&im);
}
END_TEST

START_TEST(test_width_leaked_spare_cluster)
{
    img im;
    img_params p = default_params();
    p.refcount_order = (unsigned)_i;
    p.spare_clusters = 2;
    img_build(&im, &p);
    /* The first spare cluster is marked in use but nothing references it. */
    img_set_refcount(&im, CL_DATA + 2, 1);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 1);
    ck_assert_uint_eq(o.res.leaks, 1);
    ck_assert_uint_eq(o.res.corruptions, 0);
    ck_assert_int_eq(o.status, 3);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_LEAK, QC_P_TRAILING_SPACE);
    ck_assert_uint_eq(o.res.image_end_offset, 8 * 65536);
    img_free(&im);
}
END_TEST

START_TEST(test_width_bumped_refcount)
{
    unsigned order = (unsigned)_i;
    unsigned bits = 1u << order;
    img im;
    img_params p = default_params();
    p.refcount_order = order;
    img_build(&im, &p);
    /* (Width 1 cannot hold 2: see test_width_leaked_spare_cluster.) Bump a
     * data cluster to 2 and the L2 table to the largest refcount. */
    ck_assert_uint_ge(bits, 2);
    img_set_refcount(&im, CL_DATA, 2);
    img_set_refcount(&im, CL_L2, im.g.refcount_max);
    ck_assert_uint_eq(img_get_refcount(&im, CL_L2), im.g.refcount_max);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 2);
    ck_assert_uint_eq(o.res.leaks, 2);
    ck_assert_int_eq(o.status, 3);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_LEAK);
    img_free(&im);
}
END_TEST

START_TEST(test_width_high_bits_read)
{
    /* A refcount using the top bit of its width must be read in full:
     * 1 | top bit is not 1. */
    unsigned order = (unsigned)_i;
    unsigned bits = 1u << order;
    ck_assert_uint_ge(bits, 2);
    img im;
    img_params p = default_params();
    p.refcount_order = order;
    img_build(&im, &p);
    img_set_refcount(&im, CL_DATA + 1, 1 | (1ull << (bits - 1)));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_LEAK);
    ck_assert_int_eq(o.status, 3);
    img_free(&im);
}
END_TEST

START_TEST(test_width_zeroed_refcount)
{
    img im;
    img_params p = default_params();
    p.refcount_order = (unsigned)_i;
    img_build(&im, &p);
    img_set_refcount(&im, CL_DATA + 1, 0);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ZERO_IN_USE, 1);
    ck_assert_uint_eq(o.res.corruptions, 1);
    ck_assert_uint_eq(o.res.leaks, 0);
    ck_assert_int_eq(o.status, 2);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_ZERO_IN_USE);
    img_free(&im);
}
END_TEST

START_TEST(test_width_zeroed_metadata_refcounts)
{
    /* Header, reftable, refblock, L1, L2 all at zero: five clusters. */
    img im;
    img_params p = default_params();
    p.refcount_order = (unsigned)_i;
    img_build(&im, &p);
    for (unsigned c = 0; c < CL_DATA; c++)
        img_set_refcount(&im, c, 0);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ZERO_IN_USE, 5);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_ZERO_IN_USE);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_width_overflow)
{
    /* refcount_max + 1 L2 entries map the same data cluster, whose
     * refcount is refcount_max: the width cannot represent it. */
    unsigned order = (unsigned)_i;
    img im;
    img_params p = default_params();
    p.refcount_order = order;
    p.data_clusters = 1;
    img_build(&im, &p);
    uint64_t refs = im.g.refcount_max + 1;
    ck_assert_uint_le(refs, im.g.l2_entries);
    for (unsigned i = 0; i < refs; i++)
        img_set_l2(&im, i, cl_off(&im, CL_DATA)); /* COPIED clear: shared */
    img_set_refcount(&im, CL_DATA, im.g.refcount_max);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_OVERFLOW, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_OVERFLOW);
    ck_assert_uint_eq(o.res.corruptions, 1);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_width_shared_cluster_ok)
{
    /* The same cluster mapped twice with refcount 2 is fine (widths >= 2). */
    unsigned order = (unsigned)_i;
    ck_assert_uint_ge(order, 1);
    img im;
    img_params p = default_params();
    p.refcount_order = order;
    img_build(&im, &p);
    img_set_l2(&im, 0, cl_off(&im, CL_DATA));
    img_set_l2(&im, 7, cl_off(&im, CL_DATA));
    img_set_refcount(&im, CL_DATA, 2);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_int_eq(o.status, 0);
    ck_assert_uint_eq(o.res.allocated_clusters, 3);
    img_free(&im);
}
END_TEST

START_TEST(test_refcount_too_low)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    /* Three references, refcount 2. */
    img_set_l2(&im, 0, cl_off(&im, CL_DATA));
    img_set_l2(&im, 5, cl_off(&im, CL_DATA));
    img_set_l2(&im, 6, cl_off(&im, CL_DATA));
    img_set_refcount(&im, CL_DATA, 2);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_TOO_LOW, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_TOO_LOW);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_one_bit_cluster_referenced_twice)
{
    img im;
    img_params p = default_params();
    p.refcount_order = 0;
    img_build(&im, &p);
    img_set_l2(&im, 0, cl_off(&im, CL_DATA));
    img_set_l2(&im, 9, cl_off(&im, CL_DATA));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_OVERFLOW, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_OVERFLOW);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_refblock_missing_entry)
{
    /* Refcount table entry 0 cleared: every cluster reads refcount 0. */
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    qc_put_be64(im.buf + cl_off(&im, CL_REFTABLE), 0);
    outcome o;
    run_check(&im, &o);
    /* Everything still in use (all but the refcount block, which nothing
     * points to now) reads as refcount 0: clusters 0-1 and 3-6. */
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ZERO_IN_USE, 6);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_ZERO_IN_USE);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

/* ---- L1 and L2 entries ------------------------------------------------------ */

START_TEST(test_l2_entry_past_eof)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 10, cl_off(&im, 100) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_PAST_EOF, 1);
    ASSERT_ONLY(&o, QC_P_L2_ENTRY_PAST_EOF);
    ck_assert_uint_eq(o.res.leaks, 0);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_l2_entry_unaligned)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 10, (cl_off(&im, CL_DATA + 1) + 512) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_UNALIGNED, 1);
    ASSERT_ONLY(&o, QC_P_L2_ENTRY_UNALIGNED);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_l2_unaligned_replacing_data)
{
    /* The only reference to data cluster 1 becomes unaligned: that cluster
     * may belong to the entry, so it is an orphan, not a leak. */
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 1, (cl_off(&im, CL_DATA + 1) + 1024) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_UNALIGNED, 1);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ORPHAN, 1);
    ASSERT_ONLY(&o, QC_P_L2_ENTRY_UNALIGNED, QC_P_REFCOUNT_ORPHAN);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_l1_entry_past_eof)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 3;
    img_build(&im, &p);
    img_set_l1(&im, 0, cl_off(&im, 1000) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_ENTRY_PAST_EOF, 1);
    /* The L2 table and its three data clusters are allocated but nothing
     * followed reaches them. */
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ORPHAN, 4);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 0);
    ck_assert_uint_eq(o.res.leaks, 0);
    ASSERT_ONLY(&o, QC_P_L1_ENTRY_PAST_EOF, QC_P_REFCOUNT_ORPHAN);
    ck_assert_int_eq(o.status, 2);
    ck_assert_uint_eq(o.res.allocated_clusters, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_l1_entry_unaligned)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l1(&im, 0, (cl_off(&im, CL_L2) + 0x200) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_ENTRY_UNALIGNED, 1);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 0);
    ASSERT_ONLY(&o, QC_P_L1_ENTRY_UNALIGNED, QC_P_REFCOUNT_ORPHAN);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_l1_reserved_bits)
{
    static const uint64_t bits[] = {1ull << 0, 1ull << 8, 1ull << 56, 1ull << 62};
    for (size_t k = 0; k < sizeof(bits) / sizeof(bits[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        img_set_l1(&im, 0, img_get_l1(&im, 0) | bits[k]);
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_L1_ENTRY_RESERVED_BITS, 1);
        ASSERT_ONLY(&o, QC_P_L1_ENTRY_RESERVED_BITS);
        ck_assert_int_eq(o.status, 2);
        /* The entry is still followed. */
        ck_assert_uint_eq(o.res.allocated_clusters, 2);
        img_free(&im);
    }
}
END_TEST

/* An L1 entry with no L2 table offset but COPIED (or reserved bits) set:
 * QEMU follows it to the header cluster, so it is a finding of its own, in
 * a snapshot's L1 table as in the active one; nothing is followed. */
START_TEST(test_l1_zero_offset_flags)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint64_t table = img_add_shared_snapshot(&im, 24, "1");
    qc_put_be64(im.buf + cl_off(&im, table + 1), QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_ZERO_OFFSET_FLAGS, 1);
    const char *msg = o.rec.first_message[QC_P_L1_ZERO_OFFSET_FLAGS];
    ck_assert_msg(strstr(msg, "snapshot 0") && strstr(msg, "entry 0 is 0x8000000000000000"), "%s",
                  msg);
    /* The snapshot no longer holds the L2 table and data clusters: their
     * second reference is a leak each. */
    ck_assert_uint_eq(o.res.leaks, 1 + p.data_clusters);
    ck_assert_int_eq(o.status, 2);

    /* Reserved bits too: both findings for the one entry. */
    img_set_l1(&im, 0, QC_OFLAG_COPIED | 1ull << 60);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_ZERO_OFFSET_FLAGS, 2);
    ASSERT_FOUND(&o, QC_P_L1_ENTRY_RESERVED_BITS, 1);
    ck_assert_msg(strstr(o.rec.first_message[QC_P_L1_ZERO_OFFSET_FLAGS], "active L1 table"), "%s",
                  o.rec.first_message[QC_P_L1_ZERO_OFFSET_FLAGS]);
    img_free(&im);
}
END_TEST

START_TEST(test_l2_reserved_bits)
{
    static const uint64_t bits[] = {1ull << 1, 1ull << 8, 1ull << 56, 1ull << 61};
    for (size_t k = 0; k < sizeof(bits) / sizeof(bits[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        img_set_l2(&im, 1, img_get_l2(&im, 1) | bits[k]);
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_L2_ENTRY_RESERVED_BITS, 1);
        ASSERT_ONLY(&o, QC_P_L2_ENTRY_RESERVED_BITS);
        ck_assert_int_eq(o.status, 2);
        img_free(&im);
    }
}
END_TEST

START_TEST(test_zero_flag_v2)
{
    img im;
    img_params p = default_params();
    p.version = 2;
    img_build(&im, &p);
    img_set_l2(&im, 0, img_get_l2(&im, 0) | QC_OFLAG_ZERO);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ZERO_FLAG_INVALID, 1);
    ASSERT_ONLY(&o, QC_P_L2_ZERO_FLAG_INVALID);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_zero_flag_v3_is_valid)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    /* Preallocated zero cluster and a plain zero cluster. */
    img_set_l2(&im, 0, img_get_l2(&im, 0) | QC_OFLAG_ZERO);
    img_set_l2(&im, 20, QC_OFLAG_ZERO);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_int_eq(o.status, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_zero_flag_extended_l2)
{
    img im;
    img_params p = default_params();
    p.extended_l2 = true;
    img_build(&im, &p);
    img_set_l2(&im, 1, img_get_l2(&im, 1) | QC_OFLAG_ZERO);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ZERO_FLAG_INVALID, 1);
    ASSERT_ONLY(&o, QC_P_L2_ZERO_FLAG_INVALID);
    img_free(&im);
}
END_TEST

START_TEST(test_subcluster_bitmaps)
{
    img im;
    img_params p = default_params();
    p.extended_l2 = true;
    img_build(&im, &p);
    img_set_l2_bitmap(&im, 0, 0x0000000100000001ull); /* subcluster 0 allocated and zero */
    img_set_l2_bitmap(&im, 30, 0x00000000000000f0ull); /* unallocated, allocated bits */
    img_set_l2_bitmap(&im, 31, 0xffffffff00000000ull); /* unallocated, all zero: fine */
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SUBCLUSTER_ALLOC_AND_ZERO, 1);
    ASSERT_FOUND(&o, QC_P_SUBCLUSTER_ALLOC_UNALLOCATED, 1);
    ASSERT_ONLY(&o, QC_P_SUBCLUSTER_ALLOC_AND_ZERO, QC_P_SUBCLUSTER_ALLOC_UNALLOCATED);
    img_free(&im);
}
END_TEST

START_TEST(test_zero_offset_copied)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 50, QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ZERO_OFFSET_COPIED, 1);
    ASSERT_ONLY(&o, QC_P_L2_ZERO_OFFSET_COPIED);
    ck_assert_int_eq(o.status, 2);
    ck_assert_uint_eq(o.res.allocated_clusters, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_l2_copied_clear)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 1, cl_off(&im, CL_DATA + 1)); /* refcount 1, COPIED clear */
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_COPIED_WRONG, 1);
    ASSERT_ONLY(&o, QC_P_L2_COPIED_WRONG);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_l2_copied_set_on_shared)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    /* Two COPIED references to one cluster with (correct) refcount 2. */
    img_set_l2(&im, 4, cl_off(&im, CL_DATA) | QC_OFLAG_COPIED);
    img_set_refcount(&im, CL_DATA, 2);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_COPIED_WRONG, 1);
    ASSERT_ONLY(&o, QC_P_L2_COPIED_WRONG);
    img_free(&im);
}
END_TEST

START_TEST(test_l1_copied_wrong)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l1(&im, 0, cl_off(&im, CL_L2));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_COPIED_WRONG, 1);
    ASSERT_ONLY(&o, QC_P_L1_COPIED_WRONG);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

/* ---- overlaps ---------------------------------------------------------------- */

START_TEST(test_data_overlaps_refblock)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 7, cl_off(&im, CL_REFBLOCK) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DATA_OVERLAPS_METADATA, 1);
    ck_assert_msg(strstr(o.rec.first_message[QC_P_DATA_OVERLAPS_METADATA], "refcount block"),
                  "%s", o.rec.first_message[QC_P_DATA_OVERLAPS_METADATA]);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_data_overlaps_each_metadata_cluster)
{
    /* (Not the header: host offset 0 means "unallocated".) */
    static const unsigned targets[] = {CL_REFTABLE, CL_REFBLOCK, CL_L1, CL_L2};
    for (size_t k = 0; k < 4; k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        img_set_l2(&im, 9, cl_off(&im, targets[k]));
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_DATA_OVERLAPS_METADATA, 1);
        ck_assert_int_eq(o.status, 2);
        img_free(&im);
    }
}
END_TEST

START_TEST(test_l1_entry_on_refblock)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l1(&im, 0, cl_off(&im, CL_REFBLOCK) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_METADATA_OVERLAP, 1);
    /* The refcount block is not walked as if it were an L2 table. */
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_RESERVED_BITS, 0);
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_UNALIGNED, 0);
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_PAST_EOF, 0);
    ASSERT_FOUND(&o, QC_P_L2_ZERO_FLAG_INVALID, 0);
    ASSERT_FOUND(&o, QC_P_DATA_OVERLAPS_METADATA, 0);
    /* The real L2 table and data are no longer reachable: orphans. */
    ck_assert_uint_eq(o.res.leaks, 0);
    ck_assert_uint_eq(o.res.allocated_clusters, 0);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_l1_table_on_reftable)
{
    /* The active L1 table placed on the refcount table loses the overlap
     * (the refcount table is more trusted). As docs/passes.md section 4
     * says, L1 tables are read before overlaps are known, so what was
     * collected from it is kept; the overlap is reported, names the L1 table
     * as the loser, and makes the check treat unreferenced clusters as
     * orphans. */
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.l1_table_offset = cl_off(&im, CL_REFTABLE);
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_PRESENT(&o, QC_P_METADATA_OVERLAP);
    const char *first = o.rec.first_message[QC_P_METADATA_OVERLAP];
    ck_assert_msg(strncmp(first, "active L1 table:", 16) == 0, "%s", first);
    ck_assert_msg(strstr(first, "refcount table") != NULL, "%s", first);
    ck_assert_uint_eq(o.res.leaks, 0);
    ASSERT_PRESENT(&o, QC_P_REFCOUNT_ORPHAN);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

/* ---- header-level problems --------------------------------------------------- */

START_TEST(test_unknown_incompat_feature)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.incompatible_features |= 1ull << 5;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_UNKNOWN_INCOMPAT_FEATURE, 1);
    ck_assert_uint_eq(o.res.check_errors, 1);
    ck_assert_int_eq(o.status, 1);
    ck_assert(o.res.header_valid);
    ck_assert_uint_eq(o.res.header.unknown_incompatible, 1ull << 5);
    ASSERT_ONLY(&o, QC_P_UNKNOWN_INCOMPAT_FEATURE);
    img_free(&im);
}
END_TEST

START_TEST(test_unknown_compat_and_autoclear)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.compatible_features |= 1ull << 40;
    im.hdr.autoclear_features |= 1ull << 9;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_UNKNOWN_COMPAT_FEATURE, 1);
    ASSERT_FOUND(&o, QC_P_UNKNOWN_AUTOCLEAR_FEATURE, 1);
    ASSERT_ONLY(&o, QC_P_UNKNOWN_COMPAT_FEATURE, QC_P_UNKNOWN_AUTOCLEAR_FEATURE);
    ck_assert_int_eq(o.status, 0);
    ck_assert_uint_eq(o.res.header.unknown_compatible, 1ull << 40);
    ck_assert_uint_eq(o.res.header.unknown_autoclear, 1ull << 9);
    img_free(&im);
}
END_TEST

START_TEST(test_other_formats)
{
    outcome o;
    uint8_t buf[512];

    memset(buf, 0, sizeof(buf));
    memcpy(buf, "hello, this is not an image", 27);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_ptr_nonnull(o.res.other_format);
    ck_assert_str_eq(o.res.other_format, "raw");
    ck_assert_int_eq(o.status, 63);
    ck_assert_uint_eq(o.rec.calls, 0);

    /* qcow version 1: magic then version 1. */
    memset(buf, 0, sizeof(buf));
    qc_put_be32(buf, QC_MAGIC);
    qc_put_be32(buf + 4, 1);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_ptr_nonnull(o.res.other_format);
    ck_assert_str_eq(o.res.other_format, "qcow (version 1)");
    ck_assert_int_eq(o.status, 63);

    /* Empty. */
    run_check_opts(buf, 0, 0, &o);
    ck_assert_ptr_nonnull(o.res.other_format);
    ck_assert_str_eq(o.res.other_format, "empty file");
    ck_assert_int_eq(o.status, 63);

    /* A few other signatures. */
    memset(buf, 0, sizeof(buf));
    memcpy(buf, "QFI", 3); /* wrong fourth magic byte */
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(o.res.other_format, "raw");
    memcpy(buf, "QED\0", 4);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(o.res.other_format, "qed");
    memset(buf, 0, sizeof(buf));
    memcpy(buf, "KDMV", 4);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(o.res.other_format, "vmdk");
    memset(buf, 0, sizeof(buf));
    memcpy(buf + 0x40, "\x7f\x10\xda\xbe", 4);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(o.res.other_format, "vdi");
}
END_TEST

START_TEST(test_version_unsupported)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    qc_put_be32(im.buf + 4, 4);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_VERSION_UNSUPPORTED, 1);
    ASSERT_ONLY(&o, QC_P_VERSION_UNSUPPORTED);
    ck_assert_int_eq(o.status, 1);
    ck_assert_ptr_null(o.res.other_format);
    img_free(&im);
}
END_TEST

START_TEST(test_cluster_bits_invalid)
{
    static const uint32_t bad[] = {0, 8, 22, 63, 64, 0xffffffffu};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        im.hdr.cluster_bits = bad[k];
        img_write_header(&im);
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_CLUSTER_BITS_INVALID, 1);
        ASSERT_ONLY(&o, QC_P_CLUSTER_BITS_INVALID);
        ck_assert_int_eq(o.status, 2);
        img_free(&im);
    }
}
END_TEST

START_TEST(test_header_length_invalid)
{
    static const uint32_t bad[] = {0, 72, 103, 65537, 0xffffffffu};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        im.hdr.header_length = bad[k];
        img_write_header(&im);
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_HEADER_LENGTH_INVALID, 1);
        ck_assert_int_eq(o.status, 2);
        img_free(&im);
    }
}
END_TEST

START_TEST(test_header_length_104_and_unaligned)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.header_length = 104;
    memset(im.buf + 104, 0, 8);
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));

    im.hdr.header_length = 108; /* extension area then starts misaligned */
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_HEADER_LENGTH_UNALIGNED, 1);
    ck_assert_int_eq(o.status, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_refcount_order_invalid)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.refcount_order = 7;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ORDER_INVALID, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_ORDER_INVALID);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_huge_l1_size)
{
    static const uint32_t sizes[] = {0xffffffffu, 0x80000000u, 0x10000000u, 0x10000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        im.hdr.l1_size = sizes[k];
        img_write_header(&im);
        outcome o;
        /* 1 MiB is plenty for this image; any allocation sized by l1_size
         * would hit the limit and show up as memoryLimit. */
        run_check_opts(im.buf, im.len, 1u << 20, &o);
        ASSERT_FOUND(&o, QC_P_L1_PAST_EOF, 1);
        ASSERT_FOUND(&o, QC_P_MEMORY_LIMIT, 0);
        /* Over 32 MiB of L1 table: QEMU refuses the image. */
        ASSERT_FOUND(&o, QC_P_QEMU_LIMIT_EXCEEDED, sizes[k] > (32u << 20) / 8 ? 1 : 0);
        ck_assert_int_eq(o.status, 2);
        /* The L2 table and data cannot be reached: orphans, not leaks. */
        ck_assert_uint_eq(o.res.leaks, 0);
        img_free(&im);
    }
}
END_TEST

START_TEST(test_l1_too_small)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.size = (1ull << 40); /* needs 2048 entries */
    img_write_header(&im);
    outcome o;
    run_check_opts(im.buf, im.len, 1u << 20, &o);
    ASSERT_FOUND(&o, QC_P_L1_TOO_SMALL, 1);
    ASSERT_ONLY(&o, QC_P_L1_TOO_SMALL);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);

    /* l1_size 0 with a non-zero virtual size. */
    img_build(&im, &p);
    im.hdr.l1_size = 0;
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_TOO_SMALL, 1);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_huge_virtual_size)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.size = UINT64_MAX - 511;
    im.hdr.l1_size = 0xffffffffu;
    img_write_header(&im);
    outcome o;
    run_check_opts(im.buf, im.len, 1u << 20, &o);
    ASSERT_FOUND(&o, QC_P_L1_TOO_SMALL, 1);
    ASSERT_FOUND(&o, QC_P_L1_PAST_EOF, 1);
    ASSERT_FOUND(&o, QC_P_MEMORY_LIMIT, 0);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_reftable_problems)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.refcount_table_clusters = 0x10000;
    img_write_header(&im);
    outcome o;
    run_check_opts(im.buf, im.len, 1u << 20, &o);
    ASSERT_FOUND(&o, QC_P_REFTABLE_PAST_EOF, 1);
    ASSERT_FOUND(&o, QC_P_MEMORY_LIMIT, 0);
    ASSERT_FOUND(&o, QC_P_QEMU_LIMIT_EXCEEDED, 1); /* 4 GiB: QEMU accepts 8 MiB */
    ck_assert_int_eq(o.status, 2);
    img_free(&im);

    img_build(&im, &p);
    qc_put_be64(im.buf + cl_off(&im, CL_REFTABLE), cl_off(&im, CL_REFBLOCK) | 0x100);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFTABLE_ENTRY_RESERVED_BITS, 1);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);

    img_build(&im, &p);
    qc_put_be64(im.buf + cl_off(&im, CL_REFTABLE), cl_off(&im, 500));
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFTABLE_ENTRY_PAST_EOF, 1);
    ASSERT_PRESENT(&o, QC_P_REFCOUNTS_UNKNOWN);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

/* QEMU validates the offsets of the active L1 table and of the snapshot
 * table even when they have no entries. */
START_TEST(test_empty_table_offsets)
{
    enum { FINE, UNALIGNED, TOO_LARGE };
    static const struct {
        uint64_t offset;
        int verdict;
    } cases[] = {
        {0x30200, UNALIGNED},
        {1ull << 63, TOO_LARGE},
        {UINT64_MAX & ~0xffffull, TOO_LARGE},
        {1ull << 62, FINE}, /* aligned and below 2^63: QEMU accepts it */
        {0, FINE},
    };
    for (int snapshots = 0; snapshots < 2; snapshots++) {
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
            img im;
            img_params p = default_params();
            p.data_clusters = 0;
            img_build(&im, &p);
            if (snapshots) {
                im.hdr.nb_snapshots = 0;
                im.hdr.snapshots_offset = cases[k].offset;
            } else {
                /* A disk of size 0 needs no L1 entries; the L1 and L2
                 * clusters are left over (leaked). */
                im.hdr.size = 0;
                im.hdr.l1_size = 0;
                im.hdr.l1_table_offset = cases[k].offset;
            }
            img_write_header(&im);
            outcome o;
            run_check(&im, &o);
            qc_problem_id expect = QC_P_EMPTY_TABLE_OFFSET_INVALID;
            ASSERT_FOUND(&o, expect, cases[k].verdict == FINE ? 0 : 1);
            if (cases[k].verdict != FINE)
                ck_assert_int_eq(o.status, 2);
            if (snapshots)
                ASSERT_ONLY(&o, expect);
            else
                ASSERT_ONLY(&o, expect, QC_P_REFCOUNT_LEAK);
            img_free(&im);
        }
    }
}
END_TEST

/* ---- memory limit ------------------------------------------------------------- */

START_TEST(test_memory_limit_small)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 8;
    img_build(&im, &p);
    outcome o;
    run_check_opts(im.buf, im.len, 4096, &o);
    ASSERT_PRESENT(&o, QC_P_MEMORY_LIMIT);
    ck_assert_uint_ge(o.res.check_errors, 1);
    ck_assert_int_eq(o.status, 1);
    ck_assert_uint_eq(o.res.corruptions, 0);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_memory_limit_sweep)
{
    /* Whatever the limit, an incomplete check reports memoryLimit and
     * nothing spurious; a large enough one gives a clean result. */
    img im;
    img_params p = default_params();
    p.data_clusters = 8;
    img_build(&im, &p);
    bool saw_limit = false, saw_clean = false;
    for (uint64_t limit = 1; limit <= (1u << 20); limit += limit / 16 + 1) {
        outcome o;
        run_check_opts(im.buf, im.len, limit, &o);
        if (n_of(&o, QC_P_MEMORY_LIMIT)) {
            saw_limit = true;
            REQUIRE(o.status == 1, "limit %llu: exit %d", (unsigned long long)limit, o.status);
            REQUIRE(o.res.corruptions == 0 && o.res.leaks == 0,
                          "limit %llu: spurious findings:%s", (unsigned long long)limit,
                          describe(&o));
        } else {
            saw_clean = true;
            REQUIRE(o.status == 0 && o.res.findings == 0, "limit %llu:%s",
                          (unsigned long long)limit, describe(&o));
        }
    }
    ck_assert(saw_limit);
    ck_assert(saw_clean);
    img_free(&im);
}
END_TEST

/* ---- robustness ------------------------------------------------------------------ */

/* A copy of the first len bytes in its own allocation, so that any read
 * past len is caught by AddressSanitizer. */
static void check_prefix(const uint8_t *buf, size_t len, outcome *o)
{
    uint8_t *copy = malloc(len ? len : 1);
    REQUIRE(copy != NULL, "out of memory");
    if (len)
        memcpy(copy, buf, len);
    run_check_opts(copy, len, 0, o);
    free(copy);
}

START_TEST(test_truncated_anywhere)
{
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
        outcome o;
        check_prefix(im.buf, len, &o);
        /* Never clean: cluster 4 (the L2 table) is always missing. */
        REQUIRE(o.status != 0 && o.status != 3, "cluster_bits %u, %zu bytes: exit %d:%s", cb,
                len, o.status, describe(&o));
        if (len >= 8)
            REQUIRE(o.res.other_format == NULL, "%zu bytes: other format %s", len,
                    o.res.other_format);
        else
            REQUIRE(o.status == 63, "%zu bytes: exit %d", len, o.status);
    }
    img_free(&im);
}
END_TEST

START_TEST(test_truncated_whole_image)
{
    /* Every length of a small image, at byte granularity past 4 clusters. */
    img im;
    img_params p = default_params();
    p.cluster_bits = 9;
    p.data_clusters = 3;
    img_build(&im, &p);
    for (size_t len = 0; len <= im.len; len++) {
        outcome o;
        check_prefix(im.buf, len, &o);
        if (len == im.len)
            assert_clean(&im, &o);
    }
    img_free(&im);
}
END_TEST

START_TEST(test_byte_corruption_never_crashes)
{
    /* Every byte of the metadata clusters set to 0xff, then to 0x80, one at
     * a time (512-byte clusters keep this fast). */
    img im;
    img_params p = default_params();
    p.cluster_bits = 9;
    p.data_clusters = 3;
    img_build(&im, &p);
    static const uint8_t values[] = {0xff, 0x80, 0x01};
    for (size_t v = 0; v < sizeof(values); v++) {
        for (size_t off = 0; off < (size_t)(CL_DATA * im.cs); off++) {
            uint8_t saved = im.buf[off];
            im.buf[off] = values[v];
            outcome o;
            check_prefix(im.buf, im.len, &o);
            im.buf[off] = saved;
        }
    }
    img_free(&im);
}
END_TEST

START_TEST(test_null_arguments)
{
    qc_result r;
    ck_assert_int_lt(qc_check(NULL, NULL, &r), 0);
    qc_io io;
    uint8_t b[8] = {0};
    qc_io_open_memory(&io, b, sizeof(b));
    ck_assert_int_lt(qc_check(&io, NULL, NULL), 0);
    /* No options at all: runs with defaults, nothing to call back. */
    ck_assert_int_eq(qc_check(&io, NULL, &r), 0);
    ck_assert_str_eq(r.other_format, "raw");
    qc_io_close(&io);
    ck_assert_ptr_null(io.read);
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
    qc_options opts = {0};
    qc_result r;
    ck_assert_int_eq(qc_check(&io, &opts, &r), 0);
    ck_assert_uint_eq(r.per_problem[QC_P_REFCOUNT_ZERO_IN_USE], 1);
    ck_assert_int_eq(qc_exit_status(&r), 2);
    qc_io_close(&io);
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
    qc_options opts = {.payload = &log, .on_progress = log_progress};
    qc_result r;
    ck_assert_int_eq(qc_check(&io, &opts, &r), 0);
    ck_assert_int_eq(qc_exit_status(&r), 0);
    ck_assert(log.increasing);
    ck_assert_uint_gt(log.calls, 3);
    ck_assert_uint_le(log.calls, 1000);
    ck_assert_uint_eq(log.last, 1000);
    qc_io_close(&io);
    img_free(&im);
}
END_TEST

START_TEST(test_many_findings_capped)
{
    /* 600 bad L2 entries: all counted, the callback sees at most the cap
     * plus a summary. */
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_refcount(&im, CL_DATA, 601);
    for (unsigned i = 100; i < 700; i++)
        img_set_l2(&im, i, cl_off(&im, CL_DATA) | (1ull << 57));
    img_set_l2(&im, 0, cl_off(&im, CL_DATA));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_ENTRY_RESERVED_BITS, 600);
    ck_assert_uint_le(o.rec.shown[QC_P_L2_ENTRY_RESERVED_BITS], 21);
    ck_assert_uint_ge(o.rec.shown[QC_P_L2_ENTRY_RESERVED_BITS], 2);
    ASSERT_ONLY(&o, QC_P_L2_ENTRY_RESERVED_BITS);
    img_free(&im);
}
END_TEST


/* ---- compressed clusters ------------------------------------------------------ */

START_TEST(test_compressed_clean)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 3;
    img_build(&im, &p);
    /* Two compressed clusters packed into data cluster 1 (refcount 2);
     * L2 entry 2 keeps mapping data cluster 2 normally. */
    img_set_l2(&im, 1, qc_compressed_encode(&im.g, cl_off(&im, CL_DATA + 1) + 0x100, 3));
    img_set_l2(&im, 5, qc_compressed_encode(&im.g, cl_off(&im, CL_DATA + 1) + 0x1000, 0));
    img_set_refcount(&im, CL_DATA + 1, 2);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_int_eq(o.status, 0);
    ck_assert_uint_eq(o.res.compressed_clusters, 2);
    ck_assert_uint_eq(o.res.allocated_clusters, 4);
    img_free(&im);
}
END_TEST

START_TEST(test_compressed_spanning_two_clusters)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 3;
    img_build(&im, &p);
    /* 3 sectors from 0x300 before the end of data cluster 1: 0x500 bytes,
     * the last 0x200 in data cluster 2. Both get one reference. */
    img_set_l2(&im, 1, qc_compressed_encode(&im.g, cl_off(&im, CL_DATA + 2) - 0x300, 2));
    img_set_l2(&im, 2, 0);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_uint_eq(o.res.compressed_clusters, 1);
    /* Without the reference into cluster 2 that cluster would be leaked. */
    img_set_l2(&im, 1, qc_compressed_encode(&im.g, cl_off(&im, CL_DATA + 2) - 0x300, 0));
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_LEAK);
    img_free(&im);
}
END_TEST

START_TEST(test_compressed_copied)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 1, qc_compressed_encode(&im.g, cl_off(&im, CL_DATA + 1), 1) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSED_COPIED, 1);
    ASSERT_ONLY(&o, QC_P_COMPRESSED_COPIED);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_compressed_past_eof)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 20, qc_compressed_encode(&im.g, im.len - 0x100, 1));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSED_RANGE_INVALID, 1);
    ASSERT_ONLY(&o, QC_P_COMPRESSED_RANGE_INVALID);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_compressed_high_offset_bits)
{
    img im;
    img_params p = default_params();
    p.cluster_bits = 9; /* offset field reaches bit 60 */
    img_build(&im, &p);
    img_set_l2(&im, 20, qc_compressed_encode(&im.g, (1ull << 57) | cl_off(&im, CL_DATA), 0));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSED_RANGE_INVALID, 1);
    ASSERT_ONLY(&o, QC_P_COMPRESSED_RANGE_INVALID);
    img_free(&im);
}
END_TEST

START_TEST(test_compressed_on_metadata)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_l2(&im, 20, qc_compressed_encode(&im.g, cl_off(&im, CL_L1) + 0x800, 0));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DATA_OVERLAPS_METADATA, 1);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_compressed_extended_l2_bitmap)
{
    img im;
    img_params p = default_params();
    p.extended_l2 = true;
    img_build(&im, &p);
    img_set_l2(&im, 1, qc_compressed_encode(&im.g, cl_off(&im, CL_DATA + 1), 2));
    img_set_l2_bitmap(&im, 1, 0);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    img_set_l2_bitmap(&im, 1, 1);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSED_SUBCLUSTER_BITMAP, 1);
    ASSERT_ONLY(&o, QC_P_COMPRESSED_SUBCLUSTER_BITMAP);
    img_free(&im);
}
END_TEST

/* ---- more than one table --------------------------------------------------------- */

START_TEST(test_second_l2_table)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint64_t l2b = img_append(&im, 2), data = l2b + 1;
    im.hdr.l1_size = 2;
    img_write_header(&im);
    img_set_l1(&im, 1, cl_off(&im, l2b) | QC_OFLAG_COPIED);
    qc_put_be64(im.buf + cl_off(&im, l2b) + 8 * 3, cl_off(&im, data) | QC_OFLAG_COPIED);
    img_set_refcount(&im, l2b, 1);
    img_set_refcount(&im, data, 1);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_uint_eq(o.res.allocated_clusters, 3);
    ck_assert_uint_eq(o.res.image_end_offset, im.len);
    /* Losing the second table's refcount. */
    img_set_refcount(&im, l2b, 0);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ZERO_IN_USE, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_ZERO_IN_USE);
    img_free(&im);
}
END_TEST

START_TEST(test_l2_shared_by_two_l1_entries)
{
    /* Each L1 reference to an L2 table counts once for the table and once
     * for every data cluster it maps. */
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.l1_size = 2;
    img_write_header(&im);
    img_set_l1(&im, 0, cl_off(&im, CL_L2));
    img_set_l1(&im, 1, cl_off(&im, CL_L2));
    img_set_refcount(&im, CL_L2, 2);
    for (unsigned i = 0; i < 2; i++) {
        img_set_l2(&im, i, cl_off(&im, CL_DATA + i));
        img_set_refcount(&im, CL_DATA + i, 2);
    }
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_uint_eq(o.res.allocated_clusters, 4);
    /* A refcount of 1 on a data cluster is now too low. */
    img_set_refcount(&im, CL_DATA + 1, 1);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_TOO_LOW, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_TOO_LOW);
    img_free(&im);
}
END_TEST

START_TEST(test_second_refblock)
{
    /* 512-byte clusters with 64-bit refcounts: one block covers 64
     * clusters. Clusters 64 and 65 need refcount table entry 1. */
    img im;
    img_params p = default_params();
    p.cluster_bits = 9;
    p.refcount_order = 6;
    p.data_clusters = 59; /* clusters 0..63 */
    img_build(&im, &p);
    ck_assert_uint_eq(im.len / im.cs, 64);
    uint64_t rb1 = img_append(&im, 2), data = rb1 + 1;
    ck_assert_uint_eq(rb1, 64);
    qc_put_be64(im.buf + cl_off(&im, CL_REFTABLE) + 8, cl_off(&im, rb1));
    qc_refblock_set(im.buf + cl_off(&im, rb1), 64, 0, 1);
    qc_refblock_set(im.buf + cl_off(&im, rb1), 64, 1, 1);
    img_set_l2(&im, 59, cl_off(&im, data) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_uint_eq(o.res.allocated_clusters, 60);
    ck_assert_uint_eq(o.res.image_end_offset, 66 * 512);
    /* Entry 1 of the second block is cluster 65: bump it. */
    qc_refblock_set(im.buf + cl_off(&im, rb1), 64, 1, 3);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 1);
    ck_assert_msg(strstr(o.rec.first_message[QC_P_REFCOUNT_LEAK], "host cluster 65"), "%s",
                  o.rec.first_message[QC_P_REFCOUNT_LEAK]);
    /* Without refcount table entry 1: the data cluster reads refcount 0. */
    qc_refblock_set(im.buf + cl_off(&im, rb1), 64, 1, 1);
    qc_put_be64(im.buf + cl_off(&im, CL_REFTABLE) + 8, 0);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ZERO_IN_USE, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_ZERO_IN_USE);
    ck_assert_msg(strstr(o.rec.first_message[QC_P_REFCOUNT_ZERO_IN_USE], "host cluster 65"),
                  "%s", o.rec.first_message[QC_P_REFCOUNT_ZERO_IN_USE]);
    img_free(&im);
}
END_TEST

START_TEST(test_refcount_past_eof)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_set_refcount(&im, 100, 1);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_PAST_EOF, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_PAST_EOF);
    ck_assert_int_eq(o.status, 0);
    img_free(&im);
}
END_TEST

/* ---- snapshots ---------------------------------------------------------------------- */

START_TEST(test_snapshot_shared_clean)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 24, "1");
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_int_eq(o.status, 0);
    ck_assert_uint_eq(o.res.header.nb_snapshots, 1);
    ck_assert_uint_eq(o.res.allocated_clusters, 2);
    ck_assert_uint_eq(o.res.image_end_offset, im.len);
    img_free(&im);
}
END_TEST

START_TEST(test_snapshot_copied_flags)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 24, "1");
    /* COPIED set on shared tables and clusters is wrong. */
    img_set_l1(&im, 0, cl_off(&im, CL_L2) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L1_COPIED_WRONG, 1);
    ASSERT_ONLY(&o, QC_P_L1_COPIED_WRONG);
    img_set_l1(&im, 0, cl_off(&im, CL_L2));
    img_set_l2(&im, 1, img_get_l2(&im, 1) | QC_OFLAG_COPIED);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_L2_COPIED_WRONG, 1);
    ASSERT_ONLY(&o, QC_P_L2_COPIED_WRONG);
    img_free(&im);
}
END_TEST

START_TEST(test_snapshot_refcounts_too_low)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 24, "1");
    img_set_refcount(&im, CL_L2, 1);
    img_set_refcount(&im, CL_DATA, 1);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_TOO_LOW, 2);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_TOO_LOW);
    img_free(&im);
}
END_TEST

START_TEST(test_snapshot_l1_past_eof)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint64_t table = img_add_shared_snapshot(&im, 24, "1");
    qc_put_be64(im.buf + cl_off(&im, table), cl_off(&im, 999));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SNAPSHOT_L1_PAST_EOF, 1);
    /* The references the snapshot held are not leaks: it was not followed.
     * (L2 table and two data clusters at refcount 2 with one reference,
     * the snapshot's own L1 cluster at refcount 1 with none.) */
    ck_assert_uint_eq(o.res.leaks, 0);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ORPHAN, 4);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 0);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

/* The COPIED flags of the active tables cannot be judged "clear but should
 * be set" when a snapshot that probably shares those tables was not
 * followed: setting COPIED there would let QEMU overwrite the snapshot's
 * data in place. pass_compare.c already holds back for L2 entries; the same
 * has to hold for L1 entries. */
START_TEST(test_l1_copied_not_judged_with_unfollowed_snapshot)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint64_t table = img_add_shared_snapshot(&im, 24, "1");
    qc_put_be64(im.buf + cl_off(&im, table), cl_off(&im, 999));
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SNAPSHOT_L1_PAST_EOF, 1);
    ASSERT_FOUND(&o, QC_P_L2_COPIED_WRONG, 0);
    ASSERT_FOUND(&o, QC_P_L1_COPIED_WRONG, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_snapshot_extra_too_small_v3)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 8, "1");
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SNAPSHOT_EXTRA_TOO_SMALL, 1);
    ASSERT_ONLY(&o, QC_P_SNAPSHOT_EXTRA_TOO_SMALL);
    img_free(&im);

    /* Version 2 has no such minimum. */
    p.version = 2;
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 0, "1");
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    img_free(&im);
}
END_TEST

START_TEST(test_snapshot_table_problems)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint64_t table = img_add_shared_snapshot(&im, 24, "1");
    /* More snapshots claimed than the rest of the file can hold. */
    im.hdr.nb_snapshots = 100000;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_PRESENT(&o, QC_P_TOO_MANY_SNAPSHOTS);
    ck_assert_int_eq(o.status, 2);
    /* Table offset not aligned / past the end of the file. */
    im.hdr.nb_snapshots = 1;
    im.hdr.snapshots_offset = cl_off(&im, table) + 8;
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SNAPSHOT_TABLE_UNALIGNED, 1);
    ck_assert_uint_eq(o.res.leaks, 0);
    im.hdr.snapshots_offset = cl_off(&im, 5000);
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SNAPSHOT_TABLE_PAST_EOF, 1);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_snapshot_duplicate_ids)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint64_t table = img_add_shared_snapshot(&im, 24, "1");
    /* A second entry with the same id, sharing the same snapshot L1. */
    uint8_t *t = im.buf + cl_off(&im, table);
    qc_cursor c = qc_cursor_make(t, (size_t)im.cs);
    qc_snapshot_entry e;
    ck_assert(qc_snapshot_decode(&c, &e));
    size_t second = qc_snapshot_encode(&e, t + e.entry_size, (size_t)im.cs - e.entry_size);
    ck_assert_uint_ne(second, 0);
    im.hdr.nb_snapshots = 2;
    img_write_header(&im);
    img_set_refcount(&im, table + 1, 2);
    img_set_refcount(&im, CL_L2, 3);
    for (unsigned i = 0; i < 2; i++)
        img_set_refcount(&im, CL_DATA + i, 3);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_SNAPSHOT_ID_DUPLICATE, 1);
    img_free(&im);
}
END_TEST

/* ---- header extensions and backing files --------------------------------------------- */

START_TEST(test_backing_file)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    size_t at = img_add_extension(&im, 112, QC_EXT_BACKING_FORMAT, "qcow2", 5);
    ck_assert_uint_eq(at, 128);
    memcpy(im.buf + 0x200, "base.qcow2", 10);
    im.hdr.backing_file_offset = 0x200;
    im.hdr.backing_file_size = 10;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert(o.res.header.has_backing_file);

    /* A format QEMU has no driver for: it cannot open the backing file.
     * QEMU uses the last of two extensions; with no backing file the
     * format is not used at all. */
    memcpy(im.buf + 112 + 8, "qcow9", 5);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_FORMAT_UNKNOWN, 1);
    ck_assert_int_eq(o.status, 2);
    img_add_extension(&im, at, QC_EXT_BACKING_FORMAT, "raw", 3);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_FORMAT_UNKNOWN, 0);
    memset(im.buf + 128, 0, 16);
    im.buf[0x200] = '\0'; /* QEMU reads the name as a C string: no backing file */
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_FORMAT_UNKNOWN, 0);
    memcpy(im.buf + 112 + 8, "qcow2", 5);
    im.buf[0x200] = 'b';

    /* An empty backing format is none to QEMU (it probes the backing
     * file): the same warning as no extension at all. */
    memset(im.buf + 112, 0, 16);
    img_add_extension(&im, 112, QC_EXT_BACKING_FORMAT, "", 0);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_FORMAT_MISSING, 1);
    ASSERT_ONLY(&o, QC_P_BACKING_FORMAT_MISSING);
    ck_assert_int_eq(o.status, 0);

    /* Without the backing format extension: a warning only. */
    memset(im.buf + 112, 0, 16);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_FORMAT_MISSING, 1);
    ASSERT_ONLY(&o, QC_P_BACKING_FORMAT_MISSING);
    ck_assert_int_eq(o.status, 0);

    /* A name inside the header: QEMU's extension area ends where the name
     * starts, so no extension is read (here an unknown one), and the name
     * is the header's bytes. At 64 (snapshots_offset, 0) it is empty: no
     * backing file, a warning. */
    img_add_extension(&im, 112, 0x12345678, "x", 1);
    im.hdr.backing_file_offset = 64;
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_NAME_IN_HEADER, 1);
    ASSERT_ONLY(&o, QC_P_BACKING_NAME_IN_HEADER);
    ck_assert_int_eq(o.status, 0);
    /* At 1 it reads "FI\xfb": QEMU opens a backing file of that name. */
    im.hdr.backing_file_offset = 1;
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_NAME_OVERLAPS_EXTENSIONS, 1);
    ASSERT_FOUND(&o, QC_P_BACKING_FORMAT_MISSING, 1);
    ASSERT_FOUND(&o, QC_P_EXTENSION_UNKNOWN, 0);
    ck_assert_int_eq(o.status, 2);

    /* A name running out of cluster 0. */
    im.hdr.backing_file_offset = im.cs - 4;
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BACKING_NAME_INVALID, 1);
    img_free(&im);
}
END_TEST

START_TEST(test_extensions)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    size_t at = img_add_extension(&im, 112, 0x12345678u, "abc", 3);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENSION_UNKNOWN, 1);
    ASSERT_ONLY(&o, QC_P_EXTENSION_UNKNOWN);
    ck_assert_int_eq(o.status, 0);

    /* Non-zero padding after it. */
    im.buf[112 + 8 + 3] = 0x99;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENSION_PADDING_NONZERO, 1);
    im.buf[112 + 8 + 3] = 0;

    /* The same backing format twice. */
    at = img_add_extension(&im, at, QC_EXT_BACKING_FORMAT, "raw", 3);
    at = img_add_extension(&im, at, QC_EXT_BACKING_FORMAT, "raw", 3);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENSION_DUPLICATE, 1);

    /* The end marker's length is checked like any extension's: it may
     * reach the end of cluster 0 but not go past it. */
    qc_put_be32(im.buf + at + 4, (uint32_t)(im.cs - at - 8));
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENSION_TRUNCATED, 0);
    qc_put_be32(im.buf + at + 4, (uint32_t)(im.cs - at - 7));
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENSION_TRUNCATED, 1);
    ck_assert_int_eq(o.status, 2);
    qc_put_be32(im.buf + at + 4, 0);

    /* An extension claiming more bytes than cluster 0 has left. */
    qc_put_be32(im.buf + 112 + 4, (uint32_t)im.cs);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENSION_TRUNCATED, 1);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST

START_TEST(test_feature_table_names_unknown_bit)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    uint8_t entry[48];
    memset(entry, 0, sizeof(entry));
    entry[0] = 0;
    entry[1] = 7;
    memcpy(entry + 2, "frobnicated", 11);
    img_add_extension(&im, 112, QC_EXT_FEATURE_TABLE, entry, sizeof(entry));
    im.hdr.incompatible_features |= 1ull << 7;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_UNKNOWN_INCOMPAT_FEATURE, 1);
    ck_assert_msg(strstr(o.rec.first_message[QC_P_UNKNOWN_INCOMPAT_FEATURE], "frobnicated"),
                  "%s", o.rec.first_message[QC_P_UNKNOWN_INCOMPAT_FEATURE]);
    ck_assert_int_eq(o.status, 1);
    img_free(&im);
}
END_TEST

START_TEST(test_dirty_and_corrupt_bits)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.incompatible_features |= QC_INCOMPAT_DIRTY | QC_INCOMPAT_CORRUPT;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DIRTY_BIT_SET, 1);
    ASSERT_FOUND(&o, QC_P_CORRUPT_BIT_SET, 1);
    ASSERT_ONLY(&o, QC_P_DIRTY_BIT_SET, QC_P_CORRUPT_BIT_SET);
    ck_assert(o.res.header.dirty && o.res.header.corrupt);
    ck_assert_int_eq(o.status, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_compression_type)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.compression_type = 1; /* zstd without incompatible bit 3 */
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSION_BIT_MISMATCH, 1);
    ASSERT_ONLY(&o, QC_P_COMPRESSION_BIT_MISMATCH);
    im.hdr.incompatible_features |= QC_INCOMPAT_COMPRESSION;
    img_write_header(&im);
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert_uint_eq(o.res.header.compression_type, 1);
    im.hdr.compression_type = 2;
    img_write_header(&im);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSION_TYPE_INVALID, 1);
    img_free(&im);
}
END_TEST

/* A LUKS-encrypted image as QEMU lays it out: crypt_method 2, the
 * encryption extension pointing to a LUKS header (aes-cbc-plain64 with
 * 16-byte keys: 128 sectors of key material per slot, slot 0 enabled) in
 * clusters appended for it. Returns the header's offset. */
static uint64_t img_add_luks(img *im)
{
    const uint64_t sectors = 8 + 8 * 128; /* header, then the 8 key slots */
    uint64_t first = img_append(im, (unsigned)qc_div_round_up(sectors * 512, im->cs));
    uint8_t *h = im->buf + cl_off(im, first);
    memcpy(h, "LUKS\xba\xbe", 6);
    qc_put_be16(h + QC_LUKS_OFF_VERSION, 1);
    memcpy(h + QC_LUKS_OFF_CIPHER_NAME, "aes", 3);
    memcpy(h + QC_LUKS_OFF_CIPHER_MODE, "cbc-plain64", 11);
    memcpy(h + QC_LUKS_OFF_HASH_SPEC, "sha256", 6);
    qc_put_be32(h + QC_LUKS_OFF_PAYLOAD, (uint32_t)sectors);
    qc_put_be32(h + QC_LUKS_OFF_KEY_BYTES, 16);
    qc_put_be32(h + QC_LUKS_OFF_ITERATIONS, 1000);
    for (unsigned i = 0; i < QC_LUKS_KEY_SLOTS; i++) {
        uint8_t *slot = h + QC_LUKS_OFF_SLOTS + i * QC_LUKS_SLOT_SIZE;
        qc_put_be32(slot, i == 0 ? QC_LUKS_SLOT_ENABLED : QC_LUKS_SLOT_DISABLED);
        qc_put_be32(slot + 4, i == 0 ? 1000 : 0);
        qc_put_be32(slot + 40, 8 + i * 128);
        qc_put_be32(slot + 44, 4000);
    }
    for (uint64_t c = first; c < im->len / im->cs; c++)
        img_set_refcount(im, c, 1);
    uint8_t ext[QC_CRYPTO_EXT_SIZE];
    qc_put_be64(ext, cl_off(im, first));
    qc_put_be64(ext + 8, sectors * 512);
    img_add_extension(im, 112, QC_EXT_CRYPTO, ext, sizeof(ext));
    im->hdr.crypt_method = 2;
    img_write_header(im);
    return cl_off(im, first);
}

START_TEST(test_luks_header)
{
    /* One field (offset in the header, big-endian value of `size` bytes,
     * or a string) changed at a time, and whether QEMU accepts the result. */
    static const struct {
        unsigned offset, size;
        uint32_t value;
        const char *text;
        bool accepted;
        const char *qemu_says;
    } cases[] = {
        {0, 0, 0, NULL, true, NULL}, /* as built */
        {0, 0, 0, "LUKX", false, "Volume is not in LUKS format"},
        {QC_LUKS_OFF_VERSION, 2, 2, NULL, false, "LUKS version 2 is not supported"},
        {QC_LUKS_OFF_CIPHER_NAME, 0, 0, "aes567890123456789012345678901234", false,
         "LUKS header cipher name is not NUL terminated"},
        {QC_LUKS_OFF_PAYLOAD, 4, 7, NULL, false, "LUKS payload is overlapping with the header"},
        {QC_LUKS_OFF_ITERATIONS, 4, 0, NULL, false, "LUKS key iteration count is zero"},
        {QC_LUKS_OFF_SLOTS + 3 * 48 + 44, 4, 3999, NULL, false,
         "Keyslot 3 is corrupted (stripes 3999 != 4000)"},
        {QC_LUKS_OFF_SLOTS + 2 * 48, 4, 1, NULL, false,
         "Keyslot 2 state (active/disable) is corrupted"},
        {QC_LUKS_OFF_SLOTS + 4, 4, 0, NULL, false, "Keyslot 0 iteration count is zero"},
        {QC_LUKS_OFF_SLOTS + 1 * 48 + 4, 4, 0, NULL, true, NULL}, /* disabled slot */
        {QC_LUKS_OFF_SLOTS + 40, 4, 7, NULL, false, "Keyslot 0 is overlapping with the LUKS header"},
        {QC_LUKS_OFF_SLOTS + 7 * 48 + 40, 4, 8 + 7 * 128 + 1, NULL, false,
         "Keyslot 7 is overlapping with the encrypted payload"},
        {QC_LUKS_OFF_SLOTS + 5 * 48 + 40, 4, 8 + 4 * 128 + 127, NULL, false,
         "Keyslots 4 and 5 are overlapping in the header"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc", false, "Unexpected cipher mode string format 'cbc'"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-plain64:sha3", false,
         "Hash algorithm 'sha3' not supported"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cfb-plain64", false, "Cipher mode 'cfb' not supported"},
        {QC_LUKS_OFF_CIPHER_NAME, 0, 0, "des", false,
         "Algorithm 'des' with key size 16 bytes not supported"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "xts-plain64", false,
         "Algorithm 'aes' with key size 8 bytes not supported"}, /* XTS halves the key */
        {QC_LUKS_OFF_CIPHER_NAME, 0, 0, "cast5", true, NULL},
        {QC_LUKS_OFF_HASH_SPEC, 0, 0, "SHA256", false, "Hash algorithm 'SHA256' not supported"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-plain65", false, "IV generator 'plain65' not supported"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-essiv", false, "Missing IV generator hash specification"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-essiv:sha256", true, NULL},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-essiv:sha1", false,
         "No AES cipher with key size 20 available"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        uint64_t luks = img_add_luks(&im); /* grows im.buf */
        uint8_t *h = im.buf + luks;
        if (cases[k].text) {
            memset(h + cases[k].offset, 0, cases[k].offset ? QC_LUKS_NAME_SIZE : 4);
            memcpy(h + cases[k].offset, cases[k].text, strlen(cases[k].text));
        } else if (cases[k].size == 2) {
            qc_put_be16(h + cases[k].offset, (uint16_t)cases[k].value);
        } else if (cases[k].size == 4) {
            qc_put_be32(h + cases[k].offset, cases[k].value);
        }
        outcome o;
        run_check(&im, &o);
        ck_assert_msg(cases[k].accepted == (o.res.findings == 0), "case %zu:%s", k, describe(&o));
        if (!cases[k].accepted) {
            ASSERT_FOUND(&o, QC_P_LUKS_HEADER_INVALID, 1);
            ASSERT_ONLY(&o, QC_P_LUKS_HEADER_INVALID);
            ck_assert_int_eq(o.status, 2);
            ck_assert_msg(strstr(o.rec.first_message[QC_P_LUKS_HEADER_INVALID], cases[k].qemu_says),
                          "case %zu: %s", k, o.rec.first_message[QC_P_LUKS_HEADER_INVALID]);
        }
        img_free(&im);
    }
}
END_TEST

START_TEST(test_luks_header_length)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_luks(&im);
    /* The extension's length must cover the 592 bytes QEMU always reads,
     * and the key material of the enabled slot (0: 64000 bytes from
     * sector 8), which it reads when opening with the key; disabled slots'
     * material is never read. */
    static const struct {
        uint64_t length;
        bool accepted;
    } lengths[] = {
        {QC_LUKS_HEADER_SIZE - 1, false},
        {4096 + 64000 - 1, false},
        {4096 + 64000, true},
    };
    for (size_t k = 0; k < sizeof(lengths) / sizeof(lengths[0]); k++) {
        qc_put_be64(im.buf + 112 + 8 + 8, lengths[k].length);
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_LUKS_HEADER_INVALID, lengths[k].accepted ? 0 : 1);
        if (lengths[k].accepted) {
            /* Nothing points to the clusters past that length now. */
            ck_assert_int_eq(o.status, 3);
        } else {
            /* They are kept as orphans, not leaks: freeing key material
             * would lose the whole disk. */
            ck_assert_int_eq(o.status, 2);
            ck_assert_uint_eq(o.res.leaks, 0);
        }
    }
    img_free(&im);
}
END_TEST

START_TEST(test_extended_l2_small_clusters)
{
    img im;
    img_params p = default_params();
    p.cluster_bits = 12;
    p.extended_l2 = true;
    img_build(&im, &p);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_EXTENDED_L2_CLUSTER_TOO_SMALL, 1);
    ck_assert_int_eq(o.status, 2);
    img_free(&im);
}
END_TEST


/* ---- persistent bitmaps --------------------------------------------------------------- */

typedef struct bitmap_layout {
    uint64_t dir, table, data;
    size_t ext_at; /* offset of the bitmaps extension in cluster 0 */
} bitmap_layout;

/* One clean persistent bitmap: directory, one-entry table, one data cluster. */
static bitmap_layout img_add_bitmap(img *im)
{
    bitmap_layout b;
    b.dir = img_append(im, 3);
    b.table = b.dir + 1;
    b.data = b.dir + 2;
    uint8_t *d = im->buf + cl_off(im, b.dir);
    qc_put_be64(d, cl_off(im, b.table));
    qc_put_be32(d + 8, 1);
    qc_put_be32(d + 12, QC_BITMAP_FLAG_AUTO);
    d[16] = 1;  /* dirty tracking */
    d[17] = 16; /* 64 KiB granularity: 512 MiB need 8192 bits = 1 cluster */
    qc_put_be16(d + 18, 4);
    qc_put_be32(d + 20, 0);
    memcpy(d + 24, "bmp0", 4);
    qc_put_be64(im->buf + cl_off(im, b.table), cl_off(im, b.data));
    uint8_t ext[QC_BITMAPS_EXT_SIZE];
    qc_put_be32(ext, 1);
    qc_put_be32(ext + 4, 0);
    qc_put_be64(ext + 8, 32);
    qc_put_be64(ext + 16, cl_off(im, b.dir));
    b.ext_at = 112;
    img_add_extension(im, b.ext_at, QC_EXT_BITMAPS, ext, sizeof(ext));
    im->hdr.autoclear_features |= QC_AUTOCLEAR_BITMAPS;
    img_write_header(im);
    img_set_refcount(im, b.dir, 1);
    img_set_refcount(im, b.table, 1);
    img_set_refcount(im, b.data, 1);
    return b;
}

START_TEST(test_bitmap_clean)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_bitmap(&im);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert(o.res.header.has_bitmaps);
    ck_assert_uint_eq(o.res.image_end_offset, im.len);
    img_free(&im);
}
END_TEST

START_TEST(test_bitmap_table_entry_invalid)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    bitmap_layout b = img_add_bitmap(&im);
    qc_put_be64(im.buf + cl_off(&im, b.table), cl_off(&im, b.data) | 0x2);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BITMAP_TABLE_ENTRY_INVALID, 1);
    /* The data cluster it most likely meant is not called leaked. */
    ASSERT_FOUND(&o, QC_P_REFCOUNT_ORPHAN, 1);
    ASSERT_ONLY(&o, QC_P_BITMAP_TABLE_ENTRY_INVALID, QC_P_REFCOUNT_ORPHAN);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

START_TEST(test_bitmap_all_ones_entry_leaks_old_cluster)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    bitmap_layout b = img_add_bitmap(&im);
    qc_put_be64(im.buf + cl_off(&im, b.table), QC_BITMAP_TABLE_ALL_ONES);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 1);
    ASSERT_ONLY(&o, QC_P_REFCOUNT_LEAK);
    ck_assert_int_eq(o.status, 3);
    img_free(&im);
}
END_TEST

START_TEST(test_bitmaps_without_autoclear)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_bitmap(&im);
    im.hdr.autoclear_features &= ~QC_AUTOCLEAR_BITMAPS;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BITMAPS_WITHOUT_AUTOCLEAR, 1);
    /* QEMU drops the extension: directory, table and data are leaked. */
    ASSERT_FOUND(&o, QC_P_REFCOUNT_LEAK, 3);
    ASSERT_ONLY(&o, QC_P_BITMAPS_WITHOUT_AUTOCLEAR, QC_P_REFCOUNT_LEAK);
    ck_assert_int_eq(o.status, 3);
    img_free(&im);
}
END_TEST

START_TEST(test_bitmap_directory_problems)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    bitmap_layout b = img_add_bitmap(&im);
    /* Table too small for the disk. */
    qc_put_be32(im.buf + cl_off(&im, b.dir) + 8, 0);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BITMAP_ENTRY_INVALID, 1);
    ck_assert_uint_eq(o.res.leaks, 0);
    qc_put_be32(im.buf + cl_off(&im, b.dir) + 8, 1);
    /* The extension announces two bitmaps. */
    qc_put_be32(im.buf + b.ext_at + 8, 2);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BITMAP_DIRECTORY_INVALID, 1);
    /* A bad extension (reserved field). */
    qc_put_be32(im.buf + b.ext_at + 8, 1);
    qc_put_be32(im.buf + b.ext_at + 12, 1);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_BITMAPS_EXTENSION_INVALID, 1);
    ck_assert_uint_eq(o.res.leaks, 0);
    img_free(&im);
}
END_TEST

/* Entries the specification allows but QEMU refuses to load: counted,
 * since QEMU cannot open the image; in-use bitmaps are not loaded, so
 * their table size does not matter to QEMU. */
START_TEST(test_bitmap_qemu_refusals)
{
    static const struct {
        unsigned granularity_bits;
        uint32_t flags, table_size;
        uint64_t disk_size; /* 0: as built (512 MiB, one table entry needed) */
        bool refused;
    } cases[] = {
        {16, QC_BITMAP_FLAG_AUTO, 1, 0, false},
        {8, QC_BITMAP_FLAG_AUTO, 4, 0, true}, /* 512 MiB in 256-byte bits: 256 KiB */
        {9, QC_BITMAP_FLAG_AUTO, 2, 0, false},
        {32, QC_BITMAP_FLAG_AUTO, 1, 0, true},
        {16, QC_BITMAP_FLAG_AUTO | QC_BITMAP_FLAG_EXTRA_DATA_COMPATIBLE, 1, 0, true},
        {16, QC_BITMAP_FLAG_AUTO, 2, 0, true},                         /* one entry too many */
        {16, QC_BITMAP_FLAG_AUTO | QC_BITMAP_FLAG_IN_USE, 2, 0, false}, /* not loaded */
        {16, QC_BITMAP_FLAG_AUTO, 1, 511, true}, /* QEMU's disk is 0 sectors: no table */
        {16, QC_BITMAP_FLAG_AUTO, 1, 512, false},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        img im;
        img_params p = default_params();
        img_build(&im, &p);
        bitmap_layout b = img_add_bitmap(&im);
        uint8_t *d = im.buf + cl_off(&im, b.dir);
        qc_put_be32(d + 8, cases[k].table_size); /* entries past the first read as zero */
        qc_put_be32(d + 12, cases[k].flags);
        d[17] = (uint8_t)cases[k].granularity_bits;
        if (cases[k].disk_size) {
            im.hdr.size = cases[k].disk_size;
            img_write_header(&im);
        }
        outcome o;
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_BITMAP_UNSUPPORTED_BY_QEMU, cases[k].refused ? 1 : 0);
        ASSERT_ONLY(&o, QC_P_BITMAP_UNSUPPORTED_BY_QEMU, QC_P_BITMAP_IN_USE,
                    QC_P_VIRTUAL_SIZE_UNALIGNED);
        ck_assert_int_eq(o.status, cases[k].refused ? 2 : 0);
        img_free(&im);
    }
}
END_TEST

/* ---- external data file ---------------------------------------------------------------- */

static void img_make_data_file(img *im)
{
    im->hdr.incompatible_features |= QC_INCOMPAT_DATA_FILE;
    img_write_header(im);
    img_add_extension(im, 112, QC_EXT_DATA_FILE, "data.raw", 8);
    /* Host offset == guest offset, COPIED on every allocated entry; offset
     * 0 is a real cluster here. */
    img_set_l2(im, 0, QC_OFLAG_COPIED);
    img_set_l2(im, 1, im->cs | QC_OFLAG_COPIED);
    img_set_l2(im, 100, (100 * im->cs) | QC_OFLAG_COPIED);
}

START_TEST(test_data_file_clean)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 0;
    img_build(&im, &p);
    img_make_data_file(&im);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    ck_assert(o.res.header.external_data_file);
    ck_assert_uint_eq(o.res.allocated_clusters, 3);
    img_free(&im);
}
END_TEST

START_TEST(test_data_file_problems)
{
    img im;
    img_params p = default_params();
    p.data_clusters = 0;
    img_build(&im, &p);
    img_make_data_file(&im);
    img_set_l2(&im, 1, (2 * im.cs) | QC_OFLAG_COPIED);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DATA_FILE_OFFSET_MISMATCH, 1);
    ASSERT_ONLY(&o, QC_P_DATA_FILE_OFFSET_MISMATCH);

    img_set_l2(&im, 1, im.cs);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DATA_FILE_COPIED_MISSING, 1);
    ASSERT_ONLY(&o, QC_P_DATA_FILE_COPIED_MISSING);
    ck_assert_int_eq(o.status, 0);

    img_set_l2(&im, 1, qc_compressed_encode(&im.g, im.cs, 0));
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_COMPRESSED_WITH_DATA_FILE, 1);
    ck_assert_int_eq(o.status, 2);

    /* A name QEMU reads as empty (it starts with a NUL byte): as good as
     * none. */
    img_set_l2(&im, 1, im.cs | QC_OFLAG_COPIED);
    im.buf[112 + 8] = '\0';
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DATA_FILE_NAME_MISSING, 1);
    ASSERT_ONLY(&o, QC_P_DATA_FILE_NAME_MISSING);

    /* No name for the data file. */
    memset(im.buf + 112, 0, 16);
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_DATA_FILE_NAME_MISSING, 1);
    ASSERT_ONLY(&o, QC_P_DATA_FILE_NAME_MISSING);
    img_free(&im);
}
END_TEST

START_TEST(test_raw_data_file_bit_without_data_file)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    im.hdr.autoclear_features |= QC_AUTOCLEAR_DATA_FILE_RAW;
    img_write_header(&im);
    outcome o;
    run_check(&im, &o);
    ASSERT_FOUND(&o, QC_P_RAW_DATA_FILE_INVALID, 1);
    ASSERT_ONLY(&o, QC_P_RAW_DATA_FILE_INVALID);
    img_free(&im);
}
END_TEST


/* The same with a snapshot and a persistent bitmap, and random multi-byte
 * damage: every structure the passes decode gets garbage. */
static uint64_t fuzz_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

START_TEST(test_rich_image_corruption_never_crashes)
{
    img im;
    img_params p = default_params();
    p.cluster_bits = 9;
    p.data_clusters = 3;
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 24, "1");
    img_add_bitmap(&im);
    outcome o;
    run_check(&im, &o);
    ck_assert_msg(o.res.findings == 0, "%s", describe(&o));
    /* Metadata clusters: 0-4, then snapshot table, snapshot L1, bitmap
     * directory and table (data clusters 5-7 and the bitmap data are not
     * interpreted). */
    const uint64_t meta[] = {0, 1, 2, 3, 4, 8, 9, 10, 11};
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
            case 0:
                copy[off] = (uint8_t)(r >> 48);
                break;
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
    img_free(&im);
}
END_TEST

/* ---- repair on memory images ------------------------------------------- */

#define REPAIR_ROUNDS 600

/* Plan a repair of buf and apply it to a growable copy with an undo log
 * (through the crash io when crash_after is not UINT64_MAX), then check it. */
static void repair_buffer(const uint8_t *buf, size_t len, qc_repair_mode mode, uint64_t crash_after,
                          bool drop_unflushed, fz_repaired *out)
{
    ck_assert_int_eq(fz_repair_run(buf, len, NULL, mode, crash_after, drop_unflushed, out), 0);
}

START_TEST(test_repair_leak_and_rollback)
{
    img im;
    img_params p = default_params();
    p.spare_clusters = 2;
    img_build(&im, &p);
    uint64_t spare = img_clusters(&im) - 1;
    img_set_refcount(&im, spare, 1);       /* leaked */
    img_set_refcount(&im, spare - 1, 0);   /* the other spare stays free */
    fz_repaired r;
    repair_buffer(im.buf, im.len, QC_REPAIR_LEAKS, UINT64_MAX, false, &r);
    ck_assert_int_eq(r.plan_ret, 0);
    ck_assert_uint_eq(r.before.leaks, 1);
    ck_assert_int_eq(r.apply_ret, 0);
    ck_assert_uint_eq(r.after.leaks, 0);
    ck_assert_uint_eq(r.after.corruptions, 0);
    ck_assert_uint_eq(r.predicted.leaks, r.after.leaks);
    /* Only the leaked cluster's refcount changed; the corrupt bit, set as a
     * fence while writing, is clear again. */
    img repaired_img = im;
    repaired_img.buf = r.image;
    ck_assert_uint_eq(img_get_refcount(&repaired_img, spare), 0);
    ck_assert_uint_eq(qc_be64(r.image + 72) & QC_INCOMPAT_CORRUPT, 0);
    /* Rollback restores every byte. */
    qc_io rw, undo;
    ck_assert_int_eq(qc_io_open_memory_rw(&rw, &r.image, &r.len), 0);
    qc_io_open_memory(&undo, r.undo, r.undo_len);
    char why[256];
    ck_assert_int_eq(qc_rollback(&rw, &undo, why, sizeof(why)), 0);
    qc_io_close(&undo);
    qc_io_close(&rw);
    ck_assert_uint_eq(r.len, im.len);
    ck_assert_mem_eq(r.image, im.buf, im.len);
    /* A log whose saved bytes were changed does not verify. */
    r.undo[r.undo_len - 9] ^= 1;
    ck_assert_int_eq(qc_io_open_memory_rw(&rw, &r.image, &r.len), 0);
    qc_io_open_memory(&undo, r.undo, r.undo_len);
    ck_assert_int_eq(qc_rollback(&rw, &undo, why, sizeof(why)), -EINVAL);
    qc_io_close(&undo);
    qc_io_close(&rw);
    ck_assert_mem_eq(r.image, im.buf, im.len);
    fz_repaired_free(&r);
    img_free(&im);
}
END_TEST

START_TEST(test_repair_refuses_unknown_incompatible)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    qc_put_be64(im.buf + 72, 1ull << 20);
    qc_io ro;
    qc_io_open_memory(&ro, im.buf, im.len);
    qc_result before, after;
    qc_repair_plan *plan = NULL;
    ck_assert_int_eq(qc_repair_plan_build(&ro, NULL, QC_REPAIR_ALL, &before, &after, &plan), -EPERM);
    ck_assert_ptr_nonnull(plan);
    ck_assert_ptr_nonnull(strstr(qc_repair_plan_refusal(plan), "incompatible"));
    uint8_t *buf = malloc(im.len);
    size_t len = im.len;
    memcpy(buf, im.buf, im.len);
    qc_io rw;
    ck_assert_int_eq(qc_io_open_memory_rw(&rw, &buf, &len), 0);
    ck_assert_int_eq(qc_repair_apply(plan, &rw, NULL), -EINVAL);
    qc_io_close(&rw);
    ck_assert_mem_eq(buf, im.buf, im.len);
    free(buf);
    qc_repair_plan_free(plan);
    qc_io_close(&ro);
    img_free(&im);
}
END_TEST

/* Plan a repair of im and return its notes joined by newlines (the caller
 * frees them), checking that the plan was made. */
static char *plan_notes(const img *im, qc_repair_mode mode, qc_result *after)
{
    qc_io ro;
    qc_io_open_memory(&ro, im->buf, im->len);
    qc_repair_plan *plan = NULL;
    qc_result before;
    int ret = qc_repair_plan_build(&ro, NULL, mode, &before, after, &plan);
    const char *const *notes;
    size_t n = plan ? qc_repair_plan_notes(plan, &notes) : 0;
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(notes[i]) + 1;
    char *joined = calloc(len, 1);
    ck_assert_ptr_nonnull(joined);
    for (size_t i = 0; i < n; i++)
        strcat(strcat(joined, notes[i]), "\n");
    const char *refusal = plan ? qc_repair_plan_refusal(plan) : NULL;
    if (ret != 0) {
        ck_assert_int_eq(ret, -EPERM);
        ck_assert_ptr_nonnull(refusal);
        joined = realloc(joined, len + strlen(refusal) + 16);
        ck_assert_ptr_nonnull(joined);
        strcat(strcat(joined, "refused: "), refusal);
    }
    qc_repair_plan_free(plan);
    qc_io_close(&ro);
    return joined;
}

/* Found by fuzzing: -r leaks must not lower a leaked data cluster that the
 * active L2 table maps with COPIED clear below 2 while it cannot fix COPIED
 * (another corruption remains: qemu-img then leaves COPIED wrong); -r all
 * fixes both. With no other corruption, -r leaks lowers the refcount and
 * fixes COPIED, as qemu-img check -r leaks does. */
START_TEST(test_repair_leaks_keeps_copied_clear_shared)
{
    img im;
    img_build(&im, &(img_params){9, 4, 3, false, 2, 0});
    img_set_l2(&im, 0, img_get_l2(&im, 0) & ~QC_OFLAG_COPIED);
    img_set_refcount(&im, CL_DATA, 2);
    qc_result after;
    char *notes = plan_notes(&im, QC_REPAIR_LEAKS, &after);
    ck_assert_msg(!strstr(notes, "kept at refcount 2"), "notes: %s", notes);
    ck_assert_uint_eq(after.corruptions, 0);
    ck_assert_uint_eq(after.leaks, 0);
    free(notes);
    /* Another corruption: the floor holds and COPIED is left alone. */
    img_set_l2(&im, 1, img_get_l2(&im, 1) | 1ull << 57);
    notes = plan_notes(&im, QC_REPAIR_LEAKS, &after);
    ck_assert_msg(strstr(notes, "1 leaked cluster kept at refcount 2"), "notes: %s", notes);
    ck_assert_uint_eq(after.corruptions, 1);
    ck_assert_uint_eq(after.per_problem[QC_P_L2_ENTRY_RESERVED_BITS], 1);
    ck_assert_uint_eq(after.leaks, 1);
    free(notes);
    fz_repaired r;
    repair_buffer(im.buf, im.len, QC_REPAIR_ALL, UINT64_MAX, false, &r);
    ck_assert_int_eq(r.apply_ret, 0);
    ck_assert_uint_eq(r.after.corruptions + r.after.leaks, 0);
    fz_repaired_free(&r);
    img_free(&im);
}
END_TEST

/* The plan of a repair of im in `mode` and what it unlinks (the caller
 * frees the plan). */
static qc_repair_plan *plan_of(const img *im, qc_repair_mode mode, const qc_unlinked **items,
                               size_t *n)
{
    qc_io ro;
    qc_io_open_memory(&ro, im->buf, im->len);
    qc_repair_plan *plan = NULL;
    qc_result before, after;
    ck_assert_int_eq(qc_repair_plan_build(&ro, NULL, mode, &before, &after, &plan), 0);
    qc_io_close(&ro);
    *n = qc_repair_plan_unlinked(plan, items);
    return plan;
}

/* What -r all unlinks, frees and recovers is listed: an unaligned L2 entry
 * into an allocated cluster nothing else references is re-pointed there
 * (recovered); one past the end of the file is dropped, and the cluster
 * only it could own (an orphan while it was there) is freed in the same
 * run, as a leak is with -r leaks. */
START_TEST(test_repair_lists_unlinked)
{
    img im;
    img_build(&im, &(img_params){12, 4, 3, false, 2, 0});
    uint64_t data0 = cl_off(&im, CL_DATA), data1 = cl_off(&im, CL_DATA + 1);
    img_set_l2(&im, 0, (data0 + 512) | QC_OFLAG_COPIED);
    img_set_l2(&im, 1, (cl_off(&im, img_clusters(&im) + 8)) | QC_OFLAG_COPIED);
    const qc_unlinked *u;
    size_t n;
    qc_repair_plan *plan = plan_of(&im, QC_REPAIR_ALL, &u, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(u[0].kind, QC_UNLINK_RECOVERED);
    ck_assert_int_eq(u[0].problem, QC_P_L2_ENTRY_UNALIGNED);
    ck_assert_uint_eq(u[0].host_offset, data0);
    ck_assert_uint_eq(u[0].target, data0 + 512);
    ck_assert_uint_eq(u[0].new_target, data0);
    ck_assert_uint_eq(u[0].snapshot, QC_UNLINKED_ACTIVE);
    ck_assert_uint_eq(u[0].guest_offset, 0);
    ck_assert_uint_eq(u[1].kind, QC_UNLINK_DROPPED);
    ck_assert_int_eq(u[1].problem, QC_P_L2_ENTRY_PAST_EOF);
    ck_assert_uint_eq(u[1].host_offset, QC_NO_OFFSET);
    ck_assert_uint_eq(u[1].guest_offset, im.cs);
    ck_assert_uint_eq(u[2].kind, QC_UNLINK_FREED);
    ck_assert_int_eq(u[2].problem, QC_P_REFCOUNT_ORPHAN);
    ck_assert_uint_eq(u[2].host_offset, data1);
    ck_assert_uint_eq(u[2].length, im.cs);
    qc_repair_plan_free(plan);
    /* -r leaks drops nothing and keeps the orphan. */
    plan = plan_of(&im, QC_REPAIR_LEAKS, &u, &n);
    ck_assert_uint_eq(n, 0);
    qc_repair_plan_free(plan);
    fz_repaired r;
    repair_buffer(im.buf, im.len, QC_REPAIR_ALL, UINT64_MAX, false, &r);
    ck_assert_int_eq(r.apply_ret, 0);
    ck_assert_uint_eq(r.after.corruptions + r.after.leaks + r.after.warnings, 0);
    fz_repaired_free(&r);
    img_free(&im);
}
END_TEST

/* Found by fuzzing: with the L1 table at offset 0, "L1 entries" are the
 * header's bytes; every repair writes the header, so none is made. */
START_TEST(test_repair_refuses_shared_header)
{
    img im;
    img_build(&im, &(img_params){9, 4, 3, false, 2, 0});
    im.hdr.l1_table_offset = 0;
    img_write_header(&im);
    qc_result after;
    char *notes = plan_notes(&im, QC_REPAIR_ALL, &after);
    ck_assert_msg(strstr(notes, "refused: the header's cluster is also claimed by the active L1 "
                                "table"),
                  "notes: %s", notes);
    free(notes);
    img_free(&im);
}
END_TEST

/* Random damage to a rich image, then -r all or -r leaks: the repair must
 * never crash, its prediction must be what the image really shows after,
 * it must never add corruptions, a second -r all must find nothing more
 * to fix, and an interrupted repair followed by a full one must end with
 * the same corruptions as an uninterrupted one. */
START_TEST(test_repair_random_damage)
{
    img im;
    img_params p = default_params();
    p.cluster_bits = 9;
    p.data_clusters = 3;
    img_build(&im, &p);
    img_add_shared_snapshot(&im, 24, "1");
    img_add_bitmap(&im);
    const uint64_t meta[] = {0, 1, 2, 3, 4, 8, 9, 10, 11};
    uint8_t *copy = malloc(im.len);
    ck_assert_ptr_nonnull(copy);
    uint64_t state = 0x2545f4914f6cdd1dull + (uint64_t)_i;
    unsigned repaired_rounds = 0, crashed_rounds = 0;
    for (int round = 0; round < REPAIR_ROUNDS; round++) {
        memcpy(copy, im.buf, im.len);
        unsigned edits = 1 + (unsigned)(fuzz_next(&state) % 3);
        for (unsigned e = 0; e < edits; e++) {
            uint64_t r = fuzz_next(&state);
            uint64_t cl = meta[r % (sizeof(meta) / sizeof(meta[0]))];
            size_t off = (size_t)(cl_off(&im, cl) + ((r >> 8) % im.cs));
            if ((r >> 40) % 2)
                copy[off] = (uint8_t)(r >> 48);
            else
                qc_put_be64(copy + (off & ~(size_t)7), (r >> 48) % (im.len + 4096));
        }
        qc_repair_mode mode = round % 3 ? QC_REPAIR_ALL : QC_REPAIR_LEAKS;
        fz_verdict v;
        fz_repair_oracle(copy, im.len, NULL, mode, fuzz_next(&state), &v);
        ck_assert_msg(!v.failure[0], "round %d (-r %s): %s", round,
                      mode == QC_REPAIR_ALL ? "all" : "leaks", v.failure);
        repaired_rounds += v.writes > 0;
        crashed_rounds += v.crash_tested;
    }
    /* The damage must have given the repair something to do. */
    ck_assert_uint_gt(repaired_rounds, REPAIR_ROUNDS / 10);
    ck_assert_uint_gt(crashed_rounds, REPAIR_ROUNDS / 20);
    free(copy);
    img_free(&im);
}
END_TEST

Suite *unit_suite(void)
{
    Suite *s = suite_create("check_memory");

    TCase *tc = tcase_create("clean");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_clean_default);
    tcase_add_test(tc, test_clean_v2);
    tcase_add_loop_test(tc, test_clean_cluster_bits, 9, 22);
    tcase_add_loop_test(tc, test_clean_extended_l2, 14, 22);
    tcase_add_test(tc, test_clean_empty_l2);
    tcase_add_test(tc, test_trailing_space_is_info);
    tcase_add_test(tc, test_fragmentation_counted);
    suite_add_tcase(s, tc);

    tc = tcase_create("refcounts");
    tcase_add_loop_test(tc, test_width_clean, 0, 7);
    tcase_add_loop_test(tc, test_width_leaked_spare_cluster, 0, 7);
    tcase_add_loop_test(tc, test_width_bumped_refcount, 1, 7);
    tcase_add_loop_test(tc, test_width_high_bits_read, 1, 7);
    tcase_add_loop_test(tc, test_width_zeroed_refcount, 0, 7);
    tcase_add_loop_test(tc, test_width_zeroed_metadata_refcounts, 0, 7);
    tcase_add_loop_test(tc, test_width_overflow, 0, 4);
    tcase_add_loop_test(tc, test_width_shared_cluster_ok, 1, 7);
    tcase_add_test(tc, test_refcount_too_low);
    tcase_add_test(tc, test_one_bit_cluster_referenced_twice);
    tcase_add_test(tc, test_refblock_missing_entry);
    tcase_add_test(tc, test_reftable_problems);
    suite_add_tcase(s, tc);

    tc = tcase_create("mapping");
    tcase_add_test(tc, test_l2_entry_past_eof);
    tcase_add_test(tc, test_l2_entry_unaligned);
    tcase_add_test(tc, test_l2_unaligned_replacing_data);
    tcase_add_test(tc, test_l1_entry_past_eof);
    tcase_add_test(tc, test_l1_entry_unaligned);
    tcase_add_test(tc, test_l1_reserved_bits);
    tcase_add_test(tc, test_l1_zero_offset_flags);
    tcase_add_test(tc, test_l2_reserved_bits);
    tcase_add_test(tc, test_zero_flag_v2);
    tcase_add_test(tc, test_zero_flag_v3_is_valid);
    tcase_add_test(tc, test_zero_flag_extended_l2);
    tcase_add_test(tc, test_subcluster_bitmaps);
    tcase_add_test(tc, test_zero_offset_copied);
    tcase_add_test(tc, test_l2_copied_clear);
    tcase_add_test(tc, test_l2_copied_set_on_shared);
    tcase_add_test(tc, test_l1_copied_wrong);
    tcase_add_test(tc, test_many_findings_capped);
    suite_add_tcase(s, tc);

    tc = tcase_create("overlap");
    tcase_add_test(tc, test_data_overlaps_refblock);
    tcase_add_test(tc, test_data_overlaps_each_metadata_cluster);
    tcase_add_test(tc, test_l1_entry_on_refblock);
    tcase_add_test(tc, test_l1_table_on_reftable);
    suite_add_tcase(s, tc);

    tc = tcase_create("header");
    tcase_add_test(tc, test_unknown_incompat_feature);
    tcase_add_test(tc, test_unknown_compat_and_autoclear);
    tcase_add_test(tc, test_other_formats);
    tcase_add_test(tc, test_version_unsupported);
    tcase_add_test(tc, test_cluster_bits_invalid);
    tcase_add_test(tc, test_header_length_invalid);
    tcase_add_test(tc, test_header_length_104_and_unaligned);
    tcase_add_test(tc, test_refcount_order_invalid);
    tcase_add_test(tc, test_huge_l1_size);
    tcase_add_test(tc, test_l1_too_small);
    tcase_add_test(tc, test_huge_virtual_size);
    tcase_add_test(tc, test_empty_table_offsets);
    suite_add_tcase(s, tc);

    tc = tcase_create("compressed");
    tcase_add_test(tc, test_compressed_clean);
    tcase_add_test(tc, test_compressed_spanning_two_clusters);
    tcase_add_test(tc, test_compressed_copied);
    tcase_add_test(tc, test_compressed_past_eof);
    tcase_add_test(tc, test_compressed_high_offset_bits);
    tcase_add_test(tc, test_compressed_on_metadata);
    tcase_add_test(tc, test_compressed_extended_l2_bitmap);
    suite_add_tcase(s, tc);

    tc = tcase_create("tables");
    tcase_add_test(tc, test_second_l2_table);
    tcase_add_test(tc, test_l2_shared_by_two_l1_entries);
    tcase_add_test(tc, test_second_refblock);
    tcase_add_test(tc, test_refcount_past_eof);
    suite_add_tcase(s, tc);

    tc = tcase_create("snapshots");
    tcase_add_test(tc, test_snapshot_shared_clean);
    tcase_add_test(tc, test_snapshot_copied_flags);
    tcase_add_test(tc, test_snapshot_refcounts_too_low);
    tcase_add_test(tc, test_snapshot_l1_past_eof);
    tcase_add_test(tc, test_l1_copied_not_judged_with_unfollowed_snapshot);
    tcase_add_test(tc, test_snapshot_extra_too_small_v3);
    tcase_add_test(tc, test_snapshot_table_problems);
    tcase_add_test(tc, test_snapshot_duplicate_ids);
    suite_add_tcase(s, tc);

    tc = tcase_create("extensions");
    tcase_add_test(tc, test_backing_file);
    tcase_add_test(tc, test_extensions);
    tcase_add_test(tc, test_feature_table_names_unknown_bit);
    tcase_add_test(tc, test_dirty_and_corrupt_bits);
    tcase_add_test(tc, test_compression_type);
    tcase_add_test(tc, test_extended_l2_small_clusters);
    tcase_add_test(tc, test_luks_header);
    tcase_add_test(tc, test_luks_header_length);
    suite_add_tcase(s, tc);

    tc = tcase_create("bitmaps");
    tcase_add_test(tc, test_bitmap_clean);
    tcase_add_test(tc, test_bitmap_table_entry_invalid);
    tcase_add_test(tc, test_bitmap_all_ones_entry_leaks_old_cluster);
    tcase_add_test(tc, test_bitmaps_without_autoclear);
    tcase_add_test(tc, test_bitmap_directory_problems);
    tcase_add_test(tc, test_bitmap_qemu_refusals);
    suite_add_tcase(s, tc);

    tc = tcase_create("data_file");
    tcase_add_test(tc, test_data_file_clean);
    tcase_add_test(tc, test_data_file_problems);
    tcase_add_test(tc, test_raw_data_file_bit_without_data_file);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    /* The corruption sweeps check thousands of images under the sanitizers. */
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_memory_limit_small);
    tcase_add_test(tc, test_memory_limit_sweep);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_no_callback);
    tcase_add_test(tc, test_progress);
    tcase_add_loop_test(tc, test_truncated_anywhere, 0, 3);
    tcase_add_test(tc, test_truncated_whole_image);
    tcase_add_test(tc, test_byte_corruption_never_crashes);
    tcase_add_test(tc, test_rich_image_corruption_never_crashes);
    suite_add_tcase(s, tc);

    tc = tcase_create("repair");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_repair_leak_and_rollback);
    tcase_add_test(tc, test_repair_leaks_keeps_copied_clear_shared);
    tcase_add_test(tc, test_repair_lists_unlinked);
    tcase_add_test(tc, test_repair_refuses_shared_header);
    tcase_add_test(tc, test_repair_refuses_unknown_incompatible);
    tcase_add_loop_test(tc, test_repair_random_damage, 0, 2);
    suite_add_tcase(s, tc);

    return s;
}
