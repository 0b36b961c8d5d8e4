/*
 * The repair planner's shared state. A repair is planned completely before
 * the image is touched: each stage checks a copy-on-write view of the
 * image (repair/overlay.c), decides, and writes into the view; every write
 * is recorded as a step of the plan. qc_repair_apply() then replays the
 * steps on the real image, in order, with the flushes the stages asked for.
 */
#ifndef QC_REPAIR_PLANNER_H
#define QC_REPAIR_PLANNER_H

#include "../checker/ctx.h"

typedef struct plan_snapshot_label {
    const uint8_t *id, *name; /* not NUL-terminated */
    uint16_t id_len, name_len;
} plan_snapshot_label;

struct qc_repair_plan {
    qc_repair_step *steps;
    uint8_t **old_bytes; /* per step: what the region held before (NULL for flushes) */
    size_t nb_steps, cap_steps;
    char **notes;
    size_t nb_notes, cap_notes;
    char *refusal;
    uint64_t size_before; /* image length before the repair */
    uint64_t leaks_fixed, corruptions_fixed;
    qc_unlinked *unlinked; /* see qc_repair_plan_unlinked */
    size_t nb_unlinked, cap_unlinked;
    /* The id and name of every snapshot the first check decoded, by its
     * index in the table before the repair (qc_unlinked.snapshot), for
     * --salvage's index; they point into label_bytes. */
    plan_snapshot_label *snapshot_labels;
    uint32_t nb_snapshot_labels;
    uint8_t *label_bytes;
};

/* A finding of the current check, uncapped (see qc_ctx.fix_sink). */
typedef struct repair_finding {
    qc_problem_id id;
    uint64_t offset, count;
} repair_finding;

/* Notes of one kind beyond this many are summarised in one line. */
#define REPAIR_NOTE_CAP 20
/* Rounds of stages at most (see qc_repair_plan_build). */
#define REPAIR_ROUNDS 4

typedef enum note_kind {
    NOTE_GENERAL,
    NOTE_GUEST_RANGE,
    NOTE_KINDS,
} note_kind;

/* A dropped item that may own freed clusters: its host range, the highest
 * end of the ranges up to it (in start order), and its index. */
typedef struct unlink_owner {
    uint64_t start, end, reach;
    size_t item;
} unlink_owner;

typedef struct repair_run {
    qc_repair_plan *plan;
    qc_repair_mode mode;
    qc_options check_opts; /* silent checks of the view */
    qc_io view;            /* the image as the plan so far leaves it */
    qc_io *image;          /* the image as it was before the plan */
    int error;             /* first failure (negative errno) */

    /* The current check of the view; re-run after writes. */
    qc_ctx ctx; /* the planner's check of the view; stages read ctx.view */
    qc_result res;
    bool ctx_live, ctx_stale;
    repair_finding *found;
    size_t nb_found, cap_found;

    /* -r leaks: the orphans of the first check, never lowered. -r all
     * judges orphans by the current check of the view instead: once the
     * structure that may own them is dropped, they are freed in the same
     * run. */
    qc_bitset kept;
    qc_bitset first_orphans; /* every orphan of the first check (for the unlinked list) */
    /* The run of freed clusters being collected (see qc_plan_freed), and the
     * dropped items that may own a cluster, by host offset. */
    struct {
        uint64_t first, count;
        size_t owner;
        qc_problem_id problem;
    } free_run;
    unlink_owner *owners;
    size_t nb_owners;
    bool owners_stale;
    bool drops_bitmaps; /* -r all and a bitmap problem whose fix is dropping them */
    bool l2_over_refblock; /* the checks of the view let L2 tables win over refcount blocks */
    unsigned version;
    unsigned cluster_bits;
    uint64_t incompat_before; /* incompatible features before the repair */
    bool fenced;              /* the corrupt bit (QED: need-check bit) is set as a fence */
    bool qed;                 /* a QED image: the stages of stage_qed.c */
    bool qed_need_check_before;
    /* Entries the first check of a QED image could not follow (invalid
     * ones the repair does not re-point, L2 tables sharing a cluster): what
     * they meant may be in the leaked clusters that end the file. */
    uint64_t qed_unfollowed_first;
    /* File sizes a zero extension tried and took back (stage_header.c),
     * not tried again in a later round. */
    uint64_t short_extension_refused, l1_extension_refused;
    uint64_t notes_of_kind[NOTE_KINDS];
} repair_run;

