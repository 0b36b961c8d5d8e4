/*
 * Repair stage: refcounts.
 *
 * Checks: the on-disk refcount of every cluster against the references the
 * check found. Fixes: leaks (lowered, in both modes) and, with -r all,
 * refcounts too low or zero (raised); refcounts past the end of the file
 * that nothing claims (lowered to 0). Refcounts are patched in place while
 * every refcount block that matters is readable; otherwise (-r all) the
 * whole refcount structure is rebuilt at the end of the file and the
 * header switched to it with one 12-byte write between two flushes.
 * Never lowers a refcount an unfollowed structure may need: orphans that
 * bind keep their refcount (with -r leaks those of the first check too),
 * and so do clusters past the end of the file that a pointer claims.
 * With -r leaks, while COPIED cannot be fixed afterwards, a leaked cluster
 * the active tables map with COPIED clear is not lowered below 2.
 * Where a rebuild cannot read the old refcounts, every cluster it leaves
 * at 0 that a dropped item covers or that holds anything is freed (listed
 * and salvaged): the old refcounts may have counted it.
 * Also the refcount block overlaps stage (-r all, writes nothing): when a
 * refcount block shares its cluster with an L2 table, the checks of the
 * view let the L2 table win if the cluster then reads as a valid one, so
 * that the rebuild replaces the block and counts what the table maps.
 * Needs: a current check. Produces: refcount block and table writes, the
 * freed items of the unlinked list.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

/* An orphan whose refcount must stay (see qc_orphan_binds): with -r all,
 * one the current check of the view calls an orphan that binds, so that
 * what only a pointer dropped by an earlier stage could own is freed in
 * this run; with -r leaks, which drops nothing, also every orphan of the
 * first check. */
static bool binding_orphan(const repair_run *r, const qc_check_view *check, uint64_t c)
{
    if (r->mode == QC_REPAIR_ALL)
        return qc_orphan_binds(check, true, r->drops_bitmaps, c);
    return (c < r->kept.bits && qc_bitset_test(&r->kept, c)) ||
           qc_orphan_binds(check, false, false, c);
}

/* The refcount cluster c should have once repaired, given `ondisk`. */
static uint64_t wanted(const repair_run *r, const qc_check_view *check, uint64_t c, uint64_t ondisk)
{
    if (c >= check->file_clusters)
        /* QEMU reads zeros past the end of the file and counts what a
         * pointer places there: a structure's refcount stays. */
        return qc_claimed_past_eof(check, c) ? ondisk : 0;
    uint64_t computed = qc_refmap_get(&check->refmap, c);
    if (computed > check->geo.refcount_max)
        computed = check->geo.refcount_max;
    if (ondisk > computed)
        return binding_orphan(r, check, c) ? ondisk : computed;
    return r->mode == QC_REPAIR_ALL ? computed : ondisk;
}

/* A refcount block whose cluster another structure also claims is left
 * alone, whoever "won" the overlap: writing refcounts there could change
 * the other one (an L2 table, say), and a rebuild could expose the other
 * one's contents. */
static bool refblock_shared(const qc_check_view *check, uint64_t index)
{
    return qc_extent_shared(check, QC_OWN_REFBLOCK, check->reftable[index]);
}

typedef struct assess {
    bool needs_rebuild;
    uint64_t shared_blocks;   /* left alone when patching */
    uint64_t exposing_blocks; /* shared with an L2 table a rebuild would expose */
} assess;

static void assess_span(const qc_check_view *check, void *state, const qc_refcount_span *span)
{
    assess *a = state;
    if (span->kind == QC_SPAN_BLOCK && refblock_shared(check, span->index)) {
        a->shared_blocks++;
        /* A rebuild replaces the block (whose counts cannot be trusted):
         * fine, unless an L2 table that lost the overlap shares the
         * cluster. The check does not follow such a table, and the
         * rebuild would make it live as it is; every other structure was
         * followed (an L2 table that won, see qc_stage_refblock_overlaps,
         * too). */
        if (qc_extent_conflicted(check, QC_OWN_L2, check->reftable[span->index]))
            a->exposing_blocks++;
        else
            a->needs_rebuild = true;
        return;
    }
    if (span->kind == QC_SPAN_UNKNOWN) {
        a->needs_rebuild = true;
        return;
    }
    uint64_t span_end = span->first + span->count;
    if (span->kind == QC_SPAN_ZERO)
        for (uint64_t c = qc_refmap_next_page(&check->refmap, span->first, span_end); c < span_end;
             c = qc_refmap_next_page(&check->refmap, c + 1, span_end))
            if (qc_refmap_get(&check->refmap, c))
                a->needs_rebuild = true;
}

