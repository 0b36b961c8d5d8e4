/*
 * The repair planner: runs the stages of a repair mode over a
 * copy-on-write view of the image and records every write as a plan step.
 *
 * Needs: a readable image. Produces: the plan (ordered writes and
 * flushes, with the reason for each), notes, the check before and the
 * predicted check after. Nothing is written to the image here.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"

static void fail(repair_run *r, int err)
{
    if (!r->error)
        r->error = err;
}

static bool reserve_step(repair_run *r)
{
    qc_repair_plan *p = r->plan;
    if (p->nb_steps < p->cap_steps)
        return true;
    size_t cap = p->cap_steps ? p->cap_steps * 2 : 32;
    qc_repair_step *steps = realloc(p->steps, cap * sizeof(*steps));
    if (steps)
        p->steps = steps;
    uint8_t **old = realloc(p->old_bytes, cap * sizeof(*old));
    if (old)
        p->old_bytes = old;
    if (!steps || !old) {
        fail(r, -ENOMEM);
        return false;
    }
    p->cap_steps = cap;
    return true;
}

static void add_step(repair_run *r, qc_repair_step step, uint8_t *old)
{
    if (!reserve_step(r)) {
        free((void *)step.data);
        free((void *)step.what);
        free((void *)step.why);
        free(old);
        return;
    }
    r->plan->old_bytes[r->plan->nb_steps] = old;
    r->plan->steps[r->plan->nb_steps++] = step;
}

/* A QED image has no corrupt bit. Its need-check bit makes QEMU check
 * (and fix what its check fixes) before it writes to the image, so an
 * interrupted repair is never trusted as it is; the last stage sets the
 * final value. */
static void write_qed_fence(repair_run *r)
{
    uint8_t le[8];
    if (qc_read_zero_filled(&r->view, 16, le, 8) != 0)
        return;
    uint64_t features = qc_qed_entry(le, 0);
    if (features & QC_QED_F_NEED_CHECK)
        return;
    qc_qed_put_entry(le, 0, features | QC_QED_F_NEED_CHECK);
    qc_plan_write(r, 16, le, 8, "QED header (features)",
                  "set the need-check bit while the repair is in progress");
    qc_plan_flush(r);
}

/* The corrupt bit keeps QEMU from opening the image read-write while the
 * repair is incomplete; the last stage sets the final value. */
static void write_fence(repair_run *r)
{
    r->fenced = true;
    if (r->qed) {
        write_qed_fence(r);
        return;
    }
    uint8_t be[8];
    if (r->version < 3 || qc_read_zero_filled(&r->view, 72, be, 8) != 0)
        return;
    uint64_t now = qc_be64(be);
    if (now & QC_INCOMPAT_CORRUPT)
        return;
    qc_put_be64(be, now | QC_INCOMPAT_CORRUPT);
    qc_plan_write(r, 72, be, 8, "image header (incompatible features)",
               "set the corrupt bit while the repair is in progress");
    qc_plan_flush(r);
}

/* Two structures that claim one cluster, described for a note. */
typedef struct shared_cluster {
    uint64_t cluster;
    char a[160], b[160];
} shared_cluster;

/* The first cluster of the bytes [start, end) that two structures of the
 * latest check of the view claim; false if none. What the plan appended
 * since that check belongs to no structure yet. */
static bool find_shared_cluster(const repair_run *r, uint64_t start, uint64_t end,
                                shared_cluster *found)
{
    const qc_check_view *check = &r->ctx.view;
    /* A QED repair reads its own claims (stage_qed.c). */
    if (!r->ctx_live || r->ctx.stop || end <= start || r->qed)
        return false;
    for (uint64_t c = start >> check->geo.cluster_bits;
         c <= (end - 1) >> check->geo.cluster_bits && c < check->file_clusters; c++) {
        const qc_extent *pair[2];
        if (!qc_cluster_shared(check, c, pair))
            continue;
        found->cluster = c;
        qc_describe_extent(check, pair[0], found->a, sizeof(found->a));
        qc_describe_extent(check, pair[1], found->b, sizeof(found->b));
        return true;
    }
    return false;
}

