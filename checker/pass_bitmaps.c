/*
 * Persistent dirty bitmaps (docs/passes.md §3.4; codes 4xx).
 *
 * Checks: the bitmap directory (inside the file, entries exactly filling
 * it, their number matching the extension), each entry (table offset and
 * size, flags, type, granularity, name, extra data, table large enough for
 * the virtual size), what QEMU refuses to load although the specification
 * allows it (granularity outside 9..31, extra data and its flag, more than
 * 512 MiB of table clusters, a clean bitmap's table not exactly the size
 * QEMU computes), duplicate names (compared as QEMU does, up to a NUL), and
 * every bitmap table entry (reserved bits, alignment, inside the file). A
 * broken bitmap is reported and skipped, one QEMU refuses is reported and
 * followed; everything else is still checked. With --deep, the bits past
 * the end of the disk in the last data cluster of each bitmap not in use
 * (the tail the specification requires to be zero; an in-use bitmap's
 * content means nothing) are read.
 * Needs: the header pass (bitmaps_ext_valid, bitmaps_ext).
 * Produces: bitmap directory, table and data extents (and their
 * references).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

typedef struct name_key {
    const uint8_t *name;
    uint16_t len;
    uint32_t index;
} name_key;

static int name_cmp(const void *a, const void *b)
{
    const name_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Table entries QEMU needs for a bitmap of 2^granularity_bits (at most
 * 31) covering the disk: it sizes bitmaps to the virtual size rounded
 * down to whole sectors, serialised in 64-bit words. */
static uint64_t qemu_table_entries(const qc_ctx *ctx, unsigned granularity_bits)
{
    uint64_t words = qc_div_round_up(ctx->hdr.size & ~511ull, 64ull << granularity_bits);
    return qc_div_round_up(words * 8, ctx->geo.cluster_size);
}

/* Why an entry is unusable: false when it is not, else true with the
 * variant of bitmapEntryInvalid's message and its facts in fc. */
static bool entry_defect(const qc_ctx *ctx, const qc_bitmap_entry *e, qc_finding_ctx *fc)
{
    enum { SIZE, OFFSET, PAST_EOF, FLAGS, TYPE, GRANULARITY, NAME_SIZE, EXTRA_DATA, TOO_SMALL };
    if (e->table_size == 0 || e->table_size > QC_MAX_BITMAP_TABLE_ENTRIES)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED, .variant = SIZE,
                               .value = e->table_size, .expected = QC_MAX_BITMAP_TABLE_ENTRIES};
    else if (e->table_offset == 0 || !qc_cluster_aligned(&ctx->view, e->table_offset))
        *fc = (qc_finding_ctx){.present = QC_CTX_HOST_OFFSET, .variant = OFFSET,
                               .host_offset = e->table_offset};
    else if (!qc_range_within(e->table_offset, (uint64_t)e->table_size * 8, ctx->file_size))
        *fc = (qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_VALUE, .variant = PAST_EOF,
                               .host_offset = e->table_offset, .value = e->table_size};
    else if (e->flags & ~7u)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE, .variant = FLAGS, .value = e->flags & ~7u};
    else if (e->type != 1)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE, .variant = TYPE, .value = e->type};
    else if (e->granularity_bits > 63)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE, .variant = GRANULARITY,
                               .value = e->granularity_bits};
    else if (e->name_size == 0 || e->name_size > QC_MAX_BITMAP_NAME)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED, .variant = NAME_SIZE,
                               .value = e->name_size, .expected = QC_MAX_BITMAP_NAME};
    else if (e->extra_data_size && !(e->flags & QC_BITMAP_FLAG_EXTRA_DATA_COMPATIBLE))
        *fc = (qc_finding_ctx){.present = QC_CTX_SIZE, .variant = EXTRA_DATA,
                               .size = e->extra_data_size};
    else if (!(e->flags & QC_BITMAP_FLAG_IN_USE) && e->granularity_bits <= 31 &&
             e->table_size < qemu_table_entries(ctx, e->granularity_bits))
        /* A bitmap saved cleanly must cover the whole disk. */
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED, .variant = TOO_SMALL,
                               .value = e->table_size,
                               .expected = qemu_table_entries(ctx, e->granularity_bits)};
    else
        return false;
    return true;
}

/* What the specification allows in a valid entry but QEMU refuses to
 * load: false when nothing, else true with the variant of
 * bitmapUnsupportedByQemu's message (which gives QEMU's) and its facts. */