/* ---- in place ---- */

typedef struct patcher {
    repair_run *r;
    uint8_t *copy;
    /* -r leaks when it will not fix COPIED (see qc_plan_leaks_fix_copied): clusters
     * the active tables reference with COPIED clear, which says "shared";
     * lowering these below 2 would turn a leak into a COPIED corruption. */
    qc_bitset copied_floor;
    uint64_t floored;
} patcher;

/* Emit the changed bytes of one refcount block as writes of runs. */
static void emit_block_changes(repair_run *r, const qc_check_view *check, const qc_refcount_span *span,
                               const uint8_t *copy)
{
    const qc_geometry *g = &check->geo;
    const unsigned bits = g->refcount_bits;
    char what[64];
    snprintf(what, sizeof(what), "refcount block %llu", (unsigned long long)span->index);
    /* One write per run of consecutive changed entries, whole entries
     * (bytes that keep their value are rewritten with it), so a hundred
     * thousand leaked clusters in a row are one write, not one per
     * changed byte. */
    for (uint64_t j = 0; j < g->refblock_entries;) {
        /* The run of changed entries starting at j: [j, k). */
        uint64_t k = j, lowered = 0, raised = 0;
        for (; k < g->refblock_entries; k++) {
            uint64_t o = qc_refblock_get(span->block, bits, k), n = qc_refblock_get(copy, bits, k);
            if (o == n)
                break;
            lowered += n < o;
            raised += n > o;
        }
        if (k == j) {
            j++;
            continue;
        }
        uint64_t a = j * bits / 8, b = (k * bits + 7) / 8;
        uint64_t first = span->first + j, last = span->first + k - 1;
        uint64_t o = qc_refblock_get(span->block, bits, j);
        uint64_t n = qc_refblock_get(copy, bits, j);
        if (first == last)
            qc_plan_write(r, check->reftable[span->index] + a, copy + a, (size_t)(b - a), what,
                       "host cluster %llu: refcount %llu -> %llu (%s)", (unsigned long long)first,
                       (unsigned long long)o, (unsigned long long)n,
                       first >= check->file_clusters ? "past the end of the file"
                       : n < o                     ? "leaked"
                                                   : "in use");
        else
            qc_plan_write(r, check->reftable[span->index] + a, copy + a, (size_t)(b - a), what,
                       "host clusters %llu-%llu: %llu refcounts lowered (leaked or past the end "
                       "of the file), %llu raised (in use)",
                       (unsigned long long)first, (unsigned long long)last,
                       (unsigned long long)lowered, (unsigned long long)raised);
        j = k;
    }
}

static void patch_span(const qc_check_view *check, void *state, const qc_refcount_span *span)
{
    patcher *p = state;
    if (span->kind != QC_SPAN_BLOCK || refblock_shared(check, span->index))
        return;
    const qc_geometry *g = &check->geo;
    memcpy(p->copy, span->block, g->cluster_size);
    bool changed = false;
    for (uint64_t j = 0; j < span->count; j++) {
        uint64_t ondisk = qc_refblock_get(span->block, g->refcount_bits, j);
        uint64_t c = span->first + j;
        uint64_t want = wanted(p->r, check, c, ondisk);
        if (want < 2 && ondisk > want && p->copied_floor.pages && c < p->copied_floor.bits &&
            qc_bitset_test(&p->copied_floor, c)) {
            want = 2;
            p->floored++;
        }
        if (want != ondisk) {
            qc_refblock_set(p->copy, g->refcount_bits, j, want);
            changed = true;
            if (want == 0 && c < check->file_clusters)
                qc_plan_freed(p->r, c);
        }
    }
    if (changed)
        emit_block_changes(p->r, check, span, p->copy);
}

/* The clusters -r leaks must keep at refcount 2 or more (see patcher). */
static bool mark_copied_floor(const qc_check_view *check, qc_bitset *floor)
{
    if (!qc_bitset_init(NULL, floor, check->file_clusters))
        return false;
    const qc_refmap *map = &check->refmap;
    for (uint64_t c = qc_refmap_next_page(map, 0, map->clusters); c < map->clusters;
         c = qc_refmap_next_page(map, c + 1, map->clusters))
        if ((qc_refmap_flags(map, c) & QC_CELL_NOT_COPIED) && !qc_bitset_set(floor, c))
            return false;
    for (size_t i = 0; i < check->nb_l2_refs; i++) {
        const qc_l2_ref *ref = &check->l2_refs[i];
        uint64_t c = ref->l2_offset >> check->geo.cluster_bits;
        if (ref->snapshot == QC_ACTIVE && !ref->copied && c < check->file_clusters &&
            !qc_bitset_set(floor, c))
            return false;
    }
    return true;
}

