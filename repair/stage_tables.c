/*
 * Repair stages for L1 and L2 entries (-r all, but for COPIED after leaks).
 *
 * data on metadata: clears L2 entries whose guest data lands on a cluster
 *   metadata owns (so the refcount stage does not "fix" the metadata's
 *   refcount to 2, which would let the guest read and write it).
 * COPIED and ignored bits: makes OFLAG_COPIED agree with the repaired
 *   refcounts (L1 entries and the entries the check flagged: data clusters,
 *   compressed entries, zero-offset entries, data-file entries), and clears
 *   reserved bits and misplaced zero flags, which QEMU ignores when reading
 *   (so the guest sees the same data).
 * COPIED after leaks (-r leaks): the same for the L1 and L2 entries the
 *   check flagged, only when nothing but COPIED is wrong once the leaks are
 *   fixed (qemu-img's condition).
 *   Neither ever sets COPIED on a cluster an unfollowed structure may claim.
 * broken pointers: recovers before it drops: re-points an unaligned L2
 *   entry to the allocated, unreferenced cluster it most likely meant, and
 *   an unaligned L1 entry likewise when a check of the view with the
 *   re-point shows a valid L2 table there; clears the other L1 and L2
 *   entries that point past the end of the file or at unaligned offsets,
 *   naming the guest ranges affected. Runs before anything extends the
 *   file; what only the dropped pointers could own is freed by the
 *   refcount stage of the same run.
 * Needs: a current check and its uncapped findings (entry offsets).
 * Produces: writes of single entries, notes naming guest ranges, dropped
 * and recovered items of the unlinked list.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

static const char *guest_effect(const repair_run *r)
{
    return r->res.header.has_backing_file ? "now read from the backing file" : "now read as zeros";
}

static void describe_owner(const qc_check_view *check, uint32_t snapshot, char *buf, size_t len)
{
    if (snapshot == QC_ACTIVE)
        snprintf(buf, len, "the active image");
    else
        qc_describe_snapshot(check, snapshot, buf, len);
}

/* Note the guest clusters an L2 entry at host offset `at` maps. */
static void note_l2_guest(repair_run *r, const qc_check_view *check, uint64_t at, const char *effect)
{
    const qc_geometry *g = &check->geo;
    const qc_l2_table *t = qc_l2_table_at(check, at);
    if (!t)
        return;
    uint64_t index = (at - qc_l2_table_offset(check, t)) / g->l2_entry_size;
    for (uint64_t k = 0; k < t->refs; k++) {
        const qc_l2_ref *ref = &check->l2_refs[t->first_ref + k];
        uint64_t guest = ((uint64_t)ref->l1_index * g->l2_entries + index) << g->cluster_bits;
        char who[200];
        describe_owner(check, ref->snapshot, who, sizeof(who));
        qc_plan_note(r, NOTE_GUEST_RANGE, "%s: guest bytes 0x%llx-0x%llx (L2 entry at 0x%llx) %s", who,
                  (unsigned long long)guest, (unsigned long long)(guest + g->cluster_size - 1),
                  (unsigned long long)at, effect);
    }
}

/* Rewrite the L2 entry at `at` as unallocated, or as a plain zero entry
 * when it read as zeros anyway (the finding `problem` says why). */
static void clear_l2_entry(repair_run *r, const qc_check_view *check, uint64_t at, qc_problem_id problem,
                           const char *why)
{
    const qc_geometry *g = &check->geo;
    uint8_t old[16] = {0}, now[16] = {0};
    if (qc_read_zero_filled(&r->view, at, old, g->l2_entry_size) < 0)
        return;
    uint64_t entry = qc_be64(old), bitmap = g->extended_l2 ? qc_be64(old + 8) : 0;
    bool reads_zero = !(entry & QC_OFLAG_COMPRESSED) &&
                      (g->extended_l2 ? (uint32_t)bitmap == 0 && bitmap : (entry & QC_OFLAG_ZERO));
    uint64_t new_entry = !g->extended_l2 && reads_zero ? QC_OFLAG_ZERO : 0;
    uint64_t new_bitmap = entry & QC_OFLAG_COMPRESSED ? 0 : bitmap & 0xffffffff00000000ull;
    qc_put_be64(now, new_entry);
    if (g->extended_l2)
        qc_put_be64(now + 8, new_bitmap);
    if (memcmp(old, now, g->l2_entry_size) == 0)
        return;
    const qc_l2_table *t = qc_l2_table_at(check, at);
    char what[240] = "L2 table";
    if (t)
        qc_describe_l2_table(check, t, what, sizeof(what));
    if (!qc_plan_write(r, at, now, g->l2_entry_size, what, "entry %llu was 0x%016llx: %s",
                    (unsigned long long)((at & (g->cluster_size - 1)) / g->l2_entry_size),
                    (unsigned long long)entry, why))
        return;
    note_l2_guest(r, check, at, reads_zero ? "still read as zeros" : guest_effect(r));
    qc_plan_unlink_l2_entry(r, check, at, entry, problem, QC_UNLINK_DROPPED, QC_NO_OFFSET);
}