/* overlay.c: a writable copy-on-write view over a read-only io. */
int qc_overlay_open(qc_io *view, qc_io *base);
/* Read from an io, with zeros for anything past its end. */
int qc_read_zero_filled(qc_io *io, uint64_t off, void *buf, size_t len);

/* planner.c */
/* Record a write of `len` bytes at `off` and apply it to the view. The
 * first write of a repair is preceded by the fence (see docs/repair.md).
 * Returns whether the write was planned (not when it would land on a
 * cluster two structures claim, or after an error). */
bool qc_plan_write(repair_run *r, uint64_t off, const void *data, size_t len, const char *what,
                const char *why_fmt, ...) __attribute__((format(printf, 6, 7)));
/* Record cutting the view short at `size` (nothing grows back: a read
 * past it gives zeros); fenced like a write. */
bool qc_plan_truncate(repair_run *r, uint64_t size, const char *what, const char *why_fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Take back the last step, a write, and its bytes in the view: for a stage
 * that tried a change and found it wrong on a check. A write that grew the
 * view leaves restoring view.size to the caller. */
void qc_plan_undo_write(repair_run *r);
/* Ask for a flush: the writes before it reach the disk before any after. */
void qc_plan_flush(repair_run *r);
void qc_plan_note(repair_run *r, note_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The check of the view as it is now (re-run when writes made it stale).
 * Returns NULL when the view cannot be checked completely. */
const qc_check_view *qc_plan_current_check(repair_run *r);
/* The same without the note: for a stage that tries a change on the view
 * and takes it back when the view cannot be checked. */
const qc_check_view *qc_plan_try_check(repair_run *r);
/* Whether the current check found any problem whose fix is `fix`. */
bool qc_plan_found_fix(const repair_run *r, qc_fix fix);
/* The first cluster past the end of the view: where new structures go. */
/* The first cluster where `what` may be appended: the end of the view, or
 * UINT64_MAX (with a note) while a structure the image points to lies past
 * the end of the file (the old refcount structures do not count when what
 * is appended replaces them). Needs a current check in r->ctx. */
uint64_t qc_plan_append_cluster(repair_run *r, const char *what, bool replaces_refcounts);
/* Whether a cluster of [start, start + length) is claimed by two
 * structures (with a note naming them and `what`): a stage that would move
 * a structure out of such a cluster leaves it, since the structure left
 * behind was never followed and would become live garbage. */
bool qc_plan_range_shared(repair_run *r, uint64_t start, uint64_t length, const char *what);
/* Whether [off, off + size) of the view holds anything but zeros: 1, 0,
 * or a negative errno when it cannot be read. */
int qc_plan_view_has_data(repair_run *r, uint64_t off, uint64_t size);

/* unlinked.c: the list of what the repair unlinks, frees or recovers. */
void qc_plan_unlinked(repair_run *r, const qc_unlinked *item);
/* The refcount of cluster c goes to 0: collected into runs, each owned by
 * the dropped item covering it, or else a leak or an orphan of the first
 * check. qc_plan_freed_flush() ends the current run. */
void qc_plan_freed(repair_run *r, uint64_t c);
void qc_plan_freed_flush(repair_run *r);
/* Whether a dropped item of the plan covers host cluster c. */
bool qc_plan_dropped(repair_run *r, uint64_t c);
/* Notes for humans on the frees of clusters that a dropped pointer owned
 * or that were orphans (after the last stage). */
void qc_plan_note_unlinked(repair_run *r);
/* A dropped item for one L2 entry (at `at`, holding `entry`) of each of
 * the tables referencing its table: the guest cluster it mapped in each. */
void qc_plan_unlink_l2_entry(repair_run *r, const qc_check_view *check, uint64_t at, uint64_t entry,
                     qc_problem_id problem, unsigned kind, uint64_t new_target);
/* Dropped items for the structures of the kinds in `owners` (a mask of
 * 1 << qc_owner) that the current check found, which the repair replaces
 * or stops pointing to, for `problem`. */
void qc_plan_unlink_structures(repair_run *r, const qc_check_view *check, uint32_t owners, qc_problem_id problem);
/* Copy the ids and names of the snapshots the current check (the first
 * one) decoded into the plan. False when out of memory. */
bool qc_plan_record_snapshot_labels(repair_run *r);
/* A dropped item for the part inside the file of a refcount table the
 * check could not use (unaligned, or reaching past the end of the file):
 * the rebuild drops the header's pointer to it, which nothing else
 * records since the check has no extent for it. */
void qc_plan_unlink_unusable_reftable(repair_run *r, const qc_check_view *check, qc_problem_id problem);
/* The first finding of the current check whose fix is `fix`. */
qc_problem_id qc_plan_first_found_with_fix(const repair_run *r, qc_fix fix);

/* A stage of the repair and the fix actions it handles (see
 * qc_repair_handlers in planner.c). `finishes` are actions a stage that runs
 * in every repair also carries out (the header flags). */
typedef struct qc_repair_handler {
    const char *name;
    void (*run)(repair_run *r);
    unsigned modes;    /* 1 << qc_repair_mode */
    uint32_t actions;  /* 1 << qc_fix: run only when one was found; 0: always */
    uint32_t finishes;
} qc_repair_handler;

extern const qc_repair_handler qc_repair_handlers[];
extern const size_t qc_repair_handler_count;
/* The stages of a QED image's repair (stage_qed.c), and what they need
 * to know of the first check (r->qed_unfollowed_first). */
void qc_qed_first_check(repair_run *r);
extern const qc_repair_handler qc_qed_repair_handlers[];
extern const size_t qc_qed_repair_handler_count;

/* The stages (listed in order, with their actions, in planner.c). */
void qc_stage_feature_bits(repair_run *r);
void qc_stage_snapshot_count(repair_run *r);
void qc_stage_empty_table_offsets(repair_run *r);
/* Both modes, first (-r leaks: before it decides which orphans bind):
 * completes with zeros what the end of the file cuts short by less than
 * one cluster, as QEMU reads it (see stage_header.c). */
void qc_stage_zero_extend_short(repair_run *r);
/* -r all, after the pointers past the end of the file are dropped and
 * before anything is appended: completes cut L1 tables (stage_header.c). */
void qc_stage_zero_extend(repair_run *r);
void qc_stage_snapshot_table(repair_run *r);
void qc_stage_data_on_metadata(repair_run *r);
void qc_stage_refcounts(repair_run *r);
/* -r all, first after the feature bits: decides which side of a refcount
 * block / L2 table overlap the later stages trust (stage_refcounts.c). */
void qc_stage_refblock_overlaps(repair_run *r);
/* Whether the refcount stage would leave refcounts alone because a refcount
 * block shares its cluster with an L2 table: then nothing may be appended,
 * since its clusters could not be counted. */
bool qc_plan_refcounts_blocked(repair_run *r, const qc_check_view *check);
void qc_stage_copied(repair_run *r);
/* -r leaks: whether the current check (before the refcount stage) allows
 * the COPIED fix after it, as qemu-img's: no corruption but COPIED ones and
 * no check error. Until it does, leaked clusters the active tables map with
 * COPIED clear are not lowered below 2. */
bool qc_plan_leaks_fix_copied(const repair_run *r);
void qc_stage_leaks_copied(repair_run *r);
void qc_stage_broken_pointers(repair_run *r);
void qc_stage_header_flags(repair_run *r);

#endif
