/*
 * Repair stages for the header and the snapshot table.
 *
 * feature bits (both modes): clears autoclear bits qcheck does not know
 *   (a writer that does not know a bit must clear it, and QEMU clears them
 *   on any read-write open, so `qemu-img check -r leaks` does too); with
 *   -r all also bit 0 when the bitmaps extension is missing or any bitmap
 *   is broken (QEMU then ignores the bitmaps, and their clusters become
 *   leaks freed below), and bit 1 (raw external data) where it is invalid.
 * snapshot count (-r all): before anything extends the file, discards a
 *   table that starts past the end of the file or at offset 0 (the header
 *   cluster; one 12-byte header write; -r leaks too for the header when no
 *   cluster is an orphan), cuts a last entry whose extra data, id or name
 *   runs past the end down to what is inside (keeping the snapshot), and
 *   drops the entries that do not fit in the file (or in QEMU's 64 MiB) by
 *   lowering nb_snapshots (one 4-byte write).
 * empty table offsets (both modes): sets to 0 the offset of an active L1
 *   table, snapshot table or snapshot's L1 table without entries that QEMU
 *   refuses (unaligned, or 2^63 or more); nothing is read there, so
 *   nothing is lost. -r leaks does it too because qemu-img check -r leaks
 *   does (its header write carries the offset its check reset to 0).
 * zero extension of short cuts (both modes, first): every structure the
 *   check reports ending past the end of the file by less than one cluster
 *   (an L1 or L2 table, the refcount table or a refcount block, the
 *   snapshot table, the bitmap directory or a bitmap table, ...), which
 *   QEMU accepts and reads as zeros past the end, is completed by
 *   extending the file with zeros to the end of the last cluster such a
 *   structure occupies: the guest data stay the same and the structure is
 *   then whole and followed. With -r all it waits while the snapshot count
 *   stage has a cut snapshot table to repair.
 * zero extension of L1 tables (-r all): an active or snapshot L1 table
 *   that the end of the file cuts short by more (l1PastEof,
 *   snapshotL1PastEof), and that starts inside the file or at its end, is
 *   completed the same way to the end of the table's last cluster (its
 *   refcounts are raised by the refcount stage if need be). Either
 *   extension is kept only when the check of the view then finds fewer
 *   corruptions and no new one (extension_holds).
 * snapshot table (-r all): where extra data is too large or (version 3) too
 *   small, or an id is empty, rewrites the table as QEMU would: 24 bytes of
 *   known extra data, unknown extra data kept (up to 1024 bytes in all),
 *   fresh ids for entries without one. The new table goes past the end of
 *   the file; one 12-byte header write between two flushes switches to it.
 * header flags (both modes, last): clears the dirty bit once no refcount is
 *   too low, and the corrupt bit when the image is clean; otherwise the
 *   corrupt bit goes back to what it was before the repair.
 * Needs: a current check. Produces: header and snapshot table writes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

void qc_stage_feature_bits(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check || check->hdr.version < 3)
        return;
    uint64_t before = check->hdr.autoclear_features, after = before & QC_AUTOCLEAR_KNOWN;
    if (after != before)
        qc_plan_note(r, NOTE_GENERAL, "cleared autoclear feature bits qcheck does not know: 0x%llx",
                  (unsigned long long)(before & ~QC_AUTOCLEAR_KNOWN));
    bool all = r->mode == QC_REPAIR_ALL;
    bool drop_bitmaps = all && qc_plan_found_fix(r, QC_FIX_DROP_BITMAPS);
    if (all && (drop_bitmaps || qc_found(&r->res, QC_P_AUTOCLEAR_WITHOUT_BITMAPS)) &&
        (after & QC_AUTOCLEAR_BITMAPS)) {
        after &= ~QC_AUTOCLEAR_BITMAPS;
        if (drop_bitmaps)
            qc_plan_note(r, NOTE_GENERAL,
                      "dropped the persistent bitmaps (autoclear bit 0 cleared) because some are "
                      "broken: QEMU ignores them from now on, and the next incremental backup "
                      "must be a full one");
    }
    if (all && qc_found(&r->res, QC_P_RAW_DATA_FILE_INVALID))
        after &= ~QC_AUTOCLEAR_DATA_FILE_RAW;
    if (after == before)
        return;
    uint8_t be[8];
    qc_put_be64(be, after);
    if (qc_plan_write(r, 88, be, 8, "image header (autoclear features)", "0x%llx -> 0x%llx",
                   (unsigned long long)before, (unsigned long long)after) &&
        (before & ~after & QC_AUTOCLEAR_BITMAPS))
        qc_plan_unlink_structures(r, check, 1u << QC_OWN_BITMAP_DIRECTORY | 1u << QC_OWN_BITMAP_TABLE |
                                      1u << QC_OWN_BITMAP_DATA,
                          drop_bitmaps ? qc_plan_first_found_with_fix(r, QC_FIX_DROP_BITMAPS)
                                       : QC_P_AUTOCLEAR_WITHOUT_BITMAPS);
    qc_plan_flush(r);
}

/* The entry as QEMU writes one: the 24 bytes of known extra data (those
 * the entry lacked set to what QEMU reads for them: the VM state size, the
 * virtual size, -1 for icount), then its unknown extra data, kept byte for
 * byte but cut where the extra data would pass 1024 bytes. */