void qc_stage_data_on_metadata(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return;
    for (size_t i = 0; i < r->nb_found; i++)
        if (r->found[i].id == QC_P_DATA_OVERLAPS_METADATA)
            clear_l2_entry(r, check, r->found[i].offset, QC_P_DATA_OVERLAPS_METADATA,
                           "guest data mapped onto metadata; the mapping is dropped");
    qc_plan_flush(r);
}

/* Which L1 table holds the entry at `at`, and its index there. */
static bool l1_entry_at(const qc_check_view *check, uint64_t at, uint32_t *snapshot, uint64_t *index)
{
    const qc_header *h = &check->hdr;
    if (at >= h->l1_table_offset && at - h->l1_table_offset < (uint64_t)h->l1_size * 8) {
        *snapshot = QC_ACTIVE;
        *index = (at - h->l1_table_offset) / 8;
        return true;
    }
    for (uint32_t s = 0; s < check->nb_snapshots; s++) {
        const qc_snapshot_entry *e = &check->snapshots[s].entry;
        if (check->snapshots[s].follow && at >= e->l1_table_offset &&
            at - e->l1_table_offset < (uint64_t)e->l1_size * 8) {
            *snapshot = s;
            *index = (at - e->l1_table_offset) / 8;
            return true;
        }
    }
    return false;
}

/* Rewrite the 8-byte entry at `at` as ((entry & ~clear) | set) ^ toggle. */
static void rewrite_entry(repair_run *r, uint64_t at, uint64_t clear, uint64_t set, uint64_t toggle,
                          const char *what, const char *why)
{
    uint8_t be[8];
    if (qc_read_zero_filled(&r->view, at, be, 8) < 0)
        return;
    uint64_t entry = qc_be64(be), now = ((entry & ~clear) | set) ^ toggle;
    if (now == entry)
        return;
    qc_put_be64(be, now);
    qc_plan_write(r, at, be, 8, what, "entry 0x%016llx -> 0x%016llx: %s", (unsigned long long)entry,
               (unsigned long long)now, why);
}

/* Whether COPIED may be set on an entry pointing to cluster c: never while
 * a structure qcheck did not follow may share it (QEMU would then write
 * into a cluster that structure still uses). */
static bool copied_may_be_set(const qc_check_view *check, uint64_t c)
{
    return !check->unfollowed && !qc_bitset_test(&check->unfollowed_targets, c) &&
           !qc_bitset_test(&check->orphans, c) && !qc_bitset_test(&check->refcount_above_refs, c);
}

/* Data clusters the check flagged (l2CopiedWrong) and, with `with_over`,
 * those with more references on disk than found (kept orphans): every
 * active entry mapping one gets COPIED exactly when the cluster has one
 * reference, on disk and found. */
