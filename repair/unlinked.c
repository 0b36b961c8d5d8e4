/*
 * What a repair unlinks, frees or recovers (qc_unlinked, in the plan).
 *
 * The stages record every pointer they drop or re-point and every
 * structure they replace; the refcount stage records every cluster whose
 * refcount it lowers to 0, attributed to the dropped item that covers it
 * (a dropped pointer's cluster, a replaced structure), or else to the
 * first check's verdict on it (a leak, an orphan). A dropped pointer whose
 * cluster is freed becomes one item with both bits. After the last stage
 * the frees that are not plain leaks are told in notes.
 * The ids and names of the snapshots as the first check decoded them are
 * kept too, since the indices refer to the table before the repair.
 * Needs: the current check for the guest ranges. Produces: plan->unlinked,
 * plan->snapshot_labels, notes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

void qc_plan_unlinked(repair_run *r, const qc_unlinked *item)
{
    qc_repair_plan *p = r->plan;
    if (r->error)
        return;
    /* Consecutive pieces of one replaced structure are one item. */
    qc_unlinked *last = p->nb_unlinked ? &p->unlinked[p->nb_unlinked - 1] : NULL;
    if (last && last->kind == item->kind && item->kind == QC_UNLINK_DROPPED &&
        last->snapshot == QC_UNLINKED_NONE && item->snapshot == QC_UNLINKED_NONE &&
        last->problem == item->problem && last->entry_offset == QC_NO_OFFSET &&
        item->entry_offset == QC_NO_OFFSET && last->host_offset != QC_NO_OFFSET &&
        last->host_offset + last->length == item->host_offset) {
        last->length += item->length;
        r->owners_stale = true;
        return;
    }
    if (p->nb_unlinked == p->cap_unlinked) {
        size_t cap = p->cap_unlinked ? p->cap_unlinked * 2 : 16;
        qc_unlinked *items = realloc(p->unlinked, cap * sizeof(*items));
        if (!items) {
            r->error = -ENOMEM;
            return;
        }
        p->unlinked = items;
        p->cap_unlinked = cap;
    }
    p->unlinked[p->nb_unlinked++] = *item;
    if ((item->kind & QC_UNLINK_DROPPED) && item->length)
        r->owners_stale = true;
}

void qc_plan_unlink_l2_entry(repair_run *r, const qc_check_view *check, uint64_t at, uint64_t entry,
                     qc_problem_id problem, unsigned kind, uint64_t new_target)
{
    const qc_geometry *g = &check->geo;
    const qc_l2_table *t = qc_l2_table_at(check, at);
    if (!t)
        return;
    uint64_t target = entry & QC_L2_OFFSET_MASK, first = target >> g->cluster_bits, last = first;
    if (entry & QC_OFLAG_COMPRESSED) {
        qc_compressed c;
        qc_compressed_decode(g, entry, &c);
        target = c.host_offset;
        first = c.high_bits ? UINT64_MAX : c.host_offset >> g->cluster_bits;
        last = c.high_bits ? UINT64_MAX : (c.host_offset + c.length - 1) >> g->cluster_bits;
    }
    if (kind & QC_UNLINK_RECOVERED)
        first = last = new_target >> g->cluster_bits;
    /* A compressed range may run past the end of the file: its part inside
     * the file is what the entry took with it. */
    bool in_file = first < check->file_clusters;
    /* With an external data file the entry's target is in that file, not
     * in the image. */
    in_file &= !check->has_data_file;
    if (in_file && last >= check->file_clusters)
        last = check->file_clusters - 1;
    uint64_t index = (at - qc_l2_table_offset(check, t)) / g->l2_entry_size;
    for (uint64_t k = 0; k < t->refs; k++) {
        const qc_l2_ref *ref = &check->l2_refs[t->first_ref + k];
        qc_unlinked item = {
            .kind = kind,
            .problem = problem,
            .host_offset = in_file ? first << g->cluster_bits : QC_NO_OFFSET,
            .length = in_file ? (last - first + 1) << g->cluster_bits : 0,
            .snapshot = ref->snapshot,
            .guest_offset = ((uint64_t)ref->l1_index * g->l2_entries + index) << g->cluster_bits,
            .guest_length = g->cluster_size,
            .entry_offset = at,
            .target = target,
            .new_target = kind & QC_UNLINK_RECOVERED ? new_target : QC_NO_OFFSET,
        };
        qc_plan_unlinked(r, &item);
    }
}

