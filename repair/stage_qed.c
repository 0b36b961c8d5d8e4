/*
 * The repair of a QED image: its stages and their handler table.
 *
 * QED has no refcounts. QEMU's check, with any -r, clears the L1 and L2
 * entries it finds invalid and clears the need-check bit when nothing is
 * left; it never touches leaks or clusters referenced twice. qcheck's
 * stages, on the check of the view (ctx.qed, see checker/pass_qed.c):
 *
 *   invalid entries  (-r all) an unaligned data entry re-pointed to the
 *                    leaked cluster it points into, when no other entry
 *                    does; every other invalid entry set to 0 as QEMU
 *                    does, each guest range named;
 *   trailing leaks   (both, only with qc_options.truncate_leaks) the run of
 *                    leaked clusters that ends the file is cut off,
 *                    unless the first check found entries it could not
 *                    follow (what they meant may be there); otherwise a
 *                    note says how much could be;
 *   shared clusters  (-r all) a data cluster two L2 entries map, or an L2
 *                    table two L1 entries point to, is copied for the
 *                    later one, so both keep what they read; a data
 *                    mapping onto a cluster a table claimed first, and an
 *                    L1 entry pointing onto the L1 table, are cleared; an
 *                    L2 table sharing a cluster with guest data is left
 *                    alone, with a note;
 *   header           (both) unknown autoclear bits cleared (as QEMU's
 *                    read-write open does), and the need-check bit, the
 *                    fence of every QED repair (write_qed_fence in
 *                    planner.c), left set only when it was set and the
 *                    image is not clean.
 *
 * Needs: a repair_run whose first check walked the whole image. Produces:
 * plan steps, notes and unlinked items.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

#define QED_FEATURES_AT 16 /* features, compat and autoclear features: 24 bytes */

/* The check of the view, as far as a QED stage reads it; NULL when the
 * view could not be checked completely (noted). */
static const qc_qed_view *current_qed(repair_run *r)
{
    if (!qc_plan_current_check(r))
        return NULL;
    return &r->ctx.qed;
}

static const char *guest_effect(const repair_run *r)
{
    return (r->ctx.qed.h.features & QC_QED_F_BACKING_FILE) ? "now read from the backing file"
                                                           : "now read as zeros";
}

/* The host range an entry pointed to, cluster aligned, as far as it lies
 * in the file (for --salvage), or QC_NO_OFFSET. */
static void target_range(const repair_run *r, const qc_qed_item *it, uint64_t *off, uint64_t *len)
{
    const qc_qed_view *q = &r->ctx.qed;
    uint64_t start = it->target & ~(q->cluster_size - 1);
    uint64_t want = it->table ? (uint64_t)q->h.table_size * q->cluster_size : q->cluster_size;
    uint64_t size = r->plan->size_before;
    *off = QC_NO_OFFSET;
    *len = 0;
    if (start >= size)
        return;
    *off = start;
    *len = size - start < want ? size - start : want;
}

