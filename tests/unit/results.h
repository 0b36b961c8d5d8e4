/*
 * The one place where the unit tests read a qc_result or make qc_options:
 * every test goes through these helpers, so a change of the public API
 * (an opaque result with accessors, options with a size field) is a change
 * here only.
 */
#ifndef QC_TESTS_UNIT_RESULTS_H
#define QC_TESTS_UNIT_RESULTS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "qcheck.h"

static inline qc_result *result_new(void)
{
    return qc_result_new();
}

static inline void result_free(qc_result *r)
{
    qc_result_free(r);
}

/* Options with every field at its default. */
static inline qc_options options_default(void)
{
    qc_options opts = QC_OPTIONS_INIT;
    return opts;
}

/* The counters of a result (qemu-img check's ImageCheck, and qcheck's). */
typedef enum counter {
    CHECK_ERRORS,
    CORRUPTIONS,
    LEAKS,
    WARNINGS,
    FINDINGS,
    IMAGE_END_OFFSET,
    TOTAL_CLUSTERS,
    ALLOCATED_CLUSTERS,
    FRAGMENTED_CLUSTERS,
    COMPRESSED_CLUSTERS,
    COUNTERS
} counter;

static inline uint64_t counter_of(const qc_result *r, counter c)
{
    static const qc_counter library[COUNTERS] = {
        [CHECK_ERRORS] = QC_COUNT_CHECK_ERRORS,
        [CORRUPTIONS] = QC_COUNT_CORRUPTIONS,
        [LEAKS] = QC_COUNT_LEAKS,
        [WARNINGS] = QC_COUNT_WARNINGS,
        [FINDINGS] = QC_COUNT_FINDINGS,
        [IMAGE_END_OFFSET] = QC_COUNT_IMAGE_END_OFFSET,
        [TOTAL_CLUSTERS] = QC_COUNT_TOTAL_CLUSTERS,
        [ALLOCATED_CLUSTERS] = QC_COUNT_ALLOCATED_CLUSTERS,
        [FRAGMENTED_CLUSTERS] = QC_COUNT_FRAGMENTED_CLUSTERS,
        [COMPRESSED_CLUSTERS] = QC_COUNT_COMPRESSED_CLUSTERS,
    };
    return c < COUNTERS ? qc_result_count(r, library[c]) : UINT64_MAX;
}

static inline const char *counter_name(counter c)
{
    static const char *const names[COUNTERS] = {
        "check_errors",
        "corruptions",
        "leaks",
        "warnings",
        "findings",
        "image_end_offset",
        "total_clusters",
        "allocated_clusters",
        "fragmented_clusters",
        "compressed_clusters",
    };
    return c < COUNTERS ? names[c] : "?";
}

static inline uint64_t leaks(const qc_result *r)
{
    return counter_of(r, LEAKS);
}

static inline uint64_t corruptions(const qc_result *r)
{
    return counter_of(r, CORRUPTIONS);
}

static inline uint64_t warnings(const qc_result *r)
{
    return counter_of(r, WARNINGS);
}

/* The rows of the problem table, numbered in table order, for arrays
 * indexed by problem (ROW_REFCOUNT_LEAK, ...). */
enum {
#define QC_PROBLEM(name, ...) ROW_##name,
#include "qcheck_problems.def"
#undef QC_PROBLEM
    PROBLEM_ROWS
};

/* The row of a problem code, or PROBLEM_ROWS for none. */
static inline unsigned problem_row(qc_problem_id id)
{
    for (unsigned i = 0; i < PROBLEM_ROWS; i++)
        if (qc_problem_at(i)->code == id)
            return i;
    return PROBLEM_ROWS;
}

/* Counted findings of one problem. */
static inline uint64_t problem_count(const qc_result *r, qc_problem_id id)
{
    return qc_result_problem_count(r, id);
}

/* What a file that is not qcow2 looks like, NULL for qcow2. */
static inline const char *other_format(const qc_result *r)
{
    return qc_result_other_format(r);
}

static inline bool header_valid(const qc_result *r)
{
    return qc_result_header(r) != NULL;
}

/* The header as decoded (zeros when it did not decode). */
static inline const qc_header_info *header_info(const qc_result *r)
{
    static const qc_header_info none;
    return qc_result_header(r) ? qc_result_header(r) : &none;
}

#endif