static qc_snapshot_entry repaired_entry(const qc_check_view *check, const qc_snapshot_entry *e)
{
    qc_snapshot_entry out = *e;
    if (!out.has_vm_state_size_large)
        out.vm_state_size_large = out.vm_state_size;
    if (!out.has_disk_size)
        out.disk_size = check->hdr.size;
    if (!out.has_icount)
        out.icount = UINT64_MAX;
    out.has_vm_state_size_large = out.has_disk_size = out.has_icount = true;
    if (out.unknown_extra_size > QC_MAX_SNAPSHOT_EXTRA - 24)
        out.unknown_extra_size = QC_MAX_SNAPSHOT_EXTRA - 24;
    return out;
}

/* The value of an id's leading decimal digits (0 if none), saturated: how
 * QEMU reads ids when it picks one for a new snapshot. */
static uint64_t id_number(const uint8_t *id, size_t len)
{
    uint64_t v = 0;
    for (size_t i = 0; i < len && id[i] >= '0' && id[i] <= '9'; i++)
        v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(id[i] - '0');
    return v;
}

/* How many leading entries the repaired table keeps: those that were
 * decoded, up to QEMU's 64 MiB. */
static uint32_t snapshots_kept(const qc_check_view *check)
{
    uint64_t size = 0;
    uint32_t kept = 0;
    for (; kept < check->nb_snapshots; kept++) {
        const qc_snapshot_entry *e = &check->snapshots[kept].entry;
        size += e->entry_size;
        if (size > QC_MAX_SNAPSHOT_TABLE)
            break;
    }
    return kept;
}

/* Whether the snapshot table shares a cluster with another structure: then
 * it is neither shortened nor moved (see qc_plan_range_shared). */
static bool snapshot_table_shared(repair_run *r, const qc_check_view *check)
{
    for (size_t i = 0; i < check->nb_extents; i++) {
        const qc_extent *e = &check->extents[i];
        if (e->owner == QC_OWN_SNAPSHOT_TABLE)
            return qc_plan_range_shared(r, e->start, e->length, "the snapshot table");
    }
    return false;
}

/* The unlinked items of snapshot entries [from, to) dropped for `problem`:
 * one per decoded entry (its L1 table), then one per entry that could not
 * be read (nothing known but its index), at most QC_MAX_SNAPSHOTS. */
static void unlink_snapshots(repair_run *r, const qc_check_view *check, uint32_t from, uint32_t to,
                             qc_problem_id problem)
{
    for (uint32_t k = from; k < to && k - from < QC_MAX_SNAPSHOTS && !r->error; k++) {
        qc_unlinked item = {QC_UNLINK_DROPPED, problem,     QC_NO_OFFSET, 0, k, QC_NO_OFFSET, 0,
                            QC_NO_OFFSET,      QC_NO_OFFSET, QC_NO_OFFSET};
        if (k < check->nb_snapshots) {
            const qc_snapshot *s = &check->snapshots[k];
            uint64_t bytes = (uint64_t)s->entry.l1_size * 8;
            item.entry_offset = s->table_offset;
            item.target = s->entry.l1_table_offset;
            item.guest_offset = 0;
            item.guest_length = s->entry.has_disk_size ? s->entry.disk_size : check->hdr.size;
            if (bytes && qc_cluster_aligned(check, item.target) &&
                qc_range_within(item.target, bytes, check->file_size)) {
                item.host_offset = item.target;
                item.length = qc_div_round_up(bytes, check->geo.cluster_size)
                              << check->geo.cluster_bits;
            }
        }
        qc_plan_unlinked(r, &item);
    }
}

