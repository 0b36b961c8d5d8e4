/* The in-memory image builder and check runner of memory_image.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memory_image.h"

img_params default_params(void)
{
    img_params p = {16, 4, 3, false, 2, 0};
    return p;
}

uint64_t cl_off(const img *im, uint64_t cluster)
{
    return cluster * im->cs;
}

void img_write_header(img *im)
{
    qc_header_encode(&im->hdr, im->buf);
}

void img_set_refcount(img *im, uint64_t cluster, uint64_t value)
{
    REQUIRE(cluster < im->g.refblock_entries, "cluster %llu has no refcount",
            (unsigned long long)cluster);
    qc_refblock_set(im->buf + cl_off(im, CL_REFBLOCK), im->g.refcount_bits, cluster, value);
}

uint64_t img_get_refcount(const img *im, uint64_t cluster)
{
    return qc_refblock_get(im->buf + cl_off(im, CL_REFBLOCK), im->g.refcount_bits, cluster);
}

void img_set_l1(img *im, unsigned index, uint64_t entry)
{
    REQUIRE((uint64_t)index * 8 < im->cs, "L1 index %u", index);
    qc_put_be64(im->buf + cl_off(im, CL_L1) + (uint64_t)index * 8, entry);
}

uint64_t img_get_l1(const img *im, unsigned index)
{
    return qc_be64(im->buf + cl_off(im, CL_L1) + (uint64_t)index * 8);
}

void img_set_l2(img *im, unsigned index, uint64_t entry)
{
    REQUIRE(index < im->g.l2_entries, "L2 index %u", index);
    qc_put_be64(im->buf + cl_off(im, CL_L2) + (uint64_t)index * im->g.l2_entry_size, entry);
}

uint64_t img_get_l2(const img *im, unsigned index)
{
    return qc_be64(im->buf + cl_off(im, CL_L2) + (uint64_t)index * im->g.l2_entry_size);
}

void img_set_l2_bitmap(img *im, unsigned index, uint64_t bitmap)
{
    REQUIRE(im->g.extended_l2, "not an extended L2 image");
    qc_put_be64(im->buf + cl_off(im, CL_L2) + (uint64_t)index * 16 + 8, bitmap);
}

uint64_t img_clusters(const img *im)
{
    return CL_DATA + im->p.data_clusters + im->p.spare_clusters;
}

void img_build(img *im, const img_params *p)
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

void img_free(img *im)
{
    free(im->buf);
    im->buf = NULL;
}

uint64_t img_append(img *im, unsigned n)
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
size_t img_add_extension(img *im, size_t at, uint32_t magic, const void *data, uint32_t len)
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
uint64_t img_add_shared_snapshot(img *im, unsigned extra, const char *id)
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

/* A LUKS-encrypted image as QEMU lays it out: crypt_method 2, the
 * encryption extension pointing to a LUKS header (aes-cbc-plain64 with
 * 16-byte keys: 128 sectors of key material per slot, slot 0 enabled) in
 * clusters appended for it. Returns the header's offset. */
uint64_t img_add_luks(img *im)
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

/* One clean persistent bitmap: directory, one-entry table, one data cluster. */
bitmap_layout img_add_bitmap(img *im)
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

void img_make_data_file(img *im)
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
    unsigned i = problem_row(f->problem->code);
    if (i >= PROBLEM_ROWS || qc_problem_at(i) != f->problem) {
        r->bad++;
        return;
    }
    if (!r->shown[i])
        snprintf(r->first_message[i], sizeof(r->first_message[i]), "%s: %s", f->object, f->message);
    r->shown[i]++;
    r->counted[i] += f->count;
}

/* Invariants every check must satisfy, whatever the image. */
static void assert_consistent(const outcome *o)
{
    REQUIRE(o->ret == 0, "qc_check returned %d", o->ret);
    REQUIRE(o->rec.bad == 0, "%u findings with NULL/unprintable strings or a bad problem",
            o->rec.bad);
    const qc_result *r = o->res;
    int st = o->status;
    REQUIRE(st == 0 || st == 1 || st == 2 || st == 3 || st == 63, "exit status %d", st);
    uint64_t errors = 0, corruption_findings = 0, leak_findings = 0;
    for (unsigned i = 0; i < PROBLEM_ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        /* What the callback saw adds up to the counters. */
        uint64_t n = problem_count(r, qc_problem_at(i)->code);
        REQUIRE(o->rec.counted[i] == n, "%s: callback counted %llu, result %llu", p->id,
                (unsigned long long)o->rec.counted[i], (unsigned long long)n);
        if (p->severity == QC_SEV_ERROR)
            errors += n;
        else if (p->severity == QC_SEV_CORRUPTION)
            corruption_findings += n;
        else if (p->severity == QC_SEV_LEAK)
            leak_findings += n;
    }
    REQUIRE(counter_of(r, CHECK_ERRORS) == errors, "check_errors %llu, error findings %llu",
            (unsigned long long)counter_of(r, CHECK_ERRORS), (unsigned long long)errors);
    REQUIRE(corruptions(r) == corruption_findings, "corruptions %llu, corruption findings %llu",
            (unsigned long long)corruptions(r), (unsigned long long)corruption_findings);
    REQUIRE(leaks(r) == leak_findings, "leaks %llu, leak findings %llu",
            (unsigned long long)leaks(r), (unsigned long long)leak_findings);
    if (other_format(r)) {
        REQUIRE(st == 63, "other format \"%s\" but exit %d", other_format(r), st);
        REQUIRE(counter_of(r, FINDINGS) == 0, "other format with %llu findings",
                (unsigned long long)counter_of(r, FINDINGS));
    } else {
        int want = counter_of(r, CHECK_ERRORS) ? 1 : corruptions(r) ? 2 : leaks(r) ? 3 : 0;
        REQUIRE(st == want, "exit %d, counters say %d", st, want);
    }
}