static void fix_data_copied(repair_run *r, const qc_check_view *check, bool with_over)
{
    const qc_geometry *g = &check->geo;
    qc_bitset flagged;
    bool flagged_ok = qc_bitset_init(NULL, &flagged, check->file_clusters);
    uint8_t *table = malloc(g->cluster_size), *copy = malloc(g->cluster_size);
    if (!flagged_ok || !table || !copy) {
        r->error = -ENOMEM;
        goto out;
    }
    bool any = with_over &&
               (qc_found(&r->res, QC_P_REFCOUNT_LEAK) || qc_found(&r->res, QC_P_REFCOUNT_ORPHAN));
    for (size_t i = 0; i < r->nb_found; i++) {
        const repair_finding *f = &r->found[i];
        if (f->id != QC_P_L2_COPIED_WRONG || f->offset == QC_NO_OFFSET)
            continue;
        for (uint64_t c = f->offset >> g->cluster_bits;
             c < (f->offset >> g->cluster_bits) + f->count && c < check->file_clusters; c++)
            if (!qc_bitset_set(&flagged, c))
                r->error = -ENOMEM;
        any = true;
    }
    for (size_t t = 0; any && t < check->nb_l2_tables && !r->error; t++) {
        const qc_l2_table *tab = &check->l2_tables[t];
        if (!tab->active_refs ||
            qc_extent_conflicted(check, QC_OWN_L2, qc_l2_table_offset(check, tab)) ||
            qc_read_zero_filled(&r->view, qc_l2_table_offset(check, tab), table, g->cluster_size) < 0)
            continue;
        memcpy(copy, table, g->cluster_size);
        for (uint64_t i = 0; i < g->l2_entries; i++) {
            uint64_t entry = qc_be64(copy + i * g->l2_entry_size);
            uint64_t off = entry & QC_L2_OFFSET_MASK;
            uint64_t c = off >> g->cluster_bits;
            if ((entry & QC_OFLAG_COMPRESSED) || off == 0 || !qc_cluster_aligned(check, off) ||
                c >= check->file_clusters ||
                !(qc_bitset_test(&flagged, c) || (with_over && qc_bitset_test(&check->refcount_above_refs, c))))
                continue;
            bool want = qc_refmap_get(&check->refmap, c) == 1 && copied_may_be_set(check, c);
            qc_put_be64(copy + i * g->l2_entry_size,
                        want ? entry | QC_OFLAG_COPIED : entry & ~QC_OFLAG_COPIED);
        }
        char what[240];
        qc_describe_l2_table(check, tab, what, sizeof(what));
        for (uint64_t a = 0; a < g->cluster_size; a += 8) {
            if (memcmp(copy + a, table + a, 8) == 0)
                continue;
            uint64_t b = a + 8;
            while (b < g->cluster_size && memcmp(copy + b, table + b, 8) != 0)
                b += 8;
            qc_plan_write(r, qc_l2_table_offset(check, tab) + a, copy + a, (size_t)(b - a), what,
                       "entries %llu-%llu: COPIED set exactly where the data cluster has one "
                       "reference",
                       (unsigned long long)(a / g->l2_entry_size),
                       (unsigned long long)((b - 1) / g->l2_entry_size));
            a = b;
        }
    }
out:
    qc_bitset_release(&flagged);
    free(table);
    free(copy);
}

/* Active L1 entries the check flagged (l1CopiedWrong): COPIED set exactly
 * when the L2 table has one reference. */
static void fix_l1_copied(repair_run *r, const qc_check_view *check)
{
    for (size_t i = 0; i < r->nb_found; i++) {
        const repair_finding *f = &r->found[i];
        uint8_t be[8];
        if (f->id != QC_P_L1_COPIED_WRONG || qc_read_zero_filled(&r->view, f->offset, be, 8) < 0)
            continue;
        uint64_t c = (qc_be64(be) & QC_L1_OFFSET_MASK) >> check->geo.cluster_bits;
        bool want = c < check->file_clusters && qc_refmap_get(&check->refmap, c) == 1 &&
                    copied_may_be_set(check, c);
        rewrite_entry(r, f->offset, want ? 0 : QC_OFLAG_COPIED, want ? QC_OFLAG_COPIED : 0, 0,
                      "active L1 table", "COPIED set exactly when the L2 table has one reference");
    }
}

static uint64_t copied_findings(const qc_result *res)
{
    return qc_found(res, QC_P_L1_COPIED_WRONG) + qc_found(res, QC_P_L2_COPIED_WRONG);
}

bool qc_plan_leaks_fix_copied(const repair_run *r)
{
    return r->res.check_errors == 0 && r->res.corruptions == copied_findings(&r->res);
}

void qc_stage_leaks_copied(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check || !copied_findings(&r->res))
        return;
    /* QEMU's condition: the refcount repair left no leak, no corruption
     * (COPIED aside) and no check error, so the refcounts COPIED is judged
     * by are right. */
    if (r->res.leaks || !qc_plan_leaks_fix_copied(r)) {
        qc_plan_note(r, NOTE_GENERAL,
                  "COPIED flags left as they are: -r leaks fixes them only when no leak and no "
                  "other corruption remains (as qemu-img does); -r all fixes them");
        return;
    }
    fix_l1_copied(r, check);
    fix_data_copied(r, check, false);
    qc_plan_flush(r);
}