/* QEMU's overlap check before every write: a write into a cluster two
 * structures claim could change the one it is not meant for, so it is
 * left out (with a note). */
static bool lands_on_shared_cluster(repair_run *r, uint64_t off, uint64_t end, const char *what)
{
    shared_cluster s;
    if (!find_shared_cluster(r, off, end, &s))
        return false;
    qc_plan_note(r, NOTE_GENERAL,
              "left alone: a write to the %s at 0x%llx, because host cluster %llu is claimed by "
              "both the %s and the %s (metadataOverlap)",
              what, (unsigned long long)off, (unsigned long long)s.cluster, s.a, s.b);
    return true;
}

/* Before a step that changes the view: the fence (on the first), then
 * the step's texts; false (with r->error set) when the step cannot be
 * recorded. */
static bool begin_change(repair_run *r, const char *what, const char *why_fmt, va_list ap,
                         char **what_copy, char **why_copy) __attribute__((format(printf, 3, 0)));
static bool begin_change(repair_run *r, const char *what, const char *why_fmt, va_list ap,
                         char **what_copy, char **why_copy)
{
    if (!r->fenced)
        write_fence(r);
    if (r->error)
        return false;
    char why[512];
    vsnprintf(why, sizeof(why), why_fmt, ap);
    *what_copy = strdup(what);
    *why_copy = strdup(why);
    if (*what_copy && *why_copy)
        return true;
    free(*what_copy), free(*why_copy);
    fail(r, -ENOMEM);
    return false;
}

bool qc_plan_write(repair_run *r, uint64_t off, const void *data, size_t len, const char *what,
                const char *why_fmt, ...)
{
    uint64_t end;
    if (r->error || len == 0)
        return false;
    if (!qc_add_ok(off, len, &end)) {
        fail(r, -EFBIG);
        return false;
    }
    if (lands_on_shared_cluster(r, off, end, what))
        return false;
    char *what_copy, *why_copy;
    va_list ap;
    va_start(ap, why_fmt);
    bool begun = begin_change(r, what, why_fmt, ap, &what_copy, &why_copy);
    va_end(ap);
    if (!begun)
        return false;
    uint8_t *copy = malloc(len), *old = malloc(len);
    int ret = !copy || !old ? -ENOMEM : qc_read_zero_filled(&r->view, off, old, len);
    if (ret == 0)
        ret = r->view.write(r->view.opaque, off, data, len);
    if (ret < 0) {
        free(copy), free(old), free(what_copy), free(why_copy);
        fail(r, ret);
        return false;
    }
    memcpy(copy, data, len);
    if (end > r->view.size)
        r->view.size = end;
    r->ctx_stale = true;
    add_step(r, (qc_repair_step){QC_STEP_WRITE, off, len, copy, what_copy, why_copy}, old);
    return !r->error;
}

bool qc_plan_truncate(repair_run *r, uint64_t size, const char *what, const char *why_fmt, ...)
{
    if (r->error || size >= r->view.size)
        return false;
    char *what_copy, *why_copy;
    va_list ap;
    va_start(ap, why_fmt);
    bool begun = begin_change(r, what, why_fmt, ap, &what_copy, &why_copy);
    va_end(ap);
    if (!begun)
        return false;
    int ret = r->view.truncate(r->view.opaque, size);
    if (ret < 0) {
        free(what_copy), free(why_copy);
        fail(r, ret);
        return false;
    }
    uint64_t gone = r->view.size - size;
    r->view.size = size;
    r->ctx_stale = true;
    /* The bytes that go are not kept here: the undo log reads them from the
     * image (apply.c), which may hold far more of them than memory. */
    add_step(r, (qc_repair_step){QC_STEP_TRUNCATE, size, gone, NULL, what_copy, why_copy}, NULL);
    return !r->error;
}

