/*
 * The check's picture of the image: geometry and header, snapshots, the
 * refcount table, the metadata extents, the computed refcounts, the L2
 * tables and the pointers not followed. The passes produce it; a repair
 * reads it, and only it, as a `const qc_check_view *`, with the lookups
 * below and in extents.h and unfollowed.h.
 *
 * The fields are listed once, in QC_CHECK_VIEW_FIELDS: qc_ctx holds them
 * through an anonymous union with a qc_check_view, so that the passes
 * write `ctx->geo` while a repair reads `view->geo` from the same memory.
 */
#ifndef QC_CHECK_VIEW_H
#define QC_CHECK_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../layout/format.h"
#include "clustermap.h"
#include "extents.h"
#include "unfollowed.h"

#define QC_ACTIVE ((uint32_t)-1) /* "snapshot index" of the active L1 */

enum { QC_REFBLOCK_NONE, QC_REFBLOCK_VALID, QC_REFBLOCK_INVALID };

/* A snapshot, after validation. */
typedef struct qc_snapshot {
    qc_snapshot_entry entry; /* id/name point into snap_table_buf */
    uint64_t table_offset;   /* where the entry starts in the image */
    bool follow;             /* its L1 table is valid and will be walked */
    /* Its extra data, id or name runs past the end of the file: what
     * could be read is in `entry` (see qc_snapshot_decode_truncated). */
    bool truncated, id_lost;
} qc_snapshot;

/* One reference from an L1 entry to an L2 table. These and the table
 * records below exist once per L2 table, so they are kept small. */
typedef struct qc_l2_ref {
    uint64_t l2_offset;
    uint32_t snapshot;      /* QC_ACTIVE or snapshot index */
    uint32_t l1_index : 31; /* below QC_MAX_L1_BYTES / 8 */
    uint32_t copied : 1;    /* bit 63 of the L1 entry */
} qc_l2_ref;

/* At most this many references are collected (memoryLimit beyond), so the
 * counts below fit 32 bits. */
#define QC_MAX_L2_REFS UINT32_MAX

/* One distinct L2 table, with how many L1 entries reference it: its
 * references are l2_refs[first_ref .. first_ref + refs), the active ones
 * first (its offset is theirs: qc_l2_table_offset). */
typedef struct qc_l2_table {
    uint32_t first_ref;
    uint32_t refs;
    uint32_t active_refs;
} qc_l2_table;

#define QC_CHECK_VIEW_FIELDS                                                                       \
    /* header pass */                                                                              \
    uint64_t file_size;                                                                            \
    qc_header hdr;                                                                                 \
    qc_geometry geo;                                                                               \
    uint64_t file_clusters;                                                                        \
    bool has_data_file;                                                                            \
    bool reftable_usable; /* the refcount table can be read */                                     \
    /* snapshots pass */                                                                           \
    qc_snapshot *snapshots;                                                                        \
    uint32_t nb_snapshots; /* entries decoded */                                                   \
    /* reftable pass */                                                                            \
    uint64_t *reftable; /* refcount block offset per entry (masked) */                             \
    uint64_t reftable_entries;                                                                     \
    uint8_t *refblock_state; /* per entry: QC_REFBLOCK_NONE/VALID/INVALID */                       \
    /* metadata extents (every pass adds; sorted before the L2 walk) */                            \
    qc_extent *extents;                                                                            \
    size_t nb_extents, cap_extents;                                                                \
    /* mapping pass */                                                                             \
    qc_refmap refmap; /* counts, and flags: metadata, active COPIED set / clear */                 \
    qc_l2_ref *l2_refs; /* sorted by L2 offset after collection */                                 \
    size_t nb_l2_refs, cap_l2_refs;                                                                \
    qc_l2_table *l2_tables;                                                                        \
    size_t nb_l2_tables;                                                                           \
    /* Pointers that were reported and not followed (unfollowed.h). What   \
     * they may own is not called leaked: any cluster when a whole         \
     * structure was skipped (`unfollowed`), or just the cluster a broken  \
     * leaf pointer most likely meant (`unfollowed_targets`). */                                   \
    uint64_t unfollowed;                                                                           \
    uint64_t unfollowed_refblocks; /* of those: refcount blocks behind bad pointers */             \
    uint64_t unfollowed_bitmaps;   /* of those: bitmap structures */                               \
    qc_bitset unfollowed_targets;        /* what broken leaf pointers most likely meant */         \
    qc_bitset bitmap_unfollowed_targets; /* of those, what bitmap table entries meant */           \
    /* Highest end of a structure a pointer places past the end of the     \
     * file: of the refcount table and blocks (which a rebuild replaces),  \
     * and of anything else. */                                                                    \
    uint64_t past_eof_end_refcounts, past_eof_end;                                                 \
    /* Every host cluster a pointer places past the end of the file, as    \
     * runs (sorted and merged by qc_past_eof_claims_finish): a repair     \
     * never lowers their refcounts, which QEMU counts. Beyond             \
     * QC_MAX_PAST_EOF_CLAIMS runs, or before the runs are sorted, every   \
     * cluster below past_eof_claims_end counts as claimed. */                                     \
    qc_cluster_run *past_eof_claims;                                                               \
    size_t nb_past_eof_claims, cap_past_eof_claims;                                                \
    uint64_t past_eof_claims_end; /* in clusters */                                                \
    bool past_eof_claims_lost, past_eof_claims_sorted;                                             \
    /* Of those structures, the ones the end of the file cuts short by     \
     * less than one cluster, which QEMU accepts (reading zeros past the   \
     * end): the lowest start of any, and the end of the last cluster any  \
     * occupies (0: none). A repair completes them with zeros. */                                  \
    uint64_t short_past_eof_start, short_past_eof_end;                                             \
    /* compare pass */                                                                             \
    qc_bitset orphans;             /* clusters reported as refcountOrphan */                       \
    qc_bitset refcount_above_refs; /* on-disk refcount above the references found */

typedef struct qc_check_view {
    QC_CHECK_VIEW_FIELDS
} qc_check_view;

/* The offset of a distinct L2 table (that of its first reference). */
static inline uint64_t qc_l2_table_offset(const qc_check_view *v, const qc_l2_table *t)
{
    return v->l2_refs[t->first_ref].l2_offset;
}

/* The distinct L2 table at host offset `off`, or NULL. */
const qc_l2_table *qc_l2_table_at(const qc_check_view *v, uint64_t off);

static inline bool qc_cluster_aligned(const qc_check_view *v, uint64_t off)
{
    return (off & (v->geo.cluster_size - 1)) == 0;
}

/* Whether QEMU accepts the offset of a table without entries: it validates
 * it all the same (aligned, below 2^63), though it reads nothing there. */
static inline bool qc_empty_table_offset_ok(const qc_check_view *v, uint64_t off)
{
    return qc_cluster_aligned(v, off) && off <= INT64_MAX;
}

/* Describe a snapshot for messages: "snapshot 1 (id "2", name "s1")". */
void qc_describe_snapshot(const qc_check_view *v, uint32_t index, char *buf, size_t len);

#endif
