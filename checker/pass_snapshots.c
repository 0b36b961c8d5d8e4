/*
 * The snapshot table (docs/passes.md §3.2; codes 3xx, and 133 for a
 * snapshot's empty L1 table).
 *
 * Checks: every entry lies inside the file (a last entry whose fixed part
 * is inside but whose extra data, id or name runs past the end is decoded
 * as far as it goes, and its snapshot kept), extra data size (at most 1024
 * bytes; at least 16 in version 3), the table's total size (64 MiB),
 * empty and duplicate ids, each snapshot's L1 table (aligned, inside the
 * file, at most 32 MiB, large enough for the snapshot's disk size; without
 * entries, an offset QEMU can still load), snapshots in an image with an
 * external data file.
 * Needs: the header pass (geometry, snapshots_usable).
 * Produces: ctx->snapshots[] with a `follow` verdict each, the snapshot
 * table extent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"

/* Largest single entry: fixed part, extra data (up to 2^32 is possible in
 * the field but anything above 1024 is reported), id and name. */
#define MAX_READ_CHUNK (1ull << 20)

typedef struct id_key {
    const uint8_t *id;
    uint16_t len;
    uint32_t index;
} id_key;

static int id_cmp(const void *a, const void *b)
{
    const id_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->id, y->id, n) : 0;
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void check_duplicate_ids(qc_ctx *ctx)
{
    if (ctx->nb_snapshots < 2)
        return;
    id_key *keys = qc_alloc(ctx, (uint64_t)ctx->nb_snapshots * sizeof(id_key), "snapshot id index");
    if (!keys)
        return;
    for (uint32_t i = 0; i < ctx->nb_snapshots; i++)
        keys[i] = (id_key){ctx->snapshots[i].entry.id, ctx->snapshots[i].entry.id_str_size, i};
    qsort(keys, ctx->nb_snapshots, sizeof(id_key), id_cmp);
    for (uint32_t i = 1; i < ctx->nb_snapshots; i++) {
        if (!keys[i].len || keys[i].len != keys[i - 1].len || /* empty: reported as such */
            (keys[i].len && memcmp(keys[i].id, keys[i - 1].id, keys[i].len)))
            continue;
        char a[160], b[160];
        qc_describe_snapshot(&ctx->view, keys[i].index, a, sizeof(a));
        qc_describe_snapshot(&ctx->view, keys[i - 1].index, b, sizeof(b));
        qc_report(ctx, QC_P_SNAPSHOT_ID_DUPLICATE, a, ctx->snapshots[keys[i].index].table_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SNAPSHOT | QC_CTX_NAME,
                                    .snapshot = keys[i].index,
                                    .name = b});
    }
    qc_free(ctx, keys, (uint64_t)ctx->nb_snapshots * sizeof(id_key));
}

static void check_snapshot_l1(qc_ctx *ctx, uint32_t index)
{
    qc_snapshot *s = &ctx->snapshots[index];
    const qc_snapshot_entry *e = &s->entry;
    char obj[200];
    qc_describe_snapshot(&ctx->view, index, obj, sizeof(obj));
    uint64_t bytes = (uint64_t)e->l1_size * 8;
    s->follow = false;
    qc_finding_ctx fc = {.present = QC_CTX_SNAPSHOT | QC_CTX_HOST_OFFSET | QC_CTX_VALUE,
                         .snapshot = index,
                         .host_offset = e->l1_table_offset,
                         .value = e->l1_size};
    if (e->l1_size == 0 && !qc_empty_table_offset_ok(&ctx->view, e->l1_table_offset)) {
        /* QEMU's check ignores it; loading the snapshot validates it. */
        fc.variant = QC_EMPTY_TABLE_SNAPSHOT_L1;
        qc_report(ctx, QC_P_EMPTY_TABLE_OFFSET_INVALID, obj, s->table_offset, 1, &fc);
    } else if (!qc_cluster_aligned(&ctx->view, e->l1_table_offset)) {
        qc_report(ctx, QC_P_SNAPSHOT_L1_UNALIGNED, obj, s->table_offset, 1, &fc);
    } else if (bytes > QC_MAX_L1_BYTES) {
        fc.present |= QC_CTX_SIZE;
        fc.size = bytes;
        qc_report(ctx, QC_P_SNAPSHOT_L1_TOO_LARGE, obj, s->table_offset + 8, 1, &fc);
    } else if (e->l1_size && (e->l1_table_offset == 0 ||
                              !qc_range_within(e->l1_table_offset, bytes, ctx->file_size))) {
        fc.present |= QC_CTX_FILE_SIZE;
        fc.file_size = ctx->file_size;
        qc_report(ctx, QC_P_SNAPSHOT_L1_PAST_EOF, obj, s->table_offset, 1, &fc);
        if (e->l1_table_offset)
            qc_claim_past_eof(ctx, e->l1_table_offset, bytes, false);
    } else {
        s->follow = e->l1_size > 0;
    }
    if (!s->follow && e->l1_size)
        ctx->unfollowed++;
    if (e->has_disk_size && qc_l1_entries_needed(&ctx->geo, e->disk_size) > e->l1_size)
        qc_report(ctx, QC_P_SNAPSHOT_L1_TOO_SMALL, obj, s->table_offset + 8, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SNAPSHOT | QC_CTX_VALUE | QC_CTX_SIZE,
                                    .snapshot = index,
                                    .value = e->l1_size,
                                    .size = e->disk_size});
}