void qc_plan_undo_write(repair_run *r)
{
    qc_repair_plan *p = r->plan;
    if (r->error || !p->nb_steps || p->steps[p->nb_steps - 1].kind != QC_STEP_WRITE)
        return;
    size_t i = p->nb_steps - 1;
    const qc_repair_step *step = &p->steps[i];
    int ret = r->view.write(r->view.opaque, step->offset, p->old_bytes[i], (size_t)step->length);
    if (ret < 0) {
        fail(r, ret);
        return;
    }
    free((void *)step->data);
    free((void *)step->what);
    free((void *)step->why);
    free(p->old_bytes[i]);
    p->nb_steps--;
    r->ctx_stale = true;
}

void qc_plan_flush(repair_run *r)
{
    qc_repair_plan *p = r->plan;
    if (r->error || p->nb_steps == 0 || p->steps[p->nb_steps - 1].kind == QC_STEP_FLUSH)
        return;
    add_step(r, (qc_repair_step){QC_STEP_FLUSH, 0, 0, NULL, NULL, NULL}, NULL);
}

void qc_plan_note(repair_run *r, note_kind kind, const char *fmt, ...)
{
    qc_repair_plan *p = r->plan;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    /* A later round of stages may decide the same again. */
    for (size_t i = 0; i < p->nb_notes; i++)
        if (strcmp(p->notes[i], text) == 0)
            return;
    if (r->notes_of_kind[kind]++ >= REPAIR_NOTE_CAP)
        return;
    if (p->nb_notes == p->cap_notes) {
        size_t cap = p->cap_notes ? p->cap_notes * 2 : 16;
        char **notes = realloc(p->notes, cap * sizeof(*notes));
        if (!notes) {
            fail(r, -ENOMEM);
            return;
        }
        p->notes = notes;
        p->cap_notes = cap;
    }
    char *copy = strdup(text);
    if (!copy) {
        fail(r, -ENOMEM);
        return;
    }
    p->notes[p->nb_notes++] = copy;
}

static void collect_finding(void *payload, qc_problem_id id, uint64_t offset, uint64_t count)
{
    repair_run *r = payload;
    if (r->nb_found == r->cap_found) {
        size_t cap = r->cap_found ? r->cap_found * 2 : 64;
        repair_finding *f = realloc(r->found, cap * sizeof(*f));
        if (!f) {
            fail(r, -ENOMEM);
            return;
        }
        r->found = f;
        r->cap_found = cap;
    }
    r->found[r->nb_found++] = (repair_finding){id, offset, count};
}

static void release_check(repair_run *r)
{
    if (r->ctx_live)
        qc_ctx_release(&r->ctx);
    r->ctx_live = false;
}

/* Check the view into r->ctx / r->res; `opts` decides what is reported. */
static bool run_check(repair_run *r, const qc_options *opts)
{
    release_check(r);
    memset(&r->ctx, 0, sizeof(r->ctx));
    r->nb_found = 0;
    r->ctx.fix_sink = collect_finding;
    r->ctx.fix_sink_payload = r;
    r->ctx.l2_over_refblock = r->l2_over_refblock;
    qc_ctx_run(&r->ctx, &r->view, opts, &r->res);
    r->ctx_live = true;
    r->ctx_stale = false;
    /* A QED check always stops after its own pass: whole when it walked. */
    bool whole = r->qed ? r->ctx.qed.walked : !r->ctx.stop && r->res.header_valid;
    return whole && r->res.check_errors == 0 && !r->error;
}

const qc_check_view *qc_plan_try_check(repair_run *r)
{
    if (r->error)
        return NULL;
    if (r->ctx_live && !r->ctx_stale)
        return &r->ctx.view;
    if (run_check(r, &r->check_opts))
        return &r->ctx.view;
    r->ctx_stale = true; /* the next qc_plan_current_check() runs it again, and says so */
    return NULL;
}