/* A dropped structure at [start, end) of the file, as the whole clusters
 * it occupies; entry_offset and target name the pointer to it, if any. */
static void unlink_clusters(repair_run *r, const qc_geometry *g, qc_problem_id problem,
                            uint64_t start, uint64_t end, uint64_t entry_offset, uint64_t target)
{
    uint64_t first = start >> g->cluster_bits, last = (end - 1) >> g->cluster_bits;
    qc_unlinked item = {QC_UNLINK_DROPPED,
                        problem,
                        first << g->cluster_bits,
                        (last - first + 1) << g->cluster_bits,
                        QC_UNLINKED_NONE,
                        QC_NO_OFFSET,
                        0,
                        entry_offset,
                        target,
                        QC_NO_OFFSET};
    qc_plan_unlinked(r, &item);
}

void qc_plan_unlink_structures(repair_run *r, const qc_check_view *check, uint32_t owners, qc_problem_id problem)
{
    for (size_t i = 0; i < check->nb_extents && !r->error; i++) {
        const qc_extent *e = &check->extents[i];
        if ((owners & 1u << e->owner) && e->length)
            unlink_clusters(r, &check->geo, problem, e->start, e->start + e->length, QC_NO_OFFSET,
                            QC_NO_OFFSET);
    }
}

bool qc_plan_record_snapshot_labels(repair_run *r)
{
    const qc_check_view *check = &r->ctx.view;
    qc_repair_plan *p = r->plan;
    size_t bytes = 0;
    for (uint32_t i = 0; i < check->nb_snapshots; i++)
        bytes += (size_t)check->snapshots[i].entry.id_str_size + check->snapshots[i].entry.name_size;
    if (!check->nb_snapshots)
        return true;
    p->snapshot_labels = calloc(check->nb_snapshots, sizeof(*p->snapshot_labels));
    p->label_bytes = malloc(bytes ? bytes : 1);
    if (!p->snapshot_labels || !p->label_bytes)
        return false;
    uint8_t *at = p->label_bytes;
    for (uint32_t i = 0; i < check->nb_snapshots; i++) {
        const qc_snapshot_entry *e = &check->snapshots[i].entry;
        plan_snapshot_label *l = &p->snapshot_labels[i];
        l->id_len = e->id_str_size;
        l->name_len = e->name_size;
        l->id = at;
        if (e->id_str_size)
            memcpy(at, e->id, e->id_str_size);
        at += e->id_str_size;
        l->name = at;
        if (e->name_size)
            memcpy(at, e->name, e->name_size);
        at += e->name_size;
    }
    p->nb_snapshot_labels = check->nb_snapshots;
    return true;
}

void qc_plan_unlink_unusable_reftable(repair_run *r, const qc_check_view *check, qc_problem_id problem)
{
    const qc_geometry *g = &check->geo;
    uint64_t off = check->hdr.refcount_table_offset, end;
    uint64_t bytes = (uint64_t)check->hdr.refcount_table_clusters << g->cluster_bits;
    if (check->reftable_usable || !off || !bytes || off >= check->file_size)
        return;
    if (!qc_add_ok(off, bytes, &end) || end > check->file_size)
        end = check->file_size;
    /* the pointer: the header's refcount table offset, at byte 48 */
    unlink_clusters(r, g, problem, off, end, 48, off);
}

qc_problem_id qc_plan_first_found_with_fix(const repair_run *r, qc_fix fix)
{
    for (size_t i = 0; i < r->nb_found; i++)
        if (qc_problem_get(r->found[i].id)->fix == fix)
            return r->found[i].id;
    return QC_P_NONE;
}

