/*
 * Pass 4: persistent dirty bitmaps.
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
 * followed; everything else is still checked.
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

/* Why an entry is unusable, or NULL. */
static const char *entry_defect(const qc_ctx *ctx, const qc_bitmap_entry *e, char *buf, size_t len)
{
    if (e->table_size == 0 || e->table_size > QC_MAX_BITMAP_TABLE_ENTRIES)
        snprintf(buf, len, "table size %u is outside 1..%u", e->table_size,
                 QC_MAX_BITMAP_TABLE_ENTRIES);
    else if (e->table_offset == 0 || !qc_cluster_aligned(ctx, e->table_offset))
        snprintf(buf, len, "table offset 0x%llx is not a cluster-aligned non-zero offset",
                 (unsigned long long)e->table_offset);
    else if (!qc_range_within(e->table_offset, (uint64_t)e->table_size * 8, ctx->file_size))
        snprintf(buf, len, "table at 0x%llx (%u entries) extends past the end of the file",
                 (unsigned long long)e->table_offset, e->table_size);
    else if (e->flags & ~7u)
        snprintf(buf, len, "reserved flag bits 0x%x are set", e->flags & ~7u);
    else if (e->type != 1)
        snprintf(buf, len, "type is %u; only 1 (dirty tracking) exists", e->type);
    else if (e->granularity_bits > 63)
        snprintf(buf, len, "granularity_bits is %u", e->granularity_bits);
    else if (e->name_size == 0 || e->name_size > QC_MAX_BITMAP_NAME)
        snprintf(buf, len, "name size %u is outside 1..1023", e->name_size);
    else if (e->extra_data_size && !(e->flags & QC_BITMAP_FLAG_EXTRA_DATA_COMPATIBLE))
        snprintf(buf, len, "%u bytes of extra data without the extra_data_compatible flag",
                 e->extra_data_size);
    else if (!(e->flags & QC_BITMAP_FLAG_IN_USE) && e->granularity_bits <= 31 &&
             e->table_size < qemu_table_entries(ctx, e->granularity_bits))
        /* A bitmap saved cleanly must cover the whole disk. */
        snprintf(buf, len, "table has %u entries but the disk needs %llu", e->table_size,
                 (unsigned long long)qemu_table_entries(ctx, e->granularity_bits));
    else
        return NULL;
    return buf;
}

/* What the specification allows in a valid entry but QEMU refuses to
 * load, with QEMU's message, or NULL. */
static const char *qemu_refusal(const qc_ctx *ctx, const qc_bitmap_entry *e, const char *name,
                                char *buf, size_t len)
{
    if (e->extra_data_size)
        snprintf(buf, len, "%u bytes of extra data (\"Bitmap extra data is not supported\")",
                 e->extra_data_size);
    else if (e->granularity_bits < 9 || e->granularity_bits > 31)
        snprintf(buf, len,
                 "granularity_bits is %u, outside QEMU's 9..31 (\"Bitmap '%s' doesn't satisfy "
                 "the constraints\")",
                 e->granularity_bits, name);
    else if (e->flags & QC_BITMAP_FLAG_EXTRA_DATA_COMPATIBLE)
        snprintf(buf, len,
                 "flag extra_data_compatible is set, a flag QEMU reserves (\"Bitmap '%s' "
                 "doesn't satisfy the constraints\")",
                 name);
    else if ((uint64_t)e->table_size * ctx->geo.cluster_size > QC_MAX_BITMAP_TABLE_CLUSTER_BYTES)
        snprintf(buf, len,
                 "%u table entries of %llu-byte clusters exceed QEMU's 512 MiB of bitmap data "
                 "(\"Bitmap '%s' doesn't satisfy the constraints\")",
                 e->table_size, (unsigned long long)ctx->geo.cluster_size, name);
    else if (!(e->flags & QC_BITMAP_FLAG_IN_USE) &&
             e->table_size != qemu_table_entries(ctx, e->granularity_bits))
        snprintf(buf, len,
                 "the table has %u entries where the disk needs %llu, and QEMU loads only a "
                 "table of exactly that size (\"Could not read bitmap '%s' from image: Invalid "
                 "argument\")",
                 e->table_size, (unsigned long long)qemu_table_entries(ctx, e->granularity_bits),
                 name);
    else
        return NULL;
    return buf;
}