/* Decode up to `count` entries from buf; returns how many were decoded.
 * *end receives the offset just past the last one. With `at_eof` (buf
 * ends where the file does), an entry whose fixed part is in buf but not
 * the rest is decoded as far as it goes (the last one). */
static uint32_t decode_entries(qc_ctx *ctx, const uint8_t *buf, size_t len, uint32_t count,
                               bool at_eof, size_t *end)
{
    qc_cursor c = qc_cursor_make(buf, len);
    uint32_t n = 0;
    *end = 0;
    while (n < count) {
        qc_snapshot *s = &ctx->snapshots[n];
        size_t start = c.pos;
        s->truncated = s->id_lost = false;
        if (!qc_snapshot_decode(&c, &s->entry)) {
            bool name_lost;
            c = qc_cursor_make(buf, len);
            c.pos = start;
            if (!at_eof || !qc_snapshot_decode_truncated(&c, &s->entry, &s->id_lost, &name_lost))
                break;
            s->truncated = true;
        }
        s->table_offset = ctx->hdr.snapshots_offset + start;
        *end = c.pos;
        n++;
        if (s->truncated)
            break;
    }
    return n;
}

/* A last entry that runs past the end of the file keeps its snapshot (its
 * L1 table is followed); what lies past the end is reported, and claimed
 * so that a repair appends nothing there before it has cut the entry. */
static void report_truncated_entry(qc_ctx *ctx, uint32_t i)
{
    const qc_snapshot *s = &ctx->snapshots[i];
    const uint8_t *raw = ctx->snap_table_buf + (s->table_offset - ctx->hdr.snapshots_offset);
    uint64_t extra = qc_be32(raw + 36), id = qc_be16(raw + 12), name = qc_be16(raw + 14);
    uint64_t declared = QC_SNAPSHOT_FIXED_SIZE + extra + id + name;
    char obj[200];
    qc_describe_snapshot(&ctx->view, i, obj, sizeof(obj));
    enum { EXTRA_DATA_LOST, NAME_LOST, ID_AND_NAME_LOST };
    qc_report(ctx, QC_P_SNAPSHOT_ENTRY_PAST_EOF, obj, s->table_offset, 1,
              &(qc_finding_ctx){.present = QC_CTX_SNAPSHOT | QC_CTX_SIZE | QC_CTX_HOST_OFFSET |
                                           QC_CTX_FILE_SIZE,
                                .variant = s->id_lost                       ? ID_AND_NAME_LOST
                                           : name && !s->entry.name_size ? NAME_LOST
                                                                         : EXTRA_DATA_LOST,
                                .snapshot = i,
                                .size = extra + id + name,
                                .host_offset = s->table_offset + declared,
                                .file_size = ctx->file_size});
    qc_claim_past_eof(ctx, s->table_offset, declared, false);
}

/* How many entries to read: nb_snapshots, bounded by QEMU's limit and by
 * what the rest of the file can hold (each bound a finding). */
static uint32_t entries_to_read(qc_ctx *ctx, uint64_t avail)
{
    const qc_header *h = &ctx->hdr;
    uint32_t count = h->nb_snapshots;
    if (count > QC_MAX_SNAPSHOTS) {
        qc_report(ctx, QC_P_TOO_MANY_SNAPSHOTS, "snapshot table", 60, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_EXPECTED,
                                    .value = count,
                                    .expected = QC_MAX_SNAPSHOTS});
        count = QC_MAX_SNAPSHOTS;
    }
    uint64_t max_entries = avail / QC_SNAPSHOT_FIXED_SIZE;
    if (count > max_entries && count == h->nb_snapshots) {
        qc_report(ctx, QC_P_TOO_MANY_SNAPSHOTS, "snapshot table", 60, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE | QC_CTX_SIZE | QC_CTX_HOST_OFFSET |
                                               QC_CTX_EXPECTED,
                                    .variant = 1,
                                    .value = h->nb_snapshots,
                                    .size = avail,
                                    .host_offset = h->snapshots_offset,
                                    .expected = max_entries});
    }
    return count > max_entries ? (uint32_t)max_entries : count;
}

/* Entries that could not be decoded may own L1/L2 tables and data, and
 * they reach past the end of the file (or of what was read): at least
 * their fixed parts, and the first as far as its own sizes say, if its
 * fixed part is there. A repair must not append where they would become
 * readable. `end` is where the decoded entries end in the `read` bytes. */