/* Cut a last entry whose extra data, id or name runs past the end of the
 * file down to what lies inside it, in place: keep the extra data (or its
 * known fields) and the id where they are readable, drop the rest. First
 * the id and name sizes, then the extra data size, each write followed by
 * a flush: every state in between is an entry of the same kind or a
 * complete one. Before anything extends the file, which would make the
 * entry's tail readable as whatever is appended. */
static void cut_truncated_entry(repair_run *r, const qc_check_view *check, uint32_t i)
{
    const qc_snapshot *s = &check->snapshots[i];
    uint8_t raw[QC_SNAPSHOT_FIXED_SIZE];
    if (qc_read_zero_filled(&r->view, s->table_offset, raw, sizeof(raw)) < 0)
        return;
    uint64_t extra = qc_be32(raw + 36), id = qc_be16(raw + 12), name = qc_be16(raw + 14);
    uint64_t room = check->file_size - s->table_offset - QC_SNAPSHOT_FIXED_SIZE;
    uint64_t keep_id = extra + id <= room ? id : 0, keep_extra = extra;
    if (extra > room)
        for (keep_extra = 24; keep_extra > room || keep_extra > extra; keep_extra -= 8)
            ;
    char who[200];
    qc_describe_snapshot(check, i, who, sizeof(who));
    uint8_t be[4];
    qc_put_be16(be, (uint16_t)keep_id);
    qc_put_be16(be + 2, 0);
    if (!qc_plan_write(r, s->table_offset + 12, be, 4, "snapshot table",
                    "%s: id and name sizes %llu and %llu -> %llu and 0 (what is left runs past "
                    "the end of the file)",
                    who, (unsigned long long)id, (unsigned long long)name,
                    (unsigned long long)keep_id))
        return;
    qc_plan_flush(r);
    if (keep_extra != extra) {
        qc_put_be32(be, (uint32_t)keep_extra);
        if (!qc_plan_write(r, s->table_offset + 36, be, 4, "snapshot table",
                        "%s: extra data size %llu -> %llu (the rest runs past the end of the "
                        "file)",
                        who, (unsigned long long)extra, (unsigned long long)keep_extra))
            return;
        qc_plan_flush(r);
    }
    char lost_extra[112] = "";
    if (keep_extra != extra && keep_extra < 24)
        snprintf(lost_extra, sizeof(lost_extra),
                 "the extra data from byte %llu on (its known fields there now read as QEMU's "
                 "defaults), ",
                 (unsigned long long)keep_extra);
    else if (keep_extra != extra)
        snprintf(lost_extra, sizeof(lost_extra), "the extra data past its known fields, ");
    qc_plan_note(r, NOTE_GENERAL,
              "%s ran past the end of the file: the snapshot and its L1 table are kept; "
              "lost: %s%s%s",
              who, lost_extra,
              keep_id ? "" : id ? "the id (the repaired table gives it a new one), " : "",
              name ? "the name" : "nothing else");
}