void run_check_opts(const void *buf, size_t len, uint64_t max_mem, outcome *o)
{
    outcome_release(o);
    memset(o, 0, sizeof(*o));
    o->res = result_new();
    REQUIRE(o->res != NULL, "out of memory");
    qc_io io;
    qc_io_open_memory(&io, buf, len);
    REQUIRE(io.read != NULL && io.size == len, "qc_io_open_memory failed");
    qc_options opts = options_default();
    opts.on_finding = record;
    opts.payload = &o->rec;
    opts.max_mem = max_mem;
    o->ret = qc_check(&io, &opts, o->res);
    o->status = qc_exit_status(o->res);
    qc_io_close(&io);
    assert_consistent(o);
}

void run_check(const img *im, outcome *o)
{
    run_check_opts(im->buf, im->len, 0, o);
}

void outcome_release(outcome *o)
{
    result_free(o->res);
    o->res = NULL;
}

uint64_t n_of(const outcome *o, qc_problem_id id)
{
    return problem_count(o->res, id);
}

/* Everything the check reported, for failure messages. */
const char *describe(const outcome *o)
{
    static char text[4096];
    size_t off = 0;
    text[0] = '\0';
    for (unsigned i = 0; i < PROBLEM_ROWS && off + 200 < sizeof(text); i++)
        if (n_of(o, qc_problem_at(i)->code))
            off += (size_t)snprintf(text + off, sizeof(text) - off, " [%s x%llu: %s]",
                                    qc_problem_at(i)->id,
                                    (unsigned long long)n_of(o, qc_problem_at(i)->code),
                                    o->rec.first_message[i]);
    return text;
}

void assert_clean(const img *im, const outcome *o)
{
    ck_assert_msg(counter_of(o->res, FINDINGS) == 0, "clean image has findings:%s", describe(o));
    ck_assert_uint_eq(o->rec.calls, 0);
    ck_assert_int_eq(o->status, 0);
    ck_assert_ptr_null(other_format(o->res));
    ck_assert(header_valid(o->res));
    ck_assert_uint_eq(counter_of(o->res, CORRUPTIONS), 0);
    ck_assert_uint_eq(counter_of(o->res, LEAKS), 0);
    ck_assert_uint_eq(counter_of(o->res, CHECK_ERRORS), 0);
    ck_assert_uint_eq(counter_of(o->res, WARNINGS), 0);
    ck_assert_uint_eq(counter_of(o->res, ALLOCATED_CLUSTERS), im->p.data_clusters);
    ck_assert_uint_eq(counter_of(o->res, TOTAL_CLUSTERS), im->g.l2_entries);
    ck_assert_uint_eq(counter_of(o->res, COMPRESSED_CLUSTERS), 0);
    ck_assert_uint_eq(counter_of(o->res, FRAGMENTED_CLUSTERS), 0);
    ck_assert_uint_eq(counter_of(o->res, IMAGE_END_OFFSET),
                      (CL_DATA + im->p.data_clusters) * im->cs);
    const qc_header_info *h = header_info(o->res);
    ck_assert_uint_eq(h->version, im->p.version);
    ck_assert_uint_eq(h->cluster_bits, im->p.cluster_bits);
    ck_assert_uint_eq(h->virtual_size, im->hdr.size);
    ck_assert_uint_eq(h->refcount_bits, im->g.refcount_bits);
    ck_assert(h->extended_l2 == im->p.extended_l2);
    ck_assert(!h->dirty && !h->corrupt && !h->external_data_file);
    ck_assert_uint_eq(h->nb_snapshots, 0);
    ck_assert(!h->has_backing_file && !h->has_bitmaps);
}

img_params small_params(void)
{
    img_params p = default_params();
    p.cluster_bits = 9;
    p.data_clusters = 3;
    return p;
}

void img_build_rich(img *im)
{
    img_params p = small_params();
    img_build(im, &p);
    img_add_shared_snapshot(im, 24, "1");
    img_add_bitmap(im);
}

/* A copy of the first len bytes in its own allocation, so that any read
 * past len is caught by AddressSanitizer. */
void check_prefix(const uint8_t *buf, size_t len, outcome *o)
{
    uint8_t *copy = malloc(len ? len : 1);
    REQUIRE(copy != NULL, "out of memory");
    if (len)
        memcpy(copy, buf, len);
    run_check_opts(copy, len, 0, o);
    free(copy);
}

uint64_t fuzz_next(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}