static void claim_undecoded(qc_ctx *ctx, uint32_t n, size_t end, uint64_t read)
{
    const qc_header *h = &ctx->hdr;
    ctx->unfollowed++;
    uint64_t claim = (uint64_t)(h->nb_snapshots - n) * QC_SNAPSHOT_FIXED_SIZE;
    if ((uint64_t)end + QC_SNAPSHOT_FIXED_SIZE <= read) {
        const uint8_t *e = ctx->snap_table_buf + end;
        uint64_t first = QC_SNAPSHOT_FIXED_SIZE + (uint64_t)qc_be16(e + 12) + qc_be16(e + 14) +
                         qc_be32(e + 36);
        if (first > claim)
            claim = first;
    }
    qc_claim_past_eof(ctx, h->snapshots_offset + end, claim, false);
}

/* One decoded entry: its id, its extra data and its L1 table. */
static void check_entry(qc_ctx *ctx, uint32_t i)
{
    const qc_snapshot *s = &ctx->snapshots[i];
    const qc_snapshot_entry *e = &s->entry;
    char obj[200];
    qc_describe_snapshot(&ctx->view, i, obj, sizeof(obj));
    if (s->truncated)
        report_truncated_entry(ctx, i);
    else if (!e->id_str_size)
        qc_report(ctx, QC_P_SNAPSHOT_ID_EMPTY, obj, s->table_offset + 12, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SNAPSHOT, .snapshot = i});
    qc_finding_ctx extra = {.present = QC_CTX_SNAPSHOT | QC_CTX_SIZE | QC_CTX_EXPECTED,
                            .snapshot = i,
                            .size = e->extra_data_size};
    if (e->extra_data_size > QC_MAX_SNAPSHOT_EXTRA) {
        extra.expected = QC_MAX_SNAPSHOT_EXTRA;
        qc_report(ctx, QC_P_SNAPSHOT_EXTRA_TOO_LARGE, obj, s->table_offset + 36, 1, &extra);
    }
    if (ctx->hdr.version >= 3 && e->extra_data_size < 16) {
        extra.expected = 16;
        qc_report(ctx, QC_P_SNAPSHOT_EXTRA_TOO_SMALL, obj, s->table_offset + 36, 1, &extra);
    }
    check_snapshot_l1(ctx, i);
}

void qc_pass_snapshots(qc_ctx *ctx)
{
    const qc_header *h = &ctx->hdr;
    if (!ctx->snapshots_usable)
        return;
    if (ctx->has_data_file)
        qc_report(ctx, QC_P_SNAPSHOTS_WITH_DATA_FILE, "snapshot table", 60, 1,
                  &(qc_finding_ctx){.present = QC_CTX_VALUE, .value = h->nb_snapshots});
    /* The table cannot be larger than what remains of the file, nor (for
     * QEMU) than 64 MiB plus one entry; read that much at the most. */
    uint64_t avail = ctx->file_size - h->snapshots_offset;
    uint32_t count = entries_to_read(ctx, avail);
    if (count == 0)
        return;
    uint64_t cap = QC_MAX_SNAPSHOT_TABLE + MAX_READ_CHUNK;
    uint64_t len = avail < cap ? avail : cap;
    /* Start small and read more only when the entries need it. */
    uint64_t want = len < 65536 ? len : 65536;
    ctx->snapshots = qc_alloc(ctx, (uint64_t)count * sizeof(qc_snapshot), "snapshot list");
    if (!ctx->snapshots)
        return;
    size_t end = 0;
    uint32_t n = 0;
    for (uint64_t have = 0;; have = want, want = want * 4 < len ? want * 4 : len) {
        qc_free(ctx, ctx->snap_table_buf, have);
        ctx->snap_table_buf = qc_alloc(ctx, want, "snapshot table");
        if (!ctx->snap_table_buf ||
            !qc_read(ctx, h->snapshots_offset, ctx->snap_table_buf, want, "snapshot table"))
            return;
        n = decode_entries(ctx, ctx->snap_table_buf, want, count, want == avail, &end);
        if (n == count || want == len)
            break;
    }
    ctx->nb_snapshots = n;
    if (n < h->nb_snapshots)
        claim_undecoded(ctx, n, end, want);
    if (n < count)
        /* One finding, as QEMU counts it: how many entries "do not fit"
         * depends on the file's length, which a repair may change. */
        qc_report(ctx, QC_P_SNAPSHOT_TABLE_TRUNCATED, "snapshot table",
                  h->snapshots_offset + end, 1,
                  &(qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_EXPECTED,
                                    .index = n,
                                    .expected = count});
    if (end > QC_MAX_SNAPSHOT_TABLE)
        qc_report(ctx, QC_P_SNAPSHOT_TABLE_TOO_LARGE, "snapshot table", h->snapshots_offset, 1,
                  &(qc_finding_ctx){.present = QC_CTX_SIZE, .size = end});
    for (uint32_t i = 0; i < n; i++)
        check_entry(ctx, i);
    check_duplicate_ids(ctx);
    /* A truncated table still owns the start of the entry that did not
     * decode: nothing else may be written there (a refcount block in the
     * same cluster, say), or the entry could decode later as garbage. */
    uint64_t owned = end;
    if (n < count)
        owned = end + QC_SNAPSHOT_FIXED_SIZE < avail ? end + QC_SNAPSHOT_FIXED_SIZE : avail;
    qc_add_extent(ctx, QC_OWN_SNAPSHOT_TABLE, 0, 0, h->snapshots_offset, owned, 1);
}