static bool qemu_refusal(const qc_ctx *ctx, const qc_bitmap_entry *e, qc_finding_ctx *fc)
{
    enum { EXTRA_DATA, GRANULARITY, EXTRA_DATA_FLAG, TOO_MUCH_DATA, TABLE_SIZE };
    if (e->extra_data_size)
        *fc = (qc_finding_ctx){.present = QC_CTX_SIZE, .variant = EXTRA_DATA,
                               .size = e->extra_data_size};
    else if (e->granularity_bits < 9 || e->granularity_bits > 31)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE, .variant = GRANULARITY,
                               .value = e->granularity_bits};
    else if (e->flags & QC_BITMAP_FLAG_EXTRA_DATA_COMPATIBLE)
        *fc = (qc_finding_ctx){.variant = EXTRA_DATA_FLAG};
    else if ((uint64_t)e->table_size * ctx->geo.cluster_size > QC_MAX_BITMAP_TABLE_CLUSTER_BYTES)
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_SIZE, .variant = TOO_MUCH_DATA,
                               .value = e->table_size, .size = ctx->geo.cluster_size};
    else if (!(e->flags & QC_BITMAP_FLAG_IN_USE) &&
             e->table_size != qemu_table_entries(ctx, e->granularity_bits))
        *fc = (qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED, .variant = TABLE_SIZE,
                               .value = e->table_size,
                               .expected = qemu_table_entries(ctx, e->granularity_bits)};
    else
        return false;
    return true;
}

/* The bits of a bitmap of 2^granularity_bits (at most 63): one per
 * granule of the disk as QEMU sizes it (whole sectors). */
static uint64_t bitmap_bits(const qc_ctx *ctx, unsigned granularity_bits)
{
    return qc_div_round_up(ctx->hdr.size & ~511ull, 1ull << granularity_bits);
}

/* With --deep: the bits of the data cluster at `data` (entry `last` of the
 * table, the last holding bits of the bitmap) past its last bit must be
 * zero. */
static void check_tail_bits(qc_ctx *ctx, uint32_t index, const char *name, const char *obj,
                            uint64_t last, uint64_t data, uint64_t bits)
{
    uint64_t cluster_bits = ctx->geo.cluster_size * 8;
    uint64_t first_unused = bits - last * cluster_bits; /* within the cluster */
    if (first_unused == cluster_bits)
        return; /* the bitmap ends with the cluster */
    uint8_t *buf = qc_alloc(ctx, ctx->geo.cluster_size, "bitmap data cluster");
    if (!buf || !qc_read(ctx, data, buf, ctx->geo.cluster_size, obj)) {
        qc_free(ctx, buf, ctx->geo.cluster_size);
        return;
    }
    /* Bit k of the bitmap is bit k % 8 of byte k / 8. */
    uint64_t set = 0, first_set = 0;
    for (uint64_t byte = first_unused / 8; byte < ctx->geo.cluster_size; byte++) {
        unsigned v = buf[byte];
        if (byte == first_unused / 8)
            v &= 0xffu << (first_unused % 8);
        if (v && !set)
            first_set = byte;
        set += (uint64_t)__builtin_popcount(v);
    }
    qc_free(ctx, buf, ctx->geo.cluster_size);
    if (set)
        qc_report(ctx, QC_P_BITMAP_TAIL_BITS_SET, obj, data + first_set, 1,
                  &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_NAME | QC_CTX_HOST_OFFSET |
                                               QC_CTX_VALUE | QC_CTX_EXPECTED,
                                    .index = index,
                                    .name = name,
                                    .host_offset = data,
                                    .value = set,
                                    .expected = cluster_bits - first_unused});
}

static void check_table(qc_ctx *ctx, uint32_t index, const qc_bitmap_entry *e, const char *name,
                        const char *obj)
{
    /* The entry of the cluster holding the bitmap's last bit, and that
     * cluster, when --deep reads its tail. */
    bool tail = ctx->options.deep && !(e->flags & QC_BITMAP_FLAG_IN_USE);
    uint64_t bits = tail ? bitmap_bits(ctx, e->granularity_bits) : 0;
    uint64_t last = bits ? (bits - 1) / (ctx->geo.cluster_size * 8) : UINT64_MAX, last_data = 0;
    uint64_t bytes = (uint64_t)e->table_size * 8;
    if (!qc_add_extent(ctx, QC_OWN_BITMAP_TABLE, index, 0, e->table_offset, bytes, 1))
        return;
    uint8_t *table = qc_alloc(ctx, bytes, "bitmap table");
    if (!table || !qc_read(ctx, e->table_offset, table, bytes, obj)) {
        qc_free(ctx, table, bytes);
        return;
    }
    for (uint32_t j = 0; j < e->table_size; j++) {
        uint64_t v = qc_be64(table + (uint64_t)j * 8);
        uint64_t off = v & QC_BITMAP_TABLE_OFFSET_MASK;
        enum { RESERVED = 1, ALL_ONES, UNALIGNED, PAST_EOF } why = 0;
        if (v & QC_BITMAP_TABLE_RESERVED_MASK)
            why = RESERVED;
        else if (off && (v & QC_BITMAP_TABLE_ALL_ONES))
            why = ALL_ONES;
        else if (off && !qc_cluster_aligned(&ctx->view, off))
            why = UNALIGNED;
        else if (off && !qc_range_within(off, ctx->geo.cluster_size, ctx->file_size))
            why = PAST_EOF;
        if (why) {
            qc_report(ctx, QC_P_BITMAP_TABLE_ENTRY_INVALID, obj, e->table_offset + (uint64_t)j * 8, 1,
                      &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_ENTRY | QC_CTX_HOST_OFFSET,
                                        .variant = why - 1,
                                        .index = j,
                                        .entry = v,
                                        .host_offset = off});
            if (off)
                qc_unfollowed_bitmap_leaf(ctx, off);
        } else if (off) {
            qc_add_extent(ctx, QC_OWN_BITMAP_DATA, index, j, off, ctx->geo.cluster_size, 1);
            if (j == last)
                last_data = off;
        }
    }
    qc_free(ctx, table, bytes);
    /* An unallocated last cluster reads as all zeros (or all ones, a
     * shorthand the specification gives whole clusters): no bits to read. */
    if (last_data)
        check_tail_bits(ctx, index, name, obj, last, last_data, bits);
}