const qc_check_view *qc_plan_current_check(repair_run *r)
{
    if (r->error)
        return NULL;
    if (r->ctx_live && !r->ctx_stale)
        return &r->ctx.view;
    if (!run_check(r, &r->check_opts)) {
        qc_plan_note(r, NOTE_GENERAL,
                  "the image could not be checked completely after the previous repair stage; "
                  "the remaining stages were skipped");
        return NULL;
    }
    return &r->ctx.view;
}

bool qc_plan_found_fix(const repair_run *r, qc_fix fix)
{
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++)
        if (r->res.per_problem[i] && qc_problem_at(i)->fix == fix)
            return true;
    return false;
}

bool qc_plan_range_shared(repair_run *r, uint64_t start, uint64_t length, const char *what)
{
    uint64_t end;
    shared_cluster s;
    if (!qc_add_ok(start, length, &end) || !find_shared_cluster(r, start, end, &s))
        return false;
    qc_plan_note(r, NOTE_GENERAL,
              "%s left in place: host cluster %llu is claimed by both the %s and the %s "
              "(metadataOverlap), and moving one away would make the other live as it is",
              what, (unsigned long long)s.cluster, s.a, s.b);
    return true;
}

int qc_plan_view_has_data(repair_run *r, uint64_t off, uint64_t size)
{
    uint8_t buf[4096];
    for (uint64_t done = 0; done < size; done += sizeof(buf)) {
        size_t n = size - done < sizeof(buf) ? (size_t)(size - done) : sizeof(buf);
        int ret = qc_read_zero_filled(&r->view, off + done, buf, n);
        if (ret < 0)
            return ret;
        for (size_t i = 0; i < n; i++)
            if (buf[i])
                return 1;
    }
    return 0;
}

uint64_t qc_plan_append_cluster(repair_run *r, const char *what, bool replaces_refcounts)
{
    const qc_check_view *check = &r->ctx.view;
    uint64_t end = qc_div_round_up(r->view.size, check->geo.cluster_size);
    uint64_t claims = check->past_eof_end;
    if (!replaces_refcounts && check->past_eof_end_refcounts > claims)
        claims = check->past_eof_end_refcounts;
    if (claims <= r->view.size) {
        /* The structures that replace the refcount table and blocks go
         * past where the old ones point, when that is near: until the
         * header switches to them, an old pointer must not find them. */
        uint64_t old_reach = qc_div_round_up(check->past_eof_end_refcounts, check->geo.cluster_size);
        return replaces_refcounts && old_reach > end && old_reach - end <= end ? old_reach : end;
    }
    /* Appending would put new bytes where that structure is said to be
     * (and placing them past it would bring all of it into the file). */
    qc_plan_note(r, NOTE_GENERAL,
              "%s not written: a structure the image still points to lies past the end of the "
              "file (up to 0x%llx), and anything appended would be read as part of it",
              what, (unsigned long long)claims);
    return UINT64_MAX;
}