void qc_stage_copied(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return;
    for (size_t i = 0; i < r->nb_found; i++) {
        const repair_finding *f = &r->found[i];
        switch (f->id) {
        case QC_P_L2_ZERO_OFFSET_COPIED:
        case QC_P_COMPRESSED_COPIED:
            rewrite_entry(r, f->offset, QC_OFLAG_COPIED, 0, 0, "L2 table",
                          "COPIED is not allowed on this entry");
            break;
        case QC_P_L1_ENTRY_RESERVED_BITS:
            rewrite_entry(r, f->offset, QC_L1_RESERVED_MASK, 0, 0, "L1 table",
                          "reserved bits cleared (QEMU ignores them when reading)");
            break;
        case QC_P_L1_ZERO_OFFSET_FLAGS:
            rewrite_entry(r, f->offset, UINT64_MAX, 0, 0, "L1 table",
                          "no L2 table: the entry must be 0, or QEMU takes the header for one");
            break;
        case QC_P_L2_ENTRY_RESERVED_BITS:
            rewrite_entry(r, f->offset, QC_L2_RESERVED_MASK, 0, 0, "L2 table",
                          "reserved bits cleared (QEMU ignores them when reading)");
            break;
        case QC_P_L2_ZERO_FLAG_INVALID:
            rewrite_entry(r, f->offset, QC_OFLAG_ZERO, 0, 0, "L2 table",
                          "bit 0 cleared: it is not a zero flag here and QEMU ignores it");
            break;
        case QC_P_DATA_FILE_COPIED_MISSING:
            rewrite_entry(r, f->offset, 0, QC_OFLAG_COPIED, 0, "L2 table",
                          "data file clusters are not refcounted and are always COPIED");
            break;
        default:
            break;
        }
    }
    /* L2 tables with more references on disk than found: COPIED clear, as
     * QEMU wants for any refcount above 1. */
    for (size_t i = 0; i < check->nb_l2_refs; i++) {
        const qc_l2_ref *ref = &check->l2_refs[i];
        if (ref->snapshot == QC_ACTIVE && ref->copied &&
            qc_bitset_test(&check->refcount_above_refs, ref->l2_offset >> check->geo.cluster_bits))
            rewrite_entry(r, check->hdr.l1_table_offset + (uint64_t)ref->l1_index * 8,
                          QC_OFLAG_COPIED, 0, 0, "active L1 table",
                          "the L2 table has more than one reference on disk");
    }
    fix_l1_copied(r, check);
    fix_data_copied(r, check, true);
    qc_plan_flush(r);
}

/* The refcount of cluster c in its refcount block, if the block is
 * readable; false otherwise. */