static void patch_in_place(repair_run *r, const qc_check_view *check)
{
    patcher p = {r, malloc(check->geo.cluster_size), {0}, 0};
    bool floor = r->mode == QC_REPAIR_LEAKS && !qc_plan_leaks_fix_copied(r);
    if (!p.copy || (floor && !mark_copied_floor(check, &p.copied_floor))) {
        r->error = -ENOMEM;
    } else {
        qc_view_each_refcount_span(check, &r->view, &p, patch_span);
        if (p.floored)
            qc_plan_note(r, NOTE_GENERAL,
                      "%llu leaked cluster%s kept at refcount 2, not lowered: the active tables "
                      "reference %s with COPIED clear, and -r leaks fixes COPIED only when no "
                      "other corruption remains (as qemu-img does); lowering %s would turn the "
                      "leak into a COPIED corruption (-r all fixes both)",
                      (unsigned long long)p.floored, p.floored == 1 ? "" : "s",
                      p.floored == 1 ? "it" : "them", p.floored == 1 ? "it" : "them");
    }
    free(p.copy);
    qc_bitset_release(&p.copied_floor);
}

/* ---- rebuild ---- */

typedef struct targets {
    repair_run *r;
    qc_bitset old_structures; /* clusters of the refcount table and blocks being replaced */
    qc_refmap map;            /* the refcounts to write */
} targets;

/* The refcounts to write, from the computed ones: without the old refcount
 * structures, with binding orphans kept at their on-disk value. */
static void target_span(const qc_check_view *check, void *state, const qc_refcount_span *span)
{
    targets *t = state;
    uint64_t end = span->first + span->count;
    if (end > check->file_clusters)
        end = check->file_clusters;
    /* Outside refcount blocks, only clusters with references have a
     * target above 0: skip the pages that have none. */
    bool block = span->kind == QC_SPAN_BLOCK;
    const qc_refmap *map = &check->refmap;
    for (uint64_t c = block ? span->first : qc_refmap_next_page(map, span->first, end); c < end;
         c = block ? c + 1 : qc_refmap_next_page(map, c + 1, end)) {
        uint64_t v = qc_refmap_get(map, c);
        bool old = qc_bitset_test(&t->old_structures, c);
        if (old && v)
            v--;
        if (block && !old) {
            uint64_t ondisk = qc_refblock_get(span->block, check->geo.refcount_bits, c - span->first);
            if (ondisk > v && binding_orphan(t->r, check, c))
                v = ondisk;
        }
        if (v > check->geo.refcount_max)
            v = check->geo.refcount_max;
        if (!qc_refmap_set(&t->map, c, v))
            t->r->error = -ENOMEM;
    }
}

/* After target_span and the switch: record the clusters the rebuilt
 * refcounts free (a refcount in the old blocks, none in the new ones). */
static void freed_span(const qc_check_view *check, void *state, const qc_refcount_span *span)
{
    const targets *t = state;
    repair_run *r = t->r;
    uint64_t end = span->first + span->count;
    if (end > check->file_clusters)
        end = check->file_clusters;
    if (span->kind == QC_SPAN_BLOCK) {
        for (uint64_t c = span->first; c < end; c++)
            if (!qc_refmap_get(&t->map, c) &&
                qc_refblock_get(span->block, check->geo.refcount_bits, c - span->first))
                qc_plan_freed(r, c);
        return;
    }
    if (span->kind != QC_SPAN_UNKNOWN)
        return; /* no refcount block: refcount 0 already */
    /* Refcounts that cannot be read may have counted any cluster: each
     * one the rebuilt refcounts leave at 0 is freed if it held anything
     * (so that --salvage keeps it), and so are the old refcount
     * structures replaced here (in use until now). */
    const qc_geometry *g = &check->geo;
    for (uint64_t c = span->first; c < end && !r->error; c++)
        if (!qc_refmap_get(&t->map, c) &&
            (qc_plan_dropped(r, c) ||
             qc_plan_view_has_data(r, c << g->cluster_bits, g->cluster_size) != 0)) /* or unreadable */
            qc_plan_freed(r, c);
}

