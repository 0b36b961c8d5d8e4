/*
 * The check's result as the library holds it (callers see an opaque
 * qc_result), and the dense row numbers of the problem table that index
 * its per-problem counts.
 */
#ifndef QC_RESULT_H
#define QC_RESULT_H

#include "qcheck.h"

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
};

/* What the findings of one problem counted (0 for a code with no row). */
static inline uint64_t qc_found(const qc_result *r, qc_problem_id code)
{
    qc_problem_row row = qc_problem_row_of(code);
    return row < QC_PROBLEM_ROWS ? r->per_problem[row] : 0;
}

#endif
