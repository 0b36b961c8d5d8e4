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
    return calloc(1, sizeof(qc_result));
}

static inline void result_free(qc_result *r)
{
    free(r);
}

/* Options with every field at its default. */
static inline qc_options options_default(void)
{
    qc_options opts = {0};
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
    switch (c) {
    case CHECK_ERRORS: return r->check_errors;
    case CORRUPTIONS: return r->corruptions;
    case LEAKS: return r->leaks;
    case WARNINGS: return r->warnings;
    case FINDINGS: return r->findings;
    case IMAGE_END_OFFSET: return r->image_end_offset;
    case TOTAL_CLUSTERS: return r->total_clusters;
    case ALLOCATED_CLUSTERS: return r->allocated_clusters;
    case FRAGMENTED_CLUSTERS: return r->fragmented_clusters;
    case COMPRESSED_CLUSTERS: return r->compressed_clusters;
    case COUNTERS: break;
    }
    return UINT64_MAX;
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

/* Counted findings of one problem. */
static inline uint64_t problem_count(const qc_result *r, qc_problem_id id)
{
    return r->per_problem[id];
}

/* What a file that is not qcow2 looks like, NULL for qcow2. */
static inline const char *other_format(const qc_result *r)
{
    return r->other_format;
}

static inline bool header_valid(const qc_result *r)
{
    return r->header_valid;
}

static inline const qc_header_info *header_info(const qc_result *r)
{
    return &r->header;
}

#endif
