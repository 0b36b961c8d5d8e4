/*
 * The accessors of the opaque qc_result.
 */
#include <stdlib.h>
#include <string.h>

#include "result.h"

qc_result *qc_result_new(void)
{
    return calloc(1, sizeof(qc_result));
}

void qc_result_free(qc_result *result)
{
    if (result)
        qc_result_drop_map(result);
    free(result);
}

void qc_result_drop_map(qc_result *r)
{
    free(r->map);
    r->map = NULL;
    r->map_cells = 0;
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

/* The drivers other than raw that QEMU's probing picks for what
 * qc_guess_format recognises. */
static const char *const qc_probed_drivers[] = {"qed", "vmdk", "vdi", "vhdx", "vpc",
                                                "parallels", "qcow", "luks", "cloop"};
#define PROBED_DRIVERS (sizeof(qc_probed_drivers) / sizeof(qc_probed_drivers[0]))

unsigned qc_driver_index(const char *driver)
{
    unsigned i = 0;
    while (i < PROBED_DRIVERS && strcmp(driver, qc_probed_drivers[i]) != 0)
        i++;
    return i;
}

const char *qc_driver_of(const char *guess)
{
    if (!guess)
        return "qcow2";
    for (size_t i = 0; i < PROBED_DRIVERS; i++) {
        size_t n = strlen(qc_probed_drivers[i]);
        if (strncmp(guess, qc_probed_drivers[i], n) == 0 && (guess[n] == '\0' || guess[n] == ' '))
            return qc_probed_drivers[i];
    }
    return "raw"; /* an empty file too: QEMU probes it as raw */
}

const char *qc_result_driver(const qc_result *r)
{
    if (r->qed)
        return "qed";
    return qc_driver_of(r->other_format);
}

int qc_status_of(uint64_t check_errors, uint64_t corruptions, uint64_t leaks)
{
    return check_errors ? 1 : corruptions ? 2 : leaks ? 3 : 0;
}

void qc_result_tally(qc_result *r, const qc_problem *p, uint64_t count)
{
    switch (p->severity) {
    case QC_SEV_ERROR:
        r->check_errors += count;
        break;
    case QC_SEV_CORRUPTION:
        r->corruptions += count;
        break;
    case QC_SEV_LEAK:
        r->leaks += count;
        break;
    case QC_SEV_WARNING:
        r->warnings += 1;
        break;
    case QC_SEV_INFO:
        break;
    }
    r->per_problem[qc_problem_row_of(p->code)] += count;
    r->findings++;
}