void qc_stage_snapshot_count(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return;
    const qc_header *h = &check->hdr;
    /* Before anything extends the file: a truncated last entry, or a table
     * past the end, must not become readable (zero-filled) if a later step
     * is interrupted. */
    /* A table past the end of the file (QEMU reads its entries as zeros)
     * or in the header cluster (QEMU reads the header as entries): nothing
     * of it is a snapshot, so every entry is discarded. */
    qc_problem_id unreadable = qc_found(&r->res, QC_P_SNAPSHOT_TABLE_PAST_EOF) ? QC_P_SNAPSHOT_TABLE_PAST_EOF
                               : qc_found(&r->res, QC_P_SNAPSHOT_TABLE_IN_HEADER)
                                   ? QC_P_SNAPSHOT_TABLE_IN_HEADER
                                   : QC_P_NONE;
    /* -r leaks discards only a table in the header, and only when no
     * cluster is an orphan (no real table can be anywhere in the file):
     * qemu-img check -r leaks resets a snapshot table it cannot validate,
     * and one that reads the header holds nothing. */
    if (r->mode != QC_REPAIR_ALL && (unreadable != QC_P_SNAPSHOT_TABLE_IN_HEADER ||
                                     qc_found(&r->res, QC_P_REFCOUNT_ORPHAN)))
        return;
    if (unreadable != QC_P_NONE) {
        char where[96];
        if (unreadable == QC_P_SNAPSHOT_TABLE_PAST_EOF)
            snprintf(where, sizeof(where), "at 0x%llx, past the end of the file (%llu bytes)",
                     (unsigned long long)h->snapshots_offset, (unsigned long long)check->file_size);
        else
            snprintf(where, sizeof(where), "at offset 0, where the header is");
        uint8_t be[12] = {0};
        if (!qc_plan_write(r, 60, be, sizeof(be), "image header (snapshot table)",
                        "discard the %u snapshot table entries %s", h->nb_snapshots, where))
            return;
        qc_plan_flush(r);
        char which[64];
        if (h->nb_snapshots == 1)
            snprintf(which, sizeof(which), "entry 0");
        else
            snprintf(which, sizeof(which), "entries 0-%u", h->nb_snapshots - 1);
        qc_plan_note(r, NOTE_GENERAL,
                  "discarded snapshot table %s (%u snapshot%s): the table starts %s, so not even "
                  "their ids and names could be read; what only they used is freed",
                  which, h->nb_snapshots, h->nb_snapshots == 1 ? "" : "s", where);
        unlink_snapshots(r, check, 0, h->nb_snapshots, unreadable);
        return;
    }
    uint32_t kept = snapshots_kept(check);
    bool cut = kept && check->snapshots[kept - 1].truncated;
    if ((kept >= h->nb_snapshots && !cut) || snapshot_table_shared(r, check))
        return;
    /* The entries after the one to cut go first: once it is cut, they
     * would start inside the file and be read from its old tail. */
    if (kept < h->nb_snapshots) {
        uint8_t be[4];
        qc_put_be32(be, kept);
        if (!qc_plan_write(r, 60, be, 4, "image header (snapshot count)",
                        "nb_snapshots %u -> %u (keep the entries that fit in the file)",
                        h->nb_snapshots, kept))
            return;
        qc_plan_flush(r);
        qc_plan_note(r, NOTE_GENERAL,
                  "the snapshot table listed %u snapshots; %u could be read and were kept, the "
                  "rest do not fit in the file (or in 64 MiB) and were dropped",
                  h->nb_snapshots, kept);
        /* Decoded entries beyond 64 MiB, then the ones that could not be read. */
        uint32_t decoded = check->nb_snapshots > kept ? check->nb_snapshots : kept;
        unlink_snapshots(r, check, kept, decoded, QC_P_SNAPSHOT_TABLE_TOO_LARGE);
        unlink_snapshots(r, check, decoded, h->nb_snapshots,
                         qc_found(&r->res, QC_P_SNAPSHOT_TABLE_TRUNCATED)
                             ? QC_P_SNAPSHOT_TABLE_TRUNCATED
                             : QC_P_TOO_MANY_SNAPSHOTS);
    }
    if (cut)
        cut_truncated_entry(r, check, kept - 1);
}

void qc_stage_empty_table_offsets(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check || !qc_found(&r->res, QC_P_EMPTY_TABLE_OFFSET_INVALID))
        return;
    const qc_header *h = &check->hdr;
    static const uint8_t zero[8];
    /* The table has no entries, so its offset points at nothing: 0 is what
     * qemu-img writes for an image without snapshots, and an L1 offset
     * QEMU validates and never reads. */
    if (h->l1_size == 0 && h->l1_table_offset &&
        !qc_plan_write(r, 40, zero, 8, "image header (L1 table offset)",
                    "0x%llx -> 0 (the active L1 table has no entries)",
                    (unsigned long long)h->l1_table_offset))
        return;
    if (h->nb_snapshots == 0 && h->snapshots_offset &&
        !qc_plan_write(r, 64, zero, 8, "image header (snapshot table offset)",
                    "0x%llx -> 0 (there are no snapshots)",
                    (unsigned long long)h->snapshots_offset))
        return;
    for (uint32_t i = 0; i < check->nb_snapshots; i++) {
        const qc_snapshot *s = &check->snapshots[i];
        if (s->entry.l1_size || qc_empty_table_offset_ok(check, s->entry.l1_table_offset))
            continue;
        if (snapshot_table_shared(r, check))
            break; /* its bytes may be another structure's */
        char who[200];
        qc_describe_snapshot(check, i, who, sizeof(who));
        if (!qc_plan_write(r, s->table_offset, zero, 8, "snapshot table",
                        "%s: L1 table offset 0x%llx -> 0 (the table has no entries)", who,
                        (unsigned long long)s->entry.l1_table_offset))
            return;
    }
    qc_plan_flush(r);
}