static bool ondisk_refcount(repair_run *r, const qc_check_view *check, uint64_t c, uint64_t *value)
{
    const qc_geometry *g = &check->geo;
    uint64_t i = c / g->refblock_entries, j = c % g->refblock_entries;
    if (!check->reftable_usable || i >= check->reftable_entries ||
        check->refblock_state[i] != QC_REFBLOCK_VALID ||
        qc_extent_conflicted(check, QC_OWN_REFBLOCK, check->reftable[i]))
        return false;
    uint8_t be[8] = {0};
    uint64_t byte = j * g->refcount_bits / 8, len = (g->refcount_bits + 7) / 8;
    if (qc_read_zero_filled(&r->view, check->reftable[i] + byte, be, (size_t)len) < 0)
        return false;
    /* The entry is the first in a block that starts at its byte. */
    *value = qc_refblock_get(be, g->refcount_bits,
                             g->refcount_bits < 8 ? j % (8 / g->refcount_bits) : 0);
    return true;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The clusters the entries of the check reported as `id` (unaligned L1 or
 * L2 entries) point into, aligned down, sorted: a cluster two of them
 * point into is re-pointed by neither. NULL (count 0) when there are
 * none. */
static uint64_t *unaligned_targets(repair_run *r, qc_problem_id id, size_t *count)
{
    *count = 0;
    uint64_t *targets = NULL;
    size_t n = 0;
    for (size_t i = 0; i < r->nb_found; i++)
        n += r->found[i].id == id;
    if (!n || !(targets = malloc(n * sizeof(*targets)))) {
        if (n)
            r->error = -ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < r->nb_found; i++) {
        uint8_t be[8];
        if (r->found[i].id == id && qc_read_zero_filled(&r->view, r->found[i].offset, be, 8) == 0)
            targets[(*count)++] = (qc_be64(be) & QC_L2_OFFSET_MASK) >> r->cluster_bits;
    }
    qsort(targets, *count, sizeof(*targets), cmp_u64);
    return targets;
}

/* Whether cluster c, which a broken entry points into, is the one only
 * that entry points into: one target in the sorted list, allocated on disk
 * (`ondisk`), inside the file, referenced by nothing the check followed,
 * and not what a broken bitmap pointer may mean too. */
static bool sole_orphan_target(repair_run *r, const qc_check_view *check, uint64_t c,
                               const uint64_t *targets, size_t nb_targets, uint64_t *ondisk)
{
    const uint64_t *at = bsearch(&c, targets, nb_targets, sizeof(*targets), cmp_u64);
    return c < check->file_clusters && at && !(at > targets && at[-1] == c) &&
           !(at + 1 < targets + nb_targets && at[1] == c) && qc_refmap_get(&check->refmap, c) == 0 &&
           qc_bitset_test(&check->refcount_above_refs, c) && !qc_bitset_test(&check->bitmap_unfollowed_targets, c) &&
           ondisk_refcount(r, check, c, ondisk) && *ondisk != 0;
}

/* Recover before dropping: an unaligned L2 entry whose aligned-down
 * cluster is allocated (refcount on disk), inside the file and referenced
 * by nothing else (the cluster the check says it most likely meant) is
 * re-pointed there, so the guest keeps its data. COPIED is set only when
 * that cluster has refcount 1 on disk, the table serves the active image
 * alone and nothing unfollowed may share it. Returns whether it was. */
static bool repoint_l2_entry(repair_run *r, const qc_check_view *check, uint64_t at, const uint64_t *targets,
                             size_t nb_targets)
{
    const qc_geometry *g = &check->geo;
    const qc_l2_table *t = qc_l2_table_at(check, at);
    uint8_t be[8];
    uint64_t ondisk;
    if (!t || qc_read_zero_filled(&r->view, at, be, 8) < 0)
        return false;
    uint64_t entry = qc_be64(be), off = entry & QC_L2_OFFSET_MASK, c = off >> g->cluster_bits;
    if ((entry & QC_OFLAG_COMPRESSED) || qc_cluster_aligned(check, off) ||
        !sole_orphan_target(r, check, c, targets, nb_targets, &ondisk))
        return false;
    uint64_t to = c << g->cluster_bits;
    bool copied = ondisk == 1 && t->refs == 1 && t->active_refs == 1 && !check->unfollowed;
    uint64_t now =
        (entry & ~(QC_L2_OFFSET_MASK | QC_OFLAG_COPIED)) | to | (copied ? QC_OFLAG_COPIED : 0);
    char what[240];
    qc_describe_l2_table(check, t, what, sizeof(what));
    qc_put_be64(be, now);
    if (!qc_plan_write(r, at, be, 8, what,
                    "entry %llu pointed to 0x%llx, not cluster aligned; re-pointed to 0x%llx, the "
                    "allocated cluster it most likely meant, which nothing else references",
                    (unsigned long long)((at & (g->cluster_size - 1)) / g->l2_entry_size),
                    (unsigned long long)off, (unsigned long long)to))
        return false;
    char effect[160];
    snprintf(effect, sizeof(effect),
             "re-pointed from 0x%llx to 0x%llx, the allocated cluster it most likely meant "
             "(nothing else references it): the guest reads that cluster again",
             (unsigned long long)off, (unsigned long long)to);
    note_l2_guest(r, check, at, effect);
    qc_plan_unlink_l2_entry(r, check, at, entry, QC_P_L2_ENTRY_UNALIGNED, QC_UNLINK_RECOVERED, to);
    return true;
}

/* Whether the standard L2 entry at `at` maps no guest data: a preallocated
 * zero cluster, or with extended L2 no allocated subcluster. */
static bool maps_no_data(repair_run *r, const qc_geometry *g, uint64_t at)
{
    uint8_t be[16] = {0};
    if (qc_read_zero_filled(&r->view, at, be, g->l2_entry_size) < 0)
        return false;
    uint64_t entry = qc_be64(be);
    if (entry & QC_OFLAG_COMPRESSED)
        return false;
    return g->extended_l2 ? (uint32_t)qc_be64(be + 8) == 0 : (entry & QC_OFLAG_ZERO) != 0;
}

/* An L1 entry the broken pointers stage drops or re-points. */
typedef struct l1_pointer {
    uint64_t at, entry, index, ondisk;
    uint32_t snapshot;
    qc_problem_id id;
    char who[200];
} l1_pointer;

/* Unaligned L1 entries whose re-pointing is tried at most, each costing a
 * check of the view. */
#define L1_REPOINT_TRIES 8

static void clear_l1_entry(repair_run *r, const qc_geometry *g, uint64_t file_clusters,
                           const l1_pointer *p)
{
    uint8_t zero[8] = {0};
    char what[240];
    snprintf(what, sizeof(what), "L1 table of %s", p->who);
    if (!qc_plan_write(r, p->at, zero, 8, what,
                    "entry %llu points to an L2 table outside the file or off a cluster "
                    "boundary; cleared",
                    (unsigned long long)p->index))
        return;
    uint64_t span = g->l2_entries << g->cluster_bits;
    qc_plan_note(r, NOTE_GUEST_RANGE, "%s: guest bytes 0x%llx-0x%llx (L1 entry %llu) %s", p->who,
              (unsigned long long)(p->index * span),
              (unsigned long long)(p->index * span + span - 1), (unsigned long long)p->index,
              guest_effect(r));
    uint64_t target = p->entry & QC_L1_OFFSET_MASK;
    bool in_file = (target >> g->cluster_bits) < file_clusters;
    qc_unlinked item = {QC_UNLINK_DROPPED,
                        p->id,
                        in_file ? target & ~(g->cluster_size - 1) : QC_NO_OFFSET,
                        in_file ? g->cluster_size : 0,
                        p->snapshot,
                        p->index * span,
                        span,
                        p->at,
                        target,
                        QC_NO_OFFSET};
    qc_plan_unlinked(r, &item);
}

/* Whether the check of the view after re-pointing an L1 entry to the L2
 * table at `table` shows no new problem: fewer corruptions, none of any
 * kind more than before (no refcount too low or zero: every cluster the
 * table maps was allocated and unreferenced; no data on metadata), no
 * finding inside the table, and no check error. */
static bool repoint_holds(const repair_run *r, const qc_result *before, uint64_t table,
                          uint64_t size)
{
    const qc_result *now = &r->res;
    if (now->check_errors || now->corruptions >= before->corruptions)
        return false;
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++)
        if (qc_problem_at(i)->severity == QC_SEV_CORRUPTION &&
            now->per_problem[i] > before->per_problem[i])
            return false;
    for (size_t i = 0; i < r->nb_found; i++)
        if (r->found[i].offset >= table && r->found[i].offset - table < size)
            return false;
    return true;
}

