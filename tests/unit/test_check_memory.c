/*
 * End-to-end tests of qc_check() through the in-memory backend, as a
 * catalogue: each row of CASES builds an image (memory_image.h), edits it,
 * checks it and states what the check must report (exit status, counters,
 * header fields, problem ids with their counts, words of a message). A row
 * may have several steps, each editing the image further (or rebuilding it)
 * and checking again, and may repeat for every cluster size or refcount
 * width. The few cases that need code of their own name a function instead.
 *
 * The sweeps (memory limits, truncation, random damage, API misuse) are in
 * check_memory_sweeps.c, the repairs in check_memory_repairs.c.
 */
#include <check.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "memory_image.h"
#include "qcheck.h"
#include "runner.h"

/* Rows say only how they differ from default_params() (PARAMS below):
 * an initializer that overrides the defaults is the point, not a slip. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Winitializer-overrides"
#else
#pragma GCC diagnostic ignored "-Woverride-init"
#endif

/* ---- what a row says ----------------------------------------------------- */

/* One expected value. WANT_NONE (the zero) asserts nothing; WANT_MAY only
 * allows a problem in a step that says `only`. */
typedef enum want_kind {
    WANT_NONE,
    WANT_EQ,
    WANT_GE,
    WANT_SOME,
    WANT_MAY,
    WANT_FILE_SIZE
} want_kind;

typedef struct want {
    want_kind kind;
    uint64_t n;
} want;

#define EQ(x)                                                                                      \
    {                                                                                              \
        WANT_EQ, (x)                                                                               \
    }
#define GE(x)                                                                                      \
    {                                                                                              \
        WANT_GE, (x)                                                                               \
    }
/* the length of the image as built and edited */
#define FILE_SIZE                                                                                  \
    {                                                                                              \
        WANT_FILE_SIZE, 0                                                                          \
    }
#define N(pid, n) [ROW_##pid] = {WANT_EQ, (n)}
#define SOME(pid) [ROW_##pid] = {WANT_SOME, 0}
#define MAY(pid) [ROW_##pid] = {WANT_MAY, 0}

/* Header fields of the result (and whether it names another format). */
typedef enum header_field {
    H_VALID,
    H_OTHER_FORMAT,
    H_VERSION,
    H_REFCOUNT_BITS,
    H_EXTENDED_L2,
    H_NB_SNAPSHOTS,
    H_HAS_BACKING_FILE,
    H_HAS_BITMAPS,
    H_EXTERNAL_DATA_FILE,
    H_DIRTY,
    H_CORRUPT,
    H_COMPRESSION_TYPE,
    H_UNKNOWN_INCOMPATIBLE,
    H_UNKNOWN_COMPATIBLE,
    H_UNKNOWN_AUTOCLEAR,
    HEADER_FIELDS
} header_field;

/* How a step edits the image. Offsets are `cluster` clusters plus `plus`
 * bytes (plus may be negative), so rows hold for every cluster size. */
typedef enum edit_op {
    ED_END,
    ED_L1,         /* L1 entry `index` = offset | value */
    ED_L1_OR,      /* L1 entry `index` |= value */
    ED_L2,         /* L2 entry `index` = offset | value */
    ED_L2_OR,      /* L2 entry `index` |= value */
    ED_L2_BITMAP,  /* extended L2 entry `index`'s bitmap = value */
    ED_COMPRESSED, /* L2 entry `index` = compressed, at offset, value sectors more */
    ED_REFCOUNT,   /* refcount of cluster `cluster` = value */
    ED_REFTABLE,   /* refcount table entry `index` = offset | value */
    ED_HEADER,     /* header field (offset/size in qc_header) = value, header rewritten */
    ED_HEADER_OR,
    ED_HEADER_CLEAR,
    ED_BE32, /* big-endian value at offset */
    ED_BE64,
    ED_BYTES, /* `bytes` (size of them) at offset */
    ED_ZERO,  /* size zero bytes at offset */
    ED_CALL,  /* call(im) */
} edit_op;

typedef struct edit {
    edit_op op;
    unsigned index;
    uint64_t cluster;
    int64_t plus;
    uint64_t value;
    size_t field, size;
    const char *bytes;
    void (*call)(img *im);
} edit;

#define SET_L1(i, cl, pl, v)                                                                       \
    {                                                                                              \
        ED_L1, .index = (i), .cluster = (cl), .plus = (pl), .value = (v)                           \
    }
#define OR_L1(i, bits)                                                                             \
    {                                                                                              \
        ED_L1_OR, .index = (i), .value = (bits)                                                    \
    }
#define SET_L2(i, cl, pl, v)                                                                       \
    {                                                                                              \
        ED_L2, .index = (i), .cluster = (cl), .plus = (pl), .value = (v)                           \
    }
#define OR_L2(i, bits)                                                                             \
    {                                                                                              \
        ED_L2_OR, .index = (i), .value = (bits)                                                    \
    }
#define SET_L2_BITMAP(i, bitmap)                                                                   \
    {                                                                                              \
        ED_L2_BITMAP, .index = (i), .value = (bitmap)                                              \
    }
#define SET_COMPRESSED(i, cl, pl, sectors)                                                         \
    {                                                                                              \
        ED_COMPRESSED, .index = (i), .cluster = (cl), .plus = (pl), .value = (sectors)             \
    }
#define SET_REFCOUNT(cl, v)                                                                        \
    {                                                                                              \
        ED_REFCOUNT, .cluster = (cl), .value = (v)                                                 \
    }
#define SET_REFTABLE(i, cl, pl, v)                                                                 \
    {                                                                                              \
        ED_REFTABLE, .index = (i), .cluster = (cl), .plus = (pl), .value = (v)                     \
    }
#define HEADER_EDIT(op, name, v)                                                                   \
    {                                                                                              \
        op, .field = offsetof(qc_header, name), .size = sizeof(((qc_header *)0)->name),            \
            .value = (v)                                                                           \
    }
#define SET_HEADER(name, v) HEADER_EDIT(ED_HEADER, name, v)
#define OR_HEADER(name, bits) HEADER_EDIT(ED_HEADER_OR, name, bits)
#define CLEAR_HEADER(name, bits) HEADER_EDIT(ED_HEADER_CLEAR, name, bits)
#define PUT_BE32(cl, pl, v)                                                                        \
    {                                                                                              \
        ED_BE32, .cluster = (cl), .plus = (pl), .value = (v)                                       \
    }
#define PUT_BE64(cl, pl, v)                                                                        \
    {                                                                                              \
        ED_BE64, .cluster = (cl), .plus = (pl), .value = (v)                                       \
    }
#define PUT_BYTES(cl, pl, text)                                                                    \
    {                                                                                              \
        ED_BYTES, .cluster = (cl), .plus = (pl), .bytes = (text), .size = sizeof(text) - 1         \
    }
#define ZERO_BYTES(cl, pl, n)                                                                      \
    {                                                                                              \
        ED_ZERO, .cluster = (cl), .plus = (pl), .size = (n)                                        \
    }
#define CALL(fn)                                                                                   \
    {                                                                                              \
        ED_CALL, .call = (fn)                                                                      \
    }

#define COPIED QC_OFLAG_COPIED
#define ZERO_FLAG QC_OFLAG_ZERO

/* Structures appended to the default image (two data clusters, no spare)
 * by img_add_shared_snapshot and img_add_bitmap. */
enum { SNAP_TABLE = CL_DATA + 2, SNAP_L1 };
enum { BITMAP_DIR = CL_DATA + 2, BITMAP_TABLE, BITMAP_DATA };
/* The offset of cluster 999 of the default image (far past its end), for
 * the snapshot's L1 table. */
#define CLUSTER_999 (999ull << 16)

#define MAX_EDITS 6
#define MAX_MESSAGES 2

/* One edit-and-check. */
typedef struct step {
    bool fresh;                 /* rebuild the image before the edits */
    edit edits[MAX_EDITS];      /* applied in order; ED_END ends them */
    uint64_t max_mem;           /* 0: the default */
    bool clean;                 /* assert_clean: no findings, everything as built */
    want status;                /* exit status */
    want counters[COUNTERS];    /* LEAKS, CORRUPTIONS, ... */
    want header[HEADER_FIELDS]; /* H_VERSION, ... */
    want problems[PROBLEM_ROWS]; /* N(), SOME(), MAY(), by row */
    bool only;                  /* no problem reported but those in `problems` */
    struct {
        qc_problem_id id;
        const char *text;
    } messages[MAX_MESSAGES];                       /* the first message of `id` contains `text` */
    void (*check)(const img *im, const outcome *o); /* anything else */
} step;

typedef enum vary { VARY_NONE, VARY_CLUSTER_BITS, VARY_REFCOUNT_ORDER } vary;

typedef struct check_case {
    const char *area; /* the TCase */
    const char *name;
    img_params params; /* PARAMS(); all zero: default_params() */
    vary vary;         /* repeat for cluster_bits or refcount_order in [from, to) */
    int from, to;
    const step *steps;
    size_t n_steps;
    void (*run)(void); /* instead of steps: a case with code of its own */
} check_case;

#define PARAMS(...)                                                                                \
    .params = {.cluster_bits = 16,                                                                 \
               .refcount_order = 4,                                                                \
               .version = 3,                                                                       \
               .extended_l2 = false,                                                               \
               .data_clusters = 2,                                                                 \
               .spare_clusters = 0,                                                                \
               __VA_ARGS__}
#define STEPS(...)                                                                                 \
    .steps = (const step[]){__VA_ARGS__},                                                          \
    .n_steps = sizeof((const step[]){__VA_ARGS__}) / sizeof(step)
#define VARY(what, lo, hi) .vary = (what), .from = (lo), .to = (hi)

/* ---- edits and checks of their own ------------------------------------------ */

static void add_snapshot(img *im)
{
    img_add_shared_snapshot(im, 24, "1");
}

static void add_snapshot_extra_8(img *im)
{
    img_add_shared_snapshot(im, 8, "1");
}

static void add_snapshot_no_extra(img *im)
{
    img_add_shared_snapshot(im, 0, "1");
}

static void add_bitmap(img *im)
{
    img_add_bitmap(im);
}

static void make_data_file(img *im)
{
    img_make_data_file(im);
}

static void require_two_bit_refcounts(img *im)
{
    ck_assert_uint_ge(im->g.refcount_bits, 2);
}