/* Where zeros would complete an L1 table at [off, off + bytes) that the end
 * of the file (`size` bytes) cuts short: the end of its last cluster, when
 * the table starts inside the file or at its cluster-rounded end (so only
 * the table's own clusters are added); 0 otherwise. */
static uint64_t completed_end(const qc_check_view *check, uint64_t size, uint64_t off, uint64_t bytes)
{
    uint64_t end, cs = check->geo.cluster_size;
    if (!bytes || bytes > QC_MAX_L1_BYTES || !off || !qc_cluster_aligned(check, off) ||
        !qc_add_ok(off, bytes, &end) || end <= size || off > qc_div_round_up(size, cs) * cs)
        return 0;
    return qc_div_round_up(end, cs) * cs;
}

/* Whether the check of the view with the file extended to `to` shows no
 * new problem: no check error, fewer corruptions, and no corruption of any
 * kind more than before, except (with -r all, whose refcount stage raises
 * them) refcounts too low or zero of the completed structures' clusters
 * [from, to). A structure whose part inside the file is garbage would now
 * be followed: that is not completed (QEMU reads the garbage too, but the
 * repair must not end with more corruptions than it began with). */
static bool extension_holds(const repair_run *r, const qc_result *before, uint64_t from,
                            uint64_t to)
{
    const qc_result *now = &r->res;
    if (now->check_errors)
        return false;
    uint64_t raised = 0; /* refcount findings inside the completed structures */
    for (size_t i = 0; r->mode == QC_REPAIR_ALL && i < r->nb_found; i++) {
        const repair_finding *f = &r->found[i];
        if ((f->id == QC_P_REFCOUNT_ZERO_IN_USE || f->id == QC_P_REFCOUNT_TOO_LOW) &&
            f->offset >= from && f->offset < to)
            raised += f->count;
    }
    uint64_t was = 0, is = 0;
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++) {
        if (qc_problem_at(i)->severity != QC_SEV_CORRUPTION)
            continue;
        was += before->per_problem[i];
        is += now->per_problem[i];
        if (now->per_problem[i] <= before->per_problem[i])
            continue;
        uint64_t more = now->per_problem[i] - before->per_problem[i];
        if ((i != QC_ROW_REFCOUNT_ZERO_IN_USE && i != QC_ROW_REFCOUNT_TOO_LOW) || more > raised)
            return false;
        raised -= more;
        is -= more;
    }
    return is < was;
}

/* Extend the file (the view) with zeros from its end to `target`, to
 * complete `what`, which starts at `from`; kept only if extension_holds. */
static void extend_with_zeros(repair_run *r, uint64_t target, uint64_t from, const char *what)
{
    uint64_t size = r->view.size;
    uint8_t *zeros = calloc(1, (size_t)(target - size));
    if (!zeros) {
        r->error = -ENOMEM;
        return;
    }
    qc_result before = r->res;
    /* What the earlier stages wrote (pointers past the end dropped, tables
     * past the end discarded) reaches the disk before the file grows. */
    qc_plan_flush(r);
    bool written = qc_plan_write(r, size, zeros, (size_t)(target - size),
                              "zeros past the end of the file",
                              "extend the file from %llu to %llu bytes to complete %s",
                              (unsigned long long)size, (unsigned long long)target, what);
    free(zeros);
    if (!written)
        return;
    if (!qc_plan_try_check(r) || !extension_holds(r, &before, from, target)) {
        qc_plan_undo_write(r);
        r->view.size = size; /* the write grew the view */
        qc_plan_note(r, NOTE_GENERAL,
                  "%s not completed with zeros: the part inside the file holds what a check would "
                  "then follow as new problems; left past the end of the file",
                  what);
        return;
    }
    qc_plan_flush(r);
    qc_plan_note(r, NOTE_GENERAL,
              "extended the file with zeros from %llu to %llu bytes (0x%llx-0x%llx): %s ended past "
              "the end of the file, where QEMU reads zeros; the guest sees the same data",
              (unsigned long long)size, (unsigned long long)target, (unsigned long long)size,
              (unsigned long long)target - 1, what);
}