/* Recover before dropping, for an unaligned L1 entry whose aligned-down
 * cluster is allocated, unreferenced and only its own (its lost L2 table,
 * most likely, after a flipped low bit): re-point it on the view, check
 * the view again, and keep it only if that check shows no new problem;
 * otherwise take it back and drop the entry. COPIED (active L1 only) when
 * the table has refcount 1 on disk; the COPIED stage corrects it if the
 * references found say otherwise. */
static void try_repoint_l1(repair_run *r, const qc_geometry *g, uint64_t file_clusters,
                           const l1_pointer *p, qc_result *baseline)
{
    uint64_t off = p->entry & QC_L1_OFFSET_MASK, to = off & ~(g->cluster_size - 1);
    bool copied = p->snapshot == QC_ACTIVE && p->ondisk == 1;
    uint64_t now = (p->entry & ~(QC_L1_OFFSET_MASK | QC_OFLAG_COPIED)) | to |
                   (copied ? QC_OFLAG_COPIED : 0);
    uint8_t be[8];
    char what[240];
    snprintf(what, sizeof(what), "L1 table of %s", p->who);
    qc_put_be64(be, now);
    if (!qc_plan_write(r, p->at, be, 8, what,
                    "entry %llu pointed to 0x%llx, not cluster aligned; re-pointed to 0x%llx, the "
                    "allocated cluster it most likely meant, which holds a valid L2 table nothing "
                    "else references",
                    (unsigned long long)p->index, (unsigned long long)off,
                    (unsigned long long)to)) {
        clear_l1_entry(r, g, file_clusters, p);
        return;
    }
    if (!qc_plan_try_check(r) || !repoint_holds(r, baseline, to, g->cluster_size)) {
        qc_plan_undo_write(r);
        clear_l1_entry(r, g, file_clusters, p);
        return;
    }
    *baseline = r->res;
    uint64_t span = g->l2_entries << g->cluster_bits;
    qc_plan_note(r, NOTE_GUEST_RANGE,
              "%s: guest bytes 0x%llx-0x%llx (L1 entry %llu) re-pointed from 0x%llx to 0x%llx, "
              "the allocated cluster it most likely meant; checked as a valid L2 table whose "
              "clusters nothing else references: the guest reads them again",
              p->who, (unsigned long long)(p->index * span),
              (unsigned long long)(p->index * span + span - 1), (unsigned long long)p->index,
              (unsigned long long)off, (unsigned long long)to);
    qc_unlinked item = {QC_UNLINK_RECOVERED, p->id,  to,    g->cluster_size, p->snapshot,
                        p->index * span,     span,   p->at, off,             to};
    qc_plan_unlinked(r, &item);
}