/* (Width 1 cannot hold 2: see width_leaked_spare_cluster.) A data cluster
 * at 2 and the L2 table at the largest refcount. */
static void bump_data_and_l2_refcounts(img *im)
{
    img_set_refcount(im, CL_DATA, 2);
    img_set_refcount(im, CL_L2, im->g.refcount_max);
    ck_assert_uint_eq(img_get_refcount(im, CL_L2), im->g.refcount_max);
}

/* A refcount using the top bit of its width must be read in full: 1 | top
 * bit is not 1. */
static void set_refcount_top_bit(img *im)
{
    img_set_refcount(im, CL_DATA + 1, 1 | (1ull << (im->g.refcount_bits - 1)));
}

/* Header, reftable, refblock, L1, L2 all at zero: five clusters. */
static void zero_metadata_refcounts(img *im)
{
    for (unsigned c = 0; c < CL_DATA; c++)
        img_set_refcount(im, c, 0);
}

/* refcount_max + 1 L2 entries map the same data cluster, whose refcount is
 * refcount_max: the width cannot represent it. */
static void map_past_refcount_max(img *im)
{
    uint64_t refs = im->g.refcount_max + 1;
    ck_assert_uint_le(refs, im->g.l2_entries);
    for (unsigned i = 0; i < refs; i++)
        img_set_l2(im, i, cl_off(im, CL_DATA)); /* COPIED clear: shared */
    img_set_refcount(im, CL_DATA, im->g.refcount_max);
}

static void refcount_bits_match_order(const img *im, const outcome *o)
{
    ck_assert_uint_eq(header_info(o->res)->refcount_bits, 1u << im->p.refcount_order);
}

/* 600 bad L2 entries. */
static void many_bad_l2_entries(img *im)
{
    img_set_refcount(im, CL_DATA, 601);
    for (unsigned i = 100; i < 700; i++)
        img_set_l2(im, i, cl_off(im, CL_DATA) | (1ull << 57));
    img_set_l2(im, 0, cl_off(im, CL_DATA));
}

/* All counted, the callback sees at most the cap plus a summary. */
static void findings_capped(const img *im, const outcome *o)
{
    (void)im;
    ck_assert_uint_le(o->rec.shown[ROW_L2_ENTRY_RESERVED_BITS], 21);
    ck_assert_uint_ge(o->rec.shown[ROW_L2_ENTRY_RESERVED_BITS], 2);
}

static void l1_table_on_reftable(img *im)
{
    im->hdr.l1_table_offset = cl_off(im, CL_REFTABLE);
    img_write_header(im);
}

static void overlap_names_l1_table_first(const img *im, const outcome *o)
{
    (void)im;
    const char *first = o->rec.first_message[ROW_METADATA_OVERLAP];
    ck_assert_msg(strncmp(first, "active L1 table:", 16) == 0, "%s", first);
}

/* A second L2 table (L1 entry 1) mapping one more data cluster. */
static void add_second_l2_table(img *im)
{
    uint64_t l2b = img_append(im, 2), data = l2b + 1;
    im->hdr.l1_size = 2;
    img_write_header(im);
    img_set_l1(im, 1, cl_off(im, l2b) | QC_OFLAG_COPIED);
    qc_put_be64(im->buf + cl_off(im, l2b) + 8 * 3, cl_off(im, data) | QC_OFLAG_COPIED);
    img_set_refcount(im, l2b, 1);
    img_set_refcount(im, data, 1);
}

/* Each L1 reference to an L2 table counts once for the table and once for
 * every data cluster it maps. */
static void share_l2_table(img *im)
{
    im->hdr.l1_size = 2;
    img_write_header(im);
    img_set_l1(im, 0, cl_off(im, CL_L2));
    img_set_l1(im, 1, cl_off(im, CL_L2));
    img_set_refcount(im, CL_L2, 2);
    for (unsigned i = 0; i < 2; i++) {
        img_set_l2(im, i, cl_off(im, CL_DATA + i));
        img_set_refcount(im, CL_DATA + i, 2);
    }
}

/* 512-byte clusters with 64-bit refcounts: one block covers 64 clusters.
 * Clusters 64 and 65 (a second refcount block, and a data cluster) need
 * refcount table entry 1. */
enum { SECOND_REFBLOCK = 64 };

static void add_second_refblock(img *im)
{
    ck_assert_uint_eq(im->len / im->cs, 64);
    uint64_t rb1 = img_append(im, 2), data = rb1 + 1;
    ck_assert_uint_eq(rb1, SECOND_REFBLOCK);
    qc_put_be64(im->buf + cl_off(im, CL_REFTABLE) + 8, cl_off(im, rb1));
    qc_refblock_set(im->buf + cl_off(im, rb1), 64, 0, 1);
    qc_refblock_set(im->buf + cl_off(im, rb1), 64, 1, 1);
    img_set_l2(im, 59, cl_off(im, data) | QC_OFLAG_COPIED);
}

/* Entry 1 of the second block is cluster 65: bump it. */
static void bump_cluster_65(img *im)
{
    qc_refblock_set(im->buf + cl_off(im, SECOND_REFBLOCK), 64, 1, 3);
}

/* Without refcount table entry 1: the data cluster reads refcount 0. */
static void drop_second_refblock(img *im)
{
    qc_refblock_set(im->buf + cl_off(im, SECOND_REFBLOCK), 64, 1, 1);
    qc_put_be64(im->buf + cl_off(im, CL_REFTABLE) + 8, 0);
}

static void snapshot_table_unaligned(img *im)
{
    im->hdr.nb_snapshots = 1;
    im->hdr.snapshots_offset = cl_off(im, SNAP_TABLE) + 8;
    img_write_header(im);
}

static void snapshot_table_past_eof(img *im)
{
    im->hdr.snapshots_offset = cl_off(im, 5000);
    img_write_header(im);
}

/* A second entry with the same id, sharing the same snapshot L1. */
static void duplicate_snapshot(img *im)
{
    uint8_t *t = im->buf + cl_off(im, SNAP_TABLE);
    qc_cursor c = qc_cursor_make(t, (size_t)im->cs);
    qc_snapshot_entry e;
    ck_assert(qc_snapshot_decode(&c, &e));
    size_t second = qc_snapshot_encode(&e, t + e.entry_size, (size_t)im->cs - e.entry_size);
    ck_assert_uint_ne(second, 0);
    im->hdr.nb_snapshots = 2;
    img_write_header(im);
    img_set_refcount(im, SNAP_L1, 2);
    img_set_refcount(im, CL_L2, 3);
    for (unsigned i = 0; i < 2; i++)
        img_set_refcount(im, CL_DATA + i, 3);
}

/* A backing file "base.qcow2" named at 0x200, its format "qcow2" in the
 * first extension (at 112; the end marker follows at 128). */
static void add_backing_file(img *im)
{
    size_t at = img_add_extension(im, 112, QC_EXT_BACKING_FORMAT, "qcow2", 5);
    ck_assert_uint_eq(at, 128);
    memcpy(im->buf + 0x200, "base.qcow2", 10);
    im->hdr.backing_file_offset = 0x200;
    im->hdr.backing_file_size = 10;
    img_write_header(im);
}

static void second_backing_format_raw(img *im)
{
    img_add_extension(im, 128, QC_EXT_BACKING_FORMAT, "raw", 3);
}

static void empty_backing_format(img *im)
{
    img_add_extension(im, 112, QC_EXT_BACKING_FORMAT, "", 0);
}

static void unknown_extension_x(img *im)
{
    img_add_extension(im, 112, 0x12345678, "x", 1);
}

static void backing_name_at_cluster_end(img *im)
{
    im->hdr.backing_file_offset = im->cs - 4;
    img_write_header(im);
}

/* An unknown extension "abc" at 112 (the next one goes at 128). */
static void unknown_extension_abc(img *im)
{
    img_add_extension(im, 112, 0x12345678u, "abc", 3);
}

/* The same backing format twice, at 128 and 144; the end marker at 160. */
enum { END_MARKER = 160 };

static void backing_format_twice(img *im)
{
    size_t at = img_add_extension(im, 128, QC_EXT_BACKING_FORMAT, "raw", 3);
    at = img_add_extension(im, at, QC_EXT_BACKING_FORMAT, "raw", 3);
    ck_assert_uint_eq(at, END_MARKER);
}

/* The end marker's length is checked like any extension's: it may reach
 * the end of cluster 0 but not go past it. */
static void end_marker_reaches_cluster_end(img *im)
{
    qc_put_be32(im->buf + END_MARKER + 4, (uint32_t)(im->cs - END_MARKER - 8));
}

static void end_marker_past_cluster_end(img *im)
{
    qc_put_be32(im->buf + END_MARKER + 4, (uint32_t)(im->cs - END_MARKER - 7));
}

/* An extension claiming more bytes than cluster 0 has left. */
static void first_extension_claims_cluster(img *im)
{
    qc_put_be32(im->buf + 112 + 4, (uint32_t)im->cs);
}

static void feature_table_names_bit_7(img *im)
{
    uint8_t entry[48];
    memset(entry, 0, sizeof(entry));
    entry[0] = 0;
    entry[1] = 7;
    memcpy(entry + 2, "frobnicated", 11);
    img_add_extension(im, 112, QC_EXT_FEATURE_TABLE, entry, sizeof(entry));
}

static void bitmap_table_entry_reserved_bit(img *im)
{
    qc_put_be64(im->buf + cl_off(im, BITMAP_TABLE), cl_off(im, BITMAP_DATA) | 0x2);
}

/* ---- cases with code of their own ------------------------------------------- */

