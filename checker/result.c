/*
 * The accessors of the opaque qc_result.
 */
#include <stdlib.h>

#include "result.h"

qc_result *qc_result_new(void)
{
    return calloc(1, sizeof(qc_result));
}

void qc_result_free(qc_result *result)
{
    free(result);
}

uint64_t qc_result_count(const qc_result *r, qc_counter counter)
{
    switch (counter) {
    case QC_COUNT_CHECK_ERRORS:
        return r->check_errors;
    case QC_COUNT_CORRUPTIONS:
        return r->corruptions;
    case QC_COUNT_LEAKS:
        return r->leaks;
    case QC_COUNT_IMAGE_END_OFFSET:
        return r->image_end_offset;
    case QC_COUNT_TOTAL_CLUSTERS:
        return r->total_clusters;
    case QC_COUNT_ALLOCATED_CLUSTERS:
        return r->allocated_clusters;
    case QC_COUNT_FRAGMENTED_CLUSTERS:
        return r->fragmented_clusters;
    case QC_COUNT_COMPRESSED_CLUSTERS:
        return r->compressed_clusters;
    case QC_COUNT_WARNINGS:
        return r->warnings;
    case QC_COUNT_FINDINGS:
        return r->findings;
    }
    return 0;
}

uint64_t qc_result_problem_count(const qc_result *r, qc_problem_id problem)
{
    return qc_found(r, problem);
}

const char *qc_result_other_format(const qc_result *r)
{
    return r->other_format;
}

const qc_header_info *qc_result_header(const qc_result *r)
{
    return r->header_valid ? &r->header : NULL;
}
