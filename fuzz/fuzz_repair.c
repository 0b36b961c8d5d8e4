/*
 * Fuzz harness 3: check, repair a memory copy, check again.
 *
 * A logic oracle, not only a crash detector: for -r leaks and for -r all,
 * the plan's prediction must be what a fresh check of the repaired copy
 * shows (so a repair that claims a clean image must leave one), a repair
 * must add no corruption, a refused repair must write nothing, a second
 * -r all must leave the same corruptions, and a repair interrupted at a
 * write chosen from the input's hash must converge when resumed
 * (repair_run.h).
 */
#include <xxhash.h>

#include "harness.h"
#include "repair_run.h"

void fuzz_one(const uint8_t *data, size_t len)
{
    qc_options opts = QC_OPTIONS_INIT;
    opts.max_mem = FUZZ_MAX_MEM;
    uint64_t seed = XXH64(data, len, 0);
    /* Half the inputs also let a QED repair cut trailing leaks. */
    opts.truncate_leaks = (seed >> 40) & 1;
    const qc_repair_mode modes[] = {QC_REPAIR_LEAKS, QC_REPAIR_ALL};
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        fz_verdict v;
        fz_repair_oracle(data, len, &opts, modes[i], seed, &v);
        if (v.failure[0])
            fuzz_fail("-r %s: %s", modes[i] == QC_REPAIR_ALL ? "all" : "leaks", v.failure);
    }
}