static void other_formats(void)
{
    outcome o = {0};
    uint8_t buf[512];

    memset(buf, 0, sizeof(buf));
    memcpy(buf, "hello, this is not an image", 27);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_ptr_nonnull(other_format(o.res));
    ck_assert_str_eq(other_format(o.res), "raw");
    ck_assert_int_eq(o.status, 63);
    ck_assert_uint_eq(o.rec.calls, 0);

    /* qcow version 1: magic then version 1. */
    memset(buf, 0, sizeof(buf));
    qc_put_be32(buf, QC_MAGIC);
    qc_put_be32(buf + 4, 1);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_ptr_nonnull(other_format(o.res));
    ck_assert_str_eq(other_format(o.res), "qcow (version 1)");
    ck_assert_int_eq(o.status, 63);

    /* Empty. */
    run_check_opts(buf, 0, 0, &o);
    ck_assert_ptr_nonnull(other_format(o.res));
    ck_assert_str_eq(other_format(o.res), "empty file");
    ck_assert_int_eq(o.status, 63);

    /* A few other signatures. */
    memset(buf, 0, sizeof(buf));
    memcpy(buf, "QFI", 3); /* wrong fourth magic byte */
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(other_format(o.res), "raw");
    /* QED is checked: a header of zeros past the magic has no valid
     * cluster size, which QEMU refuses (a corruption). */
    memcpy(buf, "QED\0", 4);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_ptr_null(other_format(o.res));
    ck_assert_str_eq(qc_result_driver(o.res), "qed");
    ck_assert_uint_eq(qc_result_problem_count(o.res, QC_P_QED_CLUSTER_SIZE_INVALID), 1);
    ck_assert_int_eq(o.status, 2);
    memset(buf, 0, sizeof(buf));
    memcpy(buf, "KDMV", 4);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(other_format(o.res), "vmdk");
    memset(buf, 0, sizeof(buf));
    memcpy(buf + 0x40, "\x7f\x10\xda\xbe", 4);
    run_check_opts(buf, sizeof(buf), 0, &o);
    ck_assert_str_eq(other_format(o.res), "vdi");
    outcome_release(&o);
}

/* The only problems reported are those in `allowed` (QC_P_NONE ends it). */
static void assert_only(const outcome *o, const qc_problem_id *allowed)
{
    for (unsigned i = 0; i < PROBLEM_ROWS; i++) {
        if (!n_of(o, qc_problem_at(i)->code))
            continue;
        bool ok = false;
        for (const qc_problem_id *a = allowed; *a != QC_P_NONE; a++)
            ok |= *a == qc_problem_at(i)->code;
        ck_assert_msg(ok, "unexpected %s;%s", qc_problem_at(i)->id, describe(o));
    }
}

#define ASSERT_FOUND(o, pid, n)                                                                    \
    ck_assert_msg(n_of(o, pid) == (n), "%s: expected %llu, got %llu;%s", qc_problem_get(pid)->id,  \
                  (unsigned long long)(n), (unsigned long long)n_of(o, pid), describe(o))

#define ASSERT_ONLY(o, ...)                                                                        \
    do {                                                                                           \
        const qc_problem_id allowed_[] = {__VA_ARGS__, QC_P_NONE};                                 \
        assert_only(o, allowed_);                                                                  \
    } while (0)

/* One field of the LUKS header (offset in the header, big-endian value of
 * `size` bytes, or a string) changed at a time, and whether QEMU accepts
 * the result. */
static void luks_header_fields(void)
{
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
        {QC_LUKS_OFF_SLOTS + 40, 4, 7, NULL, false,
         "Keyslot 0 is overlapping with the LUKS header"},
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
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-plain65", false,
         "IV generator 'plain65' not supported"},
        {QC_LUKS_OFF_CIPHER_MODE, 0, 0, "cbc-essiv", false,
         "Missing IV generator hash specification"},
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
        outcome o = {0};
        run_check(&im, &o);
        ck_assert_msg(cases[k].accepted == (counter_of(o.res, FINDINGS) == 0), "case %zu:%s", k,
                      describe(&o));
        if (!cases[k].accepted) {
            ASSERT_FOUND(&o, QC_P_LUKS_HEADER_INVALID, 1);
            ASSERT_ONLY(&o, QC_P_LUKS_HEADER_INVALID);
            ck_assert_int_eq(o.status, 2);
            ck_assert_msg(strstr(o.rec.first_message[ROW_LUKS_HEADER_INVALID], cases[k].qemu_says),
                          "case %zu: %s", k, o.rec.first_message[ROW_LUKS_HEADER_INVALID]);
        }
        outcome_release(&o);
        img_free(&im);
    }
}

/* The extension's length must cover the 592 bytes QEMU always reads, and
 * the key material of the enabled slot (0: 64000 bytes from sector 8),
 * which it reads when opening with the key; disabled slots' material is
 * never read. */
static void luks_header_length(void)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    img_add_luks(&im);
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
        outcome o = {0};
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_LUKS_HEADER_INVALID, lengths[k].accepted ? 0 : 1);
        if (lengths[k].accepted) {
            /* Nothing points to the clusters past that length now. */
            ck_assert_int_eq(o.status, 3);
        } else {
            /* They are kept as orphans, not leaks: freeing key material
             * would lose the whole disk. */
            ck_assert_int_eq(o.status, 2);
            ck_assert_uint_eq(leaks(o.res), 0);
        }
        outcome_release(&o);
    }
    img_free(&im);
}

/* Entries the specification allows but QEMU refuses to load: counted,
 * since QEMU cannot open the image; in-use bitmaps are not loaded, so
 * their table size does not matter to QEMU. */
static void bitmap_qemu_refusals(void)
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
        {16, QC_BITMAP_FLAG_AUTO, 2, 0, true},                          /* one entry too many */
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
        outcome o = {0};
        run_check(&im, &o);
        ASSERT_FOUND(&o, QC_P_BITMAP_UNSUPPORTED_BY_QEMU, cases[k].refused ? 1 : 0);
        ASSERT_ONLY(&o, QC_P_BITMAP_UNSUPPORTED_BY_QEMU, QC_P_BITMAP_IN_USE,
                    QC_P_VIRTUAL_SIZE_UNALIGNED);
        ck_assert_int_eq(o.status, cases[k].refused ? 2 : 0);
        outcome_release(&o);
        img_free(&im);
    }
}

/* ---- the catalogue ------------------------------------------------------------- */

/* QEMU validates the offsets of the active L1 table and of the snapshot
 * table even when they have no entries (empty_*_offset rows). A disk of
 * size 0 needs no L1 entries; the L1 and L2 clusters are left over
 * (leaked). */
#define EMPTY_L1_AT(offset)                                                                        \
    SET_HEADER(size, 0), SET_HEADER(l1_size, 0), SET_HEADER(l1_table_offset, offset)
#define EMPTY_SNAPSHOTS_AT(offset) SET_HEADER(nb_snapshots, 0), SET_HEADER(snapshots_offset, offset)