static bool mark_old_structures(const qc_check_view *check, qc_bitset *old)
{
    if (!qc_bitset_init(NULL, old, check->file_clusters))
        return false;
    for (size_t i = 0; i < check->nb_extents; i++) {
        const qc_extent *e = &check->extents[i];
        if (e->owner != QC_OWN_REFTABLE && e->owner != QC_OWN_REFBLOCK)
            continue;
        uint64_t first = e->start >> check->geo.cluster_bits;
        uint64_t last = (e->start + e->length - 1) >> check->geo.cluster_bits;
        for (uint64_t c = first; c <= last && c < check->file_clusters; c++)
            if (!qc_bitset_set(old, c))
                return false;
    }
    return true;
}

typedef struct layout {
    uint64_t base;            /* first new cluster: the refcount table */
    uint64_t table_clusters;  /* T */
    uint64_t blocks;          /* R */
    uint64_t end;             /* base + T + R */
    uint64_t file_blocks;     /* refcount blocks covering the old file */
    bool *needed;             /* per refcount block index < file_blocks */
    uint64_t entries;         /* refcount table entries in use */
} layout;

static bool block_needed(const layout *l, uint64_t i, uint64_t per_block)
{
    if (i < l->file_blocks && l->needed[i])
        return true;
    return i >= l->base / per_block && i <= (l->end - 1) / per_block;
}

/* Size the new structures so that they also count themselves. */
static void plan_layout(const qc_check_view *check, layout *l)
{
    uint64_t per_block = check->geo.refblock_entries;
    uint64_t base_blocks = 0, highest = 0;
    for (uint64_t i = 0; i < l->file_blocks; i++)
        if (l->needed[i]) {
            base_blocks++;
            highest = i + 1;
        }
    l->table_clusters = 1;
    l->blocks = base_blocks;
    for (;;) {
        l->end = l->base + l->table_clusters + l->blocks;
        uint64_t extra = 0;
        for (uint64_t i = l->base / per_block; i <= (l->end - 1) / per_block; i++)
            extra += !(i < l->file_blocks && l->needed[i]);
        uint64_t last_new = (l->end - 1) / per_block + 1;
        l->entries = highest > last_new ? highest : last_new;
        uint64_t table = qc_div_round_up(l->entries * 8, check->geo.cluster_size);
        if (base_blocks + extra == l->blocks && table == l->table_clusters)
            return;
        l->blocks = base_blocks + extra;
        l->table_clusters = table;
    }
}

/* The refcount blocks behind broken refcount table entries that point
 * inside the file: the rebuild drops those pointers too. */
static void unlink_broken_refblocks(repair_run *r, const qc_check_view *check)
{
    const qc_geometry *g = &check->geo;
    for (uint64_t i = 0; i < check->reftable_entries && !r->error; i++) {
        uint64_t off = check->reftable[i];
        if (check->refblock_state[i] != QC_REFBLOCK_INVALID ||
            off >> g->cluster_bits >= check->file_clusters)
            continue;
        uint64_t at = check->hdr.refcount_table_offset + i * 8;
        uint8_t be[8];
        if (qc_read_zero_filled(&r->view, at, be, 8) < 0)
            continue;
        /* As the reftable pass judged it: inside the file, so one of these. */
        qc_problem_id why = qc_be64(be) & QC_REFTABLE_RESERVED_MASK
                                ? QC_P_REFTABLE_ENTRY_RESERVED_BITS
                                : QC_P_REFTABLE_ENTRY_UNALIGNED;
        qc_unlinked item = {QC_UNLINK_DROPPED, why, off & ~(g->cluster_size - 1), g->cluster_size,
                            QC_UNLINKED_NONE,  QC_NO_OFFSET, 0, at, off, QC_NO_OFFSET};
        qc_plan_unlinked(r, &item);
    }
}