/* Clear one entry of the view (its guest range named and listed). */
static bool drop_entry(repair_run *r, const qc_qed_item *it, qc_problem_id problem,
                       const char *reason)
{
    static const uint8_t zero[8];
    const char *what = it->table ? "L1 table" : "L2 table";
    if (!qc_plan_write(r, it->entry, zero, 8, what, "the entry at 0x%llx (0x%llx) %s; cleared",
                       (unsigned long long)it->entry, (unsigned long long)it->target, reason))
        return false;
    if (it->guest_length)
        qc_plan_note(r, NOTE_GUEST_RANGE,
                     "the active image: guest bytes 0x%llx-0x%llx (%s entry at 0x%llx) %s",
                     (unsigned long long)it->guest,
                     (unsigned long long)(it->guest + it->guest_length - 1),
                     it->table ? "L1" : "L2", (unsigned long long)it->entry, guest_effect(r));
    qc_unlinked item = {.kind = QC_UNLINK_DROPPED, .problem = problem,
                        .snapshot = QC_UNLINKED_ACTIVE, .entry_offset = it->entry,
                        .target = it->target, .new_target = QC_NO_OFFSET,
                        .guest_offset = it->guest_length ? it->guest : QC_NO_OFFSET,
                        .guest_length = it->guest_length};
    target_range(r, it, &item.host_offset, &item.length);
    qc_plan_unlinked(r, &item);
    return true;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The clusters the invalid data entries point into, sorted: one
 * allocation per check instead of a scan of every item per entry (a
 * hostile image may have millions). NULL (r->error set) without memory. */
static uint64_t *invalid_targets(repair_run *r, const qc_qed_view *q, size_t *n)
{
    uint64_t *clusters = malloc((q->nb_items ? q->nb_items : 1) * sizeof(*clusters));
    *n = 0;
    if (!clusters) {
        r->error = -ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < q->nb_items; i++)
        if (q->items[i].kind == QC_QED_BAD_L2_ENTRY)
            clusters[(*n)++] = q->items[i].target & ~(q->cluster_size - 1);
    qsort(clusters, *n, sizeof(*clusters), cmp_u64);
    return clusters;
}

/* The cluster an unaligned data entry provably meant: the one it points
 * into, when that cluster is leaked (nothing else uses it) and no other
 * invalid entry points into it (`targets`: invalid_targets); otherwise
 * UINT64_MAX. */
static uint64_t meant_cluster(const qc_qed_view *q, const qc_qed_item *it,
                              const uint64_t *targets, size_t nb_targets)
{
    uint64_t cs = q->cluster_size, aligned = it->target & ~(cs - 1);
    if (it->kind != QC_QED_BAD_L2_ENTRY || aligned == it->target ||
        aligned / cs >= q->nclusters || !qc_qed_leaked(q, aligned / cs))
        return UINT64_MAX;
    size_t first = qc_lower_bound(targets, nb_targets, sizeof(*targets), 0, aligned);
    bool alone = first + 1 >= nb_targets || targets[first + 1] != aligned;
    return alone ? aligned : UINT64_MAX;
}

/* Re-point an unaligned data entry to the cluster it points into. */
static bool recover_entry(repair_run *r, const qc_qed_item *it, uint64_t to)
{
    uint8_t le[8];
    qc_qed_put_entry(le, 0, to);
    if (!qc_plan_write(r, it->entry, le, 8, "L2 table",
                       "the entry at 0x%llx (guest offset 0x%llx) points into host cluster "
                       "0x%llx, off its boundary (0x%llx), and nothing else uses that cluster; "
                       "re-pointed there",
                       (unsigned long long)it->entry, (unsigned long long)it->guest,
                       (unsigned long long)to, (unsigned long long)it->target))
        return false;
    if (it->guest_length)
        qc_plan_note(r, NOTE_GUEST_RANGE,
                     "the active image: guest bytes 0x%llx-0x%llx (L2 entry at 0x%llx) re-pointed "
                     "from 0x%llx to 0x%llx, the leaked cluster it points into (recovered)",
                     (unsigned long long)it->guest,
                     (unsigned long long)(it->guest + it->guest_length - 1),
                     (unsigned long long)it->entry, (unsigned long long)it->target,
                     (unsigned long long)to);
    qc_unlinked item = {.kind = QC_UNLINK_RECOVERED, .problem = QC_P_QED_L2_ENTRY_INVALID,
                        .host_offset = to, .length = r->ctx.qed.cluster_size,
                        .snapshot = QC_UNLINKED_ACTIVE, .entry_offset = it->entry,
                        .target = it->target, .new_target = to,
                        .guest_offset = it->guest_length ? it->guest : QC_NO_OFFSET,
                        .guest_length = it->guest_length};
    qc_plan_unlinked(r, &item);
    return true;
}

void qc_qed_first_check(repair_run *r)
{
    const qc_qed_view *q = &r->ctx.qed;
    r->qed_unfollowed_first = 0;
    size_t nb_targets;
    uint64_t *targets = invalid_targets(r, q, &nb_targets);
    for (size_t i = 0; targets && i < q->nb_items; i++) {
        const qc_qed_item *it = &q->items[i];
        bool unfollowed =
            it->kind == QC_QED_BAD_L1_ENTRY ||
            (it->kind == QC_QED_BAD_L2_ENTRY &&
             meant_cluster(q, it, targets, nb_targets) == UINT64_MAX) ||
            (it->kind == QC_QED_SECOND_CLAIM && it->table);
        r->qed_unfollowed_first += unfollowed;
    }
    free(targets);
}

static void stage_invalid_entries(repair_run *r)
{
    const qc_qed_view *q = current_qed(r);
    if (!q)
        return;
    size_t nb_targets;
    uint64_t *targets = invalid_targets(r, q, &nb_targets);
    for (size_t i = 0; targets && i < q->nb_items && !r->error; i++) {
        const qc_qed_item *it = &q->items[i];
        uint64_t meant = meant_cluster(q, it, targets, nb_targets);
        if (meant != UINT64_MAX)
            recover_entry(r, it, meant);
        else if (it->kind == QC_QED_BAD_L1_ENTRY)
            drop_entry(r, it, QC_P_QED_L1_ENTRY_INVALID,
                       "points to an L2 table that is not aligned, lies in the header or does not "
                       "fit in the file");
        else if (it->kind == QC_QED_BAD_L2_ENTRY)
            drop_entry(r, it, QC_P_QED_L2_ENTRY_INVALID,
                       "points to a data cluster that is not aligned, lies in the header or past "
                       "the end of the file");
    }
    free(targets);
    qc_plan_flush(r);
}

static void stage_trailing_leaks(repair_run *r)
{
    const qc_qed_view *q = current_qed(r);
    if (!q || q->trailing_leak >= q->nclusters)
        return;
    uint64_t from = q->trailing_leak * q->cluster_size;
    uint64_t clusters = q->nclusters - q->trailing_leak;
    if (r->check_opts.truncate_leaks && r->qed_unfollowed_first) {
        qc_plan_note(r, NOTE_GENERAL,
                     "kept: %llu leaked cluster%s at the end of the file from 0x%llx, not cut "
                     "off: %llu entr%s of the image could not be followed (invalid, or an L2 table "
                     "sharing a cluster), and what they meant may be there; copy them out if "
                     "they matter: once -r all has dropped those entries, --truncate-leaks cuts "
                     "them",
                     (unsigned long long)clusters, clusters == 1 ? "" : "s",
                     (unsigned long long)from, (unsigned long long)r->qed_unfollowed_first,
                     r->qed_unfollowed_first == 1 ? "y" : "ies");
        return;
    }
    if (!r->check_opts.truncate_leaks) {
        qc_plan_note(r, NOTE_GENERAL,
                     "%llu leaked cluster%s (%llu bytes) end%s the file from 0x%llx: QED has no "
                     "refcounts, so only cutting the file short reclaims them; "
                     "--truncate-leaks does that",
                     (unsigned long long)clusters, clusters == 1 ? "" : "s",
                     (unsigned long long)(r->view.size - from), clusters == 1 ? "s" : "",
                     (unsigned long long)from);
        return;
    }
    if (!qc_plan_truncate(r, from, "the file",
                          "%llu leaked cluster%s at its end cut off (--truncate-leaks)",
                          (unsigned long long)clusters, clusters == 1 ? "" : "s"))
        return;
    qc_unlinked item = {.kind = QC_UNLINK_FREED, .problem = QC_P_QED_CLUSTER_LEAKED,
                        .host_offset = from, .length = r->plan->size_before - from,
                        .snapshot = QC_UNLINKED_NONE, .guest_offset = QC_NO_OFFSET,
                        .entry_offset = QC_NO_OFFSET, .target = QC_NO_OFFSET,
                        .new_target = QC_NO_OFFSET};
    qc_plan_unlinked(r, &item);
    qc_plan_flush(r);
}

/* A cluster two entries share, separated: the later entry's target (a
 * data cluster, or an L2 table another L1 entry points to) copied to new
 * clusters at the end of the file (where QEMU would allocate them), then,
 * after a flush, the entry re-pointed to the copy. */
typedef struct qed_copy {
    const qc_qed_item *item;
    uint64_t to;
} qed_copy;

/* Cluster k of what `it` points to, as its copy holds it. A shared L2
 * table is copied as the image had it before the repair: what the later
 * L1 entry read through it, not what the repair made of it for the
 * first one (an entry cleared there must be named for the later one's
 * guest range too, which the next round does when it walks the copy).
 * The table was never walked for the later entry, so nothing checked its
 * entries: those that point outside the file as it is now are cleared in
 * the copy (and, with `record`, named and listed), so that no entry of
 * the copy can point at what the repair appends. */
static int copy_cluster(repair_run *r, const qc_qed_item *it, uint64_t k, uint8_t *buf,
                        bool record)
{
    const qc_qed_view *q = &r->ctx.qed;
    uint64_t cs = q->cluster_size, per = cs / 8, at = it->target + k * cs;
    qc_io *from = it->table && at < r->image->size ? r->image : &r->view;
    int ret = qc_read_zero_filled(from, at, buf, (size_t)cs);
    if (ret < 0 || !it->table)
        return ret;
    uint64_t header_end = (uint64_t)q->h.header_size * cs;
    for (uint64_t j = 0; j < per; j++) {
        uint64_t e = qc_qed_entry(buf, j);
        if (e == QC_QED_UNALLOCATED || e == QC_QED_ZERO_CLUSTER ||
            ((e & (cs - 1)) == 0 && e >= header_end && e < q->file_end))
            continue;
        qc_qed_put_entry(buf, j, 0);
        uint64_t index = k * per + j, guest;
        if (!record || !qc_mul_ok(index, cs, &guest) || !qc_add_ok(it->guest, guest, &guest) ||
            guest >= q->h.image_size)
            continue;
        uint64_t length = q->h.image_size - guest < cs ? q->h.image_size - guest : cs;
        qc_plan_note(r, NOTE_GUEST_RANGE,
                     "the active image: guest bytes 0x%llx-0x%llx (entry %llu of the L2 table "
                     "at 0x%llx, invalid: 0x%llx) %s in the copy",
                     (unsigned long long)guest, (unsigned long long)(guest + length - 1),
                     (unsigned long long)index, (unsigned long long)it->target,
                     (unsigned long long)e, guest_effect(r));
        qc_unlinked item = {.kind = QC_UNLINK_DROPPED, .problem = QC_P_QED_L2_ENTRY_INVALID,
                            .host_offset = QC_NO_OFFSET, .snapshot = QC_UNLINKED_ACTIVE,
                            .entry_offset = it->target + index * 8, .target = e,
                            .new_target = QC_NO_OFFSET, .guest_offset = guest,
                            .guest_length = length};
        qc_plan_unlinked(r, &item);
    }
    return 0;
}

/* Append a copy of the `clusters` clusters at it->target to the view at
 * `to`; false when not planned. */
static bool copy_target(repair_run *r, const qc_qed_item *it, uint64_t to, uint64_t clusters,
                        uint8_t *buf)
{
    uint64_t cs = r->ctx.qed.cluster_size;
    for (uint64_t k = 0; k < clusters; k++) {
        int ret = copy_cluster(r, it, k, buf, true);
        if (ret < 0) {
            r->error = ret;
            return false;
        }
        bool planned = it->table
                           ? qc_plan_write(r, to + k * cs, buf, (size_t)cs, "new L2 table",
                                           "cluster %llu of a copy of the L2 table at 0x%llx, "
                                           "which the L1 entries at 0x%llx and 0x%llx share, "
                                           "for the second",
                                           (unsigned long long)k, (unsigned long long)it->target,
                                           (unsigned long long)it->first_l1_entry,
                                           (unsigned long long)it->entry)
                           : qc_plan_write(r, to, buf, (size_t)cs, "new data cluster",
                                           "a copy of host cluster 0x%llx, which guest offsets "
                                           "0x%llx and 0x%llx both map, for guest offset 0x%llx",
                                           (unsigned long long)it->target,
                                           (unsigned long long)it->first_guest,
                                           (unsigned long long)it->guest,
                                           (unsigned long long)it->guest);
        if (!planned)
            return false;
    }
    return true;
}

/* Whether the view already holds, at `at`, the copy of what `it` points
 * to (1, 0, or a negative errno, also in r->error); `buf` holds two
 * clusters. */
static int copy_already_at(repair_run *r, const qc_qed_item *it, uint64_t at, uint64_t clusters,
                           uint8_t *buf)
{
    size_t cs = (size_t)r->ctx.qed.cluster_size;
    for (uint64_t k = 0; k < clusters; k++) {
        int ret = copy_cluster(r, it, k, buf, false);
        if (ret == 0)
            ret = qc_read_zero_filled(&r->view, at + k * cs, buf + cs, cs);
        if (ret < 0) {
            r->error = ret;
            return ret;
        }
        if (memcmp(buf, buf + cs, cs) != 0)
            return 0;
    }
    return 1;
}

static void repoint(repair_run *r, const qed_copy *copy)
{
    const qc_qed_item *it = copy->item;
    char shared[128];
    if (it->table)
        snprintf(shared, sizeof(shared),
                 "the L2 table at 0x%llx, which the L1 entry at 0x%llx points to too",
                 (unsigned long long)it->target, (unsigned long long)it->first_l1_entry);
    else
        snprintf(shared, sizeof(shared), "host cluster 0x%llx, which guest offset 0x%llx maps too",
                 (unsigned long long)it->target, (unsigned long long)it->first_guest);
    uint8_t le[8];
    qc_qed_put_entry(le, 0, copy->to);
    if (qc_plan_write(r, it->entry, le, 8, it->table ? "L1 table" : "L2 table",
                      "the entry at 0x%llx re-pointed from %s, to its copy at 0x%llx",
                      (unsigned long long)it->entry, shared, (unsigned long long)copy->to) &&
        it->guest_length)
        qc_plan_note(r, NOTE_GUEST_RANGE,
                     "the active image: guest bytes 0x%llx-0x%llx now have their own copy of %s "
                     "(nothing changes for the guest)",
                     (unsigned long long)it->guest,
                     (unsigned long long)(it->guest + it->guest_length - 1), shared);
}

static void stage_shared(repair_run *r)
{
    const qc_qed_view *q = current_qed(r);
    if (!q)
        return;
    uint64_t cs = q->cluster_size;
    qed_copy *copies = calloc(q->nb_items ? q->nb_items : 1, sizeof(*copies));
    uint8_t *buf = malloc(2 * cs);
    if (!copies || !buf) {
        free(copies);
        free(buf);
        r->error = -ENOMEM;
        return;
    }
    size_t nb_copies = 0;
    /* Where QEMU allocates: the end of the file as it sees it, past
     * everything an entry may point to. A copy an interrupted repair
     * already wrote is at the start of the leaked run that ends the file,
     * in the same order: used as it is, so that the next run ends where an
     * uninterrupted one does. */
    uint64_t end = q->file_end;
    uint64_t earlier = q->trailing_leak < q->nclusters ? q->trailing_leak * cs : UINT64_MAX;
    for (size_t i = 0; i < q->nb_items && !r->error; i++) {
        const qc_qed_item *it = &q->items[i];
        if (it->kind != QC_QED_SECOND_CLAIM)
            continue;
        if (it->table && it->first_l1) {
            /* The L1 table cannot be an L2 table too. */
            drop_entry(r, it, QC_P_QED_CLUSTER_REFERENCED_TWICE,
                       "points to an L2 table on the L1 table");
            continue;
        }
        if (it->table && !it->first_l2) {
            qc_plan_note(r, NOTE_GENERAL,
                         "left alone: the L2 table at 0x%llx (L1 entry at 0x%llx) shares a "
                         "cluster with guest data; which of them is real is not known "
                         "(qedClusterReferencedTwice)",
                         (unsigned long long)it->target, (unsigned long long)it->entry);
            continue;
        }
        if (!it->table && (it->first_l1 || it->first_l2)) {
            drop_entry(r, it, QC_P_QED_CLUSTER_REFERENCED_TWICE,
                       "maps guest data onto a cluster of a table");
            continue;
        }
        /* Two L2 entries mapping one data cluster, or two L1 entries one
         * L2 table (whose data clusters the next round separates). */
        uint64_t clusters = it->table ? q->h.table_size : 1;
        if (earlier != UINT64_MAX && earlier + clusters * cs <= q->file_end) {
            int same = copy_already_at(r, it, earlier, clusters, buf);
            if (same < 0)
                break;
            if (same) {
                copies[nb_copies++] = (qed_copy){it, earlier};
                earlier += clusters * cs;
                continue;
            }
        }
        earlier = UINT64_MAX;
        if (!copy_target(r, it, end, clusters, buf))
            continue;
        copies[nb_copies++] = (qed_copy){it, end};
        end += clusters * cs;
    }
    qc_plan_flush(r);
    for (size_t i = 0; i < nb_copies && !r->error; i++)
        repoint(r, &copies[i]);
    qc_plan_flush(r);
    free(copies);
    free(buf);
}

/* The final header: unknown autoclear bits cleared; the need-check bit
 * set only when it was and the image is still not clean (QEMU's
 * condition: no corruption, no check error). */
static void stage_header(repair_run *r)
{
    if (!current_qed(r))
        return;
    uint8_t now[24], want[24];
    int ret = qc_read_zero_filled(&r->view, QED_FEATURES_AT, now, sizeof(now));
    if (ret < 0) {
        r->error = ret;
        return;
    }
    memcpy(want, now, sizeof(want));
    uint64_t features = qc_qed_entry(now, 0);
    bool clean = r->res.corruptions == 0 && r->res.check_errors == 0;
    if (clean || !r->qed_need_check_before)
        features &= ~QC_QED_F_NEED_CHECK;
    qc_qed_put_entry(want, 0, features);
    qc_qed_put_entry(want, 2, 0);
    if (memcmp(now, want, sizeof(want)) == 0)
        return;
    qc_plan_flush(r); /* what the fence covers reaches the disk first */
    qc_plan_write(r, QED_FEATURES_AT, want, sizeof(want), "QED header (features)",
                  "%s%s", qc_qed_entry(now, 2) ? "unknown autoclear bits cleared; " : "",
                  features & QC_QED_F_NEED_CHECK ? "the need-check bit stays set: the image is not clean"
                  : clean ? "the need-check bit cleared: the image is consistent"
                          : "the need-check bit cleared, as it was before the repair");
}

#define MODE_LEAKS (1u << QC_REPAIR_LEAKS)
#define MODE_ALL (1u << QC_REPAIR_ALL)
#define ACTION(fix) (1u << QC_FIX_##fix)

/* In order: entries are cleared before the file is cut or grows, so that
 * no entry that pointed past the end ever points at new bytes; copies are
 * flushed before an entry points to them; the header comes last. */
const qc_repair_handler qc_qed_repair_handlers[] = {
    {"QED invalid entries", stage_invalid_entries, MODE_ALL, ACTION(QED_CLEAR_ENTRY), 0},
    {"QED trailing leaks", stage_trailing_leaks, MODE_LEAKS | MODE_ALL,
     ACTION(QED_TRUNCATE_LEAKS), 0},
    {"QED shared clusters", stage_shared, MODE_ALL, ACTION(QED_SEPARATE), 0},
    {"QED header", stage_header, MODE_LEAKS | MODE_ALL, 0,
     ACTION(CLEAR_FEATURE_BIT) | ACTION(CLEAR_DIRTY_BIT)},
};
const size_t qc_qed_repair_handler_count =
    sizeof(qc_qed_repair_handlers) / sizeof(qc_qed_repair_handlers[0]);
