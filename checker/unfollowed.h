/*
 * Pointers that were reported and not followed (unfollowed.c): the
 * clusters they most likely meant, the ranges they claim past the end of
 * the file, and the orphan policy built on both: whether an orphan's
 * refcount must stay because such a pointer may own it.
 */
#ifndef QC_UNFOLLOWED_H
#define QC_UNFOLLOWED_H

#include <stdbool.h>
#include <stdint.h>

typedef struct qc_ctx qc_ctx;
typedef struct qc_check_view qc_check_view;

/* Host clusters [first, end). */
typedef struct qc_cluster_run {
    uint64_t first, end;
} qc_cluster_run;

#define QC_MAX_PAST_EOF_CLAIMS 65536u

/* A data or bitmap-data pointer at `host_offset` was not followed: mark
 * the cluster it most likely meant (its aligned-down cluster) as an
 * unfollowed target,
 * or count an unfollowed structure when that is outside the file. */
void qc_unfollowed_leaf(qc_ctx *ctx, uint64_t host_offset);
/* A pointer places [start, start + length) past the end of the file:
 * remember how far, so that a repair appends nothing that pointer would
 * then find (see past_eof_end). */
void qc_claim_past_eof(qc_ctx *ctx, uint64_t start, uint64_t length, bool refcount_structure);
/* Record only that a structure claims [start, start + length) past the end
 * of the file (qc_claimed_past_eof), for one a repair drops before it
 * appends anything (bitmap structures, the encryption header). */
void qc_note_past_eof(qc_ctx *ctx, uint64_t start, uint64_t length);
/* Sort and merge the runs (before the comparison pass). */
void qc_past_eof_claims_finish(qc_ctx *ctx);
/* Whether a structure or pointer the check found claims host cluster
 * `cluster`, which lies past the end of the file. */
bool qc_claimed_past_eof(const qc_check_view *v, uint64_t cluster);
/* The same for a bitmap data pointer (bitmap_unfollowed_targets / unfollowed_bitmaps
 * too: -r all drops broken bitmaps, so what only they own is not kept). */
void qc_unfollowed_bitmap_leaf(qc_ctx *ctx, uint64_t host_offset);
/* Whether the check's orphan verdict on `cluster` must hold in a repair
 * that rebuilds the refcount structures (damaged refcount blocks are then
 * replaced) and/or drops the bitmaps: orphans only they explain are not
 * kept. */
bool qc_orphan_binds(const qc_check_view *v, bool rebuilds_refcounts, bool drops_bitmaps,
                     uint64_t cluster);

#endif