static int refuse(qc_repair_plan *plan, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int refuse(qc_repair_plan *plan, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    free(plan->refusal);
    plan->refusal = strdup(text);
    return -EPERM;
}

/* Why the first check of a QED image rules out any repair, or NULL. */
static const char *qed_refusal_reason(const repair_run *r, const qc_result *before, char *buf,
                                      size_t len)
{
    const qc_qed_header *h = &r->ctx.qed.h;
    if (r->ctx.qed.walked && !before->check_errors && h->header_size == 0) {
        snprintf(buf, len,
                 "its QED header claims no cluster (header size 0), so tables and data may lie "
                 "on the header, and every repair writes the header");
        return buf;
    }
    if (r->ctx.qed.walked && !before->check_errors)
        return NULL;
    uint64_t unknown = h->features & ~QC_QED_FEATURES_KNOWN;
    if (unknown)
        snprintf(buf, len,
                 "it uses QED feature bits qcheck does not know (0x%llx); changing it could "
                 "destroy what they describe",
                 (unsigned long long)unknown);
    else if (before->check_errors)
        snprintf(buf, len,
                 "the check could not be completed (%llu check errors), so what the image owns "
                 "is not known",
                 (unsigned long long)before->check_errors);
    else
        snprintf(buf, len,
                 "its QED header is one QEMU refuses (see the findings), so what the image owns "
                 "is not known");
    return buf;
}

/* Why the first check rules out any repair, or NULL. */
static const char *refusal_reason(const repair_run *r, const qc_result *before, char *buf,
                                  size_t len)
{
    if (before->other_format) {
        snprintf(buf, len, "it is not a qcow2 image (it looks like %s)", before->other_format);
        return buf;
    }
    if (before->qed)
        return qed_refusal_reason(r, before, buf, len);
    if (before->header_valid && before->header.unknown_incompatible) {
        snprintf(buf, len,
                 "it uses incompatible features qcheck does not know (0x%llx); changing it could "
                 "destroy what they describe",
                 (unsigned long long)before->header.unknown_incompatible);
        return buf;
    }
    if ((!before->header_valid || r->ctx.stop) && !before->check_errors) {
        snprintf(buf, len,
                 "the header is too damaged to check the rest of the image (see the findings), "
                 "so what the image owns is not known");
        return buf;
    }
    const qc_extent *pair[2];
    if (!before->header_valid || r->ctx.stop || before->check_errors) {
        /* read failures or the memory limit */
        snprintf(buf, len,
                 "the check could not be completed (%llu check errors), so what the image owns "
                 "is not known",
                 (unsigned long long)before->check_errors);
        return buf;
    }
    /* Every repair writes the header (the corrupt-bit fence, feature bits). */
    if (qc_cluster_shared(&r->ctx.view, 0, pair)) {
        char what[160];
        qc_describe_extent(&r->ctx.view, pair[pair[0]->owner == QC_OWN_HEADER], what, sizeof(what));
        snprintf(buf, len,
                 "the header's cluster is also claimed by the %s (metadataOverlap), and every "
                 "repair writes the header",
                 what);
        return buf;
    }
    return NULL;
}

static void note_kept(repair_run *r, uint64_t kept)
{
    if (kept)
        qc_plan_note(r, NOTE_GENERAL,
                  "kept %llu cluster%s allocated that a structure qcheck could not follow may own "
                  "(reported as refcountOrphan); copy out what you need before freeing them",
                  (unsigned long long)kept, kept == 1 ? "" : "s");
}

/* The orphans of the first check: all of them (to tell later whether a
 * freed cluster was one), and for -r leaks those that bind, which stay
 * allocated through every stage. -r all judges them by the current check
 * of the view instead (see binding_orphan). */
static bool record_first_orphans(repair_run *r)
{
    const qc_check_view *check = &r->ctx.view;
    if (!qc_bitset_init(NULL, &r->kept, check->file_clusters) ||
        !qc_bitset_init(NULL, &r->first_orphans, check->file_clusters))
        return false;
    r->drops_bitmaps = r->mode == QC_REPAIR_ALL && qc_plan_found_fix(r, QC_FIX_DROP_BITMAPS) &&
                       (check->hdr.autoclear_features & QC_AUTOCLEAR_BITMAPS);
    for (uint64_t c = qc_bitset_next(&check->orphans, 0); c < check->file_clusters;
         c = qc_bitset_next(&check->orphans, c + 1)) {
        if (!qc_bitset_set(&r->first_orphans, c))
            return false;
        if (r->mode == QC_REPAIR_LEAKS && qc_orphan_binds(check, false, false, c) &&
            !qc_bitset_set(&r->kept, c))
            return false;
    }
    return true;
}

/* -r leaks, after the zero extension (which runs first): a structure it
 * completed is followed, and the orphans it references are in use; the
 * refcounts its part past the end of the file may have counted stay, and
 * so do the orphans the check of the view still finds. Notes how many kept
 * clusters keep a refcount higher than their references. */
static bool note_kept_leaks(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return r->error == 0;
    for (uint64_t c = qc_bitset_next(&check->orphans, 0); c < check->file_clusters && c < r->kept.bits;
         c = qc_bitset_next(&check->orphans, c + 1))
        if (qc_orphan_binds(check, false, false, c) && !qc_bitset_set(&r->kept, c))
            return false;
    uint64_t kept = 0;
    for (uint64_t c = qc_bitset_next(&r->kept, 0); c < r->kept.bits;
         c = qc_bitset_next(&r->kept, c + 1))
        kept += c < check->file_clusters && qc_bitset_test(&check->refcount_above_refs, c);
    note_kept(r, kept);
    return true;
}

/* -r all, after the last stage: the orphans still kept, because a
 * structure that may own them is still there. */
static void note_kept_after(repair_run *r)
{
    const qc_check_view *check = qc_plan_current_check(r);
    if (!check)
        return;
    uint64_t kept = 0;
    for (uint64_t c = qc_bitset_next(&check->orphans, 0); c < check->file_clusters;
         c = qc_bitset_next(&check->orphans, c + 1))
        kept += qc_orphan_binds(check, true, r->drops_bitmaps, c);
    note_kept(r, kept);
}

#define MODE_LEAKS (1u << QC_REPAIR_LEAKS)
#define MODE_ALL (1u << QC_REPAIR_ALL)
#define ACTION(fix) (1u << QC_FIX_##fix)

/* The stages of a repair, in the order they run. A stage with actions is
 * the handler of those fix actions of the problem table: it runs only when
 * the current check of the view found a problem whose row names one of
 * them (each action has one handler per mode; tests/unit/test_problems.c
 * holds the table and the rows to that). A stage without actions prepares
 * or finishes every repair: zero extensions complete what the end of the
 * file cuts short (for whichever problem reported it), the refcount block
 * overlap stage chooses what the refcount handler trusts, and the header
 * flags stage closes the fence, and finishes the dirty and corrupt bits'
 * rows.
 *
 * Pointers past the end of the file are dropped before anything appends to
 * the file, so that no interrupted step can make them point at new
 * structures. The zero extension of what the end of the file cuts short by
 * less than one cluster comes first: it adds only zeros, which QEMU reads
 * there already, and the later stages then see those structures whole (the
 * bitmaps, say, which the feature-bits stage would drop). -r leaks runs it
 * before the rounds (see qc_repair_plan_build). */
const qc_repair_handler qc_repair_handlers[] = {
    {"zero extension of short cuts", qc_stage_zero_extend_short, MODE_ALL, 0, 0},
    {"feature bits", qc_stage_feature_bits, MODE_LEAKS | MODE_ALL,
     ACTION(CLEAR_FEATURE_BIT) | ACTION(DROP_BITMAPS), 0},
    {"refcount block overlaps", qc_stage_refblock_overlaps, MODE_ALL, 0, 0},
    {"snapshot count", qc_stage_snapshot_count, MODE_LEAKS | MODE_ALL, ACTION(TRIM_SNAPSHOT_TABLE),
     0},
    {"empty table offsets", qc_stage_empty_table_offsets, MODE_LEAKS | MODE_ALL,
     ACTION(ZERO_TABLE_OFFSET), 0},
    {"data on metadata", qc_stage_data_on_metadata, MODE_ALL, ACTION(CLEAR_ENTRY), 0},
    {"broken pointers", qc_stage_broken_pointers, MODE_ALL, ACTION(REPOINT_OR_CLEAR), 0},
    {"zero extension of L1 tables", qc_stage_zero_extend, MODE_ALL, 0, 0},
    {"snapshot table", qc_stage_snapshot_table, MODE_ALL, ACTION(REWRITE_SNAPSHOT_TABLE), 0},
    {"refcounts", qc_stage_refcounts, MODE_LEAKS | MODE_ALL,
     ACTION(LOWER_REFCOUNT) | ACTION(RAISE_REFCOUNT) | ACTION(REBUILD_REFCOUNTS), 0},
    {"COPIED and ignored bits", qc_stage_copied, MODE_ALL, ACTION(FIX_COPIED) | ACTION(CLEAR_BITS),
     0},
    {"COPIED after leaks", qc_stage_leaks_copied, MODE_LEAKS, ACTION(FIX_COPIED), 0},
    {"header flags", qc_stage_header_flags, MODE_LEAKS | MODE_ALL, 0,
     ACTION(CLEAR_DIRTY_BIT) | ACTION(CLEAR_CORRUPT_BIT)},
};
const size_t qc_repair_handler_count = sizeof(qc_repair_handlers) / sizeof(qc_repair_handlers[0]);

/* Whether stage h runs now: in this mode, and, for a handler, when the
 * current check found a problem of one of its actions. */
static bool handler_due(repair_run *r, const qc_repair_handler *h)
{
    if (!(h->modes & 1u << r->mode))
        return false;
    if (!h->actions)
        return true;
    if (!qc_plan_current_check(r))
        return false;
    for (unsigned fix = 0; fix < 32; fix++)
        if (h->actions & 1u << fix && qc_plan_found_fix(r, (qc_fix)fix))
            return true;
    return false;
}

/* A repair can expose problems a structure hid (an old refcount table
 * that was also an L2 table, say): run the stages again until a round
 * writes nothing, so that one run converges. Each round fences its own
 * writes. */
static void run_rounds(repair_run *r, const qc_repair_handler *handlers, size_t count)
{
    size_t writes_before;
    unsigned round = 0;
    do {
        writes_before = r->plan->nb_steps;
        r->fenced = false;
        for (size_t i = 0; i < count && !r->error; i++)
            if (handler_due(r, &handlers[i]))
                handlers[i].run(r);
        qc_plan_flush(r);
    } while (!r->error && r->plan->nb_steps != writes_before && ++round < REPAIR_ROUNDS);
}

int qc_repair_plan_build(qc_io *io, const qc_options *opts, qc_repair_mode mode,
                         qc_result *before, qc_result *after, qc_repair_plan **out)
{
    *out = NULL;
    if (!io || !io->read || !before || !after ||
        (mode != QC_REPAIR_LEAKS && mode != QC_REPAIR_ALL))
        return -EINVAL;
    qc_repair_plan *plan = calloc(1, sizeof(*plan));
    if (!plan)
        return -ENOMEM;
    plan->size_before = io->size;
    repair_run r = {.plan = plan, .mode = mode, .image = io};
    if (!qc_options_load(&r.check_opts, opts)) {
        free(plan);
        return -EINVAL;
    }
    qc_options first_opts = r.check_opts;
    r.check_opts.on_finding = NULL;
    r.check_opts.on_progress = NULL;
    int ret = qc_overlay_open(&r.view, io);
    if (ret < 0) {
        free(plan);
        return ret;
    }
    run_check(&r, &first_opts);
    *before = r.res;
    r.qed = before->qed;
    r.qed_need_check_before = r.ctx.qed.h.features & QC_QED_F_NEED_CHECK;
    *after = r.res;
    char why[512];
    const char *reason = refusal_reason(&r, before, why, sizeof(why));
    if (reason) {
        ret = refuse(plan, "%s", reason);
    } else if (r.qed) {
        qc_qed_first_check(&r);
        run_rounds(&r, qc_qed_repair_handlers, qc_qed_repair_handler_count);
        ret = r.error;
        if (!ret && qc_plan_current_check(&r))
            *after = r.res;
    } else if (!record_first_orphans(&r) || !qc_plan_record_snapshot_labels(&r)) {
        ret = -ENOMEM;
    } else {
        r.version = r.ctx.hdr.version;
        r.cluster_bits = r.ctx.geo.cluster_bits;
        r.incompat_before = r.ctx.hdr.incompatible_features;
        /* -r leaks completes the structures the end of the file cuts short
         * before it counts the orphans it keeps (note_kept_leaks). */
        if (mode == QC_REPAIR_LEAKS) {
            qc_stage_zero_extend_short(&r);
            if (!r.error && !note_kept_leaks(&r))
                r.error = -ENOMEM;
        }
        run_rounds(&r, qc_repair_handlers, qc_repair_handler_count);
        qc_plan_freed_flush(&r);
        qc_plan_note_unlinked(&r);
        if (mode == QC_REPAIR_ALL && !r.error)
            note_kept_after(&r);
        for (int k = 0; k < NOTE_KINDS; k++)
            if (r.notes_of_kind[k] > REPAIR_NOTE_CAP) {
                uint64_t more = r.notes_of_kind[k] - REPAIR_NOTE_CAP;
                r.notes_of_kind[k] = 0; /* let the summary through */
                qc_plan_note(&r, (note_kind)k, "... and %llu more like the above",
                          (unsigned long long)more);
            }
        ret = r.error;
        if (!ret && qc_plan_current_check(&r))
            *after = r.res;
    }
    if (!ret) {
        plan->leaks_fixed = before->leaks > after->leaks ? before->leaks - after->leaks : 0;
        plan->corruptions_fixed =
            before->corruptions > after->corruptions ? before->corruptions - after->corruptions : 0;
    }
    release_check(&r);
    qc_bitset_release(&r.kept);
    qc_bitset_release(&r.first_orphans);
    free(r.owners);
    free(r.found);
    qc_io_close(&r.view);
    if (ret && ret != -EPERM) {
        qc_repair_plan_free(plan);
        return ret;
    }
    *out = plan;
    return ret;
}

size_t qc_repair_plan_steps(const qc_repair_plan *plan)
{
    return plan->nb_steps;
}

const qc_repair_step *qc_repair_plan_step(const qc_repair_plan *plan, size_t i)
{
    return i < plan->nb_steps ? &plan->steps[i] : NULL;
}

size_t qc_repair_plan_notes(const qc_repair_plan *plan, const char *const **notes)
{
    *notes = (const char *const *)plan->notes;
    return plan->nb_notes;
}

size_t qc_repair_plan_unlinked(const qc_repair_plan *plan)
{
    return plan->nb_unlinked;
}

const qc_unlinked *qc_repair_plan_unlinked_item(const qc_repair_plan *plan, size_t i)
{
    return i < plan->nb_unlinked ? &plan->unlinked[i] : NULL;
}

const char *qc_repair_plan_refusal(const qc_repair_plan *plan)
{
    return plan->refusal;
}

void qc_repair_plan_fixed(const qc_repair_plan *plan, uint64_t *leaks_fixed,
                          uint64_t *corruptions_fixed)
{
    *leaks_fixed = plan->leaks_fixed;
    *corruptions_fixed = plan->corruptions_fixed;
}

void qc_repair_plan_free(qc_repair_plan *plan)
{
    if (!plan)
        return;
    for (size_t i = 0; i < plan->nb_steps; i++) {
        free((void *)plan->steps[i].data);
        free((void *)plan->steps[i].what);
        free((void *)plan->steps[i].why);
        free(plan->old_bytes[i]);
    }
    for (size_t i = 0; i < plan->nb_notes; i++)
        free(plan->notes[i]);
    free(plan->steps);
    free(plan->old_bytes);
    free(plan->notes);
    free(plan->unlinked);
    free(plan->snapshot_labels);
    free(plan->label_bytes);
    free(plan->refusal);
    free(plan);
}