/* Returns whether the header was switched to the new structures. */
static bool write_rebuilt(repair_run *r, const qc_check_view *check, const layout *l,
                          const qc_refmap *counts)
{
    const qc_geometry *g = &check->geo;
    uint64_t per_block = g->refblock_entries;
    uint8_t *block = malloc(g->cluster_size);
    uint8_t *table = calloc(l->table_clusters, g->cluster_size);
    if (!block || !table) {
        free(block), free(table);
        r->error = -ENOMEM;
        return false;
    }
    uint64_t next = l->base + l->table_clusters;
    for (uint64_t i = 0; i < l->entries; i++) {
        if (!block_needed(l, i, per_block))
            continue;
        memset(block, 0, g->cluster_size);
        for (uint64_t j = 0; j < per_block; j++) {
            uint64_t c = i * per_block + j;
            uint64_t v = c < check->file_clusters ? qc_refmap_get(counts, c)
                                                : (c >= l->base && c < l->end);
            qc_refblock_set(block, g->refcount_bits, j, v);
        }
        uint64_t at = next++ << g->cluster_bits;
        qc_put_be64(table + i * 8, at);
        char what[64];
        snprintf(what, sizeof(what), "new refcount block %llu", (unsigned long long)i);
        qc_plan_write(r, at, block, g->cluster_size, what,
                   "rebuilt refcounts of host clusters %llu-%llu", (unsigned long long)(i * per_block),
                   (unsigned long long)(i * per_block + per_block - 1));
    }
    qc_plan_write(r, l->base << g->cluster_bits, table, l->table_clusters << g->cluster_bits,
               "new refcount table", "%llu entries pointing to the rebuilt refcount blocks",
               (unsigned long long)l->entries);
    free(block);
    free(table);
    /* The new structures must be on disk before the header points to them;
     * the old ones are free in the new counts, so the switch is the only
     * moment the image changes its mind. */
    qc_plan_flush(r);
    uint8_t hdr[12];
    qc_put_be64(hdr, l->base << g->cluster_bits);
    qc_put_be32(hdr + 8, (uint32_t)l->table_clusters);
    if (!qc_plan_write(r, 48, hdr, sizeof(hdr), "image header (refcount table)",
                    "switch to the rebuilt refcount table at 0x%llx (%llu clusters)",
                    (unsigned long long)(l->base << g->cluster_bits),
                    (unsigned long long)l->table_clusters))
        return false;
    qc_problem_id why = qc_plan_first_found_with_fix(r, QC_FIX_REBUILD_REFCOUNTS);
    if (why == QC_P_NONE)
        why = QC_P_METADATA_OVERLAP;
    qc_plan_unlink_structures(r, check, 1u << QC_OWN_REFTABLE | 1u << QC_OWN_REFBLOCK, why);
    unlink_broken_refblocks(r, check);
    qc_plan_unlink_unusable_reftable(r, check, why);
    qc_plan_flush(r);
    qc_plan_note(r, NOTE_GENERAL,
              "rebuilt the refcount structures: a new table at 0x%llx and %llu refcount blocks; "
              "the old ones are now free",
              (unsigned long long)(l->base << g->cluster_bits), (unsigned long long)l->blocks);
    return true;
}

static void rebuild(repair_run *r, const qc_check_view *check)
{
    const qc_geometry *g = &check->geo;
    targets t = {r, {0}, {0}};
    layout l = {0};
    l.base = qc_plan_append_cluster(r, "the rebuilt refcount structures", true);
    if (l.base == UINT64_MAX)
        return;
    l.file_blocks = qc_div_round_up(check->file_clusters, g->refblock_entries);
    l.needed = calloc(l.file_blocks + 1, sizeof(bool));
    if (!l.needed || !mark_old_structures(check, &t.old_structures) ||
        !qc_refmap_init(NULL, &t.map, check->file_clusters)) {
        r->error = -ENOMEM;
    } else if (qc_view_each_refcount_span(check, &r->view, &t, target_span) && !r->error) {
        const qc_refmap *map = &t.map;
        for (uint64_t c = qc_refmap_next_page(map, 0, map->clusters); c < map->clusters;
             c = qc_refmap_next_page(map, c + 1, map->clusters))
            if (qc_refmap_get(map, c))
                l.needed[c / g->refblock_entries] = true;
        plan_layout(check, &l);
        if (l.entries * 8 > QC_MAX_REFTABLE_BYTES)
            qc_plan_note(r, NOTE_GENERAL,
                      "the refcount structures need rebuilding, but the new refcount table "
                      "(%llu entries) would exceed QEMU's limit of 8 MiB; left unchanged",
                      (unsigned long long)l.entries);
        else if (write_rebuilt(r, check, &l, &t.map))
            /* The old blocks are still in the view as they were. */
            qc_view_each_refcount_span(check, &r->view, &t, freed_span);
    }
    free(l.needed);
    qc_bitset_release(&t.old_structures);
    qc_refmap_release(&t.map);
}