void qc_stage_zero_extend_short(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    /* Nothing to do, or a try that did not hold (the note said so). With
     * -r all, a snapshot table the snapshot count stage repairs (a last
     * entry it cuts in place, entries it drops) must not become readable
     * zero-filled first: the next round extends what is still cut. */
    if (!check || check->short_past_eof_end <= r->view.size ||
        check->short_past_eof_end == r->short_extension_refused ||
        (r->mode == QC_REPAIR_ALL && qc_plan_found_fix(r, QC_FIX_TRIM_SNAPSHOT_TABLE)))
        return;
    uint64_t target = check->short_past_eof_end;
    extend_with_zeros(r, target, check->short_past_eof_start,
                      "the structures the end of the file cut short by less than one cluster");
    if (r->view.size != target)
        r->short_extension_refused = target;
}

void qc_stage_zero_extend(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check || (!qc_found(&r->res, QC_P_L1_PAST_EOF) &&
                 !qc_found(&r->res, QC_P_SNAPSHOT_L1_PAST_EOF)))
        return;
    const qc_header *h = &check->hdr;
    uint64_t size = r->view.size, target = size, from = UINT64_MAX;
    char tables[128] = "";
    uint64_t end = completed_end(check, size, h->l1_table_offset, (uint64_t)h->l1_size * 8);
    if (end) {
        target = end;
        from = h->l1_table_offset;
        snprintf(tables, sizeof(tables), "the active L1 table");
    }
    uint32_t snapshots = 0;
    for (uint32_t i = 0; i < check->nb_snapshots && i < h->nb_snapshots; i++) {
        const qc_snapshot_entry *e = &check->snapshots[i].entry;
        end = completed_end(check, size, e->l1_table_offset, (uint64_t)e->l1_size * 8);
        if (end) {
            snapshots++;
            target = end > target ? end : target;
            from = e->l1_table_offset < from ? e->l1_table_offset : from;
        }
    }
    if (snapshots)
        snprintf(tables + strlen(tables), sizeof(tables) - strlen(tables),
                 "%s%u snapshot L1 table%s", tables[0] ? " and " : "", snapshots,
                 snapshots == 1 ? "" : "s");
    if (target != size && target != r->l1_extension_refused) {
        extend_with_zeros(r, target, from, tables);
        if (r->view.size != target)
            r->l1_extension_refused = target;
    }
}

