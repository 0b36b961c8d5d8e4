/*
 * Repairing an image held in memory, and the oracles a repair must pass.
 * Test support shared by the repair fuzz harness and the unit tests, so
 * that both judge a repair by the same rules.
 */
#ifndef QC_FUZZ_REPAIR_RUN_H
#define QC_FUZZ_REPAIR_RUN_H

#include "qcheck.h"

/* The figures of a check the oracles compare. */
typedef struct fz_counts {
    uint64_t corruptions, leaks, check_errors, warnings;
} fz_counts;

/* What fz_repair_run did: the plan's and apply's return values, the checks
 * before, predicted and after, the image afterwards and the undo log. */
typedef struct fz_repaired {
    int plan_ret, apply_ret;
    fz_counts before, predicted, after;
    size_t writes;
    uint8_t *image;
    size_t len;
    uint8_t *undo;
    size_t undo_len;
} fz_repaired;

/* Repair a growable copy of buf with an undo log (qc_repair_run), through
 * the crash io when crash_after is not UINT64_MAX; `after` is the check of
 * the copy as the repair left it. Returns 0, or a negative errno when the run itself failed (out of
 * memory); *out must be released with fz_repaired_free either way. */
int fz_repair_run(const uint8_t *buf, size_t len, const qc_options *opts, qc_repair_mode mode,
                  uint64_t crash_after, bool drop_unflushed, fz_repaired *out);
void fz_repaired_free(fz_repaired *r);

typedef struct fz_verdict {
    int plan_ret;      /* 0, or why the repair was refused */
    size_t writes;     /* writes the repair made */
    bool crash_tested; /* an interrupted repair was resumed and compared */
    char failure[400]; /* empty when every oracle held, else the first that did not */
} fz_verdict;

/* Repair buf in `mode` and judge it: a refusal writes nothing; the plan's
 * prediction is what a fresh check of the result shows; no corruption or
 * check error is added; for QC_REPAIR_ALL, a second -r all leaves the same
 * corruptions, and a repair interrupted at a write chosen by `seed` (as a
 * crash or as a power failure) and then resumed ends with the same
 * corruptions as the uninterrupted one. */
void fz_repair_oracle(const uint8_t *buf, size_t len, const qc_options *opts, qc_repair_mode mode,
                      uint64_t seed, fz_verdict *v);

#endif