void qc_stage_broken_pointers(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return;
    const qc_geometry *g = &check->geo;
    const uint64_t file_clusters = check->file_clusters;
    size_t nb_l2, nb_l1, nb_tries = 0;
    uint64_t *l2_targets = unaligned_targets(r, QC_P_L2_ENTRY_UNALIGNED, &nb_l2);
    uint64_t *l1_targets = unaligned_targets(r, QC_P_L1_ENTRY_UNALIGNED, &nb_l1);
    l1_pointer *tries = calloc(L1_REPOINT_TRIES, sizeof(*tries));
    if (!tries)
        r->error = -ENOMEM;
    for (size_t i = 0; i < r->nb_found && !r->error; i++) {
        const repair_finding *f = &r->found[i];
        switch (f->id) {
        case QC_P_L2_ENTRY_UNALIGNED:
            if (check->has_data_file) {
                /* Its target lies in the data file, which qcheck neither
                 * reads nor salvages. An entry that maps no data (a
                 * preallocated cluster, read as zeros) is cleared, as
                 * QEMU's -r all does; one with data is also a
                 * dataFileOffsetMismatch, which has no repair. */
                if (maps_no_data(r, g, f->offset))
                    clear_l2_entry(r, check, f->offset, f->id,
                                   "a preallocated cluster off a cluster boundary");
                break;
            }
            if (repoint_l2_entry(r, check, f->offset, l2_targets, nb_l2))
                break;
            /* fall through */
        case QC_P_L2_ENTRY_PAST_EOF:
        case QC_P_COMPRESSED_RANGE_INVALID:
            clear_l2_entry(r, check, f->offset, f->id,
                           "it points outside the file or off a cluster boundary");
            break;
        case QC_P_L1_ENTRY_UNALIGNED:
        case QC_P_L1_ENTRY_PAST_EOF: {
            l1_pointer p = {.at = f->offset, .id = f->id};
            uint8_t be[8];
            if (!l1_entry_at(check, f->offset, &p.snapshot, &p.index) ||
                qc_read_zero_filled(&r->view, f->offset, be, 8) < 0)
                break;
            p.entry = qc_be64(be);
            describe_owner(check, p.snapshot, p.who, sizeof(p.who));
            uint64_t c = (p.entry & QC_L1_OFFSET_MASK) >> g->cluster_bits;
            if (f->id == QC_P_L1_ENTRY_UNALIGNED && nb_tries < L1_REPOINT_TRIES &&
                sole_orphan_target(r, check, c, l1_targets, nb_l1, &p.ondisk) &&
                /* an all-zero L2 table maps nothing: nothing to recover */
                qc_plan_view_has_data(r, c << g->cluster_bits, g->cluster_size) > 0)
                tries[nb_tries++] = p; /* after the other entries, on a check of its own */
            else
                clear_l1_entry(r, g, file_clusters, &p);
            break;
        }
        default:
            break;
        }
    }
    /* From here on the check of the view is redone: `check` and the findings
     * are those of an earlier one. */
    qc_result baseline = {0}; /* without a check, no re-pointing can hold */
    if (nb_tries && qc_plan_try_check(r))
        baseline = r->res;
    for (size_t i = 0; i < nb_tries && !r->error; i++) {
        if (!baseline.corruptions)
            clear_l1_entry(r, g, file_clusters, &tries[i]);
        else
            try_repoint_l1(r, g, file_clusters, &tries[i], &baseline);
    }
    free(tries);
    free(l1_targets);
    free(l2_targets);
    qc_plan_flush(r);
}