static const check_case CASES[] = {
    /* ---- clean images ---- */
    {"clean", "clean_default",
     STEPS({.clean = true,
            .counters = {[IMAGE_END_OFFSET] = EQ(7 * 65536),
                         [ALLOCATED_CLUSTERS] = EQ(2),
                         [TOTAL_CLUSTERS] = EQ(8192)},
            .header = {[H_REFCOUNT_BITS] = EQ(16)}})},
    {"clean", "clean_v2", PARAMS(.version = 2, .data_clusters = 5),
     STEPS({.clean = true, .header = {[H_VERSION] = EQ(2), [H_REFCOUNT_BITS] = EQ(16)}})},
    {"clean", "clean_cluster_bits", PARAMS(.data_clusters = 3), VARY(VARY_CLUSTER_BITS, 9, 22),
     STEPS({.clean = true})},
    {"clean", "clean_cluster_bits_v2", PARAMS(.version = 2, .data_clusters = 3),
     VARY(VARY_CLUSTER_BITS, 9, 22), STEPS({.clean = true})},
    {"clean", "clean_extended_l2", PARAMS(.extended_l2 = true, .data_clusters = 4),
     VARY(VARY_CLUSTER_BITS, 14, 22), STEPS({.clean = true, .header = {[H_EXTENDED_L2] = EQ(1)}})},
    /* No data at all: only metadata in use. */
    {"clean", "clean_empty_l2", PARAMS(.data_clusters = 0),
     STEPS({.clean = true, .counters = {[IMAGE_END_OFFSET] = EQ(5 * 65536)}})},
    {"clean", "trailing_space_is_info", PARAMS(.spare_clusters = 3),
     STEPS({.status = EQ(0),
            .problems = {N(TRAILING_SPACE, 1)},
            .only = true,
            .counters = {[IMAGE_END_OFFSET] = EQ(7 * 65536), [LEAKS] = EQ(0)}})},
    /* Data clusters mapped out of order: 5, 7, 6, 8. */
    {"clean", "fragmentation_counted", PARAMS(.data_clusters = 4),
     STEPS(
         {.edits = {SET_L2(1, CL_DATA + 2, 0, COPIED), SET_L2(2, CL_DATA + 1, 0, COPIED)},
          .status = EQ(0),
          .counters =
              {[FINDINGS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(4), [FRAGMENTED_CLUSTERS] = EQ(3)}})},

    /* ---- refcounts, at every width ---- */
    /* (64-bit refcounts and 512-byte clusters: 64 entries per block, plenty.) */
    {"refcounts", "width_clean", PARAMS(.cluster_bits = 9, .data_clusters = 6),
     VARY(VARY_REFCOUNT_ORDER, 0, 7), STEPS({.clean = true, .check = refcount_bits_match_order})},
    /* The first spare cluster is marked in use but nothing references it. */
    {"refcounts", "width_leaked_spare_cluster", PARAMS(.spare_clusters = 2),
     VARY(VARY_REFCOUNT_ORDER, 0, 7),
     STEPS({.edits = {SET_REFCOUNT(CL_DATA + 2, 1)},
            .problems = {N(REFCOUNT_LEAK, 1), MAY(TRAILING_SPACE)},
            .only = true,
            .status = EQ(3),
            .counters =
                {[LEAKS] = EQ(1), [CORRUPTIONS] = EQ(0), [IMAGE_END_OFFSET] = EQ(8 * 65536)}})},
    {"refcounts", "width_bumped_refcount", VARY(VARY_REFCOUNT_ORDER, 1, 7),
     STEPS({.edits = {CALL(require_two_bit_refcounts), CALL(bump_data_and_l2_refcounts)},
            .problems = {N(REFCOUNT_LEAK, 2)},
            .only = true,
            .status = EQ(3),
            .counters = {[LEAKS] = EQ(2)}})},
    {"refcounts", "width_high_bits_read", VARY(VARY_REFCOUNT_ORDER, 1, 7),
     STEPS({.edits = {CALL(require_two_bit_refcounts), CALL(set_refcount_top_bit)},
            .problems = {N(REFCOUNT_LEAK, 1)},
            .only = true,
            .status = EQ(3)})},
    {"refcounts", "width_zeroed_refcount", VARY(VARY_REFCOUNT_ORDER, 0, 7),
     STEPS({.edits = {SET_REFCOUNT(CL_DATA + 1, 0)},
            .problems = {N(REFCOUNT_ZERO_IN_USE, 1)},
            .only = true,
            .status = EQ(2),
            .counters = {[CORRUPTIONS] = EQ(1), [LEAKS] = EQ(0)}})},
    {"refcounts", "width_zeroed_metadata_refcounts", VARY(VARY_REFCOUNT_ORDER, 0, 7),
     STEPS({.edits = {CALL(zero_metadata_refcounts)},
            .problems = {N(REFCOUNT_ZERO_IN_USE, 5)},
            .only = true,
            .status = EQ(2)})},
    {"refcounts", "width_overflow", PARAMS(.data_clusters = 1), VARY(VARY_REFCOUNT_ORDER, 0, 4),
     STEPS({.edits = {CALL(map_past_refcount_max)},
            .problems = {N(REFCOUNT_OVERFLOW, 1)},
            .only = true,
            .status = EQ(2),
            .counters = {[CORRUPTIONS] = EQ(1)}})},
    /* The same cluster mapped twice with refcount 2 is fine (widths >= 2). */
    {"refcounts", "width_shared_cluster_ok", VARY(VARY_REFCOUNT_ORDER, 1, 7),
     STEPS({.edits = {CALL(require_two_bit_refcounts), SET_L2(0, CL_DATA, 0, 0),
                      SET_L2(7, CL_DATA, 0, 0), SET_REFCOUNT(CL_DATA, 2)},
            .status = EQ(0),
            .counters = {[FINDINGS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(3)}})},
    /* Three references, refcount 2. */
    {"refcounts", "refcount_too_low",
     STEPS({.edits = {SET_L2(0, CL_DATA, 0, 0), SET_L2(5, CL_DATA, 0, 0), SET_L2(6, CL_DATA, 0, 0),
                      SET_REFCOUNT(CL_DATA, 2)},
            .problems = {N(REFCOUNT_TOO_LOW, 1)},
            .only = true,
            .status = EQ(2)})},
    {"refcounts", "one_bit_cluster_referenced_twice", PARAMS(.refcount_order = 0),
     STEPS({.edits = {SET_L2(0, CL_DATA, 0, 0), SET_L2(9, CL_DATA, 0, 0)},
            .problems = {N(REFCOUNT_OVERFLOW, 1)},
            .only = true,
            .status = EQ(2)})},
    /* Refcount table entry 0 cleared: everything still in use (all but the
     * refcount block, which nothing points to now) reads as refcount 0:
     * clusters 0-1 and 3-6. */
    {"refcounts", "refblock_missing_entry",
     STEPS({.edits = {SET_REFTABLE(0, 0, 0, 0)},
            .problems = {N(REFCOUNT_ZERO_IN_USE, 6)},
            .only = true,
            .status = EQ(2)})},
    {"refcounts", "reftable_problems",
     STEPS({.edits = {SET_HEADER(refcount_table_clusters, 0x10000)},
            .max_mem = 1u << 20,
            /* 4 GiB: QEMU accepts 8 MiB */
            .problems = {N(REFTABLE_PAST_EOF, 1), N(MEMORY_LIMIT, 0), N(QEMU_LIMIT_EXCEEDED, 1)},
            .status = EQ(2)},
           {.fresh = true,
            .edits = {SET_REFTABLE(0, CL_REFBLOCK, 0x100, 0)},
            .problems = {N(REFTABLE_ENTRY_RESERVED_BITS, 1)},
            .status = EQ(2)},
           {.fresh = true,
            .edits = {SET_REFTABLE(0, 500, 0, 0)},
            .problems = {N(REFTABLE_ENTRY_PAST_EOF, 1), SOME(REFCOUNTS_UNKNOWN)},
            .status = EQ(2)})},

    /* ---- L1 and L2 entries ---- */
    {"mapping", "l2_entry_past_eof",
     STEPS({.edits = {SET_L2(10, 100, 0, COPIED)},
            .problems = {N(L2_ENTRY_PAST_EOF, 1)},
            .only = true,
            .counters = {[LEAKS] = EQ(0)},
            .status = EQ(2)})},
    {"mapping", "l2_entry_unaligned",
     STEPS({.edits = {SET_L2(10, CL_DATA + 1, 512, COPIED)},
            .problems = {N(L2_ENTRY_UNALIGNED, 1)},
            .only = true,
            .status = EQ(2)})},
    /* The only reference to data cluster 1 becomes unaligned: that cluster
     * may belong to the entry, so it is an orphan, not a leak. */
    {"mapping", "l2_unaligned_replacing_data",
     STEPS({.edits = {SET_L2(1, CL_DATA + 1, 1024, COPIED)},
            .problems = {N(L2_ENTRY_UNALIGNED, 1), N(REFCOUNT_ORPHAN, 1)},
            .only = true,
            .counters = {[LEAKS] = EQ(0)}})},
    /* The L2 table and its three data clusters are allocated but nothing
     * followed reaches them. */
    {"mapping", "l1_entry_past_eof", PARAMS(.data_clusters = 3),
     STEPS({.edits = {SET_L1(0, 1000, 0, COPIED)},
            .problems = {N(L1_ENTRY_PAST_EOF, 1), N(REFCOUNT_ORPHAN, 4), N(REFCOUNT_LEAK, 0)},
            .only = true,
            .status = EQ(2),
            .counters = {[LEAKS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(0)}})},
    {"mapping", "l1_entry_unaligned",
     STEPS({.edits = {SET_L1(0, CL_L2, 0x200, COPIED)},
            .problems = {N(L1_ENTRY_UNALIGNED, 1), N(REFCOUNT_LEAK, 0), MAY(REFCOUNT_ORPHAN)},
            .only = true,
            .status = EQ(2)})},
/* Reserved bits: the entry is still followed. */
#define L1_RESERVED_BIT(bit)                                                                       \
    {                                                                                              \
        "mapping", "l1_reserved_bit_" #bit,                                                        \
            STEPS({.edits = {OR_L1(0, 1ull << (bit))},                                             \
                   .problems = {N(L1_ENTRY_RESERVED_BITS, 1)},                                     \
                   .only = true,                                                                   \
                   .status = EQ(2),                                                                \
                   .counters = {[ALLOCATED_CLUSTERS] = EQ(2)}})                                    \
    }
    L1_RESERVED_BIT(0),
    L1_RESERVED_BIT(8),
    L1_RESERVED_BIT(56),
    L1_RESERVED_BIT(62),
    /* An L1 entry with no L2 table offset but COPIED (or reserved bits) set:
     * QEMU follows it to the header cluster, so it is a finding of its own,
     * in a snapshot's L1 table as in the active one; nothing is followed.
     * The snapshot no longer holds the L2 table and data clusters: their
     * second reference is a leak each (1 + 2). Then reserved bits too: both
     * findings for the one entry. */
    {"mapping", "l1_zero_offset_flags",
     STEPS({.edits = {CALL(add_snapshot), PUT_BE64(SNAP_L1, 0, COPIED)},
            .problems = {N(L1_ZERO_OFFSET_FLAGS, 1)},
            .messages = {{QC_P_L1_ZERO_OFFSET_FLAGS, "snapshot 0"},
                         {QC_P_L1_ZERO_OFFSET_FLAGS, "entry 0 is 0x8000000000000000"}},
            .counters = {[LEAKS] = EQ(3)},
            .status = EQ(2)},
           {.edits = {SET_L1(0, 0, 0, COPIED | 1ull << 60)},
            .problems = {N(L1_ZERO_OFFSET_FLAGS, 2), N(L1_ENTRY_RESERVED_BITS, 1)},
            .messages = {{QC_P_L1_ZERO_OFFSET_FLAGS, "active L1 table"}}})},
#define L2_RESERVED_BIT(bit)                                                                       \
    {                                                                                              \
        "mapping", "l2_reserved_bit_" #bit,                                                        \
            STEPS({.edits = {OR_L2(1, 1ull << (bit))},                                             \
                   .problems = {N(L2_ENTRY_RESERVED_BITS, 1)},                                     \
                   .only = true,                                                                   \
                   .status = EQ(2)})                                                               \
    }
    L2_RESERVED_BIT(1),
    L2_RESERVED_BIT(8),
    L2_RESERVED_BIT(56),
    L2_RESERVED_BIT(61),
    {"mapping", "zero_flag_v2", PARAMS(.version = 2),
     STEPS({.edits = {OR_L2(0, ZERO_FLAG)},
            .problems = {N(L2_ZERO_FLAG_INVALID, 1)},
            .only = true,
            .status = EQ(2)})},
    /* A preallocated zero cluster and a plain zero cluster. */
    {"mapping", "zero_flag_v3_is_valid",
     STEPS({.edits = {OR_L2(0, ZERO_FLAG), SET_L2(20, 0, 0, ZERO_FLAG)},
            .counters = {[FINDINGS] = EQ(0)},
            .status = EQ(0)})},
    {"mapping", "zero_flag_extended_l2", PARAMS(.extended_l2 = true),
     STEPS(
         {.edits = {OR_L2(1, ZERO_FLAG)}, .problems = {N(L2_ZERO_FLAG_INVALID, 1)}, .only = true})},
    /* Subcluster 0 allocated and zero; unallocated with allocated bits;
     * unallocated, all zero (fine). */
    {"mapping", "subcluster_bitmaps", PARAMS(.extended_l2 = true),
     STEPS({.edits = {SET_L2_BITMAP(0, 0x0000000100000001ull), SET_L2_BITMAP(30, 0xf0),
                      SET_L2_BITMAP(31, 0xffffffff00000000ull)},
            .problems = {N(SUBCLUSTER_ALLOC_AND_ZERO, 1), N(SUBCLUSTER_ALLOC_UNALLOCATED, 1)},
            .only = true})},
    {"mapping", "zero_offset_copied",
     STEPS({.edits = {SET_L2(50, 0, 0, COPIED)},
            .problems = {N(L2_ZERO_OFFSET_COPIED, 1)},
            .only = true,
            .status = EQ(2),
            .counters = {[ALLOCATED_CLUSTERS] = EQ(2)}})},
    /* Refcount 1, COPIED clear. */
    {"mapping", "l2_copied_clear",
     STEPS({.edits = {SET_L2(1, CL_DATA + 1, 0, 0)},
            .problems = {N(L2_COPIED_WRONG, 1)},
            .only = true,
            .status = EQ(2)})},
    /* Two COPIED references to one cluster with (correct) refcount 2. */
    {"mapping", "l2_copied_set_on_shared",
     STEPS({.edits = {SET_L2(4, CL_DATA, 0, COPIED), SET_REFCOUNT(CL_DATA, 2)},
            .problems = {N(L2_COPIED_WRONG, 1)},
            .only = true})},
    {"mapping", "l1_copied_wrong",
     STEPS({.edits = {SET_L1(0, CL_L2, 0, 0)},
            .problems = {N(L1_COPIED_WRONG, 1)},
            .only = true,
            .status = EQ(2)})},
    {"mapping", "many_findings_capped",
     STEPS({.edits = {CALL(many_bad_l2_entries)},
            .problems = {N(L2_ENTRY_RESERVED_BITS, 600)},
            .only = true,
            .check = findings_capped})},

    /* ---- overlaps ---- */
    {"overlap", "data_overlaps_refblock",
     STEPS({.edits = {SET_L2(7, CL_REFBLOCK, 0, COPIED)},
            .problems = {N(DATA_OVERLAPS_METADATA, 1)},
            .messages = {{QC_P_DATA_OVERLAPS_METADATA, "refcount block"}},
            .status = EQ(2)})},
/* (Not the header: host offset 0 means "unallocated".) */
#define DATA_ON(cluster)                                                                           \
    {                                                                                              \
        "overlap", "data_overlaps_" #cluster,                                                      \
            STEPS({.edits = {SET_L2(9, cluster, 0, 0)},                                            \
                   .problems = {N(DATA_OVERLAPS_METADATA, 1)},                                     \
                   .status = EQ(2)})                                                               \
    }
    DATA_ON(CL_REFTABLE),
    DATA_ON(CL_REFBLOCK),
    DATA_ON(CL_L1),
    DATA_ON(CL_L2),
    /* The refcount block is not walked as if it were an L2 table; the real
     * L2 table and data are no longer reachable: orphans. */
    {"overlap", "l1_entry_on_refblock",
     STEPS({.edits = {SET_L1(0, CL_REFBLOCK, 0, COPIED)},
            .problems = {N(METADATA_OVERLAP, 1), N(L2_ENTRY_RESERVED_BITS, 0),
                         N(L2_ENTRY_UNALIGNED, 0), N(L2_ENTRY_PAST_EOF, 0),
                         N(L2_ZERO_FLAG_INVALID, 0), N(DATA_OVERLAPS_METADATA, 0)},
            .counters = {[LEAKS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(0)},
            .status = EQ(2)})},
    /* The active L1 table placed on the refcount table loses the overlap
     * (the refcount table is more trusted). As docs/passes.md section 4
     * says, L1 tables are read before overlaps are known, so what was
     * collected from it is kept; the overlap is reported, names the L1 table
     * as the loser, and makes the check treat unreferenced clusters as
     * orphans. */
    {"overlap", "l1_table_on_reftable",
     STEPS({.edits = {CALL(l1_table_on_reftable)},
            .problems = {SOME(METADATA_OVERLAP), SOME(REFCOUNT_ORPHAN)},
            .messages = {{QC_P_METADATA_OVERLAP, "refcount table"}},
            .check = overlap_names_l1_table_first,
            .counters = {[LEAKS] = EQ(0)},
            .status = EQ(2)})},

    /* ---- header-level problems ---- */
    {"header", "unknown_incompat_feature",
     STEPS({.edits = {OR_HEADER(incompatible_features, 1ull << 5)},
            .problems = {N(UNKNOWN_INCOMPAT_FEATURE, 1)},
            .only = true,
            .status = EQ(1),
            .counters = {[CHECK_ERRORS] = EQ(1)},
            .header = {[H_VALID] = EQ(1), [H_UNKNOWN_INCOMPATIBLE] = EQ(1ull << 5)}})},
    {"header", "unknown_compat_and_autoclear",
     STEPS({.edits = {OR_HEADER(compatible_features, 1ull << 40),
                      OR_HEADER(autoclear_features, 1ull << 9)},
            .problems = {N(UNKNOWN_COMPAT_FEATURE, 1), N(UNKNOWN_AUTOCLEAR_FEATURE, 1)},
            .only = true,
            .status = EQ(0),
            .header =
                {[H_UNKNOWN_COMPATIBLE] = EQ(1ull << 40), [H_UNKNOWN_AUTOCLEAR] = EQ(1ull << 9)}})},
    {"header", "other_formats", .run = other_formats},
    {"header", "version_unsupported",
     STEPS({.edits = {PUT_BE32(0, 4, 4)},
            .problems = {N(VERSION_UNSUPPORTED, 1)},
            .only = true,
            .status = EQ(1),
            .header = {[H_OTHER_FORMAT] = EQ(0)}})},
#define BAD_CLUSTER_BITS(v)                                                                        \
    {                                                                                              \
        "header", "cluster_bits_" #v,                                                              \
            STEPS({.edits = {SET_HEADER(cluster_bits, v)},                                         \
                   .problems = {N(CLUSTER_BITS_INVALID, 1)},                                       \
                   .only = true,                                                                   \
                   .status = EQ(2)})                                                               \
    }
    BAD_CLUSTER_BITS(0),
    BAD_CLUSTER_BITS(8),
    BAD_CLUSTER_BITS(22),
    BAD_CLUSTER_BITS(63),
    BAD_CLUSTER_BITS(64),
    BAD_CLUSTER_BITS(0xffffffffu),
#define BAD_HEADER_LENGTH(v)                                                                       \
    {                                                                                              \
        "header", "header_length_" #v,                                                             \
            STEPS({.edits = {SET_HEADER(header_length, v)},                                        \
                   .problems = {N(HEADER_LENGTH_INVALID, 1)},                                      \
                   .status = EQ(2)})                                                               \
    }
    BAD_HEADER_LENGTH(0),
    BAD_HEADER_LENGTH(72),
    BAD_HEADER_LENGTH(103),
    BAD_HEADER_LENGTH(65537),
    BAD_HEADER_LENGTH(0xffffffffu),
    /* 104 is fine; at 108 the extension area starts misaligned. */
    {"header", "header_length_104_and_unaligned",
     STEPS({.edits = {ZERO_BYTES(0, 104, 8), SET_HEADER(header_length, 104)},
            .counters = {[FINDINGS] = EQ(0)}},
           {.edits = {SET_HEADER(header_length, 108)},
            .problems = {N(HEADER_LENGTH_UNALIGNED, 1)},
            .status = EQ(0)})},
    {"header", "refcount_order_invalid",
     STEPS({.edits = {SET_HEADER(refcount_order, 7)},
            .problems = {N(REFCOUNT_ORDER_INVALID, 1)},
            .only = true,
            .status = EQ(2)})},
/* 1 MiB is plenty for this image; any allocation sized by l1_size would
 * hit the limit and show up as memoryLimit. Over 32 MiB of L1 table
 * (4 Mi entries): QEMU refuses the image. The L2 table and data cannot
 * be reached: orphans, not leaks. */
#define HUGE_L1_SIZE(v, qemu_refuses)                                                              \
    {                                                                                              \
        "header", "huge_l1_size_" #v,                                                              \
            STEPS({.edits = {SET_HEADER(l1_size, v)},                                              \
                   .max_mem = 1u << 20,                                                            \
                   .problems = {N(L1_PAST_EOF, 1), N(MEMORY_LIMIT, 0),                             \
                                N(QEMU_LIMIT_EXCEEDED, qemu_refuses)},                             \
                   .status = EQ(2),                                                                \
                   .counters = {[LEAKS] = EQ(0)}})                                                 \
    }
    HUGE_L1_SIZE(0xffffffffu, 1),
    HUGE_L1_SIZE(0x80000000u, 1),
    HUGE_L1_SIZE(0x10000000u, 1),
    HUGE_L1_SIZE(0x10000, 0),
    /* 1 TiB needs 2048 entries; then l1_size 0 with a non-zero size. */
    {"header", "l1_too_small",
     STEPS({.edits = {SET_HEADER(size, 1ull << 40)},
            .max_mem = 1u << 20,
            .problems = {N(L1_TOO_SMALL, 1)},
            .only = true,
            .status = EQ(2)},
           {.fresh = true,
            .edits = {SET_HEADER(l1_size, 0)},
            .problems = {N(L1_TOO_SMALL, 1)},
            .status = EQ(2)})},
    {"header", "huge_virtual_size",
     STEPS({.edits = {SET_HEADER(size, UINT64_MAX - 511), SET_HEADER(l1_size, 0xffffffffu)},
            .max_mem = 1u << 20,
            .problems = {N(L1_TOO_SMALL, 1), N(L1_PAST_EOF, 1), N(MEMORY_LIMIT, 0)},
            .status = EQ(2)})},
#define ANY_STATUS                                                                                 \
    {                                                                                              \
        WANT_NONE, 0                                                                               \
    }
#define EMPTY_L1_OFFSET(name, offset, n, st)                                                       \
    {                                                                                              \
        "header", "empty_l1_offset_" name, PARAMS(.data_clusters = 0),                             \
            STEPS({.edits = {EMPTY_L1_AT(offset)},                                                 \
                   .problems = {N(EMPTY_TABLE_OFFSET_INVALID, n), MAY(REFCOUNT_LEAK)},             \
                   .only = true,                                                                   \
                   .status = st})                                                                  \
    }
#define EMPTY_SNAPSHOTS_OFFSET(name, offset, n, st)                                                \
    {                                                                                              \
        "header", "empty_snapshots_offset_" name, PARAMS(.data_clusters = 0),                      \
            STEPS({.edits = {EMPTY_SNAPSHOTS_AT(offset)},                                          \
                   .problems = {N(EMPTY_TABLE_OFFSET_INVALID, n)},                                 \
                   .only = true,                                                                   \
                   .status = st})                                                                  \
    }
    EMPTY_L1_OFFSET("unaligned", 0x30200, 1, EQ(2)),
    EMPTY_L1_OFFSET("2^63", 1ull << 63, 1, EQ(2)),
    EMPTY_L1_OFFSET("top", UINT64_MAX & ~0xffffull, 1, EQ(2)),
    EMPTY_L1_OFFSET("2^62", 1ull << 62, 0, ANY_STATUS), /* aligned, below 2^63: QEMU accepts it */
    EMPTY_L1_OFFSET("0", 0, 0, ANY_STATUS),
    EMPTY_SNAPSHOTS_OFFSET("unaligned", 0x30200, 1, EQ(2)),
    EMPTY_SNAPSHOTS_OFFSET("2^63", 1ull << 63, 1, EQ(2)),
    EMPTY_SNAPSHOTS_OFFSET("top", UINT64_MAX & ~0xffffull, 1, EQ(2)),
    EMPTY_SNAPSHOTS_OFFSET("2^62", 1ull << 62, 0, ANY_STATUS),
    EMPTY_SNAPSHOTS_OFFSET("0", 0, 0, ANY_STATUS),

    /* ---- compressed clusters ---- */
    /* Two compressed clusters packed into data cluster 1 (refcount 2); L2
     * entry 2 keeps mapping data cluster 2 normally. */
    {"compressed", "compressed_clean", PARAMS(.data_clusters = 3),
     STEPS({.edits = {SET_COMPRESSED(1, CL_DATA + 1, 0x100, 3),
                      SET_COMPRESSED(5, CL_DATA + 1, 0x1000, 0), SET_REFCOUNT(CL_DATA + 1, 2)},
            .counters =
                {[FINDINGS] = EQ(0), [COMPRESSED_CLUSTERS] = EQ(2), [ALLOCATED_CLUSTERS] = EQ(4)},
            .status = EQ(0)})},
    /* 3 sectors from 0x300 before the end of data cluster 1: 0x500 bytes,
     * the last 0x200 in data cluster 2. Both get one reference. Without the
     * reference into cluster 2 that cluster would be leaked. */
    {"compressed", "compressed_spanning_two_clusters", PARAMS(.data_clusters = 3),
     STEPS({.edits = {SET_COMPRESSED(1, CL_DATA + 2, -0x300, 2), SET_L2(2, 0, 0, 0)},
            .counters = {[FINDINGS] = EQ(0), [COMPRESSED_CLUSTERS] = EQ(1)}},
           {.edits = {SET_COMPRESSED(1, CL_DATA + 2, -0x300, 0)},
            .problems = {N(REFCOUNT_LEAK, 1)},
            .only = true})},
    {"compressed", "compressed_copied",
     STEPS({.edits = {SET_COMPRESSED(1, CL_DATA + 1, 0, 1), OR_L2(1, COPIED)},
            .problems = {N(COMPRESSED_COPIED, 1)},
            .only = true,
            .status = EQ(2)})},
    /* 0x100 bytes before the end of the file. */
    {"compressed", "compressed_past_eof",
     STEPS({.edits = {SET_COMPRESSED(20, CL_DATA + 2, -0x100, 1)},
            .problems = {N(COMPRESSED_RANGE_INVALID, 1)},
            .only = true,
            .counters = {[LEAKS] = EQ(0)}})},
    /* With 512-byte clusters the offset field reaches bit 60. */
    {"compressed", "compressed_high_offset_bits", PARAMS(.cluster_bits = 9),
     STEPS({.edits = {SET_COMPRESSED(20, CL_DATA, 1ll << 57, 0)},
            .problems = {N(COMPRESSED_RANGE_INVALID, 1)},
            .only = true})},
    {"compressed", "compressed_on_metadata",
     STEPS({.edits = {SET_COMPRESSED(20, CL_L1, 0x800, 0)},
            .problems = {N(DATA_OVERLAPS_METADATA, 1)},
            .status = EQ(2)})},
    {"compressed", "compressed_extended_l2_bitmap", PARAMS(.extended_l2 = true),
     STEPS({.edits = {SET_COMPRESSED(1, CL_DATA + 1, 0, 2), SET_L2_BITMAP(1, 0)},
            .counters = {[FINDINGS] = EQ(0)}},
           {.edits = {SET_L2_BITMAP(1, 1)},
            .problems = {N(COMPRESSED_SUBCLUSTER_BITMAP, 1)},
            .only = true})},

    /* ---- more than one table ---- */
    /* Then losing the second table's (cluster 7's) refcount. */
    {"tables", "second_l2_table",
     STEPS({.edits = {CALL(add_second_l2_table)},
            .counters =
                {[FINDINGS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(3), [IMAGE_END_OFFSET] = FILE_SIZE}},
           {.edits = {SET_REFCOUNT(CL_DATA + 2, 0)},
            .problems = {N(REFCOUNT_ZERO_IN_USE, 1)},
            .only = true})},
    /* Then a refcount of 1 on a data cluster is too low. */
    {"tables", "l2_shared_by_two_l1_entries",
     STEPS({.edits = {CALL(share_l2_table)},
            .counters = {[FINDINGS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(4)}},
           {.edits = {SET_REFCOUNT(CL_DATA + 1, 1)},
            .problems = {N(REFCOUNT_TOO_LOW, 1)},
            .only = true})},
    {"tables", "second_refblock",
     PARAMS(.cluster_bits = 9, .refcount_order = 6, .data_clusters = 59), /* clusters 0..63 */
     STEPS({.edits = {CALL(add_second_refblock)},
            .counters = {[FINDINGS] = EQ(0),
                         [ALLOCATED_CLUSTERS] = EQ(60),
                         [IMAGE_END_OFFSET] = EQ(66 * 512)}},
           {.edits = {CALL(bump_cluster_65)},
            .problems = {N(REFCOUNT_LEAK, 1)},
            .messages = {{QC_P_REFCOUNT_LEAK, "host cluster 65"}}},
           {.edits = {CALL(drop_second_refblock)},
            .problems = {N(REFCOUNT_ZERO_IN_USE, 1)},
            .only = true,
            .messages = {{QC_P_REFCOUNT_ZERO_IN_USE, "host cluster 65"}}})},
    {"tables", "refcount_past_eof",
     STEPS({.edits = {SET_REFCOUNT(100, 1)},
            .problems = {N(REFCOUNT_PAST_EOF, 1)},
            .only = true,
            .status = EQ(0)})},

    /* ---- snapshots ---- */
    {"snapshots", "snapshot_shared_clean",
     STEPS({.edits = {CALL(add_snapshot)},
            .status = EQ(0),
            .counters =
                {[FINDINGS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(2), [IMAGE_END_OFFSET] = FILE_SIZE},
            .header = {[H_NB_SNAPSHOTS] = EQ(1)}})},
    /* COPIED set on shared tables and clusters is wrong. */
    {"snapshots", "snapshot_copied_flags",
     STEPS({.edits = {CALL(add_snapshot), SET_L1(0, CL_L2, 0, COPIED)},
            .problems = {N(L1_COPIED_WRONG, 1)},
            .only = true},
           {.edits = {SET_L1(0, CL_L2, 0, 0), OR_L2(1, COPIED)},
            .problems = {N(L2_COPIED_WRONG, 1)},
            .only = true})},
    {"snapshots", "snapshot_refcounts_too_low",
     STEPS({.edits = {CALL(add_snapshot), SET_REFCOUNT(CL_L2, 1), SET_REFCOUNT(CL_DATA, 1)},
            .problems = {N(REFCOUNT_TOO_LOW, 2)},
            .only = true})},
    /* The references the snapshot held are not leaks: it was not followed.
     * (L2 table and two data clusters at refcount 2 with one reference, the
     * snapshot's own L1 cluster at refcount 1 with none.) */
    {"snapshots", "snapshot_l1_past_eof",
     STEPS({.edits = {CALL(add_snapshot), PUT_BE64(SNAP_TABLE, 0, CLUSTER_999)},
            .problems = {N(SNAPSHOT_L1_PAST_EOF, 1), N(REFCOUNT_ORPHAN, 4), N(REFCOUNT_LEAK, 0)},
            .counters = {[LEAKS] = EQ(0)},
            .status = EQ(2)})},
    /* The COPIED flags of the active tables cannot be judged "clear but
     * should be set" when a snapshot that probably shares those tables was
     * not followed: setting COPIED there would let QEMU overwrite the
     * snapshot's data in place. pass_compare.c already holds back for L2
     * entries; the same has to hold for L1 entries. */
    {"snapshots", "l1_copied_not_judged_with_unfollowed_snapshot",
     STEPS(
         {.edits = {CALL(add_snapshot), PUT_BE64(SNAP_TABLE, 0, CLUSTER_999)},
          .problems = {N(SNAPSHOT_L1_PAST_EOF, 1), N(L2_COPIED_WRONG, 0), N(L1_COPIED_WRONG, 0)}})},
    {"snapshots", "snapshot_extra_too_small_v3",
     STEPS({.edits = {CALL(add_snapshot_extra_8)},
            .problems = {N(SNAPSHOT_EXTRA_TOO_SMALL, 1)},
            .only = true})},
    /* Version 2 has no such minimum. */
    {"snapshots", "snapshot_no_extra_v2", PARAMS(.version = 2),
     STEPS({.edits = {CALL(add_snapshot_no_extra)}, .counters = {[FINDINGS] = EQ(0)}})},
    /* More snapshots claimed than the rest of the file can hold; then the
     * table offset not aligned, and past the end of the file. */
    {"snapshots", "snapshot_table_problems",
     STEPS({.edits = {CALL(add_snapshot), SET_HEADER(nb_snapshots, 100000)},
            .problems = {SOME(TOO_MANY_SNAPSHOTS)},
            .status = EQ(2)},
           {.edits = {CALL(snapshot_table_unaligned)},
            .problems = {N(SNAPSHOT_TABLE_UNALIGNED, 1)},
            .counters = {[LEAKS] = EQ(0)}},
           {.edits = {CALL(snapshot_table_past_eof)},
            .problems = {N(SNAPSHOT_TABLE_PAST_EOF, 1)},
            .counters = {[LEAKS] = EQ(0)}})},
    {"snapshots", "snapshot_duplicate_ids",
     STEPS({.edits = {CALL(add_snapshot), CALL(duplicate_snapshot)},
            .problems = {N(SNAPSHOT_ID_DUPLICATE, 1)}})},

    /* ---- header extensions and backing files ---- */
    /* A backing file with its format; then a format QEMU has no driver for:
     * it cannot open the backing file. QEMU uses the last of two
     * extensions; with no backing file the format is not used at all. An
     * empty backing format is none to QEMU (it probes the backing file):
     * the same warning as no extension at all. A name inside the header:
     * QEMU's extension area ends where the name starts, so no extension is
     * read (here an unknown one), and the name is the header's bytes. At 64
     * (snapshots_offset, 0) it is empty: no backing file, a warning; at 1
     * it reads "FI\xfb": QEMU opens a backing file of that name. Last, a
     * name running out of cluster 0. */
    {"extensions", "backing_file",
     STEPS(
         {.edits = {CALL(add_backing_file)},
          .counters = {[FINDINGS] = EQ(0)},
          .header = {[H_HAS_BACKING_FILE] = EQ(1)}},
         {.edits = {PUT_BYTES(0, 120, "qcow9")},
          .problems = {N(BACKING_FORMAT_UNKNOWN, 1)},
          .status = EQ(2)},
         {.edits = {CALL(second_backing_format_raw)}, .problems = {N(BACKING_FORMAT_UNKNOWN, 0)}},
         /* QEMU reads the name as a C string: no backing file */
         {.edits = {ZERO_BYTES(0, 128, 16), ZERO_BYTES(0, 0x200, 1)},
          .problems = {N(BACKING_FORMAT_UNKNOWN, 0)}},
         {.edits = {PUT_BYTES(0, 120, "qcow2"), PUT_BYTES(0, 0x200, "b"), ZERO_BYTES(0, 112, 16),
                    CALL(empty_backing_format)},
          .problems = {N(BACKING_FORMAT_MISSING, 1)},
          .only = true,
          .status = EQ(0)},
         {.edits = {ZERO_BYTES(0, 112, 16)},
          .problems = {N(BACKING_FORMAT_MISSING, 1)},
          .only = true,
          .status = EQ(0)},
         {.edits = {CALL(unknown_extension_x), SET_HEADER(backing_file_offset, 64)},
          .problems = {N(BACKING_NAME_IN_HEADER, 1)},
          .only = true,
          .status = EQ(0)},
         {.edits = {SET_HEADER(backing_file_offset, 1)},
          .problems = {N(BACKING_NAME_OVERLAPS_EXTENSIONS, 1), N(BACKING_FORMAT_MISSING, 1),
                       N(EXTENSION_UNKNOWN, 0)},
          .status = EQ(2)},
         {.edits = {CALL(backing_name_at_cluster_end)}, .problems = {N(BACKING_NAME_INVALID, 1)}})},
    /* An unknown extension; non-zero padding after it; the same backing
     * format twice; the end marker's length reaching the end of cluster 0
     * and going past it; an extension claiming more than cluster 0 has left. */
    {"extensions", "extensions",
     STEPS(
         {.edits = {CALL(unknown_extension_abc)},
          .problems = {N(EXTENSION_UNKNOWN, 1)},
          .only = true,
          .status = EQ(0)},
         {.edits = {PUT_BYTES(0, 112 + 8 + 3, "\x99")},
          .problems = {N(EXTENSION_PADDING_NONZERO, 1)}},
         {.edits = {ZERO_BYTES(0, 112 + 8 + 3, 1), CALL(backing_format_twice)},
          .problems = {N(EXTENSION_DUPLICATE, 1)}},
         {.edits = {CALL(end_marker_reaches_cluster_end)}, .problems = {N(EXTENSION_TRUNCATED, 0)}},
         {.edits = {CALL(end_marker_past_cluster_end)},
          .problems = {N(EXTENSION_TRUNCATED, 1)},
          .status = EQ(2)},
         {.edits = {PUT_BE32(0, END_MARKER + 4, 0), CALL(first_extension_claims_cluster)},
          .problems = {N(EXTENSION_TRUNCATED, 1)},
          .status = EQ(2)})},
    {"extensions", "feature_table_names_unknown_bit",
     STEPS({.edits = {CALL(feature_table_names_bit_7), OR_HEADER(incompatible_features, 1ull << 7)},
            .problems = {N(UNKNOWN_INCOMPAT_FEATURE, 1)},
            .messages = {{QC_P_UNKNOWN_INCOMPAT_FEATURE, "frobnicated"}},
            .status = EQ(1)})},
    {"extensions", "dirty_and_corrupt_bits",
     STEPS({.edits = {OR_HEADER(incompatible_features, QC_INCOMPAT_DIRTY | QC_INCOMPAT_CORRUPT)},
            .problems = {N(DIRTY_BIT_SET, 1), N(CORRUPT_BIT_SET, 1)},
            .only = true,
            .header = {[H_DIRTY] = EQ(1), [H_CORRUPT] = EQ(1)},
            .status = EQ(0)})},
    /* zstd without incompatible bit 3; with it; an unknown type. */
    {"extensions", "compression_type",
     STEPS({.edits = {SET_HEADER(compression_type, 1)},
            .problems = {N(COMPRESSION_BIT_MISMATCH, 1)},
            .only = true},
           {.edits = {OR_HEADER(incompatible_features, QC_INCOMPAT_COMPRESSION)},
            .counters = {[FINDINGS] = EQ(0)},
            .header = {[H_COMPRESSION_TYPE] = EQ(1)}},
           {.edits = {SET_HEADER(compression_type, 2)},
            .problems = {N(COMPRESSION_TYPE_INVALID, 1)}})},
    {"extensions", "extended_l2_small_clusters", PARAMS(.cluster_bits = 12, .extended_l2 = true),
     STEPS({.problems = {N(EXTENDED_L2_CLUSTER_TOO_SMALL, 1)}, .status = EQ(2)})},
    {"extensions", "luks_header", .run = luks_header_fields},
    {"extensions", "luks_header_length", .run = luks_header_length},

    /* ---- persistent bitmaps ---- */
    {"bitmaps", "bitmap_clean",
     STEPS({.edits = {CALL(add_bitmap)},
            .counters = {[FINDINGS] = EQ(0), [IMAGE_END_OFFSET] = FILE_SIZE},
            .header = {[H_HAS_BITMAPS] = EQ(1)}})},
    /* The data cluster it most likely meant is not called leaked. */
    {"bitmaps", "bitmap_table_entry_invalid",
     STEPS({.edits = {CALL(add_bitmap), CALL(bitmap_table_entry_reserved_bit)},
            .problems = {N(BITMAP_TABLE_ENTRY_INVALID, 1), N(REFCOUNT_ORPHAN, 1)},
            .only = true,
            .counters = {[LEAKS] = EQ(0)}})},
    {"bitmaps", "bitmap_all_ones_entry_leaks_old_cluster",
     STEPS({.edits = {CALL(add_bitmap), PUT_BE64(BITMAP_TABLE, 0, QC_BITMAP_TABLE_ALL_ONES)},
            .problems = {N(REFCOUNT_LEAK, 1)},
            .only = true,
            .status = EQ(3)})},
    /* QEMU drops the extension: directory, table and data are leaked. */
    {"bitmaps", "bitmaps_without_autoclear",
     STEPS({.edits = {CALL(add_bitmap), CLEAR_HEADER(autoclear_features, QC_AUTOCLEAR_BITMAPS)},
            .problems = {N(BITMAPS_WITHOUT_AUTOCLEAR, 1), N(REFCOUNT_LEAK, 3)},
            .only = true,
            .status = EQ(3)})},
    /* The table too small for the disk; the extension announcing two
     * bitmaps; a bad extension (reserved field). */
    {"bitmaps", "bitmap_directory_problems",
     STEPS({.edits = {CALL(add_bitmap), PUT_BE32(BITMAP_DIR, 8, 0)},
            .problems = {N(BITMAP_ENTRY_INVALID, 1)},
            .counters = {[LEAKS] = EQ(0)}},
           {.edits = {PUT_BE32(BITMAP_DIR, 8, 1), PUT_BE32(0, 112 + 8, 2)},
            .problems = {N(BITMAP_DIRECTORY_INVALID, 1)}},
           {.edits = {PUT_BE32(0, 112 + 8, 1), PUT_BE32(0, 112 + 12, 1)},
            .problems = {N(BITMAPS_EXTENSION_INVALID, 1)},
            .counters = {[LEAKS] = EQ(0)}})},
    {"bitmaps", "bitmap_qemu_refusals", .run = bitmap_qemu_refusals},

    /* ---- external data file ---- */
    {"data_file", "data_file_clean", PARAMS(.data_clusters = 0),
     STEPS({.edits = {CALL(make_data_file)},
            .counters = {[FINDINGS] = EQ(0), [ALLOCATED_CLUSTERS] = EQ(3)},
            .header = {[H_EXTERNAL_DATA_FILE] = EQ(1)}})},
    /* Host offset != guest offset; COPIED missing; compressed; a name QEMU
     * reads as empty (it starts with a NUL byte): as good as none; no name
     * for the data file. */
    {"data_file", "data_file_problems", PARAMS(.data_clusters = 0),
     STEPS({.edits = {CALL(make_data_file), SET_L2(1, 2, 0, COPIED)},
            .problems = {N(DATA_FILE_OFFSET_MISMATCH, 1)},
            .only = true},
           {.edits = {SET_L2(1, 1, 0, 0)},
            .problems = {N(DATA_FILE_COPIED_MISSING, 1)},
            .only = true,
            .status = EQ(0)},
           {.edits = {SET_COMPRESSED(1, 1, 0, 0)},
            .problems = {N(COMPRESSED_WITH_DATA_FILE, 1)},
            .status = EQ(2)},
           {.edits = {SET_L2(1, 1, 0, COPIED), ZERO_BYTES(0, 112 + 8, 1)},
            .problems = {N(DATA_FILE_NAME_MISSING, 1)},
            .only = true},
           {.edits = {ZERO_BYTES(0, 112, 16)},
            .problems = {N(DATA_FILE_NAME_MISSING, 1)},
            .only = true})},
    {"data_file", "raw_data_file_bit_without_data_file",
     STEPS({.edits = {OR_HEADER(autoclear_features, QC_AUTOCLEAR_DATA_FILE_RAW)},
            .problems = {N(RAW_DATA_FILE_INVALID, 1)},
            .only = true})},

    /* ---- memory limit (the sweeps are in check_memory_sweeps.c) ---- */
    {"limits", "memory_limit_small", PARAMS(.data_clusters = 8),
     STEPS({.max_mem = 4096,
            .problems = {SOME(MEMORY_LIMIT)},
            .status = EQ(1),
            .counters = {[CHECK_ERRORS] = GE(1), [CORRUPTIONS] = EQ(0), [LEAKS] = EQ(0)}})},
};

/* ---- the runner ------------------------------------------------------------------ */

/* A qc_header field of 1, 4 or 8 bytes, by its offset in the struct. */
static uint64_t header_field_get(const qc_header *h, size_t offset, size_t size)
{
    const uint8_t *f = (const uint8_t *)h + offset;
    uint8_t v8;
    uint32_t v32;
    uint64_t v64;
    switch (size) {
    case 1: memcpy(&v8, f, 1); return v8;
    case 4: memcpy(&v32, f, 4); return v32;
    default:
        REQUIRE(size == 8, "header field of %zu bytes", size);
        memcpy(&v64, f, 8);
        return v64;
    }
}

static void header_field_set(qc_header *h, size_t offset, size_t size, uint64_t value)
{
    uint8_t *f = (uint8_t *)h + offset;
    uint8_t v8 = (uint8_t)value;
    uint32_t v32 = (uint32_t)value;
    switch (size) {
    case 1: memcpy(f, &v8, 1); break;
    case 4: memcpy(f, &v32, 4); break;
    default: REQUIRE(size == 8, "header field of %zu bytes", size); memcpy(f, &value, 8);
    }
}

static void apply_edit(img *im, const edit *e)
{
    uint64_t at = cl_off(im, e->cluster) + (uint64_t)e->plus;
    uint64_t old;
    switch (e->op) {
    case ED_END: break;
    case ED_L1: img_set_l1(im, e->index, at | e->value); break;
    case ED_L1_OR: img_set_l1(im, e->index, img_get_l1(im, e->index) | e->value); break;
    case ED_L2: img_set_l2(im, e->index, at | e->value); break;
    case ED_L2_OR: img_set_l2(im, e->index, img_get_l2(im, e->index) | e->value); break;
    case ED_L2_BITMAP: img_set_l2_bitmap(im, e->index, e->value); break;
    case ED_COMPRESSED:
        img_set_l2(im, e->index, qc_compressed_encode(&im->g, at, (unsigned)e->value));
        break;
    case ED_REFCOUNT: img_set_refcount(im, e->cluster, e->value); break;
    case ED_REFTABLE:
        qc_put_be64(im->buf + cl_off(im, CL_REFTABLE) + 8 * (uint64_t)e->index, at | e->value);
        break;
    case ED_HEADER:
    case ED_HEADER_OR:
    case ED_HEADER_CLEAR:
        old = header_field_get(&im->hdr, e->field, e->size);
        header_field_set(&im->hdr, e->field, e->size,
                         e->op == ED_HEADER      ? e->value
                         : e->op == ED_HEADER_OR ? old | e->value
                                                 : old & ~e->value);
        img_write_header(im);
        break;
    case ED_BE32: qc_put_be32(im->buf + at, (uint32_t)e->value); break;
    case ED_BE64: qc_put_be64(im->buf + at, e->value); break;
    case ED_BYTES: memcpy(im->buf + at, e->bytes, e->size); break;
    case ED_ZERO: memset(im->buf + at, 0, e->size); break;
    case ED_CALL: e->call(im); break;
    }
}

static uint64_t header_value(const qc_result *r, header_field f)
{
    const qc_header_info *h = header_info(r);
    switch (f) {
    case H_VALID: return header_valid(r);
    case H_OTHER_FORMAT: return other_format(r) != NULL;
    case H_VERSION: return h->version;
    case H_REFCOUNT_BITS: return h->refcount_bits;
    case H_EXTENDED_L2: return h->extended_l2;
    case H_NB_SNAPSHOTS: return h->nb_snapshots;
    case H_HAS_BACKING_FILE: return h->has_backing_file;
    case H_HAS_BITMAPS: return h->has_bitmaps;
    case H_EXTERNAL_DATA_FILE: return h->external_data_file;
    case H_DIRTY: return h->dirty;
    case H_CORRUPT: return h->corrupt;
    case H_COMPRESSION_TYPE: return h->compression_type;
    case H_UNKNOWN_INCOMPATIBLE: return h->unknown_incompatible;
    case H_UNKNOWN_COMPATIBLE: return h->unknown_compatible;
    case H_UNKNOWN_AUTOCLEAR: return h->unknown_autoclear;
    case HEADER_FIELDS: break;
    }
    return UINT64_MAX;
}

static void expect(const char *where, const char *what, want w, uint64_t got, const img *im,
                   const outcome *o)
{
    switch (w.kind) {
    case WANT_NONE:
    case WANT_MAY: return;
    case WANT_EQ:
        ck_assert_msg(got == w.n, "%s: %s is %llu, expected %llu;%s", where, what,
                      (unsigned long long)got, (unsigned long long)w.n, describe(o));
        return;
    case WANT_GE:
        ck_assert_msg(got >= w.n, "%s: %s is %llu, expected at least %llu;%s", where, what,
                      (unsigned long long)got, (unsigned long long)w.n, describe(o));
        return;
    case WANT_SOME:
        ck_assert_msg(got > 0, "%s: %s not reported;%s", where, what, describe(o));
        return;
    case WANT_FILE_SIZE:
        ck_assert_msg(got == im->len, "%s: %s is %llu, the file is %zu bytes", where, what,
                      (unsigned long long)got, im->len);
        return;
    }
}

static void check_step(const char *where, const step *s, const img *im, const outcome *o)
{
    static const char *const header_names[HEADER_FIELDS] = {
        "header_valid",
        "other_format",
        "version",
        "refcount_bits",
        "extended_l2",
        "nb_snapshots",
        "has_backing_file",
        "has_bitmaps",
        "external_data_file",
        "dirty",
        "corrupt",
        "compression_type",
        "unknown_incompatible",
        "unknown_compatible",
        "unknown_autoclear",
    };
    if (s->clean)
        assert_clean(im, o);
    expect(where, "exit status", s->status, (uint64_t)o->status, im, o);
    for (unsigned c = 0; c < COUNTERS; c++)
        expect(where, counter_name((counter)c), s->counters[c], counter_of(o->res, (counter)c), im,
               o);
    for (unsigned f = 0; f < HEADER_FIELDS; f++)
        expect(where, header_names[f], s->header[f], header_value(o->res, (header_field)f), im, o);
    for (unsigned i = 0; i < PROBLEM_ROWS; i++) {
        uint64_t n = n_of(o, qc_problem_at(i)->code);
        const char *id = qc_problem_at(i)->id;
        expect(where, id, s->problems[i], n, im, o);
        if (s->only && s->problems[i].kind == WANT_NONE)
            ck_assert_msg(n == 0, "%s: unexpected %s;%s", where, id, describe(o));
    }
    for (unsigned k = 0; k < MAX_MESSAGES && s->messages[k].text; k++) {
        const char *msg = o->rec.first_message[problem_row(s->messages[k].id)];
        ck_assert_msg(strstr(msg, s->messages[k].text), "%s: \"%s\" not in \"%s\"", where,
                      s->messages[k].text, msg);
    }
    if (s->check)
        s->check(im, o);
}

static void run_variant(const check_case *c, int variant)
{
    img_params p = c->params.cluster_bits ? c->params : default_params();
    if (c->vary == VARY_CLUSTER_BITS)
        p.cluster_bits = (unsigned)variant;
    else if (c->vary == VARY_REFCOUNT_ORDER)
        p.refcount_order = (unsigned)variant;
    img im;
    img_build(&im, &p);
    outcome o = {0};
    for (size_t k = 0; k < c->n_steps; k++) {
        const step *s = &c->steps[k];
        char where[160];
        if (c->vary == VARY_NONE)
            snprintf(where, sizeof(where), "%s, step %zu", c->name, k + 1);
        else
            snprintf(where, sizeof(where), "%s (%s %d), step %zu", c->name,
                     c->vary == VARY_CLUSTER_BITS ? "cluster_bits" : "refcount_order", variant,
                     k + 1);
        if (s->fresh) {
            img_free(&im);
            img_build(&im, &p);
        }
        for (size_t e = 0; e < MAX_EDITS && s->edits[e].op != ED_END; e++)
            apply_edit(&im, &s->edits[e]);
        run_check_opts(im.buf, im.len, s->max_mem, &o);
        check_step(where, s, &im, &o);
    }
    outcome_release(&o);
    img_free(&im);
}

START_TEST(test_case)
{
    const check_case *c = &CASES[_i];
    if (c->run) {
        c->run();
        return;
    }
    ck_assert_msg(c->n_steps > 0, "%s has nothing to do", c->name);
    if (c->vary == VARY_NONE)
        run_variant(c, 0);
    else
        for (int v = c->from; v < c->to; v++)
            run_variant(c, v);
}
END_TEST

Suite *unit_suite(void)
{
    static const char *const areas[] = {
        "clean",     "refcounts",  "mapping", "overlap",   "header", "compressed", "tables",
        "snapshots", "extensions", "bitmaps", "data_file", "limits", "repair"};
    const int n_cases = (int)(sizeof(CASES) / sizeof(CASES[0]));
    Suite *s = suite_create("check_memory");
    int next = 0;
    for (size_t a = 0; a < sizeof(areas) / sizeof(areas[0]); a++) {
        TCase *tc = tcase_create(areas[a]);
        tcase_set_timeout(tc, 120);
        int first = next;
        while (next < n_cases && strcmp(CASES[next].area, areas[a]) == 0)
            next++;
        if (next > first)
            tcase_add_loop_test(tc, test_case, first, next);
        if (strcmp(areas[a], "limits") == 0)
            add_sweep_tests(tc);
        else if (strcmp(areas[a], "repair") == 0)
            add_repair_tests(tc);
        else if (strcmp(areas[a], "compressed") == 0)
            add_deep_tests(tc);
        suite_add_tcase(s, tc);
    }
    /* Rows of one area are together, in the order of `areas`. */
    if (next != n_cases) {
        fprintf(stderr, "case %s: area %s out of order\n", CASES[next].name, CASES[next].area);
        abort();
    }
    return s;
}