static void check_table(qc_ctx *ctx, uint32_t index, const qc_bitmap_entry *e, const char *obj)
{
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
        const char *why = NULL;
        if (v & QC_BITMAP_TABLE_RESERVED_MASK)
            why = "reserved bits are set";
        else if (off && (v & QC_BITMAP_TABLE_ALL_ONES))
            why = "bit 0 (all ones) is set together with a data offset";
        else if (off && !qc_cluster_aligned(ctx, off))
            why = "the data offset is not cluster aligned";
        else if (off && !qc_range_within(off, ctx->geo.cluster_size, ctx->file_size))
            why = "the data cluster is past the end of the file";
        if (why) {
            qc_report(ctx, QC_P_BITMAP_TABLE_ENTRY_INVALID, obj, e->table_offset + (uint64_t)j * 8, 1,
                      "entry %u is 0x%016llx: %s", j, (unsigned long long)v, why);
            if (off)
                qc_unfollowed_bitmap_leaf(ctx, off);
        } else if (off) {
            qc_add_extent(ctx, QC_OWN_BITMAP_DATA, index, j, off, ctx->geo.cluster_size, 1);
        }
    }
    qc_free(ctx, table, bytes);
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
                      "entry %u runs past the end of the %llu-byte directory", n,
                      (unsigned long long)x->directory_size);
            ctx->unfollowed++;
            ctx->unfollowed_bitmaps++;
            break;
        }
        char obj[1200], name[1100], why[1400];
        qc_printable(name, sizeof(name), e.name, e.name_size);
        snprintf(obj, sizeof(obj), "bitmap %u \"%s\"", n, name);
        /* QEMU reads a name as a C string: two names that differ only
         * after a NUL byte are the same bitmap to it. */
        const uint8_t *nul = memchr(e.name, 0, e.name_size);
        names[n] = (name_key){e.name, (uint16_t)(nul ? nul - e.name : e.name_size), n};
        if (e.flags & QC_BITMAP_FLAG_IN_USE)
            qc_report(ctx, QC_P_BITMAP_IN_USE, obj, at, 1,
                      "the in_use flag is set: the bitmap was not saved cleanly and is inconsistent");
        if (entry_defect(ctx, &e, why, sizeof(why))) {
            qc_report(ctx, QC_P_BITMAP_ENTRY_INVALID, obj, at, 1, "%s", why);
            ctx->unfollowed++;
            ctx->unfollowed_bitmaps++;
            if (e.table_offset && qc_cluster_aligned(ctx, e.table_offset))
                qc_note_past_eof(ctx, e.table_offset, (uint64_t)e.table_size * 8);
        } else {
            if (qemu_refusal(ctx, &e, name, why, sizeof(why)))
                qc_report(ctx, QC_P_BITMAP_UNSUPPORTED_BY_QEMU, obj, at, 1,
                          "%s; QEMU cannot open the image", why);
            check_table(ctx, n, &e, obj);
        }
        n++;
    }
    if (n != x->nb_bitmaps || qc_cursor_remaining(&c) != 0)
        qc_report(ctx, QC_P_BITMAP_DIRECTORY_INVALID, "bitmap directory", x->directory_offset, 1,
                  "the extension announces %u bitmaps in %llu bytes; the directory holds %u "
                  "entries and %zu bytes are left over",
                  x->nb_bitmaps, (unsigned long long)x->directory_size, n, qc_cursor_remaining(&c));
    qsort(names, n, sizeof(name_key), name_cmp);
    for (uint32_t i = 1; i < n; i++)
        if (names[i].len == names[i - 1].len && !memcmp(names[i].name, names[i - 1].name, names[i].len)) {
            char name[1100];
            qc_printable(name, sizeof(name), names[i].name, names[i].len);
            qc_report(ctx, QC_P_BITMAP_NAME_DUPLICATE, "bitmap directory", x->directory_offset, 1,
                      "bitmaps %u and %u are both named \"%s\" (up to the first NUL byte, if "
                      "any); QEMU refuses the image (\"Bitmap already exists: %s\") unless the "
                      "later one is in use",
                      names[i - 1].index, names[i].index, name, name);
        }
out:
    qc_free(ctx, names, (uint64_t)x->nb_bitmaps * sizeof(name_key));
    qc_free(ctx, dir, x->directory_size);
}