/* ---- owners of freed clusters ---- */

static int owner_cmp(const void *a, const void *b)
{
    const unlink_owner *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->item < y->item ? -1 : x->item > y->item;
}

static bool index_owners(repair_run *r)
{
    const qc_repair_plan *p = r->plan;
    free(r->owners);
    r->nb_owners = 0;
    r->owners = malloc((p->nb_unlinked + 1) * sizeof(*r->owners));
    if (!r->owners)
        return false;
    for (size_t i = 0; i < p->nb_unlinked; i++) {
        const qc_unlinked *u = &p->unlinked[i];
        if ((u->kind & QC_UNLINK_DROPPED) && u->length)
            r->owners[r->nb_owners++] = (unlink_owner){u->host_offset, u->host_offset + u->length,
                                                       0, i};
    }
    qsort(r->owners, r->nb_owners, sizeof(*r->owners), owner_cmp);
    uint64_t reach = 0;
    for (size_t i = 0; i < r->nb_owners; i++) {
        if (r->owners[i].end > reach)
            reach = r->owners[i].end;
        r->owners[i].reach = reach;
    }
    r->owners_stale = false;
    return true;
}

/* The first dropped item (in host order) whose range covers `off`, or
 * SIZE_MAX. */
static size_t owner_of(repair_run *r, uint64_t off)
{
    if (r->owners_stale && !index_owners(r)) {
        r->error = -ENOMEM;
        return SIZE_MAX;
    }
    size_t lo = 0, hi = r->nb_owners;
    while (lo < hi) { /* the first item starting after off */
        size_t mid = lo + (hi - lo) / 2;
        if (r->owners[mid].start <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t found = SIZE_MAX;
    for (size_t i = lo; i-- > 0 && r->owners[i].reach > off;)
        if (r->owners[i].end > off)
            found = r->owners[i].item;
    return found;
}

void qc_plan_freed_flush(repair_run *r)
{
    qc_repair_plan *p = r->plan;
    uint64_t first = r->free_run.first, count = r->free_run.count;
    r->free_run.count = 0;
    if (!count || r->error)
        return;
    unsigned bits = r->cluster_bits;
    size_t o = r->free_run.owner;
    qc_unlinked item = {QC_UNLINK_FREED, r->free_run.problem, first << bits, count << bits,
                        QC_UNLINKED_NONE, QC_NO_OFFSET, 0, QC_NO_OFFSET, QC_NO_OFFSET,
                        QC_NO_OFFSET};
    if (o != SIZE_MAX) {
        qc_unlinked *owner = &p->unlinked[o];
        if (owner->host_offset == item.host_offset && owner->length == item.length) {
            owner->kind |= QC_UNLINK_FREED;
            return;
        }
        /* Part of what the dropped item covered: say whose it was. */
        item.snapshot = owner->snapshot;
        item.entry_offset = owner->entry_offset;
        item.target = owner->target;
        if (owner->guest_offset != QC_NO_OFFSET && owner->length == item.length) {
            item.guest_offset = owner->guest_offset;
            item.guest_length = owner->guest_length;
        }
    }
    qc_plan_unlinked(r, &item);
}

bool qc_plan_dropped(repair_run *r, uint64_t c)
{
    return owner_of(r, c << r->cluster_bits) != SIZE_MAX;
}

void qc_plan_freed(repair_run *r, uint64_t c)
{
    size_t owner = owner_of(r, c << r->cluster_bits);
    qc_problem_id problem = owner != SIZE_MAX ? r->plan->unlinked[owner].problem
                            : c < r->first_orphans.bits && qc_bitset_test(&r->first_orphans, c)
                                ? QC_P_REFCOUNT_ORPHAN
                                : QC_P_REFCOUNT_LEAK;
    if (r->free_run.count && r->free_run.first + r->free_run.count == c &&
        r->free_run.owner == owner && r->free_run.problem == problem) {
        r->free_run.count++;
        return;
    }
    qc_plan_freed_flush(r);
    r->free_run.first = c;
    r->free_run.count = 1;
    r->free_run.owner = owner;
    r->free_run.problem = problem;
}

/* ---- notes ---- */

/* Whether the item is a pointer into guest data (an L1 or L2 entry, a
 * snapshot entry), as opposed to a structure the repair replaced. */
static bool is_guest_pointer(const qc_unlinked *u)
{
    return u->snapshot != QC_UNLINKED_NONE;
}

static void describe_pointer(const qc_unlinked *u, char *buf, size_t len)
{
    const char *id = qc_problem_get(u->problem)->id;
    qc_fix fix = qc_problem_get(u->problem)->fix;
    if (fix == QC_FIX_TRIM_SNAPSHOT_TABLE || fix == QC_FIX_REWRITE_SNAPSHOT_TABLE)
        snprintf(buf, len, "snapshot table entry %u (%s)", (unsigned)u->snapshot, id);
    else
        snprintf(buf, len, "the %s entry at 0x%llx (%s)",
                 u->problem == QC_P_L1_ENTRY_UNALIGNED || u->problem == QC_P_L1_ENTRY_PAST_EOF
                     ? "L1"
                     : "L2",
                 (unsigned long long)u->entry_offset, id);
}

static void describe_clusters(const qc_unlinked *u, unsigned bits, char *buf, size_t len)
{
    uint64_t first = u->host_offset >> bits, last = (u->host_offset + u->length - 1) >> bits;
    if (first == last)
        snprintf(buf, len, "host cluster %llu (0x%llx)", (unsigned long long)first,
                 (unsigned long long)u->host_offset);
    else
        snprintf(buf, len, "host clusters %llu-%llu (0x%llx)", (unsigned long long)first,
                 (unsigned long long)last, (unsigned long long)u->host_offset);
}

void qc_plan_note_unlinked(repair_run *r)
{
    const qc_repair_plan *p = r->plan;
    unsigned bits = r->cluster_bits;
    uint64_t orphans = 0;
    for (size_t i = 0; i < p->nb_unlinked; i++) {
        const qc_unlinked *u = &p->unlinked[i];
        char where[96], who[160];
        if (!(u->kind & QC_UNLINK_FREED))
            continue;
        if (u->problem == QC_P_REFCOUNT_ORPHAN) {
            orphans += u->length >> bits;
            continue;
        }
        if (!is_guest_pointer(u))
            continue;
        describe_clusters(u, bits, where, sizeof(where));
        describe_pointer(u, who, sizeof(who));
        qc_plan_note(r, NOTE_GENERAL,
                  "freed %s: %s, which this repair dropped, pointed to it and nothing else refers "
                  "to it; copy it out first if it matters",
                  where, who);
    }
    if (!orphans)
        return;
    /* Orphans no structure may own any more: name what was dropped. */
    char dropped[320] = "";
    size_t len = 0, more = 0;
    for (size_t i = 0; i < p->nb_unlinked; i++) {
        const qc_unlinked *u = &p->unlinked[i];
        if (!(u->kind & QC_UNLINK_DROPPED) || !is_guest_pointer(u))
            continue;
        char who[160];
        describe_pointer(u, who, sizeof(who));
        if (len + strlen(who) + 40 < sizeof(dropped))
            len += (size_t)snprintf(dropped + len, sizeof(dropped) - len, "%s%s", len ? ", " : "",
                                    who);
        else
            more++;
    }
    if (more)
        snprintf(dropped + len, sizeof(dropped) - len, " and %zu more", more);
    qc_plan_note(r, NOTE_GENERAL,
              "freed %llu cluster%s the first check reported as refcountOrphan: no structure that "
              "may own %s is left once this repair dropped %s (see \"unlinked\" for the ranges; "
              "copy out what you need first)",
              (unsigned long long)orphans, orphans == 1 ? "" : "s", orphans == 1 ? "it" : "them",
              len ? dropped : "the structures it could not follow");
}
