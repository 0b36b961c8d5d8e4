/*
 * The check's result as the library holds it (callers see an opaque
 * qc_result), and the dense row numbers of the problem table that index
 * its per-problem counts.
 */
#ifndef QC_RESULT_H
#define QC_RESULT_H

#include "qcheck.h"

#define QC_NAME_MAX 4095 /* the longest path a name can be (PATH_MAX less its NUL) */

/* Rows of the problem table, numbered densely in table order. */
typedef enum qc_problem_row {
#define QC_PROBLEM(name, ...) QC_ROW_##name,
#include "qcheck_problems.def"
#undef QC_PROBLEM
    QC_PROBLEM_ROWS
} qc_problem_row;

/* The row of a problem code, or QC_PROBLEM_ROWS for a code with no row. */
qc_problem_row qc_problem_row_of(qc_problem_id code);

struct qc_result {
    const char *other_format; /* see qc_result_other_format */
    bool qed;                 /* a QED image, checked (pass_qed.c) */
    bool header_valid;        /* the header decoded far enough to fill `header` */
    qc_header_info header;

    /* qemu-img check's ImageCheck counters, same meaning. */
    uint64_t check_errors;
    uint64_t corruptions;
    uint64_t leaks;
    uint64_t image_end_offset;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;

    uint64_t warnings;
    uint64_t findings;
    uint64_t per_problem[QC_PROBLEM_ROWS]; /* counted findings per row */

    /* The strings header.backing_file, backing_format and data_file point
     * to (a name longer than these is cut short: no such path opens). */
    char backing_file[QC_NAME_MAX + 1];
    char backing_format[16];
    char data_file[QC_NAME_MAX + 1];
    /* With an external data file: where the guest data the image maps into
     * it end (the end of the last allocated cluster or subcluster). */
    uint64_t data_file_end;

    /* The host map (map.c), when the options asked for one: malloc'd,
     * freed with the result. */
    qc_map_cell *map;
    size_t map_cells;
    uint64_t map_clusters_per_cell, map_clusters, map_cluster_size;
    uint64_t map_class_clusters[QC_MAP_CLASSES];
};

/* The driver QEMU's probing picks for a file qc_guess_format describes
 * (NULL: a qcow2 image). */
const char *qc_driver_of(const char *guess);
/* The place of a driver qc_driver_of returns other than qcow2 and raw in
 * its list (layerNotChecked's variants follow it), or the list's length. */
unsigned qc_driver_index(const char *driver);

/* qemu-img check's exit status for these counts: 1 check errors, else 2
 * corruptions, else 3 leaks, else 0. */
int qc_status_of(uint64_t check_errors, uint64_t corruptions, uint64_t leaks);

/* Free the result's host map, if any (before the result is reused or
 * freed). */
void qc_result_drop_map(qc_result *r);

/* Count a finding of problem p covering `count` items in the result. */
void qc_result_tally(qc_result *r, const qc_problem *p, uint64_t count);

/* What the findings of one problem counted (0 for a code with no row). */
static inline uint64_t qc_found(const qc_result *r, qc_problem_id code)
{
    qc_problem_row row = qc_problem_row_of(code);
    return row < QC_PROBLEM_ROWS ? r->per_problem[row] : 0;
}

#endif