void qc_stage_snapshot_table(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    const qc_result *res = &r->res;
    if (!check)
        return;
    const qc_geometry *g = &check->geo;
    if (snapshot_table_shared(r, check))
        return;
    if (qc_plan_refcounts_blocked(r, check)) {
        qc_plan_note(r, NOTE_GENERAL,
                  "the repaired snapshot table not written: a refcount block shares its cluster "
                  "with another structure, so the refcount stage could not count the new table");
        return;
    }
    uint64_t at_cluster = qc_plan_append_cluster(r, "the repaired snapshot table", false);
    if (at_cluster == UINT64_MAX)
        return;
    /* Entries without an id get fresh ones, as QEMU numbers a new
     * snapshot: one more than the highest id. */
    uint64_t next_id = 1;
    for (uint32_t i = 0; i < check->nb_snapshots; i++) {
        const qc_snapshot_entry *e = &check->snapshots[i].entry;
        uint64_t v = id_number(e->id, e->id_str_size);
        if (v >= next_id)
            next_id = v == UINT64_MAX ? v : v + 1;
    }
    /* Bounded by the decoded entries, which were bounded by the file. */
    size_t cap = 0;
    for (uint32_t i = 0; i < check->nb_snapshots; i++)
        cap += QC_SNAPSHOT_FIXED_SIZE + QC_MAX_SNAPSHOT_EXTRA +
               check->snapshots[i].entry.id_str_size + check->snapshots[i].entry.name_size + 32;
    uint8_t *table = calloc(cap ? cap : 1, 1);
    char(*fresh)[24] = calloc(check->nb_snapshots ? check->nb_snapshots : 1, sizeof(*fresh));
    if (!table || !fresh) {
        free(table);
        free(fresh);
        r->error = -ENOMEM;
        return;
    }
    size_t len = 0;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < check->nb_snapshots; i++) {
        qc_snapshot_entry e = repaired_entry(check, &check->snapshots[i].entry);
        if (!e.id_str_size) {
            char who[200];
            qc_describe_snapshot(check, i, who, sizeof(who));
            snprintf(fresh[i], sizeof(fresh[i]), "%llu", (unsigned long long)next_id);
            next_id += next_id < UINT64_MAX;
            e.id = (const uint8_t *)fresh[i];
            e.id_str_size = (uint16_t)strlen(fresh[i]);
            qc_plan_note(r, NOTE_GENERAL, "%s had no id; the repaired table gives it id \"%s\"", who,
                      fresh[i]);
        }
        size_t n = qc_snapshot_encode(&e, table + len, cap - len);
        if (n == 0)
            break;
        len += n;
        kept++;
    }
    uint64_t at = at_cluster << g->cluster_bits;
    qc_plan_write(r, at, table, len, "new snapshot table",
               "%u snapshot entries with their extra data repaired", kept);
    free(table);
    free(fresh);
    qc_plan_flush(r);
    uint8_t hdr[12];
    qc_put_be32(hdr, kept);
    qc_put_be64(hdr + 4, at);
    qc_problem_id why = qc_found(res, QC_P_SNAPSHOT_EXTRA_TOO_LARGE)
                            ? QC_P_SNAPSHOT_EXTRA_TOO_LARGE
                        : qc_found(res, QC_P_SNAPSHOT_EXTRA_TOO_SMALL) ? QC_P_SNAPSHOT_EXTRA_TOO_SMALL
                                                                          : QC_P_SNAPSHOT_ID_EMPTY;
    if (qc_plan_write(r, 60, hdr, sizeof(hdr), "image header (snapshot table)",
                   "switch to the repaired snapshot table at 0x%llx (%u snapshots)",
                   (unsigned long long)at, kept))
        qc_plan_unlink_structures(r, check, 1u << QC_OWN_SNAPSHOT_TABLE, why);
    qc_plan_flush(r);
}

void qc_stage_header_flags(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check || check->hdr.version < 3)
        return;
    const qc_result *res = &r->res;
    uint64_t now = check->hdr.incompatible_features, want = now;
    bool refcounts_safe = !qc_found(res, QC_P_REFCOUNT_TOO_LOW) &&
                          !qc_found(res, QC_P_REFCOUNT_ZERO_IN_USE) &&
                          !qc_found(res, QC_P_REFCOUNTS_UNKNOWN);
    if (refcounts_safe)
        want &= ~QC_INCOMPAT_DIRTY;
    if (res->corruptions == 0 && res->check_errors == 0)
        want &= ~QC_INCOMPAT_CORRUPT;
    else
        want = (want & ~QC_INCOMPAT_CORRUPT) | (r->incompat_before & QC_INCOMPAT_CORRUPT);
    if (want == now)
        return;
    /* Everything else must be on disk before the bits say it is done. One
     * aligned 8-byte write needs no fence when it is the only one. */
    qc_plan_flush(r);
    r->fenced = true;
    uint8_t be[8];
    qc_put_be64(be, want);
    bool both = (now & ~want & QC_INCOMPAT_DIRTY) && (now ^ want) & QC_INCOMPAT_CORRUPT;
    qc_plan_write(r, 72, be, 8, "image header (incompatible features)", "%s%s%s",
               (now & ~want & QC_INCOMPAT_DIRTY)
                   ? (both ? "clear the dirty bit (refcounts are correct); "
                           : "clear the dirty bit (refcounts are correct)")
                   : "",
               (now & ~want & QC_INCOMPAT_CORRUPT)
                   ? (res->corruptions ? "clear the corrupt bit set during the repair"
                                       : "clear the corrupt bit (the image is clean)")
                   : "",
               (want & ~now) ? "restore the corrupt bit" : "");
    qc_plan_flush(r);
}
