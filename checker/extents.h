/*
 * Metadata extents (extents.c): every structure that owns host clusters,
 * the overlaps between them, and the lookups the passes and the repair
 * make on them.
 */
#ifndef QC_EXTENTS_H
#define QC_EXTENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qc_ctx qc_ctx;
typedef struct qc_check_view qc_check_view;
typedef struct qc_l2_table qc_l2_table;

/* What owns a host cluster, for overlap detection and messages. */
typedef enum qc_owner {
    QC_OWN_HEADER,
    QC_OWN_L1,
    QC_OWN_L2,
    QC_OWN_REFTABLE,
    QC_OWN_REFBLOCK,
    QC_OWN_SNAPSHOT_TABLE,
    QC_OWN_BITMAP_DIRECTORY,
    QC_OWN_BITMAP_TABLE,
    QC_OWN_BITMAP_DATA,
    QC_OWN_CRYPTO_HEADER,
} qc_owner;

/* One metadata structure occupying [start, start + length). */
typedef struct qc_extent {
    uint64_t start;
    uint64_t length;
    uint32_t index;  /* snapshot / bitmap / reftable index, QC_ACTIVE for active */
    uint32_t index2; /* L1 index for L2 tables */
    uint8_t owner;   /* a qc_owner (one byte: there is one extent per L2 table) */
    bool conflicted; /* overlaps a more trusted structure: not followed */
} qc_extent;

/* Describe an owner for messages: "L2 table (active L1 index 3)". */
void qc_describe_extent(const qc_check_view *v, const qc_extent *e, char *buf, size_t len);
/* The same for a distinct L2 table, named after its first reference. */
void qc_describe_l2_table(const qc_check_view *v, const qc_l2_table *t, char *buf, size_t len);
/* Register a metadata structure and count `refs` references to each
 * cluster it touches. Returns false, reporting nothing, when it does not lie
 * inside the file (callers validate and report first) or memory ran out;
 * the caller then must not read it. */
bool qc_add_extent(qc_ctx *ctx, qc_owner owner, uint32_t index, uint32_t index2, uint64_t start,
                   uint64_t length, uint64_t refs);
/* Sort extents, report overlaps, flag metadata clusters in the map. Extents that overlap
 * an earlier one are marked so their contents are not followed. */
bool qc_extents_finish(qc_ctx *ctx);
/* The extent owning host cluster `cluster`, or NULL. */
const qc_extent *qc_extent_at(const qc_check_view *v, uint64_t cluster);
/* Whether the structure of `owner` at `offset` lost an overlap (it is not
 * followed). */
bool qc_extent_conflicted(const qc_check_view *v, qc_owner owner, uint64_t offset);
/* Whether the first cluster of the structure of `owner` at `offset` is
 * also claimed by another structure, whichever won the overlap. */
bool qc_extent_shared(const qc_check_view *v, qc_owner owner, uint64_t offset);
/* The kinds of structure claiming host cluster `cluster`, as a mask of
 * 1 << qc_owner. */
uint32_t qc_cluster_owners(const qc_check_view *v, uint64_t cluster);
/* Whether two structures claim host cluster `cluster`; `pair`, if not
 * NULL, receives two of them. */
bool qc_cluster_shared(const qc_check_view *v, uint64_t cluster, const qc_extent *pair[2]);

#endif