void qc_pass_bitmaps(qc_ctx *ctx)
{
    if (!ctx->bitmaps_ext_valid)
        return;
    const qc_bitmaps_ext *x = &ctx->bitmaps_ext;
    qc_add_extent(ctx, QC_OWN_BITMAP_DIRECTORY, 0, 0, x->directory_offset, x->directory_size, 1);
    uint8_t *dir = qc_alloc(ctx, x->directory_size, "bitmap directory");
    name_key *names = qc_alloc(ctx, (uint64_t)x->nb_bitmaps * sizeof(name_key), "bitmap names");
    if (!dir || !names || !qc_read(ctx, x->directory_offset, dir, x->directory_size, "bitmap directory"))
        goto out;
    qc_cursor c = qc_cursor_make(dir, x->directory_size);
    uint32_t n = 0;
    while (qc_cursor_remaining(&c) > 0 && n < x->nb_bitmaps) {
        qc_bitmap_entry e;
        uint64_t at = x->directory_offset + c.pos;
        if (!qc_bitmap_entry_decode(&c, &e)) {
            qc_report(ctx, QC_P_BITMAP_DIRECTORY_INVALID, "bitmap directory", at, 1,
                      &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_SIZE,
                                        .index = n,
                                        .size = x->directory_size});
            ctx->unfollowed++;
            ctx->unfollowed_bitmaps++;
            break;
        }
        char obj[1200], name[1100];
        qc_printable(name, sizeof(name), e.name, e.name_size);
        snprintf(obj, sizeof(obj), "bitmap %u \"%s\"", n, name);
        /* QEMU reads a name as a C string: two names that differ only
         * after a NUL byte are the same bitmap to it. */
        const uint8_t *nul = memchr(e.name, 0, e.name_size);
        names[n] = (name_key){e.name, (uint16_t)(nul ? nul - e.name : e.name_size), n};
        if (e.flags & QC_BITMAP_FLAG_IN_USE)
            qc_report(ctx, QC_P_BITMAP_IN_USE, obj, at, 1,
                      &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_NAME, .index = n,
                                        .name = name});
        qc_finding_ctx fc;
        if (entry_defect(ctx, &e, &fc)) {
            fc.present |= QC_CTX_INDEX | QC_CTX_NAME;
            fc.index = n;
            fc.name = name;
            qc_report(ctx, QC_P_BITMAP_ENTRY_INVALID, obj, at, 1, &fc);
            ctx->unfollowed++;
            ctx->unfollowed_bitmaps++;
            if (e.table_offset && qc_cluster_aligned(&ctx->view, e.table_offset))
                qc_note_past_eof(ctx, e.table_offset, (uint64_t)e.table_size * 8);
        } else {
            if (qemu_refusal(ctx, &e, &fc)) {
                fc.present |= QC_CTX_INDEX | QC_CTX_NAME;
                fc.index = n;
                fc.name = name;
                qc_report(ctx, QC_P_BITMAP_UNSUPPORTED_BY_QEMU, obj, at, 1, &fc);
            }
            check_table(ctx, n, &e, name, obj);
        }
        n++;
    }
    if (n != x->nb_bitmaps || qc_cursor_remaining(&c) != 0)
        qc_report(ctx, QC_P_BITMAP_DIRECTORY_INVALID, "bitmap directory", x->directory_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_EXPECTED | QC_CTX_SIZE | QC_CTX_INDEX |
                                               QC_CTX_VALUE,
                                    .variant = 1,
                                    .expected = x->nb_bitmaps,
                                    .size = x->directory_size,
                                    .index = n,
                                    .value = qc_cursor_remaining(&c)});
    qsort(names, n, sizeof(name_key), name_cmp);
    for (uint32_t i = 1; i < n; i++)
        if (names[i].len == names[i - 1].len && !memcmp(names[i].name, names[i - 1].name, names[i].len)) {
            char name[1100];
            qc_printable(name, sizeof(name), names[i].name, names[i].len);
            qc_report(ctx, QC_P_BITMAP_NAME_DUPLICATE, "bitmap directory", x->directory_offset, 1,
                      &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_INDEX | QC_CTX_NAME,
                                        .value = names[i - 1].index,
                                        .index = names[i].index,
                                        .name = name});
        }
out:
    qc_free(ctx, names, (uint64_t)x->nb_bitmaps * sizeof(name_key));
    qc_free(ctx, dir, x->directory_size);
}