static assess assess_refcounts(repair_run *r, const qc_check_view *check)
{
    /* A broken refcount table entry needs the rebuild even when the range
     * it covers holds no cluster in use (past the end of the file, say). */
    const qc_result *res = &r->res;
    assess a = {qc_found(res, QC_P_REFTABLE_ENTRY_RESERVED_BITS) ||
                    qc_found(res, QC_P_REFTABLE_ENTRY_UNALIGNED) ||
                    qc_found(res, QC_P_REFTABLE_ENTRY_PAST_EOF),
                0, 0};
    qc_view_each_refcount_span(check, &r->view, &a, assess_span);
    /* A refcount table sharing a cluster with another structure is moved
     * away by a rebuild (whatever that leaves, QEMU reads as it is). */
    uint64_t first = check->hdr.refcount_table_offset >> check->geo.cluster_bits;
    for (uint64_t c = first; check->reftable_usable && !a.needs_rebuild &&
                             c - first < check->hdr.refcount_table_clusters && c < check->file_clusters;
         c++)
        a.needs_rebuild = qc_cluster_shared(check, c, NULL);
    return a;
}

/* Whether the check of the view with L2 tables winning over refcount
 * blocks shows nothing new but refcount findings: no check error, no
 * refcount block left that an L2 table shares, and no other problem of
 * any kind more than in `before`. An L2 table that is really a refcount
 * block (an L1 entry pointing at one) reads as garbage entries and fails
 * this. */
static bool l2_win_holds(repair_run *r, const qc_check_view *check, const qc_result *before)
{
    const qc_result *now = &r->res;
    if (now->check_errors || assess_refcounts(r, check).exposing_blocks)
        return false;
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++) {
        qc_fix fix = qc_problem_at(i)->fix;
        if (now->per_problem[i] > before->per_problem[i] && fix != QC_FIX_LOWER_REFCOUNT &&
            fix != QC_FIX_RAISE_REFCOUNT && fix != QC_FIX_REBUILD_REFCOUNTS)
            return false;
    }
    return true;
}

void qc_stage_refblock_overlaps(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check || r->l2_over_refblock)
        return;
    assess a = assess_refcounts(r, check);
    if (!a.exposing_blocks)
        return;
    /* The check lets the refcount block win, reads refcounts from the
     * cluster and does not follow the L2 table, whose mappings a rebuild
     * would then not count. Try the other way round: if the cluster reads
     * as a valid L2 table, it is one (as QEMU, which follows it, sees it),
     * the refcount block is unusable and the rebuild replaces it with one
     * in a fresh cluster, counting what the table maps. */
    qc_result before = r->res;
    r->l2_over_refblock = true;
    r->ctx_stale = true;
    check = qc_plan_try_check(r);
    if (check && l2_win_holds(r, check, &before)) {
        qc_plan_note(r, NOTE_GENERAL,
                  "%llu refcount block%s share%s a cluster with an L2 table (metadataOverlap); "
                  "the cluster reads as a valid L2 table, which is kept where it is, and the "
                  "refcount structures are rebuilt in fresh clusters",
                  (unsigned long long)a.exposing_blocks, a.exposing_blocks == 1 ? "" : "s",
                  a.exposing_blocks == 1 ? "s" : "");
        return;
    }
    r->l2_over_refblock = false;
    r->ctx_stale = true;
}

bool qc_plan_refcounts_blocked(repair_run *r, const qc_check_view *check)
{
    return assess_refcounts(r, check).exposing_blocks != 0;
}

void qc_stage_refcounts(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return;
    assess a = assess_refcounts(r, check);
    if (a.exposing_blocks)
        a.needs_rebuild = false;
    if (a.shared_blocks && !(a.needs_rebuild && r->mode == QC_REPAIR_ALL))
        qc_plan_note(r, NOTE_GENERAL,
                  "%llu refcount block%s share%s a cluster with another structure "
                  "(metadataOverlap): %s refcounts are left alone%s",
                  (unsigned long long)a.shared_blocks, a.shared_blocks == 1 ? "" : "s",
                  a.shared_blocks == 1 ? "s" : "", a.shared_blocks == 1 ? "its" : "their",
                  a.exposing_blocks ? ", and nothing is rebuilt" : "");

    if (a.needs_rebuild && r->mode == QC_REPAIR_ALL) {
        rebuild(r, check);
        qc_plan_freed_flush(r);
        return;
    }
    if (a.needs_rebuild)
        qc_plan_note(r, NOTE_GENERAL,
                  "some refcounts are missing or unreadable: the refcount structures need "
                  "rebuilding, which -r leaks does not do (run -r all)");
    patch_in_place(r, check);
    qc_plan_flush(r);
    qc_plan_freed_flush(r);
}
